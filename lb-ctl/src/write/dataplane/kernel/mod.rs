//! The real data plane: loads the XDP object over maps pinned under
//! `pin_path`, attaches it through pinned links (XDP on every interface,
//! plus the tc neighbour slow path), and writes map ops. The data plane
//! outlives the controller; a later one adopts it (see `pins`). The
//! handles other threads read and place flows through are in `handles`.
mod family;
mod fullnat;
mod handles;
mod trace;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, SchedClassifier, Xdp},
};
use lb_common::abi::{
    BackendConns, CONN_ESTABLISHED, CONN_STATES, DEFAULT_ANSWERS_PER_SECOND, EpochClock,
    MAGLEV_SIZE, MAX_TX_PORTS, Meta, NO_BACKEND, Policy, TABLE_WORDS, Traffic, epoch_mult, expired,
};
use lb_common::conn_table::{conn_set_bits, conn6_set_bits};
use rustc_hash::FxHashSet;
use tracing::info;

use family::FamilyMaps;
use handles::{KernelFlows, KernelReader};

use super::{
    DataplaneError, FlowWriter, MapReader, Maps, attach, clock,
    conn_table::{ConnTable, TableAddr},
    pins::{self, MapSizes, PinDir},
    tx_ports,
};
use crate::{
    desired::model::{Dataplane, HandshakeProof, ReversePath, Timeouts},
    plan::{
        diff::{FamilyOp, Op},
        image::Image,
        settings::{self, Settings},
    },
    write::{gro, netdev},
};

type Table = [u32; TABLE_WORDS];

/// Ticks of idleness after which the recount erases an entry (about 3.4
/// years): a tick difference reads as negative, "stamped in the future",
/// past 2^31 (`abi::expired`).
const STALE_TICKS: u32 = 1 << 30;

pub struct KernelMaps {
    maglev: Array<MapData, Table>,
    /// The IPv4 services' maps.
    v4: FamilyMaps<[u8; 4]>,
    /// The IPv6 services' maps.
    v6: FamilyMaps<[u8; 16]>,
    epoch: Array<MapData, EpochClock>,
    /// What `lb_epoch` holds.
    clock: EpochClock,
    /// `lb_clock`, which tells the data plane's epoch (see `clock`).
    clock_program: ProgramFd,
    /// The data plane's own settings (see `plan::settings`), as planned
    /// when the maps were opened; the reconciler writes them.
    settings: Settings,
    timeouts: Array<MapData, u32>,
    /// What `lb_timeouts` holds, for the connection-table walks here and
    /// on the read handles' threads.
    held_timeouts: Arc<HeldTimeouts>,
    /// `lb_policy`: the answer budget, the reverse-path check.
    policy: Array<MapData, Policy>,
    meta: Array<MapData, Meta>,
    tx_ports: DevMap<MapData>,
    tx_slots: HashMap<MapData, u32, u32>,
    be_conns: Array<MapData, BackendConns>,
    /// Full NAT's mappings, which this controller expires.
    fnat: fullnat::FullNatMaps<[u8; 4]>,
    fnat6: fullnat::FullNatMaps<[u8; 16]>,
    /// `lb_conntrack` and `lb_conntrack6`, mapped into this process.
    conns: Arc<ConnTable>,
    conns6: Arc<ConnTable<[u8; 16]>>,
    /// The counts last written to `lb_be_conns`, by backend id.
    published: BTreeMap<u32, BackendConns>,
    /// The programs (and the links that attach them) and the maps only the
    /// kernel writes: dropping it detaches everything.
    ebpf: Ebpf,
    /// The locked pin directory, when the data plane is attached and pinned.
    pins: Option<PinDir>,
    /// Whether the maps and links were a previous controller's.
    adopted: bool,
    /// Service and backend ids given to an entry since these maps were
    /// created: on maps this process created, any other id's counters are
    /// still zero and need no reset (unknown for adopted maps: all may).
    counted_ids: FxHashSet<(CounterKind, u32)>,
    /// The interfaces the programs are attached to.
    interfaces: Vec<String>,
    /// Where the devices whose GRO this data plane turned off are written
    /// down (`gro::record_path`), when it is attached.
    gro_record: Option<PathBuf>,
}

/// The idle timeout of each connection state, in ticks, as `lb_timeouts`
/// holds it: the writer updates it with each write of the map, the
/// connection-table walks (recount, listing, slow path) read it.
#[derive(Debug, Default)]
struct HeldTimeouts([AtomicU32; CONN_STATES as usize]);

