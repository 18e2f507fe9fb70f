//! Forwarding like a router: a FIB lookup for the rewritten packet, then
//! XDP_TX or XDP_REDIRECT; when the kernel has no neighbour entry yet, a slow
//! path through tc (`lb_neigh`) that resolves it.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use lb_common::{
    abi::{NEIGH_META_MAGIC, NeighMeta},
    counter::Counter,
};

use crate::{
    Verdict,
    maps::LB_TX_PORTS,
    nat::{self, Side},
    parse::Packet,
};

const AF_INET: u8 = 2;

/// Where the packet goes after the rewrite.
pub struct Target {
    pub side: Side,
    pub addr: [u8; 4],
    pub port: u16,
}

/// Looks up the next hop of the packet as it will be after the rewrite, and
/// only then rewrites it: a packet the FIB cannot forward is passed untouched.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, target: &Target) -> Result<Verdict, Counter> {
    let ingress = ctx.ingress_ifindex() as u32;
    let (src, dst, sport, dport) = match target.side {
        Side::Destination => (pkt.flow.src, target.addr, pkt.flow.sport, target.port),
        Side::Source => (target.addr, pkt.flow.dst, target.port, pkt.flow.dport),
    };
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.flow.proto;
    params.sport = sport.to_be();
    params.dport = dport.to_be();
    params.__bindgen_anon_1.tot_len = pkt.tot_len;
    params.ifindex = ingress;
    // SAFETY: pkt.ip was bounds-checked by parse.
    params.__bindgen_anon_2.tos = unsafe { (*pkt.ip).tos };
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);

    // SAFETY: params is a live, correctly sized bpf_fib_lookup.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &raw mut params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    let rc = rc as u32;
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return Err(Counter::PassFibFailed);
    }
    // SAFETY: pkt comes from parse on this frame, is not a fragment, and
    // nothing has resized the frame since.
    unsafe { nat::rewrite(pkt, target.side, target.addr, target.port) };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        return slow_path(ctx, params.ifindex);
    }
    // SAFETY: pkt.eth was bounds-checked by parse.
    unsafe {
        (*pkt.eth).src = params.smac;
        (*pkt.eth).dst = params.dmac;
    }
    if params.ifindex == ingress {
        return Ok(Verdict {
            action: xdp_action::XDP_TX,
            counter: Counter::Tx,
        });
    }
    match LB_TX_PORTS.redirect(params.ifindex, 0) {
        Ok(action) => Ok(Verdict {
            action,
            counter: Counter::Redirect,
        }),
        // The egress interface is not one of ours: let tc send it.
        Err(_) => slow_path(ctx, params.ifindex),
    }
}

/// Hands a rewritten packet to tc ingress (`lb_neigh`) with metadata naming
/// the egress interface; `bpf_redirect_neigh()` there resolves the next hop.
#[inline(always)]
fn slow_path(ctx: &XdpContext, ifindex: u32) -> Result<Verdict, Counter> {
    let delta = size_of::<NeighMeta>() as i32;
    // SAFETY: grows the metadata area in front of the frame; pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -delta) } != 0 {
        return Err(Counter::DropNoMetadata);
    }
    let meta = ctx.metadata();
    if meta + size_of::<NeighMeta>() > ctx.data() {
        return Err(Counter::DropNoMetadata);
    }
    // SAFETY: bounds checked just above.
    unsafe {
        (meta as *mut NeighMeta).write_unaligned(NeighMeta {
            magic: NEIGH_META_MAGIC,
            ifindex,
        })
    };
    Ok(Verdict {
        action: xdp_action::XDP_PASS,
        counter: Counter::SlowPathNeigh,
    })
}
