//! Medians over rounds, the table, the targets and the JSON report.
use std::{fmt::Write as _, time::Duration};

use super::{Settings, Target, Workload, sample::Sample};

#[derive(Default)]
pub struct Results {
    samples: Vec<(Target, Workload, Sample)>,
}

impl Results {
    pub fn push(&mut self, target: Target, workload: Workload, sample: Sample) {
        self.samples.push((target, workload, sample));
    }

    fn of(&self, target: Target, workload: Workload) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|(t, w, _)| *t == target && *w == workload)
            .map(|(_, _, s)| s)
            .collect()
    }

    /// The median over rounds of one figure (NaN without samples).
    fn median(
        &self,
        target: Target,
        workload: Workload,
        f: impl Fn(&Sample) -> Option<f64>,
    ) -> f64 {
        let mut v: Vec<f64> = self.of(target, workload).into_iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
        }
    }
}

pub struct RunInfo {
    pub settings: Settings,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub elapsed: Duration,
}

fn heading(workload: Workload, s: &Settings) -> String {
    match workload {
        Workload::KeepAlive => {
            format!("HTTP keep-alive (wrk -t1 -c{}, {} s)", s.connections, s.secs)
        }
        Workload::Close => format!(
            "HTTP, a new TCP connection per request (wrk -t1 -c{} -H 'Connection: close', {} s)",
            s.connections, s.secs
        ),
        Workload::Udp => format!(
            "UDP request/response ({} sockets, one request in flight each, {} s)",
            s.udp_inflight, s.secs
        ),
    }
}

fn opt(v: f64, digits: usize) -> String {
    if v.is_nan() { "-".into() } else { format!("{v:.digits$}") }
}

pub fn print(results: &Results, run: &RunInfo) {
    let s = &run.settings;
    println!(
        "\nEnd to end: medians over {} rounds (targets in turn), 2-CPU machine shared with other work",
        s.rounds
    );
    println!(
        "load average before {:?}, after {:?}; {:.0} s in all",
        run.load_before,
        run.load_after,
        run.elapsed.as_secs_f64()
    );
    for workload in Workload::ALL {
        println!("\n{}", heading(workload, s));
        println!(
            "  {:<9} {:>7} {:>7} {:>7} {:>6} {:>7} {:>15} {:>6} {:>5} {:>5} {:>8} {:>7} {:>5} {:>7}",
            "target",
            "req/s",
            "p50 us",
            "p99 us",
            "errors",
            "CPU us",
            "usr/sys/irq us",
            "proc",
            "busy",
            "bg",
            "conn/req",
            "top be",
            "be CPU",
            "xdp pkt"
        );
        for target in Target::ALL.into_iter().filter(|t| t.workloads().contains(&workload)) {
            let m = |f: fn(&Sample) -> Option<f64>| results.median(target, workload, f);
            let errors: u64 = results.of(target, workload).iter().map(|s| s.load.errors).sum();
            let split: Vec<String> = (0..3)
                .map(|i| opt(results.median(target, workload, |s| Some(s.cpu_split_us[i])), 0))
                .collect();
            let backend_cpu = m(|s| s.busiest_backend_cpu.map(|c| c * 100.0));
            println!(
                "  {:<9} {:>7} {:>7} {:>7} {:>6} {:>7} {:>15} {:>6} {:>5} {:>5} {:>8} {:>7} {:>5} {:>7}",
                target.name(),
                opt(m(|s| Some(s.rps)), 0),
                opt(m(|s| Some(s.load.p50_us)), 0),
                opt(m(|s| Some(s.load.p99_us)), 0),
                errors,
                opt(m(|s| Some(s.cpu_us_per_req)), 1),
                split.join("/"),
                opt(m(|s| s.process_us_per_req), 1),
                opt(m(|s| Some(s.busy_cpus)), 2),
                opt(m(|s| Some(s.background_cpus)), 2),
                opt(m(|s| s.backend_conns_per_req), 3),
                opt(m(|s| Some(s.busiest_backend_rps)), 0),
                if backend_cpu.is_nan() { "-".into() } else { format!("{backend_cpu:.0}%") },
                opt(m(|s| s.xdp_fwd_per_req), 1),
            );
        }
    }
    println!(
        "\n  errors: summed over rounds. CPU us: machine CPU per request (all CPUs, all but idle/iowait), split into user,\n  system and irq+softirq; proc: of it, the target's own process (lb-ctl's controller, HAProxy). busy: CPUs busy\n  while measuring (of 2); bg: busy in the 0.5 s before, nothing of ours running (other work on the machine).\n  conn/req: connections the backends accepted per request. top be: the busiest backend's req/s, be CPU: its\n  nginx's CPU (share of one core). xdp pkt: packets the XDP program forwarded itself per request."
    );
    print_lb_counters(results);
    println!("\nTargets");
    for t in targets(results) {
        println!(
            "  {:<46} {:>8}  (target {} {})  {}",
            t.what,
            opt(t.value, 2),
            t.op,
            t.threshold,
            if t.met { "met" } else { "NOT met" }
        );
    }
    print_bottleneck(results);
}