impl HeldTimeouts {
    fn get(&self, state: u8) -> u32 {
        self.0.get(usize::from(state)).map_or(0, |t| t.load(Relaxed))
    }

    fn set(&self, state: u8, ticks: u32) {
        if let Some(t) = self.0.get(usize::from(state)) {
            t.store(ticks, Relaxed);
        }
    }
}

/// The two kinds of traffic counters, by service id and by backend id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum CounterKind {
    Service,
    Backend,
}

fn err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    let what = what.into();
    move |e| DataplaneError::kernel(what, e)
}

/// Ignores "no such entry" on deletes: applies must be idempotent.
fn deleted(result: Result<(), aya::maps::MapError>, what: &str) -> Result<(), DataplaneError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
        Err(e) => Err(DataplaneError::kernel(what, e)),
    }
}

impl KernelMaps {
    /// Loads the object and passes both programs through the verifier,
    /// without attaching or pinning anything; `interfaces` (in the current
    /// network namespace) become redirect targets. The tests use this directly.
    /// The maps' settings (written by the reconciler's first apply, like
    /// the services) are the default timeouts and policy.
    pub fn load(
        object: &[u8],
        sizes: MapSizes,
        interfaces: &[String],
    ) -> Result<Self, DataplaneError> {
        let salt = random_salt()?;
        let ebpf = load_object(object, sizes, salt)?;
        let policy =
            settings::policy(DEFAULT_ANSWERS_PER_SECOND, ReversePath::Strict, HandshakeProof::Ack);
        let settings = Settings::new(&ifindexes(interfaces)?, &Timeouts::default(), policy, salt);
        Self::open(ebpf, interfaces, settings, false)
    }

    /// Loads the object over the maps pinned under `pin_path` (creating and
    /// pinning them on a first start), and attaches its programs through
    /// pinned links: the data plane then outlives this process. A data
    /// plane already pinned there is adopted: its maps keep their flows and
    /// counters, its links get this object's programs, atomically. On a
    /// first start that fails nothing stays; a failed adoption leaves the
    /// running data plane as it was.
    pub fn start(dataplane: &Dataplane, object: &[u8]) -> Result<Self, DataplaneError> {
        let pins = PinDir::lock(&dataplane.pin_path)?;
        let expected = pins::object_maps(object, MapSizes::of(dataplane))?;
        pins.check_no_strays()?;
        let adopting = pins.has_maps();
        if adopting {
            pins.check_layout(&expected)?;
        }
        // An adopted table keeps its key: its flows stay in their sets.
        let salt = if adopting { pins.conn_salt() } else { random_salt() };
        let started = salt
            .and_then(|salt| Self::start_on(&pins, &expected, dataplane, object, adopting, salt));
        let gro_record =
            gro::record_path(&crate::daemon::api::token::run_dir(), &dataplane.pin_path);
        match started {
            Ok(mut maps) => {
                maps.pins = Some(pins);
                maps.gro_record = Some(gro_record);
                maps.adopted = adopting;
                if adopting {
                    info!(pin_path = %dataplane.pin_path.display(), "adopted the pinned data plane: its flows and counters go on");
                } else {
                    info!(pin_path = %dataplane.pin_path.display(), "data plane pinned");
                }
                Ok(maps)
            }
            Err(e) => {
                if !adopting {
                    pins.remove_pins();
                    gro::reconcile(&gro_record, &[]);
                }
                Err(e)
            }
        }
    }

    fn start_on(
        pins: &PinDir,
        expected: &BTreeMap<String, pins::MapShape>,
        dataplane: &Dataplane,
        object: &[u8],
        adopting: bool,
        salt: u32,
    ) -> Result<Self, DataplaneError> {
        let paths: Vec<(&str, PathBuf)> =
            expected.keys().map(|name| (name.as_str(), pins.map(name))).collect();
        let set_bits = SetBits::of(dataplane.conntrack_max);
        let mut loader = sized_loader(MapSizes::of(dataplane), &set_bits, &salt)?;
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf =
            loader.load(object).map_err(|e| DataplaneError::kernel("loading the XDP object", e))?;
        load_programs(&mut ebpf)?;
        attach::xdp(
            program(&mut ebpf, "lb_xdp")?,
            pins,
            &dataplane.interfaces,
            dataplane.xdp_mode,
        )?;
        attach::tc(program(&mut ebpf, "lb_neigh")?, pins, &dataplane.interfaces)?;
        // Whichever interfaces run the program in skb mode now (chosen by
        // `auto`, or kept by an adopted link), whichever no longer do.
        gro::reconcile(
            &gro::record_path(&crate::daemon::api::token::run_dir(), &dataplane.pin_path),
            &dataplane.interfaces,
        );
        let settings = Settings::of(dataplane, &ifindexes(&dataplane.interfaces)?, salt);
        Self::open(ebpf, &dataplane.interfaces, settings, adopting)
    }

