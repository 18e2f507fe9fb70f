//! The data plane at the edge, end to end (issue 13): real kernels, real
//! sockets, real traffic through `lb-ctl run`'s XDP program. Path MTU
//! discovery through a router past the load balancer (its ICMP error goes
//! to the VIP and must reach the backend), "fragmentation needed" from the
//! VIP for a client's datagram too big for the backend side, forged
//! datagrams that would start a loop, and a backend's port unreachable
//! reaching the client from the VIP, and UDP datagrams whose first
//! fragment comes last echoed whole. Run as root, one test at a time
//! (`cargo xtask test` does both).
use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use lb_common::counter::Counter;
use lb_testbed::{
    counters,
    harness::{Lab, Setup},
    netns::{in_ns, ns_sh},
    packet::{Ipv4, fragments},
    server::{UDP_PORT, bulk_byte},
    topology::{BACKENDS, CLIENT_ADDR, ROUTED_CLIENT_ADDR, Topology, VIP},
};
use lb_tests::wire::{if_stat, mac_of, packet_socket, send_frame, veth_drops};

fn vip() -> Ipv4Addr {
    VIP.parse().expect("VIP")
}

/// The counters a test looks at, as one line for its messages.
fn counter_line(lab: &Lab, which: &[Counter]) -> String {
    which
        .iter()
        .map(|c| format!("{} = {}", c.name(), counters::get(&lab.pin_dir, *c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ip route get DST` in namespace `ns`, on one line.
fn route_get(ns: &str, dst: &str) -> String {
    ns_sh(ns, &["ip", "route", "get", dst]).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The path MTU the kernel of `ns` has cached towards `dst` (`mtu N` in
/// `ip route get`), if any.
fn cached_mtu(ns: &str, dst: &str) -> Option<u32> {
    let route = route_get(ns, dst);
    let mut words = route.split(' ');
    words.by_ref().find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

// --- 1. path MTU through a router, download direction ---------------------

const DOWNLOAD: usize = 1 << 20;
const DOWNLOAD_PATIENCE: Duration = Duration::from_secs(20);

/// What a download through the VIP got: the body's bytes (as far as they
/// came), whether the headers said 200 with the right length, and how long.
struct Download {
    header: String,
    body: Vec<u8>,
    elapsed: Duration,
    error: Option<String>,
}

/// `GET /bytes/N` through the VIP, for at most `DOWNLOAD_PATIENCE`. Call
/// from the client's namespace.
fn download(len: usize) -> Download {
    let start = Instant::now();
    let mut raw = Vec::with_capacity(len + 512);
    let mut error = None;
    match TcpStream::connect_timeout(&SocketAddrV4::new(vip(), 80).into(), Duration::from_secs(3)) {
        Err(e) => error = Some(format!("connect: {e}")),
        Ok(mut stream) => {
            let request =
                format!("GET /bytes/{len} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).expect("sending the request");
            stream.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
            let mut buf = vec![0_u8; 64 * 1024];
            loop {
                if start.elapsed() > DOWNLOAD_PATIENCE {
                    error = Some(format!("no end within {DOWNLOAD_PATIENCE:?}"));
                    break;
                }
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => {
                        error = Some(format!("read: {e}"));
                        break;
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
    let body = raw.split_off(split);
    Download { header: String::from_utf8_lossy(&raw).into_owned(), body, elapsed, error }
}

/// The client sits behind a router whose link towards it has MTU 1280
/// (everything else 1500, no MSS clamping): the backend's 1500-byte
/// segments, rewritten to come from the VIP, reach the router, which
/// answers the VIP with "fragmentation needed". Only if the load balancer
/// hands that error to the backend (`icmp_to_backend`) does the backend
/// lower its path MTU towards the client and the download finish.
#[test]
fn a_download_through_a_narrow_router_finishes() {
    let lab = Lab::start_prepared("lbt80", Setup::default(), [Some(1); 3], |topo| {
        topo.insert_router(1280);
    });
    let client = lab.topo.client();
    let watched = [Counter::IcmpToBackend, Counter::PassIcmpNotOurs, Counter::FragNeeded];
    let before = counters::get(&lab.pin_dir, Counter::IcmpToBackend);
    let got = in_ns(&client, || download(DOWNLOAD));
    let to_backend = counters::get(&lab.pin_dir, Counter::IcmpToBackend) - before;
    let mtus: Vec<(&str, Option<u32>)> = BACKENDS
        .iter()
        .map(|(name, _)| (*name, cached_mtu(&lab.topo.web(name), ROUTED_CLIENT_ADDR)))
        .collect();
    eprintln!(
        "download: {} body bytes in {:?} ({}); {}; backends' path MTU towards \
         {ROUTED_CLIENT_ADDR}: {mtus:?}",
        got.body.len(),
        got.elapsed,
        got.error.as_deref().unwrap_or("complete"),
        counter_line(&lab, &watched),
    );
    assert!(
        got.error.is_none() && got.body.len() == DOWNLOAD,
        "the {DOWNLOAD}-byte download through the VIP stalled: {} body bytes in {:?} ({}). \
         The router's \"fragmentation needed\" (MTU 1280) goes to the VIP; unless the load \
         balancer hands it to the backend, the backend keeps sending 1500-byte segments into \
         the router. Counters: {}; the backends' cached path MTU towards the client: {mtus:?}",
        got.body.len(),
        got.elapsed,
        got.error.as_deref().unwrap_or("closed early"),
        counter_line(&lab, &watched),
    );
    assert!(
        got.header.starts_with("HTTP/1.1 200")
            && got.header.contains(&format!("Content-Length: {DOWNLOAD}\r\n")),
        "unexpected response header {:?}",
        got.header
    );
    if let Some(bad) = got.body.iter().enumerate().position(|(i, b)| *b != bulk_byte(i)) {
        panic!("the body differs from what the backend sent from byte {bad} on");
    }
    let lowered: Vec<&str> =
        mtus.iter().filter(|(_, mtu)| *mtu == Some(1280)).map(|(name, _)| *name).collect();
    assert_eq!(
        lowered.len(),
        1,
        "exactly one backend (the one that served) should cache path MTU 1280 towards the \
         client; `ip route get {ROUTED_CLIENT_ADDR}` in each: {:?}",
        BACKENDS
            .iter()
            .map(|(name, _)| route_get(&lab.topo.web(name), ROUTED_CLIENT_ADDR))
            .collect::<Vec<_>>()
    );
    assert!(to_backend >= 1, "icmp_to_backend did not go up: {}", counter_line(&lab, &watched));
}

// --- 2. a client's link wider than the backends' ---------------------------

const BIG_DATAGRAM: usize = 3000;

/// `setsockopt(IP_MTU_DISCOVER, mode)`.
fn set_pmtu_discovery(socket: &UdpSocket, mode: libc::c_int) {
    setsockopt_int(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, mode);
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid socket and a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
}

/// `getsockopt(IP_MTU)` of a connected socket: the kernel's path MTU
/// towards its peer.
fn path_mtu(socket: &UdpSocket) -> std::io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket and a c_int of the right size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 { Ok(value.cast_unsigned()) } else { Err(std::io::Error::last_os_error()) }
}

/// A UDP socket in the client's namespace connected to the VIP's echo.
fn echo_socket(mode: libc::c_int) -> UdpSocket {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
    socket.connect((VIP, UDP_PORT)).expect("connect to the VIP");
    socket.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    set_pmtu_discovery(&socket, mode);
    socket
}

/// An echo socket that lets the kernel fragment (`IP_PMTUDISC_WANT`),
/// once a datagram too big for the path has taught the client's kernel the
/// path MTU (the "fragmentation needed" of the test below).
fn echo_socket_past_the_path_mtu() -> UdpSocket {
    let learn = echo_socket(libc::IP_PMTUDISC_DO);
    let _ = learn.send(&[b'l'; BIG_DATAGRAM]);
    let mut buf = vec![0_u8; 65_536];
    let _ = learn.recv(&mut buf);
    echo_socket(libc::IP_PMTUDISC_WANT)
}

/// The client's link to the load balancer has MTU 3400 (both ends), the
/// backends' side 1500: a 3000-byte UDP datagram with DF set gets
/// "fragmentation needed" (MTU 1500) from the VIP, quoting it, and the
/// client's kernel learns path MTU 1500 towards the VIP.
#[test]
fn a_datagram_too_big_for_the_backend_side_gets_fragmentation_needed() {
    let lab = Lab::start_prepared("lbt81", Setup::default(), [Some(1); 3], |topo| {
        topo.set_client_link_mtu(3400);
    });
    let client = lab.topo.client();
    let watched = [Counter::FragNeeded, Counter::DropTooBig, Counter::DropAnswerBudget];
    let before = counters::get(&lab.pin_dir, Counter::FragNeeded);
    let (first_recv, second_send, mtu, small) = in_ns(&client, || {
        let socket = echo_socket(libc::IP_PMTUDISC_DO);
        let payload = vec![b'x'; BIG_DATAGRAM];
        socket.send(&payload).expect("the first 3000-byte datagram leaves (link MTU 3400)");
        // The error arrives on the connected socket: EMSGSIZE.
        let mut buf = vec![0_u8; 65_536];
        let first_recv = socket.recv(&mut buf);
        let second_send = socket.send(&payload);
        let mtu = path_mtu(&socket);
        // What fits still goes through.
        let small = socket
            .send(b"small")
            .and_then(|_| socket.recv(&mut buf))
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        (first_recv, second_send, mtu, small)
    });
    let frag_needed = counters::get(&lab.pin_dir, Counter::FragNeeded) - before;
    let route = route_get(&client, VIP);
    eprintln!(
        "recv after the first datagram: {first_recv:?}; second send: {second_send:?}; IP_MTU: \
         {mtu:?}; `ip route get {VIP}`: {route}; {}",
        counter_line(&lab, &watched)
    );
    let explain = format!(
        "a 3000-byte datagram with DF to the VIP (client link MTU 3400, backend side 1500) \
         should get \"fragmentation needed\" with MTU 1500 from the VIP. recv after it: \
         {first_recv:?}; the next send: {second_send:?}; IP_MTU: {mtu:?}; `ip route get {VIP}` \
         in the client: {route}; counters: {}",
        counter_line(&lab, &watched)
    );
    assert!(matches!(&first_recv, Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE)), "{explain}");
    assert!(
        matches!(&second_send, Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE)),
        "{explain}"
    );
    assert_eq!(mtu.as_ref().ok(), Some(&1500), "{explain}");
    assert_eq!(cached_mtu(&client, VIP), Some(1500), "{explain}");
    assert!(frag_needed >= 1, "{explain}");
    let small = small.unwrap_or_else(|e| panic!("a small datagram after that: {e}"));
    assert!(small.ends_with(" small"), "the echo of a small datagram: {small:?}");
}

/// Once the client knows path MTU 1500 towards the VIP, a socket that lets
/// the kernel fragment (`IP_PMTUDISC_WANT`) sends 3000-byte datagrams in
/// fragments, and the backend's echo, fragmented too, comes back whole from
/// the VIP: every fragment both ways through XDP.
#[test]
fn a_datagram_larger_than_the_path_is_fragmented_and_echoed_whole() {
    let lab = Lab::start_prepared("lbt82", Setup::default(), [Some(1); 3], |topo| {
        topo.set_client_link_mtu(3400);
    });
    let client = lab.topo.client();
    let watched = [Counter::FragNeeded, Counter::PassFragmentToKernel, Counter::Redirect];
    let count = |c| counters::get(&lab.pin_dir, c);
    let before = (count(Counter::Redirect), count(Counter::PassFragmentToKernel));
    let results = in_ns(&client, || {
        let socket = echo_socket_past_the_path_mtu();
        let mut buf = vec![0_u8; 65_536];
        (0..3_u8)
            .map(|i| {
                let payload: Vec<u8> =
                    (0..BIG_DATAGRAM).map(|j| b'a' + ((j + usize::from(i)) % 26) as u8).collect();
                socket.send(&payload).map_err(|e| format!("send: {e}"))?;
                let n = socket.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
                let reply = &buf[..n];
                let whole = reply.len() == payload.len() + 5 && reply.ends_with(&payload);
                if whole { Ok(n) } else { Err(format!("{n} bytes, not the datagram echoed")) }
            })
            .collect::<Vec<Result<usize, String>>>()
    });
    eprintln!("echoes: {results:?}; {}", counter_line(&lab, &watched));
    assert!(
        results.iter().all(Result::is_ok),
        "3000-byte datagrams sent in fragments (path MTU 1500) should be echoed whole by the \
         backend: {results:?}; counters: {}",
        counter_line(&lab, &watched)
    ); // In order, every fragment is XDP's: none went the kernel's way.
    let after = (count(Counter::Redirect), count(Counter::PassFragmentToKernel));
    assert!(
        after.0 >= before.0 + 3 * 3 && after.1 == before.1,
        "the fragments went through XDP (redirect {} -> {}), none to the kernel ({} -> {})",
        before.0,
        after.0,
        before.1,
        after.1
    );
}

/// UDP datagrams of 4,000 bytes whose fragments reach the load balancer
/// (a) in order, cut by the client's kernel for path MTU 1500, and (b) in
/// reverse, the first fragment last, cut here and sent through a packet
/// socket: both echoed whole through the VIP. (a) is XDP's alone; in (b)
/// the early fragments go to the kernel (`pass_fragment_to_kernel`), which
/// reassembles the datagram for lb-ctl's slow path to place and send on
/// from the client's address; the echo comes back through XDP from the VIP.
#[test]
fn a_datagram_whose_first_fragment_comes_last_is_echoed_whole() {
    const DATAGRAM: usize = 4000;
    const CLIENT_PORT: u16 = 41_000;
    let lab = Lab::start_prepared("lbt92", Setup::default(), [Some(1); 3], |topo| {
        topo.set_client_link_mtu(3400);
    });
    let (client, lb) = (lab.topo.client(), lab.topo.lb());
    let watched = [Counter::PassFragmentToKernel, Counter::DropFragment, Counter::Redirect];
    let payload = |i: u8| -> Vec<u8> {
        (0..DATAGRAM).map(|j| b'a' + ((j * 7 + usize::from(i)) % 26) as u8).collect()
    };
    let echoed = |reply: &[u8], sent: &[u8]| reply.len() == sent.len() + 5 && reply.ends_with(sent);

    let in_order = in_ns(&client, move || {
        let socket = echo_socket_past_the_path_mtu();
        let mut buf = vec![0_u8; 65_536];
        (0..3_u8)
            .map(|i| {
                let sent = payload(i);
                let start = Instant::now();
                socket.send(&sent).map_err(|e| format!("send: {e}"))?;
                let n = socket.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
                if echoed(&buf[..n], &sent) {
                    Ok((n, start.elapsed()))
                } else {
                    Err(format!("{n} bytes, not the echo"))
                }
            })
            .collect::<Vec<Result<(usize, Duration), String>>>()
    });
    eprintln!("in order: {in_order:?}; {}", counter_line(&lab, &watched));
    assert!(
        in_order.iter().all(Result::is_ok),
        "4000-byte datagrams fragmented by the client's kernel should be echoed whole: \
         {in_order:?}; counters: {}",
        counter_line(&lab, &watched)
    );

    let (lb_mac, client_mac) = (mac_of(&lb, "lb-c"), mac_of(&client, "c0"));
    let client_addr: Ipv4Addr = CLIENT_ADDR.parse().expect("client");
    let socket = in_ns(&client, || {
        let socket = UdpSocket::bind((CLIENT_ADDR, CLIENT_PORT)).expect("the client's socket");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        socket
    });
    let before = counters::get(&lab.pin_dir, Counter::PassFragmentToKernel);
    let mut results = Vec::new();
    let mut buf = vec![0_u8; 65_536];
    for i in 0..3_u8 {
        let sent = payload(10 + i);
        let mut datagram = Ipv4::udp((client_addr, CLIENT_PORT), (vip(), UDP_PORT), &sent);
        datagram.frag_off = 0;
        datagram.id = 0x7700 + u16::from(i);
        // 1,480 bytes of IP payload each (the backend side's MTU): three.
        let mut frames: Vec<Vec<u8>> =
            fragments(&datagram, 1480).iter().map(|f| f.frame(lb_mac, client_mac)).collect();
        assert_eq!(frames.len(), 3, "a 4000-byte datagram in three fragments");
        frames.reverse();
        let start = Instant::now();
        let taken = send_frames(&client, "c0", frames);
        let got = socket.recv(&mut buf).map_err(|e| format!("recv: {e}"));
        let took = start.elapsed();
        results.push(match got {
            Ok(n) if echoed(&buf[..n], &sent) => Ok((n, took)),
            Ok(n) => Err(format!("{n} bytes, not the echo")),
            Err(e) => Err(format!("{taken} of 3 fragments sent; {e}")),
        });
    }
    let passed = counters::get(&lab.pin_dir, Counter::PassFragmentToKernel) - before;
    let slow_path = lab.reassembled(3);
    let said: Vec<String> =
        lab.log().lines().filter(|l| l.contains("reassembl")).map(str::to_owned).collect();
    let report = format!(
        "first fragment last: {results:?}; pass_fragment_to_kernel +{passed}; sent on by \
         lb-ctl: {slow_path:?}; counters: {}; \
         the controller on it: {said:?}",
        counter_line(&lab, &watched)
    );
    eprintln!("{report}");
    assert!(
        results.iter().all(Result::is_ok),
        "4000-byte datagrams whose first fragment comes last should be echoed whole: {report}"
    );
    assert_eq!(passed, 9, "every fragment of the three datagrams goes to the kernel: {report}");
    assert_eq!(slow_path.0, 3, "lb-ctl's stats: every datagram forwarded: {report}");
}

// --- 3. loops stay bounded --------------------------------------------------

/// Sends each of `frames` out of `dev` in namespace `ns`, as they are,
/// pausing now and then so that the receiving veth's ring (with XDP, a
/// NAPI ring of its own) is not what drops them. Returns how many the
/// kernel took.
fn send_frames(ns: &str, dev: &'static str, frames: Vec<Vec<u8>>) -> usize {
    in_ns(ns, move || {
        let (fd, addr) = packet_socket(dev);
        let mut sent = 0;
        for (i, frame) in frames.iter().enumerate() {
            if send_frame(&fd, &addr, frame) {
                sent += 1;
            }
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        sent
    })
}

/// An nftables table `lbt` in namespace `ns` counting, before anything
/// else sees them, the IPv4 packets that `rule` matches.
fn nft_count(ns: &str, rule: &str) {
    let script = format!(
        "table ip lbt {{\n chain pre {{\n type filter hook prerouting priority -400; policy accept;\n {rule} counter\n }}\n}}\n"
    );
    ns_sh(ns, &["bash", "-c", &format!("nft -f - <<'EOF'\n{script}EOF")]);
}

/// The packets `nft_count`'s rule has counted in `ns`.
fn nft_counted(ns: &str) -> u64 {
    let text = ns_sh(ns, &["nft", "list", "chain", "ip", "lbt", "pre"]);
    let mut words = text.split_whitespace();
    words.by_ref().find(|w| *w == "packets");
    words.next().and_then(|n| n.parse().ok()).expect("an nft counter")
}

/// UDP packets counted on the backends' side (in every backend's
/// namespace), with the load balancer's own view of its backend-side
/// interface.
struct BackendSide<'a> {
    topo: &'a Topology,
}

impl BackendSide<'_> {
    fn watch(topo: &Topology) -> BackendSide<'_> {
        for (name, _) in BACKENDS {
            nft_count(&topo.web(name), "meta l4proto udp");
        }
        BackendSide { topo }
    }

    /// UDP packets that reached the backends, and packets the load
    /// balancer sent out of `lb-b`.
    fn now(&self) -> (u64, u64) {
        let udp = BACKENDS.iter().map(|(name, _)| nft_counted(&self.topo.web(name))).sum();
        (udp, if_stat(&self.topo.lb(), "lb-b", "tx_packets"))
    }
}

/// Issue 13's forged datagrams, from the client's side: 1000 `src=VIP:5353
/// dst=VIP:5353` and 1000 `src=web1:5353 dst=VIP:5353`. Taken, either
/// would have backends answer a VIP or each other through the load
/// balancer (CVE-2024-2169's loop). None reaches the backends' side, and
/// the drop counters account for every one (`drop_source_vip`,
/// `drop_backend_port_to_vip` or `drop_reverse_path`).
#[test]
fn forged_loop_datagrams_never_cross_to_the_backends() {
    forged_loop_datagrams("lbt83", "", false);
}

/// The same where the reverse-path check cannot help (`reverse_path =
/// "loose"`, for asymmetric routing: a route back to web1 exists, and one
/// to the VIP is local): the checks of the source against the VIPs and the
/// backends' service endpoints drop them, each under its own counter.
#[test]
fn forged_loop_datagrams_never_cross_with_a_loose_reverse_path_check() {
    forged_loop_datagrams("lbt86", "reverse_path = \"loose\"\n", true);
}

/// Sends the forged datagrams with `dataplane` in the config; `each`:
/// `drop_source_vip` and `drop_backend_port_to_vip` must count 1000 each.
fn forged_loop_datagrams(prefix: &str, dataplane: &'static str, each: bool) {
    const N: usize = 1000;
    let lab = Lab::start_with(prefix, Setup { dataplane, ..Setup::default() }, [Some(1); 3]);
    let (client, lb) = (lab.topo.client(), lab.topo.lb());
    // Something legitimate first: the UDP service works, and the backend
    // side is seen to count.
    let side = BackendSide::watch(&lab.topo);
    let echo = in_ns(&client, || lb_testbed::harness::udp_query("before"));
    let (udp_start, _) = side.now();
    assert!(echo.is_ok() && udp_start >= 1, "a real query first: {echo:?}, counted {udp_start}");

    let (lb_mac, client_mac) = (mac_of(&lb, "lb-c"), mac_of(&client, "c0"));
    let web1: Ipv4Addr = BACKENDS[0].1.parse().expect("web1");
    let from_vip =
        Ipv4::udp((vip(), UDP_PORT), (vip(), UDP_PORT), b"loop?").frame(lb_mac, client_mac);
    let from_web1 =
        Ipv4::udp((web1, UDP_PORT), (vip(), UDP_PORT), b"loop?").frame(lb_mac, client_mac);
    let watched = [
        Counter::DropSourceVip,
        Counter::DropBackendPortToVip,
        Counter::DropReversePath,
        Counter::Redirect,
        Counter::Tx,
        Counter::SlowPathNeigh,
    ];
    let drops = || {
        [Counter::DropSourceVip, Counter::DropBackendPortToVip, Counter::DropReversePath]
            .map(|c| counters::get(&lab.pin_dir, c))
    };
    let forwarded = || {
        [Counter::Redirect, Counter::Tx, Counter::SlowPathNeigh]
            .iter()
            .map(|c| counters::get(&lab.pin_dir, *c))
            .sum::<u64>()
    };
    let (drops_before, forwarded_before, (udp_before, tx_before)) =
        (drops(), forwarded(), side.now());
    let lb_c_rx_before = if_stat(&lb, "lb-c", "rx_packets");
    let lost_before = veth_drops(&lab.topo);
    let start = Instant::now();
    let sent = send_frames(&client, "c0", [vec![from_vip; N], vec![from_web1; N]].concat());
    let took = start.elapsed();
    // Whatever a loop would do, it would have done it by now.
    std::thread::sleep(Duration::from_secs(1));
    let (drops_after, forwarded_after, (udp_after, tx_after)) = (drops(), forwarded(), side.now());
    let arrived = if_stat(&lb, "lb-c", "rx_packets") - lb_c_rx_before;
    let lost = veth_drops(&lab.topo) - lost_before;
    let dropped: Vec<u64> = drops_after.iter().zip(drops_before).map(|(a, b)| a - b).collect();
    let report = format!(
        "sent {sent} of {} forged datagrams in {took:?}, {arrived} packets arrived on lb-c, \
         {lost} lost in the veth before XDP; drop_source_vip +{}, drop_backend_port_to_vip \
         +{}, drop_reverse_path +{}; forwarded by XDP +{}; UDP packets at the backends +{}, \
         lb-b tx_packets +{}; counters now: {}",
        2 * N,
        dropped[0],
        dropped[1],
        dropped[2],
        forwarded_after - forwarded_before,
        udp_after - udp_before,
        tx_after - tx_before,
        counter_line(&lab, &watched)
    );
    eprintln!("{report}");
    assert_eq!(sent, 2 * N, "{report}");
    assert_eq!(udp_after - udp_before, 0, "forged datagrams crossed to the backends: {report}");
    // ARP or IPv6 neighbour discovery may cross now and then; a loop would
    // be thousands.
    assert!(tx_after - tx_before <= 5, "packets left on the backend side: {report}");
    assert_eq!(forwarded_after - forwarded_before, 0, "XDP forwarded forged datagrams: {report}");
    assert!(lost <= N as u64 / 10, "too many frames lost to tell: {report}");
    assert_eq!(
        dropped.iter().sum::<u64>() + lost,
        2 * N as u64,
        "the drop counters should account for every forged datagram: {report}"
    );
    if each {
        assert!(
            dropped[0] + lost >= N as u64 && dropped[1] + lost >= N as u64,
            "src=VIP, src=web1:5353, each under its own counter: {report}"
        );
    }
}

/// 10,000 datagrams forged from the client's side as if a backend answered
/// a client (`src=web1:5353 dst=client`): the strict reverse-path check
/// drops every one (`drop_reverse_path`); none leaves on the backends' side,
/// none comes back to the client as if from the VIP.
#[test]
fn a_flood_of_forged_backend_replies_is_dropped_at_the_edge() {
    const N: usize = 10_000;
    const CLIENT_PORT: u16 = 40_000;
    let lab = Lab::start("lbt85");
    let (client, lb) = (lab.topo.client(), lab.topo.lb());
    let side = BackendSide::watch(&lab.topo);
    // Whatever reaches the client from the VIP's UDP service port.
    nft_count(&client, &format!("ip saddr {VIP} udp sport {UDP_PORT}"));
    let listener = in_ns(&client, || {
        let socket = UdpSocket::bind((CLIENT_ADDR, CLIENT_PORT)).expect("client socket");
        socket.set_nonblocking(true).expect("non-blocking");
        socket
    });
    let (lb_mac, client_mac) = (mac_of(&lb, "lb-c"), mac_of(&client, "c0"));
    let web1: Ipv4Addr = BACKENDS[0].1.parse().expect("web1");
    let client_addr: Ipv4Addr = CLIENT_ADDR.parse().expect("client");
    let forged = Ipv4::udp((web1, UDP_PORT), (client_addr, CLIENT_PORT), b"reply?")
        .frame(lb_mac, client_mac);
    let watched = [Counter::DropReversePath, Counter::Redirect, Counter::Tx];
    let before = counters::get(&lab.pin_dir, Counter::DropReversePath);
    let forwarded_before =
        counters::get(&lab.pin_dir, Counter::Redirect) + counters::get(&lab.pin_dir, Counter::Tx);
    let (udp_before, tx_before) = side.now();
    let lost_before = veth_drops(&lab.topo);
    let start = Instant::now();
    let sent = send_frames(&client, "c0", vec![forged; N]);
    let took = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let dropped = counters::get(&lab.pin_dir, Counter::DropReversePath) - before;
    let forwarded = counters::get(&lab.pin_dir, Counter::Redirect)
        + counters::get(&lab.pin_dir, Counter::Tx)
        - forwarded_before;
    let (udp_after, tx_after) = side.now();
    let lost = veth_drops(&lab.topo) - lost_before;
    let at_client = nft_counted(&client);
    let mut buf = [0_u8; 64];
    let received = std::iter::from_fn(|| listener.recv(&mut buf).ok()).take(N).count();
    let report = format!(
        "sent {sent} of {N} in {took:?}, {lost} lost in the veth before XDP; drop_reverse_path \
         +{dropped}; forwarded by XDP \
         +{forwarded}; UDP at the backends +{}; lb-b tx_packets +{}; from {VIP}:{UDP_PORT} at \
         the client: {at_client} (socket: {received}); counters now: {}",
        udp_after - udp_before,
        tx_after - tx_before,
        counter_line(&lab, &watched)
    );
    eprintln!("{report}");
    assert_eq!(sent, N, "{report}");
    assert_eq!(at_client, 0, "forged replies came back to the client from the VIP: {report}");
    assert_eq!(received, 0, "{report}");
    assert_eq!(udp_after - udp_before, 0, "forged replies crossed to the backends: {report}");
    assert!(tx_after - tx_before <= 5, "packets left on the backend side: {report}");
    assert_eq!(forwarded, 0, "{report}");
    assert!(lost <= N as u64 / 10, "too many frames lost to tell: {report}");
    assert_eq!(
        dropped + lost,
        N as u64,
        "drop_reverse_path should count every forged reply: {report}"
    );
}

// --- 4. a backend's port unreachable, from the VIP --------------------------

/// A UDP service whose backend has no listener on its port.
const HOLE_PORT: u16 = 5400;
const HOLE_SERVICE: &str = "\n[[service]]\nname = \"hole\"\nvip = \"10.77.1.100\"\nport = 5400\nprotocol = \"udp\"\n  [[service.backend]]\n  address = \"10.77.2.11\"\n  port = 5400\n";

/// An ICMP error as a raw ICMP socket reads it: outer source, type, code,
/// and the quoted source, destination and ports.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    from: Ipv4Addr,
    kind: (u8, u8),
    quoted_src: SocketAddrV4,
    quoted_dst: SocketAddrV4,
}

fn parse_icmp_error(packet: &[u8]) -> Option<Seen> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    let quote = icmp.get(8..)?;
    let q_ihl = usize::from(quote.first()? & 0x0f) * 4;
    let ports = quote.get(q_ihl..q_ihl + 4)?;
    let addr = |b: &[u8], at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    Some(Seen {
        from: addr(packet, 12),
        kind: (icmp[0], icmp[1]),
        quoted_src: SocketAddrV4::new(addr(quote, 12), u16::from_be_bytes([ports[0], ports[1]])),
        quoted_dst: SocketAddrV4::new(addr(quote, 16), u16::from_be_bytes([ports[2], ports[3]])),
    })
}

/// A raw ICMP socket in the calling thread's namespace: it reads a copy of
/// every ICMP message the kernel receives.
fn icmp_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
    // SAFETY: a valid socket and timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    fd
}

/// The ICMP errors `fd` reads within `limit`.
fn read_icmp_errors(fd: &OwnedFd, limit: Duration) -> Vec<Seen> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0_u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: a valid socket and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if let Ok(n) = usize::try_from(n)
            && let Some(error) = parse_icmp_error(&buf[..n])
            && error.kind.0 == 3
        {
            seen.push(error);
        }
    }
    seen
}

