//! Whose packet is this, and where does it go: the address pre-filter, the
//! flow cache and the connection table, the service's Maglev table, the
//! backend index for replies.
use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64},
    programs::XdpContext,
};
use lb_common::{
    abi::{
        BACKEND_DOWN, BACKEND_FULLNAT, BACKEND_IN_USE, Backend, BackendConns, CONN_CLOSED,
        CONN_CLOSING, CONN_ESTABLISHED, CONN_UDP, Conn, Endpoint, FLOW_CACHE_SLOTS, Flow,
        FlowCacheEntry, LC_MAX_BACKENDS, NO_BACKEND, REAL_SLOT_SHARED, SCHED_LC, SCHED_MASK,
        SCHED_RR, SCHED_SH, SCHED_WRR, SVC_REJECT, Service, TCP_FIN, TCP_RST, TCP_SYN, Traffic,
        addr_slot, cpu_slot, expired, flow_cache_slot, next_state, real_slot, source_hash,
        stand_in_position,
    },
    addr::Addr,
    counter::Counter,
    hash::{flow_hash, maglev_slot},
};

use crate::maps::{LB_BE_CONNS, LB_EPOCH, LB_MAGLEV, LB_RR, LB_TIMEOUTS};
use crate::{conntrack, family::Family, handshake};

/// The backend chosen for a packet: its id, which `live_backend` checked.
/// Its entry is read again where it is used (an array lookup, which the
/// verifier inlines) rather than carried: a copy of an IPv6 backend is 48
/// bytes the stack cannot spare, and a carried pointer into the map gets
/// copied in halves, which the verifier refuses.
#[derive(Clone, Copy)]
pub struct Choice<F: Family> {
    pub id: u32,
    /// The flow was not in the connection table.
    pub new_flow: bool,
    family: core::marker::PhantomData<F>,
}

impl<F: Family> Choice<F> {
    #[inline(always)]
    pub fn of(id: u32, _checked: &Backend<F::Addr>, new_flow: bool) -> Self {
        Self { id, new_flow, family: core::marker::PhantomData }
    }

    /// The backend's entry (`None` only if the id is out of range, which
    /// `live_backend` refused).
    #[inline(always)]
    pub fn backend(self) -> Option<&'static Backend<F::Addr>> {
        F::backends().get(self.id)
    }
}

#[inline(always)]
pub fn service<F: Family>(flow: &Flow<F::Addr>) -> Option<Service> {
    let key = Endpoint::new(flow.dst, flow.dport, flow.proto);
    // SAFETY: the value is copied out at once; the controller may replace it any time.
    unsafe { F::services().get(key).copied() }
}

/// The service side of a backend's reply.
pub struct Reply<A> {
    pub backend_id: u32,
    pub service_id: u32,
    pub vip: A,
    pub vport: u16,
}

impl<A: Addr> Reply<A> {
    /// The flow `reply` answers, as its client sent it (to the VIP).
    #[inline(always)]
    pub fn client_flow(&self, reply: &Flow<A>) -> Flow<A> {
        Flow {
            src: reply.dst,
            dst: self.vip,
            sport: reply.dport,
            dport: self.vport,
            proto: reply.proto,
            _pad: [0; 3],
        }
    }
}

/// Whose reply this is, if the source is a backend: array lookups only
/// (`lb_real_slots`, then `lb_backends` to confirm), except when several
/// backends share a slot and the exact table `lb_reals` decides.
#[inline(always)]
pub fn real<F: Family>(flow: &Flow<F::Addr>) -> Option<Reply<F::Addr>> {
    let slot = *F::real_slots().get(real_slot(flow.src, flow.sport, flow.proto))?;
    if slot == 0 {
        return None;
    }
    if slot == REAL_SLOT_SHARED {
        let key = Endpoint::new(flow.src, flow.sport, flow.proto);
        // SAFETY: copied out at once; the controller may replace it any time.
        let real = unsafe { F::reals().get(key).copied() }?;
        return Some(Reply {
            backend_id: real.backend_id,
            service_id: real.service_id,
            vip: real.vip,
            vport: real.vport,
        });
    }
    let id = slot - 1;
    let b = F::backends().get(id)?;
    let mine = b.flags & BACKEND_IN_USE != 0
        && b.addr().same(&flow.src)
        && b.port == flow.sport
        && b.proto == flow.proto;
    mine.then_some(Reply { backend_id: id, service_id: b.service_id, vip: b.vip(), vport: b.vport })
}

