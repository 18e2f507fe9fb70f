//! The controller short of file descriptors: `lb-ctl run` under a hard
//! open-file limit of 256, probing hundreds of black-holed backends (each
//! probe holds its socket until its timeout) besides the three real ones.
//! Probes that cannot get a socket must take no backend DOWN. Run as root.
use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_testbed::{
    harness::{FAST_CHECKS, Setup, built_bin, config, lb_ctl_bin},
    netns::terminate,
    topology::{BACKENDS, Topology, VIP},
};

/// Addresses on the backends' link that nobody holds: a SYN to one waits
/// for an ARP answer that never comes, the probe times out.
const DARK: std::ops::RangeInclusive<u8> = 100..=249;

struct Run {
    child: Option<Child>,
    dir: std::path::PathBuf,
    pin_dir: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb-ctl.log")).unwrap_or_default()
    }
}

#[test]
fn probes_short_of_descriptors_take_no_reachable_backend_down() {
    let mut topo = Topology::create("lbt62");
    topo.start_backends(&built_bin("lb-lab").to_string_lossy());
    let dir = std::env::temp_dir().join("lbt62-res");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    let pin_dir = "/sys/fs/bpf/lbt62-res".to_owned();
    let _ = std::fs::remove_dir_all(&pin_dir);
    let mut text =
        config(&pin_dir, [Some(1); 3], Setup { checks: Some(&FAST_CHECKS), ..Setup::default() });
    // 450 backends that never answer, probed every 200 ms for 150 ms each:
    // about 340 sockets open at any time, against 256 descriptors.
    text.push_str("\n[[service]]\nname = \"dark\"\nvip = \"");
    text.push_str(VIP);
    text.push_str("\"\nport = 8000\n  [service.health]\n  check = \"tcp\"\n  interval_ms = 200\n  timeout_ms = 150\n  rise = 2\n  fall = 2\n");
    for last in DARK {
        for port in 8001..=8003 {
            let _ = write!(
                text,
                "  [[service.backend]]\n  address = \"10.77.2.{last}\"\n  port = {port}\n"
            );
        }
    }
    let config_path = dir.join("lb.toml");
    std::fs::write(&config_path, text).expect("config");
    let log = std::fs::File::create(dir.join("lb-ctl.log")).expect("log");
    let child = Command::new("prlimit")
        .env("LB_RUN_DIR", dir.join("run"))
        .arg("--nofile=256:256")
        .arg("nsenter")
        .arg(format!("--net=/var/run/netns/{}", topo.lb()))
        .arg(lb_ctl_bin())
        .args(["run", "--cleanup-on-exit", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting lb-ctl");
    let mut run = Run { child: Some(child), dir, pin_dir };

    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.log().contains("load balancer running") {
        assert!(Instant::now() < deadline, "lb-ctl did not start:\n{}", run.log());
        if let Some(status) = run.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("lb-ctl exited ({status}):\n{}", run.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // 6 s: 30 probes of each real backend, fall 2.
    std::thread::sleep(Duration::from_secs(6));
    let log = run.log();
    assert!(log.contains("open-file limit soft=256 hard=256"), "{log}");
    let reachable: Vec<String> =
        BACKENDS.iter().map(|(_, address)| format!("backend={address}:")).collect();
    let wrongly_down: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("backend is DOWN") && reachable.iter().any(|b| l.contains(b.as_str()))
        })
        .collect();
    assert!(wrongly_down.is_empty(), "reachable backends went DOWN:\n{}", wrongly_down.join("\n"));
    assert!(
        log.contains("health probes cannot run") && log.contains("no file descriptor left"),
        "the descriptors did not run out: the test proves nothing\n{log}"
    );
    // The local cause is logged once, not per probe.
    let lines = log.lines().filter(|l| l.contains("health probes cannot run")).count();
    assert!(lines <= 3, "{lines} lines about the local failures:\n{log}");
}
