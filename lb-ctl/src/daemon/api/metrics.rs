//! `GET /metrics`: the Prometheus exposition (OpenMetrics text) of a
//! [`Stats`] snapshot.
//!
//! The snapshot already holds every number, so each scrape builds a fresh
//! registry from it and encodes that: nothing is kept between scrapes, and a
//! removed service or backend disappears from the next scrape at once.
//! Counters count since the data plane started; a restart of the data plane
//! resets them, which Prometheus's `rate()` handles.
use std::{
    fmt::{self, Write as _},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry, Unit},
};

use lb_common::counter::{Counter as Outcome, Kind};

use super::view::{BackendView, ServiceView, Stats, TrafficView, endpoint_text};
use crate::desired::{model::AdminState, names::Named as _};

/// The exposition of `stats`, ending with `# EOF`.
pub fn render(stats: &Stats) -> String {
    let mut registry = Registry::default();
    Metrics::new(&mut registry, stats.conntrack.capacity > 0).fill(stats);
    let mut out = String::new();
    // Writing to a String cannot fail, and every gauge value is an i64 or f64
    // (prometheus-client only refuses u64::MAX).
    encode(&mut out, &registry).expect("encoding metrics into a String");
    out
}

/// A label value as the text format wants it: prometheus-client writes label
/// values verbatim, so a `"`, `\` or newline in a service name would break
/// the exposition without this.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Text(String);

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str(r"\\")?,
                '"' => encoder.write_str(r#"\""#)?,
                '\n' => encoder.write_str(r"\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `in`: client -> backend; `out`: backend -> client.
const DIRECTIONS: [&str; 2] = ["in", "out"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: Text,
    /// `addr:port`.
    vip: Text,
    protocol: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceDirectionLabels {
    service: Text,
    vip: Text,
    protocol: Text,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: Text,
    /// `addr:port`.
    backend: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendDirectionLabels {
    service: Text,
    backend: Text,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendStateLabels {
    service: Text,
    backend: Text,
    state: &'static str,
}

type Counters<L> = Family<L, Counter>;
type Gauges<L> = Family<L, Gauge>;
type FloatGauges<L> = Family<L, Gauge<f64, AtomicU64>>;

/// Every metric family, registered in output order: the data plane's, then
/// the services', then the backends'.
struct Metrics {
    build_info: Gauges<VersionLabels>,
    uptime: Gauge,
    packets: Counters<OutcomeLabels>,
    dropped_packets: Counters<DropLabels>,
    conntrack_entries: Gauge,
    conntrack_capacity: Gauge,
    reassembled: Counters<OutcomeLabels>,
    /// None without a table (capacity 0): the ratio has no value.
    conntrack_fill: Option<Gauge<f64, AtomicU64>>,
    services: ServiceMetrics,
    backends: BackendMetrics,
}

struct ServiceMetrics {
    packets: Counters<ServiceDirectionLabels>,
    bytes: Counters<ServiceDirectionLabels>,
    new_flows: Counters<ServiceLabels>,
    backends: Gauges<ServiceLabels>,
    in_rotation: Gauges<ServiceLabels>,
    backups_serve: Gauges<ServiceLabels>,
}

struct BackendMetrics {
    packets: Counters<BackendDirectionLabels>,
    bytes: Counters<BackendDirectionLabels>,
    new_flows: Counters<BackendLabels>,
    active: Gauges<BackendLabels>,
    inactive: Gauges<BackendLabels>,
    max_conns: Gauges<BackendLabels>,
    weight: Gauges<BackendLabels>,
    effective_weight: FloatGauges<BackendLabels>,
    up: Gauges<BackendLabels>,
    in_rotation: Gauges<BackendLabels>,
    state: Gauges<BackendStateLabels>,
    check_duration: FloatGauges<BackendLabels>,
    check_ok: Gauges<BackendLabels>,
}

/// A new metric registered as `name` (counters get `_total` appended by the
/// encoder, and `unit` is appended to the name as `_seconds`, `_bytes`…).
/// The encoder ends `help` with a period itself.
fn metric<M: Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> M {
    let m = M::default();
    let help = help.trim_end_matches('.');
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, m.clone()),
        None => registry.register(name, help, m.clone()),
    }
    m
}

impl Metrics {
    fn new(r: &mut Registry, with_fill_ratio: bool) -> Self {
        Self {
            build_info: metric(r, "lb_build_info", "lb-ctl's version, as a label; always 1", None),
            uptime: metric(r, "lb_uptime", "Time since lb-ctl started", Some(Unit::Seconds)),
            packets: metric(r, "lb_packets", "Packets seen by the XDP program, by outcome", None),
            dropped_packets: metric(
                r,
                "lb_dropped_packets",
                "Packets dropped by the XDP program, by reason (the drop_* outcomes)",
                None,
            ),
            conntrack_entries: metric(
                r,
                "lb_conntrack_entries",
                "Live (not expired) entries in the connection table",
                None,
            ),
            conntrack_capacity: metric(
                r,
                "lb_conntrack_capacity",
                "Entries the connection table can hold",
                None,
            ),
            conntrack_fill: with_fill_ratio.then(|| {
                metric(
                    r,
                    "lb_conntrack_fill_ratio",
                    "Live entries of the connection table over its capacity",
                    None,
                )
            }),
            reassembled: metric(
                r,
                "lb_reassembled_datagrams",
                "UDP datagrams to a VIP whose fragments came out of order, reassembled by the \
                 kernel and placed by lb-ctl, by outcome (forwarded, dropped)",
                None,
            ),
            services: ServiceMetrics::new(r),
            backends: BackendMetrics::new(r),
        }
    }

    fn fill(&self, stats: &Stats) {
        self.build_info
            .get_or_create(&VersionLabels { version: stats.version.as_str().into() })
            .set(1);
        self.uptime.set(int(stats.uptime_s));
        for (outcome, &n) in &stats.packets {
            self.packets
                .get_or_create(&OutcomeLabels { outcome: outcome.as_str().into() })
                .inc_by(n);
            if let Some(reason) = drop_reason(outcome) {
                self.dropped_packets.get_or_create(&DropLabels { reason: reason.into() }).inc_by(n);
            }
        }
        let conntrack = stats.conntrack;
        self.conntrack_entries.set(int(conntrack.entries));
        self.conntrack_capacity.set(int(conntrack.capacity));
        for (outcome, n) in
            [("forwarded", stats.reassembled.forwarded), ("dropped", stats.reassembled.dropped)]
        {
            self.reassembled.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc_by(n);
        }
        if let Some(fill) = &self.conntrack_fill {
            fill.set(conntrack.entries as f64 / conntrack.capacity as f64);
        }
        for service in &stats.services {
            let name = self.services.fill(service);
            for backend in &service.backends {
                self.backends.fill(&name, backend);
            }
        }
    }
}

impl ServiceMetrics {
    fn new(r: &mut Registry) -> Self {
        Self {
            packets: metric(
                r,
                "lb_service_packets",
                "Packets of the service's flows, client to backend (in) or back (out)",
                None,
            ),
            bytes: metric(
                r,
                "lb_service",
                "Bytes of the service's flows, client to backend (in) or back (out)",
                Some(Unit::Bytes),
            ),
            new_flows: metric(
                r,
                "lb_service_new_flows",
                "Flows of the service scheduled to a backend",
                None,
            ),
            backends: metric(r, "lb_service_backends", "Backends configured for the service", None),
            in_rotation: metric(
                r,
                "lb_service_backends_in_rotation",
                "Backends of the service that take new flows",
                None,
            ),
            backups_serve: metric(
                r,
                "lb_service_backups_serving",
                "1 when the service's backups take the new flows (no primary backend is usable), else 0",
                None,
            ),
        }
    }

    /// Fills in `s`'s numbers; returns its `service` label.
    fn fill(&self, s: &ServiceView) -> Text {
        let labels = ServiceLabels {
            service: s.name.as_str().into(),
            vip: Text(endpoint_text(&s.vip, s.port)),
            protocol: s.protocol.as_str().into(),
        };
        let direction = |direction| ServiceDirectionLabels {
            service: labels.service.clone(),
            vip: labels.vip.clone(),
            protocol: labels.protocol.clone(),
            direction,
        };
        for (d, (packets, bytes)) in DIRECTIONS.into_iter().zip(directions(&s.traffic)) {
            self.packets.get_or_create(&direction(d)).inc_by(packets);
            self.bytes.get_or_create(&direction(d)).inc_by(bytes);
        }
        self.new_flows.get_or_create(&labels).inc_by(s.traffic.new_flows);
        self.backends.get_or_create(&labels).set(int(s.backends.len()));
        self.in_rotation.get_or_create(&labels).set(int(s.backends_in_rotation));
        self.backups_serve.get_or_create(&labels).set(flag(s.backups_serve));
        labels.service
    }
}

impl BackendMetrics {
    fn new(r: &mut Registry) -> Self {
        Self {
            packets: metric(
                r,
                "lb_backend_packets",
                "Packets of the backend's flows, client to backend (in) or back (out)",
                None,
            ),
            bytes: metric(
                r,
                "lb_backend",
                "Bytes of the backend's flows, client to backend (in) or back (out)",
                Some(Unit::Bytes),
            ),
            new_flows: metric(r, "lb_backend_new_flows", "Flows scheduled to the backend", None),
            active: metric(
                r,
                "lb_backend_active_connections",
                "Established connections to the backend (IPVS ActiveConn)",
                None,
            ),
            inactive: metric(
                r,
                "lb_backend_inactive_connections",
                "Connections to the backend in any other state (IPVS InActConn)",
                None,
            ),
            max_conns: metric(
                r,
                "lb_backend_max_connections",
                "The backend's max_conns: at active + inactive connections it takes no new flow (only for backends with a limit)",
                None,
            ),
            weight: metric(r, "lb_backend_weight", "Configured weight of the backend", None),
            effective_weight: metric(
                r,
                "lb_backend_effective_weight",
                "Weight new flows are spread by now: a script check's dynamic weight, else the configured one, times the ramp in slow start; 0 out of rotation",
                None,
            ),
            up: metric(
                r,
                "lb_backend_up",
                "0 when health checks say the backend is DOWN, else 1",
                None,
            ),
            in_rotation: metric(
                r,
                "lb_backend_in_rotation",
                "1 when the backend takes new flows (active, weight > 0, not DOWN; a backup only while no primary is usable), else 0",
                None,
            ),

            state: metric(
                r,
                "lb_backend_state",
                "Operator state of the backend: 1 for the current one, 0 for the others",
                None,
            ),
            check_duration: metric(
                r,
                "lb_backend_check_duration",
                "Duration of the backend's last health check",
                Some(Unit::Seconds),
            ),
            check_ok: metric(
                r,
                "lb_backend_check_ok",
                "1 when the backend's last health check succeeded, else 0",
                None,
            ),
        }
    }

    fn fill(&self, service: &Text, b: &BackendView) {
        let labels = BackendLabels {
            service: service.clone(),
            backend: Text(endpoint_text(&b.address, b.port)),
        };
        let direction = |direction| BackendDirectionLabels {
            service: labels.service.clone(),
            backend: labels.backend.clone(),
            direction,
        };
        for (d, (packets, bytes)) in DIRECTIONS.into_iter().zip(directions(&b.traffic)) {
            self.packets.get_or_create(&direction(d)).inc_by(packets);
            self.bytes.get_or_create(&direction(d)).inc_by(bytes);
        }
        self.new_flows.get_or_create(&labels).inc_by(b.traffic.new_flows);
        self.active.get_or_create(&labels).set(b.conns.active.into());
        self.inactive.get_or_create(&labels).set(b.conns.inactive.into());
        // Absent without a limit: `active + inactive >= max_connections`
        // then matches only limited backends, with no `> 0` to add.
        if b.max_conns != 0 {
            self.max_conns.get_or_create(&labels).set(b.max_conns.into());
        }
        self.weight.get_or_create(&labels).set(b.weight.into());
        self.effective_weight.get_or_create(&labels).set(b.effective_weight);
        self.up.get_or_create(&labels).set(flag(b.health.status != "DOWN"));
        self.in_rotation.get_or_create(&labels).set(flag(b.in_rotation));
        for state in AdminState::ALL.iter().map(|state| state.name()) {
            let state_labels = BackendStateLabels {
                service: labels.service.clone(),
                backend: labels.backend.clone(),
                state,
            };
            self.state.get_or_create(&state_labels).set(flag(b.state == state));
        }
        if let Some(check) = &b.health.last_check {
            self.check_duration.get_or_create(&labels).set(check.duration_ms / 1000.0);
            self.check_ok.get_or_create(&labels).set(flag(check.ok));
        }
    }
}

/// `(packets, bytes)` in [`DIRECTIONS`] order.
fn directions(t: &TrafficView) -> [(u64, u64); 2] {
    [(t.in_packets, t.in_bytes), (t.out_packets, t.out_bytes)]
}

/// A gauge's value (saturating: no count here comes near 2^63).
fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// A dropped outcome's reason, the label of `lb_dropped_packets`: its name
/// without the `drop_` every dropped counter's name starts with.
fn drop_reason(outcome: &str) -> Option<&str> {
    let dropped = Outcome::from_name(outcome).is_some_and(|c| c.kind() == Kind::Dropped);
    if dropped { outcome.strip_prefix("drop_") } else { None }
}

#[cfg(test)]
mod dashboard;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::view::{CheckView, ConnsView, ConntrackView, HealthView};

    fn traffic(base: u64) -> TrafficView {
        TrafficView {
            in_packets: base,
            in_bytes: base * 100,
            out_packets: base * 2,
            out_bytes: base * 1000,
            new_flows: base / 10,
        }
    }

    fn backend(address: &str, port: u16, status: &str) -> BackendView {
        BackendView {
            address: address.into(),
            port,
            weight: 1,
            state: "active".into(),
            in_rotation: true,
            health: HealthView { status: status.into(), last_check: None },
            ..BackendView::default()
        }
    }

    /// Two services, three backends: one DOWN with a failed check, one in
    /// drain; every outcome counted (the dashboard's check reads it too).
    pub(super) fn stats() -> Stats {
        let up = BackendView {
            weight: 3,
            check_weight: Some(5),
            effective_weight: 5.0,
            conns: ConnsView { active: 7, inactive: 2 },
            max_conns: 9,
            traffic: traffic(1000),
            health: HealthView {
                status: "UP".into(),
                last_check: Some(CheckView {
                    ok: true,
                    detail: "HTTP 200".into(),
                    duration_ms: 2.5,
                    at_unix_ms: 1_700_000_000_000,
                }),
            },
            ..backend("10.77.2.10", 80, "UP")
        };
        let down = BackendView {
            in_rotation: false,
            health: HealthView {
                status: "DOWN".into(),
                last_check: Some(CheckView {
                    ok: false,
                    detail: "connection refused".into(),
                    duration_ms: 1.25,
                    at_unix_ms: 1_700_000_000_000,
                }),
            },
            traffic: traffic(10),
            ..backend("10.77.2.11", 80, "DOWN")
        };
        let drain = BackendView {
            state: "drain".into(),
            backup: true,
            in_rotation: false,
            conns: ConnsView { active: 1, inactive: 0 },
            traffic: traffic(50),
            ..backend("10.77.3.10", 53, "UNCHECKED")
        };
        let web = ServiceView {
            name: "web".into(),
            vip: "10.77.1.10".into(),
            port: 80,
            protocol: "tcp".into(),
            traffic: traffic(1010),
            backends_in_rotation: 1,
            backends: vec![up, down],
            ..ServiceView::default()
        };
        let dns = ServiceView {
            name: "dns".into(),
            vip: "10.77.1.53".into(),
            port: 53,
            protocol: "udp".into(),
            traffic: traffic(50),
            backends_in_rotation: 0,
            backups_serve: true,
            backends: vec![drain],
            ..ServiceView::default()
        };
        let packets =
            Outcome::ALL.iter().zip(1..).map(|(c, i)| (c.name().to_owned(), i * 11)).collect();
        Stats {
            version: "0.1.0".into(),
            uptime_s: 3600,
            services: vec![web, dns],
            packets,
            conntrack: ConntrackView { entries: 250, capacity: 1000 },
            ..Stats::default()
        }
    }

    fn has(out: &str, line: &str) {
        assert!(out.lines().any(|l| l == line), "missing line {line:?} in:\n{out}");
    }

    /// The count `stats()` gives an outcome: 11 x its position from 1.
    fn count_of(name: &str) -> u64 {
        11 * (Outcome::ALL.iter().position(|c| c.name() == name).unwrap() as u64 + 1)
    }

    #[test]
    fn renders_every_family() {
        let out = render(&stats());
        for (outcome, reason) in [("drop_no_backend", "no_backend"), ("drop_fragment", "fragment")]
        {
            let n = count_of(outcome);
            has(&out, &format!(r#"lb_packets_total{{outcome="{outcome}"}} {n}"#));
            has(&out, &format!(r#"lb_dropped_packets_total{{reason="{reason}"}} {n}"#));
        }
        for line in [
            "# TYPE lb_packets counter",
            "# HELP lb_packets Packets seen by the XDP program, by outcome.",
            "# HELP lb_build_info lb-ctl's version, as a label; always 1.",
            r#"lb_packets_total{outcome="tx"} 11"#,
            "# TYPE lb_dropped_packets counter",
            r#"lb_build_info{version="0.1.0"} 1"#,
            "# TYPE lb_uptime_seconds gauge",
            "# UNIT lb_uptime_seconds seconds",
            "lb_uptime_seconds 3600",
            "lb_conntrack_entries 250",
            "lb_conntrack_capacity 1000",
            "lb_conntrack_fill_ratio 0.25",
            r#"lb_service_packets_total{service="web",vip="10.77.1.10:80",protocol="tcp",direction="in"} 1010"#,
            r#"lb_service_packets_total{service="web",vip="10.77.1.10:80",protocol="tcp",direction="out"} 2020"#,
            "# TYPE lb_service_bytes counter",
            r#"lb_service_bytes_total{service="dns",vip="10.77.1.53:53",protocol="udp",direction="out"} 50000"#,
            r#"lb_service_new_flows_total{service="web",vip="10.77.1.10:80",protocol="tcp"} 101"#,
            r#"lb_service_backends{service="web",vip="10.77.1.10:80",protocol="tcp"} 2"#,
            r#"lb_service_backends_in_rotation{service="web",vip="10.77.1.10:80",protocol="tcp"} 1"#,
            r#"lb_service_backends_in_rotation{service="dns",vip="10.77.1.53:53",protocol="udp"} 0"#,
            r#"lb_service_backups_serving{service="dns",vip="10.77.1.53:53",protocol="udp"} 1"#,
            r#"lb_service_backups_serving{service="web",vip="10.77.1.10:80",protocol="tcp"} 0"#,
            r#"lb_backend_packets_total{service="web",backend="10.77.2.10:80",direction="in"} 1000"#,
            r#"lb_backend_bytes_total{service="web",backend="10.77.2.11:80",direction="in"} 1000"#,
            r#"lb_backend_new_flows_total{service="web",backend="10.77.2.10:80"} 100"#,
            r#"lb_backend_active_connections{service="web",backend="10.77.2.10:80"} 7"#,
            r#"lb_backend_inactive_connections{service="web",backend="10.77.2.10:80"} 2"#,
            "# TYPE lb_backend_max_connections gauge",
            r#"lb_backend_max_connections{service="web",backend="10.77.2.10:80"} 9"#,
            r#"lb_backend_weight{service="web",backend="10.77.2.10:80"} 3"#,
            r#"lb_backend_effective_weight{service="web",backend="10.77.2.10:80"} 5.0"#,
            r#"lb_backend_effective_weight{service="web",backend="10.77.2.11:80"} 0.0"#,
            r#"lb_backend_up{service="web",backend="10.77.2.10:80"} 1"#,
            r#"lb_backend_up{service="web",backend="10.77.2.11:80"} 0"#,
            r#"lb_backend_up{service="dns",backend="10.77.3.10:53"} 1"#,
            r#"lb_backend_in_rotation{service="web",backend="10.77.2.11:80"} 0"#,
            r#"lb_backend_in_rotation{service="web",backend="10.77.2.10:80"} 1"#,
            r#"lb_backend_state{service="dns",backend="10.77.3.10:53",state="drain"} 1"#,
            r#"lb_backend_state{service="dns",backend="10.77.3.10:53",state="active"} 0"#,
            r#"lb_backend_state{service="dns",backend="10.77.3.10:53",state="maint"} 0"#,
            r#"lb_backend_state{service="web",backend="10.77.2.11:80",state="active"} 1"#,
            "# TYPE lb_backend_check_duration_seconds gauge",
            r#"lb_backend_check_duration_seconds{service="web",backend="10.77.2.11:80"} 0.00125"#,
            r#"lb_backend_check_ok{service="web",backend="10.77.2.11:80"} 0"#,
            r#"lb_backend_check_ok{service="web",backend="10.77.2.10:80"} 1"#,
        ] {
            has(&out, line);
        }
        // Only the dropped kind's outcomes are drops.
        let drops = Outcome::ALL.iter().filter(|c| c.kind() == Kind::Dropped).count();
        assert_eq!(
            out.lines().filter(|l| l.starts_with("lb_dropped_packets_total{")).count(),
            drops
        );
        assert_eq!(
            out.lines().filter(|l| l.starts_with("lb_packets_total{")).count(),
            Outcome::ALL.len()
        );
        // Three states for each of the three backends.
        assert_eq!(out.lines().filter(|l| l.starts_with("lb_backend_state{")).count(), 9);
        // The unchecked backend has no last check.
        assert!(!out.contains(r#"lb_backend_check_ok{service="dns""#), "{out}");
        // Only the limited backend has a limit.
        assert_eq!(out.lines().filter(|l| l.starts_with("lb_backend_max_connections{")).count(), 1);
        assert!(!out.contains("_total_total"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
        assert_eq!(out.matches("# EOF").count(), 1);
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_in_labels() {
        let six = ServiceView {
            name: "web6".into(),
            vip: "fd77:1::100".into(),
            port: 80,
            protocol: "tcp".into(),
            backends: vec![backend("fd77:2::11", 80, "UP")],
            ..ServiceView::default()
        };
        let out = render(&Stats { services: vec![six], ..Stats::default() });
        has(
            &out,
            "lb_service_backends{service=\"web6\",vip=\"[fd77:1::100]:80\",protocol=\"tcp\"} 1",
        );
        assert!(
            out.contains("{service=\"web6\",backend=\"[fd77:2::11]:80\",direction=\"in\"}"),
            "no bracketed backend label in:\n{out}"
        );
    }

    #[test]
    fn every_line_is_valid_exposition() {
        for stats in [stats(), Stats::default()] {
            let out = render(&stats);
            let mut families = Vec::new();
            for line in out.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').expect(line);
                    assert!(valid_name(name), "{line}");
                    assert!(matches!(kind, "counter" | "gauge"), "{line}");
                    families.push((name.to_owned(), kind.to_owned()));
                    continue;
                }
                if let Err(e) = check_line(line) {
                    panic!("{e}: {line:?}");
                }
                if line.starts_with('#') {
                    continue;
                }
                // A sample belongs to the family declared last.
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let (family, kind) = families.last().expect("sample before any # TYPE");
                let expected =
                    if kind == "counter" { format!("{family}_total") } else { family.clone() };
                assert_eq!(name, expected, "{line}");
            }
        }
    }

    #[test]
    fn no_conntrack_table_no_fill_ratio() {
        let out = render(&Stats::default());
        has(&out, "lb_conntrack_capacity 0");
        assert!(!out.contains("lb_conntrack_fill_ratio"), "{out}");
        assert!(!out.contains("NaN"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut stats = stats();
        stats.services[0].name = "we\"b\\1\nx".into();
        let out = render(&stats);
        has(&out, r#"lb_backend_up{service="we\"b\\1\nx",backend="10.77.2.11:80"} 0"#);
        for line in out.lines() {
            if let Err(e) = check_line(line) {
                panic!("{e}: {line:?}");
            }
        }
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// One line of the text format: a `# HELP|TYPE|UNIT|EOF` comment, or
    /// `name{label="value",...} value` with a value that parses as f64.
    fn check_line(line: &str) -> Result<(), String> {
        if let Some(comment) = line.strip_prefix("# ") {
            if comment == "EOF" {
                return Ok(());
            }
            let (kind, rest) = comment.split_once(' ').ok_or("bare comment")?;
            if !matches!(kind, "HELP" | "TYPE" | "UNIT") {
                return Err(format!("unknown comment {kind}"));
            }
            let name = rest.split(' ').next().unwrap_or_default();
            return if valid_name(name) { Ok(()) } else { Err("bad name in comment".into()) };
        }
        let end = line.find(['{', ' ']).ok_or("no value")?;
        let (name, mut rest) = line.split_at(end);
        if !valid_name(name) {
            return Err("bad metric name".into());
        }
        if let Some(labels) = rest.strip_prefix('{') {
            rest = check_labels(labels)?;
        }
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        value.parse::<f64>().map_err(|e| format!("value {value:?}: {e}"))?;
        Ok(())
    }

    /// Checks `label="value",...}` and returns what follows the `}`.
    fn check_labels(mut s: &str) -> Result<&str, String> {
        loop {
            let (name, rest) = s.split_once("=\"").ok_or("label without =\"")?;
            if !valid_name(name) || name.contains(':') {
                return Err(format!("bad label name {name:?}"));
            }
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (_, '\\') => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        _ => return Err("bad escape".into()),
                    },
                    (i, '"') => break i,
                    (_, '\n') => return Err("raw newline".into()),
                    _ => {}
                }
            };
            let after = &rest[close + 1..];
            if let Some(next) = after.strip_prefix(',') {
                s = next;
            } else {
                return after.strip_prefix('}').ok_or_else(|| "expected , or }".into());
            }
        }
    }
}
