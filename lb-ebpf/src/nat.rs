//! Header rewrites with incremental checksum updates (RFC 1624): the payload
//! is never summed again.
use lb_common::{abi::PROTO_UDP, csum};

use crate::{mem, parse::Packet};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
pub enum Side {
    /// Client -> backend: the destination becomes the backend.
    Destination,
    /// Backend -> client: the source becomes the VIP.
    Source,
}

/// Rewrites one endpoint (address and port) and decrements the TTL, keeping
/// the IPv4 and TCP/UDP checksums right. A UDP checksum of 0 means "none" and
/// stays 0 (RFC 768); a computed 0 is sent as 0xffff. Every field is read and
/// written as a native word (see `mem`); the checksum arithmetic does not
/// mind the byte order. A first fragment is rewritten like a whole packet
/// (the transport checksum, in it, covers the whole datagram); a later
/// fragment has no transport header: only its address changes.
///
/// # Safety
/// `pkt` must come from `parse` on the current frame, with no
/// packet-resizing helper called since.
#[inline(always)]
pub unsafe fn rewrite(pkt: &Packet, side: Side, addr: [u8; 4], port: u16) {
    let ip = pkt.ip.cast::<u8>();
    let new_addr = u32::from_ne_bytes(addr);
    // SAFETY: the caller guarantees the bounds-checked 20-byte IPv4 header.
    let old_addr = unsafe {
        match side {
            Side::Destination => mem::load32::<16>(ip),
            Side::Source => mem::load32::<12>(ip),
        }
    };
    // SAFETY: as above.
    let proto = unsafe { rewrite_ip(ip, side, old_addr, new_addr) };
    let l4 = pkt.ports.cast::<u8>();
    let check_at = pkt.l4_check.cast::<u8>();
    // A later fragment (`Frag::Later`), which parse gives no transport
    // pointers. Tested on the pointers themselves: the verifier follows a
    // null pointer, not what the fragment state said about it.
    if l4.is_null() || check_at.is_null() {
        return;
    }
    let new_port = u16::from_ne_bytes(port.to_be_bytes());
    // SAFETY: the caller guarantees the pointers are the bounds-checked ones
    // from parse: the ports, the L4 checksum (not null: not a later fragment).
    unsafe {
        let old_port = match side {
            Side::Destination => mem::load16::<2>(l4),
            Side::Source => mem::load16::<0>(l4),
        };
        let l4_check = mem::load16::<0>(check_at);
        let udp = proto == PROTO_UDP;
        if !(udp && l4_check == 0) {
            let mut check = csum::replace_u32(l4_check, old_addr, new_addr);
            check = csum::replace_u16(check, old_port, new_port);
            if check == 0 && udp {
                check = 0xffff;
            }
            mem::store16::<0>(check_at, check);
        }
        match side {
            Side::Destination => mem::store16::<2>(l4, new_port),
            Side::Source => mem::store16::<0>(l4, new_port),
        }
    }
}

/// The IPv4 header's address on `side` becomes `new_addr`, one hop later:
/// the TTL goes down, the header checksum follows. Returns the protocol.
///
/// # Safety
/// `ip` points at a bounds-checked 20-byte IPv4 header whose address on
/// `side` is `old_addr`.
#[inline(always)]
unsafe fn rewrite_ip(ip: *mut u8, side: Side, old_addr: u32, new_addr: u32) -> u8 {
    // SAFETY: the caller guarantees the 20 bytes.
    unsafe {
        // TTL and protocol make one checksummed word.
        let ttl_proto = mem::load16::<8>(ip);
        let [ttl, proto] = ttl_proto.to_ne_bytes();
        let new_ttl_proto = u16::from_ne_bytes([ttl - 1, proto]);
        let mut ip_check = csum::replace_u32(mem::load16::<10>(ip), old_addr, new_addr);
        ip_check = csum::replace_u16(ip_check, ttl_proto, new_ttl_proto);
        mem::store16::<8>(ip, new_ttl_proto);
        mem::store16::<10>(ip, ip_check);
        match side {
            Side::Destination => mem::store32::<16>(ip, new_addr),
            Side::Source => mem::store32::<12>(ip, new_addr),
        }
        proto
    }
}

/// Rewrites both endpoints (full NAT: the source to `src`, the destination
/// to `dst`, each an address and a port) and decrements the TTL once,
/// keeping the checksums right as `rewrite` does.
///
/// # Safety
/// As `rewrite`'s; `pkt` is a whole packet (its transport pointers set).
#[inline(always)]
pub unsafe fn rewrite_both(pkt: &Packet, src: ([u8; 4], u16), dst: ([u8; 4], u16)) {
    let ip = pkt.ip.cast::<u8>();
    let (new_src, new_dst) = (u32::from_ne_bytes(src.0), u32::from_ne_bytes(dst.0));
    // SAFETY: the caller guarantees the bounds-checked 20-byte IPv4 header.
    let (old_src, old_dst, proto) = unsafe {
        let old_src = mem::load32::<12>(ip);
        let old_dst = mem::load32::<16>(ip);
        let proto = rewrite_ip(ip, Side::Destination, old_dst, new_dst);
        // The TTL went down once, above; the source's change alone here.
        let check = csum::replace_u32(mem::load16::<10>(ip), old_src, new_src);
        mem::store16::<10>(ip, check);
        mem::store32::<12>(ip, new_src);
        (old_src, old_dst, proto)
    };
    // A UDP checksum of 0 means "none" in IPv4 (RFC 768): it stays 0.
    let udp = proto == PROTO_UDP;
    // SAFETY: the caller's guarantee.
    unsafe {
        rewrite_ports(
            pkt,
            (src.1, dst.1),
            udp,
            #[inline(always)]
            |check| {
                if udp && check == 0 {
                    return None;
                }
                Some(csum::replace_u32(
                    csum::replace_u32(check, old_src, new_src),
                    old_dst,
                    new_dst,
                ))
            },
        );
    }
}

/// The transport ports of a whole packet (full NAT) become `ports`
/// (source, destination), and its checksum follows: `addresses` moves it
/// by the addresses' change (the pseudo-header), or says (`None`) that
/// the packet has none to keep (IPv4 UDP's 0); then the ports' change. A
/// computed 0 is sent as 0xffff for UDP. Nothing for a packet without
/// transport pointers.
///
/// # Safety
/// `pkt` comes from parse on the current frame, with no packet-resizing
/// helper called since.
#[inline(always)]
pub unsafe fn rewrite_ports<F: crate::family::Family>(
    pkt: &Packet<F>,
    ports: (u16, u16),
    udp: bool,
    addresses: impl FnOnce(u16) -> Option<u16>,
) {
    let l4 = pkt.ports.cast::<u8>();
    let check_at = pkt.l4_check.cast::<u8>();
    if l4.is_null() || check_at.is_null() {
        return;
    }
    let wire = |port: u16| u16::from_ne_bytes(port.to_be_bytes());
    let (src_port, dst_port) = (wire(ports.0), wire(ports.1));
    // SAFETY: parse's bounds-checked transport pointers (not null).
    unsafe {
        let (was_src_port, was_dst_port) = (mem::load16::<0>(l4), mem::load16::<2>(l4));
        if let Some(moved) = addresses(mem::load16::<0>(check_at)) {
            let mut check = csum::replace_u16(moved, was_src_port, src_port);
            check = csum::replace_u16(check, was_dst_port, dst_port);
            if check == 0 && udp {
                check = 0xffff;
            }
            mem::store16::<0>(check_at, check);
        }
        mem::store16::<0>(l4, src_port);
        mem::store16::<2>(l4, dst_port);
    }
}
