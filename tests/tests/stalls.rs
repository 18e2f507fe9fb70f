//! The controller under load and stopped, end to end: what it does slowly
//! must not hold up its probes or `/readyz` (keepalived would move the VIP,
//! and a late probe can take a healthy backend DOWN), and what the data
//! plane needs from time must not stop with it.
use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::abi::{CONN_ESTABLISHED, Conn, Flow, PROTO_TCP};
use lb_ctl::write::dataplane::conn_table::ConnTable;
use lb_testbed::{
    harness::{EchoConn, FAST_CHECKS, Lab, Setup, http_get, http_request, http_request_within},
    netns::{in_ns, ns_sh},
    topology::VIP,
};

const ADMIN: &str = "127.0.0.1:9100";
/// Entries put in the connection table besides the test's own.
const FILLER: u32 = 1_000_000;
/// Concurrent `GET /api/v1/conns` clients, and how long they keep asking.
const LISTERS: usize = 20;
const LOAD_FOR: Duration = Duration::from_secs(10);

fn conntrack(pin_dir: &str) -> ConnTable {
    ConnTable::pinned(std::path::Path::new(pin_dir))
        .unwrap_or_else(|e| panic!("mapping {pin_dir}/lb_conntrack: {e}"))
}

/// The connection entry of one real request, to copy: its ids and its
/// stamp are the data plane's own (the test cannot read its clock).
fn a_real_entry(lab: &Lab) -> Conn {
    in_ns(&lab.topo.client(), http_get).expect("a request through the VIP");
    let table = conntrack(&lab.pin_dir);
    let mut found = None;
    table.for_each(|_, slot| {
        if slot.dport == 80 {
            found = Some(slot.conn());
        }
    });
    found.expect("the request's connection entry")
}

