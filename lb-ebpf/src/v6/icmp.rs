//! ICMPv6 errors about our flows, translated the way the packets they
//! quote were, as IPv4's (`crate::icmp`): a router past the load balancer
//! that cannot deliver a reply (`VIP:80 -> client`: packet too big above
//! all, path MTU discovery being IPv6's only way) tells the VIP, and only
//! the backend that sent the reply can act on it; an error about a
//! client's packet from the backend side would show the client a backend's
//! address, and goes on from the VIP instead.
//!
//! Translated: the outer address (destination towards a backend, source
//! towards a client), the quoted address and port, and the ICMPv6 checksum,
//! whose pseudo-header covers the outer addresses. The quoted transport
//! checksum is left alone, as for IPv4. Runs in `lb_icmp6`, which `lb_xdp6`
//! tail calls for an ICMPv6 error (see `answer` for why a program of its
//! own); every other ICMPv6 message (neighbour discovery, echo) is the
//! kernel's, as is an error with extension headers in or around its quote.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{ADDR_REAL, ADDR_VIP, BACKEND_DSR, BACKEND_FULLNAT, Flow, PROTO_TCP, PROTO_UDP},
    counter::Counter,
    csum,
};

use super::{
    V6,
    parse::{self, IPV6_LEN, PROTO_ICMPV6},
};
use crate::{
    Verdict,
    fwd::{self, Hop, Query},
    mem,
    parse::{ETH_LEN, Frag, Packet, ptr_at},
    select::{self, Here},
};

const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;
/// The ICMPv6 header, the quoted IPv6 header and the quoted transport
/// header's first 8 bytes: what is read and rewritten.
const MSG_LEN: usize = 8 + IPV6_LEN + 8;
/// Offsets in the frame.
const OUTER_SRC: usize = ETH_LEN + 8;
const OUTER_DST: usize = ETH_LEN + 24;
const ICMP: usize = ETH_LEN + IPV6_LEN;
const CHECK: usize = ICMP + 2;
const QUOTE: usize = ICMP + 8;
const QUOTE_SRC: usize = QUOTE + 8;
const QUOTE_DST: usize = QUOTE + 24;
const QUOTE_SPORT: usize = QUOTE + IPV6_LEN;
const QUOTE_DPORT: usize = QUOTE_SPORT + 2;

/// The slot of `lb_icmp6` in `lb_progs`.
pub const ICMP_PROG: u32 = 2;

/// Whether the ICMPv6 message after `ihl` bytes of IPv6 headers is an
/// error this program translates (its type: destination unreachable,
/// packet too big, time exceeded).
#[inline(always)]
pub fn is_error(ctx: &XdpContext, ihl: usize) -> bool {
    let Ok(kind) = ptr_at::<u8>(ctx, ETH_LEN + ihl) else {
        return false;
    };
    // SAFETY: bounds-checked just above.
    let kind = unsafe { *kind };
    kind == ICMP6_DEST_UNREACH || kind == ICMP6_PACKET_TOO_BIG || kind == ICMP6_TIME_EXCEEDED
}

