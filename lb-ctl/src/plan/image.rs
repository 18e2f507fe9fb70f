//! The image: everything the kernel maps should hold for a set of services
//! under their ids, each service's scheduler table built (and reused while
//! what it was built from stays the same), and the data plane's own
//! settings (`settings`).
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::abi::{
    self, ADDR_BACKEND, ADDR_REAL, ADDR_VIP, BACKEND_DOWN, BACKEND_DSR, BACKEND_FULLNAT,
    BACKEND_IN_USE, EPOCH_TICK_MS, Endpoint, LC_MAX_BACKENDS, MAGLEV_SIZE, NO_BACKEND,
    REAL_SLOT_SHARED, SCHED_LC, SCHED_MAGLEV, SCHED_RR, SCHED_SH, SCHED_WRR, SVC_PERSIST,
    SVC_PERSIST_PREFIX_SHIFT, SVC_REJECT, SVC_SOURCES, TABLE_WORDS, addr_slot, real_slot,
};
use lb_common::fullnat::SnatPool;
use rustc_hash::FxHashMap;

use super::{
    ids::{BackendKey, Ids, MapAddr, backend_endpoint, service_endpoint},
    maglev, rotation,
    settings::Settings,
    snat,
};
use crate::desired::model::{AdminState, Forwarding, Scheduler, Service};

/// Everything the kernel maps hold for a set of services, and the data
/// plane's own settings. The default is what new maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The data plane's own settings: its interfaces, timeouts, policy, meta.
    pub settings: Settings,
    /// By service id, whatever the service's family (ids are one space).
    pub maglev: BTreeMap<u32, Arc<Vec<u32>>>,
    /// The IPv4 services' maps (`lb_services`, `lb_backends`, ...).
    pub v4: FamilyImage<[u8; 4]>,
    /// The IPv6 services' maps (`lb_services6`, `lb_backends6`, ...).
    pub v6: FamilyImage<[u8; 16]>,
}

/// What one address family's maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyImage<A> {
    pub services: BTreeMap<Endpoint<A>, abi::Service>,
    pub backends: BTreeMap<u32, abi::Backend<A>>,
    pub reals: BTreeMap<Endpoint<A>, abi::Real<A>>,
    pub vips: BTreeMap<A, u32>,
    /// Backend address -> number of backends on it, NAT and direct routing.
    pub backend_addrs: BTreeMap<A, u32>,
    /// Non-zero slots of the address pre-filter.
    pub addrs: BTreeMap<u32, u8>,
    /// Non-zero slots of the direct-mapped backend index.
    pub real_slots: BTreeMap<u32, u32>,
    /// `lb_sources`: (service id, network, prefix length) of each allowed
    /// source, valued 1.
    pub sources: BTreeMap<(u32, A, u8), u32>,
    /// `lb_snat`: each full-NAT service's pool, by service id.
    pub snat: BTreeMap<u32, SnatPool<A>>,
}

impl<A: MapAddr + Ord> FamilyImage<A> {
    /// This image without the services `ids` and their backends, and
    /// without what followed from them (their VIPs' counts and pre-filter
    /// bits, their backends' addresses, reverse entries and index slots),
    /// built as the planner builds an image.
    #[must_use]
    pub fn without_services(&self, ids: &BTreeSet<u32>) -> Self {
        let mut builder = Builder::default();
        for (key, service) in self.services.iter().filter(|(_, s)| !ids.contains(&s.id)) {
            builder.put_service_entry(*key, *service);
        }
        for (id, backend) in self.backends.iter().filter(|(_, b)| !ids.contains(&b.service_id)) {
            builder.put_backend(*id, *backend);
        }
        builder.image.sources = self
            .sources
            .iter()
            .filter(|((id, ..), _)| !ids.contains(id))
            .map(|(k, v)| (*k, *v))
            .collect();
        builder.image.snat =
            self.snat.iter().filter(|(id, _)| !ids.contains(id)).map(|(k, v)| (*k, *v)).collect();
        builder.finish()
    }
}

/// Scheduler tables already built, by what they were built from: a change
/// to one service rebuilds that service's table only (a Maglev table of
/// 65537 slots takes a millisecond or more).
#[derive(Clone, Debug, Default)]
pub struct Tables(FxHashMap<(Scheduler, Vec<maglev::Entry>), SchedulerTable>);

