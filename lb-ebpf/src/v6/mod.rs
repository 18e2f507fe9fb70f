//! IPv6: its headers (`parse`), its rewrites (`nat`), its answers
//! (`answer`), its error translation (`icmp`), its maps, and the `Family`
//! the shared decisions run over in `lb_xdp6`.
//!
//! ICMPv6 errors about our flows are translated in `lb_icmp6` (`icmp`);
//! every other ICMPv6 message goes to the kernel (`pass_not_tcp_udp`:
//! neighbour discovery is the kernel's).
pub mod answer;
pub mod icmp;
pub mod nat;
pub mod parse;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    abi::{
        Backend, Endpoint, Flow, FlowCacheEntry, FragEntry, FragKey6, Handshake, NEIGH_MARK6_MAGIC,
        NEIGH6_SLOTS, NextHop, Persist, PersistKey, Real, Service, SourceList, neigh6_tag,
    },
    conn_table::{ConnSet, ConnSlot, MAP_MMAPABLE},
    counter::Counter,
    fullnat::{FnatFlow, FnatKey, FnatRev, SnatPool},
};

use crate::{
    Verdict, conntrack,
    family::{
        ADDRS, BACKENDS, CACHE, CONNS, FNATS, FRAGS, Family, HANDSHAKES, HOPS, PERSIST, POOLS,
        REALS, SERVICES, SLOTS, SOURCE_LISTS,
    },
    fullnat,
    fwd::Query,
    maps, mem,
    nat::Side,
    parse::{Headers, Packet},
    reject::{self, To},
    select::{self, Here},
};

/// IPv6, in `lb_xdp6`.
#[derive(Clone, Copy)]
pub struct V6;

/// An answer request's fields that a kind leaves unused.
const NO_REQUEST: reject::Request = reject::Request {
    kind: 0,
    counter: Counter::DropNoBackend,
    vip: [0; 16],
    mtu: 0,
    to_backend: 0,
};

pub const AF_INET6: u8 = 10;

impl Family for V6 {
    type Addr = [u8; 16];
    type IpHdr = parse::Ipv6Hdr;
    type IpFrag = parse::FragInfo;
    type FragId = u32;
    type FragKey = FragKey6;
    const ICMP: u8 = parse::PROTO_ICMPV6;
    const ICMP_BEFORE_SOURCE_CHECKS: bool = true;
    const FULLNAT_PROG: u32 = fullnat::FULLNAT6_PROG;
    const UDP_CHECKSUM_REQUIRED: bool = true;

