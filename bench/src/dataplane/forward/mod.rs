//! Packets per second one core forwards through veth with the real program
//! attached in driver mode and XDP_REDIRECT:
//!
//! ```text
//!  lbd-gen                    lbd-lb                               lbd-sink
//!  lbd-g0 ──veth── lbd-c [ lb_xdp: NAT, XDP_REDIRECT ] lbd-b ──veth── lbd-s0 (XDP_DROP)
//!  generator: BPF_PROG_TEST_RUN, live frames, XDP_TX (CPU 1)    NAPI of lbd-c: CPU 0
//!                                                             NAPI of lbd-s0: CPU 1
//! ```
//!
//! A veth has no interrupt: frames another program sends into it are
//! polled by NAPI on the CPU that sent them, so by default the generator's
//! CPU would do everything. Threaded NAPI (`/sys/class/net/DEV/threaded`)
//! moves the poll of `lbd-c` (the load balancer's whole job: its program,
//! the redirect, the transmit into `lbd-b`'s peer) into a kernel thread we
//! pin to CPU 0, and the sink's to CPU 1 with the generator. The figure is
//! what `lbd-c`'s NAPI thread forwards while the generator keeps its ring
//! full, and the CPU time that thread spent per packet; twice: with a mix
//! of 1024 flows, and with a mix of the 1M live flows the connection table
//! was filled with (each packet a flow-cache miss and a cold table entry).
mod counters;
mod generator;
mod topology;

use std::{fmt::Write as _, time::Duration};

use lb_common::{
    abi::{CONN_ESTABLISHED, Conn, Endpoint, Flow, PROTO_TCP},
    counter::Counter,
};
use lb_testbed::fixture::Loaded;

use self::{
    counters::{Snapshot, Window},
    generator::Generator,
    topology::{
        LB_IN, LB_NS, SINK_IF, SINK_NS, SINK_PROG, Topology, VIP, VIP_PORT, lb_program,
        normal_time, real_time, start_lb, start_sink, threaded_napi,
    },
};
use super::{
    Part,
    conntrack::{CAPACITY, LIVE_FLOWS},
    json_str, live_client,
};

const LB_CPU: usize = 0;
const GEN_CPU: usize = 1;
/// The small mix: fresh flows, as the issue asks.
const FEW_FLOWS: u32 = 1024;
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
/// A second window with BPF run-time statistics on (they cost time per run).
const STATS_WINDOW: Duration = Duration::from_secs(2);

/// What one mix of flows gave.
struct Mix {
    flows: u32,
    table: &'static str,
    window: Window,
    /// `lb_xdp`'s and the sink's run time, from the BPF statistics.
    stats: (RunStats, RunStats),
}

pub fn run() -> Part {
    // Above every thread of the run: the counters at both ends of a window
    // are read by short-lived `ethtool` processes (which inherit this);
    // starved behind the real-time threads they would read late and apart.
    real_time(0, 3);
    let part = run_real_time();
    normal_time();
    part
}

fn run_real_time() -> Part {
    let topology = Topology::create();
    let _sink_link = start_sink();
    let mut lb = start_lb(CAPACITY);
    let lb_napi = threaded_napi(LB_NS, LB_IN, LB_CPU, 1);
    // Above the generator on their shared CPU: the sink drains its ring as
    // soon as frames arrive; the generator fills the load balancer's with
    // the time that is left.
    let sink_napi = threaded_napi(SINK_NS, SINK_IF, GEN_CPU, 2);
    let few = measure_mix(&mut lb, lb_napi, FEW_FLOWS, "empty; each flow's first ACK enters it");
    eprintln!(
        "filling the forwarding load balancer's lb_conntrack with {LIVE_FLOWS} live flows..."
    );
    fill_live_flows(&mut lb);
    let many = measure_mix(&mut lb, lb_napi, LIVE_FLOWS, "1M live flows written from user space");
    let size = program_size(&mut lb);
    let outcomes = outcomes(&mut lb);
    drop(lb);
    drop(topology);
    report(&[few, many], lb_napi.is_some(), sink_napi.is_some(), size, &outcomes)
}

fn measure_mix(lb: &mut Loaded, lb_napi: Option<i32>, flows: u32, table: &'static str) -> Mix {
    let generator = Generator::start(flows);
    std::thread::sleep(WARMUP);
    let first = Snapshot::take(lb_napi, &generator);
    std::thread::sleep(WINDOW);
    let last = Snapshot::take(lb_napi, &generator);
    let stats = program_stats(lb);
    generator.stop();
    Mix { flows, table, window: Window::between(&first, &last), stats }
}

