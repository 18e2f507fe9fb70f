//! BPF_PROG_TEST_RUN on a loaded XDP program, through aya's `TestRun`:
//! runs the real program over one frame, as if received on a given
//! interface and after given metadata (`ctx_in`), and returns its verdict,
//! output bytes, metadata and the kernel's time. Also the trivial XDP_PASS
//! program the benchmarks subtract and the topologies attach, loaded from
//! raw instructions (`lb_ctl::write::dataplane::sys`).
use std::path::Path;

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp, XdpMode, links::FdLink},
};
use lb_ctl::write::dataplane::sys;

/// `struct xdp_md`, the context of an XDP program, as BPF_PROG_TEST_RUN
/// takes it in (`ctx_in`) and gives it back (`ctx_out`).
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

impl XdpMd {
    /// Its size in the kernel: six u32 fields.
    pub const SIZE: usize = 24;

    /// The bytes the kernel reads.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let fields = [
            self.data,
            self.data_end,
            self.data_meta,
            self.ingress_ifindex,
            self.rx_queue_index,
            self.egress_ifindex,
        ];
        let mut bytes = [0; Self::SIZE];
        for (at, field) in bytes.chunks_exact_mut(4).zip(fields) {
            at.copy_from_slice(&field.to_ne_bytes());
        }
        bytes
    }

    /// What the kernel wrote back.
    pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
        let field =
            |i: usize| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        Self {
            data: field(0),
            data_end: field(1),
            data_meta: field(2),
            ingress_ifindex: field(3),
            rx_queue_index: field(4),
            egress_ifindex: field(5),
        }
    }
}

/// `e` and its causes, one after the other: aya's errors name the call
/// that failed, their causes say why.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

/// What one run of the program did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The XDP action (XDP_PASS = 2, XDP_TX = 3, ...).
    pub action: u32,
    /// The frame after the program, without metadata.
    pub frame: Vec<u8>,
    /// The XDP metadata the program put in front of the frame.
    pub meta: Vec<u8>,
    /// Kernel-measured run time in ns (averaged over `repeat`).
    pub duration_ns: u32,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// A handle of its own on the loaded XDP program `name` of `ebpf`, to run
/// it while `ebpf` is lent out (to the reconciler).
pub fn program(ebpf: &Ebpf, name: &str) -> Xdp {
    let program: &Xdp = ebpf
        .program(name)
        .unwrap_or_else(|| panic!("no program {name}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    sys::xdp_handle(program).unwrap_or_else(|e| panic!("{name}: {}", describe(&e)))
}

/// Runs the program `repeat` times over `frame`, as if received on
/// `ingress_ifindex` (in the calling thread's network namespace). With
/// `repeat > 1` the kernel reruns the program on its own output.
pub fn run(program: &Xdp, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Outcome {
    run_after_meta(program, &[], frame, ingress_ifindex, repeat)
}

/// Like `run`, with `meta` already in the XDP metadata area in front of
/// the frame (as an earlier program could leave it). The kernel takes it
/// from the head of the input, `ctx_in.data` bytes long, and caps it at 32
/// bytes, a multiple of 4 (`xdp_metalen_invalid`, net/bpf/test_run.c).
pub fn run_after_meta(
    program: &Xdp,
    meta: &[u8],
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> Outcome {
    let input = [meta, frame].concat();
    let mut out = vec![0_u8; input.len() + 256];
    let ctx_in = XdpMd {
        data: meta.len() as u32,
        data_end: input.len() as u32,
        ingress_ifindex,
        ..XdpMd::default()
    };
    let mut ctx_out = [0; XdpMd::SIZE];
    let run = program
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in.to_bytes()),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {}", describe(&e)));
    out.truncate(run.data_size_out as usize);
    // The output starts with the metadata; ctx_out.data is its length.
    let meta_len = (XdpMd::from_bytes(&ctx_out).data as usize).min(out.len());
    let frame = out.split_off(meta_len);
    Outcome {
        action: run.return_value,
        frame,
        meta: out,
        duration_ns: u32::try_from(run.duration.as_nanos()).unwrap_or(u32::MAX),
    }
}

/// Loads an XDP program from raw instructions (GPL); panics with the
/// verifier's log if it is refused.
pub fn load_xdp(name: &str, insns: &[u64]) -> Xdp {
    sys::load_xdp(name, insns).unwrap_or_else(|e| panic!("loading XDP program {name}: {e}"))
}

/// Loads `r0 = XDP_PASS; exit`: the baseline a benchmark subtracts, so that
/// what remains is the program's own cost, not BPF_PROG_TEST_RUN's.
pub fn load_trivial_pass() -> Xdp {
    // BPF_MOV64_IMM(BPF_REG_0, XDP_PASS): opcode 0xb7, dst r0, imm 2; BPF_EXIT_INSN: 0x95.
    load_xdp("lb_pass", &[0xb7 | (u64::from(XDP_PASS) << 32), 0x95])
}

/// Attaches `program` to `ifindex` (in the calling thread's namespace)
/// in `mode` with a BPF link, which lives as long as the returned link or
/// a pin of it.
pub fn link_xdp(program: &mut Xdp, ifindex: u32, mode: XdpMode) -> FdLink {
    let failed = |e: &dyn std::error::Error| {
        format!("attaching XDP ({mode:?} mode) to ifindex {ifindex}: {}", describe(e))
    };
    let id = program.attach_to_if_index(ifindex, mode).unwrap_or_else(|e| panic!("{}", failed(&e)));
    let link = program.take_link(id).unwrap_or_else(|e| panic!("{}", failed(&e)));
    // aya falls back to netlink where the kernel has no XDP links.
    FdLink::try_from(link).unwrap_or_else(|e| panic!("{}", failed(&e)))
}

/// Attaches the trivial XDP_PASS program to `ifindex` (in the calling
/// thread's network namespace) with a BPF link pinned at `pin`, so that it
/// stays attached after this process exits; removing the pin (or the
/// interface) detaches it.
pub fn attach_pass_pinned(ifindex: u32, pin: &Path) {
    let link = link_xdp(&mut load_trivial_pass(), ifindex, XdpMode::Default);
    link.pin(pin).unwrap_or_else(|e| {
        panic!("pinning the XDP_PASS link at {}: {}", pin.display(), describe(&e))
    });
    // Dropping the pinned link closes this process's handle; the pin keeps the link.
}
