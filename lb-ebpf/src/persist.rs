//! Persistence (`persistence_s`, IPVS `-p`) and who may connect
//! (`allowed_sources`): the two per-service checks keyed by the client's
//! address. A service without them pays one flag test.
//!
//! A persistent client is recorded in `lb_persist` by the packet that
//! records its flow in the connection table (`handshake::settle`): the
//! proving ACK of a NAT TCP flow, a UDP flow's second datagram. A flood of
//! forged SYNs therefore writes no persistence entry, as it writes no
//! connection entry; what it can reach is the LRU's eviction order, and
//! only where forged flows are recorded at all (direct routing, UDP,
//! `handshake_proof = "syn-seen"`). A client whose entry is evicted or
//! expired is scheduled afresh: it loses its stickiness, not its service.
use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{
    abi::{
        BACKEND_DOWN, Flow, Persist, PersistKey, SVC_PERSIST, Service, SourceKey, expired,
        persist_prefix,
    },
    addr::Addr,
};

use crate::{
    family::Family,
    select::{self, Choice, Here},
};

/// The key of `flow`'s client in a persistent service's `lb_persist`.
#[inline(always)]
fn key<A: Addr>(flow: &Flow<A>, service_id: u32, flags: u32) -> PersistKey<A> {
    PersistKey { service_id, client: flow.src.masked(persist_prefix(flags)) }
}

/// The backend a persistent service's client keeps: the one of its last
/// recorded flow, if within `persist_ticks` of it and still taking new
/// flows (in use, not DOWN, not drained, below its `max_conns`; counted
/// like any placement on a limited backend). `None`: the scheduler decides.
#[inline(always)]
pub fn stuck<F: Family>(flow: &Flow<F::Addr>, service: &Service, here: Here) -> Option<Choice<F>> {
    if service.flags & SVC_PERSIST == 0 {
        return None;
    }
    // SAFETY: copied out at once; the entry may be replaced any time.
    let entry = unsafe { F::persist().get(key(flow, service.id, service.flags)).copied() }?;
    if expired(here.epoch as u32, entry.last_seen, service.persist_ticks) {
        return None;
    }
    let backend = select::live_backend::<F>(entry.backend_id, service.id, flow)?;
    if backend.flags & BACKEND_DOWN != 0 || backend.weight == 0 {
        return None;
    }
    if backend.max_conns != 0 {
        if select::full(entry.backend_id, backend.max_conns) {
            return None;
        }
        select::count_conn(entry.backend_id);
    }
    Some(Choice::of(entry.backend_id, backend, true))
}

/// Records that `flow`'s client (its network, by the prefix in `flags`,
/// as `Service::flags` holds it) is on `backend_id` as of now.
#[inline(always)]
pub fn remember<F: Family>(
    flow: &Flow<F::Addr>,
    service_id: u32,
    backend_id: u32,
    flags: u32,
    here: Here,
) {
    let key = key(flow, service_id, flags);
    let now = here.epoch as u32;
    if let Some(entry) = F::persist().get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value: two words, each written
        // whole (a racing CPU's write wins; either is a recent flow's).
        unsafe { *entry = Persist { backend_id, last_seen: now } };
        return;
    }
    // A full map gives up its least recently used entry.
    let _ = F::persist().insert(key, Persist { backend_id, last_seen: now }, 0);
}

/// Whether `src` is among the allowed sources of service `service_id`
/// (one longest-prefix lookup in `lb_sources`).
#[inline(always)]
pub fn allowed<F: Family>(service_id: u32, src: F::Addr) -> bool {
    let bits = 32 + 8 * F::Addr::LEN as u32;
    let key = Key::new(bits, SourceKey { service_be: service_id.to_be_bytes(), addr: src });
    F::sources().get(&key).is_some()
}
