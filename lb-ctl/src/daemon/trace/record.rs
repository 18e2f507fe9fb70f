//! What a subscriber reads: one line per traced packet (`Packet`), and a
//! line whenever events were lost (`Lost`); JSON (`--json`, the API's
//! NDJSON) or plain text (`plain`).
use std::{fmt::Write as _, net::IpAddr};

use lb_common::{
    abi::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    counter::{Counter, Kind},
    trace::{TRACE_NEW_FLOW, TRACE_NO_ID, TRACE_PORTS, TRACE_REPLY, TraceEvent},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::plan::ids::{BackendKey, Key};

/// One line of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
// A line is built, sent and written once: boxing the packet would be one
// more allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Line {
    Packet(Packet),
    Lost(Lost),
}

/// A packet and what the data plane decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Packet {
    /// The interface it arrived on.
    pub interface: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol's number.
    pub protocol: String,
    /// The source as it arrived: `address:port` (`[address]:port` for
    /// IPv6), the address alone when there are no ports (a later fragment,
    /// ICMP), empty for a frame that is not IP.
    pub src: String,
    pub dst: String,
    /// TCP flags, `tcpdump` style (`S`, `S.`, `.`, `P.`, `F.`, `R`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// `forwarded`, `answered` (a reset, an ICMP error), `passed` (to the
    /// kernel), `dropped`.
    pub decision: String,
    /// Why: the packet counter it counted in (`lb-ctl stats` lists them).
    pub reason: String,
    /// For a packet placed on a backend: `new` (the scheduler chose) or
    /// `known` (its flow's entry did); `reply` for a backend's reply (its
    /// source turned back into the VIP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The service's name, when the packet is one of its flows' or to its
    /// VIP and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The backend (`address:port`) it went to or came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// Events lost since the trace started, by where: over the data plane's
/// rate limit, with its ring buffer full, or with this subscriber's queue
/// full (a reader slower than the packets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lost {
    pub rate_limited: u64,
    pub ring_full: u64,
    pub queue_full: u64,
}

/// What the controller knows beside the event: names for its ids.
pub struct Names<'a> {
    pub interface: &'a dyn Fn(u32) -> Option<String>,
    pub backend: &'a dyn Fn(u8, u32) -> Option<BackendKey>,
    pub service: &'a dyn Fn(&Key) -> Option<String>,
}

fn addr_of(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        6 => Some(IpAddr::from(*bytes)),
        _ => None,
    }
}

fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(a), Some(p)) => std::net::SocketAddr::new(a, p).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => String::new(),
    }
}

