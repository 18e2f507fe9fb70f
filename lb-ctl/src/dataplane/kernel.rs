//! The real data plane: loads the XDP object, attaches it (XDP on every
//! interface, plus the tc neighbour slow path), pins the maps under
//! `pin_path` for bpftool, and writes map ops. Dropping it detaches the
//! programs and removes the pins.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode, tc},
};
use lb_common::abi::{
    ABI_VERSION, BackendConns, CONN_CLOSED, CONN_CLOSING, CONN_ESTABLISHED, CONN_STATES, CONN_SYN,
    CONN_UDP, Conn, Endpoint, Flow, MAGLEV_SIZE, MAX_TX_PORTS, Meta, NEXTHOP_REFRESH_MS,
    NO_BACKEND, Traffic, expired,
};
use tracing::{info, warn};

use super::{ConnEntry, Counts, DataplaneError, Maps};
use crate::{
    model::{Dataplane, Timeouts, XdpMode},
    netdev,
    plan::Op,
};

type Table = [u32; MAGLEV_SIZE as usize];

/// Every map of the object is named `lb_*` (SPEC: "names starting lb_"):
/// what this prefix names under `pin_path` is ours to pin and to remove.
const MAP_PREFIX: &str = "lb_";

pub struct KernelMaps {
    services: HashMap<MapData, Endpoint, lb_common::abi::Service>,
    maglev: Array<MapData, Table>,
    backends: Array<MapData, lb_common::abi::Backend>,
    reals: HashMap<MapData, Endpoint, lb_common::abi::Real>,
    vips: HashMap<MapData, [u8; 4], u32>,
    addrs: Array<MapData, u8>,
    real_slots: Array<MapData, u32>,
    epoch: Array<MapData, u64>,
    timeouts: Array<MapData, u32>,
    /// The timeouts last written, in ticks, indexed by state.
    timeout_ticks: [u32; CONN_STATES as usize],
    be_conns: Array<MapData, BackendConns>,
    /// The counts last written to `lb_be_conns`, by backend id.
    published: BTreeMap<u32, BackendConns>,
    epoch_value: u64,
    /// The programs (and the links that attach them) and the maps only the
    /// kernel writes: dropping it detaches everything.
    ebpf: Ebpf,
    /// Where the maps are pinned, if they are.
    pin_dir: Option<PathBuf>,
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
    pub fn load(
        object: &[u8],
        conntrack_max: u32,
        interfaces: &[String],
    ) -> Result<Self, DataplaneError> {
        let mut maps = Self::open(load_object(object, conntrack_max)?, interfaces, None)?;
        maps.set_timeouts(&Timeouts::default())?;
        Ok(maps)
    }

    /// Loads, attaches and pins. On error nothing stays attached.
    pub fn start(dataplane: &Dataplane, object: &[u8]) -> Result<Self, DataplaneError> {
        let mut ebpf = load_object(object, dataplane.conntrack_max)?;
        attach_xdp(&mut ebpf, &dataplane.interfaces, dataplane.xdp_mode)?;
        attach_tc(&mut ebpf, &dataplane.interfaces)?;
        pin_all(&ebpf, &dataplane.pin_path)?;
        let mut maps = Self::open(ebpf, &dataplane.interfaces, Some(dataplane.pin_path.clone()))
            .inspect_err(|_| {
                // No KernelMaps exists to clean up on drop: do it here.
                remove_pins(&dataplane.pin_path);
            })?;
        // Before any service exists, so no packet sees a zero timeout.
        maps.set_timeouts(&dataplane.timeouts)?;
        Ok(maps)
    }