    /// Whether the maps were a previous controller's (see `start`).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Detaches the programs and removes every pin (`lb-ctl run
    /// --cleanup-on-exit`); otherwise the data plane outlives the controller.
    pub fn remove(mut self) -> usize {
        let removed = self.pins.take().map_or(0, PinDir::remove_pins);
        if let Some(record) = self.gro_record.take() {
            gro::reconcile(&record, &[]);
        }
        removed
    }

    /// Takes the maps the reconciler writes out of `ebpf`, and starts the
    /// data plane's clock. What the maps should hold, `settings` included,
    /// is the reconciler's to write.
    fn open(
        mut ebpf: Ebpf,
        interfaces: &[String],
        settings: Settings,
        adopting: bool,
    ) -> Result<Self, DataplaneError> {
        // The clock is runtime state, not configuration, so not part of the
        // image: it starts ticking here, and goes on without this process.
        // An adopted data plane's offset is kept (its connection entries are
        // stamped in its epochs), one tick further: every next hop it cached
        // is looked up again. (Epoch 0, what an empty cache entry holds,
        // would take a zero offset and a kernel booted a moment ago.) The
        // reconciler's writes forget them again where it matters, when a
        // redirect slot changes hands (`Op::ForgetNextHops`).
        let mut epoch: Array<MapData, EpochClock> = typed(&mut ebpf, "lb_epoch")?;
        let offset = if adopting {
            epoch.get(&0, 0).map_err(err("reading lb_epoch"))?.offset.saturating_add(1).max(1)
        } else {
            1
        };
        let clock = EpochClock { mult: epoch_mult(clock::jiffy_ns()?), offset };
        epoch.set(0, clock, 0).map_err(err("writing lb_epoch"))?;
        let clock_program = program_handle(&ebpf, "lb_clock")?;
        let conns = Arc::new(conn_table(&ebpf, settings.meta.conn_salt)?);
        let conns6 = Arc::new(conn_table(&ebpf, settings.meta.conn_salt)?);
        // New maps say at once what they are (the layout, and the salt the
        // program was loaded with), before anything can stop this process:
        // a next start adopts them by `lb_meta`, and must not find a zero
        // there for maps that are ours. The image's `PutMeta` then rewrites
        // the same value, as for adopted maps.
        let mut meta: Array<MapData, Meta> = typed(&mut ebpf, "lb_meta")?;
        if !adopting {
            meta.set(0, settings.meta, 0).map_err(err("writing lb_meta"))?;
        }
        let timeouts: Array<MapData, u32> = typed(&mut ebpf, "lb_timeouts")?;
        // What an adopted data plane's entries expire by until the
        // reconciler writes this one's (zero in new maps).
        let held_timeouts = Arc::new(HeldTimeouts::default());
        for (state, ticks) in (0..).zip(read_timeouts(&timeouts)?) {
            held_timeouts.set(state, ticks);
        }
        Ok(Self {
            maglev: typed(&mut ebpf, "lb_maglev")?,
            v4: FamilyMaps::open(&mut ebpf, &family::V4)?,
            v6: FamilyMaps::open(&mut ebpf, &family::V6)?,
            fnat: fullnat::FullNatMaps::open(&mut ebpf, fullnat::V4)?,
            fnat6: fullnat::FullNatMaps::open(&mut ebpf, fullnat::V6)?,
            epoch,
            clock,
            clock_program,
            settings,
            timeouts,
            held_timeouts,
            policy: typed(&mut ebpf, "lb_policy")?,
            meta,
            tx_ports: typed(&mut ebpf, "lb_tx_ports")?,
            tx_slots: typed(&mut ebpf, "lb_tx_slots")?,
            be_conns: typed(&mut ebpf, "lb_be_conns")?,
            conns,
            conns6,
            published: BTreeMap::new(),
            ebpf,
            pins: None,
            adopted: false,
            counted_ids: FxHashSet::default(),
            interfaces: interfaces.to_vec(),
            gro_record: None,
        })
    }

