//! `lb-bench compare --base A.json... --new B.json...`: the report of
//! `cargo xtask bench ab`. Per row of the tables made of rows, the median
//! over runs of each side's three statistics (net of the XDP_PASS
//! baseline) and new - base; then each run's baseline, the measure of how
//! alike the runs' conditions were.
use std::fmt::Write as _;

use serde_json::Value;

/// The row tables of `dataplane.json`: a title and where its rows are.
const TABLES: [(&str, &[&str]); 4] = [
    ("Cost per packet", &["scenarios"]),
    ("Connection table, 1M live flows", &["conntrack_1m", "scenarios"]),
    ("256 services x 64 backends", &["services_256x64", "scenarios"]),
    ("Memory floor", &["floor", "scenarios"]),
];
/// The statistics compared: a column title and the row's JSON key.
const STATS: [(&str, &str); 3] = [("trimmed", "net_ns"), ("mean", "mean_ns"), ("p99", "p99_ns")];

/// The report over the JSON files of the base's runs and the new's.
pub fn report(base: &[String], new: &[String]) -> String {
    let (base, new) = (read_all(base), read_all(new));
    let mut text = format!(
        "A/B: medians over {} base and {} new runs, ns net of the XDP_PASS baseline's same \
         statistic (trimmed: the mean without the slowest 2% of samples; mean: untrimmed; \
         p99: 99th percentile)\n",
        base.len(),
        new.len()
    );
    for (title, path) in TABLES {
        let (Some(base_rows), Some(new_rows)) = (all_rows(&base, path), all_rows(&new, path))
        else {
            continue;
        };
        let _ = write!(text, "\n{title}\n{}", table(&base_rows, &new_rows));
        let _ = writeln!(
            text,
            "XDP_PASS baseline per run (trimmed): base {}; new {}",
            baselines(&base_rows),
            baselines(&new_rows)
        );
    }
    text
}

fn read_all(paths: &[String]) -> Vec<Value> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
        })
        .collect()
}

/// Each run's rows of the table at `path`; None if a run lacks it.
fn all_rows<'a>(runs: &'a [Value], path: &[&str]) -> Option<Vec<&'a [Value]>> {
    runs.iter()
        .map(|run| path.iter().try_fold(run, |v, key| v.get(key))?.as_array().map(Vec::as_slice))
        .collect()
}

/// Field `key` of the row named `name` in each run that has it.
fn field(runs: &[&[Value]], name: &str, key: &str) -> Vec<f64> {
    runs.iter()
        .filter_map(|rows| rows.iter().find(|r| r["name"] == name))
        .filter_map(|r| r[key].as_f64())
        .collect()
}

/// The median; the midpoint of the middle two for an even count.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| f64::midpoint(values[(n - 1) / 2], values[n / 2]))
}

fn table(base: &[&[Value]], new: &[&[Value]]) -> String {
    let mut t = format!("{:<56}", "");
    for (title, _) in STATS {
        let _ = write!(t, " | {title:^23}");
    }
    let _ = write!(t, "\n{:<56}", "scenario");
    for _ in STATS {
        let _ = write!(t, " | {:>7} {:>7} {:>7}", "base", "new", "diff");
    }
    t.push('\n');
    for name in new[0].iter().filter_map(|r| r["name"].as_str()) {
        let _ = write!(t, "{name:<56}");
        for (_, key) in STATS {
            let _ = match (median(field(base, name, key)), median(field(new, name, key))) {
                (Some(b), Some(n)) => write!(t, " | {b:>7.1} {n:>7.1} {:>+7.1}", n - b),
                (b, n) => write!(t, " | {:>7} {:>7} {:>7}", show(b), show(n), "-"),
            };
        }
        let _ = writeln!(t, "{}", kept(base, new, name));
    }
    t
}

fn show(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// For a row that checks where its packets went: how many samples did,
/// over all runs of each side ("LOST" if any did not).
fn kept(base: &[&[Value]], new: &[&[Value]], name: &str) -> String {
    let sum = |runs: &[&[Value]], key| field(runs, name, key).iter().sum::<f64>();
    let (base_samples, new_samples) = (sum(base, "samples"), sum(new, "samples"));
    if base_samples == 0.0 && new_samples == 0.0 {
        return String::new();
    }
    let (base_kept, new_kept) = (sum(base, "samples_kept"), sum(new, "samples_kept"));
    let lost = base_kept < base_samples || new_kept < new_samples;
    format!(
        "  kept: base {base_kept}/{base_samples}, new {new_kept}/{new_samples}{}",
        if lost { "  LOST" } else { "" }
    )
}

fn baselines(runs: &[&[Value]]) -> String {
    let each: Vec<String> = runs
        .iter()
        .map(|rows| {
            rows.first()
                .and_then(|r| r["baseline_ns"].as_u64())
                .map_or("-".into(), |b| b.to_string())
        })
        .collect();
    each.join(" ")
}
