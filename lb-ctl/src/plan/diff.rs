//! The writes that turn one image into another, in an order that never
//! lets the data plane see a half-built service (or send a packet out of an
//! interface it no longer means), and what each write does to an image.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::abi::{self, Endpoint};

use super::{
    ids::{MapAddr, held_backend_key},
    image::{FamilyImage, Image},
    settings,
};

/// One write to the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write to one of the IPv4 maps (`lb_services`, `lb_backends`, ...).
    V4(FamilyOp<[u8; 4]>),
    /// A write to one of the IPv6 maps (`lb_services6`, `lb_backends6`, ...).
    V6(FamilyOp<[u8; 16]>),
    PutMaglev(u32, Arc<Vec<u32>>),
    ClearMaglev(u32),
    /// Zeroes a service id's traffic counters before the id serves a new
    /// service: an id is reused, its counters must not be.
    ResetServiceTraffic(u32),
    /// The same for a backend id.
    ResetBackendTraffic(u32),
    /// Sets who wrote the maps (`lb_meta`).
    PutMeta(abi::Meta),
    /// Sets a connection state's idle timeout, in ticks (`lb_timeouts`).
    PutTimeout(u8, u32),
    PutPolicy(abi::Policy),
    /// Points a slot of `lb_tx_ports` at an interface (ifindex).
    PutTxPort(u32, u32),
    DelTxPort(u32),
    /// Gives an interface (ifindex) its slot in `lb_tx_ports` (`lb_tx_slots`).
    PutTxSlot(u32, u32),
    DelTxSlot(u32),
    /// Makes the data plane look every next hop up again, of both
    /// families: its caches keep each hop's slot in `lb_tx_ports`, which
    /// is about to change hands.
    ForgetNextHops,
}

/// One write to an address family's own maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyOp<A> {
    PutBackend(u32, abi::Backend<A>),
    PutReal(Endpoint<A>, abi::Real<A>),
    PutVip(A, u32),
    PutBackendAddr(A, u32),
    /// Sets a pre-filter slot (0 clears it).
    PutAddrFlags(u32, u8),
    /// Sets a backend index slot (0 clears it).
    PutRealSlot(u32, u32),
    PutService(Endpoint<A>, abi::Service),
    DelService(Endpoint<A>),
    DelVip(A),
    DelBackendAddr(A),
    DelReal(Endpoint<A>),
    ClearBackend(u32),
    /// Allows a network to reach a service: (service id, network, prefix length).
    PutSource((u32, A, u8)),
    DelSource((u32, A, u8)),
}

impl Image {
    /// What the maps hold after `op`: the model of one map write, used to
    /// know exactly what a half-done apply left behind.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::V4(op) => self.v4.apply(op),
            Op::V6(op) => self.v6.apply(op),
            Op::PutMaglev(id, t) => {
                let _ = self.maglev.insert(*id, Arc::clone(t));
            }
            Op::ClearMaglev(id) => {
                let _ = self.maglev.remove(id);
            }
            Op::PutMeta(meta) => self.settings.meta = *meta,
            Op::PutTimeout(state, ticks) => {
                if let Some(timeout) = self.settings.timeouts.get_mut(usize::from(*state)) {
                    *timeout = *ticks;
                }
            }
            Op::PutPolicy(policy) => self.settings.policy = *policy,
            Op::PutTxPort(slot, ifindex) => {
                let _ = self.settings.tx_ports.insert(*slot, *ifindex);
            }
            Op::DelTxPort(slot) => {
                let _ = self.settings.tx_ports.remove(slot);
            }
            Op::PutTxSlot(ifindex, slot) => {
                let _ = self.settings.tx_slots.insert(*ifindex, *slot);
            }
            Op::DelTxSlot(ifindex) => {
                let _ = self.settings.tx_slots.remove(ifindex);
            }
            // Counters and the next-hop cache are not part of the image.
            Op::ResetServiceTraffic(_) | Op::ResetBackendTraffic(_) | Op::ForgetNextHops => {}
        }
    }
}

