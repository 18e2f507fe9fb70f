//! Every kernel map key and value. `#[repr(C)]`, explicit padding, no `bool` or
//! `Option`, sizes pinned by compile-time assertions: the kernel program and the
//! controller must agree on these bytes exactly.
//!
//! Addresses are `[u8; 4]` (IPv4) or `[u8; 16]` (IPv6) in network order, so
//! `bpftool map dump` prints `[10,77,1,100]`; ports are host-order integers.
//! A type that holds an address is generic over `Addr` and means IPv4
//! unless told otherwise: the IPv4 maps keep their layout, and each IPv6
//! map (`lb_*6`) has the same type over `[u8; 16]`.

use crate::addr::Addr;

/// Bumped whenever a map layout below changes, or where an entry goes (a
/// slot or a set, whose hash moved); stored in `lb_meta` so that a
/// controller can tell whether pinned maps were written by a compatible build.
pub const ABI_VERSION: u32 = 24;

/// Accessors that read a map value's address fields as words
/// (`Addr::read_words`), named after their fields: `b.vip()` is `b.vip`
/// read in one load (IPv4) or four (IPv6), not byte by byte. Whether the
/// value and each field are aligned to 4 is checked when an accessor is
/// compiled.
macro_rules! address_words {
    ($ty:ident: $($field:ident),+) => {
        impl<A: $crate::addr::Addr> $ty<A> {
            $(
                #[doc = concat!("`", stringify!($field), "` read as words (`Addr::read_words`).")]
                #[inline(always)]
                pub fn $field(&self) -> A {
                    const {
                        assert!(
                            align_of::<Self>() >= 4
                                && core::mem::offset_of!(Self, $field) % 4 == 0
                        );
                    }
                    // SAFETY: a field of `*self`, aligned to 4 as the value
                    // and its offset are (asserted above).
                    unsafe { A::read_words(&raw const self.$field) }
                }
            )+
        }
    };
}
pub(crate) use address_words;

/// Capacity of the service table (and of each per-service array).
pub const MAX_SERVICES: u32 = 256;
/// Capacity of the backend table (backend ids are indexes into it).
pub const MAX_BACKENDS: u32 = 16_384;
/// Size of every Maglev lookup table: a prime, as Maglev requires.
pub const MAGLEV_SIZE: u32 = 65_537;
/// A Maglev slot that points at no backend (the service has no usable backend).
pub const NO_BACKEND: u32 = u32::MAX;
/// Default capacity of the connection table.
pub const DEFAULT_CONNTRACK_MAX: u32 = 1 << 20;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// An (address, port, protocol) triple: the key of the service table (a VIP)
/// and of the reverse table (a backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint<A = [u8; 4]> {
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Endpoint>() == 8);
const _: () = assert!(size_of::<Endpoint<[u8; 16]>>() == 20);

impl<A> Endpoint<A> {
    pub const fn new(addr: A, port: u16, proto: u8) -> Self {
        Self { addr, port, proto, _pad: 0 }
    }
}

/// `Service::flags` low byte: the scheduler. The service's table
/// (`lb_maglev`) holds a Maglev table for `SCHED_MAGLEV` and `SCHED_SH`, and
/// the rotation sequence for `SCHED_RR` and `SCHED_WRR`.
pub const SCHED_MASK: u32 = 0xff;
pub const SCHED_MAGLEV: u32 = 0;
/// Round robin: a shared counter (`lb_rr`) walks the rotation sequence.
pub const SCHED_RR: u32 = 1;
/// Smooth weighted round robin: the same, over a weighted sequence.
pub const SCHED_WRR: u32 = 2;
/// Source hashing: the Maglev table, indexed by a hash of the client address only.
pub const SCHED_SH: u32 = 3;
/// Weighted least connections: the table lists the backends; the one with
/// the least `active * 256 + inactive` per unit of weight wins (IPVS `wlc`).
pub const SCHED_LC: u32 = 4;
/// `Service::flags`: with no usable backend, answer (TCP reset, ICMP port
/// unreachable) instead of dropping.
pub const SVC_REJECT: u32 = 1 << 8;
/// `Service::flags`: persistence (`persistence_s`, IPVS `-p`): a new flow
/// of a client (or of its network, `SVC_PERSIST_PREFIX_*`) seen within
/// `Service::persist_ticks` goes to the backend of its last flow
/// (`lb_persist`). Without it, the service pays nothing for persistence.
pub const SVC_PERSIST: u32 = 1 << 9;
/// `Service::flags`: the service takes packets only from its
/// `allowed_sources` (`lb_sources`); without it, no list is read.
pub const SVC_SOURCES: u32 = 1 << 10;
/// `Service::flags` bits 16..24: the prefix length persistence groups
/// clients by (`persistence_netmask`: 32 for IPv4 and 128 for IPv6, one
/// client each, unless told otherwise).
pub const SVC_PERSIST_PREFIX_SHIFT: u32 = 16;
pub const SVC_PERSIST_PREFIX_MASK: u32 = 0xff << SVC_PERSIST_PREFIX_SHIFT;

/// The prefix length of a persistent service's clients (`SVC_PERSIST_PREFIX_*`).
#[inline(always)]
pub const fn persist_prefix(flags: u32) -> u32 {
    (flags & SVC_PERSIST_PREFIX_MASK) >> SVC_PERSIST_PREFIX_SHIFT
}

/// The hash `sh` places a client by: its address alone.
#[inline(always)]
pub fn source_hash<A: Addr>(src: A) -> u32 {
    crate::hash::mix64(src.wire_fold() ^ 0x5348_5348) as u32
}

/// Value of `lb_services`: where the service's Maglev table and counters live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into `lb_maglev` and `lb_svc_stats`.
    pub id: u32,
    /// Slots in use in the service's Maglev table (a prime <= `MAGLEV_SIZE`).
    /// A runtime value on purpose: the kernel's bounds check on the slot
    /// index must survive the compiler, which would drop it for a constant.
    pub ring_size: u32,
    /// The scheduler (`SCHED_*`) and options (`SVC_REJECT`, `SVC_PERSIST`
    /// and its prefix, `SVC_SOURCES`).
    pub flags: u32,
    /// With `SVC_PERSIST`: how long, in epoch ticks, a client keeps its
    /// backend after its last recorded flow.
    pub persist_ticks: u32,
}
const _: () = assert!(size_of::<Service>() == 16);

