//! The config file: TOML in, validated desired state out. Reading the file is
//! the only I/O; every problem is reported at once, each named by its key.
use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::abi::{
    DEFAULT_ANSWERS_PER_SECOND, DEFAULT_CONNTRACK_MAX, LC_MAX_BACKENDS, MAX_BACKENDS, MAX_SERVICES,
    PROTO_TCP, PROTO_UDP,
};
use lb_common::conn_table::MAX_CONNTRACK_MAX;
use serde::Deserialize;

use crate::model::{
    AdminState, Backend, Dataplane, Forwarding, HandshakeProof, HealthCheck, Probe, Protocol,
    ReversePath, Scheduler, Service, Timeouts, XdpMode,
};

/// A validated config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub dataplane: Dataplane,
    pub admin: Admin,
    pub log: Log,
    pub services: Vec<Service>,
}

/// `[admin]`: where the admin API listens and who may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Where runtime changes (API) are kept; `None`: next to the config file.
    pub state_file: Option<PathBuf>,
    /// Names besides the listen address a request's `Host` may give
    /// (`lb1.example.net`, reached on the listen port).
    pub allowed_hosts: Vec<String>,
}

/// `[log]`: where logs go besides stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// RFC 5424 syslog over UDP (`syslog = "host:514"`).
    pub syslog: Option<SocketAddr>,
}

/// One thing wrong with a config, named by its key (`service[1].backend[0].port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config was refused: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Read { .. } => vec![self.to_string()],
            Self::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

// ---- The file as written. Unknown keys are an error (`deny_unknown_fields`). ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dataplane: RawDataplane,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default = "default_xdp_mode")]
    xdp_mode: String,
    #[serde(default = "default_conntrack_max")]
    conntrack_max: i64,
    #[serde(default = "default_pin_path")]
    pin_path: String,
    tcp_syn_timeout: Option<i64>,
    tcp_established_timeout: Option<i64>,
    tcp_closing_timeout: Option<i64>,
    tcp_closed_timeout: Option<i64>,
    udp_timeout: Option<i64>,
    #[serde(default = "default_answers_per_second")]
    answers_per_second: i64,
    #[serde(default = "default_reverse_path")]
    reverse_path: String,
    #[serde(default = "default_handshake_proof")]
    handshake_proof: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_listen")]
    listen: String,
    token_file: Option<String>,
    state_file: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { listen: default_listen(), token_file: None, state_file: None, allowed_hosts: vec![] }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    syslog: Option<String>,
}

/// A service as the config file and the API's JSON bodies write it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    name: String,
    vip: String,
    port: i64,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default = "default_scheduler")]
    scheduler: String,
    #[serde(default = "default_forwarding")]
    forwarding: String,
    #[serde(default = "default_on_no_backend")]
    on_no_backend: String,
    health: Option<RawHealth>,
    #[serde(default, rename = "backend", alias = "backends")]
    backends: Vec<RawBackend>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Absent: `tcp` for a TCP service, `none` for a UDP one (see `validate_health`).
    check: Option<String>,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_expect_status")]
    expect_status: i64,
    expect_body: Option<String>,
    #[serde(default = "default_interval_ms")]
    interval_ms: i64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: i64,
    #[serde(default = "default_rise")]
    rise: i64,
    #[serde(default = "default_fall")]
    fall: i64,
}

fn default_path() -> String {
    "/".into()
}
fn default_expect_status() -> i64 {
    200
}
fn default_interval_ms() -> i64 {
    2000
}
fn default_timeout_ms() -> i64 {
    1000
}
fn default_rise() -> i64 {
    2
}
fn default_fall() -> i64 {
    3
}

/// A backend as the config file and the API's JSON bodies write it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    address: String,
    port: i64,
    #[serde(default = "default_weight")]
    weight: i64,
    state: Option<String>,
}

fn default_xdp_mode() -> String {
    "auto".into()
}
fn default_conntrack_max() -> i64 {
    i64::from(DEFAULT_CONNTRACK_MAX)
}
fn default_reverse_path() -> String {
    "strict".into()
}
fn default_handshake_proof() -> String {
    "ack".into()
}
fn default_answers_per_second() -> i64 {
    i64::from(DEFAULT_ANSWERS_PER_SECOND)
}
fn default_pin_path() -> String {
    "/sys/fs/bpf/lb".into()
}
fn default_listen() -> String {
    "127.0.0.1:9100".into()
}
fn default_protocol() -> String {
    "tcp".into()
}
fn default_scheduler() -> String {
    "maglev".into()
}
fn default_forwarding() -> String {
    "nat".into()
}
fn default_on_no_backend() -> String {
    "reject".into()
}
fn default_weight() -> i64 {
    1
}

/// Longest connection timeout: a week.
const MAX_TIMEOUT_S: i64 = 7 * 24 * 3600;

/// Largest backend weight: keeps Maglev's per-round arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 65_535;

// Bounds on every input, the config file's and the API's alike: what one
// request can make the controller hold, plan, probe and render is bounded.

