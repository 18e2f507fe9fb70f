//! The regions of `dataplane.json` (`lb-bench`): the cost per packet, the
//! 1M-flow connection table, 256 services, the memory floor and the
//! forwarding rate, each present when its part ran.
use std::fmt::Write as _;

use serde_json::Value;

use super::{Region, Report, fixed, table, text};

pub fn regions(report: &Report) -> Vec<Region> {
    let json = &report.json;
    let mut regions = Vec::new();
    if let Some(rows) = json["scenarios"].as_array() {
        regions.push(Region {
            name: "dataplane-per-packet",
            markdown: report.heading("dataplane", &context(json, rows)) + &rows_table(rows),
        });
    }
    let conntrack = &json["conntrack_1m"];
    if let Some(rows) = conntrack["scenarios"].as_array() {
        let mut md = report.heading("dataplane", &context(json, rows)) + &rows_table(rows);
        md.push_str(&conntrack_facts(conntrack));
        regions.push(Region { name: "dataplane-conntrack", markdown: md });
    }
    let services = &json["services_256x64"];
    if let Some(rows) = services["scenarios"].as_array() {
        let mut md = report.heading("dataplane", &context(json, rows)) + &rows_table(rows);
        let _ = writeln!(
            md,
            "\n{} services × {} backends, loaded and applied by lb-ctl's reconciler in {} s; \
             {} established flows.",
            text(&services["services"]),
            text(&services["backends_per_service"]),
            fixed(&services["load_and_apply_s"], 2),
            text(&services["established_flows"]),
        );
        regions.push(Region { name: "dataplane-services", markdown: md });
    }
    let floor = &json["floor"];
    if let Some(rows) = floor["scenarios"].as_array() {
        let caches: Vec<String> = floor["caches"]
            .as_array()
            .map(|c| {
                c.iter().map(|c| format!("{} {}", text(&c["cache"]), text(&c["size"]))).collect()
            })
            .unwrap_or_default();
        let mut extra = context(json, rows);
        extra.push(format!("cpu0's caches: {}", caches.join(", ")));
        let md = report.heading("dataplane", &extra) + &rows_table(rows);
        regions.push(Region { name: "dataplane-floor", markdown: md });
    }
    if json["forwarding"].is_object() {
        let extra = vec![load_averages(json)];
        let md = report.heading("dataplane", &extra) + &forwarding(&json["forwarding"]);
        regions.push(Region { name: "dataplane-forwarding", markdown: md });
    }
    regions
}

/// The load averages and the XDP_PASS baseline every net figure is taken
/// from (the first row's: all rows of a table share their rounds).
fn context(json: &Value, rows: &[Value]) -> Vec<String> {
    let mut extra = vec![load_averages(json)];
    if let Some(first) = rows.first() {
        extra.push(format!(
            "XDP_PASS baseline {} ns (untrimmed mean {}, p99 {})",
            text(&first["baseline_ns"]),
            text(&first["baseline_mean_ns"]),
            text(&first["baseline_p99_ns"])
        ));
    }
    if let (Some(rounds), Some(samples)) =
        (json["rounds"].as_u64(), json["samples_per_round"].as_u64())
    {
        extra.push(format!("each figure the median of {rounds} rounds of {samples} samples"));
    }
    extra
}

fn load_averages(json: &Value) -> String {
    let load = &json["load_average"];
    format!("load average {} before, {} after", text(&load["before"]), text(&load["after"]))
}

/// Rows of the per-packet shape: net figures and the target's verdict.
fn rows_table(rows: &[Value]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                text(&r["name"]),
                text(&r["net_ns"]),
                text(&r["mean_ns"]),
                text(&r["p99_ns"]),
                r["target_ns"].as_u64().map_or_else(String::new, |t| format!("≤ {t}")),
                verdict(r),
            ]
        })
        .collect();
    table(&["scenario", "net ns", "mean", "p99", "target", ""], "lrrrrl", &body)
}

/// As `lb-bench` prints it: a row that checks where its packets went says
/// so first; else the trimmed net figure against the target.
fn verdict(row: &Value) -> String {
    if let (Some(kept), Some(samples)) = (row["samples_kept"].as_u64(), row["samples"].as_u64()) {
        return if kept < samples {
            format!("LOST ({} of {samples} not forwarded to their backend)", samples - kept)
        } else {
            format!("kept ({kept} of {samples})")
        };
    }
    match (row["net_ns"].as_u64(), row["target_ns"].as_u64()) {
        (Some(net), Some(target)) if net <= target => "met".to_owned(),
        (Some(_), Some(_)) => "over".to_owned(),
        _ => String::new(),
    }
}

