//! The one writer of kernel state. Config reloads, API calls and health
//! changes become commands to one thread; it plans the new image with pure
//! code, writes only the difference, and answers once the kernel holds it.
//! It is a thread of its own, not an async task: table builds and map walks
//! take milliseconds to seconds, and must not hold up the probes' timers
//! or the API. Reads never go through it: the counters and the connection
//! table through a read-only handle (`MapReader`), named by the applied
//! image it publishes after each change.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::abi::{BACKEND_DOWN, Backend, BackendConns, SCHED_LC, SCHED_MASK, Traffic};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::info;

use crate::{
    desired::model::Service,
    plan::{
        diff::{Op, diff},
        ids::{BackendKey, Ids, Key, MapAddr, PlanError, held_backend_key},
        image::{Image, Tables, image_cached},
        settings::Settings,
    },
    write::{
        dataplane::{ConnEntry, Counts, DataplaneError, FlowWriter, MapReader, Maps},
        reassembled::{self, Placement},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the new state does not fit: {0}")]
    Plan(#[from] PlanError),
    #[error("writing the kernel maps failed: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error("the reconciler has stopped")]
    Stopped,
    #[error("cannot start the reconciler thread: {0}")]
    Thread(std::io::Error),
}

/// What an apply changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub writes: usize,
    pub services: usize,
    pub backends: usize,
}

/// What the data plane counted for the applied services, by key (ids are
/// the reconciler's business).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Packet outcomes, indexed like `lb_common::counter::Counter::ALL`.
    pub outcomes: Vec<u64>,
    pub services: BTreeMap<Key, Traffic>,
    pub backends: BTreeMap<BackendKey, (Traffic, BackendConns)>,
    /// Live entries of the connection table.
    pub tracked: u64,
}

/// A connection table entry with the backend it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub entry: ConnEntry,
    /// `None`: its backend has been removed since.
    pub backend: Option<Key>,
}

pub struct Reconciler<M: Maps> {
    maps: M,
    ids: Ids,
    /// What the maps are known to hold.
    applied: Image,
    /// The desired state: the services, the backends health checks say
    /// are down, and the data plane's own settings (the maps').
    services: Vec<Service>,
    down: BTreeSet<BackendKey>,
    settings: Settings,
    /// The scheduler tables of `applied`, reused when a service is unchanged.
    tables: Tables,
}

impl<M: Maps> Reconciler<M> {
    pub fn new(maps: M) -> Self {
        Self {
            settings: maps.settings().clone(),
            maps,
            ids: Ids::default(),
            applied: Image::default(),
            services: Vec::new(),
            down: BTreeSet::new(),
            tables: Tables::default(),
        }
    }

    /// A reconciler for maps that may already hold a previous controller's
    /// state: it starts from what they hold and from its ids, so the first
    /// apply writes only the difference and open flows keep their backends.
    pub fn adopt(mut maps: M) -> Result<Self, ReconcileError> {
        let held = maps.read_image()?;
        let mut reconciler = Self::new(maps);
        if let Some(image) = held {
            reconciler.ids = Ids::from_image(&image);
            let v4 = image.v4.backends.values().filter(|b| b.flags & BACKEND_DOWN != 0);
            let v6 = image.v6.backends.values().filter(|b| b.flags & BACKEND_DOWN != 0);
            reconciler.down = v4.map(held_backend_key).chain(v6.map(held_backend_key)).collect();
            reconciler.applied = image;
            reconciler.write_settings()?;
        }
        Ok(reconciler)
    }

    /// Writes the data plane's own settings (interfaces, timeouts, policy)
    /// where an adopted data plane holds others, at once: they need no
    /// plan of the services, and a removed interface's redirect slot must
    /// not wait for the first apply (which may take seconds to plan, or fail).
    fn write_settings(&mut self) -> Result<(), ReconcileError> {
        let settled = Image { settings: self.settings.clone(), ..self.applied.clone() };
        self.write(&diff(&self.applied, &settled))
    }

    /// Writes `ops` in order, `applied` following each write that went
    /// through (a failed one leaves its entry as it was, and stops here).
    fn write(&mut self, ops: &[Op]) -> Result<(), ReconcileError> {
        for op in ops {
            self.maps.apply(op)?;
            self.applied.apply(op);
        }
        Ok(())
    }

