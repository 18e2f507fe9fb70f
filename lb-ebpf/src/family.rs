//! The two address families. The decisions (whose packet, which backend,
//! which connection-table entry, which next hop) are written once over
//! `Family`; what differs is the header (parse, rewrite, answers, the FIB's
//! parameters) and the maps keyed by address, which each family has its
//! own of (`lb_services` and `lb_services6`, ...). Maps indexed by id
//! (Maglev tables, counters, connection counts) are shared: service and
//! backend ids are one space across both families.
//!
//! IPv4 runs in `lb_xdp` itself; IPv6 in `lb_xdp6`, which `lb_xdp` tail
//! calls for an IPv6 frame: each program is verified on its own, with its
//! own 512 bytes of stack, and an IPv4 packet pays nothing for IPv6.
use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    abi::{
        ADDR_FILTER_SIZE, Backend, Endpoint, FLOW_CACHE_SLOTS, Flow, FlowCacheEntry, FragEntry,
        FragKey, HANDSHAKE_SLOTS, Handshake, MAX_BACKENDS, MAX_FRAGS, MAX_PERSIST, MAX_SERVICES,
        NEXTHOP_SLOTS, NextHop, Persist, PersistKey, REAL_SLOTS, Real, Service, SourceList,
    },
    addr::Addr,
    conn_table::{ConnSet, ConnSlot, MAP_MMAPABLE},
    counter::Counter,
    fullnat::{DEFAULT_FULLNAT_MAX, FnatFlow, FnatKey, FnatRev, SnatPool},
};

use crate::{
    Verdict, conntrack, frag, fullnat,
    fwd::{self, Query},
    icmp, maps,
    nat::{self, Side},
    parse::{self, Headers, Packet},
    reject::{self, To},
    select::{self, Here},
};

/// Capacities of the maps every family has (see `maps`).
pub const SERVICES: usize = 2 * MAX_SERVICES as usize;
pub const BACKENDS: usize = MAX_BACKENDS as usize;
pub const REALS: usize = 2 * MAX_BACKENDS as usize;
pub const ADDRS: usize = ADDR_FILTER_SIZE as usize;
pub const SLOTS: usize = REAL_SLOTS as usize;
pub const CACHE: usize = FLOW_CACHE_SLOTS as usize;
pub const HOPS: usize = NEXTHOP_SLOTS as usize;
pub const HANDSHAKES: usize = HANDSHAKE_SLOTS as usize;
pub const FRAGS: usize = MAX_FRAGS as usize;
pub const CONNS: usize = lb_common::abi::DEFAULT_CONNTRACK_MAX as usize;
pub const PERSIST: usize = MAX_PERSIST as usize;
pub const SOURCE_LISTS: usize = MAX_SERVICES as usize;
pub const POOLS: usize = MAX_SERVICES as usize;
pub const FNATS: usize = DEFAULT_FULLNAT_MAX as usize;

