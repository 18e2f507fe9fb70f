//! Full NAT (`lb_common::fullnat`): `lb_xdp` (`lb_xdp6`) places a client's
//! flow as for NAT (connection table, handshake record, scheduler), and
//! when its backend is a full-NAT one tail calls `lb_fnat` (`lb_fnat6`),
//! which finds or takes the flow's pool address and port and rewrites
//! both ends. A full-NAT backend's reply takes the same road: `lb_xdp`
//! knows the backend by its source, and `lb_fnat` finds the client by
//! the destination, the pool address and port.
//!
//! A program of its own, like `lb_answer6`: the port search and the
//! second rewrite add nothing to the stack or the verification of the
//! NAT paths, which are near BPF's 512 bytes. The mappings themselves
//! are kept by global functions (`lb_fnat_out`, `lb_fnat_back` and their
//! IPv6 twins), which exchange the flow and its mapping through this
//! CPU's `lb_fnat_work` slot: left in one body, the IPv6 program's
//! registers spilled a packet pointer in halves, which the verifier
//! refuses.
use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use lb_common::{
    abi::{
        BACKEND_DOWN, BACKEND_FULLNAT, BACKEND_IN_USE, Backend, CONN_SYN, CONN_UDP, Flow,
        PROTO_TCP, SVC_REJECT, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, next_state,
    },
    addr::Addr as _,
    counter::Counter,
    fullnat::{
        FnatFlow, FnatKey, FnatRev, SNAT_ADDRS_MAX, SNAT_PROBES, reclaimable, snat_port,
        snat_probes, snat_start,
    },
    trace::{TRACE_NEW_FLOW, TRACE_REPLY},
};

use crate::{
    Placed, Verdict,
    family::Family,
    fwd::{self, Hop, Query},
    handshake,
    maps::{LB_BE_STATS, LB_FNAT_REQ, LB_PROGS, LB_SVC_STATS},
    parse::{self, Frag, Packet},
    reject::{self, To},
    select::{self, Here},
};

/// The slots of `lb_fnat` and `lb_fnat6` in `lb_progs`.
pub const FULLNAT_PROG: u32 = 3;
pub const FULLNAT6_PROG: u32 = 4;

/// What `lb_xdp` asks `lb_fnat` to do (this CPU's slot of `lb_fnat_req`;
/// XDP does not nest on a CPU, so the slot is this packet's between the
/// two programs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request {
    /// 1: a client's packet, placed on `backend_id`; 0: a backend's reply.
    pub to_backend: u32,
    pub service_id: u32,
    pub backend_id: u32,
    /// The flow was placed by this packet (a client's packet only).
    pub new_flow: u32,
}

/// What `lb_fnat` and the mapping functions exchange (this CPU's slot of
/// `lb_fnat_work`, `lb_fnat_work6`). The keys and values the mapping
/// functions pass to the map helpers are built here too, not on the
/// stack: BPF's 512 bytes are shared by `lb_fnat`'s frame (with IPv4's
/// answers built in it) and theirs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Work<A> {
    /// In: the packet's flow as it arrived.
    pub flow: Flow<A>,
    /// Out: the packet's new source and destination.
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    /// In: the backend the packet is for or from; out: the backend and
    /// service of its mapping.
    pub backend_id: u32,
    pub service_id: u32,
    /// Scratch: a reverse mapping's key and value, a mapping, and another
    /// flow (a reply's client's; a port's holder's).
    pub key: FnatKey<A>,
    pub rev: FnatRev<A>,
    pub fwd: FnatFlow<A>,
    pub other: Flow<A>,
}

/// What a mapping function answers.
pub const MAPPED: u32 = 0;
/// No mapping, and the packet may not open one.
pub const UNMAPPED: u32 = 1;
/// No port left (or the maps are full).
pub const EXHAUSTED: u32 = 2;
/// The backend cannot take the flow (DOWN, removed).
pub const NO_BACKEND: u32 = 3;

/// Leaves `request` for `lb_fnat` (`lb_fnat6`) and tail calls it. Returns
/// only if the call failed (no program in the slot): a full-NAT backend
/// cannot be reached without it.
#[inline(always)]
pub fn request<F: Family>(ctx: &XdpContext, request: Request) -> Result<Verdict, Counter> {
    let Some(slot) = LB_FNAT_REQ.get_ptr_mut(0) else {
        return Err(Counter::DropNoBackend);
    };
    // SAFETY: this CPU's slot; XDP does not nest on a CPU. The tail call
    // does not return unless it failed.
    unsafe {
        *slot = request;
        LB_PROGS.tail_call(ctx, F::FULLNAT_PROG);
    }
    Err(Counter::DropNoBackend)
}

