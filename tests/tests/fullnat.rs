//! Full NAT (`forwarding = "fullnat"`) end to end: backends behind a
//! router of their own (`Topology::add_routed_subnet`: app1..app3 in
//! 10.77.4.0/24, their default route that router, which has no route to
//! the client), reached through the VIP. NAT mode cannot reach them (their
//! replies to the client's address end at the router); full NAT can (they
//! answer the load balancer's pool address, here the default: its own
//! address toward them, 10.77.2.1). Run as root, one test at a time
//! (`cargo xtask test` does both); namespaces `lbf-*`.
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Duration,
};

use lb_common::counter::Counter;
use lb_testbed::{
    counters,
    harness::{EchoConn, Lab, Setup, http_get_at},
    netns::{in_ns, ns_sh},
    server::ECHO_PORT,
    topology::{LB_BACKEND_SIDE, LB_BACKEND_SIDE6, ROUTED_BACKENDS, VIP, VIP6},
    traffic::Traffic,
};
use lb_tests::bulk;

/// The services beyond web (80) and echo (9000), both full NAT over
/// app1..app3 (`full_nat`): the same backends in NAT mode (8080, where
/// their servers answer HTTP too), 2 MB transfers to app1 (9100, served by
/// `bulk::serve`), and app1's echoes 9001 and 9002 with a range of 64
/// ports, one rejecting past it (the default `on_no_backend`), one dropping.
const MORE_SERVICES: &str = r#"
[[service]]
name = "nat"
vip = "10.77.1.100"
port = 8080
protocol = "tcp"
forwarding = "nat"
  [[service.backend]]
  address = "10.77.4.11"
  port = 8080
  [[service.backend]]
  address = "10.77.4.12"
  port = 8080
  [[service.backend]]
  address = "10.77.4.13"
  port = 8080

[[service]]
name = "bulk"
vip = "10.77.1.100"
port = 9100
protocol = "tcp"
forwarding = "fullnat"
  [[service.backend]]
  address = "10.77.4.11"
  port = 9100

[[service]]
name = "narrow-reject"
vip = "10.77.1.100"
port = 9001
protocol = "tcp"
forwarding = "fullnat"
snat_ports = "61000-61063"
  [[service.backend]]
  address = "10.77.4.11"
  port = 9001

[[service]]
name = "narrow-drop"
vip = "10.77.1.100"
port = 9002
protocol = "tcp"
forwarding = "fullnat"
snat_ports = "61000-61063"
on_no_backend = "drop"
  [[service.backend]]
  address = "10.77.4.11"
  port = 9002
"#;

const NAT_PORT: u16 = 8080;
const BULK_PORT: u16 = 9100;
const NARROW_REJECT_PORT: u16 = 9001;
const NARROW_DROP_PORT: u16 = 9002;
/// The ports of `snat_ports = "61000-61063"`.
const NARROW_RANGE: usize = 64;
/// The default `snat_ports`.
const DEFAULT_PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_535;

fn full_nat() -> Setup {
    Setup {
        routed: true,
        web: "forwarding = \"fullnat\"\n",
        echo: "forwarding = \"fullnat\"\n",
        tables: MORE_SERVICES,
        ..Setup::default()
    }
}

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_insert(0) += 1;
    }
    counts
}

fn app_names() -> Vec<String> {
    ROUTED_BACKENDS.iter().map(|(name, _)| (*name).to_owned()).collect()
}

/// The same three backends: through a NAT-mode service no connection
/// opens (their answers never come back: each attempt ends at the
/// client's bounded connect timeout); through a full-NAT one every request
/// is answered, and by all three.
#[test]
fn backends_behind_their_own_router_fail_through_nat_and_answer_through_full_nat() {
    let lab = Lab::start_with("lbf-a", full_nat(), [Some(1); 3]);
    assert_nat_fails(&lab, VIP);
    let answers = tally(lab.who_answers(30));
    eprintln!("through the full-NAT service: {answers:?}");
    assert_eq!(answers.values().sum::<usize>(), 30);
    assert_eq!(answers.keys().cloned().collect::<Vec<_>>(), app_names(), "every backend answers");
}

