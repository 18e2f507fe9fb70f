//! A flow's life before the connection table: a SYN (a UDP flow's first
//! datagram) is placed by the scheduler and leaves a record in
//! `lb_handshakes`, a fixed array, instead of a table entry. The flow's
//! next client packet finds the record, goes to the same backend, and is
//! recorded in the table only if it proves its client real:
//!
//! - TCP to a NAT backend: the ACK acknowledges the backend's SYN-ACK
//!   (whose sequence number the reply path stores in the record), which a
//!   forged source never sees. A flood of forged SYNs, each followed by an
//!   ACK, therefore reaches neither the table nor its idle connections:
//!   each ACK goes to the backend (which resets it) and is not recorded.
//! - TCP to a direct-routing backend: the SYN-ACK does not pass here, so
//!   any ACK of a flow whose SYN was seen is recorded.
//! - UDP: a second datagram of the flow is recorded; a one-datagram
//!   exchange (a DNS query) leaves only the record.
//!
//! The record keeps the SYN's backend for its ACK whatever changes in
//! between (the table rebuilt, the backend drained, the next `rr` turn); a
//! record overwritten first (another flow's SYN in the same slot) leaves
//! the ACK to be placed again, as a packet met mid-way.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{
        BACKEND_DOWN, BACKEND_DSR, CONN_CLOSING, CONN_ESTABLISHED, CONN_SYN, CONN_UDP, Conn, Flow,
        FlowCacheEntry, HANDSHAKE_ACK_WINDOW, HANDSHAKE_ANSWERED, HANDSHAKE_PERSIST,
        HANDSHAKE_PROOF_SYN_SEEN, Handshake, PROTO_TCP, Service, TCP_FIN, TCP_RST, expired,
        handshake_flags, handshake_slot,
    },
    counter::Counter,
};

use crate::{
    family::Family,
    maps::{LB_POLICY, LB_TIMEOUTS},
    parse::{self, Packet},
    persist,
    select::{self, Choice, Here, Known, Reply, Turn},
};

/// The live record of `flow`: its slot holds this flow, placed within its
/// first state's timeout.
#[inline(always)]
pub fn find<F: Family>(flow: &Flow<F::Addr>, here: Here) -> Option<*mut Handshake<F::Addr>> {
    let record = F::handshakes().get_ptr_mut(handshake_slot(flow))?;
    // SAFETY: a pointer into the array's value. Another CPU may write the
    // slot at the same time; a torn read at worst mixes two records, which
    // the backend check of whoever uses it bounds to a wrong backend of
    // the same service for one handshake.
    let (held, born) = unsafe { (Handshake::flow_of(record), (*record).born) };
    if !held.same(flow) {
        return None;
    }
    let state = if flow.proto == PROTO_TCP { CONN_SYN } else { CONN_UDP };
    let timeout = LB_TIMEOUTS.get(u32::from(state)).copied().unwrap_or(0);
    (!expired(here.epoch as u32, born, timeout)).then_some(record)
}

/// The backend the live record of `flow` placed it on, for the paths that
/// ask who owns a flow not yet in the table: an ICMP error about a
/// SYN-ACK, the SYN-ACK to a backend that opened a flow to a VIP.
#[inline(always)]
pub fn placed_on<F: Family>(flow: &Flow<F::Addr>, here: Here) -> Option<u32> {
    // SAFETY: as in `find`.
    find::<F>(flow, here).map(|record| unsafe { (*record).backend_id })
}

/// Places a SYN (or a UDP flow's first datagram) and records where: a
/// retransmitted SYN finds its record and goes where the first went.
#[inline(always)]
pub fn open<F: Family>(
    flow: &Flow<F::Addr>,
    service: &Service,
    here: Here,
) -> Result<Choice<F>, Counter> {
    if let Some(record) = find::<F>(flow, here) {
        // SAFETY: as in `find`.
        let id = unsafe { (*record).backend_id };
        if let Some(backend) = select::live_backend::<F>(id, service.id, flow)
            && backend.flags & BACKEND_DOWN == 0
        {
            return Ok(Choice::of(id, backend, false));
        }
    }
    // A persistent client's backend first; the scheduler if it has none.
    let choice = match persist::stuck::<F>(flow, service) {
        Some(choice) => choice,
        None => select::pick::<F>(flow, service, Turn::Next)?,
    };
    if let Some(record) = F::handshakes().get_ptr_mut(handshake_slot(flow)) {
        // The flow's recording records its client too (`settle`).
        let flags = handshake_flags(service.flags);
        let placed = Handshake {
            flow: *flow,
            backend_id: choice.id,
            born: here.epoch as u32,
            expect_ack: 0,
            flags,
        };
        // SAFETY: a pointer into the array's value (see `find`).
        unsafe { *record = placed };
    }
    Ok(choice)
}

/// A backend's SYN-ACK (NAT): the record of its client's flow learns what
/// the client's ACK must acknowledge. Only a SYN-ACK pays for this lookup.
#[inline(always)]
pub fn answered<F: Family>(ctx: &XdpContext, pkt: &Packet<F>, real: &Reply<F::Addr>, here: Here) {
    let Some(record) = find::<F>(&real.client_flow(&pkt.flow), here) else {
        return;
    };
    let Some((seq, _)) = parse::tcp_seq_ack(ctx, pkt) else {
        return;
    };
    expect_ack(record, real.backend_id, seq);
}

/// The live record of `flow` placed on backend `from` now names `to`
/// (full NAT keeps a flow on the backend its port is on, whatever the
/// scheduler chose for the SYN).
#[inline(always)]
pub fn follow<F: Family>(flow: &Flow<F::Addr>, from: u32, to: u32, here: Here) {
    if let Some(record) = find::<F>(flow, here) {
        // SAFETY: as in `find`.
        unsafe {
            if (*record).backend_id == from {
                (*record).backend_id = to;
            }
        }
    }
}

