//! Bounds-checked IPv6 parsing: the fixed header, the extension headers a
//! router must step over (hop-by-hop options, routing with no segment
//! left, destination options) and the fragment header, then TCP or UDP.
//! Every read goes through `parse::ptr_at`, as for IPv4.
use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use lb_common::{
    abi::{PROTO_TCP, PROTO_UDP},
    counter::Counter,
};

use super::V6;
use crate::{
    mem,
    parse::{self, ETH_LEN, EthHdr, Frag, Headers, Packet, ptr_at},
};

/// The fixed IPv6 header (RFC 8200).
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version, traffic class, flow label.
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

pub const IPV6_LEN: usize = 40;
pub const PROTO_ICMPV6: u8 = 58;
const ETH_P_IPV6: u16 = 0x86dd;
/// The EtherType of IPv6 as it lies in the frame, read natively.
pub const ETH_P_IPV6_WIRE: u16 = u16::from_ne_bytes(ETH_P_IPV6.to_be_bytes());

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
/// Extension headers stepped over at most; a packet with more is not ours
/// (the kernel decides). RFC 8200's recommended order has at most four
/// before the transport header: hop-by-hop, destination options, routing,
/// fragment.
const MAX_EXT_HEADERS: usize = 4;

/// What the fragment header says, if there is one.
#[derive(Clone, Copy)]
pub struct FragInfo {
    pub frag: Frag,
    /// The fragment offset in 8-byte units.
    pub offset: u16,
    pub id: u32,
}

/// Parses Ethernet / IPv6 and the extension headers as far as the
/// transport protocol (TCP, UDP, ICMPv6). `Err` says why the packet is not
/// ours to touch. The caller has seen the IPv6 EtherType.
#[inline(always)]
pub fn headers(ctx: &XdpContext) -> Result<Headers<V6>, Counter> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: ptr_at checked the 40-byte fixed header.
    let (version, next, src, dst) = unsafe {
        (
            (*ip).vtc_flow[0] >> 4,
            (*ip).next_header,
            mem::load_addr6::<8>(ip.cast()),
            mem::load_addr6::<24>(ip.cast()),
        )
    };
    if version != 6 {
        return Err(Counter::PassMalformed);
    }
    let (ihl, proto, frag) = if is_transport(next) {
        (IPV6_LEN, next, FragInfo { frag: Frag::Whole, offset: 0, id: 0 })
    } else {
        let chain = Chain::unpack(lb_ipv6_ext_headers(ctx.ctx, next))?;
        let frag = match chain.frag_header {
            0 => FragInfo { frag: Frag::Whole, offset: 0, id: 0 },
            at => {
                let header: *const [u8; 8] = ptr_at(ctx, ETH_LEN + at)?;
                // SAFETY: ptr_at checked the fragment header's 8 bytes.
                let [_, _, w0, w1, i0, i1, i2, i3] = unsafe { *header };
                let units = u16::from_be_bytes([w0, w1]) >> 3;
                let kind = match (units, w1 & 1 != 0) {
                    // An atomic fragment is a whole datagram (RFC 6946).
                    (0, false) => Frag::Whole,
                    (0, true) => Frag::First,
                    _ => Frag::Later,
                };
                FragInfo { frag: kind, offset: units, id: u32::from_be_bytes([i0, i1, i2, i3]) }
            }
        };
        (chain.transport, chain.proto, frag)
    };
    Ok(Headers { eth, ip, ihl, proto, src, dst, short_header: false, frag })
}

#[inline(always)]
const fn is_transport(next: u8) -> bool {
    next == PROTO_TCP || next == PROTO_UDP || next == PROTO_ICMPV6
}

/// What the extension headers of a packet lead to: where its transport
/// header starts (from the IPv6 header), which protocol it is, and where
/// its fragment header is (0: none).
struct Chain {
    transport: usize,
    proto: u8,
    frag_header: usize,
}

/// `lb_ipv6_ext_headers`'s answer for a packet that is not ours.
const CHAIN_NOT_OURS: u64 = 1 << 63;