    /// The backends held out of rotation by health (an adopted data plane's
    /// until the first health change is applied).
    pub fn down(&self) -> &BTreeSet<BackendKey> {
        &self.down
    }

    /// Makes the maps hold `services` (with the current health view).
    pub fn apply(&mut self, services: &[Service]) -> Result<Applied, ReconcileError> {
        self.reconcile(services, self.down.clone())
    }

    /// Takes the backends in `down` out of rotation, and puts back the others.
    pub fn set_down(&mut self, down: BTreeSet<BackendKey>) -> Result<Applied, ReconcileError> {
        self.reconcile(&self.services.clone(), down)
    }

    /// A plan that does not fit changes nothing. If a write fails midway,
    /// `applied` records exactly the writes that went through (a failed map
    /// update leaves its entry as it was), so the next reconcile, of this
    /// state or another, writes what is missing and removes what is left over.
    fn reconcile(
        &mut self,
        services: &[Service],
        down: BTreeSet<BackendKey>,
    ) -> Result<Applied, ReconcileError> {
        let ids = self.ids.assign(services)?;
        let image = Image {
            settings: self.settings.clone(),
            ..image_cached(services, &ids, &down, &mut self.tables)
        };
        let ops = diff(&self.applied, &image);
        self.write(&ops)?;
        // Only now: after a failed apply, the desired state stays the one the
        // caller still runs (`applied` records the partial writes to undo).
        self.services = services.to_vec();
        self.down = down;
        let applied = Applied {
            writes: ops.len(),
            services: image.v4.services.len() + image.v6.services.len(),
            backends: image.v4.backends.len() + image.v6.backends.len(),
        };
        self.ids = ids;
        Ok(applied)
    }

    pub fn applied(&self) -> &Image {
        &self.applied
    }

    /// Moves the data plane's clock one tick on at once: every next hop is
    /// looked up again, and every connection entry is a tick older (the
    /// clock ticks by itself every `EPOCH_TICK_MS`; tests use this instead
    /// of waiting).
    pub fn advance_clock(&mut self) -> Result<(), ReconcileError> {
        Ok(self.maps.advance_clock()?)
    }

    /// Recounts every backend's connections (see `Maps::recount_connections`).
    pub fn recount_connections(&mut self) -> Result<BTreeMap<u32, BackendConns>, ReconcileError> {
        let (v4, v6) = (&self.applied.v4, &self.applied.v6);
        let lc_services: BTreeSet<u32> = (v4.services.values().chain(v6.services.values()))
            .filter(|s| s.flags & SCHED_MASK == SCHED_LC)
            .map(|s| s.id)
            .collect();
        // (id, service id, max_conns) of every backend in use.
        let all = (v4.backends.iter().map(|(id, b)| (*id, b.service_id, b.max_conns)))
            .chain(v6.backends.iter().map(|(id, b)| (*id, b.service_id, b.max_conns)));
        let mut backends = BTreeMap::new();
        let mut moved_by_kernel = BTreeSet::new();
        for (id, service_id, max_conns) in all {
            backends.insert(id, service_id);
            if max_conns != 0 || lc_services.contains(&service_id) {
                moved_by_kernel.insert(id);
            }
        }
        Ok(self.maps.recount_connections(&backends, &moved_by_kernel)?)
    }

    /// The maps, for tests and benchmarks that also drive the program.
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Hands the maps back (dropping a kernel data plane detaches it).
    pub fn into_maps(self) -> M {
        self.maps
    }
}

/// What `sample` makes of a recount and the counters, by the applied
/// image's `placement` (ids are the reconciler's business).
fn sample(placement: &Placement, counts: Counts, conns: &BTreeMap<u32, BackendConns>) -> Sample {
    let traffic = |id: u32| counts.services.get(&id).copied().unwrap_or_default();
    let v4 = placement.services.iter().map(|(k, s)| (Key::new(k.addr.ip(), k.port, k.proto), s.id));
    let v6 =
        placement.services6.iter().map(|(k, s)| (Key::new(k.addr.ip(), k.port, k.proto), s.id));
    let services = v4.chain(v6).map(|(key, id)| (key, traffic(id))).collect();
    let held = |(id, key): (u32, BackendKey)| {
        let traffic = counts.backends.get(&id).copied().unwrap_or_default();
        (key, (traffic, conns.get(&id).copied().unwrap_or_default()))
    };
    let v4 = placement.backends.iter().map(|(id, b)| (*id, held_backend_key(b)));
    let v6 = placement.backends6.iter().map(|(id, b)| (*id, held_backend_key(b)));
    let backends = v4.chain(v6).map(held).collect();
    let tracked = conns.values().map(|c| u64::from(c.active) + u64::from(c.inactive)).sum();
    Sample { outcomes: counts.outcomes, services, backends, tracked }
}

