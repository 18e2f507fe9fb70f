//! `cargo xtask bench control`: the controller's Maglev tables. How long a
//! table of M = 65537 slots takes to build for 10, 100 and 1000 backends,
//! and how many slots change owner when one backend is removed or added,
//! against the ideal 1/N of the table. No privileges needed.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::abi::MAGLEV_SIZE;
use lb_ctl::plan::maglev::{Entry, build};

const SIZES: [u32; 3] = [10, 100, 1000];
const BUILDS: usize = 15;
/// Backends removed (or added) one at a time to measure disruption.
const CHANGES: u32 = 10;

fn main() {
    println!("Maglev tables (M = {MAGLEV_SIZE}), release build");
    println!(
        "{:>9}  {:>12}  {:>22}  {:>22}  {:>13}  {:>8}",
        "backends", "build", "moved on removal", "moved on addition", "busiest/mean", "target"
    );
    let mut json = String::from("{\n  \"table_size\": 65537,\n  \"sizes\": [\n");
    for (i, n) in SIZES.into_iter().enumerate() {
        let backends = entries(n);
        let build_time = median_build(&backends);
        let removal = moved_fraction(&backends, Change::Remove);
        let addition = moved_fraction(&backends, Change::Add);
        let peak = busiest_over_mean(&backends);
        let ideal = 1.0 / f64::from(n);
        let ideal_add = 1.0 / f64::from(n + 1);
        println!(
            "{n:>9}  {:>9.2} ms  {:>8.4} = {:>4.2} x 1/N  {:>8.4} = {:>4.2} x 1/(N+1)  {peak:>13.3}  {:>8}",
            build_time.as_secs_f64() * 1000.0,
            removal,
            removal / ideal,
            addition,
            addition / ideal_add,
            if n == 1000 { "< 5 ms, < 1.1 x" } else { "< 1.1 x" }
        );
        let _ = writeln!(
            json,
            "    {{\"backends\": {n}, \"build_ms\": {:.3}, \"moved_on_removal\": {removal:.5}, \"removal_vs_ideal\": {:.3}, \"moved_on_addition\": {addition:.5}, \"addition_vs_ideal\": {:.3}, \"busiest_over_mean\": {peak:.4}}}{}",
            build_time.as_secs_f64() * 1000.0,
            removal / ideal,
            addition / ideal_add,
            if i + 1 < SIZES.len() { "," } else { "" }
        );
    }
    println!(
        "build: median of {BUILDS}; moved: mean over {CHANGES} single removals (additions) of the share of slots whose backend changed;\nbusiest/mean: the slots of the backend with the most, over the mean (1.0: every backend gets its share)"
    );
    json.push_str("  ]\n}\n");
    lb_bench::write_report("LB_BENCH_CONTROL_OUT", "target/bench/control.json", &json);
}

/// `n` backends of weight 1 spread over 10.77.64.0/18, ids 0..n.
fn entries(n: u32) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            address: Ipv4Addr::new(10, 77, 64 + (i / 250) as u8, 1 + (i % 250) as u8).into(),
            port: 80,
            weight: 1,
            id: i,
        })
        .collect()
}

fn median_build(backends: &[Entry]) -> Duration {
    let mut times: Vec<Duration> = (0..BUILDS)
        .map(|_| {
            let start = Instant::now();
            let table = build(backends, MAGLEV_SIZE);
            let took = start.elapsed();
            assert_eq!(table.len(), MAGLEV_SIZE as usize);
            took
        })
        .collect();
    times.sort();
    times[BUILDS / 2]
}

/// The slots of the backend that got the most, over the mean: how evenly
/// the table spreads flows (Maglev's answer to the disruption it accepts).
fn busiest_over_mean(backends: &[Entry]) -> f64 {
    let table = build(backends, MAGLEV_SIZE);
    let mut slots = std::collections::HashMap::<u32, u32>::new();
    for id in table {
        *slots.entry(id).or_default() += 1;
    }
    let busiest = slots.values().copied().max().unwrap_or(0);
    f64::from(busiest) * backends.len() as f64 / f64::from(MAGLEV_SIZE)
}

#[derive(Clone, Copy)]
enum Change {
    Remove,
    Add,
}

/// Mean share of the table whose backend changes with one backend removed
/// (or added), over `CHANGES` different backends.
fn moved_fraction(backends: &[Entry], change: Change) -> f64 {
    let n = u32::try_from(backends.len()).unwrap_or(u32::MAX);
    let before = build(backends, MAGLEV_SIZE);
    let mut total = 0.0;
    for k in 0..CHANGES {
        let after = match change {
            Change::Remove => {
                let gone = k * (n / CHANGES);
                let rest: Vec<Entry> = backends.iter().copied().filter(|e| e.id != gone).collect();
                build(&rest, MAGLEV_SIZE)
            }
            Change::Add => {
                let mut more = backends.to_vec();
                more.push(Entry {
                    address: Ipv4Addr::new(10, 77, 127, 1 + k as u8).into(),
                    port: 80,
                    weight: 1,
                    id: n + k,
                });
                build(&more, MAGLEV_SIZE)
            }
        };
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        total += moved as f64 / f64::from(MAGLEV_SIZE);
    }
    total / f64::from(CHANGES)
}
