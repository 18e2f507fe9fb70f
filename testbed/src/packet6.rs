//! IPv6 packets for the fixtures, built byte by byte from RFC 8200 and
//! checksummed from scratch here (never with the data plane's code): the
//! independent side of every IPv6 byte-for-byte comparison.
use std::net::Ipv6Addr;

use crate::packet::{ETH_P_IPV6, L4, Mac, ethernet};

/// An extension header before the transport header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options (0) or destination options (60): PadN to 8 bytes.
    Options { kind: u8 },
    /// A routing header (43) with `segments_left` segments left.
    Routing { segments_left: u8 },
    /// A fragment header (44): offset in 8-byte units, more fragments, id.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Self::Options { kind } => *kind,
            Self::Routing { .. } => 43,
            Self::Fragment { .. } => 44,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            // Length 0 (8 bytes): next, length, PadN of 4 bytes of padding.
            Self::Options { .. } => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // Type 4 (segment routing's number; only segments left matters).
            Self::Routing { segments_left } => vec![next, 0, 4, *segments_left, 0, 0, 0, 0],
            Self::Fragment { offset, more, id } => {
                let word = offset << 3 | u16::from(*more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&word.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub ext: Vec<Ext>,
    pub l4: L4,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Self {
        Self { src, dst, hop_limit: 64, traffic_class: 0, flow_label: 0x1_2345, ext: vec![], l4 }
    }

    pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8, payload: &[u8]) -> Self {
        let l4 = L4::Tcp {
            sport: src.1,
            dport: dst.1,
            flags,
            seq: 1000,
            ack: if flags & crate::packet::TCP_ACK != 0 { 2000 } else { 0 },
            window: 65_535,
            payload: payload.to_vec(),
        };
        Self::new(src.0, dst.0, l4)
    }

    pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Self {
        let l4 = L4::Udp { sport: src.1, dport: dst.1, payload: payload.to_vec(), checksum: true };
        Self::new(src.0, dst.0, l4)
    }

    /// The transport header and payload, checksummed over the IPv6
    /// pseudo-header (RFC 8200, 8.1).
    fn l4_bytes(&self) -> Vec<u8> {
        let mut addrs = self.src.octets().to_vec();
        addrs.extend_from_slice(&self.dst.octets());
        let proto = self.l4.proto();
        self.l4.bytes(&addrs, |len| {
            let mut tail = (len as u32).to_be_bytes().to_vec();
            tail.extend_from_slice(&[0, 0, 0, proto]);
            tail
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.l4.proto(), Ext::number);
            chain.extend_from_slice(&ext.bytes(next));
        }
        let later_fragment =
            self.ext.iter().any(|e| matches!(e, Ext::Fragment { offset, .. } if *offset != 0));
        let l4 = if later_fragment {
            match &self.l4 {
                L4::Raw { bytes, .. } => bytes.clone(),
                _ => self.l4_bytes()[8..].to_vec(),
            }
        } else {
            self.l4_bytes()
        };
        let first_next = self.ext.first().map_or(self.l4.proto(), Ext::number);
        let payload_len = (chain.len() + l4.len()) as u16;
        let word = 6 << 28 | u32::from(self.traffic_class) << 20 | self.flow_label & 0xf_ffff;
        let mut b = Vec::with_capacity(40 + usize::from(payload_len));
        b.extend_from_slice(&word.to_be_bytes());
        b.extend_from_slice(&payload_len.to_be_bytes());
        b.push(first_next);
        b.push(self.hop_limit);
        b.extend_from_slice(&self.src.octets());
        b.extend_from_slice(&self.dst.octets());
        b.extend_from_slice(&chain);
        b.extend_from_slice(&l4);
        b
    }

    /// An Ethernet frame carrying this packet.
    pub fn frame(&self, dst: Mac, src: Mac) -> Vec<u8> {
        ethernet(dst, src, ETH_P_IPV6, &self.to_bytes())
    }
}

/// `p` as the load balancer forwards it: one hop later, new endpoints
/// (address and port), in a frame from `src_mac` to `dst_mac`. Checksums
/// from scratch.
pub fn forwarded6(
    p: &Ipv6,
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    dst_mac: Mac,
    src_mac: Mac,
) -> Vec<u8> {
    rewritten6(p, src, dst).frame(dst_mac, src_mac)
}