    /// Fills the redirect targets and the ABI version, and takes the maps the
    /// reconciler writes out of `ebpf`.
    fn open(
        mut ebpf: Ebpf,
        interfaces: &[String],
        pin_dir: Option<PathBuf>,
    ) -> Result<Self, DataplaneError> {
        if interfaces.len() > MAX_TX_PORTS as usize {
            return Err(DataplaneError::kernel(
                "dataplane.interfaces",
                format!("at most {MAX_TX_PORTS}"),
            ));
        }
        let mut tx_ports: DevMap<MapData> = typed(&mut ebpf, "lb_tx_ports")?;
        let mut tx_slots: HashMap<MapData, u32, u32> = typed(&mut ebpf, "lb_tx_slots")?;
        for (slot, name) in (0_u32..).zip(interfaces) {
            let index = netdev::ifindex(name).ok_or_else(|| {
                DataplaneError::kernel(format!("interface {name}"), "does not exist")
            })?;
            tx_ports
                .set(slot, index, None, 0)
                .map_err(|e| DataplaneError::kernel(format!("adding {name} to lb_tx_ports"), e))?;
            tx_slots.insert(index, slot, 0).map_err(err("writing lb_tx_slots"))?;
        }
        // Epoch 0 is what an empty cache entry holds: start at 1.
        let mut epoch: Array<MapData, u64> = typed(&mut ebpf, "lb_epoch")?;
        epoch.set(0, 1, 0).map_err(err("writing lb_epoch"))?;
        let mut meta: Array<MapData, Meta> = typed(&mut ebpf, "lb_meta")?;
        meta.set(0, Meta { abi_version: ABI_VERSION, _pad: 0 }, 0)
            .map_err(err("writing lb_meta"))?;
        Ok(Self {
            services: typed(&mut ebpf, "lb_services")?,
            maglev: typed(&mut ebpf, "lb_maglev")?,
            backends: typed(&mut ebpf, "lb_backends")?,
            reals: typed(&mut ebpf, "lb_reals")?,
            vips: typed(&mut ebpf, "lb_vips")?,
            addrs: typed(&mut ebpf, "lb_addrs")?,
            real_slots: typed(&mut ebpf, "lb_real_slots")?,
            epoch,
            epoch_value: 1,
            timeouts: typed(&mut ebpf, "lb_timeouts")?,
            timeout_ticks: [0; CONN_STATES as usize],
            be_conns: typed(&mut ebpf, "lb_be_conns")?,
            published: BTreeMap::new(),
            ebpf,
            pin_dir,
        })
    }

    /// Sets the idle timeout of each connection state, in the data plane's
    /// ticks (`NEXTHOP_REFRESH_MS`).
    pub fn set_timeouts(&mut self, t: &Timeouts) -> Result<(), DataplaneError> {
        let ticks = |d: Duration| {
            u32::try_from(d.as_millis() / u128::from(NEXTHOP_REFRESH_MS)).unwrap_or(u32::MAX)
        };
        for (state, timeout) in [
            (CONN_SYN, t.tcp_syn),
            (CONN_ESTABLISHED, t.tcp_established),
            (CONN_CLOSING, t.tcp_closing),
            (CONN_CLOSED, t.tcp_closed),
            (CONN_UDP, t.udp),
        ] {
            self.timeouts
                .set(u32::from(state), ticks(timeout), 0)
                .map_err(err("writing lb_timeouts"))?;
            self.timeout_ticks[usize::from(state)] = ticks(timeout);
        }
        Ok(())
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

fn load_object(object: &[u8], conntrack_max: u32) -> Result<Ebpf, DataplaneError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("lb_conntrack", conntrack_max)
        .load(object)
        .map_err(|e| DataplaneError::kernel("loading the XDP object", e))?;
    load_program::<Xdp>(&mut ebpf, "lb_xdp")?;
    load_program::<SchedClassifier>(&mut ebpf, "lb_neigh")?;
    Ok(ebpf)
}

/// Pins every map under `dir` (what bpftool and `lb-lab counters` read).
fn pin_all(ebpf: &Ebpf, dir: &Path) -> Result<(), DataplaneError> {
    check_bpffs(dir)?;
    let stale = remove_pins(dir);
    if stale > 0 {
        warn!(pin_dir = %dir.display(), stale, "removed pins left by an earlier run");
    }
    fs::create_dir_all(dir)
        .map_err(|e| DataplaneError::kernel(format!("creating {}", dir.display()), e))?;
    for (name, map) in ebpf.maps() {
        if !name.starts_with(MAP_PREFIX) {
            return Err(DataplaneError::kernel(
                format!("map {name}"),
                format!("is not named {MAP_PREFIX}*"),
            ));
        }
        pin(dir, name, |p| map.pin(p))?;
    }
    info!(pin_dir = %dir.display(), "maps pinned");
    Ok(())
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

fn pin(
    dir: &Path,
    name: &str,
    f: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<(), DataplaneError> {
    let path = dir.join(name);
    f(&path).map_err(|e| DataplaneError::kernel(format!("pinning {}", path.display()), e))
}

/// Pins need a bpf filesystem; say so plainly instead of a bare ENOENT/EPERM.
fn check_bpffs(pin_dir: &Path) -> Result<(), DataplaneError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    let path = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
        .map_err(|e| DataplaneError::kernel("dataplane.pin_path", e))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut stat) };
    if rc != 0 || stat.f_type != BPF_FS_MAGIC {
        return Err(DataplaneError::kernel(
            format!("dataplane.pin_path {}", pin_dir.display()),
            format!(
                "{} is not a bpf filesystem (mount -t bpf bpf {})",
                parent.display(),
                parent.display()
            ),
        ));
    }
    Ok(())
}