    /// Sets the idle timeout of each connection state, for tests that
    /// change it behind the reconciler (which writes the settings it
    /// planned only where they differ from what it applied: it leaves this be).
    pub fn set_timeouts(&mut self, t: &Timeouts) -> Result<(), DataplaneError> {
        for (state, ticks) in (0..).zip(settings::timeout_ticks(t)) {
            self.apply(&Op::PutTimeout(state, ticks))?;
        }
        Ok(())
    }

    /// Sets how many answers (resets, ICMP errors) each CPU may send per
    /// second (a budget per epoch tick), and the reverse-path check, for
    /// tests (as `set_timeouts`).
    pub fn set_policy(
        &mut self,
        answers_per_second: u32,
        reverse_path: ReversePath,
    ) -> Result<(), DataplaneError> {
        let planned = settings::policy(answers_per_second, reverse_path, HandshakeProof::Ack);
        let policy = Policy {
            answers_per_tick: planned.answers_per_tick,
            reverse_path: planned.reverse_path,
            ..self.policy.get(&0, 0).map_err(err("reading lb_policy"))?
        };
        self.apply(&Op::PutPolicy(policy))
    }

    /// Sets what records a NAT service's TCP flow (`handshake_proof`), for
    /// tests (as `set_timeouts`).
    pub fn set_handshake_proof(&mut self, proof: HandshakeProof) -> Result<(), DataplaneError> {
        let planned = settings::policy(0, ReversePath::Strict, proof);
        let policy = Policy {
            handshake_proof: planned.handshake_proof,
            ..self.policy.get(&0, 0).map_err(err("reading lb_policy"))?
        };
        self.apply(&Op::PutPolicy(policy))
    }

    /// The connection counts `lc` reads (the recount writes them), for tests
    /// that set a load by hand.
    pub fn backend_conns_mut(&mut self) -> &mut Array<MapData, BackendConns> {
        &mut self.be_conns
    }

    /// The loaded object: its programs and the kernel-written maps
    /// (connection table, counters), for tests and benchmarks.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// The connection tables' sizes (base-2 logarithms of their sets) for a
/// `conntrack_max`, as the program is told them.
struct SetBits {
    v4: u32,
    v6: u32,
}

impl SetBits {
    fn of(conntrack_max: u32) -> Self {
        Self { v4: conn_set_bits(conntrack_max), v6: conn6_set_bits(conntrack_max) }
    }
}

/// A loader with the maps sized at load time (`pins::load_time_sizes`),
/// and the program told the connection tables' sizes (`set_bits`, for the
/// same `conntrack_max`) and hash key.
fn sized_loader<'a>(
    sizes: MapSizes,
    set_bits: &'a SetBits,
    salt: &'a u32,
) -> Result<EbpfLoader<'a>, DataplaneError> {
    let mut loader = EbpfLoader::new();
    for (name, entries) in pins::load_time_sizes(sizes)? {
        loader.map_max_entries(name, entries);
    }
    loader.override_global("LB_CONN_SET_BITS", &set_bits.v4, true);
    loader.override_global("LB_CONN6_SET_BITS", &set_bits.v6, true);
    loader.override_global("LB_CONN_SALT", salt, true);
    Ok(loader)
}

/// The ifindexes of `interfaces` (in the current network namespace), in
/// order: the redirect targets' slots.
fn ifindexes(interfaces: &[String]) -> Result<Vec<u32>, DataplaneError> {
    if interfaces.len() > MAX_TX_PORTS as usize {
        return Err(DataplaneError::kernel(
            "dataplane.interfaces",
            format!("at most {MAX_TX_PORTS}"),
        ));
    }
    interfaces
        .iter()
        .map(|name| {
            netdev::ifindex(name).ok_or_else(|| {
                DataplaneError::kernel(format!("interface {name}"), "does not exist")
            })
        })
        .collect()
}

/// What `lb_timeouts` holds, by state.
fn read_timeouts(timeouts: &Array<MapData, u32>) -> Result<settings::TimeoutTicks, DataplaneError> {
    let mut ticks = [0; CONN_STATES as usize];
    for (state, held) in (0..).zip(ticks.iter_mut()) {
        *held = timeouts.get(&state, 0).map_err(err("reading lb_timeouts"))?;
    }
    Ok(ticks)
}

/// A new connection table's hash key.
fn random_salt() -> Result<u32, DataplaneError> {
    use std::io::Read as _;
    let mut bytes = [0_u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| DataplaneError::kernel("reading /dev/urandom", e))?;
    Ok(u32::from_ne_bytes(bytes))
}

