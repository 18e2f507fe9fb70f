//! `cargo xtask bench dataplane`: the data plane's cost per packet, measured
//! with BPF_PROG_TEST_RUN in a namespace with a real FIB (the fixtures'
//! one), then with 1M live flows and with 256 services x 64 backends; the
//! floor under those figures (a cold memory access, a hash lookup, an LRU
//! insert, each from a tiny BPF program); and the packets per second one
//! core forwards through veth in driver mode.
//!
//! Every sample is one `repeat = 1` run (the program rewrites its buffer, and
//! with `repeat > 1` the kernel would rerun it on its own output). A round
//! sums its samples up three ways (the mean without the slowest 2%, the
//! mean, the 99th percentile); each figure is the median of several rounds,
//! net of the same statistic of a trivial XDP_PASS program measured in the
//! same rounds.
//!
//! `lb-bench [per-packet] [conntrack] [services] [floor] [forward]` runs
//! only those parts (all by default). `LB_EBPF_OBJECT=FILE` loads that XDP
//! object instead of the built-in one (see `lb_testbed::fixture::ebpf_object`);
//! `lb-bench compare --base A.json... --new B.json...` compares runs'
//! reports (`cargo xtask bench ab`).
use std::{fmt::Write as _, net::Ipv4Addr};

use lb_bench::dataplane::{
    self, BENCH_NS, Baseline, COLUMNS, Part, ROUNDS, Row, SAMPLES, conntrack, expiry, flood, floor,
    forward, fresh_client,
    handshake::{self, Path},
    load_average, measure_groups, pin_to_cpu, rawbpf, rows, rows_json, services, table,
};
use lb_common::{
    abi::{Flow, PROTO_TCP, handshake_slot},
    addr::Addr,
};
use lb_testbed::{
    fixture::{
        CLIENT, CLIENT_MAC, FixtureNs, IF_BACKEND, IF_BACKEND_MAC, IF_CLIENT, IF_CLIENT_MAC,
        LB_CLIENT_SIDE, Loaded, VIP, VIP_BENCH, VIP_PERSIST, VIP_SCHEDULERS, WEB_MACS, WEB1,
    },
    netns::in_ns,
    packet::{Ipv4, TCP_ACK, TCP_SYN},
    testrun::{self, XDP_PASS, XDP_REDIRECT},
};

const NAMES: [&str; 32] = [
    "new flow, a fresh 5-tuple per sample",
    "new flow, one SYN, entry deleted between",
    "established flow (connection table hit)",
    "backend reply (reverse NAT)",
    "non-VIP packet (passed)",
    // The other schedulers, fresh 5-tuples like the first row; the issue's
    // bar is the first row (maglev) + 20 ns.
    "new flow, scheduler rr",
    "new flow, scheduler wrr",
    "new flow, scheduler sh",
    "new flow, scheduler lc",
    // A handshake per sample (`HANDSHAKES`), each packet timed on its own.
    "SYN to a maglev service",
    "backend SYN-ACK, maglev",
    "first ACK, maglev",
    "new connection (SYN + first ACK), maglev",
    "SYN to an rr service",
    "backend SYN-ACK, rr",
    "first ACK, rr",
    "new connection (SYN + first ACK), rr",
    // IPv6 (`lb_xdp6`, tail called): the bar is the IPv4 row of
    // the same run + 10 ns.
    "IPv6 new flow, a fresh 5-tuple per sample",
    "IPv6 established flow (connection table hit)",
    "IPv6 backend reply (reverse NAT)",
    "IPv6 non-VIP packet (passed)",
    // A client address never seen before, every sample: the reverse-path
    // check asks the FIB (its answer is cached per address, so the rows
    // above, whose address changes every 50,000 flows, seldom do).
    "new flow from a new client address",
    "IPv6 new flow from a new client address",
    // Maglev services of three backends, fresh 5-tuples like the first
    // row; the bars: persistence + 40 ns, max_conns + 20 ns,
    // allowed_sources + 10 ns over the first row.
    "new flow, persistence on, client unknown",
    "new flow, persistence on, client's network known (/24)",
    "new flow, max_conns on (below the limit)",
    "new flow, allowed_sources on (4 prefixes, allowed)",
    // Full NAT (`lb_fnat`, tail called; a Maglev service of three
    // backends): the bar is end to end, against HAProxy.
    "full-NAT new flow, a fresh 5-tuple per sample",
    "full-NAT established flow",
    "full-NAT backend reply",
    // Fresh 5-tuples like the first row and IPv6's, chosen so that their
    // handshake records fall in 1,024 slots (`WARM_SLOTS`) that stay
    // cached: the new flow's cost without its record's cold line.
    "new flow, its handshake slot warm (one of 1,024)",
    "IPv6 new flow, its handshake slot warm (one of 1,024)",
];
const TARGETS: [Option<u32>; 32] = [
    Some(100),
    Some(100),
    Some(45),
    Some(45),
    Some(10),
    Some(120),
    Some(120),
    Some(120),
    Some(120),
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    Some(140),
    Some(140),
    Some(120),
    Some(110),
    None,
    None,
    None,
    None,
    None,
];
/// The scenarios of the table: one packet each, then the handshakes (four
/// rows each: `Handshake::figures`), then IPv6's, one packet each, then
/// both families' new client addresses, then the per-service options',
/// then full NAT's, then the new flows of warm handshake slots.
const WIDTHS: [usize; 26] =
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
/// The scenarios that are handshakes.
const HANDSHAKE_SCENARIOS: std::ops::Range<usize> = 9..11;
/// The services of the handshake scenarios: the fixture's Maglev service of
/// three backends ("multi") and its rr service.
const HANDSHAKES: [(Ipv4Addr, u16); 2] = [(VIP, 443), (VIP_SCHEDULERS, SCHEDULER_PORTS[0])];

