//! Bounds-checked header access. Every read of packet memory goes through
//! `ptr_at`, which proves to the verifier (and to us) that it is in bounds.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{
        Flow, NEIGH_MARK_MAGIC, NEIGH_MARK6_MAGIC, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN,
    },
    counter::Counter,
};

use crate::{
    family::{Family, V4},
    mem,
};

pub const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
/// More-fragments flag and fragment offset, in the host-order frag_off word.
const IP_MF_OFFSET: u16 = 0x3fff;
/// The fragment offset alone (units of 8 bytes).
const IP_OFFSET: u16 = 0x1fff;

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// A whole datagram.
    Whole,
    /// The first fragment: it carries the transport header, and the
    /// transport checksum of the whole datagram.
    First,
    /// A later fragment: no transport header, no ports.
    Later,
}

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The first 4 bytes of TCP and UDP alike.
#[repr(C)]
pub struct Ports {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}

/// A parsed TCP or UDP packet: pointers into the frame, all
/// bounds-checked, plus the flow as the sender wrote it.
pub struct Packet<F: Family = V4> {
    pub eth: *mut EthHdr,
    pub ip: *mut F::IpHdr,
    pub ports: *mut Ports,
    /// The L4 checksum field.
    pub l4_check: *mut [u8; 2],
    pub flow: Flow<F::Addr>,
    /// The IP packet's length, host order (IPv6: its payload's plus the
    /// fixed header's 40 bytes).
    pub tot_len: u16,
    /// The TTL (IPv6: the hop limit).
    pub ttl: u8,
    pub frag: Frag,
    /// The identification that ties a datagram's fragments together.
    pub id: F::FragId,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

/// `Ok(pointer)` when `size_of::<T>()` bytes at `offset` are inside the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Counter::PassMalformed);
    }
    Ok((start + offset) as *mut T)
}

/// The Ethernet and IP headers of a TCP, UDP or ICMP packet, before the
/// rest is read: enough to tell whether the packet can be ours.
#[derive(Clone, Copy)]
pub struct Headers<F: Family = V4> {
    pub(crate) eth: *mut EthHdr,
    pub ip: *mut F::IpHdr,
    /// From the IP header to the transport header, bytes (IPv4: the IHL;
    /// IPv6: the fixed header and the extension headers).
    pub(crate) ihl: usize,
    pub proto: u8,
    pub src: F::Addr,
    pub dst: F::Addr,
    /// The header length is below 20 bytes: the addresses are there, the
    /// rest is garbage (the caller decides whether the packet is ours).
    pub short_header: bool,
    /// What the family's IP layer says of fragmentation (IPv6: its
    /// fragment header; IPv4 reads its header's fields later).
    pub frag: F::IpFrag,
}

/// The IPv4 headers (see `Headers`).
pub type Ipv4 = Headers<V4>;

/// Whether the frame carrying `ip` was sent to a link-layer group address
/// (broadcast, multicast): a router forwards only frames sent to it.
///
/// # Safety
/// Nothing has resized the frame since `ipv4` parsed it.
#[inline(always)]
pub unsafe fn to_link_group<F: Family>(ip: &Headers<F>) -> bool {
    // SAFETY: `ipv4` bounds-checked the Ethernet header.
    unsafe { (*ip.eth).dst[0] & 1 != 0 }
}

impl<F: Family> Headers<F> {
    /// The IP header's length in bytes (IPv4: from its IHL field).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        self.ihl
    }

    /// The Ethernet header.
    ///
    /// # Safety
    /// Nothing has resized the frame since `ipv4` parsed it.
    #[inline(always)]
    pub unsafe fn eth(&self) -> *mut EthHdr {
        self.eth
    }
}

/// The bit in which the IPv4 and IPv6 marks' magics differ.
const MARK_BIT: u32 = NEIGH_MARK_MAGIC ^ NEIGH_MARK6_MAGIC;
const _: () = assert!(MARK_BIT.is_power_of_two() && NEIGH_MARK6_MAGIC & MARK_BIT != 0);

/// Whether the frame is IPv6, read again for a frame `ipv4` passed.
#[inline(always)]
pub fn is_ipv6(ctx: &XdpContext) -> bool {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: ptr_at checked the Ethernet header.
    unsafe { mem::load16::<12>(eth.cast()) == crate::v6::parse::ETH_P_IPV6_WIRE }
}

/// The EtherType of IPv4 as it lies in the frame, read natively.
const ETH_P_IPV4_WIRE: u16 = u16::from_ne_bytes(ETH_P_IPV4.to_be_bytes());

