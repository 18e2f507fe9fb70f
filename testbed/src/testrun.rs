//! BPF_PROG_TEST_RUN on a loaded XDP program: runs the real program over
//! one frame and returns its verdict, output bytes and metadata. A raw
//! bpf(2) call rather than aya's `TestRun`, to set the ingress interface and
//! metadata in front of the frame (`ctx_in`) and to time repeated runs.
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use aya::{Ebpf, programs::Xdp};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The bpf(2) syscall with `attr`, a `union bpf_attr` prefix, and its size.
///
/// # Safety
/// `attr` must be a valid attribute struct for `cmd` whose pointers stay
/// live for the call; for commands the kernel writes back to, `attr` must
/// come from a mutable place (`&raw mut`).
pub unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: *const T) -> libc::c_long {
    // SAFETY: upheld by the caller.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size_of::<T>() as u32) }
}

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
pub struct TestRunAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub flags: u32,
    pub cpu: u32,
    pub batch_size: u32,
    pub _pad: u32,
}

/// `struct xdp_md`, the context of an XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
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

/// The fd of a loaded program of `ebpf`.
pub fn program_fd(ebpf: &Ebpf, name: &str) -> RawFd {
    let program: &Xdp = ebpf
        .program(name)
        .unwrap_or_else(|| panic!("no program {name}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    program.fd().unwrap_or_else(|e| panic!("{name} is not loaded: {e}")).as_fd().as_raw_fd()
}

/// Runs the program `repeat` times over `frame`, as if received on
/// `ingress_ifindex` (in the calling thread's network namespace). With
/// `repeat > 1` the kernel reruns the program on its own output.
pub fn run(prog_fd: RawFd, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Outcome {
    run_after_meta(prog_fd, &[], frame, ingress_ifindex, repeat)
}

/// Like `run`, with `meta` already in the XDP metadata area in front of
/// the frame (as an earlier program could leave it). The kernel takes it
/// from the head of the input, `ctx_in.data` bytes long, and caps it at 32
/// bytes, a multiple of 4 (`xdp_metalen_invalid`, net/bpf/test_run.c).
pub fn run_after_meta(
    prog_fd: RawFd,
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
    let mut ctx_out = XdpMd::default();
    let mut attr = TestRunAttr {
        prog_fd: prog_fd.cast_unsigned(),
        data_size_in: input.len() as u32,
        data_size_out: out.len() as u32,
        data_in: input.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_size_out: size_of::<XdpMd>() as u32,
        ctx_in: (&raw const ctx_in) as u64,
        ctx_out: (&raw mut ctx_out) as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: attr points at live buffers of the sizes it states, for the duration of the call.
    let rc = unsafe { sys_bpf(BPF_PROG_TEST_RUN, &raw mut attr) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    out.truncate(attr.data_size_out as usize);
    // The output starts with the metadata; ctx_out.data is its length.
    let meta_len = (ctx_out.data as usize).min(out.len());
    let frame = out.split_off(meta_len);
    Outcome { action: attr.retval, frame, meta: out, duration_ns: attr.duration }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The leading members of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Loads an XDP program from raw instructions (GPL); panics with the
/// verifier's log if it is refused.
pub fn load_xdp(name: &str, insns: &[u64]) -> OwnedFd {
    let mut log = vec![0_u8; 64 * 1024];
    let mut prog_name = [0_u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    // SAFETY: attr points at live instruction, license and log buffers.
    let fd = unsafe { sys_bpf(BPF_PROG_LOAD, &raw const attr) };
    assert!(
        fd >= 0,
        "loading XDP program {name}: {}\n{}",
        std::io::Error::last_os_error(),
        String::from_utf8_lossy(&log).trim_end_matches('\0')
    );
    // SAFETY: the kernel just returned this fd to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Loads `r0 = XDP_PASS; exit`: the baseline a benchmark subtracts, so that
/// what remains is the program's own cost, not BPF_PROG_TEST_RUN's.
pub fn load_trivial_pass() -> OwnedFd {
    // BPF_MOV64_IMM(BPF_REG_0, XDP_PASS): opcode 0xb7, dst r0, imm 2; BPF_EXIT_INSN: 0x95.
    load_xdp("lb_pass", &[0xb7 | (u64::from(XDP_PASS) << 32), 0x95])
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Attaches `prog` to `ifindex` (in the calling thread's namespace) with a
/// BPF link (`flags`: the XDP mode, 0 for the kernel's choice), which lives
/// as long as the returned fd or a pin of it.
pub fn link_xdp(prog: &OwnedFd, ifindex: u32, flags: u32) -> OwnedFd {
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd().cast_unsigned(),
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    // SAFETY: attr is a valid, correctly sized prefix of union bpf_attr.
    let fd = unsafe { sys_bpf(BPF_LINK_CREATE, &raw const attr) };
    assert!(
        fd >= 0,
        "attaching XDP (flags {flags}) to ifindex {ifindex}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this fd to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Attaches the trivial XDP_PASS program to `ifindex` (in the calling
/// thread's network namespace) with a BPF link pinned at `pin`, so that it
/// stays attached after this process exits; removing the pin (or the
/// interface) detaches it.
pub fn attach_pass_pinned(ifindex: u32, pin: &std::path::Path) {
    let link = link_xdp(&load_trivial_pass(), ifindex, 0);
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).expect("pin path");
    let attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: link.as_raw_fd().cast_unsigned(),
        file_flags: 0,
    };
    // SAFETY: attr is a valid prefix of union bpf_attr; the path outlives the call.
    let rc = unsafe { sys_bpf(BPF_OBJ_PIN, &raw const attr) };
    assert_eq!(
        rc,
        0,
        "pinning the XDP_PASS link at {}: {}",
        pin.display(),
        std::io::Error::last_os_error()
    );
    // Dropping `link` closes this process's handle; the pin keeps the link.
}
