//! Full NAT's mappings (`lb_fnat_fwd`, `lb_fnat_rev` and the IPv6 pair,
//! see `lb_common::fullnat`): the data plane takes a port by writing a
//! mapping, and only this controller gives it back, once the mapping has
//! expired. A flow's port is therefore never another flow's while a late
//! packet of the flow could still arrive: a mapping lives its state's idle
//! timeout (`lb_timeouts`, the connection table's) after the last packet
//! of either side, as the kernel's conntrack and IPVS keep a closed
//! connection for its TIME_WAIT.
use aya::{
    Ebpf, Pod,
    maps::{HashMap, IterableMap as _, MapData},
};
use lb_common::{
    abi::{CONN_STATES, Flow, expired},
    addr::Addr,
    fullnat::{FnatFlow, FnatKey, FnatRev, mapping_expired},
};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{deleted, typed};
use crate::write::dataplane::{DataplaneError, sys};

/// A flow's entry: the client's flow and its mapping.
type FlowEntry<A> = (Flow<A>, FnatFlow<A>);
/// A reverse entry: the port taken, and whose.
type PortEntry<A> = (FnatKey<A>, FnatRev<A>);

/// One family's mapping maps.
pub struct FullNatMaps<A: Addr + Pod> {
    names: (&'static str, &'static str),
    fwd: HashMap<MapData, Flow<A>, FnatFlow<A>>,
    rev: HashMap<MapData, FnatKey<A>, FnatRev<A>>,
    /// The reverse entries of the flows whose entries the last expiry
    /// removed, with their clock then: freed at the next one if still
    /// those flows' and quiet (see `expire`).
    pending: Vec<(FnatKey<A>, Flow<A>, u32)>,
}

/// The names of each family's maps, as the object has them.
pub const V4: (&str, &str) = ("lb_fnat_fwd", "lb_fnat_rev");
pub const V6: (&str, &str) = ("lb_fnat_fwd6", "lb_fnat_rev6");

impl<A: Addr + Pod> FullNatMaps<A> {
    /// `lb_fnat_fwd` (`lb_fnat_fwd6`), for a reader's handle of its own.
    pub fn flows(&self) -> (&'static str, std::os::fd::BorrowedFd<'_>) {
        use std::os::fd::AsFd as _;
        (self.names.0, self.fwd.map().fd().as_fd())
    }

    pub fn open(
        ebpf: &mut Ebpf,
        names: (&'static str, &'static str),
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            names,
            fwd: typed(ebpf, names.0)?,
            rev: typed(ebpf, names.1)?,
            pending: Vec::new(),
        })
    }

    /// (flows' entries, reverse entries).
    pub fn len(&self) -> Result<(usize, usize), DataplaneError> {
        Ok((self.read_flows()?.len(), self.read_ports()?.len()))
    }

    /// Every flow's entry, a few thousand per call (`sys::lookup_batch`).
    fn read_flows(&self) -> Result<Vec<FlowEntry<A>>, DataplaneError> {
        sys::lookup_batch(self.fwd.map())
            .map_err(|e| DataplaneError::kernel(format!("reading {}", self.names.0), e))
    }

    /// Every reverse entry (a port taken), a few thousand per call.
    fn read_ports(&self) -> Result<Vec<PortEntry<A>>, DataplaneError> {
        sys::lookup_batch(self.rev.map())
            .map_err(|e| DataplaneError::kernel(format!("reading {}", self.names.1), e))
    }

    /// Removes the mappings expired at `now` (epoch ticks) under the
    /// per-state `timeouts`: the flow's entry first (its client's next
    /// packet, if one comes, takes a new port, or is reset), then, at the
    /// next expiry, the reverse entry if it is still the flow's, which
    /// frees the port. A reverse entry no flow's entry points at (a flow
    /// that moved to another backend, a removal cut short) goes once it has
    /// been quiet for the longest state's timeout. Both maps are read whole
    /// a few thousand entries per call (`sys::lookup_batch`): each pass
    /// costs two calls per few thousand mappings, and three per flow that
    /// ends (read again, removed, its port freed). Returns how many ports
    /// were freed.
    pub fn expire(
        &mut self,
        now: u32,
        timeouts: &[u32; CONN_STATES as usize],
    ) -> Result<usize, DataplaneError> {
        let flows = self.read_flows()?;
        let reverse: FxHashMap<FnatKey<A>, FnatRev<A>> = self.read_ports()?.into_iter().collect();
        // The ports of the flows removed last time, if still theirs and
        // quiet since. In two steps, a second apart: a data plane's
        // `reclaim` of such a port needs its flow's entry, so none starts
        // once that is gone, and one under way then (a few instructions)
        // has long rewritten the reverse entry (to its new flow, a fresh
        // clock) by the read above.
        let mut freed = 0;
        for (key, flow, seen) in std::mem::take(&mut self.pending) {
            let still = reverse
                .get(&key)
                .is_some_and(|r| r.client_flow(flow.proto) == flow && r.last_seen == seen);
            if still {
                deleted(self.rev.remove(&key), &format!("deleting from {}", self.names.1))?;
                freed += 1;
            }
        }
        let mut mapped = FxHashSet::default();
        for (flow, mapping) in &flows {
            let key = mapping.reverse_key(flow.proto);
            mapped.insert(key);
            let backend_seen = reverse.get(&key).map_or(mapping.last_seen, |r| r.last_seen);
            if !mapping_expired(mapping.state, mapping.last_seen, backend_seen, now, timeouts) {
                continue;
            }
            // Read again: a packet since the batch read makes the flow live
            // (its backend's side moves only the reverse entry's clock,
            // read a moment ago).
            let Ok(mapping) = self.fwd.get(flow, 0) else { continue };
            if !mapping_expired(mapping.state, mapping.last_seen, backend_seen, now, timeouts) {
                continue;
            }
            let owner = reverse.get(&key).filter(|r| r.client_flow(flow.proto) == *flow);
            deleted(self.fwd.remove(flow), &format!("deleting from {}", self.names.0))?;
            // Its port, next time, if it is still this flow's then.
            if let Some(owner) = owner {
                self.pending.push((key, *flow, owner.last_seen));
            }
        }
        let longest = timeouts.iter().copied().max().unwrap_or(0);
        for (key, client) in &reverse {
            if mapped.contains(key) || !expired(now, client.last_seen, longest) {
                continue;
            }
            // Read again: still quiet, and still no flow's.
            let Ok(client) = self.rev.get(key, 0) else { continue };
            let flow = client.client_flow(key.proto);
            let owned = self.fwd.get(&flow, 0).is_ok_and(|m| m.reverse_key(flow.proto) == *key);
            if owned || !expired(now, client.last_seen, longest) {
                continue;
            }
            deleted(self.rev.remove(key), &format!("deleting from {}", self.names.1))?;
            freed += 1;
        }
        Ok(freed)
    }
}