type SchedulerTable = (Arc<Vec<u32>>, u32, u32);

/// The image for `services` under `ids` (from `Ids::assign` on the same
/// services), with default settings (see `Image::settings`).
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
    let (mut v4, mut v6) = (Builder::default(), Builder::default());
    for s in services {
        let key = service_endpoint(s);
        let service_id = ids.services[&key];
        // Backups take new flows only while no primary can: otherwise they
        // are drained (weight 0: no slot, their open flows go on).
        let backups_serve =
            s.backups_serve(|b| !down.contains(&(key, backend_endpoint(b.address, b.port, s))));
        let entries = if s.vip.is_ipv4() {
            v4.service(s, service_id, (ids, down), backups_serve)
        } else {
            v6.service(s, service_id, (ids, down), backups_serve)
        };
        let inputs = (s.scheduler, entries);
        let (table, ring_size, scheduler) = tables.0.remove(&inputs).unwrap_or_else(|| {
            let (table, ring_size, scheduler) = scheduler_table(s.scheduler, &inputs.1);
            (Arc::new(table), ring_size, scheduler)
        });
        built.0.insert(inputs, (Arc::clone(&table), ring_size, scheduler));
        image.maglev.insert(service_id, table);
        let service = service_entry(s, service_id, ring_size, scheduler);
        if s.vip.is_ipv4() {
            v4.put_service(s, service);
        } else {
            v6.put_service(s, service);
        }
    }
    image.v4 = v4.finish();
    image.v6 = v6.finish();
    *tables = built;
    image
}

/// The service's entry in `lb_services` (`lb_services6`): its table's
/// ring size, its scheduler and its options.
fn service_entry(s: &Service, id: u32, ring_size: u32, scheduler: u32) -> abi::Service {
    let mut flags = scheduler | if s.reject { SVC_REJECT } else { 0 };
    let mut persist_ticks = 0;
    if let Some(p) = s.persistence {
        flags |= SVC_PERSIST | (u32::from(p.netmask) << SVC_PERSIST_PREFIX_SHIFT);
        persist_ticks =
            u32::try_from(p.timeout.as_millis() / u128::from(EPOCH_TICK_MS)).unwrap_or(u32::MAX);
    }
    if !s.allowed_sources.is_empty() {
        flags |= SVC_SOURCES;
    }
    abi::Service { id, ring_size, flags, persist_ticks }
}

/// One family's image as its services are added: collected, then built
/// in bulk (a `BTreeMap` built from sorted pairs costs far less than as
/// many inserts, with 10 000 backends and more).
struct Builder<A> {
    image: FamilyImage<A>,
    backends: Vec<(u32, abi::Backend<A>)>,
    reals: Vec<(Endpoint<A>, abi::Real<A>)>,
    slots: Vec<(u32, u32)>,
}

impl<A: MapAddr> Default for Builder<A> {
    fn default() -> Self {
        Self {
            image: FamilyImage::default(),
            backends: Vec::new(),
            reals: Vec::new(),
            slots: Vec::new(),
        }
    }
}

impl<A: MapAddr + Ord> Builder<A> {
    /// Adds `s`'s backends (`s` is of this family: validation saw to it);
    /// returns the entries its scheduler table is built from.
    fn service(
        &mut self,
        s: &Service,
        service_id: u32,
        (ids, down): (&Ids, &BTreeSet<BackendKey>),
        backups_serve: bool,
    ) -> Vec<maglev::Entry> {
        let key = service_endpoint(s);
        let vip = A::of(key.addr);
        let dsr = s.forwarding == Forwarding::Dsr;
        let fullnat = s.forwarding == Forwarding::FullNat;
        // Each backend's `snat_addr` (full NAT only), in `s.backends`' order.
        let mut snat_addrs = vec![0; s.backends.len()];
        if fullnat {
            let (pool, by_backend) = snat::pool(s);
            self.image.snat.insert(service_id, pool);
            snat_addrs = by_backend;
        }
        let mut entries = Vec::with_capacity(s.backends.len());
        for (b, &snat_addr) in s.backends.iter().zip(&snat_addrs) {
            let bkey = backend_endpoint(b.address, b.port, s);
            let id = ids.backends[&(key, bkey)];
            // Maintenance cuts the backend off like a failed health check.
            let is_down = down.contains(&(key, bkey)) || b.state == AdminState::Maint;
            let standing_by = b.backup && !backups_serve;
            let weight = if is_down || standing_by { 0 } else { b.effective_weight() };
            entries.push(maglev::Entry { address: b.address, port: b.port, weight, id });
            let (Some(vip), Some(addr)) = (vip, A::of(b.address)) else {
                continue;
            };
            let mut flags = BACKEND_IN_USE;
            if is_down {
                flags |= BACKEND_DOWN;
            }
            if dsr {
                flags |= BACKEND_DSR;
            }
            if fullnat {
                flags |= BACKEND_FULLNAT;
            }
            let backend = abi::Backend {
                addr,
                port: b.port,
                flags,
                service_id,
                vip,
                vport: key.port,
                proto: key.proto,
                snat_addr,
                weight,
                max_conns: b.max_conns,
            };
            self.put_backend(id, backend);
        }
        entries
    }

