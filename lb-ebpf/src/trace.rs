//! The packet trace (`lb-ctl trace`). Off, it costs each program a read of
//! `lb_trace_conf`'s `on` word and a branch where it starts and where it
//! counts its verdict (see `traced` for why not one kept read). On, the
//! entry program
//! copies the packet's tuple as it arrived into this CPU's scratch event
//! (`capture`), before anything rewrites it; the program that decides
//! (the entry program, or the IPv6 one it tail called) adds the decision
//! and sends the event through the `lb_trace` ring buffer (`emit`) if it
//! passes the filter and the CPU's rate limit. Both are global functions:
//! the verifier checks each once, on its own, and the programs that call
//! them see one call each, not their paths. The event never touches the
//! stack: it is built in the per-CPU map and copied from there.
use aya_ebpf::{
    bindings::xdp_md,
    btf_maps::{Array, PerCpuArray, RingBuf},
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    abi::{PROTO_TCP, PROTO_UDP},
    counter::Kind,
    trace::{
        TRACE_CLIENT, TRACE_DROPS_ONLY, TRACE_PORTS, TRACE_RING_BYTES, TraceConf, TraceCpu,
        TraceEvent, client_matches,
    },
};

use crate::{
    Verdict,
    parse::{ETH_LEN, ptr_at},
    select,
};

/// Slot 0: whether (and what) to trace; the controller writes it.
#[btf_map(name = "lb_trace_conf")]
pub static LB_TRACE_CONF: Array<TraceConf, 1> = Array::new();

/// Slot 0, per CPU: the event being built, the rate limit, the losses.
#[btf_map(name = "lb_trace_cpu")]
pub static LB_TRACE_CPU: PerCpuArray<TraceCpu, 1> = PerCpuArray::new();

/// The events, to the controller (its only reader).
#[btf_map(name = "lb_trace")]
pub static LB_TRACE: RingBuf<TraceEvent, { TRACE_RING_BYTES as usize }> = RingBuf::new();

const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPV6_FRAGMENT: u8 = 44;
/// `bpf_ringbuf_output`'s flag: do not wake the reader.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// In `lb_trace_emit`'s `decision`: the counter in the low 16 bits, the
/// event's flags in the next 8, and this bit: the packet was dropped.
const DROPPED: u32 = 1 << 24;

/// Whether the trace is on: all a packet pays for the trace while it is off.
#[inline(always)]
pub fn on() -> bool {
    LB_TRACE_CONF.get(0).is_some_and(|conf| conf.on != 0)
}

/// Copies the tuple of the frame in `ctx` into this CPU's event, as it
/// arrived: the program that decides adds the decision (`emit`).
#[inline(always)]
pub fn capture(ctx: &XdpContext) {
    lb_trace_capture(ctx.ctx);
}

/// The decision on the packet `capture` saw, sent if the filter and the
/// rate limit let it.
#[inline(always)]
pub fn emit(ctx: &XdpContext, verdict: &Verdict) {
    let placed = verdict.placed;
    let dropped = if verdict.counter.kind() == Kind::Dropped { DROPPED } else { 0 };
    // Three arguments, not five: fewer values to keep across its map
    // lookups, so its frame (which adds to the caller's) stays small.
    lb_trace_emit(
        ctx.ctx,
        u64::from(placed.service_id) << 32 | u64::from(placed.backend_id),
        verdict.counter as u32 | u32::from(placed.flags) << 16 | dropped,
    );
}

/// `capture`, a global function (see the module's comment). The client
/// filter runs here, on the addresses as they arrived: a packet of another
/// client leaves its CPU's event unclaimed (interface 0), and `emit` stops
/// at that.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_trace_capture(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let (Some(conf), Some(cpu)) = (LB_TRACE_CONF.get(0), LB_TRACE_CPU.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: this CPU's slot; XDP does not nest on a CPU.
    let event = unsafe { &mut (*cpu).event };
    event.ifindex = 0;
    event.family = 0;
    event.flags = 0;
    event.proto = 0;
    (event.sport, event.dport, event.tcp_flags) = (0, 0, 0);
    let Ok(ethertype) = ptr_at::<[u8; 2]>(&ctx, 12) else {
        return 0;
    };
    // SAFETY: bounds checked by ptr_at, here and below.
    let transport = match unsafe { *ethertype } {
        ETH_P_IPV4 => ipv4(&ctx, event),
        ETH_P_IPV6 => ipv6(&ctx, event),
        _ => None,
    };
    if conf.flags & TRACE_CLIENT != 0
        && !client_matches(conf, event.family, &event.src)
        && !client_matches(conf, event.family, &event.dst)
    {
        return 0;
    }
    event.ifindex = ctx.ingress_ifindex() as u32;
    // Ports only where there are ports: ICMP's first words are its type,
    // code and checksum.
    if let Some(offset) = transport
        && (event.proto == PROTO_TCP || event.proto == PROTO_UDP)
        && let Ok(ports) = ptr_at::<[u8; 4]>(&ctx, offset)
    {
        // SAFETY: as above.
        let [s0, s1, d0, d1] = unsafe { *ports };
        event.sport = u16::from_be_bytes([s0, s1]);
        event.dport = u16::from_be_bytes([d0, d1]);
        event.flags = TRACE_PORTS;
        if event.proto == PROTO_TCP
            && let Ok(flags) = ptr_at::<u8>(&ctx, offset + 13)
        {
            // SAFETY: as above.
            event.tcp_flags = unsafe { *flags };
        }
    }
    0
}

