//! `GET /`: the stats page, in the spirit of HAProxy's `stats uri`. One
//! self-contained HTML5 document: inline style, no script, no external asset;
//! it reloads itself every 2 s through `<meta http-equiv="refresh">`, which
//! works with JavaScript disabled. Every text taken from the stats goes
//! through [`esc`].
use std::{
    fmt::{self, Write as _},
    time::{Duration, UNIX_EPOCH},
};

use lb_common::counter::{Counter, Kind};

use super::view::{
    BackendView, HealthCheckView, RatesView, ServiceView, Stats, TrafficView, duration_text,
    endpoint_text,
};

/// Seconds between reloads.
const REFRESH_S: u32 = 2;

/// `write!` into a `String`, which cannot fail.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        { let _ = write!($out, $($arg)*); }
    };
}

const STYLE: &str = "
:root { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; font-size: 13px; color: #222; }
body { margin: 0 16px 24px; background: #fbfbfd; }
h1 { font-size: 20px; margin: 12px 0 4px; }
h1 .version { font-size: 13px; font-weight: normal; color: #666; }
h2 { font-size: 15px; margin: 18px 0 6px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
dl.info { display: flex; flex-wrap: wrap; gap: 4px 24px; margin: 4px 0 8px; }
dl.info div { display: flex; gap: 6px; }
dl.info dt { color: #666; }
dl.info dd { margin: 0; font-weight: 600; }
.warn { color: #a65e00; }
.bad { color: #c00000; }
.dim { color: #666; font-weight: normal; }
ul.legend, ul.outcomes { list-style: none; padding: 0; margin: 4px 0; display: flex; flex-wrap: wrap; gap: 6px; }
ul.legend li { padding: 2px 8px; border: 1px solid #bbb; border-radius: 3px; }
ul.outcomes li { padding: 3px 8px; border: 1px solid #ccc; border-radius: 3px; background: #fff; }
ul.outcomes li b { margin-left: 4px; }
ul.outcomes li.drop { background: #ffd0d0; border-color: #d04040; color: #900; }
ul.outcomes li.answered { background: #ffe8c8; border-color: #d09040; }
table.service { border-collapse: collapse; margin: 14px 0 6px; background: #fff; min-width: 60%; }
table.service caption { text-align: left; padding: 6px 8px; background: #3b4a6b; color: #fff; border-radius: 4px 4px 0 0; }
caption .name { font-size: 15px; font-weight: 700; margin-right: 8px; }
caption code { font-size: 14px; margin-right: 12px; }
caption .meta { display: inline-block; margin-right: 14px; color: #dde3f0; }
caption .meta b { color: #fff; }
caption .alert { margin-top: 6px; padding: 4px 8px; background: #d00000; color: #fff; font-weight: 700; border-radius: 3px; }
th, td { border: 1px solid #c8c8d0; padding: 2px 6px; white-space: nowrap; }
thead th { background: #e4e7f0; font-weight: 600; }
thead tr.group th { background: #d2d7e6; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.check.fail { color: #a00000; font-weight: 600; }
td.full { color: #a00000; font-weight: 600; }
tr.up td { background: #c8f7c5; }
tr.down td { background: #ffaaaa; }
tr.drain td { background: #b8d8ff; }
tr.maint td { background: #d8c8b4; color: #4a3f33; }
tr.unknown td { background: #fff5a0; }
tr.unchecked td { background: #ffffff; }
li.up { background: #c8f7c5; }
li.down { background: #ffaaaa; }
li.drain { background: #b8d8ff; }
li.maint { background: #d8c8b4; }
li.unknown { background: #fff5a0; }
li.unchecked { background: #ffffff; }
tfoot td { background: #eef0f6; font-weight: 600; }
tr.backup-head td { background: #f4f4f4; color: #444; font-style: italic; }
td.empty { text-align: center; color: #666; font-style: italic; }
p.empty { font-style: italic; color: #666; }
";

/// Row classes, their colours (in `STYLE`) and what they mean.
const LEGEND: [(&str, &str); 6] = [
    ("up", "active, UP"),
    ("down", "DOWN"),
    ("drain", "drain (or weight 0)"),
    ("maint", "maint"),
    ("unknown", "UNKNOWN: not probed yet"),
    ("unchecked", "active, no health checks"),
];

/// Columns of a service table.
const COLUMNS: usize = 19;

/// The page for `stats`; `now_unix_ms` is the current time, for the ages of
/// the last checks and the "generated" stamp.
pub fn render(stats: &Stats, now_unix_ms: u64) -> String {
    let mut out = String::with_capacity(16 * 1024);
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>lb-ctl stats</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
    header(&mut out, stats, now_unix_ms);
    outcomes(&mut out, stats);
    out.push_str("<section id=\"services\">\n<h2>Services</h2>\n");
    if stats.services.is_empty() {
        out.push_str("<p class=\"empty\">no services configured</p>\n");
    }
    for service in &stats.services {
        service_table(&mut out, service, now_unix_ms);
    }
    out.push_str("</section>\n</body>\n</html>\n");
    out
}

fn header(out: &mut String, stats: &Stats, now_unix_ms: u64) {
    w!(
        out,
        "<header>\n<h1>lb-ctl <span class=\"version\">{}</span></h1>\n<dl class=\"info\">\n",
        esc(&stats.version)
    );
    let item = |out: &mut String, name: &str, class: &str, value: &str| {
        w!(out, "<div><dt>{name}</dt><dd{}>{value}</dd></div>\n", class_attr(class));
    };
    item(out, "uptime", "", &duration_text(stats.uptime_s));
    let ct = stats.conntrack;
    let (fill, class) = if ct.capacity == 0 {
        ("n/a".to_owned(), "")
    } else {
        let pct = ct.entries as f64 * 100.0 / ct.capacity as f64;
        let class = if pct >= 90.0 {
            "bad"
        } else if pct >= 75.0 {
            "warn"
        } else {
            ""
        };
        (format!("{pct:.1}%"), class)
    };
    item(out, "conntrack", class, &format!("{} / {} ({fill})", ct.entries, ct.capacity));
    let rc = &stats.runtime_changes;
    let kept = match &rc.state_file {
        Some(path) => format!("kept in <code>{}</code>", esc(path)),
        None => "not persisted".to_owned(),
    };
    item(
        out,
        "runtime changes",
        "",
        &format!(
            "{} <span class=\"dim\">({} service{}, {} backend{}; {kept})</span>",
            rc.services + rc.backends,
            rc.services,
            plural(rc.services),
            rc.backends,
            plural(rc.backends),
        ),
    );
    item(out, "generated", "", &utc_text(now_unix_ms));
    item(out, "refresh", "", &format!("every {REFRESH_S} s"));
    out.push_str("</dl>\n<ul class=\"legend\">\n");
    for (class, meaning) in LEGEND {
        w!(out, "<li class=\"{class}\">{meaning}</li>\n");
    }
    out.push_str("</ul>\n</header>\n");
}

/// ` class="…"`, or nothing for no class.
fn class_attr(class: &str) -> String {
    if class.is_empty() { String::new() } else { format!(" class=\"{class}\"") }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The non-zero packet outcomes; drops in red, the data plane's own answers
/// (resets, rejects, "fragmentation needed") in orange.
fn outcomes(out: &mut String, stats: &Stats) {
    out.push_str("<section id=\"packets\">\n<h2>Packet outcomes</h2>\n");
    let nonzero: Vec<_> = stats.packets.iter().filter(|&(_, &n)| n > 0).collect();
    if nonzero.is_empty() {
        out.push_str("<p class=\"empty\">no packets seen yet</p>\n");
    } else {
        out.push_str("<ul class=\"outcomes\">\n");
        for (name, &n) in nonzero {
            let class = match Counter::from_name(name).map(Counter::kind) {
                Some(Kind::Dropped) => "drop",
                Some(Kind::Answered) => "answered",
                _ => "",
            };
            w!(
                out,
                "<li{} title=\"{n}\">{}<b>{}</b></li>\n",
                class_attr(class),
                esc(name),
                human_count(n)
            );
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
}

fn service_table(out: &mut String, s: &ServiceView, now_unix_ms: u64) {
    let name = esc(&s.name);
    w!(out, "<table class=\"service\" id=\"service-{name}\">\n<caption>\n");
    w!(
        out,
        "<span class=\"name\">{name}</span><code>{}/{}</code>\n",
        esc(&endpoint_text(&s.vip, s.port)),
        esc(&s.protocol)
    );
    w!(out, "<span class=\"meta\">scheduler <b>{}</b></span>\n", esc(&s.scheduler));
    if !s.forwarding.is_empty() {
        w!(out, "<span class=\"meta\">forwarding <b>{}</b></span>\n", esc(&s.forwarding));
    }
    w!(out, "<span class=\"meta\">health <b>{}</b></span>\n", health_summary(s.health.as_ref()));
    if s.slow_start_s > 0 {
        w!(out, "<span class=\"meta\">slow start <b>{} s</b></span>\n", s.slow_start_s);
    }
    w!(
        out,
        "<span class=\"meta\">in rotation <b>{}/{}</b></span>\n",
        s.backends_in_rotation,
        s.backends.len()
    );
    w!(
        out,
        "<span class=\"meta\">rate <b>{} pkt/s</b> in, <b>{} pkt/s</b> out, <b>{}/s</b> in, \
         <b>{}/s</b> out, <b>{}</b> new flows/s</span>\n",
        human_rate(s.rates.in_packets),
        human_rate(s.rates.out_packets),
        human_bytes_f(s.rates.in_bytes),
        human_bytes_f(s.rates.out_bytes),
        human_rate(s.rates.new_flows),
    );
    if s.backends_in_rotation == 0 {
        let fate = match s.on_no_backend.as_str() {
            "" => String::new(),
            "reject" => ": new flows are rejected".to_owned(),
            "drop" => ": new flows are dropped".to_owned(),
            other => format!(" (on_no_backend = {})", esc(other)),
        };
        w!(out, "<div class=\"alert\">no backend available{fate}</div>\n");
    }
    out.push_str("</caption>\n");
    table_head(out);
    out.push_str("<tbody>\n");
    if s.backends.is_empty() {
        w!(out, "<tr><td class=\"empty\" colspan=\"{COLUMNS}\">no backends configured</td></tr>\n");
    }
    for b in s.backends.iter().filter(|b| !b.backup) {
        backend_row(out, &name, b, now_unix_ms);
    }
    // Backups apart, in a body of their own headed by whether they serve.
    if s.backends.iter().any(|b| b.backup) {
        let now = if s.backups_serve {
            "serving: no primary is usable"
        } else {
            "standing by: new flows only while no primary is usable"
        };
        w!(
            out,
            "</tbody>\n<tbody class=\"backups\">\n<tr class=\"backup-head\"><td colspan=\"{COLUMNS}\">backups ({now})</td></tr>\n"
        );
        for b in s.backends.iter().filter(|b| b.backup) {
            backend_row(out, &name, b, now_unix_ms);
        }
    }
    out.push_str("</tbody>\n<tfoot>\n<tr>");
    let (active, inactive) = s.backends.iter().fold((0u64, 0u64), |(a, i), b| {
        (a + u64::from(b.conns.active), i + u64::from(b.conns.inactive))
    });
    out.push_str("<td colspan=\"4\">Total</td><td colspan=\"2\"></td>");
    w!(out, "<td class=\"n\">{active}</td><td class=\"n\">{inactive}</td><td></td>");
    traffic_cells(out, &s.traffic, &s.rates);
    out.push_str("</tr>\n</tfoot>\n</table>\n");
}

fn table_head(out: &mut String) {
    out.push_str(
        "<thead>\n<tr class=\"group\"><th colspan=\"4\">Backend</th><th colspan=\"2\">Health</th>\
         <th colspan=\"3\">Conns</th><th colspan=\"4\">In (client &rarr; backend)</th>\
         <th colspan=\"4\">Out (backend &rarr; client)</th><th colspan=\"2\">New flows</th></tr>\n\
         <tr><th>Address</th><th>Weight</th><th>State</th><th>Rotation</th>\
         <th>Status</th><th>Last check</th><th>Active</th><th>Inactive</th><th>Limit</th>\
         <th>Packets</th><th>Bytes</th><th>pkt/s</th><th>B/s</th>\
         <th>Packets</th><th>Bytes</th><th>pkt/s</th><th>B/s</th>\
         <th>Total</th><th>/s</th></tr>\n</thead>\n",
    );
}

/// The colour of a backend's row: the operator's state first (maint), then
/// the health (DOWN), then drain, then the other statuses.
fn row_class(b: &BackendView) -> &'static str {
    match (b.state.as_str(), b.health.status.as_str()) {
        ("maint", _) => "maint",
        (_, "DOWN") => "down",
        ("drain", _) => "drain",
        _ if b.weight == 0 => "drain",
        (_, "UNKNOWN") => "unknown",
        ("active", "UP") => "up",
        _ => "unchecked",
    }
}

/// The weight, and where it comes from when a script check gave it.
fn weight_cell(b: &BackendView) -> String {
    if b.ramp.is_some() && b.in_rotation {
        return format!(
            "{} <span class=\"dim\" title=\"in slow start: the part of its weight {} it gets now\">(slow start)</span>",
            crate::operator::render::short(b.effective_weight),
            b.weight
        );
    }
    match b.check_weight {
        Some(w) if b.weight > 0 => format!(
            "{w} <span class=\"dim\" title=\"set by its script check (dynamic_weight); its own is {}\">(check)</span>",
            b.weight
        ),
        _ => b.weight.to_string(),
    }
}

fn backend_row(out: &mut String, service: &str, b: &BackendView, now_unix_ms: u64) {
    let endpoint = esc(&endpoint_text(&b.address, b.port));
    let state = esc(&b.state);
    let status = esc(&b.health.status);
    w!(
        out,
        "<tr id=\"backend-{service}-{endpoint}\" class=\"{class}\" data-status=\"{status}\" \
         data-state=\"{state}\">",
        class = row_class(b),
    );
    w!(
        out,
        "<td class=\"mono\">{endpoint}</td><td class=\"n\">{}</td><td>{state}</td><td>{}</td>\
         <td><b>{status}</b></td>",
        weight_cell(b),
        if b.in_rotation { "in" } else { "out" },
    );
    match &b.health.last_check {
        Some(c) => {
            let (class, mark) = if c.ok { ("ok", "&#10004;") } else { ("fail", "&#10008;") };
            w!(
                out,
                "<td class=\"check {class}\">{mark} {} <span class=\"dim\">{}, {}</span></td>",
                esc(&c.detail),
                duration_ms_text(c.duration_ms),
                age_text(now_unix_ms, c.at_unix_ms),
            );
        }
        None => out.push_str("<td class=\"check\">-</td>"),
    }
    w!(out, "<td class=\"n\">{}</td><td class=\"n\">{}</td>", b.conns.active, b.conns.inactive);
    limit_cell(out, b);
    traffic_cells(out, &b.traffic, &b.rates);
    out.push_str("</tr>\n");
}

/// The backend's `max_conns` (`-` without one), marked when its
/// connections reach it: it then takes no new flow.
fn limit_cell(out: &mut String, b: &BackendView) {
    let conns = u64::from(b.conns.active) + u64::from(b.conns.inactive);
    match b.max_conns {
        0 => out.push_str("<td class=\"n dim\">-</td>"),
        max if conns >= u64::from(max) => w!(
            out,
            "<td class=\"n full\" title=\"at its max_conns: it takes no new flow\">{max} (full)</td>"
        ),
        max => w!(out, "<td class=\"n\">{max}</td>"),
    }
}

/// The ten traffic columns: in and out (packets, bytes, their rates), new flows.
fn traffic_cells(out: &mut String, t: &TrafficView, r: &RatesView) {
    let directions = [
        (t.in_packets, t.in_bytes, r.in_packets, r.in_bytes),
        (t.out_packets, t.out_bytes, r.out_packets, r.out_bytes),
    ];
    for (packets, bytes, packet_rate, byte_rate) in directions {
        w!(
            out,
            "<td class=\"n\" title=\"{packets}\">{}</td><td class=\"n\" title=\"{bytes} B\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}/s</td>",
            human_count(packets),
            human_bytes(bytes),
            human_rate(packet_rate),
            human_bytes_f(byte_rate),
        );
    }
    w!(
        out,
        "<td class=\"n\" title=\"{}\">{}</td><td class=\"n\">{}</td>",
        t.new_flows,
        human_count(t.new_flows),
        human_rate(r.new_flows),
    );
}

/// `http GET / expect 200 /Bienvenue/ every 2000 ms timeout 1000 ms rise 2 fall 3`, escaped.
fn health_summary(h: Option<&HealthCheckView>) -> String {
    let Some(h) = h else {
        return "none".to_owned();
    };
    let mut text = esc(&h.check);
    if let Some(path) = &h.path {
        w!(text, " GET {}", esc(path));
    }
    if let Some(status) = h.expect_status {
        w!(text, " expect {status}");
    }
    if let Some(body) = &h.expect_body {
        w!(text, " /{}/", esc(body));
    }
    if let Some(sni) = &h.sni {
        w!(text, " sni {}", esc(sni));
    }
    if let Some(ca) = &h.ca_file {
        w!(text, " ca {}", esc(ca));
    }
    if h.verify == Some(false) {
        text.push_str(" unverified");
    }
    if let Some(send) = &h.send_hex {
        w!(text, " send {}", esc(send));
    }
    if let Some(expect) = &h.expect {
        w!(text, " /{}/", esc(expect));
    }
    if let Some(command) = &h.command {
        w!(text, " run {}", esc(&command.join(" ")));
    }
    if h.dynamic_weight == Some(true) {
        text.push_str(" dynamic weight");
    }
    w!(
        text,
        " every {} ms timeout {} ms rise {} fall {}",
        h.interval_ms,
        h.timeout_ms,
        h.rise,
        h.fall
    );
    text
}

/// `text` safe in HTML text and in quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const BYTE_UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
const COUNT_UNITS: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];

/// `v` in steps of 1000 with the largest unit that keeps it under 1000: one
/// decimal under 100 (`1.2 MB`), none above (`123 MB`); an `exact` value
/// under 1000 keeps its integer form (`999 B`).
fn human(v: f64, units: &[&str], exact: bool) -> String {
    if !v.is_finite() || v < 0.0 {
        return "-".to_owned();
    }
    if v < 0.05 {
        return format!("0{}{}", if units[0].is_empty() { "" } else { " " }, units[0]);
    }
    let mut v = v;
    let mut i = 0;
    while v >= 999.5 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    let sep = if units[i].is_empty() { "" } else { " " };
    if (exact && i == 0) || v >= 99.95 {
        format!("{v:.0}{sep}{}", units[i])
    } else {
        format!("{v:.1}{sep}{}", units[i])
    }
}

/// `1.2 MB`.
fn human_bytes(n: u64) -> String {
    human(n as f64, &BYTE_UNITS, true)
}

/// A byte rate: `1.2 kB`, `0.5 B`.
fn human_bytes_f(v: f64) -> String {
    human(v, &BYTE_UNITS, false)
}

/// `3.4 k`.
fn human_count(n: u64) -> String {
    human(n as f64, &COUNT_UNITS, true)
}

/// A rate: `3.4 k`, `0.5`.
fn human_rate(v: f64) -> String {
    human(v, &COUNT_UNITS, false)
}

/// `0.8 ms`, `1.25 s`.
fn duration_ms_text(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.1} ms") }
}

/// `1.2 s ago`, `3m 5s ago`; a check stamped in the future (clock stepped
/// back) reads `0.0 s ago`.
fn age_text(now_unix_ms: u64, at_unix_ms: u64) -> String {
    let ms = now_unix_ms.saturating_sub(at_unix_ms);
    if ms < 60_000 {
        format!("{:.1} s ago", ms as f64 / 1000.0)
    } else {
        format!("{} ago", duration_text(ms / 1000))
    }
}

/// `2023-11-14 22:13:20 UTC`; `after 9999` past the year 9999.
fn utc_text(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    // 2023-11-14T22:13:20Z
    let mut rfc3339 = String::with_capacity(20);
    match write!(rfc3339, "{}", humantime::format_rfc3339_seconds(at)) {
        Ok(()) => format!("{} {} UTC", &rfc3339[..10], &rfc3339[11..19]),
        Err(fmt::Error) => "after 9999".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::view::{CheckView, ConnsView, ConntrackView, HealthView, RuntimeChanges};
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const HOSTILE: &str = "<img src=x onerror=alert(1)>";

    fn backend(address: &str, weight: u32, state: &str, status: &str) -> BackendView {
        let in_rotation = state == "active" && weight > 0 && status != "DOWN";
        let last_check = match status {
            "UP" => Some(CheckView {
                ok: true,
                detail: "HTTP 200".into(),
                duration_ms: 0.84,
                at_unix_ms: NOW - 1200,
            }),
            "DOWN" => Some(CheckView {
                ok: false,
                detail: "HTTP 503 & body <not> \"matched\"".into(),
                duration_ms: 2.5,
                at_unix_ms: NOW - 185_000,
            }),
            _ => None,
        };
        BackendView {
            address: address.into(),
            port: 8080,
            weight,
            check_weight: None,
            effective_weight: if in_rotation { f64::from(weight) } else { 0.0 },
            ramp: None,
            slow_start_s: None,
            backup: false,
            max_conns: 0,
            state: state.into(),
            check_address: None,
            check_port: None,
            in_rotation,
            health: HealthView { status: status.into(), last_check },
            conns: ConnsView { active: 12, inactive: 3 },
            traffic: TrafficView {
                in_packets: 3400,
                in_bytes: 1_234_567,
                out_packets: 2900,
                out_bytes: 9_876_543_210,
                new_flows: 410,
            },
            rates: RatesView {
                in_packets: 120.0,
                in_bytes: 45_678.0,
                out_packets: 98.5,
                out_bytes: 1_500_000.0,
                new_flows: 2.5,
            },
        }
    }

    fn sample() -> Stats {
        let web = ServiceView {
            name: "web".into(),
            vip: "10.0.0.10".into(),
            port: 80,
            protocol: "tcp".into(),
            scheduler: "maglev".into(),
            forwarding: "nat".into(),
            on_no_backend: "reject".into(),
            health: Some(HealthCheckView {
                check: "http".into(),
                path: Some("/".into()),
                expect_status: Some(200),
                expect_body: Some("Bienvenue".into()),
                interval_ms: 2000,
                timeout_ms: 1000,
                rise: 2,
                fall: 3,
                check_address: None,
                check_port: None,
                ..HealthCheckView::default()
            }),
            traffic: TrafficView {
                in_packets: 17_000,
                in_bytes: 6_172_835,
                out_packets: 14_500,
                out_bytes: 49_382_716_050,
                new_flows: 2050,
            },
            rates: RatesView {
                in_packets: 600.0,
                in_bytes: 228_390.0,
                out_packets: 492.5,
                out_bytes: 7_500_000.0,
                new_flows: 12.5,
            },
            backends_in_rotation: 1,
            slow_start_s: 0,
            persistence_s: None,
            persistence_netmask: None,
            allowed_sources: Vec::new(),
            snat_addresses: Vec::new(),
            snat_ports: None,
            backups_serve: false,
            backends: vec![
                backend("10.0.1.1", 100, "active", "UP"),
                backend("10.0.1.2", 100, "active", "DOWN"),
                backend("10.0.1.3", 100, "drain", "UP"),
                backend("10.0.1.4", 100, "maint", "UP"),
                backend("10.0.1.5", 100, "active", "UNKNOWN"),
            ],
        };
        let hostile = ServiceView {
            name: HOSTILE.into(),
            vip: "10.0.0.11".into(),
            port: 53,
            protocol: "udp".into(),
            scheduler: "rr".into(),
            forwarding: "nat".into(),
            on_no_backend: "drop".into(),
            health: None,
            backends_in_rotation: 0,
            backends: vec![
                backend("10.0.2.1", 0, "active", "UNCHECKED"),
                backend("10.0.2.2", 100, "maint", "UNCHECKED"),
            ],
            ..ServiceView::default()
        };
        let packets = BTreeMap::from([
            ("tx".to_owned(), 123_456),
            ("drop_no_backend".to_owned(), 42),
            ("rst_backend_down".to_owned(), 7),
            ("pass_not_ipv4".to_owned(), 0),
        ]);
        Stats {
            version: "0.1.0".into(),
            uptime_s: 93_784,
            services: vec![web, hostile],
            packets,
            conntrack: ConntrackView { entries: 1234, capacity: 65_536 },
            runtime_changes: RuntimeChanges {
                services: 1,
                backends: 2,
                state_file: Some("/var/lib/lb/state.toml".into()),
            },
            ..Stats::default()
        }
    }

    /// The `<tr …>` start tag of the element with `id`.
    fn start_tag<'a>(page: &'a str, id: &str) -> &'a str {
        let at = page.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no id {id}"));
        let start = page[..at].rfind('<').unwrap();
        let end = at + page[at..].find('>').unwrap();
        &page[start..=end]
    }

    /// The table `service-{id}`, caption to `</table>`.
    fn table<'a>(page: &'a str, id: &str) -> &'a str {
        let start = page.find(&format!("<table class=\"service\" id=\"service-{id}\"")).unwrap();
        let end = start + page[start..].find("</table>").unwrap();
        &page[start..end]
    }

    /// Each check type's own settings are in the service's line, escaped.
    #[test]
    fn the_health_summary_names_each_check_types_settings() {
        let base = HealthCheckView {
            interval_ms: 200,
            timeout_ms: 100,
            rise: 2,
            fall: 2,
            ..HealthCheckView::default()
        };
        let https = HealthCheckView {
            check: "https".into(),
            path: Some("/".into()),
            expect_status: Some(200),
            sni: Some("www.test".into()),
            ca_file: Some("/etc/lb/<ca>.pem".into()),
            verify: Some(true),
            ..base.clone()
        };
        assert_eq!(
            health_summary(Some(&https)),
            "https GET / expect 200 sni www.test ca /etc/lb/&lt;ca&gt;.pem every 200 ms timeout 100 ms rise 2 fall 2"
        );
        let any = HealthCheckView { verify: Some(false), ca_file: None, ..https };
        assert!(health_summary(Some(&any)).contains(" unverified "));
        let udp = HealthCheckView {
            check: "udp".into(),
            send_hex: Some("70 69 6e 67".into()),
            expect: Some("^pong".into()),
            ..base.clone()
        };
        assert!(health_summary(Some(&udp)).starts_with("udp send 70 69 6e 67 /^pong/ every"));
        let script = HealthCheckView {
            check: "script".into(),
            command: Some(vec!["/bin/check".into(), "-q".into()]),
            dynamic_weight: Some(true),
            ..base
        };
        assert!(
            health_summary(Some(&script))
                .starts_with("script run /bin/check -q dynamic weight every")
        );
    }

    /// Backups are rendered after the primaries, under a row that says
    /// whether they serve.
    #[test]
    fn backups_are_shown_apart() {
        let mut stats = sample();
        let mut sorry = backend("10.0.0.99", 1, "active", "UP");
        sorry.backup = true;
        stats.services[0].backends.insert(0, sorry);
        let html = render(&stats, NOW);
        let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("no {needle}: {html}"));
        let head = at("backups (standing by: new flows only while no primary is usable)");
        let sorry_row = at("id=\"backend-web-10.0.0.99:8080\"");
        let primary_row = at("id=\"backend-web-10.0.1.1:8080\"");
        assert!(primary_row < head && head < sorry_row, "{html}");
        stats.services[0].backups_serve = true;
        assert!(render(&stats, NOW).contains("backups (serving: no primary is usable)"));
        stats.services[0].slow_start_s = 30;
        assert!(render(&stats, NOW).contains("slow start <b>30 s</b>"));
    }

    /// A weight a script check gave shows with where it comes from.
    #[test]
    fn a_weight_from_a_check_says_so() {
        let mut b = backend("10.0.0.1", 3, "active", "UP");
        assert_eq!(weight_cell(&b), "3");
        b.check_weight = Some(7);
        assert!(weight_cell(&b).starts_with("7 <span class=\"dim\" title=\"set by its script check (dynamic_weight); its own is 3\">(check)"));
        b.weight = 0;
        assert_eq!(weight_cell(&b), "0", "drained stays drained");
        let mut ramping = backend("10.0.0.2", 4, "active", "UP");
        (ramping.ramp, ramping.effective_weight) = (Some(0.25), 1.0);
        assert!(weight_cell(&ramping).starts_with("1 <span class=\"dim\" title=\"in slow start: the part of its weight 4 it gets now\">(slow start)"));
    }

    /// A backend's `max_conns` shows beside its connections, marked when
    /// they reach it; a backend without one shows none.
    #[test]
    fn a_limit_shows_beside_the_connections_and_says_when_it_is_reached() {
        let mut stats = sample();
        let mut limited = backend("10.0.0.7", 1, "active", "UP");
        (limited.max_conns, limited.conns) = (5, ConnsView { active: 3, inactive: 1 });
        stats.services[0].backends.insert(0, limited);
        // The cell after the connections' (`active`, then 1 inactive).
        let cells = |html: &str, active: u32| {
            let row = html.find("id=\"backend-web-10.0.0.7:8080\"").expect("the row");
            let conns = format!("<td class=\"n\">{active}</td><td class=\"n\">1</td>");
            let at = html[row..].find(&conns).expect("the connections") + row + conns.len();
            html[at..].split("</td>").next().unwrap().to_owned()
        };
        assert_eq!(cells(&render(&stats, NOW), 3), "<td class=\"n\">5");
        stats.services[0].backends[0].conns.active = 4;
        let full = render(&stats, NOW);
        let cell = cells(&full, 4);
        assert!(cell.ends_with(">5 (full)") && cell.contains("class=\"n full\""), "{cell}");
        let other = full.find("id=\"backend-web-10.0.1.1:8080\"").unwrap();
        assert!(
            full[other..].split("</tr>").next().unwrap().contains("<td class=\"n dim\">-</td>")
        );
        assert!(full.contains("<th>Active</th><th>Inactive</th><th>Limit</th>"));
    }

    #[test]
    fn refreshes_itself_and_references_nothing_outside() {
        let page = render(&sample(), NOW);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(page.contains("<meta charset=\"utf-8\">"));
        for external in ["<script", "<link", "http://", "https://", "url(", "@import", "src=\""] {
            assert!(!page.contains(external), "{external} in the page");
        }
    }

    #[test]
    fn every_backend_has_its_row_with_status_and_state() {
        let page = render(&sample(), NOW);
        let rows = [
            ("10.0.1.1", "UP", "active", "up"),
            ("10.0.1.2", "DOWN", "active", "down"),
            ("10.0.1.3", "UP", "drain", "drain"),
            ("10.0.1.4", "UP", "maint", "maint"),
            ("10.0.1.5", "UNKNOWN", "active", "unknown"),
        ];
        for (address, status, state, class) in rows {
            let tag = start_tag(&page, &format!("backend-web-{address}:8080"));
            assert!(tag.contains(&format!("data-status=\"{status}\"")), "{tag}");
            assert!(tag.contains(&format!("data-state=\"{state}\"")), "{tag}");
            assert!(tag.contains(&format!("class=\"{class}\"")), "{tag}");
        }
        let tag = start_tag(&page, &format!("backend-{}-10.0.2.1:8080", esc(HOSTILE)));
        assert!(tag.contains("data-status=\"UNCHECKED\""), "{tag}");
        // Weight 0: out of rotation, coloured like drain.
        assert!(tag.contains("class=\"drain\""), "{tag}");
        let tag = start_tag(&page, &format!("backend-{}-10.0.2.2:8080", esc(HOSTILE)));
        assert!(tag.contains("data-state=\"maint\""), "{tag}");
        assert!(page.contains("id=\"service-web\""));
    }

    #[test]
    fn an_ipv6_service_shows_bracketed_endpoints() {
        let six = ServiceView {
            name: "web6".into(),
            vip: "fd77:1::100".into(),
            port: 80,
            protocol: "tcp".into(),
            backends: vec![backend("fd77:2::11", 1, "active", "UP")],
            ..ServiceView::default()
        };
        let page = render(&Stats { services: vec![six], ..Stats::default() }, NOW);
        assert!(table(&page, "web6").contains("<code>[fd77:1::100]:80/tcp</code>"), "{page}");
        let tag = start_tag(&page, "backend-web6-[fd77:2::11]:8080");
        assert!(tag.contains("data-status=\"UP\""), "{tag}");
        assert!(page.contains("<td class=\"mono\">[fd77:2::11]:8080</td>"), "{page}");
    }

    #[test]
    fn row_colours() {
        let class = |weight, state, status| row_class(&backend("10.0.0.1", weight, state, status));
        assert_eq!(class(1, "active", "UP"), "up");
        assert_eq!(class(1, "active", "DOWN"), "down");
        assert_eq!(class(1, "drain", "DOWN"), "down");
        assert_eq!(class(1, "maint", "DOWN"), "maint");
        assert_eq!(class(1, "drain", "UP"), "drain");
        assert_eq!(class(0, "active", "UP"), "drain");
        assert_eq!(class(1, "active", "UNKNOWN"), "unknown");
        assert_eq!(class(1, "drain", "UNKNOWN"), "drain");
        assert_eq!(class(1, "active", "UNCHECKED"), "unchecked");
        assert_eq!(class(1, "maint", "UNCHECKED"), "maint");
    }

    #[test]
    fn caption_tells_endpoint_scheduler_health_and_rotation() {
        let page = render(&sample(), NOW);
        let web = table(&page, "web");
        assert!(web.contains("10.0.0.10:80/tcp"));
        assert!(web.contains("scheduler <b>maglev</b>"));
        assert!(web.contains(
            "http GET / expect 200 /Bienvenue/ every 2000 ms timeout 1000 ms rise 2 fall 3"
        ));
        assert!(web.contains("in rotation <b>1/5</b>"));
        // Last checks: detail, duration, age.
        assert!(web.contains("HTTP 200 <span class=\"dim\">0.8 ms, 1.2 s ago</span>"));
        assert!(web.contains("3m 5s ago"));
        // Human-readable traffic, exact value on hover.
        assert!(web.contains("title=\"1234567 B\">1.2 MB</td>"));
        assert!(web.contains("title=\"3400\">3.4 k</td>"));
        assert!(web.contains("1.5 MB/s"));
        let hostile = table(&page, &esc(HOSTILE));
        assert!(hostile.contains("10.0.0.11:53/udp"));
        assert!(hostile.contains("health <b>none</b>"));
        assert!(hostile.contains("in rotation <b>0/2</b>"));
    }

    #[test]
    fn header_tells_uptime_conntrack_changes_and_time() {
        let page = render(&sample(), NOW);
        assert!(page.contains("<span class=\"version\">0.1.0</span>"));
        assert!(page.contains(">1d 2h 3m 4s<"));
        assert!(page.contains("1234 / 65536 (1.9%)"));
        assert!(page.contains(">3 <span class=\"dim\">(1 service, 2 backends; kept in"));
        assert!(page.contains("2023-11-14 22:13:20 UTC"));
    }

    #[test]
    fn outcomes_show_non_zero_counters_with_drops_highlighted() {
        let page = render(&sample(), NOW);
        assert!(page.contains("<li class=\"drop\" title=\"42\">drop_no_backend<b>42</b></li>"));
        assert!(page.contains("<li class=\"answered\" title=\"7\">rst_backend_down<b>7</b></li>"));
        assert!(page.contains("<li title=\"123456\">tx<b>123 k</b></li>"));
        assert!(!page.contains("pass_not_ipv4"));
    }

    #[test]
    fn hostile_text_is_escaped() {
        let page = render(&sample(), NOW);
        assert!(!page.contains(HOSTILE));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(page.contains("HTTP 503 &amp; body &lt;not&gt; &quot;matched&quot;"));
        let mut stats = sample();
        stats.services[0].name = "a\"b' onmouseover=\"x".into();
        stats.version = "<b>".into();
        let page = render(&stats, NOW);
        assert!(page.contains("id=\"service-a&quot;b&#39; onmouseover=&quot;x\""));
        assert!(page.contains("<span class=\"version\">&lt;b&gt;</span>"));
        assert_eq!(esc("<&>\"'x"), "&lt;&amp;&gt;&quot;&#39;x");
    }

    #[test]
    fn no_backend_available_only_where_none_is_in_rotation() {
        let page = render(&sample(), NOW);
        let hostile = table(&page, &esc(HOSTILE));
        assert!(
            hostile
                .contains("<div class=\"alert\">no backend available: new flows are dropped</div>")
        );
        assert!(!table(&page, "web").contains("no backend available"));
        let mut stats = sample();
        stats.services[0].backends_in_rotation = 0;
        stats.services[0].backends.clear();
        let page = render(&stats, NOW);
        let web = table(&page, "web");
        assert!(web.contains("no backend available: new flows are rejected"));
        assert!(web.contains("no backends configured"));
        assert_well_formed(&page);
    }

    #[test]
    fn empty() {
        let page = render(&Stats::default(), 0);
        assert!(page.contains("no services configured"));
        assert!(page.contains("no packets seen yet"));
        assert!(page.contains("0 / 0 (n/a)"));
        assert!(page.contains("1970-01-01 00:00:00 UTC"));
        assert!(!page.contains("<table"));
        assert_well_formed(&page);
    }

    #[test]
    fn page_is_well_formed() {
        let page = render(&sample(), NOW);
        assert_eq!(page.matches("<table").count(), 2);
        assert_eq!(page.matches("<table").count(), page.matches("</table>").count());
        assert_eq!(page.matches("<tr").count(), page.matches("</tr>").count());
        assert_eq!(page.matches("<td").count(), page.matches("</td>").count());
        assert_well_formed(&page);
    }

    /// Every element closed, in order (void elements aside).
    fn assert_well_formed(page: &str) {
        const VOID: [&str; 4] = ["meta", "br", "hr", "img"];
        let body = &page[page.find("</style>").unwrap() + "</style>".len()..];
        let head = &page[..page.find("<style>").unwrap()];
        let mut stack = Vec::new();
        for part in [head, body] {
            let mut rest = part;
            while let Some(at) = rest.find('<') {
                let end = at + rest[at..].find('>').expect("unclosed tag");
                let tag = &rest[at + 1..end];
                rest = &rest[end + 1..];
                if tag.starts_with('!') {
                    continue;
                }
                if let Some(name) = tag.strip_prefix('/') {
                    assert_eq!(stack.pop(), Some(name.to_owned()), "</{name}> closes nothing");
                } else {
                    let name = tag.split([' ', '\n']).next().unwrap().to_owned();
                    assert!(!name.is_empty());
                    if !VOID.contains(&name.as_str()) {
                        stack.push(name);
                    }
                }
            }
        }
        // `<style>` was skipped with its text: it is opened and closed once.
        assert!(stack.is_empty(), "left open: {stack:?}");
        assert_eq!(page.matches("<style>").count(), 1);
        assert_eq!(page.matches("</style>").count(), 1);
    }

    #[test]
    fn human_readable_numbers() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(1234), "1.2 kB");
        assert_eq!(human_bytes(12_345), "12.3 kB");
        assert_eq!(human_bytes(123_456), "123 kB");
        assert_eq!(human_bytes(999_499), "999 kB");
        assert_eq!(human_bytes(999_600), "1.0 MB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(9_876_543_210), "9.9 GB");
        assert_eq!(human_bytes(u64::MAX), "18.4 EB");
        assert_eq!(human_bytes_f(0.5), "0.5 B");
        assert_eq!(human_bytes_f(0.01), "0 B");
        assert_eq!(human_bytes_f(f64::NAN), "-");
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(42), "42");
        assert_eq!(human_count(3400), "3.4 k");
        assert_eq!(human_count(2_500_000), "2.5 M");
        assert_eq!(human_rate(2.5), "2.5");
        assert_eq!(human_rate(120.0), "120");
        assert_eq!(human_rate(-1.0), "-");
    }

    #[test]
    fn times() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(65), "1m 5s");
        assert_eq!(duration_text(3600), "1h 0m 0s");
        assert_eq!(duration_text(93_784), "1d 2h 3m 4s");
        assert_eq!(age_text(NOW, NOW - 1200), "1.2 s ago");
        assert_eq!(age_text(NOW, NOW + 5000), "0.0 s ago");
        assert_eq!(age_text(NOW, NOW - 3_725_000), "1h 2m 5s ago");
        assert_eq!(duration_ms_text(0.84), "0.8 ms");
        assert_eq!(duration_ms_text(1250.0), "1.25 s");
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_text(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc_text(NOW), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_text(253_402_300_799_999), "9999-12-31 23:59:59 UTC");
        assert_eq!(utc_text(253_402_300_800_000), "after 9999");
    }
}
