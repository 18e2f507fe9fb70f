//! Health checks end to end, the way the classic workshop tests them: block
//! a web server with a firewall rule in its namespace, watch it go DOWN and
//! the traffic move, unblock it and watch it come back.
use std::time::{Duration, Instant};

use lb_tests::{
    harness::{EchoConn, FAST_CHECKS, Lab, http_get},
    netns::{in_ns, ns_sh},
    server::HealthMode,
    topology::BACKENDS,
};

/// fall x interval + timeout of `FAST_CHECKS` (2 x 200 + 100 ms).
const DETECTION_BOUND: Duration = Duration::from_millis(500);
/// Scheduling noise on a shared 2-core machine.
const MARGIN: Duration = Duration::from_secs(1);

fn start(prefix: &str) -> Lab {
    let lab = Lab::start_with_checks(prefix, Some(&FAST_CHECKS));
    // Every checked backend (3 web + 3 echo) has had its first probe.
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    lab
}

fn block(lab: &Lab, name: &str, rule: &[&str]) {
    let ns = lab.topo.web(name);
    ns_sh(&ns, &["nft", "add", "table", "inet", "lbtest"]);
    ns_sh(
        &ns,
        &[
            "nft", "add", "chain", "inet", "lbtest", "input", "{", "type", "filter", "hook",
            "input", "priority", "0", ";", "policy", "accept", ";", "}",
        ],
    );
    let mut add = vec!["nft", "add", "rule", "inet", "lbtest", "input"];
    add.extend_from_slice(rule);
    ns_sh(&ns, &add);
}

fn unblock(lab: &Lab, name: &str) {
    ns_sh(&lab.topo.web(name), &["nft", "delete", "table", "inet", "lbtest"]);
}

fn address(name: &str) -> &'static str {
    BACKENDS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).unwrap()
}

#[test]
fn a_blocked_backend_goes_down_within_the_bound_and_comes_back() {
    let lab = start("lbt7");
    let web2 = format!("backend={}:80", address("web2"));
    block(&lab, "web2", &["tcp", "dport", "80", "drop"]);
    let took = lab.wait_lines(&["backend is DOWN", &web2], 1, Duration::from_secs(10));
    eprintln!(
        "web2 DOWN {} ms after the block (bound {} ms)",
        took.as_millis(),
        DETECTION_BOUND.as_millis()
    );
    assert!(took <= DETECTION_BOUND + MARGIN, "took {took:?}");
    // The log line comes first; the map write follows within milliseconds.
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(5));
    let answers = lab.who_answers(40);
    assert!(!answers.contains(&"web2".to_string()), "a DOWN backend got new flows: {answers:?}");

    unblock(&lab, "web2");
    let back = lab.wait_lines(&["backend is UP", &web2], 2, Duration::from_secs(10));
    eprintln!("web2 UP again {} ms after the unblock", back.as_millis());
    lab.wait_lines(&["health applied", "down=0"], 1, Duration::from_secs(5));
    let answers = lab.who_answers(60);
    assert!(answers.contains(&"web2".to_string()), "web2 should serve again: {answers:?}");
}

#[test]
fn http_checks_catch_errors_wrong_bodies_and_silence_and_all_down_refuses_clients() {
    let lab = start("lbt8");
    lab.topo.set_health_mode("web1", HealthMode::Error);
    lab.topo.set_health_mode("web2", HealthMode::WrongBody);
    lab.topo.set_health_mode("web3", HealthMode::Silent);
    for (name, reason) in [
        ("web1", "status 500 (expected 200)"),
        ("web2", "body did not match /Bienvenue/"),
        ("web3", "timeout after 100 ms"),
    ] {
        let backend = format!("backend={}:80", address(name));
        lab.wait_lines(&["backend is DOWN", &backend, reason], 1, Duration::from_secs(10));
    }
    lab.wait_lines(&["health applied", "down=3"], 1, Duration::from_secs(5));
    // Every backend of the service is DOWN: on_no_backend (reject, the
    // default) applies, and the client is refused at once.
    let started = Instant::now();
    let outcome = in_ns(&lab.topo.client(), http_get);
    let err = outcome.expect_err("no backend should answer");
    eprintln!(
        "with every backend DOWN the client was refused after {} ms: {err}",
        started.elapsed().as_millis()
    );
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}\n{}", lab.log());
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn a_flapping_backend_does_not_flap_the_data_plane() {
    let lab = start("lbt9");
    lab.topo.set_health_mode("web1", HealthMode::Flap);
    std::thread::sleep(Duration::from_secs(3)); // about 15 probes, alternating
    let web1 = format!("backend={}:80", address("web1"));
    let transitions = lab.count_lines(&["backend is", &web1]);
    // The first probe's UP, and at most one change after it: with rise = fall
    // = 2, alternating results never make two of a kind in a row.
    assert!(transitions <= 2, "{transitions} transitions:\n{}", lab.log());
}

#[test]
fn a_tcp_connection_on_a_down_backend_is_reset_at_once() {
    let lab = start("lbt10");
    let (backend, mut conn) = in_ns(&lab.topo.client(), || {
        let mut conn = EchoConn::open().expect("echo connection");
        (conn.exchange("hello").expect("first exchange"), conn)
    });
    // New connections to that backend's echo port are dropped (the health
    // check fails); the open one would still work at the backend.
    block(&lab, &backend, &["tcp", "dport", "9000", "ct", "state", "new", "drop"]);
    let tag = format!("backend={}:9000", address(&backend));
    lab.wait_lines(&["backend is DOWN", &tag], 1, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(5));
    let started = Instant::now();
    let result = conn.exchange("still there?");
    let counters: Vec<_> =
        lb_tests::counters::read(&lab.pin_dir).into_iter().filter(|(_, v)| *v > 0).collect();
    let err = result
        .expect_err(&format!("the load balancer resets the connection; counters {counters:?}"));
    eprintln!("reset after {} ms: {err}", started.elapsed().as_millis());
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A backend that is DOWN when the controller restarts stays out of
/// rotation from the first moment of the new controller: it does not get
/// flows until its own probes bring it back.
#[test]
fn a_down_backend_stays_out_across_a_controller_restart() {
    let mut lab = start("lbt24");
    let web2 = format!("backend={}:80", address("web2"));
    lab.topo.set_health_mode("web2", HealthMode::Error);
    lab.wait_lines(&["backend is DOWN", &web2], 1, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(5));
    lab.restart();
    // Straight after the restart, before any probe of the new controller
    // could have answered: the view and the traffic both leave web2 out.
    let list = lab.ctl_ok(&["list", "web"]);
    let line =
        list.lines().find(|l| l.contains(&format!("{}:80", address("web2")))).unwrap_or_default();
    assert!(line.contains("DOWN"), "web2 is DOWN at once after the restart:\n{list}");
    let seen = in_ns(&lab.topo.client(), || {
        (0..30)
            .map(|i| http_get().unwrap_or_else(|e| panic!("request {i}: {e}")))
            .collect::<Vec<_>>()
    });
    assert!(seen.iter().all(|body| !body.contains("WEB2")), "web2 answered: {seen:?}");
    // Healthy again, it comes back after `rise` probes.
    lab.topo.set_health_mode("web2", HealthMode::Ok);
    lab.wait_lines(&["backend is UP", &web2], 1, Duration::from_secs(10));
}
