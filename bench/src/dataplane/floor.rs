//! The physical floor of the data plane's memory accesses on this machine:
//! tiny XDP programs (raw instructions, see `rawbpf`), each doing one kind
//! of access the connection table does, timed like the other parts. What a
//! cold miss costs differs up to 3x between machines of one kind, so the
//! connection table's figures are read against these, from the same run.
//!
//! Every row has a map of its own: one measured before another in the same
//! round warms the page-table entries of a shared map (the same 64 MiB row
//! measured twice in a round: 250-280 ns, then 170-220).
//!
//! The kernel reads its clock after a run with `rdtsc_ordered` (an lfence,
//! or rdtscp), which waits for the run's loads: a load's miss is counted
//! whole. A store's line is not waited for (it drains from the store
//! buffer), but its address must be translated before it retires: the
//! write row is about the TLB miss alone.
use aya::{maps::MapData, programs::Xdp};
use lb_testbed::testrun;

use super::{
    Baseline, COLUMNS, Part, measure,
    rawbpf::{
        ADD_K, AND_K, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, CALL, EXIT,
        HELPER_MAP_LOOKUP, HELPER_MAP_UPDATE, HELPER_PRANDOM, JEQ_K, JNE_K, LDX_DW, MOV_K, MOV_X,
        MUL_K, RSH_K, ST_DW, ST_W, STX_DW, STX_W, XDP_DROP, XDP_PASS, create_map, insn, ld_map,
        update_batch,
    },
    rows, rows_json, table,
};

/// One cache line per array value: a random index is a random line.
const LINE: u32 = 64;
/// The arrays' sizes: about L2, a few times L2, far beyond L3 (this kind
/// of machine has 1-2 MiB of L2 and tens of MiB of L3; the table's heading
/// says what this one has).
const ARRAY_MIB: [u32; 3] = [2, 8, 64];
/// The hash tables: the connection table's shape (a 16-byte `Flow` key, a
/// 16-byte `Conn` value) and its default capacity.
const CAPACITY: u32 = 1 << 20;
/// Keys present in the table the lookups go to (as in the `conntrack` part).
const PRESENT: u32 = 1_000_000;

/// Keys of the small hash tables of the service-key rows (a service table's
/// size; the keys fit in the cache, so the rows are about the key's length).
const SERVICE_KEYS: u32 = 256;
/// The services' key lengths: an IPv4 `Endpoint` and an IPv6 one.
const SERVICE_KEY_BYTES: [u32; 2] = [8, 20];

const NAMES: [&str; 13] = [
    "array, warm: the same value every run",
    "array 2 MiB, cold: a random 64-byte value, read",
    "array 8 MiB, cold: a random 64-byte value, read",
    "array 64 MiB, cold: a random 64-byte value, read",
    "array 64 MiB, two random values, both read",
    "array 64 MiB, a random value written (no read)",
    "LRU hash 1 Mi, lookup miss (1M present)",
    "LRU hash 1 Mi, lookup hit (random key of 1M present)",
    "LRU hash 1 Mi, insert a fresh key, table full (evicts)",
    "LRU hash 1 Mi, insert a fresh key, near-empty table",
    // The IPv6 handshake records' array (14 MiB) beside IPv4's (8 MiB).
    "array 16 MiB, cold: a random 64-byte value, read",
    // A service's lookup, IPv4's key beside IPv6's.
    "hash 256, lookup hit, 8-byte key (an IPv4 service's)",
    "hash 256, lookup hit, 20-byte key (an IPv6 service's)",
];

/// The smallest frame BPF_PROG_TEST_RUN takes for XDP is an Ethernet
/// header; the programs never read it.
const FRAME: [u8; 60] = [0; 60];

/// Must run on a thread pinned to one CPU (the LRU's free lists are per CPU).
pub fn run() -> Part {
    let programs = [
        // One value: the same instructions as the cold rows, index 0 always.
        one_value(1, read()),
        one_value(entries(ARRAY_MIB[0]), read()),
        one_value(entries(ARRAY_MIB[1]), read()),
        one_value(entries(ARRAY_MIB[2]), read()),
        two_values(entries(ARRAY_MIB[2])),
        one_value(entries(ARRAY_MIB[2]), insn(ST_DW, 0, 0, 0, 1)),
        hash_lookup(false),
        hash_lookup(true),
        hash_insert(CAPACITY),
        hash_insert(0),
        one_value(entries(16), read()),
        service_lookup(SERVICE_KEY_BYTES[0]),
        service_lookup(SERVICE_KEY_BYTES[1]),
    ];
    let baseline = Baseline::new(FRAME.to_vec(), 0);
    let measured = measure(&baseline, programs.len(), |i| {
        let out = testrun::run(&programs[i], &FRAME, 0, 1);
        // XDP_DROP: a hit that missed, a miss that hit, a failed insert.
        assert_eq!(out.action, testrun::XDP_PASS, "{}: not what the program expected", NAMES[i]);
        out.duration_ns
    });
    let rows = rows(&measured, &NAMES, &[None; NAMES.len()]);
    let caches = caches();
    let text = format!(
        "{COLUMNS}\ncaches of cpu0: {}\n{}",
        caches.iter().map(|(name, size)| format!("{name} {size}")).collect::<Vec<_>>().join(", "),
        table(&rows)
    );
    let caches_json: Vec<String> = caches
        .iter()
        .map(|(name, size)| format!("{{\"cache\": \"{name}\", \"size\": \"{size}\"}}"))
        .collect();
    let json = format!(
        "{{\n    \"array_value_bytes\": {LINE},\n    \"lru_capacity\": {CAPACITY},\n    \
         \"lru_present\": {PRESENT},\n    \"caches\": [{}],\n    \"scenarios\": {}\n  }}",
        caches_json.join(", "),
        rows_json(&rows, "    ")
    );
    Part {
        title: "Memory floor: single accesses from BPF programs (BPF_PROG_TEST_RUN, same rounds)"
            .to_owned(),
        text,
        key: "floor",
        json,
    }
}