/// The backend each of `entries` goes to, by the applied image's backends
/// of the entry's family: `None` for one removed since (or whose id now
/// serves another service).
fn owners(placement: &Placement, entries: Vec<ConnEntry>) -> Vec<Connection> {
    fn owner<A: MapAddr>(
        backends: &BTreeMap<u32, Backend<A>>,
        conn: &lb_common::abi::Conn,
    ) -> Option<Key> {
        backends
            .get(&conn.backend_id)
            .filter(|b| b.service_id == conn.service_id)
            .map(|b| Key::new(b.addr.ip(), b.port, b.proto))
    }
    entries
        .into_iter()
        .map(|entry| {
            let backend = if entry.service.addr.is_ipv4() {
                owner(&placement.backends, &entry.conn)
            } else {
                owner(&placement.backends6, &entry.conn)
            };
            Connection { entry, backend }
        })
        .collect()
}

enum Command {
    /// Answers with the placement the counts are of: an apply that lands
    /// before the caller reads the traffic must not rename their ids.
    Recount {
        reply: Reply<(BTreeMap<u32, BackendConns>, Arc<Placement>)>,
    },
    Down {
        reply: Reply<BTreeSet<BackendKey>>,
    },
    SetDown {
        down: BTreeSet<BackendKey>,
        reply: Reply<Applied>,
    },
    Apply {
        services: Vec<Service>,
        reply: Reply<Applied>,
    },
}

/// Connection-table walks at once: each can take seconds on a full table,
/// and more at once would only share the same two cores.
const CONCURRENT_WALKS: usize = 2;

/// A cloneable way to send commands to the reconciler thread, and to read
/// the data plane without it.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    reader: Arc<dyn MapReader>,
    /// The reassembly slow path's per-flow writes.
    flows: Arc<dyn FlowWriter>,
    walks: Arc<Semaphore>,
    /// What the maps place flows by, as of the last command that changed
    /// them: the slow path places by it, the reads name ids by it.
    placements: watch::Receiver<Arc<Placement>>,
    /// What the reassembly slow path did (it runs beside the reconciler).
    reassembled: Arc<reassembled::Counts>,
}

/// Where a command's result comes back.
type Reply<T> = oneshot::Sender<Result<T, ReconcileError>>;

impl Handle {
    /// Starts the reassembly slow path (see `crate::write::reassembled`): its
    /// sockets follow the applied services, and it ends with the reconciler.
    pub fn start_reassembly(&self) -> std::io::Result<()> {
        reassembled::spawn(
            self.placements.clone(),
            Arc::clone(&self.reader),
            Arc::clone(&self.flows),
            Arc::clone(&self.reassembled),
        )
    }

    /// What the reassembly slow path did so far.
    pub fn reassembled(&self) -> &reassembled::Counts {
        &self.reassembled
    }

    /// The backends held DOWN (see `Reconciler::down`).
    pub async fn down(&self) -> Result<BTreeSet<BackendKey>, ReconcileError> {
        self.call(|reply| Command::Down { reply }).await
    }