/// Parses Ethernet / IPv4 (any IHL) of a TCP, UDP or ICMP packet, as far as the
/// addresses. `Err` says why the packet is not ours to touch.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Ipv4, Counter> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // Only this program may mark a frame for `lb_neigh`, which would send it
    // wherever the mark says: one that arrives marked is forged, whatever
    // its EtherType.
    // SAFETY: ptr_at checked that the Ethernet header is inside the frame.
    // Either mark (the two magics differ in one bit: one compare).
    if unsafe { mem::load32::<0>(eth.cast()) } | MARK_BIT == NEIGH_MARK6_MAGIC {
        return Err(Counter::DropForgedMark);
    }
    // SAFETY: as above.
    if unsafe { mem::load16::<12>(eth.cast()) } != ETH_P_IPV4_WIRE {
        return Err(Counter::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: ptr_at checked the 20-byte fixed IPv4 header.
    let (version_ihl, proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).proto,
            mem::load32::<12>(ip.cast()).to_ne_bytes(),
            mem::load32::<16>(ip.cast()).to_ne_bytes(),
        )
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 {
        return Err(Counter::PassMalformed);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Counter::PassNotTcpUdp);
    }
    Ok(Ipv4 { eth, ip, ihl, proto, src, dst, short_header: ihl < 20, frag: () })
}

/// A TCP segment's sequence and acknowledgment numbers, host order:
/// `None` unless `pkt` is TCP with its fixed header (not a later fragment).
/// Bounds-checked again here: the verifier knows only the range the TCP
/// and UDP branches of `transport` have in common for `pkt.ports`.
#[inline(always)]
pub fn tcp_seq_ack<F: Family>(ctx: &XdpContext, pkt: &Packet<F>) -> Option<(u32, u32)> {
    let header = pkt.ports.cast::<[u8; 12]>();
    if pkt.flow.proto != PROTO_TCP || header.is_null() || header as usize + 12 > ctx.data_end() {
        return None;
    }
    // SAFETY: the 12 bytes are in the frame (checked just above).
    unsafe {
        Some((
            u32::from_be(mem::load32::<4>(header.cast())),
            u32::from_be(mem::load32::<8>(header.cast())),
        ))
    }
}

/// Whether TCP `flags` can be one segment of a connection (RFC 9293): a
/// SYN without FIN or RST, and any segment but a SYN or a RST acknowledges.
/// SYN+FIN, SYN+RST and no flags at all are scans and stack fingerprinting.
#[inline(always)]
pub const fn tcp_flags_valid(flags: u8) -> bool {
    let syn = flags & TCP_SYN != 0;
    if syn { flags & (TCP_FIN | TCP_RST) == 0 } else { flags & (TCP_ACK | TCP_RST) != 0 }
}

/// Reads the TCP or UDP header after `ip`'s: the packet with its flow.
/// Called for packets that are ours (to a VIP, from a backend): headers that
/// do not hold together are `DropMalformed`, never forwarded.
#[inline(always)]
pub fn transport(ctx: &XdpContext, ip: &Ipv4) -> Result<Packet, Counter> {
    const BAD: Counter = Counter::DropMalformed;
    let Ipv4 { eth, ihl, proto, src, dst, .. } = *ip;
    // SAFETY: `ipv4` checked the 20-byte fixed header.
    let (tot_len, id, frag_off, ttl) = unsafe {
        (
            u16::from_be(mem::load16::<2>(ip.ip.cast())),
            u16::from_be(mem::load16::<4>(ip.ip.cast())),
            u16::from_be(mem::load16::<6>(ip.ip.cast())),
            (*ip.ip).ttl,
        )
    };
    if ip.short_header || usize::from(tot_len) < ihl {
        return Err(BAD);
    }
    let frag = match (frag_off & IP_MF_OFFSET, frag_off & IP_OFFSET) {
        (0, _) => Frag::Whole,
        (_, 0) => Frag::First,
        _ => Frag::Later,
    };
    let flow = Flow { src, dst, proto, ..Flow::default() };
    let layer = IpLayer { eth, ip: ip.ip, flow, tot_len, ttl, frag, id };
    ports(ctx, &layer, ihl, frag_off & IP_OFFSET)
}

