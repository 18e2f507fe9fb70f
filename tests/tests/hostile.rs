//! The hostile corpus (issue 13, item 6): frames an attacker or a broken
//! host could send, each fed to the real XDP program through
//! BPF_PROG_TEST_RUN in a namespace with a real FIB, with its expected
//! verdict, counter and output bytes (built independently by
//! `lb_testbed::packet`); every case's output is also checked by the oracle
//! (`lb_tests::oracle`). Then a seeded random run: 100,000 mutations of
//! valid frames, each output checked by the oracle alone.
//!
//! Cases marked `// questioned:` record what the program does now where a
//! router's input path would do otherwise (see the comment on each); the
//! rest is what the edge (issue 13) settled: ICMP errors about our flows
//! translated, fragments followed, the reverse-path check, TCP flags no
//! connection sends, link-layer group frames, answers never to a backend.
use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use lb_common::{
    abi::{NEIGH_MARK_MAGIC, NeighMark, SCHED_MAGLEV, SCHED_MASK, SCHED_SH, addr_slot},
    counter::Counter,
};
use lb_testbed::{
    fixture::*,
    netns::in_ns,
    packet::{self, IP_MF, Ipv4, L4, Mac, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, forwarded},
    testrun::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name},
};
use lb_tests::{
    expect::{Expect, hex, run_case},
    oracle::{self, Accepted, HashTable, Oracle, Translation},
};

const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;
const TCP_ALL: u8 = 0xff;
const CLIENT_PORT: u16 = 40_000;
/// MSS 1460, SACK permitted, NOP, window scale 7, two NOPs: 12 bytes.
const TCP_OPTIONS: [u8; 12] = [2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 1, 1];
/// IPv4 options: NOPs and a router alert.
const IP_OPTIONS: [u8; 8] = [0x01, 0x01, 0x01, 0x01, 0x94, 0x04, 0x00, 0x00];
const NS: &str = "lbt-hos";
/// A router on the backend side (no neighbour entry needed: it only sends).
const LB_BACKEND_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 254);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    /// A header cut at every byte.
    Truncated,
    IpOptions,
    TcpFlags,
    /// Martian, VIP and backend sources, from either side.
    Spoofed,
    /// ICMP errors quoting truncated packets, foreign flows, our flows.
    Icmp,
    /// Overlapping, tiny and odd fragments; datagrams in fragments.
    Fragment,
    /// Packets too big for the next link.
    TooBig,
    /// Header fields that do not hold together, or odd ones.
    Malformed,
}

struct Case {
    category: Category,
    name: String,
    ingress: &'static str,
    input: Vec<u8>,
    action: u32,
    counter: Counter,
    expect: Expect,
}

/// The table, filled category by category.
struct Table(Vec<Case>, Category);

impl Table {
    fn add(
        &mut self,
        name: impl Into<String>,
        ingress: &'static str,
        input: Vec<u8>,
        (action, counter, expect): (u32, Counter, Expect),
    ) {
        let name = name.into();
        self.0.push(Case { category: self.1, name, ingress, input, action, counter, expect });
    }
}

/// Whether a segment with `flags` may be one of a connection (RFC 9293),
/// as written here: a SYN without FIN or RST, anything else with ACK or RST.
fn packet_flags_valid(flags: u8) -> bool {
    match (flags & TCP_SYN != 0, flags & (TCP_FIN | TCP_RST) != 0, flags & TCP_ACK != 0) {
        (true, with_fin_or_rst, _) => !with_fin_or_rst,
        (false, _, ack) => ack || flags & TCP_RST != 0,
    }
}

fn unchanged(action: u32, counter: Counter) -> (u32, Counter, Expect) {
    (action, counter, Expect::Unchanged)
}

fn pass(counter: Counter) -> (u32, Counter, Expect) {
    unchanged(XDP_PASS, counter)
}

fn dropped(counter: Counter) -> (u32, Counter, Expect) {
    unchanged(XDP_DROP, counter)
}

fn redirect(frame: Vec<u8>) -> (u32, Counter, Expect) {
    (XDP_REDIRECT, Counter::Redirect, Expect::Frame(frame))
}

fn tx(frame: Vec<u8>, counter: Counter) -> (u32, Counter, Expect) {
    (XDP_TX, counter, Expect::Frame(frame))
}

fn syn(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Ipv4 {
    Ipv4::tcp(src, dst, TCP_SYN, b"")
}

/// A TCP segment with options (the packet builder's TCP header has none),
/// checksum computed here from scratch.
#[derive(Clone)]
struct Seg {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Seg {
    fn new(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self { src, dst, flags, options: TCP_OPTIONS.to_vec(), payload: Vec::new() }
    }

    fn bytes(&self) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4), "TCP options padded to words");
        let mut b = Vec::new();
        b.extend_from_slice(&self.src.1.to_be_bytes());
        b.extend_from_slice(&self.dst.1.to_be_bytes());
        b.extend_from_slice(&1000_u32.to_be_bytes());
        b.extend_from_slice(&0_u32.to_be_bytes());
        b.extend_from_slice(&[((5 + self.options.len() / 4) as u8) << 4, self.flags]);
        b.extend_from_slice(&64240_u16.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.options);
        b.extend_from_slice(&self.payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.0.octets());
        pseudo.extend_from_slice(&self.dst.0.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(b.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&b);
        let check = packet::internet_checksum(&pseudo);
        b[16..18].copy_from_slice(&check.to_be_bytes());
        b
    }

    /// In an IPv4 packet with `ip_options`.
    fn ip(&self, ip_options: &[u8]) -> Ipv4 {
        let mut p = Ipv4::new(self.src.0, self.dst.0, L4::Raw { proto: 6, bytes: self.bytes() });
        p.options = ip_options.to_vec();
        p
    }

    /// As the load balancer forwards it: new endpoints, one hop later.
    fn forwarded(
        &self,
        ip_options: &[u8],
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        dst_mac: Mac,
        src_mac: Mac,
    ) -> Vec<u8> {
        let mut p = Self { src, dst, ..self.clone() }.ip(ip_options);
        p.ttl -= 1;
        p.frame(dst_mac, src_mac)
    }
}

/// A client's packet to the web service (VIP:80 -> web1:8080), forwarded.
fn to_web1(p: &Ipv4) -> Vec<u8> {
    let sport = match &p.l4 {
        L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport,
        L4::Raw { .. } => unreachable!(),
    };
    forwarded(p, (p.src, sport), (WEB1, 8080), WEB_MACS[0], IF_BACKEND_MAC)
}

/// A web1:8080 reply to `client`, forwarded from the VIP.
fn web1_reply_forwarded(p: &Ipv4, client: (Ipv4Addr, u16), mac: Mac, src_mac: Mac) -> Vec<u8> {
    forwarded(p, (VIP, 80), client, mac, src_mac)
}

/// The reset the VIP sends `client` from `vip:vport`, built by the packet builder.
fn reset_frame(
    vip: (Ipv4Addr, u16),
    client: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    macs: (Mac, Mac),
) -> Vec<u8> {
    let l4 =
        L4::Tcp { sport: vip.1, dport: client.1, flags, seq, ack, window: 0, payload: Vec::new() };
    let mut reset = Ipv4::new(vip.0, client.0, l4);
    reset.id = 0;
    reset.frame(macs.0, macs.1)
}

/// The ICMP port unreachable the VIP answers `datagram` with.
fn port_unreachable(datagram: &Ipv4, macs: (Mac, Mac)) -> Vec<u8> {
    port_unreachable_quoting(&datagram.to_bytes(), datagram, macs)
}

/// The ICMP port unreachable the VIP answers `datagram` with, quoting
/// `original` (its bytes as sent, which may differ from what it says).
fn port_unreachable_quoting(original: &[u8], datagram: &Ipv4, macs: (Mac, Mac)) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&original[..28]);
    let check = packet::internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut answer = Ipv4::new(datagram.dst, datagram.src, L4::Raw { proto: 1, bytes: icmp });
    answer.id = 0;
    answer.frag_off = 0;
    answer.frame(macs.0, macs.1)
}

/// An ICMP error of `kind` (type, code) from `src` to `dst` quoting `quoted`.
fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, kind: (u8, u8), quoted: &[u8]) -> Ipv4 {
    let mut icmp = vec![kind.0, kind.1, 0, 0, 0, 0, 0, 0];
    if kind == (3, 4) {
        icmp[6..8].copy_from_slice(&1400_u16.to_be_bytes()); // next-hop MTU
    }
    icmp.extend_from_slice(quoted);
    let check = packet::internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    Ipv4::new(src, dst, L4::Raw { proto: 1, bytes: icmp })
}

/// `frame` with its IPv4 header checksum computed again (after an edit),
/// over as much of the header as the frame holds.
fn fix_ip_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let end = (14 + usize::from(frame[14] & 0x0f) * 4).min(frame.len());
    frame[24..26].fill(0);
    let check = packet::internet_checksum(&frame[14..end]);
    frame[24..26].copy_from_slice(&check.to_be_bytes());
    frame
}

/// `frame` with its IPv4 total length set to `len` (checksum fixed).
fn with_tot_len(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame[16..18].copy_from_slice(&(len as u16).to_be_bytes());
    fix_ip_checksum(frame)
}

/// Where in `full` (Ethernet, IPv4 of `ihl` bytes, a transport header of
/// `l4_fixed` fixed and `l4_header` total bytes) a cut at `len` falls.
fn place(
    len: usize,
    full: usize,
    ihl: usize,
    l4: &str,
    l4_fixed: usize,
    l4_header: usize,
) -> String {
    let at = |what: &str| format!("inside the {what}");
    match len {
        14 => "after the Ethernet header".into(),
        l if l < 34 => at("IPv4 header"),
        l if l < 14 + ihl => at("IPv4 options"),
        l if l < 14 + ihl + l4_fixed => at(&format!("{l4} header")),
        l if l < 14 + ihl + l4_header => at(&format!("{l4} options")),
        l if l < full => at("payload"),
        _ => "whole".into(),
    }
}

/// Every cut of `full` from the end of the Ethernet header on (shorter
/// frames BPF_PROG_TEST_RUN refuses, and no NIC delivers): inside the
/// fixed IPv4 header the addresses cannot be read and the kernel gets the
/// frame (`pass_malformed`); from there on the packet is to a VIP or from
/// a backend, and its headers claim more than the frame holds
/// (`drop_malformed`); the whole frame gets `whole`.
fn cuts(
    t: &mut Table,
    what: &str,
    ingress: &'static str,
    full: &[u8],
    ihl: usize,
    l4: (&str, usize, usize),
    whole: &(u32, Counter, Expect),
) {
    for len in 14..=full.len() {
        let where_ = place(len, full.len(), ihl, l4.0, l4.1, l4.2);
        let expect = if len == full.len() {
            whole.clone()
        } else if len < 34 {
            pass(Counter::PassMalformed)
        } else {
            dropped(Counter::DropMalformed)
        };
        t.add(
            format!("{what} cut to {len} bytes ({where_})"),
            ingress,
            full[..len].to_vec(),
            expect,
        );
    }
}