/// Three requests to the NAT-mode service on `vip` (port 8080): none is
/// answered, each ends at its bounded connect timeout.
fn assert_nat_fails(lab: &Lab, vip: &'static str) {
    let nat = in_ns(&lab.topo.client(), move || {
        (0..3).map(|_| http_get_at(vip, NAT_PORT).map_err(|e| e.kind())).collect::<Vec<_>>()
    });
    eprintln!("through the NAT-mode service: {nat:?}");
    assert!(nat.iter().all(Result::is_err), "a NAT-mode request was answered: {nat:?}");
}

/// What a backend sees: every connection of the full-NAT echo comes from
/// the pool address (the default: the load balancer's address toward the
/// backends) and a port of the default range, never from the client.
#[test]
fn each_backend_sees_the_pool_address_as_its_peer() {
    let lab = Lab::start_with("lbf-b", full_nat(), [Some(1); 3]);
    assert_peers_are_the_pool(&lab, VIP, LB_BACKEND_SIDE);
}

/// `[dataplane]`'s `snat_addresses` is the pool of the full-NAT services
/// that name none: each backend sees that address, a second one of the
/// load balancer's on its backend-side link, not the route's own source;
/// `lb-ctl list` shows it on the service's line.
#[test]
fn a_dataplane_pool_serves_the_services_that_name_none() {
    let setup =
        Setup { dataplane: "snat_addresses = [\"10.77.2.5\", \"fd77:2::5\"]\n", ..full_nat() };
    let lab = Lab::start_with("lbf-p", setup, [Some(1); 3]);
    ns_sh(&lab.topo.lb(), &["ip", "addr", "add", "10.77.2.5/24", "dev", "lb-b"]);
    assert_peers_are_the_pool(&lab, VIP, "10.77.2.5");
    let list = lab.ctl_ok(&["list"]);
    let echo = list.lines().find(|l| l.contains("(echo)")).expect("the echo service's line");
    assert!(echo.contains(" snat=10.77.2.5:61000-65535 "), "{echo}");
}

/// Opens 30 connections to the full-NAT echo on `vip` (all three
/// backends get some) and checks each backend's `ss -tn`: as many
/// connections as it was given, each from `pool` and a port of the
/// default range.
fn assert_peers_are_the_pool(lab: &Lab, vip: &'static str, pool: &str) {
    let conns = in_ns(&lab.topo.client(), move || {
        (0..30)
            .map(|i| {
                let mut conn = EchoConn::open_at(vip, ECHO_PORT)
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let backend = conn.exchange("hello").unwrap_or_else(|e| panic!("echo {i}: {e}"));
                (conn, backend)
            })
            .collect::<Vec<_>>()
    });
    let per_backend = tally(conns.iter().map(|(_, b)| b.clone()));
    eprintln!("connections per backend: {per_backend:?}");
    assert_eq!(per_backend.keys().cloned().collect::<Vec<_>>(), app_names());
    let sport = format!(":{ECHO_PORT}");
    for (name, count) in &per_backend {
        let ss = ns_sh(
            &lab.topo.web(name),
            &["ss", "-Htn", "state", "established", "sport", "=", &sport],
        );
        eprintln!("{name}: ss -tn\n{ss}");
        // Recv-Q, Send-Q, local address:port, peer address:port (an IPv6
        // address in brackets).
        let peers: Vec<(String, u16)> = ss
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.rsplit_once(':'))
            .map(|(ip, port)| (ip.replace(['[', ']'], ""), port.parse().expect("a port")))
            .collect();
        assert_eq!(peers.len(), *count, "{name}'s established connections: {ss}");
        for (ip, port) in &peers {
            assert_eq!(ip, pool, "{name}'s peer");
            assert!(DEFAULT_PORTS.contains(port), "{name}'s peer port {port}");
        }
    }
    drop(conns);
}

