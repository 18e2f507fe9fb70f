//! What a subscriber wants to see: a service, a client prefix, drops only.
use std::net::IpAddr;

use lb_common::trace::{TRACE_CLIENT, TRACE_DROPS_ONLY, TraceConf};

/// A client prefix: `ADDR` (a host) or `ADDR/LEN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("client {0:?}: not an address or ADDR/LEN (10.0.0.7, 10.0.0.0/24, fd00::/64)")]
    NotAPrefix(String),
    #[error("client {text:?}: a prefix length of {len} is longer than the address ({max} bits)")]
    TooLong { text: String, len: u32, max: u8 },
    #[error("client {text:?}: {addr} has bits set past the prefix length (did you mean {net}?)")]
    HostBits { text: String, addr: IpAddr, net: String },
}

impl ClientPrefix {
    /// Parses `ADDR` or `ADDR/LEN`. Bits past the length are refused (a
    /// typo for another prefix, as `ip route` refuses them).
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| FilterError::NotAPrefix(text.into()))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => {
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
                    return Err(FilterError::NotAPrefix(text.into()));
                }
                let len: u32 = len.parse().map_err(|_| FilterError::NotAPrefix(text.into()))?;
                if len > u32::from(max) {
                    return Err(FilterError::TooLong { text: text.into(), len, max });
                }
                len as u8
            }
        };
        let prefix = Self { addr, len };
        let net = prefix.network();
        if net != addr {
            return Err(FilterError::HostBits {
                text: text.into(),
                addr,
                net: format!("{net}/{len}"),
            });
        }
        Ok(prefix)
    }

    /// The address with the bits past the length cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }

    /// Whether `addr` is in the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (addr, self.addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Self { addr, len: self.len }.network() == self.addr
            }
            _ => false,
        }
    }

    /// The prefix as `lb_trace_conf` holds it: address bytes, family, length.
    fn kernel(&self) -> ([u8; 16], u8, u8) {
        let mut bytes = [0; 16];
        let family = match self.addr {
            IpAddr::V4(a) => {
                bytes[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                bytes = a.octets();
                6
            }
        };
        (bytes, family, self.len)
    }
}

impl std::fmt::Display for ClientPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One subscriber's filter. The kernel applies what all subscribers share
/// (`kernel_conf`); each subscriber's own is applied here too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only packets of this service (by name): placed on or replied from
    /// one of its backends, or to its VIP, port and protocol.
    pub service: Option<String>,
    /// Only packets with an address in this prefix (as source or destination).
    pub client: Option<ClientPrefix>,
    /// Only packets the data plane dropped.
    pub drops_only: bool,
}

/// The configuration that lets through every event any of `filters`
/// wants, at `events_per_tick` a CPU; off when there are none. The client
/// prefix and drops-only go to the kernel only when every subscriber asks
/// the same; the rest is filtered here, per subscriber.
pub fn kernel_conf<'a>(
    filters: impl IntoIterator<Item = &'a Filter>,
    events_per_tick: u32,
) -> TraceConf {
    let mut filters = filters.into_iter().peekable();
    let Some(first) = filters.peek().copied() else {
        return TraceConf::default();
    };
    let mut client = first.client;
    let mut drops_only = true;
    for f in filters {
        if f.client != client {
            client = None;
        }
        drops_only &= f.drops_only;
    }
    let mut conf = TraceConf { on: 1, events_per_tick, ..TraceConf::default() };
    if drops_only {
        conf.flags |= TRACE_DROPS_ONLY;
    }
    if let Some(prefix) = client {
        (conf.client, conf.client_family, conf.client_len) = prefix.kernel();
        conf.flags |= TRACE_CLIENT;
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_or_say_what_is_wrong() {
        let host = ClientPrefix::parse("10.77.1.10").unwrap();
        assert_eq!(host, ClientPrefix { addr: "10.77.1.10".parse().unwrap(), len: 32 });
        let net = ClientPrefix::parse("10.77.0.0/16").unwrap();
        assert!(net.contains("10.77.200.1".parse().unwrap()));
        assert!(!net.contains("10.78.0.1".parse().unwrap()));
        assert!(!net.contains("fd77::1".parse().unwrap()));
        let six = ClientPrefix::parse("fd77::/16").unwrap();
        assert!(six.contains("fd77:1::9".parse().unwrap()));
        assert_eq!(ClientPrefix::parse("::/0").unwrap().len, 0);
        assert_eq!(ClientPrefix::parse("fd77::1").unwrap().len, 128);
        for bad in ["", "10.0.0", "10.0.0.1/", "10.0.0.1/x", "10.0.0.1/+8", "host", "10.0.0.1/8/8"]
        {
            assert!(matches!(ClientPrefix::parse(bad), Err(FilterError::NotAPrefix(_))), "{bad:?}");
        }
        // At the limit and one past it.
        assert!(ClientPrefix::parse("10.0.0.1/32").is_ok());
        assert_eq!(
            ClientPrefix::parse("10.0.0.1/33").unwrap_err().to_string(),
            "client \"10.0.0.1/33\": a prefix length of 33 is longer than the address (32 bits)"
        );
        assert!(ClientPrefix::parse("fd77::1/128").is_ok());
        assert!(matches!(ClientPrefix::parse("fd77::1/129"), Err(FilterError::TooLong { .. })));
        assert!(matches!(ClientPrefix::parse("10.0.0.1/99999"), Err(FilterError::NotAPrefix(_))));
        let e = ClientPrefix::parse("10.77.1.10/24").unwrap_err().to_string();
        assert!(e.contains("did you mean 10.77.1.0/24?"), "{e}");
    }

    #[test]
    fn the_kernel_filters_only_what_every_subscriber_shares() {
        assert_eq!(kernel_conf([], 50).on, 0, "nobody: off");
        let a = Filter {
            client: Some(ClientPrefix::parse("10.77.1.0/24").unwrap()),
            drops_only: true,
            ..Filter::default()
        };
        let conf = kernel_conf([&a], 50);
        assert_eq!(conf.on, 1);
        assert_eq!(conf.events_per_tick, 50);
        assert_eq!(conf.flags, TRACE_CLIENT | TRACE_DROPS_ONLY);
        assert_eq!((conf.client_family, conf.client_len), (4, 24));
        assert_eq!(conf.client[..4], [10, 77, 1, 0]);
        // Two alike: the same.
        assert_eq!(kernel_conf([&a, &a.clone()], 50), conf);
        // Another client, or one that wants everything: no kernel filter.
        let b = Filter { client: None, drops_only: true, ..Filter::default() };
        assert_eq!(kernel_conf([&a, &b], 50).flags, TRACE_DROPS_ONLY);
        let c = Filter { service: Some("web".into()), ..a.clone() };
        let mut c = c;
        c.drops_only = false;
        assert_eq!(kernel_conf([&a, &c], 50).flags, TRACE_CLIENT);
    }
}