    /// Recounts the connections per backend (a write of the reconciler's:
    /// it publishes the counts to the data plane and drops stale entries),
    /// then reads the traffic counters through the read handle, on a
    /// blocking thread.
    pub async fn sample(&self) -> Result<Sample, ReconcileError> {
        let (conns, placement) = self.call(|reply| Command::Recount { reply }).await?;
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let v6 = placement.services6.values();
            let services: Vec<u32> = placement.services.values().chain(v6).map(|s| s.id).collect();
            let v6 = placement.backends6.keys();
            let backends: Vec<u32> = placement.backends.keys().chain(v6).copied().collect();
            let counts = reader.counts(&services, &backends)?;
            Ok(sample(&placement, counts, &conns))
        })
        .await
        .map_err(|_| ReconcileError::Stopped)?
    }

    /// What is wrong with the programs' attachment (empty: nothing), read
    /// on a blocking thread, whatever the reconciler is busy with.
    pub async fn attachment_problems(&self) -> Result<Vec<String>, ReconcileError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || reader.attachment_problems())
            .await
            .map_err(|_| ReconcileError::Stopped)
    }

    /// Up to `limit` live connections (to the VIP `to`, if given), and how
    /// many there are. The walk runs on a blocking thread, at most
    /// `CONCURRENT_WALKS` at once, beside the reconciler; the listed
    /// entries' backends are named by the applied image it last published.
    pub async fn connections(
        &self,
        limit: usize,
        to: Option<Key>,
    ) -> Result<(Vec<Connection>, usize), ReconcileError> {
        // The turn goes with the walk, not with this future: a caller that
        // gives up (a 408, a closed connection) leaves its walk running, and
        // the walk keeps its turn until it ends.
        let turn =
            Arc::clone(&self.walks).acquire_owned().await.map_err(|_| ReconcileError::Stopped)?;
        let reader = Arc::clone(&self.reader);
        let (entries, live) = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            reader.connections(limit, to)
        })
        .await
        .map_err(|_| ReconcileError::Stopped)??;
        let listed = owners(&self.placements.borrow(), entries);
        Ok((listed, live))
    }

    /// Takes the backends in `down` out of rotation (health checks).
    pub async fn set_down(&self, down: BTreeSet<BackendKey>) -> Result<Applied, ReconcileError> {
        self.call(|reply| Command::SetDown { down, reply }).await
    }

    /// Applies `services`; returns once the kernel maps hold them.
    pub async fn apply(&self, services: Vec<Service>) -> Result<Applied, ReconcileError> {
        self.call(|reply| Command::Apply { services, reply }).await
    }

    /// Sends the command `make` builds around a reply channel and waits for its result.
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ReconcileError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ReconcileError::Stopped)?;
        rx.await.map_err(|_| ReconcileError::Stopped)?
    }
}

/// Runs `reconciler` on a thread of its own until every `Handle` is
/// dropped; the maps come back through the receiver, so the caller decides
/// when the data plane goes away.
pub fn spawn<M: Maps + 'static>(
    mut reconciler: Reconciler<M>,
) -> Result<(Handle, oneshot::Receiver<M>), ReconcileError> {
    let reader = reconciler.maps.reader()?;
    let flows = reconciler.maps.flow_writer()?;
    let (tx, mut rx) = mpsc::channel::<Command>(16);
    let (done, maps) = oneshot::channel();
    let (publish, placements) = watch::channel(Arc::new(Placement::of(&reconciler.applied)));
    std::thread::Builder::new()
        .name("lb-reconciler".into())
        .spawn(move || {
            while let Some(command) = rx.blocking_recv() {
                // What `applied` is now: this thread publishes every change.
                let current = Arc::clone(&publish.borrow());
                reconciler.handle(command, current, |applied| {
                    publish.send_replace(Arc::new(Placement::of(applied)));
                });
            }
            let _ = done.send(reconciler.into_maps());
        })
        .map_err(ReconcileError::Thread)?;
    let handle = Handle {
        tx,
        reader,
        flows,
        walks: Arc::new(Semaphore::new(CONCURRENT_WALKS)),
        placements,
        reassembled: Arc::default(),
    };
    Ok((handle, maps))
}

