//! Persistence, connection limits and allowed sources end to end (issue
//! 20's tests), namespaces `lbp*`: requests from the client, as an operator
//! checks `ipvsadm -p`, `-x` and `loadBalancerSourceRanges`, to the IPv4
//! VIP and, in the dual-stack lab, to the IPv6 one (each test's body
//! takes the family); and the same rules for a datagram the controller's
//! reassembly slow path places.
use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use lb_testbed::{
    harness::{EchoConn, Lab, Setup, backend_of, who_answers_at},
    netns::{in_ns, ns_sh},
    packet::{Ipv4, fragments},
    server::{ECHO_PORT, UDP_PORT},
    topology::{
        BACKENDS, BACKENDS6, CLIENT_ADDR, CLIENT_ADDR6, FRESH_CLIENT_ADDRS, FRESH_CLIENT_ADDRS6,
        VIP, VIP6,
    },
};
use lb_tests::wire::{mac_of, packet_socket, send_frame};

/// What a test needs of an address family in the lab.
struct Family {
    /// The lab is dual-stack (`Setup::ipv6`), for the IPv6 services.
    ipv6: bool,
    vip: &'static str,
    /// The suffix of the family's service names (`web6`).
    suffix: &'static str,
    /// The client's address, and another address of the client's that no
    /// flow has come from.
    client: &'static str,
    stranger: &'static str,
    backends: [(&'static str, &'static str); 3],
}

const V4: Family = Family {
    ipv6: false,
    vip: VIP,
    suffix: "",
    client: CLIENT_ADDR,
    stranger: FRESH_CLIENT_ADDRS[0],
    backends: BACKENDS,
};

const V6: Family = Family {
    ipv6: true,
    vip: VIP6,
    suffix: "6",
    client: CLIENT_ADDR6,
    stranger: FRESH_CLIENT_ADDRS6[0],
    backends: BACKENDS6,
};

impl Family {
    /// The lab, with `setup` (and dual-stack for IPv6).
    fn lab(&self, prefix: &str, setup: Setup) -> Lab {
        Lab::start_with(prefix, Setup { ipv6: self.ipv6, ..setup }, [Some(1); 3])
    }

    /// Which backend answers each of `requests` HTTP requests to the VIP.
    fn who_answers(&self, lab: &Lab, requests: usize) -> Vec<String> {
        let vip = self.vip;
        in_ns(&lab.topo.client(), move || who_answers_at(vip, requests))
    }

    /// The address of backend `name`.
    fn address(&self, name: &str) -> &'static str {
        self.backends.iter().find(|(n, _)| *n == name).expect("a backend").1
    }

    /// `text` (a config) with `keys` added to this family's service `name`.
    fn with_keys(&self, text: &str, name: &str, port: u16, protocol: &str, keys: &str) -> String {
        let (suffix, vip) = (self.suffix, self.vip);
        let head = format!(
            "name = \"{name}{suffix}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{protocol}\"\n"
        );
        assert!(text.contains(&head), "{name}{suffix} in:\n{text}");
        text.replacen(&head, &format!("{head}{keys}"), 1)
    }
}

/// `persistence_s = 10`: twenty connections of one client land on one
/// backend, and stay there when the weights turn against it (1 against
/// 100 each: the table gives it about 1 slot in 200); past the 10 s since
/// its last connection, the client is scheduled afresh and lands elsewhere.
fn a_persistent_client_keeps_its_backend(family: &Family, prefix: &str) {
    let mut lab = family.lab(prefix, Setup { web: "persistence_s = 10\n", ..Setup::default() });
    let seen = family.who_answers(&lab, 20);
    eprintln!("persistent: {seen:?}");
    assert!(seen.iter().all(|b| *b == seen[0]), "one client, one backend: {seen:?}");
    let kept = seen[0].clone();
    let mut weights = [Some(100); 3];
    weights[["web1", "web2", "web3"].iter().position(|n| *n == kept).unwrap()] = Some(1);
    lab.reload(weights);
    let held = family.who_answers(&lab, 5);
    assert!(held.iter().all(|b| *b == kept), "kept against the weights: {held:?}");
    std::thread::sleep(Duration::from_secs(11));
    let after = family.who_answers(&lab, 20);
    eprintln!("after 11 s: {after:?}");
    assert!(after.iter().all(|b| *b != kept), "scheduled afresh, by the weights: {after:?}");
    assert!(after.iter().all(|b| *b == after[0]), "sticky again, elsewhere: {after:?}");
}

#[test]
fn a_persistent_client_keeps_its_backend_until_the_time_runs_out() {
    a_persistent_client_keeps_its_backend(&V4, "lbp1");
}

#[test]
fn an_ipv6_persistent_client_keeps_its_backend_until_the_time_runs_out() {
    a_persistent_client_keeps_its_backend(&V6, "lbp5");
}