/// The port of the fixture service with each scheduler (rr, wrr, sh, lc).
const SCHEDULER_PORTS: [u16; 4] = [81, 82, 83, 84];

const PARTS: [&str; 6] = ["per-packet", "conntrack", "expiry", "services", "floor", "forward"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "compare") {
        compare(&args[1..]);
        return;
    }
    if let Some(bad) = args.iter().find(|a| !PARTS.contains(&a.as_str())) {
        eprintln!("lb-bench: unknown part {bad}; parts: {}", PARTS.join(" "));
        std::process::exit(2);
    }
    let wanted = move |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    let load_before = load_average();
    let mut per_packet = None;
    let mut parts: Vec<Part> = Vec::new();
    if ["per-packet", "conntrack", "expiry", "services"].iter().any(|p| wanted(p)) {
        let ns = FixtureNs::create(BENCH_NS);
        let (p, conntrack, expiry, services) = {
            let wanted = wanted.clone();
            in_ns(&ns.name, move || {
                pin_to_cpu(1);
                let per_packet = wanted("per-packet").then(measure_per_packet);
                let conntrack = wanted("conntrack").then(conntrack::run);
                let expiry = wanted("expiry").then(expiry::run);
                let services = wanted("services").then(|| services::run(BENCH_NS));
                (per_packet, conntrack, expiry, services)
            })
        };
        drop(ns);
        per_packet = p;
        parts.extend(conntrack.into_iter().chain(expiry).chain(services));
    }
    if wanted("floor") {
        // No namespace: the programs touch no interface.
        let floor = std::thread::spawn(|| {
            pin_to_cpu(1);
            floor::run()
        });
        parts.push(floor.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
    }
    if wanted("forward") {
        match rawbpf::live_frames_permitted() {
            Ok(()) => parts.push(forward::run()),
            Err(e) => eprintln!(
                "forward: not run: this kernel refuses BPF_PROG_TEST_RUN in live-frames mode \
                 ({e}), which the forwarding benchmark sends its traffic with"
            ),
        }
    }
    report(per_packet.as_deref(), &parts, &load_before);
}

