//! Where a reassembled datagram goes, and what is written for it: the data
//! plane's own decision, made from what the reconciler applied (the same
//! tables `lb_xdp` reads) and the per-flow state `lb_xdp` keeps (`Held`:
//! persistent clients, connection counts), so that the datagram and the
//! flow's later ones, which XDP places, land on the same backend, and a
//! persistent client or a backend's `max_conns` is treated alike on both
//! paths. Pure: tested on the host.
use std::{collections::BTreeMap, sync::Arc};

use lb_common::{
    abi::{
        BACKEND_DOWN, BACKEND_DSR, BACKEND_FULLNAT, BACKEND_IN_USE, Backend, BackendConns,
        CONN_UDP, Conn, Endpoint, Flow, HANDSHAKE_PERSIST, LC_MAX_BACKENDS, MAGLEV_SIZE,
        NO_BACKEND, Persist, PersistKey, SCHED_MASK, SCHED_SH, SVC_PERSIST, SVC_SOURCES, Service,
        expired, handshake_flags, source_hash, stand_in_position,
    },
    hash::{flow_hash, maglev_slot},
};

use crate::{
    plan::{ids::MapAddr, image::Image},
    write::dataplane::{AnyFlow, AnyPersistKey},
};

/// The part of an applied image that places a flow (the reconciler's
/// handle also names by it the ids its reads find: counters, connections).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub services: BTreeMap<Endpoint, Service>,
    pub maglev: BTreeMap<u32, Arc<Vec<u32>>>,
    pub backends: BTreeMap<u32, Backend>,
    /// The IPv6 services and backends (the tables are shared: ids are one
    /// space).
    pub services6: BTreeMap<Endpoint<[u8; 16]>, Service>,
    pub backends6: BTreeMap<u32, Backend<[u8; 16]>>,
    /// Each family's allowed sources (`lb_sources`, `lb_sources6`).
    pub sources: BTreeMap<(u32, [u8; 4], u8), u32>,
    pub sources6: BTreeMap<(u32, [u8; 16], u8), u32>,
}

impl Placement {
    pub fn of(image: &Image) -> Self {
        Self {
            services: image.v4.services.clone(),
            maglev: image.maglev.clone(),
            backends: image.v4.backends.clone(),
            services6: image.v6.services.clone(),
            backends6: image.v6.backends.clone(),
            sources: image.v4.sources.clone(),
            sources6: image.v6.sources.clone(),
        }
    }
}

/// An address family, as the slow path places its flows: its services
/// and backends in a placement, its flows in the data plane's maps.
pub trait FamilyAddr: MapAddr {
    fn services(p: &Placement) -> &BTreeMap<Endpoint<Self>, Service>;
    fn backends(p: &Placement) -> &BTreeMap<u32, Backend<Self>>;
    /// Its services' allowed sources: (service id, network, length).
    fn sources(p: &Placement) -> &BTreeMap<(u32, Self, u8), u32>;
    /// The flow, for the maps of its family.
    fn any(flow: Flow<Self>) -> AnyFlow;
    /// A persistent client's key, for the maps of its family.
    fn any_key(key: PersistKey<Self>) -> AnyPersistKey;
}

impl FamilyAddr for [u8; 4] {
    fn services(p: &Placement) -> &BTreeMap<Endpoint<Self>, Service> {
        &p.services
    }
    fn backends(p: &Placement) -> &BTreeMap<u32, Backend<Self>> {
        &p.backends
    }
    fn sources(p: &Placement) -> &BTreeMap<(u32, Self, u8), u32> {
        &p.sources
    }
    fn any(flow: Flow<Self>) -> AnyFlow {
        AnyFlow::V4(flow)
    }
    fn any_key(key: PersistKey<Self>) -> AnyPersistKey {
        AnyPersistKey::V4(key)
    }
}

impl FamilyAddr for [u8; 16] {
    fn services(p: &Placement) -> &BTreeMap<Endpoint<Self>, Service> {
        &p.services6
    }
    fn backends(p: &Placement) -> &BTreeMap<u32, Backend<Self>> {
        &p.backends6
    }
    fn sources(p: &Placement) -> &BTreeMap<(u32, Self, u8), u32> {
        &p.sources6
    }
    fn any(flow: Flow<Self>) -> AnyFlow {
        AnyFlow::V6(flow)
    }
    fn any_key(key: PersistKey<Self>) -> AnyPersistKey {
        AnyPersistKey::V6(key)
    }
}

