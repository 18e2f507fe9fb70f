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

    fn all(&self, target: Target, workload: Workload) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|(t, w, _)| *t == target && *w == workload)
            .map(|(_, _, s)| s)
            .collect()
    }

    /// The samples the medians are taken over: those no other work
    /// disturbed, or all of them when every one was disturbed.
    fn of(&self, target: Target, workload: Workload) -> Vec<&Sample> {
        let all = self.all(target, workload);
        let clean: Vec<&Sample> = all.iter().copied().filter(|s| !s.contended()).collect();
        if clean.is_empty() { all } else { clean }
    }

    /// (max - min) / median of req/s over the samples used, in percent.
    fn spread(&self, target: Target, workload: Workload) -> f64 {
        let rps: Vec<f64> = self.of(target, workload).iter().map(|s| s.rps).collect();
        let (min, max) =
            rps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        (max - min) / self.median(target, workload, |s| Some(s.rps)) * 100.0
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
            format!("HTTP keep-alive (wrk -t{} -c{}, {} s)", s.threads, s.connections, s.secs)
        }
        Workload::Close => format!(
            "HTTP, a new TCP connection per request (wrk -t{} -c{} -H 'Connection: close', {} s)",
            s.threads, s.connections, s.secs
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
        let header = [
            "target",
            "req/s",
            "spread",
            "p50 us",
            "p99 us",
            "errors",
            "CPU us",
            "usr/sys/irq",
            "ksoftirqd",
            "proc",
            "conn/req",
            "top be",
            "be CPU",
            "xdp pkt",
            "clean",
        ];
        print_row(&header.map(str::to_owned));
        for target in Target::ALL {
            if !results.all(target, workload).is_empty() {
                print_row(&row(results, target, workload));
            }
        }
    }
    println!(
        "\n  spread: (max - min) / median of req/s over the rounds used. errors: summed. CPU us: machine CPU per request\n  (all CPUs, all but idle/iowait) and its split into user, system and irq+softirq; ksoftirqd: the part run by\n  the softirq threads (deferred softirq work, inside system/irq); proc: the target's own process (lb-ctl's\n  controller, HAProxy). conn/req: connections the backends accepted per request. top be: the busiest backend's\n  req/s, be CPU: its nginx's CPU (share of one core). xdp pkt: packets the XDP program forwarded per request.\n  clean: rounds without other work on the machine next to the measurement (0.5 s before and after, < 0.3 CPUs\n  busy); the medians are over those (over all rounds if none was clean)."
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
            if t.value.is_nan() {
                "not measured"
            } else if t.met {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    println!("\nContext");
    for (_, what, value) in context(results) {
        println!("  {what:<62} {:>8}", opt(value, 2));
    }
    print_bottleneck(results);
}

/// Figures that explain the targets: the middlebox's own CPU per
/// connection (over going direct) and the UDP rate against three backends
/// without any load balancer.
fn context(r: &Results) -> Vec<(&'static str, &'static str, f64)> {
    let rps = |t, w| r.median(t, w, |s| Some(s.rps));
    let cpu = |t| r.median(t, Workload::Close, |s| Some(s.cpu_us_per_req));
    let direct = cpu(Target::Direct);
    let udp = Workload::Udp;
    vec![
        (
            "added_cpu_per_conn_lb_us",
            "CPU per connection over direct (us), LB",
            cpu(Target::Lb) - direct,
        ),
        (
            "added_cpu_per_conn_fullnat_us",
            "CPU per connection over direct (us), LB in full NAT",
            cpu(Target::FullNat) - direct,
        ),
        (
            "added_cpu_per_conn_haproxy_us",
            "CPU per connection over direct (us), HAProxy",
            cpu(Target::Haproxy) - direct,
        ),
        (
            "added_cpu_per_conn_nftables_us",
            "CPU per connection over direct (us), nftables",
            cpu(Target::Nftables) - direct,
        ),
        (
            "udp_lb_over_direct",
            "UDP req/s, LB / direct (one backend)",
            rps(Target::Lb, udp) / rps(Target::Direct, udp),
        ),
        (
            "udp_lb_over_direct3",
            "UDP req/s, LB / direct3 (three backends, no LB)",
            rps(Target::Lb, udp) / rps(Target::Direct3, udp),
        ),
        (
            "udp_lb_over_nftables",
            "UDP req/s, LB / nftables",
            rps(Target::Lb, udp) / rps(Target::Nftables, udp),
        ),
        (
            "udp_fullnat_over_lb",
            "UDP req/s, LB in full NAT / in NAT",
            rps(Target::FullNat, udp) / rps(Target::Lb, udp),
        ),
    ]
}

const WIDTHS: [usize; 15] = [9, 7, 6, 7, 7, 6, 7, 12, 9, 6, 8, 7, 6, 7, 5];

fn print_row(cells: &[String; 15]) {
    let mut line = String::from(" ");
    for (i, (cell, width)) in cells.iter().zip(WIDTHS).enumerate() {
        if i == 0 {
            let _ = write!(line, " {cell:<width$}");
        } else {
            let _ = write!(line, " {cell:>width$}");
        }
    }
    println!("{line}");
}

fn row(r: &Results, target: Target, workload: Workload) -> [String; 15] {
    let m = |f: fn(&Sample) -> Option<f64>| r.median(target, workload, f);
    let split: Vec<String> =
        (0..3).map(|i| opt(r.median(target, workload, |s| Some(s.cpu_split_us[i])), 0)).collect();
    let backend_cpu = m(|s| s.busiest_backend_cpu.map(|c| c * 100.0));
    let all = r.all(target, workload);
    let clean = all.iter().filter(|s| !s.contended()).count();
    [
        target.name().to_owned(),
        opt(m(|s| Some(s.rps)), 0),
        format!("{}%", opt(r.spread(target, workload), 0)),
        opt(m(|s| Some(s.load.p50_us)), 0),
        opt(m(|s| Some(s.load.p99_us)), 0),
        all.iter().map(|s| s.load.errors).sum::<u64>().to_string(),
        opt(m(|s| Some(s.cpu_us_per_req)), 1),
        split.join("/"),
        opt(m(|s| Some(s.ksoftirqd_us_per_req)), 1),
        opt(m(|s| s.process_us_per_req), 1),
        opt(m(|s| s.backend_conns_per_req), 3),
        opt(m(|s| Some(s.busiest_backend_rps)), 0),
        if backend_cpu.is_nan() { "-".into() } else { format!("{backend_cpu:.0}%") },
        opt(m(|s| s.xdp_fwd_per_req), 1),
        format!("{clean}/{}", all.len()),
    ]
}

/// What the data plane counted besides forwarding, summed over rounds.
fn print_lb_counters(results: &Results) {
    for target in Target::ALL.into_iter().filter(|t| t.is_lb()) {
        for workload in Workload::ALL {
            let mut totals: Vec<(&str, u64)> = Vec::new();
            for s in results.all(target, workload) {
                for (name, n) in &s.xdp_other {
                    match totals.iter_mut().find(|(t, _)| t == name) {
                        Some((_, total)) => *total += n,
                        None => totals.push((name, *n)),
                    }
                }
            }
            if !totals.is_empty() {
                let list: Vec<String> = totals.iter().map(|(n, v)| format!("{n} {v}")).collect();
                println!(
                    "  {} {}: other data plane counters: {}",
                    target.name(),
                    workload.name(),
                    list.join(", ")
                );
            }
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
    let below = |key, what, a: f64, b: f64| Check {
        key,
        what,
        value: a / b,
        op: "<",
        threshold: "1".into(),
        met: a < b,
    };
    let close = Workload::Close;
    let (lb, ha, nft) = (cpu(Target::Lb), cpu(Target::Haproxy), cpu(Target::Nftables));
    let fullnat = cpu(Target::FullNat);
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
        below("cpu_per_conn_lb_over_haproxy", "CPU per connection, LB / HAProxy", lb, ha),
        below("cpu_per_conn_lb_over_nftables", "CPU per connection, LB / nftables", lb, nft),
        // Full NAT does HAProxy's job (the backends see the load
        // balancer as their client), so it is held to HAProxy.
        ratio(
            "new_conns_fullnat_over_haproxy",
            "new connections/s, LB in full NAT / HAProxy",
            rps(Target::FullNat, close),
            rps(Target::Haproxy, close),
            1.4,
        ),
        below(
            "cpu_per_conn_fullnat_over_haproxy",
            "CPU per connection, LB in full NAT / HAProxy",
            fullnat,
            ha,
        ),
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
        if r.all(Target::Direct, workload).is_empty() {
            continue;
        }
        let ceiling = r.median(Target::Direct, workload, |s| Some(s.busiest_backend_rps));
        let mut line = format!(
            "  {:<15} direct: {} req/s{};",
            workload.name(),
            opt(ceiling, 0),
            percent(r.median(Target::Direct, workload, |s| s.busiest_backend_cpu))
        );
        let mut below = true;
        for target in [Target::Lb, Target::FullNat, Target::Haproxy, Target::Nftables] {
            if !r.all(target, workload).is_empty() {
                let top = r.median(target, workload, |s| Some(s.busiest_backend_rps));
                below &= top < ceiling;
                let cpu = percent(r.median(target, workload, |s| s.busiest_backend_cpu));
                let _ = write!(line, " {} {}{cpu}", target.name(), opt(top, 0));
            }
        }
        let verdict =
            if below { "below the ceiling: not the bottleneck" } else { "NOT below the ceiling" };
        println!("{line} -> {verdict}");
    }
}

/// ` (42% CPU)`, or nothing when unknown (the UDP echo).
fn percent(share: f64) -> String {
    if share.is_nan() { String::new() } else { format!(" ({:.0}% CPU)", share * 100.0) }
}

pub fn json(results: &Results, run: &RunInfo) -> String {
    let s = &run.settings;
    let mut out = String::from("{\n");
    let _ = writeln!(
        out,
        "  \"settings\": {{\"rounds\": {}, \"secs\": {}, \"wrk_connections\": {}, \"wrk_threads\": {}, \"udp_inflight\": {}}},",
        s.rounds, s.secs, s.connections, s.threads, s.udp_inflight
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
                results.all(target, workload).iter().map(|s| sample_json(s)).collect();
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
    out.push_str("\n  ],\n  \"context\": {");
    let context: Vec<String> =
        context(results).iter().map(|(key, _, v)| format!("\"{key}\": {}", num(*v))).collect();
    out.push_str(&context.join(", "));
    out.push_str("}\n}\n");
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
        "{{\"requests\": {}, \"secs\": {}, \"rps\": {}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {}, \"cpu_us_per_req\": {}, \"cpu_user_sys_irq_us_per_req\": [{}, {}, {}], \"process_us_per_req\": {}, \"ksoftirqd_us_per_req\": {}, \"busy_cpus\": {}, \"background_cpus\": {}, \"background_after_cpus\": {}, \"contended\": {}, \"client_conns_per_req\": {}, \"backend_conns_per_req\": {}, \"busiest_backend_rps\": {}, \"busiest_backend_cpu\": {}, \"xdp_fwd_per_req\": {}, \"xdp_other\": {{{}}}}}",
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
        num(s.ksoftirqd_us_per_req),
        num(s.busy_cpus),
        num(s.background_cpus),
        num(s.background_after_cpus),
        s.contended(),
        opt_num(s.client_conns_per_req),
        opt_num(s.backend_conns_per_req),
        num(s.busiest_backend_rps),
        opt_num(s.busiest_backend_cpu),
        opt_num(s.xdp_fwd_per_req),
        other.join(", ")
    )
}