impl<M: Maps> Reconciler<M> {
    /// Runs `command`. A command that writes the maps' services or
    /// backends hands `publish` what the maps hold after it (also after a
    /// failed write) before it replies: whoever the reply unblocks finds the
    /// slow path already placing by the new state.
    /// `current` is the placement of `applied` as it is before `command`.
    fn handle(&mut self, command: Command, current: Arc<Placement>, publish: impl FnOnce(&Image)) {
        match command {
            Command::Down { reply } => {
                let _ = reply.send(Ok(self.down().clone()));
            }
            Command::Recount { reply } => {
                let _ = reply.send(self.recount_connections().map(|conns| (conns, current)));
            }
            Command::SetDown { down, reply } => {
                let result = self.set_down(down);
                publish(&self.applied);
                let _ = reply.send(result);
            }
            Command::Apply { services, reply } => {
                let result = self.apply(&services);
                if let Ok(applied) = &result {
                    info!(
                        writes = applied.writes,
                        services = applied.services,
                        backends = applied.backends,
                        "state applied"
                    );
                }
                publish(&self.applied);
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        desired::model::{Scheduler, testing::service},
        plan::image::image,
        write::dataplane::fake::FakeMaps,
    };

    fn web(backends: &[(u8, u32)]) -> Service {
        service("web", 80, backends)
    }

    /// `web` on fd77:1::100, backends fd77:2::(last).
    fn web6(backends: &[(u8, u32)]) -> Service {
        let mut s = service("web6", 80, backends);
        s.vip = "fd77:1::100".parse().unwrap();
        for (b, (last, _)) in s.backends.iter_mut().zip(backends) {
            b.address = format!("fd77:2::{last:x}").parse().unwrap();
        }
        s
    }

    #[test]
    fn connections_are_named_by_their_familys_backends() {
        let mut r = Reconciler::new(FakeMaps::default());
        r.apply(&[web(&[(11, 1)]), web6(&[(0x11, 1)])]).unwrap();
        let placement = Placement::of(r.applied());
        let (id4, b4) = placement.backends.iter().next().map(|(i, b)| (*i, *b)).unwrap();
        let (id6, b6) = placement.backends6.iter().next().map(|(i, b)| (*i, *b)).unwrap();
        assert_ne!(id4, id6, "one id space");
        let entry = |client: &str, service: Key, backend_id, service_id| ConnEntry {
            client: client.parse().unwrap(),
            service,
            conn: lb_common::abi::Conn {
                backend_id,
                service_id,
                last_seen: 0,
                state: 0,
                _pad: [0; 3],
            },
            idle: std::time::Duration::ZERO,
            expires_in: std::time::Duration::ZERO,
        };
        let svc4 = Key::new(b4.vip.ip(), 80, b4.proto);
        let svc6 = Key::new(b6.vip.ip(), 80, b6.proto);
        let listed = owners(
            &placement,
            vec![
                entry("10.77.1.10:40000", svc4, id4, b4.service_id),
                entry("[fd77:1::10]:40000", svc6, id6, b6.service_id),
                // An IPv6 entry naming the IPv4 backend's id: not its backend.
                entry("[fd77:1::10]:40001", svc6, id4, b4.service_id),
                entry("[fd77:1::10]:40002", svc6, id6, b6.service_id + 1),
            ],
        );
        let backends: Vec<Option<String>> =
            listed.iter().map(|c| c.backend.map(|b| b.socket().to_string())).collect();
        assert_eq!(
            backends,
            [Some("10.77.2.11:80".into()), Some("[fd77:2::11]:80".into()), None, None]
        );
    }

    #[test]
    fn maps_hold_exactly_the_applied_image() {
        let fake = FakeMaps::default();
        let mut r = Reconciler::new(fake.clone());
        r.apply(&[web(&[(11, 1), (12, 1)])]).unwrap();
        assert_eq!(*fake.state.lock().unwrap(), *r.applied());
        let applied = r.apply(&[web(&[(11, 1), (12, 1)])]).unwrap();
        assert_eq!(applied.writes, 0, "an unchanged config writes nothing");
        r.apply(&[]).unwrap();
        assert_eq!(*fake.state.lock().unwrap(), Image::default());
    }

    #[test]
    fn retrying_a_failed_apply_of_the_same_config_completes_it() {
        let fake = FakeMaps::default();
        let mut r = Reconciler::new(fake.clone());
        r.apply(&[web(&[(11, 1)])]).unwrap();
        let next = [web(&[(12, 1), (13, 1)])];
        // Fail at every write in turn, until the apply has fewer writes
        // than the failure point.
        for fail_after in 0..64 {
            *fake.fail_after.lock().unwrap() = Some(fail_after);
            let failed = r.apply(&next).is_err();
            if !failed {
                assert!(fail_after > 10, "an apply of a dozen writes succeeded at {fail_after}");
                break;
            }
            *fake.fail_after.lock().unwrap() = None;
            r.apply(&next).unwrap();
            assert_eq!(
                *fake.state.lock().unwrap(),
                *r.applied(),
                "after failing at write {fail_after}"
            );
            let want = image(&next, &r.ids, &BTreeSet::new());
            assert_eq!(*r.applied(), want, "after failing at write {fail_after} ({failed})");
            r.apply(&[web(&[(11, 1)])]).unwrap();
        }
    }

    #[test]
    fn a_failed_write_is_repaired_by_the_next_apply() {
        let fake = FakeMaps::default();
        let mut r = Reconciler::new(fake.clone());
        r.apply(&[web(&[(11, 1)])]).unwrap();
        // Past the two new backends' counter resets, prefilter bits and
        // address entries: one backend entry is written, then the apply fails.
        *fake.fail_after.lock().unwrap() = Some(7);
        assert!(r.apply(&[web(&[(11, 1), (12, 1), (13, 1)])]).is_err());
        assert_eq!(fake.state.lock().unwrap().v4.backends.len(), 2, "a leftover backend entry");
        // The operator gives up on the change: the leftovers must go.
        *fake.fail_after.lock().unwrap() = None;
        r.apply(&[web(&[(11, 1)])]).unwrap();
        assert_eq!(*fake.state.lock().unwrap(), *r.applied());
        assert_eq!(r.applied().v4.backends.len(), 1);
    }

    /// What a packet could find between two writes: for every service, each
    /// slot below its ring size names a backend in use. A slot past the end
    /// of a rotation (NO_BACKEND) would drop or reset a new flow.
    fn unreadable_slots(image: &Image) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, s) in &image.v4.services {
            let Some(table) = image.maglev.get(&s.id) else {
                problems.push(format!("{key:?}: no table"));
                continue;
            };
            for (slot, id) in table.iter().take(s.ring_size as usize).enumerate() {
                if !image.v4.backends.contains_key(id) {
                    problems.push(format!(
                        "{key:?}: slot {slot} of ring size {} holds {id:#x}",
                        s.ring_size
                    ));
                    break;
                }
            }
        }
        problems
    }

