//! IPv6 end to end: the lab's topology with its IPv6 addresses
//! (`Topology::create_dual_stack`: clients on fd77:1::/64, backends on
//! fd77:2::/64, the VIP fd77:1::100) and the three services again on the
//! IPv6 VIP (`web6`, `echo6`, `udp6`) beside the IPv4 ones, through one
//! load balancer: new connections spread, UDP, the connection listing and
//! counts, health checks and drain, the neighbour slow path, a 1280-byte
//! MTU, a controller killed under traffic of both families, direct routing.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use lb_common::counter::Counter;
use lb_ctl::daemon::api::view::ConnsList;
use lb_testbed::{
    counters,
    harness::{
        EchoConn, FAST_CHECKS, Lab, Setup, answering_backend, backend_of, http_get_at,
        udp_query_at, wait_for,
    },
    netns::{in_ns, ns_sh},
    server::{DSR_HTTP_PORT, ECHO_PORT, bulk_byte},
    topology::{BACKENDS6, CLIENT_ADDR6, CLIENT_BYPASS_IFACE, LB_BACKEND_SIDE6, VIP6},
    traffic::Traffic,
};

fn dual(prefix: &str, setup: Setup) -> Lab {
    Lab::start_with(prefix, Setup { ipv6: true, ..setup }, [Some(1); 3])
}

fn address6(name: &str) -> &'static str {
    BACKENDS6.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).unwrap()
}

fn tally(answers: &[String]) -> BTreeMap<&str, usize> {
    let mut by = BTreeMap::new();
    for a in answers {
        *by.entry(a.as_str()).or_default() += 1;
    }
    by
}

/// `lb-ctl conns --json [--service NAME]`.
fn conns(lab: &Lab, service: Option<&str>) -> ConnsList {
    let mut args = vec!["conns", "--json"];
    args.extend(service.map(|s| ["--service", s]).into_iter().flatten());
    let json = lab.ctl_ok(&args);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("conns --json: {e}\n{json}"))
}

/// An echo connection to the IPv6 VIP that lands on backend `name` (new
/// connections are placed by a hash: a few tries find one).
fn echo_on(lab: &Lab, name: &'static str) -> EchoConn {
    in_ns(&lab.topo.client(), move || {
        for _ in 0..60 {
            let mut conn = EchoConn::open_at(VIP6, ECHO_PORT).expect("opening an echo connection");
            if conn.exchange("hello").expect("a first echo") == name {
                return conn;
            }
        }
        panic!("no echo connection of 60 landed on {name}");
    })
}

