//! What the forwarding benchmark reads at both ends of a window: the
//! veths' XDP counters, CPU time per CPU and per thread.
use std::{collections::HashMap, time::Instant};

use lb_testbed::netns::ns_sh;

use crate::machine_load::CpuTicks;

use super::{
    GEN_CPU, LB_CPU,
    generator::Generator,
    topology::{GEN_IF, GEN_NS, LB_IN, LB_NS, LB_OUT, SINK_IF, SINK_NS},
};

/// `ethtool -S` of `dev` in `ns`: the veth's per-queue XDP counters.
fn ethtool_stats(ns: &str, dev: &str) -> HashMap<String, u64> {
    ns_sh(ns, &["ethtool", "-S", dev])
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// ns task `tid` of process `pid` has run (`schedstat`, first field).
fn run_ns(pid: i32, tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Everything read at one end of a window.
pub struct Snapshot {
    at: Instant,
    generator: HashMap<String, u64>,
    lb_in: HashMap<String, u64>,
    lb_out: HashMap<String, u64>,
    sink: HashMap<String, u64>,
    lb_cpu: CpuTicks,
    gen_cpu: CpuTicks,
    lb_napi_ns: u64,
    gen_ns: u64,
}

impl Snapshot {
    pub fn take(lb_napi: Option<i32>, generator: &Generator) -> Self {
        Self {
            at: Instant::now(),
            generator: ethtool_stats(GEN_NS, GEN_IF),
            lb_in: ethtool_stats(LB_NS, LB_IN),
            lb_out: ethtool_stats(LB_NS, LB_OUT),
            sink: ethtool_stats(SINK_NS, SINK_IF),
            lb_cpu: CpuTicks::now(Some(LB_CPU)),
            gen_cpu: CpuTicks::now(Some(GEN_CPU)),
            lb_napi_ns: lb_napi.map_or(0, |pid| run_ns(pid, pid)),
            gen_ns: run_ns(generator.task.0, generator.task.1),
        }
    }
}

/// What a window saw.
pub struct Window {
    pub secs: f64,
    /// Frames the generator sent into the load balancer's ring.
    pub offered: u64,
    /// Frames `lb_xdp` ran on.
    pub received: u64,
    /// XDP_REDIRECT verdicts.
    pub forwarded: u64,
    /// Frames the sink dropped.
    pub delivered: u64,
    /// Frames the load balancer's ring had no room for.
    pub lost_before_lb: u64,
    /// Frames redirected into `lbd-b` for which the sink's ring had no room.
    pub lost_before_sink: u64,
    pub lb_napi_ns: u64,
    pub gen_ns: u64,
    /// Busy, system and softirq shares of the load balancer's CPU (%).
    pub lb_cpu: [f64; 3],
    pub gen_cpu_busy: f64,
}

impl Window {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let d = |m: &str, f: fn(&Snapshot) -> &HashMap<String, u64>| {
            f(b).get(m).copied().unwrap_or(0) - f(a).get(m).copied().unwrap_or(0)
        };
        let share = |x: u64, t: u64| if t == 0 { 0.0 } else { 100.0 * x as f64 / t as f64 };
        let (la, lb) = (a.lb_cpu, b.lb_cpu);
        let lb_total = lb.total() - la.total();
        Self {
            secs: (b.at - a.at).as_secs_f64(),
            offered: d("tx_queue_0_xdp_xmit", |s| &s.generator)
                + d("tx_queue_0_xdp_xmit_errors", |s| &s.generator),
            received: d("rx_queue_0_xdp_packets", |s| &s.lb_in),
            forwarded: d("rx_queue_0_xdp_redirect", |s| &s.lb_in),
            delivered: d("rx_queue_0_xdp_drops", |s| &s.sink),
            lost_before_lb: d("tx_queue_0_xdp_xmit_errors", |s| &s.generator),
            lost_before_sink: d("tx_queue_0_xdp_xmit_errors", |s| &s.lb_out),
            lb_napi_ns: b.lb_napi_ns - a.lb_napi_ns,
            gen_ns: b.gen_ns - a.gen_ns,
            lb_cpu: [
                share(lb.busy() - la.busy(), lb_total),
                share(lb.system - la.system, lb_total),
                share(lb.softirq - la.softirq, lb_total),
            ],
            gen_cpu_busy: share(
                b.gen_cpu.busy() - a.gen_cpu.busy(),
                b.gen_cpu.total() - a.gen_cpu.total(),
            ),
        }
    }

    pub fn pps(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }

    /// CPU ns of the load balancer's NAPI thread per forwarded packet.
    pub fn lb_ns_per_packet(&self) -> f64 {
        if self.forwarded == 0 { 0.0 } else { self.lb_napi_ns as f64 / self.forwarded as f64 }
    }

    /// The NAPI thread's share of its CPU (%).
    pub fn lb_napi_share(&self) -> f64 {
        100.0 * self.lb_napi_ns as f64 / (self.secs * 1e9)
    }

    pub fn gen_share(&self) -> f64 {
        100.0 * self.gen_ns as f64 / (self.secs * 1e9)
    }
}
