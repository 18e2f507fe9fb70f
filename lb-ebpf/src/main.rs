//! The load balancer's data plane: one XDP program (`lb_xdp`) that does all
//! the work, and one tc ingress program (`lb_neigh`) for the rare packet whose
//! next hop the kernel has not resolved yet.
#![no_std]
#![no_main]
// Inline assembly for the atomic fetch-add of the round-robin counter.
#![feature(asm_experimental_arch)]
// BPF is a 64-bit target, and every length cast to the helpers' `i32` is a
// frame's or a header's (under 64 KiB): the 32-bit wrap cannot happen.
#![allow(clippy::cast_possible_wrap)]
// A mask is one instruction; the program says which bits it tests.
#![allow(clippy::verbose_bit_mask)]

mod conntrack;
mod family;
mod frag;
mod fullnat;
mod fwd;
mod handshake;
mod icmp;
mod maps;
mod mem;
mod nat;
mod parse;
mod persist;
mod reject;
mod select;
mod trace;
mod v6;

use aya_ebpf::{
    bindings::{
        TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_redir_neigh,
        bpf_redir_neigh__bindgen_ty_1, xdp_action,
    },
    helpers::generated::bpf_redirect_neigh,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    abi::{
        ADDR_BACKEND, ADDR_REAL, ADDR_VIP, BACKEND_DOWN, BACKEND_DSR, BACKEND_FULLNAT,
        BACKEND_IN_USE, NEIGH_MARK_MAGIC, NEIGH_MARK6_MAGIC, NEIGH6_SLOTS, NeighMark, PROTO_TCP,
        SVC_REJECT, SVC_SOURCES, TCP_ACK, TCP_SYN, neigh6_tag,
    },
    counter::{Counter, Kind},
    trace::{TRACE_NEW_FLOW, TRACE_NO_ID, TRACE_REPLY},
};

use crate::{
    family::{Family, V4},
    fwd::Target,
    maps::{LB_BE_STATS, LB_COUNTERS, LB_NEIGH6, LB_PROGS, LB_SVC_STATS},
    nat::Side,
    parse::{Frag, Headers, Packet},
    select::{Here, Known},
    v6::V6,
};

/// What the program answers, and the counter that says why.
pub struct Verdict {
    pub action: u32,
    pub counter: Counter,
    /// Where the packet went, for the trace (and nothing else).
    pub placed: Placed,
}

/// The service and backend a packet was forwarded to or replied from, as
/// the trace tells it (`lb_common::trace::TraceEvent`).
#[derive(Clone, Copy)]
pub struct Placed {
    pub service_id: u32,
    pub backend_id: u32,
    /// `TRACE_NEW_FLOW`, `TRACE_REPLY`.
    pub flags: u8,
}

impl Placed {
    const NOWHERE: Self = Self { service_id: TRACE_NO_ID, backend_id: TRACE_NO_ID, flags: 0 };
}

impl Verdict {
    pub const fn new(action: u32, counter: Counter) -> Self {
        Self { action, counter, placed: Placed::NOWHERE }
    }

    /// Whether the packet went on (false: answered instead, "fragmentation
    /// needed"): only then is there traffic to account and a fragment
    /// decision to remember.
    fn forwarded(&self) -> bool {
        self.counter != Counter::FragNeeded
    }

    /// The verdict for a packet that stops at `counter` (not forwarded by us).
    fn stopped(counter: Counter) -> Self {
        let action = match counter.kind() {
            Kind::Dropped => xdp_action::XDP_DROP,
            Kind::Passed | Kind::Forwarded | Kind::Answered => xdp_action::XDP_PASS,
        };
        Self::new(action, counter)
    }
}

// Inlined into the entry point the macro generates: left to LLVM, a body
// this size becomes a BPF-to-BPF call (measured: +15.5 ns an established
// packet, +20 a reply, +9 a packet not ours).
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    #[cfg(feature = "upgrade-marker")]
    // SAFETY: writes a scratch register and nothing else.
    unsafe {
        core::arch::asm!("{0} = 0", out(reg) _);
    }
    if trace::on() {
        trace::capture(&ctx);
    }
    let verdict = process::<V4>(&ctx).unwrap_or_else(Verdict::stopped);
    if verdict.counter == Counter::PassNotIpv4 && parse::is_ipv6(&ctx) {
        // SAFETY: the context is this program's; the call does not return
        // unless `lb_progs` holds no program (IPv6 then goes to the kernel).
        unsafe { LB_PROGS.tail_call(&ctx, 0) };
    }
    traced(&ctx, &verdict)
}