/// Longest service name: a DNS label's.
pub const MAX_NAME_LEN: usize = 63;
/// Longest health-check `path` (a request line HAProxy and nginx accept).
pub const MAX_HEALTH_PATH_LEN: usize = 1024;
/// Longest `expect_body` pattern.
pub const MAX_EXPECT_BODY_LEN: usize = 1024;
/// Most backends of one service: each still gets 64 slots of the
/// 65537-slot Maglev table (the README's Maglev bench goes to 1000).
pub const MAX_SERVICE_BACKENDS: usize = 1024;
/// Most services: the kernel's `lb_services` map.
pub const MAX_SERVICE_COUNT: usize = MAX_SERVICES as usize;
/// Most backends in all: the kernel's `lb_backends` map.
pub const MAX_BACKEND_COUNT: usize = MAX_BACKENDS as usize;
/// Most `admin.allowed_hosts` names, and the longest (a DNS name's).
const MAX_ALLOWED_HOSTS: usize = 16;
const MAX_HOST_NAME_LEN: usize = 253;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        ConfigError::Invalid(vec![Problem {
            key: toml_error_key(text, &e),
            message: toml_error_message(&e),
        }])
    })?;
    let mut problems = Problems::default();
    let config = validate(raw, &mut problems);
    if problems.0.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(problems.0)) }
}

/// Names the key a TOML error is about, from its position: the enclosing
/// table (`service[1].backend[0]`), the key on that line, and the line
/// number. The serde layer only knows a byte offset.
fn toml_error_key(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "config".into();
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
    let mut table = String::new();
    let (mut services, mut backends) = (0_usize, 0_usize);
    for header in before.lines().map(str::trim).filter(|l| l.starts_with('[')) {
        let name = header.split('#').next().unwrap_or_default().trim();
        table = match name {
            "[[service]]" => {
                services += 1;
                backends = 0;
                format!("service[{}]", services - 1)
            }
            "[[service.backend]]" => {
                backends += 1;
                format!("service[{}].backend[{}]", services.saturating_sub(1), backends - 1)
            }
            "[service.health]" => format!("service[{}].health", services.saturating_sub(1)),
            other => other.trim_matches(['[', ']']).to_owned(),
        };
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !line.starts_with('['));
    match (table.is_empty(), key) {
        (false, Some(key)) => format!("{table}.{key} (line {line_no})"),
        (true, Some(key)) => format!("{key} (line {line_no})"),
        (false, None) => format!("{table} (line {line_no})"),
        (true, None) => format!("line {line_no}"),
    }
}

fn toml_error_message(e: &toml::de::Error) -> String {
    e.message().trim().to_string()
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into() });
    }
}

fn validate(raw: RawConfig, problems: &mut Problems) -> Config {
    let dataplane = validate_dataplane(raw.dataplane, problems);
    let listen = raw.admin.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.add("admin.listen", format!("{:?} is not an address:port", raw.admin.listen));
        SocketAddr::from(([127, 0, 0, 1], 9100))
    });
    check_allowed_hosts(&raw.admin.allowed_hosts, problems);
    let admin = Admin {
        listen,
        token_file: raw.admin.token_file.map(PathBuf::from),
        state_file: raw.admin.state_file.map(PathBuf::from),
        allowed_hosts: raw.admin.allowed_hosts,
    };
    let log = Log { syslog: raw.log.syslog.and_then(|s| syslog_address(&s, problems)) };
    let services: Vec<Service> = raw
        .services
        .into_iter()
        .enumerate()
        .map(|(i, s)| validate_service(&format!("service[{i}]"), s, problems))
        .collect();
    check_service_set(&services, problems);
    Config { dataplane, admin, log, services }
}

/// Host names without a port: what a `Host` header's name part can be.
fn check_allowed_hosts(names: &[String], problems: &mut Problems) {
    if names.len() > MAX_ALLOWED_HOSTS {
        problems.add(
            "admin.allowed_hosts",
            format!("{} names; at most {MAX_ALLOWED_HOSTS}", names.len()),
        );
        return;
    }
    for (i, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= MAX_HOST_NAME_LEN
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
        if !valid {
            problems.add(
                format!("admin.allowed_hosts[{i}]"),
                format!(
                    "{:?} is not a host name (letters, digits, '-', '.'; at most {MAX_HOST_NAME_LEN}; no port: the listen port is implied)",
                    shorten(name)
                ),
            );
        }
    }
}

/// A value as echoed in a problem: bounded, whatever was sent.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `host:port` of a syslog receiver, resolved once at load.
fn syslog_address(text: &str, problems: &mut Problems) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    if let Ok(Some(addr)) = text.to_socket_addrs().map(|mut a| a.next()) {
        return Some(addr);
    }
    problems.add("log.syslog", format!("{text:?} is not a reachable host:port"));
    None
}

