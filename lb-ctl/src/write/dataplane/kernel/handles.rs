//! The handles that other threads use beside the writer (`KernelMaps`), each
//! on descriptors of its own, so that none waits for the writer or writes
//! configuration: the read handle (`KernelReader`, a `MapReader`: the
//! counters, the connection table's listing, the programs' attachment, a
//! flow's entry), and the reassembly slow path's flow writer (`KernelFlows`,
//! a `FlowWriter`: per-flow state, which the reconciler never writes).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsFd as _, BorrowedFd},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
    programs::ProgramFd,
};
use lb_common::{
    abi::{
        BACKEND_FULLNAT, BACKEND_IN_USE, Backend, BackendConns, CONN_SYN, CONN_UDP, Conn,
        EPOCH_TICK_MS, Flow, Handshake, PROTO_TCP, Persist, PersistKey, Traffic, expired,
        handshake_slot,
    },
    fullnat::FnatFlow,
};

use super::{HeldTimeouts, KernelMaps, err, family::FamilyMaps};
use crate::{
    plan::ids::{Key, MapAddr},
    write::dataplane::{
        AnyFlow, AnyPersistKey, ConnEntry, Counts, DataplaneError, FlowWriter, MapReader, attach,
        clock,
        conn_table::{ConnTable, TableAddr},
        pins::{LinkPins, PinDir},
    },
};

/// The reads of `MapReader`.
pub(super) struct KernelReader {
    v4: FamilyReader<[u8; 4]>,
    v6: FamilyReader<[u8; 16]>,
    /// `lb_counters`, `lb_svc_stats`, `lb_be_stats`.
    counters: PerCpuArray<MapData, u64>,
    service_traffic: PerCpuArray<MapData, Traffic>,
    backend_traffic: PerCpuArray<MapData, Traffic>,
    /// `lb_be_conns`, which `max_conns` is checked against.
    be_conns: Array<MapData, BackendConns>,
    clock_program: ProgramFd,
    timeouts: Arc<HeldTimeouts>,
    /// Where the links are pinned; `None` when nothing is attached.
    links: Option<LinkPins>,
    interfaces: Vec<String>,
}

/// One family's connection table and the backends its entries name.
struct FamilyReader<A: TableAddr + MapAddr + aya::Pod> {
    conns: Arc<ConnTable<A>>,
    /// `lb_backends` or `lb_backends6`: an entry holds the client's side
    /// of its flow; its backend says which VIP and protocol.
    backends: Array<MapData, Backend<A>>,
    /// `lb_handshakes` or `lb_handshakes6`, for the slow path's flows that
    /// only have a record.
    handshakes: Array<MapData, Handshake<A>>,
    /// `lb_fnat_fwd` or `lb_fnat_fwd6`: a full-NAT flow's pool address and
    /// port, which the listing shows.
    fnat: HashMap<MapData, Flow<A>, FnatFlow<A>>,
    /// `lb_persist` or `lb_persist6`, for the slow path's persistent clients.
    persist: HashMap<MapData, PersistKey<A>, Persist>,
}

