//! `lb-ctl run` seen from outside (the real binary, its exit status and
//! stderr) on what it must decide before it touches the data plane. No
//! run here gets as far as loading anything: the pin path is a plain
//! directory, which the data plane refuses (not a bpf filesystem) before it
//! loads or attaches a program, so these tests need no privileges (without
//! the capabilities of `lb-ctl run`, the run stops one step earlier, at
//! their check, which also comes after the admin checks).
mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::TempDir;

/// What the data plane's start says about a pin path off bpffs, and what
/// the capability check says to a user without them: seeing either means
/// the run got past the admin checks.
fn past_admin_checks(stderr: &str) -> bool {
    stderr.contains("starting the data plane") || stderr.contains("lb-ctl: missing capabilit")
}

/// `lb-ctl run --config` on a config with `admin` in its `[admin]` section;
/// its exit code and stderr. Bounded: killed after 30 s.
fn run(dir: &Path, admin: &str) -> (Option<i32>, String) {
    let config = dir.join("lb.toml");
    let text = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\npin_path = \"{}\"\n\n[admin]\nstate_file = \"{}\"\n{admin}\n",
        dir.join("pins").display(),
        dir.join("lb.state.json").display(),
    );
    fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-ctl"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        // The generated token goes here, not to /run/lb-ctl.
        .env("LB_RUN_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lb-ctl run still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!dir.join("pins").exists(), "nothing may be pinned");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Without a token the API listens on loopback only: anything else is
/// refused, naming the key, before the data plane is touched.
#[test]
fn a_non_loopback_listen_without_a_token_is_refused_before_anything_is_loaded() {
    let dir = TempDir::new("no-token");
    for listen in ["0.0.0.0:9100", "192.0.2.1:9100"] {
        let (code, stderr) = run(&dir.0, &format!("listen = \"{listen}\""));
        assert_eq!(code, Some(1), "{listen}: {stderr}");
        let refusal = format!(
            "lb-ctl: admin.listen = {listen}: without admin.token_file the API only listens on loopback"
        );
        assert!(stderr.contains(&refusal), "{listen}: wanted {refusal:?} in {stderr:?}");
        assert!(!past_admin_checks(&stderr), "{listen}: went on: {stderr}");
    }
}

/// Loopback needs no token; another address does with one. Both get past
/// the admin checks (and stop at the data plane, which is refused here).
#[test]
fn loopback_without_a_token_or_elsewhere_with_one_is_accepted() {
    let dir = TempDir::new("accepted");
    let (code, stderr) = run(&dir.0, "listen = \"127.0.0.1:0\"");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(past_admin_checks(&stderr), "loopback without a token: {stderr}");
    assert!(!stderr.contains("admin.listen"), "loopback without a token: {stderr}");
    // ... but never without a token: one is generated, 0600, its path logged.
    let logged = format!(
        "admin API token generated (no admin.token_file) token_file={}/admin-",
        dir.0.join("run").display()
    );
    assert!(stderr.contains(&logged), "wanted {logged:?} in {stderr}");
    let generated: Vec<_> =
        fs::read_dir(dir.0.join("run")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(generated.len(), 1, "{generated:?}");
    assert_eq!(fs::metadata(&generated[0]).unwrap().permissions().mode() & 0o777, 0o600);

    // 192.0.2.1 (TEST-NET-1) is no address of this host: with a token the
    // listener is tried, and only binding it fails.
    let token = dir.0.join("token");
    fs::write(&token, "s3cret\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let admin = format!("listen = \"192.0.2.1:9100\"\ntoken_file = \"{}\"", token.display());
    let (code, stderr) = run(&dir.0, &admin);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("lb-ctl: admin.listen = 192.0.2.1:9100: "), "{stderr}");
    assert!(!stderr.contains("token_file"), "refused for the token: {stderr}");
    assert!(stderr.contains("Cannot assign requested address"), "{stderr}");
}

/// A token file others can read is refused before anything is loaded,
/// naming the file and the fix.
#[test]
fn a_token_file_open_to_others_is_refused_with_the_fix() {
    let dir = TempDir::new("open-token");
    let token = dir.0.join("token");
    fs::write(&token, "s3cret\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = run(&dir.0, &format!("token_file = \"{}\"", token.display()));
    assert_eq!(code, Some(1), "{stderr}");
    let fix = format!("chmod 600 {}", token.display());
    assert!(stderr.contains(&fix), "wanted {fix:?} in {stderr:?}");
    assert!(!past_admin_checks(&stderr), "went on: {stderr}");
}