/// `max_conns = 2` on one backend of the line echo, weighted so that the
/// table gives it most flows (10 against 1 and 1), twelve connections held
/// at once: all twelve open, exactly two on the limited backend (without
/// the limit, about ten would be).
fn a_backend_at_max_conns_takes_no_more_of(family: &Family, prefix: &str) {
    let mut lab = family.lab(prefix, Setup::default());
    let web1 = family.address("web1");
    let text = lab.config_text([Some(1); 3]).replacen(
        &format!("address = \"{web1}\"\n  port = {ECHO_PORT}\n  weight = 1\n"),
        &format!("address = \"{web1}\"\n  port = {ECHO_PORT}\n  weight = 10\n  max_conns = 2\n"),
        1,
    );
    assert!(text.contains("max_conns = 2"), "the echo's web1 in the config:\n{text}");
    lab.reload_text(&text, "configuration reloaded");
    let vip = family.vip;
    let on = in_ns(&lab.topo.client(), move || {
        let mut held = Vec::new();
        let mut on = Vec::new();
        for i in 0..12 {
            let mut conn =
                EchoConn::open_at(vip, ECHO_PORT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            on.push(conn.exchange("hello").unwrap_or_else(|e| panic!("connection {i}: {e}")));
            held.push(conn);
        }
        // Every one still answers with all twelve open.
        for (i, conn) in held.iter_mut().enumerate() {
            assert_eq!(conn.exchange("again").unwrap(), on[i], "connection {i} moved");
        }
        on
    });
    eprintln!("twelve held connections on {on:?}");
    let limited = on.iter().filter(|b| *b == "web1").count();
    assert_eq!(limited, 2, "connections on the backend limited to 2: {on:?}");
    assert_eq!(on.len(), 12);
}

#[test]
fn a_backend_at_max_conns_takes_no_more() {
    a_backend_at_max_conns_takes_no_more_of(&V4, "lbp2");
}

#[test]
fn an_ipv6_backend_at_max_conns_takes_no_more() {
    a_backend_at_max_conns_takes_no_more_of(&V6, "lbp6");
}

/// `allowed_sources` holding only the client's address (/32, /128) on the
/// family's web service: the client is served, a client at another address
/// of the same network gets nothing, and the refusal is counted.
fn only_an_allowed_source_is_served_by(family: &Family, prefix: &str) {
    let mut lab = family.lab(prefix, Setup::default());
    let length = if family.ipv6 { 128 } else { 32 };
    let keys = format!("allowed_sources = [\"{}/{length}\"]\n", family.client);
    let text = family.with_keys(&lab.config_text([Some(1); 3]), "web", 80, "tcp", &keys);
    lab.reload_text(&text, "configuration reloaded");
    let url = if family.ipv6 {
        format!("http://[{}]/", family.vip)
    } else {
        format!("http://{}/", family.vip)
    };
    let get =
        |src: &str| ns_sh(&lab.topo.client(), &["curl", "-s", "-m", "2", "--interface", src, &url]);
    let served = backend_of(&get(family.client));
    assert!(served.starts_with("web"), "the allowed client: {served:?}");
    let other = family.stranger;
    let refused = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.topo.client(), "curl", "-s", "-m", "2"])
        .args(["--interface", other, &url])
        .output()
        .expect("curl");
    assert!(!refused.status.success(), "{other} was answered: {refused:?}");
    assert!(
        refused.stdout.is_empty(),
        "{other} got {:?}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let listed = lab.ctl_ok(&["stats"]);
    assert!(listed.contains("source_not_allowed"), "counted:\n{listed}");
}

#[test]
fn only_an_allowed_source_is_served() {
    only_an_allowed_source_is_served_by(&V4, "lbp3");
}

#[test]
fn only_an_allowed_ipv6_source_is_served() {
    only_an_allowed_source_is_served_by(&V6, "lbp7");
}

/// A client's UDP socket on `port`, for the echo's answers.
fn client_socket(lab: &Lab, port: u16) -> UdpSocket {
    in_ns(&lab.topo.client(), move || {
        let socket = UdpSocket::bind((CLIENT_ADDR, port)).expect("the client's socket");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("read timeout");
        socket
    })
}

