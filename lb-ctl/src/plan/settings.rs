//! The data plane's own settings, as its maps hold them beside the
//! services: where it may redirect a packet (`lb_tx_ports`, slot ->
//! interface, and `lb_tx_slots`, interface -> slot), how long an idle
//! connection lives in each state (`lb_timeouts`), its policy (`lb_policy`:
//! the answer budget, the reverse-path check, what records a handshake),
//! and who wrote the maps (`lb_meta`: the layout version and the connection
//! table's hash key). They are part of the image like the services, so the
//! diff writes them, and deletes what an adopted data plane holds that is
//! no longer configured (an interface gone from `[dataplane]`, say).
//!
//! The data plane's clock (`lb_epoch`) is not among them: it is runtime
//! state, set when the maps are opened and moved on by the data plane
//! itself, not configuration.
use std::collections::BTreeMap;

use lb_common::abi::{
    self, ABI_VERSION, CONN_CLOSED, CONN_CLOSING, CONN_ESTABLISHED, CONN_STATES, CONN_SYN,
    CONN_UDP, EPOCH_TICK_MS, HANDSHAKE_PROOF_ACK, HANDSHAKE_PROOF_SYN_SEEN, REVERSE_PATH_LOOSE,
    REVERSE_PATH_OFF, REVERSE_PATH_STRICT, answers_per_tick,
};

use super::diff::{Op, gone, puts};
use crate::desired::model::{Dataplane, HandshakeProof, ReversePath, Timeouts};

/// Each connection state's idle timeout in the data plane's ticks
/// (`EPOCH_TICK_MS`), indexed by state (`lb_timeouts`).
pub type TimeoutTicks = [u32; CONN_STATES as usize];

/// What the data plane's own maps hold. The default is what new maps
/// hold when created: no interface, every timeout and the whole policy
/// zero, no meta. (`KernelMaps` writes new maps' meta as it opens them, so
/// that a start stopped before its first apply leaves adoptable maps; the
/// first apply's `PutMeta` writes the same value again.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `lb_tx_ports`: slot -> ifindex, the configured interfaces in order.
    pub tx_ports: BTreeMap<u32, u32>,
    /// `lb_tx_slots`: ifindex -> slot, the inverse of `tx_ports`.
    pub tx_slots: BTreeMap<u32, u32>,
    pub timeouts: TimeoutTicks,
    pub policy: abi::Policy,
    pub meta: abi::Meta,
}

impl Settings {
    /// The settings of `dataplane`, its interfaces being `ifindexes` (in
    /// the same order), its connection table hashed with `conn_salt`.
    pub fn of(dataplane: &Dataplane, ifindexes: &[u32], conn_salt: u32) -> Self {
        let policy =
            policy(dataplane.answers_per_second, dataplane.reverse_path, dataplane.handshake_proof);
        Self::new(ifindexes, &dataplane.timeouts, policy, conn_salt)
    }

    /// The settings of a data plane that redirects to `ifindexes` (slot
    /// by slot, in order), with `timeouts` and `policy`.
    pub fn new(
        ifindexes: &[u32],
        timeouts: &Timeouts,
        policy: abi::Policy,
        conn_salt: u32,
    ) -> Self {
        Self {
            tx_ports: (0..).zip(ifindexes.iter().copied()).collect(),
            tx_slots: ifindexes.iter().copied().zip(0..).collect(),
            timeouts: timeout_ticks(timeouts),
            policy,
            meta: abi::Meta { abi_version: ABI_VERSION, conn_salt },
        }
    }
}

/// `timeouts` in the data plane's ticks, by connection state.
pub fn timeout_ticks(timeouts: &Timeouts) -> TimeoutTicks {
    let ticks = |d: std::time::Duration| u32::try_from(d.as_millis() / u128::from(EPOCH_TICK_MS));
    let mut by_state = [0; CONN_STATES as usize];
    for (state, timeout) in [
        (CONN_SYN, timeouts.tcp_syn),
        (CONN_ESTABLISHED, timeouts.tcp_established),
        (CONN_CLOSING, timeouts.tcp_closing),
        (CONN_CLOSED, timeouts.tcp_closed),
        (CONN_UDP, timeouts.udp),
    ] {
        by_state[usize::from(state)] = ticks(timeout).unwrap_or(u32::MAX);
    }
    by_state
}

/// The policy of a data plane whose CPUs may each send `answers_per_second`
/// answers (resets, ICMP errors), with the given reverse-path check and
/// handshake proof.
pub fn policy(
    answers_per_second: u32,
    reverse_path: ReversePath,
    handshake_proof: HandshakeProof,
) -> abi::Policy {
    abi::Policy {
        answers_per_tick: answers_per_tick(answers_per_second),
        reverse_path: match reverse_path {
            ReversePath::Strict => REVERSE_PATH_STRICT,
            ReversePath::Loose => REVERSE_PATH_LOOSE,
            ReversePath::Off => REVERSE_PATH_OFF,
        },
        handshake_proof: match handshake_proof {
            HandshakeProof::Ack => HANDSHAKE_PROOF_ACK,
            HandshakeProof::SynSeen => HANDSHAKE_PROOF_SYN_SEEN,
        },
        _pad: 0,
    }
}