/// Value of `lb_backends`, indexed by backend id. Carries its service's VIP,
/// so that a reply found through `lb_real_slots` needs no other lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend<A = [u8; 4]> {
    pub addr: A,
    pub port: u16,
    /// `BACKEND_IN_USE` when the slot holds a configured backend.
    pub flags: u16,
    pub service_id: u32,
    pub vip: A,
    pub vport: u16,
    pub proto: u8,
    /// Full NAT whose service names no `snat_addresses`: 1 + the index,
    /// in the service's pool (`lb_snat`), of the load balancer's own
    /// address toward this backend, which its flows leave from; 0: the
    /// flow's hash picks the pool address (`fullnat::snat_start`).
    pub snat_addr: u8,
    /// The configured weight (used by `lc`).
    pub weight: u32,
    /// `max_conns` (IPVS `-x`): at `active + inactive` connections
    /// (`lb_be_conns`) it takes no new flow. 0: no limit.
    pub max_conns: u32,
}
const _: () = assert!(size_of::<Backend>() == 28);
const _: () = assert!(size_of::<Backend<[u8; 16]>>() == 52);
address_words!(Backend: addr, vip);

impl<A> Backend<A> {
    /// Whether the backend takes new flows at all: not DOWN, and a weight
    /// above 0 (drained, standing by as a backup, in maintenance: 0). Its
    /// `max_conns` is the other condition (`BackendConns::at_limit`).
    #[inline(always)]
    pub fn takes_new_flows(&self) -> bool {
        self.flags & BACKEND_DOWN == 0 && self.weight != 0
    }
}

/// Value of `lb_be_conns`, indexed by backend id: connections as IPVS
/// counts them (ActiveConn: established; InActConn: every other state).
/// The controller recounts them from the connection table every second; the
/// data plane adds each flow `lc` places, and each flow placed on a backend
/// with a `max_conns`, at once, so a burst spreads (and stops at the limit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendConns {
    pub active: u32,
    pub inactive: u32,
}
const _: () = assert!(size_of::<BackendConns>() == 8);

impl BackendConns {
    /// Whether a backend holding these connections is at its `max_conns`
    /// (0: no limit, never).
    #[inline(always)]
    pub fn at_limit(&self, max_conns: u32) -> bool {
        max_conns != 0 && u64::from(self.active) + u64::from(self.inactive) >= u64::from(max_conns)
    }
}

/// Most backends an `lc` service considers (its table lists them first).
pub const LC_MAX_BACKENDS: u32 = 64;
// A power of two: `select::first_free` walks the list by mask.
const _: () = assert!(LC_MAX_BACKENDS.is_power_of_two());

/// The position in a service's usable list (`MaglevTable::usable_ids`)
/// that a new flow whose backend is at its `max_conns` tries at `step`
/// (0, 1, ...) of its search for a stand-in, from `start` (the flow's
/// slot): `start`, `start + 1`, ... around `LC_MAX_BACKENDS` (a mask,
/// which the verifier bounds where it cannot bound a remainder); a
/// position past the list's end is skipped.
#[inline(always)]
pub const fn stand_in_position(start: u32, step: u32) -> u32 {
    start.wrapping_add(step) & (LC_MAX_BACKENDS - 1)
}

/// `Backend::flags`: the slot holds a live backend. A connection entry that
/// points at a slot without it is rescheduled.
pub const BACKEND_IN_USE: u16 = 1;
/// `Backend::flags`: health checks say DOWN. The backend has no Maglev slot;
/// a TCP flow still on it is answered with a reset, a UDP flow rescheduled.
pub const BACKEND_DOWN: u16 = 2;
/// `Backend::flags`: its service forwards by direct routing (`dsr`, IPVS
/// `-g`): the frame goes to the backend's MAC with the IP packet unchanged,
/// and the backend answers the client itself.
pub const BACKEND_DSR: u16 = 4;
/// `Backend::flags`: its service forwards by full NAT (`fullnat`): the
/// source becomes an address and port of the service's SNAT pool too, and
/// the backend's replies to it are translated back (`fullnat`).
pub const BACKEND_FULLNAT: u16 = 8;

/// Value of `lb_reals`, keyed by the backend's `Endpoint`: lets a reply be
/// rewritten back to the VIP without any connection state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real<A = [u8; 4]> {
    pub vip: A,
    pub vport: u16,
    pub _pad: u16,
    pub service_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(size_of::<Real>() == 16);
const _: () = assert!(size_of::<Real<[u8; 16]>>() == 28);

/// Key of the connection table: the flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow<A = [u8; 4]> {
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<Flow>() == 16);
const _: () = assert!(size_of::<Flow<[u8; 16]>>() == 40);

impl<A: Addr> Flow<A> {
    /// The flow at `at`, its addresses read as words (`Addr::read_words`).
    ///
    /// # Safety
    /// `at` is valid for reads and aligned to 4 bytes (a `Flow` alone is
    /// aligned to 2: the map values that hold one are aligned to 4).
    #[inline(always)]
    pub unsafe fn read_words(at: *const Self) -> Self {
        // SAFETY: the caller's guarantee; both addresses are at multiples
        // of 4 (4 or 16 bytes each, from the start).
        unsafe {
            Self {
                src: A::read_words(&raw const (*at).src),
                dst: A::read_words(&raw const (*at).dst),
                sport: (*at).sport,
                dport: (*at).dport,
                proto: (*at).proto,
                _pad: [0; 3],
            }
        }
    }

    /// Equality as word compares (`Addr::same`), padding aside: the
    /// derived `==` compares the addresses byte by byte in BPF.
    #[inline(always)]
    pub fn same(&self, other: &Self) -> bool {
        self.src.same(&other.src)
            && self.dst.same(&other.dst)
            && self.sport == other.sport
            && self.dport == other.dport
            && self.proto == other.proto
    }
}

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub backend_id: u32,
    pub service_id: u32,
    /// The `lb_epoch` tick (every `EPOCH_TICK_MS`) of the flow's last
    /// client packet, as seen when the flow was last checked.
    pub last_seen: u32,
    /// `CONN_*`: where the connection is in its life.
    pub state: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<Conn>() == 16);

