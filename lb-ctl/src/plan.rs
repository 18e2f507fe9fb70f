//! Pure planning: desired services -> the image the kernel maps should hold ->
//! the writes that turn one image into another, in an order that never lets
//! the data plane see a half-built service.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use lb_common::abi::{
    self, ADDR_BACKEND, ADDR_REAL, ADDR_VIP, BACKEND_DOWN, BACKEND_DSR, BACKEND_IN_USE, Endpoint,
    MAGLEV_SIZE, MAX_BACKENDS, MAX_SERVICES, NO_BACKEND, REAL_SLOT_SHARED, SCHED_LC, SCHED_MAGLEV,
    SCHED_RR, SCHED_SH, SCHED_WRR, SVC_REJECT, addr_slot, real_slot,
};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    maglev,
    model::{AdminState, Forwarding, Scheduler, Service},
    rotation,
};

/// Stable numbering of services and backends across reloads: a service or
/// backend that stays keeps its id, so its Maglev slots and its flows in the
/// connection table stay valid.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: FxHashMap<Endpoint, u32>,
    backends: FxHashMap<(Endpoint, Endpoint), u32>,
    /// Where the search for a free backend id starts: ids freed by a removal
    /// are reused last, so stale connection entries rarely meet a new backend.
    next_backend: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("too many services: at most {MAX_SERVICES}")]
    TooManyServices,
    #[error("too many backends: at most {MAX_BACKENDS} in all")]
    TooManyBackends,
}

/// Everything the kernel maps hold for a set of services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub services: BTreeMap<Endpoint, abi::Service>,
    pub maglev: BTreeMap<u32, Arc<Vec<u32>>>,
    pub backends: BTreeMap<u32, abi::Backend>,
    pub reals: BTreeMap<Endpoint, abi::Real>,
    pub vips: BTreeMap<[u8; 4], u32>,
    /// Backend address -> number of backends on it, NAT and direct routing.
    pub backend_addrs: BTreeMap<[u8; 4], u32>,
    /// Non-zero slots of the address pre-filter.
    pub addrs: BTreeMap<u32, u8>,
    /// Non-zero slots of the direct-mapped backend index.
    pub real_slots: BTreeMap<u32, u32>,
}

/// One write to the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, abi::Backend),
    PutReal(Endpoint, abi::Real),
    PutMaglev(u32, Arc<Vec<u32>>),
    PutVip([u8; 4], u32),
    PutBackendAddr([u8; 4], u32),
    /// Sets a pre-filter slot (0 clears it).
    PutAddrFlags(u32, u8),
    /// Sets a backend index slot (0 clears it).
    PutRealSlot(u32, u32),
    PutService(Endpoint, abi::Service),
    DelService(Endpoint),
    DelVip([u8; 4]),
    DelBackendAddr([u8; 4]),
    ClearMaglev(u32),
    DelReal(Endpoint),
    ClearBackend(u32),
    /// Zeroes a service id's traffic counters before the id serves a new
    /// service: an id is reused, its counters must not be.
    ResetServiceTraffic(u32),
    /// The same for a backend id.
    ResetBackendTraffic(u32),
}

impl Image {
    /// What the maps hold after `op`: the model of one map write, used to
    /// know exactly what a half-done apply left behind.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend(id, b) => {
                let _ = self.backends.insert(*id, *b);
            }
            Op::PutReal(k, r) => {
                let _ = self.reals.insert(*k, *r);
            }
            Op::PutMaglev(id, t) => {
                let _ = self.maglev.insert(*id, Arc::clone(t));
            }
            Op::PutVip(v, n) => {
                let _ = self.vips.insert(*v, *n);
            }
            Op::PutBackendAddr(a, n) => {
                let _ = self.backend_addrs.insert(*a, *n);
            }
            Op::DelBackendAddr(a) => {
                let _ = self.backend_addrs.remove(a);
            }
            Op::PutAddrFlags(slot, 0) => {
                let _ = self.addrs.remove(slot);
            }
            Op::PutAddrFlags(slot, flags) => {
                let _ = self.addrs.insert(*slot, *flags);
            }
            Op::PutRealSlot(slot, 0) => {
                let _ = self.real_slots.remove(slot);
            }
            Op::PutRealSlot(slot, value) => {
                let _ = self.real_slots.insert(*slot, *value);
            }
            Op::PutService(k, s) => {
                let _ = self.services.insert(*k, *s);
            }
            Op::DelService(k) => {
                let _ = self.services.remove(k);
            }
            Op::DelVip(v) => {
                let _ = self.vips.remove(v);
            }
            Op::ClearMaglev(id) => {
                let _ = self.maglev.remove(id);
            }
            Op::DelReal(k) => {
                let _ = self.reals.remove(k);
            }
            Op::ClearBackend(id) => {
                let _ = self.backends.remove(id);
            }
            // Counters are not part of the image.
            Op::ResetServiceTraffic(_) | Op::ResetBackendTraffic(_) => {}
        }
    }
}

