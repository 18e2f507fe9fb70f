//! `cargo xtask bench`, health checks: how fast a blocked backend leaves the
//! data plane, how many backends one controller can probe over TCP, and
//! what 1000 HTTPS checks a second cost it.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use lb_common::abi::{BACKEND_DOWN, Backend, MAX_BACKENDS};
use lb_ctl::{
    daemon::health::Monitor,
    desired::model::{
        AdminState, Backend as BackendSpec, CheckTarget, HealthCheck, Probe, Protocol, Service, Tls,
    },
};
use lb_testbed::{
    harness::{FAST_CHECKS, Lab, built_bin},
    netns::{exists, in_ns, ns_sh, output, sh},
};

const DETECTION_RUNS: usize = 7;
/// fall x interval + timeout of FAST_CHECKS.
const DETECTION_BOUND: Duration = Duration::from_millis(500);
const SYNTHETIC_BACKENDS: u16 = 5000;
/// Backends probed over HTTPS once a second each: 1000 checks a second.
const HTTPS_BACKENDS: u16 = 1000;
const MEASURE: Duration = Duration::from_secs(10);

fn main() {
    lb_testbed::raise_fd_limit();
    let (detections, median) = detection();
    let capacity = capacity();
    let https = https_capacity();
    let mut json = String::from("{\n");
    let _ = writeln!(
        json,
        "  \"detection_ms\": {:?},\n  \"detection_median_ms\": {},\n  \"detection_bound_ms\": {},",
        detections.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        median.as_millis(),
        DETECTION_BOUND.as_millis()
    );
    let _ = writeln!(
        json,
        "  \"probed_backends\": {},\n  \"interval_ms\": 1000,\n  \"probes\": {},\n  \"cpu_ms\": {},\n  \"wall_ms\": {},\n  \"core_fraction\": {:.4},\n  \"cpu_us_per_probe\": {:.2},",
        SYNTHETIC_BACKENDS,
        capacity.probes,
        capacity.cpu.as_millis(),
        capacity.wall.as_millis(),
        capacity.core_fraction(),
        capacity.cpu_per_probe_us()
    );
    let _ = writeln!(
        json,
        "  \"https_backends\": {},\n  \"https_probes\": {},\n  \"https_cpu_ms\": {},\n  \"https_wall_ms\": {},\n  \"https_core_fraction\": {:.4},\n  \"https_cpu_us_per_probe\": {:.2},\n  \"load_average_at_end\": {:?}\n}}",
        HTTPS_BACKENDS,
        https.probes,
        https.cpu.as_millis(),
        https.wall.as_millis(),
        https.core_fraction(),
        https.cpu_per_probe_us(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    );
    println!("\nHealth checks");
    println!(
        "  block -> data plane stops choosing the backend: median {} ms over {DETECTION_RUNS} runs {:?} ms (bound fall x interval + timeout = {} ms)",
        median.as_millis(),
        detections.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        DETECTION_BOUND.as_millis()
    );
    println!(
        "  {} backends probed (TCP) every 1 s: {} probes in {} ms using {} ms of CPU = {:.1}% of one core (target 25%), {:.1} us of CPU per probe",
        SYNTHETIC_BACKENDS,
        capacity.probes,
        capacity.wall.as_millis(),
        capacity.cpu.as_millis(),
        capacity.core_fraction() * 100.0,
        capacity.cpu_per_probe_us()
    );
    println!(
        "  {} backends probed (HTTPS, full handshakes, verified) every 1 s: {} probes in {} ms using {} ms of CPU = {:.1}% of one core (target 50%), {:.1} us of CPU per probe",
        HTTPS_BACKENDS,
        https.probes,
        https.wall.as_millis(),
        https.cpu.as_millis(),
        https.core_fraction() * 100.0,
        https.cpu_per_probe_us()
    );
    lb_bench::write_report("LB_BENCH_HEALTH_OUT", "target/bench/health.json", &json);
}

/// Blocks web2 with an nftables rule and times how long until its entry in
/// `lb_backends` carries BACKEND_DOWN (the data plane no longer picks it).
fn detection() -> (Vec<Duration>, Duration) {
    let lab = Lab::start_with_checks("lbb", Some(&FAST_CHECKS));
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let backends = open_array::<Backend>(&format!("{}/lb_backends", lab.pin_dir));
    let web2 = Ipv4Addr::new(10, 77, 2, 12).octets();
    let id = (0..MAX_BACKENDS)
        .find(|i| backends.get(i, 0).is_ok_and(|b| b.addr == web2 && b.port == 80))
        .expect("web2:80 in lb_backends");
    let is_down = || backends.get(&id, 0).is_ok_and(|b| b.flags & BACKEND_DOWN != 0);
    let ns = lab.topo.web("web2");
    let mut runs = Vec::new();
    for run in 0..DETECTION_RUNS {
        // Vary where in the probe interval the block lands.
        std::thread::sleep(Duration::from_millis(37 * run as u64 % 200));
        ns_sh(&ns, &["nft", "add", "table", "inet", "lbbench"]);
        ns_sh(
            &ns,
            &[
                "nft", "add", "chain", "inet", "lbbench", "input", "{", "type", "filter", "hook",
                "input", "priority", "0", ";", "policy", "accept", ";", "}",
            ],
        );
        ns_sh(
            &ns,
            &["nft", "add", "rule", "inet", "lbbench", "input", "tcp", "dport", "80", "drop"],
        );
        let blocked = Instant::now();
        while !is_down() {
            assert!(blocked.elapsed() < Duration::from_secs(10), "web2 never went DOWN");
            std::thread::sleep(Duration::from_millis(2));
        }
        runs.push(blocked.elapsed());
        ns_sh(&ns, &["nft", "delete", "table", "inet", "lbbench"]);
        let unblocked = Instant::now();
        while is_down() {
            assert!(unblocked.elapsed() < Duration::from_secs(10), "web2 never came back");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut sorted = runs.clone();
    sorted.sort();
    (runs, sorted[sorted.len() / 2])
}

fn open_array<V: aya::Pod>(path: &str) -> Array<MapData, V> {
    let data = MapData::from_pin(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Array::try_from(Map::Array(data)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Capacity {
    probes: u64,
    cpu: Duration,
    wall: Duration,
}

impl Capacity {
    fn core_fraction(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn cpu_per_probe_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.probes.max(1) as f64
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills a zeroed struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &raw mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.cast_unsigned())
            + Duration::from_micros(t.tv_usec.cast_unsigned())
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `SYNTHETIC_BACKENDS` listeners in a namespace, probed over TCP every
/// second by lb-ctl's monitor on one thread; that thread's CPU time is
/// measured over `MEASURE`.
fn capacity() -> Capacity {
    const NS: &str = "lbb-synth";
    if exists(NS) {
        let _ = output(&["ip", "netns", "del", NS]);
    }
    sh(&["ip", "netns", "add", NS]);
    ns_sh(NS, &["ip", "link", "set", "lo", "up"]);
    let mut listeners = std::process::Command::new("ip")
        .args(["netns", "exec", NS])
        .arg(built_bin("lb-lab"))
        .args(["listen", "127.0.0.1", "20000", &SYNTHETIC_BACKENDS.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the synthetic backends");
    // Wait until every port listens.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listeners.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("synthetic backends");
    let result = in_ns(NS, || {
        lb_testbed::raise_fd_limit();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async { measure(&synthetic(Probe::Tcp, SYNTHETIC_BACKENDS, None)).await })
    });
    let _ = listeners.kill();
    let _ = listeners.wait();
    let _ = output(&["ip", "netns", "del", NS]);
    result
}

/// An HTTPS server on 127.0.0.1:`port` on a runtime of its own (other
/// threads than the measured one): every connection a full handshake (no
/// session is kept, no ticket issued), then `200 OK`.
fn https_server(dir: &std::path::Path, port: u16) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .map(|c| c.expect("a certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    // The checks' own provider (ring, X25519 first).
    let provider = lb_ctl::daemon::health::tls::provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    config.session_storage = std::sync::Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener =
                tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("https listener");
            let _ = ready_tx.send(());
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = [0_u8; 1024];
                    let _ = tls.read(&mut head).await;
                    let _ = tls.write_all(b"HTTP/1.0 200 OK\r\n\r\nok\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    ready.recv().expect("the https server started");
}

/// `HTTPS_BACKENDS` backends probed over HTTPS every second, certificate
/// verified against a CA file, by lb-ctl's monitor on one thread; that
/// thread's CPU time is measured over `MEASURE`. Every backend's
/// `check_port` sends its probes to one TLS server, on other threads.
fn https_capacity() -> Capacity {
    const NS: &str = "lbb-https";
    const TLS_PORT: u16 = 8443;
    if exists(NS) {
        let _ = output(&["ip", "netns", "del", NS]);
    }
    sh(&["ip", "netns", "add", NS]);
    ns_sh(NS, &["ip", "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join("lb-bench-https");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("certificates directory");
    lb_testbed::pki::make(&dir, &["127.0.0.1"]);
    let ca = dir.join("ca.pem");
    let server_dir = dir.clone();
    let result = in_ns(NS, move || {
        lb_testbed::raise_fd_limit();
        https_server(&server_dir, TLS_PORT);
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let probe = Probe::Http {
                path: "/".into(),
                expect_status: 200,
                expect_body: None,
                tls: Some(Tls { sni: None, ca_file: Some(ca), verify: true }),
            };
            measure(&synthetic(probe, HTTPS_BACKENDS, Some(TLS_PORT))).await
        })
    });
    let _ = output(&["ip", "netns", "del", NS]);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `count` backends on 127.0.0.1 from port 20000, probed with `probe` every
/// second (on `check_port` if given).
fn synthetic(probe: Probe, count: u16, check_port: Option<u16>) -> Service {
    Service {
        name: "synthetic".into(),
        vip: Ipv4Addr::new(10, 77, 9, 100).into(),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: lb_ctl::desired::model::Scheduler::Maglev,
        forwarding: lb_ctl::desired::model::Forwarding::Nat,
        reject: false,
        health: Some(HealthCheck {
            probe,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            target: CheckTarget { address: None, port: check_port },
        }),
        slow_start: Duration::ZERO,
        persistence: None,
        allowed_sources: Vec::new(),
        snat: lb_ctl::desired::model::Snat::default(),
        backends: (0..count)
            .map(|i| BackendSpec {
                address: Ipv4Addr::LOCALHOST.into(),
                port: 20000 + i,
                weight: 1,
                state: AdminState::Active,
                check: CheckTarget::default(),
                backup: false,
                slow_start: None,
                max_conns: 0,
            })
            .collect(),
    }
}

/// `service`'s backends probed by a monitor on this thread: warmed up
/// (every backend probed once or twice), then this thread's CPU time over
/// `MEASURE`. Every probe must pass.
async fn measure(service: &Service) -> Capacity {
    let mut monitor = Monitor::default();
    monitor.sync(std::slice::from_ref(service));
    let _ = tokio::time::timeout(Duration::from_secs(3), drain(&mut monitor)).await;
    let (seen, cpu, wall) = (monitor.results_seen(), thread_cpu(), Instant::now());
    let _ = tokio::time::timeout(MEASURE, drain(&mut monitor)).await;
    let probes = monitor.results_seen() - seen;
    let down = monitor.down();
    let why = down.first().and_then(|key| monitor.status(key)).and_then(|(_, last)| last.cloned());
    assert!(down.is_empty(), "{} synthetic backends failed their probes: {why:?}", down.len());
    Capacity { probes, cpu: thread_cpu().saturating_sub(cpu), wall: wall.elapsed() }
}

async fn drain(monitor: &mut Monitor) {
    loop {
        monitor.next_transition().await;
    }
}