/// `p` one hop later with new endpoints (address and port).
pub fn rewritten6(p: &Ipv6, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Ipv6 {
    let mut out = p.clone();
    out.hop_limit -= 1;
    out.src = src.0;
    out.dst = dst.0;
    match &mut out.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
            *sport = src.1;
            *dport = dst.1;
        }
        L4::Raw { .. } => unreachable!("only TCP and UDP are rewritten"),
    }
    out
}

/// `packet` (without extension headers) cut into fragments of at most
/// `chunk` bytes (a multiple of 8) after a fragment header each, as its
/// sender cuts it (IPv6 routers never do): the packet's addresses and hop
/// limit, identification `id`, More Fragments on all but the last.
pub fn fragments6(packet: &Ipv6, chunk: usize, id: u32) -> Vec<Ipv6> {
    assert!(chunk.is_multiple_of(8), "fragments hold multiples of 8 bytes");
    assert!(packet.ext.is_empty(), "fragments of a packet without extension headers");
    let bytes = packet.to_bytes();
    let payload = &bytes[40..];
    let count = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let offset = (i * chunk / 8) as u16;
            let raw = L4::Raw { proto: packet.l4.proto(), bytes: part.to_vec() };
            Ipv6 {
                ext: vec![Ext::Fragment { offset, more: i + 1 < count, id }],
                l4: raw,
                ..packet.clone()
            }
        })
        .collect()
}

/// The reset the VIP sends in place of a client's TCP packet: `from` (the
/// VIP's endpoint) to `to`, hop limit 64, no flow label.
pub fn tcp_reset6(
    from: (Ipv6Addr, u16),
    to: (Ipv6Addr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
) -> Ipv6 {
    let l4 = L4::Tcp { sport: from.1, dport: to.1, flags, seq, ack, window: 0, payload: vec![] };
    Ipv6 { flow_label: 0, ..Ipv6::new(from.0, to.0, l4) }
}

/// An ICMPv6 error (`kind`: type and code; `rest`: the header's last
/// word, e.g. packet too big's MTU) from `src` to `dst` quoting `quote`,
/// its checksum over the pseudo-header computed here from scratch.
pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, kind: (u8, u8), rest: u32, quote: &[u8]) -> Ipv6 {
    let mut message = vec![kind.0, kind.1, 0, 0];
    message.extend_from_slice(&rest.to_be_bytes());
    message.extend_from_slice(quote);
    let mut pseudo = src.octets().to_vec();
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&message);
    let sum = crate::packet::internet_checksum(&pseudo);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    Ipv6 { flow_label: 0, ..Ipv6::new(src, dst, L4::Raw { proto: 58, bytes: message }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::internet_checksum;

    /// The transport checksum verifies: the pseudo-header and the segment
    /// sum to all ones.
    #[test]
    fn the_udp_checksum_covers_the_ipv6_pseudo_header() {
        let p = Ipv6::udp(("fd77::1".parse().unwrap(), 1), ("fd77::2".parse().unwrap(), 2), b"hi");
        let bytes = p.to_bytes();
        let segment = &bytes[40..];
        let mut pseudo = bytes[8..40].to_vec();
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(segment);
        assert_eq!(internet_checksum(&pseudo), 0);
        assert_eq!(bytes[6], 17);
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]) as usize, segment.len());
    }

    #[test]
    fn extension_headers_chain_to_the_transport_header() {
        let mut p =
            Ipv6::tcp(("fd77::1".parse().unwrap(), 1), ("fd77::2".parse().unwrap(), 2), 2, b"");
        p.ext = vec![Ext::Options { kind: 0 }, Ext::Fragment { offset: 0, more: true, id: 7 }];
        let b = p.to_bytes();
        assert_eq!(b[6], 0, "hop-by-hop first");
        assert_eq!(b[40], 44, "then the fragment header");
        assert_eq!(b[48], 6, "then TCP");
        assert_eq!(&b[52..56], &7_u32.to_be_bytes());
    }
}