/// Writes live flows `0..LIVE_FLOWS` as established connections of the
/// service, as the 1M-flow table part does (the backend: the service's
/// first; any backend of the service serves an established flow).
fn fill_live_flows(lb: &mut Loaded) {
    let image = lb.reconciler.applied();
    let service_id = image
        .v4
        .services
        .get(&Endpoint::new(VIP.octets(), VIP_PORT, PROTO_TCP))
        .expect("the service in the applied image")
        .id;
    let backend_id = image
        .v4
        .backends
        .iter()
        .find(|(_, b)| b.service_id == service_id)
        .map(|(id, _)| *id)
        .expect("a backend of the service");
    let conn = Conn { backend_id, service_id, last_seen: 1, state: CONN_ESTABLISHED, _pad: [0; 3] };
    let table = lb.reconciler.maps_mut().conn_table();
    for i in 0..LIVE_FLOWS {
        let (client, sport) = live_client(i);
        let flow = Flow {
            src: client.octets(),
            dst: VIP.octets(),
            sport,
            dport: VIP_PORT,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        table.record(&flow, &conn, |_| 0);
    }
}

/// Runs and ns per run of a program, from the BPF statistics.
#[derive(Clone, Copy, Default)]
struct RunStats {
    runs: u64,
    ns_per_run: f64,
}

impl RunStats {
    fn between(a: (u64, u64), b: (u64, u64)) -> Self {
        let runs = b.0 - a.0;
        Self { runs, ns_per_run: if runs == 0 { 0.0 } else { (b.1 - a.1) as f64 / runs as f64 } }
    }
}

/// (runs, run ns) of the program named `name` (ours are named `lbd_*`).
fn counts_by_name(name: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.name_as_str() == Some(name))
        .map_or((0, 0), |info| (info.run_count(), info.run_time().as_nanos() as u64))
}

/// The run time per packet in the live path of the load balancer and of
/// the sink, from the kernel's BPF statistics (on only for this window:
/// they add two clock reads per run, and apply to every program on the
/// machine while on). The sink only returns XDP_DROP: its figure is the
/// floor of the method.
fn program_stats(lb: &mut Loaded) -> (RunStats, RunStats) {
    let lb_counts = |lb: &mut Loaded| {
        let info = lb_program(lb).info().expect("lb_xdp's info");
        (info.run_count(), info.run_time().as_nanos() as u64)
    };
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let (lb0, sink0) = (lb_counts(lb), counts_by_name(SINK_PROG));
    std::thread::sleep(STATS_WINDOW);
    let (lb1, sink1) = (lb_counts(lb), counts_by_name(SINK_PROG));
    drop(stats);
    (RunStats::between(lb0, lb1), RunStats::between(sink0, sink1))
}

/// Program sizes, for the record: (translated insns, jited bytes, verified insns).
fn program_size(lb: &mut Loaded) -> (u32, u32, u32) {
    let info = lb_program(lb).info().expect("lb_xdp's info");
    (
        info.size_translated().unwrap_or(0) / 8,
        info.size_jitted(),
        info.verified_instruction_count().unwrap_or(0),
    )
}

