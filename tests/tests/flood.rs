//! A SYN flood end to end: 200,000 spoofed flows at the VIP's services must
//! not cost an established connection its place. The connection table is
//! sized for `dataplane.conntrack_max` flows (here its minimum, 1024); a
//! flow that loses its entry is placed again by the scheduler of the day,
//! which moves it (and the backend it lands on resets it) when its backend
//! is drained or its service is `rr`. So three connections are held
//! through the flood, one of each kind: on an `rr` service, on a backend
//! drained after the connection opened, and on a `maglev` service (which
//! would place it again where it was: the control). Meanwhile new
//! connections keep opening at the services, and nearly all must succeed.
//! Run as root, one test at a time (`cargo xtask test` does both).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_testbed::{
    counters,
    harness::{EchoConn, Lab, Setup},
    netns::{in_ns, ns_sh},
    packet::{Ipv4, L4, Mac, TCP_ACK, TCP_SYN},
    rng::Rng,
    server::{ECHO_PORT, HTTP_PORT, MORE_ECHO_PORTS},
    topology::{BACKENDS, CLIENT_ADDR, VIP},
    traffic::{EchoReport, keep_talking},
};
use lb_tests::wire::{Blast, blast, mac_of, veth_drops};

/// A line echo service on the VIP.
#[derive(Clone, Copy, Debug)]
struct Svc {
    name: &'static str,
    port: u16,
}

/// The harness's own echo service, `maglev` (the default scheduler).
const MAGLEV: Svc = Svc { name: "echo", port: ECHO_PORT };
/// Added here (`services`), on the backends' other echo ports: a backend
/// address and port belongs to one service.
const RR: Svc = Svc { name: "echo-rr", port: MORE_ECHO_PORTS[0] };
/// `maglev`; the backend its held connection lands on is drained.
const DRAINED: Svc = Svc { name: "echo-drain", port: MORE_ECHO_PORTS[1] };
const HELD: [Svc; 3] = [MAGLEV, RR, DRAINED];
/// The ports the flood goes to: every TCP service of the VIP.
const FLOODED_PORTS: [u16; 4] = [HTTP_PORT, MAGLEV.port, RR.port, DRAINED.port];

const CONNTRACK_MAX: u32 = 1024;
/// Spoofed flows.
const FLOWS: usize = 200_000;
/// Where the spoofed sources are: beyond the client's side, where no
/// address of the lab is. The load balancer gets a route there through
/// the client (else its reverse-path check would drop the flood as
/// `drop_reverse_path` before it reached the table).
const SPOOFED_NET: &str = "10.77.128.0/17";
/// The first spoofed address and how many there are (10.77.128.1 to
/// 10.77.255.254).
const SPOOFED_FIRST: u32 = u32::from_be_bytes([10, 77, 128, 1]);
const SPOOFED_HOSTS: u32 = (1 << 15) - 2;
/// No flood lasts longer than this, whatever the machine's speed.
const FLOOD_LIMIT: Duration = Duration::from_secs(20);
/// The new connections opened during the flood: the first
/// `LEGIT_ROUND` one every `LEGIT_EVERY`, the gap doubling after each
/// round, so that they keep coming through a flood of any length up to
/// `FLOOD_LIMIT` and number at most `MAX_LEGIT`. Each takes an entry of its
/// own once established: together with the held ones they stay well
/// within the table.
const LEGIT_EVERY: Duration = Duration::from_millis(5);
const LEGIT_ROUND: usize = 100;
const MAX_LEGIT: usize = 500;
/// Fewer would make the success ratio say little.
const MIN_LEGIT: usize = 20;
/// The share of new connections that must succeed during the flood.
const LEGIT_SUCCESS: f64 = 0.95;
/// How often an active held connection exchanges a line.
const ACTIVE_EVERY: Duration = Duration::from_millis(10);
/// After the flood, before the held connections speak again: the rings
/// drain and the data plane's clock (100 ms ticks) moves on, so no
/// per-CPU cache answers for the table.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug)]
enum Flood {
    /// Each SYN followed by an ACK of its flow (a random ack number).
    SynThenAck,
    /// One SYN a flow.
    BareSyn,
    /// Each SYN sent twice, as a sender that retransmits would.
    RepeatedSyn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Silent from just before the flood until after it.
    Idle,
    /// Exchanging a line every `ACTIVE_EVERY` through the flood.
    Active,
}

#[test]
fn idle_connections_survive_a_flood_of_spoofed_syns_and_acks() {
    run("lbtf1", Flood::SynThenAck, Held::Idle);
}

/// One SYN a flow, nothing more: the flood at the SYN path alone (a SYN
/// leaves only a handshake record; written into the table, these entries
/// would take the held connections' places in their sets).
#[test]
fn idle_connections_survive_a_flood_of_bare_spoofed_syns() {
    run("lbtf2", Flood::BareSyn, Held::Idle);
}