/// `lb_fnat`: this CPU's request, on the frame as `lb_xdp` left it.
#[inline(always)]
pub fn run<F: Family>(ctx: &XdpContext) -> Result<Verdict, Counter> {
    let request = *LB_FNAT_REQ.get(0).ok_or(Counter::DropNoBackend)?;
    let here = Here::read(ctx);
    let ip = F::ip(ctx)?;
    let pkt = F::transport(ctx, &ip)?;
    // A fragment's later pieces carry no ports to translate them by.
    if pkt.frag != Frag::Whole {
        return Err(Counter::DropFragment);
    }
    let work = F::fnat_work().get_ptr_mut(0).ok_or(Counter::DropNoBackend)?;
    // SAFETY: this CPU's slot; XDP does not nest on a CPU.
    unsafe {
        (*work).flow = pkt.flow;
        (*work).backend_id = request.backend_id;
        (*work).service_id = request.service_id;
    }
    if request.to_backend != 0 {
        to_backend(ctx, &pkt, request.new_flow != 0, work, here)
    } else {
        to_client(ctx, &pkt, request.service_id, work, here)
    }
}

/// A client's packet: to its backend, from its pool address and port.
#[inline(always)]
fn to_backend<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    new_flow: bool,
    work: *mut Work<F::Addr>,
    here: Here,
) -> Result<Verdict, Counter> {
    let tcp = pkt.flow.proto == PROTO_TCP;
    let opening = !tcp || pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    match F::fnat_out(pkt.tcp_flags, opening) {
        MAPPED => {}
        UNMAPPED => {
            let counter = Counter::RstFullnatUnknown;
            return F::answer_apart(ctx, reject::RESET, counter, pkt.flow.dst, 0, To::Client);
        }
        EXHAUSTED => {
            // Answered as the service's `on_no_backend` says (looked up
            // again: only a refusal pays for it).
            let rejects =
                select::service::<F>(&pkt.flow).is_some_and(|s| s.flags & SVC_REJECT != 0);
            if !rejects {
                return Err(Counter::DropSnatExhausted);
            }
            let counter = Counter::RejectSnatExhausted;
            return F::answer_apart(ctx, reject::EXHAUSTED, counter, pkt.flow.dst, 0, To::Client);
        }
        _ => return Err(Counter::DropNoBackend),
    }
    // SAFETY: this CPU's slot, as `fnat_out` left it.
    let mapped = unsafe { &*work };
    let (service_id, backend_id) = (mapped.service_id, mapped.backend_id);
    let vip = pkt.flow.dst;
    let mut verdict = send(ctx, pkt, mapped, (vip, To::Client), here)?;
    verdict.placed =
        Placed { service_id, backend_id, flags: if new_flow { TRACE_NEW_FLOW } else { 0 } };
    select::account(&LB_SVC_STATS, service_id, pkt.tot_len, true, new_flow);
    select::account(&LB_BE_STATS, backend_id, pkt.tot_len, true, new_flow);
    Ok(verdict)
}

/// A full-NAT backend's reply: to its client, from the VIP. A packet to a
/// pool address and port that no mapping of this backend holds is not
/// ours (the load balancer's own connections, its health checks among
/// them, use the same addresses): the kernel's (`unmapped`). `service_id`:
/// the service the backend is listed under (`lb_reals`).
#[inline(always)]
fn to_client<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    service_id: u32,
    work: *mut Work<F::Addr>,
    here: Here,
) -> Result<Verdict, Counter> {
    if pkt.ttl <= 1 {
        // The kernel answers (time exceeded); nothing of the flow moves.
        return Err(Counter::PassTtlExpired);
    }
    // The SYN-ACK's sequence number, which the client's ACK must
    // acknowledge (`handshake`).
    let seq = match parse::tcp_seq_ack(ctx, pkt) {
        Some((seq, _)) if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => Some(seq),
        _ => None,
    };
    if F::fnat_back(pkt.tcp_flags, seq) != MAPPED {
        return Err(unmapped::<F>(service_id, pkt.flow.dport));
    }
    // SAFETY: this CPU's slot, as `fnat_back` left it.
    let mapped = unsafe { &*work };
    let (service_id, backend_id) = (mapped.service_id, mapped.backend_id);
    let pool = pkt.flow.dst;
    let mut verdict = send(ctx, pkt, mapped, (pool, To::Backend), here)?;
    verdict.placed = Placed { service_id, backend_id, flags: TRACE_REPLY };
    select::account(&LB_SVC_STATS, service_id, pkt.tot_len, false, false);
    select::account(&LB_BE_STATS, backend_id, pkt.tot_len, false, false);
    Ok(verdict)
}