    /// Adds backend `id`, and what follows from it: its address's count
    /// and pre-filter bits, and (NAT) its reverse entry and index slot.
    fn put_backend(&mut self, id: u32, backend: abi::Backend<A>) {
        let (addr, port, proto) = (backend.addr, backend.port, backend.proto);
        self.backends.push((id, backend));
        let image = &mut self.image;
        // Every backend, whatever its forwarding: never answered, never
        // the destination of a reply (see `Counter::DropReplyToOurs`).
        *image.backend_addrs.entry(addr).or_insert(0) += 1;
        *image.addrs.entry(addr_slot(addr)).or_insert(0) |= ADDR_BACKEND;
        // A direct-routing backend answers the client itself: nothing
        // comes back to rewrite.
        if backend.flags & BACKEND_DSR == 0 {
            *image.addrs.entry(addr_slot(addr)).or_insert(0) |= ADDR_REAL;
            self.slots.push((real_slot(addr, port, proto), id + 1));
            let real = abi::Real {
                vip: backend.vip,
                vport: backend.vport,
                _pad: 0,
                service_id: backend.service_id,
                backend_id: id,
            };
            self.reals.push((Endpoint::new(addr, port, proto), real));
        }
    }

    fn put_service(&mut self, s: &Service, service: abi::Service) {
        let key = service_endpoint(s);
        let Some(vip) = A::of(key.addr) else {
            return;
        };
        for p in &s.allowed_sources {
            if let Some(addr) = A::of(p.addr) {
                self.image.sources.insert((service.id, addr, p.len), 1);
            }
        }
        self.put_service_entry(Endpoint::new(vip, key.port, key.proto), service);
    }

    /// Adds the service entry `key`, and its VIP's count and pre-filter bit.
    fn put_service_entry(&mut self, key: Endpoint<A>, service: abi::Service) {
        let image = &mut self.image;
        image.services.insert(key, service);
        *image.vips.entry(key.addr).or_insert(0) += 1;
        *image.addrs.entry(addr_slot(key.addr)).or_insert(0) |= ADDR_VIP;
    }

    fn finish(mut self) -> FamilyImage<A> {
        self.image.backends = self.backends.into_iter().collect();
        self.image.reals = self.reals.into_iter().collect();
        // A slot two backends hash to is marked shared (the exact table decides).
        self.slots.sort_unstable();
        let mut real_slots: Vec<(u32, u32)> = Vec::with_capacity(self.slots.len());
        for (slot, value) in self.slots {
            match real_slots.last_mut() {
                Some(last) if last.0 == slot => last.1 = REAL_SLOT_SHARED,
                _ => real_slots.push((slot, value)),
            }
        }
        self.image.real_slots = real_slots.into_iter().collect();
        self.image
    }
}

