//! The name of every choice the config file, the API and the state file
//! write as a string (`scheduler = "wrr"`, `"state": "drain"`), each in one
//! place: what is read, what is shown and what a problem lists as allowed
//! all come from here.
use std::fmt;

use super::model::{
    AdminState, Forwarding, HandshakeProof, Probe, Protocol, ReversePath, Scheduler, XdpMode,
};

/// A choice written by name.
pub trait Named: Copy + 'static {
    /// Every value, in the order a problem lists them.
    const ALL: &'static [Self];

    /// The name the config file, the API and the state file give it.
    fn name(self) -> &'static str;

    /// The value `text` names, if any.
    fn from_name(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|value| value.name() == text)
    }

    /// The names, as a problem lists them: `nat, dsr`.
    fn one_of() -> String {
        Self::ALL.iter().map(|value| value.name()).collect::<Vec<_>>().join(", ")
    }
}

/// `dataplane.xdp_mode` (and `lb-ctl run --xdp-mode`).
impl Named for XdpMode {
    const ALL: &'static [Self] = &[Self::Auto, Self::Driver, Self::Skb];

    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
}

/// `dataplane.reverse_path`.
impl Named for ReversePath {
    const ALL: &'static [Self] = &[Self::Strict, Self::Loose, Self::Off];

    fn name(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Loose => "loose",
            Self::Off => "off",
        }
    }
}

/// `dataplane.handshake_proof`.
impl Named for HandshakeProof {
    const ALL: &'static [Self] = &[Self::Ack, Self::SynSeen];

    fn name(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::SynSeen => "syn-seen",
        }
    }
}

/// A service's `protocol`.
impl Named for Protocol {
    const ALL: &'static [Self] = &[Self::Tcp, Self::Udp];

    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A service's `scheduler`.
impl Named for Scheduler {
    const ALL: &'static [Self] = &[
        Self::Maglev,
        Self::RoundRobin,
        Self::WeightedRoundRobin,
        Self::LeastConnections,
        Self::SourceHash,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Maglev => "maglev",
            Self::RoundRobin => "rr",
            Self::WeightedRoundRobin => "wrr",
            Self::SourceHash => "sh",
            Self::LeastConnections => "lc",
        }
    }
}

/// A service's `forwarding`.
impl Named for Forwarding {
    const ALL: &'static [Self] = &[Self::Nat, Self::Dsr, Self::FullNat];

    fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dsr => "dsr",
            Self::FullNat => "fullnat",
        }
    }
}

/// A service's `on_no_backend`: what a new flow gets when no backend can
/// take it (`Service::reject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnNoBackend {
    /// A TCP reset or an ICMP port unreachable.
    Reject,
    Drop,
}

impl OnNoBackend {
    /// What `Service::reject` says.
    pub const fn of(reject: bool) -> Self {
        if reject { Self::Reject } else { Self::Drop }
    }

    /// `Service::reject`.
    pub const fn rejects(self) -> bool {
        matches!(self, Self::Reject)
    }
}

impl Named for OnNoBackend {
    const ALL: &'static [Self] = &[Self::Reject, Self::Drop];

    fn name(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Drop => "drop",
        }
    }
}

/// A service's `health.check`: how its backends are probed, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// No checks: every backend counts as up.
    None,
    Tcp,
    Http,
    Https,
    Udp,
    Script,
}

impl Check {
    /// The check `probe` makes.
    pub const fn of(probe: &Probe) -> Self {
        match probe {
            Probe::Tcp => Self::Tcp,
            Probe::Http { tls: None, .. } => Self::Http,
            Probe::Http { tls: Some(_), .. } => Self::Https,
            Probe::Udp { .. } => Self::Udp,
            Probe::Script { .. } => Self::Script,
        }
    }
}

impl Named for Check {
    const ALL: &'static [Self] =
        &[Self::None, Self::Tcp, Self::Http, Self::Https, Self::Udp, Self::Script];

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Https => "https",
            Self::Udp => "udp",
            Self::Script => "script",
        }
    }
}

/// A backend's `state`.
impl Named for AdminState {
    const ALL: &'static [Self] = &[Self::Active, Self::Drain, Self::Maint];

    fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
