//! The controller's logs: human or JSON lines on stderr, and optionally a copy of every event at
//! INFO or above to a syslog collector (RFC 5424 over UDP, as rsyslog and syslog-ng receive it).
use std::{
    error::Error,
    fmt::{self, Write as _},
    io::{self, IsTerminal as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt::MakeWriter,
    layer::{Context, SubscriberExt as _},
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// How events are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber: stderr in `format` (filter from RUST_LOG, default "info";
/// ANSI colours only when stderr is a terminal), plus, when `syslog` is Some, every event at
/// INFO or above also sent as one RFC 5424 message per UDP datagram to that address.
pub fn init(format: LogFormat, syslog: Option<SocketAddr>) -> io::Result<()> {
    let filter =
        EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env_lossy();
    let stderr = stderr_layer(format, io::stderr, io::stderr().is_terminal());
    // Each output has its own filter: RUST_LOG=warn quiets the terminal, not the collector.
    // The syslog filter is also its interest, so DEBUG callsites stay disabled when both agree.
    let syslog =
        syslog.map(SyslogLayer::new).transpose()?.map(|l| l.with_filter(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(syslog)
        .try_init()
        .map_err(io::Error::other)
}

/// The stderr output in `format`, written to `writer` (ANSI colours in text if `ansi`).
fn stderr_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi).boxed()
        }
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().with_writer(writer).with_ansi(false).boxed()
        }
    }
}

/// Facility "daemon" (RFC 5424 §6.2.1): PRI = facility * 8 + severity.
const FACILITY_DAEMON: u8 = 3;
/// Larger datagrams risk IP fragmentation, and receivers need only accept 480 (RFC 5426 §3.2);
/// 2048 is what rsyslog and syslog-ng take without tuning.
const MAX_DATAGRAM: usize = 2048;
const APP_NAME: &str = "lb-ctl";

/// A `tracing` layer that sends every event at INFO or above as one RFC 5424 message per UDP
/// datagram. Sending is best effort: a datagram that cannot be sent at once is counted in
/// [`SyslogLayer::dropped`] and forgotten, so logging never blocks nor fails the controller.
pub struct SyslogLayer {
    socket: UdpSocket,
    hostname: String,
    pid: u32,
    dropped: AtomicU64,
}

impl SyslogLayer {
    /// Binds a non-blocking UDP socket of the target's family, connected to `target`.
    pub fn new(target: SocketAddr) -> io::Result<Self> {
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any)?;
        // Connected: each send skips the route lookup, and the kernel reports an ICMP
        // "port unreachable" as an error on a later send, which we count as a drop.
        socket.connect(target)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            hostname: hostname(),
            pid: std::process::id(),
            dropped: AtomicU64::new(0),
        })
    }

    /// Replaces the HOSTNAME field (by default the kernel's host name), e.g. with an FQDN.
    #[must_use]
    pub fn with_hostname(mut self, hostname: &str) -> Self {
        self.hostname = sanitize_hostname(hostname);
        self
    }

    /// How many messages could not be sent (socket buffer full, collector unreachable...).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn format(&self, event: &Event<'_>, since_epoch: Duration) -> String {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut out = String::with_capacity(128 + fields.message.len() + fields.rest.len());
        // HEADER SP STRUCTURED-DATA SP MSG, with no MSGID and no structured data.
        let _ = write!(
            out,
            "<{}>1 {} {} {APP_NAME} {} - - {}",
            pri(*event.metadata().level()),
            timestamp(since_epoch),
            self.hostname,
            self.pid,
            fields.message,
        );
        // Each field brings its leading space; an event without a message needs none.
        out.push_str(if fields.message.is_empty() {
            fields.rest.trim_start()
        } else {
            &fields.rest
        });
        truncate(&mut out, MAX_DATAGRAM);
        out
    }
}

impl<S: Subscriber> Layer<S> for SyslogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // More verbose levels compare greater.
        if *event.metadata().level() > Level::INFO {
            return;
        }
        let since_epoch =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let message = self.format(event, since_epoch);
        // Never log a failure here: that would re-enter this layer.
        if self.socket.send(message.as_bytes()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The PRI of a message from facility daemon at `level`; TRACE shares DEBUG's severity.
fn pri(level: Level) -> u8 {
    let severity = match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    };
    FACILITY_DAEMON * 8 + severity
}

/// `since_epoch` as RFC 3339 in UTC with microseconds, e.g. `2026-11-22T04:20:00.123456Z` (RFC
/// 5424's TIMESTAMP takes six digits of fraction at most); `-`, its NILVALUE, past the year 9999.
fn timestamp(since_epoch: Duration) -> String {
    let mut text = String::with_capacity(27);
    match write!(text, "{}", humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + since_epoch))
    {
        Ok(()) => text,
        Err(fmt::Error) => "-".into(),
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        s.truncate(s.floor_char_boundary(max));
    }
}