fn truncated(t: &mut Table) {
    // A SYN with TCP options to the VIP, with and without IPv4 options.
    let seg = Seg::new((CLIENT, CLIENT_PORT), (VIP, 80), TCP_SYN);
    let tcp = ("TCP", 20, 32);
    for (what, ip_options) in
        [("a SYN with TCP options", &[][..]), ("a SYN with IPv4 and TCP options", &IP_OPTIONS[..])]
    {
        let full = from_client(&seg.ip(ip_options));
        let out = seg.forwarded(
            ip_options,
            (CLIENT, CLIENT_PORT),
            (WEB1, 8080),
            WEB_MACS[0],
            IF_BACKEND_MAC,
        );
        cuts(t, what, IF_CLIENT, &full, 20 + ip_options.len(), tcp, &redirect(out));
    }
    // A UDP query to the VIP.
    let query = Ipv4::udp((CLIENT, 40_053), (VIP, 53), b"query");
    let out = forwarded(&query, (CLIENT, 40_053), (WEB2, 5353), WEB_MACS[1], IF_BACKEND_MAC);
    cuts(t, "a UDP query", IF_CLIENT, &from_client(&query), 20, ("UDP", 8, 8), &redirect(out));
    // A backend's replies: web1's SYN-ACK with TCP options, web2's answer.
    let reply = Seg::new((WEB1, 8080), (CLIENT, CLIENT_PORT), TCP_SYN | TCP_ACK);
    let out = reply.forwarded(&[], (VIP, 80), (CLIENT, CLIENT_PORT), CLIENT_MAC, IF_CLIENT_MAC);
    let full = from_web1(&reply.ip(&[]));
    cuts(t, "web1's SYN-ACK with TCP options", IF_BACKEND, &full, 20, tcp, &redirect(out));
    let answer = Ipv4::udp((WEB2, 5353), (CLIENT, 40_053), b"answer");
    let out = forwarded(&answer, (VIP, 53), (CLIENT, 40_053), CLIENT_MAC, IF_CLIENT_MAC);
    let full = from_web2(&answer);
    cuts(t, "web2's UDP answer", IF_BACKEND, &full, 20, ("UDP", 8, 8), &redirect(out));

    // The same cuts with the IPv4 total length (and checksum) saying so:
    // a short but self-consistent IPv4 packet whose transport header does
    // not fit in it.
    let full = from_client(&seg.ip(&IP_OPTIONS));
    for len in 34..full.len() {
        let where_ = place(len, full.len(), 28, "TCP", 20, 32);
        t.add(
            format!("a SYN with IPv4 and TCP options whose total length ends {where_} ({len})"),
            IF_CLIENT,
            with_tot_len(full[..len].to_vec(), len - 14),
            dropped(Counter::DropMalformed),
        );
    }
    let full = from_client(&query);
    for len in 34..full.len() {
        let where_ = place(len, full.len(), 20, "UDP", 8, 8);
        t.add(
            format!("a UDP query whose total length ends {where_} ({len})"),
            IF_CLIENT,
            with_tot_len(full[..len].to_vec(), len - 14),
            dropped(Counter::DropMalformed),
        );
    }
}

