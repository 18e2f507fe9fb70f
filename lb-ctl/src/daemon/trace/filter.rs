//! What a subscriber wants to see: a service, a client prefix, drops only.
use std::net::IpAddr;

use lb_common::trace::{TRACE_CLIENT, TRACE_DROPS_ONLY, TraceConf};

use crate::desired::validate::{mask, parse_prefix};

/// A client prefix: `ADDR` (a host) or `ADDR/LEN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// Not a prefix as the config's `allowed_sources` takes one
    /// (`desired::validate::parse_prefix`), with why.
    #[error("client {text:?}: {reason}")]
    NotAPrefix { text: String, reason: String },
}

impl ClientPrefix {
    /// Parses `ADDR` or `ADDR/LEN`, as the config parses a prefix: bits
    /// past the length are refused (a typo for another prefix, as `ip
    /// route` refuses them).
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let prefix = parse_prefix(text)
            .map_err(|reason| FilterError::NotAPrefix { text: text.into(), reason })?;
        Ok(Self { addr: prefix.addr, len: prefix.len })
    }

    /// Whether `addr` is in the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.len) == self.addr
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
            assert!(ClientPrefix::parse(bad).is_err(), "{bad:?}");
        }
        // At the limit and one past it.
        assert!(ClientPrefix::parse("10.0.0.1/32").is_ok());
        assert_eq!(
            ClientPrefix::parse("10.0.0.1/33").unwrap_err().to_string(),
            "client \"10.0.0.1/33\": the prefix length must be 0 to 32"
        );
        assert!(ClientPrefix::parse("fd77::1/128").is_ok());
        assert!(ClientPrefix::parse("fd77::1/129").is_err());
        assert!(ClientPrefix::parse("10.0.0.1/99999").is_err());
        let e = ClientPrefix::parse("10.77.1.10/24").unwrap_err().to_string();
        assert!(e.contains("the network is 10.77.1.0/24"), "{e}");
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