/// A service's table (`TABLE_WORDS`: `MAGLEV_SIZE` slots, then the list
/// of the backends that hold slots, see `abi::MaglevTable`), how many of
/// its slots are in use, and the scheduler's code for the data plane.
fn scheduler_table(scheduler: Scheduler, entries: &[maglev::Entry]) -> (Vec<u32>, u32, u32) {
    let size = MAGLEV_SIZE as usize;
    let (sequence, code) = match scheduler {
        Scheduler::Maglev => (maglev::build(entries, MAGLEV_SIZE), SCHED_MAGLEV),
        Scheduler::SourceHash => (maglev::build(entries, MAGLEV_SIZE), SCHED_SH),
        Scheduler::RoundRobin => (rotation::round_robin(entries), SCHED_RR),
        Scheduler::WeightedRoundRobin => (rotation::smooth_weighted(entries, size), SCHED_WRR),
        // The data plane compares the live backends' connections at each new flow.
        Scheduler::LeastConnections => (rotation::round_robin(entries), SCHED_LC),
    };
    let used = sequence.len() as u32;
    let mut table = sequence;
    table.resize(size, NO_BACKEND);
    // Where a new flow whose backend is at its `max_conns` looks for another.
    let usable: Vec<u32> = entries
        .iter()
        .filter(|e| e.weight > 0)
        .map(|e| e.id)
        .take(LC_MAX_BACKENDS as usize)
        .collect();
    table.push(usable.len() as u32);
    table.extend(&usable);
    table.resize(TABLE_WORDS, NO_BACKEND);
    (table, used, code)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        desired::model::{Backend, testing::service},
        plan::{ids::backend_key, testing::plan},
    };

    #[test]
    fn direct_routing_backends_are_flagged_and_never_taken_for_replies() {
        let nat = service("api", 81, &[(21, 1)]);
        let dsr =
            Service { forwarding: Forwarding::Dsr, ..service("web", 80, &[(11, 1), (12, 1)]) };
        let (_, image) = plan(&Ids::default(), &[dsr, nat]);
        let flagged = image.v4.backends.values().filter(|b| b.flags & BACKEND_DSR != 0).count();
        assert_eq!(flagged, 2, "only the dsr service's backends");
        assert_eq!(image.v4.reals.len(), 1, "only the NAT backend's replies are rewritten");
        assert_eq!(image.v4.real_slots.len(), 1);
        let flags = |last| image.v4.addrs.get(&addr_slot([10, 77, 2, last])).copied().unwrap_or(0);
        assert_eq!(flags(21) & ADDR_REAL, ADDR_REAL, "the pre-filter lets NAT replies in");
        assert_eq!(flags(11) & ADDR_REAL, 0, "and not the direct-routing backends' traffic");
        for last in [11, 12, 21] {
            assert_eq!(flags(last) & ADDR_BACKEND, ADDR_BACKEND, "every backend may be one");
            assert_eq!(image.v4.backend_addrs.get(&[10, 77, 2, last]), Some(&1), "and is, exactly");
        }
        assert_eq!(image.v4.backend_addrs.len(), 3);
    }

    #[test]
    fn an_ipv6_service_fills_the_ipv6_maps_under_the_shared_ids() {
        let v4 = service("web", 80, &[(11, 1)]);
        let mut v6 = service("web6", 80, &[(11, 1), (12, 1)]);
        v6.vip = "fd77:1::100".parse().unwrap();
        for (b, last) in v6.backends.iter_mut().zip([0x11_u8, 0x12]) {
            b.address = format!("fd77:2::{last:x}").parse().unwrap();
        }
        let (ids, image) = plan(&Ids::default(), &[v4, v6.clone()]);
        assert_eq!((image.v4.services.len(), image.v6.services.len()), (1, 1));
        assert_eq!((image.v4.backends.len(), image.v6.backends.len()), (1, 2));
        let vip: [u8; 16] = "fd77:1::100".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let service = image.v6.services[&Endpoint::new(vip, 80, 6)];
        assert_eq!(Some(service.id), ids.service(&v6));
        assert!(image.maglev.contains_key(&service.id), "its table among the shared ones");
        // Backend ids are one space: the IPv6 backends take ids the IPv4 one does not.
        let mut all: Vec<u32> =
            image.v4.backends.keys().chain(image.v6.backends.keys()).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3);
        assert_eq!(image.v6.reals.len(), 2);
        assert_eq!(image.v6.vips.get(&vip), Some(&1));
        let flags = image.v6.addrs.get(&addr_slot(vip)).copied().unwrap_or(0);
        assert_eq!(flags & ADDR_VIP, ADDR_VIP);
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
        let mut web = service("web", 80, &[(1, 1)]);
        let template = web.backends[0];
        web.backends = vec![
            Backend { address: first.0.into(), port: first.1, ..template },
            Backend { address: second.0.into(), port: second.1, ..template },
        ];
        let (_, image) = plan(&Ids::default(), &[web]);
        assert_eq!(image.v4.real_slots[&target], REAL_SLOT_SHARED);
        assert_eq!(image.v4.reals.len(), 2, "both stay in the exact table");
        assert_eq!(image.v4.without_services(&BTreeSet::new()), image.v4, "rebuilt alike");
    }

    /// An image without some services is the image of the others, under
    /// the same ids (what `diff` writes first when an id changes family):
    /// shared VIPs and backend addresses keep the others' counts and bits,
    /// direct routing and NAT alike.
    #[test]
    fn an_image_without_a_service_is_the_image_of_the_others() {
        let web = service("web", 80, &[(11, 1), (12, 1)]);
        let api = service("api", 81, &[(11, 1), (13, 1)]);
        let dsr = Service { forwarding: Forwarding::Dsr, ..service("dsr", 82, &[(14, 1)]) };
        let mut web6 = service("web6", 80, &[(11, 1)]);
        web6.vip = "fd77:1::100".parse().unwrap();
        web6.backends[0].address = "fd77:2::11".parse().unwrap();
        let all = [web, api.clone(), dsr.clone(), web6];
        let (ids, image) = plan(&Ids::default(), &all);
        assert_eq!(image.v4.without_services(&BTreeSet::new()), image.v4);
        assert_eq!(image.v6.without_services(&BTreeSet::new()), image.v6);
        let gone: BTreeSet<u32> =
            [&all[0], &all[3]].iter().map(|s| ids.service(s).unwrap()).collect();
        let rest = super::image(&[api, dsr], &ids, &BTreeSet::new());
        assert_eq!(image.v4.without_services(&gone), rest.v4, "web's share taken out");
        assert_eq!(image.v6.without_services(&gone), FamilyImage::default(), "and web6's");
    }

    /// A backup gets no slot while one primary is usable (UP, active,
    /// weight > 0), and every slot once none is; its entry stays, so its
    /// open flows go on, as with a drain.
    #[test]
    fn backups_take_the_table_only_while_no_primary_is_usable() {
        let mut web = service("web", 80, &[(11, 1), (12, 1), (13, 2), (14, 1)]);
        web.backends[3].backup = true;
        let services = [web.clone()];
        let ids = Ids::default().assign(&services).unwrap();
        let sid = ids.service(&web).unwrap();
        let key = |i: usize| backend_key(&web, web.backends[i].address, web.backends[i].port);
        let id = |i: usize| ids.backends[&key(i)];
        let holders = |down: &[usize], services: &[Service]| {
            let down: BTreeSet<BackendKey> = down.iter().map(|&i| key(i)).collect();
            let image = image(services, &ids, &down);
            let slots = &image.maglev[&sid][..MAGLEV_SIZE as usize];
            let holders: BTreeSet<u32> = slots.iter().copied().collect();
            (holders, image.v4.backends[&id(3)].weight)
        };
        let primaries: BTreeSet<u32> = (0..3).map(id).collect();
        assert_eq!(holders(&[], &services), (primaries, 0), "standing by");
        assert_eq!(holders(&[0, 1], &services).0, BTreeSet::from([id(2)]));
        assert_eq!(holders(&[0, 1, 2], &services), (BTreeSet::from([id(3)]), 1), "serving");
        // Drained, in maintenance or at weight 0, a primary is not usable either.
        let mut out = services.clone();
        out[0].backends[0].state = AdminState::Drain;
        out[0].backends[1].state = AdminState::Maint;
        out[0].backends[2].weight = 0;
        assert_eq!(holders(&[], &out).0, BTreeSet::from([id(3)]));
        // One primary back: the backup loses every slot, keeps its entry.
        out[0].backends[2].weight = 1;
        let (held, weight) = holders(&[], &out);
        assert_eq!((held, weight), (BTreeSet::from([id(2)]), 0));
        // A DOWN backup serves nothing, and no backup means the usual refusal.
        assert_eq!(holders(&[0, 1, 2, 3], &services).0, BTreeSet::from([NO_BACKEND]));
    }
}
