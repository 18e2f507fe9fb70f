//! The connection table (`lb_conntrack`): a set-associative array, a set
//! of four entries per 64-byte cache line, so that finding a flow, missing
//! it and recording it each touch one line, with no allocation and no lock.
//! A flow may live only in its set (by flow hash); a set that is full
//! gives the entry furthest past its idle timeout to a new flow (`victim`).
//! The kernel program
//! and the controller (the recount, the listing, the reassembly slow path)
//! use these same rules.
//!
//! An entry holds the client's address and port and the service's port;
//! the service's address and protocol are the backend's, which the reader
//! checks against the flow (`select::live_backend` in the data plane).
//!
//! IPv6 flows have their own table (`lb_conntrack6`) of the same sets over
//! 32-byte entries: a set is two cache lines there.

use crate::{
    abi::{Conn, Flow, MAX_BACKENDS, MAX_SERVICES, addr_pair},
    addr::Addr,
    hash::mix64,
};

/// Entries per set: one cache line of 16-byte (IPv4) entries.
pub const CONN_WAYS: usize = 4;

/// One entry. All zero: empty (no client has the unspecified address, a
/// martian the data plane drops). Aligned to 8 bytes: it is written as
/// words, its state before its key, so no reader sees a key without its
/// state.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSlot<A: Addr = [u8; 4]> {
    pub src: A,
    pub sport: u16,
    pub dport: u16,
    /// The `lb_epoch` tick of the flow's last client packet, as seen when
    /// the flow was last checked.
    pub last_seen: u32,
    pub backend_id: u16,
    pub service_id: u8,
    /// `CONN_*`.
    pub state: u8,
    /// Zeros to the entry's last word (none for IPv4, 4 bytes for IPv6).
    pub _pad: A::SlotPad,
}
const _: () = assert!(size_of::<ConnSlot>() == 16);
const _: () = assert!(size_of::<ConnSlot<[u8; 16]>>() == 32);
crate::abi::address_words!(ConnSlot: src);
const _: () = assert!(MAX_BACKENDS <= 1 << 16 && MAX_SERVICES <= 1 << 8);

/// One set: a cache line when the array's values are page aligned (the
/// map is created `BPF_F_MMAPABLE`, which the controller also uses to read
/// it without a system call per entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSet<A: Addr = [u8; 4]> {
    pub slots: [ConnSlot<A>; CONN_WAYS],
}
const _: () = assert!(size_of::<ConnSet>() == 64);
const _: () = assert!(size_of::<ConnSet<[u8; 16]>>() == 128);

impl<A: Addr> Default for ConnSet<A> {
    fn default() -> Self {
        Self { slots: [ConnSlot::default(); CONN_WAYS] }
    }
}

/// `BPF_F_MMAPABLE`: the array's values start on a page boundary, and
/// user space may map them.
pub const MAP_MMAPABLE: usize = 1 << 10;

/// The set count's base-2 logarithm for `conntrack_max` flows: four entries
/// per flow the operator asked for, so that sets rarely overflow (with
/// `conntrack_max` live flows spread by a hash, about 0.4 % of them meet
/// four others in their set, and one of the five loses its entry).
pub const fn conn_set_bits(conntrack_max: u32) -> u32 {
    let flows = if conntrack_max < 1024 { 1024 } else { conntrack_max };
    // ceil(log2(flows)): sets = flows rounded up to a power of two.
    u32::BITS - (flows - 1).leading_zeros()
}

/// The IPv6 table's set count's base-2 logarithm for `conntrack_max`: a
/// quarter of the IPv4 table's sets (at least 1024), each twice the
/// size, so half the memory: most traffic is IPv4 still.
pub const fn conn6_set_bits(conntrack_max: u32) -> u32 {
    let bits = conn_set_bits(conntrack_max);
    if bits >= 12 { bits - 2 } else { 10 }
}

/// The largest `conntrack_max` (2^24 flows: 1 GiB of sets, which the
/// controller's recount walks once a second).
pub const MAX_CONNTRACK_MAX: u32 = 1 << 24;

/// The set of `flow` in a table of `2^bits` sets, keyed by `salt` (the
/// table's own, random: `abi::Meta::conn_salt`). A keyed mix, not a plain
/// multiply: where forged flows are recorded (UDP, direct routing), a
/// sender who could compute sets could fill a chosen one with four flows
/// and evict a connection on purpose.
#[inline(always)]
pub fn conn_set<A: Addr>(flow: &Flow<A>, bits: u32, salt: u32) -> u32 {
    let addrs = addr_pair(&flow.src, &flow.dst, A::fold);
    let rest = (u64::from(flow.sport) << 24) | (u64::from(flow.dport) << 8) | u64::from(flow.proto);
    let key = (u64::from(salt) << 32) | u64::from(salt);
    (mix64(addrs ^ mix64(rest ^ key)) >> (64 - bits)) as u32
}

impl<A: Addr> ConnSlot<A> {
    /// The entry for `flow` with `conn`.
    #[inline(always)]
    pub const fn of(flow: &Flow<A>, conn: &Conn) -> Self {
        Self {
            src: flow.src,
            sport: flow.sport,
            dport: flow.dport,
            last_seen: conn.last_seen,
            backend_id: conn.backend_id as u16,
            service_id: conn.service_id as u8,
            state: conn.state,
            _pad: A::SLOT_PAD,
        }
    }

    /// What the entry says of its flow.
    #[inline(always)]
    pub const fn conn(&self) -> Conn {
        Conn {
            backend_id: self.backend_id as u32,
            service_id: self.service_id as u32,
            last_seen: self.last_seen,
            state: self.state,
            _pad: [0; 3],
        }
    }