/// The backend `id` if it is in use, belongs to `service_id` and serves the
/// flow's VIP, port and protocol: an entry made for an earlier holder of a
/// reused id (service or backend) is not followed. The map's value itself,
/// not a copy (an IPv6 backend is 48 bytes the stack cannot spare): the
/// controller may rewrite it meanwhile, as it could during a copy.
#[inline(always)]
pub fn live_backend<F: Family>(
    id: u32,
    service_id: u32,
    flow: &Flow<F::Addr>,
) -> Option<&'static Backend<F::Addr>> {
    let b = F::backends().get(id)?;
    let serves = b.flags & BACKEND_IN_USE != 0
        && b.service_id == service_id
        && b.vip().same(&flow.dst)
        && b.vport == flow.dport
        && b.proto == flow.proto;
    serves.then_some(b)
}

/// The backend whose reply `quoted` is (from the VIP to a client, as an
/// ICMP error quotes it): the one the client's flow is on, from its
/// connection-table entry, else from its handshake record (an error about
/// a SYN-ACK); `None` when the flow is not ours (or its backend is gone,
/// or is a full-NAT one).
#[inline(always)]
pub fn reply_owner<F: Family>(
    quoted: &Flow<F::Addr>,
    here: Here,
) -> Option<&'static Backend<F::Addr>> {
    // The client's flow, as the client sent it.
    let flow = Flow {
        src: quoted.dst,
        dst: quoted.src,
        sport: quoted.dport,
        dport: quoted.sport,
        proto: quoted.proto,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let conn = conntrack::find::<F>(&flow)
        .map(|slot| unsafe { (*slot).conn() })
        .filter(|c| !conn_expired(c, here));
    let (backend_id, service_id) = if let Some(conn) = conn {
        (conn.backend_id, conn.service_id)
    } else {
        let id = handshake::placed_on::<F>(&flow, here)?;
        (id, F::backends().get(id)?.service_id)
    };
    // A full-NAT backend's reply is not what the client received (the
    // backend sent it to a pool address): its errors are the kernel's.
    live_backend::<F>(backend_id, service_id, &flow).filter(|b| b.flags & BACKEND_FULLNAT == 0)
}

/// The address pre-filter's flags of `addr` (`ADDR_VIP`, `ADDR_REAL`): a
/// false positive only costs the exact lookups that follow.
#[inline(always)]
pub fn addr_flags<F: Family>(addr: F::Addr) -> u8 {
    F::addrs().get(addr_slot(addr)).copied().unwrap_or(0)
}

/// What the flow cache and the connection table know of a flow.
pub enum Known<F: Family> {
    /// Its backend, which still exists (a drained backend, weight 0, keeps
    /// its flows), with the service id: an established flow needs no
    /// service lookup.
    Flow(u32, Choice<F>),
    /// It had a backend that has been removed since.
    Gone,
    /// Its entry cannot carry it on (closing or closed, its backend DOWN
    /// or gone), and a handshake record of the same flow is live: a new
    /// connection on the same ports if the packet proves it
    /// (`handshake::settle`); otherwise the entry's flow: its service and
    /// backend ids.
    Superseded(u32, u32),
    /// Nothing (or the entry has expired).
    Unknown,
}

/// Where and when a packet runs, read once per packet: the interface it
/// arrived on, this CPU (whose region of the flow and next-hop caches it
/// uses) and the current epoch tick, the data plane's clock (see
/// `EPOCH_TICK_MS`).
#[derive(Clone, Copy)]
pub struct Here {
    pub ingress: u32,
    pub cpu: u32,
    pub epoch: u64,
}

impl Here {
    #[inline(always)]
    pub fn read(ctx: &XdpContext) -> Self {
        // SAFETY: a helper without arguments (inlined by the verifier).
        let cpu = unsafe { bpf_get_smp_processor_id() };
        Self { ingress: ctx.ingress_ifindex() as u32, cpu, epoch: epoch_now() }
    }

    /// The clock alone, for a global function that has no context: its
    /// `ingress` and `cpu` are 0, for what reads only `epoch`.
    #[inline(always)]
    pub fn clock() -> Self {
        Self { ingress: 0, cpu: 0, epoch: epoch_now() }
    }
}

/// The data plane's clock: jiffies scaled by `lb_epoch` (see `EpochClock`).
#[inline(always)]
pub fn epoch_now() -> u64 {
    // SAFETY: a helper without arguments (one load, inlined by the verifier).
    let jiffies = unsafe { bpf_jiffies64() };
    LB_EPOCH.get(0).map_or(0, |clock| clock.epoch(jiffies))
}

