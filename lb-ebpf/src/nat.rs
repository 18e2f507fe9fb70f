//! Header rewrites with incremental checksum updates (RFC 1624): the payload
//! is never summed again.
use lb_common::{abi::PROTO_UDP, csum};

use crate::parse::Packet;

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
pub enum Side {
    /// Client -> backend: the destination becomes the backend.
    Destination,
    /// Backend -> client: the source becomes the VIP.
    Source,
}

#[inline(always)]
fn word(bytes: [u8; 2]) -> u16 {
    u16::from_ne_bytes(bytes)
}

/// Rewrites one endpoint (address and port) and decrements the TTL, keeping
/// the IPv4 and TCP/UDP checksums right. A UDP checksum of 0 means "none" and
/// stays 0 (RFC 768); a computed 0 is sent as 0xffff.
///
/// # Safety
/// `pkt` must come from `parse` on the current frame, not a fragment, with no
/// packet-resizing helper called since.
#[inline(always)]
pub unsafe fn rewrite(pkt: &Packet, side: Side, addr: [u8; 4], port: u16) {
    // SAFETY: the caller guarantees the pointers are the bounds-checked ones from parse.
    unsafe {
        let ip = &mut *pkt.ip;
        let ports = &mut *pkt.ports;
        let (addr_field, port_field) = match side {
            Side::Destination => (&mut ip.dst, &mut ports.dst),
            Side::Source => (&mut ip.src, &mut ports.src),
        };
        let old_addr = *addr_field;
        let old_port = *port_field;
        let new_port = port.to_be_bytes();

        let old_ttl_word = word([ip.ttl, ip.proto]);
        let new_ttl = ip.ttl - 1;
        let mut ip_check = csum::replace_addr(word(ip.check), old_addr, addr);
        ip_check = csum::replace_u16(ip_check, old_ttl_word, word([new_ttl, ip.proto]));
        ip.check = ip_check.to_ne_bytes();
        ip.ttl = new_ttl;

        let l4_check = &mut *pkt.l4_check;
        let udp_without_checksum = ip.proto == PROTO_UDP && word(*l4_check) == 0;
        if !udp_without_checksum {
            let mut check = csum::replace_addr(word(*l4_check), old_addr, addr);
            check = csum::replace_u16(check, word(old_port), word(new_port));
            if check == 0 && ip.proto == PROTO_UDP {
                check = 0xffff;
            }
            *l4_check = check.to_ne_bytes();
        }
        *addr_field = addr;
        *port_field = new_port;
    }
}
