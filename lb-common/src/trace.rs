//! The packet trace's kernel side of the bargain: what the controller
//! writes to switch it on and filter it (`TraceConf`, `lb_trace_conf`), what
//! each traced packet sends through the ring buffer (`TraceEvent`,
//! `lb_trace`), and each CPU's scratch and loss counts (`TraceCpu`,
//! `lb_trace_cpu`). Layout rules as in `abi`.

/// `TraceConf::flags`: only packets the data plane dropped.
pub const TRACE_DROPS_ONLY: u32 = 1;
/// `TraceConf::flags`: only packets with the client prefix as their source
/// or destination.
pub const TRACE_CLIENT: u32 = 2;

/// Capacity of `lb_trace`, bytes (a power of two, a multiple of the page):
/// about 4000 events the controller has not read yet.
pub const TRACE_RING_BYTES: u32 = 256 * 1024;

/// `TraceEvent::flags`: the ports (and, for TCP, the flags) were read.
pub const TRACE_PORTS: u8 = 1;
/// `TraceEvent::flags`: the packet opened a flow (placed by the scheduler).
pub const TRACE_NEW_FLOW: u8 = 2;
/// `TraceEvent::flags`: a backend's reply, its source turned back into the VIP.
pub const TRACE_REPLY: u8 = 4;

/// `TraceEvent::service_id`, `backend_id`: not known for this packet.
pub const TRACE_NO_ID: u32 = u32::MAX;

/// Slot 0 of `lb_trace_conf`. The data plane reads `on` where each program
/// starts and where it counts its verdict; everything else only when it is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConf {
    /// Zero: no packet is traced (the cost is that one read and a branch).
    pub on: u32,
    /// `TRACE_DROPS_ONLY` | `TRACE_CLIENT`.
    pub flags: u32,
    /// The client prefix (`TRACE_CLIENT`), IPv4 in the first 4 bytes.
    pub client: [u8; 16],
    /// 4 or 6: the family of `client`.
    pub client_family: u8,
    /// The prefix length, bits.
    pub client_len: u8,
    pub _pad: [u8; 2],
    /// Events each CPU may send per epoch tick; the rest are counted
    /// (`TraceCpu::rate_limited`).
    pub events_per_tick: u32,
}
const _: () = assert!(size_of::<TraceConf>() == 32);

/// One traced packet: where it came in, its tuple as it arrived (before
/// any rewrite), and what the data plane decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// Addresses as they arrived; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The interface it arrived on.
    pub ifindex: u32,
    /// The service and backend it was placed on or replied from
    /// (`TRACE_NO_ID`: none).
    pub service_id: u32,
    pub backend_id: u32,
    /// The decision: a `counter::Counter`'s index.
    pub counter: u32,
    /// Host order; zero unless `TRACE_PORTS`.
    pub sport: u16,
    pub dport: u16,
    /// 4, 6, or 0 for a frame that is not IP.
    pub family: u8,
    /// The transport protocol (after an IPv6 fragment header).
    pub proto: u8,
    pub tcp_flags: u8,
    /// `TRACE_PORTS` | `TRACE_NEW_FLOW` | `TRACE_REPLY`.
    pub flags: u8,
}
const _: () = assert!(size_of::<TraceEvent>() == 56);

/// Slot 0 of the per-CPU `lb_trace_cpu`: the event being built (the entry
/// program writes the tuple, the last program of the packet the decision),
/// the rate limit's state, and what was lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCpu {
    pub event: TraceEvent,
    /// The epoch tick `sent` counts in.
    pub epoch: u64,
    pub sent: u32,
    pub _pad: u32,
    /// Events over `events_per_tick`, not sent.
    pub rate_limited: u64,
    /// Events the ring buffer had no room for (the controller reads too slowly).
    pub ring_full: u64,
}
const _: () = assert!(size_of::<TraceCpu>() == 88);

/// Whether `addr` (of `family`) is in the prefix `conf` names: two masked
/// 64-bit compares (the data plane runs this for every packet while a
/// client is traced).
#[inline(always)]
pub fn client_matches(conf: &TraceConf, family: u8, addr: &[u8; 16]) -> bool {
    if family != conf.client_family {
        return false;
    }
    let len = u32::from(conf.client_len);
    let high = |a: &[u8; 16]| u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let low =
        |a: &[u8; 16]| u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let mask_high = match len {
        0 => 0,
        1..=63 => u64::MAX << (64 - len),
        _ => u64::MAX,
    };
    let mask_low = match len {
        0..=64 => 0,
        65..=127 => u64::MAX << (128 - len),
        _ => u64::MAX,
    };
    (high(addr) ^ high(&conf.client)) & mask_high == 0
        && (low(addr) ^ low(&conf.client)) & mask_low == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(client: [u8; 16], family: u8, len: u8) -> TraceConf {
        TraceConf { client, client_family: family, client_len: len, ..TraceConf::default() }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn a_prefix_matches_its_addresses_only() {
        let c = conf(v4([10, 77, 1, 0]), 4, 24);
        assert!(client_matches(&c, 4, &v4([10, 77, 1, 200])));
        assert!(!client_matches(&c, 4, &v4([10, 77, 2, 1])));
        // Of the other family: never.
        assert!(!client_matches(&c, 6, &v4([10, 77, 1, 200])));
        let host = conf(v4([10, 77, 1, 10]), 4, 32);
        assert!(client_matches(&host, 4, &v4([10, 77, 1, 10])));
        assert!(!client_matches(&host, 4, &v4([10, 77, 1, 11])));
        // A length that does not end on a byte: /23.
        let odd = conf(v4([10, 77, 2, 0]), 4, 23);
        assert!(client_matches(&odd, 4, &v4([10, 77, 3, 9])));
        assert!(!client_matches(&odd, 4, &v4([10, 77, 4, 9])));
        let all = conf([0; 16], 6, 0);
        assert!(client_matches(&all, 6, &[0xfd; 16]));
        // Across the two words: /64, /65, /127, /128.
        let mut base = [0u8; 16];
        base[0] = 0xfd;
        let mut other = base;
        other[8] = 0x80;
        assert!(client_matches(&conf(base, 6, 64), 6, &other));
        assert!(!client_matches(&conf(base, 6, 65), 6, &other));
        let mut last = base;
        last[15] = 1;
        assert!(client_matches(&conf(base, 6, 127), 6, &last));
        assert!(!client_matches(&conf(base, 6, 128), 6, &last));
        assert!(client_matches(&conf(base, 6, 128), 6, &base));
        let mut six = [0u8; 16];
        six[0] = 0xfd;
        six[1] = 0x77;
        let p = conf(six, 6, 16);
        let mut inside = six;
        inside[15] = 9;
        assert!(client_matches(&p, 6, &inside));
        inside[1] = 0x78;
        assert!(!client_matches(&p, 6, &inside));
    }
}
