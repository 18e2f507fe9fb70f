//! The connection table (`lb_conntrack`): a set of four entries per cache
//! line, found by flow hash (`lb_common::conn_table`). A lookup, a miss and
//! an insert each read one line; nothing is allocated, nothing locked.
use lb_common::{
    abi::{BACKEND_IN_USE, Conn, DEFAULT_CONNTRACK_MAX, Flow},
    addr::Addr,
    conn_table::{CONN_WAYS, ConnSet, ConnSlot, conn_set, conn_set_bits, victim},
};

use crate::{family::Family, maps::LB_TIMEOUTS};

/// The IPv4 table's size as the base-2 logarithm of its sets, written by
/// the controller when it loads the program (with the map sized to
/// match): a constant to the verifier.
#[unsafe(no_mangle)]
static LB_CONN_SET_BITS: u32 = conn_set_bits(DEFAULT_CONNTRACK_MAX);

/// The IPv6 table's (`lb_conntrack6`), likewise.
#[unsafe(no_mangle)]
static LB_CONN6_SET_BITS: u32 = conn_set_bits(DEFAULT_CONNTRACK_MAX);

/// The table's size (`LB_CONN_SET_BITS`).
#[inline(always)]
pub fn set_bits_v4() -> u32 {
    // SAFETY: a plain read of a static the loader may have rewritten
    // (volatile, so the compiler does not fold in the default).
    unsafe { core::ptr::read_volatile(&raw const LB_CONN_SET_BITS) }
}

/// The IPv6 table's size (`LB_CONN6_SET_BITS`).
#[inline(always)]
pub fn set_bits_v6() -> u32 {
    // SAFETY: as in `set_bits_v4`.
    unsafe { core::ptr::read_volatile(&raw const LB_CONN6_SET_BITS) }
}

/// The table's hash key (`abi::Meta::conn_salt`), written by the
/// controller at load like the size.
#[unsafe(no_mangle)]
static LB_CONN_SALT: u32 = 0;

#[inline(always)]
fn set_of<F: Family>(flow: &Flow<F::Addr>) -> Option<*mut ConnSet<F::Addr>> {
    let bits = F::conn_set_bits();
    // SAFETY: as in `set_bits_v4`.
    let salt = unsafe { core::ptr::read_volatile(&raw const LB_CONN_SALT) };
    F::conntrack().get_ptr_mut(conn_set(flow, bits, salt))
}

/// The entry of `flow`, if its set holds one: the client's address and
/// port and the service port match, and the entry's backend serves the
/// flow's VIP (or is gone, which the caller answers as such).
#[inline(always)]
pub fn find<F: Family>(flow: &Flow<F::Addr>) -> Option<*mut ConnSlot<F::Addr>> {
    let set = set_of::<F>(flow)?;
    let mut way = 0;
    while way < CONN_WAYS {
        // SAFETY: an entry inside the map's value. Another CPU may write it
        // meanwhile: see `record` for why a torn read is harmless.
        let slot = unsafe { &raw mut (*set).slots[way] };
        // SAFETY: as above.
        let holds = unsafe { (*slot).holds(flow) };
        // SAFETY: as above; read only for an entry of this flow.
        if holds && of_this_vip::<F>(unsafe { (*slot).backend_id }, flow) {
            return Some(slot);
        }
        way += 1;
    }
    None
}

/// Whether backend `id` is the flow's VIP's: the entry holds the client's
/// side and the service port only, and the same client may use the same
/// ports towards two VIPs. A backend no longer in use cannot say; its
/// entry is taken as the flow's (the flow's backend is gone).
#[inline(always)]
fn of_this_vip<F: Family>(id: u16, flow: &Flow<F::Addr>) -> bool {
    match F::backends().get(u32::from(id)) {
        Some(b) if b.flags & BACKEND_IN_USE != 0 => {
            b.vip().same(&flow.dst) && b.vport == flow.dport && b.proto == flow.proto
        }
        _ => true,
    }
}

/// Records `conn` for `flow` in its set: over its own entry, an empty one,
/// or the one furthest past its state's timeout at `now` (`victim`).
///
/// The entry is written as words, last to first: its state before its key
/// (IPv4: one word each; IPv6: the key's port word, then its address), so
/// that a reader on another CPU that sees the new key sees the new state
/// too (on x86, whose stores are seen in order; BPF promises no order on
/// others).
/// One that reads the old key with the new state sends one packet of the
/// replaced flow with the new flow's backend, which its backend check
/// refuses unless both flows are of one service, and may write that
/// packet's state into the new entry: a race on the one entry of a set
/// that was the closest to expiring.
#[inline(always)]
pub fn record<F: Family>(flow: &Flow<F::Addr>, conn: &Conn, now: u32) {
    let Some(set) = set_of::<F>(flow) else {
        return;
    };
    let timeout = |state: u8| LB_TIMEOUTS.get(u32::from(state)).copied().unwrap_or(0);
    // SAFETY: the map's value, read in place.
    let way = victim(unsafe { &*set }, flow, now, timeout);
    // SAFETY: an entry inside the map's value.
    unsafe { F::store_conn(&raw mut (*set).slots[way], ConnSlot::of(flow, conn)) };
}

/// Writes `entry` over `slot` as `N` words, last to first (see `record`).
///
/// # Safety
/// `slot` is an entry of the table, 8-byte aligned, `N` words long.
#[inline(always)]
pub unsafe fn store_words<const N: usize>(slot: *mut u64, words: [u64; N]) {
    let mut word = N;
    while word > 0 {
        word -= 1;
        // SAFETY: the caller guarantees the N words.
        unsafe { core::ptr::write_volatile(slot.add(word), words[word]) };
    }
}