/// `lb_icmp6`: the error in the frame, translated and sent on, or the
/// kernel's.
#[inline(always)]
pub fn translate(ctx: &XdpContext) -> Result<Verdict, Counter> {
    const NOT_OURS: Counter = Counter::PassIcmpNotOurs;
    let ip = parse::headers(ctx)?;
    if ip.proto != PROTO_ICMPV6 || ip.ihl != IPV6_LEN {
        return Err(NOT_OURS);
    }
    let frame: *mut [u8; ICMP + MSG_LEN] = ptr_at(ctx, 0).map_err(|_| NOT_OURS)?;
    let f = frame.cast::<u8>();
    // SAFETY: bounds-checked just above (the outer headers and the message).
    let (payload_len, hop_limit, q_version, q_next, quoted) = unsafe {
        (
            u16::from_be(mem::load16::<{ ETH_LEN + 4 }>(f)),
            *f.add(ETH_LEN + 7),
            *f.add(QUOTE) >> 4,
            *f.add(QUOTE + 6),
            Flow {
                src: mem::load_addr6::<QUOTE_SRC>(f),
                dst: mem::load_addr6::<QUOTE_DST>(f),
                sport: u16::from_be(mem::load16::<QUOTE_SPORT>(f)),
                dport: u16::from_be(mem::load16::<QUOTE_DPORT>(f)),
                proto: *f.add(QUOTE + 6),
                _pad: [0; 3],
            },
        )
    };
    // The whole message in the frame, quoting a TCP or UDP packet's
    // header without extension headers (whose ports are then where read).
    let whole = usize::from(payload_len) >= MSG_LEN
        && ctx.data() + ICMP + usize::from(payload_len) <= ctx.data_end();
    if !whole || q_version != 6 || (q_next != PROTO_TCP && q_next != PROTO_UDP) {
        return Err(NOT_OURS);
    }
    if hop_limit <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let pkt = Packet::<V6> {
        eth: ip.eth,
        ip: ip.ip,
        ports: core::ptr::null_mut(),
        l4_check: core::ptr::null_mut(),
        flow: Flow { src: ip.src, dst: ip.dst, proto: PROTO_ICMPV6, ..Flow::default() },
        tot_len: payload_len + IPV6_LEN as u16,
        ttl: hop_limit,
        frag: Frag::Whole,
        id: 0,
        tcp_flags: 0,
    };
    let here = Here::read(ctx);
    let to_vip = select::addr_flags::<V6>(ip.dst) & ADDR_VIP != 0;
    let about_reply = to_vip && quoted.src == ip.dst;
    let about_request =
        select::addr_flags::<V6>(quoted.dst) & ADDR_REAL != 0 && quoted.src == ip.dst;
    if about_reply {
        to_backend(ctx, &pkt, f, &quoted, here)
    } else if about_request {
        to_client(ctx, &pkt, f, &quoted, here)
    } else {
        Err(NOT_OURS)
    }
}

/// An error about a reply `VIP:vport -> client`: to the backend that owns
/// the client's flow, as if about the backend's own packet. A
/// direct-routing backend sent the reply itself: it gets the frame as it is.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    f: *mut u8,
    quoted: &Flow<[u8; 16]>,
    here: Here,
) -> Result<Verdict, Counter> {
    let backend = select::reply_owner::<V6>(quoted, here).ok_or(Counter::PassIcmpNotOurs)?;
    let (addr, port, direct) = (backend.addr, backend.port, backend.flags & BACKEND_DSR != 0);
    refuse_from_elsewhere(ctx, pkt, quoted, here)?;
    let query = Query { src: pkt.flow.src, dst: addr, sport: 0, dport: 0, direct };
    let hop = route(ctx, pkt, &query, here)?;
    if !direct {
        // SAFETY: `translate` bounds-checked the message in the frame.
        unsafe { rewrite(f, Towards::Backend, addr, port) };
    }
    Ok(send(pkt, hop, here, Counter::IcmpToBackend))
}

/// An error about a client's packet `client -> backend:port`, from the
/// backend side: to the client, from the VIP, about `client -> VIP:vport`.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    f: *mut u8,
    quoted: &Flow<[u8; 16]>,
    here: Here,
) -> Result<Verdict, Counter> {
    // `real` reads the backend endpoint from a reply's source.
    let as_reply =
        Flow { src: quoted.dst, sport: quoted.dport, proto: quoted.proto, ..Flow::default() };
    let real = select::real::<V6>(&as_reply).ok_or(Counter::PassIcmpNotOurs)?;
    // A full-NAT backend's client is a pool address: the kernel's.
    if <V6 as crate::family::Family>::backends()
        .get(real.backend_id)
        .is_some_and(|b| b.flags & BACKEND_FULLNAT != 0)
    {
        return Err(Counter::PassIcmpNotOurs);
    }
    refuse_from_elsewhere(ctx, pkt, quoted, here)?;
    let query = Query { src: real.vip, dst: pkt.flow.dst, sport: 0, dport: 0, direct: false };
    let hop = route(ctx, pkt, &query, here)?;
    // SAFETY: `translate` bounds-checked the message in the frame.
    unsafe { rewrite(f, Towards::Client, real.vip, real.vport) };
    Ok(send(pkt, hop, here, Counter::IcmpToClient))
}

