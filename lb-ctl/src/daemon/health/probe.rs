//! One probe of one backend: a TCP connect, an HTTP GET (over TCP or TLS)
//! whose status and body are checked, a UDP datagram and its reply, or a
//! program run (`udp`, `script`). Everything a backend sends is bounded:
//! the whole probe runs under the timeout (a slow trickle times out) and at
//! most `MAX_RESPONSE` bytes are read (a huge or endless body is cut off).
//!
//! A probe that fails for a reason of this host's (no file descriptor, no
//! buffer, no local port) says nothing about the backend: it is a
//! `LocalFailure`, not a result, and must never take a backend DOWN (with
//! every probe of a thousand backends failing at once, every backend would
//! go, and every connection to them be reset).
use std::{
    fmt, io,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use regex_lite::Regex;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{script::ScriptProbe, state::CheckResult, udp::UdpProbe};

/// Most bytes of an HTTP response that are read (and searched).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// A probe, ready to run: patterns compiled, TLS set up, once per prober.
pub enum Prober {
    Tcp,
    Http(HttpProbe),
    Udp(UdpProbe),
    Script(ScriptProbe),
    /// A check this host cannot set up now (its `ca_file` became
    /// unreadable since the config was loaded): every probe is a
    /// `LocalFailure`, and the backends keep their states.
    Unusable(String),
}

/// `GET`, its expectations, and TLS if `https`.
pub struct HttpProbe {
    request: Vec<u8>,
    expect_status: u16,
    expect_body: Option<Regex>,
    tls: Option<TlsProbe>,
}

/// How an `https` probe starts TLS: its connector, and the name it sends
/// and verifies (`None`: the probed address, verified without SNI).
pub struct TlsProbe {
    pub connector: TlsConnector,
    pub name: Option<ServerName<'static>>,
}

/// A pattern the config validated; if one were invalid, nothing would match.
pub fn compiled(pattern: Option<&str>) -> Option<Regex> {
    pattern.map(|p| Regex::new(p).unwrap_or_else(|_| Regex::new("$^").expect("valid")))
}

/// Why this host could not probe (see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalCause {
    /// EMFILE, ENFILE: the process or the system is out of file descriptors.
    NoDescriptors,
    /// ENOBUFS, ENOMEM: the kernel has no memory for the socket.
    NoBuffers,
    /// EADDRNOTAVAIL: no local port is free for the connection.
    NoLocalPort,
    /// Every script slot is taken (`script::MAX_SCRIPTS` at once).
    ScriptSlots,
    /// The check cannot be set up: its `ca_file` or its program is gone
    /// or unreadable since the config was loaded.
    CheckSetup,
}

impl LocalCause {
    /// The local cause of `e`, if it has one. By errno, not by text: the
    /// `io::ErrorKind`s of these are not all stable.
    pub fn of(e: &io::Error) -> Option<Self> {
        match e.raw_os_error()? {
            libc::EMFILE | libc::ENFILE => Some(Self::NoDescriptors),
            libc::ENOBUFS | libc::ENOMEM => Some(Self::NoBuffers),
            libc::EADDRNOTAVAIL => Some(Self::NoLocalPort),
            _ => None,
        }
    }
}

impl fmt::Display for LocalCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoDescriptors => "no file descriptor left (raise the open-file limit)",
            Self::NoBuffers => "no socket buffer memory",
            Self::NoLocalPort => "no local port free",
            Self::ScriptSlots => "every script slot is taken",
            Self::CheckSetup => "the check cannot be set up",
        })
    }
}

/// A probe this host could not run: neither a success nor a failure.
#[derive(Debug)]
pub struct LocalFailure {
    pub cause: LocalCause,
    pub error: io::Error,
}

/// Why a probe failed; the wording goes to the log and the last check result.
#[derive(Debug)]
pub enum Failure {
    /// Not the backend's doing: see `LocalFailure`.
    Local(LocalFailure),
    Timeout(Duration),
    Refused,
    Connect(io::Error),
    Io(io::Error),
    NotHttp,
    /// The TLS handshake failed: a certificate not trusted, for another
    /// name, or no TLS at all.
    Tls(io::Error),
    /// A UDP check's datagram got an ICMP port unreachable.
    PortUnreachable,
    /// A UDP check's reply did not match `expect`.
    ReplyMismatch(String),
    /// A script check's program exited with this status (not 0, or not
    /// a weight).
    Exit(i32),
    /// ... or was killed by this signal (not by us).
    Signal(i32),
    Status {
        got: u16,
        want: u16,
    },
    BodyMismatch(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(l) => write!(f, "{}: {}", l.cause, l.error),
            Self::Timeout(t) => write!(f, "timeout after {} ms", t.as_millis()),
            Self::Refused => f.write_str("connection refused"),
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::Io(e) => write!(f, "read/write failed: {e}"),
            Self::NotHttp => f.write_str("the answer is not HTTP"),
            Self::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Self::PortUnreachable => f.write_str("port unreachable"),
            Self::ReplyMismatch(pattern) => write!(f, "reply did not match /{pattern}/"),
            Self::Exit(code) => write!(f, "exit status {code}"),
            Self::Signal(signal) => write!(f, "killed by signal {signal}"),
            Self::Status { got, want } => write!(f, "status {got} (expected {want})"),
            Self::BodyMismatch(pattern) => write!(f, "body did not match /{pattern}/"),
        }
    }
}

