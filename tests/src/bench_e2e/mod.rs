//! `cargo xtask bench e2e`: the load balancer end to end against what an
//! operator would otherwise use, on one namespace topology (prefix `lbe`),
//! in one run:
//!
//! - `direct`: the client against web1 alone, routed by the load balancer
//!   namespace's kernel (no balancing): the ceiling;
//! - `lb`: `lb-ctl run` with XDP attached, Maglev over three backends;
//! - `haproxy`: Debian's HAProxy in that namespace, `mode tcp`, `balance
//!   roundrobin`, on the VIP (TCP only: HAProxy does not balance UDP);
//! - `nftables`: kernel DNAT, `numgen inc mod 3` (NAT + conntrack).
//!
//! Targets take turns (direct, lb, haproxy, nftables, direct, …) so that a
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

use crate::topology::{BACKENDS, VIP};

const PREFIX: &str = "lbe";
/// Where `lb-ctl run` pins its data plane (never under the tests' `lbt-*`).
const PIN_PATH: &str = "/sys/fs/bpf/lbe-bench";
const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 5353;
/// A whole run may not take longer than this, whatever the settings say.
const RUN_LIMIT: Duration = Duration::from_mins(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Lb,
    Haproxy,
    Nftables,
}

impl Target {
    const ALL: [Self; 4] = [Self::Direct, Self::Lb, Self::Haproxy, Self::Nftables];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Lb => "lb",
            Self::Haproxy => "haproxy",
            Self::Nftables => "nftables",
        }
    }

    /// Where the client sends: web1 itself for the ceiling, else the VIP.
    fn address(self) -> &'static str {
        if self == Self::Direct { BACKENDS[0].1 } else { VIP }
    }

    fn workloads(self) -> &'static [Workload] {
        if self == Self::Haproxy { &[Workload::KeepAlive, Workload::Close] } else { &Workload::ALL }
    }

    /// The backends (indexes into BACKENDS) this target spreads over.
    fn backends(self) -> usize {
        if self == Self::Direct { 1 } else { BACKENDS.len() }
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
/// `LB_BENCH_E2E_SECS`), bounded so a typo cannot run for hours.
#[derive(Clone, Copy, Debug)]
struct Settings {
    rounds: usize,
    secs: u64,
    /// wrk's open connections (`-c`), one wrk thread.
    connections: u32,
    /// UDP requests in flight, one socket (one flow) each.
    udp_inflight: usize,
}

impl Settings {
    fn from_env() -> Self {
        let num = |key: &str, default: u64, max: u64| {
            std::env::var(key)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
                .clamp(1, max)
        };
        Self {
            rounds: usize::try_from(num("LB_BENCH_E2E_ROUNDS", 5, 20)).unwrap_or(5),
            secs: num("LB_BENCH_E2E_SECS", 5, 30),
            connections: 32,
            udp_inflight: 16,
        }
    }
}

/// Runs the whole benchmark: prints the table, writes the JSON report.
pub fn run() {
    crate::raise_fd_limit();
    let settings = Settings::from_env();
    let load_before = sample::loadavg();
    let started = Instant::now();
    let mut results = report::Results::default();
    {
        let env = procs::Env::create(PREFIX, &work_dir());
        'rounds: for round in 1..=settings.rounds {
            for target in Target::ALL {
                if started.elapsed() > RUN_LIMIT {
                    eprintln!("e2e: stopping after {RUN_LIMIT:?}: results so far");
                    break 'rounds;
                }
                run_target(&env, target, round, settings, &mut results);
            }
        }
    }
    let load_after = sample::loadavg();
    let run = report::RunInfo { settings, load_before, load_after, elapsed: started.elapsed() };
    report::print(&results, &run);
    crate::write_bench_report(
        "LB_BENCH_E2E_OUT",
        "target/bench/e2e.json",
        &report::json(&results, &run),
    );
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
    for &workload in target.workloads() {
        let sample = sample::measure(env, &running, target, workload, settings);
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
