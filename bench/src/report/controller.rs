//! The regions of the controller's benchmarks: health checks
//! (`health.json`, `lb-bench-health`), the admin API (`api.json`,
//! `lb-bench-api`) and the Maglev tables (`control.json`,
//! `lb-bench-control`).
use serde_json::Value;

use super::{Region, Report, fixed, table, text};

pub fn health(report: &Report) -> Region {
    let h = &report.json;
    let runs: Vec<String> =
        h["detection_ms"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
    let core =
        h["core_fraction"].as_f64().map_or_else(|| "–".to_owned(), |f| format!("{:.1}", f * 100.0));
    let rows = vec![
        vec![
            "block → no longer chosen".to_owned(),
            format!("median {} ms ({})", text(&h["detection_median_ms"]), runs.join(", ")),
            format!("bound {} ms", text(&h["detection_bound_ms"])),
        ],
        vec![
            format!(
                "{} backends every {} ms",
                text(&h["probed_backends"]),
                text(&h["interval_ms"])
            ),
            format!(
                "{core}% of one core ({} probes in {} s, {} µs of CPU per probe)",
                text(&h["probes"]),
                h["wall_ms"]
                    .as_f64()
                    .map_or_else(|| "–".to_owned(), |ms| format!("{:.1}", ms / 1000.0)),
                fixed(&h["cpu_us_per_probe"], 1)
            ),
            "≤ 25%".to_owned(),
        ],
        vec![
            format!("{} backends over HTTPS every 1000 ms", text(&h["https_backends"])),
            format!(
                "{}% of one core ({} probes in {} s, {} µs of CPU per probe)",
                h["https_core_fraction"]
                    .as_f64()
                    .map_or_else(|| "–".to_owned(), |f| format!("{:.1}", f * 100.0)),
                text(&h["https_probes"]),
                h["https_wall_ms"]
                    .as_f64()
                    .map_or_else(|| "–".to_owned(), |ms| format!("{:.1}", ms / 1000.0)),
                fixed(&h["https_cpu_us_per_probe"], 1)
            ),
            "< 50%".to_owned(),
        ],
    ];
    let md = report.heading("", &[]) + &table(&["measure", "seen", "target"], "lll", &rows);
    Region { name: "health", markdown: md }
}

pub fn api(report: &Report) -> Region {
    let a = &report.json;
    let ms =
        |v: &Value| v.as_f64().map_or_else(|| "–".to_owned(), |us| format!("{:.2}", us / 1000.0));
    let adds = |v: &Value| {
        format!(
            "p50 {} ms, p99 {} ms, max {} ms ({} adds)",
            ms(&v["p50_us"]),
            ms(&v["p99_us"]),
            ms(&v["max_us"]),
            text(&v["calls"])
        )
    };
    let mib =
        |v: &Value| v.as_f64().map_or_else(|| "–".to_owned(), |kib| format!("{:.1}", kib / 1024.0));
    let first = &a["first_packet_us"];
    let rows = vec![
        vec!["backend add, 3 services".to_owned(), adds(&a["add_small"]), "p99 < 5 ms".to_owned()],
        vec![
            "backend add, 100 services × 100 backends".to_owned(),
            adds(&a["add_100x100"]),
            String::new(),
        ],
        vec![
            "answer → first reply from the new backend".to_owned(),
            format!(
                "median {} ms, worst {} ms (a query's round trip: {} µs)",
                ms(&first["median"]),
                ms(&first["max"]),
                text(&first["rtt_median"])
            ),
            String::new(),
        ],
        vec![
            "`lb-ctl run` with 100 × 100: RSS".to_owned(),
            format!(
                "{} MiB (peak {} MiB)",
                mib(&a["rss_100x100_kib"]),
                mib(&a["rss_peak_100x100_kib"])
            ),
            "< 50 MB".to_owned(),
        ],
        vec![
            "`lb-ctl run` with 100 × 100: start → `/readyz` 200".to_owned(),
            format!("{} ms", text(&a["ready_100x100_ms"])),
            String::new(),
        ],
        vec![
            "restart adopting the pinned data plane → `/readyz` 200".to_owned(),
            format!("{} ms", text(&a["restart_adopting_100x100_ms"])),
            String::new(),
        ],
    ];
    let md = report.heading("", &[]) + &table(&["measure", "seen", "target"], "lll", &rows);
    Region { name: "api", markdown: md }
}

pub fn maglev(report: &Report) -> Region {
    let c = &report.json;
    let percent =
        |v: &Value| v.as_f64().map_or_else(|| "–".to_owned(), |f| format!("{:.2}%", f * 100.0));
    let rows: Vec<Vec<String>> = c["sizes"]
        .as_array()
        .map(|sizes| {
            sizes
                .iter()
                .map(|s| {
                    let target = if s["backends"].as_u64() == Some(1000) {
                        "< 5 ms, ≤ 1.1 ×"
                    } else {
                        "≤ 1.1 ×"
                    };
                    vec![
                        text(&s["backends"]),
                        format!("{} ms", fixed(&s["build_ms"], 2)),
                        format!(
                            "{} = {} × 1/N",
                            percent(&s["moved_on_removal"]),
                            fixed(&s["removal_vs_ideal"], 2)
                        ),
                        format!(
                            "{} = {} × 1/(N+1)",
                            percent(&s["moved_on_addition"]),
                            fixed(&s["addition_vs_ideal"], 2)
                        ),
                        fixed(&s["busiest_over_mean"], 3),
                        target.to_owned(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let extra = vec![format!("tables of {} slots", text(&c["table_size"]))];
    let md = report.heading("control", &extra)
        + &table(
            &[
                "backends",
                "build (median of 15)",
                "moved on removal",
                "moved on addition",
                "busiest backend's slots / mean",
                "target",
            ],
            "rrrrrl",
            &rows,
        );
    Region { name: "control", markdown: md }
}