/// `compare --base A.json... --new B.json...` (see `dataplane::compare`).
fn compare(args: &[String]) {
    let usage = "usage: lb-bench compare --base A.json... --new B.json...";
    let (Some(b), Some(n)) =
        (args.iter().position(|a| a == "--base"), args.iter().position(|a| a == "--new"))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let side = |from: usize, to: usize| args[from + 1..to.max(from + 1)].to_vec();
    let (base, new) =
        if b < n { (side(b, n), side(n, args.len())) } else { (side(b, args.len()), side(n, b)) };
    if base.is_empty() || new.is_empty() {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    print!("{}", dataplane::compare::report(&base, &new));
}

/// The first table: the fixture config, a 1 Mi-entry connection table.
fn measure_per_packet() -> Vec<Row> {
    let mut loaded = Loaded::new(1 << 20);
    let client_if = Loaded::ifindex(IF_CLIENT);
    let backend_if = Loaded::ifindex(IF_BACKEND);

    let established = handshake::ack((CLIENT, 40_000), (VIP, 80));
    let reply = Ipv4::tcp((WEB1, 8080), (Ipv4Addr::new(10, 77, 1, 10), 40_000), TCP_ACK, b"")
        .frame(IF_BACKEND_MAC, WEB_MACS[0]);
    let non_vip =
        Ipv4::tcp((Ipv4Addr::new(10, 77, 1, 10), 40_000), (LB_CLIENT_SIDE, 22), TCP_SYN, b"")
            .frame(IF_CLIENT_MAC, CLIENT_MAC);
    let repeated_syn =
        Ipv4::tcp((CLIENT, 40_001), (VIP, 80), TCP_SYN, b"").frame(IF_CLIENT_MAC, CLIENT_MAC);
    let repeated_syn_flow = tcp_flow((CLIENT.octets(), 40_001), (VIP.octets(), 80));
    // The established flow enters the table as a real connection does (a
    // bare ACK met mid-way may be forwarded without being recorded).
    Path { program: &loaded.program, client_if, backend_if }.handshake((CLIENT, 40_000), (VIP, 80));

    trace_as_asked(&mut loaded);
    // The persistent /24 of the known-network row: one connection of it
    // (the fresh clients are 10.77.3.x, routed through the client side).
    Path { program: &loaded.program, client_if, backend_if }
        .handshake((Ipv4Addr::new(10, 77, 3, 250), 41_000), (VIP_PERSIST, 82));

    let baseline = Baseline::new(established.clone(), client_if);
    let mut fresh = 0_usize;
    // The new-address rows' own count: each takes the next address in turn.
    let mut new_addresses = 0_usize;
    // The warm-slot rows' own count of 5-tuples tried.
    let mut warm = 0_usize;
    let ipv6 = ipv6::Frames::set_up(&loaded.program, client_if, backend_if);
    let fullnat = fullnat::Frames::set_up(&loaded.program, client_if, backend_if);
    // A client's SYN to `vip`, on the client side.
    let syn = |client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16)| {
        (Ipv4::tcp(client, vip, TCP_SYN, b"").frame(IF_CLIENT_MAC, CLIENT_MAC), client_if)
    };
    let sample = |i: usize, out: &mut [u32]| {
        if HANDSHAKE_SCENARIOS.contains(&i) {
            fresh += 1;
            // Made here, not once outside: `loaded.forget` below borrows `loaded` mutably.
            let path = Path { program: &loaded.program, client_if, backend_if };
            out.copy_from_slice(&path.handshake(fresh_client(fresh), HANDSHAKES[i - 9]).figures());
            return;
        }
        let (frame, ingress) = match i {
            0 => {
                fresh += 1;
                syn(fresh_client(fresh), (VIP, 80))
            }
            1 => {
                // Outside the timed part: the SYN's entry goes, so each
                // run creates it again (warm memory, unlike 0).
                loaded.forget(&repeated_syn_flow);
                (repeated_syn.clone(), client_if)
            }
            2 => (established.clone(), client_if),
            3 => (reply.clone(), backend_if),
            4 => (non_vip.clone(), client_if),
            11 => {
                fresh += 1;
                (ipv6::fresh_syn(fresh), client_if)
            }
            12 => (ipv6.established.clone(), client_if),
            13 => (ipv6.reply.clone(), backend_if),
            14 => (ipv6.non_vip.clone(), client_if),
            15 => {
                new_addresses += 1;
                syn(new_client_address(new_addresses), (VIP, 80))
            }
            16 => {
                new_addresses += 1;
                (ipv6::new_address_syn(new_addresses), client_if)
            }
            21 => {
                fresh += 1;
                syn(fresh_client(fresh), (VIP_BENCH, fullnat::PORT))
            }
            22 => (fullnat.established.clone(), client_if),
            23 => (fullnat.reply.clone(), backend_if),
            24 => syn(warm_slot_client(&mut warm), (VIP, 80)),
            25 => (ipv6::warm_slot_syn(&mut warm), client_if),
            17..=20 => {
                fresh += 1;
                let vip = match i {
                    17 => (VIP_PERSIST, 80),
                    // Fresh clients of 10.77.3.0/24, whose network a connection recorded.
                    18 => (VIP_PERSIST, 82),
                    19 => (VIP_BENCH, 80),
                    _ => (VIP_BENCH, 81),
                };
                syn(fresh_client(fresh), vip)
            }
            other => {
                fresh += 1;
                syn(fresh_client(fresh), (VIP_SCHEDULERS, SCHEDULER_PORTS[other - 5]))
            }
        };
        let expected = if i == 4 || i == 14 { XDP_PASS } else { XDP_REDIRECT };
        let run = testrun::run(&loaded.program, &frame, ingress, 1);
        assert_eq!(run.action, expected, "{}", NAMES[i]);
        out[0] = run.duration_ns;
    };
    let only = profiled_scenario();
    let measured = measure_scenarios(&baseline, only, sample);
    let mut rows = scenario_rows(rows(&measured, &NAMES, &TARGETS), only);
    // Its own program and table (see `flood`); after the others, whose
    // rounds it would otherwise lengthen.
    if only.is_none() {
        rows.push(flood::row(
            "SYN flood then established (rr)",
            HANDSHAKES[1],
            &baseline,
            &mut fresh,
        ));
    }
    rows
}

