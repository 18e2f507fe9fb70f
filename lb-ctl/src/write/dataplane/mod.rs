//! The kernel maps behind traits, so the reconciler can be tested against an
//! in-memory copy (`fake`) and run against the real thing (`kernel`): the
//! writer's (`Maps`, the reconciler's alone), the read-only handle
//! (`MapReader`: counters, connections, attachment, for the API and the
//! metrics), and the reassembly slow path's per-flow writes (`FlowWriter`).
pub mod attach;
mod clock;
pub mod conn_table;
pub mod fake;
pub mod kernel;
pub mod pins;
pub mod sys;
mod tx_ports;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use lb_common::{
    abi::{BackendConns, Conn, Flow, Persist, PersistKey, Traffic},
    trace::{TraceConf, TraceEvent},
};

use crate::plan::{
    diff::Op,
    ids::{BackendKey, Key},
    image::Image,
    settings::Settings,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DataplaneError {
    pub fn kernel(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Kernel { what: what.into(), source: source.into() }
    }
}

/// What the data plane counted, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packet outcomes, indexed like `lb_common::counter::Counter::ALL`.
    pub outcomes: Vec<u64>,
    /// By service id.
    pub services: BTreeMap<u32, Traffic>,
    /// By backend id.
    pub backends: BTreeMap<u32, Traffic>,
}

/// One entry of a connection table (IPv4's or IPv6's), as `ipvsadm -Lnc`
/// shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEntry {
    /// The client's address and port.
    pub client: std::net::SocketAddr,
    /// A full-NAT flow's pool address and port: its backend's client.
    pub snat: Option<std::net::SocketAddr>,
    /// The service it is to: its VIP, port and protocol.
    pub service: Key,
    pub conn: Conn,
    /// Since the flow's last client packet.
    pub idle: Duration,
    /// Until the entry expires if the flow stays idle.
    pub expires_in: Duration,
}

/// Writes to the data plane's maps. Every write is idempotent (a put of what
/// is there, a delete of what is gone, succeed), so a failed apply can be
/// retried from the last image known to be in place.
pub trait Maps: Send {
    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError>;

    /// What the data plane's own maps should hold (its interfaces,
    /// timeouts, policy, meta), planned when it was opened for its
    /// `[dataplane]` section, which a reload does not change. The
    /// reconciler writes them with the services.
    fn settings(&self) -> &Settings;

    /// Moves the data plane's clock one tick on at once: every cached FIB
    /// answer is looked up again, and every connection entry is a tick
    /// older (the clock ticks by itself; tests use this instead of waiting).
    fn advance_clock(&mut self) -> Result<(), DataplaneError>;

    /// Counts each backend's active (established) and inactive connections
    /// in the connection table, removes expired entries, and publishes the
    /// counts to the data plane (`lc`) and the caller. Expired full-NAT
    /// mappings are removed too, which frees their ports.
    /// `backends`: the backends in use (the applied image's, both
    /// families), by id, with their service's id; `moved_by_kernel`: the
    /// backends whose counts the data plane also moves (each `lc` pick and
    /// each new flow on a backend with `max_conns` counts at once, also
    /// for a flow that never reaches the table), so theirs are always
    /// rewritten.
    fn recount_connections(
        &mut self,
        backends: &BTreeMap<u32, u32>,
        moved_by_kernel: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, BackendConns>, DataplaneError>;

    /// A handle for the reads, which must not wait behind writes (see
    /// `MapReader`), taken once the maps are set up.
    fn reader(&self) -> Result<std::sync::Arc<dyn MapReader>, DataplaneError>;

    /// A handle for the reassembly slow path's per-flow writes (see `FlowWriter`).
    fn flow_writer(&self) -> Result<std::sync::Arc<dyn FlowWriter>, DataplaneError>;

    /// What the maps hold, when they were a previous controller's (an
    /// adopted data plane); `None` for maps this process created. The
    /// writer's own read: where its first apply starts from.
    fn read_image(&mut self) -> Result<Option<Image>, DataplaneError>;

    /// The packet trace's handle (see `TraceTap`), taken once: the ring
    /// buffer has one reader.
    fn trace_tap(&self) -> Result<Box<dyn TraceTap>, DataplaneError>;
}

/// The packet trace's side of the data plane (`daemon::trace` drives it):
/// its switch and filter, its ring buffer, its losses. One owner, on a
/// thread of its own: `read` blocks.
pub trait TraceTap: Send {
    /// Writes `lb_trace_conf` (`on` zero: the trace is off).
    fn set(&mut self, conf: &TraceConf) -> Result<(), DataplaneError>;

