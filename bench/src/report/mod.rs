//! The benchmark tables of `docs/benchmarks.md`, rendered from the JSON
//! reports the benchmarks leave under `target/bench/` (`lb-bench-report`,
//! which `cargo xtask bench report` runs and splices into the document).
//!
//! The output is a series of regions, each between two marker lines:
//!
//! ```text
//! <!-- bench:NAME begin -->
//! *how, when and where it ran*
//!
//! | a | table |
//! <!-- bench:NAME end -->
//! ```
//!
//! xtask replaces the region of the same name in the document, so the
//! prose around the tables stays as written. A region is rendered only when
//! its JSON holds it (a run of some parts of `lb-bench` leaves the others'
//! regions as they were).
//!
//! Every report also records how, when and where it ran: `stamp` adds a
//! `"run"` object (date, commit, CPUs, kernel) as the benchmark writes it.
mod controller;
mod dataplane;
mod e2e;

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, SystemTime},
};

use serde_json::Value;

/// One region of the document: its marker name and its markdown.
pub struct Region {
    pub name: &'static str,
    pub markdown: String,
}

/// Every region the JSON files under `dir` hold, with their markers.
pub fn render(dir: &Path) -> String {
    let mut regions = Vec::new();
    if let Some(report) = Report::read(dir, "dataplane.json") {
        regions.extend(dataplane::regions(&report));
    }
    if let Some(report) = Report::read(dir, "e2e.json") {
        regions.push(e2e::region(&report));
    }
    if let Some(report) = Report::read(dir, "health.json") {
        regions.push(controller::health(&report));
    }
    if let Some(report) = Report::read(dir, "api.json") {
        regions.push(controller::api(&report));
    }
    if let Some(report) = Report::read(dir, "control.json") {
        regions.push(controller::maglev(&report));
    }
    let mut out = String::new();
    for r in regions {
        let _ = write!(
            out,
            "<!-- bench:{0} begin -->\n{1}<!-- bench:{0} end -->\n",
            r.name,
            r.markdown.trim_end().to_owned() + "\n"
        );
    }
    out
}

/// A benchmark's JSON report and what is known of its run.
pub struct Report {
    pub json: Value,
    /// The file's name under `target/bench/`.
    file: &'static str,
    /// The file's modification date, for reports written without a stamp.
    file_date: Option<String>,
}

impl Report {
    fn read(dir: &Path, file: &'static str) -> Option<Self> {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).ok()?;
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let file_date = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| utc_date(d.as_secs()));
        Some(Self { json, file, file_date })
    }

    /// The line above a table: the command (`cargo xtask bench` and `kind`,
    /// if any), the run's date, commit and machine, and `extra` (load
    /// averages, the baseline).
    pub fn heading(&self, kind: &str, extra: &[String]) -> String {
        let run = &self.json["run"];
        let command = if kind.is_empty() { String::new() } else { format!(" {kind}") };
        let mut parts = vec![format!("`cargo xtask bench{command}`")];
        if run.is_object() {
            parts.push(format!("{}, commit `{}`", text(&run["date"]), text(&run["commit"])));
            parts.push(format!(
                "{} CPUs ({}), Linux {}",
                text(&run["cpus"]),
                text(&run["cpu"]),
                text(&run["kernel"])
            ));
        } else {
            parts.push(format!(
                "`target/bench/{}` of {} (it records no machine)",
                self.file,
                self.file_date.as_deref().unwrap_or("an unknown date")
            ));
        }
        parts.extend(extra.iter().cloned());
        format!("*{}.*\n\n", parts.join("; "))
    }
}

/// A JSON value as text: strings without quotes, `–` for nothing.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A number of `v` with `digits` decimals, `–` when absent.
pub fn fixed(v: &Value, digits: usize) -> String {
    v.as_f64().map_or_else(|| "–".to_owned(), |n| format!("{n:.digits$}"))
}

/// A markdown table: a header row, each column's alignment (`l` or `r`,
/// one letter per column) and body rows.
pub fn table(header: &[&str], align: &str, rows: &[Vec<String>]) -> String {
    let mut t = format!("| {} |\n|", header.join(" | "));
    for a in align.chars() {
        t.push_str(if a == 'r' { "---:|" } else { "---|" });
    }
    t.push('\n');
    for row in rows {
        let _ = writeln!(t, "| {} |", row.join(" | "));
    }
    t
}

/// `report` (a JSON object's text, as a benchmark writes it) with a
/// `"run"` member first: the date (UTC), the commit (`git describe
/// --always --dirty` in the current directory, which xtask makes the
/// workspace), the CPUs, their model and the kernel. The member goes in as
/// text, so the report keeps its own layout and order; a report that is
/// not a JSON object, or is stamped already, is returned as it is.
pub fn stamp(report: &str) -> String {
    let object = serde_json::from_str::<Value>(report);
    let Ok(Value::Object(members)) = object else {
        return report.to_owned();
    };
    let Some(open) = report.find('{').filter(|_| !members.contains_key("run")) else {
        return report.to_owned();
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().into());
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let run = serde_json::json!({
        "date": utc_date(now),
        "commit": commit,
        "cpus": cpus,
        "cpu": cpu,
        "kernel": kernel,
    });
    let comma = if members.is_empty() { "" } else { "," };
    format!("{}\n  \"run\": {run}{comma}{}", &report[..=open], &report[open + 1..])
}

/// `YYYY-MM-DD` of a Unix time, UTC.
fn utc_date(secs: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    // 2026-11-22T04:20:00Z; an error past the year 9999.
    let mut rfc3339 = String::with_capacity(20);
    match write!(rfc3339, "{}", humantime::format_rfc3339_seconds(at)) {
        Ok(()) => rfc3339[..10].to_owned(),
        Err(_) => "after 9999".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_report_is_still_json_with_its_members() {
        let stamped = stamp("{\n  \"unit\": \"ns\",\n  \"rows\": [1, 2]\n}\n");
        let v: Value = serde_json::from_str(&stamped).expect("JSON");
        assert_eq!(v["unit"], "ns");
        assert_eq!(v["rows"][1], 2);
        assert!(v["run"]["date"].as_str().is_some_and(|d| d.len() == 10 && d.starts_with("20")));
        assert!(v["run"]["cpus"].as_u64().is_some_and(|n| n > 0));
    }

    /// An empty report gets its stamp and stays JSON; a stamped one, or one
    /// that is not a JSON object, is left as it is (no second `run`).
    #[test]
    fn odd_reports_are_stamped_once_or_left_alone() {
        let empty: Value = serde_json::from_str(&stamp("{}")).expect("JSON");
        assert!(empty["run"]["date"].is_string());
        let once = stamp("{\"unit\": \"ns\"}");
        assert_eq!(stamp(&once), once);
        for text in ["[1, 2]", "not json", "{\"cut\": "] {
            assert_eq!(stamp(text), text);
        }
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_709_251_199), "2024-02-29");
        assert_eq!(utc_date(1_709_251_200), "2024-03-01");
        assert_eq!(utc_date(253_402_300_799), "9999-12-31");
        assert_eq!(utc_date(253_402_300_800), "after 9999");
    }
}