impl<A: TableAddr + MapAddr + aya::Pod> FamilyReader<A> {
    fn of(
        conns: &Arc<ConnTable<A>>,
        maps: &FamilyMaps<A>,
        fnat: (&str, BorrowedFd<'_>),
        kernel: &KernelMaps,
    ) -> Result<Self, DataplaneError> {
        let name = maps.names().backends;
        Ok(Self {
            conns: Arc::clone(conns),
            backends: reopen(name, maps.backends.map().fd().as_fd())?,
            handshakes: reopen(A::HANDSHAKES, object_map(kernel, A::HANDSHAKES)?)?,
            fnat: reopen(fnat.0, fnat.1)?,
            persist: reopen(A::PERSIST, object_map(kernel, A::PERSIST)?)?,
        })
    }

    /// The pool address and port `client`'s flow to `service` leaves from,
    /// if it is a full-NAT flow.
    fn snat(&self, client: SocketAddr, service: Key) -> Option<SocketAddr> {
        let flow = Flow {
            src: A::of(client.ip())?,
            dst: A::of(service.addr)?,
            sport: client.port(),
            dport: service.port,
            proto: service.proto,
            _pad: [0; 3],
        };
        let mapping = self.fnat.get(&flow, 0).ok()?;
        Some(SocketAddr::new(mapping.pool.ip(), mapping.pool_port))
    }

    /// The backend `id` if it is in use.
    fn backend(&self, id: u32) -> Option<Backend<A>> {
        self.backends.get(&id, 0).ok().filter(|b| b.flags & BACKEND_IN_USE != 0)
    }

    /// `flow`'s live entry: one whose backend serves the flow's VIP, port
    /// and protocol, or is gone (as `lb-ebpf/src/conntrack.rs` decides
    /// which entry is a flow's), and has not expired.
    fn live_entry(&self, flow: &Flow<A>, now: u32, timeouts: &HeldTimeouts) -> Option<Conn> {
        let serves = |conn: &Conn| {
            self.backend(conn.backend_id)
                .is_none_or(|b| (b.vip, b.vport, b.proto) == (flow.dst, flow.dport, flow.proto))
        };
        self.conns
            .find(flow, serves)
            .map(|(_, c)| c)
            .filter(|c| !expired(now, c.last_seen, timeouts.get(c.state)))
    }

    /// The backend and flags of `flow`'s live handshake record.
    fn handshake_record(
        &self,
        flow: &Flow<A>,
        now: u32,
        timeouts: &HeldTimeouts,
    ) -> Result<Option<(u32, u32)>, DataplaneError> {
        let record = self
            .handshakes
            .get(&handshake_slot(flow), 0)
            .map_err(|e| DataplaneError::kernel(format!("reading {}", A::HANDSHAKES), e))?;
        let state = if flow.proto == PROTO_TCP { CONN_SYN } else { CONN_UDP };
        let live = record.flow == *flow && !expired(now, record.born, timeouts.get(state));
        Ok(live.then_some((record.backend_id, record.flags)))
    }

    /// The persistent client `key`'s entry.
    fn persisted(&self, key: &PersistKey<A>) -> Result<Option<Persist>, DataplaneError> {
        match self.persist.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DataplaneError::kernel(format!("reading {}", A::PERSIST), e)),
        }
    }

    /// Walks the table for `Connections::walk`: each live entry whose
    /// backend still serves its service (and is to `to`, if given).
    fn walk(&self, now: u32, timeouts: &HeldTimeouts, to: Option<Key>, found: &mut Connections) {
        let tick = Duration::from_millis(EPOCH_TICK_MS);
        // Each backend read once per walk: a million entries share a few.
        let mut backends: BTreeMap<u32, Option<Backend<A>>> = BTreeMap::new();
        self.conns.for_each(|_, slot| {
            let conn = slot.conn();
            let timeout = timeouts.get(conn.state);
            if expired(now, conn.last_seen, timeout) {
                return;
            }
            let backend =
                *backends.entry(conn.backend_id).or_insert_with(|| self.backend(conn.backend_id));
            // The VIP and protocol are the backend's; an entry whose backend
            // is gone (or whose id another service's backend holds now)
            // belongs to no service any more.
            let Some(backend) = backend.filter(|b| b.service_id == conn.service_id) else {
                return;
            };
            let service = Key::new(backend.vip.ip(), slot.dport, backend.proto);
            if to.is_some_and(|t| t != service) {
                return;
            }
            found.live += 1;
            if found.entries.len() < found.limit {
                let idle = now.wrapping_sub(conn.last_seen);
                let client = SocketAddr::new(slot.src.ip(), slot.sport);
                let snat = (backend.flags & BACKEND_FULLNAT != 0)
                    .then(|| self.snat(client, service))
                    .flatten();
                found.entries.push(ConnEntry {
                    client,
                    snat,
                    service,
                    conn,
                    idle: tick * idle,
                    expires_in: tick * timeout.saturating_sub(idle),
                });
            }
        });
    }
}

/// What a listing found so far, over both tables.
struct Connections {
    limit: usize,
    entries: Vec<ConnEntry>,
    live: usize,
}

impl KernelReader {
    pub(super) fn of(maps: &KernelMaps) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: FamilyReader::of(&maps.conns, &maps.v4, maps.fnat.flows(), maps)?,
            v6: FamilyReader::of(&maps.conns6, &maps.v6, maps.fnat6.flows(), maps)?,
            counters: reopen("lb_counters", object_map(maps, "lb_counters")?)?,
            service_traffic: reopen("lb_svc_stats", object_map(maps, "lb_svc_stats")?)?,
            backend_traffic: reopen("lb_be_stats", object_map(maps, "lb_be_stats")?)?,
            be_conns: reopen("lb_be_conns", maps.be_conns.map().fd().as_fd())?,
            clock_program: maps
                .clock_program
                .try_clone()
                .map_err(|e| DataplaneError::kernel("duplicating lb_clock", e))?,
            timeouts: Arc::clone(&maps.held_timeouts),
            links: maps.pins.as_ref().map(PinDir::link_pins),
            interfaces: maps.interfaces.clone(),
        })
    }
}

