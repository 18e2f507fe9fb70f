//! The CLI's text: pure functions from the API's view types to the tables
//! an IPVS or HAProxy user expects (`ipvsadm -Ln`, `-Lnc`, `--stats`).
use std::{fmt::Write as _, net::SocketAddr};

use crate::daemon::{
    api::view::{
        BackendView, ConnView, ConnsList, ServiceView, Stats, duration_text, endpoint_text,
    },
    bgp::NodeView,
};

/// What a backend command did, in the words of [`render_backend_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BackendChange {
    Added,
    Removed,
    Drained,
    Undrained,
    Maint,
    Weight(u32),
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `4 backends, 3 in rotation`.
pub(super) fn rotation_summary(view: &ServiceView) -> String {
    format!(
        "{}, {} in rotation",
        plural(view.backends.len(), "backend", "backends"),
        view.backends_in_rotation
    )
}

/// One line saying what is now true of the backend `at` of `view`:
/// `web: 10.77.2.14:80 added (weight 1); 4 backends, 4 in rotation`.
pub(super) fn render_backend_change(
    view: &ServiceView,
    at: SocketAddr,
    change: BackendChange,
) -> String {
    let what = match change {
        BackendChange::Added => "added".to_owned(),
        BackendChange::Removed => "removed".to_owned(),
        BackendChange::Drained => "draining: no new flows, existing flows continue".to_owned(),
        BackendChange::Undrained => "active".to_owned(),
        BackendChange::Maint => {
            "in maintenance: out of rotation, health checks continue".to_owned()
        }
        BackendChange::Weight(0) => {
            "weight set to 0: no new flows, existing flows continue".to_owned()
        }
        BackendChange::Weight(w) => format!("weight set to {w}"),
    };
    let address = at.ip().to_string();
    let found = view.backends.iter().find(|b| b.address == address && b.port == at.port());
    let state = match (change, found) {
        (BackendChange::Removed, _) | (_, None) => String::new(),
        (_, Some(b)) => format!(" ({})", backend_state(b)),
    };
    format!("{}: {at} {what}{state}; {}\n", view.name, rotation_summary(view))
}

/// `weight 1`, then whatever keeps it from being a plain active backend in
/// rotation: `weight 1, drain, health DOWN, out of rotation`.
fn backend_state(b: &BackendView) -> String {
    let mut parts = vec![format!("weight {}", b.weight)];
    if b.backup {
        parts.push("backup".into());
    }
    if b.max_conns > 0 {
        parts.push(format!("max {} conns", b.max_conns));
    }
    if b.state != "active" {
        parts.push(b.state.clone());
    }
    if b.health.status != "UNCHECKED" {
        parts.push(format!("health {}", b.health.status));
    }
    if !b.in_rotation {
        parts.push("out of rotation".into());
    }
    parts.join(", ")
}

/// IPVS's name of a forwarding method.
fn forward_name(forwarding: &str) -> &str {
    match forwarding {
        "nat" => "Masq",
        "dsr" => "Route",
        "fullnat" => "FullNat",
        "tunnel" => "Tunnel",
        other => other,
    }
}

/// `TCP  10.77.1.100:80 maglev reject check=http (web)`.
pub(super) fn service_line(s: &ServiceView) -> String {
    let mut flags = String::new();
    if !s.on_no_backend.is_empty() {
        flags = format!(" {}", s.on_no_backend);
    }
    if let Some(health) = &s.health {
        let _ = write!(flags, " check={}", health.check);
    }
    if s.slow_start_s > 0 {
        let _ = write!(flags, " slow-start={}s", s.slow_start_s);
    }
    // ipvsadm's `persistent 300` (and `mask`), loxilb's allowed sources.
    if let Some(seconds) = s.persistence_s {
        let _ = write!(flags, " persistent={seconds}s");
        if let Some(mask) = s.persistence_netmask.filter(|&m| {
            let whole = if s.vip.contains(':') { 128 } else { 32 };
            m != whole
        }) {
            let _ = write!(flags, "/{mask}");
        }
    }
    if !s.allowed_sources.is_empty() {
        let _ = write!(flags, " from={}", s.allowed_sources.join(","));
    }
    // Full NAT's source pool (empty addresses: the route's own source).
    if let Some(ports) = &s.snat_ports {
        let addresses = if s.snat_addresses.is_empty() {
            "route".to_owned()
        } else {
            s.snat_addresses.join(",")
        };
        let _ = write!(flags, " snat={addresses}:{ports}");
    }
    format!(
        "{:<4} {} {}{flags} ({})",
        s.protocol.to_uppercase(),
        endpoint_text(&s.vip, s.port),
        s.scheduler,
        s.name
    )
}

