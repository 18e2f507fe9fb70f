//! Full NAT (`forwarding = "fullnat"`): the client's packet leaves with
//! the backend as destination and an address of the service's SNAT pool,
//! with a port the data plane chose, as source; the backend answers that
//! address and port, wherever its own routes point, and the reply is
//! translated back (source: the VIP; destination: the client).
//!
//! Unlike NAT and direct routing, the reverse path is state: two maps per
//! family, written by the data plane when a flow takes a port and removed
//! by the controller when it expires (the data plane frees a port only to
//! take it at once, from a flow that never got past its first packet:
//! `reclaimable`):
//!
//! - `lb_fnat_fwd` (`lb_fnat_fwd6`): the client's flow -> its mapping (`FnatFlow`),
//!   which the client's next packets follow;
//! - `lb_fnat_rev` (`lb_fnat_rev6`): (backend, pool address and port) ->
//!   the client (`FnatRev`), which the backend's replies follow. The key
//!   is unique: a port is taken by inserting it here, and an insert that
//!   finds the key taken tries the next port.
//!
//! Ports are allocated per (pool address, backend address and port,
//! protocol): each backend can hold a whole port range of flows per pool
//! address. The first port tried is the flow's hash; then the next ones,
//! up to `SNAT_PROBES` in all (so a range of `SNAT_PROBES` ports or fewer
//! is used to its last port).

use crate::{
    abi::{CONN_STATES, CONN_SYN, Flow, expired},
    addr::Addr,
    hash::mix64,
};

/// The most addresses one SNAT pool holds.
pub const SNAT_ADDRS_MAX: usize = 4;
/// The most ports a new flow tries before its pool counts as exhausted.
pub const SNAT_PROBES: u32 = 64;
/// Capacity of each full-NAT map (flows, per family) the object is built
/// with, and `dataplane.fullnat_max`'s default: the controller sizes the
/// maps at load from that setting.
pub const DEFAULT_FULLNAT_MAX: u32 = 1 << 16;
/// The largest `dataplane.fullnat_max`: four maps of that many entries,
/// 256 bytes of keys and values for each (both families' two maps), and
/// the kernel's own share of each entry (128 MiB of locked memory in all,
/// allocated at start); and the controller's expiry reads every mapping
/// each second (measured at 60,000: under 1 µs each).
pub const MAX_FULLNAT_MAX: u32 = 1 << 18;
/// A mapping whose client sent nothing but its SYN (or whose UDP
/// datagrams its backend never answered) this many epoch ticks ago may be
/// taken by another flow when its port is wanted: a real client answers
/// the SYN-ACK within a round trip, a forged one never does, so a flood
/// of forged SYNs holds each port it takes about this long, not the SYN
/// state's whole timeout.
pub const FNAT_SYN_RECLAIM_TICKS: u32 = 64;

/// Value of `lb_snat` (`lb_snat6`), indexed by service id: the pool of a
/// full-NAT service. Empty (`count` 0) for the other services.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPool<A = [u8; 4]> {
    pub addrs: [A; SNAT_ADDRS_MAX],
    /// Addresses in use, from the first.
    pub count: u32,
    /// The port range: `port_min ..= port_min + port_count - 1`.
    pub port_min: u16,
    pub port_count: u16,
}
const _: () = assert!(size_of::<SnatPool>() == 24);
const _: () = assert!(size_of::<SnatPool<[u8; 16]>>() == 72);

/// Key of `lb_fnat_rev`: a translated flow as its backend's replies carry
/// it (from the backend, to the pool address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FnatKey<A = [u8; 4]> {
    pub backend: A,
    pub pool: A,
    pub backend_port: u16,
    pub pool_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FnatKey>() == 16);
const _: () = assert!(size_of::<FnatKey<[u8; 16]>>() == 40);

/// Value of `lb_fnat_fwd` (keyed by the client's `Flow`): where the flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FnatFlow<A = [u8; 4]> {
    pub pool: A,
    pub backend: A,
    pub pool_port: u16,
    pub backend_port: u16,
    pub backend_id: u32,
    /// The epoch tick of the client's last packet.
    pub last_seen: u32,
    /// `CONN_*`, from both directions (`abi::next_state`).
    pub state: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FnatFlow>() == 24);
const _: () = assert!(size_of::<FnatFlow<[u8; 16]>>() == 48);