fn ip_options(t: &mut Table) {
    let options: [(&str, Vec<u8>); 12] = [
        ("end of options only", vec![0, 0, 0, 0]),
        ("four NOPs", vec![1, 1, 1, 1]),
        ("a router alert", vec![0x94, 4, 0, 0]),
        // questioned: a router records its address in a
        // record-route or timestamp option (RFC 791); this one forwards it as it came.
        ("record route", vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("a timestamp", vec![0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        // questioned: Linux drops source-routed packets
        // (accept_source_route = 0); the program sends them to the backend.
        ("loose source route", vec![0x83, 7, 4, 10, 77, 2, 99, 0]),
        ("strict source route", vec![0x89, 7, 4, 10, 77, 2, 99, 0]),
        ("40 bytes of NOPs (IHL 15)", vec![1; 40]),
        // questioned: Linux answers options that do not
        // parse with a parameter problem and drops the packet.
        ("an option of length 0", vec![0x44, 0, 0, 0]),
        ("an option longer than the header", vec![7, 40, 4, 0]),
        ("an unknown option", vec![0x9e, 4, 0, 0]),
        ("a security option", vec![0x82, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    for (i, (what, bytes)) in options.into_iter().enumerate() {
        let mut p = syn((CLIENT, 41_000 + i as u16), (VIP, 80));
        p.options = bytes;
        t.add(
            format!("a SYN with IPv4 options ({what}) is forwarded, options kept"),
            IF_CLIENT,
            from_client(&p),
            redirect(to_web1(&p)),
        );
    }
    let mut query = Ipv4::udp((CLIENT, 41_053), (VIP, 53), b"query");
    query.options = IP_OPTIONS.to_vec();
    let out = forwarded(&query, (CLIENT, 41_053), (WEB2, 5353), WEB_MACS[1], IF_BACKEND_MAC);
    t.add(
        "a UDP query with IPv4 options is forwarded",
        IF_CLIENT,
        from_client(&query),
        redirect(out),
    );
    let mut reply = Ipv4::tcp((WEB1, 8080), (CLIENT, 41_000), TCP_SYN | TCP_ACK, b"");
    reply.options = IP_OPTIONS.to_vec();
    let out = web1_reply_forwarded(&reply, (CLIENT, 41_000), CLIENT_MAC, IF_CLIENT_MAC);
    t.add(
        "web1's reply with IPv4 options is forwarded from the VIP",
        IF_BACKEND,
        from_web1(&reply),
        redirect(out),
    );
    let mut slow = syn((CLIENT, 41_090), (VIP_NO_NEIGH, 80));
    slow.options = IP_OPTIONS.to_vec();
    let frame =
        forwarded(&slow, (CLIENT, 41_090), (NO_NEIGH_BACKEND, 80), IF_CLIENT_MAC, CLIENT_MAC);
    let expect = Expect::SlowPath { frame, egress: IF_BACKEND, nexthop: NO_NEIGH_BACKEND };
    t.add(
        "a SYN with IPv4 options to a backend without a neighbour entry takes the slow path",
        IF_CLIENT,
        from_client(&slow),
        (XDP_PASS, Counter::SlowPathNeigh, expect),
    );
    let mut direct = syn((CLIENT, 41_091), (VIP_DSR, 80));
    direct.options = vec![0x83, 7, 4, 10, 77, 2, 99, 0];
    t.add(
        "direct routing with a loose source route: the IP packet as it came, to web2",
        IF_CLIENT,
        from_client(&direct),
        redirect(direct.frame(WEB_MACS[1], IF_BACKEND_MAC)),
    );
    // Only plain headers are answered: a service that rejects drops these.
    let mut refused = syn((CLIENT, 41_080), (VIP_REJECTING, 80));
    refused.options = IP_OPTIONS.to_vec();
    t.add(
        "a SYN with IPv4 options to a rejecting service gets no reset",
        IF_CLIENT,
        from_client(&refused),
        dropped(Counter::DropNoBackend),
    );
    let mut datagram = Ipv4::udp((CLIENT, 41_053), (VIP_REJECTING, 53), b"q");
    datagram.options = IP_OPTIONS.to_vec();
    t.add(
        "a datagram with IPv4 options to a rejecting service gets no ICMP",
        IF_CLIENT,
        from_client(&datagram),
        dropped(Counter::DropNoBackend),
    );
}

#[expect(clippy::too_many_lines, reason = "a table reads best as one list")]
fn tcp_flags(t: &mut Table) {
    let odd: [(&str, u8); 10] = [
        ("SYN+FIN", TCP_SYN | TCP_FIN),
        ("SYN+RST", TCP_SYN | TCP_RST),
        ("no flags", 0),
        ("every flag", TCP_ALL),
        ("FIN alone", TCP_FIN),
        ("RST alone", TCP_RST),
        ("URG alone", TCP_URG),
        ("SYN+ACK from the client", TCP_SYN | TCP_ACK),
        ("PSH alone", TCP_PSH),
        ("SYN+ECE+CWR", TCP_SYN | TCP_ECE | TCP_CWR),
    ];
    // Flags no connection sends (SYN with FIN or RST; none of SYN, RST,
    // ACK) are dropped both ways, before any state moves; the rest are
    // forwarded, and a new flow's first packet places it.
    for (i, (what, flags)) in odd.iter().enumerate() {
        let p = Ipv4::tcp((CLIENT, 42_000 + i as u16), (VIP, 80), *flags, b"");
        let expect = if packet_flags_valid(*flags) {
            redirect(to_web1(&p))
        } else {
            dropped(Counter::DropTcpFlags)
        };
        let verb = if packet_flags_valid(*flags) { "forwarded" } else { "dropped" };
        t.add(
            format!("a new flow's first segment with {what} is {verb}"),
            IF_CLIENT,
            from_client(&p),
            expect,
        );
    }
    let flow = (CLIENT, 42_100);
    let seq = [
        ("SYN", TCP_SYN),
        ("ACK", TCP_ACK),
        ("SYN+FIN", TCP_SYN | TCP_FIN),
        ("no flags", 0),
        ("every flag", TCP_ALL),
        ("SYN+RST", TCP_SYN | TCP_RST),
        ("RST", TCP_RST),
        ("SYN+FIN after its RST", TCP_SYN | TCP_FIN),
    ];
    for (what, flags) in seq {
        let p = Ipv4::tcp(flow, (VIP, 80), flags, b"");
        let (expect, verb) = if packet_flags_valid(flags) {
            (redirect(to_web1(&p)), "forwarded")
        } else {
            (dropped(Counter::DropTcpFlags), "dropped")
        };
        t.add(
            format!("an established flow's segment with {what} is {verb}"),
            IF_CLIENT,
            from_client(&p),
            expect,
        );
    }
    for (what, flags) in [
        ("SYN+FIN", TCP_SYN | TCP_FIN),
        ("no flags", 0),
        ("every flag", TCP_ALL),
        ("FIN alone", TCP_FIN),
        ("FIN+ACK", TCP_FIN | TCP_ACK),
    ] {
        let p = Ipv4::tcp((WEB1, 8080), flow, flags, b"");
        let (expect, verb) = if packet_flags_valid(flags) {
            (redirect(web1_reply_forwarded(&p, flow, CLIENT_MAC, IF_CLIENT_MAC)), "forwarded")
        } else {
            (dropped(Counter::DropTcpFlags), "dropped")
        };
        t.add(
            format!("web1's segment with {what} is {verb} (from the VIP)"),
            IF_BACKEND,
            from_web1(&p),
            expect,
        );
    }
    let p = Ipv4::tcp((CLIENT, 42_150), (VIP_NO_NEIGH, 80), TCP_SYN | TCP_FIN, b"");
    t.add(
        "SYN+FIN to a backend without a neighbour entry is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropTcpFlags),
    );
    let p = Ipv4::tcp((CLIENT, 42_151), (VIP_NO_NEIGH, 80), TCP_SYN | TCP_ECE | TCP_CWR, b"");
    let frame = forwarded(&p, (CLIENT, 42_151), (NO_NEIGH_BACKEND, 80), IF_CLIENT_MAC, CLIENT_MAC);
    let expect = Expect::SlowPath { frame, egress: IF_BACKEND, nexthop: NO_NEIGH_BACKEND };
    t.add(
        "SYN+ECE+CWR to a backend without a neighbour entry takes the slow path",
        IF_CLIENT,
        from_client(&p),
        (XDP_PASS, Counter::SlowPathNeigh, expect),
    );
    // A service with no usable backend answers (RFC 793 reset generation):
    // without ACK, RST+ACK acknowledging what the segment occupied; with
    // ACK, RST with its ack as seq; a segment carrying RST, nothing.
    let vip = (VIP_REJECTING, 80);
    let client = (CLIENT, 42_200);
    let macs = (CLIENT_MAC, IF_CLIENT_MAC);
    let rst_ack = TCP_RST | TCP_ACK;
    // Flags no connection sends get no answer either.
    for (what, flags, data) in [
        ("SYN+FIN", TCP_SYN | TCP_FIN, &b""[..]),
        ("no flags", 0, b""),
        ("FIN with 4 bytes", TCP_FIN, b"data"),
        ("SYN+RST", TCP_SYN | TCP_RST, b""),
        ("every flag", TCP_ALL, b""),
    ] {
        t.add(
            format!("{what} to a rejecting service: no answer"),
            IF_CLIENT,
            from_client(&Ipv4::tcp(client, vip, flags, data)),
            dropped(Counter::DropTcpFlags),
        );
    }
    t.add(
        "SYN with 4 bytes to a rejecting service: RST+ACK for seq + 5",
        IF_CLIENT,
        from_client(&Ipv4::tcp(client, vip, TCP_SYN, b"data")),
        tx(reset_frame(vip, client, rst_ack, 0, 1005, macs), Counter::RejectTcp),
    );
    t.add(
        "RST alone to a rejecting service: no answer (a reset is never answered)",
        IF_CLIENT,
        from_client(&Ipv4::tcp(client, vip, TCP_RST, b"")),
        dropped(Counter::DropNoBackend),
    );
    let mut acking = Ipv4::tcp(client, vip, TCP_ACK | TCP_PSH, b"data");
    if let L4::Tcp { ack, .. } = &mut acking.l4 {
        *ack = 0xdead_beef;
    }
    t.add(
        "ACK+PSH to a rejecting service: RST with its ack as seq",
        IF_CLIENT,
        from_client(&acking),
        tx(reset_frame(vip, client, TCP_RST, 0xdead_beef, 0, macs), Counter::RejectTcp),
    );
}

const MARTIANS: [Ipv4Addr; 9] = [
    Ipv4Addr::UNSPECIFIED,
    Ipv4Addr::new(0, 1, 2, 3),
    Ipv4Addr::LOCALHOST,
    Ipv4Addr::new(127, 1, 2, 3),
    Ipv4Addr::new(224, 0, 0, 1),
    Ipv4Addr::new(239, 255, 255, 250),
    Ipv4Addr::new(240, 0, 0, 1),
    Ipv4Addr::new(250, 1, 2, 3),
    Ipv4Addr::BROADCAST,
];

const VIPS: [Ipv4Addr; 6] =
    [VIP, VIP_NO_NEIGH, VIP_DRAINED, VIP_REJECTING, VIP_SCHEDULERS, VIP_DSR];

#[expect(clippy::too_many_lines, reason = "a table reads best as one list")]
fn spoofed(t: &mut Table) {
    for (side, ingress, mac) in
        [("client", IF_CLIENT, CLIENT_MAC), ("backend", IF_BACKEND, WEB_MACS[0])]
    {
        let ifmac = if ingress == IF_CLIENT { IF_CLIENT_MAC } else { IF_BACKEND_MAC };
        for m in MARTIANS {
            let p = syn((m, CLIENT_PORT), (VIP, 80));
            t.add(
                format!("a SYN to the VIP from {m} on the {side} side is dropped"),
                ingress,
                p.frame(ifmac, mac),
                dropped(Counter::DropMartianSource),
            );
        }
    }
    for m in [MARTIANS[0], MARTIANS[2], Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::BROADCAST] {
        let p = Ipv4::udp((m, 5353), (VIP, 53), b"q");
        t.add(
            format!("a datagram to the VIP from {m} is dropped"),
            IF_CLIENT,
            from_client(&p),
            dropped(Counter::DropMartianSource),
        );
    }
    // Without the checks, these would be answered to a martian.
    let p = syn((Ipv4Addr::LOCALHOST, CLIENT_PORT), (VIP_REJECTING, 80));
    t.add(
        "a SYN to a rejecting service from 127.0.0.1 gets no reset",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropMartianSource),
    );
    let p = Ipv4::udp((Ipv4Addr::BROADCAST, 5353), (VIP_REJECTING, 53), b"q");
    t.add(
        "a datagram to a rejecting service from 255.255.255.255 gets no ICMP",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropMartianSource),
    );

    for vip in VIPS {
        let p = syn((vip, CLIENT_PORT), (VIP, 80));
        t.add(
            format!("a SYN to the VIP from the VIP {vip} is dropped"),
            IF_CLIENT,
            from_client(&p),
            dropped(Counter::DropSourceVip),
        );
    }
    let p = syn((VIP, 80), (VIP, 80));
    t.add(
        "a SYN from the VIP to itself on the backend side is dropped",
        IF_BACKEND,
        from_web1(&p),
        dropped(Counter::DropSourceVip),
    );
    let p = Ipv4::udp((VIP, 53), (VIP_REJECTING, 53), b"q");
    t.add(
        "a datagram to a rejecting service from a VIP gets no ICMP",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropSourceVip),
    );

    // A backend's service endpoint sending to a VIP, from either side.
    let loops: [(&str, Ipv4, &'static str); 8] = [
        ("web1:8080 to VIP:80", syn((WEB1, 8080), (VIP, 80)), IF_CLIENT),
        ("web2:5353 to VIP:53", Ipv4::udp((WEB2, 5353), (VIP, 53), b"q"), IF_CLIENT),
        ("web1:443 to VIP:443", syn((WEB1, 443), (VIP, 443)), IF_CLIENT),
        ("the hairpin backend to VIP:8443", syn((HAIRPIN, 8443), (VIP, 8443)), IF_CLIENT),
        ("web3:7000 to VIP:7000", Ipv4::udp((WEB3, 7000), (VIP, 7000), b"q"), IF_CLIENT),
        ("web1:8080 to a rejecting service", syn((WEB1, 8080), (VIP_REJECTING, 80)), IF_CLIENT),
        ("web1:8080 to the direct-routing VIP", syn((WEB1, 8080), (VIP_DSR, 80)), IF_BACKEND),
        (
            "web2:5353 to the VIP on the backend side",
            Ipv4::udp((WEB2, 5353), (VIP, 53), b"q"),
            IF_BACKEND,
        ),
    ];
    for (what, p, ingress) in loops {
        let frame = if ingress == IF_CLIENT { from_client(&p) } else { from_web1(&p) };
        t.add(
            format!("{what} is dropped (a loop)"),
            ingress,
            frame,
            dropped(Counter::DropBackendPortToVip),
        );
    }

    // A backend's address arriving on the client side, where the route
    // back to it does not leave: the reverse-path check drops it before it
    // can be taken for a reply (or a client), and before any answer.
    let p = Ipv4::tcp((WEB1, 8080), (CLIENT, CLIENT_PORT), TCP_SYN | TCP_ACK, b"");
    t.add(
        "web1:8080 to a client, arriving on the client side, is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropReversePath),
    );
    let p = Ipv4::udp((WEB2, 5353), (CLIENT, 40_053), b"spoofed");
    t.add(
        "web2:5353 to a client, arriving on the client side, is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropReversePath),
    );
    let p = Ipv4::tcp((WEB1, 8080), (HAIRPIN, 8443), TCP_ACK, b"");
    t.add(
        "web1:8080 to the hairpin backend, arriving on the client side, is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropReversePath),
    );
    let p = Ipv4::tcp((WEB1, 8080), (UNSEEN_CLIENT, CLIENT_PORT), TCP_ACK, b"");
    t.add(
        "web1:8080 to an unseen client, arriving on the client side, is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropReversePath),
    );
    let p = Ipv4::tcp((WEB1, 8080), (UNSEEN_CLIENT, CLIENT_PORT), TCP_ACK, b"");
    let frame = web1_reply_forwarded(&p, (UNSEEN_CLIENT, CLIENT_PORT), IF_CLIENT_MAC, CLIENT_MAC);
    let expect = Expect::SlowPath { frame, egress: IF_CLIENT, nexthop: UNSEEN_CLIENT };
    t.add(
        "web1:8080 to an unseen client, from the backend side, takes the slow path",
        IF_BACKEND,
        from_web1(&p),
        (XDP_PASS, Counter::SlowPathNeigh, expect),
    );
    let p = syn((WEB1, 40_100), (VIP, 80));
    t.add(
        "web1 from an ephemeral port, on the client side, is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropReversePath),
    );
    // A backend's address on another port, from its own side, is a client
    // like any other (sent back out of the interface it came in on).
    t.add(
        "web1 from an ephemeral port, on the backend side, is a client",
        IF_BACKEND,
        from_web1(&p),
        tx(to_web1(&p), Counter::Tx),
    );
    let p = syn((CLIENT, 40_101), (VIP, 80));
    t.add(
        "a client's SYN arriving on the backend side is dropped",
        IF_BACKEND,
        p.frame(IF_BACKEND_MAC, CLIENT_MAC),
        dropped(Counter::DropReversePath),
    );
    let p = syn((UNREACHABLE_CLIENT, 40_102), (VIP, 80));
    t.add(
        "a SYN from an unreachable network is dropped",
        IF_CLIENT,
        from_client(&p),
        dropped(Counter::DropReversePath),
    );
    // An answer of the program's own never goes to a backend
    // (docs/architecture.md, "Odd and hostile packets": `drop_answer_forbidden`),
    // even as a client of a rejecting service.
    let p = syn((WEB1, 40_100), (VIP_REJECTING, 80));
    t.add(
        "web1 from an ephemeral port to a rejecting service gets no reset",
        IF_BACKEND,
        from_web1(&p),
        dropped(Counter::DropAnswerForbidden),
    );
    let p = Ipv4::udp((WEB2, 40_100), (VIP_REJECTING, 53), b"q");
    t.add(
        "web2 from an ephemeral port to a rejecting UDP service gets no ICMP",
        IF_BACKEND,
        from_web2(&p),
        dropped(Counter::DropAnswerForbidden),
    );

    // Nor to a direct-routing backend's address (which the prefilter's
    // `ADDR_REAL` does not flag): 10.77.2.51 as a client of a rejecting
    // service gets no reset.
    let sender = DSR_NO_NEIGH_BACKEND;
    let p = syn((sender, 40_100), (VIP_REJECTING, 80));
    let mac = [0x02, 0, 0, 0, 0x02, 0x33];
    t.add(
        "10.77.2.51 (a direct-routing backend) to a rejecting service gets no reset",
        IF_BACKEND,
        p.frame(IF_BACKEND_MAC, mac),
        dropped(Counter::DropAnswerForbidden),
    );

    // The load balancer's own address and a subnet's broadcast address
    // have no route back (local, broadcast): dropped. The network address
    // is unicast to this kernel's FIB (no broadcast route for it), so it
    // passes the check and is forwarded.
    for src in [LB_CLIENT_SIDE, Ipv4Addr::new(10, 77, 1, 255)] {
        let p = syn((src, CLIENT_PORT), (VIP, 80));
        t.add(
            format!("a SYN to the VIP from {src} is dropped"),
            IF_CLIENT,
            from_client(&p),
            dropped(Counter::DropReversePath),
        );
    }
    let p = syn((Ipv4Addr::new(10, 77, 1, 0), CLIENT_PORT), (VIP, 80));
    t.add(
        "a SYN to the VIP from 10.77.1.0 is forwarded",
        IF_CLIENT,
        from_client(&p),
        redirect(to_web1(&p)),
    );
    // A backend's reply to a martian: the FIB does not forward it.
    for dst in [
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
    ] {
        let p = Ipv4::tcp((WEB1, 8080), (dst, CLIENT_PORT), TCP_SYN | TCP_ACK, b"");
        t.add(
            format!("web1's reply to {dst} passes untouched"),
            IF_BACKEND,
            from_web1(&p),
            pass(Counter::PassLocal),
        );
    }
}

/// The ICMP error `error` as the load balancer sends it on: one hop later,
/// from `outer.0` to `outer.1`, its quote's source (`quoted_src`) or
/// destination address and port replaced by `quoted`, the quoted IPv4
/// header's and the ICMP checksums computed here from scratch, the quoted
/// transport checksum as it came.
fn icmp_translated(
    error: &Ipv4,
    outer: (Ipv4Addr, Ipv4Addr),
    quoted_src: bool,
    quoted: (Ipv4Addr, u16),
    macs: (Mac, Mac),
) -> Vec<u8> {
    let mut out = error.clone();
    out.ttl -= 1;
    (out.src, out.dst) = outer;
    let L4::Raw { bytes, .. } = &mut out.l4 else { unreachable!("an ICMP error is raw") };
    let q = &mut bytes[8..];
    let (addr_at, port_at) = if quoted_src { (12, 20) } else { (16, 22) };
    q[addr_at..addr_at + 4].copy_from_slice(&quoted.0.octets());
    q[port_at..port_at + 2].copy_from_slice(&quoted.1.to_be_bytes());
    q[10..12].fill(0);
    let check = packet::internet_checksum(&q[..20]);
    q[10..12].copy_from_slice(&check.to_be_bytes());
    bytes[2..4].fill(0);
    let check = packet::internet_checksum(bytes);
    bytes[2..4].copy_from_slice(&check.to_be_bytes());
    out.frame(macs.0, macs.1)
}

#[expect(clippy::too_many_lines, reason = "a table reads best as one list")]
fn icmp(t: &mut Table) {
    let dns_reply = Ipv4::udp((VIP, 53), (CLIENT, 40_053), b"answer").to_bytes();
    let web_reply = Ipv4::tcp((VIP, 80), (CLIENT, CLIENT_PORT), TCP_ACK, b"data").to_bytes();
    let to_web1 = Ipv4::tcp((CLIENT, CLIENT_PORT), (WEB1, 8080), TCP_ACK, b"data").to_bytes();
    let to_web2 = Ipv4::udp((CLIENT, 40_053), (WEB2, 5353), b"query").to_bytes();
    let foreign = Ipv4::tcp((LB_CLIENT_SIDE, 22), (CLIENT, 5555), TCP_ACK, b"").to_bytes();
    let foreign_backend = Ipv4::tcp((CLIENT, CLIENT_PORT), (WEB1, 9999), TCP_ACK, b"").to_bytes();
    let unknown = Ipv4::tcp((VIP, 80), (CLIENT, 4444), TCP_ACK, b"").to_bytes();
    let mut optioned = Ipv4::tcp((VIP, 80), (CLIENT, CLIENT_PORT), TCP_ACK, b"");
    optioned.options = IP_OPTIONS.to_vec();
    let optioned = optioned.to_bytes();
    let mut later = Ipv4::tcp((VIP, 80), (CLIENT, CLIENT_PORT), TCP_ACK, b"data");
    later.frag_off = 3;
    let later = later.to_bytes();
    let router = Ipv4Addr::new(10, 77, 1, 254);
    // Errors that pass to the kernel untouched, and why.
    let passed: [(&str, Ipv4, &'static str, Counter); 11] = [
        (
            "quoting only an IPv4 header",
            icmp_error(CLIENT, VIP, (3, 3), &dns_reply[..20]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "quoting an IPv4 header and 4 bytes",
            icmp_error(CLIENT, VIP, (3, 3), &dns_reply[..24]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "quoting nothing",
            icmp_error(CLIENT, VIP, (3, 3), &[]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "quoting half an IPv4 header",
            icmp_error(CLIENT, VIP, (3, 3), &dns_reply[..10]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "from a client about our flow, quoting IPv4 options",
            icmp_error(CLIENT, VIP, (3, 4), &optioned[..36]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "from a client about a foreign flow",
            icmp_error(CLIENT, VIP, (3, 3), &foreign[..28]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "from web1 about a flow to a port no service uses",
            icmp_error(WEB1, CLIENT, (3, 3), &foreign_backend[..28]),
            IF_BACKEND,
            Counter::PassIcmpNotOurs,
        ),
        (
            "from a client about a reply of a flow the table does not hold",
            icmp_error(CLIENT, VIP, (3, 4), &unknown[..28]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "from a client about a later fragment of our reply",
            icmp_error(CLIENT, VIP, (3, 4), &later[..28]),
            IF_CLIENT,
            Counter::PassIcmpNotOurs,
        ),
        (
            "of time exceeded code 2 (no such code)",
            icmp_error(router, VIP, (11, 2), &web_reply[..28]),
            IF_CLIENT,
            Counter::PassNotTcpUdp,
        ),
        (
            "of type 12 (parameter problem)",
            icmp_error(router, VIP, (12, 0), &web_reply[..28]),
            IF_CLIENT,
            Counter::PassNotTcpUdp,
        ),
    ];
    for (what, p, ingress, counter) in passed {
        let frame = if ingress == IF_CLIENT { from_client(&p) } else { from_web1(&p) };
        t.add(format!("an ICMP error {what} passes untouched"), ingress, frame, pass(counter));
    }
    let mut echo = icmp_error(CLIENT, VIP, (8, 0), b"ping");
    echo.frag_off = 0;
    t.add(
        "an echo request to the VIP passes",
        IF_CLIENT,
        from_client(&echo),
        pass(Counter::PassNotTcpUdp),
    );
    let mut fragmented = icmp_error(CLIENT, VIP, (3, 4), &web_reply[..28]);
    fragmented.frag_off = IP_MF;
    t.add(
        "an ICMP error in fragments passes untouched",
        IF_CLIENT,
        from_client(&fragmented),
        pass(Counter::PassIcmpNotOurs),
    );
    let mut expiring = icmp_error(CLIENT, VIP, (3, 4), &web_reply[..28]);
    expiring.ttl = 1;
    t.add(
        "an ICMP error about our flow with TTL 1 passes so the kernel answers",
        IF_CLIENT,
        from_client(&expiring),
        pass(Counter::PassTtlExpired),
    );
    t.add(
        "an ICMP error from 127.0.0.1 about our flow is dropped as martian",
        IF_CLIENT,
        from_client(&icmp_error(Ipv4Addr::LOCALHOST, VIP, (3, 4), &web_reply[..28])),
        dropped(Counter::DropMartianSource),
    );
    // From where the quoted packet was not going: forged.
    t.add(
        "a port unreachable from web1 arriving on the client side is dropped",
        IF_CLIENT,
        from_client(&icmp_error(WEB1, CLIENT, (3, 3), &to_web1[..28])),
        dropped(Counter::DropReversePath),
    );
    t.add(
        "an error about our reply to a client arriving on the backend side is dropped",
        IF_BACKEND,
        from_web1(&icmp_error(CLIENT, VIP, (3, 4), &web_reply[..28])),
        dropped(Counter::DropReversePath),
    );

    // About our replies: to the backend that sent them, as about its own
    // packet (web1:8080 -> client, web2:5353 -> client).
    let to_backend = |e: &Ipv4, backend: (Ipv4Addr, u16), mac: Mac| {
        let frame = icmp_translated(e, (e.src, backend.0), true, backend, (mac, IF_BACKEND_MAC));
        (XDP_REDIRECT, Counter::IcmpToBackend, Expect::Frame(frame))
    };
    let e = icmp_error(CLIENT, VIP, (3, 4), &web_reply[..28]);
    t.add(
        "fragmentation needed from a client about our TCP reply goes to web1",
        IF_CLIENT,
        from_client(&e),
        to_backend(&e, (WEB1, 8080), WEB_MACS[0]),
    );
    let e = icmp_error(CLIENT, VIP, (3, 3), &dns_reply);
    t.add(
        "port unreachable from a client quoting our whole UDP reply goes to web2",
        IF_CLIENT,
        from_client(&e),
        to_backend(&e, (WEB2, 5353), WEB_MACS[1]),
    );
    for code in [0, 1] {
        let e = icmp_error(router, VIP, (11, code), &web_reply[..28]);
        t.add(
            format!("time exceeded (code {code}) from a router about our reply goes to web1"),
            IF_CLIENT,
            from_client(&e),
            to_backend(&e, (WEB1, 8080), WEB_MACS[0]),
        );
    }
    let e = icmp_error(router, VIP, (3, 1), &web_reply[..28]);
    t.add(
        "host unreachable from a router about our reply goes to web1",
        IF_CLIENT,
        from_client(&e),
        to_backend(&e, (WEB1, 8080), WEB_MACS[0]),
    );
    // A direct-routing backend sent the reply from the VIP itself: it gets
    // the error as it came (the flow placed in `ip_options`).
    let dsr_reply = Ipv4::tcp((VIP_DSR, 80), (CLIENT, 41_091), TCP_ACK, b"").to_bytes();
    let e = icmp_error(CLIENT, VIP_DSR, (3, 4), &dsr_reply[..28]);
    t.add(
        "fragmentation needed about a direct-routing reply goes to web2 as it came",
        IF_CLIENT,
        from_client(&e),
        (XDP_REDIRECT, Counter::IcmpToBackend, Expect::Frame(e.frame(WEB_MACS[1], IF_BACKEND_MAC))),
    );

    // About a client's packet, from the backend side: to the client from
    // the VIP, quoting the packet as the client sent it.
    let to_client = |e: &Ipv4, vip: (Ipv4Addr, u16)| {
        let frame = icmp_translated(e, (vip.0, e.dst), false, vip, (CLIENT_MAC, IF_CLIENT_MAC));
        (XDP_REDIRECT, Counter::IcmpToClient, Expect::Frame(frame))
    };
    for (what, kind) in [("port unreachable", (3, 3)), ("fragmentation needed", (3, 4))] {
        let e = icmp_error(WEB1, CLIENT, kind, &to_web1[..28]);
        t.add(
            format!("{what} from web1 about a client's segment goes to the client from the VIP"),
            IF_BACKEND,
            from_web1(&e),
            to_client(&e, (VIP, 80)),
        );
    }
    let e = icmp_error(WEB2, CLIENT, (3, 3), &to_web2);
    t.add(
        "port unreachable from web2 quoting a whole query goes to the client from VIP:53",
        IF_BACKEND,
        from_web2(&e),
        to_client(&e, (VIP, 53)),
    );
    let e = icmp_error(LB_BACKEND_SIDE_ROUTER, CLIENT, (11, 0), &to_web1[..28]);
    t.add(
        "time exceeded from a backend-side router goes to the client from the VIP",
        IF_BACKEND,
        from_web1(&e),
        to_client(&e, (VIP, 80)),
    );
    // A router forwards only frames sent to it: an ICMP error of ours in a
    // link-layer broadcast frame is dropped like TCP and UDP.
    let e = icmp_error(CLIENT, VIP, (3, 4), &web_reply[..28]);
    t.add(
        "an ICMP error about our reply in a broadcast frame is dropped",
        IF_CLIENT,
        e.frame([0xff; 6], CLIENT_MAC),
        dropped(Counter::DropLinkGroup),
    );
}

#[expect(clippy::too_many_lines, reason = "a table reads best as one list")]
fn fragments(t: &mut Table) {
    let tcp_header =
        Ipv4::tcp((CLIENT, CLIENT_PORT), (VIP, 80), TCP_SYN, b"").to_bytes()[20..].to_vec();
    // The same header as web1 gets it (port and checksum rewritten).
    let web1_header =
        Ipv4::tcp((CLIENT, CLIENT_PORT), (WEB1, 8080), TCP_SYN, b"").to_bytes()[20..].to_vec();
    let fragment = |dst: Ipv4Addr, frag_off: u16, bytes: &[u8]| {
        let mut p = Ipv4::new(CLIENT, dst, L4::Raw { proto: 6, bytes: bytes.to_vec() });
        p.frag_off = frag_off;
        p
    };
    // A fragment as the load balancer sends it to web1: one hop later.
    let to_web1 = |frag_off: u16, bytes: &[u8]| {
        let mut p = fragment(WEB1, frag_off, bytes);
        p.ttl -= 1;
        p.frame(WEB_MACS[0], IF_BACKEND_MAC)
    };
    let malformed: [(&str, Ipv4); 5] = [
        (
            "a tiny first fragment: 8 bytes of TCP header, the flags elsewhere",
            fragment(VIP, IP_MF, &tcp_header[..8]),
        ),
        ("the rest of that header at offset 8", fragment(VIP, 1, &tcp_header[8..])),
        (
            "a fragment at offset 8 overlapping the header, more to come",
            fragment(VIP, IP_MF | 1, &[0x12; 16]),
        ),
        ("a first fragment of one byte", fragment(VIP, IP_MF, &tcp_header[..1])),
        ("a first fragment of no bytes", fragment(VIP, IP_MF, &[])),
    ];
    for (what, p) in malformed {
        t.add(
            format!("{what} is dropped as malformed"),
            IF_CLIENT,
            from_client(&p),
            dropped(Counter::DropMalformed),
        );
    }
    // A first fragment with a whole TCP header is placed like a whole
    // segment (the flow CLIENT:40000 -> VIP:80 is web1's), and leaves its
    // decision for the later fragments of its datagram (CLIENT, VIP, TCP,
    // id 0x1234), whatever their offset.
    t.add(
        "an overlapping first fragment rewriting the flags goes to web1 like a whole SYN",
        IF_CLIENT,
        from_client(&fragment(VIP, IP_MF, &tcp_header)),
        redirect(to_web1(IP_MF, &web1_header)),
    );
    t.add(
        "a fragment at the largest offset follows it to web1",
        IF_CLIENT,
        from_client(&fragment(VIP, 0x1fff, &[0; 8])),
        redirect(to_web1(0x1fff, &[0; 8])),
    );
    t.add(
        "a first fragment with both DF and MF goes to web1 like a whole SYN",
        IF_CLIENT,
        from_client(&fragment(VIP, 0x4000 | IP_MF, &tcp_header)),
        redirect(to_web1(0x4000 | IP_MF, &web1_header)),
    );
    t.add(
        "a later fragment of that datagram from the backend side is dropped",
        IF_BACKEND,
        fragment(VIP, 5, &[0; 8]).frame(IF_BACKEND_MAC, WEB_MACS[0]),
        dropped(Counter::DropReversePath),
    );
    let mut expiring = fragment(VIP, 6, &[0; 8]);
    expiring.ttl = 1;
    t.add(
        "a later fragment of that datagram with TTL 1 passes so the kernel answers",
        IF_CLIENT,
        from_client(&expiring),
        pass(Counter::PassTtlExpired),
    );
    let mut orphan = fragment(VIP, 2, &[0; 8]);
    orphan.id = 0x9999;
    t.add(
        "a later fragment whose first never came is dropped",
        IF_CLIENT,
        from_client(&orphan),
        dropped(Counter::DropFragment),
    );
    let mut p = Ipv4::tcp((CLIENT, CLIENT_PORT), (VIP, 9999), TCP_SYN, &[1; 16]);
    p.frag_off = IP_MF;
    t.add(
        "a first fragment to a port of the VIP no service uses passes",
        IF_CLIENT,
        from_client(&p),
        pass(Counter::PassNotService),
    );
    let direct = fragment(VIP_DSR, IP_MF, &tcp_header);
    t.add(
        "a first fragment to the direct-routing VIP goes to web2 as it came",
        IF_CLIENT,
        from_client(&direct),
        redirect(direct.frame(WEB_MACS[1], IF_BACKEND_MAC)),
    );
    t.add(
        "a later fragment to a rejecting service is dropped",
        IF_CLIENT,
        from_client(&fragment(VIP_REJECTING, 3, &[0; 8])),
        dropped(Counter::DropFragment),
    );
    // The first fragment carries the ports: refused like a whole datagram.
    let mut first = Ipv4::udp((CLIENT, 40_053), (VIP_REJECTING, 53), &[7; 64]);
    first.frag_off = IP_MF;
    t.add(
        "a first UDP fragment to a rejecting service gets port unreachable",
        IF_CLIENT,
        from_client(&first),
        tx(port_unreachable(&first, (CLIENT_MAC, IF_CLIENT_MAC)), Counter::RejectUdp),
    );
    let mut later = Ipv4::udp((CLIENT, 40_053), (VIP_REJECTING, 53), &[7; 64]);
    later.frag_off = 8;
    // Before its first: the kernel reassembles it (the controller's slow
    // path), and nothing is answered here.
    t.add(
        "a later UDP fragment to a rejecting service before its first goes to the kernel",
        IF_CLIENT,
        from_client(&later),
        unchanged(XDP_PASS, Counter::PassFragmentToKernel),
    );
    let mut reply = Ipv4::udp((WEB2, 5353), (CLIENT, 40_053), &[7; 64]);
    reply.frag_off = IP_MF;
    t.add(
        "a first fragment of a backend's reply goes to the client from the VIP",
        IF_BACKEND,
        from_web2(&reply),
        redirect(forwarded(&reply, (VIP, 53), (CLIENT, 40_053), CLIENT_MAC, IF_CLIENT_MAC)),
    );
    let mut martian = fragment(VIP, IP_MF, &tcp_header);
    martian.src = Ipv4Addr::LOCALHOST;
    t.add(
        "a fragment to the VIP from 127.0.0.1 is dropped as martian",
        IF_CLIENT,
        from_client(&martian),
        dropped(Counter::DropMartianSource),
    );
    let cut = from_client(&fragment(VIP, IP_MF, &tcp_header));
    t.add(
        "a first fragment cut short of its total length is dropped",
        IF_CLIENT,
        cut[..40].to_vec(),
        dropped(Counter::DropMalformed),
    );
    let mut short_ihl = from_client(&fragment(VIP, IP_MF, &tcp_header));
    short_ihl[14] = 0x44;
    t.add(
        "a fragment whose IPv4 header length is 16 is dropped as malformed",
        IF_CLIENT,
        short_ihl,
        dropped(Counter::DropMalformed),
    );
    // A query in two fragments (its UDP length past the first) and a
    // reply in two, each fragment byte for byte against the translated
    // datagram cut by the independent fragmenter.
    let mut query = Ipv4::udp((CLIENT, 40_200), (VIP, 53), &[9; 100]);
    query.id = 0x4321;
    let mut translated = query.clone();
    translated.ttl -= 1;
    translated.dst = WEB2;
    if let L4::Udp { dport, .. } = &mut translated.l4 {
        *dport = 5353;
    }
    let (ins, outs) = (packet::fragments(&query, 64), packet::fragments(&translated, 64));
    for (i, (f, out)) in ins.iter().zip(&outs).enumerate() {
        let which = if i == 0 { "first" } else { "later" };
        t.add(
            format!("the {which} fragment of a query goes to web2"),
            IF_CLIENT,
            from_client(f),
            redirect(out.frame(WEB_MACS[1], IF_BACKEND_MAC)),
        );
    }
    let mut answer = Ipv4::udp((WEB2, 5353), (CLIENT, 40_200), &[5; 100]);
    answer.id = 0x5678;
    let mut translated = answer.clone();
    translated.ttl -= 1;
    translated.src = VIP;
    if let L4::Udp { sport, .. } = &mut translated.l4 {
        *sport = 53;
    }
    let (ins, outs) = (packet::fragments(&answer, 64), packet::fragments(&translated, 64));
    for (i, (f, out)) in ins.iter().zip(&outs).enumerate() {
        let which = if i == 0 { "first" } else { "later" };
        t.add(
            format!("the {which} fragment of web2's answer goes to the client from the VIP"),
            IF_BACKEND,
            from_web2(f),
            redirect(out.frame(CLIENT_MAC, IF_CLIENT_MAC)),
        );
    }
}

/// Packets too big for their next link (1400 bytes on the backend side,
/// 1500 on the client side): with DF, ICMP "fragmentation needed" from the
/// VIP with the link's MTU; without, or with IPv4 options, dropped.
fn too_big(t: &mut Table) {
    let frag_needed = |from: Ipv4Addr, p: &Ipv4, mtu: u16, macs: (Mac, Mac)| {
        let mut rest = [0; 4];
        rest[2..].copy_from_slice(&mtu.to_be_bytes());
        let answer = packet::icmp_error(
            from,
            p.src,
            (packet::ICMP_DEST_UNREACH, 4),
            rest,
            &packet::quote(p),
        );
        tx(answer.frame(macs.0, macs.1), Counter::FragNeeded)
    };
    let big = Ipv4::tcp((CLIENT, 44_000), (VIP, 80), TCP_SYN, &[0x61; 1410]);
    t.add(
        "a 1450-byte SYN with DF to web1's 1400-byte link gets fragmentation needed",
        IF_CLIENT,
        from_client(&big),
        frag_needed(VIP, &big, BACKEND_SIDE_MTU, (CLIENT_MAC, IF_CLIENT_MAC)),
    );
    let mut no_df = big.clone();
    no_df.frag_off = 0;
    t.add(
        "the same without DF is dropped",
        IF_CLIENT,
        from_client(&no_df),
        dropped(Counter::DropTooBig),
    );
    let mut optioned = big.clone();
    optioned.options = IP_OPTIONS.to_vec();
    t.add(
        "the same with IPv4 options is dropped unanswered",
        IF_CLIENT,
        from_client(&optioned),
        dropped(Counter::DropTooBig),
    );
    let exact = Ipv4::tcp((CLIENT, 44_001), (VIP, 80), TCP_SYN, &[0x61; 1360]);
    t.add(
        "a 1400-byte SYN with DF fits and goes to web1",
        IF_CLIENT,
        from_client(&exact),
        redirect(to_web1(&exact)),
    );
    let reply = Ipv4::tcp((WEB1, 8080), (CLIENT, 44_001), TCP_ACK, &[0x62; 1480]);
    t.add(
        "web1's 1520-byte reply with DF gets fragmentation needed (MTU 1500) from the VIP",
        IF_BACKEND,
        from_web1(&reply),
        frag_needed(VIP, &reply, 1500, (WEB_MACS[0], IF_BACKEND_MAC)),
    );
    let mut no_df = reply.clone();
    no_df.frag_off = 0;
    t.add(
        "web1's 1520-byte reply without DF is dropped",
        IF_BACKEND,
        from_web1(&no_df),
        dropped(Counter::DropTooBig),
    );
    let fits = Ipv4::tcp((WEB1, 8080), (CLIENT, 44_001), TCP_ACK, &[0x62; 1460]);
    let out = web1_reply_forwarded(&fits, (CLIENT, 44_001), CLIENT_MAC, IF_CLIENT_MAC);
    t.add(
        "web1's 1500-byte reply fits and is forwarded",
        IF_BACKEND,
        from_web1(&fits),
        redirect(out),
    );
    // A backend's address as a client gets no answer, this one neither.
    let p = Ipv4::tcp((WEB1, 44_002), (VIP, 80), TCP_SYN, &[0x63; 1410]);
    t.add(
        "web1 as a client with a 1450-byte SYN gets no fragmentation needed",
        IF_BACKEND,
        from_web1(&p),
        dropped(Counter::DropAnswerForbidden),
    );
    // A first fragment too big for the link is answered like a whole packet.
    let mut first = Ipv4::udp((CLIENT, 44_053), (VIP, 53), &[0x64; 1420]);
    first.frag_off = 0x4000 | IP_MF;
    first.id = 0x7777;
    t.add(
        "a 1448-byte first fragment with DF gets fragmentation needed",
        IF_CLIENT,
        from_client(&first),
        frag_needed(VIP, &first, BACKEND_SIDE_MTU, (CLIENT_MAC, IF_CLIENT_MAC)),
    );
}

#[expect(clippy::too_many_lines, reason = "a table reads best as one list")]
fn malformed(t: &mut Table) {
    let p = syn((CLIENT, 43_000), (VIP, 80));
    let full = from_client(&p);
    let edit = |at: usize, value: u8| {
        let mut f = full.clone();
        f[at] = value;
        fix_ip_checksum_if_whole(f)
    };
    t.add(
        "version 6 in an IPv4 frame passes",
        IF_CLIENT,
        edit(14, 0x65),
        pass(Counter::PassMalformed),
    );
    t.add("version 5 passes", IF_CLIENT, edit(14, 0x55), pass(Counter::PassMalformed));
    for ihl in 0..5_u8 {
        let mut f = full.clone();
        f[14] = 0x40 | ihl;
        t.add(
            format!("an IPv4 header length of {ihl} words to the VIP is dropped"),
            IF_CLIENT,
            f,
            dropped(Counter::DropMalformed),
        );
    }
    let mut to_lb = from_client(&syn((CLIENT, 43_000), (LB_CLIENT_SIDE, 22)));
    to_lb[14] = 0x43;
    t.add(
        "an IPv4 header length of 3 words to another address passes",
        IF_CLIENT,
        to_lb,
        pass(Counter::PassMalformed),
    );
    let mut f = full.clone();
    f[14] = 0x4f;
    t.add(
        "an IPv4 header length of 15 words in a 40-byte packet is dropped",
        IF_CLIENT,
        f,
        dropped(Counter::DropMalformed),
    );
    for len in [0, 19, 20, 39] {
        t.add(
            format!("an IPv4 total length of {len} is dropped"),
            IF_CLIENT,
            with_tot_len(full.clone(), len),
            dropped(Counter::DropMalformed),
        );
    }
    let mut padded = full.clone();
    padded.extend_from_slice(&[0xa5; 20]);
    let mut out = to_web1(&p);
    out.extend_from_slice(&[0xa5; 20]);
    t.add("garbage after the IPv4 total length is carried along", IF_CLIENT, padded, redirect(out));
    let mut ttl0 = p.clone();
    ttl0.ttl = 0;
    t.add(
        "TTL 0 to the VIP passes so the kernel answers",
        IF_CLIENT,
        from_client(&ttl0),
        pass(Counter::PassTtlExpired),
    );
    for words in [0_u8, 15] {
        let mut f = full.clone();
        f[14 + 20 + 12] = words << 4;
        t.add(
            format!("TCP with a data offset of {words} words is dropped"),
            IF_CLIENT,
            f,
            dropped(Counter::DropMalformed),
        );
    }
    let query = Ipv4::udp((CLIENT, 43_053), (VIP, 53), b"query");
    for length in [0_u16, 65_535] {
        let mut f = from_client(&query);
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&length.to_be_bytes());
        t.add(
            format!("UDP with length {length} is dropped"),
            IF_CLIENT,
            f,
            dropped(Counter::DropMalformed),
        );
    }
    // A UDP length short of the packet: the rest is padding (no checksum
    // here, so nothing else changes).
    let mut bare = query.clone();
    if let L4::Udp { checksum, .. } = &mut bare.l4 {
        *checksum = false;
    }
    let mut short_udp = from_client(&bare);
    short_udp[14 + 24..14 + 26].copy_from_slice(&8_u16.to_be_bytes());
    let mut out = forwarded(&bare, (CLIENT, 43_053), (WEB2, 5353), WEB_MACS[1], IF_BACKEND_MAC);
    out[14 + 24..14 + 26].copy_from_slice(&8_u16.to_be_bytes());
    t.add(
        "UDP whose length ends before the packet is forwarded, the rest as padding",
        IF_CLIENT,
        short_udp,
        redirect(out),
    );
    // Checksums that do not verify are forwarded still off by the same
    // amount (the receiver drops them, as without us). questioned: Linux
    // drops an IPv4 header whose checksum fails in ip_rcv.
    let mut bad_ip = full.clone();
    bump(&mut bad_ip, 24);
    let mut out = to_web1(&p);
    bump(&mut out, 24);
    t.add(
        "a SYN whose IPv4 checksum is off by one is forwarded, still off by one (questioned)",
        IF_CLIENT,
        bad_ip,
        redirect(out),
    );
    let direct = syn((CLIENT, 43_001), (VIP_DSR, 80));
    let mut bad_direct = from_client(&direct);
    bump(&mut bad_direct, 24);
    let mut out = direct.frame(WEB_MACS[1], IF_BACKEND_MAC);
    bump(&mut out, 24);
    t.add(
        "direct routing leaves a bad IPv4 checksum as it came (questioned)",
        IF_CLIENT,
        bad_direct,
        redirect(out),
    );
    let mut bad_tcp = full.clone();
    bump(&mut bad_tcp, 14 + 20 + 16);
    let mut out = to_web1(&p);
    bump(&mut out, 14 + 20 + 16);
    t.add(
        "a SYN whose TCP checksum is off by one is forwarded, still off by one",
        IF_CLIENT,
        bad_tcp,
        redirect(out),
    );
    // A router forwards only frames sent to its own MAC (ip_forward drops
    // other packet types): link-layer broadcast and multicast are dropped.
    t.add(
        "a SYN in a broadcast frame is dropped",
        IF_CLIENT,
        p.frame([0xff; 6], CLIENT_MAC),
        dropped(Counter::DropLinkGroup),
    );
    t.add(
        "a SYN in a multicast frame is dropped",
        IF_CLIENT,
        p.frame([0x01, 0x00, 0x5e, 0, 0, 1], CLIENT_MAC),
        dropped(Counter::DropLinkGroup),
    );
    let reply = Ipv4::tcp((WEB1, 8080), (CLIENT, 43_000), TCP_SYN | TCP_ACK, b"");
    t.add(
        "web1's reply in a broadcast frame is dropped",
        IF_BACKEND,
        reply.frame([0xff; 6], WEB_MACS[0]),
        dropped(Counter::DropLinkGroup),
    );
    // questioned: a host discards a segment or datagram
    // whose checksum fails (RFC 793, RFC 1122 4.1.3.4) and Linux drops an
    // IPv4 header whose checksum fails, before any answer; the program
    // answers them.
    let client = (CLIENT, 43_100);
    let macs = (CLIENT_MAC, IF_CLIENT_MAC);
    let refused = syn(client, (VIP_REJECTING, 80));
    let reset = reset_frame((VIP_REJECTING, 80), client, TCP_RST | TCP_ACK, 0, 1001, macs);
    for (what, at) in [("TCP", 14 + 20 + 16), ("IPv4", 24)] {
        let mut f = from_client(&refused);
        bump(&mut f, at);
        t.add(
            format!(
                "a SYN with a bad {what} checksum to a rejecting service is reset (questioned)"
            ),
            IF_CLIENT,
            f,
            tx(reset.clone(), Counter::RejectTcp),
        );
    }
    let datagram = Ipv4::udp((CLIENT, 43_153), (VIP_REJECTING, 53), b"q");
    let mut f = from_client(&datagram);
    bump(&mut f, 14 + 20 + 6);
    let answer = port_unreachable_quoting(&f[14..], &datagram, macs);
    t.add(
        "a datagram with a bad UDP checksum to a rejecting service gets an ICMP error (questioned)",
        IF_CLIENT,
        f,
        tx(answer, Counter::RejectUdp),
    );
    // The edge checks (martian source, malformed headers) run on the
    // address pre-filter's word; a refusal confirms the VIP in the exact
    // table first, so a destination that is no VIP but shares a VIP's
    // filter slot (1.100.10.77 is 10.77.1.100 with its halves swapped)
    // goes to the kernel; so does a source sharing a backend's slot
    // (2.11.10.77, web1's), confirmed in the exact backend address table.
    let twin_vip = Ipv4Addr::new(1, 100, 10, 77);
    let twin_web1 = Ipv4Addr::new(2, 11, 10, 77);
    assert_eq!(addr_slot(twin_vip.octets()), addr_slot(VIP.octets()), "a twin of the VIP's slot");
    assert_eq!(addr_slot(twin_web1.octets()), addr_slot(WEB1.octets()), "a twin of web1's slot");
    let dhcp = Ipv4::udp((Ipv4Addr::UNSPECIFIED, 68), (twin_vip, 67), b"discover");
    t.add(
        "a datagram from 0.0.0.0 to 1.100.10.77, no VIP but in its filter slot, passes",
        IF_CLIENT,
        from_client(&dhcp),
        pass(Counter::PassNotService),
    );
    let broadcast = Ipv4::udp((CLIENT, 68), (twin_vip, 67), b"d").frame([0xff; 6], CLIENT_MAC);
    t.add(
        "a broadcast frame to 1.100.10.77 (no VIP) passes",
        IF_CLIENT,
        broadcast,
        pass(Counter::PassNotService),
    );
    let elsewhere =
        Ipv4::udp((Ipv4Addr::UNSPECIFIED, 68), (Ipv4Addr::new(1, 100, 10, 200), 67), b"d");
    t.add(
        "the same to 1.100.10.200 passes",
        IF_CLIENT,
        from_client(&elsewhere),
        pass(Counter::PassNotService),
    );
    let mut cut = from_client(&syn((CLIENT, 43_200), (twin_vip, 80)));
    cut.truncate(14 + 20 + 10);
    t.add(
        "a TCP header cut short, to 1.100.10.77 (no VIP), passes",
        IF_CLIENT,
        cut,
        pass(Counter::PassMalformed),
    );
    let mut cut = from_client(&syn((twin_web1, 43_200), (CLIENT, 80)));
    cut.truncate(14 + 20 + 10);
    t.add(
        "a TCP header cut short, from 2.11.10.77 (no backend, in web1's slot), passes",
        IF_CLIENT,
        cut,
        pass(Counter::PassMalformed),
    );
    let mut cut = from_client(&syn((Ipv4Addr::new(2, 11, 10, 78), 43_200), (CLIENT, 80)));
    cut.truncate(14 + 20 + 10);
    t.add("the same from 2.11.10.78 passes", IF_CLIENT, cut, pass(Counter::PassNotService));
    let mark = NeighMark { magic: NEIGH_MARK_MAGIC, ifindex: 1, nexthop: [127, 0, 0, 1] };
    let mut forged = from_client(&query);
    forged[..12].copy_from_slice(&mark.to_bytes());
    t.add(
        "a UDP query carrying the slow path's mark is dropped",
        IF_CLIENT,
        forged,
        dropped(Counter::DropForgedMark),
    );
}

/// Adds one to the big-endian checksum at `at`, as ones' complement does.
fn bump(frame: &mut [u8], at: usize) {
    let v = u32::from(u16::from_be_bytes([frame[at], frame[at + 1]])) + 1;
    let v = ((v & 0xffff) + (v >> 16)) as u16;
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn fix_ip_checksum_if_whole(frame: Vec<u8>) -> Vec<u8> {
    if usize::from(frame[14] & 0x0f) * 4 >= 20 { fix_ip_checksum(frame) } else { frame }
}

fn cases() -> Vec<Case> {
    let mut t = Table(Vec::new(), Category::Truncated);
    truncated(&mut t);
    t.1 = Category::IpOptions;
    ip_options(&mut t);
    t.1 = Category::TcpFlags;
    tcp_flags(&mut t);
    t.1 = Category::Spoofed;
    spoofed(&mut t);
    t.1 = Category::Icmp;
    icmp(&mut t);
    t.1 = Category::Fragment;
    fragments(&mut t);
    t.1 = Category::TooBig;
    too_big(&mut t);
    t.1 = Category::Malformed;
    malformed(&mut t);
    t.0
}

fn check_case(loaded: &mut Loaded, oracle: &Oracle, c: &Case) -> Result<(), String> {
    let (out, mut problems) =
        run_case(loaded, (&c.input, c.ingress), c.action, c.counter, &c.expect);
    // The oracle must agree with every hand-written expectation.
    if let Err(why) = oracle.check(&c.input, c.ingress, out.action, &out.frame) {
        problems.push(format!("the oracle refuses the output: {why}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[test]
fn hostile_corpus() {
    let ns = FixtureNs::create(NS);
    let cases = cases();
    let mut by_category = BTreeMap::new();
    for c in &cases {
        *by_category.entry(c.category).or_insert(0) += 1;
    }
    eprintln!("{} cases: {by_category:?}", cases.len());
    // Exact, so that a case lost in an edit (a bad merge, a deleted line,
    // a loop cut short) is noticed.
    let want = BTreeMap::from([
        (Category::Truncated, 289),
        (Category::IpOptions, 18),
        (Category::TcpFlags, 33),
        (Category::Spoofed, 59),
        (Category::Icmp, 28),
        (Category::Fragment, 24),
        (Category::TooBig, 9),
        (Category::Malformed, 36),
    ]);
    assert_eq!(by_category, want, "corpus cases by category");
    assert_eq!(cases.len(), 496, "corpus cases");
    let failures = in_ns(&ns.name, move || {
        let mut loaded = Loaded::new(4096);
        let config = lb_ctl::desired::config::parse(&config()).expect("fixture config");
        let oracle = Oracle::new(&config).with_tables(hash_tables(&loaded));
        let mut failures = Vec::new();
        for c in &cases {
            match check_case(&mut loaded, &oracle, c) {
                Ok(()) => eprintln!("ok   {}", c.name),
                Err(why) => {
                    eprintln!("FAIL {}: {why}", c.name);
                    failures.push(c.name.clone());
                }
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{} case(s) failed: {failures:#?}", failures.len());
}

/// The controller's tables of the hashing services (Maglev, `sh`), as
/// applied: where each of their flows must go.
fn hash_tables(loaded: &Loaded) -> BTreeMap<(Ipv4Addr, u16, u8), HashTable> {
    let image = loaded.reconciler.applied();
    let mut tables = BTreeMap::new();
    for (key, service) in &image.v4.services {
        let scheduler = service.flags & SCHED_MASK;
        if scheduler != SCHED_MAGLEV && scheduler != SCHED_SH {
            continue;
        }
        let slots = image.maglev[&service.id]
            .iter()
            .map(|id| {
                image
                    .v4
                    .backends
                    .get(id)
                    .map_or((Ipv4Addr::UNSPECIFIED, 0), |b| (Ipv4Addr::from(b.addr), b.port))
            })
            .collect();
        let table =
            HashTable { by_source: scheduler == SCHED_SH, ring_size: service.ring_size, slots };
        tables.insert((Ipv4Addr::from(key.addr), key.port, key.proto), table);
    }
    tables
}

/// splitmix64: enough to spread mutations, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Addresses and ports the mutations draw from: mostly the config's VIPs,
/// backends and the fixture's clients, so that mutated frames keep
/// reaching the program's own paths; some martians and random values.
struct Pools {
    addrs: Vec<Ipv4Addr>,
    ports: Vec<u16>,
}

impl Pools {
    fn new(oracle: &Oracle) -> Self {
        let mut addrs = Vec::new();
        for _ in 0..3 {
            addrs.extend(oracle.vips().iter().copied());
            addrs.extend(oracle.backend_addresses().iter().copied());
            addrs.extend([CLIENT, CLIENT, HAIRPIN, UNSEEN_CLIENT]);
        }
        addrs.extend([UNREACHABLE_CLIENT, LB_CLIENT_SIDE, LB_BACKEND_SIDE]);
        addrs.extend([Ipv4Addr::new(10, 77, 5, 9), Ipv4Addr::new(10, 77, 6, 9)]);
        addrs.extend([Ipv4Addr::new(10, 77, 1, 255), Ipv4Addr::new(10, 77, 2, 255)]);
        addrs.extend(MARTIANS);
        let mut ports: Vec<u16> = Vec::new();
        for s in oracle.services() {
            ports.push(s.port);
            ports.extend(s.backends.iter().map(|b| b.port));
        }
        ports.extend([CLIENT_PORT, 40_053, 40_100, 0, 65_535]);
        Self { addrs, ports }
    }

    fn addr(&self, rng: &mut Rng) -> [u8; 4] {
        if rng.one_in(8) {
            (rng.next() as u32).to_be_bytes()
        } else {
            rng.pick(&self.addrs).octets()
        }
    }

    fn port(&self, rng: &mut Rng) -> [u8; 2] {
        if rng.one_in(8) {
            (rng.next() as u16).to_be_bytes()
        } else {
            rng.pick(&self.ports).to_be_bytes()
        }
    }
}

/// The valid frames the mutations start from, each with its ingress.
fn bases() -> Vec<(&'static str, Vec<u8>)> {
    let c = (CLIENT, CLIENT_PORT);
    let mut data = Ipv4::tcp(c, (VIP, 80), TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n");
    if let L4::Tcp { ack, .. } = &mut data.l4 {
        *ack = 5000;
    }
    let mut bare = Ipv4::udp((CLIENT, 40_053), (VIP, 53), b"no checksum");
    if let L4::Udp { checksum, .. } = &mut bare.l4 {
        *checksum = false;
    }
    let (collider, collider_port) = slot_sharing_backend();
    let clients = [
        from_client(&syn(c, (VIP, 80))),
        from_client(&data),
        from_client(&syn(c, (VIP, 443))),
        from_client(&syn(c, (VIP, 8443))),
        from_client(&syn(c, (VIP_NO_NEIGH, 80))),
        from_client(&syn(c, (VIP_DRAINED, 80))),
        from_client(&syn(c, (VIP_DSR, 80))),
        from_client(&syn(c, (VIP_DSR, 82))),
        from_client(&syn(c, (VIP_REJECTING, 80))),
        from_client(&Ipv4::tcp(c, (VIP_REJECTING, 80), TCP_ACK, b"data")),
        from_client(&syn(c, (VIP_SCHEDULERS, 81))),
        from_client(&syn(c, (VIP_SCHEDULERS, 82))),
        from_client(&syn(c, (VIP_SCHEDULERS, 83))),
        from_client(&syn(c, (VIP_SCHEDULERS, 84))),
        from_client(&Seg::new(c, (VIP, 80), TCP_SYN).ip(&IP_OPTIONS)),
        from_client(&Ipv4::udp((CLIENT, 40_053), (VIP, 53), b"query")),
        from_client(&bare),
        from_client(&Ipv4::udp((CLIENT, 40_053), (VIP, 7000), b"query")),
        from_client(&Ipv4::udp((CLIENT, 40_053), (VIP_REJECTING, 53), &[b'q'; 40])),
        from_client(&Ipv4::udp((CLIENT, 40_053), (VIP_REJECTING, 53), b"")),
        // ICMP errors about our replies (the flows above place them).
        from_client(&icmp_error(CLIENT, VIP, (3, 3), &Ipv4::udp((VIP, 53), c, b"a").to_bytes())),
        from_client(&icmp_error(
            CLIENT,
            VIP,
            (3, 4),
            &Ipv4::tcp((VIP, 80), c, TCP_ACK, b"").to_bytes()[..28],
        )),
        from_client(&icmp_error(
            Ipv4Addr::new(10, 77, 1, 254),
            VIP,
            (11, 0),
            &Ipv4::tcp((VIP, 443), c, TCP_ACK, b"").to_bytes()[..28],
        )),
        from_client(&icmp_error(
            CLIENT,
            VIP_DSR,
            (3, 4),
            &Ipv4::tcp((VIP_DSR, 80), c, TCP_ACK, b"").to_bytes()[..28],
        )),
        // Too big for the backend side's 1400 bytes, with DF.
        from_client(&Ipv4::tcp(c, (VIP, 80), TCP_ACK, &[0x61; 1410])),
        from_client(&Ipv4::tcp(c, (VIP_DSR, 80), TCP_ACK, &[0x61; 1410])),
    ];
    // Datagrams in fragments, each fragment a base of its own: the first
    // leaves the decision the later ones follow.
    let mut query = Ipv4::udp((CLIENT, 40_053), (VIP, 53), &[9; 100]);
    query.id = 0x4321;
    let mut segment = Ipv4::tcp(c, (VIP, 80), TCP_ACK | TCP_PSH, &[8; 100]);
    segment.id = 0x4322;
    let mut direct = Ipv4::tcp(c, (VIP_DSR, 80), TCP_ACK, &[7; 100]);
    direct.id = 0x4323;
    let mut answer = Ipv4::udp((WEB2, 5353), (CLIENT, 40_053), &[5; 100]);
    answer.id = 0x5678;
    let client_fragments = [&query, &segment, &direct]
        .into_iter()
        .flat_map(|d| packet::fragments(d, 64))
        .map(|f| from_client(&f));
    let backend_fragments = packet::fragments(&answer, 64).into_iter().map(|f| from_web2(&f));
    let backends = [
        from_web1(&Ipv4::tcp((WEB1, 8080), c, TCP_SYN | TCP_ACK, b"")),
        from_web1(&Ipv4::tcp((WEB1, 8080), c, TCP_ACK | TCP_PSH, b"Bienvenue sur WEB1\n")),
        from_web1(&Seg::new((WEB1, 8080), c, TCP_ACK).ip(&IP_OPTIONS)),
        from_web1(&Ipv4::tcp((WEB1, 443), c, TCP_FIN | TCP_ACK, b"")),
        from_web1(&Ipv4::tcp((WEB1, 8080), (UNSEEN_CLIENT, CLIENT_PORT), TCP_ACK, b"")),
        from_web1(&Ipv4::tcp((WEB1, 8080), (HAIRPIN, 8443), TCP_ACK, b"")),
        from_web2(&Ipv4::udp((WEB2, 5353), (CLIENT, 40_053), b"answer")),
        from_web2(&Ipv4::tcp((WEB2, 81), c, TCP_ACK, b"")),
        Ipv4::udp((WEB3, 7000), (CLIENT, 40_100), b"from web3").frame(IF_BACKEND_MAC, WEB_MACS[2]),
        Ipv4::udp((collider, collider_port), (CLIENT, 40_100), b"x")
            .frame(IF_BACKEND_MAC, COLLIDER_MAC),
        // ICMP errors about clients' packets, from the backend side.
        from_web1(&icmp_error(
            WEB1,
            CLIENT,
            (3, 4),
            &Ipv4::tcp(c, (WEB1, 8080), TCP_ACK, b"").to_bytes(),
        )),
        from_web2(&icmp_error(
            WEB2,
            CLIENT,
            (3, 3),
            &Ipv4::udp((CLIENT, 40_053), (WEB2, 5353), b"query").to_bytes(),
        )),
        // Too big for the client side's 1500 bytes, with DF.
        from_web1(&Ipv4::tcp((WEB1, 8080), c, TCP_ACK, &[0x62; 1480])),
    ];
    let client_side = clients.into_iter().chain(client_fragments).map(|f| (IF_CLIENT, f));
    let backend_side = backends.into_iter().chain(backend_fragments).map(|f| (IF_BACKEND, f));
    client_side.chain(backend_side).chain(full_nat_bases()).collect()
}

/// Full NAT's bases: clients of a pool of four ports (TCP) and of one
/// (UDP, dropped when taken), and backends' packets to pool ports a flow
/// may hold, or not.
fn full_nat_bases() -> impl Iterator<Item = (&'static str, Vec<u8>)> {
    let c = (CLIENT, CLIENT_PORT);
    let data = Ipv4::tcp(c, (VIP_FULLNAT, 80), TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n");
    let clients = [
        from_client(&syn(c, (VIP_FULLNAT, 80))),
        from_client(&data),
        from_client(&Ipv4::udp((CLIENT, 40_053), (VIP_FULLNAT, 81), b"query")),
    ];
    let pool = LB_BACKEND_SIDE;
    let backends = [
        from_web1(&Ipv4::tcp((WEB1, 8090), (pool, 40_000), TCP_SYN | TCP_ACK, b"")),
        from_web1(&Ipv4::tcp((WEB1, 8090), (pool, 40_002), TCP_ACK, b"data")),
        from_web2(&Ipv4::udp((WEB2, 8091), (pool, 41_000), b"answer")),
    ];
    let clients = clients.into_iter().map(|f| (IF_CLIENT, f));
    clients.chain(backends.into_iter().map(|f| (IF_BACKEND, f)))
}

/// Writes `bytes` at `at` if the frame holds them.
fn put(frame: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(place) = frame.get_mut(at..at + bytes.len()) {
        place.copy_from_slice(bytes);
    }
}

/// One to three mutations of `frame`, then (each half the time) its IPv4
/// and transport checksums made right again, so that mutated frames often
/// look valid. Says whether the frame should arrive on the other side.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, pools: &Pools) -> bool {
    let mut other_side = false;
    for _ in 0..=rng.below(3) {
        let len = frame.len();
        let ihl = frame.get(14).map_or(20, |b| usize::from(b & 0x0f) * 4).max(20);
        let l4 = 14 + ihl;
        let tot_len = len.saturating_sub(14);
        match rng.below(19) {
            0 => {
                let at = rng.below(len.min(80));
                frame[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len);
                frame[at] = rng.byte();
            }
            2 => frame.truncate(14 + rng.below(len - 13)),
            3 => {
                for _ in 0..=rng.below(64) {
                    frame.push(rng.byte());
                }
            }
            4 => put(frame, 26, &pools.addr(rng)),
            5 => put(frame, 30, &pools.addr(rng)),
            6 => put(frame, l4, &pools.port(rng)),
            7 => put(frame, l4 + 2, &pools.port(rng)),
            8 => {
                let odd = [0, TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST, TCP_ALL, TCP_RST, TCP_FIN];
                let flags = if rng.one_in(2) { rng.pick(&odd) } else { rng.byte() };
                put(frame, l4 + 13, &[flags]);
            }
            9 => {
                let any = rng.byte();
                put(frame, 22, &[rng.pick(&[0, 1, 2, 64, 255, any])]);
            }
            10 => {
                let values = [0, 0x4000, IP_MF, 1, IP_MF | 1, 0x1fff, 0x4000 | IP_MF];
                let frag = if rng.one_in(4) { rng.next() as u16 } else { rng.pick(&values) };
                put(frame, 20, &frag.to_be_bytes());
            }
            11 => {
                let b = if rng.one_in(4) { rng.byte() } else { 0x40 | rng.below(16) as u8 };
                put(frame, 14, &[b]);
            }
            12 => {
                let delta = rng.below(17).cast_signed() - 8;
                let value = if rng.one_in(4) {
                    rng.next() as u16
                } else {
                    tot_len.saturating_add_signed(delta) as u16
                };
                put(frame, 16, &value.to_be_bytes());
            }
            13 => {
                let any = rng.byte();
                put(frame, 23, &[rng.pick(&[6, 6, 17, 17, 1, any])]);
            }
            14 => {
                if frame.get(23) == Some(&6) {
                    put(frame, l4 + 12, &[(rng.below(16) as u8) << 4]);
                } else {
                    let ulen = tot_len
                        .saturating_sub(ihl)
                        .saturating_add_signed(rng.below(9).cast_signed() - 4);
                    put(frame, l4 + 4, &(ulen as u16).to_be_bytes());
                }
            }
            15 => {
                let at = if rng.one_in(2) {
                    24
                } else if frame.get(23) == Some(&6) {
                    l4 + 16
                } else {
                    l4 + 6
                };
                put(frame, at, &(rng.next() as u16).to_be_bytes());
            }
            16 => {
                let types: [u16; 5] = [0x86dd, 0x8100, 0x0806, 0x0800, rng.next() as u16];
                put(frame, 12, &rng.pick(&types).to_be_bytes());
            }
            17 => other_side = !other_side,
            _ => {
                // Aimed at a service: a VIP and one of the config's ports.
                let vip = rng.pick(&VIPS);
                put(frame, 30, &vip.octets());
                put(frame, l4 + 2, &pools.port(rng));
            }
        }
    }
    if rng.one_in(2) && frame.len() >= 34 {
        *frame = fix_ip_checksum(std::mem::take(frame));
    }
    if rng.one_in(2) {
        fix_l4_checksum(frame, rng);
    }
    other_side
}

/// Makes the transport checksum right for the frame's headers as they
/// now are, where its lengths allow; a UDP one is sometimes 0 (none).
fn fix_l4_checksum(frame: &mut [u8], rng: &mut Rng) {
    if frame.len() < 34 {
        return;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    if ihl < 20 || tot_len < ihl || 14 + tot_len > frame.len() {
        return;
    }
    let l4 = 14 + ihl;
    let (len, at) = match frame[23] {
        6 if tot_len >= ihl + 20 => (tot_len - ihl, l4 + 16),
        17 if tot_len >= ihl + 8 => {
            let ulen = usize::from(u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]));
            if ulen < 8 || ihl + ulen > tot_len {
                return;
            }
            (ulen, l4 + 6)
        }
        _ => return,
    };
    frame[at..at + 2].fill(0);
    if frame[23] == 17 && rng.one_in(8) {
        return;
    }
    let mut pseudo = frame[26..34].to_vec();
    pseudo.extend_from_slice(&[0, frame[23]]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    pseudo.extend_from_slice(&frame[l4..l4 + len]);
    let mut check = packet::internet_checksum(&pseudo);
    if check == 0 && frame[23] == 17 {
        check = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

/// If `output` is an answer the program built (a reset or an ICMP error
/// from a VIP, sent back to the input's source) to a destination it must
/// never answer, what is wrong with it. "Fragmentation needed" to the
/// backend whose reply was too big (as the oracle `accepted` it) is the
/// one answer a backend gets.
fn forbidden_answer(
    oracle: &Oracle,
    input: &[u8],
    action: u32,
    output: &[u8],
    accepted: Option<&Accepted>,
) -> Option<String> {
    if !matches!(action, XDP_TX | XDP_REDIRECT) || output == input {
        return None;
    }
    if let Some(Accepted::Sent(Translation::FragNeeded { to_backend: true, .. })) = accepted {
        return None;
    }
    if output.len() < 14 + 20 + 14 || input.len() < 34 {
        return None;
    }
    let addr = |f: &[u8], at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let (src, dst) = (addr(output, 26), addr(output, 30));
    let input_rst = input[23] == 6
        && input.get(14 + usize::from(input[14] & 0x0f) * 4 + 13).is_some_and(|f| f & TCP_RST != 0);
    let reset = output[23] == 6 && output[14 + 20 + 13] & TCP_RST != 0 && !input_rst;
    let icmp = output[23] == 1 && input[23] != 1;
    let built = oracle.vips().contains(&src) && dst == addr(input, 26) && (reset || icmp);
    let why = oracle.forbidden_destination(dst)?;
    built.then(|| format!("an answer of the program's own to {dst} ({why})"))
}

const RANDOM_FRAMES: usize = 100_000;

/// How often the random run must meet each kind of output, so that it stays
/// a test of each (the edge's kinds: about a third of the fewest seen over
/// a dozen seeds).
const AT_LEAST: [(&str, usize); 22] = [
    ("sent: to a backend", 1000),
    ("sent: a backend's reply", 1000),
    ("sent: full NAT to a backend", 150),
    ("sent: a full-NAT backend's reply", 200),
    ("sent: direct routing", 100),
    ("sent: a reset", 100),
    ("sent: port unreachable", 100),
    ("slow path: to a backend", 100),
    ("slow path: a backend's reply", 100),
    ("slow path: direct routing", 100),
    ("sent: an ICMP error to a backend", 400),
    ("sent: an ICMP error to a direct-routing backend", 200),
    ("sent: an ICMP error to a client", 400),
    ("sent: fragmentation needed", 200),
    ("sent: fragmentation needed to a backend", 200),
    ("sent: a first fragment", 1000),
    ("sent: a later fragment", 1000),
    ("slow path: a first fragment", 30),
    ("slow path: a later fragment", 80),
    ("rewritten with a bad IPv4 checksum kept bad", 100),
    ("XDP_PASS unchanged", 10_000),
    ("XDP_DROP unchanged", 10_000),
];

/// The seed: `LB_HOSTILE_SEED` (decimal or 0x-hex) to replay a run, else
/// the clock.
fn seed() -> u64 {
    match std::env::var("LB_HOSTILE_SEED") {
        Ok(s) => s
            .strip_prefix("0x")
            .map_or_else(|| s.parse(), |hex| u64::from_str_radix(hex, 16))
            .unwrap_or_else(|e| panic!("LB_HOSTILE_SEED={s}: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// 100,000 mutations of valid frames, fed one by one: the program never
/// aborts; whatever it sends (or marks for tc) is a correct translation of
/// a valid input according to the oracle; whatever it passes or drops
/// otherwise is unchanged; and no answer of its own goes to a martian, a
/// VIP or a backend. The connection table is emptied now and then, so
/// that both new and known flows are met.
#[test]
fn random_mutations_are_translated_exactly_or_left_alone() {
    let seed = seed();
    eprintln!("LB_HOSTILE_SEED={seed:#x} (set it to replay this run)");
    let ns = FixtureNs::create(NS);
    let (tally, failures, elapsed) = in_ns(&ns.name, move || {
        let mut loaded = Loaded::new(4096);
        // The clock is stopped: at the default 100 answers a tick, the
        // budget would run out early in the run and hide every answer
        // after it (the budget itself is the edge tests' business).
        loaded
            .reconciler
            .maps_mut()
            .set_policy(1_000_000_000, lb_ctl::desired::model::ReversePath::Strict)
            .expect("raising the answer budget");
        let config = lb_ctl::desired::config::parse(&config()).expect("fixture config");
        let oracle = Oracle::new(&config).with_tables(hash_tables(&loaded));
        let pools = Pools::new(&oracle);
        let bases = bases();
        for (ingress, frame) in &bases {
            let p = oracle::parse_any(frame);
            assert!(p.is_ok() || frame[23] == 1, "base frame on {ingress} is valid: {p:?}");
        }
        let mut rng = Rng(seed);
        let mut tally = BTreeMap::<String, usize>::new();
        let mut failures = Vec::new();
        let start = Instant::now();
        for i in 0..RANDOM_FRAMES {
            if i % 10_000 == 9_999 || rng.one_in(20_000) {
                loaded.flush_conntrack();
            }
            let (ingress, mut frame) = rng.pick(&bases);
            let other = mutate(&mut rng, &mut frame, &pools);
            let ingress = match (ingress, other) {
                (IF_CLIENT, true) => IF_BACKEND,
                (IF_BACKEND, true) => IF_CLIENT,
                (side, _) => side,
            };
            let out = loaded.run(&frame, ingress);
            // A backend's reply to a backend's address is right only for a
            // flow that backend opened, which the program's table knows.
            if let Some((flow, vip, backend)) = oracle.reply_to_backend_flow(&frame) {
                let on = loaded.conn(&flow).map(|c| c.backend_id);
                if on.is_some() && on == Some(loaded.backend_id(vip.0, vip.1, backend.0, backend.1))
                {
                    oracle.vouch(&flow, backend);
                }
            }
            let accepted = oracle.check(&frame, ingress, out.action, &out.frame);
            let forbidden =
                forbidden_answer(&oracle, &frame, out.action, &out.frame, accepted.as_ref().ok());
            let accepted = accepted.map(|a| match a {
                Accepted::Unchanged => format!("{} unchanged", action_name(out.action)),
                Accepted::Sent(t) => format!("sent: {}", t.name()),
                Accepted::SlowPath(t) => format!("slow path: {}", t.name()),
            });
            let verdict = match (accepted, forbidden) {
                // questioned: see the corpus's case of 10.77.2.51.
                (Ok(kind), Some(why)) if why.ends_with("(a direct-routing backend)") => {
                    Ok(format!("{kind}, to a direct-routing backend (questioned)"))
                }
                (Ok(_), Some(why)) => Err(why),
                (Err(oracle), Some(why)) => Err(format!("{why}; and {oracle}")),
                (accepted, None) => accepted,
            };
            // Rewritten despite a header checksum that did not verify:
            // the "off by the same amount" rule was exercised.
            if verdict.as_ref().is_ok_and(|k| k.starts_with("sent: to") || k.contains("reply"))
                && oracle::parse(&frame)
                    .is_ok_and(|p| packet::internet_checksum(&frame[14..14 + p.ihl]) != 0)
            {
                *tally.entry("rewritten with a bad IPv4 checksum kept bad".into()).or_default() +=
                    1;
            }
            match verdict {
                Ok(kind) => *tally.entry(kind).or_default() += 1,
                Err(why) => failures.push(format!(
                    "frame {i} of seed {seed:#x}, on {ingress}: {}: {why}\n  in  {}\n  out {}",
                    action_name(out.action),
                    hex(&frame),
                    hex(&out.frame)
                )),
            }
            assert_ne!(out.action, XDP_ABORTED, "seed {seed:#x}, frame {i}: {}", hex(&frame));
        }
        (tally, failures, start.elapsed())
    });
    eprintln!(
        "{RANDOM_FRAMES} frames in {:.1} s ({:.0} us each): {tally:#?}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / RANDOM_FRAMES as f64
    );
    assert!(
        failures.is_empty(),
        "{} of {RANDOM_FRAMES} frames failed (seed {seed:#x}); the first ones:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    // Not vacuous: every kind of translation was met, and checked, often.
    for (kind, at_least) in AT_LEAST {
        let met = tally.get(kind).copied().unwrap_or(0);
        assert!(met >= at_least, "only {met} frames {kind} (want {at_least}; seed {seed:#x})");
    }
}