/// The client sends a datagram to a UDP service of the VIP whose backend
/// (web1:5400) has no listener: web1's kernel answers "port unreachable"
/// quoting `client -> web1:5400`; the load balancer sends it on from the
/// VIP quoting `client -> VIP:5400` (`icmp_to_client`). The client's
/// connected socket then fails its recv with ECONNREFUSED, which Linux
/// does only for an error from the peer quoting the socket's own datagram,
/// and a raw ICMP socket sees where it came from.
#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_vip() {
    let lab =
        Lab::start_with("lbt84", Setup { tables: HOLE_SERVICE, ..Setup::default() }, [Some(1); 3]);
    assert_eq!(VIP, "10.77.1.100", "HOLE_SERVICE names the VIP");
    let client = lab.topo.client();
    let watched = [Counter::IcmpToClient, Counter::PassIcmpNotOurs, Counter::Redirect];
    let before = counters::get(&lab.pin_dir, Counter::IcmpToClient);
    let (local, recv, seen) = in_ns(&client, || {
        let icmp = icmp_socket();
        let socket = UdpSocket::bind((CLIENT_ADDR, 0)).expect("UDP socket");
        socket.connect((VIP, HOLE_PORT)).expect("connect to the VIP");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("read timeout");
        socket.send(b"anyone?").expect("send");
        let mut buf = [0_u8; 64];
        let recv = socket.recv(&mut buf);
        let seen = read_icmp_errors(&icmp, Duration::from_secs(1));
        (socket.local_addr().expect("local address"), recv, seen)
    });
    let to_client = counters::get(&lab.pin_dir, Counter::IcmpToClient) - before;
    let std::net::SocketAddr::V4(local) = local else { panic!("an IPv4 socket") };
    eprintln!(
        "recv on the connected socket: {recv:?}; ICMP errors seen: {seen:?}; {}",
        counter_line(&lab, &watched)
    );
    let expected = Seen {
        from: vip(),
        kind: (3, 3),
        quoted_src: local,
        quoted_dst: SocketAddrV4::new(vip(), HOLE_PORT),
    };
    let explain = format!(
        "web1 has no listener on {HOLE_PORT}: its port unreachable should reach the client from \
         the VIP, quoting {local} -> {VIP}:{HOLE_PORT}. recv on the connected socket: {recv:?}; \
         ICMP errors the client saw: {seen:?}; counters: {}",
        counter_line(&lab, &watched)
    );
    assert!(matches!(&recv, Err(e) if e.kind() == ErrorKind::ConnectionRefused), "{explain}");
    assert_eq!(seen, vec![expected], "{explain}");
    assert!(to_client >= 1, "{explain}");
}