/// `answered`, for the SYN-ACK (sequence number `seq`) of backend
/// `backend_id` to the client's `flow` (full NAT, whose reply does not
/// name the client).
#[inline(always)]
pub fn record_answer<F: Family>(flow: &Flow<F::Addr>, backend_id: u32, seq: u32, here: Here) {
    if let Some(record) = find::<F>(flow, here) {
        expect_ack(record, backend_id, seq);
    }
}

/// The record learns that backend `backend_id` answered with `seq`, if
/// the record placed its flow there.
#[inline(always)]
fn expect_ack<A>(record: *mut Handshake<A>, backend_id: u32, seq: u32) {
    // SAFETY: as in `find`.
    unsafe {
        if (*record).backend_id == backend_id {
            (*record).expect_ack = seq.wrapping_add(1);
            (*record).flags |= HANDSHAKE_ANSWERED;
        }
    }
}

/// A client packet the connection table does not hold (or holds for an
/// older connection on these ports: `entry`, its service and backend
/// ids): the flow's record, if live, says
/// where it goes (`Known::Flow`, or `Known::Gone` if its backend was
/// removed since), and the flow is recorded in the table if the packet
/// proves its client real. A TCP packet that proves nothing keeps to the
/// older connection's entry: a forged SYN on a closing connection's ports
/// does not divert it (in NAT; with direct routing any ACK after a SYN
/// proves). `Known::Unknown` without a record or entry.
#[inline(always)]
pub fn settle<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    here: Here,
    cached: Option<*mut FlowCacheEntry<F::Addr>>,
    entry: Option<(u32, u32)>,
) -> Known<F> {
    let flow = &pkt.flow;
    let Some(record) = find::<F>(flow, here) else {
        return older(entry, flow);
    };
    // SAFETY: as in `find`; copied out at once.
    let placed = unsafe { *record };
    let tcp = flow.proto == PROTO_TCP;
    // What a packet that does not take the record gets: the older
    // connection's entry if there is one (TCP), else the record's backend.
    let unrecorded =
        |known: Known<F>| if tcp && entry.is_some() { older(entry, flow) } else { known };
    let Some(service_id) = F::backends().get(placed.backend_id).map(|b| b.service_id) else {
        return unrecorded(Known::Gone);
    };
    let Some(backend) = select::live_backend::<F>(placed.backend_id, service_id, flow) else {
        return unrecorded(Known::Gone);
    };
    let choice = Choice::of(placed.backend_id, backend, false);
    if backend.flags & BACKEND_DOWN != 0 {
        return unrecorded(Known::Flow(service_id, choice));
    }
    let state = match pkt.tcp_flags {
        _ if !tcp => CONN_UDP,
        // A client giving up its handshake: forwarded, nothing recorded.
        flags if flags & TCP_RST != 0 => return unrecorded(Known::Flow(service_id, choice)),
        flags if flags & TCP_FIN != 0 => CONN_CLOSING,
        _ => CONN_ESTABLISHED,
    };
    // An expiring packet records nothing (the caller passes it to the kernel).
    if pkt.ttl <= 1 || (tcp && !proven(ctx, pkt, &placed, backend.flags)) {
        return unrecorded(Known::Flow(service_id, choice));
    }
    let conn = Conn {
        backend_id: placed.backend_id,
        service_id,
        last_seen: here.epoch as u32,
        state,
        _pad: [0; 3],
    };
    select::record::<F>(flow, conn, here, cached);
    if placed.flags & HANDSHAKE_PERSIST != 0 {
        F::remember(service_id, placed.backend_id, placed.flags, flow.src);
    }
    // Spent: the table holds the flow now. A record of no client's source
    // (the unspecified address, refused as martian before any lookup) and
    // port 0 matches no flow; the rest of it is left.
    // SAFETY: as in `find`.
    unsafe {
        (*record).flow.src = F::Addr::default();
        (*record).flow.dport = 0;
    }
    Known::Flow(service_id, choice)
}

/// What the older connection's entry (its service and backend ids) says
/// of `flow`; `Known::Unknown` without one.
#[inline(always)]
fn older<F: Family>(entry: Option<(u32, u32)>, flow: &Flow<F::Addr>) -> Known<F> {
    let Some((service_id, id)) = entry else {
        return Known::Unknown;
    };
    match select::live_backend::<F>(id, service_id, flow) {
        Some(backend) => Known::Flow(service_id, Choice::of(id, backend, false)),
        None => Known::Gone,
    }
}

/// Whether a client's TCP packet after its SYN proves the client real: it
/// acknowledges the NAT backend's SYN-ACK, or data the backend sent after
/// it (`HANDSHAKE_ACK_WINDOW`: the client's first ACK may be lost, and a
/// server that speaks first, SSH or SMTP, has its banner acknowledged
/// next). Direct routing cannot tell (the SYN-ACK goes to the client
/// without us), nor a node whose backends' SYN-ACKs may return through
/// another (`handshake_proof = "syn-seen"`).
#[inline(always)]
fn proven<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    placed: &Handshake<F::Addr>,
    backend_flags: u16,
) -> bool {
    let syn_seen = LB_POLICY.get(0).is_some_and(|p| p.handshake_proof == HANDSHAKE_PROOF_SYN_SEEN);
    if backend_flags & BACKEND_DSR != 0 || syn_seen {
        return true;
    }
    placed.flags & HANDSHAKE_ANSWERED != 0
        && parse::tcp_seq_ack(ctx, pkt)
            .is_some_and(|(_, ack)| ack.wrapping_sub(placed.expect_ack) < HANDSHAKE_ACK_WINDOW)
}
