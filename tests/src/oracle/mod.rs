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
//! routing), a backend's reply sent back from the VIP, an ICMP error about
//! one of those translated to the backend or to the client (outer and
//! quoted headers rewritten), the first fragment of a datagram translated
//! like a whole packet and its later fragments following it (the oracle
//! remembers where each first fragment went), or an answer built by the
//! program (a TCP reset, an ICMP port unreachable, ICMP "fragmentation
//! needed" with the next link's MTU). Nothing is translated that did not
//! arrive where its source's route leaves (the strict reverse-path check),
//! was sent to a link-layer group address (TCP and UDP: an ICMP error in
//! such a frame is translated today, questioned in the corpus), or carries
//! TCP flags no connection sends; no answer goes to a martian, a VIP or a backend (but
//! "fragmentation needed" to the backend whose reply was too big).
//!
//! Checksums are checked by what they verify to, not by recomputing the
//! program's arithmetic: a checksum that verified in the input verifies in
//! the output, and one that did not is off by exactly the same amount (an
//! incremental update neither repairs nor breaks it, RFC 1624). A first
//! fragment's transport checksum covers bytes the fragment does not hold:
//! it must have moved by exactly what the rewritten words moved it.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use lb_common::{
    abi::{NEIGH_MARK_MAGIC, NeighMark, source_hash},
    hash::{flow_hash, maglev_slot},
};
use lb_ctl::desired::{
    config::Config,
    model::{AdminState, Forwarding, Protocol, Service},
};
use lb_testbed::{
    fixture::{
        BACKEND_SIDE_MTU, CLIENT, CLIENT_MAC, COLLIDER_MAC, HAIRPIN, HAIRPIN_MAC, IF_BACKEND,
        IF_BACKEND_MAC, IF_CLIENT, IF_CLIENT_MAC, LB_BACKEND_SIDE, LB_CLIENT_SIDE, Loaded, VIP,
        WEB_MACS, WEB1, WEB2, WEB3, slot_sharing_backend,
    },
    packet::{self, Ipv4, L4, Mac, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    testrun::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name},
};

use crate::expect::hex;

mod fullnat;

const ETH: usize = 14;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Which part of a datagram a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    Whole,
    /// More Fragments set, offset 0: it carries the transport header.
    First,
    /// Offset above 0: no transport header.
    Later,
}

/// The fields of a well-formed TCP or UDP over IPv4 frame: every length
/// consistent with the next and with the frame (a first fragment's UDP
/// length may run past it; a later fragment has no transport header).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    /// IPv4 header length, bytes.
    pub ihl: usize,
    /// IPv4 total length.
    pub tot_len: usize,
    pub id: u16,
    /// Don't Fragment.
    pub df: bool,
    pub frag: Frag,
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 0 for a later fragment.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP and a later fragment.
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

    /// What ties the datagram's fragments together (`lb_frags`' key).
    fn frag_key(&self) -> FragKey {
        (self.src, self.dst, self.proto, self.id)
    }
}

/// Source, destination, protocol, IP id.
type FragKey = (Ipv4Addr, Ipv4Addr, u8, u16);

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Parses `frame` as a well-formed, unfragmented TCP or UDP over IPv4
/// packet, or says why it is not one.
pub fn parse(frame: &[u8]) -> Result<Parsed, &'static str> {
    let p = parse_any(frame)?;
    if p.frag == Frag::Whole { Ok(p) } else { Err("a fragment") }
}

/// Parses `frame` as a well-formed TCP or UDP over IPv4 packet or fragment
/// (trailing bytes after the IPv4 total length are allowed: Ethernet
/// padding), or says why it is not one.
pub fn parse_any(frame: &[u8]) -> Result<Parsed, &'static str> {
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
    let frag_off = be16(ip, 6);
    let frag = match (frag_off & 0x2000 != 0, frag_off & 0x1fff) {
        (false, 0) => Frag::Whole,
        (true, 0) => Frag::First,
        _ => Frag::Later,
    };
    let proto = ip[9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err("neither TCP nor UDP");
    }
    let l4 = &ip[ihl..tot_len];
    let (tcp_flags, l4_len, sport, dport) = match (proto, frag) {
        (PROTO_TCP, Frag::Later) if frag_off & 0x1fff == 1 => {
            return Err("a TCP fragment at offset 8 (RFC 1858)");
        }
        (_, Frag::Later) => (0, 0, 0, 0),
        (PROTO_TCP, _) => {
            if l4.len() < 20 {
                return Err("TCP header past the IPv4 total length");
            }
            let header = usize::from(l4[12] >> 4) * 4;
            if header < 20 || header > l4.len() {
                return Err("TCP data offset below 5 words or past the packet");
            }
            (l4[13], header, be16(l4, 0), be16(l4, 2))
        }
        _ => {
            if l4.len() < 8 {
                return Err("UDP header past the IPv4 total length");
            }
            let length = usize::from(be16(l4, 4));
            if length < 8 || (frag == Frag::Whole && length > l4.len()) {
                return Err("UDP length short of its header or past the packet");
            }
            (0, length, be16(l4, 0), be16(l4, 2))
        }
    };
    Ok(Parsed {
        eth_dst: frame[..6].try_into().expect("6 bytes"),
        eth_src: frame[6..12].try_into().expect("6 bytes"),
        ihl,
        tot_len,
        id: be16(ip, 4),
        df: frag_off & 0x4000 != 0,
        frag,
        ttl: ip[8],
        proto,
        src: addr(ip, 12),
        dst: addr(ip, 16),
        sport,
        dport,
        tcp_flags,
        l4_len,
    })
}

/// Whether TCP `flags` can be one segment of a connection: a SYN without
/// FIN or RST; anything else carries ACK or RST.
pub fn tcp_flags_valid(flags: u8) -> bool {
    if flags & TCP_SYN != 0 {
        flags & (TCP_FIN | TCP_RST) == 0
    } else {
        flags & (TCP_ACK | TCP_RST) != 0
    }
}