/// `lb-ctl list`: like `ipvsadm -Ln`, with the backends' state and health.
pub fn render_list(services: &[ServiceView]) -> String {
    let row = |addr: &str,
               fwd: &str,
               weight: &str,
               active: &str,
               inact: &str,
               state: &str,
               health: &str| {
        format!(
            "  -> {addr:<28} {fwd:<7} {weight:<6} {active:<10} {inact:<9} {state:<6} {health}\n"
        )
    };
    let mut text = String::from("Prot LocalAddress:Port Scheduler Flags\n");
    text.push_str(&row(
        "RemoteAddress:Port",
        "Forward",
        "Weight",
        "ActiveConn",
        "InActConn",
        "State",
        "Health",
    ));
    let mut set_by_check = false;
    for s in services {
        text.push_str(&service_line(s));
        text.push('\n');
        let backend_row = |b: &BackendView| {
            let mut health = b.health.status.clone();
            if b.health.status == "DOWN"
                && let Some(check) = &b.health.last_check
            {
                let _ = write!(health, " ({})", check.detail);
            }
            // IPVS's upper threshold (`ipvsadm -Ln --thresholds`).
            if b.max_conns > 0 {
                let _ = write!(health, " max_conns={}", b.max_conns);
            }
            row(
                &endpoint_text(&b.address, b.port),
                forward_name(&s.forwarding),
                &weight_text(b),
                &b.conns.active.to_string(),
                &b.conns.inactive.to_string(),
                &b.state,
                &health,
            )
        };
        set_by_check |= s.backends.iter().any(|b| b.check_weight.is_some() && b.weight > 0);
        // The primaries, then the backups apart, saying whether they serve.
        for b in s.backends.iter().filter(|b| !b.backup) {
            text.push_str(&backend_row(b));
        }
        if s.backends.iter().any(|b| b.backup) {
            let now = if s.backups_serve {
                "serving: no primary is usable"
            } else {
                "standing by: new flows only while no primary is usable"
            };
            let _ = writeln!(text, "  backup ({now})");
            for b in s.backends.iter().filter(|b| b.backup) {
                text.push_str(&backend_row(b));
            }
        }
    }
    if set_by_check {
        text.push_str("* the weight its script check gave (dynamic_weight), not its own\n");
    }
    if services.iter().flat_map(|s| &s.backends).any(|b| b.ramp.is_some() && b.in_rotation) {
        text.push_str(
            "~ in slow start: the part of its weight it gets now, growing over slow_start_s\n",
        );
    }
    text
}

/// The weight new flows get when the backend is in rotation: its own,
/// with a `*` the one its script check gave, with a `~` the part of it a
/// backend in slow start gets now.
pub(crate) fn weight_text(b: &BackendView) -> String {
    match b.check_weight {
        _ if b.ramp.is_some() && b.in_rotation => format!("{}~", short(b.effective_weight)),
        Some(w) if b.weight > 0 => format!("{w}*"),
        _ => b.weight.to_string(),
    }
}