/// What a family's IP layer hands the transport parse (`ports`): the
/// `Packet` fields it has read.
pub struct IpLayer<F: Family> {
    pub eth: *mut EthHdr,
    pub ip: *mut F::IpHdr,
    /// The flow as far as the IP header says (no ports).
    pub flow: Flow<F::Addr>,
    pub tot_len: u16,
    pub ttl: u8,
    pub frag: Frag,
    pub id: F::FragId,
}

/// The TCP or UDP header after `layer`, an IP layer its family has read and
/// checked (`ihl`: from the IP header to the transport header;
/// `frag_offset`: the fragment's, in 8-byte units): the packet with its
/// ports, checksum and flags. Both families' parse ends here. Headers that
/// do not hold together are `DropMalformed`.
#[inline(always)]
pub fn ports<F: Family>(
    ctx: &XdpContext,
    layer: &IpLayer<F>,
    ihl: usize,
    frag_offset: u16,
) -> Result<Packet<F>, Counter> {
    const BAD: Counter = Counter::DropMalformed;
    let IpLayer { eth, ip, mut flow, tot_len, ttl, frag, id } = *layer;
    let proto = flow.proto;
    if frag == Frag::Later {
        // A TCP fragment at offset 8 would rewrite the TCP header's flags
        // on reassembly (RFC 1858's overlapping fragment attack).
        if proto == PROTO_TCP && frag_offset == 1 {
            return Err(BAD);
        }
        if ctx.data() + ETH_LEN + usize::from(tot_len) > ctx.data_end() {
            return Err(BAD);
        }
        // No ports to read; the caller decides whether the fragment is ours.
        return Ok(Packet {
            eth,
            ip,
            ports: core::ptr::null_mut(),
            l4_check: core::ptr::null_mut(),
            flow,
            tot_len,
            ttl,
            frag,
            id,
            tcp_flags: 0,
        });
    }
    let l4 = ETH_LEN + ihl;
    // Both pointers derive from one bounds check, so the verifier sees them
    // inside it (separate checks get merged by the compiler and lose that).
    let mut tcp_flags = 0;
    let (ports, l4_check): (*mut Ports, *mut [u8; 2]) = if proto == PROTO_TCP {
        if usize::from(tot_len) < ihl + 20 {
            return Err(BAD);
        }
        // The checksum is at offset 16 of a header at least 20 bytes long.
        let tcp: *mut [u8; 20] = ptr_at(ctx, l4).map_err(|_| BAD)?;
        // SAFETY: ptr_at checked the 20 bytes.
        let (offset_byte, flags) = unsafe { ((*tcp)[12], (*tcp)[13]) };
        // The data offset: at least the 5 words of the fixed header, and no
        // further than the packet.
        let header = usize::from(offset_byte >> 4) * 4;
        if header < 20 || ihl + header > usize::from(tot_len) {
            return Err(BAD);
        }
        tcp_flags = flags;
        (tcp.cast(), tcp.cast::<u8>().wrapping_add(16).cast())
    } else {
        // UDP: the families pass no other protocol here.
        if usize::from(tot_len) < ihl + 8 {
            return Err(BAD);
        }
        let udp: *mut [u8; 8] = ptr_at(ctx, l4).map_err(|_| BAD)?;
        // SAFETY: ptr_at checked the 8 bytes.
        let (length, check) = unsafe {
            (usize::from(u16::from_be(mem::load16::<4>(udp.cast()))), mem::load16::<6>(udp.cast()))
        };
        // Its own length: at least its header, and no more than the packet
        // holds (less is trailing padding, which the kernel trims too); a
        // first fragment holds only the start of it.
        if length < 8 || (frag == Frag::Whole && ihl + length > usize::from(tot_len)) {
            return Err(BAD);
        }
        if F::UDP_CHECKSUM_REQUIRED && check == 0 {
            return Err(BAD);
        }
        (udp.cast(), udp.cast::<u8>().wrapping_add(6).cast())
    };
    // The frame must hold everything the IP header claims (trailing padding is
    // fine). Checked after the L4 header on purpose: done first, it lets the
    // compiler drop the L4 bounds check as implied, which the verifier cannot follow.
    if ctx.data() + ETH_LEN + usize::from(tot_len) > ctx.data_end() {
        return Err(BAD);
    }
    // SAFETY: ptr_at checked the ports.
    unsafe {
        flow.sport = u16::from_be(mem::load16::<0>(ports.cast()));
        flow.dport = u16::from_be(mem::load16::<2>(ports.cast()));
    }
    Ok(Packet { eth, ip, ports, l4_check, flow, tot_len, ttl, frag, id, tcp_flags })
}
