//! Fragmented datagrams, to a VIP and from a backend. The first fragment
//! carries the ports: it is placed and rewritten like a whole packet (the
//! transport checksum it carries covers the whole datagram, and is updated
//! the same way), and leaves its decision in `lb_frags`, keyed by what ties
//! a datagram's fragments together (source, destination, protocol, IP id).
//! The later fragments, which carry no ports, follow that decision: their
//! address is rewritten (IPv4 checksum only) and they go where the first
//! went. Cilium's XDP load balancer keeps such a map too.
//!
//! A later fragment that arrives before its first finds nothing. XDP cannot
//! hold a frame back, and handing it to the kernel would not help: the
//! kernel reassembles for local delivery, and the VIP is a local address,
//! so the datagram would never reach a backend. It is dropped and counted
//! (`drop_fragment`); the first fragment and those after it still go
//! through, and the backend's reassembly drops the incomplete datagram.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{
        FRAG_DIRECT, FRAG_TIMEOUT_TICKS, FRAG_TO_BACKEND, FRAG_TO_CLIENT, FragEntry, FragKey,
        expired,
    },
    counter::Counter,
};

use crate::{
    Verdict,
    fwd::{self, Target},
    maps::{LB_BE_STATS, LB_FRAGS, LB_SVC_STATS, LB_VIPS},
    nat::Side,
    parse::{Frag, Packet},
    select::{self, Here},
};

/// What ties `pkt`'s fragments together.
#[inline(always)]
fn key(pkt: &Packet) -> FragKey {
    FragKey { src: pkt.flow.src, dst: pkt.flow.dst, id: pkt.id, proto: pkt.flow.proto, _pad: 0 }
}

/// After a first fragment went to `target` (for service and backend ids
/// `ids`): the datagram's later fragments follow it. Nothing for a whole
/// packet.
#[inline(always)]
pub fn remember(pkt: &Packet, target: &Target, ids: (u32, u32), here: Here) {
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
    let _ = LB_FRAGS.insert(key(pkt), entry, 0);
}

/// A later fragment: where its first fragment went, if that was ours.
#[inline(always)]
pub fn follow(
    ctx: &XdpContext,
    pkt: &Packet,
    to_vip: bool,
    here: Here,
) -> Result<Verdict, Counter> {
    let key = key(pkt);
    // SAFETY: copied out at once.
    let entry = unsafe { LB_FRAGS.get(key).copied() }
        .filter(|e| !expired(here.epoch as u32, e.epoch, FRAG_TIMEOUT_TICKS));
    let Some(entry) = entry else {
        // SAFETY: the value is not read.
        let to_vip = to_vip && unsafe { LB_VIPS.get(pkt.flow.dst).is_some() };
        return Err(if to_vip { Counter::DropFragment } else { Counter::PassNotService });
    };
    fwd::arrived_from(ctx, pkt, pkt.flow.src, here)?;
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
    let verdict = fwd::forward(ctx, pkt, &target, here)?;
    select::account(&LB_SVC_STATS, entry.service_id, pkt.tot_len, to_backend, false);
    select::account(&LB_BE_STATS, entry.backend_id, pkt.tot_len, to_backend, false);
    Ok(verdict)
}
