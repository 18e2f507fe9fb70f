//! What was written, checked and made into the model: a service, its
//! health check and its backends (from the config file or an API body
//! alike), and the checks over a set of services (unique names, endpoints
//! and backends; direct routing's ports; what the kernel maps hold).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_common::abi::LC_MAX_BACKENDS;

use super::{
    bounds::{
        MAX_ALLOWED_SOURCES, MAX_BACKEND_COUNT, MAX_INTERVAL_MS, MAX_MAX_CONNS, MAX_NAME_LEN,
        MAX_PERSISTENCE_S, MAX_RISE_FALL, MAX_SERVICE_BACKENDS, MAX_SERVICE_COUNT,
        MAX_SLOW_START_S, MAX_WEIGHT,
    },
    checks,
    model::{
        AdminState, Backend, CheckTarget, Forwarding, HealthCheck, Persistence, Prefix, Protocol,
        Scheduler, Service,
    },
    names::{Check, Named, OnNoBackend},
    problem::{Problem, Problems},
    written::{RawBackend, RawHealth, RawService},
};

/// The value `text` names; where it names none, a problem at `key` and `default`.
pub(super) fn named<T: Named>(key: &str, text: &str, default: T, problems: &mut Problems) -> T {
    T::from_name(text).unwrap_or_else(|| {
        problems.add(key, format!("{text:?} is not one of {}", T::one_of()));
        default
    })
}

