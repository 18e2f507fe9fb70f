//! What the API answers: the live view of every service and backend. The
//! same types are the CLI's, the stats page's and the metrics' input.
use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use lb_common::{
    abi::{BackendConns, Traffic},
    counter::Counter,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    daemon::{
        health::state::{CheckResult, Status},
        weights,
    },
    desired::{
        checks::to_hex,
        model::{Forwarding, HealthCheck, Probe, Protocol, Service},
        names::{Check, Named as _, OnNoBackend},
        snat::pool_addresses,
    },
    plan::ids::{BackendKey, Key, backend_key, service_endpoint},
    write::reconciler::Sample,
};

/// Everything at once: `GET /api/v1/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// `lb-ctl`'s version.
    pub version: String,
    pub uptime_s: u64,
    pub services: Vec<ServiceView>,
    /// Packets by outcome since the data plane started (`lb_counters`).
    pub packets: BTreeMap<String, u64>,
    pub conntrack: ConntrackView,
    /// UDP datagrams to a VIP that came in fragments out of order, which
    /// the kernel reassembled and the controller sent on (lb-ctl `reassembled`).
    #[serde(default)]
    pub reassembled: ReassembledView,
    /// Services and backends that carry a change made through the API.
    pub runtime_changes: RuntimeChanges,
    /// What is wrong with the data plane's attachment (an interface no
    /// longer running the XDP program); empty when all is well. `/readyz`
    /// answers 503 while it is not empty.
    pub dataplane_problems: Vec<String>,
    /// When the controller published it (`/readyz` checks it is recent).
    #[serde(skip)]
    pub published: Option<std::time::Instant>,
}

/// The controller publishes a view every second; an older one means its
/// loop is stuck.
pub const READY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

