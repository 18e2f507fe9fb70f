//! An oracle for the data plane's outputs, written from the services config
//! and the fixture namespace's links (`fixture.rs`), not from the program's
//! code: given an input frame, which outputs are a correct translation of
//! it, byte for byte. Told the controller's tables of the hashing services
//! (`Oracle::with_tables`), it also holds each of their flows to the one
//! backend its table names, which checks kernel and controller against
//! each other.
//!
//! It accepts an output only as one of a closed list of translations
//! ([`Translation`]): a client's packet sent to a backend (NAT or direct
//! routing), a backend's reply sent back from the VIP, or an answer built
//! by the program (a TCP reset, an ICMP port unreachable). A later
//! translation, such as an ICMP error about a translated flow (outer and
//! quoted headers rewritten, issue 13 item 2), is one more variant with its
//! own `expected` arm; nothing else has to change.
//!
//! Checksums are checked by what they verify to, not by recomputing the
//! program's arithmetic: a checksum that verified in the input verifies in
//! the output, and one that did not is off by exactly the same amount (an
//! incremental update neither repairs nor breaks it, RFC 1624).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use lb_common::{
    abi::{NEIGH_MARK_MAGIC, NeighMark, source_hash},
    hash::{flow_hash, maglev_slot},
};
use lb_ctl::{
    config::Config,
    model::{AdminState, Forwarding, Protocol, Service},
};

use crate::{
    fixture::{
        BACKEND_SIDE_MTU, CLIENT, CLIENT_MAC, COLLIDER_MAC, HAIRPIN, HAIRPIN_MAC, IF_BACKEND,
        IF_BACKEND_MAC, IF_CLIENT, IF_CLIENT_MAC, LB_BACKEND_SIDE, LB_CLIENT_SIDE, Loaded, VIP,
        WEB_MACS, WEB1, WEB2, WEB3, slot_sharing_backend,
    },
    packet::{self, Ipv4, L4, Mac, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    testrun::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name},
};

const ETH: usize = 14;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The fields of a well-formed TCP or UDP over IPv4 frame: every length
/// consistent with the next and with the frame, not a fragment.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    /// IPv4 header length, bytes.
    pub ihl: usize,
    /// IPv4 total length.
    pub tot_len: usize,
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
    /// TCP: the header length (data offset); UDP: the UDP length field.
    pub l4_len: usize,
}

impl Parsed {
    /// Where the transport header starts in the frame.
    pub fn l4(&self) -> usize {
        ETH + self.ihl
    }

