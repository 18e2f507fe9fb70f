//! Where a reassembled datagram goes: the data plane's own decision, made
//! from what the reconciler applied (the same tables `lb_xdp` reads), so
//! that the datagram and the flow's later ones, which XDP places, land on
//! the same backend. Pure: tested on the host.
use std::{collections::BTreeMap, sync::Arc};

use lb_common::{
    abi::{
        BACKEND_DOWN, BACKEND_DSR, BACKEND_IN_USE, Backend, Conn, Endpoint, Flow, NO_BACKEND,
        SCHED_MASK, SCHED_SH, SVC_SOURCES, Service, source_hash,
    },
    hash::{flow_hash, maglev_slot},
};

use crate::{
    plan::{ids::MapAddr, image::Image},
    write::dataplane::AnyFlow,
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
}

/// Where the datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<A = [u8; 4]> {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: Backend<A>,
    /// The connection table did not hold the flow: the caller writes it.
    pub new_flow: bool,
}

/// Why a datagram goes nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No service on the datagram's VIP, port and protocol (any more).
    NoService,
    /// The service has no usable backend.
    NoBackend,
    /// Direct routing: the backend expects the VIP as destination, which
    /// only a frame sent to its MAC address keeps; not done here.
    DirectRouting,
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

/// The flow's backend: its live connection entry's (`conn`, expired ones
/// already left out), else the service's scheduler's, as `select::schedule`
/// picks it. `maglev` and `sh` exactly; `rr`, `wrr` and `lc`, whose picks
/// depend on a counter or load only the kernel sees at that instant, by
/// the flow hash's slot in the service's table (their rotation sequence,
/// their backend list): a backend the scheduler would give such a flow too,
/// in its share, and the flow's later datagrams follow the entry written.
pub fn place<A: FamilyAddr>(
    p: &Placement,
    flow: &Flow<A>,
    conn: Option<Conn>,
) -> Result<Target<A>, Refusal> {
    // The data plane checked the source before passing the fragments on;
    // this is the last word before a socket sends from it.
    let ours = A::services(p).keys().any(|s| s.addr == flow.src)
        || A::backends(p).values().any(|b| b.flags & BACKEND_IN_USE != 0 && b.addr == flow.src);
    if ours {
        return Err(Refusal::OursAsSource);
    }
    let known = conn.and_then(|c| {
        let backend = usable(p, c.backend_id, c.service_id, flow)?;
        Some(Target {
            service_id: c.service_id,
            backend_id: c.backend_id,
            backend,
            new_flow: false,
        })
    });
    let target = match known {
        Some(target) => target,
        None => schedule(p, flow)?,
    };
    if target.backend.flags & BACKEND_DSR != 0 {
        return Err(Refusal::DirectRouting);
    }
    Ok(target)
}

/// Whether one of service `service_id`'s allowed prefixes holds `src`.
fn allowed<A: FamilyAddr>(p: &Placement, service_id: u32, src: A) -> bool {
    A::sources(p)
        .range((service_id, A::default(), 0)..)
        .take_while(|((id, ..), _)| *id == service_id)
        .any(|(&(_, network, len), _)| src.masked(u32::from(len)) == network)
}

