//! Forwarding like a router: the next hop of the rewritten packet (a per-CPU
//! cache of FIB answers in front of `bpf_fib_lookup`), then XDP_TX or
//! XDP_REDIRECT; when the kernel has no neighbour entry yet, a slow path
//! through tc (`lb_neigh`) that resolves it.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    abi::{
        NEIGH_MARK_MAGIC, NEXTHOP_SLOTS, NO_TX_SLOT, NextHop, REVERSE_PATH_OFF,
        REVERSE_PATH_STRICT, cpu_slot, nexthop_slot,
    },
    addr::Addr,
    counter::Counter,
};

use crate::{
    Verdict,
    family::Family,
    maps::{LB_FIB_SCRATCH, LB_POLICY, LB_TX_PORTS, LB_TX_SLOTS},
    mem,
    nat::Side,
    parse::Packet,
    reject,
    select::Here,
};

pub const AF_INET: u8 = 2;

/// Where the packet goes: to `addr`, rewritten on `rewrite`'s side to
/// `addr:port` (NAT), or not rewritten at all (`None`: direct routing, the
/// frame goes to `addr`, which must be on one of our links).
pub struct Target<A> {
    pub rewrite: Option<Side>,
    pub addr: A,
    pub port: u16,
}

/// Rewrites the packet and sends it to its next hop. The next hop is looked
/// up for the packet as it will be after the rewrite, and before rewriting
/// it: a packet the FIB cannot forward is passed untouched, one too big for
/// the next link is answered ("fragmentation needed") or dropped.
#[inline(always)]
pub fn forward<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    target: &Target<F::Addr>,
    here: Here,
) -> Result<Verdict, Counter> {
    let (src, dst, sport, dport) = match target.rewrite {
        Some(Side::Destination) | None => (pkt.flow.src, target.addr, pkt.flow.sport, target.port),
        Some(Side::Source) => (target.addr, pkt.flow.dst, target.port, pkt.flow.dport),
    };
    let query = Query { src, dst, sport, dport, direct: target.rewrite.is_none() };
    let hop = match next_hop(ctx, pkt, &query, here)? {
        Hop::TooBig { mtu } => {
            // From the VIP: the flow's destination, or a reply's new source.
            let (vip, to) = match target.rewrite {
                Some(Side::Source) => (target.addr, reject::To::Backend),
                _ => (pkt.flow.dst, reject::To::Client),
            };
            return F::too_big(ctx, pkt, vip, mtu, to, here);
        }
        hop => hop,
    };
    if let Some(side) = target.rewrite {
        // SAFETY: pkt comes from parse on this frame (a later fragment's
        // null transport pointers are tested there), and nothing has
        // resized the frame since.
        unsafe { F::rewrite(pkt, side, target.addr, target.port) };
    }
    // SAFETY: pkt.eth was bounds-checked by parse.
    Ok(unsafe { send::<F>(pkt.eth.cast(), hop, here) })
}

/// What the FIB is asked: the packet's addresses and ports as it will leave.
pub struct Query<A = [u8; 4]> {
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    /// Direct routing: the frame must reach `dst` on one of our links.
    pub direct: bool,
}

/// Sends a rewritten frame to `hop`: XDP_TX back out of the interface it
/// came in on, XDP_REDIRECT to another of ours, or tc's slow path.
///
/// # Safety
/// `eth` points at a bounds-checked Ethernet header.
#[inline(always)]
pub unsafe fn send<F: Family>(eth: *mut u8, hop: Hop<F::Addr>, here: Here) -> Verdict {
    let hop = match hop {
        // SAFETY: this CPU's cache entry, written for this packet (see `Hop`).
        Hop::Resolved(hop) => unsafe { &*hop },
        Hop::NoNeighbour { ifindex, nexthop } => {
            // SAFETY: the caller guarantees the Ethernet header.
            return unsafe { F::slow_path(eth, ifindex, nexthop) };
        }
        // `next_hop`'s callers answer a packet too big before sending.
        Hop::TooBig { .. } => {
            return Verdict::new(xdp_action::XDP_DROP, Counter::DropTooBig);
        }
    };
    // SAFETY: the caller guarantees the Ethernet header.
    unsafe { write_macs(eth, hop) };
    if hop.ifindex == here.ingress {
        return Verdict::new(xdp_action::XDP_TX, Counter::Tx);
    }
    match LB_TX_PORTS.redirect(hop.tx_slot, 0) {
        Ok(action) => Verdict::new(action, Counter::Redirect),
        // The egress interface is not one of ours: let tc send it.
        // SAFETY: as for write_macs.
        Err(_) => unsafe { F::slow_path(eth, hop.ifindex, hop.via) },
    }
}