    /// Appends the events the data plane sent, waiting up to `timeout` for
    /// the first.
    fn read(&mut self, timeout: Duration, into: &mut Vec<TraceEvent>)
    -> Result<(), DataplaneError>;

    /// The events the data plane could not send, over all CPUs: over the
    /// rate limit, and with the ring buffer full.
    fn lost(&self) -> Result<(u64, u64), DataplaneError>;

    /// The backend with id `id` of the family `family` (4 or 6): its
    /// service's endpoint and its own.
    fn backend(&self, family: u8, id: u32) -> Option<BackendKey>;
}

/// Reads of the data plane, which never wait behind the writer and never
/// write: the counters, listing the connection table (a walk of up to
/// millions of entries), checking the programs' attachment (what `/readyz`
/// says), a flow's entry. Each call blocks: run it on a blocking thread,
/// never on the async workers.
pub trait MapReader: Send + Sync {
    /// Reads the packet counters and the traffic of the given services and
    /// backends (by id).
    fn counts(&self, services: &[u32], backends: &[u32]) -> Result<Counts, DataplaneError>;

    /// Up to `limit` live entries of the connection tables, IPv4's then
    /// IPv6's (only those to the service `to`, if given), and how many
    /// such entries they hold.
    fn connections(
        &self,
        limit: usize,
        to: Option<Key>,
    ) -> Result<(Vec<ConnEntry>, usize), DataplaneError>;

    /// What is wrong with the programs' attachment (an interface that no
    /// longer runs the XDP program); empty when all is well, or when the
    /// maps are not attached anywhere.
    fn attachment_problems(&self) -> Vec<String>;

    /// The connection table's live entry for `flow` (IPv4's or IPv6's
    /// table, by its family; an expired one counts as none), and the data
    /// plane's epoch now: for the reassembly slow path
    /// (`crate::write::reassembled`), which places a flow as `lb_xdp` would.
    fn flow_entry(&self, flow: &AnyFlow) -> Result<(Option<Conn>, u32), DataplaneError>;

    /// The backend id and the flags (`HANDSHAKE_*`) of `flow`'s live
    /// handshake record (`lb_handshakes` or `lb_handshakes6`): where the
    /// data plane placed the flow's first datagram, which no entry records
    /// yet. `now` is the epoch `flow_entry` returned.
    fn handshake_record(
        &self,
        flow: &AnyFlow,
        now: u32,
    ) -> Result<Option<(u32, u32)>, DataplaneError>;

    /// A persistent client's entry (`lb_persist` or `lb_persist6`): the
    /// backend of its last recorded flow, and when.
    fn persisted(&self, key: &AnyPersistKey) -> Result<Option<Persist>, DataplaneError>;

    /// Backend `id`'s connections as `lb_be_conns` counts them now, which
    /// `max_conns` is checked against.
    fn backend_conns(&self, id: u32) -> Result<BackendConns, DataplaneError>;
}

/// A persistent client's key (`PersistKey`), of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyPersistKey {
    V4(PersistKey),
    V6(PersistKey<[u8; 16]>),
}

/// A flow of either family: what the reassembly slow path reads and
/// writes per flow, each family in its own maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyFlow {
    V4(Flow),
    V6(Flow<[u8; 16]>),
}

/// The reassembly slow path's writes (`crate::write::reassembled`): it
/// places a flow as `lb_xdp` would, and records it as `lb_xdp` does.
/// Per-flow state, not configuration, so they do not wait behind the
/// reconciler (which never writes it).
pub trait FlowWriter: Send + Sync {
    /// Writes `flow`'s handshake record: placed on `backend_id` at `now`,
    /// with `flags` (`HANDSHAKE_*`), as `lb_xdp` does for a flow's first
    /// datagram.
    fn place_handshake(
        &self,
        flow: &AnyFlow,
        backend_id: u32,
        now: u32,
        flags: u32,
    ) -> Result<(), DataplaneError>;

    /// Writes `conn` for `flow` into the connection table, as `lb_xdp`
    /// does for a flow it places.
    fn place_flow(&self, flow: &AnyFlow, conn: &Conn) -> Result<(), DataplaneError>;

    /// Records a persistent client's backend (`lb_persist` or
    /// `lb_persist6`), as `lb_xdp` does when it records the client's flow.
    fn remember(&self, key: &AnyPersistKey, value: Persist) -> Result<(), DataplaneError>;

    /// Counts a new flow on backend `id` in `lb_be_conns` at once (one more
    /// inactive connection), as `lb_xdp` does for each flow it places on a
    /// backend with `max_conns`.
    fn count_conn(&self, id: u32) -> Result<(), DataplaneError>;
}