/// The TCP flow from `src` to `dst` (address and port each).
fn tcp_flow<A: Addr>(src: (A, u16), dst: (A, u16)) -> Flow<A> {
    Flow { src: src.0, dst: dst.0, sport: src.1, dport: dst.1, proto: PROTO_TCP, _pad: [0; 3] }
}

/// The first 1,024 handshake slots (56 KiB of IPv6 records), which stay in
/// the cache while the warm-slot rows run: a new flow there pays for
/// everything but its record's cold line.
const WARM_SLOTS: u32 = 1024;

/// The warm-slot rows' clients: hosts 129 to 192 of the fresh clients'
/// network (few enough that each one's route stays cached, as a fresh
/// flow's usually is; apart from the fresh rows' hosts, whose records
/// could still be live), 64,000 ports each. Their 4,096,000 flows take
/// about 16,000 warm slots' worth of records, shared by the two rows'
/// count: about 8 to a slot for each family. A flow that comes round
/// again finds its slot taken by another (a fresh flow), not its own
/// record (a retransmitted SYN).
fn warm_client(tried: usize) -> (u8, u16) {
    (129 + (tried % 64) as u8, 1024 + ((tried / 64) % 64_000) as u16)
}

/// The next warm-slot client (after `tried`, which moves past it) whose SYN
/// to the VIP's port 80 has its handshake record in a warm slot.
fn warm_slot_client(tried: &mut usize) -> (Ipv4Addr, u16) {
    loop {
        *tried += 1;
        let (host, port) = warm_client(*tried);
        let client = Ipv4Addr::new(10, 77, 3, host);
        if handshake_slot(&tcp_flow((client.octets(), port), (VIP.octets(), 80))) < WARM_SLOTS {
            return (client, port);
        }
    }
}

