//! Bounds-checked header access. Every read of packet memory goes through
//! `ptr_at`, which proves to the verifier (and to us) that it is in bounds.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{Flow, PROTO_TCP, PROTO_UDP},
    counter::Counter,
};

pub const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
/// More-fragments flag and fragment offset, in the host-order frag_off word.
const IP_MF_OFFSET: u16 = 0x3fff;

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

/// A parsed TCP or UDP over IPv4 packet: pointers into the frame, all
/// bounds-checked, plus the flow as the sender wrote it.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub ports: *mut Ports,
    /// The L4 checksum field.
    pub l4_check: *mut [u8; 2],
    pub flow: Flow,
    /// IPv4 total length, host order.
    pub tot_len: u16,
    pub ttl: u8,
    pub fragment: bool,
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

/// Parses Ethernet / IPv4 (any IHL) / TCP or UDP. `Err` says why the packet is
/// not ours to touch.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Counter> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the Ethernet header is inside the frame.
    if u16::from_be_bytes(unsafe { (*eth).proto }) != ETH_P_IPV4 {
        return Err(Counter::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: ptr_at checked the 20-byte fixed IPv4 header.
    let (version_ihl, frag_off, proto, tot_len, ttl, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be_bytes((*ip).frag_off),
            (*ip).proto,
            u16::from_be_bytes((*ip).tot_len),
            (*ip).ttl,
            (*ip).src,
            (*ip).dst,
        )
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || usize::from(tot_len) < ihl {
        return Err(Counter::PassMalformed);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Counter::PassNotTcpUdp);
    }
    let mut flow = Flow { src, dst, proto, ..Flow::default() };
    let fragment = frag_off & IP_MF_OFFSET != 0;
    if fragment {
        // No ports to read; the caller decides whether the fragment is ours.
        return Ok(Packet {
            eth,
            ip,
            ports: core::ptr::null_mut(),
            l4_check: core::ptr::null_mut(),
            flow,
            tot_len,
            ttl,
            fragment,
            tcp_flags: 0,
        });
    }
    let l4 = ETH_LEN + ihl;
    // Both pointers derive from one bounds check, so the verifier sees them
    // inside it (separate checks get merged by the compiler and lose that).
    let mut tcp_flags = 0;
    let (ports, l4_check): (*mut Ports, *mut [u8; 2]) = if proto == PROTO_TCP {
        if usize::from(tot_len) < ihl + 20 {
            return Err(Counter::PassMalformed);
        }
        // The checksum is at offset 16 of a header at least 20 bytes long.
        let tcp: *mut [u8; 20] = ptr_at(ctx, l4)?;
        // SAFETY: ptr_at checked the 20 bytes.
        tcp_flags = unsafe { (*tcp)[13] };
        (tcp.cast(), tcp.cast::<u8>().wrapping_add(16).cast())
    } else {
        if usize::from(tot_len) < ihl + 8 {
            return Err(Counter::PassMalformed);
        }
        let udp: *mut [u8; 8] = ptr_at(ctx, l4)?;
        (udp.cast(), udp.cast::<u8>().wrapping_add(6).cast())
    };
    // The frame must hold everything the IP header claims (trailing padding is
    // fine). Checked after the L4 header on purpose: done first, it lets the
    // compiler drop the L4 bounds check as implied, which the verifier cannot follow.
    if ctx.data() + ETH_LEN + usize::from(tot_len) > ctx.data_end() {
        return Err(Counter::PassMalformed);
    }
    // SAFETY: ptr_at checked the ports.
    unsafe {
        flow.sport = u16::from_be_bytes((*ports).src);
        flow.dport = u16::from_be_bytes((*ports).dst);
    }
    Ok(Packet { eth, ip, ports, l4_check, flow, tot_len, ttl, fragment, tcp_flags })
}
