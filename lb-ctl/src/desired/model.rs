//! The desired state: plain data, produced by `config` (and the API's
//! bodies, `json`), consumed by `plan`. The names each choice is written
//! with are in `names`.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::abi::{PROTO_TCP, PROTO_UDP};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataplane {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub conntrack_max: u32,
    /// Full-NAT flows each family's mapping maps hold (`lb_fnat_fwd`,
    /// `lb_fnat_rev` and their IPv6 twins), sized at load.
    pub fullnat_max: u32,
    pub pin_path: PathBuf,
    pub timeouts: Timeouts,
    /// Answers (resets, ICMP errors) each CPU may send per second; the rest
    /// are dropped and counted.
    pub answers_per_second: u32,
    pub reverse_path: ReversePath,
    pub handshake_proof: HandshakeProof,
    /// The pool of the full-NAT services that name none of their own
    /// (`snat_addresses`), each taking those of its VIP's family.
    pub snat_addresses: Vec<IpAddr>,
}

/// Which sources the data plane takes packets from (see
/// `abi::REVERSE_PATH_STRICT`), like Linux's `rp_filter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReversePath {
    /// The route back to the source leaves by the arriving interface.
    #[default]
    Strict,
    /// There is a route back to the source, by any interface.
    Loose,
    Off,
}

/// What records a NAT service's TCP flow in the connection table (see
/// `lb-ebpf/src/handshake.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HandshakeProof {
    /// The client's ACK of the backend's SYN-ACK, which the load balancer
    /// saw pass: a forged source cannot send it.
    #[default]
    Ack,
    /// Any ACK after a SYN seen here, as with direct routing: for nodes
    /// whose backends' SYN-ACKs may return through another node (ECMP).
    SynSeen,
}

/// Idle timeouts of the connection states, like IPVS's (`ipvsadm --set`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_mins(1),
            tcp_established: Duration::from_mins(15),
            tcp_closing: Duration::from_mins(2),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_mins(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Driver (native) mode where the interface supports it, else generic (skb) mode.
    Auto,
    Driver,
    Skb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    /// `on_no_backend = "reject"`: with no usable backend, answer (TCP reset,
    /// ICMP port unreachable) rather than drop.
    pub reject: bool,
    /// `None`: no health checks, every backend counts as up.
    pub health: Option<HealthCheck>,
    /// `slow_start_s` (HAProxy `slowstart`): a backend that becomes usable
    /// (comes UP, is added, is undrained) gets its weight ramped up over
    /// this time; zero: at once. A backend's own wins.
    pub slow_start: Duration,
    /// `persistence_s` and `persistence_netmask` (IPVS `-p` and `-M`):
    /// `None`, each new flow is the scheduler's.
    pub persistence: Option<Persistence>,
    /// `allowed_sources` (Kubernetes' `loadBalancerSourceRanges`): empty,
    /// every source; otherwise only these networks reach the service.
    pub allowed_sources: Vec<Prefix>,
    /// `forwarding = "fullnat"`'s source pool (`snat_addresses`,
    /// `snat_ports`); the default for the other modes, which have none.
    pub snat: Snat,
    pub backends: Vec<Backend>,
}

/// The addresses and ports a full-NAT service's flows leave from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Snat {
    /// Empty: the load balancer's own address toward each backend (the
    /// source the kernel picks for its route), found when the maps are
    /// written (`plan::snat`).
    pub addresses: Vec<IpAddr>,
    pub ports: PortRange,
}

impl Default for Snat {
    fn default() -> Self {
        Self { addresses: Vec::new(), ports: PortRange::SNAT_DEFAULT }
    }
}

/// Ports `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `snat_ports`' default: above the kernel's own ephemeral ports
    /// (`ip_local_port_range`, 32768-60999 by default), so that the load
    /// balancer's own connections (its health checks) from a pool address
    /// never take a port a flow holds.
    pub const SNAT_DEFAULT: Self = Self { first: 61_000, last: 65_535 };

    /// How many ports the range holds.
    pub fn count(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A client (or its network) keeps the backend of its last flow for
/// `timeout` after it, whatever the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Persistence {
    pub timeout: Duration,
    /// The prefix length clients are grouped by: 32 (IPv4) or 128 (IPv6)
    /// is each client alone.
    pub netmask: u8,
}