fn validate_dataplane(raw: RawDataplane, problems: &mut Problems) -> Dataplane {
    let xdp_mode = match raw.xdp_mode.as_str() {
        "auto" => XdpMode::Auto,
        "driver" => XdpMode::Driver,
        "skb" => XdpMode::Skb,
        other => {
            problems
                .add("dataplane.xdp_mode", format!("{other:?} is not one of auto, driver, skb"));
            XdpMode::Auto
        }
    };
    let conntrack_max = match u32::try_from(raw.conntrack_max) {
        Ok(n) if (1024..=MAX_CONNTRACK_MAX).contains(&n) => n,
        _ => {
            problems.add(
                "dataplane.conntrack_max",
                format!("{} is out of range (1024 to {MAX_CONNTRACK_MAX})", raw.conntrack_max),
            );
            DEFAULT_CONNTRACK_MAX
        }
    };
    let mut seen = BTreeSet::new();
    for (i, name) in raw.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            problems.add(
                format!("dataplane.interfaces[{i}]"),
                format!("{name:?} is not an interface name"),
            );
        } else if !seen.insert(name) {
            problems.add(format!("dataplane.interfaces[{i}]"), format!("{name:?} is listed twice"));
        }
    }
    let pin_path = PathBuf::from(&raw.pin_path);
    if !pin_path.is_absolute() {
        problems.add("dataplane.pin_path", format!("{:?} is not an absolute path", raw.pin_path));
    }
    let defaults = Timeouts::default();
    let mut timeout = |key: &str, value: Option<i64>, default: Duration| match value {
        None => default,
        Some(s) if (1..=MAX_TIMEOUT_S).contains(&s) => Duration::from_secs(s.unsigned_abs()),
        Some(s) => {
            problems.add(
                format!("dataplane.{key}"),
                format!("{s} is out of range (1 to {MAX_TIMEOUT_S} seconds)"),
            );
            default
        }
    };
    let timeouts = Timeouts {
        tcp_syn: timeout("tcp_syn_timeout", raw.tcp_syn_timeout, defaults.tcp_syn),
        tcp_established: timeout(
            "tcp_established_timeout",
            raw.tcp_established_timeout,
            defaults.tcp_established,
        ),
        tcp_closing: timeout("tcp_closing_timeout", raw.tcp_closing_timeout, defaults.tcp_closing),
        tcp_closed: timeout("tcp_closed_timeout", raw.tcp_closed_timeout, defaults.tcp_closed),
        udp: timeout("udp_timeout", raw.udp_timeout, defaults.udp),
    };
    let answers_per_second = match u32::try_from(raw.answers_per_second) {
        Ok(n) if n <= MAX_ANSWERS_PER_SECOND => n,
        _ => {
            problems.add(
                "dataplane.answers_per_second",
                format!(
                    "{} is out of range (0 to {MAX_ANSWERS_PER_SECOND})",
                    raw.answers_per_second
                ),
            );
            DEFAULT_ANSWERS_PER_SECOND
        }
    };
    let reverse_path = reverse_path(&raw.reverse_path, problems);
    let handshake_proof = handshake_proof(&raw.handshake_proof, problems);
    Dataplane {
        interfaces: raw.interfaces,
        xdp_mode,
        conntrack_max,
        pin_path,
        timeouts,
        answers_per_second,
        reverse_path,
        handshake_proof,
    }
}

/// `dataplane.reverse_path`.
fn reverse_path(raw: &str, problems: &mut Problems) -> ReversePath {
    match raw {
        "strict" => ReversePath::Strict,
        "loose" => ReversePath::Loose,
        "off" => ReversePath::Off,
        other => {
            problems.add(
                "dataplane.reverse_path",
                format!("{other:?} is not one of strict, loose, off"),
            );
            ReversePath::Strict
        }
    }
}

/// `dataplane.handshake_proof`.
fn handshake_proof(raw: &str, problems: &mut Problems) -> HandshakeProof {
    match raw {
        "ack" => HandshakeProof::Ack,
        "syn-seen" => HandshakeProof::SynSeen,
        other => {
            problems
                .add("dataplane.handshake_proof", format!("{other:?} is not one of ack, syn-seen"));
            HandshakeProof::Ack
        }
    }
}

/// The most answers per second and CPU the data plane can be told to send:
/// past line rate for the smallest answer on a 10 Gb/s link.
const MAX_ANSWERS_PER_SECOND: u32 = 10_000_000;

/// Whether `name` can name a service: 1 to 63 letters, digits, '-', '_'
/// or '.', not starting with '.' (it goes in URL paths, logs, metrics labels).
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_service(key: &str, raw: RawService, problems: &mut Problems) -> Service {
    if raw.name.len() > MAX_NAME_LEN {
        problems.add(
            format!("{key}.name"),
            format!("{} characters long; at most {MAX_NAME_LEN} (a DNS label's)", raw.name.len()),
        );
    } else if !is_service_name(&raw.name) {
        problems.add(
            format!("{key}.name"),
            format!(
                "{:?} must be letters, digits, '-', '_' or '.', not starting with '.'",
                raw.name
            ),
        );
    }
    let vip = parse_addr(&format!("{key}.vip"), &raw.vip, problems);
    let port = parse_port(&format!("{key}.port"), raw.port, problems);
    let protocol = match raw.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            problems.add(format!("{key}.protocol"), format!("{other:?} is not one of tcp, udp"));
            Protocol::Tcp
        }
    };
    let scheduler = match raw.scheduler.as_str() {
        "maglev" => Scheduler::Maglev,
        "rr" => Scheduler::RoundRobin,
        "wrr" => Scheduler::WeightedRoundRobin,
        "sh" => Scheduler::SourceHash,
        "lc" => Scheduler::LeastConnections,
        other => {
            problems.add(
                format!("{key}.scheduler"),
                format!("{other:?} is not one of maglev, rr, wrr, lc, sh"),
            );
            Scheduler::Maglev
        }
    };
    let forwarding = match raw.forwarding.as_str() {
        "nat" => Forwarding::Nat,
        "dsr" => Forwarding::Dsr,
        other => {
            problems.add(format!("{key}.forwarding"), format!("{other:?} is not one of nat, dsr"));
            Forwarding::Nat
        }
    };
    let reject = match raw.on_no_backend.as_str() {
        "reject" => true,
        "drop" => false,
        other => {
            problems.add(
                format!("{key}.on_no_backend"),
                format!("{other:?} is not one of reject, drop"),
            );
            true
        }
    };
    let health = raw.health.and_then(|h| validate_health(key, &raw.name, protocol, h, problems));
    if raw.backends.len() > MAX_SERVICE_BACKENDS {
        problems.add(
            format!("{key}.backend"),
            format!("{} backends; at most {MAX_SERVICE_BACKENDS} per service", raw.backends.len()),
        );
    }
    let backends: Vec<Backend> = raw
        .backends
        .into_iter()
        .enumerate()
        .map(|(j, b)| validate_backend(&format!("{key}.backend[{j}]"), &b, problems))
        .collect();
    let mut seen = HashMap::new();
    for (j, b) in backends.iter().enumerate() {
        if let Some(first) = seen.insert((b.address, b.port), j) {
            problems.add(
                format!("{key}.backend[{j}]"),
                format!("{}:{} is already listed as backend[{first}]", b.address, b.port),
            );
        }
    }
    if scheduler == Scheduler::LeastConnections && backends.len() > LC_MAX_BACKENDS as usize {
        problems.add(
            format!("{key}.backend"),
            format!(
                "lc considers at most {LC_MAX_BACKENDS} backends; this service has {}",
                backends.len()
            ),
        );
    }
    Service { health, name: raw.name, vip, port, protocol, scheduler, forwarding, reject, backends }
}