/// The backend that echoed `sent` on `socket`, from the echo's first word.
fn echoed_by(socket: &UdpSocket, sent: &[u8]) -> Result<String, String> {
    let mut buf = vec![0_u8; 65_536];
    let n = socket.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
    let reply = &buf[..n];
    let name = reply.split(|b| *b == b' ').next().unwrap_or_default();
    if reply.len() != sent.len() + name.len() + 1 || !reply.ends_with(sent) {
        return Err(format!("{n} bytes, not the echo"));
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// A 4000-byte datagram from the client's `port` to the UDP echo, sent as
/// three raw fragments, the first last: the data plane passes them to the
/// kernel, which reassembles the datagram for the controller's slow path
/// to place and send on. The backend that echoed it.
fn echoed_out_of_order(lab: &Lab, port: u16, id: u16) -> Result<String, String> {
    let socket = client_socket(lab, port);
    let sent: Vec<u8> =
        (0..4000_usize).map(|j| b'a' + ((j * 7 + usize::from(id)) % 26) as u8).collect();
    let client: Ipv4Addr = CLIENT_ADDR.parse().expect("client");
    let vip: Ipv4Addr = VIP.parse().expect("VIP");
    let mut datagram = Ipv4::udp((client, port), (vip, UDP_PORT), &sent);
    datagram.frag_off = 0;
    datagram.id = id;
    let (lb_mac, client_mac) = (mac_of(&lab.topo.lb(), "lb-c"), mac_of(&lab.topo.client(), "c0"));
    let mut frames: Vec<Vec<u8>> =
        fragments(&datagram, 1480).iter().map(|f| f.frame(lb_mac, client_mac)).collect();
    assert_eq!(frames.len(), 3, "a 4000-byte datagram in three fragments");
    frames.reverse();
    let taken = in_ns(&lab.topo.client(), move || {
        let (fd, addr) = packet_socket("c0");
        frames.iter().filter(|frame| send_frame(&fd, &addr, frame)).count()
    });
    assert_eq!(taken, 3, "the client's kernel took every fragment");
    echoed_by(&socket, &sent)
}

/// The config with the UDP echo's backends weighted `weights` (web1, web2,
/// web3), and the one named in `limit` limited to its `max_conns`.
fn udp_config(lab: &Lab, weights: [u32; 3], limit: Option<(&str, u32)>) -> String {
    let mut text = lab.config_text([Some(1); 3]);
    for ((name, address), weight) in BACKENDS.iter().zip(weights) {
        let block = format!("address = \"{address}\"\n  port = {UDP_PORT}\n  weight = 1\n");
        assert!(text.contains(&block), "{name} of the UDP echo in:\n{text}");
        let extra = match limit {
            Some((limited, n)) if limited == *name => format!("  max_conns = {n}\n"),
            _ => String::new(),
        };
        let new =
            format!("address = \"{address}\"\n  port = {UDP_PORT}\n  weight = {weight}\n{extra}");
        text = text.replacen(&block, &new, 1);
    }
    text
}

/// `weights` with `heavy` for backend `name` and `light` for the others.
fn turned(name: &str, heavy: u32, light: u32) -> [u32; 3] {
    BACKENDS.map(|(n, _)| if n == name { heavy } else { light })
}

/// The slow path places as XDP does. A persistent client's flow, recorded
/// by XDP (two datagrams), remembers its backend; with the weights then
/// turned against that backend (1 against 100 and 100), the client's
/// datagrams whose first fragment comes last, from new ports, still land
/// on it. Then the backend, weighted 100 against 1 and 1 and limited to
/// `max_conns = 1`, holds the client's first flow: it is full, and the
/// slow path sends the next such datagrams elsewhere, although both the
/// client's entry and the table name it.
#[test]
fn the_slow_path_keeps_a_persistent_client_and_passes_a_full_backend_over() {
    let mut lab = Lab::start_with(
        "lbp4",
        Setup { udp: "persistence_s = 60\n", ..Setup::default() },
        [Some(1); 3],
    );
    let first = client_socket(&lab, 42_000);
    let kept: Vec<String> = (0..2)
        .map(|i| {
            let sent = format!("hello {i}");
            first.send_to(sent.as_bytes(), (VIP, UDP_PORT)).expect("send");
            echoed_by(&first, sent.as_bytes()).unwrap_or_else(|e| panic!("datagram {i}: {e}"))
        })
        .collect();
    assert_eq!(kept[0], kept[1], "one flow, one backend: {kept:?}");
    let kept = kept[0].clone();

    let against = udp_config(&lab, turned(&kept, 1, 100), None);
    lab.reload_text(&against, "configuration reloaded");
    let persisted: Vec<Result<String, String>> =
        (0..3).map(|i| echoed_out_of_order(&lab, 42_001 + i, 0x7700 + i)).collect();
    eprintln!("persistent client on {kept}; out of order: {persisted:?}");
    assert!(
        persisted.iter().all(|b| b.as_ref() == Ok(&kept)),
        "the slow path sends the client to its backend {kept}: {persisted:?}"
    );
    assert_eq!(lab.reassembled(3).0, 3, "sent on by the slow path");

    let limited = udp_config(&lab, turned(&kept, 100, 1), Some((&kept, 1)));
    lab.reload_text(&limited, "configuration reloaded");
    // The recount (every second) finds the client's first flow on it.
    let address = BACKENDS.iter().find(|(n, _)| *n == kept).expect("a backend").1;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let conns = lab.backend_view(address, UDP_PORT).conns;
        if conns.active + conns.inactive >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{kept}'s flow never counted: {conns:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let passed_over: Vec<Result<String, String>> =
        (0..3).map(|i| echoed_out_of_order(&lab, 42_004 + i, 0x7710 + i)).collect();
    eprintln!("{kept} full; out of order: {passed_over:?}");
    assert!(
        passed_over.iter().all(|b| b.as_ref().is_ok_and(|name| *name != kept)),
        "the slow path passes the full {kept} over: {passed_over:?}"
    );
    assert_eq!(lab.reassembled(6).0, 6, "sent on by the slow path");
}