/// `0.37`, `12.5`, `3`: two decimals at most, none trailing.
pub(crate) fn short(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A counter in at most 8 characters, as `ipvsadm --stats` prints it.
fn large(n: u64) -> String {
    match n {
        0..100_000_000 => n.to_string(),
        100_000_000..100_000_000_000 => format!("{}K", n / 1_000),
        100_000_000_000..100_000_000_000_000 => format!("{}M", n / 1_000_000),
        100_000_000_000_000..100_000_000_000_000_000 => format!("{}G", n / 1_000_000_000),
        _ => format!("{}T", n / 1_000_000_000_000),
    }
}

/// A per-second rate, rounded, as a counter.
#[allow(clippy::cast_sign_loss)]
fn rate(r: f64) -> String {
    // `as` saturates: NaN and negatives give 0.
    large(r.round() as u64)
}

/// `lb-ctl node`: the node's state, then one line per VIP.
pub fn render_node(view: &NodeView) -> String {
    let mut out = String::new();
    let state = if view.drained { "drained" } else { "serving" };
    let bgp = match (&view.table, &view.device) {
        (Some(table), Some(device)) => format!("VIP routes in table {table} via {device}"),
        _ => "no [bgp]: nothing announced".to_owned(),
    };
    let _ = writeln!(out, "node {state}; {bgp}; fingerprint {}", view.fingerprint);
    if let Some(error) = &view.error {
        let _ = writeln!(out, "error: {error}");
    }
    for vip in &view.vips {
        let status = match &vip.withheld {
            None => "announced".to_owned(),
            Some(why) => format!("withdrawn: {why}"),
        };
        let _ = writeln!(out, "  {:<15}  {status}  ({})", vip.vip, vip.services.join(", "));
    }
    out
}

/// `lb-ctl stats`: a summary line, the totals and the rates per service and
/// backend (like `ipvsadm -Ln --stats` and `--rate`), the packet outcomes.
pub fn render_stats(stats: &Stats) -> String {
    let mut text = format!("lb-ctl {}, up {}; ", stats.version, duration_text(stats.uptime_s));
    let ct = stats.conntrack;
    if ct.capacity > 0 {
        let fill = ct.entries as f64 * 100.0 / ct.capacity as f64;
        let _ =
            writeln!(text, "conntrack {} of {} entries ({fill:.1}% full)", ct.entries, ct.capacity);
    } else {
        let _ = writeln!(text, "conntrack {} entries", ct.entries);
    }
    let changes = &stats.runtime_changes;
    if changes.services + changes.backends > 0 {
        let _ = write!(
            text,
            "changed through the API: {}, {}",
            plural(changes.services, "service", "services"),
            plural(changes.backends, "backend", "backends")
        );
        if let Some(file) = &changes.state_file {
            let _ = write!(text, " (kept in {file})");
        }
        text.push('\n');
    }

    // (label, totals, rates) per row.
    let mut rows: Vec<(String, [u64; 5], [f64; 5])> = Vec::new();
    for s in &stats.services {
        let (t, r) = (s.traffic, s.rates);
        rows.push((
            format!(
                "{:<4} {} ({})",
                s.protocol.to_uppercase(),
                endpoint_text(&s.vip, s.port),
                s.name
            ),
            [t.new_flows, t.in_packets, t.out_packets, t.in_bytes, t.out_bytes],
            [r.new_flows, r.in_packets, r.out_packets, r.in_bytes, r.out_bytes],
        ));
        for b in &s.backends {
            let (t, r) = (b.traffic, b.rates);
            rows.push((
                format!("  -> {}", endpoint_text(&b.address, b.port)),
                [t.new_flows, t.in_packets, t.out_packets, t.in_bytes, t.out_bytes],
                [r.new_flows, r.in_packets, r.out_packets, r.in_bytes, r.out_bytes],
            ));
        }
    }
    let first = "Prot LocalAddress:Port";
    let width = rows.iter().map(|(l, ..)| l.chars().count()).max().unwrap_or(0).max(28);
    let table = |heads: [&str; 5], cells: &dyn Fn(usize) -> [String; 5]| {
        let mut t = format!("\n{first:<width$}");
        for h in heads {
            let _ = write!(t, " {h:>8}");
        }
        t.push_str("\n  -> RemoteAddress:Port\n");
        for (i, (label, ..)) in rows.iter().enumerate() {
            let _ = write!(t, "{label:<width$}");
            for c in cells(i) {
                let _ = write!(t, " {c:>8}");
            }
            t.push('\n');
        }
        t
    };
    text.push_str(&table(["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"], &|i| {
        rows[i].1.map(large)
    }));
    text.push_str(&table(["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"], &|i| rows[i].2.map(rate)));

    // The outcomes in the data plane's order, then any this build does not know.
    let known = lb_common::counter::Counter::ALL.iter().map(|c| c.name());
    let mut outcomes: Vec<(&str, u64)> =
        known.filter_map(|n| stats.packets.get(n).map(|v| (n, *v))).collect();
    for (name, count) in &stats.packets {
        if !outcomes.iter().any(|(n, _)| n == name) {
            outcomes.push((name, *count));
        }
    }
    outcomes.retain(|(_, count)| *count > 0);
    if outcomes.is_empty() {
        text.push_str("\nPacket outcomes: none yet\n");
    } else {
        text.push_str("\nPacket outcomes since the data plane started:\n");
        let width = outcomes.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, count) in outcomes {
            let _ = writeln!(text, "  {name:<width$} {count:>14}");
        }
    }
    text
}

