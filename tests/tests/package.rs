//! The Debian package, installed into a scratch root by dpkg: every file
//! where Debian wants it, the unit verified by systemd-analyze, a removal
//! that leaves only the conffile and a purge that leaves nothing of lb but
//! its system user; and the installed `lb-ctl run` as an unprivileged user
//! with exactly the capabilities the unit grants (setpriv, as systemd
//! would), which tells systemd it is ready, forwards, reloads and stops,
//! and without any one of them refuses, naming it, before it loads
//! anything. Run as root, one test at a time.
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::Read as _,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_testbed::{
    harness::{self, FAST_CHECKS, Setup, built_bin, http_status, udp_query, who_answers},
    netns::{in_ns, ns_sh, output},
    topology::Topology,
};
use lb_tests::debian::{ScratchRoot, exposure, unit_values, verify_unit};

const UNIT: &str = "/lib/systemd/system/lb-ctl.service";

/// Every man page the package must hold: one per command and subcommand
/// of lb-ctl's own definitions (`lb-ctl-backend-add.1`…).
fn expected_man_pages() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        out.insert(format!("/usr/share/man/man1/{prefix}.1.gz"));
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }
    let mut pages = BTreeSet::new();
    walk(&lb_ctl::command::command(), "lb-ctl", &mut pages);
    pages
}

