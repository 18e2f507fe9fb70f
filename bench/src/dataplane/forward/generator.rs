//! The traffic generator: BPF_PROG_TEST_RUN in live-frames mode from
//! `lbd-gen`, each frame a TCP ACK of one of the live flows to the VIP.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use aya::programs::Xdp;
use lb_ctl::write::netdev;
use lb_testbed::{
    packet::{Ipv4, TCP_ACK, internet_checksum},
    testrun::{self, XDP_TX},
};

use super::{
    GEN_CPU,
    topology::{GEN_IF, GEN_MAC, GEN_NS, LB_IN_MAC, VIP, VIP_PORT, real_time},
};
use crate::dataplane::{LIVE_PORTS, live_client, pin_to_cpu, rawbpf};

/// Frames per BPF_PROG_TEST_RUN call: each call sets up and tears down a
/// page pool, which sleeps; long calls keep that rare.
const REPEAT: u32 = 1 << 20;

pub struct Generator {
    stop: Arc<AtomicBool>,
    /// (pid, tid) of the sending thread.
    pub task: (i32, i32),
    thread: JoinHandle<()>,
}

impl Generator {
    /// Starts sending live flows `0..flows` at random, from `lbd-gen` on
    /// `GEN_CPU`, as a real-time thread below the sink's NAPI thread.
    pub fn start(flows: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            lb_testbed::netns::enter(GEN_NS);
            pin_to_cpu(GEN_CPU);
            real_time(0, 1);
            let frame = template();
            let ifindex = netdev::ifindex(GEN_IF).expect("the generator's interface");
            let prog = program(&frame, ifindex, flows);
            // SAFETY: getpid and gettid cannot fail.
            let task = unsafe { (libc::getpid(), libc::gettid()) };
            tx.send(task).expect("the benchmark waits for the generator");
            while !stopped.load(Ordering::Relaxed) {
                rawbpf::run_live(&prog, &frame, ifindex, REPEAT);
            }
        });
        let task = rx.recv().expect("the generator started");
        Self { stop, task, thread }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the generator thread");
    }
}

/// Live flow 0 as the template frame.
fn template() -> Vec<u8> {
    Ipv4::tcp(live_client(0), (VIP, VIP_PORT), TCP_ACK, b"").frame(LB_IN_MAC, GEN_MAC)
}

/// Whether `frame`'s IPv4 header and TCP checksums are right (each
/// one's-complement sum comes out all ones).
fn checksums_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let segment = &ip[20..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    internet_checksum(&ip[..20]) == 0 && internet_checksum(&pseudo) == 0
}

/// Loads the generator and checks, with ordinary test runs over a frame the
/// load balancer has rewritten, that it sends valid frames of the mix.
fn program(template: &[u8], ifindex: u32, flows: u32) -> Xdp {
    let prog = testrun::load_xdp("lbd_gen", &rawbpf::generator_insns(template, flows));
    let mut recycled = template.to_vec();
    recycled[..12].fill(0xee); // MACs
    recycled[24..38].fill(0xee); // IP checksum, addresses, ports
    for _ in 0..16 {
        let out = testrun::run(&prog, &recycled, ifindex, 1);
        assert_eq!(out.action, XDP_TX, "the generator sends its frame");
        let f = &out.frame;
        let host = u32::from(f[29]) - 1;
        let port = u32::from(u16::from_be_bytes([f[34], f[35]]));
        let flow = host * LIVE_PORTS + port - u32::from(live_client(0).1);
        assert!(flow < flows && f[26..29] == template[26..29], "flow {flow} of the mix");
        assert!(checksums_ok(f), "the generated frame's checksums are valid");
        let unchanged = |r: std::ops::Range<usize>| f[r.clone()] == template[r];
        let restored = unchanged(0..24) && unchanged(26..28) && unchanged(30..34);
        assert!(restored && unchanged(36..50) && unchanged(52..54), "the template is restored");
    }
    prog
}