/// Where a later fragment goes after its first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Follow {
    /// Destination rewritten to this backend.
    ToBackend(Ipv4Addr),
    /// Direct routing: the IP packet as it came, to this backend.
    Direct(Ipv4Addr),
    /// Source rewritten to this VIP (a backend's reply).
    ToClient(Ipv4Addr),
}

/// A translation of an input the program may send: what the oracle
/// accepts, besides the input leaving unchanged.
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
    /// A client's packet to a full-NAT service: the destination becomes
    /// one of `backends`, the source an address and port of `pool` (the
    /// flow's own, `held`, once it has one: (pool, backend)), TTL - 1.
    FullNat {
        backends: Vec<(Ipv4Addr, u16)>,
        pool: fullnat::Pool,
        held: Option<(Endpoint4, Endpoint4)>,
    },
    /// A full-NAT backend's reply to a pool address and port: to the
    /// client of the flow that holds them, from its VIP and port, TTL - 1.
    FullNatReply { vip: Endpoint4, client: Endpoint4 },
    /// A TCP reset from the VIP to the client (RFC 793 reset generation),
    /// for a service with no usable backend that rejects.
    Reset,
    /// An ICMP port unreachable from the VIP to the client quoting the
    /// datagram's header and first 8 bytes, likewise.
    PortUnreachable,
    /// ICMP "fragmentation needed" from `vip` to the sender of a packet
    /// with DF too big for the next link (`mtu`), quoting its IPv4 header
    /// and 8 bytes; `to_backend`: the sender is the backend whose reply it
    /// was (the only answer a backend may get).
    FragNeeded { vip: Ipv4Addr, mtu: u16, to_backend: bool },
    /// An ICMP error about a reply `VIP:port -> client`, to the backend
    /// that owns the client's flow (one of these): outer destination and
    /// quoted source address and port rewritten, TTL - 1; `direct`: a
    /// direct-routing backend gets the frame as it came.
    IcmpToBackend { backends: Vec<(Ipv4Addr, u16)>, direct: bool },
    /// An ICMP error about a client's packet to a backend, from the backend
    /// side: outer source and quoted destination become the VIP and port.
    IcmpToClient { vip: Ipv4Addr, port: u16 },
    /// The first fragment of a datagram, translated like a whole packet;
    /// its transport checksum moved by exactly the rewrite's delta.
    FirstFragment(Box<Translation>),
    /// A later fragment, where its first fragment went (one of these):
    /// only the IPv4 address rewritten, TTL - 1.
    LaterFragment { follow: Vec<Follow> },
}

impl Translation {
    pub fn name(&self) -> &'static str {
        match self {
            Self::ToBackend { .. } => "to a backend",
            Self::Direct { .. } => "direct routing",
            Self::FromBackend { .. } => "a backend's reply",
            Self::FullNat { .. } => "full NAT to a backend",
            Self::FullNatReply { .. } => "a full-NAT backend's reply",
            Self::Reset => "a reset",
            Self::PortUnreachable => "port unreachable",
            Self::FragNeeded { to_backend: false, .. } => "fragmentation needed",
            Self::FragNeeded { to_backend: true, .. } => "fragmentation needed to a backend",
            Self::IcmpToBackend { direct: false, .. } => "an ICMP error to a backend",
            Self::IcmpToBackend { direct: true, .. } => "an ICMP error to a direct-routing backend",
            Self::IcmpToClient { .. } => "an ICMP error to a client",
            Self::FirstFragment(_) => "a first fragment",
            Self::LaterFragment { .. } => "a later fragment",
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

impl Route {
    fn egress(self) -> Option<&'static str> {
        match self {
            Self::Neighbour { egress, .. } | Self::NoNeighbour { egress, .. } => Some(egress),
            Self::Nowhere => None,
        }
    }
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

/// How the checksums of a rewritten output are judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sums {
    /// Not rewritten: byte for byte.
    None,
    /// IPv4 and transport checksums verify as in the input.
    Whole,
    /// A first fragment: IPv4 as in the input, the transport checksum
    /// moved by the rewrite's delta.
    First,
    /// A later fragment: IPv4 only.
    Ip,
    /// An ICMP error: outer IPv4, quoted IPv4 and ICMP checksums verify as
    /// in the input; the quoted transport checksum is left as it was.
    Icmp,
}

/// Offsets in an ICMP error frame (20-byte outer header).
const ICMP_AT: usize = ETH + 20;
const QUOTE_AT: usize = ICMP_AT + 8;

/// An address and port.
type Endpoint4 = (Ipv4Addr, u16);
/// A flow as a client sends it: source address and port, VIP, port, protocol.
type OpenedFlow = (Ipv4Addr, u16, Ipv4Addr, u16, u8);

pub struct Oracle {
    /// By VIP, port and protocol.
    tables: BTreeMap<(Ipv4Addr, u16, u8), HashTable>,
    services: Vec<Service>,
    vips: BTreeSet<Ipv4Addr>,
    backends: BTreeSet<Ipv4Addr>,
    /// The backends of NAT and full-NAT services (the program's `ADDR_REAL`).
    nat_backends: BTreeSet<Ipv4Addr>,
    /// Full NAT: the services' pools, and the mappings the outputs showed.
    pools: BTreeMap<fullnat::ClientKey, fullnat::Pool>,
    mappings: fullnat::Mappings,
    ifindex_client: u32,
    ifindex_backend: u32,
    /// Where each first fragment the program sent went (`lb_frags` as the
    /// oracle saw it filled), so its later fragments are held to it.
    frags: RefCell<BTreeMap<FragKey, Vec<Follow>>>,
    /// Flows a backend opened as a client of a VIP (source address and
    /// port, VIP, port, protocol), with the backend they were sent to
    /// (`None`: placed, but the packet was answered "fragmentation needed",
    /// which names no backend): its replies may go back to that backend's
    /// address.
    opened: RefCell<BTreeMap<OpenedFlow, Option<Endpoint4>>>,
}

impl Oracle {
    /// From the parsed services config; must be built inside the fixture
    /// namespace (it reads the interfaces' indexes for the slow path's mark).
    pub fn new(config: &Config) -> Self {
        // The corpus is IPv4's: the IPv6 services (the fixtures' have
        // their own table) are not modelled, and no packet of it reaches them.
        let services: Vec<_> =
            config.services.iter().filter(|s| s.vip.is_ipv4()).cloned().collect();
        let vips = services.iter().map(|s| ipv4(s.vip)).collect();
        let backends =
            services.iter().flat_map(|s| s.backends.iter().map(|b| ipv4(b.address))).collect();
        let nat_backends = services
            .iter()
            .filter(|s| s.forwarding != Forwarding::Dsr)
            .flat_map(|s| s.backends.iter().map(|b| ipv4(b.address)))
            .collect();
        let pools = fullnat::pools(&services, Self::proto_of);
        Self {
            pools,
            mappings: fullnat::Mappings::default(),
            tables: BTreeMap::new(),
            services,
            vips,
            backends,
            nat_backends,
            ifindex_client: Loaded::ifindex(IF_CLIENT),
            ifindex_backend: Loaded::ifindex(IF_BACKEND),
            frags: RefCell::new(BTreeMap::new()),
            opened: RefCell::new(BTreeMap::new()),
        }
    }