/// Connection states, tracked from both directions (IPVS's, simplified).
/// A TCP flow starts at SYN; the client's first ACK makes it ESTABLISHED (an
/// "active" connection); a FIN from either side makes it CLOSING, a RST
/// CLOSED. Each state has its own idle timeout (`lb_timeouts`); an expired
/// entry counts as absent.
pub const CONN_SYN: u8 = 1;
pub const CONN_ESTABLISHED: u8 = 2;
pub const CONN_CLOSING: u8 = 3;
pub const CONN_CLOSED: u8 = 4;
pub const CONN_UDP: u8 = 5;
/// Slots of `lb_timeouts` (indexed by state; slot 0 unused).
pub const CONN_STATES: u32 = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The state after a packet with TCP `flags`, from the client or the
/// backend. `None`: the client opens a new connection on the same ports
/// (a SYN after the old one closed), so the old entry no longer applies.
#[inline(always)]
pub const fn next_state(state: u8, flags: u8, from_client: bool) -> Option<u8> {
    if state == CONN_UDP {
        return Some(CONN_UDP);
    }
    if flags & TCP_RST != 0 {
        return Some(CONN_CLOSED);
    }
    if from_client && flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        return if state == CONN_CLOSING || state == CONN_CLOSED { None } else { Some(state) };
    }
    if flags & TCP_FIN != 0 && state != CONN_CLOSED {
        return Some(CONN_CLOSING);
    }
    if from_client && state == CONN_SYN && flags & TCP_ACK != 0 {
        return Some(CONN_ESTABLISHED);
    }
    Some(state)
}

/// Whether an entry last seen at `last_seen` has been idle longer than
/// `timeout` (both in epoch ticks) at `now`; tick counters may wrap. An
/// entry stamped *after* `now` is live, not 4 billion ticks old: the clock
/// runs on its own, so the controller's walk of the table, which reads
/// `now` once, meets entries the data plane stamped a tick later, and one
/// CPU may stamp a tick another has not reached yet. Timeouts are far
/// below 2^31 ticks (7 days are 6 million), so the signed difference
/// tells the two apart.
#[inline(always)]
pub const fn expired(now: u32, last_seen: u32, timeout: u32) -> bool {
    let idle = now.wrapping_sub(last_seen).cast_signed();
    idle > 0 && idle.cast_unsigned() > timeout
}

/// Per-service and per-backend traffic, one copy per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Client -> backend packets and bytes (after NAT).
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Backend -> client packets and bytes (reverse NAT).
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Flows placed by the scheduler: a TCP SYN (not a retransmitted
    /// one), a UDP flow's first datagram.
    pub new_flows: u64,
}
const _: () = assert!(size_of::<Traffic>() == 40);

impl Traffic {
    /// Sums the per-CPU copies.
    pub fn add(&mut self, other: &Self) {
        self.in_packets += other.in_packets;
        self.in_bytes += other.in_bytes;
        self.out_packets += other.out_packets;
        self.out_bytes += other.out_bytes;
        self.new_flows += other.new_flows;
    }
}

/// One service's table: its scheduler's slots (slot -> backend id, or
/// `NO_BACKEND`), then the backends that hold slots, which a new flow
/// whose backend is at its `max_conns` walks for another (`usable` of the
/// first `LC_MAX_BACKENDS`). The controller writes it as `TABLE_WORDS`
/// words: the slots, the count, the ids.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    pub slots: [u32; MAGLEV_SIZE as usize],
    pub usable: u32,
    pub usable_ids: [u32; LC_MAX_BACKENDS as usize],
}
/// The words of a `MaglevTable`.
pub const TABLE_WORDS: usize = MAGLEV_SIZE as usize + 1 + LC_MAX_BACKENDS as usize;
const _: () = assert!(size_of::<MaglevTable>() == 4 * TABLE_WORDS);

/// Key of `lb_persist` (`lb_persist6`): a persistent service's client,
/// masked by its `persistence_netmask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistKey<A = [u8; 4]> {
    pub service_id: u32,
    pub client: A,
}
const _: () = assert!(size_of::<PersistKey>() == 8);
const _: () = assert!(size_of::<PersistKey<[u8; 16]>>() == 20);

impl<A: Addr> PersistKey<A> {
    /// The key of client `src` of service `service_id`: its network, by
    /// the prefix in `flags` (`Service::flags`, or `Handshake::flags` with
    /// `HANDSHAKE_PERSIST`: the same bits).
    #[inline(always)]
    pub fn of(service_id: u32, src: A, flags: u32) -> Self {
        Self { service_id, client: src.masked(persist_prefix(flags)) }
    }
}

/// Value of `lb_persist`: the backend of the client's last recorded flow,
/// and when (the epoch tick) it was recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    pub backend_id: u32,
    pub last_seen: u32,
}
const _: () = assert!(size_of::<Persist>() == 8);

/// Capacity of each family's `lb_persist` (an LRU hash: when full, the
/// client seen least recently loses its entry, and its next flow is
/// scheduled afresh).
pub const MAX_PERSIST: u32 = 1 << 18;

/// Most allowed sources one service has (`allowed_sources`).
pub const MAX_SOURCES_PER_SERVICE: u32 = 64;
/// The room of a service's list in `lb_sources` (`lb_sources6`): twice
/// its most, because a reload writes the service's new prefixes before it
/// removes the old ones (a source both lists allow is never refused in
/// between).
pub const SOURCE_SLOTS: u32 = 2 * MAX_SOURCES_PER_SERVICE;

/// An allowed prefix as `lb_sources` holds it: its network, and its mask
/// (`Addr::prefix_mask`). Aligned to 8, so that the data plane reads each
/// address in words: at byte alignment (an address is a byte array) LLVM
/// loads it byte by byte, a load and a shift per byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourcePrefix<A = [u8; 4]> {
    pub network: A,
    pub mask: A,
}
const _: () = assert!(size_of::<SourcePrefix>() == 8);
const _: () = assert!(size_of::<SourcePrefix<[u8; 16]>>() == 32);

/// Value of `lb_sources` (`lb_sources6`), indexed by service id: the
/// service's allowed prefixes, the first `count` of `prefixes`, in no
/// particular order. The data plane scans them (`holds`): with the few
/// prefixes a service has, a scan of one array value costs less than a
/// longest-prefix lookup in a trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceList<A = [u8; 4]> {
    pub count: u32,
    pub _pad: u32,
    pub prefixes: [SourcePrefix<A>; SOURCE_SLOTS as usize],
}
const _: () = assert!(size_of::<SourceList>() == 1032);
const _: () = assert!(size_of::<SourceList<[u8; 16]>>() == 4104);

impl<A: Addr> Default for SourceList<A> {
    fn default() -> Self {
        Self { count: 0, _pad: 0, prefixes: [SourcePrefix::default(); SOURCE_SLOTS as usize] }
    }
}

