//! Health checks end to end, the way the classic workshop tests them: block
//! a web server with a firewall rule in its namespace, watch it go DOWN and
//! the traffic move, unblock it and watch it come back.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use lb_testbed::{
    harness::{Checks, EchoConn, FAST_CHECKS, Lab, http_get, wait_for},
    netns::{block_input, in_ns, ns_try, unblock_input},
    server::HealthMode,
    topology::BACKENDS,
};

/// fall x interval + timeout of `FAST_CHECKS` (2 x 200 + 100 ms).
const DETECTION_BOUND: Duration = Duration::from_millis(500);
/// Scheduling noise on a shared 2-core machine, and the log poll. Less than
/// an interval; the exact number of failed probes before DOWN (what an
/// off-by-one in `fall` changes) is checked from the backend's side in
/// `http_checks_catch_errors_...`.
const MARGIN: Duration = Duration::from_millis(200);
/// `fall` and `rise` of `FAST_CHECKS`.
const FALL: usize = 2;

fn start(prefix: &str) -> Lab {
    let lab = Lab::start_with_checks(prefix, Some(&FAST_CHECKS));
    // Every checked backend (3 web + 3 echo) has had its first probe.
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    lab
}

fn block(lab: &Lab, name: &str, rule: &[&str]) {
    block_input(&lab.topo.web(name), rule);
}

