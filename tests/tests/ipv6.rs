//! IPv6 end to end: the lab's topology with its IPv6 addresses
//! (`Topology::create_dual_stack`: clients on fd77:1::/64, backends on
//! fd77:2::/64, the VIP fd77:1::100) and the three services again on the
//! IPv6 VIP (`web6`, `echo6`, `udp6`) beside the IPv4 ones, through one
//! load balancer: new connections spread, UDP, the connection listing and
//! counts, health checks and drain, the neighbour slow path, a 1280-byte
//! MTU, a controller killed under traffic of both families, direct routing,
//! UDP datagrams whose first fragment comes last (the controller's
//! reassembly slow path) and floods of incomplete ones.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv6Addr, UdpSocket},
    time::{Duration, Instant},
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
    packet::L4,
    packet6::{Ext, Ipv6, fragments6},
    server::{DSR_HTTP_PORT, ECHO_PORT, UDP_PORT, bulk_byte},
    topology::{BACKENDS6, CLIENT_ADDR6, CLIENT_BYPASS_IFACE, LB_BACKEND_SIDE6, VIP6},
    traffic::Traffic,
};
use lb_tests::wire::{blast, mac_of};

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

// --- UDP datagrams whose fragments come out of order ------------------------

/// The size of the datagrams the fragment tests send: three fragments of
/// at most 1448 bytes each on the way in.
const DATAGRAM6: usize = 4000;
/// The bytes each fragment carries: 40 + 8 + 1448 = 1496, under 1500.
const CHUNK6: usize = 1448;

fn payload6(i: u8) -> Vec<u8> {
    (0..DATAGRAM6).map(|j| b'a' + ((j * 11 + usize::from(i)) % 26) as u8).collect()
}

/// The frames of a UDP datagram from `client_port` to `[VIP6]:port`
/// carrying `payload`, cut into fragments of `CHUNK6` bytes with
/// identification `id`.
fn datagram_fragments6(client_port: u16, port: u16, payload: &[u8], id: u32) -> Vec<Ipv6> {
    let client: Ipv6Addr = CLIENT_ADDR6.parse().unwrap();
    let vip: Ipv6Addr = VIP6.parse().unwrap();
    fragments6(&Ipv6::udp((client, client_port), (vip, port), payload), CHUNK6, id)
}