    #[inline(always)]
    fn vips() -> &'static HashMap<[u8; 16], u32, SERVICES> {
        &maps::LB_VIPS6
    }
    #[inline(always)]
    fn services() -> &'static HashMap<Endpoint<[u8; 16]>, Service, SERVICES> {
        &maps::LB_SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static Array<Backend<[u8; 16]>, BACKENDS> {
        &maps::LB_BACKENDS6
    }
    #[inline(always)]
    fn reals() -> &'static HashMap<Endpoint<[u8; 16]>, Real<[u8; 16]>, REALS> {
        &maps::LB_REALS6
    }
    #[inline(always)]
    fn real_slots() -> &'static Array<u32, SLOTS> {
        &maps::LB_REAL_SLOTS6
    }
    #[inline(always)]
    fn addrs() -> &'static Array<u8, ADDRS> {
        &maps::LB_ADDRS6
    }
    #[inline(always)]
    fn backend_addrs() -> &'static HashMap<[u8; 16], u32, REALS> {
        &maps::LB_BACKEND_ADDRS6
    }
    #[inline(always)]
    fn flow_cache() -> &'static Array<FlowCacheEntry<[u8; 16]>, CACHE> {
        &maps::LB_FLOW_CACHE6
    }
    #[inline(always)]
    fn nexthops() -> &'static Array<NextHop<[u8; 16]>, HOPS> {
        &maps::LB_NEXTHOPS6
    }
    #[inline(always)]
    fn handshakes() -> &'static Array<Handshake<[u8; 16]>, HANDSHAKES> {
        &maps::LB_HANDSHAKES6
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey6, FragEntry<[u8; 16]>, FRAGS> {
        &maps::LB_FRAGS6
    }
    #[inline(always)]
    fn persist() -> &'static LruHashMap<PersistKey<[u8; 16]>, Persist, PERSIST> {
        &maps::LB_PERSIST6
    }
    #[inline(always)]
    fn sources() -> &'static Array<SourceList<[u8; 16]>, SOURCE_LISTS> {
        &maps::LB_SOURCES6
    }
    #[inline(always)]
    fn snat_pools() -> &'static Array<SnatPool<[u8; 16]>, POOLS> {
        &maps::LB_SNAT6
    }
    #[inline(always)]
    fn fnat() -> &'static HashMap<Flow<[u8; 16]>, FnatFlow<[u8; 16]>, FNATS> {
        &maps::LB_FNAT6
    }
    #[inline(always)]
    fn fnat_rev() -> &'static HashMap<FnatKey<[u8; 16]>, FnatRev<[u8; 16]>, FNATS> {
        &maps::LB_FNAT_REV6
    }
    #[inline(always)]
    fn fnat_work() -> &'static PerCpuArray<fullnat::Work<[u8; 16]>, 1> {
        &maps::LB_FNAT_WORK6
    }
    #[inline(always)]
    fn conntrack() -> &'static Array<ConnSet<[u8; 16]>, CONNS, MAP_MMAPABLE> {
        &maps::LB_CONNTRACK6
    }
    #[inline(always)]
    fn conn_set_bits() -> u32 {
        conntrack::set_bits_v6()
    }
    #[inline(always)]
    unsafe fn store_conn(slot: *mut ConnSlot<[u8; 16]>, entry: ConnSlot<[u8; 16]>) {
        // SAFETY: four words of the same 32 bytes, none of them padding
        // (`ConnSlot::_pad`); the caller guarantees the slot.
        unsafe {
            conntrack::store_words(
                slot.cast(),
                core::mem::transmute::<ConnSlot<[u8; 16]>, [u64; 4]>(entry),
            );
        }
    }

    #[inline(always)]
    fn ip(ctx: &XdpContext) -> Result<Headers<Self>, Counter> {
        parse::headers(ctx)
    }
    #[inline(always)]
    fn transport(ctx: &XdpContext, ip: &Headers<Self>) -> Result<Packet<Self>, Counter> {
        parse::transport(ctx, ip)
    }
    /// The unspecified and loopback addresses, IPv4-mapped ones (an IPv4
    /// client has its own family), link-local (never forwarded, RFC 4291)
    /// and multicast.
    #[inline(always)]
    fn martian(src: &[u8; 16]) -> bool {
        let [b0, b1, ..] = *src;
        let high =
            u64::from_be_bytes([src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7]]);
        let low = u64::from_be_bytes([
            src[8], src[9], src[10], src[11], src[12], src[13], src[14], src[15],
        ]);
        (high == 0 && (low <= 1 || low >> 32 == 0xffff))
            || b0 == 0xff
            || (b0 == 0xfe && b1 & 0xc0 == 0x80)
    }
    #[inline(always)]
    fn frag_key(pkt: &Packet<Self>) -> FragKey6 {
        FragKey6 {
            src: pkt.flow.src,
            dst: pkt.flow.dst,
            id: pkt.id,
            proto: pkt.flow.proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    unsafe fn rewrite(pkt: &Packet<Self>, side: Side, addr: [u8; 16], port: u16) {
        // SAFETY: the caller's guarantee.
        unsafe { nat::rewrite(pkt, side, addr, port) }
    }
    #[inline(always)]
    fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
        // SAFETY: both are sixteen valid bytes; the loads and stores are
        // the compiler's own words, whatever their alignment.
        unsafe {
            let words = mem::load_addr6::<0>(core::ptr::from_ref(src).cast());
            mem::store_addr6::<0>(core::ptr::from_mut(dst).cast(), words);
        }
    }
    #[inline(always)]
    unsafe fn rewrite_both(pkt: &Packet<Self>, src: ([u8; 16], u16), dst: ([u8; 16], u16)) {
        // SAFETY: the caller's guarantee.
        unsafe { nat::rewrite_both(pkt, src, dst) }
    }
    #[inline(always)]
    fn fib_query(params: &mut FibParams, pkt: &Packet<Self>, query: &Query<[u8; 16]>) {
        params.family = AF_INET6;
        // SAFETY: pkt.ip was bounds-checked by parse: the traffic class
        // and flow label, as the first word holds them (version masked).
        params.__bindgen_anon_2.flowinfo =
            unsafe { mem::load32::<0>(pkt.ip.cast()) } & u32::from_be(0x0fff_ffff);
        let words = |a: [u8; 16]| {
            // SAFETY: sixteen bytes are four words, in memory order.
            unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(a) }
        };
        params.__bindgen_anon_3.ipv6_src = words(query.src);
        params.__bindgen_anon_4.ipv6_dst = words(query.dst);
    }
    #[inline(always)]
    fn fib_nexthop(params: &FibParams) -> [u8; 16] {
        // SAFETY: the union's IPv6 member, which the FIB sets to the next
        // hop; four words are sixteen bytes.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(params.__bindgen_anon_4.ipv6_dst) }
    }
    /// The mark has room for a tag, not an address: the address goes to
    /// its slot of `lb_neigh6` (see `abi::NEIGH_MARK6_MAGIC`).
    #[inline(always)]
    unsafe fn slow_path(eth: *mut u8, ifindex: u32, nexthop: [u8; 16]) -> Verdict {
        let tag = neigh6_tag(&nexthop);
        let Some(slot) = maps::LB_NEIGH6.get_ptr_mut(tag & (NEIGH6_SLOTS - 1)) else {
            return Verdict::stopped(Counter::PassFibFailed);
        };
        // SAFETY: a slot of the array (a concurrent writer at worst makes
        // tc's tag check fail); the caller guarantees the Ethernet header,
        // of which the mark takes 12 bytes.
        unsafe {
            *slot = nexthop;
            mem::store32::<0>(eth, NEIGH_MARK6_MAGIC);
            mem::store32::<4>(eth, ifindex);
            mem::store32::<8>(eth, tag);
        }
        Verdict::new(aya_ebpf::bindings::xdp_action::XDP_PASS, Counter::SlowPathNeigh)
    }

    #[inline(always)]
    fn icmp(ctx: &XdpContext, ip: &Headers<Self>, _to_vip: bool) -> Result<Verdict, Counter> {
        // Neighbour discovery, echo and the rest are the kernel's.
        if !icmp::is_error(ctx, ip.ihl) {
            return Err(Counter::PassNotTcpUdp);
        }
        // SAFETY: the context is this program's; the call does not return
        // unless `lb_progs` holds no `lb_icmp6`.
        unsafe { maps::LB_PROGS.tail_call(ctx, icmp::ICMP_PROG) };
        Err(Counter::PassIcmpNotOurs)
    }
    #[inline(always)]
    fn tcp_reset(
        ctx: &XdpContext,
        _pkt: &Packet<Self>,
        counter: Counter,
        _here: Here,
    ) -> Result<Verdict, Counter> {
        // The frame is `lb_answer6`'s to parse again (see `answer`).
        let request = reject::Request { kind: reject::RESET, counter, ..NO_REQUEST };
        answer::request(ctx, request, reject::counter_for_silence(counter))
    }
    #[inline(always)]
    fn no_backend(ctx: &XdpContext, _pkt: &Packet<Self>, _here: Here) -> Result<Verdict, Counter> {
        let request = reject::Request { kind: reject::NO_BACKEND, ..NO_REQUEST };
        answer::request(ctx, request, Counter::DropNoBackend)
    }
    #[inline(always)]
    fn too_big(
        ctx: &XdpContext,
        _pkt: &Packet<Self>,
        vip: [u8; 16],
        mtu: u16,
        to: To,
        _here: Here,
    ) -> Result<Verdict, Counter> {
        let request = reject::Request {
            kind: reject::TOO_BIG,
            vip,
            mtu: u32::from(mtu),
            to_backend: u32::from(to == To::Backend),
            ..NO_REQUEST
        };
        answer::request(ctx, request, Counter::DropTooBig)
    }
    #[inline(always)]
    fn answer_apart(
        ctx: &XdpContext,
        kind: u32,
        counter: Counter,
        vip: [u8; 16],
        mtu: u16,
        to: To,
    ) -> Result<Verdict, Counter> {
        let to_backend = u32::from(to == To::Backend);
        let request = reject::Request { kind, counter, vip, mtu: u32::from(mtu), to_backend };
        answer::request(ctx, request, reject::failed_answer(kind, counter))
    }
    #[inline(always)]
    fn least_connections(service_id: u32, count: u32) -> u32 {
        lb_least_connections6(service_id, count)
    }
    #[inline(always)]
    fn within_limits(service_id: u32, id: u32, start: u32) -> u32 {
        lb_within_limits6(service_id, id, start)
    }
    #[inline(always)]
    fn persisted(service_id: u32, flags: u32, ticks: u32, src: [u8; 16]) -> u32 {
        let [high, low] = words(src);
        lb_persisted6(service_id, flags, ticks, high, low)
    }
    #[inline(always)]
    fn remember(service_id: u32, backend_id: u32, flags: u32, src: [u8; 16]) {
        let [high, low] = words(src);
        lb_remember6(service_id, backend_id, flags, high, low);
    }
    #[inline(always)]
    fn fnat_out(tcp_flags: u8, opening: bool) -> u32 {
        lb_fnat_out6(u32::from(tcp_flags), u32::from(opening))
    }
    #[inline(always)]
    fn fnat_back(tcp_flags: u8, seq: Option<u32>) -> u32 {
        lb_fnat_back6(u32::from(tcp_flags), u32::from(seq.is_some()), seq.unwrap_or(0))
    }
    #[inline(always)]
    fn allowed(service_id: u32, src: [u8; 16]) -> bool {
        let [high, low] = words(src);
        lb_allowed6(service_id, high, low) != 0
    }
}

