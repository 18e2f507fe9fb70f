//! What happened to each packet: one per-CPU counter per outcome. The kernel
//! program indexes `lb_counters` with these; `lb-ctl` names them in its
//! output from the same list, so there is no hand-kept copy to drift.

/// What the data plane did with a packet, a counter's family: the XDP
/// action of a packet that stops at the counter, the metric families and the
/// page's colours all follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Rewritten and sent on, to a backend or to a client.
    Forwarded,
    /// Answered by the data plane itself (a reset, an ICMP error).
    Answered,
    /// Left to the kernel untouched (`XDP_PASS`).
    Passed,
    /// Dropped (`XDP_DROP`), each for its reason.
    Dropped,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $name:literal => $kind:ident),* $(,)?) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($(#[$doc])* $variant),* }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),*];

            /// Stable snake_case name, used as a metrics label and in the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name),* }
            }

            /// What the data plane did with a packet counted here. Inlined:
            /// called from several places, LLVM made it a BPF-to-BPF call
            /// that every packet passed to the kernel paid (+17 ns IPv4,
            /// +26 IPv6 in the benchmark).
            #[inline(always)]
            pub const fn kind(self) -> Kind {
                match self { $(Counter::$variant => Kind::$kind),* }
            }
        }
    };
}

counters! {
    /// Rewritten and sent back out of the interface it came in on.
    Tx = "tx" => Forwarded,
    /// Rewritten and redirected to another interface.
    Redirect = "redirect" => Forwarded,
    /// A TCP packet of a flow whose backend is DOWN, answered with a reset.
    RstBackendDown = "rst_backend_down" => Answered,
    /// A TCP packet of a flow whose backend was removed, answered with a reset.
    RstBackendGone = "rst_backend_gone" => Answered,
    /// No usable backend, `on_no_backend = "reject"`: a TCP reset sent.
    RejectTcp = "reject_tcp" => Answered,
    /// No usable backend, `on_no_backend = "reject"`: ICMP port unreachable sent.
    RejectUdp = "reject_udp" => Answered,
    /// Rewritten, handed to tc to resolve the next hop's neighbour entry.
    SlowPathNeigh = "slow_path_neigh" => Forwarded,
    /// Neither IPv4 nor IPv6 (ARP, VLAN...): left to the kernel. (IPv6
    /// is counted here too if `lb_xdp6` is not in `lb_progs`.)
    PassNotIpv4 = "pass_not_ipv4" => Passed,
    /// IP but neither TCP nor UDP, nor an ICMP error about one of our
    /// flows (ICMPv6: none yet; an extension header the IPv6 parse does
    /// not step over): left to the kernel.
    PassNotTcpUdp = "pass_not_tcp_udp" => Passed,
    /// TCP/UDP that is neither for a service nor a reply from a backend
    /// (a full-NAT backend's packet to a port outside its pool's range,
    /// the host's own traffic, included).
    PassNotService = "pass_not_service" => Passed,
    /// Headers truncated or inconsistent: left to the kernel, which drops or answers.
    PassMalformed = "pass_malformed" => Passed,
    /// TTL <= 1: left to the kernel untouched. A backend's reply is then
    /// answered with ICMP time exceeded; a client's packet to a VIP is
    /// delivered locally (the VIP is a local address) and answered as such.
    PassTtlExpired = "pass_ttl_expired" => Passed,
    /// The destination is this host (e.g. a backend answering the
    /// controller's health check): left to the kernel untouched.
    PassLocal = "pass_local" => Passed,
    /// The FIB has no usable route (unreachable, forwarding disabled, MTU...).
    PassFibFailed = "pass_fib_failed" => Passed,
    /// A later fragment of a TCP segment to a VIP that finds no decision of
    /// its datagram's first fragment: it came before its first, or its
    /// entry expired (2 s) or was evicted. XDP cannot hold it back, and the
    /// kernel would answer the reassembled segment itself (see `frag`).
    DropFragment = "drop_fragment" => Dropped,
    /// A fragment of a UDP datagram to a VIP whose first fragment had not
    /// come when a later one did (the later one, those after it, and the
    /// first when it comes): passed to the kernel, which reassembles the
    /// datagram (within `net.ipv4.ipfrag_high_thresh` and `ipfrag_time`)
    /// for the controller to place and send on (see `frag`).
    PassFragmentToKernel = "pass_fragment_to_kernel" => Passed,
    /// The service has no usable backend.
    DropNoBackend = "drop_no_backend" => Dropped,
    /// A TCP packet of a flow whose backend is DOWN that no reset could answer
    /// (IPv4 options).
    DropBackendDown = "drop_backend_down" => Dropped,
    /// A packet too big for its next link, without Don't Fragment: the
    /// data plane does not fragment (the FIB's MTU check).
    DropTooBig = "drop_too_big" => Dropped,
    /// A frame that arrived carrying the slow path's mark in its MAC
    /// addresses (`abi::NeighMark`): only `lb_xdp` may hand such a frame to
    /// `lb_neigh`, so this one is forged.
    DropForgedMark = "drop_forged_mark" => Dropped,
    /// Direct routing to a backend the FIB reaches only through a gateway
    /// (a `dsr` backend must share a link with the load balancer).
    DropDsrNotOnLink = "drop_dsr_not_on_link" => Dropped,
    /// A packet to a VIP or from a backend whose headers do not hold
    /// together: an IPv4 header length below 20 bytes or past the packet, a
    /// total length past the frame or short of the headers, a TCP data
    /// offset below 5 words or past the packet, a UDP length short of its
    /// header or past the packet. Never forwarded, never an entry.
    DropMalformed = "drop_malformed" => Dropped,
    /// A packet to a VIP from a source no client can have: 0.0.0.0/8,
    /// 127.0.0.0/8, multicast (224.0.0.0/4) or 240.0.0.0/4 (broadcast
    /// included).
    DropMartianSource = "drop_martian_source" => Dropped,
    /// A packet to a VIP whose source is a VIP: forged (the load balancer
    /// sends nothing from a VIP through itself), the start of a loop between
    /// services.
    DropSourceVip = "drop_source_vip" => Dropped,
    /// A packet to a VIP from a backend's own service address and port: no
    /// client sends from there (it would be a backend answering a client
    /// whose address is a VIP, or a forgery). Taken, it would have backends
    /// answer each other through the load balancer, a loop of
    /// CVE-2024-2169's class (`src=web1:5353 dst=VIP:5353`).
    DropBackendPortToVip = "drop_backend_port_to_vip" => Dropped,
    /// An ICMP error (destination unreachable, time exceeded) about a reply
    /// the load balancer sent from a VIP: translated (outer destination,
    /// quoted source address and port become the backend's) and sent to
    /// the backend that owns the flow.
    IcmpToBackend = "icmp_to_backend" => Forwarded,
    /// An ICMP error about a client's packet, from the backend side
    /// (the backend or a router before it): translated (quoted destination
    /// and the outer source become the VIP's) and sent to the client.
    IcmpToClient = "icmp_to_client" => Forwarded,
    /// An ICMP error that quotes no flow of ours, or that could not be
    /// translated (IPv4 options, a quote cut short): left to the kernel.
    PassIcmpNotOurs = "pass_icmp_not_ours" => Passed,
    /// A packet with Don't Fragment set, too big for the next link:
    /// answered with ICMP "fragmentation needed" and the link's MTU, from
    /// the VIP, to whoever sent it (a client, or a backend for its reply).
    FragNeeded = "frag_needed" => Answered,
    /// An answer (reset, ICMP error) not sent: this CPU has sent its budget
    /// for this tick (`dataplane.answers_per_second`). The packet is dropped.
    DropAnswerBudget = "drop_answer_budget" => Dropped,
    /// A packet to a VIP or a backend's reply that fails the reverse-path
    /// check (`dataplane.reverse_path`): the route back to its source leaves
    /// by another interface than the one it arrived on (strict: a backend's
    /// address arriving from the client side, a client's from the backend
    /// side), there is no route back, or the source is an address of the
    /// load balancer.
    DropReversePath = "drop_reverse_path" => Dropped,
    /// A packet of ours (to a VIP, from a backend) in a frame sent to a
    /// link-layer broadcast or multicast address: a router forwards only
    /// frames sent to its own address.
    DropLinkGroup = "drop_link_group" => Dropped,
    /// A TCP segment to a VIP or from a backend whose flags no connection
    /// sends (RFC 9293): SYN with FIN or RST, or neither SYN, RST nor ACK
    /// (no flags at all). Scans and fingerprinting; never forwarded.
    DropTcpFlags = "drop_tcp_flags" => Dropped,
    /// An answer not sent because of where it would go: to a backend's
    /// address, a martian or a VIP. The packet is dropped.
    DropAnswerForbidden = "drop_answer_forbidden" => Dropped,
    /// A backend's reply whose destination is a VIP or a backend's address
    /// (`src=web1:8080 dst=web2:5353`): not rewritten, dropped. Rewritten, it
    /// would let anyone on the backend side send "from the VIP" to a
    /// backend, which trusts the VIP's clients' traffic; a backend as a
    /// client of a VIP gets no reply either.
    DropReplyToOurs = "drop_reply_to_ours" => Dropped,
    /// A new flow to a service whose every usable backend is at its
    /// `max_conns`, `on_no_backend = "drop"` (with `"reject"`:
    /// `reject_backends_full`).
    DropBackendsFull = "drop_backends_full" => Dropped,
    /// A packet to a service with `allowed_sources` from a source none of
    /// them holds.
    DropSourceNotAllowed = "drop_source_not_allowed" => Dropped,
    /// A full-NAT service's new flow found no free port in its pool (every
    /// port tried is held, or the mapping maps are full), and the service
    /// drops rather than rejects (`on_no_backend`; with `"reject"`:
    /// `reject_snat_exhausted`).
    DropSnatExhausted = "drop_snat_exhausted" => Dropped,
    /// From a full-NAT backend to a port of its service's pool range
    /// (`snat_ports`) that no mapping of it holds: not a translated flow
    /// (an expired one, or a stray packet), the kernel's. Outside the
    /// range no flow can be (the load balancer's own connections, its
    /// health checks among them, share the pool addresses): such a packet
    /// is `pass_not_service`.
    PassFullnatUnknown = "pass_fullnat_unknown" => Passed,
    /// A TCP segment other than a SYN of a full-NAT flow that has no
    /// mapping (expired, or the flow met mid-way): the backend never had
    /// this connection from us, so the client is reset.
    RstFullnatUnknown = "rst_fullnat_unknown" => Answered,
    /// A full-NAT service's new flow found no free port in its pool (as
    /// `drop_snat_exhausted`), `on_no_backend = "reject"`: a TCP reset or
    /// an ICMP port unreachable sent, counted apart from `reject_tcp` and
    /// `reject_udp` so that a spent pool is told from a service without
    /// a backend.
    RejectSnatExhausted = "reject_snat_exhausted" => Answered,
    /// A new flow to a service whose every usable backend is at its
    /// `max_conns` (as `drop_backends_full`), `on_no_backend = "reject"`:
    /// a TCP reset or an ICMP port unreachable sent, counted apart from
    /// `reject_tcp` and `reject_udp` (no usable backend at all), as
    /// `reject_snat_exhausted` is.
    RejectBackendsFull = "reject_backends_full" => Answered,
}

impl Counter {
    pub const COUNT: u32 = Counter::ALL.len() as u32;

    /// The counter named `name` (as `name` spells it).
    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.iter().copied().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::{Counter, Kind};

    /// Metric labels and the CLI strip `drop_` to name a drop's reason, and
    /// operators read the prefix: a counter's name must say its kind.
    #[test]
    fn every_name_says_its_kind() {
        for &counter in Counter::ALL {
            let name = counter.name();
            let said = if name.starts_with("drop_") {
                Some(Kind::Dropped)
            } else if name.starts_with("pass_") {
                Some(Kind::Passed)
            } else {
                None
            };
            match counter.kind() {
                kind @ (Kind::Dropped | Kind::Passed) => assert_eq!(said, Some(kind), "{name}"),
                kind => assert_eq!(said, None, "{name} is {kind:?}"),
            }
        }
    }
}