#[derive(Clone, Copy)]
pub enum Hop<A = [u8; 4]> {
    /// This CPU's next-hop cache entry that holds the route: only this CPU
    /// touches it, and XDP does not nest, so it stays as read for the
    /// packet. Pointed at rather than copied: a copy's many fields spill
    /// to the stack, and an IPv6 next hop's exceeded the program's 512 bytes.
    Resolved(*const NextHop<A>),
    /// The route is known but the kernel has no neighbour entry yet for
    /// `nexthop` (the destination or its gateway).
    NoNeighbour { ifindex: u32, nexthop: A },
    /// The packet is longer than the next link's MTU.
    TooBig { mtu: u16 },
}

/// The next hop towards the rewritten packet's destination: from this CPU's
/// cache while its epoch is current (a new epoch every `EPOCH_TICK_MS`),
/// else from `bpf_fib_lookup`, whose answer is cached. The cache is keyed
/// by destination address, so it assumes the route does not depend on the
/// source, ports or TOS (no policy routing, one ECMP path per destination
/// while an entry lives). The controller sizes the cache for every CPU the
/// machine can have: a CPU without an entry (`pass_fib_failed`) would mean
/// a map sized for another machine.
#[inline(always)]
pub fn next_hop<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    query: &Query<F::Addr>,
    here: Here,
) -> Result<Hop<F::Addr>, Counter> {
    let (direct, dst) = (query.direct, query.dst);
    let epoch = here.epoch;
    let cached = F::nexthops()
        .get_ptr_mut(cpu_slot(here.cpu, NEXTHOP_SLOTS, nexthop_slot(dst)))
        .ok_or(Counter::PassFibFailed)?;
    // The largest length the FIB already accepted for this destination.
    let mut max_len = 0;
    // SAFETY: this CPU's slot, only touched by this CPU; XDP does not nest.
    let entry = unsafe { &*cached };
    if entry.addr().same(&dst) && entry.epoch == epoch {
        if pkt.tot_len <= entry.max_len {
            return resolved(cached, direct);
        }
        max_len = entry.max_len;
    }

    let (rc, params) = fib_lookup(ctx, pkt, query, pkt.tot_len, here)?;
    let nexthop = F::fib_nexthop(params);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            remember::<F>(cached, params, dst, max_len.max(pkt.tot_len), epoch);
            resolved(cached, direct)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH if direct && !nexthop.same(&dst) => {
            Err(Counter::DropDsrNotOnLink)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Hop::NoNeighbour { ifindex: params.ifindex, nexthop }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // SAFETY: the union's member the FIB sets on this answer.
            Ok(Hop::TooBig { mtu: unsafe { params.__bindgen_anon_1.mtu_result } })
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => Err(Counter::PassLocal),
        _ => Err(Counter::PassFibFailed),
    }
}

/// Asks the FIB for the route of a packet like `pkt` as `query` describes
/// it, `tot_len` long (0: no MTU check), arriving here. The parameters
/// live in this CPU's scratch slot, not on the stack: BPF programs have
/// 512 bytes of stack, and the answers' buffers take most of it.
#[inline(always)]
fn fib_lookup<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    query: &Query<F::Addr>,
    tot_len: u16,
    here: Here,
) -> Result<(u32, &'static FibParams), Counter> {
    let params = LB_FIB_SCRATCH.get_ptr_mut(0).ok_or(Counter::PassFibFailed)?;
    // SAFETY: this CPU's slot; XDP does not nest on a CPU, and the
    // reference does not outlive the packet.
    let params = unsafe { &mut *params };
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    *params = unsafe { core::mem::zeroed() };
    params.l4_protocol = pkt.flow.proto;
    params.sport = query.sport.to_be();
    params.dport = query.dport.to_be();
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = here.ingress;
    F::fib_query(params, pkt, query);
    // SAFETY: params is a live, correctly sized bpf_fib_lookup.
    // A negative errno becomes a value no BPF_FIB_LKUP_RET_* has: a failure.
    #[allow(clippy::cast_sign_loss)]
    let rc = unsafe {
        bpf_fib_lookup(ctx.as_ptr(), core::ptr::from_mut(params), size_of::<FibParams>() as i32, 0)
    } as u32;
    Ok((rc, params))
}

/// A successful FIB answer for `dst`, kept in this CPU's cache slot.
#[inline(always)]
fn remember<F: Family>(
    cached: *mut NextHop<F::Addr>,
    params: &FibParams,
    dst: F::Addr,
    max_len: u16,
    epoch: u64,
) {
    // SAFETY: copied out at once.
    let tx_slot = unsafe { LB_TX_SLOTS.get(params.ifindex).copied() }.unwrap_or(NO_TX_SLOT);
    // SAFETY: this CPU's slot, only touched by this CPU; XDP does not nest.
    unsafe {
        *cached = NextHop {
            addr: dst,
            ifindex: params.ifindex,
            tx_slot,
            max_len,
            _pad: 0,
            smac: params.smac,
            dmac: params.dmac,
            via: F::fib_nexthop(params),
            epoch,
        };
    }
}

