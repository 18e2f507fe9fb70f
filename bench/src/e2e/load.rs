//! The load generators, run in the client's namespace: wrk for HTTP, and a
//! UDP request/response client of our own (wrk has no UDP).
use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_testbed::netns::in_ns;

use super::{HTTP_PORT, UDP_PORT};

/// A UDP request not answered within this counts as lost (an error) and
/// its socket sends the next one.
const UDP_LOSS_AFTER: Duration = Duration::from_millis(200);

/// What the load generator saw in one measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub requests: u64,
    pub secs: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// How hard wrk pushes: its threads (`-t`), open connections (`-c`) and
/// duration (`-d`).
#[derive(Clone, Copy, Debug)]
pub struct Wrk {
    pub threads: u32,
    pub connections: u32,
    pub secs: u64,
}

/// `wrk -tT -cN -dS --latency` against `http://addr/`, with
/// `Connection: close` when `close` (nginx then closes after each answer
/// and wrk reconnects: one connection per request; counted by the caller).
/// wrk's latency starts when a request is written, so it leaves out the
/// connection setup.
pub fn wrk(ns: &str, addr: &str, shape: Wrk, close: bool) -> Load {
    let Wrk { threads, connections, secs } = shape;
    let url = format!("http://{addr}:{HTTP_PORT}/");
    let (t, c, d) = (format!("-t{threads}"), format!("-c{connections}"), format!("-d{secs}s"));
    let mut args = vec!["netns", "exec", ns, "wrk", "--latency", &t, &c, &d, "--timeout", "2s"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wrk");
    // wrk stops by itself after -d; the deadline only guards against a hang.
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    while child.try_wait().expect("waiting for wrk").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wrk {args:?} still running {} s after its duration", 20);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("wrk output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Load> {
    let mut load = Load::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", t] => load.p50_us = duration_us(t)?,
            ["99%", t] => load.p99_us = duration_us(t)?,
            [n, "requests", "in", t, ..] => {
                load.requests = n.parse().ok()?;
                load.secs = duration_us(t.trim_end_matches(','))? / 1e6;
            }
            ["Socket", "errors:", ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                load.errors += words
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (load.requests > 0 && load.secs > 0.0).then_some(load)
}

/// wrk's durations: `575.00us`, `1.34ms`, `2.00s`, `1.00m`.
fn duration_us(text: &str) -> Option<f64> {
    let units = [("us", 1.0), ("ms", 1e3), ("s", 1e6), ("m", 60e6), ("h", 3600e6)];
    units.iter().find_map(|(suffix, scale)| {
        text.strip_suffix(suffix).and_then(|n| n.parse::<f64>().ok()).map(|n| n * scale)
    })
}

/// UDP request/response for `secs`: `inflight` sockets (so as many flows,
/// spread by the target like separate clients), each with one request
/// outstanding at a time; a socket sends its next request when the answer
/// to the previous one arrives (or it is lost). One thread, poll(2).
/// Socket i talks to `addrs[i % addrs.len()]`.
pub fn udp(ns: &str, addrs: &[&str], inflight: usize, secs: u64) -> Load {
    let addrs: Vec<String> = addrs.iter().map(|a| (*a).to_owned()).collect();
    in_ns(ns, move || UdpClient::new(&addrs, inflight).run(Duration::from_secs(secs)))
}

struct UdpClient {
    sockets: Vec<UdpSocket>,
    /// Per socket: the sequence number outstanding and when it was sent.
    pending: Vec<(u64, Instant)>,
    next_seq: u64,
    latencies_us: Vec<u32>,
    errors: u64,
}

impl UdpClient {
    fn new(addrs: &[String], inflight: usize) -> Self {
        let sockets = (0..inflight)
            .map(|i| {
                let s = UdpSocket::bind("0.0.0.0:0").expect("UDP client socket");
                let addr = addrs[i % addrs.len()].as_str();
                s.connect((addr, UDP_PORT)).expect("connecting the UDP socket");
                s.set_nonblocking(true).expect("non-blocking");
                s
            })
            .collect();
        let now = Instant::now();
        Self {
            sockets,
            pending: vec![(0, now); inflight],
            next_seq: 0,
            latencies_us: Vec::with_capacity(1 << 20),
            errors: 0,
        }
    }

    fn send(&mut self, i: usize) {
        self.next_seq += 1;
        self.pending[i] = (self.next_seq, Instant::now());
        // A failed send (an ICMP error reported late) shows up as a loss.
        let _ = self.sockets[i].send(format!("{:016x}", self.next_seq).as_bytes());
    }

    fn run(mut self, duration: Duration) -> Load {
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let start = Instant::now();
        for i in 0..self.sockets.len() {
            self.send(i);
        }
        while start.elapsed() < duration {
            // SAFETY: fds is a valid array of pollfd of the given length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
            if ready > 0 {
                for (i, fd) in fds.iter_mut().enumerate() {
                    if fd.revents != 0 {
                        fd.revents = 0;
                        self.receive(i);
                    }
                }
            }
            for i in 0..self.sockets.len() {
                if self.pending[i].1.elapsed() > UDP_LOSS_AFTER {
                    self.errors += 1;
                    self.send(i);
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        self.latencies_us.sort_unstable();
        Load {
            requests: self.latencies_us.len() as u64,
            secs,
            p50_us: f64::from(percentile(&self.latencies_us, 500)),
            p99_us: f64::from(percentile(&self.latencies_us, 990)),
            errors: self.errors,
        }
    }

    /// Reads what socket `i` has; an answer to its outstanding request
    /// completes it and sends the next (a late answer to a lost one is
    /// ignored).
    fn receive(&mut self, i: usize) {
        let mut buf = [0_u8; 256];
        loop {
            match self.sockets[i].recv(&mut buf) {
                Ok(n) => {
                    let seq = buf[..n]
                        .get(n.saturating_sub(16)..)
                        .and_then(|hex| std::str::from_utf8(hex).ok())
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
                    if seq == Some(self.pending[i].0) {
                        let us = self.pending[i].1.elapsed().as_micros();
                        self.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                        self.send(i);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    // ICMP unreachable and the like: a failed request.
                    self.errors += 1;
                    self.send(i);
                    return;
                }
            }
        }
    }
}

/// Nearest rank, `permille` of sorted samples.
fn percentile(sorted: &[u32], permille: usize) -> u32 {
    let last = sorted.len().saturating_sub(1);
    sorted.get((last * permille + 500) / 1000).copied().unwrap_or_default()
}

/// The backends that answer `n` HTTP requests to `addr`, one connection
/// each; retries for up to 10 s (a target that is still starting).
pub fn http_names(ns: &str, addr: &str, n: usize) -> Vec<String> {
    let addr = addr.to_owned();
    in_ns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        (0..n)
            .map(|i| {
                loop {
                    match http_get(&addr) {
                        Ok(name) => break name,
                        Err(e) if Instant::now() > deadline => {
                            panic!("GET http://{addr}/ #{i}: {e}")
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .collect()
    })
}

fn http_get(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((addr, HTTP_PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    Ok(body.trim().to_owned())
}

/// The backends that answer `n` UDP queries to `addr`, each from a new
/// socket (a new flow); each query is tried 3 times.
pub fn udp_names(ns: &str, addr: &str, n: usize) -> Vec<String> {
    let addr = addr.to_owned();
    in_ns(ns, move || {
        (0..n)
            .map(|i| {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
                socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
                let mut buf = [0_u8; 256];
                for _ in 0..3 {
                    let _ = socket.send_to(b"0000000000000000", (addr.as_str(), UDP_PORT));
                    if let Ok(n) = socket.recv(&mut buf) {
                        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                        return reply.split(' ').next().unwrap_or_default().to_owned();
                    }
                }
                panic!("UDP query #{i} to {addr}:{UDP_PORT}: no answer in 3 tries");
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://10.77.2.11/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  575.00us\n     75%  679.00us\n     90%  810.00us\n     99%    1.34ms\n  262650 requests in 5.00s, 41.58MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 5\nRequests/sec:  52525.97\n";
        let load = parse_wrk(text).expect("parsed");
        assert_eq!(load.requests, 262_650);
        assert!((load.secs - 5.0).abs() < 1e-9);
        assert!((load.p50_us - 575.0).abs() < 1e-9);
        assert!((load.p99_us - 1340.0).abs() < 1e-6);
        assert_eq!(load.errors, 11);
    }
}
