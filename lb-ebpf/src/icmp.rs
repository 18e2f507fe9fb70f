//! ICMP errors about our flows, translated the way the packets they quote
//! were. A router past the load balancer that cannot deliver a reply
//! (`VIP:80 -> client`: "fragmentation needed", "host unreachable") tells
//! the VIP; only the backend that sent the reply can act on it (lower its
//! path MTU, give up), so the error goes on to that backend, saying what
//! the backend sent. An error about a client's packet from the backend side
//! (the backend's "port unreachable", a router's "time exceeded") would show
//! the client a backend's address, and quote a packet the client never sent;
//! it goes on from the VIP, quoting the packet as the client sent it.
//!
//! Translated: the outer address (destination towards a backend, source
//! towards a client), the quoted address and port, and the checksums that
//! cover them (outer IPv4, quoted IPv4, ICMP). The quoted transport checksum
//! is left alone, as IPVS and routers doing NAT leave it: it covers the
//! whole original datagram, which a quote cuts short, so no receiver checks
//! it. Errors quoting anything else go on untouched.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{ADDR_REAL, BACKEND_DSR, BACKEND_FULLNAT, Flow, PROTO_TCP, PROTO_UDP},
    counter::Counter,
    csum,
};

use crate::{
    Verdict,
    family::{Family as _, V4},
    fwd::{self, Hop, Query},
    parse::{self, ETH_LEN, Frag, Ipv4, Packet, ptr_at},
    select::{self, Here},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const IP_LEN: usize = 20;
/// The ICMP header (type, code, checksum, 4 more bytes), the quoted IPv4
/// header (20 bytes: a quote with options is not translated), and the first
/// 8 bytes of the quoted TCP or UDP header (RFC 792's minimum).
const MSG_LEN: usize = 8 + IP_LEN + 8;
/// Offsets in `Msg`.
const QUOTE: usize = 8;
const QUOTE_CHECK: usize = QUOTE + 10;
const QUOTE_SRC: usize = QUOTE + 12;
const QUOTE_DST: usize = QUOTE + 16;
const QUOTE_SPORT: usize = QUOTE + IP_LEN;
const QUOTE_DPORT: usize = QUOTE_SPORT + 2;
/// Offsets in the outer IPv4 header.
const TTL_PROTO: usize = 8;
const CHECK: usize = 10;
const SRC: usize = 12;
const DST: usize = 16;

type Msg = [u8; MSG_LEN];

/// Handles an ICMP packet: an error about one of our flows is translated
/// and sent on (`icmp_to_backend`, `icmp_to_client`); any other error goes
/// to the kernel untouched (`pass_icmp_not_ours`), as does every other
/// ICMP message (echo requests to a VIP are the kernel's to answer).
#[inline(always)]
pub fn translate(ctx: &XdpContext, ip: &Ipv4, to_vip: bool) -> Result<Verdict, Counter> {
    const NOT_OURS: Counter = Counter::PassIcmpNotOurs;
    if ip.header_len() != IP_LEN {
        return Err(Counter::PassNotTcpUdp);
    }
    let kind: *const [u8; 2] = ptr_at(ctx, ETH_LEN + IP_LEN)?;
    // SAFETY: bounds-checked just above.
    let [icmp_type, code] = unsafe { *kind };
    let error = icmp_type == ICMP_DEST_UNREACH || (icmp_type == ICMP_TIME_EXCEEDED && code <= 1);
    if !error {
        return Err(Counter::PassNotTcpUdp);
    }
    let here = Here::read(ctx);
    let msg: *mut Msg = ptr_at(ctx, ETH_LEN + IP_LEN).map_err(|_| NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    let m = unsafe { &mut *msg };
    let outer: *mut [u8; IP_LEN] = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked just above.
    let o = unsafe { &mut *outer };
    let tot_len = u16::from_be_bytes([o[2], o[3]]);
    // The whole message in the frame, not a fragment, the quote a plain
    // IPv4 header of TCP or UDP that is not a later fragment (which has no
    // ports to quote).
    let whole = usize::from(tot_len) >= IP_LEN + MSG_LEN
        && ctx.data() + ETH_LEN + usize::from(tot_len) <= ctx.data_end();
    let unfragmented = u16::from_be_bytes([o[6], o[7]]) & 0x3fff == 0;
    let q_proto = m[QUOTE + 9];
    let quotes_ports = m[QUOTE] == 0x45
        && (q_proto == PROTO_TCP || q_proto == PROTO_UDP)
        && u16::from_be_bytes([m[QUOTE + 6], m[QUOTE + 7]]) & 0x1fff == 0;
    if !(whole && unfragmented && quotes_ports) {
        return Err(NOT_OURS);
    }
    let quoted = Flow {
        src: addr(m, QUOTE_SRC),
        dst: addr(m, QUOTE_DST),
        sport: port(m, QUOTE_SPORT),
        dport: port(m, QUOTE_DPORT),
        proto: q_proto,
        _pad: [0; 3],
    };
    let pkt = Packet {
        // SAFETY: parse checked the Ethernet header.
        eth: unsafe { ip.eth() },
        ip: ip.ip,
        ports: core::ptr::null_mut(),
        l4_check: core::ptr::null_mut(),
        flow: Flow { src: ip.src, dst: ip.dst, proto: ip.proto, ..Flow::default() },
        tot_len,
        ttl: o[TTL_PROTO],
        frag: Frag::Whole,
        id: 0,
        tcp_flags: 0,
    };
    if pkt.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let about_reply = to_vip && quoted.src == ip.dst;
    let about_request =
        select::addr_flags::<V4>(quoted.dst) & ADDR_REAL != 0 && quoted.src == ip.dst;
    if about_reply {
        to_backend(ctx, ip, &pkt, (o, m), &quoted, here)
    } else if about_request {
        to_client(ctx, ip, &pkt, (o, m), &quoted, here)
    } else {
        Err(NOT_OURS)
    }
}

/// An error about a reply `VIP:vport -> client`: to the backend that owns
/// the client's flow (the connection table says which), as if about the
/// backend's own packet. A direct-routing backend sent the reply itself
/// from the VIP: it gets the frame as it is.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    ip: &Ipv4,
    pkt: &Packet,
    (o, m): (&mut [u8; IP_LEN], &mut Msg),
    quoted: &Flow,
    here: Here,
) -> Result<Verdict, Counter> {
    let backend = select::reply_owner::<V4>(quoted, here).ok_or(Counter::PassIcmpNotOurs)?;
    refuse_from_elsewhere(ctx, ip, pkt, quoted, here)?;
    let direct = backend.flags & BACKEND_DSR != 0;
    let query = Query { src: pkt.flow.src, dst: backend.addr, sport: 0, dport: 0, direct };
    let hop = route(ctx, pkt, &query, here)?;
    if !direct {
        rewrite_outer(o, DST, backend.addr);
        rewrite_quote(m, QUOTE_SRC, QUOTE_SPORT, backend.addr, backend.port);
    }
    Ok(send(pkt, hop, here, Counter::IcmpToBackend))
}

/// An error about a client's packet `client -> backend:port`, from the
/// backend side: to the client, from the VIP, about `client -> VIP:vport`.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    ip: &Ipv4,
    pkt: &Packet,
    (o, m): (&mut [u8; IP_LEN], &mut Msg),
    quoted: &Flow,
    here: Here,
) -> Result<Verdict, Counter> {
    // `real` reads the backend endpoint from a reply's source.
    let as_reply =
        Flow { src: quoted.dst, sport: quoted.dport, proto: quoted.proto, ..Flow::default() };
    let real = select::real::<V4>(&as_reply).ok_or(Counter::PassIcmpNotOurs)?;
    // A full-NAT backend's client is a pool address: the kernel's.
    if V4::backends().get(real.backend_id).is_some_and(|b| b.flags & BACKEND_FULLNAT != 0) {
        return Err(Counter::PassIcmpNotOurs);
    }
    refuse_from_elsewhere(ctx, ip, pkt, quoted, here)?;
    let query = Query { src: real.vip, dst: pkt.flow.dst, sport: 0, dport: 0, direct: false };
    let hop = route(ctx, pkt, &query, here)?;
    rewrite_outer(o, SRC, real.vip);
    rewrite_quote(m, QUOTE_DST, QUOTE_DPORT, real.vip, real.vport);
    Ok(send(pkt, hop, here, Counter::IcmpToClient))
}

