//! The connection tables (`lb_conntrack`, and `lb_conntrack6` for IPv6
//! flows) seen from user space: the array of sets mapped into this process
//! (the maps are `BPF_F_MMAPABLE`), so a walk of a million flows reads
//! memory instead of making a million system calls. The kernel writes them
//! concurrently; every access here is volatile and copies the set or entry
//! out, and writes follow the data plane's order (`lb-ebpf/src/conntrack.rs`:
//! an entry's words last to first, so its state before its key).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

use aya::maps::MapData;

use lb_common::{
    abi::{Conn, Flow},
    addr::Addr,
    conn_table::{CONN_WAYS, ConnSet, ConnSlot, conn_set, victim},
};

/// An address family's table: its map's name, and its handshake records'
/// (the flows placed but not yet in the table).
pub trait TableAddr: Addr {
    /// The map, as the object (and the pin directory) names it.
    const MAP: &'static str;
    /// The family's handshake records.
    const HANDSHAKES: &'static str;
    /// The family's persistent clients.
    const PERSIST: &'static str;
}

impl TableAddr for [u8; 4] {
    const MAP: &'static str = "lb_conntrack";
    const HANDSHAKES: &'static str = "lb_handshakes";
    const PERSIST: &'static str = "lb_persist";
}

impl TableAddr for [u8; 16] {
    const MAP: &'static str = "lb_conntrack6";
    const HANDSHAKES: &'static str = "lb_handshakes6";
    const PERSIST: &'static str = "lb_persist6";
}

/// A mapping of the table's sets: IPv4's by default, `ConnTable<[u8; 16]>`
/// for IPv6's.
pub struct ConnTable<A: TableAddr = [u8; 4]> {
    sets: NonNull<ConnSet<A>>,
    bits: u32,
    /// The table's hash key (`abi::Meta::conn_salt`).
    salt: u32,
}

// SAFETY: the mapping is plain shared memory; every access is volatile
// and copies, and the kernel's writers do not rely on user space locking.
unsafe impl<A: TableAddr> Send for ConnTable<A> {}
// SAFETY: as above.
unsafe impl<A: TableAddr> Sync for ConnTable<A> {}

/// Where one entry lives: its set and way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    set: u32,
    way: usize,
}

impl<A: TableAddr> ConnTable<A> {
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
        let sets = NonNull::new(base.cast::<ConnSet<A>>()).ok_or_else(io::Error::last_os_error)?;
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

    /// The table of the data plane pinned in `pin_dir` (its `lb_conntrack`
    /// or `lb_conntrack6`, hashed with the key in its `lb_meta`: both
    /// tables share it).
    pub fn pinned(pin_dir: &std::path::Path) -> io::Result<Self> {
        let meta = MapData::from_pin(pin_dir.join("lb_meta")).map_err(io::Error::other)?;
        let meta: aya::maps::Array<MapData, lb_common::abi::Meta> =
            aya::maps::Array::try_from(aya::maps::Map::Array(meta)).map_err(io::Error::other)?;
        let salt = meta.get(&0, 0).map_err(io::Error::other)?.conn_salt;
        let table = MapData::from_pin(pin_dir.join(A::MAP)).map_err(io::Error::other)?;
        Self::of_map(&table, salt)
    }

    fn bytes(bits: u32) -> usize {
        (1_usize << bits) * size_of::<ConnSet<A>>()
    }

    fn slot_ptr(&self, at: At) -> *mut ConnSlot<A> {
        // SAFETY: `at.set < 2^bits` (callers take it from `conn_set` or a
        // walk), `at.way < CONN_WAYS`: inside the mapping.
        unsafe { (&raw mut (*self.sets.as_ptr().add(at.set as usize)).slots[at.way]) }
    }

    fn read(&self, at: At) -> ConnSlot<A> {
        // SAFETY: inside the mapping, aligned (sets start on a page).
        unsafe { self.slot_ptr(at).read_volatile() }
    }

    fn write(&self, at: At, slot: ConnSlot<A>) {
        // An entry is 2 (IPv4) or 4 (IPv6) words, 8-byte aligned, with no
        // padding (`ConnSlot::_pad` fills IPv6's last word; the sizes are
        // asserted); its state is in the last word, its key in the first.
        let words = size_of::<ConnSlot<A>>() / 8;
        let from = (&raw const slot).cast::<u64>();
        let to = self.slot_ptr(at).cast::<u64>();
        for word in (0..words).rev() {
            // SAFETY: `word` is inside both entries; the destination is
            // inside the mapping, aligned.
            unsafe { to.add(word).write_volatile(from.add(word).read()) };
        }
    }

    fn set(&self, set: u32) -> ConnSet<A> {
        // SAFETY: inside the mapping, aligned.
        unsafe { self.sets.as_ptr().add(set as usize).read_volatile() }
    }

