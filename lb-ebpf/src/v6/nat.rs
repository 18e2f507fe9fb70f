//! IPv6 header rewrites with incremental checksum updates: IPv6 has no
//! header checksum, so an address change reaches only the transport
//! checksum, whose pseudo-header covers it. Hop limit down by one.
use lb_common::{abi::PROTO_UDP, csum};

use super::V6;
use crate::{mem, nat::Side, parse::Packet};

/// Rewrites one endpoint (address and port) and decrements the hop limit,
/// keeping the TCP/UDP checksum right (a computed 0 is sent as 0xffff for
/// UDP, whose checksum IPv6 makes mandatory). A later fragment has no
/// transport header: only its address changes.
///
/// # Safety
/// `pkt` must come from `v6::parse::transport` on the current frame, with
/// no packet-resizing helper called since.
#[inline(always)]
pub unsafe fn rewrite(pkt: &Packet<V6>, side: Side, addr: [u8; 16], port: u16) {
    let ip = pkt.ip.cast::<u8>();
    // SAFETY: the caller guarantees the bounds-checked 40-byte header.
    let old_addr = unsafe {
        (*pkt.ip).hop_limit -= 1;
        match side {
            Side::Destination => {
                let old = mem::load_addr6::<24>(ip);
                mem::store_addr6::<24>(ip, addr);
                old
            }
            Side::Source => {
                let old = mem::load_addr6::<8>(ip);
                mem::store_addr6::<8>(ip, addr);
                old
            }
        }
    };
    let l4 = pkt.ports.cast::<u8>();
    let check_at = pkt.l4_check.cast::<u8>();
    // A later fragment: no transport pointers (tested on the pointers, as
    // the verifier follows them).
    if l4.is_null() || check_at.is_null() {
        return;
    }
    let new_port = u16::from_ne_bytes(port.to_be_bytes());
    // SAFETY: the pointers are parse's bounds-checked ones (not null).
    unsafe {
        let old_port = match side {
            Side::Destination => mem::load16::<2>(l4),
            Side::Source => mem::load16::<0>(l4),
        };
        let words = |a: [u8; 16]| core::mem::transmute::<[u8; 16], [u64; 2]>(a);
        let mut check =
            csum::replace_addr6(mem::load16::<0>(check_at), words(old_addr), words(addr));
        check = csum::replace_u16(check, old_port, new_port);
        if check == 0 && pkt.flow.proto == PROTO_UDP {
            check = 0xffff;
        }
        mem::store16::<0>(check_at, check);
        match side {
            Side::Destination => mem::store16::<2>(l4, new_port),
            Side::Source => mem::store16::<0>(l4, new_port),
        }
    }
}

/// Rewrites both endpoints (full NAT) and decrements the hop limit once,
/// keeping the transport checksum right as `rewrite` does.
///
/// # Safety
/// As `rewrite`'s; `pkt` is a whole packet (its transport pointers set).
#[inline(always)]
pub unsafe fn rewrite_both(pkt: &Packet<V6>, src: ([u8; 16], u16), dst: ([u8; 16], u16)) {
    let ip = pkt.ip.cast::<u8>();
    // SAFETY: the caller guarantees the bounds-checked 40-byte header.
    let (old_src, old_dst) = unsafe {
        (*pkt.ip).hop_limit -= 1;
        let old = (mem::load_addr6::<8>(ip), mem::load_addr6::<24>(ip));
        mem::store_addr6::<8>(ip, src.0);
        mem::store_addr6::<24>(ip, dst.0);
        old
    };
    // UDP's checksum is mandatory in IPv6: always kept.
    let udp = pkt.flow.proto == PROTO_UDP;
    // SAFETY: the caller's guarantee.
    unsafe {
        crate::nat::rewrite_ports(
            pkt,
            (src.1, dst.1),
            udp,
            #[inline(always)]
            |check| {
                let check = csum::replace_addr6(check, super::words(old_src), super::words(src.0));
                Some(csum::replace_addr6(check, super::words(old_dst), super::words(dst.0)))
            },
        );
    }
}