/// Sends a translated error to `hop`, counted as `counter` whichever way
/// it leaves (XDP_TX, XDP_REDIRECT, tc's slow path).
#[inline(always)]
fn send(pkt: &Packet, hop: Hop, here: Here, counter: Counter) -> Verdict {
    // SAFETY: parse checked the Ethernet header; nothing resized the frame.
    let sent = unsafe { fwd::send::<V4>(pkt.eth.cast(), hop, here) };
    Verdict::new(sent.action, counter)
}

/// The edge checks of an error about one of our flows (made once the flow
/// is known to be ours: an error this host merely routes goes on). A
/// router forwards only frames sent to it; and an error about a packet to
/// X comes from where X is: the route to the quoted destination leaves by
/// the interface the error arrived on (a client's forged "port unreachable
/// from web1" is refused).
#[inline(always)]
fn refuse_from_elsewhere(
    ctx: &XdpContext,
    ip: &Ipv4,
    pkt: &Packet,
    quoted: &Flow,
    here: Here,
) -> Result<(), Counter> {
    // SAFETY: nothing has resized the frame since `ipv4` parsed it.
    if unsafe { parse::to_link_group(ip) } {
        return Err(Counter::DropLinkGroup);
    }
    fwd::arrived_from::<V4>(ctx, pkt, quoted.dst, here)
}

