//! The two tiny XDP programs of the forwarding benchmark, written as BPF
//! instructions (no second eBPF crate to build), and the bpf(2) calls that
//! load, attach and run them: the traffic generator (BPF_PROG_TEST_RUN in
//! live-frames mode) and the sink (XDP_DROP). The instruction builder and
//! the map calls also serve the `floor` part's programs.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

pub use lb_testbed::testrun::load_xdp;
use lb_testbed::testrun::{TestRunAttr, XdpMd, sys_bpf};

use super::{LIVE_PORT_BASE, LIVE_PORTS};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// `XDP_FLAGS_DRV_MODE`: native (driver) XDP, refused where unsupported.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel 5.18, commit b530e9e1063e): frames
/// the program returns XDP_TX or XDP_REDIRECT for are really sent.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
pub(super) const XDP_DROP: i32 = 1;
pub(super) const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
/// `bpf_get_prandom_u32()`.
pub(super) const HELPER_PRANDOM: i32 = 7;
pub(super) const HELPER_MAP_LOOKUP: i32 = 1;
pub(super) const HELPER_MAP_UPDATE: i32 = 2;

/// One BPF instruction: opcode, registers, offset, immediate.
pub(super) const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | (src << 4)) as u64) << 8
        | (off.cast_unsigned() as u64) << 16
        | (imm.cast_unsigned() as u64) << 32
}

// Opcodes (include/uapi/linux/bpf.h): class | op | source.
const LDX_W: u8 = 0x61;
pub(super) const LDX_DW: u8 = 0x79;
const STX_H: u8 = 0x6b;
pub(super) const STX_W: u8 = 0x63;
pub(super) const STX_DW: u8 = 0x7b;
pub(super) const ST_W: u8 = 0x62;
const ST_H: u8 = 0x6a;
pub(super) const ST_DW: u8 = 0x7a;
pub(super) const MOV_X: u8 = 0xbf;
pub(super) const MOV_K: u8 = 0xb7;
pub(super) const ADD_K: u8 = 0x07;
const ADD_X: u8 = 0x0f;
pub(super) const AND_K: u8 = 0x57;
pub(super) const RSH_K: u8 = 0x77;
const LSH_K: u8 = 0x67;
const OR_K: u8 = 0x47;
pub(super) const MUL_K: u8 = 0x27;
const DIV_K: u8 = 0x37;
const MOD_K: u8 = 0x97;
const XOR_K: u8 = 0xa7;
const JGT_X: u8 = 0x2d;
pub(super) const JEQ_K: u8 = 0x15;
pub(super) const JNE_K: u8 = 0x55;
pub(super) const CALL: u8 = 0x85;
pub(super) const EXIT: u8 = 0x95;
/// BPF_LD | BPF_IMM | BPF_DW: a 64-bit immediate over two instructions.
const LD_IMM64: u8 = 0x18;
/// `BPF_PSEUDO_MAP_FD`: LD_IMM64's immediate is a map fd, which the
/// verifier turns into the map's address.
const PSEUDO_MAP_FD: u8 = 1;
/// BPF_ALU | BPF_END | BPF_TO_BE: to network order (imm = width).
const TO_BE: u8 = 0xdc;

/// Offsets in an Ethernet + IPv4 (no options) + TCP frame.
const IP_CHECK: usize = 24;
/// The last two bytes of the source address.
const IP_SRC_LO: usize = 28;
const TCP_SPORT: usize = 34;
const TCP_CHECK: usize = 50;
const TCP_END: usize = 54;

/// An offset (or a jump) as an instruction's 16-bit field.
fn off(at: usize) -> i16 {
    i16::try_from(at).expect("a 16-bit offset")
}