#[test]
fn ipv6_connections_spread_and_are_listed_and_counted() {
    let lab = dual("lb6-a", Setup::default());
    let client = lab.topo.client();

    // HTTP over IPv6, through the harness's client and curl.
    let answers = lab.who_answers6(150);
    let by = tally(&answers);
    eprintln!("150 requests to [{VIP6}]:80: {by:?}");
    assert_eq!(by.len(), 3, "every backend takes new IPv6 connections: {by:?}");
    let url = format!("http://[{VIP6}]/");
    let body = ns_sh(&client, &["curl", "-6", "-s", "-g", "--max-time", "3", &url]);
    assert!(answering_backend(&body).is_some(), "curl -6 {url}: {body:?}");

    // UDP over IPv6: each query from a port of its own is a flow of its own.
    let udp: Vec<String> = in_ns(&client, || {
        (0..40)
            .map(|i| {
                let payload = format!("hello {i}");
                udp_query_at(VIP6, &payload).unwrap_or_else(|e| panic!("UDP query {i}: {e}"))
            })
            .collect()
    });
    let by = tally(&udp);
    eprintln!("40 datagrams to [{VIP6}]:5353: {by:?}");
    assert!(by.keys().all(|b| BACKENDS6.iter().any(|(n, _)| n == b)), "{by:?}");
    assert!(by.len() >= 2, "IPv6 datagram flows spread: {by:?}");

    // A long-lived connection is listed with IPv6 endpoints, counted on its
    // backend by the recount (lb_conntrack6), and only under its service.
    let mut echo = echo_on(&lab, "web2");
    let web2 = format!("[{}]:{ECHO_PORT}", address6("web2"));
    let listed = wait_for("the IPv6 echo connection listed", Duration::from_secs(5), || {
        let list = conns(&lab, Some("echo6"));
        let ours: Vec<_> = list
            .conns
            .iter()
            .filter(|c| c.state == "ESTABLISHED" && c.backend.as_deref() == Some(web2.as_str()))
            .cloned()
            .collect();
        if ours.is_empty() { Err(list) } else { Ok(ours) }
    });
    let entry = &listed[0];
    assert!(entry.client.starts_with(&format!("[{CLIENT_ADDR6}]:")), "{entry:?}");
    assert_eq!(entry.vip, format!("[{VIP6}]:{ECHO_PORT}"));
    assert_eq!(entry.service.as_deref(), Some("echo6"));
    let echo4 = conns(&lab, Some("echo"));
    let ipv6 = echo4.conns.iter().filter(|c| c.client.starts_with('[')).count();
    assert_eq!(ipv6, 0, "IPv6 entries listed under the IPv4 echo service");
    let text = lab.ctl_ok(&["conns"]);
    assert!(text.contains(&format!("[{VIP6}]:{ECHO_PORT}")), "{text}");
    let list = lab.ctl_ok(&["list"]);
    eprintln!("{list}");
    assert!(list.contains(&format!("TCP  [{VIP6}]:80 maglev")), "{list}");
    let active = wait_for("web2's IPv6 echo counted active", Duration::from_secs(5), || {
        let view = lab.backend_view(address6("web2"), ECHO_PORT);
        if view.conns.active >= 1 { Ok(view.conns.active) } else { Err(view.conns) }
    });
    eprintln!("web2's echo6 backend: {active} active");
    assert_eq!(echo.exchange("still there").unwrap(), "web2");

    // The IPv6 services' traffic is read: web6 carried the 150 requests.
    let web6 = wait_for("web6's traffic", Duration::from_secs(5), || {
        let s = lab.services().into_iter().find(|s| s.name == "web6").unwrap();
        if s.traffic.new_flows >= 150 { Ok(s.traffic) } else { Err(s.traffic) }
    });
    eprintln!("web6: {web6:?}");
    assert!(web6.in_packets >= 150 * 4 && web6.out_packets >= 150 * 3, "{web6:?}");
    // The IPv4 services work beside them.
    assert_eq!(lab.who_answers(6).len(), 6);
}