/// An address family: its header, its maps, and the operations on its
/// packets that the shared decisions call.
pub trait Family: Sized + Copy + 'static {
    type Addr: Addr;
    /// The fixed IP header.
    type IpHdr;
    /// What the IP layer's parse learns of fragmentation (`Headers::frag`).
    type IpFrag: Copy;
    /// What ties a datagram's fragments together, as the packet carries it.
    type FragId: Copy;
    /// The key of the family's fragment map.
    type FragKey: Copy;
    /// The family's ICMP protocol number.
    const ICMP: u8;
    /// Whether ICMP is the kernel's before the source checks: IPv6's
    /// neighbour discovery comes from link-local sources, which no client
    /// has, to the VIPs too.
    const ICMP_BEFORE_SOURCE_CHECKS: bool;
    /// The slot of the family's full-NAT program in `lb_progs`.
    const FULLNAT_PROG: u32;
    /// Whether a UDP datagram must carry a checksum (IPv6, RFC 8200 8.1):
    /// a zero one is malformed (IPv4's zero says there is none).
    const UDP_CHECKSUM_REQUIRED: bool;

    /// VIP -> services on it.
    fn vips() -> &'static HashMap<Self::Addr, u32, SERVICES>;
    fn services() -> &'static HashMap<Endpoint<Self::Addr>, Service, SERVICES>;
    fn backends() -> &'static Array<Backend<Self::Addr>, BACKENDS>;
    fn reals() -> &'static HashMap<Endpoint<Self::Addr>, Real<Self::Addr>, REALS>;
    fn real_slots() -> &'static Array<u32, SLOTS>;
    fn addrs() -> &'static Array<u8, ADDRS>;
    fn backend_addrs() -> &'static HashMap<Self::Addr, u32, REALS>;
    fn flow_cache() -> &'static Array<FlowCacheEntry<Self::Addr>, CACHE>;
    fn nexthops() -> &'static Array<NextHop<Self::Addr>, HOPS>;
    fn handshakes() -> &'static Array<Handshake<Self::Addr>, HANDSHAKES>;
    fn frags() -> &'static LruHashMap<Self::FragKey, FragEntry<Self::Addr>, FRAGS>;
    fn conntrack() -> &'static Array<ConnSet<Self::Addr>, CONNS, MAP_MMAPABLE>;
    fn persist() -> &'static LruHashMap<PersistKey<Self::Addr>, Persist, PERSIST>;
    fn sources() -> &'static Array<SourceList<Self::Addr>, SOURCE_LISTS>;
    /// Full NAT: the services' SNAT pools, the flows' mappings, and the
    /// reverse mappings (`lb_common::fullnat`).
    fn snat_pools() -> &'static Array<SnatPool<Self::Addr>, POOLS>;
    fn fnat() -> &'static HashMap<Flow<Self::Addr>, FnatFlow<Self::Addr>, FNATS>;
    fn fnat_rev() -> &'static HashMap<FnatKey<Self::Addr>, FnatRev<Self::Addr>, FNATS>;
    fn fnat_work() -> &'static PerCpuArray<fullnat::Work<Self::Addr>, 1>;
    /// The connection table's size (base-2 logarithm of its sets), as the
    /// loader wrote it.
    fn conn_set_bits() -> u32;
    /// Writes a connection-table entry word by word (`conntrack::record`).
    ///
    /// # Safety
    /// `slot` is an entry of the family's connection table.
    unsafe fn store_conn(slot: *mut ConnSlot<Self::Addr>, entry: ConnSlot<Self::Addr>);

    /// The Ethernet and IP headers, as far as the addresses.
    fn ip(ctx: &XdpContext) -> Result<Headers<Self>, Counter>;
    /// The transport header after `ip`'s.
    fn transport(ctx: &XdpContext, ip: &Headers<Self>) -> Result<Packet<Self>, Counter>;
    /// A source no client can have (RFC 1812's martians and their IPv6
    /// counterparts).
    fn martian(src: &Self::Addr) -> bool;
    /// The fragment key of `pkt`'s datagram.
    fn frag_key(pkt: &Packet<Self>) -> Self::FragKey;

    /// Rewrites one endpoint of `pkt` and counts the hop (see `nat`).
    ///
    /// # Safety
    /// `pkt` comes from `transport` on the current frame, with no
    /// packet-resizing helper called since.
    unsafe fn rewrite(pkt: &Packet<Self>, side: Side, addr: Self::Addr, port: u16);
    /// Copies an address between two map values as words: a plain copy
    /// of a 16-byte array there is a call of `memmove`, which BPF has not.
    fn copy_addr(dst: &mut Self::Addr, src: &Self::Addr);
    /// Rewrites both endpoints of `pkt` (full NAT) and counts one hop.
    ///
    /// # Safety
    /// As `rewrite`'s; `pkt` is a whole packet.
    unsafe fn rewrite_both(pkt: &Packet<Self>, src: (Self::Addr, u16), dst: (Self::Addr, u16));
    /// Fills the FIB's parameters for `query` (family and addresses).
    fn fib_query(params: &mut FibParams, pkt: &Packet<Self>, query: &Query<Self::Addr>);
    /// The next hop the FIB answered.
    fn fib_nexthop(params: &FibParams) -> Self::Addr;
    /// Hands a rewritten frame to tc (`lb_neigh`) to resolve `nexthop`.
    ///
    /// # Safety
    /// `eth` points at a bounds-checked Ethernet header.
    unsafe fn slow_path(eth: *mut u8, ifindex: u32, nexthop: Self::Addr) -> Verdict;

    /// An ICMP message: a translated error about one of our flows, or the kernel's.
    fn icmp(ctx: &XdpContext, ip: &Headers<Self>, to_vip: bool) -> Result<Verdict, Counter>;
    /// A TCP reset from the VIP in place of `pkt`, counted as `counter`.
    fn tcp_reset(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        counter: Counter,
        here: Here,
    ) -> Result<Verdict, Counter>;
    /// `on_no_backend = "reject"`'s answer to `pkt`.
    fn no_backend(ctx: &XdpContext, pkt: &Packet<Self>, here: Here) -> Result<Verdict, Counter>;
    /// The answer to a packet too big for its next link.
    fn too_big(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        vip: Self::Addr,
        mtu: u16,
        to: To,
        here: Here,
    ) -> Result<Verdict, Counter>;
    /// An answer (`reject::RESET`, `NO_BACKEND`, `EXHAUSTED`, `FULL`, `TOO_BIG` from `vip`
    /// with `mtu` to `to`, counted as `counter`) built by the family's
    /// answer program, with a stack of its own (`reject::Request`): for
    /// a program that has none to spare.
    fn answer_apart(
        ctx: &XdpContext,
        kind: u32,
        counter: Counter,
        vip: Self::Addr,
        mtu: u16,
        to: To,
    ) -> Result<Verdict, Counter>;
    /// `lc`'s pick among the service's backends.
    fn least_connections(service_id: u32, count: u32) -> u32;
    /// `select::within_limits`, in a global function.
    fn within_limits(service_id: u32, id: u32, start: u32) -> u32;
    /// `persist::persisted`, in a global function.
    fn persisted(service_id: u32, flags: u32, ticks: u32, src: Self::Addr) -> u32;
    /// `persist::remember`, in a global function.
    fn remember(service_id: u32, backend_id: u32, flags: u32, src: Self::Addr);
    /// `fullnat::map_out`, in a global function.
    fn fnat_out(tcp_flags: u8, opening: bool) -> u32;
    /// `fullnat::map_back`, in a global function.
    fn fnat_back(tcp_flags: u8, seq: Option<u32>) -> u32;
    /// `persist::allowed`, in a global function.
    fn allowed(service_id: u32, src: Self::Addr) -> bool;
}