impl<A: Addr> FnatFlow<A> {
    /// The reverse map's key of this mapping.
    pub fn reverse_key(&self, proto: u8) -> FnatKey<A> {
        FnatKey {
            backend: self.backend,
            pool: self.pool,
            backend_port: self.backend_port,
            pool_port: self.pool_port,
            proto,
            _pad: [0; 3],
        }
    }
}

/// Value of `lb_fnat_rev`: who the backend's replies go back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FnatRev<A = [u8; 4]> {
    pub client: A,
    pub vip: A,
    pub client_port: u16,
    pub vport: u16,
    pub backend_id: u32,
    pub service_id: u32,
    /// The epoch tick of the backend's last packet (of the mapping's
    /// birth until then).
    pub last_seen: u32,
}
const _: () = assert!(size_of::<FnatRev>() == 24);
const _: () = assert!(size_of::<FnatRev<[u8; 16]>>() == 48);
// The data plane claims a port by a compare-and-exchange of `service_id`
// and `last_seen` as one 64-bit word: 8-aligned in a map's value (which
// starts 8-aligned, after a key of a multiple of 8 bytes), in that order.
const _: () = assert!(core::mem::offset_of!(FnatRev, service_id).is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(FnatRev<[u8; 16]>, service_id).is_multiple_of(8));
const _: () = assert!(
    core::mem::offset_of!(FnatRev, last_seen) == core::mem::offset_of!(FnatRev, service_id) + 4
);
const _: () = assert!(
    size_of::<FnatKey>().is_multiple_of(8) && size_of::<FnatKey<[u8; 16]>>().is_multiple_of(8)
);
// ... and the word is read as `service_id | last_seen << 32`.
#[cfg(not(target_endian = "little"))]
compile_error!("full NAT's port claim reads (service_id, last_seen) as a little-endian word");

impl<A: Addr> FnatRev<A> {
    /// The client's flow, as the client sends it.
    pub fn client_flow(&self, proto: u8) -> Flow<A> {
        Flow {
            src: self.client,
            dst: self.vip,
            sport: self.client_port,
            dport: self.vport,
            proto,
            _pad: [0; 3],
        }
    }
}

/// Where a new flow's search for a port starts: the pool address (its
/// index) and the first port's offset in the range. From the flow's hash,
/// so a flow's retransmitted first packet that lost its mapping tries the
/// same ports again.
#[inline(always)]
pub fn snat_start<A: Addr>(flow: &Flow<A>, pool: &SnatPool<A>) -> (u32, u32) {
    let hash = mix64(
        crate::abi::addr_pair(&flow.src, &flow.dst, A::wire_fold)
            ^ ((u64::from(flow.sport) << 24)
                | (u64::from(flow.dport) << 8)
                | u64::from(flow.proto)),
    );
    let addr = if pool.count == 0 { 0 } else { (hash >> 32) as u32 % pool.count };
    let offset = if pool.port_count == 0 { 0 } else { hash as u32 % u32::from(pool.port_count) };
    (addr, offset)
}

/// The `probe`th port tried from offset `start` (`snat_start`).
#[inline(always)]
pub fn snat_port(pool: &SnatPool<impl Addr>, start: u32, probe: u32) -> u16 {
    let count = u32::from(pool.port_count).max(1);
    let offset = (start + probe) % count;
    pool.port_min.wrapping_add(offset as u16)
}

/// How many ports a new flow tries in `pool`.
#[inline(always)]
pub fn snat_probes(pool: &SnatPool<impl Addr>) -> u32 {
    let count = u32::from(pool.port_count);
    if count < SNAT_PROBES { count } else { SNAT_PROBES }
}

/// Whether a mapping may be taken by a new flow's SYN now
/// (`FNAT_SYN_RECLAIM_TICKS`): its client never got past its SYN.
#[inline(always)]
pub const fn reclaimable(state: u8, last_seen: u32, now: u32) -> bool {
    state == CONN_SYN && expired(now, last_seen, FNAT_SYN_RECLAIM_TICKS)
}

