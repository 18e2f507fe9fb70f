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
    replace_u32(check, u32::from_ne_bytes(old), u32::from_ne_bytes(new))
}

/// New checksum after a 4-byte field changed, the field read as one native
/// word (its two 16-bit halves are the words the sum covers, in either byte
/// order).
#[inline(always)]
pub const fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    let sum = !check as u32
        + !(old as u16) as u32
        + !((old >> 16) as u16) as u32
        + (new as u16) as u32
        + ((new >> 16) as u16) as u32;
    !fold(sum)
}

/// New checksum after a 16-byte field (an IPv6 address) changed, both
/// read as two native words: its eight 16-bit words leave the sum and the
/// new ones enter it, folded once.
#[inline(always)]
pub const fn replace_addr6(check: u16, old: [u64; 2], new: [u64; 2]) -> u16 {
    let mut sum = !check as u64;
    let mut i = 0;
    while i < 2 {
        let (o, n) = (old[i], new[i]);
        let mut shift = 0;
        while shift < 64 {
            sum += !((o >> shift) as u16) as u64 + ((n >> shift) as u16) as u64;
            shift += 16;
        }
        i += 1;
    }
    // 17 words of 16 bits: the sum fits 21 bits, one fold of the top half first.
    !fold(((sum & 0xffff_ffff) + (sum >> 32)) as u32)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a deterministic stream of test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next() as u8)
        }
    }

    /// A TCP-like segment: pseudo header + 20-byte header + payload, with the
    /// checksum at offset 16 of the header. Returns (checksum, segment).
    fn segment(src: [u8; 4], dst: [u8; 4], header: &[u8; 20], payload: &[u8]) -> u16 {
        let mut seg = [0_u8; 64];
        seg[..20].copy_from_slice(header);
        seg[16] = 0;
        seg[17] = 0;
        seg[20..20 + payload.len()].copy_from_slice(payload);
        let len = 20 + payload.len();
        checksum(pseudo_header_sum(src, dst, 6, len as u16), &seg[..len])
    }

    #[test]
    fn incremental_updates_match_full_recomputation() {
        let mut rng = Rng(0x5eed);
        for _ in 0..20_000 {
            let (src, dst, new_dst): ([u8; 4], [u8; 4], [u8; 4]) =
                (rng.bytes(), rng.bytes(), rng.bytes());
            let mut header: [u8; 20] = rng.bytes();
            let payload_len = (rng.next() % 44) as usize;
            let payload: [u8; 44] = rng.bytes();
            let payload = &payload[..payload_len];
            let old_check = segment(src, dst, &header, payload);
            let old_port = [header[2], header[3]];
            let new_port: [u8; 2] = rng.bytes();

            let mut check = replace_addr(old_check, dst, new_dst);
            check = replace_u16(check, u16::from_ne_bytes(old_port), u16::from_ne_bytes(new_port));
            header[2..4].copy_from_slice(&new_port);
            let full = segment(src, new_dst, &header, payload);
            // Both are valid encodings of the sum; they may differ only in
            // the sign of zero, which verifies the same.
            assert!(
                check == full || (check == 0xffff && full == 0) || (check == 0 && full == 0xffff),
                "incremental {check:#06x} != full {full:#06x}"
            );
        }
    }

    #[test]
    fn ttl_decrement_keeps_the_ip_header_valid() {
        let mut rng = Rng(42);
        for _ in 0..5_000 {
            let mut header: [u8; 20] = rng.bytes();
            header[10] = 0;
            header[11] = 0;
            let check = checksum(0, &header);
            header[10..12].copy_from_slice(&check.to_ne_bytes());
            let old = u16::from_ne_bytes([header[8], header[9]]);
            header[8] = header[8].wrapping_sub(1);
            let new = u16::from_ne_bytes([header[8], header[9]]);
            let updated = replace_u16(check, old, new);
            header[10..12].copy_from_slice(&updated.to_ne_bytes());
            assert!(matches!(checksum(0, &header), 0 | 0xffff), "header no longer verifies");
        }
    }

    #[test]
    fn an_ipv6_address_replaced_keeps_the_checksum_right() {
        let mut rng = Rng(0x6666);
        for _ in 0..20_000 {
            let (old, new): ([u8; 16], [u8; 16]) = (rng.bytes(), rng.bytes());
            let rest: [u8; 24] = rng.bytes();
            let sum_with = |addr: [u8; 16]| {
                let mut data = [0_u8; 40];
                data[..16].copy_from_slice(&addr);
                data[16..].copy_from_slice(&rest);
                checksum(0, &data)
            };
            let words = |a: [u8; 16]| {
                let (h, l) = a.split_at(8);
                [
                    u64::from_ne_bytes(h.try_into().unwrap()),
                    u64::from_ne_bytes(l.try_into().unwrap()),
                ]
            };
            let updated = replace_addr6(sum_with(old), words(old), words(new));
            // 0 and 0xffff are the same sum in ones' complement.
            let full = sum_with(new);
            let same = updated == full || matches!((updated, full), (0, 0xffff) | (0xffff, 0));
            assert!(same, "{updated:#x} vs {full:#x}");
        }
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }
}