impl<A: Addr> SourceList<A> {
    /// Whether one of the prefixes holds `src`.
    #[inline(always)]
    pub fn holds(&self, src: &A) -> bool {
        let count = if self.count < SOURCE_SLOTS { self.count } else { SOURCE_SLOTS };
        let mut i = 0;
        while i < count {
            // Copied whole, at its alignment: word loads (see `SourcePrefix`).
            if let Some(&prefix) = self.prefixes.get(i as usize)
                && src.within(&prefix.network, &prefix.mask)
            {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The prefixes in use.
    pub fn listed(&self) -> &[SourcePrefix<A>] {
        let count = self.count.min(SOURCE_SLOTS) as usize;
        self.prefixes.get(..count).unwrap_or_default()
    }

    /// Adds `prefix` if it is not listed; `false` if the list is full.
    pub fn add(&mut self, prefix: SourcePrefix<A>) -> bool {
        if self.listed().contains(&prefix) {
            return true;
        }
        let Some(slot) = self.prefixes.get_mut(self.count as usize) else {
            return false;
        };
        *slot = prefix;
        self.count += 1;
        true
    }

    /// Removes `prefix` if it is listed: the last prefix takes its place,
    /// so that a reader of the value while it is rewritten (the data
    /// plane) sees every other prefix where it was, or twice.
    pub fn remove(&mut self, prefix: &SourcePrefix<A>) {
        let Some(at) = self.listed().iter().position(|p| p == prefix) else {
            return;
        };
        let last = self.count as usize - 1;
        self.prefixes[at] = self.prefixes[last];
        self.prefixes[last] = SourcePrefix::default();
        self.count -= 1;
    }
}

/// Size of `lb_addrs`, the address pre-filter (one byte per 16-bit slot).
pub const ADDR_FILTER_SIZE: u32 = 1 << 16;
/// `lb_addrs` flag: some VIP falls in this slot.
pub const ADDR_VIP: u8 = 1;
/// `lb_addrs` flag: some backend whose replies are rewritten (NAT) falls in
/// this slot. A packet whose destination is no VIP and whose source is no
/// such backend is passed after the IPv4 header, two array reads.
pub const ADDR_REAL: u8 = 2;
/// `lb_addrs` flag: some backend, NAT or direct routing, falls in this slot.
/// Only the rare paths ask (an answer about to be sent, a reply to such an
/// address), and a hit is confirmed in `lb_backend_addrs`: one array read
/// tells the common case (no backend in the slot) that no hash lookup is
/// needed.
pub const ADDR_BACKEND: u8 = 4;

/// The `lb_addrs` (`lb_addrs6`) slot of an address: sixteen bits of its
/// fold that every bit of the address reaches (`Addr::spread16`), so
/// addresses that differ only in their network part still spread. Read in
/// native order (the data plane loads the address as words; the
/// controller computes slots on the same host).
#[inline(always)]
pub fn addr_slot<A: Addr>(addr: A) -> u32 {
    const { assert!(ADDR_FILTER_SIZE == 1 << 16) };
    A::spread16(addr.fold())
}

/// Size of `lb_real_slots`, the direct-mapped index of backends by endpoint.
pub const REAL_SLOTS: u32 = 1 << 16;
/// A `lb_real_slots` value: more than one backend hashes here; ask `lb_reals`.
pub const REAL_SLOT_SHARED: u32 = u32::MAX;

/// The `lb_real_slots` slot of a backend endpoint. Its value is the backend
/// id + 1 (0: none), so a reply finds its backend with array lookups only.
#[inline(always)]
pub fn real_slot<A: Addr>(addr: A, port: u16, proto: u8) -> u32 {
    // XOR, not OR: IPv6's raised fold fills the port's bits too.
    let key = A::raise(addr.fold(), 24) ^ (u64::from(port) << 8) ^ u64::from(proto);
    crate::hash::table_index(key, REAL_SLOTS)
}

/// Entries of the next-hop cache (`lb_nexthops`) for each CPU, a power of two.
pub const NEXTHOP_SLOTS: u32 = 1 << 13;
/// The data plane's clock ticks every `EPOCH_TICK_MS`: a tick, the epoch,
/// is what connection entries are stamped with (idle timeouts count in
/// ticks) and what the flow and next-hop caches are valid for (a changed
/// route or neighbour is picked up within a tick).
///
/// The clock is the kernel's `jiffies`, which `bpf_jiffies64()` reads in one
/// inlined load (the verifier inlines it on 64-bit JITs), scaled by
/// `EpochClock`: it runs whether or not a controller does. A clock read per
/// packet through `bpf_ktime_get_coarse_ns()` measured about 30 ns here.
pub const EPOCH_TICK_MS: u64 = 100;
/// The fixed-point shift of `EpochClock::mult`.
pub const EPOCH_MULT_SHIFT: u32 = 24;

/// `lb_epoch`'s one value: how the data plane turns jiffies into epoch
/// ticks, `epoch = (jiffies * mult) >> EPOCH_MULT_SHIFT + offset`. The
/// controller writes `mult` from the kernel's tick length (`epoch_mult`);
/// bumping `offset` ages every connection entry and cached answer by one
/// tick at once (tests use it instead of waiting). With `mult` 0 (never
/// written) the clock stands still at `offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochClock {
    pub mult: u64,
    pub offset: u64,
}
const _: () = assert!(size_of::<EpochClock>() == 16);

impl EpochClock {
    /// The epoch at `jiffies`. The product wraps after about 2^46 jiffies
    /// at 1000 Hz (2^43 at 100 Hz): thousands of years of uptime.
    #[inline(always)]
    pub fn epoch(&self, jiffies: u64) -> u64 {
        (jiffies.wrapping_mul(self.mult) >> EPOCH_MULT_SHIFT).wrapping_add(self.offset)
    }
}

/// `EpochClock::mult` for a kernel whose jiffy lasts `jiffy_ns`.
pub const fn epoch_mult(jiffy_ns: u64) -> u64 {
    (jiffy_ns << EPOCH_MULT_SHIFT) / (EPOCH_TICK_MS * 1_000_000)
}

/// One entry of the next-hop cache: what `bpf_fib_lookup` said for `addr`
/// (the destination after NAT), so that most packets skip the FIB. Direct
/// mapped by `nexthop_slot(addr)`; the address is the tag.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop<A = [u8; 4]> {
    pub addr: A,
    pub ifindex: u32,
    /// The egress interface's slot in `lb_tx_ports`, or `NO_TX_SLOT`.
    pub tx_slot: u32,
    /// The largest IPv4 total length the FIB accepted (its MTU check): a
    /// longer packet asks the FIB again instead of being sent blindly.
    pub max_len: u16,
    pub _pad: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The next hop itself: `addr` when it is on one of our links, else the
    /// gateway the FIB routes it through. Direct routing needs the former
    /// (its IP packet still says the VIP, which a gateway would route back).
    pub via: A,
    /// The `lb_epoch` value the entry was filled in; another epoch means stale.
    pub epoch: u64,
}
const _: () = assert!(size_of::<NextHop>() == 40);
const _: () = assert!(size_of::<NextHop<[u8; 16]>>() == 64);
address_words!(NextHop: addr, via);

/// Capacity of `lb_tx_ports` (interfaces XDP can redirect to).
pub const MAX_TX_PORTS: u32 = 64;
/// `NextHop::tx_slot` of an interface that is not ours: tc sends the packet.
pub const NO_TX_SLOT: u32 = u32::MAX;

#[inline(always)]
pub fn nexthop_slot<A: Addr>(addr: A) -> u32 {
    crate::hash::table_index(addr.fold(), NEXTHOP_SLOTS)
}

/// Where `slot` of `cpu`'s region lies in a cache of `slots_per_cpu` (a
/// power of two) entries for each CPU: `lb_flow_cache`, `lb_nexthops`.
#[inline(always)]
pub const fn cpu_slot(cpu: u32, slots_per_cpu: u32, slot: u32) -> u32 {
    cpu.wrapping_mul(slots_per_cpu) | slot
}

/// Entries of the flow cache (`lb_flow_cache`) for each CPU, a power of two.
pub const FLOW_CACHE_SLOTS: u32 = 1 << 14;

/// The flow cache slot of a flow: one multiply, not the Maglev flow hash
/// (two rounds of `mix64`), which only a new flow needs. Addresses are read
/// natively, as the data plane holds them.
#[inline(always)]
pub fn flow_cache_slot<A: Addr>(flow: &Flow<A>) -> u32 {
    crate::hash::table_index(flow_key(flow), FLOW_CACHE_SLOTS)
}

/// A flow folded into 64 bits for `table_index`: addresses read natively,
/// as the data plane holds them.
#[inline(always)]
pub(crate) fn flow_key<A: Addr>(flow: &Flow<A>) -> u64 {
    let rest = (u64::from(flow.sport) << 24) | (u64::from(flow.dport) << 8) | u64::from(flow.proto);
    addr_pair(&flow.src, &flow.dst, A::fold) ^ rest
}

/// Two addresses as one word: for IPv4 the source above the destination,
/// as they always were. `fold` is the family's native or wire fold.
#[inline(always)]
pub fn addr_pair<A: Addr>(src: &A, dst: &A, fold: fn(&A) -> u64) -> u64 {
    A::raise(fold(src), 32) ^ fold(dst)
}

/// One entry of a CPU's flow cache: a copy of a connection-table entry,
/// direct mapped by flow hash, so that a busy flow is found with an array
/// read instead of a hash-table lookup. The connection table stays the
/// truth: a miss, an entry whose backend is gone, or an entry of an older
/// `lb_epoch` (every tick) goes there, which also keeps a busy flow recent
/// in the LRU so that churn does not evict it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry<A = [u8; 4]> {
    pub flow: Flow<A>,
    pub conn: Conn,
    /// The `lb_epoch` value the entry was checked against the connection table in.
    pub epoch: u64,
    /// The interface the flow's packets arrived on when its source passed
    /// the reverse-path check; a packet from another serves no entry.
    pub ingress: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowCacheEntry>() == 48);
