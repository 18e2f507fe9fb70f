//! IPv6 answers, built in place and sent back with XDP_TX, as IPv4's
//! (`reject`): a TCP reset for a client whose connection cannot go on, a
//! reset or an ICMPv6 port unreachable when a service has no usable
//! backend, and ICMPv6 packet too big for a packet its next link cannot
//! carry (IPv6 routers never fragment: path MTU discovery is the only
//! way). Every answer passes `reject::permit` first (who may be answered,
//! the per-CPU budget).
//!
//! The answers run in a program of their own, `lb_answer6`: `lb_xdp6`
//! leaves the request in this CPU's slot of `lb_answer_req` and tail
//! calls it (`request`), so that their stack is not added to the
//! forwarding paths' (together they exceeded BPF's 512 bytes). The frame
//! is unchanged until then, and parsed again there.
use core::cmp::Ordering;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    abi::{PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    counter::Counter,
    csum,
};

use super::{
    V6,
    parse::{self as parse6, ETH_P_IPV6_WIRE, IPV6_LEN, PROTO_ICMPV6},
};
use crate::{
    Verdict,
    maps::LB_ANSWER_REQ,
    mem,
    parse::{self, ETH_LEN, Packet, ptr_at},
    reject::{
        self, EXHAUSTED, FULL, NO_BACKEND, RESET, Refusal, Request, TOO_BIG, To,
        counter_for_silence,
    },
    select::Here,
};

const TCP_LEN: usize = 20;
/// The reset's frame: Ethernet, the fixed IPv6 header, a 20-byte TCP header.
const RESET_LEN: usize = ETH_LEN + IPV6_LEN + TCP_LEN;
const ICMP6_LEN: usize = 8;
/// The most of the invoking packet an error quotes: as much as fits in
/// an error of the minimum IPv6 MTU, 1280 bytes (RFC 4443, 2.4 (c)).
const QUOTE_MAX: usize = 1280 - IPV6_LEN - ICMP6_LEN;
/// Where the quote starts in the error's frame.
const QUOTE_AT: usize = ETH_LEN + IPV6_LEN + ICMP6_LEN;
/// The largest piece of the quote one `bpf_csum_diff` sums (the helper's
/// own limit is 512 bytes).
const SUM_PIECE: usize = 512;

/// The slot of `lb_answer6` in `lb_progs`.
pub const ANSWER_PROG: u32 = 1;

/// Leaves `request` for `lb_answer6` and tail calls it. Returns only if
/// the call failed (no program in the slot): `failed` then.
#[inline(always)]
pub fn request(ctx: &XdpContext, request: Request, failed: Counter) -> Result<Verdict, Counter> {
    reject::request(ctx, request, ANSWER_PROG, failed)
}

/// `lb_answer6`: the answer this CPU's request asks for, to the frame as
/// `lb_xdp6` left it.
#[inline(always)]
pub fn answer(ctx: &XdpContext) -> Result<Verdict, Counter> {
    let slot = LB_ANSWER_REQ.get(0).ok_or(Counter::DropNoBackend)?;
    let request = *slot;
    let counter = request.counter;
    let ip = parse6::headers(ctx)?;
    let pkt = parse6::transport(ctx, &ip)?;
    let here = Here::read(ctx);
    match request.kind {
        RESET => tcp_reset(ctx, &pkt, counter, here),
        NO_BACKEND | EXHAUSTED | FULL => no_backend(ctx, &pkt, here, Refusal::of(request.kind)),
        TOO_BIG => {
            let to = if request.to_backend != 0 { To::Backend } else { To::Client };
            too_big(ctx, &pkt, request.vip, request.mtu as u16, to, here)
        }
        _ => Err(Counter::DropNoBackend),
    }
}

const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PORT_UNREACH: u8 = 4;
const ICMP6_PACKET_TOO_BIG: u8 = 2;

/// A 16-bit value as the frame holds it (big-endian), read natively.
#[inline(always)]
const fn wire16(v: u16) -> u16 {
    u16::from_ne_bytes(v.to_be_bytes())
}

/// A 32-bit value as the frame holds it, read natively.
#[inline(always)]
const fn wire32(v: u32) -> u32 {
    u32::from_ne_bytes(v.to_be_bytes())
}

