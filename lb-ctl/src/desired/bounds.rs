//! Bounds on every input, the config file's and the API's alike: what one
//! request can make the controller hold, plan, probe and render is bounded.
use lb_common::abi::{MAX_BACKENDS, MAX_SERVICES};

/// Longest connection timeout: a week.
pub(super) const MAX_TIMEOUT_S: i64 = 7 * 24 * 3600;

/// Largest backend weight: keeps Maglev's per-round arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 65_535;

/// Longest service name: a DNS label's.
pub const MAX_NAME_LEN: usize = 63;
/// Longest health-check `path` (a request line HAProxy and nginx accept).
pub const MAX_HEALTH_PATH_LEN: usize = 1024;
/// Longest `expect_body` pattern.
pub const MAX_EXPECT_BODY_LEN: usize = 1024;
/// Longest `udp` check datagram (`send`, `send_hex`).
pub const MAX_SEND_LEN: usize = 1024;
/// Most words of a `script` check's `command`, and the longest word.
pub const MAX_COMMAND_ARGS: usize = 32;
pub const MAX_COMMAND_ARG_LEN: usize = 4096;
/// Most backends of one service: each still gets 64 slots of the
/// 65537-slot Maglev table (docs/benchmarks.md's Maglev bench goes to 1000).
pub const MAX_SERVICE_BACKENDS: usize = 1024;
/// Most services: the kernel's `lb_services` map.
pub const MAX_SERVICE_COUNT: usize = MAX_SERVICES as usize;
/// Most backends in all: the kernel's `lb_backends` map.
pub const MAX_BACKEND_COUNT: usize = MAX_BACKENDS as usize;
/// Most `admin.allowed_hosts` names, and the longest (a DNS name's).
pub(super) const MAX_ALLOWED_HOSTS: usize = 16;
pub(super) const MAX_HOST_NAME_LEN: usize = 253;

/// The most answers per second and CPU the data plane can be told to send:
/// past line rate for the smallest answer on a 10 Gb/s link.
pub(super) const MAX_ANSWERS_PER_SECOND: u32 = 10_000_000;

/// Longest `slow_start_s`: an hour.
pub const MAX_SLOW_START_S: i64 = 3600;
/// Longest health-check interval: an hour.
pub(super) const MAX_INTERVAL_MS: i64 = 3_600_000;
/// Most consecutive results `rise` or `fall` may ask for.
pub(super) const MAX_RISE_FALL: i64 = 100;

/// Longest `bgp.withdraw_delay_ms` and `bgp.announce_delay_ms`: a minute.
pub(super) const MAX_BGP_DELAY_MS: i64 = 60_000;

/// Longest `persistence_s`: a week (IPVS sets no bound; a week of ticks is
/// far inside the data plane's 32-bit clock arithmetic).
pub const MAX_PERSISTENCE_S: i64 = 7 * 24 * 3600;
/// Most `allowed_sources` per service: the length of a service's list in
/// the data plane's `lb_sources` (`MAX_SOURCES_PER_SERVICE`).
pub const MAX_ALLOWED_SOURCES: usize = lb_common::abi::MAX_SOURCES_PER_SERVICE as usize;
/// Largest `max_conns`.
pub const MAX_MAX_CONNS: i64 = 1 << 30;