/// This CPU's flow cache entry for `flow`: `None` on a CPU the map was not
/// sized for (the flow then goes to the connection table every time).
#[inline(always)]
pub fn flow_cache_entry<F: Family>(
    flow: &Flow<F::Addr>,
    here: Here,
) -> Option<*mut FlowCacheEntry<F::Addr>> {
    F::flow_cache().get_ptr_mut(cpu_slot(here.cpu, FLOW_CACHE_SLOTS, flow_cache_slot(flow)))
}

/// What the connection table knows of a client packet's flow, with the
/// packet folded into the flow's state. A packet that may change the state
/// (SYN, FIN, RST), a flow not yet established, and each flow once an
/// epoch, go to the connection table; the rest is answered by this CPU's
/// flow cache (`cached`, the flow's slot there). Every packet the cache
/// does not answer must pass `check_source` (`fwd::arrived_from`) first:
/// an entry is written only for a source that did, on the interface it
/// records, so the cache serves only packets from that interface.
#[inline(always)]
pub fn established<F: Family>(
    flow: &Flow<F::Addr>,
    tcp_flags: u8,
    here: Here,
    cached: Option<*mut FlowCacheEntry<F::Addr>>,
    check_source: impl FnOnce() -> Result<(), Counter>,
) -> Result<Known<F>, Counter> {
    let epoch = here.epoch;
    if tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && let Some(entry) = cached
    {
        // SAFETY: this CPU's slot, only touched by this CPU; XDP does not nest.
        let entry = unsafe { &*entry };
        // Only settled flows are served from the cache: a flow still in its
        // handshake (or closing) takes the table, where its state moves.
        let settled = entry.conn.state == CONN_ESTABLISHED || entry.conn.state == CONN_UDP;
        if entry.holds(flow)
            && entry.epoch == epoch
            && entry.ingress == here.ingress
            && settled
            && let Some(backend) =
                live_backend::<F>(entry.conn.backend_id, entry.conn.service_id, flow)
            && backend.flags & BACKEND_DOWN == 0
        {
            let choice = Choice::of(entry.conn.backend_id, backend, false);
            return Ok(Known::Flow(entry.conn.service_id, choice));
        }
    }
    check_source()?;
    let Some(slot) = conntrack::find::<F>(flow) else {
        return Ok(Known::Unknown);
    };
    // SAFETY: a pointer into the map's value; another flow may take the
    // entry under us, which at worst loses this update.
    let slot = unsafe { &mut *slot };
    let conn = slot.conn();
    let tick = epoch as u32;
    if conn_expired(&conn, here) {
        return Ok(Known::Unknown);
    }
    let Some(state) = next_state(conn.state, tcp_flags, true) else {
        return Ok(Known::Unknown);
    };
    let backend = live_backend::<F>(conn.backend_id, conn.service_id, flow);
    // An entry that cannot carry the flow on (its backend DOWN or gone, its
    // connection closing or closed) gives way to a live handshake record:
    // a new connection on the same ports, placed since.
    let spent = state == CONN_CLOSING || state == CONN_CLOSED;
    let usable = backend.is_some_and(|b| b.flags & BACKEND_DOWN == 0);
    if (spent || !usable) && handshake::find::<F>(flow, here).is_some() {
        // The packet moves the entry's state too: if it proves nothing of
        // the record, it is the old connection's (and a proving one
        // replaces the entry anyway).
        slot.state = state;
        slot.last_seen = tick;
        return Ok(Known::Superseded(conn.service_id, conn.backend_id));
    }
    if state != conn.state || conn.last_seen != tick {
        slot.state = state;
        slot.last_seen = tick;
    }
    let conn = Conn { state, last_seen: tick, ..conn };
    let Some(backend) = backend else {
        return Ok(Known::Gone);
    };
    if let Some(slot) = cached {
        // SAFETY: this CPU's slot, only touched by this CPU; XDP does not nest.
        unsafe { *slot = cache_entry(flow, conn, here) };
    }
    Ok(Known::Flow(conn.service_id, Choice::of(conn.backend_id, backend, false)))
}

/// Whether `conn` has been idle past its state's timeout: an expired entry
/// counts as absent, wherever it is read.
#[inline(always)]
pub fn conn_expired(conn: &Conn, here: Here) -> bool {
    let timeout = LB_TIMEOUTS.get(u32::from(conn.state)).copied().unwrap_or(0);
    expired(here.epoch as u32, conn.last_seen, timeout)
}

