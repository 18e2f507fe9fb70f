//! The two tiny XDP programs of the forwarding benchmark, written as BPF
//! instructions (no second eBPF crate to build), and what loads, attaches
//! and runs them: the traffic generator (BPF_PROG_TEST_RUN in live-frames
//! mode) and the sink (XDP_DROP). The instruction builder and the maps
//! also serve the `floor` part's programs. aya does all of it but the
//! loading from instructions and the batch update, which are raw bpf(2)
//! calls of `lb_ctl::write::dataplane::sys`.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::MapData,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, links::FdLink},
};
use aya_obj::generated::{
    BPF_ADD, BPF_ALU, BPF_ALU64, BPF_AND, BPF_CALL, BPF_DIV, BPF_DW, BPF_END, BPF_EXIT, BPF_H,
    BPF_IMM, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_JNE, BPF_K, BPF_LD, BPF_LDX, BPF_LSH, BPF_MEM, BPF_MOD,
    BPF_MOV, BPF_MUL, BPF_OR, BPF_PSEUDO_MAP_FD, BPF_RSH, BPF_ST, BPF_STX, BPF_TO_BE, BPF_W, BPF_X,
    BPF_XOR, bpf_func_id, bpf_map_type,
};
use lb_ctl::write::dataplane::sys;
use lb_testbed::testrun::{XdpMd, describe};

use super::{LIVE_PORT_BASE, LIVE_PORTS};

pub(super) const XDP_DROP: i32 = 1;
pub(super) const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
/// `bpf_get_prandom_u32()`.
pub(super) const HELPER_PRANDOM: i32 = bpf_func_id::BPF_FUNC_get_prandom_u32 as i32;
pub(super) const HELPER_MAP_LOOKUP: i32 = bpf_func_id::BPF_FUNC_map_lookup_elem as i32;
pub(super) const HELPER_MAP_UPDATE: i32 = bpf_func_id::BPF_FUNC_map_update_elem as i32;

/// One BPF instruction: opcode, registers, offset, immediate.
pub(super) const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | (src << 4)) as u64) << 8
        | (off.cast_unsigned() as u64) << 16
        | (imm.cast_unsigned() as u64) << 32
}

/// An opcode: class | operation or mode | source or size (the kernel's
/// 8-bit field).
const fn op(class: u32, operation: u32, source: u32) -> u8 {
    (class | operation | source) as u8
}

// Opcodes: loads and stores of 64-bit words (DW), words (W), half-words (H).
const LDX_W: u8 = op(BPF_LDX, BPF_MEM, BPF_W);
pub(super) const LDX_DW: u8 = op(BPF_LDX, BPF_MEM, BPF_DW);
const STX_H: u8 = op(BPF_STX, BPF_MEM, BPF_H);
pub(super) const STX_W: u8 = op(BPF_STX, BPF_MEM, BPF_W);
pub(super) const STX_DW: u8 = op(BPF_STX, BPF_MEM, BPF_DW);
pub(super) const ST_W: u8 = op(BPF_ST, BPF_MEM, BPF_W);
const ST_H: u8 = op(BPF_ST, BPF_MEM, BPF_H);
pub(super) const ST_DW: u8 = op(BPF_ST, BPF_MEM, BPF_DW);
// 64-bit arithmetic with a register (X) or an immediate (K).
pub(super) const MOV_X: u8 = op(BPF_ALU64, BPF_MOV, BPF_X);
pub(super) const MOV_K: u8 = op(BPF_ALU64, BPF_MOV, BPF_K);
pub(super) const ADD_K: u8 = op(BPF_ALU64, BPF_ADD, BPF_K);
const ADD_X: u8 = op(BPF_ALU64, BPF_ADD, BPF_X);
pub(super) const AND_K: u8 = op(BPF_ALU64, BPF_AND, BPF_K);
pub(super) const RSH_K: u8 = op(BPF_ALU64, BPF_RSH, BPF_K);
const LSH_K: u8 = op(BPF_ALU64, BPF_LSH, BPF_K);
const OR_K: u8 = op(BPF_ALU64, BPF_OR, BPF_K);
pub(super) const MUL_K: u8 = op(BPF_ALU64, BPF_MUL, BPF_K);
const DIV_K: u8 = op(BPF_ALU64, BPF_DIV, BPF_K);
const MOD_K: u8 = op(BPF_ALU64, BPF_MOD, BPF_K);
const XOR_K: u8 = op(BPF_ALU64, BPF_XOR, BPF_K);
// Jumps, calls.
const JGT_X: u8 = op(BPF_JMP, BPF_JGT, BPF_X);
pub(super) const JEQ_K: u8 = op(BPF_JMP, BPF_JEQ, BPF_K);
pub(super) const JNE_K: u8 = op(BPF_JMP, BPF_JNE, BPF_K);
pub(super) const CALL: u8 = op(BPF_JMP, BPF_CALL, BPF_K);
pub(super) const EXIT: u8 = op(BPF_JMP, BPF_EXIT, BPF_K);
/// A 64-bit immediate over two instructions.
const LD_IMM64: u8 = op(BPF_LD, BPF_IMM, BPF_DW);
/// LD_IMM64's immediate is a map fd, which the verifier turns into the
/// map's address.
const PSEUDO_MAP_FD: u8 = BPF_PSEUDO_MAP_FD as u8;
/// To network order (imm = width).
const TO_BE: u8 = op(BPF_ALU, BPF_END, BPF_TO_BE);

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
/// driver mode through a BPF link, which lives as long as the returned
/// link: nothing stays behind when the benchmark exits, however it exits.
pub fn attach_driver(prog: &mut Xdp, ifindex: u32) -> FdLink {
    lb_testbed::testrun::link_xdp(prog, ifindex, XdpMode::Driver)
}

