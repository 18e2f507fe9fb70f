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
use lb_common::abi::{
    BACKEND_IN_USE, Flow, NO_BACKEND, Persist, PersistKey, SVC_PERSIST, Service, expired,
};

use crate::{
    family::Family,
    select::{self, Choice},
};

/// The backend a persistent service's client keeps (`Choice`, new flow),
/// if `persisted` finds one; `None`: the scheduler decides.
#[inline(always)]
pub fn stuck<F: Family>(flow: &Flow<F::Addr>, service: &Service) -> Option<Choice<F>> {
    if service.flags & SVC_PERSIST == 0 {
        return None;
    }
    let id = F::persisted(service.id, service.flags, service.persist_ticks, flow.src);
    let backend = select::live_backend::<F>(id, service.id, flow)?;
    Some(Choice::of(id, backend, true))
}

/// The backend of the client `src`'s last recorded flow to service
/// `service_id` (its network's, by the prefix in `flags`), if within
/// `ticks` of it and still taking new flows: in use by the service, not
/// DOWN, not drained, below its `max_conns` (and then counted, like any
/// placement on a limited backend). `NO_BACKEND` otherwise.
///
/// Each family calls it from a global BPF function of its own
/// (`lb_persisted`, `lb_persisted6`), verified once on its own: inlined,
/// its branches multiplied the paths through the rest of the program.
#[inline(always)]
pub fn persisted<F: Family>(service_id: u32, flags: u32, ticks: u32, src: F::Addr) -> u32 {
    // SAFETY: copied out at once; the entry may be replaced any time.
    let Some(entry) =
        (unsafe { F::persist().get(PersistKey::of(service_id, src, flags)).copied() })
    else {
        return NO_BACKEND;
    };
    if expired(select::epoch_now() as u32, entry.last_seen, ticks) {
        return NO_BACKEND;
    }
    let id = entry.backend_id;
    let Some(backend) = F::backends().get(id) else { return NO_BACKEND };
    let takes_flows = backend.flags & BACKEND_IN_USE != 0
        && backend.service_id == service_id
        && backend.takes_new_flows();
    if !takes_flows {
        return NO_BACKEND;
    }
    if backend.max_conns != 0 {
        if select::full(id, backend.max_conns) {
            return NO_BACKEND;
        }
        select::count_conn(id);
    }
    id
}

/// Records that the client `src` of service `service_id` (its network, by
/// the prefix in `flags`, as `Service::flags` holds it) is on
/// `backend_id` as of now. A global BPF function of each family calls it
/// (`lb_remember`, `lb_remember6`), as `persisted`.
#[inline(always)]
pub fn remember<F: Family>(service_id: u32, backend_id: u32, flags: u32, src: F::Addr) -> u32 {
    let key = PersistKey::of(service_id, src, flags);
    let now = select::epoch_now() as u32;
    if let Some(entry) = F::persist().get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value: two words, each written
        // whole (a racing CPU's write wins; either is a recent flow's).
        unsafe { *entry = Persist { backend_id, last_seen: now } };
        return 0;
    }
    // A full map gives up its least recently used entry.
    let _ = F::persist().insert(key, Persist { backend_id, last_seen: now }, 0);
    0
}

/// Whether `src` is among the allowed sources of service `service_id`: a
/// scan of its list in `lb_sources` (one array lookup; at most 64
/// prefixes, twice that for the moment a reload replaces them). Each family calls it from a global BPF
/// function of its own (`lb_allowed`, `lb_allowed6`), as `persisted`.
#[inline(always)]
pub fn allowed<F: Family>(service_id: u32, src: F::Addr) -> bool {
    F::sources().get(service_id).is_some_and(|list| list.holds(&src))
}