const _: () = assert!(size_of::<FlowCacheEntry<[u8; 16]>>() == 72);

impl<A: Addr> FlowCacheEntry<A> {
    /// Whether the entry is `flow`'s, its flow read as words.
    #[inline(always)]
    pub fn holds(&self, flow: &Flow<A>) -> bool {
        const { assert!(align_of::<Self>() >= 4 && core::mem::offset_of!(Self, flow) == 0) };
        // SAFETY: the entry's first field, aligned to 4 as the entry is.
        unsafe { Flow::read_words(&raw const self.flow) }.same(flow)
    }
}

/// A record of `lb_handshakes`: where a flow not yet in the connection
/// table was placed, kept until it proves itself or its time runs out. A
/// TCP SYN (or a UDP flow's first datagram) writes one instead of a
/// connection-table entry, so a flood of SYNs from forged sources reaches
/// only this fixed array, never the table its established flows live in.
/// The client's first ACK (the flow's second datagram) finds the record and
/// is recorded in the table with the backend the SYN got, if it proves the
/// client real: in NAT, it acknowledges the backend's SYN-ACK, whose
/// sequence number a forged source never sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshake<A = [u8; 4]> {
    /// The flow as the client sent it (a source of all zeros: no record).
    pub flow: Flow<A>,
    pub backend_id: u32,
    /// The epoch tick the flow was placed in; the record lives for its
    /// first state's timeout (`tcp_syn_timeout`, or the UDP timeout).
    pub born: u32,
    /// What the client's ACK must acknowledge: the backend's SYN-ACK
    /// sequence number + 1 (valid with `HANDSHAKE_ANSWERED`).
    pub expect_ack: u32,
    /// `HANDSHAKE_*`.
    pub flags: u32,
}
const _: () = assert!(size_of::<Handshake>() == 32);
const _: () = assert!(size_of::<Handshake<[u8; 16]>>() == 56);

impl<A: Addr> Handshake<A> {
    /// The record's flow, read as words.
    ///
    /// # Safety
    /// `record` is valid for reads and aligned as a `Handshake` (a map value).
    #[inline(always)]
    pub unsafe fn flow_of(record: *const Self) -> Flow<A> {
        const { assert!(align_of::<Self>() >= 4 && core::mem::offset_of!(Self, flow) == 0) };
        // SAFETY: the record's first field, aligned to 4 as the record is.
        unsafe { Flow::read_words(&raw const (*record).flow) }
    }
}

/// `Handshake::flags`: the backend's SYN-ACK passed, `expect_ack` is set.
pub const HANDSHAKE_ANSWERED: u32 = 1;
/// `Handshake::flags`: the flow's service is persistent; the packet that
/// records the flow also records its client in `lb_persist`, under the
/// prefix in bits `SVC_PERSIST_PREFIX_SHIFT..` (as in `Service::flags`).
pub const HANDSHAKE_PERSIST: u32 = 2;