fn load_object(object: &[u8], sizes: MapSizes, salt: u32) -> Result<Ebpf, DataplaneError> {
    let set_bits = SetBits::of(sizes.conntrack_max);
    let mut ebpf = sized_loader(sizes, &set_bits, &salt)?
        .load(object)
        .map_err(|e| DataplaneError::kernel("loading the XDP object", e))?;
    load_programs(&mut ebpf)?;
    Ok(ebpf)
}

/// Passes the object's programs through the verifier: the XDP data plane
/// (IPv4, and IPv6 with its answers and its ICMPv6 error translation, and
/// full NAT for both with IPv4's answers for it, which it tail calls through
/// `lb_progs`), the tc slow
/// path, and the clock the controller reads.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    load_program::<Xdp>(ebpf, "lb_xdp")?;
    load_program::<Xdp>(ebpf, "lb_xdp6")?;
    load_program::<Xdp>(ebpf, "lb_answer6")?;
    load_program::<Xdp>(ebpf, "lb_icmp6")?;
    load_program::<Xdp>(ebpf, "lb_fnat")?;
    load_program::<Xdp>(ebpf, "lb_fnat6")?;
    load_program::<Xdp>(ebpf, "lb_answer")?;
    load_program::<SchedClassifier>(ebpf, "lb_neigh")?;
    load_program::<Xdp>(ebpf, "lb_clock")?;
    let tail_called = [
        (0, "lb_xdp6"),
        (1, "lb_answer6"),
        (2, "lb_icmp6"),
        (3, "lb_fnat"),
        (4, "lb_fnat6"),
        (5, "lb_answer"),
    ];
    let tail_called = tail_called.map(|(slot, name)| {
        let failed = |e: &dyn std::fmt::Display| {
            DataplaneError::kernel(format!("program {name}"), e.to_string())
        };
        let fd = program::<Xdp>(ebpf, name)?.fd().map_err(|e| failed(&e))?;
        Ok::<_, DataplaneError>((slot, fd.try_clone().map_err(|e| failed(&e))?))
    });
    // Borrowed, not taken: the object keeps its handle, as a prog array
    // loses its entries when its last user reference closes (unpinned, in
    // the tests' data planes).
    let map = ebpf
        .map_mut("lb_progs")
        .ok_or_else(|| DataplaneError::kernel("lb_progs", "missing from the object"))?;
    let mut progs = ProgramArray::try_from(map).map_err(err("opening lb_progs"))?;
    for called in tail_called {
        let (slot, fd) = called?;
        progs.set(slot, &fd, 0).map_err(err("writing lb_progs"))?;
    }
    Ok(())
}

/// `lb_conntrack` or `lb_conntrack6` mapped into this process, with the
/// size the map has (the configured one, or an adopted data plane's, which
/// is the same: pins of another size are refused before this).
fn conn_table<A: TableAddr>(ebpf: &Ebpf, salt: u32) -> Result<ConnTable<A>, DataplaneError> {
    let Some(aya::maps::Map::Array(map)) = ebpf.map(A::MAP) else {
        return Err(DataplaneError::kernel(A::MAP, "missing from the object"));
    };
    ConnTable::of_map(map, salt)
        .map_err(|e| DataplaneError::kernel(format!("mapping {}", A::MAP), e))
}

/// A descriptor of its own on the object's (loaded) XDP program `name`.
fn program_handle(ebpf: &Ebpf, name: &str) -> Result<ProgramFd, DataplaneError> {
    let failed = |e: &dyn std::fmt::Display| {
        DataplaneError::kernel(format!("program {name}"), e.to_string())
    };
    let program: &Xdp = ebpf
        .program(name)
        .ok_or_else(|| failed(&"missing from the object"))?
        .try_into()
        .map_err(|e| failed(&e))?;
    program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
        .map_err(|e| failed(&e))
}

/// A program of the object, by name and type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| {
            DataplaneError::kernel(format!("program {name}"), "missing from the object")
        })?
        .try_into()
        .map_err(|e| DataplaneError::kernel(format!("program {name}"), e))
}

fn load_program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<(), DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: LoadableProgram + 'a,
{
    program::<P>(ebpf, name)?
        .load_program()
        .map_err(|e| DataplaneError::kernel(format!("loading {name} (verifier)"), e))
}

