//! The parts of `cargo xtask bench dataplane` beyond the per-packet table of
//! `lb-bench`: a connection table of 1M live flows (`conntrack`), 256
//! services of 64 backends (`services`), the memory accesses' floor on this
//! machine (`floor`), and packets per second forwarded through veth in
//! driver mode (`forward`, with `rawbpf` for the traffic generator and the
//! sink). Shared here: how a figure is made from samples.
pub mod compare;
pub mod conntrack;
pub mod expiry;
pub mod flood;
pub mod floor;
pub mod forward;
pub mod handshake;
pub mod rawbpf;
pub mod services;

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::programs::Xdp;
use lb_ctl::{desired::model::Service, write::reconciler::Reconciler};
use lb_testbed::{
    fixture::{Loaded, load_maps},
    testrun,
};

/// Rounds per figure (the figure is their median).
pub const ROUNDS: usize = 7;
/// `repeat = 1` runs per round and scenario.
pub const SAMPLES: usize = 3000;

/// The fixture namespace of the data plane benchmark: its own name, apart
/// from the privileged tests' `lbt*` and the e2e benchmark's `lbe*`.
pub const BENCH_NS: &str = "lbd-bench";

pub fn median(values: &mut [u32]) -> u32 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// A round's figure: the mean of its samples without the slowest 2% (runs
/// hit by an interrupt). The kernel's clock ticks in coarse steps here, so a
/// mean resolves finer than any single sample or a median of them.
pub fn round_figure(samples: &mut [u32]) -> u32 {
    samples.sort_unstable();
    mean(&samples[..samples.len() * 98 / 100])
}

fn mean(samples: &[u32]) -> u32 {
    (samples.iter().map(|&s| u64::from(s)).sum::<u64>() / samples.len().max(1) as u64) as u32
}

/// Samples summed up three ways. The trimmed mean is the steady cost; the
/// untrimmed mean and the 99th percentile keep what the trim hides (the
/// slow runs a cold cache or an eviction causes, not only interrupts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `round_figure`: the mean without the slowest 2%.
    pub trimmed: u32,
    pub mean: u32,
    pub p99: u32,
}

impl Stats {
    pub fn of(samples: &mut [u32]) -> Self {
        let trimmed = round_figure(samples);
        let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
        Self { trimmed, mean: mean(samples), p99 }
    }

    /// Each statistic's median over rounds.
    fn median_of(rounds: &[Self]) -> Self {
        let pick = |f: fn(&Self) -> u32| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
        Self { trimmed: pick(|s| s.trimmed), mean: pick(|s| s.mean), p99: pick(|s| s.p99) }
    }

    /// Each statistic less the same one of `baseline`.
    #[must_use]
    pub fn less(self, baseline: Self) -> Self {
        Self {
            trimmed: self.trimmed.saturating_sub(baseline.trimmed),
            mean: self.mean.saturating_sub(baseline.mean),
            p99: self.p99.saturating_sub(baseline.p99),
        }
    }
}

/// Runs the calling thread on one CPU: per-CPU maps and caches then behave
/// the same in every sample.
pub fn pin_to_cpu(cpu: usize) {
    pin_task_to_cpu(0, cpu);
}

/// Pins task `tid` (0: the calling thread) to `cpu`; false if the kernel refused.
pub fn pin_task_to_cpu(tid: i32, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &raw const set) == 0
    }
}

/// Ports per client address of the live flows (`live_client`).
pub const LIVE_PORTS: u32 = 50_000;
/// The first port of each client address of the live flows.
pub const LIVE_PORT_BASE: u16 = 10_000;

/// The client of live flow `i`: 10.77.64.(1 + i / 50 000), port
/// 10 000 + i % 50 000. The 1M-flow table and the forwarding generator's
/// mix number their flows alike, so the generator can send to the flows
/// the table holds.
pub fn live_client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(10, 77, 64, (i / LIVE_PORTS) as u8 + 1),
        LIVE_PORT_BASE + (i % LIVE_PORTS) as u16,
    )
}

/// A client address and port unique to `n`: a flow never seen before.
pub fn fresh_client(n: usize) -> (Ipv4Addr, u16) {
    let host = (n / 50_000) as u8;
    (Ipv4Addr::new(10, 77, 3, host.wrapping_add(1)), 10_000 + (n % 50_000) as u16)
}

/// The trivial XDP_PASS program every figure is taken net of: what remains
/// is the program's own cost, not BPF_PROG_TEST_RUN's.
pub struct Baseline {
    program: Xdp,
    frame: Vec<u8>,
    ifindex: u32,
}

