//! The config file and the API's bodies as written: serde's view of them,
//! every value as it was given (a name is a string, a number an `i64`), with
//! the defaults of what may be left out. Unknown keys are an error
//! (`deny_unknown_fields`); nothing else is checked here (see `validate`).
use lb_common::{
    abi::{DEFAULT_ANSWERS_PER_SECOND, DEFAULT_CONNTRACK_MAX},
    fullnat::DEFAULT_FULLNAT_MAX,
};
use serde::Deserialize;

use super::{
    model::{Forwarding, HandshakeProof, Protocol, ReversePath, Scheduler, XdpMode},
    names::{Named as _, OnNoBackend},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) dataplane: RawDataplane,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) bgp: Option<RawBgp>,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    #[serde(default)]
    pub(super) interfaces: Vec<String>,
    #[serde(default = "default_xdp_mode")]
    pub(super) xdp_mode: String,
    #[serde(default = "default_conntrack_max")]
    pub(super) conntrack_max: i64,
    #[serde(default = "default_fullnat_max")]
    pub(super) fullnat_max: i64,
    #[serde(default = "default_pin_path")]
    pub(super) pin_path: String,
    pub(super) tcp_syn_timeout: Option<i64>,
    pub(super) tcp_established_timeout: Option<i64>,
    pub(super) tcp_closing_timeout: Option<i64>,
    pub(super) tcp_closed_timeout: Option<i64>,
    pub(super) udp_timeout: Option<i64>,
    #[serde(default = "default_answers_per_second")]
    pub(super) answers_per_second: i64,
    #[serde(default = "default_reverse_path")]
    pub(super) reverse_path: String,
    #[serde(default = "default_handshake_proof")]
    pub(super) handshake_proof: String,
    #[serde(default)]
    pub(super) snat_addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_listen")]
    pub(super) listen: String,
    pub(super) token_file: Option<String>,
    pub(super) state_file: Option<String>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { listen: default_listen(), token_file: None, state_file: None, allowed_hosts: vec![] }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) syslog: Option<String>,
}

/// `[bgp]`: present, the VIPs this node can serve are written to a kernel
/// routing table for BIRD to announce.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    #[serde(default = "default_bgp_table")]
    pub(super) table: i64,
    #[serde(default = "default_bgp_device")]
    pub(super) device: String,
    #[serde(default = "default_withdraw_delay_ms")]
    pub(super) withdraw_delay_ms: i64,
    #[serde(default = "default_announce_delay_ms")]
    pub(super) announce_delay_ms: i64,
}

