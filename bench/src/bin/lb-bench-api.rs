//! `cargo xtask bench`, admin API: how long a backend add takes from request
//! to answer (the kernel maps written), how soon after the answer the new
//! backend gets its first packet, and the controller's memory with 100
//! services x 100 backends. Runs the release `lb-ctl` given in `$LB_CTL`.
use std::{
    fmt::Write as _,
    net::UdpSocket,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_testbed::{
    harness::{Lab, Setup, http_request, lb_ctl_bin},
    netns::{in_ns, output, sh},
    topology::VIP,
};

const CALLS: usize = 1000;
const FIRST_PACKET_ROUNDS: usize = 20;
/// How often the first-packet client sends a query.
const QUERY_EVERY: Duration = Duration::from_micros(100);
const ADMIN: &str = "127.0.0.1:9100";
/// The big controller's namespace (a veth pair of its own to attach to) and
/// admin address.
const BIG_NS: &str = "lbb-api-big";
const BIG_ADMIN: &str = "127.0.0.1:9101";

fn main() {
    lb_testbed::raise_fd_limit();
    // web1 stays out of the UDP service: the first-packet rounds add it to a new one.
    let lab = Lab::start_with("lbb-api", Setup::default(), [None, Some(1), Some(1)]);
    let lb = lab.topo.lb();

    let lab_run_dir = lab.run_dir();
    let small = in_ns(&lb, move || add_latency(&lab_run_dir, ADMIN, "web", CALLS));
    let first = first_packet(&lab);
    let big = BigController::start();
    let big_run_dir = lb_ctl::daemon::api::token::run_dir();
    let large = in_ns(BIG_NS, move || add_latency(&big_run_dir, BIG_ADMIN, "s0", CALLS));
    let (rss_kib, hwm_kib) = big.memory();
    let ready = big.ready;
    let mut big = big;
    let adopted = big.restart();
    drop(big);
    drop(lab);

    println!("\nAdmin API");
    println!(
        "  backend add, request -> answer (kernel maps written, state file synced), {CALLS} calls:"
    );
    println!("    3 services:                 {}", small.summary());
    println!("    100 services x 100 backends: {}", large.summary());
    println!(
        "    target: p99 < 5 ms. The answer waits for the map writes and an fsync of the state file."
    );
    println!(
        "  answer -> first reply from the new backend (UDP queries every 100 us), over {FIRST_PACKET_ROUNDS} rounds: median {} us, max {} us (negative: the reply came before the answer was read); a query's round trip: median {:.0} us",
        first.gap_median, first.gap_max, first.rtt_median
    );
    println!(
        "  lb-ctl run with 100 services x 100 backends: RSS {:.1} MiB (peak {:.1} MiB; target < 50 MB); start -> ready {} ms; restart adopting the pinned data plane -> ready {} ms",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0,
        ready.as_millis(),
        adopted.as_millis()
    );

    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"add_small\": {},", small.json());
    let _ = writeln!(json, "  \"add_100x100\": {},", large.json());
    let _ = writeln!(
        json,
        "  \"first_packet_us\": {{\"median\": {}, \"max\": {}, \"rtt_median\": {:.0}}},",
        first.gap_median, first.gap_max, first.rtt_median
    );
    let _ = writeln!(
        json,
        "  \"rss_100x100_kib\": {rss_kib},\n  \"rss_peak_100x100_kib\": {hwm_kib},\n  \"ready_100x100_ms\": {},\n  \"restart_adopting_100x100_ms\": {}\n}}",
        ready.as_millis(),
        adopted.as_millis()
    );
    lb_bench::write_report("LB_BENCH_API_OUT", "target/bench/api.json", &json);
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, permille: usize) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        // Nearest rank: p (in per mille) of the sorted samples.
        let last = sorted.len().saturating_sub(1);
        let i = (last * permille + 500) / 1000;
        sorted.get(i).copied().unwrap_or_default()
    }

    fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(self.percentile(500)),
            ms(self.percentile(990)),
            ms(self.percentile(1000))
        )
    }

    fn json(&self) -> String {
        let us = |d: Duration| d.as_micros();
        format!(
            "{{\"calls\": {}, \"p50_us\": {}, \"p99_us\": {}, \"max_us\": {}}}",
            self.0.len(),
            us(self.percentile(500)),
            us(self.percentile(990)),
            us(self.percentile(1000))
        )
    }
}