/// What a backend's packet to destination port `port` that no mapping
/// holds counts as. Outside the port range of the pool of `service_id`
/// (`snat_ports`) no flow can hold it: the host's own traffic (replies
/// to its health checks, its own connections from a pool address),
/// counted as any packet not ours is (`pass_not_service`). In the range,
/// `pass_fullnat_unknown`: a flow's mapping expired, or a stray packet.
/// Asked only after the lookup failed: a flow that holds a port outside
/// a range narrowed since is still translated.
#[inline(always)]
fn unmapped<F: Family>(service_id: u32, port: u16) -> Counter {
    let in_range = F::snat_pools()
        .get(service_id)
        .is_some_and(|pool| port.wrapping_sub(pool.port_min) < pool.port_count);
    if in_range { Counter::PassFullnatUnknown } else { Counter::PassNotService }
}

/// Rewrites the packet to `mapped`'s source and destination and sends it
/// to its next hop; one too big for it is answered from `too_big`'s
/// address to its sender (`To`).
#[inline(always)]
fn send<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    mapped: &Work<F::Addr>,
    too_big: (F::Addr, To),
    here: Here,
) -> Result<Verdict, Counter> {
    let query = Query {
        src: mapped.src,
        dst: mapped.dst,
        sport: mapped.sport,
        dport: mapped.dport,
        direct: false,
    };
    let hop = match fwd::next_hop(ctx, pkt, &query, here)? {
        Hop::TooBig { mtu } => {
            let counter = Counter::FragNeeded;
            return F::answer_apart(ctx, reject::TOO_BIG, counter, too_big.0, mtu, too_big.1);
        }
        hop => hop,
    };
    // SAFETY: pkt comes from parse on this frame, a whole packet, and
    // nothing has resized the frame since.
    unsafe {
        F::rewrite_both(pkt, (mapped.src, mapped.sport), (mapped.dst, mapped.dport));
        Ok(fwd::send::<F>(pkt.eth.cast(), hop, here))
    }
}

/// The mapping of the client's flow in this CPU's `Work` (placed on its
/// `backend_id`), found or taken; a TCP packet with `tcp_flags` that
/// moves its state. `opening`: the packet may take a mapping (a SYN, any
/// UDP datagram). Writes the packet's new ends into the `Work`. Each
/// family calls it from a global function (`lb_fnat_out`, `lb_fnat_out6`).
#[inline(always)]
// The map helpers get pointers into the `Work` slot: a copy would go to the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn map_out<F: Family>(tcp_flags: u8, opening: bool) -> u32 {
    let Some(work) = F::fnat_work().get_ptr_mut(0) else {
        return NO_BACKEND;
    };
    // SAFETY: this CPU's slot; XDP does not nest on a CPU.
    let work = unsafe { &mut *work };
    let (service_id, mut backend_id) = (work.service_id, work.backend_id);
    let tcp = work.flow.proto == PROTO_TCP;
    let now = select::epoch_now() as u32;
    let mut mapped = false;
    if let Some(entry) = F::fnat().get_ptr_mut(&work.flow) {
        // SAFETY: a pointer into the map's value, read in place.
        let held = unsafe { &mut *entry };
        // A flow keeps the backend its port is on while that backend can
        // have it (its id still names the endpoint the port was taken
        // for): its connection is there (the connection table may have
        // lost the flow, and the scheduler placed it elsewhere). Whatever
        // the packet: a SYN on its ports, even after a FIN or a RST, which
        // anyone can forge, does not move it (IPVS keeps a connection's
        // backend so too); a new connection on the same ports goes to the
        // same backend from the same port, as a client's does to a server.
        let same_endpoint = F::backends()
            .get(held.backend_id)
            .is_some_and(|b| b.addr().same(&held.backend) && b.port == held.backend_port);
        if held.backend_id != backend_id
            && same_endpoint
            && usable::<F>(held.backend_id, service_id, &work.flow).is_some()
        {
            // The flow's handshake record follows (it names the backend
            // `lb_xdp` chose), so the SYN-ACK proves the client.
            if opening && tcp {
                handshake::follow::<F>(&work.flow, backend_id, held.backend_id, Here::clock());
            }
            backend_id = held.backend_id;
        }
        if held.backend_id == backend_id && same_endpoint {
            held.state = next_state(held.state, tcp_flags, true).unwrap_or(CONN_SYN);
            held.last_seen = now;
            F::copy_addr(&mut work.src, &held.pool);
            work.sport = held.pool_port;
            mapped = true;
        } else {
            // Its backend can no longer have it (DOWN, drained away from
            // a UDP flow placed again, removed): the flow takes a new
            // port. The old one stays its reverse entry's, which the
            // controller removes once it has been quiet long enough (the
            // old backend may still send to it).
            let _ = F::fnat().remove(&work.flow);
        }
    }
    let Some(backend) = usable::<F>(backend_id, service_id, &work.flow) else {
        return NO_BACKEND;
    };
    if !mapped {
        // Without a mapping only a flow's first packet opens one: any
        // other TCP segment belongs to a connection the backend never had
        // from us (expired, or met mid-way), which it would reset anyway.
        if !opening {
            return UNMAPPED;
        }
        if !take_port::<F>(work, backend, backend_id, now) {
            return EXHAUSTED;
        }
    }
    F::copy_addr(&mut work.dst, &backend.addr);
    work.dport = backend.port;
    work.backend_id = backend_id;
    MAPPED
}

