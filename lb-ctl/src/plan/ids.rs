//! How the planner names services and backends: by endpoint (`BackendKey`,
//! what the health checks and the API know them by), and by the stable ids
//! the kernel maps index (`Ids`), kept across reloads.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::abi::{self, MAX_BACKENDS, MAX_SERVICES};
use rustc_hash::{FxHashMap, FxHashSet};

use super::image::Image;
use crate::desired::model::Service;

/// Stable numbering of services and backends across reloads: a service or
/// backend that stays keeps its id, so its Maglev slots and its flows in the
/// connection table stay valid.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    pub(super) services: FxHashMap<Key, u32>,
    pub(super) backends: FxHashMap<(Key, Key), u32>,
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

/// An endpoint as the planner names it, of either address family: a VIP
/// (a service), or a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl Key {
    pub const fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        Self { addr, port, proto }
    }

    /// Address and port (`[2001:db8::1]:80` when printed).
    pub const fn socket(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }
}

/// A backend as the health checks and the reconciler name it: (service, backend).
pub type BackendKey = (Key, Key);

/// An address as an IPv4 or IPv6 map holds it.
pub trait MapAddr: lb_common::addr::Addr + Ord {
    fn ip(self) -> IpAddr;
    /// `ip` as this family's map holds it; `None` for the other family.
    fn of(ip: IpAddr) -> Option<Self>;
}

impl MapAddr for [u8; 4] {
    fn ip(self) -> IpAddr {
        Ipv4Addr::from(self).into()
    }
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        }
    }
}

impl MapAddr for [u8; 16] {
    fn ip(self) -> IpAddr {
        Ipv6Addr::from(self).into()
    }
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6.octets()),
            IpAddr::V4(_) => None,
        }
    }
}

/// The key of a backend as the maps hold it (its entry names its service).
pub fn held_backend_key<A: MapAddr>(b: &abi::Backend<A>) -> BackendKey {
    (Key::new(b.vip.ip(), b.vport, b.proto), Key::new(b.addr.ip(), b.port, b.proto))
}

pub fn backend_key(s: &Service, address: IpAddr, port: u16) -> BackendKey {
    (service_endpoint(s), backend_endpoint(address, port, s))
}

pub fn service_endpoint(s: &Service) -> Key {
    Key::new(s.vip, s.port, s.protocol.number())
}

pub(super) fn backend_endpoint(address: IpAddr, port: u16, service: &Service) -> Key {
    Key::new(address, port, service.protocol.number())
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
        let services = (image
            .v4
            .services
            .iter()
            .map(|(k, s)| (Key::new(k.addr.ip(), k.port, k.proto), s.id)))
        .chain(
            image.v6.services.iter().map(|(k, s)| (Key::new(k.addr.ip(), k.port, k.proto), s.id)),
        )
        .collect();
        let backends: FxHashMap<_, _> =
            (image.v4.backends.iter().map(|(id, b)| (held_backend_key(b), *id)))
                .chain(image.v6.backends.iter().map(|(id, b)| (held_backend_key(b), *id)))
                .collect();
        let highest = image.v4.backends.keys().chain(image.v6.backends.keys()).max();
        let next_backend = highest.map_or(0, |id| (id + 1) % MAX_BACKENDS);
        Self { services, backends, next_backend }
    }

    pub fn service(&self, s: &Service) -> Option<u32> {
        self.services.get(&service_endpoint(s)).copied()
    }

    pub fn backend(&self, s: &Service, address: IpAddr, port: u16) -> Option<u32> {
        self.backends.get(&(service_endpoint(s), backend_endpoint(address, port, s))).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        desired::model::testing::service,
        plan::{diff::diff, testing::plan},
    };

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
    fn ids_are_stable_and_freed_ids_are_reused_last() {
        let (ids, _) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1), (13, 1)])]);
        let web = service("web", 80, &[(11, 1), (13, 1), (14, 1)]);
        let (ids2, _) = plan(&ids, std::slice::from_ref(&web));
        assert_eq!(ids2.backend(&web, Ipv4Addr::new(10, 77, 2, 11).into(), 80), Some(0));
        assert_eq!(ids2.backend(&web, Ipv4Addr::new(10, 77, 2, 13).into(), 80), Some(2));
        // 12 had id 1; the newcomer does not get it.
        assert_eq!(ids2.backend(&web, Ipv4Addr::new(10, 77, 2, 14).into(), 80), Some(3));
    }

    #[test]
    fn a_service_replaced_in_one_reload_gets_a_fresh_id() {
        let (ids, _) = plan(&Ids::default(), &[service("web", 80, &[(11, 1)])]);
        let moved = service("web", 8080, &[(11, 1)]);
        let (ids, _) = plan(&ids, std::slice::from_ref(&moved));
        assert_eq!(ids.service(&moved), Some(1), "id 0 was freed in the same apply");
    }

    #[test]
    fn too_many_services_is_an_error_not_a_partial_plan() {
        let services: Vec<Service> =
            (0..=MAX_SERVICES as u16).map(|i| service(&format!("s{i}"), 1000 + i, &[])).collect();
        assert_eq!(Ids::default().assign(&services).unwrap_err(), PlanError::TooManyServices);
    }
}
