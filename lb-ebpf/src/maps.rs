//! Every map of the data plane. Written by `lb-ctl`'s reconciler, read here;
//! only the connection table, the handshake records, the caches and the
//! counters are written by the kernel.
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use lb_common::abi::{
    ADDR_FILTER_SIZE, AnswerBudget, Backend, BackendConns, CONN_STATES, DEFAULT_CONNTRACK_MAX,
    Endpoint, EpochClock, FLOW_CACHE_SLOTS, FlowCacheEntry, FragEntry, FragKey, FragKey6,
    HANDSHAKE_SLOTS, Handshake, MAX_BACKENDS, MAX_FRAGS, MAX_PERSIST, MAX_SERVICES, MAX_SOURCES,
    MAX_TX_PORTS, MaglevTable, Meta, NEIGH6_SLOTS, NEXTHOP_SLOTS, NextHop, Persist, PersistKey,
    Policy, REAL_SLOTS, Real, Service, SourceKey, Traffic,
};

use crate::family::{
    ADDRS, BACKENDS, CACHE, CONNS, FRAGS, HANDSHAKES, HOPS, REALS, SERVICES, SLOTS,
};
use lb_common::conn_table::{ConnSet, MAP_MMAPABLE};
use lb_common::counter::Counter;

/// (VIP, port, protocol) -> service. Hash maps hold twice the plan's limit:
/// a reload writes the new entries before it deletes the old ones.
#[btf_map(name = "lb_services")]
pub static LB_SERVICES: HashMap<Endpoint, Service, { 2 * MAX_SERVICES as usize }> = HashMap::new();

/// Service id -> its Maglev lookup table (slot -> backend id).
#[btf_map(name = "lb_maglev")]
pub static LB_MAGLEV: Array<MaglevTable, { MAX_SERVICES as usize }> = Array::new();

/// Service id -> the round-robin counter of `rr` and `wrr` services, shared
/// by every CPU (atomic), so the rotation holds whatever CPU a SYN lands on.
#[btf_map(name = "lb_rr")]
pub static LB_RR: Array<u64, { MAX_SERVICES as usize }> = Array::new();

/// Idle timeout of each connection state (`CONN_*`), in epoch ticks.
#[btf_map(name = "lb_timeouts")]
pub static LB_TIMEOUTS: Array<u32, { CONN_STATES as usize }> = Array::new();

/// Backend id -> its active and inactive connections (`lc`, and the operator).
#[btf_map(name = "lb_be_conns")]
pub static LB_BE_CONNS: Array<BackendConns, { MAX_BACKENDS as usize }> = Array::new();

/// Backend id -> backend address and port.
#[btf_map(name = "lb_backends")]
pub static LB_BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// (backend address, port, protocol) -> VIP: reverse NAT without connection state.
#[btf_map(name = "lb_reals")]
pub static LB_REALS: HashMap<Endpoint, Real, { 2 * MAX_BACKENDS as usize }> = HashMap::new();

/// Direct-mapped copies of connection-table entries, one region of
/// `FLOW_CACHE_SLOTS` per CPU (`lb-ctl` sizes the map for the machine's
/// CPUs). A plain array indexed by CPU rather than a per-CPU array: one
/// memory access per lookup instead of two (the per-CPU pointer table was a
/// second cold cache line for every new flow).
#[btf_map(name = "lb_flow_cache")]
pub static LB_FLOW_CACHE: Array<FlowCacheEntry, { FLOW_CACHE_SLOTS as usize }> = Array::new();

/// Address pre-filter: `addr_slot(addr)` -> `ADDR_VIP` | `ADDR_REAL` |
/// `ADDR_BACKEND`. An array lookup (inlined by the verifier) for each of
/// the destination and the source lets most packets that are not ours pass
/// without a single hash lookup; a hit is confirmed by the exact maps.
#[btf_map(name = "lb_addrs")]
pub static LB_ADDRS: Array<u8, { ADDR_FILTER_SIZE as usize }> = Array::new();

/// `real_slot(backend endpoint)` -> backend id + 1 (0: none;
/// `REAL_SLOT_SHARED`: several backends, ask `lb_reals`).
#[btf_map(name = "lb_real_slots")]
pub static LB_REAL_SLOTS: Array<u32, { REAL_SLOTS as usize }> = Array::new();

