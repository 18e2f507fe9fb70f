//! `cargo xtask bench e2e`: the load balancer end to end against what an
//! operator would otherwise use, on one namespace topology (prefix `lbe`),
//! in one run:
//!
//! - `direct`: the client against web1 alone, routed by the load balancer
//!   namespace's kernel (no balancing): the ceiling;
//! - `lb`: `lb-ctl run` with XDP attached, Maglev over three backends;
//! - `fullnat`: the same with `forwarding = "fullnat"`: the backends see
//!   the load balancer's address as their client, as behind HAProxy;
//! - `haproxy`: Debian's HAProxy in that namespace, `mode tcp`, `balance
//!   roundrobin`, on the VIP (TCP only: HAProxy does not balance UDP);
//! - `nftables`: kernel DNAT, `numgen inc mod 3` (NAT + conntrack);
//! - `direct3`, for reference: the client straight to all three backends
//!   (UDP only).
//!
//! Targets take turns (direct, lb, fullnat, haproxy, nftables, direct, …) so that a
//! noisy neighbour hurts them alike. Each runs three workloads: HTTP
//! keep-alive and HTTP with one connection per request (wrk against nginx
//! on each backend), and UDP request/response (`load::udp`). Machine CPU is
//! read from /proc/stat around each measurement, so XDP's softirq work, the
//! client, the backends and the kernel's forwarding all count.
mod load;
mod procs;
mod report;
mod sample;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_testbed::topology::{BACKENDS, VIP};

use crate::machine_load;

const PREFIX: &str = "lbe";
/// Where `lb-ctl run` pins its data plane (never under the tests' `lbt-*`).
const PIN_PATH: &str = "/sys/fs/bpf/lbe-bench";
const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 5353;
/// How many times a measurement disturbed by other work is repeated.
const MAX_RETRIES: usize = 2;
/// A whole run may not take longer than this, whatever the settings say.
const RUN_LIMIT: Duration = Duration::from_mins(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Lb,
    /// The load balancer in full NAT: the job HAProxy does.
    FullNat,
    Haproxy,
    Nftables,
    /// Not a contender: the client straight to all three backends (UDP
    /// only; wrk has no way to spread one thread's connections). It tells
    /// the cost of three backends sharing two CPUs from the cost of the
    /// load balancer in the UDP figures.
    Direct3,
}

