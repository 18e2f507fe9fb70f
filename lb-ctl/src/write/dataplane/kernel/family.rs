//! One address family's maps (`lb_services`, ... and `lb_services6`, ...):
//! opened, read back into an image, written op by op.
use std::sync::Arc;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData},
};
use lb_common::abi::{
    BACKEND_IN_USE, Backend, Endpoint, MAX_SERVICES, Real, Service, SourceList, SourcePrefix,
};
use lb_common::fullnat::SnatPool;

use super::{deleted, err, typed};
use crate::{
    plan::{diff::FamilyOp, ids::MapAddr, image::FamilyImage},
    write::dataplane::DataplaneError,
};

/// The names of a family's maps, as the object (and `bpftool`) has them.
pub struct Names {
    pub services: &'static str,
    pub backends: &'static str,
    pub reals: &'static str,
    pub vips: &'static str,
    pub backend_addrs: &'static str,
    pub addrs: &'static str,
    pub real_slots: &'static str,
    pub sources: &'static str,
    pub snat: &'static str,
}

pub const V4: Names = Names {
    services: "lb_services",
    backends: "lb_backends",
    reals: "lb_reals",
    vips: "lb_vips",
    backend_addrs: "lb_backend_addrs",
    addrs: "lb_addrs",
    real_slots: "lb_real_slots",
    sources: "lb_sources",
    snat: "lb_snat",
};

pub const V6: Names = Names {
    services: "lb_services6",
    backends: "lb_backends6",
    reals: "lb_reals6",
    vips: "lb_vips6",
    backend_addrs: "lb_be_addrs6",
    addrs: "lb_addrs6",
    real_slots: "lb_real_slots6",
    sources: "lb_sources6",
    snat: "lb_snat6",
};

/// A family's maps, as the reconciler writes them.
pub struct FamilyMaps<A: MapAddr + Pod> {
    names: &'static Names,
    services: HashMap<MapData, Endpoint<A>, Service>,
    pub(super) backends: Array<MapData, Backend<A>>,
    reals: HashMap<MapData, Endpoint<A>, Real<A>>,
    vips: HashMap<MapData, A, u32>,
    backend_addrs: HashMap<MapData, A, u32>,
    addrs: Array<MapData, u8>,
    real_slots: Array<MapData, u32>,
    /// Each service's allowed prefixes, by service id.
    sources: Array<MapData, SourceList<A>>,
    snat: Array<MapData, SnatPool<A>>,
}

impl<A: MapAddr + Pod> FamilyMaps<A> {
    /// Takes the family's maps out of `ebpf`.
    pub fn open(ebpf: &mut Ebpf, names: &'static Names) -> Result<Self, DataplaneError> {
        Ok(Self {
            names,
            services: typed(ebpf, names.services)?,
            backends: typed(ebpf, names.backends)?,
            reals: typed(ebpf, names.reals)?,
            vips: typed(ebpf, names.vips)?,
            backend_addrs: typed(ebpf, names.backend_addrs)?,
            addrs: typed(ebpf, names.addrs)?,
            real_slots: typed(ebpf, names.real_slots)?,
            sources: typed(ebpf, names.sources)?,
            snat: typed(ebpf, names.snat)?,
        })
    }

