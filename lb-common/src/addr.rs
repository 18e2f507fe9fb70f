//! The two address families as the maps hold them: an IPv4 address is 4
//! bytes, an IPv6 address 16, both in network order (`bpftool map dump`
//! prints them byte by byte). Every key and value that holds an address is
//! generic over `Addr` and defaults to IPv4, so the IPv4 maps keep their
//! layout and the IPv6 ones have their own (`lb_*6`).
//!
//! What differs between the families is how an address folds into the 64
//! bits the hashes and direct-mapped indexes work on: IPv4's fold is the
//! address itself, as it always was. IPv6's native fold (this node's
//! indexes) multiplies the XOR of its halves (the low one rotated by a
//! group) by an odd constant and folds the product's top half onto its
//! bottom one (see its comment); its wire fold (the flow hash, the same on
//! every node) mixes the low half with `mix64`.

use crate::hash::mix64;

/// An address as a map holds it: network order, `[u8; 4]` or `[u8; 16]`.
pub trait Addr: Copy + Default + Eq + core::hash::Hash + core::fmt::Debug + 'static {
    /// Its length in bytes.
    const LEN: usize;

    /// The bytes a connection-table entry holding this address needs at
    /// its end to fill its last word (`conn_table::ConnSlot`), explicit so
    /// that no byte of an entry is padding, and its words may be copied.
    type SlotPad: Copy + Default + Eq + core::fmt::Debug + 'static;
    /// `SlotPad`'s value: zeros.
    const SLOT_PAD: Self::SlotPad;

    /// The address folded into 64 bits, read natively (the data plane
    /// loads addresses as words): the key of the direct-mapped indexes,
    /// whose entries carry their own tag, so a collision costs a lookup.
    /// Unkeyed, like every index it feeds: whoever picks addresses can
    /// pick colliding ones.
    fn fold(&self) -> u64;

    /// Sixteen bits of a fold that every bit of the address reaches: the
    /// slot of the address prefilter (`abi::addr_slot`). IPv4's fold is
    /// the address, whose halves XOR together; IPv6's is a product, whose
    /// top bits are the well-mixed ones.
    fn spread16(folded: u64) -> u32;

    /// The address folded into 64 bits in network order: the input of the
    /// flow hash and the source hash, which must be the same on every node.
    fn wire_fold(&self) -> u64;

    /// All zero: the unspecified address, never a client's.
    fn is_zero(&self) -> bool;

    /// The address at `at`, read as 32-bit words. An address is a byte
    /// array, aligned to 1, and BPF reads one the compiler cannot prove
    /// aligned byte by byte (a load, a shift and an or each: about 45
    /// instructions for an IPv6 address): a map value's address read as
    /// words is one load (IPv4) or four (IPv6). The map values' accessors
    /// (`Backend::vip`, ...) call it where their layout proves the alignment.
    ///
    /// # Safety
    /// `at` is valid for reads and aligned to 4 bytes.
    unsafe fn read_words(at: *const Self) -> Self;

    /// `folded` (this family's fold) placed `by` bits up in a 64-bit key
    /// whose low bits hold other fields: IPv4's 32 bits shift there whole,
    /// IPv6's 64 rotate.
    fn raise(folded: u64, by: u32) -> u64;

    /// Equality as word compares: a byte array's `==` becomes a load and a
    /// compare per byte in BPF.
    fn same(&self, other: &Self) -> bool;

    /// The address's first `prefix` bits, the rest zero (its network, as
    /// `persistence_netmask` groups clients); a prefix past the address's
    /// length keeps it whole.
    #[must_use]
    fn masked(&self, prefix: u32) -> Self;

    /// The mask of a prefix of `prefix` bits, as an address (its first
    /// `prefix` bits set).
    fn prefix_mask(prefix: u32) -> Self;

    /// Whether the address is in the network `network` whose mask is
    /// `mask` (`prefix_mask`): word operations, as `same`.
    fn within(&self, network: &Self, mask: &Self) -> bool;
}

impl Addr for [u8; 4] {
    const LEN: usize = 4;
    type SlotPad = [u8; 0];
    const SLOT_PAD: [u8; 0] = [];

    #[inline(always)]
    fn fold(&self) -> u64 {
        u64::from(u32::from_ne_bytes(*self))
    }

    #[inline(always)]
    fn spread16(folded: u64) -> u32 {
        let a = folded as u32;
        (a ^ (a >> 16)) & 0xffff
    }