/// The `Handshake::flags` a flow of a service with `service_flags` is
/// placed with: with `SVC_PERSIST`, `HANDSHAKE_PERSIST` and the prefix.
#[inline(always)]
pub const fn handshake_flags(service_flags: u32) -> u32 {
    if service_flags & SVC_PERSIST != 0 {
        HANDSHAKE_PERSIST | (service_flags & SVC_PERSIST_PREFIX_MASK)
    } else {
        0
    }
}

/// How far past the SYN-ACK's sequence number + 1 a client's ACK may
/// acknowledge and still prove its client (`expect_ack` up to 64 KiB of
/// the backend's data later). A forged ACK guesses into it with odds of
/// 2^16 in 2^32: one in 65,536.
pub const HANDSHAKE_ACK_WINDOW: u32 = 1 << 16;

/// Records of `lb_handshakes`, a power of two (8 MiB): a flood of `r` SYNs
/// a second overwrites a given record within a round trip of `t` seconds
/// with probability about `r·t / HANDSHAKE_SLOTS`.
pub const HANDSHAKE_SLOTS: u32 = 1 << 18;

/// The `lb_handshakes` slot of a flow (shared by all CPUs: a SYN-ACK may
/// come in on another CPU than its SYN).
#[inline(always)]
pub fn handshake_slot<A: Addr>(flow: &Flow<A>) -> u32 {
    crate::hash::table_index(flow_key(flow), HANDSHAKE_SLOTS)
}

/// Value of `lb_meta` slot 0: who wrote the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub abi_version: u32,
    /// The connection table's hash key (`conn_table::conn_set`), chosen at
    /// random when the maps are created and kept with them: an adopted
    /// table keeps its flows in the sets they are in.
    pub conn_salt: u32,
}
const _: () = assert!(size_of::<Meta>() == 8);

/// Key of `lb_frags`: what IPv4 says makes fragments one datagram (RFC 791).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// Key of `lb_frags6`: what IPv6 says makes fragments one datagram (RFC
/// 8200: the addresses and the fragment header's 32-bit identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragKey6>() == 40);

/// Value of `lb_frags`: what the first fragment of a datagram decided, for
/// the fragments after it, which carry no ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry<A = [u8; 4]> {
    /// The address the datagram's fragments now go to (`FRAG_TO_BACKEND`,
    /// `FRAG_DIRECT`: the backend) or come from (`FRAG_TO_CLIENT`: the VIP).
    pub addr: A,
    pub kind: u32,
    pub service_id: u32,
    pub backend_id: u32,
    /// The epoch tick of the first fragment: fragments of a datagram arrive
    /// within moments of each other; an entry `FRAG_TIMEOUT_TICKS` old is stale.
    pub epoch: u32,
}
const _: () = assert!(size_of::<FragEntry>() == 20);
const _: () = assert!(size_of::<FragEntry<[u8; 16]>>() == 32);

/// A client's datagram to a NAT backend: the destination becomes `addr`.
pub const FRAG_TO_BACKEND: u32 = 1;
/// A client's datagram to a direct-routing backend: only the frame goes to `addr`.
pub const FRAG_DIRECT: u32 = 2;
/// A backend's reply: the source becomes `addr`, the VIP.
pub const FRAG_TO_CLIENT: u32 = 3;
/// A client's UDP datagram whose first fragment had not come when a later
/// one did: every fragment of it goes to the kernel, which reassembles it
/// and delivers it to the controller's socket on the VIP (the controller
/// places it and sends it on). `addr` and the ids are unused.
pub const FRAG_KERNEL: u32 = 4;
/// How long a datagram's later fragments are matched to its first: 2 s.
pub const FRAG_TIMEOUT_TICKS: u32 = 20;
/// Capacity of `lb_frags` (LRU: a flood of first fragments evicts the oldest).
pub const MAX_FRAGS: u32 = 16_384;

/// Value of `lb_policy` slot 0: how the data plane meets the edge, set by
/// the controller at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Answers (TCP resets, ICMP errors) each CPU may send per epoch tick;
    /// the rest are dropped and counted (`drop_answer_budget`). Zero: none.
    pub answers_per_tick: u32,
    /// `REVERSE_PATH_*`: which sources a packet of ours may have.
    pub reverse_path: u32,
    /// `HANDSHAKE_PROOF_*`: what records a NAT service's TCP flow.
    pub handshake_proof: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Policy>() == 16);

/// `Policy::handshake_proof`: the client's ACK of the backend's SYN-ACK,
/// within `HANDSHAKE_ACK_WINDOW` (the default).
pub const HANDSHAKE_PROOF_ACK: u32 = 0;
/// `Policy::handshake_proof`: any ACK after a SYN seen here, as with
/// direct routing (SYN-ACKs that may return through another node).
pub const HANDSHAKE_PROOF_SYN_SEEN: u32 = 1;

/// The reverse-path check (Linux's `rp_filter`) of packets to a VIP and of
/// backends' replies. Strict: the route back to the source must leave by
/// the interface the packet arrived on. Loose: there must be a route back,
/// by any interface. Both refuse a source that is an address of the load
/// balancer. Off: no check.
pub const REVERSE_PATH_STRICT: u32 = 0;
pub const REVERSE_PATH_LOOSE: u32 = 1;
pub const REVERSE_PATH_OFF: u32 = 2;

/// Value of the per-CPU `lb_answers`: the answers this CPU sent in `epoch`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerBudget {
    pub epoch: u64,
    pub sent: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<AnswerBudget>() == 16);

/// The default answer budget, per CPU and second: Linux's
/// `net.ipv4.icmp_msgs_per_sec` for the whole host.
pub const DEFAULT_ANSWERS_PER_SECOND: u32 = 1000;

/// Answers per epoch tick for a budget per second (at least one when the
/// budget is not zero, so a small budget is not rounded to nothing).
pub const fn answers_per_tick(per_second: u32) -> u32 {
    let per_tick = per_second as u64 * EPOCH_TICK_MS / 1000;
    if per_tick == 0 && per_second > 0 { 1 } else { per_tick as u32 }
}

