//! The slow path of UDP datagrams whose fragments came out of order, of
//! either family (the data plane passes IPv4's and IPv6's alike). XDP
//! cannot hold a fragment back, so it passes such a datagram's fragments to
//! the kernel (`pass_fragment_to_kernel`, lb-ebpf `frag`), which reassembles
//! it and, the VIP being a local address, delivers it here: a socket on each
//! UDP service's VIP:port (the only datagrams the kernel gets for it, XDP
//! forwarding all others). Each is placed as the data plane would place it
//! (`place`: a persistent client on its backend, a backend at its
//! `max_conns` passed over and a placed flow counted), its flow written to
//! the handshake records or the connection table as XDP writes it, so that
//! the flow's next datagrams follow in XDP, and sent to the backend from the client's
//! address (`socket::send_as`); the backend's answer goes back through
//! XDP's reverse NAT like any other.
//!
//! One thread of its own: every step blocks (a map lookup and insert, a
//! clock read through `BPF_PROG_TEST_RUN`, half a dozen socket calls), and
//! a flood of such datagrams must cost one core at most, never the API's
//! or the probes' executor. The flood is bounded before it gets here: by
//! the kernel's reassembly memory (`net.ipv4.ipfrag_high_thresh`,
//! `net.ipv6.ip6frag_high_thresh`) and time (`ipfrag_time`,
//! `ip6frag_time`), then by each socket's receive buffer (what overflows
//! is dropped and counted by the kernel, `Udp: RcvbufErrors`,
//! `Udp6: RcvbufErrors`).
mod place;
mod socket;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use lb_common::abi::{BackendConns, Endpoint, Flow, PROTO_UDP, Persist, PersistKey, Service};
pub use place::Placement;
use place::{Earlier, FamilyAddr, Held, Placed};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::write::dataplane::{AnyFlow, FlowWriter, MapReader};

/// What the slow path did, since the controller started.
#[derive(Debug, Default)]
pub struct Counts {
    /// Datagrams sent on to their backend.
    pub forwarded: AtomicU64,
    /// Datagrams dropped: no service or usable backend, a direct-routing
    /// backend, not reassembled (a packet the data plane passed for
    /// another reason, e.g. TTL 1), truncated, or a failed send.
    pub dropped: AtomicU64,
}

/// How long the thread waits for datagrams before it looks for changed
/// services (and whether the controller is stopping).
const POLL_MS: libc::c_int = 200;
/// Datagrams taken from one socket in a row, so that one busy service does
/// not starve the others or the service updates.
const BATCH: usize = 64;

/// Opens the sockets of the services applied now, at once (a datagram
/// right after the controller says it runs finds them), then starts the
/// slow path's thread: the sockets follow the services in `placements`
/// (the reconciler's applied state) within `POLL_MS` of a change; the
/// thread ends when the reconciler does (the channel closes). It looks
/// flows up through `reader` and records them through `flows`.
pub fn spawn(
    placements: watch::Receiver<Arc<Placement>>,
    reader: Arc<dyn MapReader>,
    flows: Arc<dyn FlowWriter>,
    counts: Arc<Counts>,
) -> std::io::Result<()> {
    let mut path = SlowPath {
        placements,
        reader,
        flows,
        counts,
        sockets: BTreeMap::new(),
        sockets6: BTreeMap::new(),
    };
    let now = Arc::clone(&path.placements.borrow_and_update());
    path.follow_services(&now);
    std::thread::Builder::new().name("lb-reassembled".into()).spawn(move || path.run())?;
    Ok(())
}

/// The data plane's per-flow state, as the slow path places by it.
struct HeldMaps<'a>(&'a dyn MapReader);