/// The per-flow state of the data plane a new flow is placed by, as
/// `lb_xdp` reads it: a persistent client's entry (`lb_persist`), a
/// backend's connections (`lb_be_conns`). A read that fails answers as an
/// absent entry does in the data plane: no client, no connections.
pub trait Held<A> {
    fn persisted(&self, key: &PersistKey<A>) -> Option<Persist>;
    fn conns(&self, backend_id: u32) -> BackendConns;
}

/// What the data plane holds of the datagram's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Earlier {
    /// Its live connection entry.
    Entry(Conn),
    /// No entry, but a live handshake record: the backend the flow's first
    /// datagram went to through XDP, and the record's flags (`HANDSHAKE_*`).
    Record { backend_id: u32, flags: u32 },
    /// Neither: this is the flow's first datagram.
    Nothing,
}

/// Where the datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<A = [u8; 4]> {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: Backend<A>,
    /// Placed here: neither an entry nor a record carried the flow.
    pub new_flow: bool,
}

/// What the slow path writes for a datagram it sends on: what `lb_xdp`
/// writes for the same packet of the flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes<A = [u8; 4]> {
    /// A handshake record with these flags: the flow's first datagram (a
    /// forged one-datagram flow reaches no table, and, as in XDP, its
    /// client no persistence entry).
    pub handshake: Option<u32>,
    /// The flow's connection entry: its record's backend, or a new one
    /// where its entry's backend can no longer take it.
    pub entry: Option<Conn>,
    /// A persistent service's client, recorded with its flow: on the
    /// target backend, now.
    pub remember: Option<PersistKey<A>>,
    /// A new flow on a backend with `max_conns`: it counts at once.
    pub count: bool,
}

/// The datagram's target and the writes that go with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed<A = [u8; 4]> {
    pub target: Target<A>,
    pub writes: Writes<A>,
}

/// Why a datagram goes nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No service on the datagram's VIP, port and protocol (any more).
    NoService,
    /// The service has no usable backend.
    NoBackend,
    /// Every usable backend is at its `max_conns` (the data plane's
    /// `drop_backends_full`, or its `on_no_backend` answer).
    BackendsFull,
    /// Direct routing: the backend expects the VIP as destination, which
    /// only a frame sent to its MAC address keeps; not done here.
    DirectRouting,
    /// Full NAT: the datagram must leave from a pool address and port the
    /// data plane's mapping holds, which this path has no share in: dropped
    /// like the fragments `lb_fnat` meets.
    FullNat,
    /// The source is a VIP or a backend's address: no client sends from
    /// there (sent on, backends would answer each other, the loop the data
    /// plane refuses as `drop_backend_port_to_vip` and `drop_source_vip`).
    OursAsSource,
    /// The service has `allowed_sources`, and none holds the source
    /// (the data plane's `drop_source_not_allowed`).
    SourceNotAllowed,
}

/// The backend `id` if it is in use, serves `service_id` on the flow's VIP
/// and port, and is not DOWN (`select::live_backend` and the DOWN check).
fn usable<A: FamilyAddr>(
    p: &Placement,
    id: u32,
    service_id: u32,
    flow: &Flow<A>,
) -> Option<Backend<A>> {
    let b = A::backends(p).get(&id)?;
    let serves = b.flags & BACKEND_IN_USE != 0
        && b.flags & BACKEND_DOWN == 0
        && b.service_id == service_id
        && b.vip == flow.dst
        && b.vport == flow.dport
        && b.proto == flow.proto;
    serves.then_some(*b)
}