/// The mark written over the two MAC addresses (the first 12 bytes) of a
/// packet that XDP has fully rewritten but could not transmit because the
/// kernel has no neighbour entry for the next hop yet. The tc ingress program
/// (`lb_neigh`) finds it and finishes the job with `bpf_redirect_neigh()`,
/// which resolves the neighbour and writes real addresses in its place;
/// handing such a packet to the IP stack instead would drop a rewritten reply
/// as a martian (its source, the VIP, is a local address).
///
/// The frame itself carries the mark, not XDP metadata in front of it: some
/// kernels refuse `bpf_xdp_adjust_meta` to XDP programs (seen on
/// 6.18.44-fc: "program of this type cannot use helper"), and the MAC
/// addresses are overwritten on the way out anyway. Read as a destination
/// MAC, the magic starts `32:4e:42:4c`, a locally administered unicast
/// address, so a frame with the mark that reaches the IP stack is dropped as
/// addressed to another host. `lb_xdp` drops every frame that *arrives* with
/// the mark (`drop_forged_mark`): only it may hand one to `lb_neigh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighMark {
    pub magic: u32,
    pub ifindex: u32,
    /// The next hop the FIB chose (the destination itself, or a gateway):
    /// given to `bpf_redirect_neigh()`, which then does not route the packet
    /// by its destination (with direct routing that is the VIP, not the
    /// backend).
    pub nexthop: [u8; 4],
}
const _: () = assert!(size_of::<NeighMark>() == 12);
pub const NEIGH_MARK_MAGIC: u32 = 0x4c42_4e32; // "2NBL" in memory
/// The mark of an IPv6 frame. Its `nexthop` cannot hold an IPv6 address:
/// it holds the next hop's `neigh6_tag`, and `lb_neigh6` holds the
/// address at the tag's slot, where tc checks the tag again (two frames
/// whose next hops share a slot, handed over at once, lose the second to a
/// drop rather than send it to the first's next hop).
pub const NEIGH_MARK6_MAGIC: u32 = 0x4c42_4e36; // "6NBL" in memory
// Each magic's first byte as a destination MAC: unicast, locally administered.
const _: () = assert!(NEIGH_MARK_MAGIC.to_ne_bytes()[0] & 0b11 == 0b10);
const _: () = assert!(NEIGH_MARK6_MAGIC.to_ne_bytes()[0] & 0b11 == 0b10);

/// Slots of `lb_neigh6`, a power of two.
pub const NEIGH6_SLOTS: u32 = 1 << 16;

/// The tag of an IPv6 next hop in its frame's mark; its low bits are its
/// slot in `lb_neigh6`: the fold's top sixteen (`Addr::spread16`), the
/// sixteen below them above.
#[inline(always)]
pub fn neigh6_tag(addr: &[u8; 16]) -> u32 {
    let folded = addr.fold();
    <[u8; 16]>::spread16(folded) | ((folded >> 16) as u32 & 0xffff_0000)
}