/// Bare SYNs again, each sent twice: a retransmitted SYN finds its record
/// (`rr` goes where the first went) and records nothing either.
#[test]
fn idle_connections_survive_a_flood_of_repeated_spoofed_syns() {
    run("lbtf4", Flood::RepeatedSyn, Held::Idle);
}

#[test]
fn active_connections_survive_a_flood_of_spoofed_syns_and_acks() {
    run("lbtf3", Flood::SynThenAck, Held::Active);
}

/// The `rr` and drained services, after the harness's three.
fn services() -> &'static str {
    let mut text = String::new();
    for (svc, scheduler) in [(RR, "rr"), (DRAINED, "maglev")] {
        let _ = write!(
            text,
            "\n[[service]]\nname = \"{}\"\nvip = \"{VIP}\"\nport = {}\nprotocol = \"tcp\"\nscheduler = \"{scheduler}\"\n",
            svc.name, svc.port
        );
        for (_, address) in BACKENDS {
            let _ = write!(
                text,
                "  [[service.backend]]\n  address = \"{address}\"\n  port = {}\n  weight = 1\n",
                svc.port
            );
        }
    }
    // `Setup` holds static text; one lab per test.
    text.leak()
}

fn address_of(backend: &str) -> &'static str {
    BACKENDS.iter().find(|(n, _)| *n == backend).map(|(_, a)| *a).expect("a lab backend")
}

/// A held connection and the backend it was on before the flood.
struct HeldConn {
    svc: Svc,
    backend: String,
    echo: EchoConn,
}

/// What became of a held connection.
struct Outcome {
    svc: Svc,
    backend: String,
    report: EchoReport,
}

/// What the new connections during the flood saw.
struct Legit {
    tried: usize,
    /// Why each failed one failed.
    failed: Vec<String>,
}

fn run(prefix: &str, flood: Flood, held: Held) {
    let setup =
        Setup { conntrack_max: Some(CONNTRACK_MAX), tables: services(), ..Setup::default() };
    let lab = Lab::start_prepared(prefix, setup, [Some(1); 3], |topo| {
        ns_sh(&topo.lb(), &["ip", "route", "add", SPOOFED_NET, "via", CLIENT_ADDR]);
    });
    let conns = hold(&lab);
    let frames = flood_frames(&lab, flood);
    let before = Snapshot::take(&lab);
    let (sent, legit, outcomes) = flood_through(&lab, frames, held, conns);
    let after = Snapshot::take(&lab);

    eprintln!(
        "flood ({flood:?}): {} of {} frames sent in {:.2} s: {:.0} packets/s",
        sent.sent,
        frames_of(flood),
        sent.elapsed.as_secs_f64(),
        sent.per_second()
    );
    let arrived = after.diff(&before, &lab);
    let succeeded = legit.tried - legit.failed.len();
    let ratio = succeeded as f64 / legit.tried.max(1) as f64;
    eprintln!(
        "new connections during the flood: {succeeded} of {} succeeded ({:.1} %); failures: {:?}",
        legit.tried,
        100.0 * ratio,
        legit.failed
    );
    let mut broken = broken(&outcomes);
    assert!(
        sent.sent == frames_of(flood) && arrived >= FLOWS as u64,
        "the flood did not arrive: {} of {} frames sent, {arrived} packets reached the services",
        sent.sent,
        frames_of(flood)
    );
    assert!(legit.tried >= MIN_LEGIT, "only {} new connections during the flood", legit.tried);
    if ratio < LEGIT_SUCCESS {
        broken.push(format!(
            "only {succeeded} of {} new connections succeeded during the flood ({:.1} % < {:.0} %)",
            legit.tried,
            100.0 * ratio,
            100.0 * LEGIT_SUCCESS
        ));
    }
    assert!(
        broken.is_empty(),
        "through a flood of {FLOWS} spoofed flows ({flood:?}):\n{}",
        broken.join("\n")
    );
}

/// Opens the held connections (one on each of `HELD`), drains the backend
/// of the one on `DRAINED`, and checks that each still answers from its
/// backend.
fn hold(lab: &Lab) -> Vec<HeldConn> {
    let mut conns = in_ns(&lab.topo.client(), || {
        HELD.into_iter()
            .map(|svc| {
                let mut echo = EchoConn::open_port(svc.port)
                    .unwrap_or_else(|e| panic!("opening the connection to {}: {e}", svc.name));
                let backend = echo
                    .exchange("hello")
                    .unwrap_or_else(|e| panic!("the first line on {}: {e}", svc.name));
                HeldConn { svc, backend, echo }
            })
            .collect::<Vec<_>>()
    });
    let drained = conns.iter().find(|c| c.svc.name == DRAINED.name).expect("held").backend.clone();
    let at = format!("{}:{}", address_of(&drained), DRAINED.port);
    lab.ctl_ok(&["backend", "drain", DRAINED.name, &at]);
    for c in &mut conns {
        let now = c
            .echo
            .exchange("before the flood")
            .unwrap_or_else(|e| panic!("{} before the flood: {e}", c.svc.name));
        assert_eq!(now, c.backend, "{} moved before the flood", c.svc.name);
    }
    let held: Vec<String> =
        conns.iter().map(|c| format!("{} on {}", c.svc.name, c.backend)).collect();
    eprintln!("held: {}; {drained} drained in {}", held.join(", "), DRAINED.name);
    conns
}