impl Baseline {
    pub fn new(frame: Vec<u8>, ifindex: u32) -> Self {
        Self { program: testrun::load_trivial_pass(), frame, ifindex }
    }

    pub fn sample(&self) -> u32 {
        testrun::run(&self.program, &self.frame, self.ifindex, 1).duration_ns
    }

    /// `SAMPLES` samples summed up (for a figure measured outside `measure`).
    pub fn stats(&self) -> Stats {
        let mut samples: Vec<u32> = (0..SAMPLES).map(|_| self.sample()).collect();
        Stats::of(&mut samples)
    }
}

/// Per row, the median over rounds of each statistic; and the baseline's,
/// measured in the same rounds.
pub struct Measured {
    pub gross: Vec<Stats>,
    pub baseline: Stats,
}

/// Runs `ROUNDS` rounds; each measures the baseline, then every scenario
/// (`sample(i)` runs scenario i once and returns its ns), `SAMPLES` times
/// each. Rounds interleave the scenarios, so that a slow phase of the
/// machine touches them all alike.
pub fn measure(
    baseline: &Baseline,
    scenarios: usize,
    mut sample: impl FnMut(usize) -> u32,
) -> Measured {
    measure_groups(baseline, &vec![1; scenarios], |i, out| out[0] = sample(i))
}

/// `measure` for scenarios that time several packets per sample (a
/// handshake): scenario i fills `widths[i]` figures, one row each, in order.
pub fn measure_groups(
    baseline: &Baseline,
    widths: &[usize],
    mut sample: impl FnMut(usize, &mut [u32]),
) -> Measured {
    let rows: usize = widths.iter().sum();
    let mut gross: Vec<Vec<Stats>> = vec![Vec::new(); rows];
    let mut base = Vec::new();
    let mut samples = vec![vec![0_u32; SAMPLES]; widths.iter().copied().max().unwrap_or(1)];
    let mut one = vec![0_u32; samples.len()];
    for _ in 0..ROUNDS {
        for s in &mut samples[0] {
            *s = baseline.sample();
        }
        base.push(Stats::of(&mut samples[0]));
        let mut row = 0;
        for (i, &width) in widths.iter().enumerate() {
            for n in 0..SAMPLES {
                sample(i, &mut one[..width]);
                for (column, &ns) in samples.iter_mut().zip(&one[..width]) {
                    column[n] = ns;
                }
            }
            for k in 0..width {
                gross[row + k].push(Stats::of(&mut samples[k]));
            }
            row += width;
        }
    }
    Measured {
        gross: gross.iter().map(|g| Stats::median_of(g)).collect(),
        baseline: Stats::median_of(&base),
    }
}

/// One line of a result table.
pub struct Row {
    pub name: String,
    pub gross: Stats,
    pub baseline: Stats,
    pub target: Option<u32>,
    /// For a row that also checks where its packets went: in how many of
    /// its samples they went where they should (`Kept`).
    pub kept: Option<Kept>,
}

/// How many samples of a row were forwarded to the backend they should have.
#[derive(Clone, Copy)]
pub struct Kept {
    pub kept: usize,
    pub samples: usize,
}

impl Row {
    /// The trimmed figure, net of the baseline's (what the targets are about).
    pub fn net(&self) -> u32 {
        self.net_stats().trimmed
    }

    pub fn net_stats(&self) -> Stats {
        self.gross.less(self.baseline)
    }

    /// The target column and its verdict; a row whose packets went astray
    /// says LOST whatever its time.
    fn verdict(&self) -> (String, String) {
        let target = self.target.map_or_else(|| "-".to_owned(), |t| format!("{t}ns"));
        let verdict = match (self.kept, self.target) {
            (Some(k), _) if k.kept < k.samples => {
                format!(
                    "LOST ({} of {} not forwarded to their backend)",
                    k.samples - k.kept,
                    k.samples
                )
            }
            (Some(k), _) => format!("kept ({} of {})", k.kept, k.samples),
            (None, Some(t)) if self.net() <= t => "ok".to_owned(),
            (None, Some(_)) => "OVER TARGET".to_owned(),
            (None, None) => String::new(),
        };
        (target, verdict)
    }
}

/// Rows of a `Measured`, named in order.
pub fn rows(measured: &Measured, names: &[&str], targets: &[Option<u32>]) -> Vec<Row> {
    names
        .iter()
        .zip(targets)
        .zip(&measured.gross)
        .map(|((name, target), gross)| Row {
            name: (*name).to_owned(),
            gross: *gross,
            baseline: measured.baseline,
            target: *target,
            kept: None,
        })
        .collect()
}