/// 2 MB down from and 2 MB up to app1 through the full-NAT VIP, each
/// compared byte for byte with what was sent.
#[test]
fn two_megabyte_transfers_each_way_arrive_intact_through_full_nat() {
    let lab = Lab::start_with("lbf-c", full_nat(), [Some(1); 3]);
    let app1 = ROUTED_BACKENDS[0].1;
    let listener = in_ns(&lab.topo.web("app1"), move || {
        TcpListener::bind((app1, BULK_PORT)).expect("bulk listener")
    });
    let server = bulk::serve(listener, 2);
    let vip = SocketAddr::from((VIP.parse::<Ipv4Addr>().expect("VIP"), BULK_PORT));
    let size = 2 << 20;
    let (down, up) = in_ns(&lab.topo.client(), move || {
        (bulk::download(vip, 7, size), bulk::upload(vip, 8, size))
    });
    eprintln!("download {down:?}, upload {up:?}");
    assert!(down.is_ok() && up.is_ok(), "2 MB each way: download {down:?}, upload {up:?}");
    server.join().expect("bulk server");
    // The data plane carried them (not the kernel).
    let id = counters::service_id(&lab.pin_dir, VIP.parse().expect("VIP"), BULK_PORT)
        .expect("the bulk service");
    let traffic = counters::service_traffic(&lab.pin_dir, id);
    assert!(
        traffic.in_bytes > size && traffic.out_bytes > size,
        "the bulk service's counters: {traffic:?}"
    );
}

/// One backend, a range of 64 ports, 100 connections held at once: 64
/// open and echo; the other 36 are answered as `on_no_backend` says, a
/// reset with `reject` (refused at once, counted `reject_snat_exhausted`,
/// not `reject_tcp`), nothing with `drop` (each connect gives up at its
/// bounded timeout, counted `drop_snat_exhausted`); the 64
/// held ones still echo afterwards.
#[test]
fn a_spent_port_range_answers_new_connections_as_on_no_backend_says() {
    let lab = Lab::start_with("lbf-d", full_nat(), [Some(1); 3]);
    let pin_dir = lab.pin_dir.clone();
    let rejects_before = counters::get(&pin_dir, Counter::RejectSnatExhausted);
    let no_backend_before = counters::get(&pin_dir, Counter::RejectTcp);
    let (held, refused) = in_ns(&lab.topo.client(), || {
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for i in 0..100 {
            match EchoConn::open_port(NARROW_REJECT_PORT).and_then(|mut c| {
                c.exchange(&format!("held {i}"))?;
                Ok(c)
            }) {
                Ok(conn) => held.push(conn),
                Err(e) => refused.push(e.kind()),
            }
        }
        (held, refused)
    });
    let rejected = counters::get(&pin_dir, Counter::RejectSnatExhausted) - rejects_before;
    let no_backend = counters::get(&pin_dir, Counter::RejectTcp) - no_backend_before;
    eprintln!(
        "reject: {} held, refused {:?}; reject_snat_exhausted +{rejected}, reject_tcp +{no_backend}",
        held.len(),
        tally_kinds(&refused)
    );
    assert_eq!(held.len(), NARROW_RANGE);
    assert_eq!(refused, [ErrorKind::ConnectionRefused; 100 - NARROW_RANGE]);
    assert!(rejected >= (100 - NARROW_RANGE) as u64, "reject_snat_exhausted +{rejected}");
    assert_eq!(no_backend, 0, "a spent pool is not counted as no backend");

    let exhausted_before = counters::get(&pin_dir, Counter::DropSnatExhausted);
    let (dropping, unanswered) = in_ns(&lab.topo.client(), || {
        let mut held = Vec::new();
        for i in 0..NARROW_RANGE {
            let mut conn = EchoConn::open_port(NARROW_DROP_PORT)
                .unwrap_or_else(|e| panic!("connection {i} of the range: {e}"));
            conn.exchange("held").unwrap_or_else(|e| panic!("echo {i} of the range: {e}"));
            held.push(conn);
        }
        // At once, each bounded by its connect timeout.
        let extra: Vec<_> = (NARROW_RANGE..100)
            .map(|_| std::thread::spawn(|| EchoConn::open_port(NARROW_DROP_PORT).map(drop)))
            .collect();
        let kinds: Vec<_> = extra
            .into_iter()
            .map(|t| t.join().expect("a connect thread").map_err(|e| e.kind()))
            .collect();
        (held, kinds)
    });
    let exhausted = counters::get(&pin_dir, Counter::DropSnatExhausted) - exhausted_before;
    let unanswered_kinds = tally(unanswered.iter().map(|r| format!("{r:?}")));
    eprintln!(
        "drop: {} held, the others {unanswered_kinds:?}; drop_snat_exhausted +{exhausted}",
        dropping.len()
    );
    assert_eq!(unanswered, [Err(ErrorKind::TimedOut); 100 - NARROW_RANGE]);
    assert!(exhausted >= (100 - NARROW_RANGE) as u64, "drop_snat_exhausted +{exhausted}");

    // Both sets of held connections still work.
    let still = in_ns(&lab.topo.client(), move || {
        held.into_iter().chain(dropping).map(|mut c| c.exchange("still here")).collect::<Vec<_>>()
    });
    let broken: Vec<_> = still.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(broken.is_empty(), "held connections broke: {broken:?}");
    assert_eq!(still.len(), 2 * NARROW_RANGE);
}

