//! The backends' servers: HTTP that names the backend (`Bienvenue sur WEB2`)
//! or sends a bulk body (`GET /bytes/N`), a line echo that prefixes each
//! line with the backend's name (for long-lived connections; on 9000, 9001
//! and 9002), and a UDP echo that does the same.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 9000;
/// The line echo on more ports, for tests with several echo services: a
/// backend address and port belongs to one service.
pub const MORE_ECHO_PORTS: [u16; 2] = [9001, 9002];
pub const UDP_PORT: u16 = 5353;
/// HTTP again, on every address (the VIP too): for direct routing, where the
/// packet arrives addressed to the VIP and the port cannot be translated.
pub const DSR_HTTP_PORT: u16 = 8080;
/// The largest body `GET /bytes/N` sends.
pub const MAX_BULK: usize = 16 << 20;

/// Byte `i` of a `GET /bytes/N` body: a period of 251 (a prime), so a
/// segment lost, repeated or moved shows at once.
pub fn bulk_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// The body a backend answers HTTP with.
pub fn greeting(name: &str) -> String {
    format!("Bienvenue sur {}\n", name.to_uppercase())
}

/// Serves all three protocols on each of `addrs` (`10.77.2.11` or
/// `10.77.2.11,fd77:2::11`) until the process ends; with an IPv6 address,
/// the direct-routing HTTP listens on both families (`[::]`).
/// `health_control`: a file whose content sets how `GET /health` is answered
/// (see `HealthMode`), so tests can make a backend fail its health checks
/// while it keeps serving everything else.
pub fn serve(name: &str, addrs: &str, health_control: Option<PathBuf>) -> std::io::Result<()> {
    let addrs: Vec<std::net::IpAddr> = addrs
        .split(',')
        .map(|a| a.parse().map_err(|e| std::io::Error::other(format!("{a:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    let body = greeting(name);
    let health = Arc::new(Health { control: health_control, flap: AtomicBool::new(false) });
    let http = |listener: TcpListener| {
        let (body, health) = (body.clone(), Arc::clone(&health));
        thread::spawn(move || accept(&listener, move |s| answer_http(s, &body, &health)));
    };
    let echo = |listener: TcpListener| {
        let prefix = name.to_owned();
        thread::spawn(move || accept(&listener, move |s| echo_lines(s, &prefix)));
    };
    let mut udp = Vec::new();
    for &addr in &addrs {
        http(TcpListener::bind((addr, HTTP_PORT))?);
        for port in [ECHO_PORT].into_iter().chain(MORE_ECHO_PORTS) {
            echo(TcpListener::bind((addr, port))?);
        }
        udp.push(UdpSocket::bind((addr, UDP_PORT))?);
    }
    // `[::]` takes IPv4 connections too (as mapped addresses).
    let any = if addrs.iter().any(std::net::IpAddr::is_ipv6) { "::" } else { "0.0.0.0" };
    http(TcpListener::bind((any, DSR_HTTP_PORT))?);
    let last = udp.pop().expect("at least one address");
    for socket in udp {
        let name = name.to_owned();
        thread::spawn(move || echo_datagrams(&socket, &name));
    }
    echo_datagrams(&last, name)
}

/// Answers each datagram on `udp` with `name` and the datagram, until an
/// error.
fn echo_datagrams(udp: &UdpSocket, name: &str) -> std::io::Result<()> {
    // Room for any datagram (65,507 bytes of payload), so a large one is
    // echoed whole.
    let mut buf = vec![0_u8; 65_536];
    loop {
        let (n, peer) = udp.recv_from(&mut buf)?;
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = udp.send_to(&reply, peer);
    }
}

fn accept(listener: &TcpListener, handler: impl Fn(TcpStream) + Clone + Send + 'static) {
    for stream in listener.incoming().flatten() {
        let handler = handler.clone();
        thread::spawn(move || handler(stream));
    }
}

/// How `GET /health` is answered, read from the control file on each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthMode {
    /// 200 with the greeting (also when there is no control file).
    Ok,
    /// 500.
    Error,
    /// 200 with a body that lacks the greeting.
    WrongBody,
    /// Accepts, reads the request, never answers.
    Silent,
    /// Alternates 200 and 500.
    Flap,
}

impl HealthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "500",
            Self::WrongBody => "wrong",
            Self::Silent => "silent",
            Self::Flap => "flap",
        }
    }

    fn read(control: Option<&PathBuf>) -> Self {
        let text = control.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        [Self::Error, Self::WrongBody, Self::Silent, Self::Flap]
            .into_iter()
            .find(|m| text.trim() == m.as_str())
            .unwrap_or(Self::Ok)
    }
}

struct Health {
    control: Option<PathBuf>,
    flap: AtomicBool,
}

impl Health {
    /// Appends how a `GET /health` was answered (`HealthMode::as_str`) and
    /// when (Unix microseconds) to the answers file next to the control
    /// file: what the tests read to know which probes arrived, when, and
    /// what each got.
    fn record(&self, mode: HealthMode) {
        let Some(control) = &self.control else { return };
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let line = format!("{} {at}\n", mode.as_str());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(answers_path(control))
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// Where a backend with health control file `control` records its answers.
pub fn answers_path(control: &std::path::Path) -> PathBuf {
    control.with_extension("answers")
}

fn answer_http(mut stream: TcpStream, body: &str, health: &Health) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0_u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if let Some(len) = bulk_request(&request) {
        send_bulk(stream, len);
        return;
    }
    let (status, body) = if request.starts_with(b"GET /health ") {
        let mode = match HealthMode::read(health.control.as_ref()) {
            HealthMode::Flap if health.flap.fetch_xor(true, Ordering::Relaxed) => HealthMode::Error,
            HealthMode::Flap => HealthMode::Ok,
            other => other,
        };
        health.record(mode);
        match mode {
            HealthMode::Error => ("500 Internal Server Error", "oops\n"),
            HealthMode::WrongBody => ("200 OK", "It works\n"),
            HealthMode::Silent => {
                thread::sleep(Duration::from_secs(30));
                return;
            }
            HealthMode::Ok | HealthMode::Flap => ("200 OK", body),
        }
    } else {
        ("200 OK", body)
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// `GET /bytes/N` (N at most `MAX_BULK`): a body of N bytes of `bulk_byte`.
fn bulk_request(request: &[u8]) -> Option<usize> {
    let rest = request.strip_prefix(b"GET /bytes/")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let len: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    (len <= MAX_BULK).then_some(len)
}

fn send_bulk(mut stream: TcpStream, len: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut chunk = Vec::with_capacity(64 * 1024);
    let mut sent = 0;
    while sent < len {
        chunk.clear();
        chunk.extend((sent..len.min(sent + 64 * 1024)).map(bulk_byte));
        if stream.write_all(&chunk).is_err() {
            return;
        }
        sent += chunk.len();
    }
}

fn echo_lines(stream: TcpStream, name: &str) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writer.write_all(format!("{name} {line}\n").as_bytes()).is_err() {
            return;
        }
    }
}