/// A network: an address whose bits past `len` are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// How a service picks the backend of a new flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing of the 5-tuple (the default).
    #[default]
    Maglev,
    /// `rr`: each new connection to the next backend, in a fixed order.
    RoundRobin,
    /// `wrr`: smooth weighted rotation (nginx's), e.g. 3/1/1 -> A B A C A.
    WeightedRoundRobin,
    /// `sh`: Maglev on the client address alone.
    SourceHash,
    /// `lc`: the fewest connections per unit of weight (IPVS `wlc`).
    LeastConnections,
}

/// How a packet reaches the backend (IPVS's forwarding methods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// `nat` (IPVS `-m`, masquerading): the destination becomes the backend;
    /// replies come back through the load balancer, which puts the VIP back.
    #[default]
    Nat,
    /// `dsr` (IPVS `-g`, direct routing): the frame goes to the backend's MAC
    /// with the IP packet unchanged; the backend holds the VIP on a
    /// non-ARPing interface and answers the client directly. Backends share
    /// a link with the load balancer and listen on the service's port.
    Dsr,
    /// `fullnat` (HAProxy in TCP mode, loxilb's `fullnat`): the source
    /// becomes an address and port of the service's SNAT pool too, so the
    /// backends answer the load balancer wherever their routes point.
    FullNat,
}

/// `[service.health]`: how and how often each backend is probed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a DOWN backend UP.
    pub rise: u32,
    /// Consecutive failures that take an UP backend DOWN.
    pub fall: u32,
    /// Where every backend of the service is probed, unless the backend
    /// says otherwise.
    pub target: CheckTarget,
}

impl HealthCheck {
    /// Where `backend` is probed: each of the address and the port is the
    /// backend's `check_*` if set, else the service's, else the backend's own.
    pub fn target_of(&self, backend: &Backend) -> SocketAddr {
        let target = backend.check.or(self.target);
        SocketAddr::new(
            target.address.unwrap_or(backend.address),
            target.port.unwrap_or(backend.port),
        )
    }

    /// Whether `self` and `other` probe alike but for the service's
    /// target, which each backend resolves on its own (`target_of`).
    /// Every field is named, so a new one cannot be forgotten here.
    pub fn probes_like(&self, other: &Self) -> bool {
        let Self { probe, interval, timeout, rise, fall, target: _ } = self;
        (probe, interval, timeout, rise, fall)
            == (&other.probe, &other.interval, &other.timeout, &other.rise, &other.fall)
    }
}

/// `check_address` / `check_port`: where a health check connects instead
/// of the backend's own address and port (HAProxy's `addr` and `port` on a
/// server, keepalived's `connect_ip` and `connect_port`). The health state
/// stays the backend's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CheckTarget {
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
}

impl CheckTarget {
    /// Each of `self`'s values, else `fallback`'s.
    #[must_use]
    pub const fn or(self, fallback: Self) -> Self {
        Self {
            address: match self.address {
                Some(a) => Some(a),
                None => fallback.address,
            },
            port: match self.port {
                Some(p) => Some(p),
                None => fallback.port,
            },
        }
    }

