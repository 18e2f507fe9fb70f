//! A full-NAT service's pool as `lb_snat` holds it, and its default
//! addresses: the load balancer's own address toward each backend.
use std::net::{IpAddr, SocketAddr, UdpSocket};

use lb_common::fullnat::{SNAT_ADDRS_MAX, SnatPool};

use super::ids::MapAddr;
use crate::desired::model::Service;

/// `s`'s pool (`s` is full NAT, of this family): its `snat_addresses`,
/// or when it names none, the addresses the kernel would send from toward
/// its backends (`default_addresses`). A pool of no address makes every
/// new flow count as `drop_snat_exhausted` until a route appears.
pub fn pool<A: MapAddr>(s: &Service) -> SnatPool<A> {
    let addresses = if s.snat.addresses.is_empty() {
        default_addresses(s.backends.iter().map(|b| SocketAddr::new(b.address, b.port)))
    } else {
        s.snat.addresses.clone()
    };
    let mut pool = SnatPool {
        port_min: s.snat.ports.first,
        port_count: u16::try_from(s.snat.ports.count()).unwrap_or(u16::MAX),
        ..SnatPool::default()
    };
    for addr in addresses.into_iter().filter_map(A::of).take(SNAT_ADDRS_MAX) {
        pool.addrs[pool.count as usize] = addr;
        pool.count += 1;
    }
    pool
}

/// The distinct source addresses the kernel picks for routes to
/// `backends`, in their order, at most `SNAT_ADDRS_MAX`: the one place
/// the planner asks the kernel anything. A UDP socket connected to a
/// backend learns its route's source without sending a packet.
pub fn default_addresses(backends: impl Iterator<Item = SocketAddr>) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for backend in backends {
        let unspecified: IpAddr = if backend.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let source = UdpSocket::bind((unspecified, 0))
            .and_then(|socket| socket.connect(backend).map(|()| socket))
            .and_then(|socket| socket.local_addr());
        if let Ok(local) = source
            && !found.contains(&local.ip())
            && found.len() < SNAT_ADDRS_MAX
        {
            found.push(local.ip());
        }
    }
    found
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
        let written = pool::<[u8; 4]>(&s);
        assert_eq!(written.count, 2);
        assert_eq!(&written.addrs[..2], &[[10, 77, 2, 1], [10, 77, 2, 2]]);
        assert_eq!((written.port_min, written.port_count), (40_000, 64));
        // The whole range of ports fits the map's 16 bits but one: 65535.
        let all = Service {
            snat: Snat { ports: PortRange { first: 1, last: 65_535 }, ..s.snat.clone() },
            ..s
        };
        assert_eq!(pool::<[u8; 4]>(&all).port_count, 65_535);
    }

    #[test]
    fn the_default_address_is_the_source_toward_the_backend() {
        // Loopback routes from 127.0.0.1, whatever the machine.
        let found = default_addresses(
            [
                SocketAddr::from((Ipv4Addr::LOCALHOST, 80)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 81)),
            ]
            .into_iter(),
        );
        assert_eq!(found, vec![IpAddr::from(Ipv4Addr::LOCALHOST)], "one address, once");
    }
}