fn unblock(lab: &Lab, name: &str) {
    unblock_input(&lab.topo.web(name));
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
    let answered_before = lab.topo.health_answers("web1").len();
    lab.topo.set_health_mode("web1", HealthMode::Error);
    lab.topo.set_health_mode("web2", HealthMode::WrongBody);
    lab.topo.set_health_mode("web3", HealthMode::Silent);
    let web1 = format!("backend={}:80", address("web1"));
    lab.wait_lines(&["backend is DOWN", &web1], 1, Duration::from_secs(10));
    // The log line follows the probe that took it DOWN by microseconds, the
    // next probe by an interval: exactly `fall` errors were answered.
    let answers = &lab.topo.health_answers("web1")[answered_before..];
    let errors = answers.iter().filter(|a| *a == HealthMode::Error.as_str()).count();
    assert_eq!(errors, FALL, "web1 went DOWN after {errors} failed probes: {answers:?}");
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
    let answered_before = lab.topo.health_answers("web1").len();
    lab.topo.set_health_mode("web1", HealthMode::Flap);
    // The controller's view while web1 alternates: it must see both results.
    let mut seen_ok = BTreeSet::new();
    let flapped = wait_for("16 alternating health answers", Duration::from_secs(10), || {
        let last = lab.backend_view(address("web1"), 80).health.last_check;
        seen_ok.extend(last.map(|c| c.ok));
        let answers = lab.topo.health_answers("web1").split_off(answered_before);
        // From the first error on, every answer is flapped.
        let from_error: Vec<String> =
            answers.iter().skip_while(|a| *a != HealthMode::Error.as_str()).cloned().collect();
        if from_error.len() >= 16 { Ok(from_error) } else { Err(answers) }
    });
    let alternating = flapped.iter().zip(["500", "ok"].iter().cycle()).all(|(a, b)| a == b);
    assert!(alternating, "the probes got alternating answers: {flapped:?}");
    assert_eq!(seen_ok, [false, true].into(), "the controller saw failures and successes");
    // The first probe's UP and nothing after it: with rise = fall = 2,
    // alternating results never make two of a kind in a row.
    let web1 = format!("backend={}:80", address("web1"));
    let transitions = lab.count_lines(&["backend is", &web1]);
    assert_eq!(transitions, 1, "{transitions} transitions:\n{}", lab.log());
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
        lb_testbed::counters::read(&lab.pin_dir).into_iter().filter(|(_, v)| *v > 0).collect();
    let err = result
        .expect_err(&format!("the load balancer resets the connection; counters {counters:?}"));
    eprintln!("reset after {} ms: {err}", started.elapsed().as_millis());
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Checks for `a_down_backend_stays_out_across_a_controller_restart`: as
/// `FAST_CHECKS`, but `rise = 10` on the web service, so that a DOWN
/// backend that is healthy again needs 2 s of probes to come back.
const SLOW_RISE: Checks = Checks {
    web: "check = \"http\"\npath = \"/health\"\nexpect_body = \"Bienvenue\"\ninterval_ms = 200\ntimeout_ms = 100\nrise = 10\nfall = 2\n",
    echo: FAST_CHECKS.echo,
    udp: FAST_CHECKS.udp,
};
const SLOW_RISE_COUNT: usize = 10;

/// A backend that is DOWN when the controller restarts stays out of
/// rotation from the first moment of the new controller, even when it is
/// healthy again by then: it takes `rise` probes of the new controller to
/// come back, not its first one.
#[test]
fn a_down_backend_stays_out_across_a_controller_restart() {
    let mut lab = Lab::start_with_checks("lbt24", Some(&SLOW_RISE));
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let web2 = format!("backend={}:80", address("web2"));
    lab.topo.set_health_mode("web2", HealthMode::Error);
    lab.wait_lines(&["backend is DOWN", &web2], 1, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(5));
    // Healthy again: only the kept state can hold it out now.
    lab.topo.set_health_mode("web2", HealthMode::Ok);
    lab.restart();
    let restarted = Instant::now();
    let answered_at_restart = lab.topo.health_answers("web2").len();
    // Straight after the restart, before the new controller's probes could
    // bring it back: the view and the traffic both leave web2 out.
    let view = lab.backend_view(address("web2"), 80);
    assert_eq!(view.health.status, "DOWN", "web2 is DOWN at once after the restart: {view:?}");
    let seen = in_ns(&lab.topo.client(), || {
        (0..30)
            .map(|i| http_get().unwrap_or_else(|e| panic!("request {i}: {e}")))
            .collect::<Vec<_>>()
    });
    let checked = restarted.elapsed();
    assert!(seen.iter().all(|body| !body.contains("WEB2")), "web2 answered: {seen:?}");
    assert_eq!(lab.count_lines(&["backend is UP", &web2]), 0, "web2 came back during the check");
    eprintln!("web2 held out for the {} ms the checks took", checked.as_millis());
    // It comes back after `rise` probes of the new controller, not one.
    lab.wait_lines(&["backend is UP", &web2], 1, Duration::from_secs(10));
    // Counted from just after the restart: a probe of the new controller
    // may have been answered before that count was taken.
    let probes = lab.topo.health_answers("web2").len() - answered_at_restart;
    assert!(probes >= SLOW_RISE_COUNT - 1, "UP again after {probes} probes");
}

/// web's backends probed on their echo port (9000), not on 80: HAProxy's
/// `check port`, keepalived's `connect_port`.
const ON_THE_ECHO_PORT: Checks = Checks {
    web: "check = \"tcp\"\ncheck_port = 9000\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = 2\n",
    echo: FAST_CHECKS.echo,
    udp: FAST_CHECKS.udp,
};

/// `check_port`: blocking only the port the checks go to takes web2 out of
/// the web service, though its port 80 still answers; the state is web2:80's
/// own; unblocking brings it back.
#[test]
fn check_port_probes_another_port_for_the_backend() {
    let lab = Lab::start_with_checks("lbt34", Some(&ON_THE_ECHO_PORT));
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let web2 = format!("backend={}:80", address("web2"));
    block(&lab, "web2", &["tcp", "dport", "9000", "drop"]);
    lab.wait_lines(&["backend is DOWN", &web2], 1, Duration::from_secs(10));
    // web2:80 and, through echo's own check, web2:9000.
    lab.wait_lines(&["health applied", "down=2"], 1, Duration::from_secs(5));
    let port_80 = format!("exec 3<>/dev/tcp/{}/80", address("web2"));
    assert!(ns_try(&lab.topo.lb(), &["bash", "-c", &port_80]), "web2's port 80 still answers");
    let answers = lab.who_answers(40);
    assert!(!answers.contains(&"web2".to_string()), "web2 got new flows: {answers:?}");

    unblock(&lab, "web2");
    lab.wait_lines(&["backend is UP", &web2], 2, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=0"], 1, Duration::from_secs(5));
    let answers = lab.who_answers(60);
    assert!(answers.contains(&"web2".to_string()), "web2 should serve again: {answers:?}");
}