/// Sends `frames` from the client while new connections keep opening and
/// the held connections talk (`Held::Active`) or wait (`Held::Idle`, then
/// each says a line once the flood is over).
fn flood_through(
    lab: &Lab,
    frames: Vec<Vec<u8>>,
    held: Held,
    conns: Vec<HeldConn>,
) -> (Blast, Legit, Vec<Outcome>) {
    let client = lab.topo.client();
    let stop = Arc::new(AtomicBool::new(false));
    let (talking, idle): (Vec<_>, Vec<_>) = match held {
        Held::Idle => (Vec::new(), conns),
        Held::Active => (conns, Vec::new()),
    };
    let talking: Vec<(Svc, String, JoinHandle<EchoReport>)> = talking
        .into_iter()
        .map(|c| {
            let stop = Arc::clone(&stop);
            let talk = std::thread::spawn(move || keep_talking(c.echo, &stop, ACTIVE_EVERY));
            (c.svc, c.backend, talk)
        })
        .collect();
    let legit = {
        let stop = Arc::clone(&stop);
        let ns = client.clone();
        std::thread::spawn(move || in_ns(&ns, move || legit_connections(&stop)))
    };
    let sent =
        in_ns(&client, move || blast("c0", &frames, Duration::ZERO, Instant::now() + FLOOD_LIMIT));
    std::thread::sleep(SETTLE);
    stop.store(true, Ordering::Relaxed);
    let legit = legit.join().expect("the new connections");
    let mut outcomes: Vec<Outcome> = talking
        .into_iter()
        .map(|(svc, backend, talk)| Outcome {
            svc,
            backend,
            report: talk.join().expect("a held connection"),
        })
        .collect();
    if let Some(rr) = idle.iter().find(|c| c.svc.name == RR.name) {
        let backend = rr.backend.clone();
        let probes = in_ns(&client, move || rotate_past(&backend));
        eprintln!("{} placed new connections on {probes:?}", RR.name);
    }
    outcomes.extend(idle.into_iter().map(speak_after_the_flood));
    (sent, legit, outcomes)
}

/// Prints what each held connection saw; what went wrong with them.
fn broken(outcomes: &[Outcome]) -> Vec<String> {
    let mut broken = Vec::new();
    for o in outcomes {
        let r = &o.report;
        eprintln!(
            "{} (on {}): {} lines, backends {:?}, longest wait {:?}, error {:?}",
            o.svc.name, o.backend, r.lines, r.backends, r.longest_wait, r.error
        );
        if let Some(e) = &r.error {
            broken.push(format!("{} (on {}) broke: {e}", o.svc.name, o.backend));
        } else if r.backends != [o.backend.clone()] {
            broken.push(format!("{} (on {}) moved: {:?}", o.svc.name, o.backend, r.backends));
        } else if r.lines == 0 {
            broken.push(format!("{} (on {}) exchanged no line", o.svc.name, o.backend));
        }
    }
    broken
}

/// Frames in a flood of `FLOWS` flows.
fn frames_of(flood: Flood) -> usize {
    match flood {
        Flood::SynThenAck | Flood::RepeatedSyn => 2 * FLOWS,
        Flood::BareSyn => FLOWS,
    }
}

/// The flood, from random spoofed sources and ports to random services of
/// the VIP, in frames from the client's `c0` to the load balancer's `lb-c`.
fn flood_frames(lab: &Lab, flood: Flood) -> Vec<Vec<u8>> {
    let macs: (Mac, Mac) = (mac_of(&lab.topo.lb(), "lb-c"), mac_of(&lab.topo.client(), "c0"));
    let vip: Ipv4Addr = VIP.parse().expect("VIP");
    let mut rng = Rng::new(0x5eed_f100d);
    let mut frames = Vec::with_capacity(frames_of(flood));
    for _ in 0..FLOWS {
        let src = Ipv4Addr::from(SPOOFED_FIRST + rng.below(SPOOFED_HOSTS));
        let sport = 1024 + rng.below(64_512) as u16;
        let dport = FLOODED_PORTS[rng.below(FLOODED_PORTS.len() as u32) as usize];
        let seq = rng.next_u64() as u32;
        let mut segment = |flags, seq, ack, id| {
            let l4 = L4::Tcp { sport, dport, flags, seq, ack, window: 64_240, payload: Vec::new() };
            let mut p = Ipv4::new(src, vip, l4);
            p.id = id;
            frames.push(p.frame(macs.0, macs.1));
        };
        let id = rng.next_u64() as u16;
        segment(TCP_SYN, seq, 0, id);
        match flood {
            Flood::SynThenAck => {
                segment(TCP_ACK, seq.wrapping_add(1), rng.next_u64() as u32, id.wrapping_add(1));
            }
            Flood::RepeatedSyn => segment(TCP_SYN, seq, 0, id.wrapping_add(1)),
            Flood::BareSyn => {}
        }
    }
    frames
}