/// Direct-mapped cache of FIB answers by destination address, one region
/// of `NEXTHOP_SLOTS` per CPU, like `lb_flow_cache` (and sized the same way).
#[btf_map(name = "lb_nexthops")]
pub static LB_NEXTHOPS: Array<NextHop, { NEXTHOP_SLOTS as usize }> = Array::new();

/// Slot 0: how jiffies become epoch ticks (`abi::EpochClock`), written by
/// the controller at start; cache entries of another epoch are stale.
#[btf_map(name = "lb_epoch")]
pub static LB_EPOCH: Array<EpochClock, 1> = Array::new();

/// Slot 0: how to meet the edge, set by the controller at start (`abi::Policy`).
#[btf_map(name = "lb_policy")]
pub static LB_POLICY: Array<Policy, 1> = Array::new();

/// `bpf_fib_lookup`'s parameters, one per CPU, off the program's stack.
#[btf_map(name = "lb_fib_scratch")]
pub static LB_FIB_SCRATCH: PerCpuArray<bpf_fib_lookup, 1> = PerCpuArray::new();

/// The answers (resets, ICMP errors) this CPU sent in the current tick.
#[btf_map(name = "lb_answers")]
pub static LB_ANSWERS: PerCpuArray<AnswerBudget, 1> = PerCpuArray::new();

/// A fragmented datagram's first fragment's decision, for the fragments
/// after it (see `frag`).
#[btf_map(name = "lb_frags")]
pub static LB_FRAGS: LruHashMap<FragKey, FragEntry, { MAX_FRAGS as usize }> = LruHashMap::new();

/// VIP -> number of services on it; tells a fragment addressed to a VIP apart.
#[btf_map(name = "lb_vips")]
pub static LB_VIPS: HashMap<[u8; 4], u32, { 2 * MAX_SERVICES as usize }> = HashMap::new();

/// Backend address -> number of backends on it (NAT and direct routing, all
/// services): who is a backend for sure, where the prefilter's
/// `ADDR_BACKEND` only says who may be. Never answered, never sent a reply.
#[btf_map(name = "lb_backend_addrs")]
pub static LB_BACKEND_ADDRS: HashMap<[u8; 4], u32, { 2 * MAX_BACKENDS as usize }> = HashMap::new();

/// Flows placed but not yet recorded (`abi::Handshake`), direct mapped by
/// `handshake_slot`: a new record overwrites whatever held its slot.
#[btf_map(name = "lb_handshakes")]
pub static LB_HANDSHAKES: Array<Handshake, { HANDSHAKE_SLOTS as usize }> = Array::new();

/// The connection table (`conntrack`): sets of four entries; `lb-ctl`
/// sizes it from `dataplane.conntrack_max` and maps it to read it.
#[btf_map(name = "lb_conntrack")]
pub static LB_CONNTRACK: Array<ConnSet, { DEFAULT_CONNTRACK_MAX as usize }, MAP_MMAPABLE> =
    Array::new();

/// (persistent service, client network) -> the backend of the client's
/// last recorded flow (`persist`). An LRU hash: bounded, and a full map
/// gives up the client seen least recently.
#[btf_map(name = "lb_persist")]
pub static LB_PERSIST: LruHashMap<PersistKey, Persist, { MAX_PERSIST as usize }> =
    LruHashMap::new();

/// (service id, allowed prefix) of the services with `allowed_sources`
/// (`SVC_SOURCES`), longest match; the value is unused (1).
#[btf_map(name = "lb_sources")]
pub static LB_SOURCES: LpmTrie<SourceKey, u32, { MAX_SOURCES as usize }> = LpmTrie::new();

/// Egress interfaces for XDP_REDIRECT, by slot: an array, so a redirect
/// costs an index, not a hash (the slot is kept in the next-hop cache).
#[btf_map(name = "lb_tx_ports")]
pub static LB_TX_PORTS: DevMap<{ MAX_TX_PORTS as usize }> = DevMap::new();

/// ifindex -> slot in `lb_tx_ports`; read only when the next-hop cache is filled.
#[btf_map(name = "lb_tx_slots")]
pub static LB_TX_SLOTS: HashMap<u32, u32, { MAX_TX_PORTS as usize }> = HashMap::new();

/// One per-CPU counter per packet outcome (`lb_common::counter::Counter`).
#[btf_map(name = "lb_counters")]
pub static LB_COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Per-service traffic, indexed by service id.
#[btf_map(name = "lb_svc_stats")]
pub static LB_SVC_STATS: PerCpuArray<Traffic, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Per-backend traffic, indexed by backend id.
#[btf_map(name = "lb_be_stats")]
pub static LB_BE_STATS: PerCpuArray<Traffic, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Slot 0: the ABI version of whoever created these maps.
#[btf_map(name = "lb_meta")]
pub static LB_META: Array<Meta, 1> = Array::new();

