//! The flow hash and the Maglev permutation hashes. The kernel program, the
//! controller's table builder and the tests all call these, so a flow lands
//! on the same slot everywhere (and on every load balancer node).

use crate::{abi::addr_pair, addr::Addr};

/// A strong 64-bit finaliser (MurmurHash3 `fmix64`): cheap in BPF (two
/// multiplies, no loops, no tables) and well distributed.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

const FLOW_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hash of a flow's 5-tuple, as the client sent it.
#[inline(always)]
pub fn flow_hash<A: Addr>(src: A, dst: A, sport: u16, dport: u16, proto: u8) -> u32 {
    let addrs = addr_pair(&src, &dst, A::wire_fold);
    let rest = (u64::from(sport) << 32) | (u64::from(dport) << 16) | u64::from(proto);
    mix64(addrs ^ mix64(rest ^ FLOW_SEED)) as u32
}

/// Fibonacci hashing (Knuth): the top bits of `key · 2^64/φ`, as an index
/// into a table of `slots` entries (a power of two). One multiply, and every
/// bit of the key reaches the index; enough for the direct-mapped tables
/// whose entries carry their own tag (flow cache, next-hop cache,
/// `lb_real_slots`), where a collision costs a lookup, not a wrong answer.
#[inline(always)]
pub const fn table_index(key: u64, slots: u32) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - slots.trailing_zeros())) as u32
}

/// Maglev slot of a flow hash in a table of `size` slots; `None` for an
/// empty table. Never panics: the BPF program cannot unwind.
#[inline(always)]
pub const fn maglev_slot(hash: u32, size: u32) -> Option<u32> {
    hash.checked_rem(size)
}

/// Hash of a backend's identity (address and port), with a seed, for the
/// Maglev permutation. Identity, not id: two nodes with the same config build
/// the same table even if they numbered backends differently.
pub fn backend_hash<A: Addr>(addr: A, port: u16, seed: u64) -> u64 {
    mix64((A::raise(addr.wire_fold(), 16) | u64::from(port)) ^ seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_spreads_source_ports_evenly_over_maglev_slots() {
        let mut buckets = [0_u32; 16];
        for sport in 0..16_000_u16 {
            let h = flow_hash([10, 77, 1, 10], [10, 77, 1, 100], sport, 80, 6);
            buckets[(maglev_slot(h, 65_537).unwrap() % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "uneven buckets: {buckets:?}");
        }
    }

    #[test]
    fn every_field_of_the_flow_matters() {
        let base = flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1000, 80, 6);
        assert_ne!(base, flow_hash([1, 2, 3, 5], [5, 6, 7, 8], 1000, 80, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 9], 1000, 80, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1001, 80, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1000, 81, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1000, 80, 17));
        assert_eq!(maglev_slot(base, 0), None);
    }
}