impl<A: MapAddr> FamilyImage<A> {
    /// What the family's maps hold after `op`.
    pub fn apply(&mut self, op: &FamilyOp<A>) {
        match op {
            FamilyOp::PutBackend(id, b) => {
                let _ = self.backends.insert(*id, *b);
            }
            FamilyOp::PutReal(k, r) => {
                let _ = self.reals.insert(*k, *r);
            }
            FamilyOp::PutVip(v, n) => {
                let _ = self.vips.insert(*v, *n);
            }
            FamilyOp::PutBackendAddr(a, n) => {
                let _ = self.backend_addrs.insert(*a, *n);
            }
            FamilyOp::DelBackendAddr(a) => {
                let _ = self.backend_addrs.remove(a);
            }
            FamilyOp::PutAddrFlags(slot, 0) => {
                let _ = self.addrs.remove(slot);
            }
            FamilyOp::PutAddrFlags(slot, flags) => {
                let _ = self.addrs.insert(*slot, *flags);
            }
            FamilyOp::PutRealSlot(slot, 0) => {
                let _ = self.real_slots.remove(slot);
            }
            FamilyOp::PutRealSlot(slot, value) => {
                let _ = self.real_slots.insert(*slot, *value);
            }
            FamilyOp::PutService(k, s) => {
                let _ = self.services.insert(*k, *s);
            }
            FamilyOp::DelService(k) => {
                let _ = self.services.remove(k);
            }
            FamilyOp::DelVip(v) => {
                let _ = self.vips.remove(v);
            }
            FamilyOp::DelReal(k) => {
                let _ = self.reals.remove(k);
            }
            FamilyOp::ClearBackend(id) => {
                let _ = self.backends.remove(id);
            }
            FamilyOp::PutSource(key) => {
                let _ = self.sources.insert(*key, 1);
            }
            FamilyOp::DelSource(key) => {
                let _ = self.sources.remove(key);
            }
        }
    }
}

/// Both maps' entries in key order, in one pass over each: (key, old
/// value, new value). Far cheaper than a lookup per key when the maps hold
/// thousands of entries and only a few change.
fn zip<'a, K: Ord + Copy, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, Option<&'a V>, Option<&'a V>)> {
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (None, None) => None,
        (Some(_), None) => a.next().map(|(k, v)| (*k, Some(v), None)),
        (None, Some(_)) => b.next().map(|(k, v)| (*k, None, Some(v))),
        (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
            std::cmp::Ordering::Less => a.next().map(|(k, v)| (*k, Some(v), None)),
            std::cmp::Ordering::Greater => b.next().map(|(k, v)| (*k, None, Some(v))),
            std::cmp::Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                Some((*k, Some(va), Some(vb)))
            }
        },
    })
}

/// Keys whose value is new or changed, with the new value.
pub(super) fn puts<'a, K: Ord + Copy, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, &'a V)> {
    zip(old, new).filter_map(|(k, o, n)| n.filter(|n| o != Some(*n)).map(|n| (k, n)))
}

/// Keys only `old` has.
pub(super) fn gone<'a, K: Ord + Copy, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = K> {
    zip(old, new).filter_map(|(k, _, n)| n.is_none().then_some(k))
}

/// The writes from `old` to `new`. The data plane's own settings come
/// first (see `settings::diff`). Then additions go bottom-up (backends, reverse
/// entries, Maglev tables, backend addresses and VIPs, then the service entry that makes them
/// reachable); removals go top-down, so no packet finds a dangling reference.
/// A service's ring size never exceeds what its table fills (see below).
/// Each step is taken for both address families before the next.
///
/// A service id that passes from one family to the other (a service
/// removed as IPv4 and one added as IPv6 on its id: `Ids` gives a removed
/// service's id again once every other is taken) is taken in two steps,
/// so that what is indexed by the id alone (its table in `lb_maglev`, its
/// counters) never serves both holders: its old holder, with its backends,
/// is removed first (`step_out`), then everything else is written.
pub fn diff(old: &Image, new: &Image) -> Vec<Op> {
    let moving = changing_family(old, new);
    if moving.is_empty() {
        return in_order(old, new);
    }
    let step_out = Image {
        settings: new.settings.clone(),
        maglev: old
            .maglev
            .iter()
            .filter(|(id, _)| !moving.contains(id))
            .map(|(id, t)| (*id, Arc::clone(t)))
            .collect(),
        v4: old.v4.without_services(&moving),
        v6: old.v6.without_services(&moving),
    };
    let mut ops = in_order(old, &step_out);
    ops.extend(in_order(&step_out, new));
    ops
}

