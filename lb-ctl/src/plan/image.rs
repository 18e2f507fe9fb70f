//! The image: everything the kernel maps should hold for a set of services
//! under their ids, each service's scheduler table built (and reused while
//! what it was built from stays the same), and the data plane's own
//! settings (`settings`).
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::abi::{
    self, ADDR_BACKEND, ADDR_REAL, ADDR_VIP, BACKEND_DOWN, BACKEND_DSR, BACKEND_IN_USE, Endpoint,
    MAGLEV_SIZE, NO_BACKEND, REAL_SLOT_SHARED, SCHED_LC, SCHED_MAGLEV, SCHED_RR, SCHED_SH,
    SCHED_WRR, SVC_REJECT, addr_slot, real_slot,
};
use rustc_hash::FxHashMap;

use super::{
    ids::{BackendKey, Ids, backend_endpoint, service_endpoint},
    maglev, rotation,
    settings::Settings,
};
use crate::desired::model::{AdminState, Forwarding, Scheduler, Service};

/// Everything the kernel maps hold for a set of services, and the data
/// plane's own settings. The default is what new maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The data plane's own settings: its interfaces, timeouts, policy, meta.
    pub settings: Settings,
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
        // Backups take new flows only while no primary can: otherwise they
        // are drained (weight 0: no slot, their open flows go on).
        let backups_serve =
            s.backups_serve(|b| !down.contains(&(key, backend_endpoint(b.address, b.port, s))));
        let mut entries = Vec::with_capacity(s.backends.len());
        for b in &s.backends {
            let bkey = backend_endpoint(b.address, b.port, s);
            let id = ids.backends[&(key, bkey)];
            // Maintenance cuts the backend off like a failed health check.
            let is_down = down.contains(&(key, bkey)) || b.state == AdminState::Maint;
            let standing_by = b.backup && !backups_serve;
            let weight = if is_down || standing_by { 0 } else { b.effective_weight() };
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
            Backend { address: first.0, port: first.1, ..template },
            Backend { address: second.0, port: second.1, ..template },
        ];
        let (_, image) = plan(&Ids::default(), &[web]);
        assert_eq!(image.real_slots[&target], REAL_SLOT_SHARED);
        assert_eq!(image.reals.len(), 2, "both stay in the exact table");
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
            let holders: BTreeSet<u32> = image.maglev[&sid].iter().copied().collect();
            (holders, image.backends[&id(3)].weight)
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