fn gunzip(path: &Path) -> String {
    let out = output(&["zcat", &path.to_string_lossy()]);
    assert!(out.status.success(), "zcat {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_installs_where_debian_wants_and_leaves_only_its_conffile() {
    let root = ScratchRoot::with_package("lbp-pkg-root");
    let installed: BTreeSet<String> = root.files().into_iter().collect();
    let mut wanted: BTreeSet<String> = [
        "/usr/bin/lb-ctl",
        UNIT,
        "/usr/lib/sysusers.d/lb-ctl.conf",
        "/etc/lb/lb.toml",
        "/usr/share/bash-completion/completions/lb-ctl",
        "/usr/share/zsh/vendor-completions/_lb-ctl",
        "/usr/share/fish/vendor_completions.d/lb-ctl.fish",
        "/usr/share/doc/lb/copyright",
        "/usr/share/doc/lb/configuration.md.gz",
        "/usr/share/doc/lb/examples/keepalived/keepalived.conf",
        "/usr/share/doc/lb/examples/grafana/lb.json",
        // What the postinst made: the lb user (systemd-sysusers --root).
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/.pwd.lock",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    wanted.extend(expected_man_pages());
    assert_eq!(installed, wanted, "the installed files");
    let mode = |p: &str| std::fs::metadata(root.path(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/usr/bin/lb-ctl"), 0o755);
    assert_eq!(mode(UNIT), 0o644);
    assert_eq!(mode("/etc/lb/lb.toml"), 0o644);
    let conffiles = root.query("${Conffiles}");
    assert!(conffiles.trim_start().starts_with("/etc/lb/lb.toml "), "{conffiles}");
    let passwd = std::fs::read_to_string(root.path("/etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("lb:") && l.ends_with(":/usr/sbin/nologin")));

    // The binary runs, its man pages and completions say what it parses.
    let version = output(&[&root.path("/usr/bin/lb-ctl").to_string_lossy(), "--version"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "lb-ctl 0.1.0");
    let run_page = gunzip(&root.path("/usr/share/man/man1/lb-ctl-run.1.gz"));
    for option in [r"\-\-config", r"\-\-cleanup\-on\-exit", r"\-\-object"] {
        assert!(run_page.contains(option), "lb-ctl-run.1 lacks {option}");
    }
    let bash = std::fs::read_to_string(root.path("/usr/share/bash-completion/completions/lb-ctl"))
        .unwrap();
    for sub in lb_ctl::command::command().get_subcommands() {
        assert!(bash.contains(&format!("lb__ctl,{}", sub.get_name())), "bash: {}", sub.get_name());
    }
    let keepalived =
        std::fs::read(root.path("/usr/share/doc/lb/examples/keepalived/keepalived.conf"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/keepalived/keepalived.conf");
    assert_eq!(keepalived.unwrap(), std::fs::read(repo).unwrap(), "the keepalived example");

    let (clean, said) = verify_unit(&root.dir, "lb-ctl.service");
    assert!(clean && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // docs/operations.md says 3.9: a weaker sandbox scores higher.
    let score = exposure(&root.dir, "lb-ctl.service");
    assert!(score <= 3.9, "systemd-analyze security: exposure {score}");

    // The shipped config is valid where its interface exists.
    let ns = "lbp-pkg-check";
    lb_testbed::netns::remove(ns);
    output(&["ip", "netns", "add", ns]);
    ns_sh(ns, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let check = output(&[
        "ip",
        "netns",
        "exec",
        ns,
        &root.path("/usr/bin/lb-ctl").to_string_lossy(),
        "check",
        "--config",
        &root.path("/etc/lb/lb.toml").to_string_lossy(),
    ]);
    lb_testbed::netns::remove(ns);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && said.contains("OK: 0 service(s)"), "{said}");

    // Removed: only the conffile (and the API's state) stay. Purged: none.
    std::fs::create_dir_all(root.path("/var/lib/lb")).unwrap();
    std::fs::write(root.path("/var/lib/lb/lb.state.json"), "{}").unwrap();
    root.dpkg_ok(&["-r", "lb"]);
    let users = ["/etc/.pwd.lock", "/etc/group", "/etc/gshadow", "/etc/passwd", "/etc/shadow"];
    let mut left: Vec<&str> = users.to_vec();
    left.extend(["/etc/lb/lb.toml", "/var/lib/lb/lb.state.json"]);
    left.sort_unstable();
    assert_eq!(root.files(), left, "after dpkg -r");
    root.dpkg_ok(&["-P", "lb"]);
    assert_eq!(root.files(), users, "after dpkg -P");
    assert!(!root.path("/etc/lb").exists() && !root.path("/var/lib/lb").exists());
}

/// The unprivileged user the test runs `lb-ctl run` as (the host has no
/// `lb` user; the scratch root's is not the host's).
const NOBODY: u32 = 65534;

/// `lb-ctl run ARGS` of `ctl` in namespace `ns` as [`NOBODY`] with exactly
/// `caps` (`CAP_BPF`…), as the unit's `User=`, `CapabilityBoundingSet=`,
/// `AmbientCapabilities=` and `NoNewPrivileges=` make it.
fn run_as_nobody(
    ns: &str,
    ctl: &Path,
    caps: &[String],
    dir: &Path,
    notify: &Path,
    args: &[&str],
) -> Child {
    let set: Vec<String> =
        caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let set = format!("-all,{}", set.join(","));
    let log = std::fs::File::create(dir.join("lb-ctl.log")).unwrap();
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .args(["setpriv", &format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}")])
        .args(["--clear-groups", "--no-new-privs"])
        .args([format!("--bounding-set={set}"), format!("--inh-caps={set}")])
        .arg(format!("--ambient-caps={set}"))
        .arg(ctl)
        .args(["run", "--config"])
        .arg(dir.join("lb.toml"))
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env("LB_RUN_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting lb-ctl run under setpriv")
}

/// The next datagram on the notify socket, within `limit`; else a panic
/// with the controller's log.
fn notified(socket: &UnixDatagram, limit: Duration, files: &RunFiles) -> String {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0_u8; 512];
    let n = socket.recv(&mut buf).unwrap_or_else(|e| {
        panic!("no sd_notify within {limit:?} ({e}); lb-ctl's log:\n{}", files.log())
    });
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lb-ctl run did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The files `lb-ctl run` may touch, owned by [`NOBODY`] as the unit's
/// directories are the lb user's; removed on drop, pins included.
struct RunFiles {
    dir: std::path::PathBuf,
    pins: std::path::PathBuf,
}

impl RunFiles {
    fn new(name: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        let pins = Path::new("/sys/fs/bpf").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&pins);
        for d in [dir.join("run"), dir.join("state"), pins.clone()] {
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("lb.toml"), config).unwrap();
        Self { dir, pins }
    }

    fn pinned(&self) -> usize {
        std::fs::read_dir(&self.pins).map_or(0, Iterator::count)
    }

    fn log(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(self.dir.join("lb-ctl.log"))
            .and_then(|mut f| f.read_to_string(&mut text));
        text
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_installed_lb_ctl_runs_unprivileged_with_exactly_the_units_capabilities() {
    let root = ScratchRoot::with_package("lbp-svc-root");
    let unit = std::fs::read_to_string(root.path(UNIT)).unwrap();
    let caps = unit_values(&unit, "AmbientCapabilities");
    assert_eq!(caps, unit_values(&unit, "CapabilityBoundingSet"), "bounding = ambient");
    assert_eq!(unit_values(&unit, "User"), ["lb"]);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    let ctl = root.path("/usr/bin/lb-ctl");

    let name = "lbp-svc-run";
    let pin_dir = format!("/sys/fs/bpf/{name}");
    // Declared before the topology, dropped after it: the namespace's
    // processes (lb-ctl, if a check failed) are gone before its pins go.
    let files = RunFiles::new(name, "");
    let mut topo = Topology::create("lbp-svc");
    topo.start_backends(&built_bin("lb-lab").to_string_lossy());
    let mut config = harness::config(
        &pin_dir,
        [Some(1); 3],
        Setup { checks: Some(&FAST_CHECKS), ..Setup::default() },
    );
    let state = files.dir.join("state/lb.state.json");
    let _ = write!(config, "\n[admin]\nstate_file = \"{}\"\n", state.display());
    std::fs::write(files.dir.join("lb.toml"), &config).unwrap();
    let notify_path = files.dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();

    // Each capability left out: refused, naming it, with nothing loaded.
    for left_out in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| c != &left_out).cloned().collect();
        let mut child = run_as_nobody(&topo.lb(), &ctl, &fewer, &files.dir, &notify_path, &[]);
        let status = wait_exit(&mut child, Duration::from_secs(20));
        let log = files.log();
        assert_eq!(status.code(), Some(1), "without {left_out}:\n{log}");
        assert!(
            log.contains(&format!("lb-ctl: missing capability {left_out} (")),
            "without {left_out}, the refusal names it:\n{log}"
        );
        assert_eq!(files.pinned(), 0, "without {left_out} nothing is pinned:\n{log}");
    }

    // All of them: READY=1 when /readyz says ready, and it forwards.
    let start = |args: &[&str]| {
        let child = run_as_nobody(&topo.lb(), &ctl, &caps, &files.dir, &notify_path, args);
        let ready = notified(&notify, Duration::from_secs(20), &files);
        assert!(ready.starts_with("READY=1\nSTATUS=load balancing 3 service(s)"), "{ready:?}");
        let readyz = in_ns(&topo.lb(), || http_status("127.0.0.1:9100", "/readyz", None));
        assert_eq!(readyz, 200, "READY=1 came before /readyz said ready:\n{}", files.log());
        child
    };
    let stop = |mut child: Child| {
        assert!(output(&["kill", "-TERM", &child.id().to_string()]).status.success());
        assert_eq!(notified(&notify, Duration::from_secs(10), &files), "STOPPING=1");
        assert!(wait_exit(&mut child, Duration::from_secs(10)).success(), "{}", files.log());
    };
    let child = start(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or_default()
    };
    assert!(field("Uid:").starts_with(&NOBODY.to_string()), "{status}");
    assert_eq!(
        lb_ctl::daemon::caps::parse_effective(&status),
        Some((1 << 39) | (1 << 12) | (1 << 38))
    );
    let answers = in_ns(&topo.client(), || who_answers(30));
    assert_eq!(answers.len(), 30, "every request answered by a backend");
    let udp = in_ns(&topo.client(), || udp_query("over udp"));
    assert!(udp.is_ok_and(|backend| backend.starts_with("web")));

    // A reload: RELOADING=1, then READY=1 once done.
    assert!(output(&["kill", "-HUP", &child.id().to_string()]).status.success());
    let reloading = notified(&notify, Duration::from_secs(10), &files);
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert_eq!(notified(&notify, Duration::from_secs(10), &files), "READY=1");
    assert!(files.log().contains("configuration reloaded"), "{}", files.log());

    // A stop: STOPPING=1, exit 0, the data plane left for the next start.
    stop(child);
    assert!(files.pinned() > 0, "the pins stay for the next start");

    // The next start adopts it, and removes it at its stop; then one in
    // skb mode (GRO's netlink requests): all as the same user.
    let runs = [
        (&["--cleanup-on-exit"][..], "adopted the pinned data plane"),
        (&["--xdp-mode", "skb", "--cleanup-on-exit"], r#"XDP attached interface=lb-c mode="skb""#),
    ];
    for (args, said) in runs {
        let child = start(args);
        let log = files.log();
        assert!(log.contains(said), "{args:?}: no {said:?} in:\n{log}");
        let answers = in_ns(&topo.client(), || who_answers(10));
        assert_eq!(answers.len(), 10, "{args:?}: every request answered by a backend");
        stop(child);
        assert_eq!(files.pinned(), 0, "{args:?}: the pins removed at the stop");
    }
}