    /// The transport checksum's offset in the frame.
    fn check_at(&self) -> usize {
        self.l4() + if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Parses `frame` as a well-formed TCP or UDP over IPv4 packet (trailing
/// bytes after the IPv4 total length are allowed: Ethernet padding), or says
/// why it is not one.
pub fn parse(frame: &[u8]) -> Result<Parsed, &'static str> {
    if frame.len() < ETH + 20 {
        return Err("shorter than Ethernet and a 20-byte IPv4 header");
    }
    if frame[..4] == NEIGH_MARK_MAGIC.to_ne_bytes() {
        return Err("carries the slow path's mark");
    }
    if be16(frame, 12) != packet::ETH_P_IPV4 {
        return Err("not IPv4 (EtherType)");
    }
    let ip = &frame[ETH..];
    if ip[0] >> 4 != 4 {
        return Err("IP version is not 4");
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot_len = usize::from(be16(ip, 2));
    if ihl < 20 {
        return Err("IPv4 header length below 20");
    }
    if tot_len < ihl {
        return Err("IPv4 total length below the header length");
    }
    if ETH + tot_len > frame.len() {
        return Err("IPv4 total length past the frame");
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err("a fragment");
    }
    let proto = ip[9];
    let l4 = &ip[ihl..tot_len];
    let (tcp_flags, l4_len) = match proto {
        PROTO_TCP => {
            if l4.len() < 20 {
                return Err("TCP header past the IPv4 total length");
            }
            let header = usize::from(l4[12] >> 4) * 4;
            if header < 20 || header > l4.len() {
                return Err("TCP data offset below 5 words or past the packet");
            }
            (l4[13], header)
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return Err("UDP header past the IPv4 total length");
            }
            let length = usize::from(be16(l4, 4));
            if length < 8 || length > l4.len() {
                return Err("UDP length short of its header or past the packet");
            }
            (0, length)
        }
        _ => return Err("neither TCP nor UDP"),
    };
    Ok(Parsed {
        eth_dst: frame[..6].try_into().expect("6 bytes"),
        eth_src: frame[6..12].try_into().expect("6 bytes"),
        ihl,
        tot_len,
        ttl: ip[8],
        proto,
        src: addr(ip, 12),
        dst: addr(ip, 16),
        sport: be16(l4, 0),
        dport: be16(l4, 2),
        tcp_flags,
        l4_len,
    })
}

/// A translation of an input the program may send: what the oracle
/// accepts, besides the input leaving unchanged. Add a variant (and its arm
/// in `Oracle::expected`) for a new kind, e.g. an ICMP error about one of
/// our flows with its outer and quoted headers rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Translation {
    /// A client's packet to a NAT service: the destination becomes one of
    /// the service's usable backends (address and port), TTL - 1.
    ToBackend { backends: Vec<(Ipv4Addr, u16)> },
    /// A client's packet to a direct-routing service: the IP packet as it
    /// came, the frame to one of the service's usable backends.
    Direct { backends: Vec<Ipv4Addr> },
    /// A NAT backend's reply: the source becomes the VIP and service port,
    /// TTL - 1.
    FromBackend { vip: Ipv4Addr, port: u16 },
    /// A TCP reset from the VIP to the client (RFC 793 reset generation),
    /// for a service with no usable backend that rejects.
    Reset,
    /// An ICMP port unreachable from the VIP to the client quoting the
    /// datagram's header and first 8 bytes, likewise.
    PortUnreachable,
}

impl Translation {
    pub fn name(&self) -> &'static str {
        match self {
            Self::ToBackend { .. } => "to a backend",
            Self::Direct { .. } => "direct routing",
            Self::FromBackend { .. } => "a backend's reply",
            Self::Reset => "a reset",
            Self::PortUnreachable => "port unreachable",
        }
    }
}

/// What the program did with a frame, as the oracle accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Passed or dropped, unchanged.
    Unchanged,
    /// Sent (XDP_TX or XDP_REDIRECT) as this translation.
    Sent(Translation),
    /// Handed to tc for neighbour resolution (XDP_PASS, marked) as this one.
    SlowPath(Translation),
}