impl NeighMark {
    /// The 12 bytes that replace the frame's destination and source MACs.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0; 12];
        out[..4].copy_from_slice(&self.magic.to_ne_bytes());
        out[4..8].copy_from_slice(&self.ifindex.to_ne_bytes());
        out[8..].copy_from_slice(&self.nexthop);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply finds its backend in `lb_real_slots` by array reads alone
    /// unless another backend shares its slot: 256 backends of one /64 on
    /// one port, and 2,560 ports of one address, share slots about as
    /// random slots would (0.5 pairs expected of 65,536 slots). With the
    /// port ORed in, IPv6's raised fold lost its host bits under the
    /// port's: 256 such backends took 13 slots.
    #[test]
    fn ipv6_backends_of_a_network_take_their_own_real_slots() {
        let mut slots = [0_u32; 256 + 2560];
        for (i, slot) in slots.iter_mut().enumerate() {
            let (host, port) = if i < 256 { (0x10 + i, 8080) } else { (0x10, 8080 + i - 256) };
            let [hi, lo] = (host as u16).to_be_bytes();
            let addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, hi, lo];
            *slot = real_slot(addr, port as u16, PROTO_TCP) | (u32::from(i < 256) << 31);
        }
        slots.sort_unstable();
        let shared = slots.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(shared <= 3, "{shared} pairs of endpoints share a slot");
    }

    /// The word accessors read what the fields hold: both families, a
    /// flow whole, and a flow that differs in any one field is another.
    #[test]
    fn map_values_read_as_words_hold_their_fields() {
        let v6 = |last| [0xfd, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, last];
        let b6 = Backend { addr: v6(10), vip: v6(1), ..Default::default() };
        assert_eq!((b6.addr(), b6.vip()), (v6(10), v6(1)));
        let b4 = Backend { addr: [10, 77, 2, 10], vip: [10, 77, 1, 100], ..Default::default() };
        assert_eq!((b4.addr(), b4.vip()), ([10, 77, 2, 10], [10, 77, 1, 100]));
        let hop = NextHop { addr: v6(7), via: v6(8), ..Default::default() };
        assert_eq!((hop.addr(), hop.via()), (v6(7), v6(8)));
        let flow =
            Flow { src: v6(9), dst: v6(1), sport: 40_000, dport: 80, proto: 6, _pad: [0; 3] };
        let record = Handshake { flow, ..Default::default() };
        // SAFETY: a record, aligned as one.
        assert_eq!(unsafe { Handshake::flow_of(&raw const record) }, flow);
        let entry = FlowCacheEntry { flow, ..Default::default() };
        assert!(entry.holds(&flow));
        let others = [
            Flow { src: v6(8), ..flow },
            Flow { dst: v6(2), ..flow },
            Flow { sport: 40_001, ..flow },
            Flow { dport: 81, ..flow },
            Flow { proto: 17, ..flow },
        ];
        for other in others {
            assert!(!entry.holds(&other) && !other.same(&flow), "{other:?}");
        }
        assert!(Flow { _pad: [1; 3], ..flow }.same(&flow), "padding is not the flow");
    }

    #[test]
    fn the_epoch_ticks_every_100_ms_whatever_the_kernel_hz() {
        for hz in [100_u64, 250, 300, 1000] {
            let jiffy_ns = 1_000_000_000 / hz;
            let clock = EpochClock { mult: epoch_mult(jiffy_ns), offset: 7 };
            // jiffies start near 2^32 (INITIAL_JIFFIES); a day of uptime later.
            let start = (1_u64 << 32) + 86_400 * hz;
            let at = |ms: u64| clock.epoch(start + ms * hz / 1000);
            let ticks = at(60_000) - at(0);
            assert!((599..=601).contains(&ticks), "{hz} Hz: {ticks} ticks in 60 s");
            assert_eq!(EpochClock { mult: 0, offset: 7 }.epoch(start), 7, "stands still");
        }
    }

    fn walk(start: u8, steps: &[(u8, bool)]) -> Option<u8> {
        steps.iter().try_fold(start, |s, &(flags, from_client)| next_state(s, flags, from_client))
    }

    #[test]
    fn tcp_states_follow_the_handshake_and_the_close() {
        assert_eq!(walk(CONN_SYN, &[(TCP_SYN | TCP_ACK, false)]), Some(CONN_SYN), "SYN-ACK");
        assert_eq!(walk(CONN_SYN, &[(TCP_ACK, true)]), Some(CONN_ESTABLISHED));
        assert_eq!(walk(CONN_ESTABLISHED, &[(TCP_FIN | TCP_ACK, false)]), Some(CONN_CLOSING));
        assert_eq!(
            walk(CONN_ESTABLISHED, &[(TCP_FIN | TCP_ACK, true), (TCP_ACK, true)]),
            Some(CONN_CLOSING)
        );
        assert_eq!(walk(CONN_ESTABLISHED, &[(TCP_RST, false)]), Some(CONN_CLOSED));
        assert_eq!(walk(CONN_CLOSING, &[(TCP_RST | TCP_ACK, true)]), Some(CONN_CLOSED));
        assert_eq!(walk(CONN_SYN, &[(TCP_SYN, true)]), Some(CONN_SYN), "a retransmitted SYN");
        assert_eq!(
            walk(CONN_CLOSED, &[(TCP_SYN, true)]),
            None,
            "a new connection on the same ports"
        );
        assert_eq!(walk(CONN_UDP, &[(0, true)]), Some(CONN_UDP));
    }

    #[test]
    fn a_limit_counts_active_and_inactive_connections_and_zero_is_none() {
        let conns = BackendConns { active: 1, inactive: 1 };
        assert!(conns.at_limit(2) && conns.at_limit(1));
        assert!(!conns.at_limit(3));
        assert!(!conns.at_limit(0), "0: no limit");
        let huge = BackendConns { active: u32::MAX, inactive: u32::MAX };
        assert!(huge.at_limit(u32::MAX), "no overflow");
    }

    #[test]
    fn a_stand_in_is_searched_from_the_flows_slot_around_the_list() {
        let order: [u32; 4] = core::array::from_fn(|step| stand_in_position(62, step as u32));
        assert_eq!(order, [62, 63, 0, 1]);
        assert_eq!(stand_in_position(65_536 + 5, 0), 5, "a slot past the list's length");
    }

    #[test]
    fn a_persistent_services_flows_carry_its_prefix_into_their_records() {
        let flags = SCHED_SH | SVC_PERSIST | (24 << SVC_PERSIST_PREFIX_SHIFT);
        let record = handshake_flags(flags);
        assert_eq!(record, HANDSHAKE_PERSIST | (24 << SVC_PERSIST_PREFIX_SHIFT));
        assert_eq!(handshake_flags(SCHED_SH | (24 << SVC_PERSIST_PREFIX_SHIFT)), 0);
        // The record's flags key the client as the service's do.
        let src = [10, 77, 1, 10];
        assert_eq!(PersistKey::of(7, src, record), PersistKey::of(7, src, flags));
        assert_eq!(PersistKey::of(7, src, record).client, [10, 77, 1, 0]);
    }

    #[test]
    fn a_source_list_adds_once_removes_in_place_and_holds_its_networks() {
        let prefix =
            |network: [u8; 4], len| SourcePrefix { network, mask: <[u8; 4]>::prefix_mask(len) };
        let mut list = SourceList::default();
        let (a, b, c) = (prefix([10, 77, 1, 0], 28), prefix([192, 0, 2, 0], 24), prefix([0; 4], 0));
        assert!(!list.holds(&[10, 77, 1, 1]), "empty: nobody");
        assert!(list.add(a) && list.add(b) && list.add(a));
        assert_eq!(list.listed(), [a, b]);
        assert!(list.holds(&[10, 77, 1, 15]) && list.holds(&[192, 0, 2, 200]));
        assert!(!list.holds(&[10, 77, 1, 16]) && !list.holds(&[192, 0, 3, 1]));
        assert!(list.add(c));
        list.remove(&a);
        assert_eq!(list.listed(), [c, b], "the last took the removed one's place");
        list.remove(&a);
        assert_eq!(list.count, 2);
        // Full at 128 (a reload's 64 new beside 64 old): the 129th is
        // refused, and the 128th is scanned.
        let mut full = SourceList::default();
        for i in 0..128 {
            assert!(full.add(prefix([10, 0, i, 0], 24)), "prefix {i}");
        }
        assert!(!full.add(prefix([10, 1, 0, 0], 24)), "a 129th");
        assert!(full.holds(&[10, 0, 127, 9]) && !full.holds(&[10, 0, 128, 9]));
        // A count past the array's end is read as full, not past it.
        full.count = 1000;
        assert!(full.holds(&[10, 0, 127, 9]));
    }

    #[test]
    fn expiry_survives_wrapping_ticks() {
        assert!(!expired(100, 95, 10));
        assert!(expired(100, 80, 10));
        assert!(!expired(3, u32::MAX - 2, 10));
        // Stamped a tick or two after `now` was read: live.
        assert!(!expired(100, 101, 10));
        assert!(!expired(u32::MAX, 1, 10));
        assert!(!expired(100, 100, 0));
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        AnswerBudget, Backend, BackendConns, Conn, Endpoint, EpochClock, Flow, FlowCacheEntry,
        FragEntry, FragKey, FragKey6, Handshake, MaglevTable, Meta, NextHop, Persist, PersistKey,
        Policy, Real, Service, SourceList, SourcePrefix, Traffic,
    };
    use crate::addr::Addr;

    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: repr(C), only integer fields, no implicit padding (sizes asserted above).
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        Service,
        BackendConns,
        Conn,
        Traffic,
        MaglevTable,
        Meta,
        EpochClock,
        Policy,
        FragKey,
        FragKey6,
        AnswerBudget,
        crate::trace::TraceConf,
        crate::trace::TraceEvent,
        crate::trace::TraceCpu,
        Persist
    );

    macro_rules! pod_of_addr {
        ($($t:ident),*) => {$(
            // SAFETY: repr(C), only integer fields, no implicit padding for
            // either address type (sizes asserted above).
            unsafe impl<A: Addr> aya::Pod for $t<A> {}
        )*};
    }
    pod_of_addr!(
        Endpoint,
        Backend,
        FlowCacheEntry,
        NextHop,
        Real,
        Flow,
        FragEntry,
        Handshake,
        PersistKey,
        SourcePrefix,
        SourceList
    );
}