/// IPv4, in `lb_xdp`.
#[derive(Clone, Copy)]
pub struct V4;

impl Family for V4 {
    type Addr = [u8; 4];
    type IpHdr = parse::Ipv4Hdr;
    type IpFrag = ();
    type FragId = u16;
    type FragKey = FragKey;
    const ICMP: u8 = lb_common::abi::PROTO_ICMP;
    const ICMP_BEFORE_SOURCE_CHECKS: bool = false;
    const FULLNAT_PROG: u32 = fullnat::FULLNAT_PROG;
    const UDP_CHECKSUM_REQUIRED: bool = false;

    #[inline(always)]
    fn vips() -> &'static HashMap<[u8; 4], u32, SERVICES> {
        &maps::LB_VIPS
    }
    #[inline(always)]
    fn services() -> &'static HashMap<Endpoint, Service, SERVICES> {
        &maps::LB_SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static Array<Backend, BACKENDS> {
        &maps::LB_BACKENDS
    }
    #[inline(always)]
    fn reals() -> &'static HashMap<Endpoint, Real, REALS> {
        &maps::LB_REALS
    }
    #[inline(always)]
    fn real_slots() -> &'static Array<u32, SLOTS> {
        &maps::LB_REAL_SLOTS
    }
    #[inline(always)]
    fn addrs() -> &'static Array<u8, ADDRS> {
        &maps::LB_ADDRS
    }
    #[inline(always)]
    fn backend_addrs() -> &'static HashMap<[u8; 4], u32, REALS> {
        &maps::LB_BACKEND_ADDRS
    }
    #[inline(always)]
    fn flow_cache() -> &'static Array<FlowCacheEntry, CACHE> {
        &maps::LB_FLOW_CACHE
    }
    #[inline(always)]
    fn nexthops() -> &'static Array<NextHop, HOPS> {
        &maps::LB_NEXTHOPS
    }
    #[inline(always)]
    fn handshakes() -> &'static Array<Handshake, HANDSHAKES> {
        &maps::LB_HANDSHAKES
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey, FragEntry, FRAGS> {
        &maps::LB_FRAGS
    }
    #[inline(always)]
    fn conntrack() -> &'static Array<ConnSet, CONNS, MAP_MMAPABLE> {
        &maps::LB_CONNTRACK
    }
    #[inline(always)]
    fn persist() -> &'static LruHashMap<PersistKey, Persist, PERSIST> {
        &maps::LB_PERSIST
    }
    #[inline(always)]
    fn sources() -> &'static Array<SourceList, SOURCE_LISTS> {
        &maps::LB_SOURCES
    }
    #[inline(always)]
    fn snat_pools() -> &'static Array<SnatPool, POOLS> {
        &maps::LB_SNAT
    }
    #[inline(always)]
    fn fnat() -> &'static HashMap<Flow, FnatFlow, FNATS> {
        &maps::LB_FNAT
    }
    #[inline(always)]
    fn fnat_rev() -> &'static HashMap<FnatKey, FnatRev, FNATS> {
        &maps::LB_FNAT_REV
    }
    #[inline(always)]
    fn fnat_work() -> &'static PerCpuArray<fullnat::Work<[u8; 4]>, 1> {
        &maps::LB_FNAT_WORK
    }
    #[inline(always)]
    fn conn_set_bits() -> u32 {
        conntrack::set_bits_v4()
    }
    #[inline(always)]
    unsafe fn store_conn(slot: *mut ConnSlot, entry: ConnSlot) {
        // SAFETY: two plain-old-data words of the same 16 bytes; the caller
        // guarantees the slot.
        unsafe {
            conntrack::store_words(slot.cast(), core::mem::transmute::<ConnSlot, [u64; 2]>(entry));
        }
    }

    #[inline(always)]
    fn ip(ctx: &XdpContext) -> Result<Headers<Self>, Counter> {
        parse::ipv4(ctx)
    }
    #[inline(always)]
    fn transport(ctx: &XdpContext, ip: &Headers<Self>) -> Result<Packet<Self>, Counter> {
        parse::transport(ctx, ip)
    }
    #[inline(always)]
    fn martian(src: &[u8; 4]) -> bool {
        src[0] == 0 || src[0] == 127 || src[0] >= 224
    }
    #[inline(always)]
    fn frag_key(pkt: &Packet<Self>) -> FragKey {
        frag::key_v4(pkt)
    }

    #[inline(always)]
    unsafe fn rewrite(pkt: &Packet<Self>, side: Side, addr: [u8; 4], port: u16) {
        // SAFETY: the caller's guarantee.
        unsafe { nat::rewrite(pkt, side, addr, port) }
    }
    #[inline(always)]
    fn copy_addr(dst: &mut [u8; 4], src: &[u8; 4]) {
        *dst = *src;
    }
    #[inline(always)]
    unsafe fn rewrite_both(pkt: &Packet<Self>, src: ([u8; 4], u16), dst: ([u8; 4], u16)) {
        // SAFETY: the caller's guarantee.
        unsafe { nat::rewrite_both(pkt, src, dst) }
    }
    #[inline(always)]
    fn fib_query(params: &mut FibParams, pkt: &Packet<Self>, query: &Query<[u8; 4]>) {
        params.family = fwd::AF_INET;
        // SAFETY: pkt.ip was bounds-checked by parse.
        params.__bindgen_anon_2.tos = unsafe { (*pkt.ip).tos };
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(query.src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(query.dst);
    }
    #[inline(always)]
    fn fib_nexthop(params: &FibParams) -> [u8; 4] {
        // SAFETY: the union's IPv4 member, which the FIB sets to the next hop.
        unsafe { params.__bindgen_anon_4.ipv4_dst }.to_ne_bytes()
    }
    #[inline(always)]
    unsafe fn slow_path(eth: *mut u8, ifindex: u32, nexthop: [u8; 4]) -> Verdict {
        // SAFETY: the caller's guarantee.
        unsafe { fwd::slow_path_v4(eth, ifindex, nexthop) }
    }

    #[inline(always)]
    fn icmp(ctx: &XdpContext, ip: &Headers<Self>, to_vip: bool) -> Result<Verdict, Counter> {
        icmp::translate(ctx, ip, to_vip)
    }
    #[inline(always)]
    fn tcp_reset(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        counter: Counter,
        here: Here,
    ) -> Result<Verdict, Counter> {
        reject::tcp_reset(ctx, pkt, counter, here)
    }
    #[inline(always)]
    fn no_backend(ctx: &XdpContext, pkt: &Packet<Self>, here: Here) -> Result<Verdict, Counter> {
        reject::no_backend(ctx, pkt, here)
    }
    #[inline(always)]
    fn too_big(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        vip: [u8; 4],
        mtu: u16,
        to: To,
        here: Here,
    ) -> Result<Verdict, Counter> {
        reject::frag_needed(ctx, pkt, vip, mtu, to, here)
    }
    #[inline(always)]
    fn answer_apart(
        ctx: &XdpContext,
        kind: u32,
        counter: Counter,
        vip: [u8; 4],
        mtu: u16,
        to: To,
    ) -> Result<Verdict, Counter> {
        let [a, b, c, d] = vip;
        let request = reject::Request {
            kind,
            counter,
            vip: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            mtu: u32::from(mtu),
            to_backend: u32::from(to == To::Backend),
        };
        reject::request(ctx, request, reject::ANSWER_PROG, reject::failed_answer(kind, counter))
    }
    #[inline(always)]
    fn least_connections(service_id: u32, count: u32) -> u32 {
        lb_least_connections(service_id, count)
    }
    #[inline(always)]
    fn within_limits(service_id: u32, id: u32, start: u32) -> u32 {
        lb_within_limits(service_id, id, start)
    }
    #[inline(always)]
    fn persisted(service_id: u32, flags: u32, ticks: u32, src: [u8; 4]) -> u32 {
        lb_persisted(service_id, flags, ticks, u32::from_ne_bytes(src))
    }
    #[inline(always)]
    fn remember(service_id: u32, backend_id: u32, flags: u32, src: [u8; 4]) {
        lb_remember(service_id, backend_id, flags, u32::from_ne_bytes(src));
    }
    #[inline(always)]
    fn fnat_out(tcp_flags: u8, opening: bool) -> u32 {
        lb_fnat_out(u32::from(tcp_flags), u32::from(opening))
    }
    #[inline(always)]
    fn fnat_back(tcp_flags: u8, seq: Option<u32>) -> u32 {
        lb_fnat_back(u32::from(tcp_flags), u32::from(seq.is_some()), seq.unwrap_or(0))
    }
    #[inline(always)]
    fn allowed(service_id: u32, src: [u8; 4]) -> bool {
        lb_allowed(service_id, u32::from_ne_bytes(src)) != 0
    }
}

