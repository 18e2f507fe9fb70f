//! A small packet builder for fixtures and benchmarks. Its checksums are
//! computed from scratch here, independently of lb-common's incremental
//! code, so a fixture's expected bytes check the data plane's arithmetic.
use std::net::Ipv4Addr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 "more fragments" flag in the frag_off word.
pub const IP_MF: u16 = 0x2000;

pub type Mac = [u8; 6];

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        payload: Vec<u8>,
    },
    /// `checksum: false` sends 0 ("no checksum", RFC 768).
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        checksum: bool,
    },
    /// Anything else, as raw bytes after the IP header (ICMP...).
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    /// The protocol number.
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// The transport header and payload, its checksum computed over
    /// `addrs` (the pseudo-header's addresses) and the rest of the
    /// pseudo-header `tail` gives for the transport length: IPv4 and IPv6
    /// differ only there.
    pub fn bytes(&self, addrs: &[u8], tail: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
        let (mut bytes, check_at) = match self {
            L4::Tcp { sport, dport, flags, seq, ack, window, payload } => {
                let mut b = Vec::with_capacity(20 + payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.extend_from_slice(&[5 << 4, *flags]);
                b.extend_from_slice(&window.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                b.extend_from_slice(payload);
                (b, Some(16))
            }
            L4::Udp { sport, dport, payload, checksum } => {
                let mut b = Vec::with_capacity(8 + payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(payload);
                (b, checksum.then_some(6))
            }
            L4::Raw { bytes, .. } => (bytes.clone(), None),
        };
        if let Some(at) = check_at {
            let mut pseudo = addrs.to_vec();
            pseudo.extend_from_slice(&tail(bytes.len()));
            pseudo.extend_from_slice(&bytes);
            let mut sum = internet_checksum(&pseudo);
            if sum == 0 && self.proto() == 17 {
                sum = 0xffff; // RFC 768: a computed 0 is sent as all ones
            }
            bytes[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        bytes
    }
}

#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset, host order.
    pub frag_off: u16,
    /// IP options (padded to a multiple of 4 by the builder).
    pub options: Vec<u8>,
    pub l4: L4,
}

impl Ipv4 {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, payload: &[u8]) -> Self {
        Self::new(
            src.0,
            dst.0,
            L4::Tcp {
                sport: src.1,
                dport: dst.1,
                flags,
                seq: 1000,
                ack: 0,
                window: 64240,
                payload: payload.to_vec(),
            },
        )
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Self {
        Self::new(
            src.0,
            dst.0,
            L4::Udp { sport: src.1, dport: dst.1, payload: payload.to_vec(), checksum: true },
        )
    }

    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self { src, dst, ttl: 64, tos: 0, id: 0x1234, frag_off: 0x4000, options: Vec::new(), l4 }
    }

    pub fn proto(&self) -> u8 {
        self.l4.proto()
    }

    /// The transport header and payload, checksum filled in.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        self.l4.bytes(&pseudo, |len| [0, self.proto(), (len >> 8) as u8, len as u8].to_vec())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0); // end-of-options padding
        }
        let l4 = if self.frag_off & 0x1fff != 0 {
            // A non-first fragment carries no transport header.
            match &self.l4 {
                L4::Raw { bytes, .. } => bytes.clone(),
                _ => self.l4_bytes()[8..].to_vec(),
            }
        } else {
            self.l4_bytes()
        };
        let ihl = (20 + options.len()) / 4;
        let total = 20 + options.len() + l4.len();
        let mut b = Vec::with_capacity(total);
        b.push(0x40 | ihl as u8);
        b.push(self.tos);
        b.extend_from_slice(&(total as u16).to_be_bytes());
        b.extend_from_slice(&self.id.to_be_bytes());
        b.extend_from_slice(&self.frag_off.to_be_bytes());
        b.push(self.ttl);
        b.push(self.proto());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.src.octets());
        b.extend_from_slice(&self.dst.octets());
        b.extend_from_slice(&options);
        let check = internet_checksum(&b);
        b[10..12].copy_from_slice(&check.to_be_bytes());
        b.extend_from_slice(&l4);
        b
    }

    /// An Ethernet frame carrying this packet.
    pub fn frame(&self, dst: Mac, src: Mac) -> Vec<u8> {
        ethernet(dst, src, ETH_P_IPV4, &self.to_bytes())
    }
}

pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// RFC 1071 checksum over big-endian 16-bit words.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `packet` cut into fragments of at most `chunk` bytes of IP payload each
/// (a multiple of 8), as the sender's kernel or a router cuts it: each
/// with the packet's addresses, protocol, TTL and id, More Fragments on all
/// but the last, its offset in 8-byte units, no options.
pub fn fragments(packet: &Ipv4, chunk: usize) -> Vec<Ipv4> {
    assert!(chunk.is_multiple_of(8), "fragments hold multiples of 8 bytes");
    let bytes = packet.to_bytes();
    let header = usize::from(bytes[0] & 0x0f) * 4;
    let payload = &bytes[header..];
    let count = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let more = if i + 1 < count { IP_MF } else { 0 };
            let mut fragment = Ipv4::new(
                packet.src,
                packet.dst,
                L4::Raw { proto: packet.proto(), bytes: part.to_vec() },
            );
            fragment.ttl = packet.ttl;
            fragment.id = packet.id;
            fragment.frag_off = more | (i * chunk / 8) as u16;
            fragment
        })
        .collect()
}

/// `p` as the load balancer forwards it: one hop later, new endpoints
/// (`src` and `dst`, address and port), in a frame from `src_mac` to
/// `dst_mac`. Checksums from scratch.
pub fn forwarded(
    p: &Ipv4,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    dst_mac: Mac,
    src_mac: Mac,
) -> Vec<u8> {
    let mut out = p.clone();
    out.ttl -= 1;
    out.src = src.0;
    out.dst = dst.0;
    match &mut out.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
            *sport = src.1;
            *dport = dst.1;
        }
        L4::Raw { .. } => unreachable!("only TCP and UDP are rewritten"),
    }
    out.frame(dst_mac, src_mac)
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// An ICMP error from `src` to `dst` (`kind`: type and code; `rest`: the
/// header's last 4 bytes, e.g. the next-hop MTU of "fragmentation
/// needed"), quoting `quote`, its checksum computed here from scratch.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: (u8, u8),
    rest: [u8; 4],
    quote: &[u8],
) -> Ipv4 {
    let mut icmp = vec![kind.0, kind.1, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let check = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut error = Ipv4::new(src, dst, L4::Raw { proto: 1, bytes: icmp });
    error.id = 0;
    error.frag_off = 0;
    error
}

/// What an ICMP error quotes of `packet` (RFC 792): its IPv4 header and the
/// first 8 bytes of what follows.
pub fn quote(packet: &Ipv4) -> Vec<u8> {
    let bytes = packet.to_bytes();
    let header = usize::from(bytes[0] & 0x0f) * 4;
    bytes[..header + 8].to_vec()
}

/// An ARP request (who-has `target` tell `sender`).
pub fn arp_request(src_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&src_mac);
    p.extend_from_slice(&sender.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    ethernet([0xff; 6], src_mac, ETH_P_ARP, &p)
}

/// A minimal IPv6 header with no payload (next header: TCP).
pub fn ipv6_frame(dst: Mac, src: Mac) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
    p.extend_from_slice(&[0xfd; 16]);
    p.extend_from_slice(&[0xfe; 16]);
    ethernet(dst, src, ETH_P_IPV6, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_header_checksum_verifies_to_zero() {
        let p = Ipv4::tcp(
            (Ipv4Addr::new(10, 0, 0, 1), 1),
            (Ipv4Addr::new(10, 0, 0, 2), 2),
            TCP_SYN,
            b"",
        );
        assert_eq!(internet_checksum(&p.to_bytes()[..20]), 0);
    }

    /// The two checksum implementations (this one and lb-common's) agree.
    #[test]
    fn matches_lb_common_full_checksum() {
        let data: Vec<u8> = (0..=200_u8).collect();
        let ours = internet_checksum(&data);
        let theirs = lb_common::csum::checksum(0, &data);
        assert_eq!(ours, u16::from_be_bytes(theirs.to_ne_bytes()));
    }
}