/// The per-packet scenarios measured, all of them or `only` one (see
/// `profiled_scenario`), which may first run alone for a profiler.
fn measure_scenarios(
    baseline: &Baseline,
    only: Option<usize>,
    mut sample: impl FnMut(usize, &mut [u32]),
) -> dataplane::Measured {
    if only.is_none() && std::env::var_os("LB_BENCH_PROFILE_SECONDS").is_some() {
        eprintln!("lb-bench: LB_BENCH_PROFILE_SECONDS needs LB_BENCH_ONLY (ignored)");
    }
    if let Some(i) = only
        && let Some(seconds) = profile_seconds()
    {
        eprintln!("profiling: scenario {i} alone for {seconds} s");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut out = [0; 4];
        let mut runs = 0_u64;
        while std::time::Instant::now() < end {
            sample(i, &mut out[..WIDTHS[i]]);
            runs += 1;
        }
        eprintln!("profiling: done, {} samples a second", runs / seconds.max(1));
    }
    measure_groups(baseline, &WIDTHS, |i, out| {
        if only.is_some_and(|only| only != i) {
            out.fill(0);
        } else {
            sample(i, out);
        }
    })
}

/// The rows of scenario `only` (not the others' zeros), or all of them.
fn scenario_rows(rows: Vec<Row>, only: Option<usize>) -> Vec<Row> {
    let Some(i) = only else {
        return rows;
    };
    let first: usize = WIDTHS[..i].iter().sum();
    rows.into_iter().skip(first).take(WIDTHS[i]).collect()
}

/// `LB_BENCH_ONLY=N`: only scenario N (0-based, in `WIDTHS`' order) is
/// measured, and only its rows reported (the SYN flood row is left out):
/// a quick A/B of one row, or, with `LB_BENCH_PROFILE_SECONDS`, one kind
/// of packet for a profiler.
fn profiled_scenario() -> Option<usize> {
    let only = std::env::var("LB_BENCH_ONLY").ok()?;
    match only.parse() {
        Ok(i) if i < WIDTHS.len() => Some(i),
        _ => panic!("LB_BENCH_ONLY={only}: a scenario number below {}", WIDTHS.len()),
    }
}

/// `LB_BENCH_PROFILE_SECONDS=S`: with `LB_BENCH_ONLY`, its scenario runs
/// untimed for S seconds before it is measured, for a profiler to sample
/// (`perf record -a`, `tools/xdp-line-profile.py`).
fn profile_seconds() -> Option<u64> {
    let seconds = std::env::var("LB_BENCH_PROFILE_SECONDS").ok()?;
    Some(seconds.parse().unwrap_or_else(|_| {
        panic!("LB_BENCH_PROFILE_SECONDS={seconds}: a whole number of seconds")
    }))
}

/// The `n`th of 16,384 client addresses (10.77.64.0/18, routed back through
/// the client side), taken in turn: an address comes back after 16,384
/// samples of its row, each between the other rows' samples (over a
/// second), when its cached route is from an older epoch (100 ms).
fn new_client_address(n: usize) -> (Ipv4Addr, u16) {
    let [_, _, c, d] = ((n % 16_384) as u32).to_be_bytes();
    (Ipv4Addr::new(10, 77, 64 + c, d), 40_000)
}

/// `LB_BENCH_TRACE`: the packet trace while the per-packet table is
/// measured. Unset or `off`: off (what a data plane pays when nobody
/// traces). `other`: on, for a client none of the measured packets has
/// (what every other packet pays while someone traces one client). `all`:
/// on for every packet, no rate limit, a thread draining the ring buffer
/// every millisecond so that every event is sent (the worst case).
fn trace_as_asked(loaded: &mut Loaded) {
    use lb_common::trace::{TRACE_CLIENT, TraceConf};
    use lb_ctl::write::dataplane::Maps as _;
    let mode = std::env::var("LB_BENCH_TRACE").unwrap_or_default();
    let mut conf = TraceConf { on: 1, events_per_tick: u32::MAX, ..TraceConf::default() };
    match mode.as_str() {
        "" | "off" => return,
        "other" => {
            conf.flags = TRACE_CLIENT;
            conf.client[..4].copy_from_slice(&[192, 0, 2, 1]);
            (conf.client_family, conf.client_len) = (4, 32);
        }
        "all" => {}
        other => panic!("LB_BENCH_TRACE={other}: off, other or all"),
    }
    let mut tap = loaded.reconciler.maps_mut().trace_tap().expect("the trace's handle");
    tap.set(&conf).expect("switching the trace on");
    eprintln!("packet trace on ({mode})");
    if mode == "all" {
        std::thread::spawn(move || {
            let mut events = Vec::new();
            loop {
                events.clear();
                let _ = tap.read(std::time::Duration::from_millis(1), &mut events);
            }
        });
    }
}