// IPv6: the maps keyed by address, over `[u8; 16]`, each the counterpart of
// the IPv4 map of the same name without the 6 (names stay under the
// kernel's 15 characters). Maps indexed by service or backend id are
// shared: the ids are one space across both families.

#[btf_map(name = "lb_services6")]
pub static LB_SERVICES6: HashMap<Endpoint<[u8; 16]>, Service, SERVICES> = HashMap::new();

#[btf_map(name = "lb_backends6")]
pub static LB_BACKENDS6: Array<Backend<[u8; 16]>, BACKENDS> = Array::new();

#[btf_map(name = "lb_reals6")]
pub static LB_REALS6: HashMap<Endpoint<[u8; 16]>, Real<[u8; 16]>, REALS> = HashMap::new();

#[btf_map(name = "lb_real_slots6")]
pub static LB_REAL_SLOTS6: Array<u32, SLOTS> = Array::new();

#[btf_map(name = "lb_addrs6")]
pub static LB_ADDRS6: Array<u8, ADDRS> = Array::new();

#[btf_map(name = "lb_be_addrs6")]
pub static LB_BACKEND_ADDRS6: HashMap<[u8; 16], u32, REALS> = HashMap::new();

#[btf_map(name = "lb_vips6")]
pub static LB_VIPS6: HashMap<[u8; 16], u32, SERVICES> = HashMap::new();

#[btf_map(name = "lb_flow_cache6")]
pub static LB_FLOW_CACHE6: Array<FlowCacheEntry<[u8; 16]>, CACHE> = Array::new();

#[btf_map(name = "lb_nexthops6")]
pub static LB_NEXTHOPS6: Array<NextHop<[u8; 16]>, HOPS> = Array::new();

#[btf_map(name = "lb_handshakes6")]
pub static LB_HANDSHAKES6: Array<Handshake<[u8; 16]>, HANDSHAKES> = Array::new();

#[btf_map(name = "lb_frags6")]
pub static LB_FRAGS6: LruHashMap<FragKey6, FragEntry<[u8; 16]>, FRAGS> = LruHashMap::new();

#[btf_map(name = "lb_persist6")]
pub static LB_PERSIST6: LruHashMap<PersistKey<[u8; 16]>, Persist, { MAX_PERSIST as usize }> =
    LruHashMap::new();

#[btf_map(name = "lb_sources6")]
pub static LB_SOURCES6: LpmTrie<SourceKey<[u8; 16]>, u32, { MAX_SOURCES as usize }> =
    LpmTrie::new();

/// The IPv6 connection table: the same sets over 32-byte entries; `lb-ctl`
/// sizes it from `dataplane.conntrack_max` like the IPv4 one.
#[btf_map(name = "lb_conntrack6")]
pub static LB_CONNTRACK6: Array<ConnSet<[u8; 16]>, CONNS, MAP_MMAPABLE> = Array::new();

/// The next hops of IPv6 frames handed to tc (`lb_neigh`), which the mark
/// in place of their MAC addresses has no room for: slot
/// `NeighMark::nexthop` & `NEIGH6_SLOTS - 1` holds the address whose
/// `neigh6_tag` the mark carries (see `abi::NeighMark`).
#[btf_map(name = "lb_neigh6")]
pub static LB_NEIGH6: Array<[u8; 16], { NEIGH6_SLOTS as usize }> = Array::new();

/// Slot 0: `lb_xdp6`, which `lb_xdp` tail calls for an IPv6 frame (empty:
/// IPv6 goes to the kernel untouched, counted `pass_not_ipv4`). Slot 1:
/// `lb_answer6`, which `lb_xdp6` tail calls to answer (see `v6::answer`).
/// Slot 2: `lb_icmp6`, which it tail calls for an ICMPv6 error (`v6::icmp`).
#[btf_map(name = "lb_progs")]
pub static LB_PROGS: ProgramArray<3> = ProgramArray::new();

/// What `lb_xdp6` asks `lb_answer6` to answer, one slot per CPU.
#[btf_map(name = "lb_answer6_req")]
pub static LB_ANSWER6_REQ: PerCpuArray<crate::v6::answer::Request, 1> = PerCpuArray::new();
