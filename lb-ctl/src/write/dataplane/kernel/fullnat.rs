//! Full NAT's mappings (`lb_fnat_fwd`, `lb_fnat_rev` and the IPv6 pair,
//! see `lb_common::fullnat`): the data plane takes a port by writing a
//! mapping, and only this controller gives it back, once the mapping has
//! expired. A flow's port is therefore never another flow's while a late
//! packet of the flow could still arrive: a mapping lives its state's idle
//! timeout (`lb_timeouts`, the connection table's) after the last packet
//! of either side, as the kernel's conntrack and IPVS keep a closed
//! connection for its TIME_WAIT.
use std::collections::HashMap;

use aya::{Ebpf, Pod, maps::MapData};
use lb_common::{
    abi::{CONN_STATES, Flow, expired},
    addr::Addr,
    fullnat::{FnatFlow, FnatKey, FnatRev, mapping_expired},
};

use super::{deleted, typed};
use crate::write::dataplane::{DataplaneError, sys};

/// Entries read a call in an expiry's walk: one call per 4096 mappings.
const BATCH: usize = 4096;

/// One family's mapping maps.
pub struct FullNatMaps<A: Addr + Pod> {
    names: (&'static str, &'static str),
    fwd: aya::maps::HashMap<MapData, Flow<A>, FnatFlow<A>>,
    rev: aya::maps::HashMap<MapData, FnatKey<A>, FnatRev<A>>,
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
        use aya::maps::IterableMap as _;
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

    /// (flows' entries, reverse entries): how many mappings and ports are
    /// held (each map read whole; for tests and tools, not the expiry).
    pub fn len(&self) -> Result<(usize, usize), DataplaneError> {
        let reading = |name: &str| {
            let name = name.to_owned();
            move |e| DataplaneError::kernel(format!("reading {name}"), e)
        };
        let flows = sys::hash_entries(&self.fwd, BATCH).map_err(reading(self.names.0))?;
        let ports = sys::hash_entries(&self.rev, BATCH).map_err(reading(self.names.1))?;
        Ok((flows.len(), ports.len()))
    }

    /// Removes the mappings expired at `now` (epoch ticks) under the
    /// per-state `timeouts`: the flow's entry first (its client's next
    /// packet, if one comes, takes a new port, or is reset), then, at the
    /// next expiry, the reverse entry if it is still the flow's, which
    /// frees the port. A
    /// reverse entry no flow's entry points at (a flow that moved to
    /// another backend, a removal cut short) goes once it has been quiet
    /// for the longest state's timeout. Each entry is read again just
    /// before it goes: a data plane's write in between keeps it. Returns how many ports
    /// were freed.
    pub fn expire(
        &mut self,
        now: u32,
        timeouts: &[u32; CONN_STATES as usize],
    ) -> Result<usize, DataplaneError> {
        let reading = |name: &str| {
            let name = name.to_owned();
            move |e| DataplaneError::kernel(format!("reading {name}"), e)
        };
        // Both maps read whole first, a batch of entries a call (an entry
        // at a time, a pass cost 2 to 3 calls a mapping: `sys`), then
        // judged here; only what looks expired is read again, one by one,
        // below, before it goes. Each reverse entry is hashed twice (once
        // in, once found by its flow): SipHash, as the keys are the
        // clients' to choose.
        let flows = sys::hash_entries(&self.fwd, BATCH).map_err(reading(self.names.0))?;
        let mut reverse: HashMap<FnatKey<A>, (FnatRev<A>, bool)> =
            sys::hash_entries(&self.rev, BATCH)
                .map_err(reading(self.names.1))?
                .into_iter()
                .map(|(key, client)| (key, (client, false)))
                .collect();
        let mut expired_flows = Vec::new();
        for (flow, mapping) in flows {
            let key = mapping.reverse_key(flow.proto);
            let backend_seen = match reverse.get_mut(&key) {
                Some((client, mapped)) => {
                    *mapped = true;
                    client.last_seen
                }
                None => mapping.last_seen,
            };
            if mapping_expired(mapping.state, mapping.last_seen, backend_seen, now, timeouts) {
                expired_flows.push((flow, key));
            }
        }
        let longest = timeouts.iter().copied().max().unwrap_or(0);
        let orphans: Vec<FnatKey<A>> = reverse
            .iter()
            .filter(|(_, (client, mapped))| !mapped && expired(now, client.last_seen, longest))
            .map(|(key, _)| *key)
            .collect();
        // The ports of the flows removed last time, if still theirs and
        // quiet since. In two steps, a second apart: a data plane's
        // `reclaim` of such a port needs its flow's entry, so none starts
        // once that is gone, and one under way then (a few instructions)
        // has long rewritten the reverse entry (to its new flow, a fresh
        // clock) by now.
        let mut freed = 0;
        for (key, flow, seen) in std::mem::take(&mut self.pending) {
            let still = self
                .rev
                .get(&key, 0)
                .is_ok_and(|r| r.client_flow(flow.proto) == flow && r.last_seen == seen);
            if still {
                deleted(self.rev.remove(&key), &format!("deleting from {}", self.names.1))?;
                freed += 1;
            }
        }
        for (flow, key) in expired_flows {
            // Read again: a packet since the walk makes the flow live.
            let Ok(mapping) = self.fwd.get(&flow, 0) else { continue };
            if !self.expired(&mapping, &key, now, timeouts) {
                continue;
            }
            let owner = self.rev.get(&key, 0).ok().filter(|r| r.client_flow(flow.proto) == flow);
            deleted(self.fwd.remove(&flow), &format!("deleting from {}", self.names.0))?;
            // Its port, next time, if it is still this flow's then.
            if let Some(owner) = owner {
                self.pending.push((key, flow, owner.last_seen));
            }
        }
        for key in orphans {
            // Read again: still quiet, and still no flow's.
            let Ok(client) = self.rev.get(&key, 0) else { continue };
            let flow = client.client_flow(key.proto);
            let owned = self.fwd.get(&flow, 0).is_ok_and(|m| m.reverse_key(flow.proto) == key);
            if owned || !expired(now, client.last_seen, longest) {
                continue;
            }
            deleted(self.rev.remove(&key), &format!("deleting from {}", self.names.1))?;
            freed += 1;
        }
        Ok(freed)
    }

    /// Whether `mapping` (whose reverse entry is `key`) has expired.
    fn expired(
        &self,
        mapping: &FnatFlow<A>,
        key: &FnatKey<A>,
        now: u32,
        timeouts: &[u32; CONN_STATES as usize],
    ) -> bool {
        let backend_seen = self.rev.get(key, 0).map_or(mapping.last_seen, |r| r.last_seen);
        mapping_expired(mapping.state, mapping.last_seen, backend_seen, now, timeouts)
    }
}