/// A backend as the health checks and the reconciler name it: (service, backend).
pub type BackendKey = (Endpoint, Endpoint);

/// The key of a backend as the maps hold it (its entry names its service).
pub fn held_backend_key(b: &abi::Backend) -> BackendKey {
    (Endpoint::new(b.vip, b.vport, b.proto), Endpoint::new(b.addr, b.port, b.proto))
}

pub fn backend_key(s: &Service, address: Ipv4Addr, port: u16) -> BackendKey {
    (service_endpoint(s), backend_endpoint(address, port, s))
}

pub fn service_endpoint(s: &Service) -> Endpoint {
    Endpoint::new(s.vip.octets(), s.port, s.protocol.number())
}

fn backend_endpoint(address: Ipv4Addr, port: u16, service: &Service) -> Endpoint {
    Endpoint::new(address.octets(), port, service.protocol.number())
}

impl Ids {
    /// The ids for `services`: kept for what stays, allocated for what is new,
    /// released for what is gone. Fails, changing nothing, when a table is full.
    pub fn assign(&self, services: &[Service]) -> Result<Self, PlanError> {
        let mut next = Self { next_backend: self.next_backend, ..Self::default() };
        next.backends.reserve(services.iter().map(|s| s.backends.len()).sum());
        for s in services {
            let key = service_endpoint(s);
            if let Some(&id) = self.services.get(&key) {
                next.services.insert(key, id);
            }
            for b in &s.backends {
                let bkey = (key, backend_endpoint(b.address, b.port, s));
                if let Some(&id) = self.backends.get(&bkey) {
                    next.backends.insert(bkey, id);
                }
            }
        }
        let mut used: FxHashSet<u32> = next.backends.values().copied().collect();
        for s in services {
            let key = service_endpoint(s);
            if !next.services.contains_key(&key) {
                // Prefer an id nobody held before this apply: a service
                // removed in the same reload keeps its id out of reach
                // until the next one.
                let free = |id: &u32| !next.services.values().any(|used| used == id);
                let id = (0..MAX_SERVICES)
                    .find(|id| free(id) && !self.services.values().any(|old| old == id))
                    .or_else(|| (0..MAX_SERVICES).find(free))
                    .ok_or(PlanError::TooManyServices)?;
                next.services.insert(key, id);
            }
            for b in &s.backends {
                let bkey = (key, backend_endpoint(b.address, b.port, s));
                if !next.backends.contains_key(&bkey) {
                    let id = next.free_backend_id(&used)?;
                    used.insert(id);
                    next.backends.insert(bkey, id);
                }
            }
        }
        Ok(next)
    }

    /// The first id not in `used` from where the last search stopped.
    fn free_backend_id(&mut self, used: &FxHashSet<u32>) -> Result<u32, PlanError> {
        let id = (0..MAX_BACKENDS)
            .map(|i| (self.next_backend + i) % MAX_BACKENDS)
            .find(|id| !used.contains(id))
            .ok_or(PlanError::TooManyBackends)?;
        self.next_backend = (id + 1) % MAX_BACKENDS;
        Ok(id)
    }

    /// The ids an image was built with: an adopted data plane's, so that
    /// its flows keep meaning the same backends.
    pub fn from_image(image: &Image) -> Self {
        let services = image.services.iter().map(|(key, s)| (*key, s.id)).collect();
        let backends: FxHashMap<_, _> =
            image.backends.iter().map(|(id, b)| (held_backend_key(b), *id)).collect();
        let next_backend = image.backends.keys().max().map_or(0, |id| (id + 1) % MAX_BACKENDS);
        Self { services, backends, next_backend }
    }