/// A million live-looking established entries, as a busy load balancer's
/// table holds (clients 10.77.128.0/17, every port).
fn fill(lab: &Lab, like: Conn) -> Duration {
    let started = Instant::now();
    let table = conntrack(&lab.pin_dir);
    let conn = Conn { state: CONN_ESTABLISHED, ..like };
    for i in 0..FILLER {
        let flow = Flow {
            src: [10, 77, 128 + (i >> 16) as u8, (i >> 8) as u8],
            dst: VIP.parse::<Ipv4Addr>().expect("VIP").octets(),
            sport: 1024 + (i & 0xff) as u16,
            dport: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        table.record(&flow, &conn, |_| 0);
    }
    started.elapsed()
}

/// Gaps between consecutive probes of `name` that end after `since` (Unix
/// microseconds), in milliseconds, up to now: the gap from the last probe
/// before `since` counts, and so does the time since the last probe, so
/// probes that stopped altogether show as one long gap.
fn probe_gaps(lab: &Lab, name: &str, since: u128) -> Vec<u128> {
    let mut times: Vec<u128> =
        lab.topo.health_answer_times(name).into_iter().map(|(_, at)| at).collect();
    times.push(unix_micros());
    times.windows(2).filter(|w| w[1] >= since).map(|w| (w[1] - w[0]) / 1000).collect()
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// A million entries in the connection table and 20 clients listing it
/// without pause, while every backend is probed every 200 ms: no backend
/// changes state, `/readyz` answers 200 every time it is asked, and the
/// API still takes a change. The longest gap between two probes of a
/// backend is printed (the probe-timer delay is that minus 200 ms).
#[test]
fn listing_a_million_connections_holds_up_neither_probes_nor_readyz() {
    let setup =
        Setup { checks: Some(&FAST_CHECKS), conntrack_max: Some(1 << 21), ..Setup::default() };
    let lab = Lab::start_with("lbt70", setup, [Some(1); 3]);
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let took = fill(&lab, a_real_entry(&lab));
    eprintln!("{FILLER} entries written in {} ms", took.as_millis());
    let transitions = lab.count_lines(&["backend is"]);
    let since = unix_micros();

    let stop = Arc::new(AtomicBool::new(false));
    let auth = lab.bearer();
    let listers: Vec<_> = (0..LISTERS)
        .map(|_| {
            let (lb, stop, auth) = (lab.topo.lb(), Arc::clone(&stop), auth.clone());
            std::thread::spawn(move || {
                in_ns(&lb, move || {
                    let mut slowest = Duration::ZERO;
                    let (mut listed, mut timed_out) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let asked = Instant::now();
                        let path = "/api/v1/conns?limit=5";
                        let patience = Duration::from_secs(30);
                        let (status, body) =
                            http_request_within(ADMIN, "GET", path, None, Some(&auth), patience)
                                .expect("GET /api/v1/conns");
                        // Two walks at a time: a listing that waits its
                        // turn past the API's 10 s limit is answered 408.
                        match status {
                            200 => listed += 1,
                            408 => timed_out += 1,
                            _ => panic!("GET /api/v1/conns: {status} {body}"),
                        }
                        slowest = slowest.max(asked.elapsed());
                    }
                    (listed, timed_out, slowest)
                })
            })
        })
        .collect();

    // Meanwhile: /readyz every 100 ms, and one change through the API.
    let lb = lab.topo.lb();
    let readyz = in_ns(&lb, || {
        let deadline = Instant::now() + LOAD_FOR;
        let mut answers = Vec::new();
        while Instant::now() < deadline {
            let asked = Instant::now();
            let status = http_request(ADMIN, "GET", "/readyz", None, None).map_or(0, |(s, _)| s);
            answers.push((status, asked.elapsed()));
            std::thread::sleep(Duration::from_millis(100));
        }
        answers
    });
    let auth = lab.bearer();
    let change = in_ns(&lb, move || {
        let asked = Instant::now();
        let body = r#"{"weight": 2}"#;
        let path = "/api/v1/services/web/backends/10.77.2.13:80";
        let (status, answer) =
            http_request(ADMIN, "PATCH", path, Some(body), Some(&auth)).expect("PATCH a backend");
        assert_eq!(status, 200, "{answer}");
        asked.elapsed()
    });
    stop.store(true, Ordering::Relaxed);
    let listers: Vec<(usize, usize, Duration)> =
        listers.into_iter().map(|h| h.join().expect("a lister")).collect();

    let calls: usize = listers.iter().map(|(c, _, _)| c).sum();
    let timed_out: usize = listers.iter().map(|(_, t, _)| t).sum();
    let slowest_list = listers.iter().map(|(_, _, s)| *s).max().unwrap_or_default();
    let slowest_ready = readyz.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let gaps: Vec<u128> =
        ["web1", "web2", "web3"].iter().flat_map(|name| probe_gaps(&lab, name, since)).collect();
    let longest_gap = gaps.iter().copied().max().unwrap_or(0);
    eprintln!(
        "{calls} listings of {FILLER}+ entries, {timed_out} answered 408 (slowest {} ms); /readyz asked {} times (slowest {} ms); \
         a PATCH answered in {} ms; {} probe gaps, longest {longest_gap} ms against an interval of 200 ms",
        slowest_list.as_millis(),
        readyz.len(),
        slowest_ready.as_millis(),
        change.as_millis(),
        gaps.len()
    );
    let not_ready: Vec<_> = readyz.iter().filter(|(s, _)| *s != 200).collect();
    assert!(not_ready.is_empty(), "/readyz failed {} times: {not_ready:?}", not_ready.len());
    assert_eq!(
        lab.count_lines(&["backend is"]),
        transitions,
        "a backend changed state under the load:\n{}",
        lab.log()
    );
    assert!(calls >= LISTERS, "the listings ran ({calls})");
    assert!(gaps.len() >= 3 * 30, "the probes went on: {} gaps", gaps.len());
}

/// `lb-ctl run` frozen (SIGSTOP): a backend gets a new MAC address, and the
/// data plane, on its own clock, looks the next hop up again and reaches it;
/// before the clock was the kernel's, the controller ticked it and the old
/// MAC stayed cached for as long as the controller was stopped.
#[test]
fn a_stopped_controller_does_not_stop_the_data_planes_clock() {
    let lab = Lab::start("lbt71");
    let web1 = lab.topo.web("web1");
    let seen = lab.who_answers(30);
    assert!(seen.contains(&"web1".to_owned()), "web1 answers: {seen:?}");
    let pid = lab.pid().to_string();
    assert!(lb_testbed::netns::output(&["kill", "-STOP", &pid]).status.success());
    let result = std::panic::catch_unwind(|| {
        let new_mac = "02:00:00:00:77:11";
        ns_sh(&web1, &["ip", "link", "set", "dev", "eth0", "address", new_mac]);
        ns_sh(
            &lab.topo.lb(),
            &[
                "ip",
                "neigh",
                "replace",
                "10.77.2.11",
                "lladdr",
                new_mac,
                "dev",
                "lb-b",
                "nud",
                "reachable",
            ],
        );
        // A tick of 100 ms, and some scheduling.
        std::thread::sleep(Duration::from_millis(300));
        lab.who_answers(30)
    });
    assert!(lb_testbed::netns::output(&["kill", "-CONT", &pid]).status.success());
    let seen = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(seen.contains(&"web1".to_owned()), "web1 still answers at its new MAC: {seen:?}");
}

/// A nameserver on the backends' LAN that nobody holds: queries go
/// unanswered, and the resolver gives up after 3 s.
const DEAF_DNS: &str = "nameserver 10.77.2.250\noptions timeout:3 attempts:1\n";

/// `SIGHUP` with a syslog host whose DNS server drops the queries: the
/// reload waits for the resolver (and is refused, naming the key), while
/// the probes go on every 200 ms and `/readyz` answers.
#[test]
fn a_reload_stuck_on_dns_holds_up_neither_probes_nor_readyz() {
    let setup = Setup {
        checks: Some(&FAST_CHECKS),
        tables: "\n[log]\nsyslog = \"127.0.0.1:5514\"\n",
        resolv_conf: Some(DEAF_DNS),
        ..Setup::default()
    };
    let mut lab = Lab::start_with("lbt72", setup, [Some(1); 3]);
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let transitions = lab.count_lines(&["backend is"]);
    let since = unix_micros();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (lb, stop) = (lab.topo.lb(), Arc::clone(&stop));
        move || {
            in_ns(&lb, move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let status =
                        http_request(ADMIN, "GET", "/readyz", None, None).map_or(0, |(s, _)| s);
                    answers.push((status, asked.elapsed()));
                    std::thread::sleep(Duration::from_millis(100));
                }
                answers
            })
        }
    });
    let text = lab.config_text([Some(1); 3]).replace("127.0.0.1:5514", "syslog.lbtest.invalid:514");
    let asked = Instant::now();
    lab.reload_text(&text, "reload refused");
    let reload_took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    let readyz = watcher.join().expect("the /readyz watcher");
    let gaps: Vec<u128> =
        ["web1", "web2", "web3"].iter().flat_map(|name| probe_gaps(&lab, name, since)).collect();
    let longest_gap = gaps.iter().copied().max().unwrap_or(0);
    eprintln!(
        "the reload was refused after {} ms; /readyz asked {} times; {} probe gaps, longest {longest_gap} ms",
        reload_took.as_millis(),
        readyz.len(),
        gaps.len()
    );
    assert!(lab.log().contains("log.syslog"), "the refusal names the key:\n{}", lab.log());
    assert!(reload_took >= Duration::from_secs(2), "the resolver was asked ({reload_took:?})");
    assert!(readyz.iter().all(|(s, _)| *s == 200), "/readyz answered {readyz:?}");
    // keepalived's track script (examples/keepalived) gives it 2 s.
    let slowest = readyz.iter().map(|(_, t)| *t).max().unwrap_or_default();
    assert!(slowest < Duration::from_secs(1), "/readyz took {slowest:?} during the reload");
    assert_eq!(lab.count_lines(&["backend is"]), transitions, "{}", lab.log());
    // A probe held up for the resolver's 3 s would leave a gap that long.
    assert!(longest_gap < 1000, "probes stopped for {longest_gap} ms during the reload");
}

