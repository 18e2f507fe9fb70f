//! The region of `e2e.json` (`lb-bench-e2e`): requests per second and the
//! machine's CPU per request of each target under each load, the targets
//! the benchmark checks, and the figures that explain them.
use std::fmt::Write as _;

use serde_json::Value;

use super::{Region, Report, fixed, table, text};

/// The loads, as the JSON names them and as the table does.
const WORKLOADS: [(&str, &str); 3] =
    [("http_keepalive", "keep-alive"), ("http_close", "connection per request"), ("udp", "UDP")];
const TARGETS: [&str; 6] = ["direct", "lb", "fullnat", "haproxy", "nftables", "direct3"];

pub fn region(report: &Report) -> Region {
    let json = &report.json;
    let s = &json["settings"];
    let extra = vec![
        format!(
            "{} rounds of {} s; wrk -t{} -c{}; {} UDP requests in flight",
            text(&s["rounds"]),
            text(&s["secs"]),
            text(&s["wrk_threads"]),
            text(&s["wrk_connections"]),
            text(&s["udp_inflight"])
        ),
        format!(
            "load average {} before, {} after; {} s in all",
            triple(&json["loadavg_before"]),
            triple(&json["loadavg_after"]),
            fixed(&json["elapsed_s"], 0)
        ),
    ];
    let mut md = report.heading("e2e", &extra);
    let mut rows = Vec::new();
    for (key, load) in WORKLOADS {
        let mut first = true;
        for target in TARGETS {
            let result = &json["results"][target][key];
            if !result.is_object() {
                continue;
            }
            let median = &result["median"];
            let name = if matches!(target, "lb" | "fullnat") {
                format!("**{target}**")
            } else {
                target.to_owned()
            };
            rows.push(vec![
                if first { load.to_owned() } else { String::new() },
                name,
                fixed(&median["rps"], 0),
                fixed(&median["cpu_us_per_req"], 1),
                own_process(&result["rounds"]),
                format!("{} / {}", fixed(&median["p50_us"], 0), fixed(&median["p99_us"], 0)),
            ]);
            first = false;
        }
    }
    md.push_str(&table(
        &[
            "load",
            "target",
            "req/s",
            "machine CPU µs per request",
            "of which the target's own process",
            "p50 / p99 µs",
        ],
        "llrrrr",
        &rows,
    ));
    let checks: Vec<Vec<String>> = json["targets"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|c| {
                    vec![
                        format!("`{}`", text(&c["name"])),
                        fixed(&c["value"], 2),
                        format!("{} {}", text(&c["op"]).replace(">=", "≥"), text(&c["threshold"])),
                        if c["met"] == Value::Bool(true) { "met" } else { "not met" }.to_owned(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = write!(md, "\n{}", table(&["target", "value", "wanted", ""], "lrrl", &checks));
    if let Some(context) = json["context"].as_object() {
        let list: Vec<String> =
            context.iter().map(|(k, v)| format!("`{k}` {}", fixed(v, 2))).collect();
        let _ = writeln!(md, "\nContext: {}.", list.join(", "));
    }
    Region { name: "e2e", markdown: md }
}

fn triple(v: &Value) -> String {
    v.as_array().map_or_else(
        || "–".to_owned(),
        |a| a.iter().map(|n| fixed(n, 2)).collect::<Vec<_>>().join(" "),
    )
}

/// The median over the rounds the benchmark's medians use (those no other
/// work disturbed, or all when every one was) of the target's own
/// process's CPU per request (lb-ctl's controller, HAProxy); `–` for the
/// targets without one.
fn own_process(rounds: &Value) -> String {
    let Some(rounds) = rounds.as_array() else {
        return "–".to_owned();
    };
    let clean: Vec<&Value> =
        rounds.iter().filter(|r| r["contended"] != Value::Bool(true)).collect();
    let used = if clean.is_empty() { rounds.iter().collect() } else { clean };
    let mut values: Vec<f64> =
        used.iter().filter_map(|r| r["process_us_per_req"].as_f64()).collect();
    if values.is_empty() {
        return "–".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median =
        if n % 2 == 1 { values[n / 2] } else { f64::midpoint(values[n / 2 - 1], values[n / 2]) };
    format!("{median:.1}")
}