    pub fn service(&self, s: &Service) -> Option<u32> {
        self.services.get(&service_endpoint(s)).copied()
    }

    pub fn backend(&self, s: &Service, address: Ipv4Addr, port: u16) -> Option<u32> {
        self.backends.get(&(service_endpoint(s), backend_endpoint(address, port, s))).copied()
    }
}

/// Scheduler tables already built, by what they were built from: a change
/// to one service rebuilds that service's table only (a Maglev table of
/// 65537 slots takes a millisecond or more).
#[derive(Clone, Debug, Default)]
pub struct Tables(FxHashMap<(Scheduler, Vec<maglev::Entry>), SchedulerTable>);

type SchedulerTable = (Arc<Vec<u32>>, u32, u32);

/// The image for `services` under `ids` (from `Ids::assign` on the same services).
/// Backends in `down` (health checks) get no Maglev slot and carry
/// `BACKEND_DOWN`, as if drained but also cut off from their open flows.
pub fn image(services: &[Service], ids: &Ids, down: &BTreeSet<BackendKey>) -> Image {
    image_cached(services, ids, down, &mut Tables::default())
}

/// `image`, reusing the tables of `tables` and leaving there the ones this
/// image uses.
pub fn image_cached(
    services: &[Service],
    ids: &Ids,
    down: &BTreeSet<BackendKey>,
    tables: &mut Tables,
) -> Image {
    let mut built = Tables::default();
    let mut image = Image::default();
    // Collected, then built in bulk: a BTreeMap built from sorted pairs
    // costs far less than as many inserts (10 000 backends and more).
    let backend_count: usize = services.iter().map(|s| s.backends.len()).sum();
    let mut backends = Vec::with_capacity(backend_count);
    let mut reals = Vec::with_capacity(backend_count);
    let mut slots = Vec::with_capacity(backend_count);
    for s in services {
        let key = service_endpoint(s);
        let service_id = ids.services[&key];
        let dsr = s.forwarding == Forwarding::Dsr;
        let mut entries = Vec::with_capacity(s.backends.len());
        for b in &s.backends {
            let bkey = backend_endpoint(b.address, b.port, s);
            let id = ids.backends[&(key, bkey)];
            // Maintenance cuts the backend off like a failed health check.
            let is_down = down.contains(&(key, bkey)) || b.state == AdminState::Maint;
            let weight = if is_down { 0 } else { b.effective_weight() };
            let mut flags = BACKEND_IN_USE;
            if is_down {
                flags |= BACKEND_DOWN;
            }
            if dsr {
                flags |= BACKEND_DSR;
            }
            backends.push((
                id,
                abi::Backend {
                    addr: b.address.octets(),
                    port: b.port,
                    flags,
                    service_id,
                    vip: key.addr,
                    vport: key.port,
                    proto: key.proto,
                    _pad: 0,
                    weight,
                },
            ));
            // Every backend, whatever its forwarding: never answered, never
            // the destination of a reply (see `Counter::DropReplyToOurs`).
            *image.backend_addrs.entry(bkey.addr).or_insert(0) += 1;
            *image.addrs.entry(addr_slot(bkey.addr)).or_insert(0) |= ADDR_BACKEND;
            // A direct-routing backend answers the client itself: nothing
            // comes back to rewrite.
            if !dsr {
                *image.addrs.entry(addr_slot(bkey.addr)).or_insert(0) |= ADDR_REAL;
                slots.push((real_slot(bkey.addr, bkey.port, bkey.proto), id + 1));
                reals.push((
                    bkey,
                    abi::Real {
                        vip: key.addr,
                        vport: key.port,
                        _pad: 0,
                        service_id,
                        backend_id: id,
                    },
                ));
            }
            entries.push(maglev::Entry { address: b.address, port: b.port, weight, id });
        }
        let inputs = (s.scheduler, entries);
        let (table, ring_size, scheduler) = tables.0.remove(&inputs).unwrap_or_else(|| {
            let (table, ring_size, scheduler) = scheduler_table(s.scheduler, &inputs.1);
            (Arc::new(table), ring_size, scheduler)
        });
        built.0.insert(inputs, (Arc::clone(&table), ring_size, scheduler));
        let flags = scheduler | if s.reject { SVC_REJECT } else { 0 };
        image.maglev.insert(service_id, table);
        image.services.insert(key, abi::Service { id: service_id, ring_size, flags, _pad: 0 });
        *image.vips.entry(key.addr).or_insert(0) += 1;
        *image.addrs.entry(addr_slot(key.addr)).or_insert(0) |= ADDR_VIP;
    }
    image.backends = backends.into_iter().collect();
    image.reals = reals.into_iter().collect();
    // A slot two backends hash to is marked shared (the exact table decides).
    slots.sort_unstable();
    let mut real_slots: Vec<(u32, u32)> = Vec::with_capacity(slots.len());
    for (slot, value) in slots {
        match real_slots.last_mut() {
            Some(last) if last.0 == slot => last.1 = REAL_SLOT_SHARED,
            _ => real_slots.push((slot, value)),
        }
    }
    image.real_slots = real_slots.into_iter().collect();
    *tables = built;
    image
}

