//! 256 services of 64 backends each (the limits: `MAX_SERVICES` services,
//! `MAX_BACKENDS` backends in all), written by lb-ctl's reconciler as the
//! controller would (Maglev tables and all): new and established flows
//! spread over every service against the same number on one service.
use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use lb_common::abi::{MAX_BACKENDS, MAX_SERVICES};
use lb_ctl::desired::config;
use lb_testbed::{
    fixture::{CLIENT_MAC, IF_BACKEND, IF_CLIENT, IF_CLIENT_MAC, Loaded, mac_str},
    netns::sh,
    packet::{Ipv4, TCP_ACK, TCP_SYN},
    rng::Rng,
    testrun::{self, XDP_REDIRECT},
};

use super::{
    Baseline, Part, fresh_client, handshake::Path, load_services, measure, rows, rows_json, table,
};

const SERVICES: u32 = MAX_SERVICES;
const BACKENDS: u32 = MAX_BACKENDS / MAX_SERVICES;
/// Established flows in each scenario: 16 per service when spread.
const FLOWS: u32 = 4096;

const NAMES: [&str; 4] = [
    "new flow, one service",
    "new flow, spread over 256 services",
    "established, 4096 flows of one service",
    "established, 4096 flows over 256 services",
];
const TARGETS: [Option<u32>; 4] = [Some(100), Some(100), Some(45), Some(45)];

/// Service `s`: 128 VIPs (10.77.9.1-128), ports 80 and 443.
fn service_endpoint(s: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(10, 77, 9, (s / 2) as u8 + 1), if s.is_multiple_of(2) { 80 } else { 443 })
}

/// Backend `b` of every service is 10.77.8.(b+1); each service has its own
/// port, since a backend address and port belong to one service.
fn backend_addr(b: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 8, b as u8 + 1)
}

fn backend_mac(b: u32) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x08, b as u8 + 1]
}

/// The config, as an operator would write it.
fn config_text() -> String {
    let mut text = String::from("[dataplane]\ninterfaces = [\"fx-c\", \"fx-b\"]\n");
    for s in 0..SERVICES {
        let (vip, port) = service_endpoint(s);
        let _ = write!(text, "\n[[service]]\nname = \"s{s}\"\nvip = \"{vip}\"\nport = {port}\n");
        for b in 0..BACKENDS {
            let _ = write!(
                text,
                "  [[service.backend]]\n  address = \"{}\"\n  port = {}\n",
                backend_addr(b),
                10_000 + s
            );
        }
    }
    text
}

/// Routes and permanent neighbours for the backends in the fixture namespace.
fn add_backend_neighbours(ns: &str) {
    sh(&["ip", "-n", ns, "route", "replace", "10.77.8.0/24", "dev", IF_BACKEND]);
    for b in 0..BACKENDS {
        sh(&[
            "ip",
            "-n",
            ns,
            "neigh",
            "replace",
            &backend_addr(b).to_string(),
            "lladdr",
            &mac_str(backend_mac(b)),
            "dev",
            IF_BACKEND,
            "nud",
            "permanent",
        ]);
    }
}

fn frame(client: (Ipv4Addr, u16), service: u32, flags: u8) -> Vec<u8> {
    Ipv4::tcp(client, service_endpoint(service), flags, b"").frame(IF_CLIENT_MAC, CLIENT_MAC)
}

/// Established flow `n` (client, service): spread over every service, or all on service 0.
fn established_flow(n: u32, spread: bool) -> ((Ipv4Addr, u16), u32) {
    let net = if spread { 70 } else { 71 };
    let client = (Ipv4Addr::new(10, 77, net, (n / 256) as u8 + 1), 30_000 + (n % 256) as u16);
    (client, if spread { n % SERVICES } else { 0 })
}

struct Bench {
    loaded: Loaded,
    ifindex: u32,
    fresh: usize,
    rng: Rng,
}

impl Bench {
    fn run(&self, frame: &[u8], what: &str) -> u32 {
        let out = testrun::run(&self.loaded.program, frame, self.ifindex, 1);
        assert_eq!(out.action, XDP_REDIRECT, "{what} is forwarded");
        out.duration_ns
    }

    fn new_flow(&mut self, spread: bool) -> u32 {
        self.fresh += 1;
        let service = if spread { self.rng.below(SERVICES) } else { 0 };
        self.run(&frame(fresh_client(self.fresh), service, TCP_SYN), "a new flow")
    }

    fn established(&mut self, spread: bool) -> u32 {
        let (client, service) = established_flow(self.rng.below(FLOWS), spread);
        self.run(&frame(client, service, TCP_ACK), "an established flow")
    }
}

/// Must run on a thread inside the fixture namespace `ns`, pinned to one CPU.
pub fn run(ns: &str) -> Part {
    add_backend_neighbours(ns);
    let services = config::parse(&config_text()).expect("the generated config").services;
    let start = Instant::now();
    let loaded = load_services(super::conntrack::CAPACITY, &[IF_CLIENT, IF_BACKEND], &services);
    let apply = start.elapsed();
    let mut bench =
        Bench { loaded, ifindex: Loaded::ifindex(IF_CLIENT), fresh: 0, rng: Rng::new(0x6c62_6432) };
    // The established flows enter the table as real connections do, by a
    // handshake (a bare ACK met mid-way may be forwarded without being
    // recorded).
    let path = Path {
        program: &bench.loaded.program,
        client_if: bench.ifindex,
        backend_if: Loaded::ifindex(IF_BACKEND),
    };
    for spread in [false, true] {
        for n in 0..FLOWS {
            let (client, service) = established_flow(n, spread);
            path.handshake(client, service_endpoint(service));
        }
    }
    let baseline = Baseline::new(frame(established_flow(0, false).0, 0, TCP_ACK), bench.ifindex);
    let measured = measure(&baseline, NAMES.len(), |i| match i {
        0 => bench.new_flow(false),
        1 => bench.new_flow(true),
        2 => bench.established(false),
        _ => bench.established(true),
    });
    let rows = rows(&measured, &NAMES, &TARGETS);
    let mut text = format!("{}\n{}", super::COLUMNS, table(&rows));
    let spread_cost = |a: usize, b: usize| i64::from(rows[a].net()) - i64::from(rows[b].net());
    let _ = writeln!(
        text,
        "\nspread minus one service: new flow {:+} ns, established {:+} ns; \
         program loaded and {SERVICES} x {BACKENDS} applied by lb-ctl's reconciler in {:.2} s",
        spread_cost(1, 0),
        spread_cost(3, 2),
        apply.as_secs_f64()
    );
    let json = format!(
        "{{\n    \"services\": {SERVICES},\n    \"backends_per_service\": {BACKENDS},\n    \
         \"established_flows\": {FLOWS},\n    \"load_and_apply_s\": {:.3},\n    \"scenarios\": {}\n  }}",
        apply.as_secs_f64(),
        rows_json(&rows, "    ")
    );
    Part {
        title: format!("{SERVICES} services x {BACKENDS} backends (Maglev), same rounds"),
        text,
        key: "services_256x64",
        json,
    }
}
