//! Network namespaces and commands run inside them.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
};

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output, whatever its exit status.
pub fn output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", args.join(" ")))
}

/// Runs a command inside namespace `ns`.
pub fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// Runs a command inside `ns`, ignoring failure (cleanup, optional tuning).
pub fn ns_try(ns: &str, args: &[&str]) -> bool {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    output(&full).status.success()
}

/// Moves the calling thread into namespace `ns` for the rest of its life:
/// sockets it opens afterwards live there.
pub fn enter(ns: &str) {
    let file =
        File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({ns}): {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside namespace `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

pub fn exists(ns: &str) -> bool {
    std::path::Path::new(&format!("/var/run/netns/{ns}")).exists()
}

/// Kills every process in namespace `ns` and removes it, if it exists.
pub fn remove(ns: &str) {
    if !exists(ns) {
        return;
    }
    let pids = output(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = output(&["kill", "-9", pid]);
    }
    let _ = output(&["ip", "netns", "del", ns]);
}

/// Stops `child` with SIGTERM, and SIGKILL if it is still there after 5 s.
pub fn terminate(mut child: std::process::Child) {
    let _ = output(&["kill", "-TERM", &child.id().to_string()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Drops what nftables `rule` matches on input in namespace `ns` (a table
/// `lbtest` of its own); `unblock_input` removes it.
pub fn block_input(ns: &str, rule: &[&str]) {
    ns_sh(ns, &["nft", "add", "table", "inet", "lbtest"]);
    ns_sh(
        ns,
        &[
            "nft", "add", "chain", "inet", "lbtest", "input", "{", "type", "filter", "hook",
            "input", "priority", "0", ";", "policy", "accept", ";", "}",
        ],
    );
    let mut add = vec!["nft", "add", "rule", "inet", "lbtest", "input"];
    add.extend_from_slice(rule);
    ns_sh(ns, &add);
}

/// Removes what `block_input` added in `ns`.
pub fn unblock_input(ns: &str) {
    ns_sh(ns, &["nft", "delete", "table", "inet", "lbtest"]);
}