/// A service's table (always `MAGLEV_SIZE` slots), how many of its slots
/// are in use, and the scheduler's code for the data plane.
fn scheduler_table(scheduler: Scheduler, entries: &[maglev::Entry]) -> (Vec<u32>, u32, u32) {
    let size = MAGLEV_SIZE as usize;
    let (sequence, code) = match scheduler {
        Scheduler::Maglev => {
            return (maglev::build(entries, MAGLEV_SIZE), MAGLEV_SIZE, SCHED_MAGLEV);
        }
        Scheduler::SourceHash => {
            return (maglev::build(entries, MAGLEV_SIZE), MAGLEV_SIZE, SCHED_SH);
        }
        Scheduler::RoundRobin => (rotation::round_robin(entries), SCHED_RR),
        Scheduler::WeightedRoundRobin => (rotation::smooth_weighted(entries, size), SCHED_WRR),
        // The data plane compares the live backends' connections at each new flow.
        Scheduler::LeastConnections => (rotation::round_robin(entries), SCHED_LC),
    };
    let used = sequence.len() as u32;
    let mut table = sequence;
    table.resize(size, NO_BACKEND);
    (table, used, code)
}

/// Both maps' entries in key order, in one pass over each: (key, old
/// value, new value). Far cheaper than a lookup per key when the maps hold
/// thousands of entries and only a few change.
fn zip<'a, K: Ord + Copy, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, Option<&'a V>, Option<&'a V>)> {
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (None, None) => None,
        (Some(_), None) => a.next().map(|(k, v)| (*k, Some(v), None)),
        (None, Some(_)) => b.next().map(|(k, v)| (*k, None, Some(v))),
        (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
            std::cmp::Ordering::Less => a.next().map(|(k, v)| (*k, Some(v), None)),
            std::cmp::Ordering::Greater => b.next().map(|(k, v)| (*k, None, Some(v))),
            std::cmp::Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                Some((*k, Some(va), Some(vb)))
            }
        },
    })
}

/// Keys whose value is new or changed, with the new value.
fn puts<'a, K: Ord + Copy, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, &'a V)> {
    zip(old, new).filter_map(|(k, o, n)| n.filter(|n| o != Some(*n)).map(|n| (k, n)))
}

/// Keys only `old` has.
fn gone<'a, K: Ord + Copy, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = K> {
    zip(old, new).filter_map(|(k, _, n)| n.is_none().then_some(k))
}