    /// Where the entry of `flow` is, if its set holds one for its client
    /// and service port whose backend `serves` (the flow's VIP).
    pub fn find(&self, flow: &Flow<A>, serves: impl Fn(&Conn) -> bool) -> Option<(At, Conn)> {
        let set = conn_set(flow, self.bits, self.salt);
        (0..CONN_WAYS).map(|way| At { set, way }).find_map(|at| {
            let slot = self.read(at);
            let conn = slot.conn();
            (slot.holds(flow) && serves(&conn)).then_some((at, conn))
        })
    }

    /// Records `conn` for `flow`, as the data plane does (`victim`, with
    /// the timeouts `timeout` gives for each state, in ticks).
    pub fn record(&self, flow: &Flow<A>, conn: &Conn, timeout: impl Fn(u8) -> u32) {
        let set = conn_set(flow, self.bits, self.salt);
        let way = victim(&self.set(set), flow, conn.last_seen, timeout);
        self.write(At { set, way }, ConnSlot::of(flow, conn));
    }

    /// Every entry in use, with where it is.
    pub fn for_each(&self, mut each: impl FnMut(At, &ConnSlot<A>)) {
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

impl<A: TableAddr> Drop for ConnTable<A> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe {
            libc::munmap(self.sets.as_ptr().cast(), Self::bytes(self.bits));
        }
    }
}

#[cfg(test)]
impl<A: TableAddr> ConnTable<A> {
    /// A table of `2^bits` sets over anonymous shared memory (a memfd),
    /// laid out as the kernel's: tests of the walks need no BPF map.
    pub(crate) fn in_memory(bits: u32, salt: u32) -> io::Result<Self> {
        use std::os::fd::{FromRawFd as _, OwnedFd};
        // SAFETY: a new descriptor, owned at once.
        let fd = unsafe { libc::memfd_create(c"lb-conntrack-test".as_ptr(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours and open.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::File::from(fd.try_clone()?).set_len(Self::bytes(bits) as u64)?;
        // The mapping keeps the memory once the descriptor closes.
        Self::map(fd.as_fd(), bits, salt)
    }
}

#[cfg(test)]
mod tests {
    use lb_common::abi::{CONN_ESTABLISHED, PROTO_TCP};

    use super::*;

    fn flow6(port: u16) -> Flow<[u8; 16]> {
        let addr = |last| {
            let mut a = [0_u8; 16];
            a[..4].copy_from_slice(&[0xfd, 0x77, 0, 1]);
            a[15] = last;
            a
        };
        Flow {
            src: addr(10),
            dst: addr(100),
            sport: port,
            dport: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        }
    }

    fn conn(backend_id: u32) -> Conn {
        Conn { backend_id, service_id: 3, last_seen: 7, state: CONN_ESTABLISHED, _pad: [0; 3] }
    }

    #[test]
    fn an_ipv6_entry_is_recorded_found_walked_and_removed() {
        let table = ConnTable::<[u8; 16]>::in_memory(10, 0x5eed).unwrap();
        assert!(table.is_empty());
        let flow = flow6(40_000);
        table.record(&flow, &conn(5), |_| 100);
        table.record(&flow6(40_001), &conn(6), |_| 100);
        let (at, found) = table.find(&flow, |_| true).expect("the entry is found");
        assert_eq!(found, conn(5));
        assert!(table.find(&flow6(40_002), |_| true).is_none());
        assert!(table.find(&flow, |_| false).is_none(), "the VIP's check decides");
        // The whole 32-byte entry is written: the client's 16 bytes and the state.
        let mut seen = Vec::new();
        table.for_each(|_, slot| seen.push((slot.src, slot.sport, slot.backend_id, slot.state)));
        seen.sort_unstable();
        assert_eq!(
            seen,
            [(flow.src, 40_000, 5, CONN_ESTABLISHED), (flow.src, 40_001, 6, CONN_ESTABLISHED)]
        );
        table.remove(at);
        assert_eq!(table.len(), 1);
        assert!(table.find(&flow, |_| true).is_none());
        table.clear();
        assert!(table.is_empty());
    }

    #[test]
    fn the_ipv4_table_keeps_its_16_byte_entries() {
        let table = ConnTable::<[u8; 4]>::in_memory(10, 1).unwrap();
        let flow = Flow {
            src: [10, 77, 1, 10],
            dst: [10, 77, 1, 100],
            sport: 40_000,
            dport: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        table.record(&flow, &conn(9), |_| 100);
        assert_eq!(table.find(&flow, |_| true).map(|(_, c)| c), Some(conn(9)));
        assert_eq!(table.len(), 1);
    }
}