    #[inline(always)]
    fn wire_fold(&self) -> u64 {
        u64::from(u32::from_be_bytes(*self))
    }

    #[inline(always)]
    fn is_zero(&self) -> bool {
        u32::from_ne_bytes(*self) == 0
    }

    #[inline(always)]
    // The caller guarantees the alignment (the point of this function).
    #[allow(clippy::cast_ptr_alignment)]
    unsafe fn read_words(at: *const Self) -> Self {
        // SAFETY: the caller's guarantee.
        unsafe { at.cast::<u32>().read() }.to_ne_bytes()
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        u32::from_ne_bytes(*self) == u32::from_ne_bytes(*other)
    }

    #[inline(always)]
    fn raise(folded: u64, by: u32) -> u64 {
        folded << by
    }

    #[inline(always)]
    fn masked(&self, prefix: u32) -> Self {
        (u32::from_be_bytes(*self) & prefix_mask32(prefix)).to_be_bytes()
    }

    #[inline(always)]
    fn prefix_mask(prefix: u32) -> Self {
        prefix_mask32(prefix).to_be_bytes()
    }

    #[inline(always)]
    fn within(&self, network: &Self, mask: &Self) -> bool {
        let word = |a: &Self| u32::from_ne_bytes(*a);
        word(self) & word(mask) == word(network)
    }
}

/// The 32-bit mask of a prefix of `prefix` bits (0 to 32 and beyond).
#[inline(always)]
const fn prefix_mask32(prefix: u32) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - if prefix > 32 { 32 } else { prefix }) }
}

/// The 64-bit mask of a prefix of `prefix` bits (0 to 64 and beyond).
#[inline(always)]
const fn prefix_mask64(prefix: u32) -> u64 {
    if prefix == 0 { 0 } else { u64::MAX << (64 - if prefix > 64 { 64 } else { prefix }) }
}

/// The odd multiplier of IPv6's native fold (MurmurHash3's first).
const FOLD6_MULTIPLIER: u64 = 0xff51_afd7_ed55_8ccd;

/// The two 64-bit halves of an IPv6 address, read natively: one load
/// each (byte by byte, BPF would shift and or sixteen bytes together).
#[inline(always)]
fn halves(addr: &[u8; 16]) -> [u64; 2] {
    // SAFETY: sixteen bytes are two words, in memory order.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(*addr) }
}

impl Addr for [u8; 16] {
    const LEN: usize = 16;
    type SlotPad = [u8; 4];
    const SLOT_PAD: [u8; 4] = [0; 4];

    /// One multiply (Knuth's multiplicative hashing, as `table_index`),
    /// where `mix64` took two and three shifts on every packet's addresses,
    /// several times. The low half is rotated by a group first, so the XOR
    /// pairs group 1 (the prefix's first) with group 8 (a host number), 2
    /// with 5, 3 with 6 and 4 (a /64's subnet) with 7. Halves XORed as they
    /// lie pair group 4 with group 8, and every `2001:db8:0:S::H` with the
    /// same `S ^ H` folded alike. The host number lands at the bottom of
    /// the product's input, so it reaches every bit above. The product's
    /// top bits depend on all of the address, its low ones only on the low
    /// input bits, so its top half is folded onto its bottom one: an
    /// address that differs from another only in the top group of the
    /// product's input (group 4 or 7) then differs in both halves of the
    /// fold, and the flow key (`abi::flow_key`), which rotates a source's
    /// fold by 32 over the ports, cannot have a port cancel it. The top 16
    /// bits are the product's own (`spread16`). Addresses whose groups 4
    /// and 7 are equal, the rest alike, fold alike (`2001:db8:0:S::S:1`).
    /// (Reversing the low half's bytes pairs as well, and grew `lb_xdp6`'s
    /// stack past what its calls leave it.)
    #[inline(always)]
    fn fold(&self) -> u64 {
        let [high, low] = halves(self);
        let product = (high ^ low.rotate_left(16)).wrapping_mul(FOLD6_MULTIPLIER);
        product ^ (product >> 32)
    }

    #[inline(always)]
    fn spread16(folded: u64) -> u32 {
        (folded >> 48) as u32
    }

    #[inline(always)]
    fn wire_fold(&self) -> u64 {
        let [high, low] = halves(self);
        u64::from_be(high) ^ mix64(u64::from_be(low))
    }

    #[inline(always)]
    fn is_zero(&self) -> bool {
        let [high, low] = halves(self);
        high | low == 0
    }