/// A service as the config file and the API's JSON bodies write it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub(super) name: String,
    pub(super) vip: String,
    pub(super) port: i64,
    #[serde(default = "default_protocol")]
    pub(super) protocol: String,
    #[serde(default = "default_scheduler")]
    pub(super) scheduler: String,
    #[serde(default = "default_forwarding")]
    pub(super) forwarding: String,
    #[serde(default = "default_on_no_backend")]
    pub(super) on_no_backend: String,
    pub(super) health: Option<RawHealth>,
    /// Seconds a backend's weight ramps up over when it becomes usable.
    pub(super) slow_start_s: Option<i64>,
    /// Seconds a client keeps the backend of its last flow (absent or 0: no persistence).
    pub(super) persistence_s: Option<i64>,
    /// The prefix length persistence groups clients by (absent: 32 for IPv4, 128 for IPv6).
    pub(super) persistence_netmask: Option<i64>,
    /// The networks that may reach the service, as prefixes (`10.0.0.0/8`);
    /// absent or empty: every source.
    #[serde(default)]
    pub(super) allowed_sources: Vec<String>,
    /// `forwarding = "fullnat"`: the addresses flows leave from (absent or
    /// empty: the load balancer's own address toward each backend).
    #[serde(default)]
    pub(super) snat_addresses: Vec<String>,
    /// `forwarding = "fullnat"`: the source ports, `first-last` (absent:
    /// 61000-65535).
    pub(super) snat_ports: Option<String>,
    #[serde(default, rename = "backend", alias = "backends")]
    pub(super) backends: Vec<RawBackend>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Absent: `tcp` for a TCP service, `none` for a UDP one (see `validate_health`).
    pub(super) check: Option<String>,
    #[serde(default = "default_path")]
    pub(super) path: String,
    #[serde(default = "default_expect_status")]
    pub(super) expect_status: i64,
    pub(super) expect_body: Option<String>,
    #[serde(default = "default_interval_ms")]
    pub(super) interval_ms: i64,
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: i64,
    #[serde(default = "default_rise")]
    pub(super) rise: i64,
    #[serde(default = "default_fall")]
    pub(super) fall: i64,
    /// Probe every backend at this IPv4 address instead of its own.
    pub(super) check_address: Option<String>,
    /// Probe every backend on this port instead of its own.
    pub(super) check_port: Option<i64>,
    /// `https`: the name sent as SNI and verified (absent: the probed address).
    pub(super) sni: Option<String>,
    /// `https`: PEM certificates to trust instead of the system's roots.
    pub(super) ca_file: Option<String>,
    /// `https`: `false` accepts any certificate (absent: `true`).
    pub(super) verify: Option<bool>,
    /// `udp`: the datagram sent, as text.
    pub(super) send: Option<String>,
    /// `udp`: the datagram sent, as hex digits (spaces allowed between bytes).
    pub(super) send_hex: Option<String>,
    /// `udp`: a regular expression the reply must match (absent: any reply).
    pub(super) expect: Option<String>,
    /// `script`: the program and its first arguments (no shell).
    pub(super) command: Option<Vec<String>>,
    /// `script`: an exit status 2 to 255 sets the backend's weight.
    pub(super) dynamic_weight: Option<bool>,
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
    pub(super) address: String,
    pub(super) port: i64,
    #[serde(default = "default_weight")]
    pub(super) weight: i64,
    pub(super) state: Option<String>,
    /// Probe this backend at this IPv4 address (over the service's `health.check_address`).
    pub(super) check_address: Option<String>,
    /// Probe this backend on this port (over the service's `health.check_port`).
    pub(super) check_port: Option<i64>,
    /// A sorry server: new flows only while no primary backend is usable.
    #[serde(default)]
    pub(super) backup: bool,
    /// Its own `slow_start_s`, over its service's.
    pub(super) slow_start_s: Option<i64>,
    /// At this many connections it takes no new flow (absent or 0: no limit).
    #[serde(default)]
    pub(super) max_conns: i64,
}

fn default_xdp_mode() -> String {
    XdpMode::Auto.name().into()
}
fn default_conntrack_max() -> i64 {
    i64::from(DEFAULT_CONNTRACK_MAX)
}
fn default_fullnat_max() -> i64 {
    i64::from(DEFAULT_FULLNAT_MAX)
}
fn default_reverse_path() -> String {
    ReversePath::Strict.name().into()
}
fn default_handshake_proof() -> String {
    HandshakeProof::Ack.name().into()
}
fn default_answers_per_second() -> i64 {
    i64::from(DEFAULT_ANSWERS_PER_SECOND)
}
fn default_pin_path() -> String {
    "/sys/fs/bpf/lb".into()
}
fn default_bgp_table() -> i64 {
    4077
}
fn default_bgp_device() -> String {
    "lb-vips".into()
}
fn default_withdraw_delay_ms() -> i64 {
    2000
}
fn default_announce_delay_ms() -> i64 {
    5000
}
fn default_listen() -> String {
    "127.0.0.1:9100".into()
}
fn default_protocol() -> String {
    Protocol::Tcp.name().into()
}
fn default_scheduler() -> String {
    Scheduler::Maglev.name().into()
}
fn default_forwarding() -> String {
    Forwarding::Nat.name().into()
}
fn default_on_no_backend() -> String {
    OnNoBackend::Reject.name().into()
}
fn default_weight() -> i64 {
    1
}