impl MapReader for KernelReader {
    fn counts(&self, services: &[u32], backends: &[u32]) -> Result<Counts, DataplaneError> {
        let all: Vec<u32> = (0..lb_common::counter::Counter::COUNT).collect();
        let outcomes = per_cpu_sums(&self.counters, "lb_counters", &all, |s, v| *s += v)?;
        Ok(Counts {
            outcomes: outcomes.into_values().collect(),
            services: per_cpu_sums(&self.service_traffic, "lb_svc_stats", services, Traffic::add)?,
            backends: per_cpu_sums(&self.backend_traffic, "lb_be_stats", backends, Traffic::add)?,
        })
    }

    fn connections(
        &self,
        limit: usize,
        to: Option<Key>,
    ) -> Result<(Vec<ConnEntry>, usize), DataplaneError> {
        let now = clock::read(&self.clock_program)? as u32;
        let mut found = Connections { limit, entries: Vec::new(), live: 0 };
        // A service is of one family: its entries are all in one table.
        if to.is_none_or(|t| t.addr.is_ipv4()) {
            self.v4.walk(now, &self.timeouts, to, &mut found);
        }
        if to.is_none_or(|t| t.addr.is_ipv6()) {
            self.v6.walk(now, &self.timeouts, to, &mut found);
        }
        Ok((found.entries, found.live))
    }

    fn attachment_problems(&self) -> Vec<String> {
        self.links.as_ref().map_or_else(Vec::new, |links| attach::problems(links, &self.interfaces))
    }

    fn flow_entry(&self, flow: &AnyFlow) -> Result<(Option<Conn>, u32), DataplaneError> {
        let now = clock::read(&self.clock_program)? as u32;
        let live = match flow {
            AnyFlow::V4(flow) => self.v4.live_entry(flow, now, &self.timeouts),
            AnyFlow::V6(flow) => self.v6.live_entry(flow, now, &self.timeouts),
        };
        Ok((live, now))
    }

    fn handshake_record(
        &self,
        flow: &AnyFlow,
        now: u32,
    ) -> Result<Option<(u32, u32)>, DataplaneError> {
        match flow {
            AnyFlow::V4(flow) => self.v4.handshake_record(flow, now, &self.timeouts),
            AnyFlow::V6(flow) => self.v6.handshake_record(flow, now, &self.timeouts),
        }
    }

    fn persisted(&self, key: &AnyPersistKey) -> Result<Option<Persist>, DataplaneError> {
        match key {
            AnyPersistKey::V4(key) => self.v4.persisted(key),
            AnyPersistKey::V6(key) => self.v6.persisted(key),
        }
    }

    fn backend_conns(&self, id: u32) -> Result<BackendConns, DataplaneError> {
        self.be_conns.get(&id, 0).map_err(err("reading lb_be_conns"))
    }
}

/// The writes of `FlowWriter`.
pub(super) struct KernelFlows {
    v4: FamilyFlows<[u8; 4]>,
    v6: FamilyFlows<[u8; 16]>,
    timeouts: Arc<HeldTimeouts>,
    /// `lb_be_conns`, where a placed flow on a backend with `max_conns` counts.
    be_conns: Mutex<Array<MapData, BackendConns>>,
}

/// One family's connection table and handshake records, as the slow path
/// writes them.
struct FamilyFlows<A: TableAddr + aya::Pod> {
    conns: Arc<ConnTable<A>>,
    /// `lb_handshakes` or `lb_handshakes6`.
    handshakes: Mutex<Array<MapData, Handshake<A>>>,
    /// `lb_persist` or `lb_persist6`.
    persist: Mutex<HashMap<MapData, PersistKey<A>, Persist>>,
}

impl<A: TableAddr + aya::Pod> FamilyFlows<A> {
    fn of(conns: &Arc<ConnTable<A>>, maps: &KernelMaps) -> Result<Self, DataplaneError> {
        Ok(Self {
            conns: Arc::clone(conns),
            handshakes: Mutex::new(reopen(A::HANDSHAKES, object_map(maps, A::HANDSHAKES)?)?),
            persist: Mutex::new(reopen(A::PERSIST, object_map(maps, A::PERSIST)?)?),
        })
    }

    fn place_handshake(
        &self,
        flow: &Flow<A>,
        backend_id: u32,
        now: u32,
        flags: u32,
    ) -> Result<(), DataplaneError> {
        let record = Handshake { flow: *flow, backend_id, born: now, expect_ack: 0, flags };
        let mut records = self.handshakes.lock().unwrap_or_else(PoisonError::into_inner);
        records
            .set(handshake_slot(flow), record, 0)
            .map_err(err(format!("writing {}", A::HANDSHAKES)))
    }