impl Stats {
    /// Why the node is not ready (`/readyz` answers 503 with it, BGP
    /// withdraws every VIP), or `None` when it is: the controller's loop
    /// published within `READY_MAX_AGE`, the data plane is attached.
    pub fn not_ready(&self) -> Option<String> {
        let age = self.published.map_or(READY_MAX_AGE, |t| t.elapsed());
        if age >= READY_MAX_AGE {
            Some(format!("the controller has published nothing for {} ms", age.as_millis()))
        } else if !self.dataplane_problems.is_empty() {
            Some(self.dataplane_problems.join("; "))
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ReassembledView {
    /// Sent on to their backend.
    pub forwarded: u64,
    /// Dropped: no usable backend, direct routing, not reassembled, not sent.
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ConntrackView {
    /// Live (not expired) entries.
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct RuntimeChanges {
    pub services: usize,
    pub backends: usize,
    /// Where they are kept.
    pub state_file: Option<String>,
}

/// A service: its settings (the config file's keys) and its live numbers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub vip: String,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `maglev`, `rr`, `wrr`, `lc` or `sh`.
    pub scheduler: String,
    /// `nat`, `dsr` or `fullnat`.
    pub forwarding: String,
    /// `reject` or `drop`.
    pub on_no_backend: String,
    pub health: Option<HealthCheckView>,
    /// Seconds a backend's weight ramps up over once usable (0: at once).
    #[serde(default)]
    pub slow_start_s: u64,
    /// Seconds a client keeps the backend of its last flow (absent: no persistence).
    #[serde(default)]
    pub persistence_s: Option<u64>,
    /// The prefix length persistence groups clients by (absent: no persistence).
    #[serde(default)]
    pub persistence_netmask: Option<u8>,
    /// The networks that may reach the service (empty: every source).
    #[serde(default)]
    pub allowed_sources: Vec<String>,
    /// `fullnat`: the addresses flows leave from (empty: the load
    /// balancer's own address toward each backend).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat_addresses: Vec<String>,
    /// `fullnat`: the source ports, `first-last` (absent for other modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<String>,
    pub traffic: TrafficView,
    pub rates: RatesView,
    /// Backends that take new flows now.
    pub backends_in_rotation: usize,
    /// Whether its backups take the new flows: it has backups and no
    /// primary backend is usable.
    #[serde(default)]
    pub backups_serve: bool,
    pub backends: Vec<BackendView>,
}

impl ServiceView {
    /// The service's endpoint as the planner names it; `None` for a view
    /// whose VIP does not parse (never one made from the model).
    pub fn key(&self) -> Option<Key> {
        let proto = if self.protocol == "udp" { Protocol::Udp } else { Protocol::Tcp };
        Some(Key::new(self.vip.parse().ok()?, self.port, proto.number()))
    }
}

/// `[service.health]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct HealthCheckView {
    /// `tcp`, `http`, `https`, `udp` or `script`.
    pub check: String,
    /// `http`, `https`.
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub expect_body: Option<String>,
    /// `https`: the name sent and verified (absent: the probed address).
    #[serde(default)]
    pub sni: Option<String>,
    /// `https`: the certificates trusted instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// `https`: whether the certificate is verified.
    #[serde(default)]
    pub verify: Option<bool>,
    /// `udp`: the datagram sent, in hex (`00 01 ff`).
    #[serde(default)]
    pub send_hex: Option<String>,
    /// `udp`: the pattern the reply must match.
    #[serde(default)]
    pub expect: Option<String>,
    /// `script`: the program and its first arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `script`: whether an exit status 2 to 255 sets the weight.
    #[serde(default)]
    pub dynamic_weight: Option<bool>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// Where every backend is probed instead of its own address (unless it says otherwise).
    pub check_address: Option<String>,
    /// Where every backend is probed instead of its own port (unless it says otherwise).
    pub check_port: Option<u16>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BackendView {
    pub address: String,
    pub port: u16,
    /// The operator's weight (the file's, or the API's).
    pub weight: u32,
    /// The weight its script check's last success gave (`dynamic_weight`:
    /// the exit status, 2 to 255); absent: none, the backend's own counts.
    #[serde(default)]
    pub check_weight: Option<u32>,
    /// The weight new flows are spread by now: `check_weight` if set
    /// (unless `weight` is 0), else `weight`, times `ramp` in slow start;
    /// 0 while out of rotation.
    #[serde(default)]
    pub effective_weight: f64,
    /// In slow start: the fraction of its weight it gets now (0.01 to 1),
    /// growing over `slow_start_s`; absent otherwise.
    #[serde(default)]
    pub ramp: Option<f64>,
    /// Its own `slow_start_s`, over its service's.
    #[serde(default)]
    pub slow_start_s: Option<u64>,
    /// The operator's word: `active`, `drain` or `maint`.
    pub state: String,
    /// Where it is probed instead of its own address (over the service's `check_address`).
    pub check_address: Option<String>,
    /// Where it is probed instead of its own port (over the service's `check_port`).
    pub check_port: Option<u16>,
    /// A sorry server: new flows only while no primary backend of its
    /// service is usable (`backups_serve`).
    #[serde(default)]
    pub backup: bool,
    /// At this many connections it takes no new flow (0: no limit).
    #[serde(default)]
    pub max_conns: u32,
    /// Whether new flows may go to it (active, weight > 0, not DOWN; a
    /// backup only while its service's backups serve).
    pub in_rotation: bool,
    pub health: HealthView,
    pub conns: ConnsView,
    pub traffic: TrafficView,
    pub rates: RatesView,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `UP`, `DOWN`, `UNKNOWN` (not probed yet) or `UNCHECKED` (no health checks).
    pub status: String,
    pub last_check: Option<CheckView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CheckView {
    pub ok: bool,
    /// `HTTP 200`, `connection refused`, `timeout after 1000 ms`…
    pub detail: String,
    pub duration_ms: f64,
    /// Unix time of the check, in milliseconds.
    pub at_unix_ms: u64,
}

/// IPVS's ActiveConn (established) and InActConn (every other state).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ConnsView {
    pub active: u32,
    pub inactive: u32,
}

/// Counted since the data plane started.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct TrafficView {
    /// Client -> backend.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Backend -> client.
    pub out_packets: u64,
    pub out_bytes: u64,
    pub new_flows: u64,
}

/// Per second, over the last sampling interval (about a second).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct RatesView {
    pub in_packets: f64,
    pub in_bytes: f64,
    pub out_packets: f64,
    pub out_bytes: f64,
    pub new_flows: f64,
}

/// One entry of the connection table, like a line of `ipvsadm -Lnc`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ConnView {
    pub protocol: String,
    pub client: String,
    pub vip: String,
    /// `None` when the backend has been removed since.
    pub backend: Option<String>,
    pub service: Option<String>,
    /// `SYN`, `ESTABLISHED`, `CLOSING`, `CLOSED` or `UDP`.
    pub state: String,
    /// Since the client's last packet.
    pub idle_ms: u64,
    /// Until the entry expires if the flow stays idle.
    pub expires_in_ms: u64,
    /// A full-NAT flow's pool address and port: the source its backend
    /// sees (absent for the other modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
}

/// `GET /api/v1/conns`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ConnsList {
    /// Live entries in the table (all services).
    pub total: usize,
    /// Whether `conns` stops at the limit.
    pub truncated: bool,
    pub conns: Vec<ConnView>,
}