/// `lb-ctl run` frozen, and an idle connection's entry still expires on the
/// data plane's clock: a connection held on a drained backend keeps it while
/// its entry lives; idle past `tcp_established_timeout` (1 s here), its next
/// packet is placed anew by Maglev, which no longer has the drained backend,
/// and the backend it reaches, which never saw the connection, resets it.
#[test]
fn a_stopped_controllers_data_plane_still_expires_idle_entries() {
    let setup = Setup { dataplane: "tcp_established_timeout = 1\n", ..Setup::default() };
    let lab = Lab::start_with("lbt73", setup, [Some(1); 3]);
    let client = lab.topo.client();
    let (backend, mut conn) = in_ns(&client, || {
        let mut conn = EchoConn::open().expect("echo connection");
        (conn.exchange("hello").expect("first exchange"), conn)
    });
    let at = format!("10.77.2.1{}:9000", &backend[3..]);
    lab.ctl_ok(&["backend", "drain", "echo", &at]);
    assert_eq!(conn.exchange("kept?").expect("drained, kept"), backend, "a live entry is kept");
    let pid = lab.pid().to_string();
    assert!(lb_testbed::netns::output(&["kill", "-STOP", &pid]).status.success());
    // Ten ticks make the timeout; twenty pass.
    std::thread::sleep(Duration::from_secs(2));
    let after = conn.exchange("still there?");
    assert!(lb_testbed::netns::output(&["kill", "-CONT", &pid]).status.success());
    let err = after.expect_err("the expired entry's flow was placed anew and reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}
