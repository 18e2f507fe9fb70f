//! The config file: TOML in, a validated `Config` out. Reading the file is
//! the only I/O; every problem is reported at once, each named by its key.
//! The file's `[dataplane]`, `[admin]` and `[log]` are checked here, its
//! services as the API's are (`validate`).
use std::{
    collections::BTreeSet,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    abi::{DEFAULT_ANSWERS_PER_SECOND, DEFAULT_CONNTRACK_MAX},
    conn_table::MAX_CONNTRACK_MAX,
    fullnat::{DEFAULT_FULLNAT_MAX, MAX_FULLNAT_MAX},
};

use super::{
    bounds::{
        MAX_ALLOWED_HOSTS, MAX_ANSWERS_PER_SECOND, MAX_BGP_DELAY_MS, MAX_HOST_NAME_LEN,
        MAX_TIMEOUT_S,
    },
    model::{Dataplane, HandshakeProof, ReversePath, Service, Timeouts, XdpMode},
    problem::{Problem, Problems},
    validate::{check_service_set, named, validate_service},
    written::{RawBgp, RawConfig, RawDataplane},
};

/// A validated config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub dataplane: Dataplane,
    pub admin: Admin,
    pub log: Log,
    /// `[bgp]`, when the VIPs are to be announced.
    pub bgp: Option<Bgp>,
    pub services: Vec<Service>,
}

/// `[bgp]`: where the routes of the VIPs this node can serve are written,
/// for BIRD's `kernel` protocol to read and its BGP sessions to announce
/// (`daemon::bgp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    /// The kernel routing table the routes go to; the controller's alone.
    pub table: u32,
    /// The device the routes point at, which lives as long as the controller.
    pub device: String,
    /// How long the routers get to move a withdrawn VIP's flows away:
    /// before DOWN backends' flows are reset, before detaching at SIGTERM
    /// with `--cleanup-on-exit`.
    pub withdraw_delay: Duration,
    /// How long a VIP must stay servable before it is announced (again):
    /// the health checks of every backend settle first.
    pub announce_delay: Duration,
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
    let bgp = raw.bgp.map(|b| validate_bgp(b, &dataplane, problems));
    let services: Vec<Service> = raw
        .services
        .into_iter()
        .enumerate()
        .map(|(i, s)| validate_service(&format!("service[{i}]"), s, problems))
        .collect();
    check_service_set(&services, problems);
    for (k, i) in super::snat::vips_in_pool(&services, &dataplane.snat_addresses) {
        problems.add(
            format!("dataplane.snat_addresses[{i}]"),
            format!("{} is the VIP of service[{k}]: a pool address must be no VIP (replies to it would be taken for packets to the VIP)", services[k].vip),
        );
    }
    Config { dataplane, admin, log, bgp, services }
}

/// Routing tables the kernel gives a meaning: unspec, default, main, local.
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

fn validate_bgp(raw: RawBgp, dataplane: &Dataplane, problems: &mut Problems) -> Bgp {
    let table = match u32::try_from(raw.table) {
        Ok(t) if !RESERVED_TABLES.contains(&t) => t,
        _ => {
            problems.add(
                "bgp.table",
                format!(
                    "{} is not a table of its own (1 to 4294967295 but 253 default, 254 main, 255 local: the routes must not route)",
                    raw.table
                ),
            );
            0
        }
    };
    if !is_interface_name(&raw.device) {
        problems.add("bgp.device", format!("{:?} is not an interface name", shorten(&raw.device)));
    } else if dataplane.interfaces.contains(&raw.device) {
        problems.add(
            "bgp.device",
            format!(
                "{:?} is in dataplane.interfaces; the controller creates this device itself",
                raw.device
            ),
        );
    }
    let mut delay = |key: &str, ms: i64| match u64::try_from(ms) {
        Ok(n) if ms <= MAX_BGP_DELAY_MS => Duration::from_millis(n),
        _ => {
            problems.add(
                format!("bgp.{key}"),
                format!("{ms} is out of range (0 to {MAX_BGP_DELAY_MS})"),
            );
            Duration::ZERO
        }
    };
    let withdraw_delay = delay("withdraw_delay_ms", raw.withdraw_delay_ms);
    let announce_delay = delay("announce_delay_ms", raw.announce_delay_ms);
    Bgp { table, device: raw.device, withdraw_delay, announce_delay }
}