    /// The hashing services' tables, by VIP, port and protocol.
    #[must_use]
    pub fn with_tables(mut self, tables: BTreeMap<(Ipv4Addr, u16, u8), HashTable>) -> Self {
        self.tables = tables;
        self
    }

    /// The backend a hashing service's table names for the flow.
    fn placed(&self, flow: (Ipv4Addr, u16, Ipv4Addr, u16, u8)) -> Option<(Ipv4Addr, u16)> {
        let (src, sport, dst, dport, proto) = flow;
        let table = self.tables.get(&(dst, dport, proto))?;
        let hash = if table.by_source {
            source_hash(src.octets())
        } else {
            flow_hash(src.octets(), dst.octets(), sport, dport, proto)
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
    /// 240/4 reserved and broadcast), a VIP, or a backend ("a backend" of
    /// a NAT service; "a direct-routing backend" of direct routing only).
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
        } else if self.nat_backends.contains(&dst) {
            Some("a backend")
        } else if self.backends.contains(&dst) {
            Some("a direct-routing backend")
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
            .map(|s| (ipv4(s.vip), s.port))
    }

    /// The strict reverse-path check: whether a packet from `src` may
    /// arrive on `ingress` (the route back to `src` leaves by it; a local,
    /// broadcast or unroutable `src` never may).
    fn arrived_from(src: Ipv4Addr, ingress: &str) -> Result<(), &'static str> {
        match route(src).egress() {
            Some(egress) if egress == ingress => Ok(()),
            Some(_) => Err("arrived where the route back to its source does not leave"),
            None => Err("a source with no route back (local, broadcast or unroutable)"),
        }
    }

    /// The translations a well-formed input admits (none for anything else).
    pub fn translations(&self, frame: &[u8], ingress: &str) -> Vec<Translation> {
        self.translations_or_why(frame, ingress).unwrap_or_default()
    }

    /// The translations `frame`, received on `ingress`, admits, or why it
    /// admits none.
    pub fn translations_or_why(
        &self,
        frame: &[u8],
        ingress: &str,
    ) -> Result<Vec<Translation>, &'static str> {
        if frame.len() >= ETH + 20 && be16(frame, 12) == packet::ETH_P_IPV4 && frame[ETH + 9] == 1 {
            return self.icmp_translations(frame, ingress);
        }
        let p = parse_any(frame)?;
        let to_vip = self.vips.contains(&p.dst);
        if to_vip {
            let first = p.src.octets()[0];
            if first == 0 || first == 127 || first >= 224 {
                return Err("a martian source to a VIP");
            }
            if self.vips.contains(&p.src) {
                return Err("a VIP as the source of a packet to a VIP");
            }
        }
        // A router forwards only frames sent to it.
        if p.eth_dst[0] & 1 != 0 {
            return Err("sent to a link-layer group address");
        }
        if p.proto == PROTO_TCP && p.frag != Frag::Later && !tcp_flags_valid(p.tcp_flags) {
            return Err("TCP flags no connection sends");
        }
        Self::arrived_from(p.src, ingress)?;
        // TTL 1 or 0: the kernel answers (time exceeded), nobody forwards.
        if p.ttl <= 1 {
            return Err("TTL <= 1");
        }
        if p.frag == Frag::Later {
            let follow = self.frags.borrow().get(&p.frag_key()).cloned();
            let follow = follow.ok_or("a later fragment whose first fragment was not sent")?;
            return Ok(vec![Translation::LaterFragment { follow }]);
        }
        let whole = self.whole_translations(&p, to_vip)?;
        Ok(if p.frag == Frag::First {
            whole
                .into_iter()
                .map(|t| match t {
                    // Answers quote the fragment as it came.
                    Translation::Reset | Translation::PortUnreachable => t,
                    t => Translation::FirstFragment(Box::new(t)),
                })
                .collect()
        } else {
            whole
        })
    }