/// A backend's FIN or RST moves its connection's state (the client's
/// packets do the rest); the entry is found by the flow as the client sent
/// it, and must be this backend's: an expired entry of another backend
/// (the flow placed elsewhere since) is not brought back to life.
#[inline(always)]
pub fn backend_closes<F: Family>(
    reply: &Flow<F::Addr>,
    real: &Reply<F::Addr>,
    tcp_flags: u8,
    here: Here,
) {
    if tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    closes::<F>(&real.client_flow(reply), real.backend_id, real.service_id, tcp_flags, here);
}

/// `backend_closes`, for a FIN or RST of backend `backend_id` (of
/// `service_id`) in the client's `flow` (full NAT, whose reply does not
/// name the client).
#[inline(always)]
pub fn closes<F: Family>(
    flow: &Flow<F::Addr>,
    backend_id: u32,
    service_id: u32,
    tcp_flags: u8,
    here: Here,
) {
    if let Some(slot) = conntrack::find::<F>(flow) {
        // SAFETY: a pointer into the map's value, as above.
        let slot = unsafe { &mut *slot };
        let ours =
            u32::from(slot.backend_id) == backend_id && u32::from(slot.service_id) == service_id;
        if ours && let Some(state) = next_state(slot.state, tcp_flags, false) {
            slot.state = state;
            // The closing state's (shorter) timeout counts from now.
            slot.last_seen = here.epoch as u32;
        }
    }
}

/// How a placement uses an `rr`/`wrr` service's rotation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A new flow takes the next position (and `lc` counts its pick).
    Next,
    /// A packet met mid-way, with nothing recorded: placed by its flow hash
    /// in the same weighted table, so all its packets go to one backend
    /// without state.
    Hashed,
}

/// The backend the service's scheduler gives `flow`: `maglev` (flow hash)
/// and `sh` (source hash) from the Maglev table; `rr`/`wrr` from the
/// rotation; `lc` the least loaded. A backend that is DOWN is never chosen.
#[inline(always)]
pub fn pick<F: Family>(
    flow: &Flow<F::Addr>,
    service: &Service,
    turn: Turn,
) -> Result<Choice<F>, Counter> {
    // A packet met mid-way takes no pick of `lc` either (each would count
    // a connection): the flow hash over its list of backends.
    let (id, start) = if service.flags & SCHED_MASK == SCHED_LC && turn == Turn::Next {
        (F::least_connections(service.id, service.ring_size), 0)
    } else {
        let table = LB_MAGLEV.get(service.id).ok_or(Counter::DropNoBackend)?;
        let slot = match service.flags & SCHED_MASK {
            SCHED_RR | SCHED_WRR if turn == Turn::Next => next_in_rotation(service)?,
            SCHED_SH => maglev_slot(source_hash(flow.src), service.ring_size),
            _ => maglev_slot(hash(flow), service.ring_size),
        };
        let slot = slot.ok_or(Counter::DropNoBackend)?;
        (*table.slots.get(slot as usize).ok_or(Counter::DropNoBackend)?, slot)
    };
    if id == ALL_FULL {
        return Err(all_full(service));
    }
    if id == NO_BACKEND {
        return Err(Counter::DropNoBackend);
    }
    let backend = live_backend::<F>(id, service.id, flow)
        .filter(|b| b.flags & BACKEND_DOWN == 0)
        .ok_or(Counter::DropNoBackend)?;
    // `lc` skipped the full backends and counted its pick itself; a packet
    // met mid-way belongs to a connection already open somewhere.
    if turn == Turn::Hashed || service.flags & SCHED_MASK == SCHED_LC || backend.max_conns == 0 {
        return Ok(Choice::of(id, backend, turn == Turn::Next));
    }
    // The limit's check, counting, and stand-in, in a function verified
    // once (see `within_limits`).
    let id = F::within_limits(service.id, id, start);
    if id == ALL_FULL {
        return Err(all_full(service));
    }
    let backend = live_backend::<F>(id, service.id, flow)
        .filter(|b| b.flags & BACKEND_DOWN == 0)
        .ok_or(Counter::DropNoBackend)?;
    Ok(Choice::of(id, backend, true))
}