impl Failure {
    /// A failed connect: refused by the backend, or not attempted for a
    /// local reason, or another error.
    pub fn connect(e: io::Error) -> Self {
        match (e.kind(), LocalCause::of(&e)) {
            (_, Some(cause)) => Self::Local(LocalFailure { cause, error: e }),
            (io::ErrorKind::ConnectionRefused, None) => Self::Refused,
            (_, None) => Self::Connect(e),
        }
    }

    /// A failed read or write on an open connection.
    pub fn io(e: io::Error) -> Self {
        match LocalCause::of(&e) {
            Some(cause) => Self::Local(LocalFailure { cause, error: e }),
            None => Self::Io(e),
        }
    }
}

/// What a probe says: a result for the backend's rise/fall, or nothing
/// (`LocalFailure`).
pub type Probed = Result<CheckResult, LocalFailure>;

/// The result of an attempt that took `duration` from `at`.
pub fn outcome(attempt: Result<String, Failure>, at: SystemTime, duration: Duration) -> Probed {
    let (ok, detail) = match attempt {
        Ok(detail) => (true, detail),
        Err(Failure::Local(local)) => return Err(local),
        Err(failure) => (false, failure.to_string()),
    };
    Ok(CheckResult { ok, detail, at, duration, weight: None })
}

/// A failure of this host's for `why`.
pub fn local(cause: LocalCause, why: impl Into<String>) -> LocalFailure {
    LocalFailure { cause, error: io::Error::other(why.into()) }
}

impl HttpProbe {
    /// `GET path` naming `host`; `expect_body` must be a valid pattern (the
    /// config validated it).
    pub fn new(
        path: &str,
        host: &str,
        expect_status: u16,
        expect_body: Option<&str>,
        tls: Option<TlsProbe>,
    ) -> Self {
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lb-ctl health check\r\nConnection: close\r\n\r\n")
                .into_bytes();
        Self { request, expect_status, expect_body: compiled(expect_body), tls }
    }

    async fn attempt(&self, addr: SocketAddr) -> Result<String, Failure> {
        let stream = connect(addr).await?;
        let Some(tls) = &self.tls else {
            return self.exchange(stream).await;
        };
        let name = tls.name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream =
            tls.connector.connect(name, stream).await.map_err(|e| match LocalCause::of(&e) {
                Some(cause) => Failure::Local(LocalFailure { cause, error: e }),
                None => Failure::Tls(e),
            })?;
        self.exchange(stream).await
    }

    /// The request and its answer, over TCP or TLS alike.
    async fn exchange(
        &self,
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
    ) -> Result<String, Failure> {
        stream.write_all(&self.request).await.map_err(Failure::io)?;
        let response = read_bounded(&mut stream).await.map_err(Failure::io)?;
        let (status, body) = parse_response(&response).ok_or(Failure::NotHttp)?;
        if status != self.expect_status {
            return Err(Failure::Status { got: status, want: self.expect_status });
        }
        if let Some(pattern) = &self.expect_body
            && !pattern.is_match(&String::from_utf8_lossy(body))
        {
            return Err(Failure::BodyMismatch(pattern.as_str().to_owned()));
        }
        Ok(format!("HTTP {status}"))
    }
}

/// A TCP connection to `addr`, closed with a reset when dropped, as
/// HAProxy's checks do: thousands of probes a second would otherwise
/// leave as many sockets in TIME_WAIT.
async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(addr).await.map_err(Failure::connect)?;
    let _ = stream.set_zero_linger();
    Ok(stream)
}

impl Prober {
    /// An `http` prober without TLS, naming `host`.
    pub fn http(
        path: &str,
        host: SocketAddr,
        expect_status: u16,
        expect_body: Option<&str>,
    ) -> Self {
        Self::Http(HttpProbe::new(path, &host.to_string(), expect_status, expect_body, None))
    }

    /// Probes `addr` once, within `timeout`.
    pub async fn run(&self, addr: SocketAddr, timeout: Duration) -> Probed {
        let at = SystemTime::now();
        let started = Instant::now();
        let attempt = match self {
            // A script kills its own program at the timeout (and waits for it).
            Self::Script(script) => return script.run(addr, timeout).await,
            Self::Unusable(why) => return Err(local(LocalCause::CheckSetup, why.clone())),
            Self::Tcp => tokio::time::timeout(timeout, connect(addr))
                .await
                .map(|c| c.map(|_| "TCP connect".to_owned())),
            Self::Http(http) => tokio::time::timeout(timeout, http.attempt(addr)).await,
            Self::Udp(udp) => tokio::time::timeout(timeout, udp.attempt(addr)).await,
        };
        let attempt = attempt.unwrap_or(Err(Failure::Timeout(timeout)));
        outcome(attempt, at, started.elapsed())
    }
}