/// IPv6, tail called by `lb_xdp` (its own program: its own stack and its
/// own verification, and nothing added to an IPv4 packet's path).
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_xdp6(ctx: XdpContext) -> u32 {
    // `lb_xdp` captured the packet if the trace was on (see `trace::emit`
    // for a trace that goes on in between).
    traced(&ctx, &process::<V6>(&ctx).unwrap_or_else(Verdict::stopped))
}

/// IPv6 answers (resets, ICMPv6 errors), tail called by `lb_xdp6` (see
/// `v6::answer`).
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_answer6(ctx: XdpContext) -> u32 {
    let verdict = v6::answer::answer(&ctx).unwrap_or_else(Verdict::stopped);
    traced(&ctx, &verdict)
}

/// IPv6 errors about our flows, translated; tail called by `lb_xdp6` (see
/// `v6::icmp`).
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_icmp6(ctx: XdpContext) -> u32 {
    let verdict = v6::icmp::translate(&ctx).unwrap_or_else(Verdict::stopped);
    traced(&ctx, &verdict)
}

/// IPv4 answers for `lb_fnat`, which has no stack to spare for them (see
/// `reject::Request`).
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_answer(ctx: XdpContext) -> u32 {
    traced(&ctx, &reject::answer(&ctx).unwrap_or_else(Verdict::stopped))
}

/// Full NAT, tail called by `lb_xdp` for a full-NAT backend's packets
/// (see `fullnat`).
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_fnat(ctx: XdpContext) -> u32 {
    traced(&ctx, &fullnat::run::<V4>(&ctx).unwrap_or_else(Verdict::stopped))
}

/// Full NAT for IPv6, tail called by `lb_xdp6`.
#[xdp]
#[inline(always)]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_fnat6(ctx: XdpContext) -> u32 {
    traced(&ctx, &fullnat::run::<V6>(&ctx).unwrap_or_else(Verdict::stopped))
}

/// Counts the verdict, tells the trace if it is on, and answers the action.
/// The trace's word is read again here rather than kept from the capture:
/// a value kept across `process` splits every state the verifier keeps in
/// two (measured: `lb_xdp6` then passes its 1M-instruction limit), and a
/// second read of a hot cache line costs nothing measurable.
#[inline(always)]
fn traced(ctx: &XdpContext, verdict: &Verdict) -> u32 {
    if trace::on() {
        trace::emit(ctx, verdict);
    }
    count(verdict)
}

/// Counts the verdict's counter and answers its action.
#[inline(always)]
fn count(verdict: &Verdict) -> u32 {
    if let Some(count) = LB_COUNTERS.get_ptr_mut(verdict.counter as u32) {
        // SAFETY: per-CPU slot, XDP does not nest on a CPU.
        unsafe { *count += 1 };
    }
    verdict.action
}

