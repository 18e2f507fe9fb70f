//! Answers built in place and sent back with XDP_TX: a TCP reset for a
//! client whose connection cannot go on (its backend is DOWN or gone), a
//! reset or an ICMP port unreachable when a service has no usable backend
//! (`on_no_backend = "reject"`), so the client fails at once instead of
//! retransmitting into nothing, and ICMP "fragmentation needed" for a
//! packet too big for its next link.
//!
//! Every answer passes `permit` first: an answer goes to whoever the packet
//! says sent it, which anyone can forge, so answers are never sent where a
//! reflector's would land (a backend, a link-layer broadcast) and each CPU
//! sends at most its budget per tick.
use core::cmp::Ordering;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    abi::{ADDR_BACKEND, ADDR_VIP, PROTO_ICMP, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    counter::Counter,
    csum,
};

use crate::{
    Verdict,
    family::Family,
    maps::{LB_ANSWER_REQ, LB_ANSWERS, LB_POLICY, LB_PROGS},
    parse::{self, ETH_LEN, EthHdr, Packet, ptr_at},
    select::{self, Here},
};

/// What a program asks an answer program to answer, when it has no stack
/// to spare for building the answer itself: `lb_xdp6` asks `lb_answer6`
/// (always), `lb_fnat` asks `lb_answer` (IPv4), in this CPU's slot of
/// `lb_answer_req` (XDP does not nest on a CPU, so the slot is this
/// packet's between the two programs). The frame is unchanged until
/// then, and parsed again there.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request {
    pub kind: u32,
    /// The counter of an answer sent (a reset's: why).
    pub counter: Counter,
    /// Packet too big: the VIP it comes from (IPv4: its first 4 bytes),
    /// the next link's MTU, and whether its sender is a backend
    /// (`To::Backend`).
    pub vip: [u8; 16],
    pub mtu: u32,
    pub to_backend: u32,
}

/// `Request::kind`.
pub const RESET: u32 = 1;
pub const NO_BACKEND: u32 = 2;
pub const TOO_BIG: u32 = 3;
/// A full-NAT flow refused for want of a port (`Refusal::EXHAUSTED`).
pub const EXHAUSTED: u32 = 4;
/// A flow refused because every usable backend is at its `max_conns`
/// (`Refusal::FULL`).
pub const FULL: u32 = 5;

/// The slot of `lb_answer` in `lb_progs`.
pub const ANSWER_PROG: u32 = 5;

/// Leaves `request` for the answer program in slot `prog` of `lb_progs`
/// and tail calls it. Returns only if the call failed (no program in the
/// slot): `failed` then.
#[inline(always)]
pub fn request(
    ctx: &XdpContext,
    request: Request,
    prog: u32,
    failed: Counter,
) -> Result<Verdict, Counter> {
    let Some(slot) = LB_ANSWER_REQ.get_ptr_mut(0) else {
        return Err(failed);
    };
    // SAFETY: this CPU's slot; XDP does not nest on a CPU. The tail call
    // does not return unless it failed.
    unsafe {
        *slot = request;
        LB_PROGS.tail_call(ctx, prog);
    }
    Err(failed)
}

/// `lb_answer`: the IPv4 answer this CPU's request asks for, to the frame
/// as the asking program left it.
#[inline(always)]
pub fn answer(ctx: &XdpContext) -> Result<Verdict, Counter> {
    let request = *LB_ANSWER_REQ.get(0).ok_or(Counter::DropNoBackend)?;
    let ip = parse::ipv4(ctx)?;
    let pkt = parse::transport(ctx, &ip)?;
    let here = Here::read(ctx);
    match request.kind {
        RESET => tcp_reset(ctx, &pkt, request.counter, here),
        NO_BACKEND | EXHAUSTED | FULL => refuse(ctx, &pkt, here, Refusal::of(request.kind)),
        TOO_BIG => {
            let to = if request.to_backend != 0 { To::Backend } else { To::Client };
            let [a, b, c, d, ..] = request.vip;
            frag_needed(ctx, &pkt, [a, b, c, d], request.mtu as u16, to, here)
        }
        _ => Err(Counter::DropNoBackend),
    }
}

/// What an answer the asking program could not have sent counts as.
#[inline(always)]
pub fn failed_answer(kind: u32, counter: Counter) -> Counter {
    match kind {
        RESET => counter_for_silence(counter),
        TOO_BIG => Counter::DropTooBig,
        EXHAUSTED => Counter::DropSnatExhausted,
        FULL => Counter::DropBackendsFull,
        _ => Counter::DropNoBackend,
    }
}

/// Why a new flow is refused (`on_no_backend = "reject"`), as its
/// counters say it: the answer to a TCP packet, to a UDP datagram, and
/// the drop when no answer can be sent.
#[derive(Clone, Copy)]
pub struct Refusal {
    pub tcp: Counter,
    pub udp: Counter,
    pub silent: Counter,
}