/// Longest health-check interval: an hour.
const MAX_INTERVAL_MS: i64 = 3_600_000;
/// Most consecutive results `rise` or `fall` may ask for.
const MAX_RISE_FALL: i64 = 100;

/// Both checks connect over TCP. A UDP-only backend refuses that
/// connection, so a TCP check on a UDP service would take every backend
/// DOWN and reject every datagram: a UDP service has no check unless asked,
/// and asking for a TCP one is an error.
fn validate_health(
    service_key: &str,
    service: &str,
    protocol: Protocol,
    raw: RawHealth,
    problems: &mut Problems,
) -> Option<HealthCheck> {
    let key = format!("{service_key}.health");
    let before = problems.0.len();
    let check = raw.check.as_deref().unwrap_or(match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "none",
    });
    if protocol == Protocol::Udp && matches!(check, "tcp" | "http") {
        // In a file, `service[2]` alone hardly says which service it is.
        let named = if service_key.is_empty() || service.is_empty() {
            service_key.to_owned()
        } else {
            format!("{service_key} ({service})")
        };
        problems.add(
            format!("{named}.health.check"),
            format!("{check:?} checks a TCP port; a UDP service has no check yet"),
        );
        return None;
    }
    let probe = match check {
        "none" => None,
        "tcp" => Some(Probe::Tcp),
        "http" => {
            if raw.path.len() > MAX_HEALTH_PATH_LEN {
                problems.add(
                    format!("{key}.path"),
                    format!("{} bytes long; at most {MAX_HEALTH_PATH_LEN}", raw.path.len()),
                );
            } else if !raw.path.starts_with('/')
                || raw.path.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            {
                problems.add(
                    format!("{key}.path"),
                    format!("{:?} must start with '/' and contain no spaces", raw.path),
                );
            }
            let expect_status =
                u16::try_from(raw.expect_status).ok().filter(|s| (100..=599).contains(s));
            if expect_status.is_none() {
                problems.add(
                    format!("{key}.expect_status"),
                    format!("{} is not an HTTP status (100 to 599)", raw.expect_status),
                );
            }
            if let Some(pattern) = &raw.expect_body
                && pattern.len() > MAX_EXPECT_BODY_LEN
            {
                problems.add(
                    format!("{key}.expect_body"),
                    format!("{} bytes long; at most {MAX_EXPECT_BODY_LEN}", pattern.len()),
                );
            } else if let Some(pattern) = &raw.expect_body
                && let Err(e) = regex_lite::Regex::new(pattern)
            {
                problems.add(
                    format!("{key}.expect_body"),
                    format!("{pattern:?} is not a regular expression: {e}"),
                );
            }
            Some(Probe::Http {
                path: raw.path,
                expect_status: expect_status.unwrap_or(200),
                expect_body: raw.expect_body,
            })
        }
        other => {
            problems
                .add(format!("{key}.check"), format!("{other:?} is not one of none, tcp, http"));
            None
        }
    };
    if !(10..=MAX_INTERVAL_MS).contains(&raw.interval_ms) {
        problems.add(
            format!("{key}.interval_ms"),
            format!("{} is out of range (10 to {MAX_INTERVAL_MS})", raw.interval_ms),
        );
    }
    if raw.timeout_ms < 1 || raw.timeout_ms >= raw.interval_ms {
        problems.add(
            format!("{key}.timeout_ms"),
            format!("{} must be at least 1 and below interval_ms ({}): probes of a backend never overlap", raw.timeout_ms, raw.interval_ms),
        );
    }
    for (name, value) in [("rise", raw.rise), ("fall", raw.fall)] {
        if !(1..=MAX_RISE_FALL).contains(&value) {
            problems.add(
                format!("{key}.{name}"),
                format!("{value} is out of range (1 to {MAX_RISE_FALL})"),
            );
        }
    }
    if problems.0.len() > before {
        return None;
    }
    Some(HealthCheck {
        probe: probe?,
        interval: Duration::from_millis(raw.interval_ms.unsigned_abs()),
        timeout: Duration::from_millis(raw.timeout_ms.unsigned_abs()),
        rise: u32::try_from(raw.rise).unwrap_or(1),
        fall: u32::try_from(raw.fall).unwrap_or(1),
    })
}