/// What Linux takes as a device name (`dev_valid_name`): 1 to 15 bytes, no
/// `/`, `:` or white space, neither `.` nor `..`.
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
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
    let xdp_mode = named("dataplane.xdp_mode", &raw.xdp_mode, XdpMode::Auto, problems);
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
    let fullnat_max = match u32::try_from(raw.fullnat_max) {
        Ok(n) if (1..=MAX_FULLNAT_MAX).contains(&n) => n,
        _ => {
            problems.add(
                "dataplane.fullnat_max",
                format!("{} is out of range (1 to {MAX_FULLNAT_MAX})", raw.fullnat_max),
            );
            DEFAULT_FULLNAT_MAX
        }
    };
    let mut seen = BTreeSet::new();
    for (i, name) in raw.interfaces.iter().enumerate() {
        if !is_interface_name(name) {
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
    let reverse_path =
        named("dataplane.reverse_path", &raw.reverse_path, ReversePath::Strict, problems);
    let handshake_proof =
        named("dataplane.handshake_proof", &raw.handshake_proof, HandshakeProof::Ack, problems);
    let snat_addresses = super::snat::parse_default_pool(&raw.snat_addresses, problems);
    Dataplane {
        snat_addresses,
        interfaces: raw.interfaces,
        xdp_mode,
        conntrack_max,
        fullnat_max,
        pin_path,
        timeouts,
        answers_per_second,
        reverse_path,
        handshake_proof,
    }
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::desired::{
        json::service_from_json,
        model::{CheckTarget, Forwarding, Probe, Protocol, Scheduler},
        snat,
    };

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

    const DUAL_STACK: &str = r#"
[dataplane]
interfaces = ["lb-c", "lb-b"]

[[service]]
name = "web"
vip = "10.77.1.100"
port = 80
  [[service.backend]]
  address = "10.77.2.11"
  port = 80

[[service]]
name = "web6"
vip = "fd77:1::100"
port = 80
  [[service.backend]]
  address = "fd77:2::11"
  port = 80
"#;

    #[test]
    fn a_port_is_served_on_an_ipv4_and_an_ipv6_vip_as_two_services() {
        let c = parse(DUAL_STACK).unwrap();
        assert_eq!(c.services[1].vip, "fd77:1::100".parse::<IpAddr>().unwrap());
        assert_eq!(c.services[1].backends[0].address.to_string(), "fd77:2::11");
    }

    #[test]
    fn a_service_is_one_address_family() {
        let mixed = DUAL_STACK.replace("address = \"fd77:2::11\"", "address = \"10.77.2.12\"");
        assert_eq!(
            problems(&mixed),
            [
                "service[1].backend[0].address: 10.77.2.12 is IPv4 and the VIP fd77:1::100 is not: a service is one address family (serve both with two services, one VIP each)"
            ]
        );
        for (address, why) in [
            ("fe80::11", "fe80::11 cannot be used as an endpoint address"),
            ("::ffff:10.77.2.11", "::ffff:10.77.2.11 cannot be used as an endpoint address"),
            ("ff02::1", "ff02::1 cannot be used as an endpoint address"),
            ("fd77:2::11::1", "\"fd77:2::11::1\" is not an IPv4 or IPv6 address"),
        ] {
            let text = DUAL_STACK.replace("fd77:2::11", address);
            assert_eq!(problems(&text), [format!("service[1].backend[0].address: {why}")]);
        }
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
        has("service[0].vip: \"10.77.1.300\" is not an IPv4 or IPv6 address");
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

    /// `[dataplane]`'s pool: for the full-NAT services that name none, at
    /// most 4 of each family, each once, no VIP; a service's own pool wins.
    #[test]
    fn the_dataplane_pool_is_checked_and_taken_by_services_naming_none() {
        let with_pool = |pool: &str| {
            GOOD.replacen(
                "interfaces = [\"lb-c\", \"lb-b\"]\n",
                &format!("interfaces = [\"lb-c\", \"lb-b\"]\nsnat_addresses = [{pool}]\n"),
                1,
            )
        };
        let fine = "\"10.77.2.5\", \"10.77.2.6\", \"fd77:2::5\"";
        let c = parse(&with_pool(fine)).expect("a pool of both families");
        assert_eq!(c.dataplane.snat_addresses.len(), 3);
        let mut s = Service { forwarding: Forwarding::FullNat, ..c.services[0].clone() };
        let v4: Vec<IpAddr> = vec!["10.77.2.5".parse().unwrap(), "10.77.2.6".parse().unwrap()];
        assert_eq!(snat::pool_addresses(&s, &c.dataplane.snat_addresses), v4, "its family's");
        s.snat.addresses = vec!["10.77.2.9".parse().unwrap()];
        assert_eq!(snat::pool_addresses(&s, &c.dataplane.snat_addresses), s.snat.addresses);
        for (pool, want) in [
            ("\"10.77.2\"", "dataplane.snat_addresses[0]: "),
            (
                "\"10.77.2.5\", \"10.77.2.5\"",
                "dataplane.snat_addresses[1]: 10.77.2.5 is already listed",
            ),
            (
                "\"10.77.2.1\", \"10.77.2.2\", \"10.77.2.3\", \"fd77::1\", \"10.77.2.4\", \"10.77.2.5\"",
                "dataplane.snat_addresses[5]: 10.77.2.5: more IPv4 addresses than the 4 a pool holds",
            ),
            (
                "\"10.77.1.100\"",
                "dataplane.snat_addresses[0]: 10.77.1.100 is the VIP of service[0]",
            ),
        ] {
            let p = problems(&with_pool(pool));
            assert!(p.iter().any(|x| x.starts_with(want)), "{pool}: {p:?}");
        }
    }

    /// Full NAT's replies follow their own mapping: full-NAT services may
    /// share a backend; a NAT one may not (its reply names no VIP).
    #[test]
    fn only_full_nat_services_share_a_backend() {
        let fullnat = |name: &str, port: u16| {
            format!(
                "\n[[service]]\nname = \"{name}\"\nvip = \"10.77.1.110\"\nport = {port}\nforwarding = \"fullnat\"\n\n  [[service.backend]]\n  address = \"10.77.3.11\"\n  port = 80\n"
            )
        };
        let shared = format!("{GOOD}{}{}", fullnat("a", 80), fullnat("b", 81));
        let c = parse(&shared).expect("two full-NAT services on one backend");
        assert_eq!(c.services.len(), 4);
        let pooled_at_a_vip = shared.replacen(
            "forwarding = \"fullnat\"\n",
            "forwarding = \"fullnat\"\nsnat_addresses = [\"10.77.1.100\"]\n",
            1,
        );
        let p = problems(&pooled_at_a_vip);
        assert!(
            p.iter().any(|x| x
                .starts_with("service[2].snat_addresses[0]: 10.77.1.100 is the VIP of service[0]")),
            "{p:?}"
        );
        let with_nat = format!("{GOOD}{}", fullnat("a", 80)).replace("10.77.3.11", "10.77.2.11");
        let p = problems(&with_nat);
        assert!(
            p.iter().any(|x| x.starts_with(
                "service[2].backend[0]: 10.77.2.11:80/tcp is already a backend of service[0]"
            ) && x.contains("two VIPs on one backend could not be told apart")),
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
    fn the_full_nat_maps_are_sized_from_1_to_4_mi_flows() {
        let with = |n: i64| {
            GOOD.replace(
                "interfaces = [\"lb-c\", \"lb-b\"]",
                &format!("interfaces = [\"lb-c\", \"lb-b\"]\nfullnat_max = {n}"),
            )
        };
        assert_eq!(parse(GOOD).unwrap().dataplane.fullnat_max, DEFAULT_FULLNAT_MAX);
        assert_eq!(DEFAULT_FULLNAT_MAX, 65_536);
        for n in [1, 8, i64::from(MAX_FULLNAT_MAX)] {
            assert_eq!(i64::from(parse(&with(n)).unwrap().dataplane.fullnat_max), n);
        }
        for (n, said) in [
            (0, "dataplane.fullnat_max: 0 is out of range (1 to 262144)"),
            (262_145, "dataplane.fullnat_max: 262145 is out of range (1 to 262144)"),
            (-1, "dataplane.fullnat_max: -1 is out of range (1 to 262144)"),
        ] {
            let p = problems(&with(n));
            assert!(p.iter().any(|x| x == said), "{p:?}");
        }
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
                expect_body: Some("Bienvenue".into()),
                tls: None,
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
        for check in ["tcp", "http", "https"] {
            let p = problems(&udp_health(&format!("  check = \"{check}\"\n")));
            assert_eq!(
                p,
                [format!(
                    "service[1] (dns).health.check: \"{check}\" checks a TCP port; a UDP service takes \"udp\" or \"script\""
                )]
            );
        }
        assert!(parse(&udp_health("  check = \"none\"\n")).is_ok());
        let body = br#"{"name": "dns", "vip": "10.77.1.53", "port": 53, "protocol": "udp", "health": {"check": "tcp"}}"#;
        let e = service_from_json(body).unwrap_err().to_string();
        assert_eq!(
            e,
            "health.check: \"tcp\" checks a TCP port; a UDP service takes \"udp\" or \"script\""
        );
        let body = br#"{"name": "dns", "vip": "10.77.1.53", "port": 53, "protocol": "udp", "health": {"interval_ms": 500, "timeout_ms": 100}}"#;
        assert_eq!(service_from_json(body).unwrap().health, None);
    }

    /// `web` checked with `health` (the lines under `[service.health]`).
    fn web_checked(health: &str) -> String {
        GOOD.replacen("port = 80\n", &format!("port = 80\n  [service.health]\n{health}"), 1)
    }

    /// `dns` (UDP) checked with `health`.
    fn dns_checked(health: &str) -> String {
        GOOD.replacen(
            "protocol = \"udp\"\n",
            &format!("protocol = \"udp\"\n  [service.health]\n{health}"),
            1,
        )
    }

    /// The first service's check, read back through the API's JSON too.
    fn probe_of(text: &str, service: usize) -> Probe {
        let c = parse(text).unwrap();
        let s = &c.services[service];
        let again =
            service_from_json(crate::desired::json::service_to_json(s).to_string().as_bytes())
                .expect("read back");
        assert_eq!(again.health, s.health, "JSON changed the check");
        s.health.as_ref().expect("checked").probe.clone()
    }

    #[test]
    fn udp_checks_send_text_or_hex_and_expect_a_pattern() {
        let p = probe_of(
            &dns_checked("  check = \"udp\"\n  send = \"ping\"\n  expect = \"^pong\"\n"),
            1,
        );
        assert_eq!(p, Probe::Udp { send: b"ping".to_vec(), expect: Some("^pong".into()) });
        let p = probe_of(&dns_checked("  check = \"udp\"\n  send_hex = \"12 34 01 00\"\n"), 1);
        assert_eq!(p, Probe::Udp { send: vec![0x12, 0x34, 1, 0], expect: None });
        // On a TCP service too (a DNS server answers both).
        let p = probe_of(&web_checked("  check = \"udp\"\n  send = \"x\"\n  check_port = 53\n"), 0);
        assert!(matches!(p, Probe::Udp { .. }));
        let at = |health: &str| problems(&dns_checked(&format!("  check = \"udp\"\n{health}")));
        assert_eq!(
            at(""),
            [
                "service[1].health.send: a udp check needs the datagram it sends: send (text) or send_hex"
            ]
        );
        assert_eq!(
            at("  send = \"a\"\n  send_hex = \"61\"\n"),
            ["service[1].health.send: give send or send_hex, not both"]
        );
        assert_eq!(
            at("  send_hex = \"6\"\n"),
            ["service[1].health.send_hex: \"6\" is not whole bytes: two hex digits each"]
        );
        let long = "x".repeat(1025);
        assert_eq!(
            at(&format!("  send = \"{long}\"\n")),
            ["service[1].health.send: 1025 bytes long; at most 1024"]
        );
        assert!(
            parse(&dns_checked(&format!("  check = \"udp\"\n  send = \"{}\"\n", &long[1..])))
                .is_ok()
        );
        assert_eq!(
            at("  send = \"a\"\n  expect = \"(\"\n")[0].split(':').next(),
            Some("service[1].health.expect")
        );
        // Keys of other check types are refused, not ignored.
        assert_eq!(
            at("  send = \"a\"\n  sni = \"x.test\"\n"),
            ["service[1].health.sni: only for check = \"https\", not \"udp\""]
        );
        assert_eq!(
            problems(&web_checked("  send = \"a\"\n")),
            ["service[0].health.send: only for check = \"udp\", not \"tcp\""]
        );
    }

    #[test]
    fn https_checks_verify_against_the_system_or_a_ca_file() {
        use crate::daemon::health::tls::testing::TestPki;
        let p = probe_of(&web_checked("  check = \"https\"\n  path = \"/health\"\n"), 0);
        let Probe::Http { path, tls: Some(tls), .. } = p else { panic!("{p:?}") };
        assert_eq!(path, "/health");
        assert_eq!((tls.sni, tls.ca_file, tls.verify), (None, None, true));
        let pki = TestPki::new("config");
        let ca = pki.path("ca.pem").display().to_string();
        let text = web_checked(&format!(
            "  check = \"https\"\n  sni = \"backend.test\"\n  ca_file = \"{ca}\"\n"
        ));
        let Probe::Http { tls: Some(tls), .. } = probe_of(&text, 0) else { panic!() };
        assert_eq!(tls.sni.as_deref(), Some("backend.test"));
        assert_eq!(tls.ca_file, Some(PathBuf::from(&ca)));
        let text = web_checked("  check = \"https\"\n  verify = false\n");
        let Probe::Http { tls: Some(tls), .. } = probe_of(&text, 0) else { panic!() };
        assert!(!tls.verify);

        let at = |health: &str| problems(&web_checked(&format!("  check = \"https\"\n{health}")));
        assert_eq!(
            at("  ca_file = \"/nonexistent/ca.pem\"\n"),
            [
                "service[0].health.ca_file: \"/nonexistent/ca.pem\": No such file or directory (os error 2)"
            ]
        );
        let key = pki.path("ca.key").display().to_string();
        assert_eq!(
            at(&format!("  ca_file = \"{key}\"\n")),
            [format!(
                "service[0].health.ca_file: \"{key}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )]
        );
        assert_eq!(
            at(&format!("  ca_file = \"{ca}\"\n  verify = false\n")),
            ["service[0].health.ca_file: is not used with verify = false: remove one of the two"]
        );
        assert_eq!(
            at("  sni = \"10.77.2.11\"\n"),
            [
                "service[0].health.sni: \"10.77.2.11\" is an address: leave sni out to verify the probed address"
            ]
        );
        assert_eq!(
            problems(&web_checked("  check = \"http\"\n  verify = false\n")),
            ["service[0].health.verify: only for check = \"https\", not \"http\""]
        );
    }

    #[test]
    fn script_checks_name_a_program_that_runs() {
        let p = probe_of(
            &web_checked("  check = \"script\"\n  command = [\"/bin/true\", \"-v\"]\n"),
            0,
        );
        assert_eq!(
            p,
            Probe::Script { command: vec!["/bin/true".into(), "-v".into()], dynamic_weight: false }
        );
        let p = probe_of(
            &dns_checked(
                "  check = \"script\"\n  command = [\"/bin/true\"]\n  dynamic_weight = true\n",
            ),
            1,
        );
        assert_eq!(p, Probe::Script { command: vec!["/bin/true".into()], dynamic_weight: true });
        let at = |health: &str| problems(&web_checked(&format!("  check = \"script\"\n{health}")));
        assert_eq!(
            at("  command = [\"/nonexistent/check\"]\n"),
            [
                "service[0].health.command: \"/nonexistent/check\": No such file or directory (os error 2)"
            ]
        );
        let plain = std::env::temp_dir().join(format!("lb-plain-{}", std::process::id()));
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let shown = plain.display();
        assert_eq!(
            at(&format!("  command = [\"{shown}\"]\n")),
            [format!("service[0].health.command: \"{shown}\" is not executable (mode 644)")]
        );
        std::fs::remove_file(&plain).unwrap();
        assert!(
            at("")[0].starts_with("service[0].health.command: a script check needs the program")
        );
        assert!(at("  command = \"/bin/true\"\n")[0].contains("command"), "a string is not a list");
        assert_eq!(
            problems(&web_checked("  dynamic_weight = true\n")),
            ["service[0].health.dynamic_weight: only for check = \"script\", not \"tcp\""]
        );
    }

    /// `backup = true` marks a sorry server; a wrong type is named; the
    /// API's JSON reads it back.
    #[test]
    fn a_backup_is_parsed_named_and_read_back() {
        let text = GOOD.replacen("  weight = 0\n", "  weight = 0\n  backup = true\n", 1);
        let c = parse(&text).unwrap();
        let backups: Vec<bool> = c.services[0].backends.iter().map(|b| b.backup).collect();
        assert_eq!(backups, [false, true]);
        let json = crate::desired::json::service_to_json(&c.services[0]);
        assert_eq!(json["backends"][1]["backup"], true);
        assert!(json["backends"][0].get("backup").is_none(), "a primary says nothing");
        assert_eq!(service_from_json(json.to_string().as_bytes()).unwrap(), c.services[0]);
        let p = problems(&GOOD.replacen("  weight = 0\n", "  weight = 0\n  backup = \"yes\"\n", 1));
        assert!(p[0].starts_with("service[0].backend[1].backup"), "{p:?}");
        let e = crate::desired::json::backend_from_json(
            br#"{"address": "10.77.2.14", "port": 80, "backup": 1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("backup: invalid type"), "{e}");
    }

    /// `persistence_s` and `persistence_netmask`: parsed, bounded by the
    /// VIP's family, named, read back through JSON.
    #[test]
    fn persistence_is_parsed_bounded_and_read_back() {
        let with = |keys: &str| GOOD.replacen("port = 80\n", &format!("port = 80\n{keys}"), 1);
        let c = parse(&with("persistence_s = 300\npersistence_netmask = 24\n")).unwrap();
        let web = &c.services[0];
        let p = web.persistence.expect("persistent");
        assert_eq!((p.timeout, p.netmask), (Duration::from_mins(5), 24));
        let json = crate::desired::json::service_to_json(web);
        assert_eq!(service_from_json(json.to_string().as_bytes()).unwrap(), *web);
        let one = parse(&with("persistence_s = 10\n")).unwrap();
        assert_eq!(one.services[0].persistence.unwrap().netmask, 32, "each client alone");
        assert_eq!(parse(&with("persistence_s = 0\n")).unwrap().services[0].persistence, None);
        assert_eq!(c.services[1].persistence, None, "none by default");
        for (keys, want) in [
            (
                "persistence_s = -1\n",
                "service[0].persistence_s: -1 is out of range (0, none, to 604800 seconds)",
            ),
            (
                "persistence_s = 604801\n",
                "service[0].persistence_s: 604801 is out of range (0, none, to 604800 seconds)",
            ),
            (
                "persistence_s = 5\npersistence_netmask = 33\n",
                "service[0].persistence_netmask: 33 is out of range (a prefix length, 0 to 32 for an IPv4 VIP)",
            ),
            (
                "persistence_netmask = 24\n",
                "service[0].persistence_netmask: 24 without persistence_s: clients are grouped only for persistence",
            ),
        ] {
            assert_eq!(problems(&with(keys)), [want], "{keys}");
        }
        let v6 = DUAL_STACK.replacen(
            "vip = \"fd77:1::100\"\n",
            "vip = \"fd77:1::100\"\npersistence_s = 5\npersistence_netmask = 64\n",
            1,
        );
        assert_eq!(parse(&v6).unwrap().services[1].persistence.unwrap().netmask, 64);
        let v6 = v6.replace("persistence_netmask = 64", "persistence_netmask = 129");
        assert_eq!(
            problems(&v6),
            [
                "service[1].persistence_netmask: 129 is out of range (a prefix length, 0 to 128 for an IPv6 VIP)"
            ]
        );
    }

    /// `allowed_sources`: prefixes of the VIP's family, each refusal naming
    /// its entry; read back through JSON.
    #[test]
    fn allowed_sources_are_prefixes_of_the_services_family() {
        let with = |list: &str| {
            GOOD.replacen("port = 80\n", &format!("port = 80\nallowed_sources = [{list}]\n"), 1)
        };
        let c = parse(&with("\"10.0.0.0/8\", \"192.0.2.7\"")).unwrap();
        let web = &c.services[0];
        let shown: Vec<String> = web.allowed_sources.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32"]);
        let json = crate::desired::json::service_to_json(web);
        assert_eq!(service_from_json(json.to_string().as_bytes()).unwrap(), *web);
        assert!(parse(&with("")).unwrap().services[0].allowed_sources.is_empty());
        for (list, want) in [
            (
                "\"10.0.0.1/8\"",
                "service[0].allowed_sources[0]: \"10.0.0.1/8\": bits are set past the prefix length (the network is 10.0.0.0/8)",
            ),
            (
                "\"10.0.0.0/33\"",
                "service[0].allowed_sources[0]: \"10.0.0.0/33\": the prefix length must be 0 to 32",
            ),
            (
                "\"10.0.0.0/8\", \"nowhere\"",
                "service[0].allowed_sources[1]: \"nowhere\": not an address or a prefix (10.0.0.0/8, fd00::/8)",
            ),
            (
                "\"fd00::/8\"",
                "service[0].allowed_sources[0]: fd00::/8 is IPv6 and the VIP 10.77.1.100 is not: a service's sources are of its family",
            ),
            (
                "\"10.0.0.0/8\", \"10.0.0.0/8\"",
                "service[0].allowed_sources[1]: 10.0.0.0/8 is already listed",
            ),
        ] {
            assert_eq!(problems(&with(list)), [want], "{list}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"10.0.{i}.0/24\"")).collect();
        assert_eq!(
            problems(&with(&many.join(", "))),
            ["service[0].allowed_sources: 65 prefixes; at most 64 per service"]
        );
    }

    /// `max_conns`: 0 (no limit) to 2^30, named; read back through JSON.
    #[test]
    fn max_conns_is_bounded_named_and_read_back() {
        let text = GOOD.replacen("  weight = 0\n", "  weight = 0\n  max_conns = 100\n", 1);
        let c = parse(&text).unwrap();
        assert_eq!(c.services[0].backends[1].max_conns, 100);
        assert_eq!(c.services[0].backends[0].max_conns, 0, "no limit by default");
        let json = crate::desired::json::service_to_json(&c.services[0]);
        assert_eq!(service_from_json(json.to_string().as_bytes()).unwrap(), c.services[0]);
        for bad in ["-1", "1073741825"] {
            let text =
                GOOD.replacen("  weight = 0\n", &format!("  weight = 0\n  max_conns = {bad}\n"), 1);
            assert_eq!(
                problems(&text),
                [format!(
                    "service[0].backend[1].max_conns: {bad} is out of range (0, no limit, to 1073741824)"
                )]
            );
        }
    }

    /// `slow_start_s`: the service's, the backend's over it, 0 to 3600, named.
    #[test]
    fn slow_starts_are_bounded_named_and_read_back() {
        let text = GOOD.replacen("port = 80\n", "port = 80\nslow_start_s = 3600\n", 1).replacen(
            "  weight = 0\n",
            "  weight = 0\n  slow_start_s = 0\n",
            1,
        );
        let c = parse(&text).unwrap();
        let web = &c.services[0];
        assert_eq!(web.slow_start, Duration::from_hours(1));
        assert_eq!(web.backends[0].slow_start_in(web), Duration::from_hours(1));
        assert_eq!(web.backends[1].slow_start_in(web), Duration::ZERO, "its own wins");
        assert_eq!(c.services[1].slow_start, Duration::ZERO, "none by default");
        let json = crate::desired::json::service_to_json(web);
        assert_eq!(service_from_json(json.to_string().as_bytes()).unwrap(), *web);
        for bad in [-1, 3601] {
            let p = problems(&GOOD.replacen(
                "port = 80\n",
                &format!("port = 80\nslow_start_s = {bad}\n"),
                1,
            ));
            assert_eq!(
                p,
                [format!("service[0].slow_start_s: {bad} is out of range (0 to 3600 seconds)")]
            );
            let p = problems(&GOOD.replacen(
                "  weight = 0\n",
                &format!("  weight = 0\n  slow_start_s = {bad}\n"),
                1,
            ));
            assert_eq!(
                p,
                [format!(
                    "service[0].backend[1].slow_start_s: {bad} is out of range (0 to 3600 seconds)"
                )]
            );
        }
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

    /// `check_address` / `check_port`: the backend's over the service's
    /// over the backend's own, each of the two on its own.
    #[test]
    fn check_targets_are_parsed_with_the_backends_over_the_services() {
        let text = GOOD
            .replacen("port = 80\n", "port = 80\n  [service.health]\n  check_port = 8081\n", 1)
            .replacen(
                "  address = \"10.77.2.12\"\n  port = 80\n",
                "  address = \"10.77.2.12\"\n  port = 80\n  check_address = \"10.77.3.12\"\n  check_port = 9000\n",
                1,
            );
        let c = parse(&text).unwrap();
        let web = &c.services[0];
        let h = web.health.as_ref().expect("checked");
        assert_eq!(h.target, CheckTarget { address: None, port: Some(8081) });
        let at = |b: usize| h.target_of(&web.backends[b]).to_string();
        assert_eq!(at(0), "10.77.2.11:8081", "the service's port, the backend's own address");
        assert_eq!(at(1), "10.77.3.12:9000", "the backend's own check_* win");
        let text = GOOD.replacen(
            "port = 80\n",
            "port = 80\n  [service.health]\n  check_address = \"10.77.9.9\"\n",
            1,
        );
        let c = parse(&text).unwrap();
        let web = &c.services[0];
        let h = web.health.as_ref().unwrap();
        assert_eq!(h.target_of(&web.backends[1]).to_string(), "10.77.9.9:80");
        // Unset: the backend's own address and port, as before.
        let c = parse(&GOOD.replacen("port = 80\n", "port = 80\n  [service.health]\n", 1)).unwrap();
        let web = &c.services[0];
        let h = web.health.as_ref().unwrap();
        assert_eq!(h.target_of(&web.backends[0]).to_string(), "10.77.2.11:80");
    }

    #[test]
    fn check_ports_and_addresses_are_bounded_and_named() {
        let with = |health: &str, backend: &str| {
            GOOD.replacen("port = 80\n", &format!("port = 80\n  [service.health]\n{health}"), 1)
                .replacen(
                    "  address = \"10.77.2.11\"\n  port = 80\n",
                    &format!("  address = \"10.77.2.11\"\n  port = 80\n{backend}"),
                    1,
                )
        };
        for port in [1, 65535] {
            let c = parse(&with(&format!("  check_port = {port}\n"), "")).unwrap();
            assert_eq!(c.services[0].health.as_ref().unwrap().target.port, Some(port));
            let c = parse(&with("", &format!("  check_port = {port}\n"))).unwrap();
            assert_eq!(c.services[0].backends[0].check.port, Some(port));
        }
        for port in [0, 65536] {
            let p = problems(&with(&format!("  check_port = {port}\n"), ""));
            assert_eq!(
                p,
                [format!("service[0].health.check_port: {port} is not a port (1 to 65535)")]
            );
            let p = problems(&with("", &format!("  check_port = {port}\n")));
            assert_eq!(
                p,
                [format!("service[0].backend[0].check_port: {port} is not a port (1 to 65535)")]
            );
        }
        for (address, why) in [
            ("::", ":: cannot be used as an endpoint address"),
            ("web1", "\"web1\" is not an IPv4 or IPv6 address"),
            ("0.0.0.0", "0.0.0.0 cannot be used as an endpoint address"),
        ] {
            let p = problems(&with(&format!("  check_address = \"{address}\"\n"), ""));
            assert_eq!(p, [format!("service[0].health.check_address: {why}")]);
            let p = problems(&with("", &format!("  check_address = \"{address}\"\n")));
            assert_eq!(p, [format!("service[0].backend[0].check_address: {why}")]);
        }
    }

    /// A `check_*` where nothing is probed is an error naming it, not ignored.
    #[test]
    fn a_check_target_without_a_check_is_refused() {
        let none = "no health check to redirect: the service's check is \"none\" or it has no [service.health]";
        // check = "none", said or a UDP service's default.
        let p = problems(&GOOD.replacen(
            "port = 80\n",
            "port = 80\n  [service.health]\n  check = \"none\"\n  check_port = 8081\n",
            1,
        ));
        assert_eq!(p, [format!("service[0].health.check_port: {none}")]);
        // A value refused for itself is named once, for that.
        let p = problems(&GOOD.replacen(
            "port = 80\n",
            "port = 80\n  [service.health]\n  check = \"none\"\n  check_port = 0\n",
            1,
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("service[0].health.check_port: 0 is"), "{p:?}");
        let p = problems(&GOOD.replacen(
            "protocol = \"udp\"\n",
            "protocol = \"udp\"\n  [service.health]\n  check_address = \"10.77.3.1\"\n",
            1,
        ));
        assert_eq!(p, [format!("service[1].health.check_address: {none}")]);
        // A backend's, in a service without [service.health].
        let p = problems(&GOOD.replacen(
            "  address = \"10.77.2.12\"\n  port = 80\n",
            "  address = \"10.77.2.12\"\n  port = 80\n  check_port = 8081\n",
            1,
        ));
        assert_eq!(p, [format!("service[0].backend[1].check_port: {none}")]);
        // Not where the check was refused for its own reason.
        let p = problems(&GOOD.replacen(
            "port = 80\n",
            "port = 80\n  [service.health]\n  rise = 0\n\n  [[service.backend]]\n  address = \"10.77.2.13\"\n  port = 80\n  check_port = 8081\n",
            1,
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("service[0].health.rise"), "{p:?}");
        // Through the API alike.
        let body = br#"{"name": "dns", "vip": "10.77.1.53", "port": 53, "protocol": "udp", "health": {"check_port": 5353}}"#;
        let e = service_from_json(body).unwrap_err().to_string();
        assert_eq!(e, format!("health.check_port: {none}"));
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

    /// `[bgp]`: absent, nothing is announced; present, every key has a
    /// default; each bad value is named by its key, at the limit and past it.
    #[test]
    fn the_bgp_section_has_defaults_and_names_each_bad_key() {
        assert_eq!(parse(GOOD).unwrap().bgp, None);
        let with = |keys: &str| {
            GOOD.replace(
                "[[service]]\nname = \"web\"",
                &format!("[bgp]\n{keys}\n\n[[service]]\nname = \"web\""),
            )
        };
        let bgp = parse(&with("")).unwrap().bgp.unwrap();
        assert_eq!((bgp.table, bgp.device.as_str()), (4077, "lb-vips"));
        assert_eq!(bgp.withdraw_delay, Duration::from_secs(2));
        assert_eq!(bgp.announce_delay, Duration::from_secs(5));
        let limits = parse(&with(
            "table = 4294967295\ndevice = \"abcdefghijklmno\"\nwithdraw_delay_ms = 60000\nannounce_delay_ms = 0",
        ))
        .unwrap()
        .bgp
        .unwrap();
        assert_eq!((limits.table, limits.device.len()), (u32::MAX, 15));
        assert_eq!(limits.withdraw_delay, Duration::from_mins(1));
        assert_eq!(limits.announce_delay, Duration::ZERO);
        for (keys, key, message) in [
            ("table = 254", "bgp.table", "254 is not a table of its own"),
            ("table = 0", "bgp.table", "0 is not a table of its own"),
            ("table = 4294967296", "bgp.table", "4294967296 is not a table of its own"),
            ("table = -1", "bgp.table", "-1 is not a table of its own"),
            ("device = \"abcdefghijklmnop\"", "bgp.device", "is not an interface name"),
            ("device = \"\"", "bgp.device", "is not an interface name"),
            ("device = \"a/b\"", "bgp.device", "is not an interface name"),
            ("device = \"lb-c\"", "bgp.device", "is in dataplane.interfaces"),
            ("withdraw_delay_ms = 60001", "bgp.withdraw_delay_ms", "60001 is out of range"),
            ("withdraw_delay_ms = -1", "bgp.withdraw_delay_ms", "-1 is out of range"),
            ("announce_delay_ms = 60001", "bgp.announce_delay_ms", "60001 is out of range"),
            ("table = \"main\"", "bgp.table (line", "invalid type"),
            ("asn = 65001", "bgp.asn (line", "unknown field `asn`"),
        ] {
            let p = problems(&with(keys));
            assert!(p.iter().any(|x| x.starts_with(key) && x.contains(message)), "{keys}: {p:?}");
        }
    }
}