/// A flow the connection table does not know, placed by its service's table.
/// (Persistence and `max_conns` are the data plane's alone: a datagram
/// placed here goes by the table, as a packet met mid-way does.)
fn schedule<A: FamilyAddr>(p: &Placement, flow: &Flow<A>) -> Result<Target<A>, Refusal> {
    let service = A::services(p)
        .get(&Endpoint::new(flow.dst, flow.dport, flow.proto))
        .ok_or(Refusal::NoService)?;
    if service.flags & SVC_SOURCES != 0 && !allowed(p, service.id, flow.src) {
        return Err(Refusal::SourceNotAllowed);
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
    Ok(Target { service_id: service.id, backend_id: id, backend, new_flow: true })
}

#[cfg(test)]
mod tests {
    use lb_common::abi::{CONN_UDP, PROTO_UDP, SCHED_MAGLEV};

    use super::*;

    const VIP: [u8; 4] = [10, 77, 1, 100];

    fn backend(id: u8, flags: u16) -> Backend {
        Backend {
            addr: [10, 77, 2, id],
            port: 5353,
            flags: BACKEND_IN_USE | flags,
            service_id: 7,
            vip: VIP,
            vport: 53,
            proto: PROTO_UDP,
            _pad: 0,
            weight: 1,
            max_conns: 0,
        }
    }

    /// A service whose 13-slot table alternates backends 1 and 2.
    fn placement(flags: u32) -> Placement {
        let mut p = Placement::default();
        let key = Endpoint::new(VIP, 53, PROTO_UDP);
        p.services.insert(key, Service { id: 7, ring_size: 13, flags, persist_ticks: 0 });
        p.maglev.insert(7, Arc::new((0..13).map(|i| 1 + i % 2).collect()));
        p.backends.insert(1, backend(11, 0));
        p.backends.insert(2, backend(12, 0));
        p
    }

    fn flow(sport: u16) -> Flow {
        Flow { src: [10, 77, 1, 10], dst: VIP, sport, dport: 53, proto: PROTO_UDP, _pad: [0; 3] }
    }

    fn conn(backend_id: u32) -> Conn {
        Conn { backend_id, service_id: 7, last_seen: 0, state: CONN_UDP, _pad: [0; 3] }
    }

    #[test]
    fn a_vip_or_a_backend_as_source_is_refused() {
        let p = placement(SCHED_MAGLEV);
        for src in [VIP, [10, 77, 2, 11], [10, 77, 2, 12]] {
            let f = Flow { src, ..flow(5353) };
            assert_eq!(place(&p, &f, None), Err(Refusal::OursAsSource), "{src:?}");
        }
    }

    #[test]
    fn a_new_flow_takes_the_maglev_slot_of_its_hash() {
        let p = placement(SCHED_MAGLEV);
        for sport in 1000..1050 {
            let f = flow(sport);
            let slot = maglev_slot(flow_hash(f.src, f.dst, f.sport, f.dport, f.proto), 13);
            let want = 1 + slot.unwrap() % 2;
            let got = place(&p, &f, None).unwrap();
            assert_eq!((got.backend_id, got.new_flow), (want, true), "port {sport}");
        }
    }

    #[test]
    fn source_hashing_ignores_the_port() {
        let p = placement(SCHED_SH);
        let first = place(&p, &flow(1000), None).unwrap().backend_id;
        assert!((1001..1050).all(|s| place(&p, &flow(s), None).unwrap().backend_id == first));
    }

    #[test]
    fn a_known_flow_keeps_its_backend_unless_it_is_unusable() {
        let mut p = placement(SCHED_MAGLEV);
        let f = flow(1000);
        let fresh = place(&p, &f, None).unwrap().backend_id;
        let other = 3 - fresh;
        let kept = place(&p, &f, Some(conn(other))).unwrap();
        assert_eq!((kept.backend_id, kept.new_flow), (other, false));
        p.backends.get_mut(&other).unwrap().flags |= BACKEND_DOWN;
        let moved = place(&p, &f, Some(conn(other))).unwrap();
        assert_eq!((moved.backend_id, moved.new_flow), (fresh, true), "its backend DOWN");
    }

    #[test]
    fn no_service_no_backend_and_direct_routing_are_refused() {
        let mut p = placement(SCHED_MAGLEV);
        let mut elsewhere = flow(1000);
        elsewhere.dport = 54;
        assert_eq!(place(&p, &elsewhere, None), Err(Refusal::NoService));
        for b in p.backends.values_mut() {
            b.flags |= BACKEND_DSR;
        }
        assert_eq!(place(&p, &flow(1000), None), Err(Refusal::DirectRouting));
        p.maglev.insert(7, Arc::new(vec![NO_BACKEND; 13]));
        assert_eq!(place(&p, &flow(1000), None), Err(Refusal::NoBackend));
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
        p.maglev.insert(8, Arc::new((0..13).map(|i| 3 + i % 2).collect()));
        for (id, last) in [(3, 11), (4, 12)] {
            let b = Backend {
                addr: addr6(last),
                port: 5353,
                flags: BACKEND_IN_USE,
                service_id: 8,
                vip: VIP6,
                vport: 53,
                proto: PROTO_UDP,
                _pad: 0,
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
            let got = place(&p, &f, None).unwrap();
            assert_eq!((got.backend_id, got.new_flow), (want, true), "port {sport}");
            assert_eq!(got.backend.addr, addr6(8 + want as u8), "port {sport}");
        }
        // The IPv4 service's table and backends are not the IPv6 flow's.
        let mut v4_only = dual(SCHED_MAGLEV);
        v4_only.services6.clear();
        assert_eq!(place(&v4_only, &flow6(1000), None), Err(Refusal::NoService));
        // An entry naming an IPv4 backend's id is no IPv6 flow's: placed anew.
        let moved = place(&p, &flow6(1000), Some(conn(1))).unwrap();
        assert!(moved.new_flow && [3, 4].contains(&moved.backend_id), "{moved:?}");
    }

    #[test]
    fn an_ipv6_vip_or_backend_as_source_is_refused() {
        let p = dual(SCHED_MAGLEV);
        for src in [VIP6, addr6(11), addr6(12)] {
            let f = Flow { src, ..flow6(5353) };
            assert_eq!(place(&p, &f, None), Err(Refusal::OursAsSource), "{src:?}");
        }
    }
}