#[inline(always)]
fn process<F: Family>(ctx: &XdpContext) -> Result<Verdict, Counter> {
    let ip = F::ip(ctx)?;
    // Most packets that are not ours leave here, before the ports are read.
    let dst_flags = select::addr_flags::<F>(ip.dst);
    let to_vip = dst_flags & ADDR_VIP != 0;
    let src_flags = select::addr_flags::<F>(ip.src);
    if F::ICMP_BEFORE_SOURCE_CHECKS && ip.proto == F::ICMP {
        return F::icmp(ctx, &ip, to_vip);
    }
    if to_vip {
        source_could_be_a_client(&ip, src_flags)?;
    }
    if ip.proto == F::ICMP {
        return F::icmp(ctx, &ip, to_vip);
    }
    let from_real = src_flags & ADDR_REAL != 0;
    if !to_vip && !from_real {
        return Err(if ip.short_header { Counter::PassMalformed } else { Counter::PassNotService });
    }
    let pkt = F::transport(ctx, &ip).map_err(|c| not_ours_after_all(c, &ip, from_real))?;
    // A router forwards only frames sent to it, and no connection sends
    // these flags: refused once the packet is known to be ours (a
    // backend's own broadcasts, say, are the kernel's).
    // SAFETY: nothing has resized the frame.
    let link_group = unsafe { parse::to_link_group(&ip) };
    let here = Here::read(ctx);
    if pkt.frag == Frag::Later {
        return frag::follow(ctx, &pkt, (to_vip, from_real, link_group), here);
    }
    let bad_flags = pkt.flow.proto == PROTO_TCP && !parse::tcp_flags_valid(pkt.tcp_flags);
    if (link_group || bad_flags) && ours(&pkt, to_vip, from_real) {
        return Err(if link_group { Counter::DropLinkGroup } else { Counter::DropTcpFlags });
    }
    // A backend's own service endpoint sending to a VIP: see the counter.
    if to_vip && from_real && select::real::<F>(&pkt.flow).is_some() {
        // SAFETY: the value is not read.
        if unsafe { F::vips().get(pkt.flow.dst).is_some() } {
            return Err(Counter::DropBackendPortToVip);
        }
    }
    if to_vip {
        frag::first_to_kernel(ctx, &pkt, here)?;
    }
    if to_vip && let Some(verdict) = to_backend(ctx, &pkt, here)? {
        return Ok(verdict);
    }
    if from_real && let Some(verdict) = to_client(ctx, &pkt, dst_flags, here)? {
        return Ok(verdict);
    }
    Err(Counter::PassNotService)
}

/// Whether the source of a packet the prefilter takes for one to a VIP
/// could be a client: not a martian (RFC 1812's 0/8, 127/8, and 224/4 and
/// 240/4: multicast, reserved, broadcast), and not a VIP (the prefilter's
/// flag, confirmed by the exact table).
#[inline(always)]
fn source_could_be_a_client<F: Family>(ip: &Headers<F>, src_flags: u8) -> Result<(), Counter> {
    let src = ip.src;
    if F::martian(&src) {
        return Err(not_ours_after_all(Counter::DropMartianSource, ip, false));
    }
    // SAFETY: the value is not read.
    if src_flags & ADDR_VIP != 0 && unsafe { F::vips().get(src).is_some() } {
        return Err(Counter::DropSourceVip);
    }
    Ok(())
}

/// Whether `pkt` is ours for sure: to a VIP (the exact table) or from a
/// backend's service endpoint. Only refusals ask.
#[inline(always)]
fn ours<F: Family>(pkt: &Packet<F>, to_vip: bool, from_real: bool) -> bool {
    // SAFETY: the value is not read.
    (to_vip && unsafe { F::vips().get(pkt.flow.dst).is_some() })
        || (from_real && select::real::<F>(&pkt.flow).is_some())
}

/// `drop`, the verdict on a packet the address prefilter took for ours,
/// when it is: to a VIP or from a backend's address, each confirmed by its
/// exact table (the ports, unread or unreadable here, cannot say more).
/// Otherwise the packet is someone else's whose address shares a VIP's or
/// a backend's slot, and goes to the kernel as it is. Only refusals pay for
/// the exact lookups.
#[inline(always)]
fn not_ours_after_all<F: Family>(drop: Counter, ip: &Headers<F>, from_real: bool) -> Counter {
    if !matches!(drop, Counter::DropMalformed | Counter::DropMartianSource) {
        return drop;
    }
    // SAFETY: the values are not read.
    let ours = unsafe {
        F::vips().get(ip.dst).is_some() || (from_real && F::backend_addrs().get(ip.src).is_some())
    };
    if ours {
        return drop;
    }
    if drop == Counter::DropMalformed { Counter::PassMalformed } else { Counter::PassNotService }
}