impl Refusal {
    /// No usable backend.
    pub const NO_BACKEND: Refusal = Refusal {
        tcp: Counter::RejectTcp,
        udp: Counter::RejectUdp,
        silent: Counter::DropNoBackend,
    };
    /// A full-NAT pool with no port for the flow: counted apart, so that
    /// an operator can tell a spent pool from a service without backends.
    pub const EXHAUSTED: Refusal = Refusal {
        tcp: Counter::RejectSnatExhausted,
        udp: Counter::RejectSnatExhausted,
        silent: Counter::DropSnatExhausted,
    };

    /// Every usable backend at its `max_conns`: counted apart too.
    pub const FULL: Refusal = Refusal {
        tcp: Counter::RejectBackendsFull,
        udp: Counter::RejectBackendsFull,
        silent: Counter::DropBackendsFull,
    };

    /// The refusal a request of `kind` (`NO_BACKEND`, `EXHAUSTED`, `FULL`)
    /// asks for.
    #[inline(always)]
    pub const fn of(kind: u32) -> Refusal {
        match kind {
            EXHAUSTED => Refusal::EXHAUSTED,
            FULL => Refusal::FULL,
            _ => Refusal::NO_BACKEND,
        }
    }
}

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
/// The reset's frame: Ethernet, a 20-byte IPv4 header, a 20-byte TCP header.
const RESET_LEN: usize = ETH_LEN + IP_LEN + TCP_LEN;

/// Sum of big-endian 16-bit words, for a checksum.
#[inline(always)]
fn word_sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0_u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The IPv4 header of an answer from `src` (the VIP) to `dst` (the client),
/// TTL 64, checksum filled in.
#[inline(always)]
fn answer_ip_header(
    payload_len: usize,
    proto: u8,
    dont_fragment: bool,
    src: [u8; 4],
    dst: [u8; 4],
) -> [u8; IP_LEN] {
    let mut ip = [0_u8; IP_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP_LEN + payload_len) as u16).to_be_bytes());
    if dont_fragment {
        ip[6] = 0x40;
    }
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let check = !csum::fold(word_sum(&ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ip
}

/// Who may be answered: the answer would go to `pkt`'s source.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// A client: never a backend's address.
    Client,
    /// The backend whose reply this is ("fragmentation needed").
    Backend,
}

/// Whether an answer to `pkt` may be sent, and takes it from this CPU's
/// budget for the tick. Refused: a source that is a martian or a VIP (never
/// a client), a backend's address, NAT or direct routing, when the answer
/// is for a client (a forged client that is one of ours), and anything past
/// the budget. (A frame sent to a link-layer group address never gets here:
/// `drop_link_group`.) The prefilter's flags say who may be a VIP or a
/// backend, the exact maps who is: an address that only shares their slot
/// is a client like any other, and gets its answer. Only a prefilter hit
/// pays for a hash lookup, and answers are rare anyway.
#[inline(always)]
pub fn permit<F: Family>(pkt: &Packet<F>, to: To, here: Here) -> Result<(), Counter> {
    let dst = pkt.flow.src;
    let martian = F::martian(&dst);
    let flags = select::addr_flags::<F>(dst);
    // SAFETY: the value is not read.
    let vip = flags & ADDR_VIP != 0 && unsafe { F::vips().get(dst).is_some() };
    let backend = to == To::Client
        && flags & ADDR_BACKEND != 0
        // SAFETY: the value is not read.
        && unsafe { F::backend_addrs().get(dst).is_some() };
    if martian || vip || backend {
        return Err(Counter::DropAnswerForbidden);
    }
    let limit = LB_POLICY.get(0).map_or(0, |l| l.answers_per_tick);
    let budget = LB_ANSWERS.get_ptr_mut(0).ok_or(Counter::DropAnswerBudget)?;
    // SAFETY: this CPU's slot; XDP does not nest on a CPU.
    let budget = unsafe { &mut *budget };
    if budget.epoch != here.epoch {
        budget.epoch = here.epoch;
        budget.sent = 0;
    }
    if budget.sent >= limit {
        return Err(Counter::DropAnswerBudget);
    }
    budget.sent += 1;
    Ok(())
}

/// Whether `counter` says an answer was refused by `permit` (kept as the
/// packet's outcome instead of the caller's fallback).
#[inline(always)]
pub const fn refused(counter: Counter) -> bool {
    matches!(counter, Counter::DropAnswerBudget | Counter::DropAnswerForbidden)
}

