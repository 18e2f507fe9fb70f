//! What outlives a controller: the maps and the links that attach the
//! programs, pinned under `pin_path`. A controller locks the directory (one
//! writer at a time), checks that pinned maps have the layout its object
//! expects, and then either creates everything or adopts what is there:
//! the same maps (flows, counters) and the same links, whose program it
//! swaps atomically for its own.
//!
//! Layout: `<pin_path>/lb_*` the maps (what bpftool and the tests read),
//! `<pin_path>/links/{xdp,tc}_<interface>` the links.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_map_type};
use lb_common::{
    abi::{ABI_VERSION, FLOW_CACHE_SLOTS, Meta, NEXTHOP_SLOTS},
    conn_table::{conn_set_bits, conn6_set_bits},
    fullnat::DEFAULT_FULLNAT_MAX,
};
use tracing::{info, warn};

use super::DataplaneError;
use crate::desired::model::Dataplane;

/// Every map of the object is named `lb_*` (`lb-ebpf/src/maps.rs` names
/// them so): what this prefix names under `pin_path` is ours.
pub const MAP_PREFIX: &str = "lb_";
const LINKS: &str = "links";

impl MapShape {
    /// What differs between `self` (pinned) and `want` (this build's), in words.
    pub fn differences(&self, want: &Self) -> Vec<String> {
        let mut differ = Vec::new();
        if self.map_type != want.map_type {
            differ.push(format!(
                "it is a {} map, this build's is a {} map",
                type_name(self.map_type),
                type_name(want.map_type)
            ));
        }
        for (what, have, need) in [
            ("key size", self.key_size, want.key_size),
            ("value size", self.value_size, want.value_size),
            ("max_entries", self.max_entries, want.max_entries),
        ] {
            if have != need {
                differ.push(format!("its {what} is {have}, this build's is {need}"));
            }
        }
        if self.flags != want.flags {
            differ.push(format!(
                "its flags are {:#x}, this build's are {:#x}",
                self.flags, want.flags
            ));
        }
        differ
    }
}

/// The kernel's name of the map types the object uses (`BPF_MAP_TYPE_*`).
fn type_name(map_type: u32) -> String {
    use bpf_map_type::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF,
    };
    match bpf_map_type::try_from(map_type) {
        Ok(BPF_MAP_TYPE_HASH) => "hash".into(),
        Ok(BPF_MAP_TYPE_ARRAY) => "array".into(),
        Ok(BPF_MAP_TYPE_PERCPU_ARRAY) => "percpu_array".into(),
        Ok(BPF_MAP_TYPE_LRU_HASH) => "lru_hash".into(),
        Ok(BPF_MAP_TYPE_DEVMAP) => "devmap".into(),
        Ok(BPF_MAP_TYPE_RINGBUF) => "ringbuf".into(),
        _ => format!("type-{map_type}"),
    }
}

/// A map as the object defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `BPF_MAP_TYPE_*`: a hash map pinned where an array is expected has
    /// the same sizes, and aya would reuse it (lookups by index into a hash).
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The directory of a data plane's pinned links.
#[derive(Clone, Debug)]
pub struct LinkPins {
    dir: PathBuf,
}

impl LinkPins {
    /// The pin of interface `interface`'s link of `kind` (`xdp`, `tc`).
    pub fn link(&self, kind: &str, interface: &str) -> PathBuf {
        self.dir.join(format!("{kind}_{interface}"))
    }
}

/// The locked pin directory.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    /// Holds the lock (flock) for as long as the controller runs.
    _lock: File,
}

