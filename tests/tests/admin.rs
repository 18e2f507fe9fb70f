//! The operator's side end to end: the CLI against a running controller,
//! changes through the admin API that take effect before the answer and
//! survive a restart, the token, syslog, and the stats page in a real
//! browser. Run as root, one test at a time (`cargo xtask test`).
use std::{
    collections::BTreeSet,
    net::UdpSocket,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_common::counter::Counter;
use lb_testbed::{
    counters,
    harness::{EchoConn, FAST_CHECKS, Lab, Setup, wait_for, who_answers},
    netns::in_ns,
    server::HealthMode,
};

fn names(answers: Vec<String>) -> BTreeSet<String> {
    answers.into_iter().collect()
}

/// A backend added through the CLI takes traffic as soon as the command
/// returns; draining it stops new flows; both survive a restart of
/// `lb-ctl run`, which says what it restored.
#[test]
fn cli_changes_take_effect_at_once_and_survive_a_restart() {
    let mut lab = Lab::start_with("lbt17", Setup::default(), [Some(1), Some(1), None]);
    let client = lab.topo.client();
    let seen = in_ns(&client, || names(who_answers(30)));
    assert!(!seen.contains("web3"), "web3 is not configured yet: {seen:?}");

    let said = lab.ctl_ok(&["backend", "add", "web", "10.77.2.13:80"]);
    eprintln!("{said}");
    // No waiting: the answer comes once the kernel maps hold the backend.
    let seen = in_ns(&client, || names(who_answers(60)));
    assert!(seen.contains("web3"), "web3 answers right after the add: {seen:?}");

    lab.ctl_ok(&["backend", "drain", "web", "10.77.2.11:80"]);
    let seen = in_ns(&client, || names(who_answers(60)));
    assert!(!seen.contains("web1"), "a drained backend takes no new flow: {seen:?}");

    let list = lab.ctl_ok(&["list"]);
    eprintln!("{list}");
    assert!(list.contains("TCP  10.77.1.100:80"), "{list}");
    assert!(list.contains("-> 10.77.2.13:80"), "{list}");
    let state_file = lab.dir.join("lb.state.json");
    assert!(state_file.exists(), "runtime changes are kept in {}", state_file.display());

    lab.restart();
    assert_eq!(lab.count_lines(&["runtime changes restored"]), 1, "{}", lab.log());
    let seen = in_ns(&client, || names(who_answers(60)));
    assert!(seen.contains("web3"), "the added backend is still there: {seen:?}");
    assert!(!seen.contains("web1"), "the drained backend is still drained: {seen:?}");
    let json = lab.ctl_ok(&["list", "--json"]);
    assert!(json.contains("\"state\": \"drain\""), "{json}");

    // A reload of an edited file (web2 taken out) keeps the API's words on
    // top of it: web1 still drained, web3 still added.
    lab.reload([Some(1), None, None]);
    let seen = in_ns(&client, || names(who_answers(30)));
    assert_eq!(seen, ["web3"].map(String::from).into(), "{seen:?}");

    // Undo both; the restored state answers like any other.
    lab.ctl_ok(&["backend", "undrain", "web", "10.77.2.11:80"]);
    lab.ctl_ok(&["backend", "del", "web", "10.77.2.13:80"]);
    let seen = in_ns(&client, || names(who_answers(30)));
    assert_eq!(seen, ["web1"].map(String::from).into(), "{seen:?}");
}

/// `list`, `stats` and `conns` show what runs; errors have script-usable
/// exit codes.
#[test]
fn cli_reads_the_live_state_and_fails_clearly() {
    let mut lab = Lab::start("lbt18");
    let client = lab.topo.client();
    // A long-lived connection to show in the connection table.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn({
        let client = client.clone();
        move || {
            in_ns(&client, move || {
                let mut conn = EchoConn::open().expect("echo connection");
                let backend = conn.exchange("hello").expect("echo");
                ready_tx.send(backend).expect("ready");
                let _ = rx.recv_timeout(Duration::from_secs(30));
            });
        }
    });
    let backend = ready_rx.recv_timeout(Duration::from_secs(10)).expect("echo connection open");
    in_ns(&client, || who_answers(10));
    // ipvsadm -Ln: the backend holding the connection has one active, the
    // others none. The controller recounts every second.
    let holder_addr = format!("10.77.2.1{}", &backend[3..]);
    let echo_conns = |lab: &Lab| -> Vec<(String, u32)> {
        let services = lab.services();
        let echo = services.into_iter().find(|s| s.name == "echo").expect("echo service");
        echo.backends.into_iter().map(|b| (b.address, b.conns.active)).collect()
    };
    let counted = wait_for("the held connection counted as active", Duration::from_secs(5), || {
        let conns = echo_conns(&lab);
        let holder = conns.iter().find(|(a, _)| *a == holder_addr).map(|(_, n)| *n);
        if holder == Some(1) { Ok(conns) } else { Err(conns) }
    });
    assert!(
        counted.iter().all(|(a, n)| *a == holder_addr || *n == 0),
        "only {holder_addr} holds a connection: {counted:?}"
    );

    let conns = lab.ctl_ok(&["conns", "--service", "echo"]);
    eprintln!("{conns}");
    assert!(conns.contains("ESTABLISHED"), "{conns}");
    assert!(conns.contains("10.77.1.100:9000"), "{conns}");
    // The text listing shows the same count in its ActiveConn column.
    let list = lab.ctl_ok(&["list"]);
    eprintln!("{list}");
    let header = list.lines().find(|l| l.contains("ActiveConn")).expect("a header line");
    let column = header.split_whitespace().position(|w| w == "ActiveConn").expect("column");
    let line = list
        .lines()
        .skip_while(|l| !l.contains(":9000"))
        .find(|l| l.contains(&format!("{holder_addr}:9000")))
        .unwrap_or_else(|| panic!("no line for {backend} in\n{list}"));
    assert_eq!(line.split_whitespace().nth(column), Some("1"), "ActiveConn of {line}\n{header}");
    let stats = lab.ctl_ok(&["stats"]);
    eprintln!("{stats}");
    assert!(stats.contains("web"), "{stats}");

    // A service that takes a deleted one's id starts its counters at zero.
    let vip = std::net::Ipv4Addr::new(10, 77, 1, 100);
    let freed = counters::service_id(&lab.pin_dir, vip, 80).expect("web's id");
    assert!(counters::service_traffic(&lab.pin_dir, freed).in_packets > 0);
    lab.ctl_ok(&["service", "delete", "web"]);
    lab.ctl_ok(&["service", "add", "--name", "web2", "--vip", "10.77.1.100", "--port", "81"]);
    let reused = counters::service_id(&lab.pin_dir, vip, 81).expect("web2's id");
    assert_eq!(reused, freed, "the new service reuses the freed id");
    let fresh = counters::service_traffic(&lab.pin_dir, reused);
    assert_eq!(fresh, lb_common::abi::Traffic::default(), "web2 inherited web's counters");

    // Refused by the controller: exit 1 with the reason.
    let out = lab.ctl(&["backend", "add", "nope", "10.77.2.11:80"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named"), "{out:?}");
    // Bad input: a usage error (2), nothing sent.
    let out = lab.ctl(&["backend", "add", "web", "10.77.2.300:80"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let _ = tx.send(());
    holder.join().expect("connection holder");
    assert!(lab.stop().success());
    // No controller: exit 3, saying so.
    let out = lab.ctl(&["list"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "{out:?}");
}

/// With a token, the API refuses requests without it or with a wrong one;
/// probes and metrics stay open.
#[test]
fn token_is_required_except_for_probes_and_metrics() {
    let dir = std::env::temp_dir().join("lbt19-token");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("token dir");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-t0ken\n").expect("token");
    // lb-ctl run refuses a token others can read.
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600 token");
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "guess\n").expect("wrong token");
    let tables: &'static str = Box::leak(
        format!("\n[admin]\nlisten = \"0.0.0.0:9100\"\ntoken_file = \"{}\"\n", token.display())
            .into_boxed_str(),
    );
    let lab = Lab::start_with("lbt19", Setup { tables, ..Setup::default() }, [Some(1); 3]);
    let out = lab.ctl(&["list"]);
    assert_eq!(out.status.code(), Some(4), "no token: {out:?}");
    let out = lab.ctl(&["--token-file", wrong.to_str().expect("path"), "list"]);
    assert_eq!(out.status.code(), Some(4), "wrong token: {out:?}");
    let list = lab.ctl_ok(&["--token-file", token.to_str().expect("path"), "list"]);
    assert!(list.contains("10.77.1.100:80"), "{list}");
    // Raw HTTP: the probes and /metrics need no token, the rest does.
    let lb = lab.topo.lb();
    let status = |path: &'static str, auth: Option<&'static str>| {
        in_ns(&lb, move || lb_testbed::harness::http_status("127.0.0.1:9100", path, auth))
    };
    assert_eq!(status("/healthz", None), 200);
    assert_eq!(status("/readyz", None), 200);
    assert_eq!(status("/metrics", None), 200);
    assert_eq!(status("/api/v1/services", None), 401);
    assert_eq!(status("/api/v1/services", Some("Bearer guess")), 401);
    assert_eq!(status("/api/v1/services", Some("Bearer s3cret-t0ken")), 200);
    // Basic, as a browser sends it for the page: x:s3cret-t0ken
    assert_eq!(status("/", Some("Basic eDpzM2NyZXQtdDBrZW4=")), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Backend state changes and admin actions reach a syslog receiver as
/// RFC 5424 messages.
#[test]
fn state_changes_and_admin_actions_reach_syslog() {
    let tables = "\n[log]\nsyslog = \"127.0.0.1:5514\"\n";
    let lab = Lab::start_with(
        "lbt20",
        Setup { checks: Some(&FAST_CHECKS), tables, ..Setup::default() },
        [Some(1); 3],
    );
    // The receiver lives in the load balancer's namespace (its loopback).
    let (messages_tx, messages_rx) = std::sync::mpsc::channel::<String>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let lb_ns = lab.topo.lb();
    std::thread::spawn(move || {
        lb_testbed::netns::enter(&lb_ns);
        let socket = UdpSocket::bind("127.0.0.1:5514").expect("syslog socket");
        socket.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        bound_tx.send(()).expect("bound");
        let mut buf = [0_u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if messages_tx.send(text).is_err() {
                return;
            }
        }
    });
    bound_rx.recv_timeout(Duration::from_secs(5)).expect("syslog receiver ready");
    lab.topo.set_health_mode("web2", HealthMode::Error);
    lab.ctl_ok(&["backend", "weight", "web", "10.77.2.13:80", "3"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut received = Vec::new();
    let wanted = |r: &[String]| {
        r.iter().any(|m| m.contains("backend is DOWN") && m.contains("10.77.2.12:80"))
            && r.iter().any(|m| m.contains("admin: backend changed"))
    };
    while Instant::now() < deadline && !wanted(&received) {
        if let Ok(m) = messages_rx.recv_timeout(Duration::from_millis(200)) {
            received.push(m);
        }
    }
    assert!(wanted(&received), "syslog received: {received:#?}");
    let down = received.iter().find(|m| m.contains("backend is DOWN")).expect("DOWN message");
    // <28> = facility daemon (3) * 8 + warning (4); version 1; app lb-ctl.
    assert!(down.starts_with("<28>1 "), "{down}");
    assert!(down.contains(" lb-ctl "), "{down}");
    drop(lab);
}

/// The stats page in headless Chromium: every service and backend with its
/// state; a screenshot is kept as a test artifact.
#[test]
fn stats_page_renders_in_a_real_browser() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new("which").arg(b).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
        })
        .expect("chromium is not installed (cargo xtask test installs Debian's chromium)");
    let lab = Lab::start_with_checks("lbt21", Some(&FAST_CHECKS));
    lab.topo.set_health_mode("web3", HealthMode::Error);
    lab.ctl_ok(&["backend", "drain", "web", "10.77.2.12:80"]);
    lab.wait_lines(&["backend is DOWN", "10.77.2.13:80"], 1, Duration::from_secs(10));
    // The page renders the controller's published view: wait until it shows both.
    wait_for("the view shows web3 DOWN and web2 drained", Duration::from_secs(5), || {
        let (web2, web3) = (lab.backend_view("10.77.2.12", 80), lab.backend_view("10.77.2.13", 80));
        let seen = (web2.state, web3.health.status);
        if seen.0 == "drain" && seen.1 == "DOWN" { Ok(()) } else { Err(seen) }
    });

    let artifacts = artifacts_dir();
    let screenshot = artifacts.join("stats-page.png");
    let _ = std::fs::remove_file(&screenshot);
    // Without admin.token_file, lb-ctl run generated the token the
    // operator gives the browser: Basic credentials in the URL.
    let token_file = lb_ctl::daemon::api::token::generated_path(&lab.run_dir(), 9100);
    let token = lb_ctl::daemon::api::token::read_any(&token_file).expect("the generated token");
    let browse = |extra: &[&str]| {
        let profile = lab.dir.join("chromium-profile");
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", lab.topo.lb()))
            .arg(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=1000", "--window-size=1400,1000"])
            .args(extra)
            .arg(format!("http://admin:{token}@127.0.0.1:9100/"))
            .stdin(Stdio::null())
            .output()
            .expect("running chromium");
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    std::fs::write(artifacts.join("stats-page.html"), &dom).expect("saving the DOM");
    for id in ["service-web", "service-echo", "service-udp"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no {id} in the page");
    }
    let row = |service: &str, backend: &str| {
        let id = format!("id=\"backend-{service}-{backend}\"");
        let start = dom.find(&id).unwrap_or_else(|| panic!("no row {id}"));
        let end = dom[start..].find('>').map_or(dom.len(), |e| start + e);
        dom[start..end].to_owned()
    };
    assert!(
        row("web", "10.77.2.11:80").contains("data-status=\"UP\""),
        "{}",
        row("web", "10.77.2.11:80")
    );
    assert!(row("web", "10.77.2.12:80").contains("data-state=\"drain\""));
    assert!(row("web", "10.77.2.13:80").contains("data-status=\"DOWN\""));
    assert!(dom.contains("http-equiv=\"refresh\""), "the page refreshes itself");
    browse(&[&format!("--screenshot={}", screenshot.display())]);
    let size = std::fs::metadata(&screenshot).map_or(0, |m| m.len());
    assert!(size > 10_000, "screenshot {} is {size} bytes", screenshot.display());
    eprintln!("screenshot: {} ({size} bytes)", screenshot.display());
}

/// Where tests leave files worth looking at: target/test-artifacts.
fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}

/// `maint` takes a backend out at once, open flows included: its TCP
/// connection gets a reset on its next packet and new connections go
/// elsewhere. The health checks of a backend in `maint` or `drain` go on,
/// so its status is current when it comes back.
#[test]
fn maint_resets_open_flows_and_probes_go_on_in_maint_and_drain() {
    let lab = Lab::start_with_checks("lbt31", Some(&FAST_CHECKS));
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let client = lab.topo.client();
    let (backend, mut conn) = in_ns(&client, || {
        let mut conn = EchoConn::open().expect("echo connection");
        (conn.exchange("hello").expect("first exchange"), conn)
    });
    let at = format!("10.77.2.1{}:9000", &backend[3..]);
    let resets_before = counters::get(&lab.pin_dir, Counter::RstBackendDown);
    lab.ctl_ok(&["backend", "maint", "echo", &at]);
    let err = conn.exchange("still there?").expect_err("maint resets the open connection");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let resets = counters::get(&lab.pin_dir, Counter::RstBackendDown) - resets_before;
    assert_eq!(resets, 1, "the reset came from the data plane (rst_backend_down)");
    let others: Vec<String> = in_ns(&client, || {
        (0..6)
            .map(|_| EchoConn::open().and_then(|mut c| c.exchange("who")).expect("new connection"))
            .collect()
    });
    assert!(!others.contains(&backend), "a backend in maint got a new connection: {others:?}");

    lab.ctl_ok(&["backend", "maint", "web", "10.77.2.11:80"]);
    lab.ctl_ok(&["backend", "drain", "web", "10.77.2.12:80"]);
    let answered = |name: &str| lab.topo.health_answers(name).len();
    let before = [answered("web1"), answered("web2")];
    // Five intervals of 200 ms: at least three probes each.
    wait_for("probes of web1 (maint) and web2 (drain)", Duration::from_secs(5), || {
        let grown = [answered("web1") - before[0], answered("web2") - before[1]];
        if grown.iter().all(|&n| n >= 3) { Ok(()) } else { Err(grown) }
    });
}