impl<A: FamilyAddr> Held<A> for HeldMaps<'_> {
    fn persisted(&self, key: &PersistKey<A>) -> Option<Persist> {
        self.0.persisted(&A::any_key(*key)).unwrap_or_else(|e| {
            debug!(error = %e, "reading the persistent clients");
            None
        })
    }

    fn conns(&self, backend_id: u32) -> BackendConns {
        self.0.backend_conns(backend_id).unwrap_or_else(|e| {
            debug!(error = %e, "reading the backends' connections");
            BackendConns::default()
        })
    }
}

struct SlowPath {
    placements: watch::Receiver<Arc<Placement>>,
    reader: Arc<dyn MapReader>,
    flows: Arc<dyn FlowWriter>,
    counts: Arc<Counts>,
    /// One socket per UDP service endpoint, of each family.
    sockets: BTreeMap<Endpoint, OwnedFd>,
    sockets6: BTreeMap<Endpoint<[u8; 16]>, OwnedFd>,
}

/// Opens a socket for each UDP service of `services` that has none in
/// `sockets`, closes those of services gone. A socket that cannot be
/// opened is tried again at the next change (its datagrams meanwhile get
/// the kernel's port unreachable, as before this path existed).
fn follow<A: FamilyAddr>(
    sockets: &mut BTreeMap<Endpoint<A>, OwnedFd>,
    services: &BTreeMap<Endpoint<A>, Service>,
) {
    let wanted: Vec<Endpoint<A>> =
        services.keys().filter(|e| e.proto == PROTO_UDP).copied().collect();
    sockets.retain(|e, _| wanted.contains(e));
    for endpoint in wanted {
        if sockets.contains_key(&endpoint) {
            continue;
        }
        match socket::service(SocketAddr::new(endpoint.addr.ip(), endpoint.port)) {
            Ok(fd) => {
                sockets.insert(endpoint, fd);
            }
            Err(e) => {
                warn!(error = %e, "no slow path for this service's out-of-order fragments");
            }
        }
    }
}