impl PinDir {
    /// Creates the directory if needed and takes its lock; refuses if
    /// another controller holds it.
    pub fn lock(path: &Path) -> Result<Self, DataplaneError> {
        check_bpffs(path)?;
        fs::create_dir_all(path.join(LINKS)).map_err(|e| {
            DataplaneError::kernel(format!("creating {}", path.join(LINKS).display()), e)
        })?;
        let dir = File::open(path)
            .map_err(|e| DataplaneError::kernel(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(DataplaneError::kernel(
                format!("dataplane.pin_path {}", path.display()),
                "another lb-ctl run is using it (one controller per data plane; stop it first)",
            ));
        }
        Ok(Self { path: path.to_owned(), _lock: dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn link(&self, kind: &str, interface: &str) -> PathBuf {
        self.link_pins().link(kind, interface)
    }

    /// Where the links are pinned, for readers on other threads (the lock
    /// stays here).
    pub fn link_pins(&self) -> LinkPins {
        LinkPins { dir: self.path.join(LINKS) }
    }

    /// Whether a data plane is pinned here (a previous controller's).
    pub fn has_maps(&self) -> bool {
        self.map("lb_meta").exists()
    }

    /// The `lb_*` map pins in the directory, by name.
    pub fn pinned_maps(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|name| name.starts_with(MAP_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Refuses `lb_*` pins without `lb_meta`: not a data plane a controller
    /// left (it pins `lb_meta` with the rest), but leftovers or another
    /// program's maps, which aya would reuse unchecked.
    pub fn check_no_strays(&self) -> Result<(), DataplaneError> {
        let strays = self.pinned_maps();
        if strays.is_empty() || self.has_maps() {
            return Ok(());
        }
        Err(DataplaneError::kernel(
            format!("pinned maps in {}", self.path.display()),
            format!(
                "{} without lb_meta: not a data plane this lb-ctl can adopt (left by a failed start, or not ours). `lb-ctl down --pin-path {}` removes them (or remove them by hand if they are another program's)",
                strays.join(", "),
                self.path.display()
            ),
        ))
    }

    /// Interfaces that have a pinned link of `kind`.
    pub fn linked_interfaces(&self, kind: &str) -> Vec<String> {
        let prefix = format!("{kind}_");
        fs::read_dir(self.path.join(LINKS))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix).map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Refuses pinned maps a controller of this build cannot use: another
    /// ABI version, or a map whose sizes differ from the object's (aya
    /// would reuse it blindly, and the program or the controller would then
    /// read past its values).
    pub fn check_layout(
        &self,
        expected: &BTreeMap<String, MapShape>,
    ) -> Result<(), DataplaneError> {
        let refuse = |what: String| {
            DataplaneError::kernel(
                format!("pinned data plane in {}", self.path.display()),
                format!(
                    "{what}; this lb-ctl cannot adopt it. `lb-ctl down --pin-path {}` removes it (open connections are then reset)",
                    self.path.display()
                ),
            )
        };
        for (name, want) in expected {
            let path = self.map(name);
            if !path.exists() {
                continue; // A map new in this build: created at load.
            }
            let info = MapData::from_pin(&path)
                .and_then(|m| m.info())
                .map_err(|e| DataplaneError::kernel(format!("reading {}", path.display()), e))?;
            let have = MapShape {
                // A type aya does not know is no type of ours: 0, unspecified.
                map_type: info.map_type().map_or(0, |t| t as u32),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                // The kernel adds this one itself to a devmap.
                flags: info.map_flags() & !BPF_F_RDONLY_PROG,
            };
            let mut differ = have.differences(want);
            if let Some(setting) = sized_by(name)
                && have.max_entries != want.max_entries
            {
                differ.push(format!(
                    "its size follows {setting}, changed since it was pinned (set it back to keep the flows)"
                ));
            }
            if !differ.is_empty() {
                return Err(refuse(format!("map {name}: {}", differ.join("; "))));
            }
        }
        let version = read_meta(&self.map("lb_meta"))?.abi_version;
        if version != ABI_VERSION {
            return Err(refuse(format!(
                "its layout is version {version}, this build's is {ABI_VERSION}"
            )));
        }
        Ok(())
    }
}

/// The connection table's hash key of the pinned data plane (`lb_meta`),
/// which an adopting program must use.
impl PinDir {
    pub fn conn_salt(&self) -> Result<u32, DataplaneError> {
        Ok(read_meta(&self.map("lb_meta"))?.conn_salt)
    }
}

/// What the pinned `lb_meta` says: the layout version, the table's key.
fn read_meta(path: &Path) -> Result<Meta, DataplaneError> {
    let failed =
        |e: aya::maps::MapError| DataplaneError::kernel(format!("reading {}", path.display()), e);
    let map = MapData::from_pin(path).map_err(failed)?;
    let array: aya::maps::Array<MapData, Meta> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).map_err(failed)?;
    array.get(&0, 0).map_err(failed)
}

/// The configured sizes of the maps sized at load (`[dataplane]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub conntrack_max: u32,
    pub fullnat_max: u32,
}

impl MapSizes {
    pub fn of(dataplane: &Dataplane) -> Self {
        Self { conntrack_max: dataplane.conntrack_max, fullnat_max: dataplane.fullnat_max }
    }

    /// A connection table for `conntrack_max` flows, the other maps at
    /// their defaults.
    pub fn with_conntrack_max(conntrack_max: u32) -> Self {
        Self { conntrack_max, fullnat_max: DEFAULT_FULLNAT_MAX }
    }
}

/// The maps whose size is decided at load time, not in the object: the
/// connection tables (`conntrack_max`, from the config), the full-NAT
/// mappings (`fullnat_max`), and the flow and next-hop caches (a region
/// for each CPU the kernel may run XDP on), of each address family.
pub fn load_time_sizes(sizes: MapSizes) -> Result<[(&'static str, u32); 10], DataplaneError> {
    let cpus = u32::try_from(cpu_regions()?).unwrap_or(u32::MAX);
    let MapSizes { conntrack_max, fullnat_max } = sizes;
    Ok([
        ("lb_conntrack", 1 << conn_set_bits(conntrack_max)),
        ("lb_flow_cache", FLOW_CACHE_SLOTS.saturating_mul(cpus)),
        ("lb_nexthops", NEXTHOP_SLOTS.saturating_mul(cpus)),
        ("lb_fnat_fwd", fullnat_max),
        ("lb_fnat_rev", fullnat_max),
        ("lb_conntrack6", 1 << conn6_set_bits(conntrack_max)),
        ("lb_flow_cache6", FLOW_CACHE_SLOTS.saturating_mul(cpus)),
        ("lb_nexthops6", NEXTHOP_SLOTS.saturating_mul(cpus)),
        ("lb_fnat_fwd6", fullnat_max),
        ("lb_fnat_rev6", fullnat_max),
    ])
}

/// The setting a pinned map's size follows, if any: a change of it
/// cannot apply to maps already pinned (`check_layout`).
fn sized_by(map: &str) -> Option<&'static str> {
    if map.starts_with("lb_conntrack") {
        Some("dataplane.conntrack_max")
    } else if map.starts_with("lb_fnat_fwd") || map.starts_with("lb_fnat_rev") {
        Some("dataplane.fullnat_max")
    } else {
        None
    }
}

/// One more than the highest CPU id the kernel may run on: the regions the
/// per-CPU caches need, indexed by `bpf_get_smp_processor_id()` (with a
/// gap in the possible CPUs, more than their count).
fn cpu_regions() -> Result<usize, DataplaneError> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let text = fs::read_to_string(POSSIBLE)
        .map_err(|e| DataplaneError::kernel(format!("reading {POSSIBLE}"), e))?;
    // Ranges like "0-3,8-11": the last number is the highest id.
    let last = text.trim().rsplit([',', '-']).next().and_then(|n| n.parse::<usize>().ok());
    last.map(|id| id + 1).ok_or_else(|| {
        DataplaneError::kernel(format!("reading {POSSIBLE}"), format!("cannot parse {text:?}"))
    })
}

/// The maps `object` defines, with the sizes of `load_time_sizes`.
pub fn object_maps(
    object: &[u8],
    sizes: MapSizes,
) -> Result<BTreeMap<String, MapShape>, DataplaneError> {
    let parsed = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::kernel("parsing the XDP object", e))?;
    let sizes = load_time_sizes(sizes)?;
    let mut maps = BTreeMap::new();
    for (name, map) in &parsed.maps {
        // The program's constants (`.rodata`: the connection table's size;
        // `.rodata.cst*`: constants the compiler pooled), written at each
        // load: the program's own, never pinned or adopted.
        if name == ".rodata" || name.starts_with(".rodata.") {
            continue;
        }
        if !name.starts_with(MAP_PREFIX) {
            return Err(DataplaneError::kernel(
                format!("map {name}"),
                format!("is not named {MAP_PREFIX}*"),
            ));
        }
        let max_entries = sizes
            .iter()
            .find(|(sized, _)| sized == name)
            .map_or_else(|| map.max_entries(), |(_, entries)| *entries);
        maps.insert(
            name.clone(),
            MapShape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
                flags: map.map_flags(),
            },
        );
    }
    Ok(maps)
}

/// Removes a data plane pinned at `path` (`lb-ctl down`); refuses while a
/// controller runs on it. Returns how many pins were removed.
pub fn remove_all(path: &Path) -> Result<usize, DataplaneError> {
    if !path.exists() {
        return Ok(0);
    }
    Ok(PinDir::lock(path)?.remove_pins())
}

impl PinDir {
    /// Removes the links (which detaches the programs once no process
    /// holds them) and the maps, then the directory. Returns how many pins
    /// were removed.
    pub fn remove_pins(self) -> usize {
        let mut removed = 0;
        let links = self.path.join(LINKS);
        for dir in [&links, &self.path] {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                let ours = *dir == links
                    || path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(MAP_PREFIX));
                if !ours || path.is_dir() {
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => warn!(path = %path.display(), error = %e, "cannot remove pin"),
                }
            }
        }
        let _ = fs::remove_dir(&links);
        let path = self.path.clone();
        drop(self);
        let _ = fs::remove_dir(&path);
        info!(pin_path = %path.display(), removed, "data plane removed");
        removed
    }
}