/// The service ids that one family held in `old` and the other holds in `new`.
fn changing_family(old: &Image, new: &Image) -> BTreeSet<u32> {
    let ids = |services: &mut dyn Iterator<Item = &abi::Service>| -> BTreeSet<u32> {
        services.map(|s| s.id).collect()
    };
    let (old4, old6) = (ids(&mut old.v4.services.values()), ids(&mut old.v6.services.values()));
    let (new4, new6) = (ids(&mut new.v4.services.values()), ids(&mut new.v6.services.values()));
    old4.intersection(&new6).chain(old6.intersection(&new4)).copied().collect()
}

/// The writes from `old` to `new`, in the order `diff` describes, for
/// images where no service id changes family.
fn in_order(old: &Image, new: &Image) -> Vec<Op> {
    let mut ops = Vec::new();
    settings::diff(&old.settings, &new.settings, &mut ops);
    let v4 = Family { old: &old.v4, new: &new.v4, wrap: Op::V4 };
    let v6 = Family { old: &old.v6, new: &new.v6, wrap: Op::V6 };
    // An id that starts to serve another service or backend starts its
    // counters from zero, before anything can reach it. (An id freed and
    // taken again in the same apply, which `Ids` avoids until every other
    // id is taken, is zeroed while its old holder may still count a few
    // packets into it.) Ids are one space across the families: an id that
    // moves from one family to the other is new to both.
    v4.reset_services(&old.v6, &mut ops);
    v6.reset_services(&old.v4, &mut ops);
    v4.reset_backends(&old.v6, &mut ops);
    v6.reset_backends(&old.v4, &mut ops);
    v4.additions(&mut ops);
    v6.additions(&mut ops);
    // The data plane reads slot `hash % ring_size` of a service's table: a
    // ring size above what the table fills is an empty slot, a reset. A
    // service whose ring shrinks (an `rr`/`wrr` rotation losing a backend)
    // gets its smaller ring size before its shorter table, and reads the
    // front of the old one meanwhile; one whose ring grows gets its table first.
    let shrinking: BTreeSet<u32> = v4.shrinking().chain(v6.shrinking()).collect();
    v4.services(&shrinking, true, &mut ops);
    v6.services(&shrinking, true, &mut ops);
    ops.extend(puts(&old.maglev, &new.maglev).map(|(id, t)| Op::PutMaglev(id, Arc::clone(t))));
    v4.vips(&mut ops);
    v6.vips(&mut ops);
    v4.services(&shrinking, false, &mut ops);
    v6.services(&shrinking, false, &mut ops);
    v4.unreachable(&mut ops);
    v6.unreachable(&mut ops);
    ops.extend(gone(&old.maglev, &new.maglev).map(Op::ClearMaglev));
    v4.removals(&mut ops);
    v6.removals(&mut ops);
    ops
}

/// One address family's part of a diff.
struct Family<'a, A> {
    old: &'a FamilyImage<A>,
    new: &'a FamilyImage<A>,
    wrap: fn(FamilyOp<A>) -> Op,
}