fn protocol_name(family: u8, proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP if family == 4 => "icmp".into(),
        58 if family == 6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// `tcpdump`'s letters for TCP flags.
pub fn tcp_flags(flags: u8) -> String {
    let mut out = String::new();
    for (bit, letter) in [(0x02, 'S'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P'), (0x20, 'U')] {
        if flags & bit != 0 {
            out.push(letter);
        }
    }
    if flags & 0x10 != 0 {
        out.push('.');
    }
    if out.is_empty() { "none".into() } else { out }
}

impl Packet {
    /// The record of `event`, named with `names`.
    pub fn of(event: &TraceEvent, names: &Names<'_>) -> Self {
        let (src, dst) = (addr_of(event.family, &event.src), addr_of(event.family, &event.dst));
        let ports = event.flags & TRACE_PORTS != 0;
        let (sport, dport) =
            if ports { (Some(event.sport), Some(event.dport)) } else { (None, None) };
        let counter = Counter::ALL.get(event.counter as usize).copied();
        let decision = match counter.map(Counter::kind) {
            Some(Kind::Forwarded) => "forwarded",
            Some(Kind::Answered) => "answered",
            Some(Kind::Passed) => "passed",
            Some(Kind::Dropped) => "dropped",
            None => "unknown",
        };
        let backend = (event.backend_id != TRACE_NO_ID)
            .then(|| (names.backend)(event.family, event.backend_id))
            .flatten();
        let reply = event.flags & TRACE_REPLY != 0;
        // The service: its backend's, else the one the packet is addressed to.
        let service_key = backend
            .map(|(service, _)| service)
            .or_else(|| Some(Key::new(dst?, dport?, event.proto)));
        let flow = if reply {
            Some("reply")
        } else if event.backend_id == TRACE_NO_ID {
            None
        } else if event.flags & TRACE_NEW_FLOW != 0 {
            Some("new")
        } else {
            Some("known")
        };
        Self {
            interface: (names.interface)(event.ifindex)
                .unwrap_or_else(|| format!("if{}", event.ifindex)),
            protocol: protocol_name(event.family, event.proto),
            src: endpoint(src, sport),
            dst: endpoint(dst, dport),
            tcp_flags: (ports && event.proto == PROTO_TCP).then(|| tcp_flags(event.tcp_flags)),
            decision: decision.into(),
            reason: counter
                .map_or_else(|| format!("counter-{}", event.counter), |c| c.name().into()),
            flow: flow.map(Into::into),
            service: service_key.as_ref().and_then(|k| (names.service)(k)),
            backend: backend.map(|(_, b)| b.socket().to_string()),
        }
    }

    /// The source (or, for a backend's reply, the destination): the client.
    pub fn client(&self) -> Option<IpAddr> {
        let side = if self.flow.as_deref() == Some("reply") { &self.dst } else { &self.src };
        address_of(side)
    }

    /// One line of plain text: interface, tuple, flags, decision, and
    /// where it went.
    pub fn plain(&self) -> String {
        let mut line =
            format!("{:<8} {:<4} {} > {}", self.interface, self.protocol, self.src, self.dst);
        if let Some(flags) = &self.tcp_flags {
            let _ = write!(line, " [{flags}]");
        }
        let _ = write!(line, ": {} {}", self.decision, self.reason);
        match (self.flow.as_deref(), &self.backend) {
            (Some("reply"), Some(b)) => {
                let _ = write!(line, ", reply from {b}");
            }
            (Some(flow), Some(b)) => {
                let _ = write!(line, ", to {b} ({flow} flow)");
            }
            _ => {}
        }
        if let Some(s) = &self.service {
            let _ = write!(line, " service {s}");
        }
        line
    }
}

/// The address of `text` (`addr`, `addr:port`, `[addr]:port`).
pub fn address_of(text: &str) -> Option<IpAddr> {
    text.parse::<std::net::SocketAddr>().map(|s| s.ip()).ok().or_else(|| text.parse().ok())
}

impl Lost {
    pub fn plain(&self) -> String {
        format!(
            "# lost: {} over the rate limit, {} with the ring buffer full, {} with this reader's queue full",
            self.rate_limited, self.ring_full, self.queue_full
        )
    }
}

impl Line {
    pub fn plain(&self) -> String {
        match self {
            Self::Packet(p) => p.plain(),
            Self::Lost(l) => l.plain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names<'static> {
        Names {
            interface: &|i| (i == 3).then(|| "eth1".to_owned()),
            backend: &|family, id| {
                (family == 4 && id == 7).then(|| {
                    (
                        Key::new("10.77.0.100".parse().unwrap(), 80, PROTO_TCP),
                        Key::new("10.77.2.11".parse().unwrap(), 8080, PROTO_TCP),
                    )
                })
            },
            service: &|k| (k.port == 80).then(|| "web".to_owned()),
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn syn() -> TraceEvent {
        TraceEvent {
            src: v4([10, 77, 1, 10]),
            dst: v4([10, 77, 0, 100]),
            ifindex: 3,
            service_id: 1,
            backend_id: 7,
            counter: Counter::Redirect as u32,
            sport: 40_000,
            dport: 80,
            family: 4,
            proto: PROTO_TCP,
            tcp_flags: 0x02,
            flags: TRACE_PORTS | TRACE_NEW_FLOW,
        }
    }

    #[test]
    fn a_forwarded_syn_names_its_backend_and_service() {
        let p = Packet::of(&syn(), &names());
        assert_eq!(
            p.plain(),
            "eth1     tcp  10.77.1.10:40000 > 10.77.0.100:80 [S]: forwarded redirect, to 10.77.2.11:8080 (new flow) service web"
        );
        assert_eq!(p.client(), Some("10.77.1.10".parse().unwrap()));
        let json = serde_json::to_value(Line::Packet(p)).unwrap();
        assert_eq!(json["type"], "packet");
        assert_eq!(json["backend"], "10.77.2.11:8080");
        assert_eq!(json["flow"], "new");
        assert_eq!(json["tcp_flags"], "S");
    }

    #[test]
    fn a_reply_a_drop_and_an_unknown_interface_read_as_such() {
        let mut reply = syn();
        (reply.src, reply.dst, reply.sport, reply.dport) =
            (v4([10, 77, 2, 11]), v4([10, 77, 1, 10]), 8080, 40_000);
        reply.tcp_flags = 0x12;
        reply.flags = TRACE_PORTS | TRACE_REPLY;
        let p = Packet::of(&reply, &names());
        assert_eq!(p.flow.as_deref(), Some("reply"));
        assert_eq!(p.tcp_flags.as_deref(), Some("S."));
        assert!(p.plain().ends_with(", reply from 10.77.2.11:8080 service web"), "{}", p.plain());
        assert_eq!(p.client(), Some("10.77.1.10".parse().unwrap()));

        let mut fragment = syn();
        (fragment.backend_id, fragment.service_id) = (TRACE_NO_ID, TRACE_NO_ID);
        fragment.flags = 0;
        fragment.counter = Counter::DropFragment as u32;
        fragment.ifindex = 99;
        let p = Packet::of(&fragment, &names());
        assert_eq!(p.plain(), "if99     tcp  10.77.1.10 > 10.77.0.100: dropped drop_fragment");
        assert_eq!((p.decision.as_str(), p.tcp_flags), ("dropped", None));

        let mut garbage = syn();
        garbage.counter = 9999;
        garbage.family = 0;
        let p = Packet::of(&garbage, &names());
        assert_eq!((p.reason.as_str(), p.src.as_str()), ("counter-9999", ""));
        assert_eq!(p.client(), None);
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_and_flags_spelled() {
        let mut e = syn();
        e.family = 6;
        e.src = "fd77:1::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
        e.dst = "fd77::100".parse::<std::net::Ipv6Addr>().unwrap().octets();
        e.backend_id = TRACE_NO_ID;
        let p = Packet::of(&e, &names());
        assert_eq!((p.src.as_str(), p.dst.as_str()), ("[fd77:1::10]:40000", "[fd77::100]:80"));
        assert_eq!(p.service.as_deref(), Some("web"), "to the service's port");
        assert_eq!(tcp_flags(0x11), "F.");
        assert_eq!(tcp_flags(0x04), "R");
        assert_eq!(tcp_flags(0), "none");
    }
}