/// Where the fixture namespace's FIB sends a destination.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// A neighbour with a known MAC: `mac` on `egress`, through `via`.
    Neighbour { egress: &'static str, mac: Mac, via: Ipv4Addr },
    /// A route on `egress` through `via`, no neighbour entry.
    NoNeighbour { egress: &'static str, via: Ipv4Addr },
    /// Local, broadcast, unreachable or no route: not forwarded.
    Nowhere,
}

/// Why an output is not a given translation (for the failure message).
#[derive(Debug)]
struct Mismatch(String);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a hashing service (Maglev on the flow, or `sh` on the client
/// address) places every flow: the controller's table, one backend endpoint
/// a slot. Told to the oracle (`Oracle::with_tables`), it narrows a
/// translation to the one backend the table names, whether the flow is new,
/// known or forgotten; without it, any usable backend is accepted.
#[derive(Clone, Debug)]
pub struct HashTable {
    pub by_source: bool,
    pub ring_size: u32,
    pub slots: Vec<(Ipv4Addr, u16)>,
}

pub struct Oracle {
    /// By VIP, port and protocol.
    tables: BTreeMap<(Ipv4Addr, u16, u8), HashTable>,
    services: Vec<Service>,
    vips: BTreeSet<Ipv4Addr>,
    backends: BTreeSet<Ipv4Addr>,
    ifindex_client: u32,
    ifindex_backend: u32,
}

impl Oracle {
    /// From the parsed services config; must be built inside the fixture
    /// namespace (it reads the interfaces' indexes for the slow path's mark).
    pub fn new(config: &Config) -> Self {
        let services = config.services.clone();
        let vips = services.iter().map(|s| s.vip).collect();
        let backends = services.iter().flat_map(|s| s.backends.iter().map(|b| b.address)).collect();
        Self {
            tables: BTreeMap::new(),
            services,
            vips,
            backends,
            ifindex_client: Loaded::ifindex(IF_CLIENT),
            ifindex_backend: Loaded::ifindex(IF_BACKEND),
        }
    }

    /// The hashing services' tables, by VIP, port and protocol.
    #[must_use]
    pub fn with_tables(mut self, tables: BTreeMap<(Ipv4Addr, u16, u8), HashTable>) -> Self {
        self.tables = tables;
        self
    }

    /// The backend a hashing service's table names for `p`'s flow.
    fn placed(&self, p: &Parsed) -> Option<(Ipv4Addr, u16)> {
        let table = self.tables.get(&(p.dst, p.dport, p.proto))?;
        let (src, dst) = (p.src.octets(), p.dst.octets());
        let hash = if table.by_source {
            source_hash(src)
        } else {
            flow_hash(src, dst, p.sport, p.dport, p.proto)
        };
        table.slots.get(maglev_slot(hash, table.ring_size)? as usize).copied()
    }

    pub fn vips(&self) -> &BTreeSet<Ipv4Addr> {
        &self.vips
    }

    pub fn backend_addresses(&self) -> &BTreeSet<Ipv4Addr> {
        &self.backends
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Why the program must never send an answer of its own to `dst`, if
    /// it must not: a martian (RFC 1812: 0/8, 127/8, 224/4 multicast,
    /// 240/4 reserved and broadcast), a VIP, or a backend.
    pub fn forbidden_destination(&self, dst: Ipv4Addr) -> Option<&'static str> {
        let first = dst.octets()[0];
        if first == 0 {
            Some("0.0.0.0/8")
        } else if first == 127 {
            Some("loopback")
        } else if (224..240).contains(&first) {
            Some("multicast")
        } else if first >= 240 {
            Some("240.0.0.0/4 (broadcast included)")
        } else if self.vips.contains(&dst) {
            Some("a VIP")
        } else if self.backends.contains(&dst) {
            Some("a backend")
        } else {
            None
        }
    }

    fn proto_of(s: &Service) -> u8 {
        match s.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    fn service(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Option<&Service> {
        self.services.iter().find(|s| s.vip == vip && s.port == port && Self::proto_of(s) == proto)
    }

    /// The VIP and port of the NAT service whose backend endpoint is
    /// `addr:port` (a direct-routing backend's replies never come back).
    fn reply_endpoint(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<(Ipv4Addr, u16)> {
        self.services
            .iter()
            .filter(|s| s.forwarding == Forwarding::Nat && Self::proto_of(s) == proto)
            .find(|s| s.backends.iter().any(|b| b.address == addr && b.port == port))
            .map(|s| (s.vip, s.port))
    }

    /// The translations a well-formed input admits (none for anything else).
    pub fn translations(&self, frame: &[u8]) -> Vec<Translation> {
        self.translations_or_why(frame).unwrap_or_default()
    }

    /// The translations `frame` admits, or why it admits none.
    pub fn translations_or_why(&self, frame: &[u8]) -> Result<Vec<Translation>, &'static str> {
        let p = parse(frame)?;
        // TTL 1 or 0: the kernel answers (time exceeded), nobody forwards.
        if p.ttl <= 1 {
            return Err("TTL <= 1");
        }
        let reply_of = self.reply_endpoint(p.src, p.sport, p.proto);
        if self.vips.contains(&p.dst) {
            let first = p.src.octets()[0];
            if first == 0 || first == 127 || first >= 224 {
                return Err("a martian source to a VIP");
            }
            if self.vips.contains(&p.src) {
                return Err("a VIP as the source of a packet to a VIP");
            }
            // A backend's service endpoint as a client of a VIP: a loop.
            if reply_of.is_some() {
                return Err("a backend's service endpoint sending to a VIP");
            }
            let service =
                self.service(p.dst, p.dport, p.proto).ok_or("no service at that VIP and port")?;
            let placed = self.placed(&p);
            let usable: Vec<_> = service
                .backends
                .iter()
                .filter(|b| b.weight > 0 && b.state == AdminState::Active)
                .filter(|b| placed.is_none_or(|at| at == (b.address, b.port)))
                .collect();
            if usable.is_empty() {
                // Answered only from a plain header, and a reset never is.
                if !service.reject {
                    return Err("no usable backend, and the service drops");
                }
                if p.ihl != 20 {
                    return Err("no usable backend, and IPv4 options are not answered");
                }
                if p.tcp_flags & TCP_RST != 0 {
                    return Err("no usable backend, and a reset is not answered");
                }
                let answer = if p.proto == PROTO_TCP {
                    Translation::Reset
                } else {
                    Translation::PortUnreachable
                };
                return Ok(vec![answer]);
            }
            return Ok(vec![match service.forwarding {
                Forwarding::Nat => Translation::ToBackend {
                    backends: usable.iter().map(|b| (b.address, b.port)).collect(),
                },
                Forwarding::Dsr => {
                    Translation::Direct { backends: usable.iter().map(|b| b.address).collect() }
                }
            }]);
        }
        // The ingress interface is not looked at: the program takes a
        // backend's reply from either side today (see the hostile corpus).
        let (vip, port) =
            reply_of.ok_or("neither to a VIP nor from a NAT backend's service endpoint")?;
        Ok(vec![Translation::FromBackend { vip, port }])
    }

    /// Checks one run of the program: `output` with `action` for `input`
    /// received on `ingress`. `Ok` says how the oracle accepted it.
    pub fn check(
        &self,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, String> {
        if action == XDP_ABORTED {
            return Err("XDP_ABORTED".into());
        }
        if matches!(action, XDP_PASS | XDP_DROP) && output == input {
            return Ok(Accepted::Unchanged);
        }
        if action == XDP_DROP {
            return Err("XDP_DROP with a changed frame".into());
        }
        let translations = self.translations_or_why(input).map_err(|reason| {
            format!(
                "{} with a changed frame, but the input admits no translation ({reason})",
                action_name(action)
            )
        })?;
        let mut why = Vec::new();
        for t in &translations {
            match self.matches(t, input, ingress, action, output) {
                Ok(accepted) => return Ok(accepted),
                Err(m) => why.push(format!("not {}: {m}", t.name())),
            }
        }
        Err(why.join("; "))
    }

    /// Whether `output` (with `action`) is `t` applied to `input`.
    fn matches(
        &self,
        t: &Translation,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, Mismatch> {
        let p = parse(input).map_err(|e| Mismatch(e.into()))?;
        match t {
            Translation::Reset | Translation::PortUnreachable => {
                let want = if *t == Translation::Reset {
                    expected_reset(input, &p)
                } else {
                    expected_port_unreachable(input, &p)
                };
                if action != XDP_TX {
                    return Err(Mismatch(format!("{} (want XDP_TX)", action_name(action))));
                }
                if output != want {
                    return Err(Mismatch(format!("bytes differ from {}", hex(&want))));
                }
                Ok(Accepted::Sent(t.clone()))
            }
            Translation::ToBackend { backends } => {
                let mut why = Vec::new();
                // The backend the output went to, if it is one of them:
                // only its mismatch is worth reading.
                let sent_to = output.get(ETH + 16..ETH + 20).map(|a| addr(a, 0));
                let named = backends.iter().any(|(a, _)| Some(*a) == sent_to);
                for &(addr, port) in backends {
                    if named && Some(addr) != sent_to {
                        continue;
                    }
                    let mut want = input.to_vec();
                    want[ETH + 8] -= 1;
                    want[ETH + 16..ETH + 20].copy_from_slice(&addr.octets());
                    want[p.l4() + 2..p.l4() + 4].copy_from_slice(&port.to_be_bytes());
                    match self.framed(t, &p, addr, addr, want, input, ingress, action, output, true)
                    {
                        Ok(a) => return Ok(a),
                        Err(m) => why.push(format!("{addr}:{port}: {m}")),
                    }
                }
                let why = why.join(", ");
                match sent_to {
                    Some(to) if !named => Err(Mismatch(format!("sent to {to}, expected {why}"))),
                    _ => Err(Mismatch(why)),
                }
            }
            Translation::Direct { backends } => {
                let mut why = Vec::new();
                for &addr in backends {
                    let want = input.to_vec();
                    match self
                        .framed(t, &p, addr, addr, want, input, ingress, action, output, false)
                    {
                        Ok(a) => return Ok(a),
                        Err(m) => why.push(format!("{addr}: {m}")),
                    }
                }
                Err(Mismatch(why.join(", ")))
            }
            Translation::FromBackend { vip, port } => {
                let mut want = input.to_vec();
                want[ETH + 8] -= 1;
                want[ETH + 12..ETH + 16].copy_from_slice(&vip.octets());
                want[p.l4()..p.l4() + 2].copy_from_slice(&port.to_be_bytes());
                self.framed(t, &p, p.dst, *vip, want, input, ingress, action, output, true)
            }
        }
    }

    /// `want` (the rewritten packet) framed for its next hop towards `to`,
    /// compared with `output`; with `rewritten`, the checksums are checked
    /// by what they verify to and the rest byte for byte. `_new_src` is the
    /// packet's source after the rewrite (kept for an ICMP variant).
    #[expect(clippy::too_many_arguments, reason = "one comparison, spelled out")]
    fn framed(
        &self,
        t: &Translation,
        p: &Parsed,
        to: Ipv4Addr,
        _new_src: Ipv4Addr,
        mut want: Vec<u8>,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
        rewritten: bool,
    ) -> Result<Accepted, Mismatch> {
        let direct = matches!(t, Translation::Direct { .. });
        let (want_action, accepted) = match route(to) {
            Route::Nowhere => return Err(Mismatch(format!("{to} is not forwarded by the FIB"))),
            Route::Neighbour { egress, mac, via } => {
                if direct && via != to {
                    return Err(Mismatch("direct routing through a gateway".into()));
                }
                if p.tot_len > mtu(egress) {
                    return Err(Mismatch(format!("too big for {egress}")));
                }
                want[..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&if_mac(egress));
                let action = if egress == ingress { XDP_TX } else { XDP_REDIRECT };
                (action, Accepted::Sent(t.clone()))
            }
            Route::NoNeighbour { egress, via } => {
                if direct && via != to {
                    return Err(Mismatch("direct routing through a gateway".into()));
                }
                if p.tot_len > mtu(egress) {
                    return Err(Mismatch(format!("too big for {egress}")));
                }
                let ifindex =
                    if egress == IF_CLIENT { self.ifindex_client } else { self.ifindex_backend };
                let mark = NeighMark { magic: NEIGH_MARK_MAGIC, ifindex, nexthop: via.octets() };
                want[..12].copy_from_slice(&mark.to_bytes());
                (XDP_PASS, Accepted::SlowPath(t.clone()))
            }
        };
        if action != want_action {
            return Err(Mismatch(format!(
                "{} (want {})",
                action_name(action),
                action_name(want_action)
            )));
        }
        if output.len() != want.len() {
            return Err(Mismatch(format!("{} bytes (want {})", output.len(), want.len())));
        }
        if rewritten {
            // The checksum fields are judged below, by what they verify to.
            let ip_check = ETH + 10;
            want[ip_check..ip_check + 2].copy_from_slice(&output[ip_check..ip_check + 2]);
            let at = p.check_at();
            want[at..at + 2].copy_from_slice(&output[at..at + 2]);
        }
        if output != want {
            let at = output.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(Mismatch(format!("byte {at} differs from {}", hex(&want))));
        }
        if rewritten {
            checksums_follow(input, output, p)?;
        }
        Ok(accepted)
    }
}

/// What the Internet checksum over `data` verifies to: 0 when it holds.
/// Ones' complement has two zeros; both read as 0.
fn verify(data: &[u8]) -> u16 {
    match packet::internet_checksum(data) {
        0xffff => 0,
        v => v,
    }
}

/// The transport checksum's verification over the pseudo-header and the
/// segment (TCP: to the end of the IPv4 packet; UDP: its own length).
fn l4_verify(frame: &[u8], p: &Parsed) -> u16 {
    let len = if p.proto == PROTO_TCP { p.tot_len - p.ihl } else { p.l4_len };
    let mut pseudo = Vec::with_capacity(12 + len);
    pseudo.extend_from_slice(&frame[ETH + 12..ETH + 20]);
    pseudo.extend_from_slice(&[0, p.proto]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    pseudo.extend_from_slice(&frame[p.l4()..p.l4() + len]);
    verify(&pseudo)
}

/// The IPv4 and transport checksums of a rewritten `output` verify to what
/// they verified to in `input`; a UDP checksum of 0 ("none") stays 0, and
/// one that was not 0 does not become 0.
fn checksums_follow(input: &[u8], output: &[u8], p: &Parsed) -> Result<(), Mismatch> {
    let header = ETH..ETH + p.ihl;
    let (ip_in, ip_out) = (verify(&input[header.clone()]), verify(&output[header]));
    if ip_in != ip_out {
        return Err(Mismatch(format!(
            "IPv4 checksum verifies to {ip_out:#06x} (the input's to {ip_in:#06x})"
        )));
    }
    let at = p.check_at();
    if p.proto == PROTO_UDP && be16(input, at) == 0 {
        return if be16(output, at) == 0 {
            Ok(())
        } else {
            Err(Mismatch("a UDP checksum of 0 (none) was filled in".into()))
        };
    }
    if p.proto == PROTO_UDP && be16(output, at) == 0 {
        return Err(Mismatch("a UDP checksum became 0 (none)".into()));
    }
    // The output's lengths are the input's (compared byte for byte already).
    let (l4_in, l4_out) = (l4_verify(input, p), l4_verify(output, p));
    if l4_in != l4_out {
        return Err(Mismatch(format!(
            "transport checksum verifies to {l4_out:#06x} (the input's to {l4_in:#06x})"
        )));
    }
    Ok(())
}

/// The fixture namespace's routes and neighbours (`fixture::FixtureNs`).
fn route(dst: Ipv4Addr) -> Route {
    let [a, b, c, d] = dst.octets();
    if [a, b] != [10, 77] {
        return Route::Nowhere;
    }
    let known = |egress, neighbours: &[(Ipv4Addr, Mac)]| {
        neighbours.iter().find(|(n, _)| *n == dst).map_or(
            Route::NoNeighbour { egress, via: dst },
            |&(_, mac)| Route::Neighbour { egress, mac, via: dst },
        )
    };
    match c {
        // Local addresses and the subnets' broadcasts are not forwarded
        // (the network address is: Linux has no broadcast route for it).
        1 if d == 255 || dst == LB_CLIENT_SIDE || dst == VIP => Route::Nowhere,
        2 if d == 255 || dst == LB_BACKEND_SIDE => Route::Nowhere,
        1 => known(IF_CLIENT, &[(CLIENT, CLIENT_MAC), (HAIRPIN, HAIRPIN_MAC)]),
        2 => known(IF_BACKEND, &[(WEB1, WEB_MACS[0]), (WEB2, WEB_MACS[1]), (WEB3, WEB_MACS[2])]),
        4 => known(IF_BACKEND, &[(slot_sharing_backend().0, COLLIDER_MAC)]),
        5 => Route::Neighbour { egress: IF_BACKEND, mac: WEB_MACS[2], via: WEB3 },
        6 => Route::NoNeighbour { egress: IF_BACKEND, via: Ipv4Addr::new(10, 77, 2, 52) },
        _ => Route::Nowhere,
    }
}

fn mtu(egress: &str) -> usize {
    if egress == IF_BACKEND { usize::from(BACKEND_SIDE_MTU) } else { 1500 }
}

fn if_mac(egress: &str) -> Mac {
    if egress == IF_BACKEND { IF_BACKEND_MAC } else { IF_CLIENT_MAC }
}

/// The reset the VIP sends for the TCP segment `p` (RFC 793, "Reset
/// Generation"): with ACK, seq = the segment's ack; without, RST|ACK
/// acknowledging everything the segment occupied. Built by the packet
/// builder, checksums from scratch.
pub fn expected_reset(frame: &[u8], p: &Parsed) -> Vec<u8> {
    let tcp = &frame[p.l4()..];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let payload = (p.tot_len - p.ihl - p.l4_len) as u32;
    let flags = p.tcp_flags;
    let (seq, ack, flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let occupied = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };
    let l4 =
        L4::Tcp { sport: p.dport, dport: p.sport, flags, seq, ack, window: 0, payload: Vec::new() };
    let mut reset = Ipv4::new(p.dst, p.src, l4);
    reset.id = 0;
    reset.frame(p.eth_src, p.eth_dst)
}

/// The ICMP port unreachable the VIP sends for the datagram `p`: its IPv4
/// header and first 8 bytes quoted (RFC 792).
pub fn expected_port_unreachable(frame: &[u8], p: &Parsed) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&frame[ETH..ETH + 28]);
    let check = packet::internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut answer = Ipv4::new(p.dst, p.src, L4::Raw { proto: PROTO_ICMP, bytes: icmp });
    answer.id = 0;
    answer.frag_off = 0;
    answer.frame(p.eth_src, p.eth_dst)
}

/// Bytes as hex, 16 to a line.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n    ")
}