fn report(per_packet: Option<&[Row]>, parts: &[Part], load_before: &str) {
    let load_after = load_average();
    println!(
        "\nData plane benchmark; load average before {load_before}, after {load_after} (1, 5, 15 min; 2 CPUs)"
    );
    let mut json = String::from("{\n  \"unit\": \"ns per packet\",\n");
    let _ = writeln!(
        json,
        "  \"load_average\": {{\"before\": {}, \"after\": {}}},",
        dataplane::json_str(load_before),
        dataplane::json_str(&load_after)
    );
    let _ = write!(json, "  \"rounds\": {ROUNDS},\n  \"samples_per_round\": {SAMPLES}");
    if let Some(rows) = per_packet {
        println!(
            "\nCost per packet (BPF_PROG_TEST_RUN, repeat = 1; each statistic the median of {ROUNDS} rounds of {SAMPLES} samples)\n{COLUMNS}\n"
        );
        print!("{}", table(rows));
        println!("{}", flood::note());
        let _ = write!(json, ",\n  \"scenarios\": {}", rows_json(rows, "  "));
    }
    for part in parts {
        println!("\n{}\n", part.title);
        print!("{}", part.text);
        let _ = write!(json, ",\n  \"{}\": {}", part.key, part.json);
    }
    json.push_str("\n}\n");
    println!();
    lb_bench::write_report("LB_BENCH_OUT", "target/bench/dataplane.json", &json);
}

/// The IPv6 rows' packets.
/// Full NAT's established flow and its backend's reply (the fixture's
/// `bench-fullnat`, `VIP_BENCH` port 82).
mod fullnat {
    use aya::programs::Xdp;
    use lb_bench::dataplane::handshake::{ack, destination, syn};
    use lb_testbed::{
        fixture::{BACKEND_ISN, CLIENT, CLIENT_ISN, IF_BACKEND_MAC, LB_BACKEND_SIDE, VIP_BENCH},
        packet::{Ipv4, L4, TCP_ACK, TCP_SYN},
        testrun::{self, XDP_REDIRECT},
    };

    /// The service's port.
    pub const PORT: u16 = 82;

    pub struct Frames {
        pub established: Vec<u8>,
        pub reply: Vec<u8>,
    }

    impl Frames {
        /// The frames, with the flow's handshake run first: its mapping
        /// taken, its SYN-ACK translated, its first ACK recording it.
        pub fn set_up(program: &Xdp, client_if: u32, backend_if: u32) -> Self {
            let (client, vip) = ((CLIENT, 40_002), (VIP_BENCH, PORT));
            let run = |frame: &[u8], ingress: u32, what: &str| {
                let out = testrun::run(program, frame, ingress, 1);
                assert_eq!(out.action, XDP_REDIRECT, "full NAT's {what}");
                out.frame
            };
            let out = run(&syn(client, vip), client_if, "SYN");
            let backend = destination(&out);
            let pool_port = u16::from_be_bytes([out[34], out[35]]);
            let pool = (LB_BACKEND_SIDE, pool_port);
            let segment = |flags: u8, seq: u32, ack: u32| {
                let mut p = Ipv4::tcp((backend.addr, backend.port), pool, flags, b"");
                if let L4::Tcp { seq: s, ack: a, .. } = &mut p.l4 {
                    (*s, *a) = (seq, ack);
                }
                p.frame(IF_BACKEND_MAC, backend.mac)
            };
            run(&segment(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1), backend_if, "SYN-ACK");
            let established = ack(client, vip);
            run(&established, client_if, "first ACK");
            Self { established, reply: segment(TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1) }
        }
    }
}

mod ipv6 {
    use std::net::Ipv6Addr;