/// `lc`'s pick for an IPv4 service: a global BPF function (see
/// `select::least_connections`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_least_connections(service_id: u32, count: u32) -> u32 {
    select::least_connections::<V4>(service_id, count)
}

/// `max_conns` for an IPv4 service: a global BPF function (verified
/// once, like `lb_least_connections`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_within_limits(service_id: u32, id: u32, start: u32) -> u32 {
    select::within_limits::<V4>(service_id, id, start)
}

/// A persistent IPv4 client's backend (`persist::persisted`); the address
/// as its native word.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_persisted(service_id: u32, flags: u32, ticks: u32, src: u32) -> u32 {
    crate::persist::persisted::<V4>(service_id, flags, ticks, src.to_ne_bytes())
}

/// Records a persistent IPv4 client (`persist::remember`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_remember(service_id: u32, backend_id: u32, flags: u32, src: u32) -> u32 {
    crate::persist::remember::<V4>(service_id, backend_id, flags, src.to_ne_bytes())
}

/// An IPv4 full-NAT client's mapping (`fullnat::map_out`): a global BPF
/// function, verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_fnat_out(tcp_flags: u32, opening: u32) -> u32 {
    fullnat::map_out::<V4>(tcp_flags as u8, opening != 0)
}

/// An IPv4 full-NAT backend's reply's mapping (`fullnat::map_back`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_fnat_back(tcp_flags: u32, has_seq: u32, seq: u32) -> u32 {
    fullnat::map_back::<V4>(tcp_flags as u8, (has_seq != 0).then_some(seq))
}

/// Whether an IPv4 source is among a service's allowed sources
/// (`persist::allowed`): a global function, its loop verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_allowed(service_id: u32, src: u32) -> u32 {
    u32::from(crate::persist::allowed::<V4>(service_id, src.to_ne_bytes()))
}