/// Removes the pins a previous run left (a crash, a kill -9). Until
/// controller restarts adopt them, a new run starts from fresh maps.
fn remove_pins(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(MAP_PREFIX)) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) => warn!(path = %path.display(), error = %e, "cannot remove pin"),
        }
    }
    removed
}

fn attach_xdp(ebpf: &mut Ebpf, interfaces: &[String], mode: XdpMode) -> Result<(), DataplaneError> {
    let program: &mut Xdp = program(ebpf, "lb_xdp")?;
    for name in interfaces {
        let attached = match mode {
            XdpMode::Driver => program.attach(name, AyaXdpMode::Driver).map(|_| "driver"),
            XdpMode::Skb => program.attach(name, AyaXdpMode::Skb).map(|_| "skb"),
            XdpMode::Auto => {
                program.attach(name, AyaXdpMode::Driver).map(|_| "driver").or_else(|e| {
                    warn!(interface = %name, error = %e, "driver mode XDP refused, using skb mode");
                    program.attach(name, AyaXdpMode::Skb).map(|_| "skb")
                })
            }
        }
        .map_err(|e| DataplaneError::kernel(format!("attaching XDP to {name}"), e))?;
        info!(interface = %name, mode = attached, "XDP attached");
    }
    Ok(())
}

fn attach_tc(ebpf: &mut Ebpf, interfaces: &[String]) -> Result<(), DataplaneError> {
    let program: &mut SchedClassifier = program(ebpf, "lb_neigh")?;
    for name in interfaces {
        // Needed only where tcx links are unavailable; "exists" is fine.
        let _ = tc::qdisc_add_clsact(name);
        program
            .attach(name, TcAttachType::Ingress)
            .map_err(|e| DataplaneError::kernel(format!("attaching tc ingress to {name}"), e))?;
    }
    Ok(())
}

impl KernelMaps {
    fn put_maglev(&mut self, id: u32, slots: &[u32]) -> Result<(), DataplaneError> {
        let table: &Table = slots
            .try_into()
            .map_err(|_| DataplaneError::kernel("writing lb_maglev", "table of the wrong size"))?;
        self.maglev.set(id, table, 0).map_err(err("writing lb_maglev"))
    }
}

/// Sums the per-CPU values of `ids` in the per-CPU array `name`.
fn per_cpu_sums<T: aya::Pod + Default>(
    ebpf: &Ebpf,
    name: &str,
    ids: &[u32],
    mut add: impl FnMut(&mut T, &T),
) -> Result<BTreeMap<u32, T>, DataplaneError> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| DataplaneError::kernel(name.to_owned(), "missing from the object"))?;
    let array: PerCpuArray<&MapData, T> =
        PerCpuArray::try_from(map).map_err(err(format!("opening {name}")))?;
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

impl KernelMaps {
    /// The conntrack map: written by the kernel, read and pruned by the recount.
    fn conntrack(&mut self) -> Result<HashMap<&mut MapData, Flow, Conn>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut("lb_conntrack")
            .ok_or_else(|| DataplaneError::kernel("lb_conntrack", "missing from the object"))?;
        HashMap::try_from(map).map_err(err("opening lb_conntrack"))
    }
}

impl Maps for KernelMaps {
    fn read_counts(
        &mut self,
        services: &[u32],
        backends: &[u32],
    ) -> Result<Counts, DataplaneError> {
        let all: Vec<u32> = (0..lb_common::counter::Counter::COUNT).collect();
        let outcomes = per_cpu_sums::<u64>(&self.ebpf, "lb_counters", &all, |s, v| *s += v)?;
        Ok(Counts {
            outcomes: outcomes.into_values().collect(),
            services: per_cpu_sums(&self.ebpf, "lb_svc_stats", services, Traffic::add)?,
            backends: per_cpu_sums(&self.ebpf, "lb_be_stats", backends, Traffic::add)?,
        })
    }