/// A backend's reply: the source goes back to the VIP. `Ok(None)` when the
/// source is not a backend.
#[inline(always)]
fn to_client<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    dst_flags: u8,
    here: Here,
) -> Result<Option<Verdict>, Counter> {
    let Some(real) = select::real::<F>(&pkt.flow) else {
        return Ok(None);
    };
    // Before the reply may move its connection's state (a forged FIN or RST).
    fwd::arrived_from(ctx, pkt, pkt.flow.src, here)?;
    if F::backends().get(real.backend_id).is_some_and(|b| b.flags & BACKEND_FULLNAT != 0) {
        let request = fullnat::Request {
            to_backend: 0,
            service_id: real.service_id,
            backend_id: real.backend_id,
            new_flow: 0,
        };
        return fullnat::request::<F>(ctx, request).map(Some);
    }
    reply_to_ours(pkt, dst_flags, &real, here)?;
    expire_check(pkt)?;
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && pkt.flow.proto == PROTO_TCP {
        handshake::answered(ctx, pkt, &real, here);
    }
    select::backend_closes::<F>(&pkt.flow, &real, pkt.tcp_flags, here);
    let target = Target { rewrite: Some(Side::Source), addr: real.vip, port: real.vport };
    let mut verdict = fwd::forward(ctx, pkt, &target, here)?;
    if !verdict.forwarded() {
        return Ok(Some(verdict));
    }
    verdict.placed =
        Placed { service_id: real.service_id, backend_id: real.backend_id, flags: TRACE_REPLY };
    frag::remember(pkt, &target, (real.service_id, real.backend_id), here);
    select::account(&LB_SVC_STATS, real.service_id, pkt.tot_len, false, false);
    select::account(&LB_BE_STATS, real.backend_id, pkt.tot_len, false, false);
    Ok(Some(verdict))
}

/// A backend's reply goes back to a client, never to one of ours: to a
/// backend's address (NAT or direct routing) it would be rewritten into a
/// packet "from the VIP" that anyone on the backend side could have a
/// backend receive. Checked where it arrived from first (a reply on the
/// wrong side is `drop_reverse_path`), then before it may move any state. An
/// ordinary reply pays one prefilter array read; only an address flagged
/// `ADDR_BACKEND` (a direct-routing backend's included: it sends no
/// replies through us, so its address is rarely a reply's destination)
/// pays the exact lookup. One exception: a backend that is itself a client
/// of the VIP (from an ephemeral port) gets the replies of the flow it
/// opened, which the connection table (or, in the handshake, the flow's
/// record) vouches for. A VIP never gets here:
/// `process` refuses a backend's service endpoint sending to a VIP first
/// (`drop_backend_port_to_vip`), and a destination of the load balancer's
/// own is the kernel's (`pass_local`).
#[inline(always)]
fn reply_to_ours<F: Family>(
    pkt: &Packet<F>,
    dst_flags: u8,
    real: &select::Reply<F::Addr>,
    here: Here,
) -> Result<(), Counter> {
    let dst = pkt.flow.dst;
    // SAFETY: the value is not read.
    if dst_flags & ADDR_BACKEND == 0 || unsafe { F::backend_addrs().get(dst).is_none() } {
        return Ok(());
    }
    // The flow as the backend-client sent it, and whether it is on this backend.
    let opened = real.client_flow(&pkt.flow);
    // SAFETY: copied out at once.
    match conntrack::find::<F>(&opened).map(|slot| unsafe { (*slot).conn() }) {
        // A live entry, as the data plane counts one (an expired entry is
        // absent), placed on this very backend of this service.
        Some(conn)
            if conn.backend_id == real.backend_id
                && conn.service_id == real.service_id
                && !select::conn_expired(&conn, here) =>
        {
            Ok(())
        }
        // A flow still in its handshake (the SYN-ACK itself) has only its record.
        _ if handshake::placed_on::<F>(&opened, here) == Some(real.backend_id) => Ok(()),
        _ => Err(Counter::DropReplyToOurs),
    }
}

/// TTL <= 1: the kernel must answer (ICMP time exceeded), not us.
#[inline(always)]
fn expire_check<F: Family>(pkt: &Packet<F>) -> Result<(), Counter> {
    if pkt.ttl <= 1 { Err(Counter::PassTtlExpired) } else { Ok(()) }
}