    fn remember(&self, key: &PersistKey<A>, value: Persist) -> Result<(), DataplaneError> {
        let mut persist = self.persist.lock().unwrap_or_else(PoisonError::into_inner);
        // A full LRU map gives up its least recently used entry, as for
        // the data plane's inserts.
        persist.insert(key, value, 0).map_err(err(format!("writing {}", A::PERSIST)))
    }
}

impl KernelFlows {
    pub(super) fn of(maps: &KernelMaps) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: FamilyFlows::of(&maps.conns, maps)?,
            v6: FamilyFlows::of(&maps.conns6, maps)?,
            timeouts: Arc::clone(&maps.held_timeouts),
            be_conns: Mutex::new(reopen("lb_be_conns", maps.be_conns.map().fd().as_fd())?),
        })
    }
}

impl FlowWriter for KernelFlows {
    fn place_handshake(
        &self,
        flow: &AnyFlow,
        backend_id: u32,
        now: u32,
        flags: u32,
    ) -> Result<(), DataplaneError> {
        match flow {
            AnyFlow::V4(flow) => self.v4.place_handshake(flow, backend_id, now, flags),
            AnyFlow::V6(flow) => self.v6.place_handshake(flow, backend_id, now, flags),
        }
    }

    fn place_flow(&self, flow: &AnyFlow, conn: &Conn) -> Result<(), DataplaneError> {
        let timeout = |state| self.timeouts.get(state);
        match flow {
            AnyFlow::V4(flow) => self.v4.conns.record(flow, conn, timeout),
            AnyFlow::V6(flow) => self.v6.conns.record(flow, conn, timeout),
        }
        Ok(())
    }

    fn remember(&self, key: &AnyPersistKey, value: Persist) -> Result<(), DataplaneError> {
        match key {
            AnyPersistKey::V4(key) => self.v4.remember(key, value),
            AnyPersistKey::V6(key) => self.v6.remember(key, value),
        }
    }

    /// A read and a write, not the data plane's atomic add: an increment
    /// the data plane makes in between is lost until the controller's
    /// recount (every second) rewrites the backend's count from the
    /// connection table. The slow path's own counts are serialized here.
    fn count_conn(&self, id: u32) -> Result<(), DataplaneError> {
        let mut be_conns = self.be_conns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut conns = be_conns.get(&id, 0).map_err(err("reading lb_be_conns"))?;
        conns.inactive = conns.inactive.saturating_add(1);
        be_conns.set(id, conns, 0).map_err(err("writing lb_be_conns"))
    }
}

/// The descriptor of the map `name` that stays in the loaded object (the
/// kernel-written ones: the counters, the handshake records, the
/// persistent clients).
fn object_map<'a>(maps: &'a KernelMaps, name: &str) -> Result<BorrowedFd<'a>, DataplaneError> {
    match maps.ebpf.map(name) {
        Some(Map::Array(data) | Map::PerCpuArray(data) | Map::LruHashMap(data)) => {
            Ok(data.fd().as_fd())
        }
        Some(_) => Err(DataplaneError::kernel(name.to_owned(), "not an array or LRU hash")),
        None => Err(DataplaneError::kernel(name.to_owned(), "missing from the object")),
    }
}

/// The map behind `fd`, opened again on a descriptor of its own.
pub(super) fn reopen<T>(name: &str, fd: BorrowedFd<'_>) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let fd = fd
        .try_clone_to_owned()
        .map_err(|e| DataplaneError::kernel(format!("duplicating {name}"), e))?;
    let again = || err(format!("opening {name} again"));
    let map = MapData::from_fd(fd).and_then(Map::from_map_data).map_err(again())?;
    T::try_from(map).map_err(again())
}

/// Sums the per-CPU values of `ids` in the per-CPU array `array` (`name`).
fn per_cpu_sums<T: aya::Pod + Default>(
    array: &PerCpuArray<MapData, T>,
    name: &str,
    ids: &[u32],
    mut add: impl FnMut(&mut T, &T),
) -> Result<BTreeMap<u32, T>, DataplaneError> {
    ids.iter()
        .map(|id| {
            let values = array.get(id, 0).map_err(err(format!("reading {name}")))?;
            let mut sum = T::default();
            for v in values.iter() {
                add(&mut sum, v);
            }
            Ok((*id, sum))
        })
        .collect()
}