/// The two MAC addresses of the frame at `eth` as words: (destination,
/// source), each a 4-byte and a 2-byte word.
///
/// # Safety
/// `eth` points at a bounds-checked Ethernet header.
#[inline(always)]
unsafe fn macs(eth: *const u8) -> ((u32, u16), (u32, u16)) {
    // SAFETY: the caller guarantees the 14 bytes.
    unsafe {
        (
            (mem::load32::<0>(eth), mem::load16::<4>(eth)),
            (mem::load32::<6>(eth), mem::load16::<10>(eth)),
        )
    }
}

/// The Ethernet header of an answer (back to whoever sent `macs`), and
/// the IPv6 header from `src` to `dst` carrying `payload_len` bytes of
/// `next`, hop limit 64.
///
/// # Safety
/// `frame` points at a bounds-checked frame of at least 54 bytes.
#[inline(always)]
unsafe fn headers(
    frame: *mut u8,
    ((to_lo, to_hi), (from_lo, from_hi)): ((u32, u16), (u32, u16)),
    (src, dst): ([u8; 16], [u8; 16]),
    payload_len: u16,
    next: u8,
) {
    // SAFETY: the caller guarantees the 54 bytes.
    unsafe {
        // Back where it came from: its source becomes the destination.
        mem::store32::<0>(frame, from_lo);
        mem::store16::<4>(frame, from_hi);
        mem::store32::<6>(frame, to_lo);
        mem::store16::<10>(frame, to_hi);
        mem::store16::<12>(frame, ETH_P_IPV6_WIRE);
        mem::store32::<14>(frame, wire32(6 << 28));
        mem::store16::<18>(frame, wire16(payload_len));
        mem::store16::<20>(frame, u16::from_ne_bytes([next, 64]));
        mem::store_addr6::<22>(frame, src);
        mem::store_addr6::<38>(frame, dst);
    }
}

/// The sum of the IPv6 pseudo-header (RFC 8200, 8.1) of an answer from
/// `src` to `dst` carrying `len` bytes of `next`. Every sum here adds
/// 16-bit words as the frame holds them, read natively (the ones'
/// complement sum does not mind the byte order, RFC 1071), stored as is:
/// words, not bytes, so nothing spills to the stack byte by byte.
#[inline(always)]
fn pseudo_sum(src: [u8; 16], dst: [u8; 16], len: u16, next: u8) -> u64 {
    addr_sum(src) + addr_sum(dst) + u64::from(wire16(len)) + u64::from(wire16(u16::from(next)))
}

/// The sum of an address's eight words, read natively.
#[inline(always)]
fn addr_sum(addr: [u8; 16]) -> u64 {
    // SAFETY: sixteen bytes are four words, in memory order.
    let words = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(addr) };
    words.iter().map(|w| u64::from(w & 0xffff) + u64::from(w >> 16)).sum()
}

/// The sum of a 32-bit value's two words as the frame holds them.
#[inline(always)]
const fn sum32(v: u32) -> u64 {
    let w = wire32(v);
    (w & 0xffff) as u64 + (w >> 16) as u64
}

/// `sum` folded to the 16-bit ones' complement checksum, ready to store.
#[inline(always)]
const fn checksum(sum: u64) -> u16 {
    let folded = (sum & 0xffff_ffff) + (sum >> 32);
    !csum::fold((folded & 0xffff_ffff) as u32 + (folded >> 32) as u32)
}

