//! The load a "no dropped connection" test runs while something happens to
//! the load balancer: long-lived connections exchanging a line every 5 ms,
//! and a client opening a new connection (an HTTP request) every 10 ms.
//! Everything is bounded in count and time, and runs in the client's
//! namespace.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    harness::{EchoConn, answering_backend, http_get_at},
    netns::in_ns,
    topology::VIP,
};

/// No run lasts longer than this, whatever the test does.
const MAX_RUN: Duration = Duration::from_mins(1);
const ECHO_EVERY: Duration = Duration::from_millis(5);
const REQUEST_EVERY: Duration = Duration::from_millis(10);
const MAX_REQUESTS: usize = 5000;

/// What one long-lived connection saw.
#[derive(Debug)]
pub struct EchoReport {
    pub lines: usize,
    /// The backends that echoed its lines, in order, each once: a connection
    /// that stays whole has exactly one.
    pub backends: Vec<String>,
    /// The error that ended it, if any.
    pub error: Option<String>,
    /// The longest wait for an echo.
    pub longest_wait: Duration,
}

/// What the stream of new connections saw.
#[derive(Debug)]
pub struct RequestReport {
    pub done: usize,
    /// Failed requests: when (since the start) and why.
    pub failed: Vec<(Duration, String)>,
    /// The longest time between two successful requests' ends: a switch
    /// between load balancers shows here (a lost SYN waits for its
    /// retransmission).
    pub longest_gap: Duration,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    echoes: Vec<JoinHandle<EchoReport>>,
    requests: JoinHandle<RequestReport>,
}

impl Traffic {
    /// Opens `connections` long-lived connections and starts the request
    /// stream, from namespace `client`.
    pub fn start(client: &str, connections: usize) -> Self {
        Self::start_at(client, connections, VIP)
    }

    /// As `start`, to the services on `vip` (either family).
    pub fn start_at(client: &str, connections: usize, vip: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = (0..connections)
            .map(|_| {
                let (client, stop) = (client.to_owned(), Arc::clone(&stop));
                std::thread::spawn(move || in_ns(&client, move || echo_loop(vip, &stop)))
            })
            .collect();
        let (ns, flag) = (client.to_owned(), Arc::clone(&stop));
        let requests = std::thread::spawn(move || in_ns(&ns, move || request_loop(vip, &flag)));
        // Let every connection open and exchange a few lines first.
        std::thread::sleep(Duration::from_millis(300));
        Self { stop, echoes, requests }
    }

    /// Stops the load and checks what "no dropped connection" means: not
    /// one request failed, and every long-lived connection stayed whole on
    /// its backend with at least `min_lines` exchanged. Prints what it saw;
    /// returns the requests' report for further checks.
    pub fn finish_unbroken(self, min_lines: usize) -> RequestReport {
        let (requests, echoes) = self.finish();
        Self::check_unbroken(requests, &echoes, min_lines)
    }

    /// What `finish_unbroken` checks, of what `finish` returned.
    pub fn check_unbroken(
        requests: RequestReport,
        echoes: &[EchoReport],
        min_lines: usize,
    ) -> RequestReport {
        eprintln!(
            "new connections: {} made, {} failed {:?}, longest gap between successes {:?}",
            requests.done,
            requests.failed.len(),
            requests.failed,
            requests.longest_gap
        );
        assert_connections_whole(echoes, min_lines);
        assert!(requests.failed.is_empty(), "failed requests: {:?}", requests.failed);
        requests
    }

    /// Stops the load; what it saw.
    pub fn finish(self) -> (RequestReport, Vec<EchoReport>) {
        self.stop.store(true, Ordering::Relaxed);
        let requests = self.requests.join().expect("request stream");
        let echoes = self.echoes.into_iter().map(|h| h.join().expect("echo connection")).collect();
        (requests, echoes)
    }
}

fn echo_loop(vip: &str, stop: &AtomicBool) -> EchoReport {
    match EchoConn::open_at(vip, crate::server::ECHO_PORT) {
        Ok(conn) => keep_talking(conn, stop, ECHO_EVERY),
        Err(e) => EchoReport {
            lines: 0,
            backends: Vec::new(),
            error: Some(format!("opening: {e}")),
            longest_wait: Duration::ZERO,
        },
    }
}

/// Exchanges a line on `conn` every `every` until `stop` is set (at most
/// `MAX_RUN`) or the connection fails; what it saw.
pub fn keep_talking(mut conn: EchoConn, stop: &AtomicBool, every: Duration) -> EchoReport {
    let mut report =
        EchoReport { lines: 0, backends: Vec::new(), error: None, longest_wait: Duration::ZERO };
    let deadline = Instant::now() + MAX_RUN;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let sent = Instant::now();
        match conn.exchange(&format!("line {}", report.lines)) {
            Ok(backend) => {
                report.lines += 1;
                report.longest_wait = report.longest_wait.max(sent.elapsed());
                if report.backends.last() != Some(&backend) {
                    report.backends.push(backend);
                }
            }
            Err(e) => {
                report.error = Some(format!("after {} lines: {e}", report.lines));
                break;
            }
        }
        std::thread::sleep(every);
    }
    report
}

fn request_loop(vip: &str, stop: &AtomicBool) -> RequestReport {
    let start = Instant::now();
    let mut report = RequestReport { done: 0, failed: Vec::new(), longest_gap: Duration::ZERO };
    let mut last_success = Instant::now();
    while !stop.load(Ordering::Relaxed) && report.done < MAX_REQUESTS && start.elapsed() < MAX_RUN {
        match http_get_at(vip, 80).and_then(|body| {
            answering_backend(&body)
                .ok_or_else(|| std::io::Error::other(format!("not a backend's answer: {body:?}")))
        }) {
            Ok(_) => {
                report.longest_gap = report.longest_gap.max(last_success.elapsed());
                last_success = Instant::now();
            }
            Err(e) => report.failed.push((start.elapsed(), e.to_string())),
        }
        report.done += 1;
        std::thread::sleep(REQUEST_EVERY);
    }
    report
}

/// Prints what the long-lived connections saw and checks that none broke
/// or moved to another backend, and that each exchanged at least
/// `min_lines` lines.
fn assert_connections_whole(echoes: &[EchoReport], min_lines: usize) {
    for (i, echo) in echoes.iter().enumerate() {
        eprintln!(
            "connection {i}: {} lines, backends {:?}, longest wait {:?}, error {:?}",
            echo.lines, echo.backends, echo.longest_wait, echo.error
        );
    }
    for (i, echo) in echoes.iter().enumerate() {
        assert!(echo.error.is_none(), "connection {i} broke: {:?}", echo.error);
        assert_eq!(echo.backends.len(), 1, "connection {i} changed backend: {:?}", echo.backends);
        assert!(echo.lines >= min_lines, "connection {i} exchanged only {} lines", echo.lines);
    }
}