/// The generator: sends the template frame (XDP_TX) as live flow
/// `random(0..flows)` (see `super::live_client`: the source address's last
/// byte and the source port vary), so that the load balancer sees `flows`
/// different 5-tuples. Live-frames mode recycles pages without restoring
/// their contents, and the load balancer rewrites the frames it forwards
/// in place (addresses, ports, checksums): so the program writes the whole
/// template back first, then the address, the port and both checksums,
/// derived from the template's (RFC 1624, eqn. 3).
///
/// `template` is live flow 0 as an Ethernet + IPv4 (no options) + TCP frame
/// of exactly `TCP_END` bytes.
pub fn generator_insns(template: &[u8], flows: u32) -> Vec<u64> {
    assert_eq!(template.len(), TCP_END, "a bare Ethernet/IPv4/TCP template");
    assert_eq!(&template[28..30], &[64, 1], "the template is live flow 0 (10.77.64.1)");
    assert!(flows <= 254 * LIVE_PORTS, "at most 254 client addresses");
    // The template's 16-bit words as the program's loads see them (little
    // endian): one's-complement sums do not depend on byte order (RFC 1071,
    // 2.B), so all the arithmetic stays in that order.
    let le = |at: usize| i32::from(u16::from_le_bytes([template[at], template[at + 1]]));
    let not = |at: usize| le(at) ^ 0xffff;
    // ~check + ~old words: what the new words are added to.
    let ip_base = not(IP_CHECK) + not(IP_SRC_LO);
    let tcp_base = not(TCP_CHECK) + not(TCP_SPORT) + not(IP_SRC_LO);
    let mut insns = vec![
        insn(LDX_W, 7, 1, 0, 0),                       // r7 = ctx->data
        insn(LDX_W, 3, 1, 4, 0),                       // r3 = ctx->data_end
        insn(MOV_X, 4, 7, 0, 0),                       // r4 = r7
        insn(ADD_K, 4, 0, 0, i32::from(off(TCP_END))), // r4 += headers
        insn(JGT_X, 4, 3, 0, 0),                       // too short: drop (offset patched below)
    ];
    let check_at = insns.len() - 1;
    for (i, word) in template.chunks(4).enumerate() {
        let at = off(i * 4);
        insns.push(match *word {
            [a, b, c, d] => insn(ST_W, 7, 0, at, i32::from_le_bytes([a, b, c, d])),
            [a, b] => insn(ST_H, 7, 0, at, i32::from(u16::from_le_bytes([a, b]))),
            _ => unreachable!("54 bytes: 13 words and a half-word"),
        });
    }
    insns.extend([
        insn(CALL, 0, 0, 0, HELPER_PRANDOM),       // r0 = random u32
        insn(MUL_K, 0, 0, 0, flows.cast_signed()), // flow = r0 * flows >> 32
        insn(RSH_K, 0, 0, 0, 32),
        insn(MOV_X, 6, 0, 0, 0), // r6 = flow / ports: the host
        insn(DIV_K, 6, 0, 0, LIVE_PORTS.cast_signed()),
        insn(MOD_K, 0, 0, 0, LIVE_PORTS.cast_signed()), // r0 = the port
        insn(ADD_K, 0, 0, 0, i32::from(LIVE_PORT_BASE)),
        insn(TO_BE, 0, 0, 0, 16),
        insn(STX_H, 7, 0, off(TCP_SPORT), 0),
        insn(ADD_K, 6, 0, 0, 1), // r6 = 64, host + 1: the
        insn(LSH_K, 6, 0, 0, 8), // address's last two bytes
        insn(OR_K, 6, 0, 0, 64),
        insn(STX_H, 7, 6, off(IP_SRC_LO), 0),
        insn(MOV_X, 8, 6, 0, 0), // IP: ~check + ~old + new
        insn(ADD_K, 8, 0, 0, ip_base),
    ]);
    insns.extend(fold_and_complement(8));
    insns.extend([
        insn(STX_H, 7, 8, off(IP_CHECK), 0),
        insn(ADD_X, 0, 6, 0, 0), // TCP: the port and the address (pseudo-header)
        insn(ADD_K, 0, 0, 0, tcp_base),
    ]);
    insns.extend(fold_and_complement(0));
    insns.extend([
        insn(STX_H, 7, 0, off(TCP_CHECK), 0),
        insn(MOV_K, 0, 0, 0, XDP_TX),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let drop_at = insns.len();
    insns[check_at] = insn(JGT_X, 4, 3, off(drop_at - check_at - 1), 0);
    insns.extend([insn(MOV_K, 0, 0, 0, XDP_DROP), insn(EXIT, 0, 0, 0, 0)]);
    insns
}

/// `reg = ~fold(reg)`: the carries folded into 16 bits twice (enough for a
/// sum of a few 16-bit words), then complemented; r9 is scratch.
fn fold_and_complement(reg: u8) -> [u64; 9] {
    [
        insn(MOV_X, 9, reg, 0, 0),
        insn(RSH_K, 9, 0, 0, 16),
        insn(AND_K, reg, 0, 0, 0xffff),
        insn(ADD_X, reg, 9, 0, 0),
        insn(MOV_X, 9, reg, 0, 0),
        insn(RSH_K, 9, 0, 0, 16),
        insn(AND_K, reg, 0, 0, 0xffff),
        insn(ADD_X, reg, 9, 0, 0),
        insn(XOR_K, reg, 0, 0, 0xffff),
    ]
}

/// The sink: drops every frame (the interface counts them).
pub fn drop_insns() -> Vec<u64> {
    vec![insn(MOV_K, 0, 0, 0, XDP_DROP), insn(EXIT, 0, 0, 0, 0)]
}

/// Attaches `prog` to `ifindex` (in the calling thread's namespace) in
/// driver mode through a BPF link, which lives as long as the returned fd:
/// nothing stays behind when the benchmark exits, however it exits.
pub fn attach_driver(prog: &OwnedFd, ifindex: u32) -> OwnedFd {
    lb_testbed::testrun::link_xdp(prog, ifindex, XDP_FLAGS_DRV_MODE)
}

/// Runs `prog` `repeat` times over `frame` in live-frames mode, as if
/// received on `ifindex` (the calling thread's namespace): each XDP_TX
/// really leaves through `ifindex`. Returns the kernel's ns per run.
pub fn run_live(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> u32 {
    let mut ctx =
        XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..XdpMd::default() };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd().cast_unsigned(),
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: (&raw mut ctx) as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..TestRunAttr::default()
    };
    // SAFETY: attr points at the live frame and context for the call.
    let rc = unsafe { sys_bpf(BPF_PROG_TEST_RUN, &raw mut attr) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN (live frames): {}", std::io::Error::last_os_error());
    attr.duration
}

/// `dst = map` (the map's fd, resolved at load): two instruction slots.
pub(super) fn ld_map(dst: u8, map: &OwnedFd) -> [u64; 2] {
    [insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map.as_raw_fd()), 0]
}

pub(super) const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub(super) const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The leading members of `union bpf_attr` for BPF_MAP_CREATE.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The `batch` member of `union bpf_attr` (aya 0.14 has no batch update).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A new map, owned by the returned fd (and by the programs that use it).
pub(super) fn create_map(map_type: u32, key_size: u32, value_size: u32, entries: u32) -> OwnedFd {
    let attr = MapCreateAttr { map_type, key_size, value_size, max_entries: entries, map_flags: 0 };
    // SAFETY: attr is a valid, correctly sized prefix of union bpf_attr.
    let fd = unsafe { sys_bpf(BPF_MAP_CREATE, &raw const attr) };
    assert!(
        fd >= 0,
        "creating a map (type {map_type}, {entries} x {value_size} bytes): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this fd to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Writes `keys` and `values` (packed, `count` of each) in one system call
/// (BPF_MAP_UPDATE_BATCH, kernel 5.6): a million single updates would take
/// a second.
pub(super) fn update_batch(map: &OwnedFd, keys: &[u8], values: &[u8], count: u32) {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd().cast_unsigned(),
        ..BatchAttr::default()
    };
    // SAFETY: attr points at live key and value buffers of `count` entries each.
    let rc = unsafe { sys_bpf(BPF_MAP_UPDATE_BATCH, &raw mut attr) };
    assert!(
        rc == 0 && attr.count == count,
        "updating {count} map entries in a batch ({} written): {}",
        attr.count,
        std::io::Error::last_os_error()
    );
}