/// The last two samples of the data plane's counters, for totals and rates.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub last: Option<(std::time::Instant, Sample)>,
    pub previous: Option<(std::time::Instant, Sample)>,
}

impl Samples {
    pub fn push(&mut self, sample: Sample) {
        self.previous = self.last.take();
        self.last = Some((std::time::Instant::now(), sample));
    }
}

/// What the view needs to know of a backend's health.
pub trait HealthLookup {
    /// `None`: the backend is not checked.
    fn status(&self, key: &BackendKey) -> Option<(Status, Option<&CheckResult>)>;
    /// Whether health checks keep it out of rotation.
    fn is_down(&self, key: &BackendKey) -> bool;
    /// The weight its script check gave (`dynamic_weight`), if any.
    fn weight(&self, key: &BackendKey) -> Option<u32>;
    /// The fraction of its weight it gets while in slow start, if it is.
    fn ramp(&self, key: &BackendKey) -> Option<f64>;
}

/// The view of `services` from their health and the samples; a full-NAT
/// service naming no pool shows `[dataplane]`'s (`snat_default`), which it
/// runs with.
pub fn services(
    services: &[Service],
    snat_default: &[IpAddr],
    health: &impl HealthLookup,
    samples: &Samples,
) -> Vec<ServiceView> {
    services.iter().map(|s| service(s, snat_default, health, samples)).collect()
}

fn service(
    s: &Service,
    snat_default: &[IpAddr],
    health: &impl HealthLookup,
    samples: &Samples,
) -> ServiceView {
    let key = service_endpoint(s);
    let traffic = |sample: &Sample| sample.services.get(&key).copied();
    let backups_serve = s.backups_serve(|b| !health.is_down(&backend_key(s, b.address, b.port)));
    let backends: Vec<BackendView> = s
        .backends
        .iter()
        .map(|b| {
            let bkey = backend_key(s, b.address, b.port);
            let status = health.status(&bkey);
            let in_rotation =
                b.effective_weight() > 0 && !health.is_down(&bkey) && (!b.backup || backups_serve);
            let check_weight = health.weight(&bkey);
            let ramp = health.ramp(&bkey).filter(|_| in_rotation);
            let planned = f64::from(weights::planned_weight(b, check_weight)) * ramp.unwrap_or(1.0);
            let live = |sample: &Sample| sample.backends.get(&bkey).copied();
            let (t, conns) = latest(samples, live).unwrap_or_default();
            BackendView {
                address: b.address.to_string(),
                port: b.port,
                weight: b.weight,
                check_weight,
                effective_weight: if in_rotation { planned } else { 0.0 },
                ramp,
                slow_start_s: b.slow_start.map(|d| d.as_secs()),
                backup: b.backup,
                max_conns: b.max_conns,
                state: b.state.name().into(),
                check_address: b.check.address.map(|a| a.to_string()),
                check_port: b.check.port,
                in_rotation,
                health: health_view(status),
                conns: conns_view(conns),
                traffic: traffic_view(&t),
                rates: rates(samples, |sample| live(sample).map(|(t, _)| t)),
            }
        })
        .collect();
    ServiceView {
        name: s.name.clone(),
        vip: s.vip.to_string(),
        port: s.port,
        protocol: s.protocol.to_string(),
        scheduler: s.scheduler.name().into(),
        forwarding: s.forwarding.name().into(),
        on_no_backend: OnNoBackend::of(s.reject).name().into(),
        health: s.health.as_ref().map(health_check_view),
        slow_start_s: s.slow_start.as_secs(),
        persistence_s: s.persistence.map(|p| p.timeout.as_secs()),
        persistence_netmask: s.persistence.map(|p| p.netmask),
        allowed_sources: s.allowed_sources.iter().map(ToString::to_string).collect(),
        snat_addresses: if s.forwarding == Forwarding::FullNat {
            pool_addresses(s, snat_default).iter().map(ToString::to_string).collect()
        } else {
            Vec::new()
        },
        snat_ports: (s.forwarding == Forwarding::FullNat).then(|| s.snat.ports.to_string()),
        traffic: traffic_view(&latest(samples, traffic).unwrap_or_default()),
        rates: rates(samples, traffic),
        backends_in_rotation: backends.iter().filter(|b| b.in_rotation).count(),
        backups_serve: backups_serve && backends.iter().any(|b| b.backup),
        backends,
    }
}