/// A client packet to a VIP: the connection table first (an established flow
/// needs nothing else), then the service and its scheduler. `Ok(None)` when
/// the destination is not a service after all.
#[inline(always)]
fn to_backend<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    here: Here,
) -> Result<Option<Verdict>, Counter> {
    let tcp = pkt.flow.proto == PROTO_TCP;
    let opening = tcp && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // The flow's slot in this CPU's flow cache: read by the lookup, written
    // when the flow is recorded.
    let cached = select::flow_cache_entry::<F>(&pkt.flow, here);
    let known = if opening {
        // A SYN asks no table: it is placed below and leaves a handshake
        // record, which its ACK turns into an entry (see `handshake`).
        fwd::arrived_from(ctx, pkt, pkt.flow.src, here)?;
        Known::Unknown
    } else {
        let check_source = || fwd::arrived_from(ctx, pkt, pkt.flow.src, here);
        match select::established(&pkt.flow, pkt.tcp_flags, here, cached, check_source)? {
            Known::Unknown => handshake::settle(ctx, pkt, here, cached, None),
            Known::Superseded(service_id, backend_id) => {
                handshake::settle(ctx, pkt, here, cached, Some((service_id, backend_id)))
            }
            known => known,
        }
    };
    let (service_id, choice) = match known {
        Known::Flow(service_id, choice)
            if choice.backend().is_some_and(|b| b.flags & BACKEND_DOWN == 0) =>
        {
            expire_check(pkt)?;
            (service_id, choice)
        }
        // Its backend is DOWN or gone: a TCP client learns at once (its
        // connection cannot go on elsewhere); a UDP flow is placed anew.
        Known::Flow(..) if tcp => {
            return F::tcp_reset(ctx, pkt, Counter::RstBackendDown, here).map(Some);
        }
        Known::Gone if tcp => {
            return F::tcp_reset(ctx, pkt, Counter::RstBackendGone, here).map(Some);
        }
        Known::Flow(..) | Known::Gone | Known::Unknown | Known::Superseded(..) => {
            let Some(service) = select::service::<F>(&pkt.flow) else {
                return Ok(None);
            };
            // Every packet of the service that no entry or record carries:
            // those only hold sources that passed here (their address is
            // their key), so each packet from elsewhere is refused.
            if service.flags & SVC_SOURCES != 0 && !F::allowed(service.id, pkt.flow.src) {
                return Err(Counter::DropSourceNotAllowed);
            }
            // Before placing: an expiring packet must not create a flow.
            expire_check(pkt)?;
            // A TCP packet that is not a SYN, with neither entry nor record
            // (its entry evicted or expired, its flow met mid-way on
            // another node): placed by its hash, recorded nowhere.
            let placed = if opening || !tcp {
                handshake::open(&pkt.flow, &service, here)
            } else {
                select::pick::<F>(&pkt.flow, &service, select::Turn::Hashed)
            };
            match placed {
                Ok(choice) => (service.id, choice),
                Err(Counter::DropNoBackend) if service.flags & SVC_REJECT != 0 => {
                    return F::no_backend(ctx, pkt, here).map(Some);
                }
                // Every usable backend full (`select::all_full`): refused
                // by the answer program, apart from the path above.
                Err(Counter::RejectBackendsFull) => {
                    let (kind, counter) = (reject::FULL, Counter::RejectBackendsFull);
                    let to = reject::To::Client;
                    return F::answer_apart(ctx, kind, counter, pkt.flow.dst, 0, to).map(Some);
                }
                Err(counter) => return Err(counter),
            }
        }
    };
    // Direct routing leaves the IP packet as it is: only the frame goes to
    // the backend, which holds the VIP itself and answers the client.
    // Read again (see `Choice`): removed since it was chosen, it is no target.
    let backend =
        choice.backend().filter(|b| b.flags & BACKEND_IN_USE != 0).ok_or(Counter::DropNoBackend)?;
    if backend.flags & BACKEND_FULLNAT != 0 {
        let request = fullnat::Request {
            to_backend: 1,
            service_id,
            backend_id: choice.id,
            new_flow: u32::from(choice.new_flow),
        };
        return fullnat::request::<F>(ctx, request).map(Some);
    }
    let dsr = backend.flags & BACKEND_DSR != 0;
    let target = Target {
        rewrite: (!dsr).then_some(Side::Destination),
        addr: backend.addr(),
        port: backend.port,
    };
    let mut verdict = fwd::forward(ctx, pkt, &target, here)?;
    if !verdict.forwarded() {
        return Ok(Some(verdict));
    }
    verdict.placed = Placed {
        service_id,
        backend_id: choice.id,
        flags: if choice.new_flow { TRACE_NEW_FLOW } else { 0 },
    };
    frag::remember(pkt, &target, (service_id, choice.id), here);
    select::account(&LB_SVC_STATS, service_id, pkt.tot_len, true, choice.new_flow);
    select::account(&LB_BE_STATS, choice.id, pkt.tot_len, true, choice.new_flow);
    Ok(Some(verdict))
}