/// The next hop of a translated error; one too big for its link (an error
/// is at most 576 bytes, so hardly ever) is dropped.
#[inline(always)]
fn route(ctx: &XdpContext, pkt: &Packet, query: &Query, here: Here) -> Result<Hop, Counter> {
    match fwd::next_hop::<V4>(ctx, pkt, query, here)? {
        Hop::TooBig { .. } => Err(Counter::DropTooBig),
        hop => Ok(hop),
    }
}

/// The outer header's address at `at` becomes `new`, one hop later: the
/// TTL goes down, the header checksum follows both.
#[inline(always)]
fn rewrite_outer(o: &mut [u8; IP_LEN], at: usize, new: [u8; 4]) {
    let old_ttl_proto = word(o, TTL_PROTO);
    o[TTL_PROTO] -= 1;
    let mut check = csum::replace_u16(word(o, CHECK), old_ttl_proto, word(o, TTL_PROTO));
    check = csum::replace_u32(check, u32::from_ne_bytes(addr(o, at)), u32::from_ne_bytes(new));
    o[at..at + 4].copy_from_slice(&new);
    o[CHECK..CHECK + 2].copy_from_slice(&check.to_ne_bytes());
}

/// The quoted address at `addr_at` and port at `port_at` become `new_addr`
/// and `new_port`; the quoted header's checksum and the ICMP checksum
/// (which covers the quote, the quoted checksum included) follow.
#[inline(always)]
fn rewrite_quote(m: &mut Msg, addr_at: usize, port_at: usize, new_addr: [u8; 4], new_port: u16) {
    let old_addr = u32::from_ne_bytes(addr(m, addr_at));
    let new_addr_word = u32::from_ne_bytes(new_addr);
    let old_port = word(m, port_at);
    let new_port = u16::from_ne_bytes(new_port.to_be_bytes());
    let old_quote_check = word(m, QUOTE_CHECK);
    let quote_check = csum::replace_u32(old_quote_check, old_addr, new_addr_word);
    let mut check = csum::replace_u32(word(m, 2), old_addr, new_addr_word);
    check = csum::replace_u16(check, old_quote_check, quote_check);
    check = csum::replace_u16(check, old_port, new_port);
    m[addr_at..addr_at + 4].copy_from_slice(&new_addr);
    m[port_at..port_at + 2].copy_from_slice(&new_port.to_ne_bytes());
    m[QUOTE_CHECK..QUOTE_CHECK + 2].copy_from_slice(&quote_check.to_ne_bytes());
    m[2..4].copy_from_slice(&check.to_ne_bytes());
}

/// The 16-bit word at `at`, native order (see `csum`).
#[inline(always)]
fn word<const N: usize>(b: &[u8; N], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn addr<const N: usize>(b: &[u8; N], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

/// The port at `at`, host order.
#[inline(always)]
fn port(b: &Msg, at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