/// Whether a mapping (its state, its client's and its backend's last
/// packets) has expired at `now` under the per-state `timeouts`, as the
/// connection table's entries do. A closing or closed flow keeps its port
/// for its state's timeout after its last packet, the way TIME_WAIT
/// keeps a socket's: a late segment of the old flow then still finds the
/// old client, never a new flow on the same port.
pub fn mapping_expired(
    state: u8,
    client_seen: u32,
    backend_seen: u32,
    now: u32,
    timeouts: &[u32; CONN_STATES as usize],
) -> bool {
    let timeout = timeouts[usize::from(state) % CONN_STATES as usize];
    // The clock runs from whichever side spoke last: an open flow lives
    // while either side still speaks.
    let last = if expired(client_seen, backend_seen, 0) { client_seen } else { backend_seen };
    expired(now, last, timeout)
}

#[cfg(feature = "user")]
mod pod {
    use super::{FnatFlow, FnatKey, FnatRev, SnatPool};
    use crate::addr::Addr;

    macro_rules! pod_of_addr {
        ($($t:ident),*) => {$(
            // SAFETY: repr(C), only integer fields, no implicit padding for
            // either address type (sizes asserted above).
            unsafe impl<A: Addr> aya::Pod for $t<A> {}
        )*};
    }
    pod_of_addr!(SnatPool, FnatKey, FnatFlow, FnatRev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{CONN_CLOSING, CONN_ESTABLISHED, PROTO_TCP};

    fn pool(count: u16) -> SnatPool {
        SnatPool {
            addrs: [[10, 77, 2, 1], [10, 77, 2, 2], [0; 4], [0; 4]],
            count: 2,
            port_min: 61_000,
            port_count: count,
        }
    }

    fn flow(sport: u16) -> Flow {
        Flow {
            src: [10, 77, 1, 10],
            dst: [10, 77, 1, 100],
            sport,
            dport: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn a_small_range_is_searched_to_its_last_port() {
        let p = pool(10);
        assert_eq!(snat_probes(&p), 10);
        let (_, start) = snat_start(&flow(40_000), &p);
        let mut ports: [u16; 10] = core::array::from_fn(|i| snat_port(&p, start, i as u32));
        ports.sort_unstable();
        let want: [u16; 10] = core::array::from_fn(|i| 61_000 + i as u16);
        assert_eq!(ports, want);
    }

    #[test]
    fn a_large_range_is_searched_from_the_flow_hash_and_stays_in_range() {
        let p = SnatPool { port_min: 1024, port_count: u16::MAX - 1023, ..pool(0) };
        assert_eq!(snat_probes(&p), SNAT_PROBES);
        let mut addrs = [0_u32; 2];
        let mut starts = [0_u32; 8];
        for sport in 0..4000 {
            let (addr, start) = snat_start(&flow(sport), &p);
            addrs[addr as usize] += 1;
            starts[(start * 8 / u32::from(p.port_count)) as usize] += 1;
            for probe in 0..SNAT_PROBES {
                assert!(snat_port(&p, start, probe) >= 1024);
            }
        }
        assert!(addrs.iter().all(|&n| (1800..2200).contains(&n)), "{addrs:?}");
        assert!(starts.iter().all(|&n| (400..600).contains(&n)), "{starts:?}");
    }

    #[test]
    fn only_a_syn_only_mapping_past_its_grace_is_reclaimable() {
        assert!(!reclaimable(CONN_SYN, 100, 100 + FNAT_SYN_RECLAIM_TICKS));
        assert!(reclaimable(CONN_SYN, 100, 101 + FNAT_SYN_RECLAIM_TICKS));
        assert!(!reclaimable(CONN_ESTABLISHED, 100, 1000));
    }

    #[test]
    fn a_mapping_lives_while_either_side_speaks() {
        let mut timeouts = [0; CONN_STATES as usize];
        timeouts[usize::from(CONN_ESTABLISHED)] = 100;
        timeouts[usize::from(CONN_CLOSING)] = 10;
        // The client quiet for 150 ticks, the backend for 50: alive.
        assert!(!mapping_expired(CONN_ESTABLISHED, 50, 150, 200, &timeouts));
        assert!(!mapping_expired(CONN_ESTABLISHED, 150, 50, 200, &timeouts));
        assert!(mapping_expired(CONN_ESTABLISHED, 50, 90, 200, &timeouts));
        // Closing: its shorter timeout, from the last word of either side.
        assert!(!mapping_expired(CONN_CLOSING, 185, 192, 200, &timeouts));
        assert!(mapping_expired(CONN_CLOSING, 185, 189, 200, &timeouts));
        // A stamp a tick ahead of the walk's clock is live.
        assert!(!mapping_expired(CONN_CLOSING, 201, 0, 200, &timeouts));
    }
}