/// The flow's backend and what to write: its live connection entry's
/// backend, or its handshake record's (`earlier`), if still usable; else
/// placed as `handshake::open` places a flow (`schedule`). `now`: the data
/// plane's epoch.
pub fn place<A: FamilyAddr>(
    p: &Placement,
    flow: &Flow<A>,
    earlier: Earlier,
    held: &impl Held<A>,
    now: u32,
) -> Result<Placed<A>, Refusal> {
    // The data plane checked the source before passing the fragments on;
    // this is the last word before a socket sends from it.
    let ours = A::services(p).keys().any(|s| s.addr == flow.src)
        || A::backends(p).values().any(|b| b.flags & BACKEND_IN_USE != 0 && b.addr == flow.src);
    if ours {
        return Err(Refusal::OursAsSource);
    }
    let entry = |target: &Target<A>| Conn {
        backend_id: target.backend_id,
        service_id: target.service_id,
        last_seen: now,
        state: CONN_UDP,
        _pad: [0; 3],
    };
    let carried = |backend_id: u32, service_id: u32| {
        let backend = usable(p, backend_id, service_id, flow)?;
        Some(Target { service_id, backend_id, backend, new_flow: false })
    };
    let placed = match earlier {
        Earlier::Entry(c) => carried(c.backend_id, c.service_id)
            .map(|target| Placed { target, writes: Writes::default() }),
        // The flow's second datagram, as `handshake::settle` takes it: the
        // flow is recorded on the record's backend, and with it the client
        // of a persistent service.
        Earlier::Record { backend_id, flags } => A::backends(p)
            .get(&backend_id)
            .and_then(|b| carried(backend_id, b.service_id))
            .map(|target| {
                let remember = (flags & HANDSHAKE_PERSIST != 0)
                    .then(|| PersistKey::of(target.service_id, flow.src, flags));
                let writes = Writes { entry: Some(entry(&target)), remember, ..Writes::default() };
                Placed { target, writes }
            }),
        Earlier::Nothing => None,
    };
    let placed = match placed {
        Some(placed) => placed,
        None => anew(p, flow, earlier, held, now)?,
    };
    if placed.target.backend.flags & BACKEND_DSR != 0 {
        return Err(Refusal::DirectRouting);
    }
    if placed.target.backend.flags & BACKEND_FULLNAT != 0 {
        return Err(Refusal::FullNat);
    }
    Ok(placed)
}

/// A flow nothing carries on, placed (`schedule`), with what `lb_xdp`
/// writes for it: a first datagram's handshake record (`handshake::open`),
/// or, for a flow whose entry or record names a backend that can no longer
/// take it, its entry at once, and its persistent client with it. A new
/// flow on a backend with `max_conns` counts.
fn anew<A: FamilyAddr>(
    p: &Placement,
    flow: &Flow<A>,
    earlier: Earlier,
    held: &impl Held<A>,
    now: u32,
) -> Result<Placed<A>, Refusal> {
    let (service, target) = schedule(p, flow, held, now)?;
    let count = target.backend.max_conns != 0;
    let writes = if earlier == Earlier::Nothing {
        Writes { handshake: Some(handshake_flags(service.flags)), count, ..Writes::default() }
    } else {
        let remember = (service.flags & SVC_PERSIST != 0)
            .then(|| PersistKey::of(service.id, flow.src, service.flags));
        let entry = Conn {
            backend_id: target.backend_id,
            service_id: target.service_id,
            last_seen: now,
            state: CONN_UDP,
            _pad: [0; 3],
        };
        Writes { entry: Some(entry), remember, count, handshake: None }
    };
    Ok(Placed { target, writes })
}

/// Whether one of service `service_id`'s allowed prefixes holds `src`.
fn allowed<A: FamilyAddr>(p: &Placement, service_id: u32, src: A) -> bool {
    A::sources(p)
        .range((service_id, A::default(), 0)..)
        .take_while(|((id, ..), _)| *id == service_id)
        .any(|(&(_, network, len), _)| src.masked(u32::from(len)) == network)
}

/// A flow that nothing carries, placed as `handshake::open` places it: a
/// persistent client on its backend (`persisted`), else by its service's
/// table, with `max_conns` as `select::pick` applies it. `maglev` and `sh`
/// exactly; `rr`, `wrr` and `lc`, whose picks depend on a counter or load
/// only the kernel sees at that instant, by the flow hash's slot in the
/// service's table (their rotation sequence, their backend list): a
/// backend the scheduler would give such a flow too, in its share, and the
/// flow's later datagrams follow what is written for it.
fn schedule<A: FamilyAddr>(
    p: &Placement,
    flow: &Flow<A>,
    held: &impl Held<A>,
    now: u32,
) -> Result<(Service, Target<A>), Refusal> {
    let service = *A::services(p)
        .get(&Endpoint::new(flow.dst, flow.dport, flow.proto))
        .ok_or(Refusal::NoService)?;
    if service.flags & SVC_SOURCES != 0 && !allowed(p, service.id, flow.src) {
        return Err(Refusal::SourceNotAllowed);
    }
    let target = |backend_id, backend| Target {
        service_id: service.id,
        backend_id,
        backend,
        new_flow: true,
    };
    if let Some((id, backend)) = persisted(p, flow, &service, held, now) {
        return Ok((service, target(id, backend)));
    }
    let table = p.maglev.get(&service.id).ok_or(Refusal::NoBackend)?;
    let hash = match service.flags & SCHED_MASK {
        SCHED_SH => source_hash(flow.src),
        _ => flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto),
    };
    // Every scheduler's table holds `ring_size` slots in use (`lc`'s lists
    // its backends there).
    let slot = maglev_slot(hash, service.ring_size).ok_or(Refusal::NoBackend)?;
    let id = *table.get(slot as usize).ok_or(Refusal::NoBackend)?;
    if id == NO_BACKEND {
        return Err(Refusal::NoBackend);
    }
    let backend = usable(p, id, service.id, flow).ok_or(Refusal::NoBackend)?;
    if !held.conns(id).at_limit(backend.max_conns) {
        return Ok((service, target(id, backend)));
    }
    // At its limit (`select::within_limits`): the first backend below its
    // own, searched from the flow's slot.
    let other = first_free(p, table, held, slot).ok_or(Refusal::BackendsFull)?;
    let backend = usable(p, other, service.id, flow).ok_or(Refusal::NoBackend)?;
    Ok((service, target(other, backend)))
}