/// Whether `name` can name a service: 1 to 63 letters, digits, '-', '_'
/// or '.', not starting with '.' (it goes in URL paths, logs, metrics labels).
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn validate_service(key: &str, raw: RawService, problems: &mut Problems) -> Service {
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
    let protocol = named(&format!("{key}.protocol"), &raw.protocol, Protocol::Tcp, problems);
    let scheduler = named(&format!("{key}.scheduler"), &raw.scheduler, Scheduler::Maglev, problems);
    let forwarding =
        named(&format!("{key}.forwarding"), &raw.forwarding, Forwarding::Nat, problems);
    let on_no_backend =
        named(&format!("{key}.on_no_backend"), &raw.on_no_backend, OnNoBackend::Reject, problems);
    let reject = on_no_backend.rejects();
    let snat = super::snat::parse_snat(key, (forwarding, vip), &raw, problems);
    let before_health = problems.0.len();
    let health =
        raw.health.as_ref().and_then(|h| validate_health(key, &raw.name, protocol, h, problems));
    // Only where the service has no check at all: not where its check was
    // refused for another reason, already named.
    let unchecked = health.is_none() && problems.0.len() == before_health;
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
    if unchecked {
        for (j, b) in backends.iter().enumerate() {
            refuse_unchecked_target(&format!("{key}.backend[{j}]"), b.check, problems);
        }
    }
    let mut seen = HashMap::new();
    for (j, b) in backends.iter().enumerate() {
        if let Some(first) = seen.insert((b.address, b.port), j) {
            problems.add(
                format!("{key}.backend[{j}]"),
                format!(
                    "{} is already listed as backend[{first}]",
                    SocketAddr::new(b.address, b.port)
                ),
            );
        }
        // The data plane rewrites within one family (NAT46/64 is not done).
        // Not said of an address already refused (read as 0.0.0.0).
        let address_key = format!("{key}.backend[{j}].address");
        let refused = |field: &str| {
            problems.0.iter().any(|p| p.key == field || p.key == format!("{key}.vip"))
        };
        if b.address.is_ipv4() != vip.is_ipv4() && !refused(&address_key) {
            problems.add(
                address_key,
                format!(
                    "{} is {} and the VIP {vip} is not: a service is one address family (serve both with two services, one VIP each)",
                    b.address,
                    family_name(b.address)
                ),
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
    let slow_start = parse_slow_start(&format!("{key}.slow_start_s"), raw.slow_start_s, problems)
        .unwrap_or_default();
    let persistence =
        parse_persistence(key, (raw.persistence_s, raw.persistence_netmask), vip, problems);
    let allowed_sources = parse_allowed_sources(key, &raw.allowed_sources, vip, problems);
    Service {
        snat,
        persistence,
        allowed_sources,
        health,
        name: raw.name,
        vip,
        port,
        protocol,
        scheduler,
        forwarding,
        reject,
        slow_start,
        backends,
    }
}

/// `tcp`, `http` and `https` connect over TCP. A UDP-only backend refuses
/// that connection, so such a check on a UDP service would take every
/// backend DOWN and reject every datagram: it is an error. A UDP service
/// has no check unless asked (no datagram is an answer every UDP protocol
/// gives: a DNS server ignores junk, a syslog receiver never answers).
fn validate_health(
    service_key: &str,
    service: &str,
    protocol: Protocol,
    raw: &RawHealth,
    problems: &mut Problems,
) -> Option<HealthCheck> {
    let key = format!("{service_key}.health");
    let before = problems.0.len();
    let check = match raw.check.as_deref() {
        Some(text) => named(&format!("{key}.check"), text, Check::None, problems),
        None => match protocol {
            Protocol::Tcp => Check::Tcp,
            Protocol::Udp => Check::None,
        },
    };
    if protocol == Protocol::Udp && matches!(check, Check::Tcp | Check::Http | Check::Https) {
        // In a file, `service[2]` alone hardly says which service it is.
        let which = if service_key.is_empty() || service.is_empty() {
            service_key.to_owned()
        } else {
            format!("{service_key} ({service})")
        };
        problems.add(
            format!("{which}.health.check"),
            format!(
                "{:?} checks a TCP port; a UDP service takes \"udp\" or \"script\"",
                check.name()
            ),
        );
        return None;
    }
    let target =
        validate_check_target(&key, raw.check_address.as_deref(), raw.check_port, problems);
    if check == Check::None {
        refuse_unchecked_target(&key, target, problems);
    }
    let probe = checks::probe_of(&key, check, raw, problems);
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
        target,
    })
}

/// `check_address` and `check_port` under `key`: an endpoint address and a port.
fn validate_check_target(
    key: &str,
    address: Option<&str>,
    port: Option<i64>,
    problems: &mut Problems,
) -> CheckTarget {
    CheckTarget {
        address: address.map(|a| parse_addr(&format!("{key}.check_address"), a, problems)),
        port: port.map(|p| parse_port(&format!("{key}.check_port"), p, problems)),
    }
}

/// A `check_address` or `check_port` where nothing is probed is refused
/// rather than ignored: it says the operator expects a check that is not there.
/// A key already refused for its value is not named twice.
pub(super) fn refuse_unchecked_target(key: &str, target: CheckTarget, problems: &mut Problems) {
    for (name, set) in
        [("check_address", target.address.is_some()), ("check_port", target.port.is_some())]
    {
        let field = format!("{key}.{name}");
        if set && !problems.0.iter().any(|p| p.key == field) {
            problems.add(
                field,
                "no health check to redirect: the service's check is \"none\" or it has no [service.health]",
            );
        }
    }
}

pub(super) fn validate_backend(key: &str, raw: &RawBackend, problems: &mut Problems) -> Backend {
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
    let state = raw.state.as_deref().map_or(AdminState::Active, |text| {
        named(&format!("{key}.state"), text, AdminState::Active, problems)
    });
    let check = validate_check_target(key, raw.check_address.as_deref(), raw.check_port, problems);
    let slow_start = parse_slow_start(&format!("{key}.slow_start_s"), raw.slow_start_s, problems);
    let max_conns = match u32::try_from(raw.max_conns) {
        Ok(n) if i64::from(n) <= MAX_MAX_CONNS => n,
        _ => {
            problems.add(
                format!("{key}.max_conns"),
                format!("{} is out of range (0, no limit, to {MAX_MAX_CONNS})", raw.max_conns),
            );
            0
        }
    };
    Backend { address, port, weight, state, check, backup: raw.backup, slow_start, max_conns }
}

/// `persistence_s` (0 or absent: none) and `persistence_netmask` (a
/// prefix length of the VIP's family; absent: the whole address).
fn parse_persistence(
    key: &str,
    (seconds, netmask): (Option<i64>, Option<i64>),
    vip: IpAddr,
    problems: &mut Problems,
) -> Option<Persistence> {
    let bits: i64 = if vip.is_ipv4() { 32 } else { 128 };
    let netmask = match netmask {
        Some(len) if !(0..=bits).contains(&len) => {
            problems.add(
                format!("{key}.persistence_netmask"),
                format!(
                    "{len} is out of range (a prefix length, 0 to {bits} for an {} VIP)",
                    family_name(vip)
                ),
            );
            return None;
        }
        Some(len) if seconds.unwrap_or(0) == 0 => {
            problems.add(
                format!("{key}.persistence_netmask"),
                format!("{len} without persistence_s: clients are grouped only for persistence"),
            );
            return None;
        }
        Some(len) => len,
        None => bits,
    };
    let seconds = seconds?;
    if !(0..=MAX_PERSISTENCE_S).contains(&seconds) {
        problems.add(
            format!("{key}.persistence_s"),
            format!("{seconds} is out of range (0, none, to {MAX_PERSISTENCE_S} seconds)"),
        );
        return None;
    }
    (seconds > 0).then(|| Persistence {
        timeout: Duration::from_secs(seconds.unsigned_abs()),
        netmask: u8::try_from(netmask).unwrap_or(0),
    })
}

/// `allowed_sources`: prefixes of the VIP's family, each named by its
/// index where it is refused.
fn parse_allowed_sources(
    key: &str,
    texts: &[String],
    vip: IpAddr,
    problems: &mut Problems,
) -> Vec<Prefix> {
    if texts.len() > MAX_ALLOWED_SOURCES {
        problems.add(
            format!("{key}.allowed_sources"),
            format!("{} prefixes; at most {MAX_ALLOWED_SOURCES} per service", texts.len()),
        );
        return Vec::new();
    }
    let mut prefixes = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let entry = format!("{key}.allowed_sources[{i}]");
        match parse_prefix(text) {
            Err(message) => problems.add(entry, format!("{text:?}: {message}")),
            Ok(p) if p.addr.is_ipv4() != vip.is_ipv4() => problems.add(
                entry,
                format!(
                    "{p} is {} and the VIP {vip} is not: a service's sources are of its family",
                    family_name(p.addr)
                ),
            ),
            Ok(p) if prefixes.contains(&p) => {
                problems.add(entry, format!("{p} is already listed"));
            }
            Ok(p) => prefixes.push(p),
        }
    }
    prefixes
}