    /// What a whole packet (or a first fragment) that passed the edge
    /// checks admits.
    fn whole_translations(
        &self,
        p: &Parsed,
        to_vip: bool,
    ) -> Result<Vec<Translation>, &'static str> {
        let reply_of = self.reply_endpoint(p.src, p.sport, p.proto);
        if to_vip {
            // A backend's service endpoint as a client of a VIP: a loop.
            if reply_of.is_some() {
                return Err("a backend's service endpoint sending to a VIP");
            }
            let service =
                self.service(p.dst, p.dport, p.proto).ok_or("no service at that VIP and port")?;
            // Where the flow went before binds it, unless a backend has a
            // `max_conns`: a flow placed again (its record overwritten)
            // skips a backend that has filled since.
            let limited = service.backends.iter().any(|b| b.max_conns > 0);
            let placed =
                self.placed((p.src, p.sport, p.dst, p.dport, p.proto)).filter(|_| !limited);
            let usable: Vec<_> = service
                .backends
                .iter()
                .filter(|b| b.weight > 0 && b.state == AdminState::Active)
                .filter(|b| placed.is_none_or(|at| at == (ipv4(b.address), b.port)))
                .collect();
            // The answer for no usable backend, if this packet gets one.
            let answer = || {
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
                // An answer never goes to a backend, NAT or direct routing.
                if self.backends.contains(&p.src) {
                    return Err("no usable backend, and a backend's address is never answered");
                }
                Ok(if p.proto == PROTO_TCP {
                    Translation::Reset
                } else {
                    Translation::PortUnreachable
                })
            };
            if usable.is_empty() {
                return Ok(vec![answer()?]);
            }
            let forwarded = match service.forwarding {
                Forwarding::Nat => Translation::ToBackend {
                    backends: usable.iter().map(|b| (ipv4(b.address), b.port)).collect(),
                },
                Forwarding::Dsr => Translation::Direct {
                    backends: usable.iter().map(|b| ipv4(b.address)).collect(),
                },
                Forwarding::FullNat => return Ok(self.full_nat(p, &usable, answer)),
            };
            // Every usable backend with a `max_conns`: the new flows the
            // corpus sends before a recount may have filled them all, and
            // then the flow is answered as no usable backend is.
            if usable.iter().all(|b| b.max_conns > 0)
                && let Ok(answer) = answer()
            {
                return Ok(vec![forwarded, answer]);
            }
            return Ok(vec![forwarded]);
        }
        if let Some(reply) = self.full_nat_reply(p) {
            return reply;
        }
        let (vip, port) =
            reply_of.ok_or("neither to a VIP nor from a NAT backend's service endpoint")?;
        // Replies go to clients: one to a backend's address would reach it
        // "from the VIP" (a VIP as the destination is refused above).
        // Except a backend that is a client of the VIP: the replies of a
        // flow it opened, as the program's connection table vouches (the
        // program may also have lost the entry and drop them: unchanged is
        // always accepted).
        let opened = self.opened.borrow().get(&(p.dst, p.dport, vip, port, p.proto)).copied();
        let vouched = matches!(opened, Some(None)) || opened == Some(Some((p.src, p.sport)));
        if self.backends.contains(&p.dst) && !vouched {
            return Err("a backend's reply to a backend's address");
        }
        Ok(vec![Translation::FromBackend { vip, port }])
    }

    /// What a client's packet to a full-NAT service admits: full NAT to
    /// one of its `usable` backends; a flow's first packet (a SYN, any
    /// datagram) also the service's answer (`answer`: its pool may have no
    /// port left); any other TCP segment of a flow not seen mapped, a reset
    /// (the program may have no mapping for it).
    fn full_nat(
        &self,
        p: &Parsed,
        usable: &[&lb_ctl::desired::model::Backend],
        answer: impl Fn() -> Result<Translation, &'static str>,
    ) -> Vec<Translation> {
        let flow = fullnat::client_flow(p);
        let held = self.mappings.of_client(flow);
        let opening = p.proto != PROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let mut backends: Vec<_> = usable.iter().map(|b| (ipv4(b.address), b.port)).collect();
        if let Some((_, backend)) = held
            && !opening
        {
            // A TCP flow keeps the backend its port is on.
            backends = vec![backend];
        }
        let pool = self.pools.get(&(p.dst, p.dport, p.proto)).cloned();
        let pool = pool.unwrap_or(fullnat::Pool { addrs: Vec::new(), first: 0, last: 0 });
        let mut admitted = vec![Translation::FullNat { backends, pool, held }];
        if opening {
            admitted.extend(answer());
        } else if held.is_none()
            && p.ihl == 20
            && p.tcp_flags & TCP_RST == 0
            && !self.backends.contains(&p.src)
        {
            admitted.push(Translation::Reset);
        }
        admitted
    }

    /// A packet from a full-NAT backend to a pool address and port a flow
    /// holds: that flow's reply. `None` when no flow holds them (the
    /// kernel's: the load balancer's own connections use those addresses).
    fn full_nat_reply(&self, p: &Parsed) -> Option<Result<Vec<Translation>, &'static str>> {
        let (client, vip, _) =
            self.mappings.of_pool(((p.src, p.sport), (p.dst, p.dport), p.proto))?;
        Some(Ok(vec![Translation::FullNatReply { vip, client }]))
    }

    /// What an ICMP packet admits: an error about one of our flows,
    /// translated to its backend or to its client.
    fn icmp_translations(
        &self,
        frame: &[u8],
        ingress: &str,
    ) -> Result<Vec<Translation>, &'static str> {
        if frame[ETH] != 0x45 {
            return Err("ICMP with IPv4 options (or not IPv4)");
        }
        // questioned: no link-layer group check here (the program makes
        // none for ICMP; see the corpus's broadcast case).
        let (src, dst) = (addr(frame, ETH + 12), addr(frame, ETH + 16));
        let to_vip = self.vips.contains(&dst);
        if to_vip {
            let first = src.octets()[0];
            if first == 0 || first == 127 || first >= 224 {
                return Err("a martian source to a VIP");
            }
            if self.vips.contains(&src) {
                return Err("a VIP as the source of a packet to a VIP");
            }
        }
        let kind = (frame.get(ICMP_AT).copied(), frame.get(ICMP_AT + 1).copied());
        let error = matches!(kind, (Some(3), Some(_)) | (Some(11), Some(0 | 1)));
        if !error {
            return Err("ICMP but not an error about a packet");
        }
        let tot_len = usize::from(be16(frame, ETH + 2));
        if tot_len < 20 + 8 + 28 || ETH + tot_len > frame.len() {
            return Err("an ICMP error cut short of its quote");
        }
        if be16(frame, ETH + 6) & 0x3fff != 0 {
            return Err("an ICMP error in fragments");
        }
        let q = &frame[QUOTE_AT..];
        let q_proto = q[9];
        if q[0] != 0x45 || !(q_proto == PROTO_TCP || q_proto == PROTO_UDP) {
            return Err("an ICMP error quoting options or neither TCP nor UDP");
        }
        if be16(q, 6) & 0x1fff != 0 {
            return Err("an ICMP error quoting a later fragment");
        }
        if frame[ETH + 8] <= 1 {
            return Err("TTL <= 1");
        }
        let (q_src, q_dst, from_port, to_port) =
            (addr(q, 12), addr(q, 16), be16(q, 20), be16(q, 22));
        if q_src != dst {
            return Err("an ICMP error about a packet its destination did not send");
        }
        let about_reply = to_vip;
        if !about_reply && self.reply_endpoint(q_dst, to_port, q_proto).is_none() {
            return Err("an ICMP error about no flow of ours");
        }
        // It comes from where the quoted packet was going.
        Self::arrived_from(q_dst, ingress)?;
        if about_reply {
            let service = self
                .service(q_src, from_port, q_proto)
                .ok_or("an ICMP error about a reply from no service")?;
            if service.forwarding == Forwarding::FullNat {
                return Err("an ICMP error about a full-NAT reply: the kernel's");
            }
            let placed = self.placed((q_dst, to_port, q_src, from_port, q_proto));
            let backends = service
                .backends
                .iter()
                .map(|b| (ipv4(b.address), b.port))
                .filter(|&b| placed.is_none_or(|at| at == b))
                .collect();
            let direct = service.forwarding == Forwarding::Dsr;
            return Ok(vec![Translation::IcmpToBackend { backends, direct }]);
        }
        let (vip, port) = self.reply_endpoint(q_dst, to_port, q_proto).expect("checked above");
        Ok(vec![Translation::IcmpToClient { vip, port }])
    }

    /// Checks one run of the program: `output` with `action` for `input`
    /// received on `ingress`. `Ok` says how the oracle accepted it. A first
    /// fragment accepted as sent is remembered for its later fragments.
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
        let translations = self.translations_or_why(input, ingress).map_err(|reason| {
            format!(
                "{} with a changed frame, but the input admits no translation ({reason})",
                action_name(action)
            )
        })?;
        let mut why = Vec::new();
        for t in &translations {
            match self.matches(t, input, ingress, action, output) {
                Ok(accepted) => {
                    self.remember(input, t, &accepted);
                    self.remember_opened(input, &accepted);
                    self.remember_mapping(input, &accepted);
                    return Ok(accepted);
                }
                Err(m) => why.push(format!("not {}: {m}", t.name())),
            }
        }
        Err(why.join("; "))
    }

    /// For a backend's reply to a backend's address: the flow that backend
    /// would have opened as a client of the VIP (as the program's
    /// connection table keys it), the VIP and port, and the replying
    /// backend. The random run asks the program's table whether the flow is
    /// there, which the oracle cannot know (a packet placed and then not
    /// sent, too big or unroutable, leaves an entry too).
    #[must_use]
    pub fn reply_to_backend_flow(
        &self,
        frame: &[u8],
    ) -> Option<(lb_common::abi::Flow, Endpoint4, Endpoint4)> {
        let p = parse_any(frame).ok()?;
        let (vip, vport) = self.reply_endpoint(p.src, p.sport, p.proto)?;
        if !self.backends.contains(&p.dst) {
            return None;
        }
        let flow = lb_common::abi::Flow {
            src: p.dst.octets(),
            dst: vip.octets(),
            sport: p.dport,
            dport: vport,
            proto: p.proto,
            _pad: [0; 3],
        };
        Some((flow, (vip, vport), (p.src, p.sport)))
    }

    /// Takes the program's word that `flow` (see `reply_to_backend_flow`) is
    /// on `backend`.
    pub fn vouch(&self, flow: &lb_common::abi::Flow, backend: Endpoint4) {
        let key = (
            Ipv4Addr::from(flow.src),
            flow.sport,
            Ipv4Addr::from(flow.dst),
            flow.dport,
            flow.proto,
        );
        self.opened.borrow_mut().insert(key, Some(backend));
    }

    /// After a backend's packet to a VIP went to a backend (it is a client
    /// of the VIP): the flow it opened, for its replies.
    fn remember_opened(&self, input: &[u8], accepted: &Accepted) {
        let Ok(p) = parse_any(input) else { return };
        if !self.backends.contains(&p.src) || !self.vips.contains(&p.dst) {
            return;
        }
        let to = match accepted {
            Accepted::Sent(t) | Accepted::SlowPath(t) => match t {
                Translation::ToBackend { backends } => backends.first().copied(),
                Translation::FirstFragment(inner) => match inner.as_ref() {
                    Translation::ToBackend { backends } => backends.first().copied(),
                    _ => return,
                },
                Translation::FragNeeded { to_backend: false, .. } => None,
                _ => return,
            },
            Accepted::Unchanged => return,
        };
        self.opened.borrow_mut().insert((p.src, p.sport, p.dst, p.dport, p.proto), to);
    }

    /// After a client's packet went out by full NAT: its flow's mapping.
    fn remember_mapping(&self, input: &[u8], accepted: &Accepted) {
        let (Accepted::Sent(t) | Accepted::SlowPath(t)) = accepted else { return };
        let Translation::FullNat { held: Some((pool, backend)), .. } = t else { return };
        let Ok(p) = parse_any(input) else { return };
        self.mappings.record(fullnat::client_flow(&p), *pool, *backend);
    }

    /// After a first fragment went out as `accepted` (translation `t`
    /// offered): where its later fragments must follow.
    fn remember(&self, input: &[u8], t: &Translation, accepted: &Accepted) {
        let Ok(p) = parse_any(input) else { return };
        if p.frag != Frag::First {
            return;
        }
        let (Accepted::Sent(sent) | Accepted::SlowPath(sent)) = accepted else { return };
        let Translation::FirstFragment(_) = t else { return };
        // What was sent names the backend. A first fragment answered
        // instead ("fragmentation needed": one forged with DF) went
        // nowhere, and leaves no decision for the fragments after it.
        let Translation::FirstFragment(inner) = sent else { return };
        let inner = inner.as_ref();
        let follow = match inner {
            Translation::ToBackend { backends } => {
                backends.iter().map(|&(a, _)| Follow::ToBackend(a)).collect()
            }
            Translation::Direct { backends } => {
                backends.iter().map(|&a| Follow::Direct(a)).collect()
            }
            Translation::FromBackend { vip, .. } => vec![Follow::ToClient(*vip)],
            _ => return,
        };
        self.frags.borrow_mut().insert(p.frag_key(), follow);
    }

    /// Whether `output` (with `action`) is `t` applied to `input`; the
    /// translation named in `Ok` holds the one backend it went to.
    fn matches(
        &self,
        t: &Translation,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, Mismatch> {
        match t {
            Translation::IcmpToBackend { .. } | Translation::IcmpToClient { .. } => {
                return self.icmp_matches(t, input, ingress, action, output);
            }
            Translation::FirstFragment(inner) => {
                let accepted =
                    self.forward_matches(inner, Sums::First, input, ingress, action, output)?;
                return Ok(match accepted {
                    Accepted::Sent(Translation::FragNeeded { .. }) => accepted,
                    Accepted::Sent(t) => Accepted::Sent(Translation::FirstFragment(Box::new(t))),
                    Accepted::SlowPath(t) => {
                        Accepted::SlowPath(Translation::FirstFragment(Box::new(t)))
                    }
                    Accepted::Unchanged => Accepted::Unchanged,
                });
            }
            _ => {}
        }
        self.forward_matches(t, Sums::Whole, input, ingress, action, output)
    }

    /// `t`, a client's packet, a backend's reply, a later fragment or an
    /// answer, applied to `input`, checked against `output`.
    #[expect(clippy::too_many_lines, reason = "one arm per translation")]
    fn forward_matches(
        &self,
        t: &Translation,
        sums: Sums,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, Mismatch> {
        let p = parse_any(input).map_err(|e| Mismatch(e.into()))?;
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
                    let one = Translation::ToBackend { backends: vec![(addr, port)] };
                    let answer = (p.dst, false);
                    match self
                        .framed(&one, &p, addr, answer, want, input, ingress, action, output, sums)
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
                    let one = Translation::Direct { backends: vec![addr] };
                    let answer = (p.dst, false);
                    match self.framed(
                        &one,
                        &p,
                        addr,
                        answer,
                        want,
                        input,
                        ingress,
                        action,
                        output,
                        Sums::None,
                    ) {
                        Ok(a) => return Ok(a),
                        Err(m) => why.push(format!("{addr}: {m}")),
                    }
                }
                Err(Mismatch(why.join(", ")))
            }
            Translation::FullNat { backends, pool, held } => {
                self.full_nat_matches((backends, pool, *held), &p, input, ingress, action, output)
            }
            Translation::FullNatReply { vip, client } => {
                let mut want = input.to_vec();
                want[ETH + 8] -= 1;
                want[ETH + 12..ETH + 16].copy_from_slice(&vip.0.octets());
                want[ETH + 16..ETH + 20].copy_from_slice(&client.0.octets());
                want[p.l4()..p.l4() + 2].copy_from_slice(&vip.1.to_be_bytes());
                want[p.l4() + 2..p.l4() + 4].copy_from_slice(&client.1.to_be_bytes());
                // Too big: answered from the pool address, to the backend.
                let answer = (p.dst, true);
                self.framed(t, &p, client.0, answer, want, input, ingress, action, output, sums)
            }
            Translation::FromBackend { vip, port } => {
                let mut want = input.to_vec();
                want[ETH + 8] -= 1;
                want[ETH + 12..ETH + 16].copy_from_slice(&vip.octets());
                want[p.l4()..p.l4() + 2].copy_from_slice(&port.to_be_bytes());
                let answer = (*vip, true);
                self.framed(t, &p, p.dst, answer, want, input, ingress, action, output, sums)
            }
            Translation::LaterFragment { follow } => {
                let mut why = Vec::new();
                for &f in follow {
                    let mut want = input.to_vec();
                    let (to, answer, sums) = match f {
                        Follow::Direct(to) => (to, (p.dst, false), Sums::None),
                        Follow::ToBackend(to) => {
                            want[ETH + 8] -= 1;
                            want[ETH + 16..ETH + 20].copy_from_slice(&to.octets());
                            (to, (p.dst, false), Sums::Ip)
                        }
                        Follow::ToClient(vip) => {
                            want[ETH + 8] -= 1;
                            want[ETH + 12..ETH + 16].copy_from_slice(&vip.octets());
                            (p.dst, (vip, true), Sums::Ip)
                        }
                    };
                    let one = Translation::LaterFragment { follow: vec![f] };
                    match self
                        .framed(&one, &p, to, answer, want, input, ingress, action, output, sums)
                    {
                        Ok(a) => return Ok(a),
                        Err(m) => why.push(format!("{f:?}: {m}")),
                    }
                }
                Err(Mismatch(why.join(", ")))
            }
            Translation::FragNeeded { .. }
            | Translation::IcmpToBackend { .. }
            | Translation::IcmpToClient { .. }
            | Translation::FirstFragment(_) => {
                Err(Mismatch(format!("{} is not offered for a packet", t.name())))
            }
        }
    }

    /// `t`, an ICMP error about one of our flows, applied to `input`.
    fn icmp_matches(
        &self,
        t: &Translation,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, Mismatch> {
        let tot_len = usize::from(be16(input, ETH + 2));
        match t {
            Translation::IcmpToBackend { backends, direct } => {
                let mut why = Vec::new();
                for &(addr, port) in backends {
                    let mut want = input.to_vec();
                    let sums = if *direct {
                        Sums::None
                    } else {
                        want[ETH + 8] -= 1;
                        want[ETH + 16..ETH + 20].copy_from_slice(&addr.octets());
                        want[QUOTE_AT + 12..QUOTE_AT + 16].copy_from_slice(&addr.octets());
                        want[QUOTE_AT + 20..QUOTE_AT + 22].copy_from_slice(&port.to_be_bytes());
                        Sums::Icmp
                    };
                    let one = Translation::IcmpToBackend {
                        backends: vec![(addr, port)],
                        direct: *direct,
                    };
                    match self.sent_as(
                        &one, tot_len, addr, *direct, want, input, ingress, action, output, sums,
                    ) {
                        Ok(a) => return Ok(a),
                        Err(m) => why.push(format!("{addr}:{port}: {m}")),
                    }
                }
                Err(Mismatch(why.join(", ")))
            }
            Translation::IcmpToClient { vip, port } => {
                let mut want = input.to_vec();
                want[ETH + 8] -= 1;
                want[ETH + 12..ETH + 16].copy_from_slice(&vip.octets());
                want[QUOTE_AT + 16..QUOTE_AT + 20].copy_from_slice(&vip.octets());
                want[QUOTE_AT + 22..QUOTE_AT + 24].copy_from_slice(&port.to_be_bytes());
                let to = addr(input, ETH + 16);
                self.sent_as(
                    t,
                    tot_len,
                    to,
                    false,
                    want,
                    input,
                    ingress,
                    action,
                    output,
                    Sums::Icmp,
                )
            }
            _ => Err(Mismatch(format!("{} is not an ICMP translation", t.name()))),
        }
    }

    /// A client's packet sent by full NAT (`Translation::FullNat`): to one
    /// of `backends`, from an address and port of `pool`, the flow's own
    /// if it has one (`held`), never another flow's.
    fn full_nat_matches(
        &self,
        (backends, pool, held): (&[Endpoint4], &fullnat::Pool, Option<(Endpoint4, Endpoint4)>),
        p: &Parsed,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, Mismatch> {
        if output.len() < p.l4() + 4 {
            return Err(Mismatch("an output too short to be forwarded".into()));
        }
        let from = (addr(output, ETH + 12), be16(output, p.l4()));
        let to = (addr(output, ETH + 16), be16(output, p.l4() + 2));
        let sent = backends.contains(&to) && pool.holds(from);
        if sent {
            if held.is_some_and(|h| h != (from, to)) {
                return Err(Mismatch(format!(
                    "left from {}:{} to {}:{}, not as its flow did ({held:?})",
                    from.0, from.1, to.0, to.1
                )));
            }
            if !self.mappings.may_take(fullnat::client_flow(p), from, to) {
                return Err(Mismatch(format!("{}:{} is another flow's port", from.0, from.1)));
            }
        }
        // Not sent as a rewrite (too big, say: answered): any backend and
        // port of the pool make the packet the answer quotes.
        let (from, to) = if sent {
            (from, to)
        } else {
            let first = backends.first().copied().ok_or(Mismatch("no usable backend".into()))?;
            let pool_first = (pool.addrs.first().copied().unwrap_or(p.dst), pool.first);
            held.unwrap_or((pool_first, first))
        };
        let mut want = input.to_vec();
        want[ETH + 8] -= 1;
        want[ETH + 12..ETH + 16].copy_from_slice(&from.0.octets());
        want[ETH + 16..ETH + 20].copy_from_slice(&to.0.octets());
        want[p.l4()..p.l4() + 2].copy_from_slice(&from.1.to_be_bytes());
        want[p.l4() + 2..p.l4() + 4].copy_from_slice(&to.1.to_be_bytes());
        let one =
            Translation::FullNat { backends: vec![to], pool: pool.clone(), held: Some((from, to)) };
        let answer = (p.dst, false);
        self.framed(&one, p, to.0, answer, want, input, ingress, action, output, Sums::Whole)
    }

    /// `want` (the rewritten packet `p`) framed for its next hop towards
    /// `to`, compared with `output`. Too big for the next link, it is
    /// answered instead: "fragmentation needed" from `answer.0` (`answer.1`:
    /// to the backend whose reply it was).
    #[expect(clippy::too_many_arguments, reason = "one comparison, spelled out")]
    fn framed(
        &self,
        t: &Translation,
        p: &Parsed,
        to: Ipv4Addr,
        answer: (Ipv4Addr, bool),
        want: Vec<u8>,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
        sums: Sums,
    ) -> Result<Accepted, Mismatch> {
        if let Some(egress) = route(to).egress()
            && p.tot_len > mtu(egress)
        {
            return self.frag_needed(p, answer, mtu(egress), input, action, output);
        }
        let direct =
            matches!(t, Translation::Direct { .. } | Translation::LaterFragment { follow: _ })
                && sums == Sums::None;
        let accepted =
            self.sent_as(t, p.tot_len, to, direct, want, input, ingress, action, output, sums)?;
        if sums == Sums::Whole || sums == Sums::First {
            l4_checksum_follows(input, output, p, sums)?;
        }
        Ok(accepted)
    }

    /// The answer to a packet with DF too big for its next link, if it may
    /// have one: ICMP "fragmentation needed" with the link's MTU, from the
    /// VIP, quoting its IPv4 header and 8 bytes, back where it came from.
    fn frag_needed(
        &self,
        p: &Parsed,
        (vip, to_backend): (Ipv4Addr, bool),
        mtu: usize,
        input: &[u8],
        action: u32,
        output: &[u8],
    ) -> Result<Accepted, Mismatch> {
        if !p.df {
            return Err(Mismatch("too big for the next link, without DF".into()));
        }
        if p.ihl != 20 {
            return Err(Mismatch("too big, with IPv4 options: not answered".into()));
        }
        // A backend's reply is answered ("fragmentation needed" to the
        // backend that sent it); a client's packet from any backend's
        // address, NAT or direct routing, is not.
        if let Some(why) = self.forbidden_destination(p.src)
            && !(to_backend && why == "a backend")
        {
            return Err(Mismatch(format!("too big, and its source is {why}")));
        }
        let mtu = mtu as u16;
        let want = expected_frag_needed(input, p, vip, mtu);
        if action != XDP_TX {
            return Err(Mismatch(format!("{} (want XDP_TX)", action_name(action))));
        }
        if output != want {
            return Err(Mismatch(format!("bytes differ from {}", hex(&want))));
        }
        Ok(Accepted::Sent(Translation::FragNeeded { vip, mtu, to_backend }))
    }

    /// `want` framed for its next hop towards `to`, compared with `output`;
    /// the checksum fields `sums` names are checked by what they verify to
    /// and the rest byte for byte.
    #[expect(clippy::too_many_arguments, reason = "one comparison, spelled out")]
    fn sent_as(
        &self,
        t: &Translation,
        tot_len: usize,
        to: Ipv4Addr,
        direct: bool,
        mut want: Vec<u8>,
        input: &[u8],
        ingress: &str,
        action: u32,
        output: &[u8],
        sums: Sums,
    ) -> Result<Accepted, Mismatch> {
        let (want_action, accepted) = match route(to) {
            Route::Nowhere => return Err(Mismatch(format!("{to} is not forwarded by the FIB"))),
            Route::Neighbour { egress, mac, via } => {
                if direct && via != to {
                    return Err(Mismatch("direct routing through a gateway".into()));
                }
                if tot_len > mtu(egress) {
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
                if tot_len > mtu(egress) {
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
        // The checksum fields are judged below, by what they verify to.
        let mut fields = Vec::new();
        if sums != Sums::None {
            fields.push(ETH + 10);
        }
        if sums == Sums::Icmp {
            fields.extend([ICMP_AT + 2, QUOTE_AT + 10]);
        }
        let p = parse_any(input).ok();
        if matches!(sums, Sums::Whole | Sums::First)
            && let Some(p) = &p
        {
            fields.push(p.check_at());
        }
        for at in fields {
            want[at..at + 2].copy_from_slice(&output[at..at + 2]);
        }
        if output != want {
            let at = output.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(Mismatch(format!("byte {at} differs from {}", hex(&want))));
        }
        if sums != Sums::None {
            let ihl = usize::from(input[ETH] & 0x0f) * 4;
            same_verification("IPv4", &input[ETH..ETH + ihl], &output[ETH..ETH + ihl])?;
        }
        if sums == Sums::Icmp {
            let end = ETH + tot_len;
            same_verification(
                "quoted IPv4",
                &input[QUOTE_AT..QUOTE_AT + 20],
                &output[QUOTE_AT..QUOTE_AT + 20],
            )?;
            same_verification("ICMP", &input[ICMP_AT..end], &output[ICMP_AT..end])?;
        }
        Ok(accepted)
    }
}

/// The checksum over `output` verifies to what it did over `input`.
fn same_verification(what: &str, input: &[u8], output: &[u8]) -> Result<(), Mismatch> {
    let (v_in, v_out) = (verify(input), verify(output));
    if v_in == v_out {
        Ok(())
    } else {
        Err(Mismatch(format!(
            "{what} checksum verifies to {v_out:#06x} (the input's to {v_in:#06x})"
        )))
    }
}

/// The ones' complement sum of the 16-bit words a NAT rewrite changes in
/// a transport checksum's coverage: the addresses, the ports and the
/// checksum itself. An incremental update (RFC 1624) keeps it.
fn rewritten_words_sum(frame: &[u8], p: &Parsed) -> u16 {
    let mut words = Vec::with_capacity(14);
    words.extend_from_slice(&frame[ETH + 12..ETH + 20]);
    words.extend_from_slice(&frame[p.l4()..p.l4() + 4]);
    words.extend_from_slice(&frame[p.check_at()..p.check_at() + 2]);
    verify(&words)
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

/// The transport checksum of a rewritten `output` verifies to what it
/// verified to in `input` (a first fragment's, which covers bytes it does
/// not hold: moved by exactly the rewrite's delta); a UDP checksum of 0
/// ("none") stays 0, and one that was not 0 does not become 0.
fn l4_checksum_follows(
    input: &[u8],
    output: &[u8],
    p: &Parsed,
    sums: Sums,
) -> Result<(), Mismatch> {
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
    let (l4_in, l4_out) = if sums == Sums::First {
        (rewritten_words_sum(input, p), rewritten_words_sum(output, p))
    } else {
        // The output's lengths are the input's (compared byte for byte already).
        (l4_verify(input, p), l4_verify(output, p))
    };
    if l4_in != l4_out {
        let what =
            if sums == Sums::First { "moved by other than the rewrite's delta: " } else { "" };
        return Err(Mismatch(format!(
            "transport checksum {what}verifies to {l4_out:#06x} (the input's to {l4_in:#06x})"
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
        // Clients behind a router on the client side (10.77.3.0/24, and
        // the benchmarks' many clients, 10.77.64.0/18).
        3 | 64..=127 => Route::Neighbour { egress: IF_CLIENT, mac: CLIENT_MAC, via: CLIENT },
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

/// The ICMP "fragmentation needed" `vip` sends the sender of `p` (too big
/// for a link of `mtu`): its IPv4 header and first 8 bytes quoted (RFC 792,
/// RFC 1191), built here from scratch.
pub fn expected_frag_needed(frame: &[u8], p: &Parsed, vip: Ipv4Addr, mtu: u16) -> Vec<u8> {
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&frame[ETH..ETH + 28]);
    let check = packet::internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut answer = Ipv4::new(vip, p.src, L4::Raw { proto: PROTO_ICMP, bytes: icmp });
    answer.id = 0;
    answer.frag_off = 0;
    answer.frame(p.eth_src, p.eth_dst)
}

/// A configured address as the oracle models it: IPv4 only (its corpus is
/// IPv4's).
fn ipv4(addr: std::net::IpAddr) -> Ipv4Addr {
    match addr {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("the oracle models IPv4 services, not {a}"),
    }
}