/// A persistent client's backend (`persist::persisted`): its entry's, if
/// within the service's time of it, and that backend still takes new
/// flows (in use by the service, not DOWN, not drained, below its
/// `max_conns`).
fn persisted<A: FamilyAddr>(
    p: &Placement,
    flow: &Flow<A>,
    service: &Service,
    held: &impl Held<A>,
    now: u32,
) -> Option<(u32, Backend<A>)> {
    if service.flags & SVC_PERSIST == 0 {
        return None;
    }
    let entry = held.persisted(&PersistKey::of(service.id, flow.src, service.flags))?;
    if expired(now, entry.last_seen, service.persist_ticks) {
        return None;
    }
    let id = entry.backend_id;
    let backend = usable(p, id, service.id, flow)?;
    let takes = backend.takes_new_flows() && !held.conns(id).at_limit(backend.max_conns);
    takes.then_some((id, backend))
}

/// `select::first_free`: the first backend of the table's usable list, in
/// the order of `stand_in_position` from `start`, that takes new flows and
/// is below its `max_conns`.
fn first_free<A: FamilyAddr>(
    p: &Placement,
    table: &[u32],
    held: &impl Held<A>,
    start: u32,
) -> Option<u32> {
    let list = MAGLEV_SIZE as usize;
    let count = table.get(list).copied()?.min(LC_MAX_BACKENDS);
    let ids = table.get(list + 1..)?;
    (0..LC_MAX_BACKENDS)
        .map(|step| stand_in_position(start, step))
        .filter(|position| *position < count)
        .filter_map(|position| ids.get(position as usize).copied())
        .find(|id| {
            A::backends(p)
                .get(id)
                .is_some_and(|b| b.takes_new_flows() && !held.conns(*id).at_limit(b.max_conns))
        })
}

#[cfg(test)]
mod tests {
    use lb_common::abi::{PROTO_UDP, SCHED_MAGLEV, SVC_PERSIST_PREFIX_SHIFT, TABLE_WORDS};

    use super::*;

    const VIP: [u8; 4] = [10, 77, 1, 100];

    /// In-memory `lb_persist` and `lb_be_conns`.
    struct Maps<A> {
        persist: Vec<(PersistKey<A>, Persist)>,
        conns: BTreeMap<u32, BackendConns>,
    }

    impl<A> Default for Maps<A> {
        fn default() -> Self {
            Self { persist: Vec::new(), conns: BTreeMap::new() }
        }
    }

    impl<A: FamilyAddr> Held<A> for Maps<A> {
        fn persisted(&self, key: &PersistKey<A>) -> Option<Persist> {
            self.persist.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
        }
        fn conns(&self, backend_id: u32) -> BackendConns {
            self.conns.get(&backend_id).copied().unwrap_or_default()
        }
    }

    /// Where `place` sends the datagram, with nothing in the maps.
    fn target<A: FamilyAddr>(
        p: &Placement,
        f: &Flow<A>,
        earlier: Earlier,
    ) -> Result<Target<A>, Refusal> {
        place(p, f, earlier, &Maps::default(), 0).map(|placed| placed.target)
    }

