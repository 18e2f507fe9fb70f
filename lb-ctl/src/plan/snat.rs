//! A full-NAT service's pool as `lb_snat` holds it, and its default
//! addresses: the load balancer's own address toward each backend.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use lb_common::fullnat::{SNAT_ADDRS_MAX, SnatPool};

use super::ids::MapAddr;
use crate::desired::model::Service;

/// `s`'s pool (`s` is full NAT, of this family) and, for each of its
/// backends in order, the `snat_addr` its `lb_reals` entry carries. With
/// `snat_addresses` the pool is those, and a flow's hash picks one (every
/// `snat_addr` 0). Without, the pool is the load balancer's own address
/// toward each backend (`route_source`), and each backend's flows leave
/// from its own: the address of the interface its route goes out of, as
/// the kernel would send from. A backend with no route, or whose source
/// is not among the `SNAT_ADDRS_MAX` lowest, is left to the hash; a
/// pool of no address makes every new flow count as exhausted until a
/// route appears (the next apply looks again).
pub fn pool<A: MapAddr>(s: &Service) -> (SnatPool<A>, Vec<u8>) {
    let mut pool = SnatPool {
        port_min: s.snat.ports.first,
        port_count: u16::try_from(s.snat.ports.count()).unwrap_or(u16::MAX),
        ..SnatPool::default()
    };
    if !s.snat.addresses.is_empty() {
        for addr in s.snat.addresses.iter().filter_map(|a| A::of(*a)).take(SNAT_ADDRS_MAX) {
            pool.addrs[pool.count as usize] = addr;
            pool.count += 1;
        }
        return (pool, vec![0; s.backends.len()]);
    }
    let sources: Vec<Option<A>> = s
        .backends
        .iter()
        .map(|b| route_source(SocketAddr::new(b.address, b.port)).and_then(A::of))
        .collect();
    // In address order, not the backends': a backend added or removed
    // moves no other backend's index (the pool and the backends are
    // written apart), unless it brings or takes the last of a source.
    let distinct: BTreeSet<A> = sources.iter().flatten().copied().collect();
    for addr in distinct.into_iter().take(SNAT_ADDRS_MAX) {
        pool.addrs[pool.count as usize] = addr;
        pool.count += 1;
    }
    let taken = &pool.addrs[..pool.count as usize];
    let by_backend = sources
        .iter()
        .map(|source| {
            // 1 + the index: 0 says "by hash".
            source.and_then(|addr| taken.iter().position(|a| *a == addr)).map_or(0, |i| i as u8 + 1)
        })
        .collect();
    (pool, by_backend)
}

/// The source address the kernel picks for its route to `backend`: the one
/// place the planner asks the kernel anything. A UDP socket connected to
/// the backend learns its route's source without sending a packet.
pub fn route_source(backend: SocketAddr) -> Option<IpAddr> {
    let unspecified: IpAddr = if backend.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((unspecified, 0)).ok()?;
    socket.connect(backend).ok()?;
    socket.local_addr().ok().map(|local| local.ip())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::desired::model::{Forwarding, PortRange, Snat, testing::service};

    #[test]
    fn the_pool_holds_the_configured_addresses_and_ports() {
        let s = Service {
            forwarding: Forwarding::FullNat,
            snat: Snat {
                addresses: vec![
                    Ipv4Addr::new(10, 77, 2, 1).into(),
                    Ipv4Addr::new(10, 77, 2, 2).into(),
                ],
                ports: PortRange { first: 40_000, last: 40_063 },
            },
            ..service("web", 80, &[(11, 1)])
        };
        let (written, by_backend) = pool::<[u8; 4]>(&s);
        assert_eq!(by_backend, vec![0], "a flow's hash picks the address");
        assert_eq!(written.count, 2);
        assert_eq!(&written.addrs[..2], &[[10, 77, 2, 1], [10, 77, 2, 2]]);
        assert_eq!((written.port_min, written.port_count), (40_000, 64));
        // The whole range of ports fits the map's 16 bits but one: 65535.
        let all = Service {
            snat: Snat { ports: PortRange { first: 1, last: 65_535 }, ..s.snat.clone() },
            ..s
        };
        assert_eq!(pool::<[u8; 4]>(&all).0.port_count, 65_535);
    }

    #[test]
    fn the_default_address_is_the_source_toward_each_backend() {
        // Loopback routes from 127.0.0.1, whatever the machine; no route
        // to the IPv6 address from an IPv4 pool's point of view.
        let mut s = Service { forwarding: Forwarding::FullNat, ..service("web", 80, &[(1, 1); 3]) };
        for (b, address) in s.backends.iter_mut().zip(["127.0.0.1", "127.0.0.2", "::1"]) {
            b.address = address.parse().expect("an address");
        }
        let (written, by_backend) = pool::<[u8; 4]>(&s);
        assert_eq!(written.count, 1, "one address, once");
        assert_eq!(written.addrs[0], [127, 0, 0, 1]);
        assert_eq!(by_backend, vec![1, 1, 0], "each backend its own; none of another family");
    }
}
