//! Incremental Internet checksum updates (RFC 1624, eqn. 3): a rewrite changes
//! a few header words, so the checksum is patched, never recomputed over the
//! payload.
//!
//! Words are taken in whatever byte order the caller reads them, as long as
//! the checksum field is read the same way: ones' complement sums are byte
//! order independent (RFC 1071, 2.(B)). The data plane uses native-endian
//! loads of network-order bytes.

/// Folds a 32-bit accumulator into a 16-bit ones' complement sum.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// New checksum after a 4-byte field (an IPv4 address) changed.
#[inline(always)]
pub const fn replace_addr(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let sum = !check as u32
        + !u16::from_ne_bytes([old[0], old[1]]) as u32
        + !u16::from_ne_bytes([old[2], old[3]]) as u32
        + u16::from_ne_bytes([new[0], new[1]]) as u32
        + u16::from_ne_bytes([new[2], new[3]]) as u32;
    !fold(sum)
}

/// Full checksum of `data` read as native-endian words (odd tail zero-padded);
/// `initial` carries a pseudo-header sum. For tests and packet builders.
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sum of the TCP/UDP pseudo-header (RFC 793 / RFC 768), for `checksum`.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let words = [
        u16::from_ne_bytes([src[0], src[1]]),
        u16::from_ne_bytes([src[2], src[3]]),
        u16::from_ne_bytes([dst[0], dst[1]]),
        u16::from_ne_bytes([dst[2], dst[3]]),
        u16::from_ne_bytes([0, proto]),
        u16::from_ne_bytes(l4_len.to_be_bytes()),
    ];
    words.iter().map(|w| u32::from(*w)).sum()
}