/// Replaces a client's TCP packet with the reset the VIP would send (RFC
/// 9293, as `reject::tcp_reset`). Extension headers are not answered
/// through: the reset is a packet of its own, from the VIP.
#[inline(always)]
pub fn tcp_reset(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    counter: Counter,
    here: Here,
) -> Result<Verdict, Counter> {
    let silence = counter_for_silence(counter);
    if pkt.flow.proto != PROTO_TCP {
        return Err(silence);
    }
    let (seq, ack) = parse::tcp_seq_ack(ctx, pkt).ok_or(silence)?;
    let header = pkt.ports.cast::<[u8; TCP_LEN]>();
    if header.is_null() || header as usize + TCP_LEN > ctx.data_end() {
        return Err(silence);
    }
    // SAFETY: the 20 bytes are in the frame (checked just above).
    let data_offset = u32::from(unsafe { (*header)[12] } >> 4) * 4;
    let flags = pkt.tcp_flags;
    // A reset is never answered (RFC 9293).
    if flags & TCP_RST != 0 {
        return Err(silence);
    }
    reject::permit(pkt, To::Client, here)?;
    // The TCP payload: the packet less its headers (extension headers too).
    let headers_len = (header as usize - pkt.ip as usize) as u32 + data_offset;
    let payload = u32::from(pkt.tot_len).saturating_sub(headers_len);
    let (reset_seq, reset_ack, reset_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let occupied = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };
    let (vip, client) = (pkt.flow.dst, pkt.flow.src);
    let (vport, cport) = (pkt.flow.dport, pkt.flow.sport);
    // SAFETY: parse bounds-checked the Ethernet header.
    let macs = unsafe { macs(pkt.eth.cast()) };
    let offset_flags = 0x5000 | u16::from(reset_flags);
    let sum = pseudo_sum(vip, client, TCP_LEN as u16, PROTO_TCP)
        + u64::from(wire16(vport))
        + u64::from(wire16(cport))
        + sum32(reset_seq)
        + sum32(reset_ack)
        + u64::from(wire16(offset_flags));
    let check = checksum(sum);

    // Cut the frame to the reset's size, then write it.
    let delta = RESET_LEN as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: shrinks (or keeps) the frame; every pointer is derived again below.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(silence);
    }
    let out: *mut [u8; RESET_LEN] = ptr_at(ctx, 0)?;
    let b = out.cast::<u8>();
    // SAFETY: the 74 bytes were bounds-checked just above.
    unsafe {
        headers(b, macs, (vip, client), TCP_LEN as u16, PROTO_TCP);
        mem::store16::<54>(b, wire16(vport));
        mem::store16::<56>(b, wire16(cport));
        mem::store32::<58>(b, wire32(reset_seq));
        mem::store32::<62>(b, wire32(reset_ack));
        mem::store16::<66>(b, wire16(offset_flags));
        mem::store16::<68>(b, 0); // window
        mem::store16::<70>(b, check);
        mem::store16::<72>(b, 0); // urgent pointer
    }
    Ok(Verdict::new(xdp_action::XDP_TX, counter))
}

/// `on_no_backend = "reject"`: a TCP packet gets a reset, a UDP datagram
/// an ICMPv6 port unreachable, both from the VIP, counted as `why` says.
#[inline(always)]
pub fn no_backend(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    here: Here,
    why: Refusal,
) -> Result<Verdict, Counter> {
    let answered = if pkt.flow.proto == PROTO_TCP {
        tcp_reset(ctx, pkt, why.tcp, here)
    } else {
        reject::permit(pkt, To::Client, here).and_then(|()| {
            let kind = (ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH);
            error(ctx, pkt, pkt.flow.dst, kind, 0, why.udp)
        })
    };
    answered.map_err(|c| if reject::refused(c) { c } else { why.silent })
}

/// A packet too big for its next link (whose MTU the FIB gave): answered
/// like a router would, with ICMPv6 packet too big from the VIP `vip` to
/// the packet's sender, a client or (for its reply) a backend.
#[inline(always)]
pub fn too_big(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    vip: [u8; 16],
    mtu: u16,
    to: To,
    here: Here,
) -> Result<Verdict, Counter> {
    reject::permit(pkt, to, here)?;
    error(ctx, pkt, vip, (ICMP6_PACKET_TOO_BIG, 0), u32::from(mtu), Counter::FragNeeded)
        .map_err(|_| Counter::DropTooBig)
}

/// The sum (as `pseudo_sum`'s, unfolded) of the `N` bytes of the frame
/// at `at`, a multiple of 4 as `bpf_csum_diff` wants, up to its 512.
#[inline(always)]
fn piece_sum<const N: usize>(ctx: &XdpContext, at: usize) -> Result<u64, Counter> {
    let piece: *mut [u8; N] = ptr_at(ctx, at)?;
    // SAFETY: `N` bytes of the frame (checked just above).
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, piece.cast(), N as u32, 0) };
    // A negative value is an error (it never is for these sizes).
    u64::try_from(sum).map_err(|_| Counter::DropNoBackend)
}

/// If `left` holds `N` bytes or more: the sum of the `N` at `*at`, which
/// moves past them (`left` shrinks by them); else nothing.
#[inline(always)]
fn sum_if<const N: usize>(
    ctx: &XdpContext,
    at: &mut usize,
    left: &mut usize,
) -> Result<u64, Counter> {
    if *left < N {
        return Ok(0);
    }
    let sum = piece_sum::<N>(ctx, *at)?;
    *at += N;
    *left -= N;
    Ok(sum)
}