/// What the data plane counted besides forwarding, summed over rounds.
fn print_lb_counters(results: &Results) {
    for workload in Workload::ALL {
        let mut totals: Vec<(&str, u64)> = Vec::new();
        for s in results.of(Target::Lb, workload) {
            for (name, n) in &s.xdp_other {
                match totals.iter_mut().find(|(t, _)| t == name) {
                    Some((_, total)) => *total += n,
                    None => totals.push((name, *n)),
                }
            }
        }
        if !totals.is_empty() {
            let list: Vec<String> = totals.iter().map(|(n, v)| format!("{n} {v}")).collect();
            println!("  lb {}: other data plane counters: {}", workload.name(), list.join(", "));
        }
    }
}

struct Check {
    key: &'static str,
    what: &'static str,
    value: f64,
    op: &'static str,
    threshold: String,
    met: bool,
}

fn targets(r: &Results) -> Vec<Check> {
    let rps = |t, w| r.median(t, w, |s| Some(s.rps));
    let cpu = |t| r.median(t, Workload::Close, |s| Some(s.cpu_us_per_req));
    let ratio = |key, what, a: f64, b: f64, min: f64| {
        let value = a / b;
        Check { key, what, value, op: ">=", threshold: format!("{min}"), met: value >= min }
    };
    let close = Workload::Close;
    let (lb, ha, nft) = (cpu(Target::Lb), cpu(Target::Haproxy), cpu(Target::Nftables));
    vec![
        ratio(
            "new_conns_lb_over_haproxy",
            "new connections/s, LB / HAProxy",
            rps(Target::Lb, close),
            rps(Target::Haproxy, close),
            1.5,
        ),
        ratio(
            "new_conns_lb_over_nftables",
            "new connections/s, LB / nftables",
            rps(Target::Lb, close),
            rps(Target::Nftables, close),
            1.2,
        ),
        Check {
            key: "cpu_per_conn_lb_over_haproxy",
            what: "CPU per connection, LB / HAProxy",
            value: lb / ha,
            op: "<",
            threshold: "1".into(),
            met: lb < ha,
        },
        Check {
            key: "cpu_per_conn_lb_over_nftables",
            what: "CPU per connection, LB / nftables",
            value: lb / nft,
            op: "<",
            threshold: "1".into(),
            met: lb < nft,
        },
        ratio(
            "keepalive_lb_over_direct",
            "keep-alive req/s, LB / direct (ceiling)",
            rps(Target::Lb, Workload::KeepAlive),
            rps(Target::Direct, Workload::KeepAlive),
            0.9,
        ),
    ]
}

/// The ceiling run drives one backend alone; in the balanced runs each
/// backend gets a third. If the ceiling is above what the busiest backend
/// serves there, the backends were not what limited those runs.
fn print_bottleneck(r: &Results) {
    println!(
        "\nBackends as a bottleneck (medians: direct = web1 alone; else the busiest of three)"
    );
    for workload in Workload::ALL {
        let ceiling = r.median(Target::Direct, workload, |s| Some(s.busiest_backend_rps));
        let ceiling_cpu = r.median(Target::Direct, workload, |s| s.busiest_backend_cpu);
        let mut line = format!(
            "  {:<15} direct: {} req/s ({}% CPU);",
            workload.name(),
            opt(ceiling, 0),
            opt(ceiling_cpu * 100.0, 0)
        );
        let mut below = true;
        for target in [Target::Lb, Target::Haproxy, Target::Nftables] {
            if target.workloads().contains(&workload) {
                let top = r.median(target, workload, |s| Some(s.busiest_backend_rps));
                let top_cpu = r.median(target, workload, |s| s.busiest_backend_cpu);
                below &= top < ceiling;
                let _ = write!(
                    line,
                    " {} {} ({}%)",
                    target.name(),
                    opt(top, 0),
                    opt(top_cpu * 100.0, 0)
                );
            }
        }
        let verdict =
            if below { "below the ceiling: not the bottleneck" } else { "NOT below the ceiling" };
        println!("{line} -> {verdict}");
    }
}