impl<A: MapAddr> Family<'_, A> {
    /// Services whose id now serves another service (or one of the other
    /// family, `other_old`).
    fn reset_services<B: MapAddr>(&self, other_old: &FamilyImage<B>, ops: &mut Vec<Op>) {
        for (key, s) in &self.new.services {
            let same = self.old.services.get(key).is_some_and(|o| o.id == s.id);
            if !same {
                ops.push(Op::ResetServiceTraffic(s.id));
            }
        }
        let _ = other_old;
    }

    /// Backends whose id now serves another backend.
    fn reset_backends<B: MapAddr>(&self, other_old: &FamilyImage<B>, ops: &mut Vec<Op>) {
        for (id, b) in &self.new.backends {
            let was = self.old.backends.get(id).map(held_backend_key);
            if was != Some(held_backend_key(b)) || other_old.backends.contains_key(id) {
                ops.push(Op::ResetBackendTraffic(*id));
            }
        }
    }

    /// Pre-filter slots gain their new bits, and backend addresses their
    /// entries, before anything can need them: a backend's address is
    /// refused answers and replies before the backend can be reached. (A
    /// bit set early only costs the exact lookups that then find nothing.)
    /// Then the backends and their reverse entries.
    fn additions(&self, ops: &mut Vec<Op>) {
        let (old, new, wrap) = (self.old, self.new, self.wrap);
        for (slot, was, now) in zip(&old.addrs, &new.addrs) {
            let (was, now) = (was.copied().unwrap_or(0), now.copied().unwrap_or(0));
            if now & !was != 0 {
                ops.push(wrap(FamilyOp::PutAddrFlags(slot, now | was)));
            }
        }
        ops.extend(
            puts(&old.backend_addrs, &new.backend_addrs)
                .map(|(a, n)| wrap(FamilyOp::PutBackendAddr(a, *n))),
        );
        ops.extend(
            puts(&old.backends, &new.backends).map(|(id, b)| wrap(FamilyOp::PutBackend(id, *b))),
        );
        ops.extend(puts(&old.reals, &new.reals).map(|(key, r)| wrap(FamilyOp::PutReal(key, *r))));
        ops.extend(
            puts(&old.real_slots, &new.real_slots)
                .map(|(slot, v)| wrap(FamilyOp::PutRealSlot(slot, *v))),
        );
        // A service's allowed sources before its entry says it has them.
        ops.extend(puts(&old.sources, &new.sources).map(|(key, _)| wrap(FamilyOp::PutSource(key))));
    }

    /// The ids of services whose ring shrinks.
    fn shrinking(&self) -> impl Iterator<Item = u32> + '_ {
        zip(&self.old.services, &self.new.services).filter_map(|(_, was, now)| {
            let (was, now) = (was?, now?);
            (was.id == now.id && now.ring_size < was.ring_size).then_some(now.id)
        })
    }

    /// The service entries that are new or changed, of the shrinking
    /// services or of the others.
    fn services(&self, shrinking: &BTreeSet<u32>, of_shrinking: bool, ops: &mut Vec<Op>) {
        ops.extend(
            puts(&self.old.services, &self.new.services)
                .filter(|(_, s)| shrinking.contains(&s.id) == of_shrinking)
                .map(|(key, s)| (self.wrap)(FamilyOp::PutService(key, *s))),
        );
    }

    fn vips(&self, ops: &mut Vec<Op>) {
        ops.extend(
            puts(&self.old.vips, &self.new.vips)
                .map(|(vip, n)| (self.wrap)(FamilyOp::PutVip(vip, *n))),
        );
    }

    /// Services gone, and their VIPs: nothing reaches their tables after.
    fn unreachable(&self, ops: &mut Vec<Op>) {
        let (old, new, wrap) = (self.old, self.new, self.wrap);
        ops.extend(gone(&old.services, &new.services).map(|k| wrap(FamilyOp::DelService(k))));
        ops.extend(gone(&old.vips, &new.vips).map(|v| wrap(FamilyOp::DelVip(v))));
    }

    /// What nothing reaches any more: reverse entries, backends, then the
    /// addresses' refusals and pre-filter bits.
    fn removals(&self, ops: &mut Vec<Op>) {
        let (old, new, wrap) = (self.old, self.new, self.wrap);
        // A source is refused only after its service's entry has its new list.
        ops.extend(gone(&old.sources, &new.sources).map(|k| wrap(FamilyOp::DelSource(k))));
        ops.extend(gone(&old.reals, &new.reals).map(|k| wrap(FamilyOp::DelReal(k))));
        ops.extend(
            gone(&old.real_slots, &new.real_slots).map(|slot| wrap(FamilyOp::PutRealSlot(slot, 0))),
        );
        ops.extend(gone(&old.backends, &new.backends).map(|id| wrap(FamilyOp::ClearBackend(id))));
        // An address stays refused as long as a backend on it can be reached.
        ops.extend(
            gone(&old.backend_addrs, &new.backend_addrs).map(|a| wrap(FamilyOp::DelBackendAddr(a))),
        );
        // ...and lose bits only after what used them is gone.
        for (slot, was, now) in zip(&old.addrs, &new.addrs) {
            let (was, now) = (was.copied().unwrap_or(0), now.copied().unwrap_or(0));
            if was & !now != 0 {
                ops.push(wrap(FamilyOp::PutAddrFlags(slot, now)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        desired::model::testing::service,
        plan::{ids::Ids, testing::plan},
    };

    /// An address that backs several services is counted once per backend,
    /// and stays refused until the last of them is gone, after it.
    #[test]
    fn a_backend_address_stays_until_its_last_backend_is_gone() {
        let web = service("web", 80, &[(11, 1)]);
        let api = service("api", 81, &[(11, 1), (12, 1)]);
        let (ids, both) = plan(&Ids::default(), &[web.clone(), api]);
        assert_eq!(both.v4.backend_addrs[&[10, 77, 2, 11]], 2);
        let (ids, web_only) = plan(&ids, std::slice::from_ref(&web));
        let ops = diff(&both, &web_only);
        assert!(ops.contains(&Op::V4(FamilyOp::PutBackendAddr([10, 77, 2, 11], 1))), "{ops:?}");
        let at = |wanted: &dyn Fn(&Op) -> bool| ops.iter().position(wanted).unwrap();
        let del = at(&|op| *op == Op::V4(FamilyOp::DelBackendAddr([10, 77, 2, 12])));
        assert!(
            at(&|op| matches!(op, Op::V4(FamilyOp::DelService(_)))) < del,
            "after the service is gone"
        );
        assert!(
            at(&|op| matches!(op, Op::V4(FamilyOp::ClearBackend(_)))) < del,
            "and its backends"
        );
        let (_, none) = plan(&ids, &[]);
        assert!(
            diff(&web_only, &none).contains(&Op::V4(FamilyOp::DelBackendAddr([10, 77, 2, 11])))
        );
        assert!(none.v4.backend_addrs.is_empty());
    }

    /// A service that takes a removed one's id, and backends on ids never
    /// used or used by another backend, start from zero; ids that keep
    /// their holder keep their counters.
    #[test]
    fn reused_ids_get_their_counters_zeroed_and_kept_ids_do_not() {
        let web = service("web", 80, &[(11, 1), (12, 1)]);
        let (ids, before) = plan(&Ids::default(), std::slice::from_ref(&web));
        // Another service on another port gets web's service id in the next
        // apply (its backends get fresh ids: freed ones are reused last).
        let (ids, gone) = plan(&ids, &[]);
        let api = service("api", 81, &[(21, 1), (22, 1)]);
        let (_, after) = plan(&ids, &[api]);
        assert_eq!(
            after.v4.services.values().next().unwrap().id,
            before.v4.services.values().next().unwrap().id
        );
        let resets = |ops: Vec<Op>| -> Vec<Op> {
            ops.into_iter()
                .filter(|op| matches!(op, Op::ResetServiceTraffic(_) | Op::ResetBackendTraffic(_)))
                .collect()
        };
        let service_id = after.v4.services.values().next().unwrap().id;
        let mut expected = vec![Op::ResetServiceTraffic(service_id)];
        expected.extend(after.v4.backends.keys().map(|id| Op::ResetBackendTraffic(*id)));
        assert_eq!(resets(diff(&gone, &after)), expected);
        // A change that keeps every holder (a weight) resets nothing.
        let heavier = service("web", 80, &[(11, 3), (12, 1)]);
        let (ids, same) = plan(&Ids::default(), &[web]);
        let (_, reweighted) = plan(&ids, &[heavier]);
        assert_eq!(resets(diff(&same, &reweighted)), []);
        // A backend id that passes to another backend (after the ids wrap).
        let mut moved = same.clone();
        let (&id, held) = same.v4.backends.iter().next().unwrap();
        moved.v4.backends.insert(id, abi::Backend { addr: [10, 77, 2, 99], ..*held });
        assert_eq!(resets(diff(&same, &moved)), [Op::ResetBackendTraffic(id)]);
    }

    #[test]
    fn first_apply_writes_bottom_up() {
        let (_, image) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1)])]);
        let ops = diff(&Image::default(), &image);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::V4(FamilyOp::PutBackend(..)) => "backend",
                Op::V4(FamilyOp::PutReal(..)) => "real",
                Op::PutMaglev(..) => "maglev",
                Op::V4(FamilyOp::PutVip(..)) => "vip",
                Op::V4(FamilyOp::PutBackendAddr(..)) => "backend addr",
                Op::V4(FamilyOp::PutAddrFlags(..)) => "addrs",
                Op::V4(FamilyOp::PutRealSlot(..)) => "real slot",
                Op::V4(FamilyOp::PutService(..)) => "service",
                Op::ResetServiceTraffic(..) | Op::ResetBackendTraffic(..) => "reset",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                // The new ids' counters, before anything reaches them.
                "reset",
                "reset",
                "reset",
                // The VIP's and both backends' pre-filter slots, and both
                // backends' addresses: refused as answers' and replies'
                // destinations before anything can reach the backends.
                "addrs",
                "addrs",
                "addrs",
                "backend addr",
                "backend addr",
                "backend",
                "backend",
                "real",
                "real",
                "real slot",
                "real slot",
                "maglev",
                "vip",
                "service"
            ]
        );
    }

    #[test]
    fn a_backend_joining_a_service_is_refused_answers_before_it_is_reached() {
        let (ids, before) = plan(&Ids::default(), &[service("web", 80, &[(11, 1)])]);
        let (_, after) = plan(&ids, &[service("web", 80, &[(11, 1), (13, 1)])]);
        let ops = diff(&before, &after);
        let at = |want: fn(&Op) -> bool| ops.iter().position(want).expect("the op");
        let addr = at(|op| matches!(op, Op::V4(FamilyOp::PutBackendAddr(..))));
        let reached = [
            at(|op| matches!(op, Op::V4(FamilyOp::PutBackend(..)))),
            at(|op| matches!(op, Op::V4(FamilyOp::PutRealSlot(..)))),
            at(|op| matches!(op, Op::PutMaglev(..))),
        ];
        assert!(reached.iter().all(|&r| addr < r), "{ops:?}");
    }

    /// The settings are written before anything can reach a service, and
    /// applying the writes to the old image gives the new one, settings and
    /// all, both ways.
    #[test]
    fn settings_come_first_and_the_writes_make_the_new_image() {
        use crate::{
            desired::model::{HandshakeProof, ReversePath, Timeouts},
            plan::settings::{Settings, policy},
        };
        let (ids, services) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1)])]);
        let on = |ifindexes: &[u32]| {
            let policy = policy(1000, ReversePath::Strict, HandshakeProof::Ack);
            Settings::new(ifindexes, &Timeouts::default(), policy, 7)
        };
        let first = Image { settings: on(&[3, 4]), ..services.clone() };
        let (_, fewer) = plan(&ids, &[service("web", 80, &[(11, 1)])]);
        let second = Image { settings: on(&[4]), ..fewer };
        let is_setting = |op: &Op| {
            matches!(
                op,
                Op::PutMeta(_)
                    | Op::PutTimeout(..)
                    | Op::PutPolicy(_)
                    | Op::PutTxPort(..)
                    | Op::DelTxPort(_)
                    | Op::PutTxSlot(..)
                    | Op::DelTxSlot(_)
                    | Op::ForgetNextHops
            )
        };
        for (old, new) in [
            (&Image::default(), &first),
            (&first, &second),
            (&second, &first),
            (&first, &Image::default()),
        ] {
            let ops = diff(old, new);
            let settings = ops.iter().take_while(|op| is_setting(op)).count();
            assert!(settings > 0, "{ops:?}");
            assert!(ops[settings..].iter().all(|op| !is_setting(op)), "{ops:?}");
            let mut image = old.clone();
            for op in &ops {
                image.apply(op);
            }
            assert!(image == *new, "the writes make the new image");
        }
    }

    #[test]
    fn same_config_twice_writes_nothing() {
        let services = [service("web", 80, &[(11, 1), (12, 2)]), service("dns", 53, &[(21, 1)])];
        let (ids, image) = plan(&Ids::default(), &services);
        let (_, again) = plan(&ids, &services);
        assert!(diff(&image, &again).is_empty());
    }

    #[test]
    fn drain_rewrites_only_the_table_and_removal_goes_top_down() {
        let (ids, before) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1)])]);
        let (ids, drained) = plan(&ids, &[service("web", 80, &[(11, 1), (12, 0)])]);
        let ops = diff(&before, &drained);
        // The backend's weight (read by lc) and the table: nothing else.
        assert!(
            matches!(ops.as_slice(), [Op::V4(FamilyOp::PutBackend(1, _)), Op::PutMaglev(0, _)]),
            "{} ops",
            ops.len()
        );
        let (_, gone) = plan(&ids, &[]);
        let ops = diff(&drained, &gone);
        assert!(
            matches!(
                ops.as_slice(),
                [
                    Op::V4(FamilyOp::DelService(_)),
                    Op::V4(FamilyOp::DelVip(_)),
                    Op::ClearMaglev(0),
                    Op::V4(FamilyOp::DelReal(_)),
                    Op::V4(FamilyOp::DelReal(_)),
                    Op::V4(FamilyOp::PutRealSlot(_, 0)),
                    Op::V4(FamilyOp::PutRealSlot(_, 0)),
                    Op::V4(FamilyOp::ClearBackend(0)),
                    Op::V4(FamilyOp::ClearBackend(1)),
                    Op::V4(FamilyOp::DelBackendAddr([10, 77, 2, 11])),
                    Op::V4(FamilyOp::DelBackendAddr([10, 77, 2, 12])),
                    // The VIP's and both backends' pre-filter slots.
                    Op::V4(FamilyOp::PutAddrFlags(_, 0)),
                    Op::V4(FamilyOp::PutAddrFlags(_, 0)),
                    Op::V4(FamilyOp::PutAddrFlags(_, 0)),
                ]
            ),
            "{ops:?}"
        );
    }

    /// `service` on the IPv6 VIP fd77:1::100, its backends on fd77:2::x.
    fn service6(name: &str, port: u16, backends: &[(u8, u32)]) -> crate::desired::model::Service {
        let mut s = service(name, port, backends);
        s.vip = "fd77:1::100".parse().unwrap();
        for (b, &(last, _)) in s.backends.iter_mut().zip(backends) {
            b.address = format!("fd77:2::{last:x}").parse().unwrap();
        }
        s
    }

    /// A service deleted as IPv4 and added as IPv6 in one apply, on the
    /// same service and backend ids (what `Ids` gives once every other id
    /// is taken, or an adopted data plane's numbering): the shared maps
    /// indexed by id (`lb_maglev`, the counters) never serve both at once.
    /// Every write to the IPv4 maps (the service gone first, its VIP, its
    /// backends, their addresses) comes before the first to the IPv6 ones
    /// and before the ids' tables and counters are taken over, and nothing
    /// of the IPv4 service is left behind; and back again.
    #[test]
    fn an_id_moving_between_families_leaves_its_old_family_first_and_nothing_behind() {
        let (_, as_v4) = plan(&Ids::default(), &[service("web", 80, &[(11, 1), (12, 1)])]);
        let (_, as_v6) = plan(&Ids::default(), &[service6("web", 80, &[(11, 1), (12, 1)])]);
        let ids = |image: &Image| -> (Vec<u32>, Vec<u32>) {
            let services = image.v4.services.values().chain(image.v6.services.values());
            let backends = image.v4.backends.keys().chain(image.v6.backends.keys());
            (services.map(|s| s.id).collect(), backends.copied().collect())
        };
        assert_eq!(ids(&as_v4), ids(&as_v6), "the same ids in both families");
        for (old, new, leaving_is_v4) in [(&as_v4, &as_v6, true), (&as_v6, &as_v4, false)] {
            let ops = diff(old, new);
            let leaving = |op: &Op| match op {
                Op::V4(_) => leaving_is_v4,
                Op::V6(_) => !leaving_is_v4,
                _ => false,
            };
            let last_leaving = ops.iter().rposition(leaving).expect("writes to the old family");
            // What the new holder gets: its family's entries, the id's
            // table and counters.
            let arriving = |op: &Op| match op {
                Op::V4(_) => !leaving_is_v4,
                Op::V6(_) => leaving_is_v4,
                Op::PutMaglev(..) | Op::ResetServiceTraffic(_) | Op::ResetBackendTraffic(_) => true,
                _ => false,
            };
            let first_other = ops.iter().position(arriving).expect("writes for the new family");
            assert!(last_leaving < first_other, "the old family is left first: {ops:#?}");
            let mut image = old.clone();
            for op in &ops {
                image.apply(op);
            }
            assert!(image == *new, "the writes make the new image: {ops:#?}");
            let old_family_empty = if leaving_is_v4 {
                image.v4 == FamilyImage::default()
            } else {
                image.v6 == FamilyImage::default()
            };
            assert!(old_family_empty, "nothing left behind in the old family's maps");
        }
    }
}