/// `mm:ss` of a number of milliseconds (minutes past 99 widen it).
fn expire(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// `lb-ctl conns`: like `ipvsadm -Lnc`, then `N of M connections` when
/// the answer stopped at the limit.
pub fn render_conns(list: &ConnsList) -> String {
    let row = |pro: &str, expire: &str, state: &str, source: &str, virt: &str, dest: &str| {
        format!("{pro:<3} {expire:<6} {state:<11} {source:<21} {virt:<21} {dest}\n")
    };
    let mut text = row("pro", "expire", "state", "source", "virtual", "destination");
    for c in &list.conns {
        text.push_str(&row(
            &c.protocol.to_uppercase(),
            &expire(c.expires_in_ms),
            &c.state,
            &c.client,
            &c.vip,
            &destination(c),
        ));
    }
    if list.truncated {
        let _ = writeln!(text, "{} of {} connections", list.conns.len(), list.total);
    }
    text
}

/// A connection's destination: its backend, and for a full-NAT flow the
/// pool address and port it reaches the backend from (both tuples).
fn destination(c: &ConnView) -> String {
    let backend = c.backend.as_deref().unwrap_or("-");
    match &c.snat {
        Some(snat) => format!("{backend} from {snat}"),
        None => backend.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::daemon::api::view::{
        CheckView, ConnView, ConnsView, ConntrackView, HealthCheckView, HealthView, RatesView,
        TrafficView,
    };

    pub(crate) fn backend(
        last: u8,
        weight: u32,
        state: &str,
        health: &str,
        active: u32,
    ) -> BackendView {
        BackendView {
            address: format!("10.77.2.{last}"),
            port: 80,
            weight,
            check_weight: None,
            backup: false,
            max_conns: 0,
            effective_weight: if weight > 0 && state == "active" && health != "DOWN" {
                f64::from(weight)
            } else {
                0.0
            },
            ramp: None,
            slow_start_s: None,
            state: state.into(),
            check_address: None,
            check_port: None,
            in_rotation: weight > 0 && state == "active" && health != "DOWN",
            health: HealthView { status: health.into(), last_check: None },
            conns: ConnsView { active, inactive: 0 },
            traffic: TrafficView::default(),
            rates: RatesView::default(),
        }
    }

    pub(crate) fn web() -> ServiceView {
        let backends = vec![
            backend(11, 1, "active", "UP", 3),
            backend(12, 10, "drain", "UP", 12345),
            backend(13, 1, "maint", "DOWN", 0),
        ];
        ServiceView {
            name: "web".into(),
            vip: "10.77.1.100".into(),
            port: 80,
            protocol: "tcp".into(),
            scheduler: "maglev".into(),
            forwarding: "nat".into(),
            on_no_backend: "reject".into(),
            health: Some(HealthCheckView {
                check: "http".into(),
                path: Some("/".into()),
                expect_status: Some(200),
                interval_ms: 2000,
                timeout_ms: 1000,
                rise: 2,
                fall: 3,
                ..HealthCheckView::default()
            }),
            backends_in_rotation: 1,
            backends,
            ..ServiceView::default()
        }
    }

    pub(crate) fn dns() -> ServiceView {
        ServiceView {
            name: "dns".into(),
            vip: "10.77.1.53".into(),
            port: 53,
            protocol: "udp".into(),
            scheduler: "sh".into(),
            forwarding: "nat".into(),
            on_no_backend: "drop".into(),
            backends_in_rotation: 1,
            backends: vec![BackendView {
                address: "10.77.2.21".into(),
                port: 53,
                weight: 1,
                state: "active".into(),
                in_rotation: true,
                health: HealthView { status: "UNCHECKED".into(), last_check: None },
                ..BackendView::default()
            }],
            ..ServiceView::default()
        }
    }

    #[test]
    fn the_list_is_aligned_like_ipvsadm() {
        let text = render_list(&[web(), dns()]);
        let expected = "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State  Health
TCP  10.77.1.100:80 maglev reject check=http (web)
  -> 10.77.2.11:80                Masq    1      3          0         active UP
  -> 10.77.2.12:80                Masq    10     12345      0         drain  UP
  -> 10.77.2.13:80                Masq    1      0          0         maint  DOWN
UDP  10.77.1.53:53 sh drop (dns)
  -> 10.77.2.21:53                Masq    1      0          0         active UNCHECKED
";
        assert_eq!(text, expected, "\n{text}");
    }

    /// Backups are listed apart, after the primaries, saying whether they serve.
    /// Persistence and allowed sources on the service's line (the mask
    /// only where it groups clients), a connection limit on its backend's.
    #[test]
    fn persistence_sources_and_limits_are_listed() {
        let mut s = web();
        s.persistence_s = Some(300);
        s.persistence_netmask = Some(32);
        s.allowed_sources = vec!["10.0.0.0/8".into(), "192.0.2.0/24".into()];
        s.backends[0].max_conns = 100;
        let text = render_list(&[s.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "TCP  10.77.1.100:80 maglev reject check=http persistent=300s from=10.0.0.0/8,192.0.2.0/24 (web)"
        );
        assert!(lines[3].ends_with("UP max_conns=100"), "{}", lines[3]);
        assert!(!lines[4].contains("max_conns"), "{}", lines[4]);
        s.persistence_netmask = Some(24);
        assert!(render_list(&[s]).contains(" persistent=300s/24 "));
    }

    /// A full-NAT service: `FullNat` in the Forward column, its pool on its
    /// line (`route`: the load balancer's own address toward each backend).
    #[test]
    fn full_nat_is_listed_with_its_pool() {
        let mut s = web();
        s.forwarding = "fullnat".into();
        s.snat_ports = Some("61000-65535".into());
        let text = render_list(&[s.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].ends_with(" snat=route:61000-65535 (web)"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("  -> 10.77.2.11:80                FullNat 1 "),
            "{}",
            lines[3]
        );
        s.snat_addresses = vec!["10.77.2.1".into(), "10.77.2.2".into()];
        assert!(render_list(&[s]).contains(" snat=10.77.2.1,10.77.2.2:61000-65535 "));
    }

    #[test]
    fn backups_are_listed_apart() {
        let mut s = web();
        let mut sorry = backend(20, 1, "active", "UP", 0);
        sorry.backup = true;
        sorry.in_rotation = false;
        s.backends.insert(0, sorry);
        let text = render_list(std::slice::from_ref(&s));
        let lines: Vec<&str> = text.lines().collect();
        let primaries = lines[3..6].iter().filter(|l| l.contains("-> 10.77.2.1")).count();
        assert_eq!(primaries, 3, "{text}");
        assert_eq!(lines[6], "  backup (standing by: new flows only while no primary is usable)");
        assert!(lines[7].starts_with("  -> 10.77.2.20:80 "), "{text}");
        s.backups_serve = true;
        assert!(render_list(&[s]).contains("  backup (serving: no primary is usable)\n"));
    }

    /// A backend in slow start shows the weight it gets now, marked.
    #[test]
    fn a_ramping_weight_is_shown_marked() {
        let mut s = web();
        s.backends[0].weight = 3;
        s.backends[0].ramp = Some(0.125);
        s.backends[0].effective_weight = 0.375;
        let text = render_list(&[s.clone()]);
        assert!(text.contains("  -> 10.77.2.11:80                Masq    0.38~  3 "), "{text}");
        assert!(text.ends_with(
            "~ in slow start: the part of its weight it gets now, growing over slow_start_s\n"
        ));
        assert_eq!(
            (short(2.0), short(12.5), short(0.01)),
            ("2".into(), "12.5".into(), "0.01".into())
        );
    }

    /// A weight a script check gave is what the list shows, marked.
    #[test]
    fn a_weight_from_a_check_is_shown_marked() {
        let mut s = web();
        s.backends[0].check_weight = Some(5);
        let text = render_list(&[s.clone()]);
        assert!(text.contains("  -> 10.77.2.11:80                Masq    5*     3 "), "{text}");
        assert!(
            text.ends_with("* the weight its script check gave (dynamic_weight), not its own\n")
        );
        // A drained backend (weight 0) stays at 0 whatever its check says.
        s.backends[0].weight = 0;
        assert!(!render_list(&[s]).contains('*'));
    }

    /// `web` moved to IPv6: fd77:1::100, backends fd77:2::11..13.
    pub(crate) fn web6() -> ServiceView {
        let mut s = web();
        s.name = "web6".into();
        s.vip = "fd77:1::100".into();
        for (b, last) in s.backends.iter_mut().zip(11..) {
            b.address = format!("fd77:2::{last}");
        }
        s
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_like_ipvsadm() {
        let text = render_list(&[web6()]);
        let expected = "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State  Health
TCP  [fd77:1::100]:80 maglev reject check=http (web6)
  -> [fd77:2::11]:80              Masq    1      3          0         active UP
  -> [fd77:2::12]:80              Masq    10     12345      0         drain  UP
  -> [fd77:2::13]:80              Masq    1      0          0         maint  DOWN
";
        assert_eq!(text, expected, "\n{text}");
        let stats = render_stats(&Stats { services: vec![web6()], ..Stats::default() });
        assert!(stats.contains("\nTCP  [fd77:1::100]:80 (web6) "), "{stats}");
        assert!(stats.contains("\n  -> [fd77:2::12]:80 "), "{stats}");
        let at: SocketAddr = "[fd77:2::12]:80".parse().unwrap();
        assert_eq!(
            render_backend_change(&web6(), at, BackendChange::Weight(3)),
            "web6: [fd77:2::12]:80 weight set to 3 (weight 10, drain, health UP, out of \
             rotation); 3 backends, 1 in rotation\n"
        );
    }

    #[test]
    fn a_down_backend_shows_its_last_check() {
        let mut s = web();
        s.backends[2].health.last_check = Some(CheckView {
            ok: false,
            detail: "connection refused".into(),
            ..CheckView::default()
        });
        assert!(render_list(&[s]).contains(" maint  DOWN (connection refused)\n"));
    }

    #[test]
    fn no_services_is_the_headers_alone() {
        assert_eq!(
            render_list(&[]),
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State  Health\n"
        );
        let stats = render_stats(&Stats { version: "0.1.0".into(), ..Stats::default() });
        assert!(stats.starts_with("lb-ctl 0.1.0, up 0s; conntrack 0 entries\n"), "{stats}");
        assert!(stats.ends_with("Packet outcomes: none yet\n"), "{stats}");
        assert_eq!(
            render_conns(&ConnsList::default()),
            "pro expire state       source                virtual               destination\n"
        );
    }

    #[test]
    fn conns_are_listed_like_ipvsadm_lnc() {
        let conn =
            |protocol: &str, client: &str, backend: Option<&str>, state: &str, ms| ConnView {
                protocol: protocol.into(),
                client: client.into(),
                vip: "10.77.1.100:80".into(),
                backend: backend.map(Into::into),
                service: Some("web".into()),
                state: state.into(),
                idle_ms: 0,
                expires_in_ms: ms,
                snat: None,
            };
        let list = ConnsList {
            total: 5000,
            truncated: true,
            conns: vec![
                conn("tcp", "10.77.0.2:53211", Some("10.77.2.11:80"), "ESTABLISHED", 899_999),
                conn("udp", "10.77.0.2:5353", None, "UDP", 1_500),
                conn("tcp", "255.255.255.255:65535", Some("10.77.2.12:80"), "SYN", 7_200_000),
                ConnView {
                    snat: Some("10.77.2.1:61017".into()),
                    ..conn("tcp", "10.77.0.3:40000", Some("10.77.3.11:80"), "ESTABLISHED", 60_000)
                },
            ],
        };
        let expected = "\
pro expire state       source                virtual               destination
TCP 14:59  ESTABLISHED 10.77.0.2:53211       10.77.1.100:80        10.77.2.11:80
UDP 00:01  UDP         10.77.0.2:5353        10.77.1.100:80        -
TCP 120:00 SYN         255.255.255.255:65535 10.77.1.100:80        10.77.2.12:80
TCP 01:00  ESTABLISHED 10.77.0.3:40000       10.77.1.100:80        10.77.3.11:80 from 10.77.2.1:61017
4 of 5000 connections
";
        assert_eq!(render_conns(&list), expected);
        let whole = ConnsList { truncated: false, total: 4, ..list };
        assert!(!render_conns(&whole).contains("connections"));
        assert_eq!(expire(0), "00:00");
        assert_eq!(expire(60_000), "01:00");
    }

    #[test]
    fn stats_show_totals_rates_and_outcomes() {
        let mut s = web();
        s.traffic = TrafficView {
            in_packets: 1_000,
            in_bytes: 123_456_789_012,
            out_packets: 900,
            out_bytes: 64_000,
            new_flows: 10,
        };
        s.rates = RatesView {
            in_packets: 12.4,
            in_bytes: 2000.6,
            new_flows: f64::NAN,
            ..RatesView::default()
        };
        s.backends[0].traffic.in_packets = 7;
        let stats = Stats {
            version: "0.1.0".into(),
            uptime_s: 2 * 86_400 + 3 * 3600 + 4 * 60 + 5,
            services: vec![s, dns()],
            packets: [("tx", 12_345), ("pass_not_ipv4", 0), ("drop_no_backend", 2), ("future", 1)]
                .into_iter()
                .map(|(n, c)| (n.to_owned(), c))
                .collect(),
            conntrack: ConntrackView { entries: 1234, capacity: 1_048_576 },
            ..Stats::default()
        };
        let text = render_stats(&stats);
        let expected = "\
lb-ctl 0.1.0, up 2d 3h 4m 5s; conntrack 1234 of 1048576 entries (0.1% full)

Prot LocalAddress:Port          Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.77.1.100:80 (web)          10     1000      900  123456M    64000
  -> 10.77.2.11:80                  0        7        0        0        0
  -> 10.77.2.12:80                  0        0        0        0        0
  -> 10.77.2.13:80                  0        0        0        0        0
UDP  10.77.1.53:53 (dns)            0        0        0        0        0
  -> 10.77.2.21:53                  0        0        0        0        0

Prot LocalAddress:Port            CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  10.77.1.100:80 (web)           0       12        0     2001        0
  -> 10.77.2.11:80                  0        0        0        0        0
  -> 10.77.2.12:80                  0        0        0        0        0
  -> 10.77.2.13:80                  0        0        0        0        0
UDP  10.77.1.53:53 (dns)            0        0        0        0        0
  -> 10.77.2.21:53                  0        0        0        0        0

Packet outcomes since the data plane started:
  tx                       12345
  drop_no_backend              2
  future                       1
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_long_service_name_widens_the_stats_labels() {
        let mut s = dns();
        s.name = "a-rather-long-service-name".into();
        let text = render_stats(&Stats { services: vec![s], ..Stats::default() });
        let label = "UDP  10.77.1.53:53 (a-rather-long-service-name)";
        let row = format!("{label}{}", "        0".repeat(5));
        let head = format!(
            "{:<47}    Conns   InPkts  OutPkts  InBytes OutBytes",
            "Prot LocalAddress:Port"
        );
        assert_eq!(label.len(), 47);
        assert!(text.contains(&format!("\n{head}\n  -> RemoteAddress:Port\n{row}\n")), "{text}");
    }

    #[test]
    fn large_numbers_fit_eight_columns() {
        assert_eq!(large(99_999_999), "99999999");
        assert_eq!(large(100_000_000), "100000K");
        assert_eq!(large(123_456_789_012), "123456M");
        assert_eq!(large(u64::MAX), "18446744T");
    }

    #[test]
    fn a_change_says_what_is_now_true() {
        let mut s = web();
        s.health = None;
        s.backends = vec![
            backend(11, 1, "active", "UNCHECKED", 0),
            backend(14, 1, "active", "UNCHECKED", 0),
        ];
        s.backends_in_rotation = 2;
        let at = |last| SocketAddr::new(Ipv4Addr::new(10, 77, 2, last).into(), 80);
        assert_eq!(
            render_backend_change(&s, at(14), BackendChange::Added),
            "web: 10.77.2.14:80 added (weight 1); 2 backends, 2 in rotation\n"
        );
        assert_eq!(
            render_backend_change(&s, at(15), BackendChange::Removed),
            "web: 10.77.2.15:80 removed; 2 backends, 2 in rotation\n"
        );
        let s = web();
        assert_eq!(
            render_backend_change(&s, at(12), BackendChange::Drained),
            "web: 10.77.2.12:80 draining: no new flows, existing flows continue \
             (weight 10, drain, health UP, out of rotation); 3 backends, 1 in rotation\n"
        );
    }

    /// `lb-ctl node` says per VIP whether it is announced, and why not.
    #[test]
    fn the_node_view_says_each_vips_announcement_and_why_not() {
        use crate::daemon::bgp::wanted::VipView;
        let view = NodeView {
            bgp: true,
            drained: false,
            table: Some(4077),
            device: Some("lb-vips".into()),
            fingerprint: "0a1b2c3d".into(),
            vips: vec![
                VipView {
                    vip: "10.77.1.100".into(),
                    services: vec!["web".into(), "echo".into()],
                    announced: true,
                    withheld: None,
                },
                VipView {
                    vip: "10.77.1.101".into(),
                    services: vec!["mail".into()],
                    announced: false,
                    withheld: Some("no usable backend".into()),
                },
            ],
            error: None,
        };
        assert_eq!(
            render_node(&view),
            "node serving; VIP routes in table 4077 via lb-vips; fingerprint 0a1b2c3d\n  10.77.1.100      announced  (web, echo)\n  10.77.1.101      withdrawn: no usable backend  (mail)\n"
        );
        let none = NodeView { fingerprint: "0a1b2c3d".into(), ..NodeView::default() };
        assert_eq!(
            render_node(&none),
            "node serving; no [bgp]: nothing announced; fingerprint 0a1b2c3d\n"
        );
    }
}