/// Which way a translated error goes, and so what it rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Towards {
    /// The outer destination (the VIP), the quoted source and its port.
    Backend,
    /// The outer source, the quoted destination and its port.
    Client,
}

/// The addresses and the port `towards` names become `addr` and
/// `port_value`, one hop later; the ICMPv6 checksum follows all three (the
/// outer address through its pseudo-header).
///
/// # Safety
/// `f` is the frame, bounds-checked through the message (`translate`).
#[inline(always)]
unsafe fn rewrite(f: *mut u8, towards: Towards, addr: [u8; 16], port_value: u16) {
    let words = |a: [u8; 16]| {
        // SAFETY: sixteen bytes are two words, in memory order.
        unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(a) }
    };
    let new_port = u16::from_ne_bytes(port_value.to_be_bytes());
    // SAFETY: the caller guarantees the bytes, at these constant offsets.
    unsafe {
        let (old_outer, old_quote, old_port) = match towards {
            Towards::Backend => (
                mem::load_addr6::<OUTER_DST>(f),
                mem::load_addr6::<QUOTE_SRC>(f),
                mem::load16::<QUOTE_SPORT>(f),
            ),
            Towards::Client => (
                mem::load_addr6::<OUTER_SRC>(f),
                mem::load_addr6::<QUOTE_DST>(f),
                mem::load16::<QUOTE_DPORT>(f),
            ),
        };
        let mut check = mem::load16::<CHECK>(f);
        check = csum::replace_addr6(check, words(old_outer), words(addr));
        check = csum::replace_addr6(check, words(old_quote), words(addr));
        check = csum::replace_u16(check, old_port, new_port);
        mem::store16::<CHECK>(f, check);
        // One hop later (no header checksum in IPv6).
        *f.add(ETH_LEN + 7) -= 1;
        match towards {
            Towards::Backend => {
                mem::store_addr6::<OUTER_DST>(f, addr);
                mem::store_addr6::<QUOTE_SRC>(f, addr);
                mem::store16::<QUOTE_SPORT>(f, new_port);
            }
            Towards::Client => {
                mem::store_addr6::<OUTER_SRC>(f, addr);
                mem::store_addr6::<QUOTE_DST>(f, addr);
                mem::store16::<QUOTE_DPORT>(f, new_port);
            }
        }
    }
}

/// The edge checks of an error about one of our flows, as IPv4's: a router
/// forwards only frames sent to it, and an error about a packet to X comes
/// from where X is.
#[inline(always)]
fn refuse_from_elsewhere(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    quoted: &Flow<[u8; 16]>,
    here: Here,
) -> Result<(), Counter> {
    // SAFETY: nothing has resized the frame since it was parsed.
    if unsafe { (*pkt.eth).dst[0] } & 1 != 0 {
        return Err(Counter::DropLinkGroup);
    }
    fwd::arrived_from(ctx, pkt, quoted.dst, here)
}

/// The next hop of a translated error; one too big for its link is dropped.
#[inline(always)]
fn route(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    query: &Query<[u8; 16]>,
    here: Here,
) -> Result<Hop<[u8; 16]>, Counter> {
    match fwd::next_hop(ctx, pkt, query, here)? {
        Hop::TooBig { .. } => Err(Counter::DropTooBig),
        hop => Ok(hop),
    }
}

/// Sends a translated error to `hop`, counted as `counter` whichever way
/// it leaves.
#[inline(always)]
fn send(pkt: &Packet<V6>, hop: Hop<[u8; 16]>, here: Here, counter: Counter) -> Verdict {
    // SAFETY: parse checked the Ethernet header; nothing resized the frame.
    let sent = unsafe { fwd::send::<V6>(pkt.eth.cast(), hop, here) };
    Verdict::new(sent.action, counter)
}