    /// Replays the writes from `before` to `after`, checking every image in between.
    fn check_every_step(before: &[Service], after: &[Service]) {
        let fake = FakeMaps::default();
        let mut r = Reconciler::new(fake.clone());
        r.apply(before).unwrap();
        let mut seen = fake.state.lock().unwrap().clone();
        fake.writes.lock().unwrap().clear();
        r.apply(after).unwrap();
        let writes = fake.writes.lock().unwrap().clone();
        assert!(!writes.is_empty());
        for (i, op) in writes.iter().enumerate() {
            seen.apply(op);
            let problems = unreadable_slots(&seen);
            // A table is 65537 slots: name it, do not print it.
            let op = match op {
                Op::PutMaglev(id, _) => format!("PutMaglev({id}, ..)"),
                other => format!("{other:?}"),
            };
            assert!(problems.is_empty(), "after write {i} ({op}): {problems:?}");
        }
    }

    fn rotation(scheduler: Scheduler, backends: &[(u8, u32)]) -> Service {
        Service { scheduler, ..web(backends) }
    }

    /// An `rr`/`wrr` rotation that shrinks gets its smaller ring size before
    /// its shorter table (a SYN in between would read an empty slot), one
    /// that grows its longer table first; a switch of scheduler as well.
    #[test]
    fn no_write_order_lets_a_ring_size_exceed_its_table() {
        use Scheduler::{Maglev, RoundRobin as Rr, WeightedRoundRobin as Wrr};
        let (three, two) = (&[(11, 1), (12, 1), (13, 1)][..], &[(11, 1), (12, 1)][..]);
        for scheduler in [Rr, Wrr] {
            let big = rotation(scheduler, three);
            let small = rotation(scheduler, two);
            check_every_step(std::slice::from_ref(&big), std::slice::from_ref(&small));
            check_every_step(std::slice::from_ref(&small), std::slice::from_ref(&big));
            // A backend drained (weight 0) leaves the rotation too.
            let drained = rotation(scheduler, &[(11, 1), (12, 1), (13, 0)]);
            check_every_step(std::slice::from_ref(&big), std::slice::from_ref(&drained));
            check_every_step(&[rotation(Maglev, two)], std::slice::from_ref(&small));
            check_every_step(std::slice::from_ref(&small), &[rotation(Maglev, three)]);
        }
        check_every_step(
            &[rotation(Wrr, &[(11, 3), (12, 1)])],
            &[rotation(Wrr, &[(11, 1), (12, 1)])],
        );
    }