/// The backend `id` if it serves the flow's service and is not DOWN.
#[inline(always)]
fn usable<F: Family>(
    id: u32,
    service_id: u32,
    flow: &Flow<F::Addr>,
) -> Option<&'static Backend<F::Addr>> {
    select::live_backend::<F>(id, service_id, flow).filter(|b| b.flags & BACKEND_DOWN == 0)
}

/// Takes a pool address and port for the new flow in `work` on `backend`
/// (into `work.src`, `work.sport`): the first port from the flow's hash
/// that no mapping of the same pool address, backend and protocol holds
/// (or whose mapping never got past its SYN, `reclaimable`), up to
/// `SNAT_PROBES` tries. False when every port tried is taken or the maps
/// are full.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn take_port<F: Family>(
    work: &mut Work<F::Addr>,
    backend: &Backend<F::Addr>,
    backend_id: u32,
    now: u32,
) -> bool {
    let service_id = work.service_id;
    let Some(pool) = F::snat_pools().get(service_id) else {
        return false;
    };
    if pool.count == 0 {
        return false;
    }
    let (hashed, start) = snat_start(&work.flow, pool);
    // The load balancer's own address toward this backend, when the
    // controller named one (the default pool); else the flow's hash.
    let named = u32::from(backend.snat_addr);
    let index = if named != 0 && named <= pool.count { named - 1 } else { hashed };
    let Some(&addr) = pool.addrs.get(index as usize & (SNAT_ADDRS_MAX - 1)) else {
        return false;
    };
    let proto = work.flow.proto;
    set_key::<F>(&mut work.key, (&backend.addr, backend.port), (&addr, 0));
    work.key.proto = proto;
    F::copy_addr(&mut work.rev.client, &work.flow.src);
    F::copy_addr(&mut work.rev.vip, &work.flow.dst);
    work.rev.client_port = work.flow.sport;
    work.rev.vport = work.flow.dport;
    work.rev.backend_id = backend_id;
    work.rev.service_id = service_id;
    work.rev.last_seen = now;
    let probes = snat_probes(pool);
    let mut probe = 0;
    let mut taken = false;
    while probe < SNAT_PROBES && probe < probes {
        work.key.pool_port = snat_port(pool, start, probe);
        if F::fnat_rev().insert(&work.key, &work.rev, u64::from(BPF_NOEXIST)).is_ok()
            || reclaim::<F>(work, now)
        {
            taken = true;
            break;
        }
        probe += 1;
    }
    if !taken {
        return false;
    }
    work.fwd.pool = addr;
    F::copy_addr(&mut work.fwd.backend, &backend.addr);
    work.fwd.pool_port = work.key.pool_port;
    work.fwd.backend_port = backend.port;
    work.fwd.backend_id = backend_id;
    work.fwd.last_seen = now;
    // A UDP flow too starts as unanswered (`CONN_SYN`): it becomes
    // `CONN_UDP` when its backend answers (`map_back`); until then it
    // lives the SYN state's timeout, and its port may be reclaimed.
    work.fwd.state = CONN_SYN;
    if F::fnat().insert(&work.flow, &work.fwd, 0).is_err() {
        // The flow map is full: the port goes back.
        let _ = F::fnat_rev().remove(&work.key);
        return false;
    }
    work.src = addr;
    work.sport = work.key.pool_port;
    true
}