/// aya's programs have inherent `load` methods, not a trait; this gives the two we use one.
trait LoadableProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}
impl LoadableProgram for Xdp {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}
impl LoadableProgram for SchedClassifier {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, DataplaneError> {
    ebpf.take_map(name)
        .ok_or_else(|| DataplaneError::kernel(format!("map {name}"), "missing from the object"))
}

fn typed<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T, DataplaneError> {
    T::try_from(take(ebpf, name)?).map_err(err(format!("opening {name}")))
}

/// What a table no service uses holds: no slot, no usable backend.
fn empty_table() -> Vec<u32> {
    let mut table = vec![NO_BACKEND; TABLE_WORDS];
    table[MAGLEV_SIZE as usize] = 0;
    table
}

impl KernelMaps {
    fn put_maglev(&mut self, id: u32, slots: &[u32]) -> Result<(), DataplaneError> {
        let table: &Table = slots
            .try_into()
            .map_err(|_| DataplaneError::kernel("writing lb_maglev", "table of the wrong size"))?;
        self.maglev.set(id, table, 0).map_err(err("writing lb_maglev"))
    }
}

impl KernelMaps {
    /// Zeroes the traffic counters of service or backend `id` on every CPU,
    /// unless the maps are this process's and no entry has had the id.
    fn reset_traffic(&mut self, kind: CounterKind, id: u32) -> Result<(), DataplaneError> {
        if !self.adopted && !self.counted_ids.contains(&(kind, id)) {
            return Ok(());
        }
        let name = match kind {
            CounterKind::Service => "lb_svc_stats",
            CounterKind::Backend => "lb_be_stats",
        };
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| DataplaneError::kernel(name.to_owned(), "missing from the object"))?;
        let mut array: PerCpuArray<&mut MapData, Traffic> =
            PerCpuArray::try_from(map).map_err(err(format!("opening {name}")))?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, e)| DataplaneError::kernel(format!("reading {path}"), e))?;
        let zeros = PerCpuValues::try_from(vec![Traffic::default(); cpus])
            .map_err(|e| DataplaneError::kernel(format!("zeroing {name}"), e))?;
        array.set(id, zeros, 0).map_err(err(format!("zeroing {name}")))
    }

    /// Stops the data plane's clock at the epoch it shows now: for tests and
    /// benchmarks that need time to stand still between packets (they move
    /// it on by hand, `Maps::advance_clock`).
    pub fn stop_clock(&mut self) -> Result<(), DataplaneError> {
        self.clock = EpochClock { mult: 0, offset: self.epoch_now()? };
        self.epoch.set(0, self.clock, 0).map_err(err("writing lb_epoch"))
    }

    /// The data plane's epoch now, as `lb_xdp` computes it (see `clock`).
    pub fn epoch_now(&self) -> Result<u64, DataplaneError> {
        clock::read(&self.clock_program)
    }

    /// How many full-NAT mappings each family holds: (flows' entries,
    /// reverse entries, that is ports taken), IPv4 then IPv6.
    pub fn fullnat_mappings(&self) -> Result<[(usize, usize); 2], DataplaneError> {
        Ok([self.fnat.len()?, self.fnat6.len()?])
    }

    /// The connection table, as mapped into this process (tests and
    /// benchmarks fill and inspect it).
    pub fn conn_table(&self) -> &ConnTable {
        &self.conns
    }

    /// The IPv6 connection table, as `conn_table`.
    pub fn conn_table6(&self) -> &ConnTable<[u8; 16]> {
        &self.conns6
    }
}

impl KernelMaps {
    /// The data plane's own settings as its maps hold them.
    fn read_settings(&self) -> Result<Settings, DataplaneError> {
        let mut tx_slots = BTreeMap::new();
        for entry in &self.tx_slots {
            let (ifindex, slot) = entry.map_err(err("reading lb_tx_slots"))?;
            tx_slots.insert(ifindex, slot);
        }
        Ok(Settings {
            tx_ports: tx_ports::read(&self.tx_ports)?,
            tx_slots,
            timeouts: read_timeouts(&self.timeouts)?,
            policy: self.policy.get(&0, 0).map_err(err("reading lb_policy"))?,
            meta: self.meta.get(&0, 0).map_err(err("reading lb_meta"))?,
        })
    }

    /// How an error names interface `ifindex`: by its name too when it is
    /// one of the configured ones.
    fn interface(&self, ifindex: u32) -> String {
        let slot = self.settings.tx_slots.get(&ifindex).and_then(|s| usize::try_from(*s).ok());
        match slot.and_then(|s| self.interfaces.get(s)) {
            Some(name) => format!("{name} (ifindex {ifindex})"),
            None => format!("ifindex {ifindex}"),
        }
    }
}