/// tc ingress: finishes packets that `lb_xdp` (`lb_xdp6`) rewrote but could
/// not send for want of a neighbour entry. Everything else goes on untouched.
#[classifier]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_neigh(ctx: TcContext) -> i32 {
    // tc runs with the Ethernet header pushed back in front of `data`. Only
    // whole IP frames: the XDP programs mark nothing else, and drop a marked
    // frame only once they have a whole Ethernet header to look at.
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + parse::ETH_LEN > end {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: bounds checked just above.
    let tag = unsafe { (data as *const NeighMark).read_unaligned() };
    // SAFETY: as above; the EtherType follows the 12 bytes of the mark.
    let ethertype = unsafe { ((data + size_of::<NeighMark>()) as *const [u8; 2]).read_unaligned() };
    // The next hop XDP's FIB lookup chose, not the packet's destination: with
    // direct routing that is the VIP, which would route back to us.
    let mut params = match (tag.magic, ethertype) {
        (NEIGH_MARK_MAGIC, [0x08, 0x00]) => bpf_redir_neigh {
            nh_family: u32::from(fwd::AF_INET),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                ipv4_nh: u32::from_ne_bytes(tag.nexthop),
            },
        },
        (NEIGH_MARK6_MAGIC, [0x86, 0xdd]) => {
            let tag = u32::from_ne_bytes(tag.nexthop);
            let Some(nexthop) = LB_NEIGH6.get(tag & (NEIGH6_SLOTS - 1)).copied() else {
                return TC_ACT_SHOT;
            };
            // Another frame's next hop took the slot since: dropped, as
            // below, rather than sent where it does not belong.
            if neigh6_tag(&nexthop) != tag {
                return TC_ACT_SHOT;
            }
            bpf_redir_neigh {
                nh_family: u32::from(v6::AF_INET6),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    // SAFETY: sixteen bytes are four words, in memory order.
                    ipv6_nh: unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(nexthop) },
                },
            }
        }
        _ => return TC_ACT_UNSPEC,
    };
    // SAFETY: params is a live, correctly sized bpf_redir_neigh.
    let rc = unsafe {
        bpf_redirect_neigh(tag.ifindex, &raw mut params, size_of::<bpf_redir_neigh>() as i32, 0)
    };
    // On failure drop: the packet is already rewritten (a reply with the
    // VIP as source), so the stack would only drop it as a martian or route
    // it again with its TTL decremented twice.
    if rc == i64::from(TC_ACT_REDIRECT) { TC_ACT_REDIRECT } else { TC_ACT_SHOT }
}

/// The data plane's clock for the controller: never attached, run by
/// `BPF_PROG_TEST_RUN` on a scratch frame, it writes the current epoch
/// (`select::epoch_now`, the same code `lb_xdp` runs) into the frame's first
/// 8 bytes. The controller times connection entries out by it, so the two
/// can never disagree on what "now" is.
#[xdp]
// The context by value: the signature aya's program macros require.
#[allow(clippy::needless_pass_by_value)]
pub fn lb_clock(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + size_of::<u64>() > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: bounds checked just above; the frame is the caller's scratch.
    unsafe { (data as *mut u64).write_unaligned(select::epoch_now()) };
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