/// Takes `work.key`'s port from the flow that holds it if that flow never
/// got past its SYN (or its backend never answered its datagram) long
/// enough ago (`lb_common::fullnat::reclaimable`), on both sides: its
/// mapping is removed and `work.rev` written in place of its reverse entry.
/// The port is claimed by moving the reverse entry's clock from the stale
/// time read to now in one compare-and-exchange: of two CPUs that would
/// reclaim one port at once, one wins, the other finds it fresh.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn reclaim<F: Family>(work: &mut Work<F::Addr>, now: u32) -> bool {
    let Some(holder) = F::fnat_rev().get_ptr_mut(&work.key) else {
        return false;
    };
    // SAFETY: a pointer into the map's value, read in place.
    let holder = unsafe { &mut *holder };
    // The word the claim compares, as read (a backend retransmitting its
    // SYN-ACK to a forged client refreshes it; only the client's side
    // says whether the flow got anywhere).
    let backend_seen = holder.last_seen;
    set_flow::<F>(&mut work.other, holder, work.key.proto);
    // Its flow's mapping, if it is this port's and never got further.
    let Some(m) = F::fnat().get_ptr(&work.other) else {
        // Being removed (or removed): the controller frees the port.
        return false;
    };
    // SAFETY: as above.
    let m = unsafe { &*m };
    let this_port = m.pool_port == work.key.pool_port
        && m.backend_port == work.key.backend_port
        && m.pool.same(&work.key.pool)
        && m.backend.same(&work.key.backend);
    if !this_port || !reclaimable(m.state, m.last_seen, now) {
        return false;
    }
    // The claim: (service id, clock) as one word (8-aligned in a map's
    // value: lb-common asserts the layout), the clock moved from what was
    // read; little-endian, as BPF here is.
    // 8-aligned: lb-common asserts the field's offset, and a hash map's
    // values start 8-aligned.
    #[allow(clippy::cast_ptr_alignment)]
    let claim = (&raw mut holder.service_id).cast::<u64>();
    let read = u64::from(holder.service_id) | (u64::from(backend_seen) << 32);
    let claimed = (read & u64::from(u32::MAX)) | (u64::from(now) << 32);
    // SAFETY: the value's own word, aligned (above).
    if unsafe { compare_exchange(claim, read, claimed) } != read {
        return false;
    }
    let _ = F::fnat().remove(&work.other);
    // Ours now: the new client in place (a reply to the old one meanwhile
    // would read a mix, about a flow that never went anywhere).
    F::copy_addr(&mut holder.client, &work.rev.client);
    F::copy_addr(&mut holder.vip, &work.rev.vip);
    holder.client_port = work.rev.client_port;
    holder.vport = work.rev.vport;
    holder.backend_id = work.rev.backend_id;
    holder.service_id = work.rev.service_id;
    true
}

/// `*word`: `new` if it held `old`, atomically (BPF_CMPXCHG, kernel
/// 5.12+, said as the instruction: the object is built for cpu v1);
/// returns what it held.
///
/// # Safety
/// `word` is a valid, 8-aligned u64 of a map's value.
#[inline(always)]
unsafe fn compare_exchange(word: *mut u64, old: u64, new: u64) -> u64 {
    let mut held = old;
    // SAFETY: the caller's guarantee; the instruction touches that word only.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({word} + 0, r0, {new})",
            word = in(reg) word,
            new = in(reg) new,
            inout("r0") held,
        );
    }
    held
}