fn health_check_view(h: &HealthCheck) -> HealthCheckView {
    let mut view = HealthCheckView {
        check: Check::of(&h.probe).name().into(),
        interval_ms: h.interval.as_millis() as u64,
        timeout_ms: h.timeout.as_millis() as u64,
        rise: h.rise,
        fall: h.fall,
        check_address: h.target.address.map(|a| a.to_string()),
        check_port: h.target.port,
        ..HealthCheckView::default()
    };
    match &h.probe {
        Probe::Tcp => {}
        Probe::Http { path, expect_status, expect_body, tls } => {
            view.path = Some(path.clone());
            view.expect_status = Some(*expect_status);
            view.expect_body.clone_from(expect_body);
            if let Some(tls) = tls {
                view.sni.clone_from(&tls.sni);
                view.ca_file = tls.ca_file.as_ref().map(|p| p.display().to_string());
                view.verify = Some(tls.verify);
            }
        }
        Probe::Udp { send, expect } => {
            view.send_hex = Some(to_hex(send));
            view.expect.clone_from(expect);
        }
        Probe::Script { command, dynamic_weight } => {
            view.command = Some(command.clone());
            view.dynamic_weight = Some(*dynamic_weight);
        }
    }
    view
}

fn latest<T>(samples: &Samples, get: impl Fn(&Sample) -> Option<T>) -> Option<T> {
    samples.last.as_ref().and_then(|(_, s)| get(s))
}

fn health_view(status: Option<(Status, Option<&CheckResult>)>) -> HealthView {
    let Some((status, last)) = status else {
        return HealthView { status: "UNCHECKED".into(), last_check: None };
    };
    HealthView {
        status: status.to_string(),
        last_check: last.map(|r| CheckView {
            ok: r.ok,
            detail: r.detail.clone(),
            duration_ms: r.duration.as_secs_f64() * 1000.0,
            at_unix_ms: r
                .at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }),
    }
}

fn conns_view(c: BackendConns) -> ConnsView {
    ConnsView { active: c.active, inactive: c.inactive }
}

fn traffic_view(t: &Traffic) -> TrafficView {
    TrafficView {
        in_packets: t.in_packets,
        in_bytes: t.in_bytes,
        out_packets: t.out_packets,
        out_bytes: t.out_bytes,
        new_flows: t.new_flows,
    }
}

/// Per-second rates between the last two samples (zero until there are two).
fn rates(samples: &Samples, get: impl Fn(&Sample) -> Option<Traffic>) -> RatesView {
    let (Some((t1, s1)), Some((t0, s0))) = (&samples.last, &samples.previous) else {
        return RatesView::default();
    };
    let (Some(now), Some(before)) = (get(s1), get(s0)) else {
        return RatesView::default();
    };
    let seconds = t1.duration_since(*t0).as_secs_f64();
    if seconds <= 0.0 {
        return RatesView::default();
    }
    // A counter that went backwards (a backend id reused) has no rate.
    let per_second = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
    RatesView {
        in_packets: per_second(now.in_packets, before.in_packets),
        in_bytes: per_second(now.in_bytes, before.in_bytes),
        out_packets: per_second(now.out_packets, before.out_packets),
        out_bytes: per_second(now.out_bytes, before.out_bytes),
        new_flows: per_second(now.new_flows, before.new_flows),
    }
}

/// Packet outcomes by their counter names.
pub fn packets(samples: &Samples) -> BTreeMap<String, u64> {
    let outcomes = latest(samples, |s| Some(s.outcomes.clone())).unwrap_or_default();
    Counter::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name().to_owned(), outcomes.get(i).copied().unwrap_or(0)))
        .collect()
}

/// The name of a connection state, as `ipvsadm -Lnc` writes it.
pub fn conn_state_name(state: u8) -> &'static str {
    use lb_common::abi::{CONN_CLOSED, CONN_CLOSING, CONN_ESTABLISHED, CONN_SYN, CONN_UDP};
    match state {
        CONN_SYN => "SYN",
        CONN_ESTABLISHED => "ESTABLISHED",
        CONN_CLOSING => "CLOSING",
        CONN_CLOSED => "CLOSED",
        CONN_UDP => "UDP",
        _ => "UNKNOWN",
    }
}

/// `a.b.c.d:port`, or `[v6]:port` for an IPv6 address (as `SocketAddr`
/// prints, and as `ipvsadm -Ln` shows).
pub fn endpoint_text(address: &str, port: u16) -> String {
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

/// `3d 4h 5m 6s`, leading zero units left out.
pub fn duration_text(s: u64) -> String {
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}