impl SlowPath {
    fn run(mut self) {
        // The largest datagram's payload: a reassembled one can be that long.
        let mut buf = vec![0_u8; 65_536];
        // Closed: the reconciler, and so the controller, has stopped.
        while let Ok(changed) = self.placements.has_changed() {
            if changed {
                let placement = Arc::clone(&self.placements.borrow_and_update());
                self.follow_services(&placement);
            }
            let mut polled: Vec<libc::pollfd> = self
                .sockets
                .values()
                .chain(self.sockets6.values())
                .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            if polled.is_empty() {
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                continue;
            }
            // SAFETY: a valid array of pollfd of the length given.
            let ready =
                unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, POLL_MS) };
            if ready <= 0 {
                continue;
            }
            let readable = |fd: &OwnedFd| {
                polled.iter().any(|p| p.fd == fd.as_raw_fd() && p.revents & libc::POLLIN != 0)
            };
            let placement = Arc::clone(&self.placements.borrow());
            for (endpoint, fd) in self.sockets.iter().filter(|(_, fd)| readable(fd)) {
                self.drain(&placement, *endpoint, fd, &mut buf);
            }
            for (endpoint, fd) in self.sockets6.iter().filter(|(_, fd)| readable(fd)) {
                self.drain(&placement, *endpoint, fd, &mut buf);
            }
        }
        debug!("reassembly slow path stopped");
    }

    /// Takes up to `BATCH` datagrams from the socket on `endpoint` and
    /// sends each on, counting what became of it.
    fn drain<A: FamilyAddr>(
        &self,
        placement: &Placement,
        endpoint: Endpoint<A>,
        fd: &OwnedFd,
        buf: &mut [u8],
    ) {
        for _ in 0..BATCH {
            match socket::receive(fd, buf) {
                Ok(Some(got)) => {
                    let ok = self.forward(placement, endpoint, &got, buf);
                    let count = if ok { &self.counts.forwarded } else { &self.counts.dropped };
                    count.fetch_add(1, Relaxed);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(service = ?endpoint, error = %e, "reassembly socket");
                    break;
                }
            }
        }
    }

    /// Opens and closes sockets to follow the UDP services of both families.
    fn follow_services(&mut self, placement: &Placement) {
        follow(&mut self.sockets, &placement.services);
        follow(&mut self.sockets6, &placement.services6);
    }

    /// What the data plane holds of `flow`: its live entry, else its live
    /// handshake record; and the data plane's epoch now. `None` if the
    /// connection table cannot be read.
    fn earlier(&self, any: &AnyFlow) -> Option<(Earlier, u32)> {
        let (conn, now) = match self.reader.flow_entry(any) {
            Ok(found) => found,
            Err(e) => {
                debug!(error = %e, "reading the connection table");
                return None;
            }
        };
        if let Some(conn) = conn {
            return Some((Earlier::Entry(conn), now));
        }
        let record = match self.reader.handshake_record(any, now) {
            Ok(record) => record,
            Err(e) => {
                debug!(error = %e, "reading the handshake records");
                None
            }
        };
        let earlier = record
            .map_or(Earlier::Nothing, |(backend_id, flags)| Earlier::Record { backend_id, flags });
        Some((earlier, now))
    }

    /// Writes what `lb_xdp` would write for the datagram (`place::Writes`).
    /// A failed write costs the flow its stickiness at worst: the datagram
    /// is sent on all the same.
    fn write<A: FamilyAddr>(&self, any: &AnyFlow, placed: &Placed<A>, now: u32) {
        let (target, writes) = (&placed.target, &placed.writes);
        if let Some(flags) = writes.handshake
            && let Err(e) = self.flows.place_handshake(any, target.backend_id, now, flags)
        {
            debug!(error = %e, "writing the handshake records");
        }
        if let Some(conn) = writes.entry
            && let Err(e) = self.flows.place_flow(any, &conn)
        {
            debug!(error = %e, "writing the connection table");
        }
        if let Some(key) = writes.remember {
            let value = Persist { backend_id: target.backend_id, last_seen: now };
            if let Err(e) = self.flows.remember(&A::any_key(key), value) {
                debug!(error = %e, "writing the persistent clients");
            }
        }
        if writes.count
            && let Err(e) = self.flows.count_conn(target.backend_id)
        {
            debug!(error = %e, "counting the flow on its backend");
        }
    }

    /// Places and sends on one datagram; whether it was sent.
    fn forward<A: FamilyAddr>(
        &self,
        placement: &Placement,
        vip: Endpoint<A>,
        got: &socket::Received,
        buf: &[u8],
    ) -> bool {
        let Some(payload) = buf.get(..got.len) else {
            return false;
        };
        // Only what the kernel reassembled, with hop limit to spare.
        // Anything else the data plane passed to the VIP (a whole datagram
        // at TTL 1, one with no route) reached this socket, not an answer
        // from the stack: it is dropped here, unanswered.
        if !got.reassembled || got.ttl <= 1 {
            return false;
        }
        // The socket is of the VIP's family only (`IPV6_V6ONLY`).
        let Some(src) = A::of(got.from.ip()) else {
            return false;
        };
        let flow = Flow {
            src,
            dst: vip.addr,
            sport: got.from.port(),
            dport: vip.port,
            proto: PROTO_UDP,
            _pad: [0; 3],
        };
        let any = A::any(flow);
        let Some((earlier, now)) = self.earlier(&any) else {
            return false;
        };
        let held = HeldMaps(self.reader.as_ref());
        let placed = match place::place(placement, &flow, earlier, &held, now) {
            Ok(placed) => placed,
            Err(why) => {
                debug!(?flow, ?why, "reassembled datagram dropped");
                return false;
            }
        };
        self.write(&any, &placed, now);
        let target = placed.target;
        let to = SocketAddr::new(target.backend.addr.ip(), target.backend.port);
        match socket::send_as(got.from, to, got.ttl - 1, payload) {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "reassembled datagram not sent");
                false
            }
        }
    }
}