/// New connections, one line each, cycling through the held connections'
/// services until `stop` (at most `MAX_LEGIT`, at most `FLOOD_LIMIT`; see
/// `LEGIT_EVERY`).
fn legit_connections(stop: &AtomicBool) -> Legit {
    let deadline = Instant::now() + FLOOD_LIMIT;
    let mut tried = 0;
    let mut failed = Vec::new();
    while !stop.load(Ordering::Relaxed) && tried < MAX_LEGIT && Instant::now() < deadline {
        let svc = HELD[tried % HELD.len()];
        if let Err(e) = EchoConn::open_port(svc.port).and_then(|mut c| c.exchange("new")) {
            failed.push(format!("{} #{tried}: {e}", svc.name));
        }
        std::thread::sleep(LEGIT_EVERY * (1 << (tried / LEGIT_ROUND)));
        tried += 1;
    }
    Legit { tried, failed }
}

/// New connections to the `rr` service until one lands on `backend` (at
/// most one round): the rotation's next turn is then another backend, so
/// an idle connection on `backend` that has lost its entry is moved when
/// placed again, rather than landed back on `backend` by chance. Returns
/// where they landed.
fn rotate_past(backend: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..BACKENDS.len() {
        let next = EchoConn::open_port(RR.port)
            .and_then(|mut c| c.exchange("probe"))
            .unwrap_or_else(|e| panic!("a new connection to {} after the flood: {e}", RR.name));
        let done = next == backend;
        seen.push(next);
        if done {
            break;
        }
    }
    seen
}

/// An idle held connection's line after the flood.
fn speak_after_the_flood(mut c: HeldConn) -> Outcome {
    let mut report =
        EchoReport { lines: 0, backends: Vec::new(), error: None, longest_wait: Duration::ZERO };
    let sent = Instant::now();
    match c.echo.exchange("after the flood") {
        Ok(backend) => {
            report.lines = 1;
            report.backends.push(backend);
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report.longest_wait = sent.elapsed();
    Outcome { svc: c.svc, backend: c.backend, report }
}

/// The load balancer's counters at one moment.
struct Snapshot {
    counters: Vec<(&'static str, u64)>,
    /// Per flooded port: (service id, packets in, new flows).
    services: BTreeMap<u16, (u32, u64, u64)>,
    veth_drops: u64,
}

impl Snapshot {
    fn take(lab: &Lab) -> Self {
        let vip: Ipv4Addr = VIP.parse().expect("VIP");
        let services = FLOODED_PORTS
            .iter()
            .map(|&port| {
                let id = counters::service_id(&lab.pin_dir, vip, port).expect("a flooded service");
                let t = counters::service_traffic(&lab.pin_dir, id);
                (port, (id, t.in_packets, t.new_flows))
            })
            .collect();
        Self { counters: counters::read(&lab.pin_dir), services, veth_drops: veth_drops(&lab.topo) }
    }

    /// Prints what changed since `before`; returns the packets that
    /// reached the flooded services.
    fn diff(&self, before: &Self, lab: &Lab) -> u64 {
        let changed: Vec<String> = self
            .counters
            .iter()
            .zip(&before.counters)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| format!("{name} {b} -> {a} (+{})", a - b))
            .collect();
        eprintln!("load balancer counters that moved: {}", changed.join(", "));
        let mut arrived = 0;
        for (port, (id, packets, flows)) in &self.services {
            let (_, packets_before, flows_before) = before.services[port];
            arrived += packets - packets_before;
            eprintln!(
                "  service {VIP}:{port} (id {id}): +{} packets in, +{} new flows",
                packets - packets_before,
                flows - flows_before
            );
        }
        let json = lab.ctl_ok(&["stats", "--json"]);
        let stats: lb_ctl::daemon::api::view::Stats =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats --json: {e}\n{json}"));
        eprintln!(
            "  connection table (lb-ctl stats, as last published): {} of {} entries live; frames lost at the veth before XDP: {}",
            stats.conntrack.entries,
            stats.conntrack.capacity,
            self.veth_drops - before.veth_drops
        );
        arrived
    }
}