/// `addr/len`, or an address alone (the whole address); the bits past
/// `len` must be zero, so that the prefix reads as what it matches.
pub fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr =
        addr.parse().map_err(|_| "not an address or a prefix (10.0.0.0/8, fd00::/8)".to_owned())?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => bits,
        // Digits only: `u8`'s parse also takes a sign ("+8").
        Some(len) => Some(len)
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse::<u8>().ok())
            .filter(|&l| l <= bits)
            .ok_or_else(|| format!("the prefix length must be 0 to {bits}"))?,
    };
    let masked = mask(addr, len);
    if masked != addr {
        return Err(format!("bits are set past the prefix length (the network is {masked}/{len})"));
    }
    Ok(Prefix { addr, len })
}

/// `addr`'s first `len` bits, the rest zero.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// `slow_start_s`: 0 (none) to `MAX_SLOW_START_S` seconds, if given.
fn parse_slow_start(key: &str, seconds: Option<i64>, problems: &mut Problems) -> Option<Duration> {
    let seconds = seconds?;
    if !(0..=MAX_SLOW_START_S).contains(&seconds) {
        problems.add(key, format!("{seconds} is out of range (0 to {MAX_SLOW_START_S} seconds)"));
        return None;
    }
    Some(Duration::from_secs(seconds.unsigned_abs()))
}

/// An endpoint's address, IPv4 or IPv6. Refused: what no packet can be
/// sent to or from as an endpoint (unspecified, multicast, broadcast), and
/// IPv6's link-local (it needs an interface to mean anything, and the data
/// plane refuses it as a client's source) and IPv4-mapped (an IPv4 address
/// is written as one).
pub(super) fn parse_addr(key: &str, text: &str, problems: &mut Problems) -> IpAddr {
    let unusable = |a: &IpAddr| match a {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some()
        }
    };
    match text.parse::<IpAddr>() {
        Ok(a) if unusable(&a) => {
            problems.add(key, format!("{text} cannot be used as an endpoint address"));
            a
        }
        Ok(a) => a,
        Err(_) => {
            problems.add(key, format!("{text:?} is not an IPv4 or IPv6 address"));
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}

/// "IPv4" or "IPv6".
pub fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
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

/// Why a backend belongs to one service, unless full NAT (see
/// `may_share_backends`).
pub const ONE_SERVICE_PER_BACKEND: &str = "a backend belongs to one service unless every service naming it is forwarding = \"fullnat\" (the reply of a nat or dsr backend carries only its own address and port and the client's: two VIPs on one backend could not be told apart)";

/// Whether two services may name the same backend endpoint: full NAT's
/// replies are translated by their own mapping (the pool address and
/// port), so several full-NAT services can share one; NAT's reverse path
/// keys on the backend endpoint alone.
pub fn may_share_backends(a: &Service, b: &Service) -> bool {
    a.forwarding == Forwarding::FullNat && b.forwarding == Forwarding::FullNat
}

/// Service names, VIP:port:protocol triples and backends must each be unique:
/// a backend address+port belongs to one service (but full NAT's, see
/// `may_share_backends`), which is what lets a reply be rewritten without
/// connection state.
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
                if *fi != i && !may_share_backends(s, &services[*fi]) {
                    problems.add(
                        format!("service[{i}].backend[{j}]"),
                        format!(
                            "{}:{}/{} is already a backend of service[{fi}] (backend[{fj}]); {ONE_SERVICE_PER_BACKEND}",
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

/// A full-NAT pool address that is a VIP would have its backends' replies
/// taken for packets to that VIP (`drop_backend_port_to_vip`).
fn check_pools_are_not_vips(services: &[Service], problems: &mut Problems) {
    for (i, s) in services.iter().enumerate() {
        for (j, addr) in s.snat.addresses.iter().enumerate() {
            if let Some(k) = services.iter().position(|o| o.vip == *addr) {
                problems.add(
                    format!("service[{i}].snat_addresses[{j}]"),
                    format!("{addr} is the VIP of service[{k}]: a pool address must be no VIP (replies to it would be taken for packets to the VIP)"),
                );
            }
        }
    }
}

/// Problems with a set of services taken together: unique names, endpoints
/// and backends; direct routing's ports; what the kernel maps can hold.
pub(super) fn check_service_set(services: &[Service], problems: &mut Problems) {
    check_unique_services(services, problems);
    check_direct_routing(services, problems);
    check_pools_are_not_vips(services, problems);
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