impl Chain {
    /// Offsets fit 14 bits: four headers of at most 2 KiB after the fixed 40 bytes.
    #[inline(always)]
    const fn pack(&self) -> u64 {
        self.transport as u64 | (self.proto as u64) << 16 | (self.frag_header as u64) << 24
    }

    #[inline(always)]
    fn unpack(packed: u64) -> Result<Self, Counter> {
        if packed & CHAIN_NOT_OURS != 0 {
            return Err(Counter::PassNotTcpUdp);
        }
        Ok(Self {
            transport: (packed & 0x3fff) as usize,
            proto: (packed >> 16) as u8,
            frag_header: ((packed >> 24) & 0x3fff) as usize,
        })
    }
}

/// Steps over a packet's extension headers, starting from the fixed
/// header's next header `next`: hop-by-hop and destination options, a
/// routing header with no segment left (one with segments left names the
/// next hop the packet is for: not a VIP's to take), and a fragment
/// header, which only the transport header may follow (a later fragment
/// could not say what follows otherwise). At most `MAX_EXT_HEADERS`;
/// anything else is not ours (`CHAIN_NOT_OURS`), and the kernel decides.
///
/// A global BPF function: the verifier checks its loop once, on its own,
/// and its caller sees one answer instead of a state for every way through
/// the headers (inlined, they made the program too complex to verify).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_ipv6_ext_headers(ctx: *mut xdp_md, mut next: u8) -> u64 {
    let ctx = XdpContext::new(ctx);
    let mut offset = IPV6_LEN;
    let mut frag_header = 0;
    let mut seen = 0;
    while seen < MAX_EXT_HEADERS && !is_transport(next) {
        if frag_header != 0 {
            return CHAIN_NOT_OURS;
        }
        let Ok(ext) = ptr_at::<[u8; 8]>(&ctx, ETH_LEN + offset) else {
            return CHAIN_NOT_OURS;
        };
        // SAFETY: ptr_at checked the 8 bytes every extension header has.
        let [ext_next, ext_len, _, segments_left, ..] = unsafe { *ext };
        let len = match next {
            HOP_BY_HOP | DEST_OPTS => (usize::from(ext_len) + 1) * 8,
            ROUTING if segments_left == 0 => (usize::from(ext_len) + 1) * 8,
            FRAGMENT => {
                frag_header = offset;
                8
            }
            _ => return CHAIN_NOT_OURS,
        };
        next = ext_next;
        offset += len;
        seen += 1;
    }
    if !is_transport(next) {
        return CHAIN_NOT_OURS;
    }
    Chain { transport: offset, proto: next, frag_header }.pack()
}

/// Reads the TCP or UDP header after `ip`'s: the packet with its flow.
/// Called for packets that are ours (to a VIP, from a backend): headers that
/// do not hold together are `DropMalformed`, never forwarded.
#[inline(always)]
pub fn transport(ctx: &XdpContext, ip: &Headers<V6>) -> Result<Packet<V6>, Counter> {
    const BAD: Counter = Counter::DropMalformed;
    let Headers { eth, ihl, proto, src, dst, frag, .. } = *ip;
    // SAFETY: `headers` checked the 40-byte fixed header.
    let (payload_len, hop_limit) =
        unsafe { (u16::from_be(mem::load16::<4>(ip.ip.cast())), (*ip.ip).hop_limit) };
    // A jumbogram (payload length 0) is not for a load balancer's links.
    if payload_len == 0 || usize::from(payload_len) > usize::from(u16::MAX) - IPV6_LEN {
        return Err(BAD);
    }
    let tot_len = payload_len + IPV6_LEN as u16;
    if usize::from(tot_len) < ihl {
        return Err(BAD);
    }
    // `answer` parses its frame again, ICMPv6 too: not TCP or UDP, it has
    // no ports (a later fragment's protocol is the caller's to judge).
    if frag.frag != Frag::Later && proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Counter::PassNotTcpUdp);
    }
    let flow = lb_common::abi::Flow { src, dst, proto, ..Default::default() };
    let layer = parse::IpLayer {
        eth,
        ip: ip.ip,
        flow,
        tot_len,
        ttl: hop_limit,
        frag: frag.frag,
        id: frag.id,
    };
    parse::ports(ctx, &layer, ihl, frag.offset)
}