/// What every usable backend at its `max_conns` comes to: with
/// `on_no_backend = "reject"`, the refusal the caller sends
/// (`reject_backends_full` counts it), else a drop counted
/// `drop_backends_full`. Decided here, each counter a constant on its own
/// path: a caller matching either of two counters had the verifier lose
/// which one it held, and walk every counter's path after it (past its
/// complexity limit).
#[inline(always)]
fn all_full(service: &Service) -> Counter {
    if service.flags & SVC_REJECT != 0 {
        return Counter::RejectBackendsFull;
    }
    Counter::DropBackendsFull
}

/// Backend `id`, chosen for a new flow, if it is below its `max_conns`;
/// else the first backend of the service's list below its own, from
/// position `start` (the flow's slot: deterministic for a flow), or
/// `ALL_FULL`. The backend it answers is counted at once if it has a limit.
///
/// Each family calls it from a global BPF function of its own
/// (`lb_within_limits`, `lb_within_limits6`): verified once, on its own,
/// like `least_connections`, so that it adds no paths to the program's.
#[inline(always)]
pub fn within_limits<F: Family>(service_id: u32, id: u32, start: u32) -> u32 {
    let Some(backend) = F::backends().get(id) else { return id };
    if backend.max_conns == 0 {
        return id;
    }
    if !full(id, backend.max_conns) {
        count_conn(id);
        return id;
    }
    let other = first_free::<F>(service_id, start);
    let Some(backend) = F::backends().get(other) else { return ALL_FULL };
    if backend.max_conns != 0 {
        count_conn(other);
    }
    other
}

/// What `least_connections` answers when every usable backend is at its
/// `max_conns` (`NO_BACKEND`: there is none).
pub const ALL_FULL: u32 = NO_BACKEND - 1;

/// Whether backend `id` holds `max_conns` connections or more, as
/// `lb_be_conns` counts them (`BackendConns`).
#[inline(always)]
pub fn full(id: u32, max_conns: u32) -> bool {
    LB_BE_CONNS.get(id).is_some_and(|c| c.at_limit(max_conns))
}

/// Counts a new flow on backend `id` at once, as an inactive connection
/// (the controller's recount replaces it with what the connection table
/// holds): `lc`'s picks, and every flow placed on a backend with a limit.
#[inline(always)]
pub fn count_conn(id: u32) {
    if let Some(conns) = LB_BE_CONNS.get_ptr_mut(id) {
        // SAFETY: a valid, aligned u32 in an array map; updated atomically
        // (BPF_XADD, whose result is not used, exists on every BPF cpu).
        unsafe {
            core::arch::asm!(
                "lock *(u32 *)({counter} + {inactive}) += {one}",
                counter = in(reg) conns,
                inactive = const core::mem::offset_of!(BackendConns, inactive),
                one = in(reg) 1_u32,
            );
        }
    }
}

/// A stand-in for a backend at its `max_conns`: the first backend of the
/// service's usable list (`MaglevTable::usable_ids`), in the order of
/// `stand_in_position` from `start`, that takes new flows (not DOWN,
/// weight above 0) and is below its own limit; `NO_BACKEND` if none is.
/// (The controller's reassembly slow path searches the same way.)
#[inline(always)]
fn first_free<F: Family>(service_id: u32, start: u32) -> u32 {
    let Some(table) = LB_MAGLEV.get(service_id) else { return NO_BACKEND };
    let count = table.usable.min(LC_MAX_BACKENDS);
    if count == 0 {
        return NO_BACKEND;
    }
    let mut step = 0;
    while step < LC_MAX_BACKENDS {
        let position = stand_in_position(start, step);
        step += 1;
        if position >= count {
            continue;
        }
        let id = table.usable_ids.get(position as usize).copied().unwrap_or(NO_BACKEND);
        let Some(backend) = F::backends().get(id) else { continue };
        if !backend.takes_new_flows() {
            continue;
        }
        if backend.max_conns == 0 || !full(id, backend.max_conns) {
            return id;
        }
    }
    NO_BACKEND
}

/// Writes `conn` to the connection table for `flow`, and to this CPU's
/// flow cache, which may still hold the flow's previous placement (a new
/// connection on the same ports, a UDP flow moved off a DOWN backend).
#[inline(always)]
pub fn record<F: Family>(
    flow: &Flow<F::Addr>,
    conn: Conn,
    here: Here,
    cached: Option<*mut FlowCacheEntry<F::Addr>>,
) {
    // A full set gives up the entry furthest past its timeout: recording
    // cannot fail for want of room.
    conntrack::record::<F>(flow, &conn, here.epoch as u32);
    if let Some(slot) = cached {
        // SAFETY: this CPU's slot, only touched by this CPU; XDP does not nest.
        unsafe { *slot = cache_entry(flow, conn, here) };
    }
}