    #[inline(always)]
    // The caller guarantees the alignment (the point of this function).
    #[allow(clippy::cast_ptr_alignment)]
    unsafe fn read_words(at: *const Self) -> Self {
        // SAFETY: the caller's guarantee; four words are sixteen bytes, in
        // memory order.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(at.cast::<[u32; 4]>().read()) }
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        let ([a, b], [c, d]) = (halves(self), halves(other));
        a == c && b == d
    }

    #[inline(always)]
    fn raise(folded: u64, by: u32) -> u64 {
        folded.rotate_left(by)
    }

    #[inline(always)]
    fn masked(&self, prefix: u32) -> Self {
        let [high, low] = halves(self);
        let high = u64::from_be(high) & prefix_mask64(prefix);
        let low = u64::from_be(low) & prefix_mask64(prefix.saturating_sub(64));
        // SAFETY: two words are sixteen bytes, in memory order.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([high.to_be(), low.to_be()]) }
    }

    #[inline(always)]
    fn prefix_mask(prefix: u32) -> Self {
        let high = prefix_mask64(prefix).to_be();
        let low = prefix_mask64(prefix.saturating_sub(64)).to_be();
        // SAFETY: two words are sixteen bytes, in memory order.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([high, low]) }
    }

    #[inline(always)]
    fn within(&self, network: &Self, mask: &Self) -> bool {
        let [high, low] = halves(self);
        let [net_high, net_low] = halves(network);
        let [mask_high, mask_low] = halves(mask);
        high & mask_high == net_high && low & mask_low == net_low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_within_its_networks_and_no_other() {
        let mask = <[u8; 4]>::prefix_mask(28);
        assert_eq!(mask, [255, 255, 255, 240]);
        let network = [10, 77, 1, 0];
        assert!([10, 77, 1, 15].within(&network, &mask));
        assert!(![10, 77, 1, 16].within(&network, &mask));
        assert!([1, 2, 3, 4].within(&[0; 4], &<[u8; 4]>::prefix_mask(0)), "/0 holds all");
        let mut a6 = [0xfd, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let network6 = a6.masked(120);
        for (len, inside) in [(120, true), (128, true), (64, true), (0, true)] {
            let mask = <[u8; 16]>::prefix_mask(len);
            assert_eq!(a6.within(&a6.masked(len), &mask), inside, "/{len}");
        }
        let mask120 = <[u8; 16]>::prefix_mask(120);
        a6[14] = 1;
        assert!(!a6.within(&network6, &mask120), "a bit of the low half outside");
        a6[14] = 0;
        a6[3] = 2;
        assert!(!a6.within(&network6, &mask120), "a bit of the high half outside");
        assert_eq!(<[u8; 16]>::prefix_mask(72)[8], 0xff);
        assert_eq!(<[u8; 16]>::prefix_mask(72)[9], 0);
    }

    #[test]
    fn ipv4_folds_to_itself() {
        let a = [10, 77, 1, 100];
        assert_eq!(a.wire_fold(), 0x0a4d_0164);
        assert_eq!(a.fold(), u64::from(u32::from_ne_bytes(a)));
        assert!([0_u8; 4].is_zero() && !a.is_zero());
    }

    #[test]
    fn ipv6_addresses_of_one_network_fold_apart() {
        let mut seen = [0_u64; 256];
        for (i, slot) in seen.iter_mut().enumerate() {
            let mut a = [0xfd, 0x77, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
            a[15] = i as u8;
            *slot = a.wire_fold();
        }
        seen.sort_unstable();
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "distinct folds");
        // The low half is mixed: a client cannot cancel its high half by
        // choosing its low half equal to it.
        let mirrored = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_ne!(mirrored.wire_fold(), 0);
        assert!([0_u8; 16].is_zero() && !mirrored.is_zero());
    }

    /// The native fold spreads structured addresses: a plain XOR of the
    /// halves made `lb_addrs6`'s slot the XOR of the address's eight
    /// groups, so hosts of two networks numbered alike (fd77:1::10,
    /// fd77:2::13) shared slots and paid the exact lookups (measured: a
    /// backend's reply +38 ns).
    #[test]
    fn ipv6_hosts_of_two_networks_take_their_own_filter_slots() {
        let mut slots = [0_u32; 128];
        for (i, slot) in slots.iter_mut().enumerate() {
            let (net, host) = (1 + (i / 64) as u8, 1 + (i % 64) as u8);
            *slot =
                crate::abi::addr_slot([0xfd, 0x77, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]);
        }
        slots.sort_unstable();
        let shared = slots.windows(2).filter(|w| w[0] == w[1]).count();
        // 128 random slots of 65,536 share about 0.12.
        assert!(shared <= 2, "{shared} of 128 hosts share a slot");
    }

    /// Consecutive hosts of a network never share a prefilter slot: their
    /// numbers are the low bits of the product's input, whose top sixteen
    /// bits they reach (`mix64` shared about 125 of these 4,096 slots, as
    /// random slots would).
    #[test]
    fn consecutive_ipv6_hosts_take_distinct_filter_slots() {
        let mut slots = [0_u32; 4096];
        for (host, slot) in slots.iter_mut().enumerate() {
            let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0];
            a[14..].copy_from_slice(&(host as u16).to_be_bytes());
            *slot = crate::abi::addr_slot(a);
        }
        slots.sort_unstable();
        let shared = slots.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(shared, 0, "{shared} of 4,096 consecutive hosts share a slot");
    }

    /// The usual plan, a subnet number in group 4 and a host number in
    /// group 8 (`2001:db8:0:S::H`), and hosts numbered after their subnet
    /// (`S == H`): the XOR of the halves as they lie folded every address
    /// of one `S ^ H` alike (256 addresses into 31 folds).
    #[test]
    fn subnets_and_hosts_numbered_alike_fold_apart() {
        let address = |subnet: u8, host: u8| {
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, subnet, 0, 0, 0, 0, 0, 0, 0, host]
        };
        let mut folds = [0_u64; 256 + 64];
        for (i, fold) in folds.iter_mut().enumerate() {
            let (subnet, host) = if i < 256 { (i / 16, i % 16) } else { (i - 256, i - 256) };
            *fold = address(subnet as u8 + 1, host as u8 + 1).fold();
        }
        folds.sort_unstable();
        let shared = folds.windows(2).filter(|w| w[0] == w[1]).count();
        // The S == H plan repeats the 16 x 16 plan's diagonal: 16 twins.
        assert_eq!(shared, 16, "{shared} shared folds");
    }