/// Pins need a bpf filesystem; say so plainly instead of a bare ENOENT/EPERM.
fn check_bpffs(pin_dir: &Path) -> Result<(), DataplaneError> {
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    let path = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
        .map_err(|e| DataplaneError::kernel("dataplane.pin_path", e))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut stat) };
    if rc != 0 || stat.f_type != libc::BPF_FS_MAGIC {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_that_follows_a_setting_names_it() {
        assert_eq!(sized_by("lb_fnat_rev6"), Some("dataplane.fullnat_max"));
        assert_eq!(sized_by("lb_fnat_fwd"), Some("dataplane.fullnat_max"));
        assert_eq!(sized_by("lb_conntrack6"), Some("dataplane.conntrack_max"));
        assert_eq!(sized_by("lb_fnat_work"), None);
        assert_eq!(sized_by("lb_snat"), None);
        let sizes = load_time_sizes(MapSizes { conntrack_max: 1024, fullnat_max: 8 }).unwrap();
        for (map, entries) in sizes {
            if sized_by(map) == Some("dataplane.fullnat_max") {
                assert_eq!(entries, 8, "{map}");
            }
        }
        let fullnat = sizes.iter().filter(|(m, _)| m.starts_with("lb_fnat_")).count();
        assert_eq!(fullnat, 4, "both maps of both families");
    }

    #[test]
    fn every_difference_is_named() {
        let want =
            MapShape { map_type: 1, key_size: 8, value_size: 16, max_entries: 512, flags: 0 };
        assert!(want.differences(&want).is_empty());
        let have = MapShape { map_type: 2, max_entries: 256, flags: 1, ..want };
        assert_eq!(
            have.differences(&want),
            [
                "it is a array map, this build's is a hash map",
                "its max_entries is 256, this build's is 512",
                "its flags are 0x1, this build's are 0x0",
            ]
        );
    }
}