    fn connections(
        &mut self,
        limit: usize,
        to: Option<Endpoint>,
    ) -> Result<(Vec<ConnEntry>, usize), DataplaneError> {
        let now = self.epoch_value as u32;
        let ticks = self.timeout_ticks;
        let tick = Duration::from_millis(NEXTHOP_REFRESH_MS);
        let table = self.conntrack()?;
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut live = 0;
        for (flow, conn) in table.iter().filter_map(Result::ok) {
            let timeout = ticks.get(usize::from(conn.state)).copied().unwrap_or(0);
            let wanted =
                to.is_none_or(|t| (t.addr, t.port, t.proto) == (flow.dst, flow.dport, flow.proto));
            if !wanted || !seen.insert(flow) || expired(now, conn.last_seen, timeout) {
                continue;
            }
            live += 1;
            if entries.len() < limit {
                let idle = now.wrapping_sub(conn.last_seen);
                entries.push(ConnEntry {
                    flow,
                    conn,
                    idle: tick * idle,
                    expires_in: tick * timeout.saturating_sub(idle),
                });
            }
        }
        Ok((entries, live))
    }

    fn recount_connections(
        &mut self,
        backends: &BTreeMap<u32, lb_common::abi::Backend>,
        lc_services: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, BackendConns>, DataplaneError> {
        let now = self.epoch_value as u32;
        let mut counts: BTreeMap<u32, BackendConns> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut expired_flows = Vec::new();
        let timeout_ticks = self.timeout_ticks;
        let mut table = self.conntrack()?;
        // get_next_key restarts from the first bucket when the current key is
        // evicted under it: count each flow once.
        for (flow, conn) in table.iter().filter_map(Result::ok) {
            if !seen.insert(flow) {
                continue;
            }
            let timeout = timeout_ticks.get(usize::from(conn.state)).copied().unwrap_or(0);
            if expired(now, conn.last_seen, timeout) {
                expired_flows.push((flow, conn));
                continue;
            }
            // An entry made for an earlier holder of a reused id is not this backend's.
            if backends.get(&conn.backend_id).is_none_or(|b| b.service_id != conn.service_id) {
                continue;
            }
            let entry = counts.entry(conn.backend_id).or_default();
            if conn.state == CONN_ESTABLISHED {
                entry.active += 1;
            } else {
                entry.inactive += 1;
            }
        }
        for (flow, conn) in &expired_flows {
            // Only if untouched since: the data plane may have placed the flow anew.
            if table.get(flow, 0).is_ok_and(|now_conn| now_conn == *conn) {
                let _ = table.remove(flow);
            }
        }
        // Every backend in use gets its count, zero included. An `lc`
        // backend's is always rewritten (this clears the picks the data
        // plane added for flows that did not stay); the others' only when it
        // changed: with thousands of backends, a write each is most of the cost.
        let mut published = BTreeMap::new();
        for (id, b) in backends {
            let c = counts.get(id).copied().unwrap_or_default();
            let moved_by_kernel = lc_services.contains(&b.service_id);
            if moved_by_kernel || self.published.get(id) != Some(&c) {
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

    fn advance_nexthop_epoch(&mut self) -> Result<(), DataplaneError> {
        self.epoch_value += 1;
        self.epoch.set(0, self.epoch_value, 0).map_err(err("writing lb_epoch"))
    }

    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        match op {
            Op::PutBackend(id, b) => {
                self.backends.set(*id, b, 0).map_err(err("writing lb_backends"))
            }
            Op::ClearBackend(id) => self
                .backends
                .set(*id, lb_common::abi::Backend::default(), 0)
                .map_err(err("clearing lb_backends")),
            Op::PutReal(k, r) => self.reals.insert(k, r, 0).map_err(err("writing lb_reals")),
            Op::DelReal(k) => deleted(self.reals.remove(k), "deleting from lb_reals"),
            Op::PutMaglev(id, slots) => self.put_maglev(*id, slots),
            Op::ClearMaglev(id) => self.put_maglev(*id, &vec![NO_BACKEND; MAGLEV_SIZE as usize]),
            Op::PutAddrFlags(slot, flags) => {
                self.addrs.set(*slot, flags, 0).map_err(err("writing lb_addrs"))
            }
            Op::PutRealSlot(slot, value) => {
                self.real_slots.set(*slot, value, 0).map_err(err("writing lb_real_slots"))
            }
            Op::PutVip(v, n) => self.vips.insert(v, n, 0).map_err(err("writing lb_vips")),
            Op::DelVip(v) => deleted(self.vips.remove(v), "deleting from lb_vips"),
            Op::PutService(k, s) => {
                self.services.insert(k, s, 0).map_err(err("writing lb_services"))
            }
            Op::DelService(k) => deleted(self.services.remove(k), "deleting from lb_services"),
        }
    }
}

impl Drop for KernelMaps {
    fn drop(&mut self) {
        if let Some(dir) = &self.pin_dir {
            remove_pins(dir);
            let _ = fs::remove_dir(dir);
        }
    }
}
