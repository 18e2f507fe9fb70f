//! `cargo xtask bench dataplane`: the data plane's cost per packet, measured
//! with BPF_PROG_TEST_RUN in a namespace with a real FIB (the fixtures'
//! one), then with 1M live flows and with 256 services x 64 backends; and
//! the packets per second one core forwards through veth in driver mode.
//!
//! Every sample is one `repeat = 1` run (the program rewrites its buffer, and
//! with `repeat > 1` the kernel would rerun it on its own output). A round
//! is the trimmed mean of many samples; each figure is the median of several
//! rounds, net of a trivial XDP_PASS program measured in the same rounds.
//!
//! `lb-bench [per-packet] [conntrack] [services] [forward]` runs only those
//! parts (all by default).
use std::{fmt::Write as _, net::Ipv4Addr};

use lb_common::abi::{Flow, PROTO_TCP};
use lb_tests::{
    bench_dataplane::{
        self, BENCH_NS, Baseline, Part, ROUNDS, Row, SAMPLES, conntrack, forward, fresh_client,
        load_average, measure, pin_to_cpu, rows, rows_json, services, table,
    },
    fixture::{
        CLIENT, CLIENT_MAC, FixtureNs, IF_BACKEND, IF_BACKEND_MAC, IF_CLIENT, IF_CLIENT_MAC,
        LB_CLIENT_SIDE, Loaded, VIP, VIP_SCHEDULERS, WEB_MACS, WEB1,
    },
    netns::in_ns,
    packet::{Ipv4, TCP_ACK, TCP_SYN},
    testrun::{self, XDP_PASS, XDP_REDIRECT},
};

const NAMES: [&str; 9] = [
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
];
const TARGETS: [Option<u32>; 9] = [
    Some(100),
    Some(100),
    Some(45),
    Some(45),
    Some(10),
    Some(120),
    Some(120),
    Some(120),
    Some(120),
];

/// The port of the fixture service with each scheduler (rr, wrr, sh, lc).
const SCHEDULER_PORTS: [u16; 4] = [81, 82, 83, 84];

const PARTS: [&str; 4] = ["per-packet", "conntrack", "services", "forward"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bad) = args.iter().find(|a| !PARTS.contains(&a.as_str())) {
        eprintln!("lb-bench: unknown part {bad}; parts: {}", PARTS.join(" "));
        std::process::exit(2);
    }
    let wanted = move |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    let load_before = load_average();
    let mut per_packet = None;
    let mut parts: Vec<Part> = Vec::new();
    if ["per-packet", "conntrack", "services"].iter().any(|p| wanted(p)) {
        let ns = FixtureNs::create(BENCH_NS);
        let (p, conntrack, services) = {
            let wanted = wanted.clone();
            in_ns(&ns.name, move || {
                pin_to_cpu(1);
                let per_packet = wanted("per-packet").then(measure_per_packet);
                let conntrack = wanted("conntrack").then(conntrack::run);
                let services = wanted("services").then(|| services::run(BENCH_NS));
                (per_packet, conntrack, services)
            })
        };
        drop(ns);
        per_packet = p;
        parts.extend(conntrack.into_iter().chain(services));
    }
    if wanted("forward") {
        parts.push(forward::run());
    }
    report(per_packet.as_deref(), &parts, &load_before);
}

/// The first table: the fixture config, a 1 Mi-entry connection table.
fn measure_per_packet() -> Vec<Row> {
    let mut loaded = Loaded::new(1 << 20);
    let client_if = Loaded::ifindex(IF_CLIENT);
    let backend_if = Loaded::ifindex(IF_BACKEND);

    let established = Ipv4::tcp((Ipv4Addr::new(10, 77, 1, 10), 40_000), (VIP, 80), TCP_ACK, b"")
        .frame(IF_CLIENT_MAC, CLIENT_MAC);
    let reply = Ipv4::tcp((WEB1, 8080), (Ipv4Addr::new(10, 77, 1, 10), 40_000), TCP_ACK, b"")
        .frame(IF_BACKEND_MAC, WEB_MACS[0]);
    let non_vip =
        Ipv4::tcp((Ipv4Addr::new(10, 77, 1, 10), 40_000), (LB_CLIENT_SIDE, 22), TCP_SYN, b"")
            .frame(IF_CLIENT_MAC, CLIENT_MAC);
    let repeated_syn =
        Ipv4::tcp((CLIENT, 40_001), (VIP, 80), TCP_SYN, b"").frame(IF_CLIENT_MAC, CLIENT_MAC);
    let repeated_syn_flow = Flow {
        src: CLIENT.octets(),
        dst: VIP.octets(),
        sport: 40_001,
        dport: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    // Put the established flow in the connection table.
    assert_eq!(testrun::run(loaded.prog_fd, &established, client_if, 1).action, XDP_REDIRECT);

    let baseline = Baseline::new(established.clone(), client_if);
    let mut fresh = 0_usize;
    let measured = measure(&baseline, NAMES.len(), |i| {
        let (frame, ingress) = match i {
            0 => {
                fresh += 1;
                (
                    Ipv4::tcp(fresh_client(fresh), (VIP, 80), TCP_SYN, b"")
                        .frame(IF_CLIENT_MAC, CLIENT_MAC),
                    client_if,
                )
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
            other => {
                fresh += 1;
                let port = SCHEDULER_PORTS[other - 5];
                (
                    Ipv4::tcp(fresh_client(fresh), (VIP_SCHEDULERS, port), TCP_SYN, b"")
                        .frame(IF_CLIENT_MAC, CLIENT_MAC),
                    client_if,
                )
            }
        };
        let expected = if i == 4 { XDP_PASS } else { XDP_REDIRECT };
        let out = testrun::run(loaded.prog_fd, &frame, ingress, 1);
        assert_eq!(out.action, expected, "{}", NAMES[i]);
        out.duration_ns
    });
    rows(&measured, &NAMES, &TARGETS)
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
        bench_dataplane::json_str(load_before),
        bench_dataplane::json_str(&load_after)
    );
    let _ = write!(json, "  \"rounds\": {ROUNDS},\n  \"samples_per_round\": {SAMPLES}");
    if let Some(rows) = per_packet {
        println!(
            "\nCost per packet (BPF_PROG_TEST_RUN, repeat = 1; median of {ROUNDS} rounds, each the 98% trimmed mean of {SAMPLES} samples)\n"
        );
        print!("{}", table(rows));
        let _ = write!(json, ",\n  \"scenarios\": {}", rows_json(rows, "  "));
    }
    for part in parts {
        println!("\n{}\n", part.title);
        print!("{}", part.text);
        let _ = write!(json, ",\n  \"{}\": {}", part.key, part.json);
    }
    json.push_str("\n}\n");
    println!();
    lb_tests::write_bench_report("LB_BENCH_OUT", "target/bench/dataplane.json", &json);
}