pub fn json(results: &Results, run: &RunInfo) -> String {
    let s = &run.settings;
    let mut out = String::from("{\n");
    let _ = writeln!(
        out,
        "  \"settings\": {{\"rounds\": {}, \"secs\": {}, \"wrk_connections\": {}, \"wrk_threads\": 1, \"udp_inflight\": {}}},",
        s.rounds, s.secs, s.connections, s.udp_inflight
    );
    let _ = writeln!(
        out,
        "  \"loadavg_before\": {:?},\n  \"loadavg_after\": {:?},\n  \"elapsed_s\": {:.1},",
        run.load_before,
        run.load_after,
        run.elapsed.as_secs_f64()
    );
    out.push_str("  \"results\": {\n");
    let mut targets_json = Vec::new();
    for target in Target::ALL {
        let mut workloads = Vec::new();
        for &workload in target.workloads() {
            let rounds: Vec<String> =
                results.of(target, workload).iter().map(|s| sample_json(s)).collect();
            let m = |f: fn(&Sample) -> Option<f64>| num(results.median(target, workload, f));
            workloads.push(format!(
                "      \"{}\": {{\"median\": {{\"rps\": {}, \"p50_us\": {}, \"p99_us\": {}, \"cpu_us_per_req\": {}, \"busy_cpus\": {}, \"background_cpus\": {}}},\n        \"rounds\": [\n          {}\n        ]}}",
                workload.name(),
                m(|s| Some(s.rps)),
                m(|s| Some(s.load.p50_us)),
                m(|s| Some(s.load.p99_us)),
                m(|s| Some(s.cpu_us_per_req)),
                m(|s| Some(s.busy_cpus)),
                m(|s| Some(s.background_cpus)),
                rounds.join(",\n          ")
            ));
        }
        targets_json.push(format!(
            "    \"{}\": {{\n{}\n    }}",
            target.name(),
            workloads.join(",\n")
        ));
    }
    out.push_str(&targets_json.join(",\n"));
    out.push_str("\n  },\n  \"targets\": [\n");
    let checks: Vec<String> = targets(results)
        .iter()
        .map(|c| {
            format!(
                "    {{\"name\": \"{}\", \"value\": {}, \"op\": \"{}\", \"threshold\": {}, \"met\": {}}}",
                c.key,
                num(c.value),
                c.op,
                c.threshold,
                c.met
            )
        })
        .collect();
    out.push_str(&checks.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

fn num(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "null".into() }
}

fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "null".into(), num)
}

fn sample_json(s: &Sample) -> String {
    let other: Vec<String> = s.xdp_other.iter().map(|(n, v)| format!("\"{n}\": {v}")).collect();
    format!(
        "{{\"requests\": {}, \"secs\": {}, \"rps\": {}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {}, \"cpu_us_per_req\": {}, \"cpu_user_sys_irq_us_per_req\": [{}, {}, {}], \"process_us_per_req\": {}, \"busy_cpus\": {}, \"background_cpus\": {}, \"client_conns_per_req\": {}, \"backend_conns_per_req\": {}, \"busiest_backend_rps\": {}, \"busiest_backend_cpu\": {}, \"xdp_fwd_per_req\": {}, \"xdp_other\": {{{}}}}}",
        s.load.requests,
        num(s.load.secs),
        num(s.rps),
        num(s.load.p50_us),
        num(s.load.p99_us),
        s.load.errors,
        num(s.cpu_us_per_req),
        num(s.cpu_split_us[0]),
        num(s.cpu_split_us[1]),
        num(s.cpu_split_us[2]),
        opt_num(s.process_us_per_req),
        num(s.busy_cpus),
        num(s.background_cpus),
        opt_num(s.client_conns_per_req),
        opt_num(s.backend_conns_per_req),
        num(s.busiest_backend_rps),
        opt_num(s.busiest_backend_cpu),
        opt_num(s.xdp_fwd_per_req),
        other.join(", ")
    )
}