/// Replaces a client's TCP packet with the reset the VIP would send
/// (RFC 793, "Reset Generation"): if the packet acknowledged something, the
/// reset carries that number as its sequence; otherwise it acknowledges
/// everything the packet occupied. Only plain 20-byte IPv4 headers are
/// answered; anything else is dropped.
#[inline(always)]
pub fn tcp_reset(
    ctx: &XdpContext,
    pkt: &Packet,
    counter: Counter,
    here: Here,
) -> Result<Verdict, Counter> {
    // SAFETY: parse bounds-checked the IPv4 header.
    if unsafe { (*pkt.ip).version_ihl } != 0x45 || pkt.flow.proto != PROTO_TCP {
        return Err(Counter::DropBackendDown);
    }
    // With a 20-byte IPv4 header the TCP header is at a fixed offset; checked
    // again here because the verifier merged parse's TCP and UDP paths.
    let tcp_ptr: *const [u8; TCP_LEN] = ptr_at(ctx, ETH_LEN + IP_LEN)?;
    // SAFETY: bounds-checked just above.
    let tcp_in = unsafe { *tcp_ptr };
    // SAFETY: bounds-checked by parse.
    let (client_mac, our_mac) = unsafe { ((*pkt.eth).src, (*pkt.eth).dst) };
    let seq = u32::from_be_bytes([tcp_in[4], tcp_in[5], tcp_in[6], tcp_in[7]]);
    let ack = u32::from_be_bytes([tcp_in[8], tcp_in[9], tcp_in[10], tcp_in[11]]);
    let data_offset = u32::from(tcp_in[12] >> 4) * 4;
    let flags = tcp_in[13];
    // A reset is never answered (RFC 793).
    if flags & TCP_RST != 0 {
        return Err(counter_for_silence(counter));
    }
    permit(pkt, To::Client, here)?;
    let payload = u32::from(pkt.tot_len).saturating_sub(IP_LEN as u32 + data_offset);
    let (reset_seq, reset_ack, reset_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let occupied = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };

    let ip = answer_ip_header(TCP_LEN, PROTO_TCP, true, pkt.flow.dst, pkt.flow.src);

    let mut tcp = [0_u8; TCP_LEN];
    tcp[0..2].copy_from_slice(&pkt.flow.dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&pkt.flow.sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&reset_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&reset_ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = reset_flags;
    let pseudo =
        word_sum(&pkt.flow.dst) + word_sum(&pkt.flow.src) + u32::from(PROTO_TCP) + TCP_LEN as u32;
    let tcp_check = !csum::fold(pseudo + word_sum(&tcp));
    tcp[16..18].copy_from_slice(&tcp_check.to_be_bytes());

    // Cut the frame to the reset's size, then write it.
    let delta = RESET_LEN as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: shrinks (or keeps) the frame; every pointer is derived again below.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(Counter::DropBackendDown);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip_out: *mut [u8; IP_LEN] = ptr_at(ctx, ETH_LEN)?;
    let tcp_out: *mut [u8; TCP_LEN] = ptr_at(ctx, ETH_LEN + IP_LEN)?;
    // SAFETY: each pointer was bounds-checked just above.
    unsafe {
        (*eth).dst = client_mac;
        (*eth).src = our_mac;
        *ip_out = ip;
        *tcp_out = tcp;
    }
    Ok(Verdict::new(xdp_action::XDP_TX, counter))
}

/// `on_no_backend = "reject"`: a TCP packet gets a reset, a UDP datagram an
/// ICMP port unreachable, both from the VIP, so the client fails at once.
#[inline(always)]
pub fn no_backend(ctx: &XdpContext, pkt: &Packet, here: Here) -> Result<Verdict, Counter> {
    refuse(ctx, pkt, here, Refusal::NO_BACKEND)
}

/// `no_backend`'s answer, counted as `why` says.
#[inline(always)]
pub fn refuse(
    ctx: &XdpContext,
    pkt: &Packet,
    here: Here,
    why: Refusal,
) -> Result<Verdict, Counter> {
    let answered = if pkt.flow.proto == PROTO_TCP {
        tcp_reset(ctx, pkt, why.tcp, here)
    } else if plain_header(pkt) {
        permit(pkt, To::Client, here)
            .and_then(|()| icmp_error(ctx, pkt, pkt.flow.dst, Unreachable::Port, why.udp))
    } else {
        Err(why.silent)
    };
    answered.map_err(|c| if refused(c) { c } else { why.silent })
}

/// A packet with Don't Fragment set, too big for its next link (whose MTU
/// the FIB gave): answered like a router would, with ICMP "fragmentation
/// needed" from the VIP `vip` to the packet's sender, a client or (for its
/// reply) a backend. Without DF, or with IPv4 options, it is dropped: the
/// data plane does not fragment.
#[inline(always)]
pub fn frag_needed(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: [u8; 4],
    mtu: u16,
    to: To,
    here: Here,
) -> Result<Verdict, Counter> {
    // SAFETY: parse bounds-checked the IPv4 header.
    let dont_fragment = unsafe { (*pkt.ip).frag_off[0] } & 0x40 != 0;
    if !dont_fragment || !plain_header(pkt) {
        return Err(Counter::DropTooBig);
    }
    permit(pkt, to, here)?;
    icmp_error(ctx, pkt, vip, Unreachable::FragNeeded(mtu), Counter::FragNeeded)
        .map_err(|_| Counter::DropTooBig)
}

const ICMP_LEN: usize = 8;
/// What an ICMP error quotes: the datagram's IPv4 header and its first 8
/// bytes (RFC 792), here a 20-byte header and the start of TCP or UDP.
const QUOTE_LEN: usize = IP_LEN + 8;
/// The answer's frame: Ethernet, IPv4, ICMP, the quote.
const UNREACHABLE_LEN: usize = ETH_LEN + IP_LEN + ICMP_LEN + QUOTE_LEN;
const ICMP_DEST_UNREACH: u8 = 3;

/// The destination-unreachable codes the data plane sends.
#[derive(Clone, Copy)]
enum Unreachable {
    Port,
    /// Fragmentation needed and DF set, with the next hop's MTU (RFC 1191).
    FragNeeded(u16),
}

/// Whether `pkt` has a plain 20-byte IPv4 header, the only kind `icmp_error`
/// answers: checked before an answer takes from the budget.
#[inline(always)]
fn plain_header(pkt: &Packet) -> bool {
    // SAFETY: parse bounds-checked the IPv4 header.
    unsafe { (*pkt.ip).version_ihl == 0x45 }
}

/// Replaces a packet with the ICMP destination unreachable that `from`
/// sends its sender, quoting its IPv4 header and 8 bytes. Only plain 20-byte
/// IPv4 headers are answered.
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    pkt: &Packet,
    from: [u8; 4],
    what: Unreachable,
    counter: Counter,
) -> Result<Verdict, Counter> {
    // SAFETY: parse bounds-checked the IPv4 header.
    if unsafe { (*pkt.ip).version_ihl } != 0x45 {
        return Err(Counter::DropNoBackend);
    }
    let quoted: *const [u8; QUOTE_LEN] = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked just above; parse checked the Ethernet header.
    let (quote, sender_mac, our_mac) = unsafe { (*quoted, (*pkt.eth).src, (*pkt.eth).dst) };

    let mut frame = [0_u8; UNREACHABLE_LEN];
    frame[0..6].copy_from_slice(&sender_mac);
    frame[6..12].copy_from_slice(&our_mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = answer_ip_header(ICMP_LEN + QUOTE_LEN, PROTO_ICMP, false, from, pkt.flow.src);
    frame[ETH_LEN..ETH_LEN + IP_LEN].copy_from_slice(&ip);
    let mut icmp = [0_u8; ICMP_LEN + QUOTE_LEN];
    icmp[0] = ICMP_DEST_UNREACH;
    match what {
        Unreachable::Port => icmp[1] = 3,
        Unreachable::FragNeeded(mtu) => {
            icmp[1] = 4;
            icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
        }
    }
    icmp[ICMP_LEN..].copy_from_slice(&quote);
    let icmp_check = !csum::fold(word_sum(&icmp));
    icmp[2..4].copy_from_slice(&icmp_check.to_be_bytes());
    frame[ETH_LEN + IP_LEN..].copy_from_slice(&icmp);

    // Resize to the answer: grow at the head (XDP guarantees headroom), or
    // shrink at the tail; the original bytes were copied out above.
    let len = (ctx.data_end() - ctx.data()) as i32;
    let delta = UNREACHABLE_LEN as i32 - len;
    // SAFETY: resizes the frame; every pointer is derived again below.
    let resized = unsafe {
        match delta.cmp(&0) {
            Ordering::Greater => bpf_xdp_adjust_head(ctx.ctx, -delta),
            Ordering::Less => bpf_xdp_adjust_tail(ctx.ctx, delta),
            Ordering::Equal => 0,
        }
    };
    if resized != 0 {
        return Err(Counter::DropNoBackend);
    }
    let out: *mut [u8; UNREACHABLE_LEN] = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked just above.
    unsafe { *out = frame };
    Ok(Verdict::new(xdp_action::XDP_TX, counter))
}

/// The drop counter of a reset that is not sent (the packet was a reset).
#[inline(always)]
pub const fn counter_for_silence(counter: Counter) -> Counter {
    match counter {
        Counter::RejectTcp => Counter::DropNoBackend,
        Counter::RejectSnatExhausted => Counter::DropSnatExhausted,
        Counter::RejectBackendsFull => Counter::DropBackendsFull,
        _ => Counter::DropBackendDown,
    }
}