    /// A service's table as the controller writes it (`TABLE_WORDS`): 13
    /// slots cycling through `ids`, then `ids` as its usable list.
    fn table(ids: &[u32]) -> Arc<Vec<u32>> {
        let mut words = vec![NO_BACKEND; TABLE_WORDS];
        for (slot, word) in words.iter_mut().take(13).enumerate() {
            *word = ids[slot % ids.len()];
        }
        words[MAGLEV_SIZE as usize] = ids.len() as u32;
        words[MAGLEV_SIZE as usize + 1..][..ids.len()].copy_from_slice(ids);
        Arc::new(words)
    }

    fn backend(id: u8, flags: u16) -> Backend {
        Backend {
            addr: [10, 77, 2, id],
            port: 5353,
            flags: BACKEND_IN_USE | flags,
            service_id: 7,
            vip: VIP,
            vport: 53,
            proto: PROTO_UDP,
            snat_addr: 0,
            weight: 1,
            max_conns: 0,
        }
    }

    /// A service whose 13-slot table alternates backends 1 and 2.
    fn placement(flags: u32) -> Placement {
        let mut p = Placement::default();
        let key = Endpoint::new(VIP, 53, PROTO_UDP);
        p.services.insert(key, Service { id: 7, ring_size: 13, flags, persist_ticks: 0 });
        p.maglev.insert(7, table(&[1, 2]));
        p.backends.insert(1, backend(11, 0));
        p.backends.insert(2, backend(12, 0));
        p
    }

    fn flow(sport: u16) -> Flow {
        Flow { src: [10, 77, 1, 10], dst: VIP, sport, dport: 53, proto: PROTO_UDP, _pad: [0; 3] }
    }

    /// The backend id the table gives `f` (its flow hash's slot, of 13).
    fn slot_of(f: &Flow) -> u32 {
        maglev_slot(flow_hash(f.src, f.dst, f.sport, f.dport, f.proto), 13).unwrap()
    }

    fn conn(backend_id: u32) -> Conn {
        Conn { backend_id, service_id: 7, last_seen: 0, state: CONN_UDP, _pad: [0; 3] }
    }

    #[test]
    fn a_vip_or_a_backend_as_source_is_refused() {
        let p = placement(SCHED_MAGLEV);
        for src in [VIP, [10, 77, 2, 11], [10, 77, 2, 12]] {
            let f = Flow { src, ..flow(5353) };
            assert_eq!(target(&p, &f, Earlier::Nothing), Err(Refusal::OursAsSource), "{src:?}");
        }
    }

    #[test]
    fn a_new_flow_takes_the_maglev_slot_of_its_hash() {
        let p = placement(SCHED_MAGLEV);
        for sport in 1000..1050 {
            let f = flow(sport);
            let slot = maglev_slot(flow_hash(f.src, f.dst, f.sport, f.dport, f.proto), 13);
            let want = 1 + slot.unwrap() % 2;
            let got = target(&p, &f, Earlier::Nothing).unwrap();
            assert_eq!((got.backend_id, got.new_flow), (want, true), "port {sport}");
        }
    }

    #[test]
    fn source_hashing_ignores_the_port() {
        let p = placement(SCHED_SH);
        let first = target(&p, &flow(1000), Earlier::Nothing).unwrap().backend_id;
        assert!(
            (1001..1050)
                .all(|s| target(&p, &flow(s), Earlier::Nothing).unwrap().backend_id == first)
        );
    }

    #[test]
    fn a_known_flow_keeps_its_backend_unless_it_is_unusable() {
        let mut p = placement(SCHED_MAGLEV);
        let f = flow(1000);
        let fresh = target(&p, &f, Earlier::Nothing).unwrap().backend_id;
        let other = 3 - fresh;
        let kept = target(&p, &f, Earlier::Entry(conn(other))).unwrap();
        assert_eq!((kept.backend_id, kept.new_flow), (other, false));
        p.backends.get_mut(&other).unwrap().flags |= BACKEND_DOWN;
        let moved = target(&p, &f, Earlier::Entry(conn(other))).unwrap();
        assert_eq!((moved.backend_id, moved.new_flow), (fresh, true), "its backend DOWN");
    }