    /// Settings on the interfaces `ifindexes` (the default timeouts and policy).
    fn settings_on(ifindexes: &[u32]) -> Settings {
        use crate::{
            desired::model::{HandshakeProof, ReversePath, Timeouts},
            plan::settings::policy,
        };
        let policy = policy(1000, ReversePath::Strict, HandshakeProof::Ack);
        Settings::new(ifindexes, &Timeouts::default(), policy, 7)
    }

    /// New maps get the data plane's settings with the first apply, before
    /// any service; failing at any of its writes, the retry completes it.
    #[test]
    fn a_first_apply_failing_at_any_write_of_the_settings_is_completed_by_the_retry() {
        let services = [web(&[(11, 1)])];
        for fail_after in 0.. {
            let fake = FakeMaps { settings: settings_on(&[4, 9]), ..FakeMaps::default() };
            let mut r = Reconciler::new(fake.clone());
            *fake.fail_after.lock().unwrap() = Some(fail_after);
            let failed = r.apply(&services).is_err();
            assert_eq!(*fake.state.lock().unwrap(), *r.applied(), "failing at write {fail_after}");
            *fake.fail_after.lock().unwrap() = None;
            r.apply(&services).unwrap();
            let held = fake.state.lock().unwrap().clone();
            assert_eq!(held.settings, fake.settings, "after failing at write {fail_after}");
            assert_eq!(held, *r.applied());
            if !failed {
                // The meta, five timeouts, the policy, two ports, two slots.
                assert!(fail_after >= 11, "the settings alone are 11 writes: {fail_after}");
                break;
            }
        }
    }

    /// A data plane adopted with an interface no longer configured
    /// (`[3, 4, 5]`, now `[3, 5]`): the adoption itself, before any apply,
    /// deletes 4's entries and moves 5 to its slot, once the cached next
    /// hops are forgotten, and writes nothing else; failing at any of those
    /// writes, the adoption fails and the next one (the next start)
    /// completes it. The first apply then has no setting left to write.
    #[test]
    fn adopting_a_data_plane_deletes_the_entries_of_an_interface_no_longer_configured() {
        let services = [web(&[(11, 1)])];
        for fail_after in 0.. {
            let before = FakeMaps { settings: settings_on(&[3, 4, 5]), ..FakeMaps::default() };
            Reconciler::new(before.clone()).apply(&services).unwrap();
            let fake = FakeMaps { settings: settings_on(&[3, 5]), ..before };
            fake.writes.lock().unwrap().clear();
            *fake.fail_after.lock().unwrap() = Some(fail_after);
            let failed = Reconciler::adopt(fake.clone()).is_err();
            *fake.fail_after.lock().unwrap() = None;
            let mut r = Reconciler::adopt(fake.clone()).unwrap();
            let held = fake.state.lock().unwrap().clone();
            assert_eq!(held.settings, fake.settings, "after failing at write {fail_after}");
            assert_eq!(held, *r.applied());
            if !failed {
                assert_eq!(
                    *fake.writes.lock().unwrap(),
                    [
                        Op::DelTxSlot(4),
                        Op::DelTxSlot(5),
                        Op::ForgetNextHops,
                        Op::DelTxPort(2),
                        Op::PutTxPort(1, 5),
                        Op::PutTxSlot(5, 1),
                    ]
                );
                assert_eq!(r.apply(&services).unwrap().writes, 0);
                break;
            }
        }
    }

    #[test]
    fn a_plan_that_does_not_fit_writes_nothing() {
        let fake = FakeMaps::default();
        let mut r = Reconciler::new(fake.clone());
        r.apply(&[web(&[(11, 1)])]).unwrap();
        let too_many: Vec<Service> = (0..=lb_common::abi::MAX_SERVICES as u16)
            .map(|i| Service { name: format!("s{i}"), port: 1000 + i, ..web(&[]) })
            .collect();
        assert!(matches!(r.apply(&too_many), Err(ReconcileError::Plan(_))));
        assert_eq!(*fake.state.lock().unwrap(), *r.applied());
        assert_eq!(r.applied().v4.services.len(), 1);
    }
}