/// The writes from `old` to `new`. Additions go bottom-up (backends, reverse
/// entries, Maglev tables, backend addresses and VIPs, then the service entry that makes them
/// reachable); removals go top-down, so no packet finds a dangling reference.
/// A service's ring size never exceeds what its table fills (see below).
pub fn diff(old: &Image, new: &Image) -> Vec<Op> {
    let mut ops = Vec::new();
    // An id that starts to serve another service or backend starts its
    // counters from zero, before anything can reach it. (An id freed and
    // taken again in the same apply, which `Ids` avoids until every other
    // id is taken, is zeroed while its old holder may still count a few
    // packets into it.)
    for (key, s) in &new.services {
        if old.services.get(key).map(|o| o.id) != Some(s.id) {
            ops.push(Op::ResetServiceTraffic(s.id));
        }
    }
    for (id, b) in &new.backends {
        if old.backends.get(id).map(held_backend_key) != Some(held_backend_key(b)) {
            ops.push(Op::ResetBackendTraffic(*id));
        }
    }
    // Pre-filter slots gain their new bits, and backend addresses their
    // entries, before anything can need them: a backend's address is
    // refused answers and replies before the backend can be reached. (A
    // bit set early only costs the exact lookups that then find nothing.)
    for (slot, was, now) in zip(&old.addrs, &new.addrs) {
        let (was, now) = (was.copied().unwrap_or(0), now.copied().unwrap_or(0));
        if now & !was != 0 {
            ops.push(Op::PutAddrFlags(slot, now | was));
        }
    }
    ops.extend(
        puts(&old.backend_addrs, &new.backend_addrs).map(|(a, n)| Op::PutBackendAddr(a, *n)),
    );
    ops.extend(puts(&old.backends, &new.backends).map(|(id, b)| Op::PutBackend(id, *b)));
    ops.extend(puts(&old.reals, &new.reals).map(|(key, r)| Op::PutReal(key, *r)));
    ops.extend(puts(&old.real_slots, &new.real_slots).map(|(slot, v)| Op::PutRealSlot(slot, *v)));
    // The data plane reads slot `hash % ring_size` of a service's table: a
    // ring size above what the table fills is an empty slot, a reset. A
    // service whose ring shrinks (an `rr`/`wrr` rotation losing a backend)
    // gets its smaller ring size before its shorter table, and reads the
    // front of the old one meanwhile; one whose ring grows gets its table first.
    let shrinking: BTreeSet<u32> = zip(&old.services, &new.services)
        .filter_map(|(_, was, now)| {
            let (was, now) = (was?, now?);
            (was.id == now.id && now.ring_size < was.ring_size).then_some(now.id)
        })
        .collect();
    ops.extend(
        puts(&old.services, &new.services)
            .filter(|(_, s)| shrinking.contains(&s.id))
            .map(|(key, s)| Op::PutService(key, *s)),
    );
    ops.extend(puts(&old.maglev, &new.maglev).map(|(id, t)| Op::PutMaglev(id, Arc::clone(t))));
    ops.extend(puts(&old.vips, &new.vips).map(|(vip, n)| Op::PutVip(vip, *n)));
    ops.extend(
        puts(&old.services, &new.services)
            .filter(|(_, s)| !shrinking.contains(&s.id))
            .map(|(key, s)| Op::PutService(key, *s)),
    );
    ops.extend(gone(&old.services, &new.services).map(Op::DelService));
    ops.extend(gone(&old.vips, &new.vips).map(Op::DelVip));
    ops.extend(gone(&old.maglev, &new.maglev).map(Op::ClearMaglev));
    ops.extend(gone(&old.reals, &new.reals).map(Op::DelReal));
    ops.extend(gone(&old.real_slots, &new.real_slots).map(|slot| Op::PutRealSlot(slot, 0)));
    ops.extend(gone(&old.backends, &new.backends).map(Op::ClearBackend));
    // An address stays refused as long as a backend on it can be reached.
    ops.extend(gone(&old.backend_addrs, &new.backend_addrs).map(Op::DelBackendAddr));
    // ...and lose bits only after what used them is gone.
    for (slot, was, now) in zip(&old.addrs, &new.addrs) {
        let (was, now) = (was.copied().unwrap_or(0), now.copied().unwrap_or(0));
        if was & !now != 0 {
            ops.push(Op::PutAddrFlags(slot, now));
        }
    }
    ops
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Backend, Protocol};

    /// A Maglev TCP service on 10.77.1.100:`port`; backends are (last octet of 10.77.2.x, weight).
    pub(crate) fn service(name: &str, port: u16, backends: &[(u8, u32)]) -> Service {
        Service {
            name: name.into(),
            vip: Ipv4Addr::new(10, 77, 1, 100),
            port,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Nat,
            reject: false,
            health: None,
            backends: backends
                .iter()
                .map(|&(last, weight)| Backend {
                    address: Ipv4Addr::new(10, 77, 2, last),
                    port,
                    weight,
                    state: AdminState::Active,
                })
                .collect(),
        }
    }

    fn plan(ids: &Ids, services: &[Service]) -> (Ids, Image) {
        let ids = ids.assign(services).unwrap();
        let image = image(services, &ids, &BTreeSet::new());
        (ids, image)
    }

    #[test]
    fn direct_routing_backends_are_flagged_and_never_taken_for_replies() {
        let nat = service("api", 81, &[(21, 1)]);
        let dsr =
            Service { forwarding: Forwarding::Dsr, ..service("web", 80, &[(11, 1), (12, 1)]) };
        let (_, image) = plan(&Ids::default(), &[dsr, nat]);
        let flagged = image.backends.values().filter(|b| b.flags & BACKEND_DSR != 0).count();
        assert_eq!(flagged, 2, "only the dsr service's backends");
        assert_eq!(image.reals.len(), 1, "only the NAT backend's replies are rewritten");
        assert_eq!(image.real_slots.len(), 1);
        let flags = |last| image.addrs.get(&addr_slot([10, 77, 2, last])).copied().unwrap_or(0);
        assert_eq!(flags(21) & ADDR_REAL, ADDR_REAL, "the pre-filter lets NAT replies in");
        assert_eq!(flags(11) & ADDR_REAL, 0, "and not the direct-routing backends' traffic");
        for last in [11, 12, 21] {
            assert_eq!(flags(last) & ADDR_BACKEND, ADDR_BACKEND, "every backend may be one");
            assert_eq!(image.backend_addrs.get(&[10, 77, 2, last]), Some(&1), "and is, exactly");
        }
        assert_eq!(image.backend_addrs.len(), 3);
    }

    /// An address that backs several services is counted once per backend,
    /// and stays refused until the last of them is gone, after it.
    #[test]
    fn a_backend_address_stays_until_its_last_backend_is_gone() {
        let web = service("web", 80, &[(11, 1)]);
        let api = service("api", 81, &[(11, 1), (12, 1)]);
        let (ids, both) = plan(&Ids::default(), &[web.clone(), api]);
        assert_eq!(both.backend_addrs[&[10, 77, 2, 11]], 2);
        let (ids, web_only) = plan(&ids, std::slice::from_ref(&web));
        let ops = diff(&both, &web_only);
        assert!(ops.contains(&Op::PutBackendAddr([10, 77, 2, 11], 1)), "{ops:?}");
        let at = |wanted: &dyn Fn(&Op) -> bool| ops.iter().position(wanted).unwrap();
        let del = at(&|op| *op == Op::DelBackendAddr([10, 77, 2, 12]));
        assert!(at(&|op| matches!(op, Op::DelService(_))) < del, "after the service is gone");
        assert!(at(&|op| matches!(op, Op::ClearBackend(_))) < del, "and its backends");
        let (_, none) = plan(&ids, &[]);
        assert!(diff(&web_only, &none).contains(&Op::DelBackendAddr([10, 77, 2, 11])));
        assert!(none.backend_addrs.is_empty());
    }

    #[test]
    fn ids_read_back_from_an_image_keep_every_backend_on_its_id() {
        let services = [service("web", 80, &[(11, 1), (12, 1)]), service("api", 81, &[(21, 1)])];
        // Ids that are not simply 0, 1, 2: a removal happened before.
        let (ids, _) = plan(&Ids::default(), &[service("web", 80, &[(10, 1)])]);
        let (ids, held) = plan(&ids, &services);
        let adopted = Ids::from_image(&held);
        let (again, image) = plan(&adopted, &services);
        assert_eq!(image, held, "a controller adopting the maps writes nothing");
        for s in &services {
            assert_eq!(again.service(s), ids.service(s));
            for b in &s.backends {
                assert_eq!(again.backend(s, b.address, b.port), ids.backend(s, b.address, b.port));
            }
        }
        assert!(diff(&held, &image).is_empty());
    }

    #[test]
    fn only_a_changed_service_gets_a_new_table() {
        let before = [service("web", 80, &[(11, 1), (12, 1)]), service("api", 81, &[(21, 1)])];
        let mut after = before.clone();
        after[0].backends[1].weight = 3;
        let ids = Ids::default().assign(&before).unwrap();
        let mut tables = Tables::default();
        let old = image_cached(&before, &ids, &BTreeSet::new(), &mut tables);
        let new = image_cached(&after, &ids, &BTreeSet::new(), &mut tables);
        let (web, api) = (ids.service(&before[0]).unwrap(), ids.service(&before[1]).unwrap());
        assert!(Arc::ptr_eq(&old.maglev[&api], &new.maglev[&api]), "api's table is reused");
        assert!(!Arc::ptr_eq(&old.maglev[&web], &new.maglev[&web]));
        assert_eq!(new, image(&after, &ids, &BTreeSet::new()), "the cache changes nothing");
        assert_eq!(tables.0.len(), 2, "only the tables in use are kept");
    }

    #[test]
    fn ids_are_stable_and_freed_ids_are_reused_last() {
        let (ids, _) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1), (13, 1)])]);
        let web = service("web", 80, &[(11, 1), (13, 1), (14, 1)]);
        let (ids2, _) = plan(&ids, std::slice::from_ref(&web));
        assert_eq!(ids2.backend(&web, Ipv4Addr::new(10, 77, 2, 11), 80), Some(0));
        assert_eq!(ids2.backend(&web, Ipv4Addr::new(10, 77, 2, 13), 80), Some(2));
        // 12 had id 1; the newcomer does not get it.
        assert_eq!(ids2.backend(&web, Ipv4Addr::new(10, 77, 2, 14), 80), Some(3));
    }

    #[test]
    fn a_service_replaced_in_one_reload_gets_a_fresh_id() {
        let (ids, _) = plan(&Ids::default(), &[service("web", 80, &[(11, 1)])]);
        let moved = service("web", 8080, &[(11, 1)]);
        let (ids, _) = plan(&ids, std::slice::from_ref(&moved));
        assert_eq!(ids.service(&moved), Some(1), "id 0 was freed in the same apply");
    }

    /// A service that takes a removed one's id, and backends on ids never
    /// used or used by another backend, start from zero; ids that keep
    /// their holder keep their counters.
    #[test]
    fn reused_ids_get_their_counters_zeroed_and_kept_ids_do_not() {
        let web = service("web", 80, &[(11, 1), (12, 1)]);
        let (ids, before) = plan(&Ids::default(), std::slice::from_ref(&web));
        // Another service on another port gets web's service id in the next
        // apply (its backends get fresh ids: freed ones are reused last).
        let (ids, gone) = plan(&ids, &[]);
        let api = service("api", 81, &[(21, 1), (22, 1)]);
        let (_, after) = plan(&ids, &[api]);
        assert_eq!(
            after.services.values().next().unwrap().id,
            before.services.values().next().unwrap().id
        );
        let resets = |ops: Vec<Op>| -> Vec<Op> {
            ops.into_iter()
                .filter(|op| matches!(op, Op::ResetServiceTraffic(_) | Op::ResetBackendTraffic(_)))
                .collect()
        };
        let service_id = after.services.values().next().unwrap().id;
        let mut expected = vec![Op::ResetServiceTraffic(service_id)];
        expected.extend(after.backends.keys().map(|id| Op::ResetBackendTraffic(*id)));
        assert_eq!(resets(diff(&gone, &after)), expected);
        // A change that keeps every holder (a weight) resets nothing.
        let heavier = service("web", 80, &[(11, 3), (12, 1)]);
        let (ids, same) = plan(&Ids::default(), &[web]);
        let (_, reweighted) = plan(&ids, &[heavier]);
        assert_eq!(resets(diff(&same, &reweighted)), []);
        // A backend id that passes to another backend (after the ids wrap).
        let mut moved = same.clone();
        let (&id, held) = same.backends.iter().next().unwrap();
        moved.backends.insert(id, abi::Backend { addr: [10, 77, 2, 99], ..*held });
        assert_eq!(resets(diff(&same, &moved)), [Op::ResetBackendTraffic(id)]);
    }

    #[test]
    fn first_apply_writes_bottom_up() {
        let (_, image) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1)])]);
        let ops = diff(&Image::default(), &image);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::PutBackend(..) => "backend",
                Op::PutReal(..) => "real",
                Op::PutMaglev(..) => "maglev",
                Op::PutVip(..) => "vip",
                Op::PutBackendAddr(..) => "backend addr",
                Op::PutAddrFlags(..) => "addrs",
                Op::PutRealSlot(..) => "real slot",
                Op::PutService(..) => "service",
                Op::ResetServiceTraffic(..) | Op::ResetBackendTraffic(..) => "reset",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                // The new ids' counters, before anything reaches them.
                "reset",
                "reset",
                "reset",
                // The VIP's and both backends' pre-filter slots, and both
                // backends' addresses: refused as answers' and replies'
                // destinations before anything can reach the backends.
                "addrs",
                "addrs",
                "addrs",
                "backend addr",
                "backend addr",
                "backend",
                "backend",
                "real",
                "real",
                "real slot",
                "real slot",
                "maglev",
                "vip",
                "service"
            ]
        );
    }

    #[test]
    fn a_backend_joining_a_service_is_refused_answers_before_it_is_reached() {
        let (ids, before) = plan(&Ids::default(), &[service("web", 80, &[(11, 1)])]);
        let (_, after) = plan(&ids, &[service("web", 80, &[(11, 1), (13, 1)])]);
        let ops = diff(&before, &after);
        let at = |want: fn(&Op) -> bool| ops.iter().position(want).expect("the op");
        let addr = at(|op| matches!(op, Op::PutBackendAddr(..)));
        let reached = [
            at(|op| matches!(op, Op::PutBackend(..))),
            at(|op| matches!(op, Op::PutRealSlot(..))),
            at(|op| matches!(op, Op::PutMaglev(..))),
        ];
        assert!(reached.iter().all(|&r| addr < r), "{ops:?}");
    }

    /// Two backends whose endpoints hash to the same index slot: the slot
    /// says "shared", and the data plane asks the exact table instead.
    #[test]
    fn backends_sharing_an_index_slot_are_marked_shared() {
        let first = (Ipv4Addr::new(10, 77, 2, 11), 80);
        let target = real_slot(first.0.octets(), first.1, 6);
        let second = (1..=255_u8)
            .flat_map(|last| (1..=u16::MAX).map(move |port| (Ipv4Addr::new(10, 77, 3, last), port)))
            .find(|(a, p)| real_slot(a.octets(), *p, 6) == target)
            .expect("some endpoint shares the slot");
        let mut web = service("web", 80, &[]);
        web.backends = vec![
            Backend { address: first.0, port: first.1, weight: 1, state: AdminState::Active },
            Backend { address: second.0, port: second.1, weight: 1, state: AdminState::Active },
        ];
        let (_, image) = plan(&Ids::default(), &[web]);
        assert_eq!(image.real_slots[&target], REAL_SLOT_SHARED);
        assert_eq!(image.reals.len(), 2, "both stay in the exact table");
    }

    #[test]
    fn same_config_twice_writes_nothing() {
        let services = [service("web", 80, &[(11, 1), (12, 2)]), service("dns", 53, &[(21, 1)])];
        let (ids, image) = plan(&Ids::default(), &services);
        let (_, again) = plan(&ids, &services);
        assert!(diff(&image, &again).is_empty());
    }

    #[test]
    fn drain_rewrites_only_the_table_and_removal_goes_top_down() {
        let (ids, before) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1)])]);
        let (ids, drained) = plan(&ids, &[service("web", 80, &[(11, 1), (12, 0)])]);
        let ops = diff(&before, &drained);
        // The backend's weight (read by lc) and the table: nothing else.
        assert!(
            matches!(ops.as_slice(), [Op::PutBackend(1, _), Op::PutMaglev(0, _)]),
            "{} ops",
            ops.len()
        );
        let (_, gone) = plan(&ids, &[]);
        let ops = diff(&drained, &gone);
        assert!(
            matches!(
                ops.as_slice(),
                [
                    Op::DelService(_),
                    Op::DelVip(_),
                    Op::ClearMaglev(0),
                    Op::DelReal(_),
                    Op::DelReal(_),
                    Op::PutRealSlot(_, 0),
                    Op::PutRealSlot(_, 0),
                    Op::ClearBackend(0),
                    Op::ClearBackend(1),
                    Op::DelBackendAddr([10, 77, 2, 11]),
                    Op::DelBackendAddr([10, 77, 2, 12]),
                    // The VIP's and both backends' pre-filter slots.
                    Op::PutAddrFlags(_, 0),
                    Op::PutAddrFlags(_, 0),
                    Op::PutAddrFlags(_, 0),
                ]
            ),
            "{ops:?}"
        );
    }

    #[test]
    fn too_many_services_is_an_error_not_a_partial_plan() {
        let services: Vec<Service> =
            (0..=MAX_SERVICES as u16).map(|i| service(&format!("s{i}"), 1000 + i, &[])).collect();
        assert_eq!(Ids::default().assign(&services).unwrap_err(), PlanError::TooManyServices);
    }
}