/// 64-byte values in `mib` MiB (a power of two, so a mask picks an index).
fn entries(mib: u32) -> u32 {
    (mib << 20) / LINE
}

/// An LRU hash of the connection table's shape with keys 0..`present`
/// (the key's first 8 bytes; the last 8 are 0).
fn filled_table(present: u32) -> MapData {
    let table = create_map(BPF_MAP_TYPE_LRU_HASH, 16, 16, CAPACITY);
    if present > 0 {
        let keys: Vec<u8> =
            (0..u64::from(present)).flat_map(|i| [i, 0]).flat_map(u64::to_ne_bytes).collect();
        update_batch(&table, &keys, &vec![0; keys.len()], present);
    }
    table
}

/// `r0 = bpf_get_prandom_u32() & mask`, also stored as the u32 at fp-`at`
/// (an array's key).
fn random_index(mask: u32, at: i16) -> [u64; 3] {
    [
        insn(CALL, 0, 0, 0, HELPER_PRANDOM),
        insn(AND_K, 0, 0, 0, mask.cast_signed()),
        insn(STX_W, 10, 0, -at, 0),
    ]
}

/// `r0 = helper(map, fp-key)`, with `r3 = fp-value` for an update.
fn map_call(helper: i32, map: &MapData, key: i16, value: Option<i16>) -> Vec<u64> {
    let mut insns = ld_map(1, map).to_vec();
    insns.extend([insn(MOV_X, 2, 10, 0, 0), insn(ADD_K, 2, 0, 0, (-key).into())]);
    if let Some(value) = value {
        insns.extend([
            insn(MOV_X, 3, 10, 0, 0),
            insn(ADD_K, 3, 0, 0, (-value).into()),
            insn(MOV_K, 4, 0, 0, 0), // BPF_ANY, as the data plane's insert
        ]);
    }
    insns.push(insn(CALL, 0, 0, 0, helper));
    insns
}