fn tally_kinds(kinds: &[ErrorKind]) -> BTreeMap<String, usize> {
    tally(kinds.iter().map(|k| format!("{k:?}")))
}

/// `lb-ctl run` killed (SIGKILL) and started again while full-NAT
/// connections exchange lines every few milliseconds and new ones keep
/// opening: the mappings are pinned state, so the new controller adopts
/// them and not one request fails nor one connection breaks.
#[test]
fn a_killed_controller_breaks_no_full_nat_connection() {
    let mut lab = Lab::start_with("lbf-e", full_nat(), [Some(1); 3]);
    let traffic = Traffic::start(&lab.topo.client(), 3);
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_and_restart(Duration::from_millis(500));
    assert!(lab.log().contains("adopted the pinned data plane"), "{}", lab.log());
    std::thread::sleep(Duration::from_millis(1500));
    let (requests, echoes) = traffic.finish();
    let apps = app_names();
    for echo in &echoes {
        assert!(echo.backends.iter().all(|b| apps.contains(b)), "not full NAT's: {echo:?}");
    }
    let requests = Traffic::check_unbroken(requests, &echoes, 100);
    assert!(requests.done > 100, "only {} requests were made", requests.done);
}

/// The NAT66 service on the IPv6 VIP, port 8080, over app1..app3's IPv6
/// addresses (`full_nat6`).
const NAT66_SERVICE: &str = r#"
[[service]]
name = "nat6"
vip = "fd77:1::100"
port = 8080
protocol = "tcp"
forwarding = "nat"
  [[service.backend]]
  address = "fd77:4::11"
  port = 8080
  [[service.backend]]
  address = "fd77:4::12"
  port = 8080
  [[service.backend]]
  address = "fd77:4::13"
  port = 8080
"#;

/// Dual stack: web6 and echo6 full NAT over app1..app3's IPv6 addresses,
/// and a NAT66 service over them (`NAT66_SERVICE`).
fn full_nat6() -> Setup {
    Setup { ipv6: true, tables: NAT66_SERVICE, ..full_nat() }
}

/// IPv6, as the IPv4 tests above: the routed backends fail through NAT66
/// and answer through full NAT, all three, and see the pool address (the
/// load balancer's fd77:2::1) and a port of the range as their peer.
#[test]
fn ipv6_backends_behind_their_own_router_answer_through_full_nat_only() {
    let lab = Lab::start_with("lbf-f", full_nat6(), [Some(1); 3]);
    assert_nat_fails(&lab, VIP6);
    let answers = tally(lab.who_answers6(30));
    eprintln!("through the full-NAT service: {answers:?}");
    assert_eq!(answers.values().sum::<usize>(), 30);
    assert_eq!(answers.keys().cloned().collect::<Vec<_>>(), app_names(), "every backend answers");
    assert_peers_are_the_pool(&lab, VIP6, LB_BACKEND_SIDE6);
}