/// Runs `prog` `repeat` times over `frame` in live-frames mode (kernel
/// 5.18: frames the program returns XDP_TX or XDP_REDIRECT for are really
/// sent, in batches of the kernel's default size), as if received on
/// `ifindex` (the calling thread's namespace): each XDP_TX really leaves
/// through `ifindex`. Returns the kernel's ns per run.
pub fn run_live(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> u32 {
    let ctx = XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..XdpMd::default() };
    let run = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx.to_bytes()),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(0),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN (live frames): {}", describe(&e)));
    u32::try_from(run.duration.as_nanos()).unwrap_or(u32::MAX)
}

/// Whether this kernel runs programs in live-frames mode: some refuse it
/// (EPERM for every program, in every namespace: seen in a Firecracker
/// VM's kernel whatever the capabilities), and the forwarding benchmark
/// cannot run there. `Err` says what the kernel answered.
pub fn live_frames_permitted() -> Result<(), String> {
    let pass = lb_testbed::testrun::load_trivial_pass();
    let frame = [0_u8; 64];
    let ctx = XdpMd { data_end: frame.len() as u32, ..XdpMd::default() };
    pass.test_run(TestRunOptions {
        data_in: Some(&frame),
        ctx_in: Some(&ctx.to_bytes()),
        repeat: 1,
        attrs: TestRunAttrs::new().xdp_live_frames(0),
        ..TestRunOptions::new()
    })
    .map(drop)
    .map_err(|e| describe(&e))
}

/// `dst = map` (the map's fd, resolved at load): two instruction slots.
pub(super) fn ld_map(dst: u8, map: &MapData) -> [u64; 2] {
    [insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map.fd().as_fd().as_raw_fd()), 0]
}

pub(super) const BPF_MAP_TYPE_ARRAY: u32 = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
pub(super) const BPF_MAP_TYPE_LRU_HASH: u32 = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
pub(super) const BPF_MAP_TYPE_HASH: u32 = bpf_map_type::BPF_MAP_TYPE_HASH as u32;

/// A new map, owned by the returned handle (and by the programs that use it).
pub(super) fn create_map(map_type: u32, key_size: u32, value_size: u32, entries: u32) -> MapData {
    let def = aya_obj::Map::new_from_params(map_type, key_size, value_size, entries, 0);
    MapData::create(def, "lb_floor", None).unwrap_or_else(|e| {
        panic!("creating a map (type {map_type}, {entries} x {value_size} bytes): {}", describe(&e))
    })
}

/// Writes `keys` and `values` (packed, `count` of each) in one system call
/// (BPF_MAP_UPDATE_BATCH, kernel 5.6): a million single updates would take
/// a second.
pub(super) fn update_batch(map: &MapData, keys: &[u8], values: &[u8], count: u32) {
    let written = sys::update_batch(map, keys, values)
        .unwrap_or_else(|e| panic!("updating {count} map entries in a batch: {e}"));
    assert_eq!(written, count, "updating {count} map entries in a batch ({written} written)");
}