/// Sends `packets` from the client's `c0`, as they are, to the load
/// balancer's `lb-c`; how many the kernel took.
fn send6(lab: &Lab, packets: &[Ipv6]) -> usize {
    let (lb_mac, client_mac) = (mac_of(&lab.topo.lb(), "lb-c"), mac_of(&lab.topo.client(), "c0"));
    let frames: Vec<Vec<u8>> = packets.iter().map(|p| p.frame(lb_mac, client_mac)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    in_ns(&lab.topo.client(), move || blast("c0", &frames, Duration::from_micros(200), deadline))
        .sent
}

/// A counter of the load balancer's IPv6 stack (`/proc/net/snmp6` in its
/// namespace: `Ip6ReasmFails`...).
fn snmp6(lab: &Lab, name: &str) -> u64 {
    let text = ns_sh(&lab.topo.lb(), &["cat", "/proc/net/snmp6"]);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /proc/net/snmp6:\n{text}"))
}

/// The IPv6 reassembly queues of the load balancer's kernel and the
/// memory they hold (`FRAG6: inuse N memory M` in `/proc/net/sockstat6`).
fn frag6_memory(lab: &Lab) -> (u64, u64) {
    let text = ns_sh(&lab.topo.lb(), &["cat", "/proc/net/sockstat6"]);
    let line = text.lines().find(|l| l.starts_with("FRAG6:")).expect("a FRAG6 line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |key: &str| {
        let at = words.iter().position(|w| *w == key).expect(key);
        words[at + 1].parse().expect("a number")
    };
    (number("inuse"), number("memory"))
}

/// A client socket on `[CLIENT_ADDR6]:port` that waits 2 s for an answer.
fn client_socket6(lab: &Lab, port: u16) -> UdpSocket {
    in_ns(&lab.topo.client(), move || {
        let socket = UdpSocket::bind((CLIENT_ADDR6, port)).expect("the client's socket");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        socket
    })
}

/// Sends `payload` as a datagram whose first fragment comes last, and
/// waits for its echo on `socket`: `Ok` with the reply's length if it came
/// back whole (a backend's name, a space and the payload) from the VIP.
fn echoed_in_reverse(
    lab: &Lab,
    socket: &UdpSocket,
    payload: &[u8],
    id: u32,
) -> Result<usize, String> {
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    let mut fragments = datagram_fragments6(port, UDP_PORT, payload, id);
    assert_eq!(fragments.len(), 3, "a {DATAGRAM6}-byte datagram in three fragments");
    fragments.reverse();
    let taken = send6(lab, &fragments);
    let mut buf = vec![0_u8; 65_536];
    let vip: std::net::SocketAddr =
        format!("[{VIP6}]:{UDP_PORT}").parse().expect("the VIP's address");
    match socket.recv_from(&mut buf) {
        Ok((n, from)) if from == vip && n == payload.len() + 5 && buf[..n].ends_with(payload) => {
            Ok(n)
        }
        Ok((n, from)) => Err(format!("{n} bytes from {from}, not the echo from {vip}")),
        Err(e) => Err(format!("{taken} of 3 fragments sent; {e}")),
    }
}

/// IPv6 UDP datagrams of 4,000 bytes whose first fragment comes last:
/// `lb_xdp6` passes their fragments to the kernel
/// (`pass_fragment_to_kernel`), which reassembles each for the
/// controller's slow path to place and send on from the client's address;
/// the backend's echo comes back whole through XDP, from the VIP. Beside
/// them, hostile ones: overlapping fragments (the kernel drops the whole
/// datagram, RFC 5722: nothing reaches a backend, the slow path never sees
/// it) and a datagram to a VIP port no service has (the kernel answers it
/// with port unreachable; no backend sees it).
#[test]
fn ipv6_datagrams_whose_first_fragment_comes_last_are_echoed_whole() {
    let lab = dual("lbv-a", Setup::default());
    let watched = [Counter::PassFragmentToKernel, Counter::DropFragment];
    let before = counters::get(&lab.pin_dir, Counter::PassFragmentToKernel);
    let socket = client_socket6(&lab, 41_006);

    // Overlapping: the first fragment, a piece of it again at byte 1000
    // (more to come), then the rest; sent last first.
    let overlap_payload = payload6(1);
    let pieces = datagram_fragments6(41_006, UDP_PORT, &overlap_payload, 0x0600_0001);
    let mut overlapping = pieces[0].clone();
    let L4::Raw { bytes, .. } = &mut overlapping.l4 else {
        panic!("a fragment's payload is raw bytes");
    };
    *bytes = bytes[1000..].to_vec();
    overlapping.ext = vec![Ext::Fragment { offset: 1000 / 8, more: true, id: 0x0600_0001 }];
    let fails_before = snmp6(&lab, "Ip6ReasmFails");
    let taken =
        send6(&lab, &[pieces[2].clone(), overlapping, pieces[1].clone(), pieces[0].clone()]);
    let mut buf = vec![0_u8; 65_536];
    let overlap_echo = socket.recv(&mut buf).map_err(|e| e.kind());
    let fails = snmp6(&lab, "Ip6ReasmFails") - fails_before;
    let after_overlap = lab.reassembled(0);
    eprintln!(
        "overlapping: {taken} of 4 sent, echo {overlap_echo:?}, Ip6ReasmFails +{fails}, \
         slow path {after_overlap:?}"
    );
    assert!(overlap_echo.is_err(), "an overlapping datagram reached a backend: {overlap_echo:?}");
    assert!(fails >= 1, "the kernel refused the overlapping fragments: Ip6ReasmFails +{fails}");
    assert_eq!(after_overlap, (0, 0), "the slow path never saw the overlapping datagram");

    // To a port of the VIP no service has: reassembled and answered by the
    // kernel (port unreachable), not the slow path's.
    let stray = in_ns(&lab.topo.client(), || {
        let socket = UdpSocket::bind((CLIENT_ADDR6, 41_007)).expect("a socket");
        socket.connect((VIP6, UDP_PORT + 1)).expect("connect");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        socket
    });
    let mut fragments = datagram_fragments6(41_007, UDP_PORT + 1, &payload6(2), 0x0600_0002);
    fragments.reverse();
    let taken = send6(&lab, &fragments);
    let stray_answer = stray.recv(&mut buf).map_err(|e| e.kind());
    eprintln!("to port {}: {taken} of 3 sent, the client got {stray_answer:?}", UDP_PORT + 1);
    assert_eq!(
        stray_answer,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the kernel reassembles a datagram to a VIP port with no service and refuses it"
    );
    assert_eq!(lab.reassembled(0), (0, 0), "nor does the slow path see it");

    let results: Vec<Result<usize, String>> = (0..3_u8)
        .map(|i| echoed_in_reverse(&lab, &socket, &payload6(10 + i), 0x0600_0100 + u32::from(i)))
        .collect();
    let passed = counters::get(&lab.pin_dir, Counter::PassFragmentToKernel) - before;
    let forwarded = lab.reassembled(3);
    let report = format!(
        "first fragment last: {results:?}; pass_fragment_to_kernel +{passed}; slow path \
         {forwarded:?}; {}",
        watched
            .iter()
            .map(|c| format!("{} = {}", c.name(), counters::get(&lab.pin_dir, *c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("{report}");
    assert!(results.iter().all(Result::is_ok), "every datagram echoed whole: {report}");
    assert_eq!(passed, 4 + 3 + 9, "every fragment went to the kernel: {report}");
    assert_eq!(forwarded, (3, 0), "the slow path sent every datagram on: {report}");
    // The flow's second and third datagrams recorded it: listed in IPv6's table.
    let listed = conns(&lab, Some("udp6"));
    assert!(
        listed.conns.iter().any(|c| c.client.ends_with(":41006")),
        "the slow path recorded the flow in the IPv6 connection table: {listed:?}"
    );
}

/// A flood of IPv6 datagrams that never complete (a later fragment each,
/// its first never sent) stays within the kernel's reassembly memory
/// (`net.ipv6.ip6frag_high_thresh`, set to 256 KiB here), costs the
/// controller nothing (the slow path sees no datagram), and once the
/// kernel's queues expire (`ip6frag_time`, 2 s here) a datagram whose
/// first fragment comes last goes through again.
#[test]
fn a_flood_of_incomplete_ipv6_datagrams_stays_bounded() {
    const FLOOD: u32 = 2000;
    const HIGH: u64 = 256 * 1024;
    let lab = dual("lbv-b", Setup::default());
    let lb = lab.topo.lb();
    ns_sh(&lb, &["sysctl", "-qw", "net.ipv6.ip6frag_low_thresh=196608"]);
    ns_sh(&lb, &["sysctl", "-qw", &format!("net.ipv6.ip6frag_high_thresh={HIGH}")]);
    ns_sh(&lb, &["sysctl", "-qw", "net.ipv6.ip6frag_time=2"]);
    let before = counters::get(&lab.pin_dir, Counter::PassFragmentToKernel);
    let payload = payload6(3);
    let flood: Vec<Ipv6> = (0..FLOOD)
        .map(|id| datagram_fragments6(42_000, UDP_PORT, &payload, 0x0700_0000 + id)[1].clone())
        .collect();
    let taken = send6(&lab, &flood);
    let passed = counters::get(&lab.pin_dir, Counter::PassFragmentToKernel) - before;
    let (queues, memory) = frag6_memory(&lab);
    let seen = lab.reassembled(0);
    eprintln!(
        "{taken} of {FLOOD} later fragments sent; pass_fragment_to_kernel +{passed}; the kernel \
         holds {queues} queues in {memory} bytes; slow path {seen:?}"
    );
    assert!(taken as u32 >= FLOOD * 9 / 10, "the flood was sent: {taken}");
    assert!(passed >= u64::from(FLOOD) / 2, "the flood reached the kernel: +{passed}");
    assert!(
        memory <= HIGH + 64 * 1024,
        "the kernel's reassembly memory stays near its limit: {memory} > {HIGH}"
    );
    assert!(u64::from(FLOOD) > queues * 2, "most incomplete datagrams were refused: {queues}");
    assert_eq!(seen, (0, 0), "no incomplete datagram reaches the controller");

    // The queues expire; then a datagram whose first fragment comes last
    // is reassembled and sent on again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while frag6_memory(&lab).0 > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let socket = client_socket6(&lab, 41_008);
    let after = echoed_in_reverse(&lab, &socket, &payload6(4), 0x0600_0200);
    eprintln!("after the flood: {after:?}; FRAG6 {:?}", frag6_memory(&lab));
    assert!(after.is_ok(), "a datagram after the flood is echoed whole: {after:?}");
    assert_eq!(lab.reassembled(1).0, 1, "sent on by the slow path");
}