    /// IPv6 flows to one VIP keep flow keys of their own (the handshake
    /// slot's and the flow cache slot's source, `abi::flow_key`): hosts of
    /// one network over many source ports, and one host number in many
    /// subnets over many source ports. A fold whose address bits a port
    /// could cancel in the key shared them: the halves XORed as they lie
    /// (a host's bits against a source port's: the 1,024 flows of the
    /// first kind in 256 keys), and the product without its top half
    /// folded down (a subnet's: the second kind's 1,024 in 256).
    #[test]
    fn ipv6_flows_of_hosts_and_ports_keep_their_own_keys() {
        let mut keys = [0_u64; 2 * 8 * 128];
        for (i, key) in keys.iter_mut().enumerate() {
            let (plan, n, sport) = (i / 1024, (i % 1024) / 128, 1024 + (i % 128) as u16);
            let src = if plan == 0 {
                [0xfd, 0x77, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n as u8 + 1]
            } else {
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, n as u8, 0, 0, 0, 0, 0, 0, 0, 5]
            };
            let dst = [0xfd, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            let flow = crate::abi::Flow { src, dst, sport, dport: 443, proto: 6, _pad: [0; 3] };
            *key = crate::abi::flow_key(&flow);
        }
        keys.sort_unstable();
        let shared = keys.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(shared, 0, "{shared} of 2,048 flows share a key");
    }

    #[test]
    fn masks_keep_the_network() {
        let a = [10, 77, 1, 200];
        assert_eq!(a.masked(32), a);
        assert_eq!(a.masked(24), [10, 77, 1, 0]);
        assert_eq!(a.masked(20), [10, 77, 0, 0]);
        assert_eq!(a.masked(0), [0; 4]);
        assert_eq!(a.masked(33), a);
        let b: [u8; 16] = [0xfd, 0x77, 0, 1, 0, 2, 0, 3, 0xff, 0xee, 0, 0, 0, 0, 0x12, 0x34];
        assert_eq!(b.masked(128), b);
        assert_eq!(b.masked(0), [0; 16]);
        let mut net = [0_u8; 16];
        net[..8].copy_from_slice(&b[..8]);
        assert_eq!(b.masked(64), net);
        net[8] = 0xf0;
        assert_eq!(b.masked(68), net);
        assert_eq!(b.masked(16), [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