/// An address as two native words (a global function takes scalars).
#[inline(always)]
fn words(addr: [u8; 16]) -> [u64; 2] {
    // SAFETY: sixteen bytes are two words, in memory order.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(addr) }
}

/// The address `words` made.
#[inline(always)]
fn address(high: u64, low: u64) -> [u8; 16] {
    // SAFETY: two words are sixteen bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([high, low]) }
}

/// `lc`'s pick for an IPv6 service: a global BPF function (see
/// `select::least_connections`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_least_connections6(service_id: u32, count: u32) -> u32 {
    select::least_connections::<V6>(service_id, count)
}

/// `max_conns` for an IPv6 service (see `lb_within_limits`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_within_limits6(service_id: u32, id: u32, start: u32) -> u32 {
    select::within_limits::<V6>(service_id, id, start)
}

/// A persistent IPv6 client's backend (see `lb_persisted`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_persisted6(
    service_id: u32,
    flags: u32,
    ticks: u32,
    high: u64,
    low: u64,
) -> u32 {
    crate::persist::persisted::<V6>(service_id, flags, ticks, address(high, low))
}

/// Records a persistent IPv6 client (see `lb_remember`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_remember6(
    service_id: u32,
    backend_id: u32,
    flags: u32,
    high: u64,
    low: u64,
) -> u32 {
    crate::persist::remember::<V6>(service_id, backend_id, flags, address(high, low))
}

/// An IPv6 full-NAT client's mapping (see `lb_fnat_out`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_fnat_out6(tcp_flags: u32, opening: u32) -> u32 {
    fullnat::map_out::<V6>(tcp_flags as u8, opening != 0)
}

/// An IPv6 full-NAT backend's reply's mapping (see `lb_fnat_back`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_fnat_back6(tcp_flags: u32, has_seq: u32, seq: u32) -> u32 {
    fullnat::map_back::<V6>(tcp_flags as u8, (has_seq != 0).then_some(seq))
}

/// Whether an IPv6 source is among a service's allowed sources (see
/// `lb_allowed`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_allowed6(service_id: u32, high: u64, low: u64) -> u32 {
    u32::from(crate::persist::allowed::<V6>(service_id, address(high, low)))
}