/// The IPv4 header's addresses and protocol; the transport header's offset
/// when the packet carries one (not a later fragment).
#[inline(always)]
fn ipv4(ctx: &XdpContext, event: &mut TraceEvent) -> Option<usize> {
    let ip = ptr_at::<[u8; 20]>(ctx, ETH_LEN).ok()?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    event.family = 4;
    event.proto = ip[9];
    event.src[..4].copy_from_slice(&ip[12..16]);
    event.dst[..4].copy_from_slice(&ip[16..20]);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    (ihl >= 20 && !later_fragment).then_some(ETH_LEN + ihl)
}

/// The IPv6 header's addresses and protocol (after a fragment header, the
/// one extension a client's packet to us plausibly has); the transport
/// header's offset when it follows at once.
#[inline(always)]
fn ipv6(ctx: &XdpContext, event: &mut TraceEvent) -> Option<usize> {
    let ip = ptr_at::<[u8; 40]>(ctx, ETH_LEN).ok()?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    event.family = 6;
    event.proto = ip[6];
    event.src.copy_from_slice(&ip[8..24]);
    event.dst.copy_from_slice(&ip[24..40]);
    if event.proto != IPV6_FRAGMENT {
        return Some(ETH_LEN + 40);
    }
    let frag = ptr_at::<[u8; 8]>(ctx, ETH_LEN + 40).ok()?;
    // SAFETY: as above.
    let frag = unsafe { &*frag };
    event.proto = frag[0];
    let later_fragment = u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0;
    (!later_fragment).then_some(ETH_LEN + 48)
}

/// `emit`, a global function (see the module's comment).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_trace_emit(ctx: *mut xdp_md, ids: u64, decision: u32) -> u32 {
    let ifindex = XdpContext::new(ctx).ingress_ifindex() as u32;
    let Some(cpu) = LB_TRACE_CPU.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; XDP does not nest on a CPU.
    let cpu = unsafe { &mut *cpu };
    let event = &mut cpu.event;
    // Not claimed by this packet's capture: another client's (interface 0),
    // a capture already sent (see below), or another interface's. Nothing
    // to say.
    if event.ifindex != ifindex {
        return 0;
    }
    send(cpu, ids, decision);
    // Consumed: a packet whose programs saw the trace go on between its
    // capture point and its verdict (`lb_xdp` off, `lb_xdp6` on) finds no
    // claimed event, rather than the last one captured.
    cpu.event.ifindex = 0;
    0
}

/// The captured event with its decision, to the ring buffer if the
/// filter and this CPU's rate limit let it.
#[inline(always)]
fn send(cpu: &mut TraceCpu, ids: u64, decision: u32) {
    let event = &mut cpu.event;
    // Written before the filter looks (a filtered event is never sent, and
    // the next capture starts afresh): the arguments need not be kept.
    event.counter = decision & 0xffff;
    event.service_id = (ids >> 32) as u32;
    event.backend_id = ids as u32;
    event.flags |= (decision >> 16) as u8;
    let dropped = decision & DROPPED != 0;
    let Some(conf) = LB_TRACE_CONF.get(0) else {
        return;
    };
    if conf.flags & TRACE_DROPS_ONLY != 0 && !dropped {
        return;
    }
    let per_tick = conf.events_per_tick;
    let now = select::epoch_now();
    if cpu.epoch != now {
        cpu.epoch = now;
        cpu.sent = 0;
    }
    if cpu.sent >= per_tick {
        cpu.rate_limited += 1;
        return;
    }
    cpu.sent += 1;
    // Copied from the map by reference: by value it would go through the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    // No wakeup: the controller drains the ring on its own clock (every
    // 100 ms), rather than each event waking it (measured: microseconds an
    // event, most of them in the wakeup).
    if LB_TRACE.output(&cpu.event, BPF_RB_NO_WAKEUP).is_err() {
        cpu.ring_full += 1;
    }
}
