//! The oracle's model of full NAT (`forwarding = "fullnat"`): each
//! full-NAT service's pool, and the mappings the program's outputs showed.
//! A flow keeps the pool address and port it first left from; no two live
//! flows share one (per backend and protocol); a backend's packet to a
//! pool port goes back to the flow that holds it, and to no one else.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use lb_common::fullnat::SNAT_ADDRS_MAX;
use lb_ctl::{
    desired::model::{Forwarding, Service},
    plan::snat::route_source,
};

use super::{Endpoint4, Parsed, ipv4};

/// A full-NAT service's pool, as the program got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub addrs: Vec<Ipv4Addr>,
    pub first: u16,
    pub last: u16,
}

impl Pool {
    /// `s`'s pool (`s` is full NAT): its addresses, or the route's sources
    /// toward its backends, as the planner finds them (in the namespace the
    /// oracle is built in). Each backend's flows leave from the source
    /// toward it; the fixtures check that, the oracle only the pool.
    pub fn of(s: &Service) -> Self {
        let addresses = if s.snat.addresses.is_empty() {
            // Each source once, the lowest four (as the planner takes them).
            let sources: BTreeSet<IpAddr> = s
                .backends
                .iter()
                .filter_map(|b| route_source(SocketAddr::new(b.address, b.port)))
                .collect();
            sources.into_iter().take(SNAT_ADDRS_MAX).collect()
        } else {
            s.snat.addresses.clone()
        };
        let addrs = addresses
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        Self { addrs, first: s.snat.ports.first, last: s.snat.ports.last }
    }

    pub fn holds(&self, (addr, port): Endpoint4) -> bool {
        self.addrs.contains(&addr) && (self.first..=self.last).contains(&port)
    }
}

/// A client's flow: (client, VIP and port, protocol).
type ClientFlow = (Endpoint4, Endpoint4, u8);
/// A mapping's reverse key: (backend, pool address and port, protocol).
type PoolKey = (Endpoint4, Endpoint4, u8);

/// The mappings seen so far, both ways.
#[derive(Default)]
pub struct Mappings {
    by_client: RefCell<BTreeMap<ClientFlow, (Endpoint4, Endpoint4)>>,
    by_pool: RefCell<BTreeMap<PoolKey, ClientFlow>>,
}

impl Mappings {
    /// Where `flow` left from and went, if it was seen: (pool, backend).
    pub fn of_client(&self, flow: ClientFlow) -> Option<(Endpoint4, Endpoint4)> {
        self.by_client.borrow().get(&flow).copied()
    }

    /// The client flow whose replies `key` carries, if one was seen.
    pub fn of_pool(&self, key: PoolKey) -> Option<ClientFlow> {
        self.by_pool.borrow().get(&key).copied()
    }

    /// Whether `flow` may leave from `pool` to `backend`: its own mapping,
    /// or a port no other flow holds.
    pub fn may_take(&self, flow: ClientFlow, pool: Endpoint4, backend: Endpoint4) -> bool {
        match self.of_pool((backend, pool, flow.2)) {
            Some(holder) => holder == flow,
            None => self.of_client(flow).is_none_or(|held| held == (pool, backend)),
        }
    }

    /// `flow` left from `pool` to `backend`.
    pub fn record(&self, flow: ClientFlow, pool: Endpoint4, backend: Endpoint4) {
        self.by_client.borrow_mut().insert(flow, (pool, backend));
        self.by_pool.borrow_mut().insert((backend, pool, flow.2), flow);
    }
}

/// The pools of the full-NAT services among `services`, by VIP, port and
/// protocol, and the backends' endpoints of each.
pub fn pools(services: &[Service], proto_of: fn(&Service) -> u8) -> BTreeMap<ClientKey, Pool> {
    services
        .iter()
        .filter(|s| s.forwarding == Forwarding::FullNat)
        .map(|s| ((ipv4(s.vip), s.port, proto_of(s)), Pool::of(s)))
        .collect()
}

/// A service's (VIP, port, protocol).
pub type ClientKey = (Ipv4Addr, u16, u8);

/// The client flow of a parsed client's packet.
pub fn client_flow(p: &Parsed) -> ClientFlow {
    ((p.src, p.sport), (p.dst, p.dport), p.proto)
}
