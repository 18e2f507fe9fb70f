//! The connection table (`lb_conntrack`): a set of four entries per cache
//! line, found by flow hash (`lb_common::conn_table`). A lookup, a miss and
//! an insert each read one line; nothing is allocated, nothing locked.
use lb_common::{
    abi::{BACKEND_IN_USE, Conn, DEFAULT_CONNTRACK_MAX, Flow},
    conn_table::{CONN_WAYS, ConnSet, ConnSlot, conn_set, conn_set_bits, victim},
};

use crate::maps::{LB_BACKENDS, LB_CONNTRACK, LB_TIMEOUTS};

/// The table's size as the base-2 logarithm of its sets, written by the
/// controller when it loads the program (with the map sized to match):
/// a constant to the verifier.
#[unsafe(no_mangle)]
static LB_CONN_SET_BITS: u32 = conn_set_bits(DEFAULT_CONNTRACK_MAX);

/// The table's hash key (`abi::Meta::conn_salt`), written by the
/// controller at load like the size.
#[unsafe(no_mangle)]
static LB_CONN_SALT: u32 = 0;

#[inline(always)]
fn set_of(flow: &Flow) -> Option<*mut ConnSet> {
    // SAFETY: plain reads of statics the loader may have rewritten
    // (volatile, so the compiler does not fold in the defaults).
    let (bits, salt) = unsafe {
        (
            core::ptr::read_volatile(&raw const LB_CONN_SET_BITS),
            core::ptr::read_volatile(&raw const LB_CONN_SALT),
        )
    };
    LB_CONNTRACK.get_ptr_mut(conn_set(flow, bits, salt))
}

/// The entry of `flow`, if its set holds one: the client's address and
/// port and the service port match, and the entry's backend serves the
/// flow's VIP (or is gone, which the caller answers as such).
#[inline(always)]
pub fn find(flow: &Flow) -> Option<*mut ConnSlot> {
    let set = set_of(flow)?;
    let mut way = 0;
    while way < CONN_WAYS {
        // SAFETY: an entry inside the map's value. Another CPU may write it
        // meanwhile: see `record` for why a torn read is harmless.
        let slot = unsafe { &raw mut (*set).slots[way] };
        // SAFETY: as above.
        let holds = unsafe { (*slot).holds(flow) };
        // SAFETY: as above; read only for an entry of this flow.
        if holds && of_this_vip(unsafe { (*slot).backend_id }, flow) {
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
fn of_this_vip(id: u16, flow: &Flow) -> bool {
    match LB_BACKENDS.get(u32::from(id)) {
        Some(b) if b.flags & BACKEND_IN_USE != 0 => {
            b.vip == flow.dst && b.vport == flow.dport && b.proto == flow.proto
        }
        _ => true,
    }
}

/// Records `conn` for `flow` in its set: over its own entry, an empty one,
/// or the one furthest past its state's timeout at `now` (`victim`).
///
/// The entry is written as two words, its state before its key, so that a
/// reader on another CPU that sees the new key sees the new state too (on
/// x86, whose stores are seen in order; BPF promises no order on others).
/// One that reads the old key with the new state sends one packet of the
/// replaced flow with the new flow's backend, which its backend check
/// refuses unless both flows are of one service, and may write that
/// packet's state into the new entry: a race on the one entry of a set
/// that was the closest to expiring.
#[inline(always)]
pub fn record(flow: &Flow, conn: &Conn, now: u32) {
    let Some(set) = set_of(flow) else {
        return;
    };
    let timeout = |state: u8| LB_TIMEOUTS.get(u32::from(state)).copied().unwrap_or(0);
    // SAFETY: the map's value, read in place.
    let way = victim(unsafe { &*set }, flow, now, timeout);
    // SAFETY: two plain-old-data words of the same 16 bytes.
    let words: [u64; 2] = unsafe { core::mem::transmute(ConnSlot::of(flow, conn)) };
    // SAFETY: an entry inside the map's value, 8-byte aligned.
    unsafe {
        let slot = (&raw mut (*set).slots[way]).cast::<u64>();
        core::ptr::write_volatile(slot.add(1), words[1]);
        core::ptr::write_volatile(slot, words[0]);
    }
}