    pub const fn is_set(&self) -> bool {
        self.address.is_some() || self.port.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// The TCP connection is accepted.
    Tcp,
    /// `GET path`: the status equals `expect_status` and, if set, the body
    /// matches the regular expression `expect_body` (HAProxy `rstring`).
    /// With `tls`, over TLS (`check = "https"`).
    Http { path: String, expect_status: u16, expect_body: Option<String>, tls: Option<Tls> },
    /// A datagram `send` to the backend, and a reply within the timeout
    /// that matches `expect` if set (keepalived's `UDP_CHECK`).
    Udp { send: Vec<u8>, expect: Option<String> },
    /// A program run with the backend's address and port (keepalived's
    /// `MISC_CHECK`): UP on exit 0; with `dynamic_weight`, an exit status
    /// 2 to 255 is UP with that weight (`misc_dynamic`).
    Script { command: Vec<String>, dynamic_weight: bool },
}

/// `check = "https"`'s TLS settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tls {
    /// The name sent as SNI and verified in the certificate; `None`: no
    /// SNI, the certificate must name the probed IP address.
    pub sni: Option<String>,
    /// PEM certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `false`: any certificate is accepted (the handshake still must succeed).
    pub verify: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    /// 0 = drain: no new flows, existing flows continue.
    pub weight: u32,
    /// What the operator says, on top of the weight and the health checks.
    pub state: AdminState,
    /// Where its health check connects, over the service's `[service.health]`.
    pub check: CheckTarget,
    /// A sorry server (HAProxy `backup`, keepalived `sorry_server`): it
    /// takes new flows only while no primary backend of its service is
    /// usable (`Service::backups_serve`).
    pub backup: bool,
    /// Its own `slow_start_s`, over its service's.
    pub slow_start: Option<Duration>,
    /// `max_conns` (IPVS `-x`, HAProxy `maxconn`): at this many
    /// connections it takes no new flow; 0, no limit.
    pub max_conns: u32,
}

/// The operator's word on a backend (HAProxy's `set server state`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation with its weight (when health checks say UP).
    #[default]
    Active,
    /// No new flows; its open flows continue (like weight 0, keeping the weight).
    Drain,
    /// Out of rotation at once, open flows included; health checks continue.
    Maint,
}

impl Service {
    /// Whether the backups take new flows: no primary (non-backup) backend
    /// is usable, `usable` saying whether a backend's health lets it take
    /// flows (UP, or not checked). A primary is usable when active, with a
    /// weight above 0, and `usable`.
    pub fn backups_serve(&self, usable: impl Fn(&Backend) -> bool) -> bool {
        !self.backends.iter().any(|b| !b.backup && b.effective_weight() > 0 && usable(b))
    }
}

impl Backend {
    /// How long its weight ramps up when it becomes usable: its own
    /// `slow_start_s`, else its service's.
    pub fn slow_start_in(&self, service: &Service) -> Duration {
        self.slow_start.unwrap_or(service.slow_start)
    }

    /// The weight the schedulers use: 0 unless active.
    pub const fn effective_weight(&self) -> u32 {
        match self.state {
            AdminState::Active => self.weight,
            AdminState::Drain | AdminState::Maint => 0,
        }
    }
}

/// Services for the tests of the planner, the runtime changes and the reconciler.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::Ipv4Addr;

    use super::{AdminState, Backend, CheckTarget, Forwarding, Protocol, Scheduler, Service};

    /// A Maglev TCP service on 10.77.1.100:`port`; backends are (last octet of 10.77.2.x, weight).
    pub(crate) fn service(name: &str, port: u16, backends: &[(u8, u32)]) -> Service {
        Service {
            name: name.into(),
            vip: Ipv4Addr::new(10, 77, 1, 100).into(),
            port,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Nat,
            reject: false,
            health: None,
            slow_start: std::time::Duration::ZERO,
            persistence: None,
            allowed_sources: Vec::new(),
            snat: super::Snat::default(),
            backends: backends
                .iter()
                .map(|&(last, weight)| Backend {
                    address: Ipv4Addr::new(10, 77, 2, last).into(),
                    port,
                    weight,
                    state: AdminState::Active,
                    check: CheckTarget::default(),
                    backup: false,
                    slow_start: None,
                    max_conns: 0,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{CheckTarget, HealthCheck, Probe};

    /// A service's new check target leaves a check alike (each backend
    /// resolves its own), anything else does not.
    #[test]
    fn checks_probe_alike_whatever_the_services_target() {
        let check = HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            target: CheckTarget::default(),
        };
        let moved = HealthCheck {
            target: CheckTarget { address: None, port: Some(8081) },
            ..check.clone()
        };
        assert!(check.probes_like(&moved));
        assert!(!check.probes_like(&HealthCheck { rise: 3, ..check.clone() }));
        assert!(
            !check
                .probes_like(&HealthCheck { timeout: Duration::from_millis(900), ..check.clone() })
        );
    }
}