/// The end of every program: unless `jump` (a JEQ_K or JNE_K against 0) on
/// r0 is taken, `then` and XDP_PASS; if it is, XDP_DROP.
fn verdict(jump: u8, then: &[u64]) -> Vec<u64> {
    let offset = i16::try_from(then.len() + 2).expect("a short program");
    let mut insns = vec![insn(jump, 0, 0, offset, 0)];
    insns.extend(then);
    insns.extend([
        insn(MOV_K, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV_K, 0, 0, 0, XDP_DROP),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    insns
}

/// Reads the 8 bytes at r0 (the value) into r1.
fn read() -> u64 {
    insn(LDX_DW, 1, 0, 0, 0)
}

/// The program, loaded: it holds its map, so the map's fd can go.
fn load(insns: &[u64]) -> Xdp {
    testrun::load_xdp("lb_floor", insns)
}

/// An array of `entries` 64-byte values (a power of two) of its own.
fn array(entries: u32) -> MapData {
    create_map(BPF_MAP_TYPE_ARRAY, 4, LINE, entries)
}

/// One access (`access`, on the value's address in r0) to a random value
/// of an array of `entries`. Array lookups are inlined by the verifier:
/// what the row adds to the warm one is the memory, not code.
fn one_value(entries: u32, access: u64) -> Xdp {
    let array = array(entries);
    let mut insns = random_index(entries - 1, 4).to_vec();
    insns.extend(map_call(HELPER_MAP_LOOKUP, &array, 4, None));
    insns.extend(verdict(JEQ_K, &[access]));
    load(&insns)
}

/// Two random values, both read, the loads back to back: a CPU that
/// overlaps the misses pays about one, one that does not pays two.
fn two_values(entries: u32) -> Xdp {
    let array = array(entries);
    let mut insns = random_index(entries - 1, 4).to_vec();
    insns.extend(random_index(entries - 1, 8));
    insns.extend(map_call(HELPER_MAP_LOOKUP, &array, 4, None));
    insns.push(insn(MOV_X, 6, 0, 0, 0));
    insns.extend(map_call(HELPER_MAP_LOOKUP, &array, 8, None));
    let loads = [insn(LDX_DW, 1, 6, 0, 0), read()];
    // r6 null: on to `verdict`'s XDP_DROP (past its jump, the loads, XDP_PASS).
    insns.push(insn(JEQ_K, 6, 0, i16::try_from(loads.len() + 3).expect("short"), 0));
    insns.extend(verdict(JEQ_K, &loads));
    load(&insns)
}

/// A key the lookup table lacks: a random first half, the last 8 bytes 2.
/// A miss still reads the key's bucket and the entries chained there.
fn miss_key() -> Vec<u64> {
    vec![
        insn(CALL, 0, 0, 0, HELPER_PRANDOM),
        insn(STX_W, 10, 0, -16, 0),
        insn(ST_W, 10, 0, -12, 0),
        insn(ST_DW, 10, 0, -8, 2),
    ]
}

/// A random key among the `PRESENT` (random * PRESENT >> 32).
fn hit_key() -> Vec<u64> {
    vec![
        insn(CALL, 0, 0, 0, HELPER_PRANDOM),
        insn(MUL_K, 0, 0, 0, PRESENT.cast_signed()),
        insn(RSH_K, 0, 0, 0, 32),
        insn(STX_DW, 10, 0, -16, 0),
        insn(ST_DW, 10, 0, -8, 0),
    ]
}

/// Looks a random present key (`hit`) or a missing one up in a table of
/// `PRESENT` keys; XDP_DROP if it is not found or found; a hit reads 8
/// bytes of the value.
fn hash_lookup(hit: bool) -> Xdp {
    let table = filled_table(PRESENT);
    let mut insns = if hit { hit_key() } else { miss_key() };
    insns.extend(map_call(HELPER_MAP_LOOKUP, &table, 16, None));
    insns.extend(if hit { verdict(JEQ_K, &[read()]) } else { verdict(JNE_K, &[]) });
    load(&insns)
}

/// Inserts a fresh key (64 random bits, the last 8 bytes 1: never a filled
/// key) with a zero value into a table of `filled` keys; XDP_DROP if the
/// update fails.
fn hash_insert(filled: u32) -> Xdp {
    let table = filled_table(filled);
    let mut insns = vec![
        insn(CALL, 0, 0, 0, HELPER_PRANDOM),
        insn(STX_W, 10, 0, -16, 0),
        insn(CALL, 0, 0, 0, HELPER_PRANDOM),
        insn(STX_W, 10, 0, -12, 0),
        insn(ST_DW, 10, 0, -8, 1),
        insn(ST_DW, 10, 0, -32, 0),
        insn(ST_DW, 10, 0, -24, 0),
    ];
    insns.extend(map_call(HELPER_MAP_UPDATE, &table, 16, Some(32)));
    insns.extend(verdict(JNE_K, &[]));
    load(&insns)
}

/// Looks a random one of `SERVICE_KEYS` keys of `key_bytes` up (the key's
/// first word its number, the rest zero, as an address's host part) in a
/// hash table of its own; XDP_DROP if it is missing. The kernel hashes and
/// compares the whole key: what the two rows differ by is its length.
fn service_lookup(key_bytes: u32) -> Xdp {
    let table = create_map(BPF_MAP_TYPE_HASH, key_bytes, 8, SERVICE_KEYS);
    let keys: Vec<u8> = (0..SERVICE_KEYS)
        .flat_map(|i| {
            let mut key = vec![0; key_bytes as usize];
            key[..4].copy_from_slice(&i.to_ne_bytes());
            key
        })
        .collect();
    update_batch(&table, &keys, &vec![0; 8 * SERVICE_KEYS as usize], SERVICE_KEYS);
    let at = i16::try_from(key_bytes.next_multiple_of(8)).expect("a short key");
    let mut insns = random_index(SERVICE_KEYS - 1, at).to_vec();
    // The key's other words: zero.
    insns.extend(
        (4..key_bytes)
            .step_by(4)
            .map(|off| insn(ST_W, 10, 0, -at + i16::try_from(off).expect("a short key"), 0)),
    );
    insns.extend(map_call(HELPER_MAP_LOOKUP, &table, at, None));
    insns.extend(verdict(JEQ_K, &[read()]));
    load(&insns)
}

/// cpu0's caches as sysfs names them ("L1d", "L2", ...) with their sizes.
fn caches() -> Vec<(String, String)> {
    let read = |dir: &std::path::Path, file: &str| {
        std::fs::read_to_string(dir.join(file)).map(|s| s.trim().to_owned()).unwrap_or_default()
    };
    let mut dirs: Vec<_> = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("index")));
    dirs.sort();
    dirs.iter()
        .map(|d| {
            let kind = match read(d, "type").as_str() {
                "Data" => "d",
                "Instruction" => "i",
                _ => "",
            };
            (format!("L{}{kind}", read(d, "level")), read(d, "size"))
        })
        .collect()
}