/// The `Authorization` header for the controller listening on `admin`: the
/// token `lb-ctl run` generated under `run_dir` (no `token_file` in the
/// bench's configs).
fn bearer(run_dir: &std::path::Path, admin: &str) -> String {
    let port = admin.rsplit(':').next().and_then(|p| p.parse().ok()).expect("admin port");
    let path = lb_ctl::daemon::api::token::generated_path(run_dir, port);
    let token = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the generated token {}: {e}", path.display()));
    format!("Bearer {}", token.trim())
}

/// `calls` times: add a backend to `service` (timed), then remove it.
/// Call inside the load balancer's namespace.
fn add_latency(run_dir: &std::path::Path, admin: &str, service: &str, calls: usize) -> Latencies {
    let mut times = Vec::with_capacity(calls);
    let auth = bearer(run_dir, admin);
    for i in 0..calls {
        let body = format!(r#"{{"address": "10.77.9.{}", "port": {}}}"#, 1 + i % 200, 8000 + i);
        let path = format!("/api/v1/services/{service}/backends");
        let start = Instant::now();
        let (status, answer) =
            http_request(admin, "POST", &path, Some(&body), Some(&auth)).expect("adding a backend");
        times.push(start.elapsed());
        assert_eq!(status, 201, "add {i}: {answer}");
        let backend = format!("{path}/10.77.9.{}:{}", 1 + i % 200, 8000 + i);
        let (status, answer) = http_request(admin, "DELETE", &backend, None, Some(&auth))
            .expect("removing the backend");
        assert_eq!(status, 200, "delete {i}: {answer}");
    }
    Latencies(times)
}

/// Microseconds: from the API's answer to the first reply from the new
/// backend (negative when the reply came first), and a query's round trip.
struct FirstPacket {
    gap_median: i64,
    gap_max: i64,
    rtt_median: f64,
}

/// Each round: a client sends UDP queries to an empty service every 100 us;
/// the backend is added through the API; the gap from the API's answer to
/// the first reply from the backend is measured (same clock: one process).
fn first_packet(lab: &Lab) -> FirstPacket {
    let lb = lab.topo.lb();
    let auth = bearer(&lab.run_dir(), ADMIN);
    let service = format!(
        r#"{{"name": "fresh", "vip": "{VIP}", "port": 6000, "protocol": "udp", "on_no_backend": "drop"}}"#
    );
    let service_auth = auth.clone();
    let (status, answer) = in_ns(&lb, move || {
        http_request(ADMIN, "POST", "/api/v1/services", Some(&service), Some(&service_auth))
            .expect("service")
    });
    assert_eq!(status, 201, "{answer}");
    let mut gaps = Vec::new();
    let mut rtts = Vec::new();
    for round in 0..FIRST_PACKET_ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn({
            let (ns, stop) = (lab.topo.client(), Arc::clone(&stop));
            move || {
                lb_testbed::netns::enter(&ns);
                let socket = UdpSocket::bind("0.0.0.0:0").expect("client socket");
                // Polled, not a receive timeout: socket timeouts round up to
                // a jiffy (milliseconds), far coarser than what is measured.
                socket.set_nonblocking(true).expect("non-blocking");
                ready_tx.send(()).expect("ready");
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut buf = [0_u8; 256];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let sent = Instant::now();
                    socket.send_to(b"first?", (VIP, 6000)).expect("send");
                    while sent.elapsed() < QUERY_EVERY {
                        if socket.recv(&mut buf).is_ok() {
                            let got = Instant::now();
                            return Some((got, got - sent));
                        }
                        std::hint::spin_loop();
                    }
                }
                None
            }
        });
        ready_rx.recv().expect("client ready");
        std::thread::sleep(Duration::from_millis(20));
        let add_auth = auth.clone();
        let answered = in_ns(&lb, move || {
            let body = r#"{"address": "10.77.2.11", "port": 5353}"#;
            let (status, answer) = http_request(
                ADMIN,
                "POST",
                "/api/v1/services/fresh/backends",
                Some(body),
                Some(&add_auth),
            )
            .expect("add");
            let at = Instant::now();
            assert_eq!(status, 201, "{answer}");
            at
        });
        let (got, rtt) = client.join().expect("client").unwrap_or_else(|| {
            stop.store(true, Ordering::Relaxed);
            panic!("round {round}: no reply within 5 s of the add")
        });
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        gaps.push(if got >= answered { micros(got - answered) } else { -micros(answered - got) });
        rtts.push(rtt);
        let del_auth = auth.clone();
        in_ns(&lb, move || {
            let path = "/api/v1/services/fresh/backends/10.77.2.11:5353";
            let (status, answer) =
                http_request(ADMIN, "DELETE", path, None, Some(&del_auth)).expect("del");
            assert_eq!(status, 200, "{answer}");
        });
    }
    gaps.sort_unstable();
    let rtts = Latencies(rtts);
    FirstPacket {
        gap_median: gaps[gaps.len() / 2],
        gap_max: gaps[gaps.len() - 1],
        rtt_median: rtts.percentile(500).as_secs_f64() * 1e6,
    }
}