    /// The maps' names.
    pub fn names(&self) -> &'static Names {
        self.names
    }

    /// What the maps hold, into `image`; each service's table is read from
    /// `maglev` into `tables` (the tables are shared by both families).
    pub fn read(
        &self,
        image: &mut FamilyImage<A>,
        maglev: &Array<MapData, super::Table>,
        tables: &mut std::collections::BTreeMap<u32, Arc<Vec<u32>>>,
    ) -> Result<(), DataplaneError> {
        let reading = |name: &str| err(format!("reading {name}"));
        for entry in &self.services {
            let (key, service) = entry.map_err(reading(self.names.services))?;
            let table = maglev.get(&service.id, 0).map_err(reading("lb_maglev"))?;
            tables.insert(service.id, Arc::new(table.to_vec()));
            image.services.insert(key, service);
        }
        for (id, backend) in (0..).zip(self.backends.iter()) {
            let backend = backend.map_err(reading(self.names.backends))?;
            if backend.flags & BACKEND_IN_USE != 0 {
                image.backends.insert(id, backend);
            }
        }
        for entry in &self.reals {
            let (key, real) = entry.map_err(reading(self.names.reals))?;
            image.reals.insert(key, real);
        }
        for entry in &self.vips {
            let (vip, count) = entry.map_err(reading(self.names.vips))?;
            image.vips.insert(vip, count);
        }
        for entry in &self.backend_addrs {
            let (addr, count) = entry.map_err(reading(self.names.backend_addrs))?;
            image.backend_addrs.insert(addr, count);
        }
        for (slot, flags) in (0..).zip(self.addrs.iter()) {
            let flags = flags.map_err(reading(self.names.addrs))?;
            if flags != 0 {
                image.addrs.insert(slot, flags);
            }
        }
        for (slot, value) in (0..).zip(self.real_slots.iter()) {
            let value = value.map_err(reading(self.names.real_slots))?;
            if value != 0 {
                image.real_slots.insert(slot, value);
            }
        }
        for (service_id, list) in (0..).zip(self.sources.iter()) {
            let list = list.map_err(reading(self.names.sources))?;
            for prefix in list.listed() {
                image.sources.insert((service_id, prefix.network, prefix_len(&prefix.mask)), 1);
            }
        }
        for (id, pool) in (0..).zip(self.snat.iter()) {
            let pool = pool.map_err(reading(self.names.snat))?;
            if pool != SnatPool::default() {
                image.snat.insert(id, pool);
            }
        }
        Ok(())
    }

    /// Writes `op`.
    pub fn apply(&mut self, op: &FamilyOp<A>) -> Result<(), DataplaneError> {
        let n = self.names;
        let writing = |name: &str| err(format!("writing {name}"));
        let deleting = |name: &str| format!("deleting from {name}");
        match op {
            FamilyOp::PutBackend(id, b) => {
                self.backends.set(*id, b, 0).map_err(writing(n.backends))
            }
            FamilyOp::ClearBackend(id) => self
                .backends
                .set(*id, Backend::default(), 0)
                .map_err(err(format!("clearing {}", n.backends))),
            FamilyOp::PutReal(k, r) => self.reals.insert(k, r, 0).map_err(writing(n.reals)),
            FamilyOp::DelReal(k) => deleted(self.reals.remove(k), &deleting(n.reals)),
            FamilyOp::PutAddrFlags(slot, flags) => {
                self.addrs.set(*slot, flags, 0).map_err(writing(n.addrs))
            }
            FamilyOp::PutRealSlot(slot, value) => {
                self.real_slots.set(*slot, value, 0).map_err(writing(n.real_slots))
            }
            FamilyOp::PutVip(v, count) => self.vips.insert(v, count, 0).map_err(writing(n.vips)),
            FamilyOp::DelVip(v) => deleted(self.vips.remove(v), &deleting(n.vips)),
            FamilyOp::PutBackendAddr(a, count) => {
                self.backend_addrs.insert(a, count, 0).map_err(writing(n.backend_addrs))
            }
            FamilyOp::DelBackendAddr(a) => {
                deleted(self.backend_addrs.remove(a), &deleting(n.backend_addrs))
            }
            FamilyOp::PutService(k, s) => {
                self.services.insert(k, s, 0).map_err(writing(n.services))
            }
            FamilyOp::DelService(k) => deleted(self.services.remove(k), &deleting(n.services)),
            FamilyOp::PutSource(key) => self.change_sources(key, |list, prefix| {
                // A service's old and new prefixes, 64 each at most
                // (`MAX_ALLOWED_SOURCES`), fit (`SOURCE_SLOTS`).
                if !list.add(prefix) {
                    return Err("the service's list is full");
                }
                Ok(())
            }),
            FamilyOp::DelSource(key) => self.change_sources(key, |list, prefix| {
                list.remove(&prefix);
                Ok(())
            }),
            FamilyOp::PutSnat(id, pool) => self.snat.set(*id, pool, 0).map_err(writing(n.snat)),
            FamilyOp::ClearSnat(id) => self
                .snat
                .set(*id, SnatPool::default(), 0)
                .map_err(err(format!("clearing {}", n.snat))),
        }
    }
}

impl<A: MapAddr + Pod> FamilyMaps<A> {
    /// Rewrites the list of the service of `(service id, network, prefix
    /// length)` as `change` changes it with that prefix: one array value,
    /// read and written whole (the data plane reads it meanwhile: see
    /// `SourceList::remove`).
    fn change_sources(
        &mut self,
        &(service_id, network, len): &(u32, A, u8),
        change: impl FnOnce(&mut SourceList<A>, SourcePrefix<A>) -> Result<(), &'static str>,
    ) -> Result<(), DataplaneError> {
        let name = self.names.sources;
        if service_id >= MAX_SERVICES {
            return Err(DataplaneError::kernel(
                format!("writing {name}"),
                "service id out of range",
            ));
        }
        let mut list = self.sources.get(&service_id, 0).map_err(err(format!("reading {name}")))?;
        let prefix = SourcePrefix { network, mask: A::prefix_mask(u32::from(len)) };
        change(&mut list, prefix)
            .map_err(|why| DataplaneError::kernel(format!("writing {name}"), why))?;
        self.sources.set(service_id, list, 0).map_err(err(format!("writing {name}")))
    }
}

/// The length of the prefix whose mask is `mask` (`Addr::prefix_mask`).
fn prefix_len<A: MapAddr>(mask: &A) -> u8 {
    (0..=8 * A::LEN as u32)
        .rev()
        .find(|len| A::prefix_mask(*len) == *mask)
        .and_then(|len| u8::try_from(len).ok())
        .unwrap_or(0)
}