    #[test]
    fn no_service_no_backend_and_direct_routing_are_refused() {
        let mut p = placement(SCHED_MAGLEV);
        let mut elsewhere = flow(1000);
        elsewhere.dport = 54;
        assert_eq!(target(&p, &elsewhere, Earlier::Nothing), Err(Refusal::NoService));
        for b in p.backends.values_mut() {
            b.flags |= BACKEND_DSR;
        }
        assert_eq!(target(&p, &flow(1000), Earlier::Nothing), Err(Refusal::DirectRouting));
        for b in p.backends.values_mut() {
            b.flags = (b.flags & !BACKEND_DSR) | BACKEND_FULLNAT;
        }
        assert_eq!(target(&p, &flow(1000), Earlier::Nothing), Err(Refusal::FullNat));
        p.maglev.insert(7, Arc::new(vec![NO_BACKEND; 13]));
        assert_eq!(target(&p, &flow(1000), Earlier::Nothing), Err(Refusal::NoBackend));
    }

    const VIP6: [u8; 16] = [0xfd, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

    fn addr6(last: u8) -> [u8; 16] {
        let mut a = [0xfd, 0x77, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a[15] = last;
        a
    }

    /// `placement`'s IPv4 service, and an IPv6 one (id 8) on VIP6:53 whose
    /// 13-slot table alternates backends 3 and 4.
    fn dual(flags: u32) -> Placement {
        let mut p = placement(flags);
        let key = Endpoint::new(VIP6, 53, PROTO_UDP);
        p.services6.insert(key, Service { id: 8, ring_size: 13, flags, persist_ticks: 0 });
        p.maglev.insert(8, table(&[3, 4]));
        for (id, last) in [(3, 11), (4, 12)] {
            let b = Backend {
                addr: addr6(last),
                port: 5353,
                flags: BACKEND_IN_USE,
                service_id: 8,
                vip: VIP6,
                vport: 53,
                proto: PROTO_UDP,
                snat_addr: 0,
                weight: 1,
                max_conns: 0,
            };
            p.backends6.insert(id, b);
        }
        p
    }

    fn flow6(sport: u16) -> Flow<[u8; 16]> {
        let mut src = VIP6;
        src[15] = 0x10;
        Flow { src, dst: VIP6, sport, dport: 53, proto: PROTO_UDP, _pad: [0; 3] }
    }

    #[test]
    fn an_ipv6_flow_takes_the_maglev_slot_of_its_hash_in_its_own_family() {
        let p = dual(SCHED_MAGLEV);
        for sport in 1000..1050 {
            let f = flow6(sport);
            let slot = maglev_slot(flow_hash(f.src, f.dst, f.sport, f.dport, f.proto), 13);
            let want = 3 + slot.unwrap() % 2;
            let got = target(&p, &f, Earlier::Nothing).unwrap();
            assert_eq!((got.backend_id, got.new_flow), (want, true), "port {sport}");
            assert_eq!(got.backend.addr, addr6(8 + want as u8), "port {sport}");
        }
        // The IPv4 service's table and backends are not the IPv6 flow's.
        let mut v4_only = dual(SCHED_MAGLEV);
        v4_only.services6.clear();
        assert_eq!(target(&v4_only, &flow6(1000), Earlier::Nothing), Err(Refusal::NoService));
        // An entry naming an IPv4 backend's id is no IPv6 flow's: placed anew.
        let moved = target(&p, &flow6(1000), Earlier::Entry(conn(1))).unwrap();
        assert!(moved.new_flow && [3, 4].contains(&moved.backend_id), "{moved:?}");
    }

    #[test]
    fn an_ipv6_vip_or_backend_as_source_is_refused() {
        let p = dual(SCHED_MAGLEV);
        for src in [VIP6, addr6(11), addr6(12)] {
            let f = Flow { src, ..flow6(5353) };
            assert_eq!(target(&p, &f, Earlier::Nothing), Err(Refusal::OursAsSource), "{src:?}");
        }
    }

    /// A change to a backend, named in a test's table.
    type Change = fn(&mut Backend);

    const PERSISTENT: u32 = SCHED_MAGLEV | SVC_PERSIST | (32 << SVC_PERSIST_PREFIX_SHIFT);

    /// `placement(PERSISTENT)` with a 100-tick persistence, the client's
    /// flow on port 1000, the backend the table gives it, and maps that
    /// remember the client on the other backend at tick 50.
    fn remembered() -> (Placement, Flow, u32, Maps<[u8; 4]>) {
        let mut p = placement(PERSISTENT);
        p.services.values_mut().for_each(|s| s.persist_ticks = 100);
        let f = flow(1000);
        let fresh = 1 + slot_of(&f) % 2;
        let mut maps = Maps::default();
        let entry = Persist { backend_id: 3 - fresh, last_seen: 50 };
        maps.persist.push((PersistKey::of(7, f.src, PERSISTENT), entry));
        (p, f, fresh, maps)
    }

    #[test]
    fn a_persistent_client_goes_to_its_backend_while_it_takes_new_flows() {
        let (p, f, fresh, maps) = remembered();
        let kept = 3 - fresh;
        let placed = place(&p, &f, Earlier::Nothing, &maps, 100).unwrap();
        assert_eq!((placed.target.backend_id, placed.target.new_flow), (kept, true));
        // A first datagram leaves a record that remembers the client when
        // its flow is recorded (as `handshake::open`); nothing else yet.
        let record = HANDSHAKE_PERSIST | (32 << SVC_PERSIST_PREFIX_SHIFT);
        assert_eq!(placed.writes, Writes { handshake: Some(record), ..Writes::default() });

        let at = |p: &Placement, maps: &Maps<[u8; 4]>, now| {
            place(p, &f, Earlier::Nothing, maps, now).unwrap().target.backend_id
        };
        assert_eq!(at(&p, &maps, 150), kept, "100 ticks after its last flow");
        assert_eq!(at(&p, &maps, 151), fresh, "expired: the table decides");
        let unusable: [(&str, Change); 3] = [
            ("DOWN", |b| b.flags |= BACKEND_DOWN),
            ("drained", |b| b.weight = 0),
            ("at its limit", |b| b.max_conns = 1),
        ];
        for (what, change) in unusable {
            let mut changed = p.clone();
            change(changed.backends.get_mut(&kept).unwrap());
            let mut full = Maps { persist: maps.persist.clone(), ..Maps::default() };
            full.conns.insert(kept, BackendConns { active: 1, inactive: 0 });
            assert_eq!(at(&changed, &full, 100), fresh, "its backend {what}");
        }
        let mut removed = p.clone();
        removed.backends.remove(&kept);
        assert_eq!(at(&removed, &maps, 100), fresh, "its backend removed");
        let mut other = p.clone();
        other.backends.get_mut(&kept).unwrap().service_id = 9;
        assert_eq!(at(&other, &maps, 100), fresh, "its id another service's now");
        let mut forgetful = p.clone();
        forgetful.services.values_mut().for_each(|s| s.flags = SCHED_MAGLEV);
        assert_eq!(at(&forgetful, &maps, 100), fresh, "the service no longer persistent");
    }

    #[test]
    fn a_record_or_a_moved_entry_records_a_persistent_client_with_its_flow() {
        let (p, f, fresh, maps) = remembered();
        let kept = 3 - fresh;
        let flags = HANDSHAKE_PERSIST | (24 << SVC_PERSIST_PREFIX_SHIFT);
        let record = Earlier::Record { backend_id: fresh, flags };
        let placed = place(&p, &f, record, &maps, 120).unwrap();
        assert_eq!((placed.target.backend_id, placed.target.new_flow), (fresh, false));
        let entry = Conn { last_seen: 120, ..conn(fresh) };
        let key = PersistKey { service_id: 7, client: [10, 77, 1, 0] };
        let want = Writes { entry: Some(entry), remember: Some(key), ..Writes::default() };
        assert_eq!(placed.writes, want, "the record's prefix, as `settle` keys the client");
        let plain = Earlier::Record { backend_id: fresh, flags: 0 };
        let placed = place(&p, &f, plain, &maps, 120).unwrap();
        assert_eq!(placed.writes, Writes { entry: Some(entry), ..Writes::default() });

        // An entry carries its flow and writes nothing.
        let placed = place(&p, &f, Earlier::Entry(conn(fresh)), &maps, 120).unwrap();
        assert_eq!((placed.target.backend_id, placed.writes), (fresh, Writes::default()));
        // Its backend DOWN: placed anew (the client's backend), recorded at
        // once, and the client with it.
        let mut down = p.clone();
        down.backends.get_mut(&fresh).unwrap().flags |= BACKEND_DOWN;
        let placed = place(&down, &f, Earlier::Entry(conn(fresh)), &maps, 120).unwrap();
        assert_eq!((placed.target.backend_id, placed.target.new_flow), (kept, true));
        let key = PersistKey::of(7, f.src, PERSISTENT);
        let entry = Conn { last_seen: 120, ..conn(kept) };
        let want = Writes { entry: Some(entry), remember: Some(key), ..Writes::default() };
        assert_eq!(placed.writes, want);
    }

    /// Three backends (ids 1, 2, 3) in the table and its usable list.
    fn three() -> Placement {
        let mut p = placement(SCHED_MAGLEV);
        p.maglev.insert(7, table(&[1, 2, 3]));
        p.backends.insert(3, backend(13, 0));
        p
    }

    /// A flow of `three` whose slot (its position in the stand-in search)
    /// is `position` modulo 64, and the backend the table gives it.
    fn flow_at(position: impl Fn(u32) -> bool) -> (Flow, u32) {
        let f = (1000..5000).map(flow).find(|f| position(slot_of(f) & 63)).unwrap();
        (f, 1 + slot_of(&f) % 3)
    }

    #[test]
    fn a_backend_at_its_limit_takes_no_new_flow_and_a_placed_flow_counts() {
        let p = three();
        let full = BackendConns { active: 1, inactive: 1 };
        let (f, id) = flow_at(|_| true);
        let placed = place(&p, &f, Earlier::Nothing, &Maps::default(), 0).unwrap();
        assert_eq!((placed.target.backend_id, placed.writes.count), (id, false), "no limit");

        let mut limited = p.clone();
        limited.backends.values_mut().for_each(|b| b.max_conns = 2);
        let mut maps = Maps::default();
        let placed = place(&limited, &f, Earlier::Nothing, &maps, 0).unwrap();
        assert_eq!((placed.target.backend_id, placed.writes.count), (id, true), "below: counted");

        // Full: the first below its limit from the flow's slot on (past the
        // list's 3 positions, the search goes round to position 0).
        let (f, id) = flow_at(|position| position >= 3);
        maps.conns.insert(id, full);
        let want = if id == 1 { 2 } else { 1 };
        let placed = place(&limited, &f, Earlier::Nothing, &maps, 0).unwrap();
        assert_eq!((placed.target.backend_id, placed.target.new_flow), (want, true));
        assert!(placed.writes.count, "the stand-in counts");
        // From position 1 (backend 2, full): the next position's, not the
        // list's first.
        let (f, id) = flow_at(|position| position == 1);
        assert_eq!(id, 2, "slot 1 of the table cycling 1, 2, 3");
        let mut maps = Maps::default();
        maps.conns.insert(id, full);
        let want = 3;
        let placed = place(&limited, &f, Earlier::Nothing, &maps, 0).unwrap();
        assert_eq!(placed.target.backend_id, want, "from position 1, {id} full");
        // A drained backend is no stand-in.
        let mut drained = limited.clone();
        drained.backends.get_mut(&want).unwrap().weight = 0;
        let placed = place(&drained, &f, Earlier::Nothing, &maps, 0).unwrap();
        assert!(![id, want].contains(&placed.target.backend_id), "{placed:?}");

        for id in 1..=3 {
            maps.conns.insert(id, full);
        }
        assert_eq!(place(&limited, &f, Earlier::Nothing, &maps, 0), Err(Refusal::BackendsFull));
        // An entry's flow goes on, whatever the count.
        let placed = place(&limited, &f, Earlier::Entry(conn(id)), &maps, 0).unwrap();
        assert_eq!((placed.target.backend_id, placed.writes), (id, Writes::default()));
    }

    #[test]
    fn an_ipv6_persistent_client_goes_to_its_backend_unless_it_is_full() {
        let mut p = dual(PERSISTENT);
        p.services6.values_mut().for_each(|s| {
            s.persist_ticks = 100;
            s.flags = SCHED_MAGLEV | SVC_PERSIST | (64 << SVC_PERSIST_PREFIX_SHIFT);
        });
        let f = flow6(1000);
        let fresh = target(&p, &f, Earlier::Nothing).unwrap().backend_id;
        let kept = 7 - fresh;
        let mut maps = Maps::default();
        let mut network = f.src;
        network[8..].fill(0);
        let key = PersistKey { service_id: 8, client: network };
        maps.persist.push((key, Persist { backend_id: kept, last_seen: 0 }));
        let placed = place(&p, &f, Earlier::Nothing, &maps, 10).unwrap();
        assert_eq!(placed.target.backend_id, kept, "its /64 remembered");
        p.backends6.get_mut(&kept).unwrap().max_conns = 1;
        maps.conns.insert(kept, BackendConns { active: 0, inactive: 1 });
        let placed = place(&p, &f, Earlier::Nothing, &maps, 10).unwrap();
        assert_eq!((placed.target.backend_id, placed.writes.count), (fresh, false), "full");
    }
}
