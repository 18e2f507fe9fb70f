//! The connection table (`lb_conntrack`) seen from user space: the array
//! of sets mapped into this process (the map is `BPF_F_MMAPABLE`), so a
//! walk of a million flows reads memory instead of making a million
//! system calls. The kernel writes it concurrently; every access here is
//! volatile and copies the set or entry out, and writes follow the data
//! plane's order (`lb-ebpf/src/conntrack.rs`: state, then key).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

use aya::maps::MapData;

use lb_common::{
    abi::{Conn, Flow},
    conn_table::{CONN_WAYS, ConnSet, ConnSlot, conn_set, victim},
};

/// A mapping of the table's sets.
pub struct ConnTable {
    sets: NonNull<ConnSet>,
    bits: u32,
    /// The table's hash key (`abi::Meta::conn_salt`).
    salt: u32,
}

// SAFETY: the mapping is plain shared memory; every access is volatile
// and copies, and the kernel's writers do not rely on user space locking.
unsafe impl Send for ConnTable {}
// SAFETY: as above.
unsafe impl Sync for ConnTable {}

/// Where one entry lives: its set and way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    set: u32,
    way: usize,
}

impl ConnTable {
    /// Maps the `2^bits` sets of the array map `fd`, hashed with `salt`.
    pub fn map(fd: BorrowedFd<'_>, bits: u32, salt: u32) -> io::Result<Self> {
        let len = Self::bytes(bits);
        // SAFETY: a new shared mapping of a BPF array map's values; the
        // kernel checks the length and the map's flags.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let sets = NonNull::new(base.cast::<ConnSet>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { sets, bits, salt })
    }

    /// Maps the table `map`, of the size the kernel says it has, hashed
    /// with `salt`.
    pub fn of_map(map: &MapData, salt: u32) -> io::Result<Self> {
        let sets = map.info().map_err(io::Error::other)?.max_entries();
        if !sets.is_power_of_two() {
            return Err(io::Error::other(format!("{sets} sets, not a power of two")));
        }
        Self::map(map.fd().as_fd(), sets.trailing_zeros(), salt)
    }

    /// The table of the data plane pinned in `pin_dir` (its `lb_conntrack`,
    /// hashed with the key in its `lb_meta`).
    pub fn pinned(pin_dir: &std::path::Path) -> io::Result<Self> {
        let meta = MapData::from_pin(pin_dir.join("lb_meta")).map_err(io::Error::other)?;
        let meta: aya::maps::Array<MapData, lb_common::abi::Meta> =
            aya::maps::Array::try_from(aya::maps::Map::Array(meta)).map_err(io::Error::other)?;
        let salt = meta.get(&0, 0).map_err(io::Error::other)?.conn_salt;
        let table = MapData::from_pin(pin_dir.join("lb_conntrack")).map_err(io::Error::other)?;
        Self::of_map(&table, salt)
    }

    fn bytes(bits: u32) -> usize {
        (1_usize << bits) * size_of::<ConnSet>()
    }

    fn slot_ptr(&self, at: At) -> *mut ConnSlot {
        // SAFETY: `at.set < 2^bits` (callers take it from `conn_set` or a
        // walk), `at.way < CONN_WAYS`: inside the mapping.
        unsafe { (&raw mut (*self.sets.as_ptr().add(at.set as usize)).slots[at.way]) }
    }

    fn read(&self, at: At) -> ConnSlot {
        // SAFETY: inside the mapping, aligned (sets start on a page).
        unsafe { self.slot_ptr(at).read_volatile() }
    }

    fn write(&self, at: At, slot: ConnSlot) {
        // SAFETY: two words of the same 16 plain-old-data bytes.
        let words: [u64; 2] = unsafe { std::mem::transmute(slot) };
        // SAFETY: inside the mapping, 8-byte aligned; state before key.
        unsafe {
            let p = self.slot_ptr(at).cast::<u64>();
            p.add(1).write_volatile(words[1]);
            p.write_volatile(words[0]);
        }
    }

    fn set(&self, set: u32) -> ConnSet {
        // SAFETY: inside the mapping, aligned.
        unsafe { self.sets.as_ptr().add(set as usize).read_volatile() }
    }

    /// Where the entry of `flow` is, if its set holds one for its client
    /// and service port whose backend `serves` (the flow's VIP).
    pub fn find(&self, flow: &Flow, serves: impl Fn(&Conn) -> bool) -> Option<(At, Conn)> {
        let set = conn_set(flow, self.bits, self.salt);
        (0..CONN_WAYS).map(|way| At { set, way }).find_map(|at| {
            let slot = self.read(at);
            let conn = slot.conn();
            (slot.holds(flow) && serves(&conn)).then_some((at, conn))
        })
    }

    /// Records `conn` for `flow`, as the data plane does (`victim`, with
    /// the timeouts `timeout` gives for each state, in ticks).
    pub fn record(&self, flow: &Flow, conn: &Conn, timeout: impl Fn(u8) -> u32) {
        let set = conn_set(flow, self.bits, self.salt);
        let way = victim(&self.set(set), flow, conn.last_seen, timeout);
        self.write(At { set, way }, ConnSlot::of(flow, conn));
    }

    /// Every entry in use, with where it is.
    pub fn for_each(&self, mut each: impl FnMut(At, &ConnSlot)) {
        for set in 0..1_u32 << self.bits {
            let entries = self.set(set);
            for (way, slot) in entries.slots.iter().enumerate() {
                if !slot.is_empty() {
                    each(At { set, way }, slot);
                }
            }
        }
    }

    /// Empties the entry at `at`.
    pub fn remove(&self, at: At) {
        self.write(at, ConnSlot::default());
    }

    /// How many entries are in use (live or expired).
    pub fn len(&self) -> usize {
        let mut used = 0;
        self.for_each(|_, _| used += 1);
        used
    }

    /// Whether no entry is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties every entry (tests: what a failover to a fresh node sees).
    pub fn clear(&self) {
        for set in 0..1_u32 << self.bits {
            for way in 0..CONN_WAYS {
                self.write(At { set, way }, ConnSlot::default());
            }
        }
    }
}

impl Drop for ConnTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe {
            libc::munmap(self.sets.as_ptr().cast(), Self::bytes(self.bits));
        }
    }
}