/// Adds `table`'s live entries to their backends' `counts` (see
/// `Maps::recount_connections`), and erases its stale entries.
fn recount<A: TableAddr>(
    table: &ConnTable<A>,
    now: u32,
    timeouts: &HeldTimeouts,
    backends: &BTreeMap<u32, u32>,
    counts: &mut BTreeMap<u32, BackendConns>,
) {
    // Expired entries are left in place: the data plane counts them as
    // absent and gives their place to the next flow of their set first;
    // erasing one here could race a flow the data plane records there.
    // Only an entry idle for half the tick counter's range is erased,
    // before wrapping would make it look stamped in the future (live).
    table.for_each(|at, slot| {
        let conn = slot.conn();
        if now.wrapping_sub(conn.last_seen) >= STALE_TICKS {
            table.remove(at);
            return;
        }
        if expired(now, conn.last_seen, timeouts.get(conn.state)) {
            return;
        }
        // An entry made for an earlier holder of a reused id is not this backend's.
        if backends.get(&conn.backend_id) != Some(&conn.service_id) {
            return;
        }
        let entry = counts.entry(conn.backend_id).or_default();
        if conn.state == CONN_ESTABLISHED {
            entry.active += 1;
        } else {
            entry.inactive += 1;
        }
    });
}

impl Maps for KernelMaps {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn read_image(&mut self) -> Result<Option<Image>, DataplaneError> {
        if !self.adopted {
            return Ok(None);
        }
        let mut image = Image { settings: self.read_settings()?, ..Image::default() };
        self.v4.read(&mut image.v4, &self.maglev, &mut image.maglev)?;
        self.v6.read(&mut image.v6, &self.maglev, &mut image.maglev)?;
        Ok(Some(image))
    }

    fn reader(&self) -> Result<Arc<dyn MapReader>, DataplaneError> {
        Ok(Arc::new(KernelReader::of(self)?))
    }

    fn flow_writer(&self) -> Result<Arc<dyn FlowWriter>, DataplaneError> {
        Ok(Arc::new(KernelFlows::of(self)?))
    }

    fn trace_tap(&self) -> Result<Box<dyn super::TraceTap>, DataplaneError> {
        Ok(Box::new(trace::KernelTrace::of(self)?))
    }