    /// Whether the entry is for a flow from `flow`'s client address and
    /// port to its service port (the VIP is the backend's to confirm).
    #[inline(always)]
    pub fn holds(&self, flow: &Flow<A>) -> bool {
        self.src().same(&flow.src) && self.sport == flow.sport && self.dport == flow.dport
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.src().is_zero()
    }
}

/// Where in `set` a new entry for `flow` goes: the entry it already has,
/// else an empty one, else the one furthest past its state's idle timeout
/// at `now` (`timeout` of a `CONN_*` state, in ticks): an expired entry
/// before any live one, and among live ones the closest to expiring (a
/// closed connection's before an idle established one's). Ticks may wrap.
#[inline(always)]
pub fn victim<A: Addr>(
    set: &ConnSet<A>,
    flow: &Flow<A>,
    now: u32,
    timeout: impl Fn(u8) -> u32,
) -> usize {
    let mut chosen = 0;
    let mut most_overdue = i64::MIN;
    let mut way = 0;
    while way < CONN_WAYS {
        let slot = &set.slots[way];
        if slot.holds(flow) {
            return way;
        }
        let overdue = if slot.is_empty() {
            i64::MAX
        } else {
            let idle = i64::from(now.wrapping_sub(slot.last_seen).cast_signed());
            idle - i64::from(timeout(slot.state))
        };
        if overdue > most_overdue {
            most_overdue = overdue;
            chosen = way;
        }
        way += 1;
    }
    chosen
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integer fields, no implicit padding for either
// address type (sizes asserted above).
unsafe impl<A: Addr> aya::Pod for ConnSet<A> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{CONN_CLOSED, CONN_ESTABLISHED, PROTO_TCP};

    fn flow(port: u16) -> Flow {
        Flow {
            src: [10, 77, 1, 10],
            dst: [10, 77, 1, 100],
            sport: port,
            dport: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        }
    }

    fn conn(last_seen: u32) -> Conn {
        Conn { backend_id: 7, service_id: 3, last_seen, state: CONN_ESTABLISHED, _pad: [0; 3] }
    }

    #[test]
    fn four_entries_per_flow_asked_for_rounded_up() {
        assert_eq!(conn_set_bits(1024), 10);
        assert_eq!(conn_set_bits(1025), 11);
        assert_eq!(conn_set_bits(1 << 20), 20);
        assert_eq!(conn_set_bits(5), 10, "at least 1024 sets");
        assert_eq!(conn_set_bits(MAX_CONNTRACK_MAX), 24);
        assert_eq!(conn6_set_bits(1 << 20), 18, "a quarter of the sets");
        assert_eq!(conn6_set_bits(1024), 10, "at least 1024 sets");
        assert_eq!(conn6_set_bits(4096), 10);
    }

    #[test]
    fn sets_spread_flows_and_stay_in_range() {
        let mut counts = [0_u32; 1 << 10];
        for port in 0..40_960_u16 {
            let set = conn_set(&flow(port), 10, 0x5eed);
            counts[set as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 15 && *max <= 70, "uneven: {min}..{max} per set, 40 expected");
    }

    #[test]
    fn the_salt_decides_the_set() {
        let moved =
            (0..64_u16).filter(|&p| conn_set(&flow(p), 20, 1) != conn_set(&flow(p), 20, 2)).count();
        assert!(moved >= 60, "{moved} of 64 flows in another set under another salt");
    }

    #[test]
    fn an_entry_round_trips_and_matches_only_its_flow() {
        let slot = ConnSlot::of(&flow(1000), &conn(5));
        assert_eq!(slot.conn(), conn(5));
        assert!(slot.holds(&flow(1000)));
        assert!(!slot.holds(&flow(1001)));
        assert!(<ConnSlot>::default().is_empty() && !slot.is_empty());
    }

    /// Established connections time out after 9000 ticks, closed ones after 100.
    fn timeout(state: u8) -> u32 {
        if state == CONN_CLOSED { 100 } else { 9000 }
    }

    #[test]
    fn the_victim_is_the_flow_itself_then_an_empty_entry_then_the_most_overdue() {
        let mut set = ConnSet::default();
        set.slots[0] = ConnSlot::of(&flow(1), &conn(100));
        set.slots[2] = ConnSlot::of(&flow(2), &conn(90));
        assert_eq!(victim(&set, &flow(2), 100, timeout), 2, "its own entry");
        assert_eq!(victim(&set, &flow(3), 100, timeout), 1, "the first empty one");
        set.slots[1] = ConnSlot::of(&flow(4), &conn(95));
        set.slots[3] = ConnSlot::of(&flow(5), &conn(99));
        assert_eq!(victim(&set, &flow(3), 100, timeout), 2, "the longest idle, all established");
        // A closed connection seen a tick ago goes before an established
        // one idle for 90: it is 99 ticks from expiring, the other 8910.
        let closed = Conn { state: CONN_CLOSED, ..conn(99) };
        set.slots[3] = ConnSlot::of(&flow(5), &closed);
        assert_eq!(victim(&set, &flow(3), 100, timeout), 3, "the closest to expiring");
        // Ticks wrap: seen at u32::MAX is one tick before 0.
        set.slots[3] = ConnSlot::of(&flow(5), &conn(99));
        set.slots[2] = ConnSlot::of(&flow(2), &conn(u32::MAX));
        assert_eq!(victim(&set, &flow(3), 3, timeout), 2);
    }
}
