//! The forwarding benchmark's namespaces and what runs in them: the load
//! balancer attached in driver mode, the sink, threaded NAPI.
use std::{fmt::Write as _, net::Ipv4Addr};

use aya::programs::{Xdp, XdpMode, links::FdLink};
use lb_ctl::{desired::config, write::netdev};
use lb_testbed::{
    fixture::{Loaded, mac_str},
    netns::{exists, in_ns, ns_sh, ns_try, output, sh},
    packet::Mac,
};

use super::super::{load_services, pin_task_to_cpu, rawbpf};

pub const GEN_NS: &str = "lbd-gen";
pub const LB_NS: &str = "lbd-lb";
pub const SINK_NS: &str = "lbd-sink";
pub const GEN_IF: &str = "lbd-g0";
pub const LB_IN: &str = "lbd-c";
pub const LB_OUT: &str = "lbd-b";
pub const SINK_IF: &str = "lbd-s0";
pub const GEN_MAC: Mac = [0x02, 0, 0, 0, 0x0b, 0x01];
pub const LB_IN_MAC: Mac = [0x02, 0, 0, 0, 0x0b, 0x02];
const LB_OUT_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x01];
const SINK_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x02];
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 11, 100);
pub const VIP_PORT: u16 = 80;
const BACKENDS: u8 = 8;
/// The sink program's name (the BPF statistics find it by name).
pub const SINK_PROG: &str = "lbd_sink";

fn backend(b: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 12, 11 + b)
}

/// The namespaces, removed on drop (also on a panic); the programs are held
/// by fds and links of this process, so nothing else stays.
pub struct Topology;

impl Topology {
    pub fn create() -> Self {
        Self::remove();
        for ns in [GEN_NS, LB_NS, SINK_NS] {
            sh(&["ip", "netns", "add", ns]);
            ns_sh(ns, &["ip", "link", "set", "lo", "up"]);
        }
        veth((GEN_NS, GEN_IF, GEN_MAC), (LB_NS, LB_IN, LB_IN_MAC));
        veth((LB_NS, LB_OUT, LB_OUT_MAC), (SINK_NS, SINK_IF, SINK_MAC));
        ns_sh(LB_NS, &["ip", "addr", "add", "10.77.11.1/24", "dev", LB_IN]);
        ns_sh(LB_NS, &["ip", "addr", "add", "10.77.12.1/24", "dev", LB_OUT]);
        // The clients (10.77.64.x, see `live_client`) are beyond the client side.
        ns_sh(LB_NS, &["ip", "route", "add", "10.77.64.0/24", "via", "10.77.11.2"]);
        // bpf_fib_lookup answers only where the ingress device forwards.
        ns_sh(LB_NS, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let sink_mac = mac_str(SINK_MAC);
        for b in 0..BACKENDS {
            let addr = backend(b).to_string();
            ns_sh(
                LB_NS,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &sink_mac,
                    "dev",
                    LB_OUT,
                    "nud",
                    "permanent",
                ],
            );
        }
        Self
    }

    fn remove() {
        for ns in [GEN_NS, LB_NS, SINK_NS] {
            if exists(ns) {
                let _ = output(&["ip", "netns", "del", ns]);
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::remove();
    }
}

fn veth(a: (&str, &str, Mac), b: (&str, &str, Mac)) {
    let (mac_a, mac_b) = (mac_str(a.2), mac_str(b.2));
    sh(&[
        "ip", "link", "add", a.1, "address", &mac_a, "netns", a.0, "type", "veth", "peer", "name",
        b.1, "address", &mac_b, "netns", b.0,
    ]);
    ns_sh(a.0, &["ip", "link", "set", a.1, "up"]);
    ns_sh(b.0, &["ip", "link", "set", b.1, "up"]);
}

fn config_text() -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{LB_IN}\", \"{LB_OUT}\"]\n\n[[service]]\nname = \"fwd\"\nvip = \"{VIP}\"\nport = {VIP_PORT}\n"
    );
    for b in 0..BACKENDS {
        let _ =
            write!(text, "  [[service.backend]]\n  address = \"{}\"\n  port = 8080\n", backend(b));
    }
    text
}

/// The load balancer: loaded with the service applied, attached in driver
/// mode to both of its interfaces (as `lb-ctl run --xdp-mode driver` would;
/// only `lbd-c` receives here). Detached when dropped.
pub fn start_lb(conntrack_max: u32) -> Loaded {
    in_ns(LB_NS, move || {
        let services = config::parse(&config_text()).expect("the forwarding config").services;
        let mut loaded = load_services(conntrack_max, &[LB_IN, LB_OUT], &services);
        let program = lb_program(&mut loaded);
        for dev in [LB_IN, LB_OUT] {
            program
                .attach(dev, XdpMode::Driver)
                .unwrap_or_else(|e| panic!("attaching lb_xdp to {dev} in driver mode: {e}"));
        }
        loaded
    })
}

pub fn lb_program(lb: &mut Loaded) -> &mut Xdp {
    lb.reconciler
        .maps_mut()
        .ebpf_mut()
        .program_mut("lb_xdp")
        .expect("lb_xdp")
        .try_into()
        .expect("lb_xdp is XDP")
}

/// The sink's XDP_DROP program, attached in driver mode to `lbd-s0`: a veth
/// only takes redirected frames if its peer runs NAPI, which XDP turns on.
pub fn start_sink() -> FdLink {
    in_ns(SINK_NS, || {
        let mut prog = lb_testbed::testrun::load_xdp(SINK_PROG, &rawbpf::drop_insns());
        let ifindex = netdev::ifindex(SINK_IF).expect("the sink interface");
        rawbpf::attach_driver(&mut prog, ifindex)
    })
}

/// Switches `dev`'s NAPI to a kernel thread, pins it to `cpu` and makes it
/// SCHED_FIFO; returns its pid, or None where the kernel refuses. NAPI
/// normally runs as a softirq, which preempts every task: a real-time
/// thread keeps that (the machine's other work, e.g. builds, does not
/// share the forwarding core; RT throttling still leaves it 5%).
pub fn threaded_napi(ns: &str, dev: &str, cpu: usize, priority: i32) -> Option<i32> {
    if !ns_try(ns, &["sh", "-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")]) {
        return None;
    }
    let pid = find_thread(&format!("napi/{dev}-"))?;
    real_time(pid, priority);
    pin_task_to_cpu(pid, cpu).then_some(pid)
}

/// Makes task `pid` (0: the calling thread) SCHED_FIFO at `priority`.
pub fn real_time(pid: i32, priority: i32) {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: a valid pid and sched_param.
    let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &raw const param) };
    assert_eq!(rc, 0, "making task {pid} SCHED_FIFO: {}", std::io::Error::last_os_error());
}

/// Puts the calling thread back to the normal scheduler.
pub fn normal_time() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the calling thread, a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &raw const param) };
}

/// The kernel thread whose name starts with `prefix`.
fn find_thread(prefix: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        comm.starts_with(prefix).then_some(pid)
    })
}