    fn recount_connections(
        &mut self,
        backends: &BTreeMap<u32, u32>,
        moved_by_kernel: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, BackendConns>, DataplaneError> {
        let now = self.epoch_now()? as u32;
        let mut counts: BTreeMap<u32, BackendConns> = BTreeMap::new();
        let timeouts = Arc::clone(&self.held_timeouts);
        // Ids are one space over both families: a backend's entries are
        // all in its family's table, and both add to the same counts.
        recount(&self.conns, now, &timeouts, backends, &mut counts);
        recount(&self.conns6, now, &timeouts, backends, &mut counts);
        let by_state = std::array::from_fn(|state| timeouts.get(state as u8));
        self.fnat.expire(now, &by_state)?;
        self.fnat6.expire(now, &by_state)?;
        // Every backend in use gets its count, zero included. One whose
        // count the data plane moves is always rewritten (this clears what
        // it added for flows that did not stay: a SYN never answered, a
        // one-datagram exchange); the others' only when it changed: with
        // thousands of backends, a write each is most of the cost.
        let mut published = BTreeMap::new();
        for id in backends.keys() {
            let c = counts.get(id).copied().unwrap_or_default();
            if moved_by_kernel.contains(id) || self.published.get(id) != Some(&c) {
                self.be_conns.set(*id, c, 0).map_err(err("writing lb_be_conns"))?;
            }
            published.insert(*id, c);
        }
        // Backends gone since the last recount are cleared once.
        for id in self.published.keys().filter(|id| !backends.contains_key(id)) {
            self.be_conns
                .set(*id, BackendConns::default(), 0)
                .map_err(err("clearing lb_be_conns"))?;
        }
        self.published = published;
        Ok(counts)
    }

    fn advance_clock(&mut self) -> Result<(), DataplaneError> {
        self.clock.offset += 1;
        self.epoch.set(0, self.clock, 0).map_err(err("writing lb_epoch"))
    }

    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        match op {
            Op::V4(FamilyOp::PutService(_, svc)) | Op::V6(FamilyOp::PutService(_, svc)) => {
                self.counted_ids.insert((CounterKind::Service, svc.id));
            }
            Op::V4(FamilyOp::PutBackend(id, _)) | Op::V6(FamilyOp::PutBackend(id, _)) => {
                self.counted_ids.insert((CounterKind::Backend, *id));
            }
            _ => {}
        }
        match op {
            Op::V4(op) => self.v4.apply(op),
            Op::V6(op) => self.v6.apply(op),
            Op::PutMaglev(id, slots) => self.put_maglev(*id, slots),
            Op::ClearMaglev(id) => self.put_maglev(*id, &empty_table()),
            Op::ResetServiceTraffic(id) => self.reset_traffic(CounterKind::Service, *id),
            Op::ResetBackendTraffic(id) => self.reset_traffic(CounterKind::Backend, *id),
            Op::PutMeta(meta) => self.meta.set(0, meta, 0).map_err(err("writing lb_meta")),
            Op::PutTimeout(state, ticks) => {
                self.timeouts
                    .set(u32::from(*state), ticks, 0)
                    .map_err(err("writing lb_timeouts"))?;
                self.held_timeouts.set(*state, *ticks);
                Ok(())
            }
            Op::PutPolicy(policy) => {
                self.policy.set(0, policy, 0).map_err(err("writing lb_policy"))
            }
            Op::PutTxPort(slot, ifindex) => {
                self.tx_ports.set(*slot, *ifindex, None, 0).map_err(|e| {
                    let what = format!("adding {} to lb_tx_ports", self.interface(*ifindex));
                    DataplaneError::kernel(what, e)
                })
            }
            Op::DelTxPort(slot) => tx_ports::delete(&self.tx_ports, *slot),
            Op::PutTxSlot(ifindex, slot) => {
                self.tx_slots.insert(ifindex, slot, 0).map_err(err("writing lb_tx_slots"))
            }
            Op::DelTxSlot(ifindex) => {
                deleted(self.tx_slots.remove(ifindex), "deleting from lb_tx_slots")
            }
            Op::ForgetNextHops => self.advance_clock(),
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::abi::{CONN_SYN, Conn, Flow, PROTO_TCP};

    use super::*;

    fn conn(backend_id: u32, service_id: u32, last_seen: u32, state: u8) -> Conn {
        Conn { backend_id, service_id, last_seen, state, _pad: [0; 3] }
    }

    fn flow<A: TableAddr>(src: A, dst: A, sport: u16) -> Flow<A> {
        Flow { src, dst, sport, dport: 80, proto: PROTO_TCP, _pad: [0; 3] }
    }

    #[test]
    fn the_recount_adds_both_tables_and_erases_stale_entries() {
        let timeouts = HeldTimeouts::default();
        for state in 0..CONN_STATES {
            timeouts.set(state as u8, 100);
        }
        let now = 1_000;
        let v4 = ConnTable::<[u8; 4]>::in_memory(10, 1).unwrap();
        let v6 = ConnTable::<[u8; 16]>::in_memory(10, 1).unwrap();
        let (c4, vip4) = ([10, 77, 1, 10], [10, 77, 1, 100]);
        let (mut c6, mut vip6) = ([0_u8; 16], [0_u8; 16]);
        c6[..2].copy_from_slice(&[0xfd, 0x77]);
        vip6[..2].copy_from_slice(&[0xfd, 0x77]);
        (c6[15], vip6[15]) = (10, 100);
        let record4 = |port, c: Conn| v4.record(&flow(c4, vip4, port), &c, |s| timeouts.get(s));
        let record6 = |port, c: Conn| v6.record(&flow(c6, vip6, port), &c, |s| timeouts.get(s));
        // Backend 1 (service 0) is IPv4, backend 2 (service 1) IPv6.
        record4(1, conn(1, 0, now - 5, CONN_ESTABLISHED));
        record6(1, conn(2, 1, now - 5, CONN_ESTABLISHED));
        record6(2, conn(2, 1, now, CONN_SYN));
        record6(3, conn(2, 1, now - 200, CONN_ESTABLISHED)); // expired: kept, not counted
        record6(4, conn(2, 0, now, CONN_ESTABLISHED)); // an earlier holder of the id
        record6(5, conn(2, 1, now.wrapping_sub(STALE_TICKS), CONN_ESTABLISHED)); // stale
        let backends = BTreeMap::from([(1, 0), (2, 1)]);
        let mut counts = BTreeMap::new();
        recount(&v4, now, &timeouts, &backends, &mut counts);
        recount(&v6, now, &timeouts, &backends, &mut counts);
        assert_eq!(
            counts,
            BTreeMap::from([
                (1, BackendConns { active: 1, inactive: 0 }),
                (2, BackendConns { active: 1, inactive: 1 }),
            ])
        );
        assert_eq!(v6.len(), 4, "the stale entry is erased, the expired one kept");
        assert_eq!(v4.len(), 1);
    }
}
