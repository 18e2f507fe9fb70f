//! BIRD 2 in a network namespace, run from the shipped configurations
//! (`examples/bird/`) with the test bed's timers: the BGP tests' and the
//! lab's router and load balancer nodes. Stopped on drop.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// The shipped node and router configurations.
pub const NODE_EXAMPLE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bird/lb-node.conf"));
pub const ROUTER_EXAMPLE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bird/router.conf"));

/// One `bird -f` and its control socket.
pub struct Bird {
    pub ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Starts BIRD in `ns` on `config`, its files in a temporary directory
    /// named `name`.
    pub fn start(ns: &str, name: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("BIRD directory");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).expect("BIRD config");
        let mut bird = Self { ns: ns.to_owned(), dir, child: None };
        bird.spawn();
        bird
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("bird.log")).expect("BIRD log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "bird", "-f", "-c"])
            .arg(self.dir.join("bird.conf"))
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting bird (apt-get install bird2; cargo xtask setup does)");
        self.child = Some(child);
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc COMMAND…` on this BIRD; its output.
    pub fn birdc(&self, command: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("running birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// SIGKILL: the node's BGP speaker dies without a word (its sessions
    /// end by hold time or BFD).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs bird: the child is BIRD itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::netns::terminate(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Test timers instead of the shipped ones (hold time 3 s, keepalive 1 s,
/// reconnect after 1 s, restart 1 s after a failure), and without BFD when
/// `bfd` is false.
fn test_timers(text: &str, bfd: bool) -> String {
    let mut text = text
        .replace("hold time 9;", "hold time 3;")
        .replace("keepalive time 3;", "keepalive time 1;")
        .replace("connect retry time 5;", "connect retry time 1;")
        .replace("error wait time 5, 60;", "error wait time 1, 5;");
    for (wanted, what) in
        [("hold time 3;", "hold time"), ("bfd on;", "bfd"), ("error wait time 1,", "error wait")]
    {
        assert!(text.contains(wanted), "examples/bird: no {what} to adapt");
    }
    if !bfd {
        text = without_bfd(&text);
    }
    text
}

/// The config without its `protocol bfd { … }` block and `bfd on;` lines.
fn without_bfd(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0_usize;
    let mut in_bfd = false;
    for line in text.lines() {
        if line.starts_with("protocol bfd") {
            in_bfd = true;
        }
        if in_bfd {
            depth += line.matches('{').count();
            depth = depth.saturating_sub(line.matches('}').count());
            if depth == 0 {
                in_bfd = false;
            }
            continue;
        }
        if line.trim() == "bfd on;" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The node config for `address` (the shipped one is lb1's, 10.77.1.2).
pub fn node_config(address: &str, bfd: bool) -> String {
    let text = NODE_EXAMPLE
        .replace("router id 10.77.1.2;", &format!("router id {address};"))
        .replace("local 10.77.1.2 as", &format!("local {address} as"));
    assert!(text.contains(&format!("local {address} as")), "examples/bird/lb-node.conf: no local");
    test_timers(&text, bfd)
}

/// The router config (the shipped one, with the test bed's timers).
pub fn router_config(bfd: bool) -> String {
    test_timers(ROUTER_EXAMPLE, bfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without BFD, the configs keep everything else, and no `bfd` is left.
    #[test]
    fn the_shipped_configs_adapt_to_the_test_bed() {
        for text in [node_config("10.77.1.3", false), router_config(false)] {
            let code = text.lines().filter(|l| !l.trim_start().starts_with('#'));
            assert!(code.clone().all(|l| !l.contains("bfd")), "{text}");
            assert!(text.contains("hold time 3;") && text.contains("protocol kernel"), "{text}");
            assert_eq!(text.matches('{').count(), text.matches('}').count(), "{text}");
        }
        let with = node_config("10.77.1.3", true);
        assert!(with.contains("protocol bfd") && with.contains("router id 10.77.1.3;"), "{with}");
    }
}