#[test]
fn a_blocked_ipv6_backend_goes_down_and_a_drained_one_takes_no_new_flows() {
    let lab = dual("lb6-b", Setup { checks: Some(&FAST_CHECKS), ..Setup::default() });
    // Six checked backends of each family have had their first probe.
    lab.wait_lines(&["backend is UP"], 12, Duration::from_secs(10));
    let mut on_web2 = echo_on(&lab, "web2");

    // web2 refuses the load balancer's IPv6 probes (from fd77:2::1) only:
    // its IPv6 backends go DOWN, its IPv4 ones stay UP.
    let web2 = lab.topo.web("web2");
    ns_sh(&web2, &["nft", "add", "table", "ip6", "lb6test"]);
    ns_sh(
        &web2,
        &[
            "nft", "add", "chain", "ip6", "lb6test", "input", "{", "type", "filter", "hook",
            "input", "priority", "0", ";", "policy", "accept", ";", "}",
        ],
    );
    ns_sh(
        &web2,
        &[
            "nft",
            "add",
            "rule",
            "ip6",
            "lb6test",
            "input",
            "ip6",
            "saddr",
            LB_BACKEND_SIDE6,
            "drop",
        ],
    );
    for port in [80, ECHO_PORT] {
        let backend = format!("backend=[{}]:{port}", address6("web2"));
        lab.wait_lines(&["backend is DOWN", &backend], 1, Duration::from_secs(10));
    }
    lab.wait_lines(&["health applied", "down=2"], 1, Duration::from_secs(5));
    assert_eq!(lab.backend_view("10.77.2.12", 80).health.status, "UP");
    let answers = lab.who_answers6(60);
    assert!(!answers.iter().any(|a| a == "web2"), "a DOWN backend got new flows: {answers:?}");
    assert!(lab.who_answers(60).iter().any(|a| a == "web2"), "web2 serves IPv4 still");
    // Its established IPv6 flow stops: the data plane no longer forwards it.
    let down_before = counters::get(&lab.pin_dir, Counter::DropBackendDown)
        + counters::get(&lab.pin_dir, Counter::RstBackendDown);
    let broken = in_ns(&lab.topo.client(), move || on_web2.exchange("after DOWN"));
    let down_after = counters::get(&lab.pin_dir, Counter::DropBackendDown)
        + counters::get(&lab.pin_dir, Counter::RstBackendDown);
    eprintln!(
        "web2's IPv6 echo after DOWN: {broken:?}; backend-down drops +{}",
        down_after - down_before
    );
    assert!(broken.is_err(), "a DOWN backend's flow went on: {broken:?}");
    assert!(down_after > down_before, "no packet of the flow counted as a DOWN backend's");

    // Drain web3's IPv6 web backend: new flows avoid it, its open echo
    // connection (another service) is untouched, and it is listed as drain.
    let mut on_web3 = echo_on(&lab, "web3");
    let web3 = format!("[{}]:80", address6("web3"));
    let said = lab.ctl_ok(&["backend", "drain", "web6", &web3]);
    assert!(said.contains(&format!("web6: {web3} draining")), "{said}");
    let answers = lab.who_answers6(60);
    assert_eq!(tally(&answers).keys().copied().collect::<Vec<_>>(), ["web1"], "{answers:?}");
    assert_eq!(lab.backend_view(address6("web3"), 80).state, "drain");
    let echoed = in_ns(&lab.topo.client(), move || on_web3.exchange("after drain"));
    assert_eq!(echoed.unwrap(), "web3");
}

#[test]
fn ipv6_flows_go_on_with_the_neighbour_caches_flushed() {
    let lab = dual("lb6-c", Setup::default());
    let client = lab.topo.client();
    let mut echo = in_ns(&client, || EchoConn::open_at(VIP6, ECHO_PORT).expect("echo"));
    let first = in_ns(&client, move || {
        let b = echo.exchange("before").expect("echo before");
        (echo, b)
    });
    let (mut echo, backend) = first;
    let slow_before = counters::get(&lab.pin_dir, Counter::SlowPathNeigh);
    // Forget every IPv6 neighbour, on the load balancer and around it.
    let mut namespaces = vec![lab.topo.lb(), client.clone()];
    namespaces.extend(BACKENDS6.iter().map(|(name, _)| lab.topo.web(name)));
    for ns in &namespaces {
        ns_sh(ns, &["ip", "-6", "neigh", "flush", "all"]);
    }
    let neigh = ns_sh(&lab.topo.lb(), &["ip", "-6", "neigh", "show", "nud", "reachable"]);
    eprintln!("the load balancer's reachable IPv6 neighbours after the flush: {neigh:?}");
    let again = in_ns(&client, move || echo.exchange("after the flush"));
    assert_eq!(again.expect("the open connection after the flush"), backend);
    let answers = lab.who_answers6(30);
    assert_eq!(answers.len(), 30);
    let slow = counters::get(&lab.pin_dir, Counter::SlowPathNeigh) - slow_before;
    eprintln!("slow_path_neigh +{slow} after the flush");
    assert!(slow >= 1, "no packet took the neighbour slow path");
}

/// A 1 MiB body through the IPv6 VIP over a client link of MTU 1280 (the
/// IPv6 minimum); every byte checked.
#[test]
fn a_1_mib_download_completes_over_a_1280_byte_link() {
    let lab = Lab::start_prepared(
        "lb6-d",
        Setup { ipv6: true, ..Setup::default() },
        [Some(1); 3],
        |topo| topo.set_client_link_mtu(1280),
    );
    let len = 1 << 20;
    let body = in_ns(&lab.topo.client(), move || download6(len));
    let body = body.unwrap_or_else(|e| panic!("download: {e}"));
    assert_eq!(body.len(), len, "the whole body");
    let bad = body.iter().enumerate().position(|(i, b)| *b != bulk_byte(i));
    assert_eq!(bad, None, "byte {bad:?} differs");
}