fn validate_backend(key: &str, raw: &RawBackend, problems: &mut Problems) -> Backend {
    let address = parse_addr(&format!("{key}.address"), &raw.address, problems);
    let port = parse_port(&format!("{key}.port"), raw.port, problems);
    let weight = match u32::try_from(raw.weight) {
        Ok(w) if w <= MAX_WEIGHT => w,
        _ => {
            problems.add(
                format!("{key}.weight"),
                format!("{} is out of range (0 to {MAX_WEIGHT})", raw.weight),
            );
            1
        }
    };
    let state = match raw.state.as_deref() {
        None | Some("active") => AdminState::Active,
        Some("drain") => AdminState::Drain,
        Some("maint") => AdminState::Maint,
        Some(other) => {
            problems.add(
                format!("{key}.state"),
                format!("{other:?} is not one of active, drain, maint"),
            );
            AdminState::Active
        }
    };
    Backend { address, port, weight, state }
}

fn parse_addr(key: &str, text: &str, problems: &mut Problems) -> Ipv4Addr {
    match text.parse::<Ipv4Addr>() {
        Ok(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
            problems.add(key, format!("{text} cannot be used as an endpoint address"));
            a
        }
        Ok(a) => a,
        Err(_) => {
            problems.add(key, format!("{text:?} is not an IPv4 address"));
            Ipv4Addr::UNSPECIFIED
        }
    }
}

fn parse_port(key: &str, port: i64, problems: &mut Problems) -> u16 {
    match u16::try_from(port) {
        Ok(p) if p != 0 => p,
        _ => {
            problems.add(key, format!("{port} is not a port (1 to 65535)"));
            0
        }
    }
}

/// Service names, VIP:port:protocol triples and backends must each be unique:
/// a backend address+port belongs to one service, which is what lets a reply
/// be rewritten without connection state.
fn check_unique_services(services: &[Service], problems: &mut Problems) {
    let mut names = HashMap::new();
    let mut endpoints = HashMap::new();
    let mut backends = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        if let Some(first) = names.insert(s.name.as_str(), i) {
            problems.add(
                format!("service[{i}].name"),
                format!("{:?} is already the name of service[{first}]", s.name),
            );
        }
        if let Some(first) = endpoints.insert((s.vip, s.port, s.protocol), i) {
            problems.add(
                format!("service[{i}]"),
                format!("{}:{}/{} is already service[{first}]", s.vip, s.port, s.protocol),
            );
        }
        for (j, b) in s.backends.iter().enumerate() {
            if let Some((fi, fj)) = backends.get(&(b.address, b.port, s.protocol)) {
                if *fi != i {
                    problems.add(
                        format!("service[{i}].backend[{j}]"),
                        format!(
                            "{}:{}/{} is already a backend of service[{fi}] (backend[{fj}]); a backend belongs to one service",
                            b.address, b.port, s.protocol
                        ),
                    );
                }
            } else {
                backends.insert((b.address, b.port, s.protocol), (i, j));
            }
        }
        if s.backends.iter().any(|b| b.address == s.vip && b.port == s.port) {
            problems.add(format!("service[{i}]"), "a backend cannot be the service's own VIP:port");
        }
    }
}

/// Direct routing cannot translate ports: the packet reaches the backend
/// as the client sent it, so the backend listens on the service's port.
fn check_direct_routing(services: &[Service], problems: &mut Problems) {
    for (i, s) in services.iter().enumerate().filter(|(_, s)| s.forwarding == Forwarding::Dsr) {
        for (j, b) in s.backends.iter().enumerate().filter(|(_, b)| b.port != s.port) {
            problems.add(
                format!("service[{i}].backend[{j}].port"),
                format!(
                    "{} differs from the service's port {}: with forwarding = \"dsr\" the backend receives the packet unchanged",
                    b.port, s.port
                ),
            );
        }
    }
}

/// Problems with a set of services taken together: unique names, endpoints
/// and backends; direct routing's ports; what the kernel maps can hold.
fn check_service_set(services: &[Service], problems: &mut Problems) {
    check_unique_services(services, problems);
    check_direct_routing(services, problems);
    problems.0.extend(capacity_problems(services));
}

/// Services and backends in all beyond what the kernel maps hold (the
/// planner would refuse them too, but only once asked to apply).
pub fn capacity_problems(services: &[Service]) -> Vec<Problem> {
    let mut problems = Vec::new();
    if services.len() > MAX_SERVICE_COUNT {
        problems.push(Problem {
            key: "service".into(),
            message: format!(
                "{} services; at most {MAX_SERVICE_COUNT} (the kernel's lb_services map)",
                services.len()
            ),
        });
    }
    let backends: usize = services.iter().map(|s| s.backends.len()).sum();
    if backends > MAX_BACKEND_COUNT {
        problems.push(Problem {
            key: "backend".into(),
            message: format!(
                "{backends} backends in all; at most {MAX_BACKEND_COUNT} (the kernel's lb_backends map)"
            ),
        });
    }
    problems
}

/// Problems with a whole set of services (what the API checks before a change).
pub fn check_services(services: &[Service]) -> Vec<Problem> {
    let mut problems = Problems::default();
    check_service_set(services, &mut problems);
    problems.0
}

/// Why a JSON body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or not of the expected shape (a wrong type, an unknown or
    /// missing field): the one problem the parser stopped at.
    Malformed(Problem),
    /// Well-formed, with wrong values: every problem found.
    Invalid(Vec<Problem>),
}

impl BodyError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Malformed(p) => std::slice::from_ref(p),
            Self::Invalid(problems) => problems,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems: Vec<String> = self.problems().iter().map(ToString::to_string).collect();
        f.write_str(&problems.join("; "))
    }
}

/// A service from an API body (the config file's keys, in JSON).
pub fn service_from_json(body: &[u8]) -> Result<Service, BodyError> {
    let raw: RawService = from_json(body)?;
    let mut problems = Problems::default();
    let service = validate_service("", raw, &mut problems);
    check_service_set(std::slice::from_ref(&service), &mut problems);
    finish_json(service, problems)
}