/// The sum of the quote: the `len` bytes (at most `QUOTE_MAX`) after the
/// Ethernet header, in pieces of constant sizes the verifier can check
/// (two of 512, then one of each power of two down to 4), then the last
/// two bytes and the last byte, which an odd length pads with a zero
/// (RFC 4443, 2.3).
#[inline(always)]
fn quote_sum(ctx: &XdpContext, len: usize) -> Result<u64, Counter> {
    let (mut at, mut left) = (ETH_LEN, len);
    let mut sum = sum_if::<SUM_PIECE>(ctx, &mut at, &mut left)?;
    sum += sum_if::<SUM_PIECE>(ctx, &mut at, &mut left)?;
    sum += sum_if::<256>(ctx, &mut at, &mut left)?;
    sum += sum_if::<128>(ctx, &mut at, &mut left)?;
    sum += sum_if::<64>(ctx, &mut at, &mut left)?;
    sum += sum_if::<32>(ctx, &mut at, &mut left)?;
    sum += sum_if::<16>(ctx, &mut at, &mut left)?;
    sum += sum_if::<8>(ctx, &mut at, &mut left)?;
    sum += sum_if::<4>(ctx, &mut at, &mut left)?;
    if left >= 2 {
        let word: *mut [u8; 2] = ptr_at(ctx, at)?;
        // SAFETY: two bytes of the frame (checked just above).
        sum += u64::from(unsafe { mem::load16::<0>(word.cast()) });
        at += 2;
        left -= 2;
    }
    if left >= 1 {
        let byte: *mut u8 = ptr_at(ctx, at)?;
        // SAFETY: one byte of the frame (checked just above). As the
        // first byte of a word read natively, padded with a zero.
        sum += u64::from(u16::from_ne_bytes([unsafe { *byte }, 0]));
    }
    Ok(sum)
}

/// Replaces a packet with the ICMPv6 error (`kind`: type and code; `rest`:
/// the header's last word, the MTU of packet too big) that `from` sends its
/// sender, quoting as much of the packet as an error of 1280 bytes holds
/// (RFC 4443, 2.4 (c)): all of a packet of up to 1232 bytes, the first
/// 1232 bytes of a longer one. The frame grows at the head by the quote's
/// shift, so the packet's own bytes land where the quote goes, and is cut
/// after the quote.
#[inline(always)]
fn error(
    ctx: &XdpContext,
    pkt: &Packet<V6>,
    from: [u8; 16],
    kind: (u8, u8),
    rest: u32,
    counter: Counter,
) -> Result<Verdict, Counter> {
    let to = pkt.flow.src;
    // The packet's length was checked against the frame by parse.
    let quote_len = usize::from(pkt.tot_len).min(QUOTE_MAX);
    let quote_sum = quote_sum(ctx, quote_len)?;
    // SAFETY: parse checked the Ethernet header.
    let macs = unsafe { macs(pkt.eth.cast()) };
    let message_len = (ICMP6_LEN + quote_len) as u16;
    let type_code = u16::from_be_bytes([kind.0, kind.1]);
    let sum = pseudo_sum(from, to, message_len, PROTO_ICMPV6)
        + u64::from(wire16(type_code))
        + sum32(rest)
        + quote_sum;
    let check = checksum(sum);

    let shift = (QUOTE_AT - ETH_LEN) as i32;
    let len = (ctx.data_end() - ctx.data()) as i32;
    let cut = (QUOTE_AT + quote_len) as i32 - (len + shift);
    // SAFETY: resizes the frame; every pointer is derived again below.
    let resized = unsafe {
        bpf_xdp_adjust_head(ctx.ctx, -shift) == 0
            && match cut.cmp(&0) {
                Ordering::Less => bpf_xdp_adjust_tail(ctx.ctx, cut) == 0,
                Ordering::Equal => true,
                // The packet held its quote: never shorter than it.
                Ordering::Greater => false,
            }
    };
    if !resized {
        return Err(Counter::DropNoBackend);
    }
    let out: *mut [u8; QUOTE_AT] = ptr_at(ctx, 0)?;
    let b = out.cast::<u8>();
    // SAFETY: the 62 bytes of the headers were bounds-checked just above.
    unsafe {
        headers(b, macs, (from, to), message_len, PROTO_ICMPV6);
        mem::store16::<54>(b, wire16(type_code));
        mem::store16::<56>(b, check);
        mem::store32::<58>(b, wire32(rest));
    }
    Ok(Verdict::new(xdp_action::XDP_TX, counter))
}