/// The flow cache's copy of `conn`, checked now, for packets from here.
#[inline(always)]
fn cache_entry<A: Addr>(flow: &Flow<A>, conn: Conn, here: Here) -> FlowCacheEntry<A> {
    FlowCacheEntry { flow: *flow, conn, epoch: here.epoch, ingress: here.ingress, _pad: 0 }
}

/// The next position in an `rr`/`wrr` service's rotation: one atomic
/// increment of a counter all CPUs share.
#[inline(always)]
fn next_in_rotation(service: &Service) -> Result<Option<u32>, Counter> {
    let counter = LB_RR.get_ptr_mut(service.id).ok_or(Counter::DropNoBackend)?;
    // The BPF target's core has no `AtomicU64::fetch_add`, and the linker
    // builds for cpu v1, where LLVM cannot use an atomic add's result: say
    // the instruction itself (BPF_ATOMIC | BPF_FETCH, kernel 5.12+).
    let mut turn: u64 = 1;
    // SAFETY: `counter` is a valid, aligned u64 in an array map; every access to it is this atomic add.
    unsafe {
        core::arch::asm!(
            "{turn} = atomic_fetch_add((u64 *)({counter} + 0), {turn})",
            counter = in(reg) counter,
            turn = inout(reg) turn,
        );
    }
    Ok(turn.checked_rem(u64::from(service.ring_size)).map(|s| s as u32))
}

/// `lc`: the backend, among the service's list (the first `count` slots of
/// its table), with the least `active * 256 + inactive` per unit of weight
/// (IPVS `wlc`); ties go to the first; a backend at its `max_conns` is
/// passed over; `NO_BACKEND` if none is usable (`ALL_FULL` if the usable
/// ones are all full). The
/// pick is counted at once as an inactive connection, so a burst of SYNs
/// spreads before the controller's next recount.
///
/// Each family calls it from a global BPF function of its own
/// (`lb_least_connections`, `lb_least_connections6`): the verifier checks
/// such a function once, on its own, instead of once per path through the
/// program (inlined, the loop made the program too complex to verify).
#[inline(always)]
pub fn least_connections<F: Family>(service_id: u32, count: u32) -> u32 {
    let Some(table) = LB_MAGLEV.get(service_id) else { return NO_BACKEND };
    let mut best_id = NO_BACKEND;
    let mut best_overhead = 0_u64;
    let mut best_weight = 0_u64;
    let mut saw_full = false;
    let count = count.min(LC_MAX_BACKENDS);
    let mut position = 0;
    while position < count {
        let id = table.slots.get(position as usize).copied().unwrap_or(NO_BACKEND);
        position += 1;
        let Some(backend) = F::backends().get(id) else { continue };
        let weight = u64::from(backend.weight);
        if backend.flags & BACKEND_DOWN != 0 || weight == 0 {
            continue;
        }
        let conns = LB_BE_CONNS.get(id).copied().unwrap_or_default();
        if conns.at_limit(backend.max_conns) {
            saw_full = true;
            continue;
        }
        let overhead = u64::from(conns.active) * 256 + u64::from(conns.inactive);
        // overhead / weight < best_overhead / best_weight, without division.
        if best_id == NO_BACKEND || overhead * best_weight < best_overhead * weight {
            best_id = id;
            best_overhead = overhead;
            best_weight = weight;
        }
    }
    if best_id == NO_BACKEND && saw_full {
        return ALL_FULL;
    }
    count_conn(best_id);
    best_id
}

/// The flow hash that places a new flow in the Maglev table.
#[inline(always)]
fn hash<A: Addr>(flow: &Flow<A>) -> u32 {
    flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto)
}

/// Adds one packet to a per-CPU traffic slot.
#[inline(always)]
pub fn account<const N: usize>(
    map: &PerCpuArray<Traffic, N>,
    index: u32,
    bytes: u16,
    to_backend: bool,
    new_flow: bool,
) {
    let Some(traffic) = map.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: a per-CPU slot is only touched by this CPU, and XDP does not nest.
    let traffic = unsafe { &mut *traffic };
    if to_backend {
        traffic.in_packets += 1;
        traffic.in_bytes += u64::from(bytes);
    } else {
        traffic.out_packets += 1;
        traffic.out_bytes += u64::from(bytes);
    }
    if new_flow {
        traffic.new_flows += 1;
    }
}