impl Target {
    const ALL: [Self; 6] =
        [Self::Direct, Self::Lb, Self::FullNat, Self::Haproxy, Self::Nftables, Self::Direct3];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Lb => "lb",
            Self::FullNat => "fullnat",
            Self::Haproxy => "haproxy",
            Self::Nftables => "nftables",
            Self::Direct3 => "direct3",
        }
    }

    /// Where the client sends: web1 itself for the ceiling, each backend
    /// for `direct3`, else the VIP.
    fn addresses(self) -> Vec<&'static str> {
        match self {
            Self::Direct => vec![BACKENDS[0].1],
            Self::Direct3 => BACKENDS.iter().map(|(_, address)| *address).collect(),
            Self::Lb | Self::FullNat | Self::Haproxy | Self::Nftables => vec![VIP],
        }
    }

    fn workloads(self) -> &'static [Workload] {
        match self {
            Self::Haproxy => &[Workload::KeepAlive, Workload::Close],
            Self::Direct3 => &[Workload::Udp],
            Self::Direct | Self::Lb | Self::FullNat | Self::Nftables => &Workload::ALL,
        }
    }

    /// Whether the target is this load balancer (its counters are read).
    fn is_lb(self) -> bool {
        matches!(self, Self::Lb | Self::FullNat)
    }

    /// The backends (indexes into BACKENDS) this target spreads over.
    fn backends(self) -> usize {
        match self {
            Self::Direct => 1,
            Self::Lb | Self::FullNat => procs::lb_backends(),
            _ => BACKENDS.len(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    KeepAlive,
    Close,
    Udp,
}

impl Workload {
    const ALL: [Self; 3] = [Self::KeepAlive, Self::Close, Self::Udp];

    fn name(self) -> &'static str {
        match self {
            Self::KeepAlive => "http_keepalive",
            Self::Close => "http_close",
            Self::Udp => "udp",
        }
    }
}

/// Run settings, from the environment (`LB_BENCH_E2E_ROUNDS`,
/// `LB_BENCH_E2E_SECS`, `LB_BENCH_E2E_THREADS`, `LB_BENCH_E2E_CONNECTIONS`),
/// bounded so a typo cannot run for hours.
#[derive(Clone, Copy, Debug)]
struct Settings {
    rounds: usize,
    secs: u64,
    /// wrk's threads (`-t`), one per CPU by default (at most 8).
    threads: u32,
    /// wrk's open connections (`-c`), over all its threads.
    connections: u32,
    /// UDP requests in flight, one socket (one flow) each.
    udp_inflight: usize,
    /// Which of `Target::ALL` to run (`LB_BENCH_E2E_TARGETS=lb,direct`).
    targets: [bool; 6],
    /// Which of `Workload::ALL` (`LB_BENCH_E2E_WORKLOADS=udp,http_close`).
    workloads: [bool; 3],
}

impl Settings {
    fn from_env() -> Self {
        // One wrk thread per CPU: a single thread caps the connection rate
        // on its own (one core of connect/close churn) before any target
        // does; 128 connections keep every target busy.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let num = |key: &str, default: u64, max: u64| {
            std::env::var(key)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
                .clamp(1, max)
        };
        let threads = u32::try_from(num("LB_BENCH_E2E_THREADS", cpus, 8)).unwrap_or(1);
        Self {
            rounds: usize::try_from(num("LB_BENCH_E2E_ROUNDS", 5, 20)).unwrap_or(5),
            secs: num("LB_BENCH_E2E_SECS", 5, 30),
            threads,
            // wrk wants at least one connection per thread.
            connections: u32::try_from(num("LB_BENCH_E2E_CONNECTIONS", 128, 1024))
                .unwrap_or(128)
                .max(threads),
            udp_inflight: 16,
            targets: std::env::var("LB_BENCH_E2E_TARGETS").map_or([true; 6], |list| {
                Target::ALL.map(|t| list.split(',').any(|name| name.trim() == t.name()))
            }),
            workloads: std::env::var("LB_BENCH_E2E_WORKLOADS").map_or([true; 3], |list| {
                Workload::ALL.map(|w| list.split(',').any(|name| name.trim() == w.name()))
            }),
        }
    }

    fn wrk(&self) -> load::Wrk {
        load::Wrk { threads: self.threads, connections: self.connections, secs: self.secs }
    }

    fn runs(&self, target: Target) -> bool {
        Target::ALL.iter().zip(self.targets).any(|(t, on)| *t == target && on)
    }

    fn measures(&self, workload: Workload) -> bool {
        Workload::ALL.iter().zip(self.workloads).any(|(w, on)| *w == workload && on)
    }
}

/// Runs the whole benchmark: prints the table, writes the JSON report.
pub fn run() {
    lb_testbed::raise_fd_limit();
    let settings = Settings::from_env();
    let load_before = machine_load::load_averages().unwrap_or_default();
    let started = Instant::now();
    let mut results = report::Results::default();
    {
        let env = procs::Env::create(PREFIX, &work_dir());
        'rounds: for round in 1..=settings.rounds {
            for target in Target::ALL.into_iter().filter(|t| settings.runs(*t)) {
                if started.elapsed() > RUN_LIMIT {
                    eprintln!("e2e: stopping after {RUN_LIMIT:?}: results so far");
                    break 'rounds;
                }
                run_target(&env, target, round, settings, &mut results);
            }
        }
    }
    let load_after = machine_load::load_averages().unwrap_or_default();
    let run = report::RunInfo { settings, load_before, load_after, elapsed: started.elapsed() };
    report::print(&results, &run);
    crate::write_report("LB_BENCH_E2E_OUT", "target/bench/e2e.json", &report::json(&results, &run));
}

fn work_dir() -> PathBuf {
    std::env::temp_dir().join("lbe-bench")
}

/// Starts `target`, checks that it answers (and warms it up), measures its
/// workloads, stops it.
fn run_target(
    env: &procs::Env,
    target: Target,
    round: usize,
    settings: Settings,
    results: &mut report::Results,
) {
    let running = env.start(target);
    env.check(target);
    for &workload in target.workloads().iter().filter(|w| settings.measures(**w)) {
        let mut sample = sample::measure(env, &running, target, workload, settings);
        // Other work on the machine came along: measure again (bounded),
        // keeping the last try, marked, if it never went away.
        for _ in 0..MAX_RETRIES {
            if !sample.contended() {
                break;
            }
            eprintln!(
                "e2e: round {round} {} {}: other load on the machine, again",
                target.name(),
                workload.name()
            );
            sample = sample::measure(env, &running, target, workload, settings);
        }
        eprintln!(
            "e2e: round {round} {:<8} {:<14} {}",
            target.name(),
            workload.name(),
            sample.brief()
        );
        results.push(target, workload, sample);
    }
    running.stop(env);
}