/// The writes from `old` to `new` settings, all before any service is
/// written (see `diff::diff`). The meta first: the maps say who wrote them
/// before anything else does. The timeouts and the policy before any
/// service exists, so that no packet meets a zero timeout or budget.
///
/// The redirect targets in the order that never sends a packet out of the
/// wrong interface. The data plane resolves a next hop's interface to a
/// slot (`lb_tx_slots`) and caches the slot with the hop; it then
/// redirects by the slot (`lb_tx_ports`). So: every interface whose slot
/// changes or goes leaves `lb_tx_slots` (its packets go to tc meanwhile);
/// the cached next hops are forgotten, so none holds a slot that is about
/// to change hands; the slots are then pointed at their new interfaces
/// (or emptied), and only then do the interfaces get their slots.
pub(super) fn diff(old: &Settings, new: &Settings, ops: &mut Vec<Op>) {
    if old.meta != new.meta {
        ops.push(Op::PutMeta(new.meta));
    }
    for (state, (was, now)) in (0_u8..).zip(old.timeouts.iter().zip(&new.timeouts)) {
        if was != now {
            ops.push(Op::PutTimeout(state, *now));
        }
    }
    if old.policy != new.policy {
        ops.push(Op::PutPolicy(new.policy));
    }
    let unslotted: Vec<u32> = old
        .tx_slots
        .iter()
        .filter(|(ifindex, slot)| new.tx_slots.get(ifindex) != Some(slot))
        .map(|(ifindex, _)| *ifindex)
        .collect();
    let repointed = old.tx_ports.iter().any(|(slot, port)| new.tx_ports.get(slot) != Some(port));
    ops.extend(unslotted.iter().map(|ifindex| Op::DelTxSlot(*ifindex)));
    if !unslotted.is_empty() || repointed {
        ops.push(Op::ForgetNextHops);
    }
    ops.extend(gone(&old.tx_ports, &new.tx_ports).map(Op::DelTxPort));
    ops.extend(puts(&old.tx_ports, &new.tx_ports).map(|(slot, port)| Op::PutTxPort(slot, *port)));
    ops.extend(
        puts(&old.tx_slots, &new.tx_slots).map(|(ifindex, slot)| Op::PutTxSlot(ifindex, *slot)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings on the interfaces `ifindexes`, with the default timeouts and policy.
    fn on(ifindexes: &[u32]) -> Settings {
        let policy = policy(1000, ReversePath::Strict, HandshakeProof::Ack);
        Settings::new(ifindexes, &Timeouts::default(), policy, 7)
    }

    fn ops(old: &Settings, new: &Settings) -> Vec<Op> {
        let mut ops = Vec::new();
        diff(old, new, &mut ops);
        ops
    }

    #[test]
    fn new_maps_get_the_meta_first_and_each_interface_its_slot_after_its_port() {
        let ops = ops(&Settings::default(), &on(&[4, 9]));
        assert_eq!(ops[0], Op::PutMeta(abi::Meta { abi_version: ABI_VERSION, conn_salt: 7 }));
        let timeouts: Vec<&Op> = ops.iter().filter(|op| matches!(op, Op::PutTimeout(..))).collect();
        assert_eq!(timeouts.len(), 5, "the five states' timeouts: {ops:?}");
        let tail = &ops[ops.len() - 4..];
        assert_eq!(
            tail,
            [Op::PutTxPort(0, 4), Op::PutTxPort(1, 9), Op::PutTxSlot(4, 0), Op::PutTxSlot(9, 1)]
        );
        assert!(!ops.contains(&Op::ForgetNextHops), "nothing cached could be wrong: {ops:?}");
    }

    #[test]
    fn an_interface_added_gets_its_port_then_its_slot_and_nothing_else_moves() {
        assert_eq!(ops(&on(&[4]), &on(&[4, 9])), [Op::PutTxPort(1, 9), Op::PutTxSlot(9, 1)]);
    }

    #[test]
    fn an_interface_removed_leaves_both_maps_after_the_cached_hops_are_forgotten() {
        assert_eq!(
            ops(&on(&[4, 9]), &on(&[4])),
            [Op::DelTxSlot(9), Op::ForgetNextHops, Op::DelTxPort(1)]
        );
    }

    /// `[a, b]` to `[b, c]`: b's slot becomes a's. No cached hop may still
    /// hold a's slot when b takes it, nor b's old one when c takes that.
    #[test]
    fn slots_that_change_hands_are_left_by_their_interfaces_first() {
        assert_eq!(
            ops(&on(&[3, 4]), &on(&[4, 5])),
            [
                Op::DelTxSlot(3),
                Op::DelTxSlot(4),
                Op::ForgetNextHops,
                Op::PutTxPort(0, 4),
                Op::PutTxPort(1, 5),
                Op::PutTxSlot(4, 0),
                Op::PutTxSlot(5, 1),
            ]
        );
    }

    #[test]
    fn only_the_changed_timeouts_and_policy_are_written() {
        let old = on(&[4]);
        let mut new = on(&[4]);
        new.timeouts = timeout_ticks(&Timeouts {
            udp: std::time::Duration::from_secs(30),
            ..Timeouts::default()
        });
        assert_eq!(ops(&old, &new), [Op::PutTimeout(CONN_UDP, 300)]);
        new.policy = policy(1000, ReversePath::Loose, HandshakeProof::SynSeen);
        assert_eq!(ops(&old, &new).last(), Some(&Op::PutPolicy(new.policy)));
        assert!(ops(&new, &new).is_empty());
    }
}