/// The 1M-flow table less the near-empty one, and how the table was filled.
fn conntrack_facts(c: &Value) -> String {
    let target = c["delta_target_ns"].as_i64().unwrap_or(30);
    let deltas: Vec<Vec<String>> = c["deltas"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| {
                    let delta = d["delta_ns"].as_i64().unwrap_or_default();
                    vec![
                        text(&d["name"]),
                        format!("{delta:+}"),
                        format!("≤ {target}"),
                        if delta <= target { "met" } else { "over" }.to_owned(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut md = format!(
        "\n{}",
        table(&["1M-flow table minus near-empty table", "net ns", "target", ""], "lrrl", &deltas)
    );
    let _ = write!(
        md,
        "\nconntrack_max {}: {} entries in use after the fill ({} live flows, filled in {} s, \
         {} ns an entry through the controller's mapping); live flows not in the table after \
         measuring (their set overflowed): {}",
        text(&c["capacity"]),
        text(&c["entries_after_fill"]),
        text(&c["live_flows"]),
        fixed(&c["fill_live_s"], 2),
        text(&c["fill_ns_per_update"]),
        text(&c["live_flows_missed"]),
    );
    if c["recount_ms"].is_number() {
        let _ = write!(
            md,
            "; the controller's recount over the full table: {} ms",
            fixed(&c["recount_ms"], 1)
        );
    }
    md.push_str(".\n");
    md
}

/// The two mixes side by side.
fn forwarding(f: &Value) -> String {
    let empty = Vec::new();
    let mixes = f["mixes"].as_array().unwrap_or(&empty);
    let header: Vec<String> = std::iter::once(String::new())
        .chain(mixes.iter().map(|m| match m["flows"].as_u64() {
            Some(n) if n >= 1_000_000 && n.is_multiple_of(1_000_000) => {
                format!("{}M flows in the table", n / 1_000_000)
            }
            Some(n) => format!("{n} flows"),
            None => "–".to_owned(),
        }))
        .collect();
    let mpps = |v: &Value| v.as_f64().map_or_else(|| "–".to_owned(), |p| format!("{:.2}", p / 1e6));
    let line = |name: &str, cell: &dyn Fn(&Value) -> String| -> Vec<String> {
        std::iter::once(name.to_owned()).chain(mixes.iter().map(cell)).collect()
    };
    let rows = vec![
        line("offered by the generator, Mpps", &|m| mpps(&m["offered_pps"])),
        line("forwarded (XDP_REDIRECT), Mpps", &|m| mpps(&m["forwarded_pps"])),
        line("lost at the load balancer's ring / the sink's", &|m| {
            format!("{} / {}", text(&m["lost_at_lb_ring"]), text(&m["lost_at_sink_ring"]))
        }),
        line("the NAPI thread's CPU per forwarded packet", &|m| {
            format!(
                "{} ns ({}% of the core)",
                fixed(&m["lb_cpu_ns_per_packet"], 0),
                fixed(&m["lb_napi_cpu_percent"], 0)
            )
        }),
        line("one core at 100% would forward, Mpps", &|m| {
            m["lb_cpu_ns_per_packet"]
                .as_f64()
                .filter(|&ns| ns > 0.0)
                .map_or_else(|| "–".to_owned(), |ns| format!("{:.2}", 1e3 / ns))
        }),
        line("`lb_xdp`'s run time per packet (BPF stats), ns", &|m| {
            fixed(&m["program_ns_per_packet_bpf_stats"], 0)
        }),
        line("the sink's XDP_DROP the same way (the method's floor), ns", &|m| {
            fixed(&m["sink_xdp_drop_ns_per_packet_bpf_stats"], 0)
        }),
    ];
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let align = format!("l{}", "r".repeat(mixes.len()));
    let mut md = table(&header, &align, &rows);
    let _ = write!(
        md,
        "\n`lb_xdp`: {} translated instructions, {} bytes JITed.",
        text(&f["program_xlated_insns"]),
        text(&f["program_jited_bytes"]),
    );
    if f["threaded_napi"] == Value::Bool(false) {
        md.push_str(
            " Threaded NAPI was refused: the load balancer's NAPI ran on the generator's CPU.",
        );
    }
    md.push('\n');
    md
}