/// What the columns of `table` are, for the line above it.
pub const COLUMNS: &str = "gross and baseline: trimmed means (the slowest 2% of samples left out); \
net = gross - baseline; mean and p99: the untrimmed mean and the 99th percentile, \
each net of the XDP_PASS baseline's same statistic";

pub fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<56} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7}",
        "scenario", "gross", "baseline", "net", "target", "mean", "p99"
    );
    for r in rows {
        let (target, verdict) = r.verdict();
        let net = r.net_stats();
        let _ = writeln!(
            t,
            "{:<56} {:>6}ns {:>7}ns {:>5}ns {:>7} {:>5}ns {:>5}ns  {verdict}",
            r.name, r.gross.trimmed, r.baseline.trimmed, net.trimmed, target, net.mean, net.p99
        );
    }
    t
}

/// The rows as a JSON array (the per-packet table's shape). `net_ns`,
/// `mean_ns` and `p99_ns` are net of the baseline's same statistic.
pub fn rows_json(rows: &[Row], indent: &str) -> String {
    let items: Vec<String> = rows.iter().map(|r| format!("{indent}  {}", row_json(r))).collect();
    format!("[\n{}\n{indent}]", items.join(",\n"))
}

fn row_json(r: &Row) -> String {
    let target = r.target.map_or_else(|| "null".to_owned(), |t| t.to_string());
    let net = r.net_stats();
    let kept = r.kept.map_or_else(String::new, |k| {
        format!(", \"samples_kept\": {}, \"samples\": {}", k.kept, k.samples)
    });
    format!(
        "{{\"name\": {}, \"gross_ns\": {}, \"baseline_ns\": {}, \"net_ns\": {}, \"target_ns\": {target}, \
         \"mean_ns\": {}, \"p99_ns\": {}, \"gross_mean_ns\": {}, \"gross_p99_ns\": {}, \
         \"baseline_mean_ns\": {}, \"baseline_p99_ns\": {}{kept}}}",
        json_str(&r.name),
        r.gross.trimmed,
        r.baseline.trimmed,
        net.trimmed,
        net.mean,
        net.p99,
        r.gross.mean,
        r.gross.p99,
        r.baseline.mean,
        r.baseline.p99,
    )
}

/// `s` as a JSON string literal, quoted and escaped.
pub fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `/proc/loadavg`'s three load averages, as it writes them: `0.52 0.40 1.05`.
pub fn load_average() -> String {
    crate::machine_load::load_averages().map_or_else(
        || "unknown".into(),
        |[one, five, fifteen]| format!("{one:.2} {five:.2} {fifteen:.2}"),
    )
}

/// How long the controller's recount (its walk of the connection tables
/// and the full-NAT mappings, the counts published) takes over `loaded`'s
/// maps: the median of `passes`.
pub fn recount_time(loaded: &mut Loaded, passes: usize) -> std::time::Duration {
    let mut times: Vec<_> = (0..passes.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            loaded.reconciler.recount_connections().expect("the recount");
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// What a part of the benchmark prints and records.
pub struct Part {
    pub title: String,
    pub text: String,
    /// The JSON key and value it adds to `dataplane.json`.
    pub key: &'static str,
    pub json: String,
}

/// The program loaded (not attached) in the calling thread's namespace,
/// redirecting to `interfaces`, with `services` applied by lb-ctl's
/// reconciler, as the controller would.
pub fn load_services(conntrack_max: u32, interfaces: &[&str], services: &[Service]) -> Loaded {
    let interfaces: Vec<String> = interfaces.iter().map(|&i| i.to_owned()).collect();
    let maps = load_maps(conntrack_max, &interfaces);
    let mut reconciler = Reconciler::new(maps);
    reconciler.apply(services).unwrap_or_else(|e| panic!("applying the services: {e}"));
    let program = testrun::program(reconciler.maps_mut().ebpf_mut(), "lb_xdp");
    Loaded { reconciler, program }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_load_averages_are_written_as_the_report_wants() {
        assert_eq!(json_str("lb \"x\"\\y\n"), r#""lb \"x\"\\y\n""#);
        // As /proc/loadavg writes them: two decimals each.
        let load = load_average();
        let fields: Vec<&str> = load.split(' ').collect();
        assert_eq!(fields.len(), 3, "{load}");
        assert!(
            fields.iter().all(|f| f.split_once('.').is_some_and(|(_, d)| d.len() == 2)),
            "{load}"
        );
    }
}