/// Reads until the peer closes or `MAX_RESPONSE` bytes have arrived. A TLS
/// peer that closes without `close_notify` ends the answer too (many
/// servers do, after `Connection: close`; the length is not checked anyway).
async fn read_bounded(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut response = Vec::with_capacity(4096);
    let mut buf = [0_u8; 8192];
    while response.len() < MAX_RESPONSE {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        let room = MAX_RESPONSE - response.len();
        response.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok(response)
}

/// The status code and the body of an HTTP/1.x response, if it is one.
fn parse_response(response: &[u8]) -> Option<(u16, &[u8])> {
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_line = response[..head_end].split(|&b| b == b'\r').next()?;
    let status_line = std::str::from_utf8(status_line).ok()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    Some((code.parse().ok()?, &response[head_end + 4..]))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A one-shot server on loopback that answers every connection with
    /// `behaviour`.
    async fn server(behaviour: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0_u8; 1024];
                    let _ = s.read(&mut buf).await;
                    match behaviour {
                        "ok" => {
                            drop(s.write_all(b"HTTP/1.0 200 OK\r\n\r\nBienvenue sur WEB1\n").await);
                        }
                        "500" => drop(s.write_all(b"HTTP/1.0 500 Oops\r\n\r\nBienvenue").await),
                        "other" => drop(s.write_all(b"HTTP/1.0 200 OK\r\n\r\nIt works").await),
                        "garbage" => drop(s.write_all(b"\x00\x01SSH-2.0-nope\r\n\r\n").await),
                        "endless" => {
                            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
                            let chunk = vec![b'x'; 65536];
                            while s.write_all(&chunk).await.is_ok() {}
                        }
                        "trickle" => {
                            for b in b"HTTP/1.0 200 OK\r\n\r\nBienvenue" {
                                if s.write_all(&[*b]).await.is_err() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        _ => tokio::time::sleep(Duration::from_secs(30)).await, // "silent"
                    }
                });
            }
        });
        addr
    }

    async fn http_probe(behaviour: &'static str) -> CheckResult {
        let addr = server(behaviour).await;
        Prober::http("/", addr, 200, Some("Bienvenue"))
            .run(addr, Duration::from_millis(300))
            .await
            .expect("the probe ran")
    }

    #[tokio::test]
    async fn http_outcomes_are_named() {
        let ok = http_probe("ok").await;
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.detail, "HTTP 200");
        assert_eq!(http_probe("500").await.detail, "status 500 (expected 200)");
        assert_eq!(http_probe("other").await.detail, "body did not match /Bienvenue/");
        assert_eq!(http_probe("garbage").await.detail, "the answer is not HTTP");
        assert_eq!(http_probe("silent").await.detail, "timeout after 300 ms");
    }

    #[tokio::test]
    async fn hostile_answers_are_bounded() {
        // An endless body is cut at MAX_RESPONSE: the probe ends (and fails
        // the body check) instead of reading forever.
        let endless = http_probe("endless").await;
        assert!(!endless.ok);
        assert!(endless.duration < Duration::from_millis(300), "{endless:?}");
        // A trickle that would take 1.5 s is stopped by the timeout.
        assert_eq!(http_probe("trickle").await.detail, "timeout after 300 ms");
    }

    #[tokio::test]
    async fn tcp_probe_and_refused() {
        let addr = server("ok").await;
        assert!(Prober::Tcp.run(addr, Duration::from_millis(300)).await.unwrap().ok);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let refused = Prober::Tcp.run(closed, Duration::from_millis(300)).await.unwrap();
        assert_eq!(refused.detail, "connection refused");
    }

    /// A probe this host could not make is no result at all; the backend's
    /// own refusals and errors are failures.
    #[test]
    fn local_errors_are_not_results() {
        let at = SystemTime::UNIX_EPOCH;
        let d = Duration::from_millis(1);
        for (errno, cause) in [
            (libc::EMFILE, LocalCause::NoDescriptors),
            (libc::ENFILE, LocalCause::NoDescriptors),
            (libc::ENOBUFS, LocalCause::NoBuffers),
            (libc::ENOMEM, LocalCause::NoBuffers),
            (libc::EADDRNOTAVAIL, LocalCause::NoLocalPort),
        ] {
            let connect = Failure::connect(io::Error::from_raw_os_error(errno));
            let local =
                outcome(Err(connect), at, d).expect_err("a local connect error is no result");
            assert_eq!(local.cause, cause, "errno {errno}");
            let io = Failure::io(io::Error::from_raw_os_error(errno));
            assert!(outcome(Err(io), at, d).is_err(), "errno {errno} on a read is no result");
        }
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ENETUNREACH, libc::ECONNRESET] {
            let failed = outcome(Err(Failure::connect(io::Error::from_raw_os_error(errno))), at, d);
            assert!(failed.is_ok_and(|r| !r.ok), "errno {errno} is the backend's failure");
        }
    }
}