/// `GET /bytes/N` on the IPv6 VIP; the body.
fn download6(len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let to = std::net::SocketAddr::new(VIP6.parse().unwrap(), 80);
    let mut stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET /bytes/{len} HTTP/1.1\r\nHost: vip\r\n\r\n").as_bytes())?;
    let mut raw = Vec::with_capacity(len + 512);
    stream.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
    Ok(raw.split_off(split))
}

/// SIGKILL the controller and start it again while both families carry
/// long-lived connections and new ones: none breaks, none fails.
#[test]
fn a_killed_controller_breaks_no_connection_of_either_family() {
    let mut lab = dual("lb6-e", Setup::default());
    let client = lab.topo.client();
    let v4 = Traffic::start(&client, 3);
    let v6 = Traffic::start_at(&client, 3, VIP6);
    lab.kill_and_restart(Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(500));
    // Both loads stop together (each `finish` stops its own at once).
    let (r6, e6) = v6.finish();
    let (r4, e4) = v4.finish();
    eprintln!("IPv6:");
    let r6 = Traffic::check_unbroken(r6, &e6, 100);
    eprintln!("IPv4:");
    let r4 = Traffic::check_unbroken(r4, &e4, 100);
    assert!(r4.done >= 50 && r6.done >= 50, "{} and {} requests", r4.done, r6.done);
    assert!(lab.log().contains("adopted the pinned data plane"), "{}", lab.log());
}

/// A direct-routing service on the IPv6 VIP: the load balancer passes the
/// client's packets to a backend's MAC; the backend (the VIP on `lo`)
/// answers over the client's bypass link.
const DSR6_SERVICE: &str = r#"
[[service]]
name = "dsr6"
vip = "fd77:1::100"
port = 8080
forwarding = "dsr"
  [[service.backend]]
  address = "fd77:2::11"
  port = 8080
  [[service.backend]]
  address = "fd77:2::12"
  port = 8080
  [[service.backend]]
  address = "fd77:2::13"
  port = 8080
"#;

#[test]
fn ipv6_direct_routing_replies_bypass_the_load_balancer() {
    let lab = dual("lb6-f", Setup { tables: DSR6_SERVICE, ..Setup::default() });
    let client = lab.topo.client();
    let rx = |ns: &str, dev: &str| {
        let text = ns_sh(ns, &["cat", &format!("/sys/class/net/{dev}/statistics/rx_packets")]);
        text.trim().parse::<u64>().unwrap()
    };
    let bypass_before = rx(&client, CLIENT_BYPASS_IFACE);
    let lb_back_before = rx(&lab.topo.lb(), "lb-b");
    let answers: Vec<String> = in_ns(&client, || {
        (0..30)
            .map(|i| {
                let body = http_get_at(VIP6, DSR_HTTP_PORT)
                    .unwrap_or_else(|e| panic!("request {i} to [{VIP6}]:{DSR_HTTP_PORT}: {e}"));
                backend_of(&body)
            })
            .collect()
    });
    let served: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    let bypass = rx(&client, CLIENT_BYPASS_IFACE) - bypass_before;
    let lb_back = rx(&lab.topo.lb(), "lb-b") - lb_back_before;
    eprintln!("answered by {served:?}; {bypass} packets in over the bypass, {lb_back} on lb-b");
    assert!(served.iter().all(|b| ["web1", "web2", "web3"].contains(b)), "{answers:?}");
    assert!(served.len() >= 2, "new connections are spread: {answers:?}");
    assert!(bypass >= 30 * 3, "the replies arrived over the bypass link");
    assert!(lb_back < 30, "replies crossed the load balancer: {lb_back} packets on lb-b");
}
