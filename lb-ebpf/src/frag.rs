//! Fragmented datagrams, to a VIP and from a backend. The first fragment
//! carries the ports: it is placed and rewritten like a whole packet (the
//! transport checksum it carries covers the whole datagram, and is updated
//! the same way), and leaves its decision in `lb_frags`, keyed by what ties
//! a datagram's fragments together (source, destination, protocol, IP id).
//! The later fragments, which carry no ports, follow that decision: their
//! address is rewritten (IPv4 checksum only) and they go where the first
//! went. Cilium's XDP load balancer keeps such a map too.
//!
//! A later fragment that arrives before its first finds nothing, and XDP
//! cannot hold a frame back. For UDP (IPv4 and IPv6 alike) the whole
//! datagram goes to the kernel instead: the early fragment leaves a
//! `FRAG_KERNEL` entry, so the ones after it and the first (which looks
//! here before it is placed) follow it there (`pass_fragment_to_kernel`).
//! The kernel reassembles it (bounded by its own `ipfrag_high_thresh` and
//! `ipfrag_time`, IPv6's `ip6frag_*`) and, the VIP being a local address,
//! delivers it to the controller's socket on VIP:port, which places it as
//! this program would and sends it on (lb-ctl `reassembled`).
//! A TCP segment cannot take that road: the kernel would answer it with a
//! reset. Its early fragment is dropped (`drop_fragment`); the rest go
//! through, and the backend's reassembly drops the incomplete segment.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{
        FRAG_DIRECT, FRAG_KERNEL, FRAG_TIMEOUT_TICKS, FRAG_TO_BACKEND, FRAG_TO_CLIENT, FragEntry,
        FragKey, PROTO_UDP, expired,
    },
    counter::Counter,
};

use crate::{
    Verdict,
    family::{Family, V4},
    fwd::{self, Target},
    maps::{LB_BE_STATS, LB_SVC_STATS},
    nat::Side,
    parse::{Frag, Packet},
    select::{self, Here},
};

/// What ties an IPv4 packet's fragments together.
#[inline(always)]
pub fn key_v4(pkt: &Packet<V4>) -> FragKey {
    FragKey { src: pkt.flow.src, dst: pkt.flow.dst, id: pkt.id, proto: pkt.flow.proto, _pad: 0 }
}

/// After a first fragment went to `target` (for service and backend ids
/// `ids`): the datagram's later fragments follow it. Nothing for a whole
/// packet.
#[inline(always)]
pub fn remember<F: Family>(pkt: &Packet<F>, target: &Target<F::Addr>, ids: (u32, u32), here: Here) {
    if pkt.frag != Frag::First {
        return;
    }
    let kind = match target.rewrite {
        Some(Side::Destination) => FRAG_TO_BACKEND,
        Some(Side::Source) => FRAG_TO_CLIENT,
        None => FRAG_DIRECT,
    };
    let entry = FragEntry {
        addr: target.addr,
        kind,
        service_id: ids.0,
        backend_id: ids.1,
        epoch: here.epoch as u32,
    };
    // A full table evicts its least recently used entry.
    let _ = F::frags().insert(F::frag_key(pkt), entry, 0);
}

/// `key`'s entry in `lb_frags`, unless it is stale.
#[inline(always)]
fn live_entry<F: Family>(key: &F::FragKey, here: Here) -> Option<FragEntry<F::Addr>> {
    // SAFETY: copied out at once.
    unsafe { F::frags().get(key).copied() }
        .filter(|e| !expired(here.epoch as u32, e.epoch, FRAG_TIMEOUT_TICKS))
}

/// A first fragment to a VIP, before it is placed: its datagram goes to the
/// kernel if a later fragment came first (`FRAG_KERNEL`), so the kernel has
/// every piece to reassemble. Whole packets never get here.
#[inline(always)]
pub fn first_to_kernel<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    here: Here,
) -> Result<(), Counter> {
    if pkt.frag != Frag::First || pkt.flow.proto != PROTO_UDP {
        return Ok(());
    }
    match live_entry::<F>(&F::frag_key(pkt), here) {
        Some(entry) if entry.kind == FRAG_KERNEL => {
            // The kernel's path has no edge checks of its own: they are made here.
            fwd::arrived_from(ctx, pkt, pkt.flow.src, here)?;
            Err(Counter::PassFragmentToKernel)
        }
        _ => Ok(()),
    }
}

/// A later fragment: where its first fragment went, if that was ours.
/// Its second argument: the address prefilter's word on the packet (to a
/// VIP, from a backend's address) and whether its frame went to a
/// link-layer group address.
#[inline(always)]
pub fn follow<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    (to_vip, from_real, link_group): (bool, bool, bool),
    here: Here,
) -> Result<Verdict, Counter> {
    let Some(entry) = live_entry::<F>(&F::frag_key(pkt), here) else {
        // SAFETY: the value is not read.
        let to_vip = to_vip && unsafe { F::vips().get(pkt.flow.dst).is_some() };
        if !to_vip {
            return Err(Counter::PassNotService);
        }
        if link_group {
            return Err(Counter::DropLinkGroup);
        }
        // Before anything is written: an entry is made only for a source
        // that could be a client (not a backend's address, which, without
        // ports to tell its service endpoint from a client's port, could be
        // the start of a loop) and that arrived where its route leaves.
        if pkt.flow.proto != PROTO_UDP
            // SAFETY: the value is not read.
            || (from_real && unsafe { F::backend_addrs().get(pkt.flow.src).is_some() })
        {
            return Err(Counter::DropFragment);
        }
        fwd::arrived_from(ctx, pkt, pkt.flow.src, here)?;
        let entry =
            FragEntry { kind: FRAG_KERNEL, epoch: here.epoch as u32, ..FragEntry::default() };
        // The key built again, not kept: alive across the reverse-path
        // check, it took lb_xdp6 40 bytes more stack. A full table evicts
        // its least recently used entry.
        let _ = F::frags().insert(F::frag_key(pkt), entry, 0);
        return Err(Counter::PassFragmentToKernel);
    };
    // Ours (its datagram's first fragment said so): the edge checks.
    if link_group {
        return Err(Counter::DropLinkGroup);
    }
    fwd::arrived_from(ctx, pkt, pkt.flow.src, here)?;
    if entry.kind == FRAG_KERNEL {
        return Err(Counter::PassFragmentToKernel);
    }
    if pkt.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let (rewrite, to_backend) = match entry.kind {
        FRAG_TO_BACKEND => (Some(Side::Destination), true),
        FRAG_DIRECT => (None, true),
        FRAG_TO_CLIENT => (Some(Side::Source), false),
        _ => return Err(Counter::PassNotService),
    };
    let target = Target { rewrite, addr: entry.addr, port: 0 };
    let mut verdict = fwd::forward(ctx, pkt, &target, here)?;
    verdict.placed = crate::Placed {
        service_id: entry.service_id,
        backend_id: entry.backend_id,
        flags: if to_backend { 0 } else { lb_common::trace::TRACE_REPLY },
    };
    select::account(&LB_SVC_STATS, entry.service_id, pkt.tot_len, to_backend, false);
    select::account(&LB_BE_STATS, entry.backend_id, pkt.tot_len, to_backend, false);
    Ok(verdict)
}