/// A second `lb-ctl run`, in a namespace of its own, with 100 services of
/// 100 backends each (addresses nobody answers: no health checks).
struct BigController {
    child: Child,
    dir: std::path::PathBuf,
    pin_dir: String,
    ready: Duration,
    path: std::path::PathBuf,
}

impl BigController {
    fn start() -> Self {
        let _ = output(&["ip", "netns", "del", BIG_NS]);
        sh(&["ip", "netns", "add", BIG_NS]);
        sh(&["ip", "-n", BIG_NS, "link", "add", "big0", "type", "veth", "peer", "name", "big1"]);
        for link in ["lo", "big0", "big1"] {
            sh(&["ip", "-n", BIG_NS, "link", "set", link, "up"]);
        }
        let dir = std::env::temp_dir().join("lbb-api-big");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("directory");
        let pin_dir = "/sys/fs/bpf/lbb-api-big".to_owned();
        let mut config = format!(
            "[dataplane]\ninterfaces = [\"big0\"]\nconntrack_max = 65536\npin_path = \"{pin_dir}\"\n\n[admin]\nlisten = \"{BIG_ADMIN}\"\n"
        );
        for s in 0..100_u32 {
            let _ = write!(
                config,
                "\n[[service]]\nname = \"s{s}\"\nvip = \"10.77.1.200\"\nport = {}\n",
                10_000 + s
            );
            for b in 0..100_u32 {
                let _ = write!(
                    config,
                    "  [[service.backend]]\n  address = \"10.77.{}.{}\"\n  port = 80\n",
                    20 + s,
                    1 + b
                );
            }
        }
        let path = dir.join("big.toml");
        std::fs::write(&path, config).expect("config");
        let (child, ready) = Self::spawn(&dir, &path);
        // A few samples of the counters, as in steady state.
        std::thread::sleep(Duration::from_secs(3));
        Self { child, dir, pin_dir, ready, path }
    }

    /// Starts `lb-ctl run` on `path`; returns it and how long it took to be ready.
    fn spawn(dir: &std::path::Path, path: &std::path::Path) -> (Child, Duration) {
        let log = std::fs::File::create(dir.join("lb-ctl.log")).expect("log");
        let started = Instant::now();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{BIG_NS}"))
            .arg(lb_ctl_bin())
            .args(["run", "--config"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting the big lb-ctl");
        let ready = in_ns(BIG_NS, move || {
            let deadline = Instant::now() + Duration::from_mins(1);
            while Instant::now() < deadline {
                if http_request(BIG_ADMIN, "GET", "/readyz", None, None)
                    .is_ok_and(|(status, _)| status == 200)
                {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("the big controller was not ready within 60 s");
        });
        (child, ready)
    }

    /// Stops the controller (SIGTERM: the data plane stays) and starts it
    /// again, adopting it; returns how long the new one took to be ready.
    fn restart(&mut self) -> Duration {
        self.stop();
        let (child, ready) = Self::spawn(&self.dir, &self.path);
        self.child = child;
        ready
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// VmRSS and VmHWM in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the big controller's status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for BigController {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = output(&["ip", "netns", "del", BIG_NS]);
    }
}
