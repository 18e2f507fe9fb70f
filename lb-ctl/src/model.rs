//! The desired state: plain data, produced by `config`, consumed by `plan`.
use std::{fmt, net::Ipv4Addr, path::PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataplane {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub conntrack_max: u32,
    pub pin_path: PathBuf,
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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<Backend>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: Ipv4Addr,
    pub port: u16,
    /// 0 = drain: no new flows, existing flows continue.
    pub weight: u32,
}
