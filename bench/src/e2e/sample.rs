//! One measurement and the counters around it: the machine's CPU time from
//! /proc/stat (every CPU, everything but idle and iowait: user, nice,
//! system, irq, softirq, steal; XDP runs in softirq), nginx's request and
//! connection counters and CPU time per backend, the UDP echoes' counts,
//! the client's TCP opens, and the data plane's counters for `lb`.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use lb_testbed::netns::in_ns;

use crate::machine_load::CpuTicks;

use super::{
    PIN_PATH, Settings, Target, Workload,
    load::{self, Load},
    procs::{Env, Running, STATUS_PORT},
};

/// One workload against one target, once.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub load: Load,
    pub rps: f64,
    /// Machine CPU time per request (all CPUs), microseconds.
    pub cpu_us_per_req: f64,
    /// The same split: user (+nice), system, irq + softirq (+steal).
    pub cpu_split_us: [f64; 3],
    /// The target's own process (lb-ctl, HAProxy): CPU per request.
    pub process_us_per_req: Option<f64>,
    /// CPUs busy on average during the measurement (of `ncpus`).
    pub busy_cpus: f64,
    /// CPUs busy on average in the half second before, with nothing of the
    /// benchmark running: the machine's other load (see `wait_quiet`).
    pub background_cpus: f64,
    /// The same in the half second after.
    pub background_after_cpus: f64,
    /// The kernel's softirq threads (ksoftirqd/N): softirq work deferred
    /// from interrupt exit, CPU per request.
    pub ksoftirqd_us_per_req: f64,
    /// TCP connections the client opened per request (HTTP).
    pub client_conns_per_req: Option<f64>,
    /// Connections the backends accepted per request (HTTP).
    pub backend_conns_per_req: Option<f64>,
    /// The busiest backend's rate and, for nginx, its CPU (share of a core).
    pub busiest_backend_rps: f64,
    pub busiest_backend_cpu: Option<f64>,
    /// `lb` only: packets the XDP program forwarded itself (tx + redirect)
    /// per request, and its other non-zero counters.
    pub xdp_fwd_per_req: Option<f64>,
    pub xdp_other: Vec<(&'static str, u64)>,
}

/// Other work using more than this many CPUs next to a measurement makes
/// it contended.
const CONTENDED_ABOVE: f64 = 0.3;

impl Sample {
    pub fn contended(&self) -> bool {
        self.background_cpus > CONTENDED_ABOVE || self.background_after_cpus > CONTENDED_ABOVE
    }

    pub fn brief(&self) -> String {
        let conns =
            self.backend_conns_per_req.map_or(String::new(), |c| format!(" conn/req {c:.3}"));
        format!(
            "{:>8.0} req/s p50 {:.0} us p99 {:.0} us errors {} CPU {:.1} us/req busy {:.2} CPUs (other work {:.2} before, {:.2} after){conns}",
            self.rps,
            self.load.p50_us,
            self.load.p99_us,
            self.load.errors,
            self.cpu_us_per_req,
            self.busy_cpus,
            self.background_cpus,
            self.background_after_cpus
        )
    }
}

pub fn measure(
    env: &Env,
    running: &Running,
    target: Target,
    workload: Workload,
    settings: Settings,
) -> Sample {
    let background = wait_quiet();
    let process_before = running.pid().map(process_ticks);
    let softirqd_before: u64 = env.ksoftirqd.iter().map(|&p| process_ticks(p)).sum();
    let before = Counters::take(env, target);
    let (cpu, wall) = (CpuTimes::now(), Instant::now());
    let (client, addrs) = (env.topo.client(), target.addresses());
    let load = match workload {
        Workload::KeepAlive => load::wrk(&client, addrs[0], settings.wrk(), false),
        Workload::Close => load::wrk(&client, addrs[0], settings.wrk(), true),
        Workload::Udp => load::udp(&client, &addrs, settings.udp_inflight, settings.secs),
    };
    let cpu = CpuTimes::now().since(&cpu);
    let wall = wall.elapsed().as_secs_f64();
    let after = Counters::take(env, target);
    let process = running.pid().map(process_ticks).zip(process_before).map(|(a, b)| a - b);
    let softirqd = env.ksoftirqd.iter().map(|&p| process_ticks(p)).sum::<u64>() - softirqd_before;
    let requests = load.requests.max(1) as f64;
    let us_per_req = |ticks: u64| ticks as f64 / clock_ticks() * 1e6 / requests;
    let busy = cpu.busy() as f64 / clock_ticks();
    let mut sample = Sample {
        load,
        rps: load.requests as f64 / load.secs,
        cpu_us_per_req: us_per_req(cpu.busy()),
        cpu_split_us: [us_per_req(cpu.user), us_per_req(cpu.system), us_per_req(cpu.soft)],
        process_us_per_req: process.map(us_per_req),
        busy_cpus: busy / wall,
        background_cpus: background,
        background_after_cpus: idle_machine_busy(),
        ksoftirqd_us_per_req: us_per_req(softirqd),
        ..Sample::default()
    };
    let n = target.backends();
    if workload == Workload::Udp {
        let served = (0..n).map(|i| after.udp[i] - before.udp[i]);
        sample.busiest_backend_rps = served.max().unwrap_or(0) as f64 / load.secs;
    } else {
        // Each status read counts itself as a connection and a request.
        let delta = |i: usize, f: fn(&NginxStatus) -> u64| {
            (f(&after.nginx[i]) - f(&before.nginx[i])).saturating_sub(1)
        };
        let accepted: u64 = (0..n).map(|i| delta(i, |s| s.accepts)).sum();
        let served: u64 = (0..n).map(|i| delta(i, |s| s.requests)).sum();
        sample.backend_conns_per_req = Some(accepted as f64 / served.max(1) as f64);
        sample.client_conns_per_req =
            Some((after.client_opens - before.client_opens) as f64 / requests);
        let busiest = (0..n).map(|i| delta(i, |s| s.requests)).max().unwrap_or(0);
        sample.busiest_backend_rps = busiest as f64 / load.secs;
        let cpu = (0..n).map(|i| after.nginx[i].cpu_ticks - before.nginx[i].cpu_ticks).max();
        sample.busiest_backend_cpu = cpu.map(|t| t as f64 / clock_ticks() / wall);
    }
    if let (Some(a), Some(b)) = (&after.xdp, &before.xdp) {
        let delta: Vec<(&'static str, u64)> = a
            .iter()
            .zip(b)
            .map(|((name, x), (_, y))| (*name, x - y))
            .filter(|(_, d)| *d > 0)
            .collect();
        let fwd: u64 =
            delta.iter().filter(|(n, _)| matches!(*n, "tx" | "redirect")).map(|(_, d)| d).sum();
        sample.xdp_fwd_per_req = Some(fwd as f64 / requests);
        sample.xdp_other =
            delta.into_iter().filter(|(n, _)| !matches!(*n, "tx" | "redirect")).collect();
    }
    sample
}

/// Other work on the machine (builds) skews both rates and CPU per
/// request: waits, for a bounded time, for a half second in which the
/// machine is nearly idle. Returns the CPUs busy in the last half second.
fn wait_quiet() -> f64 {
    const PATIENCE: Duration = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        let busy = idle_machine_busy();
        if busy < CONTENDED_ABOVE || start.elapsed() > PATIENCE {
            return busy;
        }
    }
}