/// A backend from an API body (`{"address", "port", "weight", "state"}`).
pub fn backend_from_json(body: &[u8]) -> Result<Backend, BodyError> {
    let raw: RawBackend = from_json(body)?;
    let mut problems = Problems::default();
    let backend = validate_backend("", &raw, &mut problems);
    finish_json(backend, problems)
}

/// A service as the API shows it and the state file keeps it: the config
/// file's keys, so that `service_from_json` reads it back unchanged.
pub fn service_to_json(s: &Service) -> serde_json::Value {
    use serde_json::json;
    let health = s.health.as_ref().map(|h| {
        let mut v = json!({
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64,
            "rise": h.rise,
            "fall": h.fall,
        });
        match &h.probe {
            Probe::Tcp => v["check"] = json!("tcp"),
            Probe::Http { path, expect_status, expect_body } => {
                v["check"] = json!("http");
                v["path"] = json!(path);
                v["expect_status"] = json!(expect_status);
                if let Some(body) = expect_body {
                    v["expect_body"] = json!(body);
                }
            }
        }
        v
    });
    let mut v = json!({
        "name": s.name,
        "vip": s.vip.to_string(),
        "port": s.port,
        "protocol": s.protocol.to_string(),
        "scheduler": s.scheduler.name(),
        "forwarding": s.forwarding.name(),
        "on_no_backend": if s.reject { "reject" } else { "drop" },
        "backends": s.backends.iter().map(backend_to_json).collect::<Vec<_>>(),
    });
    if let Some(h) = health {
        v["health"] = h;
    }
    v
}

/// A backend as the API shows it; `backend_from_json` reads it back.
pub fn backend_to_json(b: &Backend) -> serde_json::Value {
    serde_json::json!({
        "address": b.address.to_string(),
        "port": b.port,
        "weight": b.weight,
        "state": b.state.name(),
    })
}

/// Deserializes one JSON value (nothing may follow it), naming the field a
/// type error is about.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let malformed = |path: String, message: String| {
        // serde_path_to_error says "." for the top and "?" where it lost track.
        let key = if path == "." || path.contains('?') { "body".to_owned() } else { path };
        BodyError::Malformed(Problem { key, message })
    };
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| malformed(e.path().to_string(), e.into_inner().to_string()))?;
    de.end().map_err(|e| malformed(".".into(), e.to_string()))?;
    Ok(value)
}

/// Keys of JSON problems name fields from the body's top (`port`, not `.port`).
fn finish_json<T>(value: T, problems: Problems) -> Result<T, BodyError> {
    if problems.0.is_empty() {
        return Ok(value);
    }
    Err(BodyError::Invalid(
        problems
            .0
            .into_iter()
            .map(|p| Problem { key: p.key.trim_start_matches('.').to_owned(), ..p })
            .collect(),
    ))
}

/// Problems with interfaces that do not exist on this host. Kept apart from
/// `parse` because it looks at the machine, not the file.
pub fn missing_interfaces(dataplane: &Dataplane) -> Vec<Problem> {
    dataplane
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, name)| crate::write::netdev::ifindex(name).is_none())
        .map(|(i, name)| Problem {
            key: format!("dataplane.interfaces[{i}]"),
            message: format!("no interface named {name:?} on this host"),
        })
        .collect()
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interfaces = ["lb-c", "lb-b"]

[[service]]
name = "web"
vip = "10.77.1.100"
port = 80

  [[service.backend]]
  address = "10.77.2.11"
  port = 80

  [[service.backend]]
  address = "10.77.2.12"
  port = 80
  weight = 0