    use aya::programs::Xdp;
    use lb_common::abi::handshake_slot;
    use lb_testbed::{
        fixture::{
            CLIENT_MAC, CLIENT6, IF_BACKEND_MAC, IF_CLIENT_MAC, LB_CLIENT_SIDE6, VIP6, WEB_MACS,
            WEB1_6,
        },
        packet::{L4, TCP_ACK, TCP_SYN},
        packet6::Ipv6,
        testrun::{self, XDP_REDIRECT},
    };

    pub struct Frames {
        pub established: Vec<u8>,
        pub reply: Vec<u8>,
        pub non_vip: Vec<u8>,
    }

    /// A TCP segment of `flags` with these sequence numbers.
    fn segment(from: (Ipv6Addr, u16), to: (Ipv6Addr, u16), flags: u8, seq: u32, ack: u32) -> Ipv6 {
        let mut p = Ipv6::tcp(from, to, flags, b"");
        if let L4::Tcp { seq: s, ack: a, .. } = &mut p.l4 {
            (*s, *a) = (seq, ack);
        }
        p
    }

    impl Frames {
        /// The frames, with the established flow's handshake run first (it
        /// enters the table as a real connection does).
        pub fn set_up(program: &Xdp, client_if: u32, backend_if: u32) -> Self {
            let (client, vip, web) = ((CLIENT6, 40_000), (VIP6, 80), (WEB1_6, 8080));
            let handshake = [
                (
                    segment(client, vip, TCP_SYN, 1000, 0).frame(IF_CLIENT_MAC, CLIENT_MAC),
                    client_if,
                ),
                (
                    segment(web, client, TCP_SYN | TCP_ACK, 5000, 1001)
                        .frame(IF_BACKEND_MAC, WEB_MACS[0]),
                    backend_if,
                ),
                (
                    segment(client, vip, TCP_ACK, 1001, 5001).frame(IF_CLIENT_MAC, CLIENT_MAC),
                    client_if,
                ),
            ];
            for (frame, ingress) in &handshake {
                let out = testrun::run(program, frame, *ingress, 1);
                assert_eq!(out.action, XDP_REDIRECT, "the IPv6 handshake");
            }
            Self {
                established: handshake[2].0.clone(),
                reply: segment(web, client, TCP_ACK, 5001, 1001).frame(IF_BACKEND_MAC, WEB_MACS[0]),
                non_vip: segment(client, (LB_CLIENT_SIDE6, 22), TCP_SYN, 1000, 0)
                    .frame(IF_CLIENT_MAC, CLIENT_MAC),
            }
        }
    }

    /// A SYN of the `n`th fresh IPv6 flow, numbered like IPv4's
    /// (`dataplane::fresh_client`): 50,000 ports of a client address
    /// (`fd77:3::/64`, routed back through the client side as the
    /// reverse-path check wants), then the next address.
    pub fn fresh_syn(n: usize) -> Vec<u8> {
        let host = Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, (n / 50_000) as u16 + 1);
        let port = 10_000 + (n % 50_000) as u16;
        segment((host, port), (VIP6, 80), TCP_SYN, 1000, 0).frame(IF_CLIENT_MAC, CLIENT_MAC)
    }

    /// `super::warm_slot_client`'s SYN, from `fd77:3::81` to `fd77:3::c0`.
    pub fn warm_slot_syn(tried: &mut usize) -> Vec<u8> {
        loop {
            *tried += 1;
            let (host, port) = super::warm_client(*tried);
            let host = Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, host.into());
            let flow = super::tcp_flow((host.octets(), port), (VIP6.octets(), 80));
            if handshake_slot(&flow) < super::WARM_SLOTS {
                return segment((host, port), (VIP6, 80), TCP_SYN, 1000, 0)
                    .frame(IF_CLIENT_MAC, CLIENT_MAC);
            }
        }
    }

    /// A SYN from a client address never used before (`fd77:3::1:0:0/96`).
    pub fn new_address_syn(n: usize) -> Vec<u8> {
        let host = Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 1, (n >> 16) as u16, n as u16);
        segment((host, 40_000), (VIP6, 80), TCP_SYN, 1000, 0).frame(IF_CLIENT_MAC, CLIENT_MAC)
    }
}