/// CPUs busy over half a second in which the benchmark sends nothing.
fn idle_machine_busy() -> f64 {
    const WINDOW: Duration = Duration::from_millis(500);
    let before = CpuTimes::now();
    std::thread::sleep(WINDOW);
    CpuTimes::now().busy_secs_since(&before) / WINDOW.as_secs_f64()
}

/// The kernel threads that run softirqs deferred from interrupt exit.
pub fn ksoftirqd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("listing /proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// The counters read before and after a measurement.
struct Counters {
    nginx: Vec<NginxStatus>,
    udp: Vec<u64>,
    client_opens: u64,
    xdp: Option<Vec<(&'static str, u64)>>,
}

impl Counters {
    fn take(env: &Env, target: Target) -> Self {
        let nginx = env
            .nginx
            .iter()
            .map(|n| {
                let (accepts, requests) = nginx_status(&n.ns)
                    .unwrap_or_else(|| panic!("no status from nginx in {}", n.ns));
                let cpu_ticks = n.pids.iter().map(|&pid| process_ticks(pid)).sum();
                NginxStatus { accepts, requests, cpu_ticks }
            })
            .collect();
        let udp =
            env.echo.served.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect();
        let xdp = target.is_lb().then(|| lb_testbed::counters::read(PIN_PATH));
        Self { nginx, udp, client_opens: tcp_active_opens(&env.topo.client()), xdp }
    }
}

struct NginxStatus {
    accepts: u64,
    requests: u64,
    cpu_ticks: u64,
}

/// The machine's CPU time, in clock ticks summed over CPUs.
struct CpuTimes {
    user: u64,
    system: u64,
    /// irq + softirq + steal.
    soft: u64,
}

impl CpuTimes {
    fn now() -> Self {
        let t = CpuTicks::now(None);
        Self { user: t.user + t.nice, system: t.system, soft: t.irq + t.softirq + t.steal }
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            soft: self.soft - earlier.soft,
        }
    }

    fn busy(&self) -> u64 {
        self.user + self.system + self.soft
    }

    fn busy_secs_since(&self, earlier: &Self) -> f64 {
        self.since(earlier).busy() as f64 / clock_ticks()
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of a process, in clock ticks (0 once it is gone).
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at 3.
    field(11) + field(12)
}

/// `accepts` and `requests` from nginx's status page in namespace `ns`.
pub fn nginx_status(ns: &str) -> Option<(u64, u64)> {
    in_ns(ns, || {
        let mut stream = TcpStream::connect(("127.0.0.1", STATUS_PORT)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET /status HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        // "...server accepts handled requests\n 10 10 20 \n..."
        let mut lines = text.lines().skip_while(|l| !l.starts_with("server accepts"));
        let numbers: Vec<u64> =
            lines.nth(1)?.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        Some((*numbers.first()?, *numbers.get(2)?))
    })
}

/// TCP connections opened from namespace `ns` so far (`ActiveOpens`).
fn tcp_active_opens(ns: &str) -> u64 {
    in_ns(ns, || {
        // thread-self: /proc/self/net would show the process's namespace.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("reading snmp");
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().expect("Tcp header"), tcp.next().expect("Tcp values"));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "ActiveOpens")
            .and_then(|(_, v)| v.parse().ok())
            .expect("ActiveOpens in snmp")
    })
}