/// The program's nonzero outcome counters over the whole run (a path
/// other than XDP_REDIRECT would show here).
fn outcomes(lb: &mut Loaded) -> String {
    Counter::ALL
        .iter()
        .filter_map(|&c| {
            let n = lb.counter(c);
            (n > 0).then(|| format!("{} {n}", c.name()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    mixes: &[Mix; 2],
    threaded: bool,
    sink_threaded: bool,
    size: (u32, u32, u32),
    outcomes: &str,
) -> Part {
    let mut text = String::new();
    let mode = if threaded {
        format!(
            "{LB_IN}'s NAPI: a SCHED_FIFO thread on CPU {LB_CPU}; generator and sink's NAPI on CPU {GEN_CPU}"
        )
    } else {
        format!(
            "threaded NAPI refused: {LB_IN}'s NAPI ran as softirq on the generator's CPU {GEN_CPU}"
        )
    };
    let _ = writeln!(
        text,
        "generator: BPF_PROG_TEST_RUN live frames (XDP_TX out of lbd-g0), TCP ACKs to the VIP; {mode}"
    );
    if !sink_threaded {
        let _ =
            writeln!(text, "(the sink's NAPI could not be threaded: it ran on the forwarding CPU)");
    }
    let _ = writeln!(text, "\n{:<44} {:>14} {:>14}", "", "1024 flows", "1M flows");
    let line = |text: &mut String, name: &str, f: &dyn Fn(&Mix) -> String| {
        let _ = writeln!(text, "{name:<44} {:>14} {:>14}", f(&mixes[0]), f(&mixes[1]));
    };
    let mpps = |w: &Window, n: u64| format!("{:.2} Mpps", w.pps(n) / 1e6);
    line(&mut text, "offered by the generator", &|m| mpps(&m.window, m.window.offered));
    line(&mut text, "run by lb_xdp on lbd-c", &|m| mpps(&m.window, m.window.received));
    line(&mut text, "XDP_REDIRECT by lb_xdp (forwarded)", &|m| mpps(&m.window, m.window.forwarded));
    line(&mut text, "dropped by the sink (delivered)", &|m| mpps(&m.window, m.window.delivered));
    line(&mut text, "lost at lbd-c's full ring (bursts)", &|m| m.window.lost_before_lb.to_string());
    line(&mut text, "lost at the sink's full ring", &|m| m.window.lost_before_sink.to_string());
    line(&mut text, "lbd-c's NAPI thread, share of CPU 0", &|m| {
        format!("{:.1}%", m.window.lb_napi_share())
    });
    line(&mut text, "  its CPU time per forwarded packet", &|m| {
        format!("{:.0} ns", m.window.lb_ns_per_packet())
    });
    line(&mut text, "  one core at 100% would forward", &|m| {
        let ns = m.window.lb_ns_per_packet();
        format!("{:.2} Mpps", if ns > 0.0 { 1e3 / ns } else { 0.0 })
    });
    line(&mut text, "lb_xdp's run time per packet (BPF stats)", &|m| {
        format!("{:.1} ns", m.stats.0.ns_per_run)
    });
    line(&mut text, "  the sink's XDP_DROP, the method's floor", &|m| {
        format!("{:.1} ns", m.stats.1.ns_per_run)
    });
    line(&mut text, "CPU 0 busy (system, softirq)", &|m| {
        let c = m.window.lb_cpu;
        format!("{:.0}% ({:.0}, {:.0})", c[0], c[1], c[2])
    });
    line(&mut text, "CPU 1 busy (generator thread)", &|m| {
        format!("{:.0}% ({:.0})", m.window.gen_cpu_busy, m.window.gen_share())
    });
    let _ = writeln!(
        text,
        "\n1M flows minus 1024 (target <= 30 ns): lb_xdp run time {:+.1} ns, CPU per forwarded packet {:+.0} ns",
        mixes[1].stats.0.ns_per_run - mixes[0].stats.0.ns_per_run,
        mixes[1].window.lb_ns_per_packet() - mixes[0].window.lb_ns_per_packet()
    );
    for m in mixes {
        let _ = writeln!(text, "  table with {} flows: {}", m.flows, m.table);
    }
    let _ = writeln!(
        text,
        "windows: {:.2} s and {:.2} s after {} s of warm-up; BPF stats in a separate {} s window each",
        mixes[0].window.secs,
        mixes[1].window.secs,
        WARMUP.as_secs(),
        STATS_WINDOW.as_secs()
    );
    let _ = writeln!(
        text,
        "lb_xdp: {} translated instructions, {} bytes jited, {} instructions verified",
        size.0, size.1, size.2
    );
    let _ = writeln!(text, "lb_xdp's outcomes over the whole run: {outcomes}");
    let best = mixes[0].window.pps(mixes[0].window.forwarded) / 1e6;
    Part {
        title: format!(
            "Forwarding through veth, driver mode, XDP_REDIRECT, one core: {best:.2} Mpps forwarded (1024 flows)"
        ),
        text,
        key: "forwarding",
        json: json(mixes, threaded, size, outcomes),
    }
}

fn json(mixes: &[Mix; 2], threaded: bool, size: (u32, u32, u32), outcomes: &str) -> String {
    let mix_json: Vec<String> = mixes
        .iter()
        .map(|m| {
            let w = &m.window;
            format!(
                "{{\"flows\": {}, \"window_s\": {:.3}, \"offered_pps\": {:.0}, \"forwarded_pps\": {:.0}, \
                 \"delivered_pps\": {:.0}, \"lost_at_lb_ring\": {}, \"lost_at_sink_ring\": {}, \
                 \"lb_napi_cpu_percent\": {:.1}, \"lb_cpu_ns_per_packet\": {:.1}, \"lb_cpu_busy_percent\": {:.1}, \
                 \"gen_cpu_busy_percent\": {:.1}, \"program_runs\": {}, \"program_ns_per_packet_bpf_stats\": {:.1}, \
                 \"sink_xdp_drop_ns_per_packet_bpf_stats\": {:.1}}}",
                m.flows,
                w.secs,
                w.pps(w.offered),
                w.pps(w.forwarded),
                w.pps(w.delivered),
                w.lost_before_lb,
                w.lost_before_sink,
                w.lb_napi_share(),
                w.lb_ns_per_packet(),
                w.lb_cpu[0],
                w.gen_cpu_busy,
                m.stats.0.runs,
                m.stats.0.ns_per_run,
                m.stats.1.ns_per_run
            )
        })
        .collect();
    format!(
        "{{\n    \"generator\": \"BPF_PROG_TEST_RUN live frames, XDP_TX\",\n    \"threaded_napi\": {threaded},\n    \
         \"mixes\": [\n      {}\n    ],\n    \"program_xlated_insns\": {},\n    \"program_jited_bytes\": {},\n    \
         \"program_verified_insns\": {},\n    \"outcomes\": {}\n  }}",
        mix_json.join(",\n      "),
        size.0,
        size.1,
        size.2,
        json_str(outcomes)
    )
}