/// The reverse-path check (`abi::Policy::reverse_path`, Linux's
/// `rp_filter`): whether the packet could have come from `src` (its source;
/// for an ICMP error, the host the quoted packet was going to). Strict: the
/// route back to `src` must leave by the interface the packet arrived on;
/// loose: there must be a route back. Either way `src` may not be an
/// address of the load balancer. The route comes from the next-hop cache
/// (the one packets to `src` use), else from the FIB, whose answer is
/// cached.
#[inline(always)]
pub fn arrived_from<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    src: F::Addr,
    here: Here,
) -> Result<(), Counter> {
    let mode = LB_POLICY.get(0).map_or(REVERSE_PATH_STRICT, |p| p.reverse_path);
    if mode == REVERSE_PATH_OFF {
        return Ok(());
    }
    let cached = F::nexthops().get_ptr_mut(cpu_slot(here.cpu, NEXTHOP_SLOTS, nexthop_slot(src)));
    let mut egress = None;
    if let Some(entry) = cached {
        // SAFETY: this CPU's slot, only touched by this CPU; XDP does not nest.
        let entry = unsafe { &*entry };
        if entry.addr().same(&src) && entry.epoch == here.epoch {
            egress = Some(entry.ifindex);
        }
    }
    let egress = if let Some(ifindex) = egress {
        ifindex
    } else {
        let back = Query {
            src: pkt.flow.dst,
            dst: src,
            sport: pkt.flow.dport,
            dport: pkt.flow.sport,
            direct: false,
        };
        // Length 0: no MTU check, and the cached entry promises none.
        match fib_lookup(ctx, pkt, &back, 0, here)? {
            (BPF_FIB_LKUP_RET_SUCCESS, params) => {
                if let Some(entry) = cached {
                    remember::<F>(entry, params, src, 0, here.epoch);
                }
                params.ifindex
            }
            (BPF_FIB_LKUP_RET_NO_NEIGH, params) => params.ifindex,
            // Forwarding is off on the interface: nothing of ours can
            // work, and the kernel says why better than a drop would.
            (BPF_FIB_LKUP_RET_FWD_DISABLED, _) => return Err(Counter::PassFibFailed),
            // Local (NOT_FWDED), unreachable, prohibited, blackhole.
            _ => return Err(Counter::DropReversePath),
        }
    };
    if mode == REVERSE_PATH_STRICT && egress != here.ingress {
        return Err(Counter::DropReversePath);
    }
    Ok(())
}

/// The next hop's MAC addresses into the Ethernet header, as four word
/// stores instead of twelve byte stores.
///
/// # Safety
/// `eth` points at a bounds-checked Ethernet header.
#[inline(always)]
unsafe fn write_macs<A>(eth: *mut u8, hop: &NextHop<A>) {
    let [d0, d1, d2, d3, d4, d5] = hop.dmac;
    let [s0, s1, s2, s3, s4, s5] = hop.smac;
    // SAFETY: the caller guarantees the 14 bytes.
    unsafe {
        mem::store32::<0>(eth, u32::from_ne_bytes([d0, d1, d2, d3]));
        mem::store16::<4>(eth, u16::from_ne_bytes([d4, d5]));
        mem::store16::<6>(eth, u16::from_ne_bytes([s0, s1]));
        mem::store32::<8>(eth, u32::from_ne_bytes([s2, s3, s4, s5]));
    }
}

/// A resolved next hop, unless direct routing would send the frame to a
/// gateway.
#[inline(always)]
fn resolved<A: Addr>(hop: *const NextHop<A>, direct: bool) -> Result<Hop<A>, Counter> {
    // SAFETY: this CPU's cache entry (see `Hop`).
    if direct && unsafe { !(*hop).via().same(&(*hop).addr()) } {
        return Err(Counter::DropDsrNotOnLink);
    }
    Ok(Hop::Resolved(hop))
}

/// Hands a rewritten packet to tc ingress (`lb_neigh`), marked in place of
/// its MAC addresses with the egress interface and next hop
/// (`abi::NeighMark`); `bpf_redirect_neigh()` there resolves the neighbour
/// and writes the real addresses.
///
/// # Safety
/// `eth` points at a bounds-checked Ethernet header.
#[inline(always)]
pub unsafe fn slow_path_v4(eth: *mut u8, ifindex: u32, nexthop: [u8; 4]) -> Verdict {
    // SAFETY: the caller guarantees the 14 bytes; the mark takes 12.
    unsafe {
        mem::store32::<0>(eth, NEIGH_MARK_MAGIC);
        mem::store32::<4>(eth, ifindex);
        mem::store32::<8>(eth, u32::from_ne_bytes(nexthop));
    }
    Verdict::new(xdp_action::XDP_PASS, Counter::SlowPathNeigh)
}