/// The kernel's host name, or "-" (RFC 5424's NILVALUE) if it has none we can send.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".to_owned();
    }
    // The name is not NUL-terminated if it was truncated: then take the whole buffer.
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    sanitize_hostname(&String::from_utf8_lossy(&buf[..len]))
}

/// RFC 5424 HOSTNAME is 1 to 255 printable ASCII characters without spaces; anything else
/// would shift the following header fields, so it becomes "-".
fn sanitize_hostname(name: &str) -> String {
    let valid = (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic());
    if valid { name.to_owned() } else { "-".to_owned() }
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn push_field(&mut self, name: &str, value: &str) {
        // Quote what would not read back as one token; Debug adds the quotes and escapes.
        let quote = value.is_empty()
            || value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
        if quote {
            let _ = write!(self.rest, " {name}={value:?}");
        } else {
            let _ = write!(self.rest, " {name}={value}");
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.push_field(field.name(), value);
        }
    }

    // Errors read as their Display, like the fmt layer shows them, not as a Debug struct.
    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.push_field(field.name(), &format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// What a writer was given, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Captured {
        type Writer = Self;

        fn make_writer(&self) -> Self {
            self.clone()
        }
    }

    /// What the stderr output in `format` writes for events like the
    /// controller's: a state change, an admin action, an error whose text
    /// spans two lines.
    fn stderr_output(format: LogFormat) -> String {
        let captured = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(stderr_layer(format, captured.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            let took: u128 = 3;
            tracing::warn!(
                service = %"10.77.1.100:80",
                backend = %"10.77.2.12:80",
                from = %"UP",
                reason = %"status 500 (expected 200)",
                took_ms = took,
                "backend is DOWN"
            );
            tracing::info!(service = "web", backend = %"10.77.2.13:80", weight = 1, "admin: backend added");
            let err = io::Error::other(
                "lb.toml: invalid configuration:\n  service[0].port: 0 is not a port",
            );
            tracing::error!(error = %err, "reload refused; keeping the running configuration");
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_time_level_message_and_fields() {
        let out = stderr_output(LogFormat::Json);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"))
            })
            .collect();
        assert_eq!(lines.len(), 3, "one line per event: {out}");
        for line in &lines {
            let ts = line["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {line}"));
            // RFC 3339 in UTC: 2026-11-22T04:23:46.005977Z
            assert!(ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'), "{ts}");
            assert!(line["target"].is_string(), "no target: {line}");
            assert!(line["fields"]["message"].is_string(), "no fields.message: {line}");
        }
        let down = &lines[0];
        assert_eq!(down["level"], "WARN");
        assert_eq!(down["fields"]["message"], "backend is DOWN");
        assert_eq!(down["fields"]["service"], "10.77.1.100:80");
        assert_eq!(down["fields"]["backend"], "10.77.2.12:80");
        assert_eq!(down["fields"]["from"], "UP");
        assert_eq!(down["fields"]["reason"], "status 500 (expected 200)");
        assert!(!down["fields"]["took_ms"].is_null(), "{down}");
        assert_eq!(lines[1]["level"], "INFO");
        assert_eq!(lines[1]["fields"]["message"], "admin: backend added");
        assert_eq!(lines[1]["fields"]["weight"], 1, "numbers stay numbers");
        assert_eq!(lines[2]["level"], "ERROR");
        assert_eq!(
            lines[2]["fields"]["error"],
            "lb.toml: invalid configuration:\n  service[0].port: 0 is not a port",
            "a value with a newline stays on its line"
        );
    }

    #[test]
    fn text_logs_are_lines_for_people_not_json() {
        let out = stderr_output(LogFormat::Text);
        assert!(!out.contains('\x1b'), "no colours when asked for none: {out:?}");
        let first = out.lines().next().unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(first).is_err(), "{first}");
        assert!(first.contains(" WARN "), "{first}");
        assert!(
            first.ends_with(
                "backend is DOWN service=10.77.1.100:80 backend=10.77.2.12:80 from=UP reason=status 500 (expected 200) took_ms=3"
            ),
            "{first}"
        );
        assert!(out.lines().all(|l| !l.trim_start().starts_with('{')), "{out}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(timestamp(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(Duration::new(1_709_164_800, 0)), "2024-02-29T00:00:00.000000Z");
        assert_eq!(
            timestamp(Duration::new(1_709_251_199, 999_999_000)),
            "2024-02-29T23:59:59.999999Z"
        );
        assert_eq!(
            timestamp(Duration::new(1_795_321_200, 123_456_789)),
            "2026-11-22T04:20:00.123456Z"
        );
    }

    #[test]
    fn timestamps_follow_leap_years_and_stop_at_the_year_9999() {
        let day = |days: u64| timestamp(Duration::from_secs(days * 86_400))[..10].to_owned();
        assert_eq!(day(59), "1970-03-01"); // 1970 is not a leap year.
        assert_eq!(day(11_016), "2000-02-29"); // Divisible by 400: leap.
        assert_eq!(day(11_017), "2000-03-01");
        assert_eq!(day(19_782), "2024-02-29");
        assert_eq!(day(19_783), "2024-03-01");
        assert_eq!(day(47_541), "2100-03-01"); // Divisible by 100 only: no Feb 29.
        assert_eq!(day(20_818), "2026-12-31");
        let last_second = Duration::from_secs(253_402_300_799);
        assert_eq!(timestamp(last_second), "9999-12-31T23:59:59.000000Z");
        assert_eq!(timestamp(last_second + Duration::from_secs(1)), "-");
    }

    #[test]
    fn pri_is_daemon_facility_and_severity() {
        assert_eq!(pri(Level::ERROR), 27);
        assert_eq!(pri(Level::WARN), 28);
        assert_eq!(pri(Level::INFO), 30);
        assert_eq!(pri(Level::DEBUG), 31);
        assert_eq!(pri(Level::TRACE), 31);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let mut s = "é".repeat(10); // Two bytes each.
        truncate(&mut s, 5);
        assert_eq!(s, "éé");
        let mut short = "abc".to_owned();
        truncate(&mut short, 5);
        assert_eq!(short, "abc");
    }

    #[test]
    fn hostnames_that_would_break_the_header_become_nil() {
        assert_eq!(sanitize_hostname("lb1.example.net"), "lb1.example.net");
        assert_eq!(sanitize_hostname(""), "-");
        assert_eq!(sanitize_hostname("my host"), "-");
        assert_eq!(sanitize_hostname("hôte"), "-");
        assert_eq!(sanitize_hostname(&"a".repeat(256)), "-");
        assert!(!hostname().is_empty());
    }

    /// Splits an RFC 5424 message into its 7 header fields (PRI+VERSION first) and MSG.
    fn parse(datagram: &str) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = datagram.splitn(8, ' ').collect();
        assert_eq!(parts.len(), 8, "not RFC 5424: {datagram:?}");
        let msg = parts.pop().unwrap();
        (parts, msg)
    }

    fn receive(socket: &UdpSocket) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram within 2 s");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }

    #[test]
    fn events_at_info_and_above_reach_the_collector() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let layer = SyslogLayer::new(collector.local_addr().unwrap()).unwrap().with_hostname("lb1");
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                service = "10.77.1.100:80",
                backend = "10.77.2.11:80",
                reason = "connection refused",
                "backend is DOWN"
            );
            // Sent between the two others: if it were sent, it would arrive second.
            tracing::debug!(probe = 3, "probe sent");
            tracing::info!(services = 2, backends = 5, "config applied");
            let err = io::Error::new(io::ErrorKind::NotFound, "not found");
            tracing::error!(path = "/etc/lb/lb.toml", error = &err as &dyn Error);
        });

        let warn = receive(&collector);
        let (header, msg) = parse(&warn);
        assert_eq!(header[0], "<28>1");
        let ts = header[1];
        assert!(ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(header[2], "lb1");
        assert_eq!(header[3], "lb-ctl");
        assert_eq!(header[4], std::process::id().to_string());
        assert_eq!(header[5..], ["-", "-"]);
        assert_eq!(
            msg,
            r#"backend is DOWN service=10.77.1.100:80 backend=10.77.2.11:80 reason="connection refused""#
        );

        let info = receive(&collector);
        let (header, msg) = parse(&info);
        assert_eq!(header[0], "<30>1");
        assert_eq!(msg, "config applied services=2 backends=5");

        let error = receive(&collector);
        let (header, msg) = parse(&error);
        assert_eq!(header[0], "<27>1");
        assert_eq!(msg, r#"path=/etc/lb/lb.toml error="not found""#);

        collector.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let err = collector.recv(&mut buf).expect_err("the DEBUG event must not be sent");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn long_messages_are_cut_to_one_datagram() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let layer = SyslogLayer::new(collector.local_addr().unwrap()).unwrap();
        let long = "ü".repeat(3000);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::error!(detail = %long, "too long");
        });
        let datagram = receive(&collector); // UTF-8 checked: no character was split.
        assert!(datagram.len() <= MAX_DATAGRAM && datagram.len() > MAX_DATAGRAM - 4);
        assert!(datagram.starts_with("<27>1 "));
    }

    #[test]
    fn a_closed_port_neither_blocks_nor_panics() {
        // Bind then drop: a port nobody listens on, so the kernel answers "port unreachable".
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let layer = SyslogLayer::new(closed).unwrap();
        let start = Instant::now();
        let dropped =
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
                for i in 0..20 {
                    tracing::error!(attempt = i, "nobody listens");
                }
                // The layer is inside the subscriber; reach it the way main would.
                tracing::dispatcher::get_default(|d| {
                    d.downcast_ref::<SyslogLayer>().map(SyslogLayer::dropped)
                })
            });
        assert!(start.elapsed() < Duration::from_secs(1));
        // The first send succeeds; the ICMP error it provokes fails a later one.
        let dropped = dropped.expect("SyslogLayer reachable by downcast");
        assert!((1..20).contains(&dropped), "dropped {dropped}");
    }
}