/// The client of the reply in this CPU's `Work` (from a full-NAT
/// backend's endpoint, to a pool address and port), if a mapping of a
/// backend on that endpoint holds it: its state moves with `tcp_flags`, a SYN-ACK's
/// sequence number `seq` goes to the flow's handshake record, and the
/// packet's new ends go into the `Work`. Each family calls it from a
/// global function (`lb_fnat_back`, `lb_fnat_back6`).
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn map_back<F: Family>(tcp_flags: u8, seq: Option<u32>) -> u32 {
    let Some(work) = F::fnat_work().get_ptr_mut(0) else {
        return UNMAPPED;
    };
    // SAFETY: this CPU's slot; XDP does not nest on a CPU.
    let work = unsafe { &mut *work };
    let proto = work.flow.proto;
    let flow = &work.flow;
    set_key::<F>(&mut work.key, (&flow.src, flow.sport), (&flow.dst, flow.dport));
    work.key.proto = proto;
    let Some(entry) = F::fnat_rev().get_ptr_mut(&work.key) else {
        return UNMAPPED;
    };
    // SAFETY: a pointer into the map's value, read in place.
    let mapping = unsafe { &mut *entry };
    // The backend the flow was placed on, still in use: a backend endpoint
    // several full-NAT services share is found in `lb_reals` under one of
    // their ids, while the mapping knows its own (and its key the endpoint).
    let ours = F::backends().get(mapping.backend_id).is_some_and(|b| {
        b.flags & (BACKEND_IN_USE | BACKEND_FULLNAT) == BACKEND_IN_USE | BACKEND_FULLNAT
            && b.service_id == mapping.service_id
            && b.addr().same(&work.flow.src)
            && b.port == work.flow.sport
    });
    if !ours {
        return UNMAPPED;
    }
    let here = Here::clock();
    mapping.last_seen = here.epoch as u32;
    set_flow::<F>(&mut work.other, mapping, proto);
    let (backend_id, service_id) = (mapping.backend_id, mapping.service_id);
    if let Some(seq) = seq {
        handshake::record_answer::<F>(&work.other, backend_id, seq, here);
    }
    let closing = proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if closing {
        select::closes::<F>(&work.other, backend_id, service_id, tcp_flags, here);
    }
    if closing || proto != PROTO_TCP {
        answered::<F>(work, tcp_flags, here.epoch as u32);
    }
    work.backend_id = backend_id;
    F::copy_addr(&mut work.src, &mapping.vip);
    work.sport = mapping.vport;
    F::copy_addr(&mut work.dst, &mapping.client);
    work.dport = mapping.client_port;
    work.service_id = service_id;
    MAPPED
}

/// The backend of the reply in `work` spoke (`work.key` its reverse key,
/// `work.other` its client's flow): the flow's mapping, if it is still
/// this port's, takes the state the reply moves it to (a FIN, a RST), and
/// a UDP flow becomes answered (`CONN_UDP`).
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn answered<F: Family>(work: &Work<F::Addr>, tcp_flags: u8, now: u32) {
    let Some(forward) = F::fnat().get_ptr_mut(&work.other) else {
        return;
    };
    // SAFETY: a pointer into the map's value.
    let forward = unsafe { &mut *forward };
    let this_port = forward.pool_port == work.key.pool_port
        && forward.backend_port == work.key.backend_port
        && forward.pool.same(&work.key.pool)
        && forward.backend.same(&work.key.backend);
    if !this_port {
        return;
    }
    if work.flow.proto != PROTO_TCP {
        forward.state = CONN_UDP;
    } else if let Some(state) = next_state(forward.state, tcp_flags, false) {
        forward.state = state;
        forward.last_seen = now;
    }
}

/// Writes a reverse key's ends field by field, each address as words
/// (`Family::copy_addr`): between two map values (this CPU's `Work` and
/// a mapping, or the `Work` itself) a whole copy is a call of `memmove`,
/// which BPF has not.
#[inline(always)]
fn set_key<F: Family>(key: &mut FnatKey<F::Addr>, backend: (&F::Addr, u16), pool: (&F::Addr, u16)) {
    F::copy_addr(&mut key.backend, backend.0);
    key.backend_port = backend.1;
    F::copy_addr(&mut key.pool, pool.0);
    key.pool_port = pool.1;
}

/// Writes the client's flow of `mapping` (of protocol `proto`) into
/// `flow`, as `set_key` does.
#[inline(always)]
fn set_flow<F: Family>(flow: &mut Flow<F::Addr>, mapping: &FnatRev<F::Addr>, proto: u8) {
    flow.proto = proto;
    F::copy_addr(&mut flow.src, &mapping.client);
    flow.sport = mapping.client_port;
    F::copy_addr(&mut flow.dst, &mapping.vip);
    flow.dport = mapping.vport;
}