[[service]]
name = "dns"
vip = "10.77.1.100"
port = 53
protocol = "udp"
"#;

    fn problems(text: &str) -> Vec<String> {
        parse(text).expect_err("config should be refused").problems()
    }

    #[test]
    fn accepts_a_good_config_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.dataplane.conntrack_max, DEFAULT_CONNTRACK_MAX);
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
        assert_eq!(c.dataplane.pin_path, PathBuf::from("/sys/fs/bpf/lb"));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].backends[0].weight, 1);
        assert_eq!(c.services[0].backends[1].weight, 0);
        assert_eq!(c.services[1].protocol, Protocol::Udp);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9100");
    }

    #[test]
    fn syntax_and_type_errors_name_the_key_and_line() {
        let p = problems(&GOOD.replace("  address = \"10.77.2.12\"", "  address = 12"));
        assert!(p[0].starts_with("service[0].backend[1].address (line 15)"), "{p:?}");
    }

    #[test]
    fn unknown_key_is_named() {
        let p = problems(&GOOD.replace("port = 53", "port = 53\ncolour = \"blue\""));
        assert!(p[0].contains("colour"), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = GOOD
            .replace(
                "vip = \"10.77.1.100\"\nport = 80",
                "vip = \"10.77.1.300\"\nport = 0\nscheduler = \"fastest\"",
            )
            .replace("address = \"10.77.2.12\"", "address = \"10.77.2.11\"");
        let p = problems(&text);
        let has = |needle: &str| {
            assert!(p.iter().any(|x| x.contains(needle)), "no {needle:?} in {p:?}");
        };
        has("service[0].vip: \"10.77.1.300\" is not an IPv4 address");
        has("service[0].port: 0 is not a port");
        has("service[0].scheduler: \"fastest\" is not one of");
        has("service[0].backend[1]: 10.77.2.11:80 is already listed as backend[0]");
    }

    #[test]
    fn duplicate_service_endpoint_and_shared_backend_are_refused() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"web2\"\nvip = \"10.77.1.100\"\nport = 80\n\n  [[service.backend]]\n  address = \"10.77.2.11\"\n  port = 80\n"
        );
        let p = problems(&text);
        assert!(
            p.iter().any(|x| x.starts_with("service[2]: 10.77.1.100:80/tcp is already service[0]")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.starts_with(
                "service[2].backend[0]: 10.77.2.11:80/tcp is already a backend of service[0]"
            )),
            "{p:?}"
        );
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        let p = problems(
            &GOOD.replace("weight = 0", "weight = -1").replace("port = 53", "port = 70000"),
        );
        assert!(p.iter().any(|x| x.starts_with("service[0].backend[1].weight")), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("service[1].port: 70000")), "{p:?}");
    }

    #[test]
    fn bad_modes_and_sizes_are_refused() {
        let p = problems(&GOOD.replace(
            "interfaces = [\"lb-c\", \"lb-b\"]",
            "interfaces = [\"lb-c\", \"lb-c\"]\nxdp_mode = \"turbo\"\nconntrack_max = 5",
        ));
        for key in ["dataplane.interfaces[1]", "dataplane.xdp_mode", "dataplane.conntrack_max"] {
            assert!(p.iter().any(|x| x.starts_with(key)), "no {key} in {p:?}");
        }
    }

    #[test]
    fn the_handshake_proof_defaults_to_ack_and_is_checked() {
        let with = |v: &str| {
            GOOD.replace("[dataplane]\n", &format!("[dataplane]\nhandshake_proof = {v}\n"))
        };
        assert_eq!(parse(GOOD).unwrap().dataplane.handshake_proof, HandshakeProof::Ack);
        let seen = parse(&with("\"syn-seen\"")).unwrap().dataplane.handshake_proof;
        assert_eq!(seen, HandshakeProof::SynSeen);
        let p = problems(&with("\"never\""));
        assert!(
            p.iter()
                .any(|x| x == "dataplane.handshake_proof: \"never\" is not one of ack, syn-seen"),
            "{p:?}"
        );
    }

    #[test]
    fn the_connection_table_is_at_most_16_mi_flows() {
        let with = |n: u64| {
            GOOD.replace(
                "interfaces = [\"lb-c\", \"lb-b\"]",
                &format!("interfaces = [\"lb-c\", \"lb-b\"]\nconntrack_max = {n}"),
            )
        };
        let max = u64::from(MAX_CONNTRACK_MAX);
        assert_eq!(parse(&with(max)).unwrap().dataplane.conntrack_max, MAX_CONNTRACK_MAX);
        let p = problems(&with(max + 1));
        assert!(
            p.iter().any(
                |x| x == "dataplane.conntrack_max: 16777217 is out of range (1024 to 16777216)"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn direct_routing_keeps_the_service_port() {
        let dsr = GOOD.replacen("\nport = 80\n", "\nport = 80\nforwarding = \"dsr\"\n", 1);
        let c = parse(&dsr).unwrap();
        assert_eq!(c.services[0].forwarding, Forwarding::Dsr);
        assert_eq!(c.services[1].forwarding, Forwarding::Nat, "the default");
        let p =
            problems(&dsr.replacen("  port = 80\n  weight = 0", "  port = 8080\n  weight = 0", 1));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("service[0].backend[1].port"), "{p:?}");
        assert!(p[0].contains("8080 differs from the service's port 80"), "{p:?}");
        let p = problems(&GOOD.replace("port = 53", "port = 53\nforwarding = \"tun\""));
        assert!(p.iter().any(|x| x.starts_with("service[1].forwarding")), "{p:?}");
    }

    #[test]
    fn schedulers_and_no_backend_answers_are_parsed() {
        let c = parse(
            &GOOD.replace("port = 53", "port = 53\nscheduler = \"wrr\"\non_no_backend = \"drop\""),
        )
        .unwrap();
        assert_eq!(
            (c.services[1].scheduler, c.services[1].reject),
            (Scheduler::WeightedRoundRobin, false)
        );
        assert_eq!(
            (c.services[0].scheduler, c.services[0].reject),
            (Scheduler::Maglev, true),
            "defaults"
        );
        let p =
            problems(&GOOD.replace(
                "port = 53",
                "port = 53\nscheduler = \"fifo\"\non_no_backend = \"ignore\"",
            ));
        assert!(p.iter().any(|x| x.starts_with("service[1].scheduler")), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("service[1].on_no_backend")), "{p:?}");
        let p = problems(&GOOD.replace("weight = 0", "weight = 65536"));
        assert!(
            p.iter().any(|x| x
                .starts_with("service[0].backend[1].weight: 65536 is out of range (0 to 65535)")),
            "{p:?}"
        );
        assert!(parse(&GOOD.replace("weight = 0", "weight = 65535")).is_ok());
    }

    const HEALTH: &str = "port = 80\n\n  [service.health]\n  check = \"http\"\n  path = \"/\"\n  expect_body = \"Bienvenue\"\n  interval_ms = 2000\n  timeout_ms = 1000\n  rise = 2\n  fall = 3\n";

    #[test]
    fn a_health_section_is_parsed() {
        let c = parse(&GOOD.replacen("port = 80\n", HEALTH, 1)).unwrap();
        let h = c.services[0].health.as_ref().expect("health");
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!((h.rise, h.fall), (2, 3));
        assert_eq!(
            h.probe,
            Probe::Http {
                path: "/".into(),
                expect_status: 200,
                expect_body: Some("Bienvenue".into())
            }
        );
        let none = parse(&GOOD.replacen(
            "port = 80\n",
            "port = 80\n  [service.health]\n  check = \"none\"\n",
            1,
        ))
        .unwrap();
        assert_eq!(none.services[0].health, None);
    }

    /// Both checks connect over TCP, which a UDP-only backend refuses: a
    /// UDP service is unchecked unless asked, and a TCP check on it is
    /// refused, in the file and through the API alike.
    #[test]
    fn a_udp_service_has_no_check_by_default_and_refuses_a_tcp_one() {
        let udp_health = |check: &str| {
            GOOD.replacen(
                "protocol = \"udp\"\n",
                &format!("protocol = \"udp\"\n  [service.health]\n{check}  interval_ms = 500\n  timeout_ms = 100\n"),
                1,
            )
        };
        let c = parse(&udp_health("")).unwrap();
        assert_eq!(c.services[1].health, None, "a UDP service gets no TCP check by default");
        let c = parse(&GOOD.replacen("port = 80\n", "port = 80\n  [service.health]\n", 1)).unwrap();
        assert_eq!(c.services[0].health.as_ref().map(|h| &h.probe), Some(&Probe::Tcp));
        for check in ["tcp", "http"] {
            let p = problems(&udp_health(&format!("  check = \"{check}\"\n")));
            assert_eq!(
                p,
                [format!(
                    "service[1] (dns).health.check: \"{check}\" checks a TCP port; a UDP service has no check yet"
                )]
            );
        }
        assert!(parse(&udp_health("  check = \"none\"\n")).is_ok());
        let body = br#"{"name": "dns", "vip": "10.77.1.53", "port": 53, "protocol": "udp", "health": {"check": "tcp"}}"#;
        let e = service_from_json(body).unwrap_err().to_string();
        assert_eq!(e, "health.check: \"tcp\" checks a TCP port; a UDP service has no check yet");
        let body = br#"{"name": "dns", "vip": "10.77.1.53", "port": 53, "protocol": "udp", "health": {"interval_ms": 500, "timeout_ms": 100}}"#;
        assert_eq!(service_from_json(body).unwrap().health, None);
    }

    #[test]
    fn bad_health_settings_are_named() {
        let bad = HEALTH
            .replace("rise = 2", "rise = 0")
            .replace("fall = 3", "fall = 0")
            .replace("timeout_ms = 1000", "timeout_ms = 2000")
            .replace("expect_body = \"Bienvenue\"", "expect_body = \"Bien(venue\"")
            .replace("path = \"/\"", "path = \"index.html\"");
        let p = problems(&GOOD.replacen("port = 80\n", &bad, 1));
        for key in ["rise", "fall", "timeout_ms", "expect_body", "path"] {
            assert!(
                p.iter().any(|x| x.starts_with(&format!("service[0].health.{key}"))),
                "no {key} in {p:?}"
            );
        }
    }

    #[test]
    fn the_answer_budget_defaults_to_linuxs_and_is_checked() {
        let with = |line: &str| GOOD.replace("[dataplane]\n", &format!("[dataplane]\n{line}\n"));
        assert_eq!(parse(GOOD).unwrap().dataplane.answers_per_second, 1000);
        for n in [0, 10_000_000] {
            let c = parse(&with(&format!("answers_per_second = {n}"))).unwrap();
            assert_eq!(c.dataplane.answers_per_second, n);
        }
        for n in ["-1", "10000001"] {
            let p = problems(&with(&format!("answers_per_second = {n}")));
            let want = format!("dataplane.answers_per_second: {n} is out of range (0 to 10000000)");
            assert!(p.iter().any(|x| x.starts_with(&want)), "{p:?}");
        }
    }

    #[test]
    fn the_reverse_path_check_defaults_to_strict_and_is_checked() {
        let with =
            |v: &str| GOOD.replace("[dataplane]\n", &format!("[dataplane]\nreverse_path = {v}\n"));
        assert_eq!(parse(GOOD).unwrap().dataplane.reverse_path, ReversePath::Strict);
        for (v, want) in [("\"loose\"", ReversePath::Loose), ("\"off\"", ReversePath::Off)] {
            assert_eq!(parse(&with(v)).unwrap().dataplane.reverse_path, want);
        }
        let p = problems(&with("\"Strict\""));
        assert!(
            p.iter().any(|x| x.starts_with(
                "dataplane.reverse_path: \"Strict\" is not one of strict, loose, off"
            )),
            "{p:?}"
        );
    }

    #[test]
    fn connection_timeouts_default_like_ipvs_and_are_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.dataplane.timeouts.tcp_established, Duration::from_mins(15));
        assert_eq!(c.dataplane.timeouts.udp, Duration::from_mins(5));
        let c =
            parse(&GOOD.replace("[dataplane]\n", "[dataplane]\ntcp_established_timeout = 3600\n"))
                .unwrap();
        assert_eq!(c.dataplane.timeouts.tcp_established, Duration::from_hours(1));
        let p = problems(&GOOD.replace(
            "[dataplane]\n",
            "[dataplane]\nudp_timeout = 0\ntcp_closing_timeout = 99999999\n",
        ));
        assert!(
            p.iter().any(|x| x.starts_with("dataplane.udp_timeout: 0 is out of range")),
            "{p:?}"
        );
        assert!(p.iter().any(|x| x.starts_with("dataplane.tcp_closing_timeout")), "{p:?}");
    }

    #[test]
    fn missing_dataplane_section_is_named() {
        let p = problems("[[service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 1\n");
        assert!(p[0].contains("dataplane"), "{p:?}");
    }
}
