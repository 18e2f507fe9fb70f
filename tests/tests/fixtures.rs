//! Packet fixtures: each case feeds one frame to the real XDP program through
//! BPF_PROG_TEST_RUN (in a namespace with a real FIB) and compares the verdict,
//! the counter it bumped and the output bytes, byte for byte, with a frame
//! built independently by `lb_tests::packet`.
use std::net::Ipv4Addr;

use lb_common::{
    abi::{BackendConns, NEIGH_MARK_MAGIC, NeighMark, PROTO_TCP},
    counter::Counter,
    hash::{flow_hash, maglev_slot},
};
use lb_tests::{
    expect::{Expect, hex, run_case},
    fixture::*,
    netns::in_ns,
    packet::{self, Ipv4, L4, Mac, TCP_ACK, TCP_PSH, TCP_SYN, forwarded},
    testrun::{Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name},
};

struct Case {
    name: &'static str,
    ingress: &'static str,
    input: Vec<u8>,
    action: u32,
    counter: Counter,
    expect: Expect,
    /// Empty the connection table before this case.
    flush_conntrack: bool,
}

fn case(
    name: &'static str,
    ingress: &'static str,
    input: Vec<u8>,
    action: u32,
    counter: Counter,
    expect: Expect,
) -> Case {
    Case { name, ingress, input, action, counter, expect, flush_conntrack: false }
}

const CLIENT_PORT: u16 = 40_000;
/// IPv4 options: NOPs and a router alert.
const IP_OPTIONS: [u8; 8] = [0x01, 0x01, 0x01, 0x01, 0x94, 0x04, 0x00, 0x00];

/// `frame` with the slow path's mark in place of its MAC addresses, as a
/// forger on the link would send it (any interface index, any next hop).
fn forged_mark(mut frame: Vec<u8>) -> Vec<u8> {
    let mark = NeighMark { magic: NEIGH_MARK_MAGIC, ifindex: 2, nexthop: WEB1.octets() };
    frame[..12].copy_from_slice(&mark.to_bytes());
    frame
}

fn syn(dst: (Ipv4Addr, u16)) -> Ipv4 {
    Ipv4::tcp((CLIENT, CLIENT_PORT), dst, TCP_SYN, b"")
}

#[expect(clippy::too_many_lines, reason = "the fixture table reads best as one list")]
fn cases() -> Vec<Case> {
    let web_backend = (WEB1, 8080);
    let to_web = syn((VIP, 80));
    let data =
        Ipv4::tcp((CLIENT, CLIENT_PORT), (VIP, 80), TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n");
    let reply = Ipv4::tcp(web_backend, (CLIENT, CLIENT_PORT), TCP_SYN | TCP_ACK, b"");
    let reply_data =
        Ipv4::tcp(web_backend, (CLIENT, CLIENT_PORT), TCP_ACK | TCP_PSH, b"Bienvenue sur WEB1\n");
    let dns = Ipv4::udp((CLIENT, 40_053), (VIP, 53), b"query");
    let mut dns_no_csum = dns.clone();
    if let L4::Udp { checksum, .. } = &mut dns_no_csum.l4 {
        *checksum = false;
    }
    let dns_reply = Ipv4::udp((WEB2, 5353), (CLIENT, 40_053), b"answer");

    let mut with_options = syn((VIP, 80));
    with_options.options = IP_OPTIONS.to_vec();
    let mut ttl1 = syn((VIP, 80));
    ttl1.ttl = 1;
    let mut ttl2 = syn((VIP, 80));
    ttl2.ttl = 2;
    let mut reply_ttl1 = reply_data.clone();
    reply_ttl1.ttl = 1;
    // The FIB looks up the reply as it would leave (from the VIP), before
    // anything is rewritten: a destination it will not forward to is left
    // to the kernel as it came.
    let reply_to_lb = Ipv4::tcp(web_backend, (LB_BACKEND_SIDE, 45_000), TCP_SYN | TCP_ACK, b"");
    let reply_unreachable = Ipv4::tcp(web_backend, (UNREACHABLE_CLIENT, CLIENT_PORT), TCP_ACK, b"");
    let mut first_fragment = Ipv4::udp((CLIENT, 40_053), (VIP, 53), &[7; 64]);
    first_fragment.frag_off = packet::IP_MF;
    let mut later_fragment = Ipv4::udp((CLIENT, 40_053), (VIP, 53), &[7; 64]);
    later_fragment.frag_off = 8; // offset 64 bytes, last fragment
    // Another datagram's, before its first: its kernel entry must not touch
    // the datagram above.
    let mut early_fragment = later_fragment.clone();
    early_fragment.id ^= 0x0100;
    let mut early_tcp_fragment = Ipv4::tcp((CLIENT, 40_080), (VIP, 80), TCP_ACK, &[7; 64]);
    early_tcp_fragment.frag_off = 8;
    let mut fragment_elsewhere = first_fragment.clone();
    fragment_elsewhere.dst = LB_CLIENT_SIDE;
    let icmp =
        Ipv4::new(CLIENT, VIP, L4::Raw { proto: 1, bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0] });
    let ssh_to_lb = Ipv4::tcp((CLIENT, CLIENT_PORT), (LB_CLIENT_SIDE, 22), TCP_SYN, b"");

    let full_syn = from_client(&to_web);
    let mut ihl_too_small = full_syn.clone();
    ihl_too_small[14] = 0x44;
    let mut tot_len_too_big = full_syn.clone();
    tot_len_too_big[16..18].copy_from_slice(&2000_u16.to_be_bytes());
    let mut ihl_beyond_frame = from_client(&dns);
    ihl_beyond_frame[14] = 0x4f; // 60-byte header in a 48-byte packet
    // TCP data offset (the high nibble of byte 12 of the TCP header).
    let tcp_offset = |words: u8| {
        let mut frame = full_syn.clone();
        frame[14 + 20 + 12] = words << 4;
        frame
    };
    let udp_length = |length: u16| {
        let mut frame = from_client(&dns);
        frame[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&length.to_be_bytes());
        frame
    };
    let syn_from =
        |src: Ipv4Addr| from_client(&Ipv4::tcp((src, CLIENT_PORT), (VIP, 80), TCP_SYN, b""));
    // A backend as a client of a VIP, from an ephemeral port: taken (hairpin).
    let hairpin_client = Ipv4::tcp((WEB1, 40_100), (VIP, 80), TCP_SYN, b"");
    let mut vlan = full_syn.clone();
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    let mut padded = from_client(&to_web);
    padded.extend_from_slice(&[0; 6]); // Ethernet minimum-size padding after the IP packet
    let mut padded_out =
        forwarded(&to_web, (CLIENT, CLIENT_PORT), web_backend, WEB_MACS[0], IF_BACKEND_MAC);
    padded_out.extend_from_slice(&[0; 6]);

    let zero_sum = udp_whose_rewrite_sums_to_zero();
    let too_big = Ipv4::tcp(
        (CLIENT, CLIENT_PORT),
        (VIP, 80),
        TCP_ACK,
        &vec![0x42; usize::from(BACKEND_SIDE_MTU) - 40 + 1],
    );
    let shared_reply = Ipv4::udp((WEB3, 7000), (CLIENT, 40_100), b"from web3");
    let dsr_data = Ipv4::tcp(
        (CLIENT, CLIENT_PORT),
        (VIP_DSR, 80),
        TCP_ACK | TCP_PSH,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let dsr_backend_own = Ipv4::tcp((WEB2, 80), (CLIENT, CLIENT_PORT), TCP_SYN | TCP_ACK, b"");
    let shared_other = Ipv4::udp(slot_sharing_backend(), (CLIENT, 40_100), b"from its neighbour");

    vec![
        case(
            "TCP SYN to the VIP is sent to its backend, address and port rewritten",
            IF_CLIENT,
            full_syn.clone(),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &to_web,
                (CLIENT, CLIENT_PORT),
                web_backend,
                WEB_MACS[0],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "a later packet of the same flow follows the connection entry",
            IF_CLIENT,
            from_client(&data),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &data,
                (CLIENT, CLIENT_PORT),
                web_backend,
                WEB_MACS[0],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "the backend's reply is rewritten back to the VIP (reverse NAT)",
            IF_BACKEND,
            from_web1(&reply),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &reply,
                (VIP, 80),
                (CLIENT, CLIENT_PORT),
                CLIENT_MAC,
                IF_CLIENT_MAC,
            )),
        ),
        Case {
            flush_conntrack: true,
            ..case(
                "the reply still finds the VIP with the connection entry gone",
                IF_BACKEND,
                from_web1(&reply_data),
                XDP_REDIRECT,
                Counter::Redirect,
                Expect::Frame(forwarded(
                    &reply_data,
                    (VIP, 80),
                    (CLIENT, CLIENT_PORT),
                    CLIENT_MAC,
                    IF_CLIENT_MAC,
                )),
            )
        },
        case(
            "UDP with a checksum: rewritten, checksum updated",
            IF_CLIENT,
            from_client(&dns),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &dns,
                (CLIENT, 40_053),
                (WEB2, 5353),
                WEB_MACS[1],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "UDP without a checksum: rewritten, checksum stays 0",
            IF_CLIENT,
            from_client(&dns_no_csum),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &dns_no_csum,
                (CLIENT, 40_053),
                (WEB2, 5353),
                WEB_MACS[1],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "UDP whose new checksum computes to 0 carries 0xffff",
            IF_CLIENT,
            from_client(&zero_sum),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &zero_sum,
                (CLIENT, 40_054),
                (WEB2, 5353),
                WEB_MACS[1],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "UDP reply from the backend is rewritten back to the VIP",
            IF_BACKEND,
            dns_reply.frame(IF_BACKEND_MAC, WEB_MACS[1]),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &dns_reply,
                (VIP, 53),
                (CLIENT, 40_053),
                CLIENT_MAC,
                IF_CLIENT_MAC,
            )),
        ),
        case(
            "IPv4 options do not break parsing; they are kept",
            IF_CLIENT,
            from_client(&with_options),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &with_options,
                (CLIENT, CLIENT_PORT),
                web_backend,
                WEB_MACS[0],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "TTL 2 is forwarded with TTL 1",
            IF_CLIENT,
            from_client(&ttl2),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &ttl2,
                (CLIENT, CLIENT_PORT),
                web_backend,
                WEB_MACS[0],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "Ethernet padding after the IP packet is carried along",
            IF_CLIENT,
            padded,
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(padded_out),
        ),
        case(
            "a backend on the ingress side is reached with XDP_TX",
            IF_CLIENT,
            from_client(&syn((VIP, 8443))),
            XDP_TX,
            Counter::Tx,
            Expect::Frame(forwarded(
                &syn((VIP, 8443)),
                (CLIENT, CLIENT_PORT),
                (HAIRPIN, 8443),
                HAIRPIN_MAC,
                IF_CLIENT_MAC,
            )),
        ),
        case(
            "a backend without a neighbour entry: rewritten, handed to tc with metadata",
            IF_CLIENT,
            from_client(&syn((VIP_NO_NEIGH, 80))),
            XDP_PASS,
            Counter::SlowPathNeigh,
            Expect::SlowPath {
                frame: forwarded(
                    &syn((VIP_NO_NEIGH, 80)),
                    (CLIENT, CLIENT_PORT),
                    (NO_NEIGH_BACKEND, 80),
                    IF_CLIENT_MAC,
                    CLIENT_MAC,
                ),
                egress: IF_BACKEND,
                nexthop: NO_NEIGH_BACKEND,
            },
        ),
        case(
            "direct routing: the frame goes to the backend's MAC, the IP packet unchanged",
            IF_CLIENT,
            from_client(&syn((VIP_DSR, 80))),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(syn((VIP_DSR, 80)).frame(WEB_MACS[1], IF_BACKEND_MAC)),
        ),
        case(
            "direct routing: a later packet of the flow goes the same way",
            IF_CLIENT,
            from_client(&dsr_data),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(dsr_data.frame(WEB_MACS[1], IF_BACKEND_MAC)),
        ),
        case(
            "direct routing: the backend's own traffic is not taken for a reply",
            IF_BACKEND,
            from_web2(&dsr_backend_own),
            XDP_PASS,
            Counter::PassNotService,
            Expect::Unchanged,
        ),
        case(
            "direct routing to a backend behind a gateway is dropped",
            IF_CLIENT,
            from_client(&syn((VIP_DSR, 81))),
            XDP_DROP,
            Counter::DropDsrNotOnLink,
            Expect::Unchanged,
        ),
        case(
            "direct routing to a backend behind a gateway not yet resolved is dropped",
            IF_CLIENT,
            from_client(&syn((VIP_DSR, 83))),
            XDP_DROP,
            Counter::DropDsrNotOnLink,
            Expect::Unchanged,
        ),
        case(
            "direct routing without a neighbour entry: tc resolves the backend, not the VIP",
            IF_CLIENT,
            from_client(&syn((VIP_DSR, 82))),
            XDP_PASS,
            Counter::SlowPathNeigh,
            Expect::SlowPath {
                frame: from_client(&syn((VIP_DSR, 82))),
                egress: IF_BACKEND,
                nexthop: DSR_NO_NEIGH_BACKEND,
            },
        ),
        case(
            "a reply to a client the load balancer has never seen takes the tc slow path",
            IF_BACKEND,
            from_web1(&Ipv4::tcp(
                web_backend,
                (UNSEEN_CLIENT, CLIENT_PORT),
                TCP_SYN | TCP_ACK,
                b"",
            )),
            XDP_PASS,
            Counter::SlowPathNeigh,
            Expect::SlowPath {
                frame: forwarded(
                    &Ipv4::tcp(web_backend, (UNSEEN_CLIENT, CLIENT_PORT), TCP_SYN | TCP_ACK, b""),
                    (VIP, 80),
                    (UNSEEN_CLIENT, CLIENT_PORT),
                    IF_BACKEND_MAC,
                    WEB_MACS[0],
                ),
                egress: IF_CLIENT,
                nexthop: UNSEEN_CLIENT,
            },
        ),
        case(
            "a reply from a backend whose index slot is shared finds its VIP in the exact table",
            IF_BACKEND,
            shared_reply.frame(IF_BACKEND_MAC, WEB_MACS[2]),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &shared_reply,
                (VIP, 7000),
                (CLIENT, 40_100),
                CLIENT_MAC,
                IF_CLIENT_MAC,
            )),
        ),
        case(
            "so does a reply from the other backend of that slot",
            IF_BACKEND,
            shared_other.frame(IF_BACKEND_MAC, WEB_MACS[2]),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &shared_other,
                (VIP, 7000),
                (CLIENT, 40_100),
                CLIENT_MAC,
                IF_CLIENT_MAC,
            )),
        ),
        case(
            "a client packet too big for the backend side's MTU is answered \"fragmentation needed\"",
            IF_CLIENT,
            from_client(&too_big),
            XDP_TX,
            Counter::FragNeeded,
            Expect::Frame(
                packet::icmp_error(
                    VIP,
                    CLIENT,
                    (packet::ICMP_DEST_UNREACH, 4),
                    u32::from(BACKEND_SIDE_MTU).to_be_bytes(),
                    &packet::quote(&too_big),
                )
                .frame(CLIENT_MAC, IF_CLIENT_MAC),
            ),
        ),
        case(
            "a packet that fits still goes through after that",
            IF_CLIENT,
            from_client(&data),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &data,
                (CLIENT, CLIENT_PORT),
                web_backend,
                WEB_MACS[0],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "a service whose only backend is drained drops and counts",
            IF_CLIENT,
            from_client(&syn((VIP_DRAINED, 80))),
            XDP_DROP,
            Counter::DropNoBackend,
            Expect::Unchanged,
        ),
        case(
            "traffic to the load balancer's own address (ssh) passes untouched",
            IF_CLIENT,
            from_client(&ssh_to_lb),
            XDP_PASS,
            Counter::PassNotService,
            Expect::Unchanged,
        ),
        case(
            "a port of the VIP with no service passes untouched",
            IF_CLIENT,
            from_client(&syn((VIP, 8080))),
            XDP_PASS,
            Counter::PassNotService,
            Expect::Unchanged,
        ),
        case(
            "UDP to a TCP service's port passes untouched",
            IF_CLIENT,
            from_client(&Ipv4::udp((CLIENT, 40_053), (VIP, 80), b"x")),
            XDP_PASS,
            Counter::PassNotService,
            Expect::Unchanged,
        ),
        case(
            "a reply from a backend's address on another port passes untouched",
            IF_BACKEND,
            from_web1(&Ipv4::tcp((WEB1, 9999), (CLIENT, CLIENT_PORT), TCP_ACK, b"")),
            XDP_PASS,
            Counter::PassNotService,
            Expect::Unchanged,
        ),
        case(
            "ICMP echo to the VIP passes (the kernel answers)",
            IF_CLIENT,
            from_client(&icmp),
            XDP_PASS,
            Counter::PassNotTcpUdp,
            Expect::Unchanged,
        ),
        case(
            "ARP passes untouched",
            IF_CLIENT,
            packet::arp_request(CLIENT_MAC, CLIENT, VIP),
            XDP_PASS,
            Counter::PassNotIpv4,
            Expect::Unchanged,
        ),
        case(
            "a frame that arrives with the slow path's mark is dropped (forged)",
            IF_CLIENT,
            forged_mark(from_client(&to_web)),
            XDP_DROP,
            Counter::DropForgedMark,
            Expect::Unchanged,
        ),
        case(
            "a marked frame is dropped whatever its EtherType (ARP)",
            IF_BACKEND,
            forged_mark(packet::arp_request(WEB_MACS[0], WEB1, Ipv4Addr::new(10, 77, 2, 1))),
            XDP_DROP,
            Counter::DropForgedMark,
            Expect::Unchanged,
        ),
        case(
            "IPv6 passes untouched",
            IF_CLIENT,
            packet::ipv6_frame(IF_CLIENT_MAC, CLIENT_MAC),
            XDP_PASS,
            Counter::PassNotIpv4,
            Expect::Unchanged,
        ),
        case(
            "a VLAN-tagged frame passes untouched",
            IF_CLIENT,
            vlan,
            XDP_PASS,
            Counter::PassNotIpv4,
            Expect::Unchanged,
        ),
        case(
            "TTL 1 to the VIP passes untouched so the kernel answers",
            IF_CLIENT,
            from_client(&ttl1),
            XDP_PASS,
            Counter::PassTtlExpired,
            Expect::Unchanged,
        ),
        case(
            "a backend's reply with TTL 1 passes untouched so the kernel answers",
            IF_BACKEND,
            from_web1(&reply_ttl1),
            XDP_PASS,
            Counter::PassTtlExpired,
            Expect::Unchanged,
        ),
        case(
            "a backend's reply to this host (a health check's answer) passes untouched",
            IF_BACKEND,
            from_web1(&reply_to_lb),
            XDP_PASS,
            Counter::PassLocal,
            Expect::Unchanged,
        ),
        case(
            "a backend's reply to a client the FIB cannot reach passes untouched",
            IF_BACKEND,
            from_web1(&reply_unreachable),
            XDP_PASS,
            Counter::PassFibFailed,
            Expect::Unchanged,
        ),
        case(
            "a UDP datagram's later fragment to the VIP before its first goes to the kernel",
            IF_CLIENT,
            from_client(&early_fragment),
            XDP_PASS,
            Counter::PassFragmentToKernel,
            Expect::Unchanged,
        ),
        case(
            "a TCP segment's later fragment to the VIP before its first is dropped and counted",
            IF_CLIENT,
            from_client(&early_tcp_fragment),
            XDP_DROP,
            Counter::DropFragment,
            Expect::Unchanged,
        ),
        case(
            "a first fragment to the VIP is sent to its backend like a whole datagram",
            IF_CLIENT,
            from_client(&first_fragment),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &first_fragment,
                (CLIENT, 40_053),
                (WEB2, 5353),
                WEB_MACS[1],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "a later fragment after its first follows it, its address rewritten",
            IF_CLIENT,
            from_client(&later_fragment),
            XDP_REDIRECT,
            Counter::Redirect,
            Expect::Frame(forwarded(
                &later_fragment,
                (CLIENT, 40_053),
                (WEB2, 5353),
                WEB_MACS[1],
                IF_BACKEND_MAC,
            )),
        ),
        case(
            "a fragment to another address passes",
            IF_CLIENT,
            from_client(&fragment_elsewhere),
            XDP_PASS,
            Counter::PassNotService,
            Expect::Unchanged,
        ),
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
        // (and NICs never deliver them), so the shortest case ends right after it.
        case(
            "a frame that ends right after the Ethernet header passes untouched",
            IF_CLIENT,
            full_syn[..14].to_vec(),
            XDP_PASS,
            Counter::PassMalformed,
            Expect::Unchanged,
        ),
        case(
            "a frame truncated inside the IPv4 header passes untouched",
            IF_CLIENT,
            full_syn[..14 + 12].to_vec(),
            XDP_PASS,
            Counter::PassMalformed,
            Expect::Unchanged,
        ),
        case(
            "a frame truncated inside the TCP header to the VIP is dropped",
            IF_CLIENT,
            full_syn[..14 + 20 + 10].to_vec(),
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "a frame truncated inside the UDP header to the VIP is dropped",
            IF_CLIENT,
            from_client(&dns)[..14 + 20 + 5].to_vec(),
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "an IPv4 header length below 20 bytes to the VIP is dropped",
            IF_CLIENT,
            ihl_too_small,
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "an IPv4 total length beyond the frame to the VIP is dropped",
            IF_CLIENT,
            tot_len_too_big,
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "an IPv4 header length beyond the packet to the VIP is dropped",
            IF_CLIENT,
            ihl_beyond_frame,
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "TCP with a data offset below 5 words to the VIP is dropped",
            IF_CLIENT,
            tcp_offset(4),
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "TCP with a data offset past the packet to the VIP is dropped",
            IF_CLIENT,
            tcp_offset(6),
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "UDP whose length is short of its header is dropped",
            IF_CLIENT,
            udp_length(7),
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "UDP whose length is past the packet is dropped",
            IF_CLIENT,
            udp_length(14),
            XDP_DROP,
            Counter::DropMalformed,
            Expect::Unchanged,
        ),
        case(
            "a SYN to the VIP from 127.0.0.1 (martian) is dropped",
            IF_CLIENT,
            syn_from(Ipv4Addr::LOCALHOST),
            XDP_DROP,
            Counter::DropMartianSource,
            Expect::Unchanged,
        ),
        case(
            "a SYN to the VIP from 0.1.2.3 (martian) is dropped",
            IF_CLIENT,
            syn_from(Ipv4Addr::new(0, 1, 2, 3)),
            XDP_DROP,
            Counter::DropMartianSource,
            Expect::Unchanged,
        ),
        case(
            "a SYN to the VIP from a multicast source is dropped",
            IF_CLIENT,
            syn_from(Ipv4Addr::new(224, 0, 0, 5)),
            XDP_DROP,
            Counter::DropMartianSource,
            Expect::Unchanged,
        ),
        case(
            "a SYN to the VIP from the broadcast address is dropped",
            IF_CLIENT,
            syn_from(Ipv4Addr::BROADCAST),
            XDP_DROP,
            Counter::DropMartianSource,
            Expect::Unchanged,
        ),
        case(
            "a datagram to the VIP from the VIP itself (forged) is dropped",
            IF_CLIENT,
            from_client(&Ipv4::udp((VIP, 5353), (VIP, 53), b"loop")),
            XDP_DROP,
            Counter::DropSourceVip,
            Expect::Unchanged,
        ),
        case(
            "a SYN to the VIP from a backend's service endpoint is dropped (loop)",
            IF_BACKEND,
            from_web1(&Ipv4::tcp(web_backend, (VIP, 80), TCP_SYN, b"")),
            XDP_DROP,
            Counter::DropBackendPortToVip,
            Expect::Unchanged,
        ),
        case(
            "a backend as a client of the VIP, from another port, is served (hairpin)",
            IF_BACKEND,
            from_web1(&hairpin_client),
            XDP_TX,
            Counter::Tx,
            Expect::Frame(forwarded(
                &hairpin_client,
                (WEB1, 40_100),
                web_backend,
                WEB_MACS[0],
                IF_BACKEND_MAC,
            )),
        ),
    ]
}

/// A UDP datagram whose checksum after the rewrite to WEB2:5353 is exactly
/// 0 in ones' complement arithmetic, which RFC 768 transmits as 0xffff: the
/// payload word is chosen to cancel the rest of the sum.
fn udp_whose_rewrite_sums_to_zero() -> Ipv4 {
    let rewritten =
        |word: [u8; 2]| Ipv4::udp((CLIENT, 40_054), (WEB2, 5353), &[word[0], word[1], 0x55, 0xaa]);
    let base = rewritten([0, 0]).to_bytes();
    let check = [base[20 + 6], base[20 + 7]];
    // With the checksum word as payload the total sums to all ones; if the
    // base checksum is already "0" (sent as 0xffff), a zero word keeps it so.
    let word = if check == [0xff, 0xff] { [0, 0] } else { check };
    let mut p = Ipv4::udp((CLIENT, 40_054), (VIP, 53), &[word[0], word[1], 0x55, 0xaa]);
    p.ttl = 64;
    let out = rewritten(word);
    let mut out_bytes = out.to_bytes();
    out_bytes[20 + 6..20 + 8].fill(0);
    assert_eq!(
        packet::internet_checksum(&udp_pseudo_and_segment(&out_bytes)),
        0,
        "fixture construction"
    );
    p
}

fn udp_pseudo_and_segment(ip: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&ip[12..20]);
    v.extend_from_slice(&[0, 17]);
    v.extend_from_slice(&((ip.len() - 20) as u16).to_be_bytes());
    v.extend_from_slice(&ip[20..]);
    v
}

fn check_case(loaded: &mut Loaded, c: &Case) -> Result<(), String> {
    if c.flush_conntrack {
        loaded.flush_conntrack();
    }
    let (out, mut problems) =
        run_case(loaded, (&c.input, c.ingress), c.action, c.counter, &c.expect);
    // The program never uses XDP metadata (see `abi::NeighMark`).
    if !out.meta.is_empty() {
        problems.push(format!("metadata {:?} (want none)", out.meta));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[test]
fn packet_fixtures() {
    let ns = FixtureNs::create("lbt-fix");
    let cases = cases();
    // Exact, so that a case lost in an edit (a bad merge, a deleted line) is noticed.
    assert_eq!(cases.len(), 62, "fixture cases in the table");
    let failures = in_ns(&ns.name, move || {
        let mut loaded = Loaded::new(4096);
        let mut failures = Vec::new();
        for c in &cases {
            match check_case(&mut loaded, c) {
                Ok(()) => eprintln!("ok   {}", c.name),
                Err(why) => {
                    eprintln!("FAIL {}: {why}", c.name);
                    failures.push(c.name);
                }
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{} fixture(s) failed: {failures:#?}", failures.len());
}

/// New flows of a three-backend service land where the controller's own
/// Maglev table says: kernel and userspace hash alike (which is what lets
/// another node, or a restarted one, pick the same backend).
#[test]
fn maglev_choice_in_the_kernel_matches_the_controllers_table() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let image = loaded.reconciler.applied().clone();
        let key = lb_common::abi::Endpoint::new(VIP.octets(), 443, PROTO_TCP);
        let service = image.services[&key];
        let table = &image.maglev[&service.id];
        let mut seen = std::collections::BTreeSet::new();
        for sport in 1000..1060_u16 {
            let p = Ipv4::tcp((CLIENT, sport), (VIP, 443), TCP_SYN, b"");
            let out = loaded.run(&from_client(&p), IF_CLIENT);
            assert_eq!(out.action, XDP_REDIRECT);
            let slot = maglev_slot(
                flow_hash(CLIENT.octets(), VIP.octets(), sport, 443, PROTO_TCP),
                service.ring_size,
            )
            .unwrap();
            let backend = image.backends[&table[slot as usize]];
            assert_eq!(out.frame[30..34], backend.addr, "source port {sport}");
            seen.insert(backend.addr);
        }
        assert_eq!(seen.len(), 3, "60 flows should reach all three backends");
        assert_eq!(loaded.conntrack_len(), 0, "a SYN leaves no entry in the connection table");
    });
}

/// A mid-flow packet of a flow the load balancer has forgotten (no
/// connection entry and nothing in the flow cache: evicted, or a failover
/// to another node) is placed by the service's Maglev table, which sends it
/// where its SYN went, and recorded nowhere: only a handshake seen here
/// records a flow, so a flood of forged ACKs reaches no table.
#[test]
fn a_forgotten_flow_is_placed_by_the_maglev_table() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let image = loaded.reconciler.applied().clone();
        let key = lb_common::abi::Endpoint::new(VIP.octets(), 443, PROTO_TCP);
        let service = image.services[&key];
        let table = &image.maglev[&service.id];
        let mut seen = std::collections::BTreeSet::new();
        for sport in 2000..2012_u16 {
            let client = (CLIENT, sport);
            let flow = flow_of(client, (VIP, 443), PROTO_TCP);
            loaded.handshake(client, (VIP, 443));
            // Forget the flow: either copy alone would still place it.
            loaded.flush_conntrack();
            loaded.clear_flow_cache(&flow);

            let data = Ipv4::tcp(client, (VIP, 443), TCP_ACK | TCP_PSH, b"more");
            let slot = maglev_slot(
                flow_hash(CLIENT.octets(), VIP.octets(), sport, 443, PROTO_TCP),
                service.ring_size,
            )
            .unwrap();
            let backend = image.backends[&table[slot as usize]];
            let addr = Ipv4Addr::from(backend.addr);
            let out = loaded.run(&from_client(&data), IF_CLIENT);
            assert_eq!(action_name(out.action), action_name(XDP_REDIRECT), "source port {sport}");
            let want =
                forwarded(&data, client, (addr, backend.port), web_mac(addr), IF_BACKEND_MAC);
            assert_eq!(hex(&out.frame), hex(&want), "source port {sport}: the table's backend");
            assert_eq!(loaded.conn(&flow), None, "recorded nowhere");
            seen.insert(addr);
        }
        assert!(seen.len() >= 2, "12 flows should reach several backends: {seen:?}");
    });
}

/// The MAC address of web1..web3.
fn web_mac(addr: Ipv4Addr) -> Mac {
    let i = [WEB1, WEB2, WEB3].iter().position(|&w| w == addr);
    WEB_MACS[i.unwrap_or_else(|| panic!("{addr} is not a web backend"))]
}

/// The slow path's mark travels in the frame, not in the XDP metadata area:
/// metadata a program before ours left there, up to the kernel's 32 bytes
/// (`xdp_metalen_invalid`), neither stops it nor is touched by it.
#[test]
fn the_slow_path_needs_no_metadata_room_and_leaves_metadata_alone() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let frame = from_client(&syn((VIP_NO_NEIGH, 80)));
        let mark = NeighMark {
            magic: NEIGH_MARK_MAGIC,
            ifindex: Loaded::ifindex(IF_BACKEND),
            nexthop: NO_NEIGH_BACKEND.octets(),
        };
        let plain = loaded.run(&frame, IF_CLIENT);
        assert_eq!(action_name(plain.action), action_name(XDP_PASS), "to tc");
        assert_eq!(plain.frame[..12], mark.to_bytes(), "marked in place of the MACs");

        let before = loaded.counter(Counter::SlowPathNeigh);
        let out = loaded.run_after_meta(&[0xaa; 32], &frame, IF_CLIENT);
        assert_eq!(action_name(out.action), action_name(XDP_PASS), "a full metadata area");
        assert_eq!(loaded.counter(Counter::SlowPathNeigh), before + 1, "slow_path_neigh");
        assert_eq!(out.frame, plain.frame, "the same marked frame");
        assert_eq!(out.meta, [0xaa; 32], "the metadata there is left alone");
    });
}

/// Whatever bytes arrive, the program never aborts and never forwards a
/// packet it could not fully parse.
#[test]
fn random_frames_never_abort_or_forward_garbage() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let loaded = Loaded::new(4096);
        let base = from_client(&syn((VIP, 80)));
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut forwarded_corrupted = 0;
        for _ in 0..3000 {
            let mut frame = base.clone();
            // Corrupt a few header bytes, and sometimes cut the frame.
            for _ in 0..=(next() % 4) {
                let at = (next() % 54) as usize;
                frame[at] = next() as u8;
            }
            if next() % 3 == 0 {
                frame.truncate(14 + (next() % 40) as usize);
            }
            let out = loaded.run(&frame, IF_CLIENT);
            assert_ne!(out.action, 0, "XDP_ABORTED on {}", hex(&frame));
            let marked = out.frame.get(..4) == Some(&NEIGH_MARK_MAGIC.to_ne_bytes()[..]);
            if matches!(out.action, XDP_REDIRECT | XDP_TX) || (out.action == XDP_PASS && marked) {
                // Forwarded (or marked for tc): the incremental update neither repairs nor breaks
                // the IP header checksum (a corrupted one stays corrupted, and
                // the receiver drops it, as it would without us).
                let ihl = usize::from(out.frame[14] & 0x0f) * 4;
                let valid_out = packet::internet_checksum(&out.frame[14..14 + ihl]) == 0;
                let valid_in = packet::internet_checksum(&frame[14..14 + ihl]) == 0;
                assert_eq!(valid_out, valid_in, "IP checksum validity changed for {}", hex(&frame));
                forwarded_corrupted += usize::from(!valid_in);
            } else if out.action != XDP_DROP {
                assert_eq!(out.frame, frame, "a passed frame was modified");
            }
        }
        // Without such frames the checksum check above would hold vacuously.
        assert!(forwarded_corrupted > 0, "no frame with a corrupted IP checksum was forwarded");
    });
}

/// The fixture namespace's neighbour entry for WEB1 now says `mac`, as if
/// the backend had a new interface.
fn web1_moves_to(ns: &str, mac: Mac) {
    let (web1, mac) = (WEB1.to_string(), mac_str(mac));
    let neigh = ["ip", "neigh", "replace", &web1, "lladdr", &mac, "dev", IF_BACKEND];
    lb_tests::netns::ns_sh(ns, &[&neigh[..], &["nud", "permanent"]].concat());
}

/// The next-hop cache keeps a FIB answer until the controller advances the
/// epoch; then a changed neighbour (a backend's new MAC) is picked up.
#[test]
fn a_changed_neighbour_is_picked_up_when_the_epoch_advances() {
    let ns = FixtureNs::create("lbt-fix");
    let ns_name = ns.name.clone();
    in_ns(&ns.name, move || {
        let mut loaded = Loaded::new(4096);
        let frame = from_client(&syn((VIP, 80)));
        let dst_mac = |loaded: &Loaded| loaded.run(&frame, IF_CLIENT).frame[..6].to_vec();
        assert_eq!(dst_mac(&loaded), WEB_MACS[0]);
        let new_mac = [0x02, 0, 0, 0, 0x02, 0xee];
        web1_moves_to(&ns_name, new_mac);
        assert_eq!(dst_mac(&loaded), WEB_MACS[0], "cached until the epoch moves");
        loaded.reconciler.advance_clock().expect("advance the epoch");
        assert_eq!(dst_mac(&loaded), new_mac, "looked up again in the new epoch");
    });
}

/// Health checks put a backend DOWN: a TCP flow still on it gets a reset
/// from the VIP on its next packet (RFC 793 reset generation), a new flow
/// finds no backend, and a UDP flow moves to another backend.
#[test]
fn a_down_backend_resets_tcp_flows_and_moves_udp_flows() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let services = lb_ctl::desired::config::parse(&config()).unwrap().services;
        let find = |name: &str| services.iter().find(|s| s.name == name).unwrap().clone();

        // A TCP flow and a UDP flow, both established.
        loaded.handshake((CLIENT, CLIENT_PORT), (VIP, 80));
        let data = data_acking(CLIENT_PORT, 5000);
        assert_eq!(loaded.run(&from_client(&data), IF_CLIENT).action, XDP_REDIRECT);
        let udp_port = (41_000..42_000_u16)
            .find(|&p| {
                let out =
                    loaded.run(&from_client(&Ipv4::udp((CLIENT, p), (VIP, 7000), b"q")), IF_CLIENT);
                out.frame[30..34] == WEB3.octets()
            })
            .expect("some flow lands on web3");
        let udp = Ipv4::udp((CLIENT, udp_port), (VIP, 7000), b"q");

        let web = find("web");
        let shared = find("shared");
        let down = [
            lb_ctl::plan::ids::backend_key(&web, WEB1, 8080),
            lb_ctl::plan::ids::backend_key(&shared, WEB3, 7000),
        ];
        loaded.reconciler.set_down(down.into_iter().collect()).expect("set down");

        // The TCP flow's next packet (it acknowledges 5000): RST, seq 5000.
        let reset = reset_frame(VIP, CLIENT_PORT, packet::TCP_RST, 5000, 0);
        let out = run_counting(&mut loaded, &from_client(&data), Counter::RstBackendDown);
        assert_eq!((out.action, out.frame), (XDP_TX, reset), "reset");

        // A FIN without ACK is no segment of a connection (a scan): dropped,
        // not answered.
        let fin = Ipv4::tcp((CLIENT, CLIENT_PORT), (VIP, 80), packet::TCP_FIN, b"more");
        let out = run_counting(&mut loaded, &from_client(&fin), Counter::DropTcpFlags);
        assert_eq!(out.action, XDP_DROP, "a bare FIN");

        // A SYN opens a new connection (on the same ports, or here on
        // new ones): the service's only backend is DOWN, and it rejects.
        for port in [CLIENT_PORT, 50_000] {
            let out = run_counting(&mut loaded, &from_client(&syn_from(port)), Counter::RejectTcp);
            let refused = reset_frame(VIP, port, packet::TCP_RST | TCP_ACK, 0, 1001);
            assert_eq!((out.action, out.frame), (XDP_TX, refused), "no usable backend");
        }

        // The UDP flow moves to the other backend of its service.
        let (collider, collider_port) = slot_sharing_backend();
        let out = loaded.run(&from_client(&udp), IF_CLIENT);
        assert_eq!(out.action, XDP_REDIRECT);
        let moved = forwarded(
            &udp,
            (CLIENT, udp_port),
            (collider, collider_port),
            COLLIDER_MAC,
            IF_BACKEND_MAC,
        );
        assert_eq!(out.frame, moved, "rescheduled to the other backend");

        // Back UP: new flows reach web1 again.
        loaded.reconciler.set_down(std::collections::BTreeSet::new()).expect("set up");
        let fresh = syn_from(50_000);
        let out = run_counting(&mut loaded, &from_client(&fresh), Counter::Redirect);
        let to_web1 =
            forwarded(&fresh, (CLIENT, 50_000), (WEB1, 8080), WEB_MACS[0], IF_BACKEND_MAC);
        assert_eq!((out.action, hex(&out.frame)), (XDP_REDIRECT, hex(&to_web1)), "on web1 again");
    });
}

/// A packet of a TCP flow whose backend is DOWN that no reset can answer
/// is dropped: one with IPv4 options (only plain headers are answered), and
/// a reset (never answered, RFC 793).
#[test]
fn a_down_backends_tcp_packet_no_reset_answers_is_dropped() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let services = lb_ctl::desired::config::parse(&config()).unwrap().services;
        let web = services.iter().find(|s| s.name == "web").unwrap();
        loaded.handshake((CLIENT, CLIENT_PORT), (VIP, 80));
        let data = data_acking(CLIENT_PORT, 5000);
        assert_eq!(loaded.run(&from_client(&data), IF_CLIENT).action, XDP_REDIRECT);
        let down = lb_ctl::plan::ids::backend_key(web, WEB1, 8080);
        loaded.reconciler.set_down([down].into_iter().collect()).expect("set down");

        let mut with_options = data.clone();
        with_options.options = IP_OPTIONS.to_vec();
        let mut reset = data.clone();
        if let L4::Tcp { flags, .. } = &mut reset.l4 {
            *flags = packet::TCP_RST | TCP_ACK;
        }
        for (what, p) in [("IPv4 options", with_options), ("a reset", reset)] {
            let frame = from_client(&p);
            let out = run_counting(&mut loaded, &frame, Counter::DropBackendDown);
            assert_eq!(action_name(out.action), action_name(XDP_DROP), "{what}");
            assert_eq!(hex(&out.frame), hex(&frame), "{what}: dropped as it came");
        }
    });
}

/// Runs a client frame and checks that it bumped `counter` by exactly one.
#[track_caller]
fn run_counting(loaded: &mut Loaded, frame: &[u8], counter: Counter) -> Outcome {
    let before = loaded.counter(counter);
    let out = loaded.run(frame, IF_CLIENT);
    assert_eq!(loaded.counter(counter), before + 1, "counter {}", counter.name());
    out
}

/// A data segment of the client's flow from `port` to the web service,
/// acknowledging `ack`.
fn data_acking(port: u16, ack: u32) -> Ipv4 {
    let mut data = Ipv4::tcp((CLIENT, port), (VIP, 80), TCP_ACK | TCP_PSH, b"more");
    if let L4::Tcp { ack: a, .. } = &mut data.l4 {
        *a = ack;
    }
    data
}

/// A SYN from the client's `port` to the web service.
fn syn_from(port: u16) -> Ipv4 {
    Ipv4::tcp((CLIENT, port), (VIP, 80), TCP_SYN, b"")
}

/// The reset the VIP (port 80) sends the client: a frame built by the
/// independent builder.
fn reset_frame(vip: Ipv4Addr, client_port: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut reset = Ipv4::new(
        vip,
        CLIENT,
        L4::Tcp { sport: 80, dport: client_port, flags, seq, ack, window: 0, payload: Vec::new() },
    );
    reset.id = 0;
    reset.frame(CLIENT_MAC, IF_CLIENT_MAC)
}

/// `on_no_backend = "reject"`: a SYN gets RST|ACK acknowledging it, a UDP
/// datagram an ICMP port unreachable quoting its IPv4 header and first 8
/// bytes (RFC 792); checksums verified by the independent builder.
#[test]
fn with_no_usable_backend_the_vip_rejects() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let syn = Ipv4::tcp((CLIENT, 40_500), (VIP_REJECTING, 80), TCP_SYN, b"");
        let reset = reset_frame(VIP_REJECTING, 40_500, packet::TCP_RST | TCP_ACK, 0, 1001);
        let before = loaded.counter(Counter::RejectTcp);
        let out = loaded.run(&from_client(&syn), IF_CLIENT);
        assert_eq!((out.action, out.frame), (XDP_TX, reset));
        assert_eq!(loaded.counter(Counter::RejectTcp), before + 1);

        // A datagram longer than the answer (the frame shrinks at the
        // tail), and one shorter (it grows at the head).
        let query = Ipv4::udp((CLIENT, 40_053), (VIP_REJECTING, 53), &[b'q'; 64]);
        let short = Ipv4::udp((CLIENT, 40_054), (VIP_REJECTING, 53), b"");
        for datagram in [query, short] {
            let out = run_counting(&mut loaded, &from_client(&datagram), Counter::RejectUdp);
            assert_eq!(action_name(out.action), action_name(XDP_TX));
            assert_eq!(hex(&out.frame), hex(&port_unreachable(&datagram)), "ICMP port unreachable");
        }
    });
}

/// The ICMP port unreachable the VIP answers `datagram` with.
fn port_unreachable(datagram: &Ipv4) -> Vec<u8> {
    packet::icmp_error(
        datagram.dst,
        CLIENT,
        (packet::ICMP_DEST_UNREACH, 3),
        [0; 4],
        &packet::quote(datagram),
    )
    .frame(CLIENT_MAC, IF_CLIENT_MAC)
}

/// The backend each of `n` new flows (SYNs from `sources`) is sent to.
fn destinations(
    loaded: &Loaded,
    port: u16,
    sources: impl Iterator<Item = (Ipv4Addr, u16)>,
) -> Vec<u8> {
    sources
        .map(|src| {
            let out = loaded.run(
                &from_client(&Ipv4::tcp(src, (VIP_SCHEDULERS, port), TCP_SYN, b"")),
                IF_CLIENT,
            );
            assert_eq!(out.action, XDP_REDIRECT);
            out.frame[33] // last octet of the new destination address
        })
        .collect()
}

/// The backend a client frame is sent to (its new destination address),
/// once the frame is known to be forwarded: a passed or dropped frame
/// still carries the VIP, which differs from every backend too.
#[track_caller]
fn sent_to(loaded: &Loaded, frame: &[u8]) -> Ipv4Addr {
    let out = loaded.run(frame, IF_CLIENT);
    assert_eq!(action_name(out.action), action_name(XDP_REDIRECT), "forwarded to a backend");
    Ipv4Addr::new(out.frame[30], out.frame[31], out.frame[32], out.frame[33])
}

#[test]
fn schedulers_place_new_flows_as_documented() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let loaded = Loaded::new(4096);
        // rr: web1, web2, web3, web1, ... from one client.
        let rr = destinations(&loaded, 81, (0..9).map(|i| (CLIENT, 30_000 + i)));
        assert_eq!(rr, [11, 12, 13, 11, 12, 13, 11, 12, 13]);
        // wrr 3/1/1: A B A C A, and again.
        let wrr = destinations(&loaded, 82, (0..10).map(|i| (CLIENT, 31_000 + i)));
        assert_eq!(wrr, [11, 12, 11, 13, 11, 11, 12, 11, 13, 11]);
        // sh: the client address alone decides; different clients spread.
        let same = destinations(&loaded, 83, (0..20).map(|i| (CLIENT, 32_000 + i)));
        assert!(same.iter().all(|&b| b == same[0]), "{same:?}");
        let clients =
            destinations(&loaded, 83, (0..30).map(|i| (Ipv4Addr::new(10, 77, 1, 150 + i), 40_000)));
        let spread: std::collections::BTreeSet<u8> = clients.iter().copied().collect();
        assert_eq!(spread.len(), 3, "{clients:?}");
    });
}

fn flow_of(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> lb_common::abi::Flow {
    lb_common::abi::Flow {
        src: src.0.octets(),
        dst: dst.0.octets(),
        sport: src.1,
        dport: dst.1,
        proto,
        _pad: [0; 3],
    }
}

/// The connection table follows a TCP connection from both directions: the
/// SYN and the backend's SYN-ACK leave only a handshake record, the
/// client's ACK of the SYN-ACK records the flow (established), the
/// backend's FIN makes it closing, a RST closed, and a new handshake on the
/// same ports replaces the closed entry.
#[test]
fn connection_states_follow_both_directions() {
    use lb_common::abi::{CONN_CLOSED, CONN_CLOSING, CONN_ESTABLISHED};
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 44_000);
        let flow = flow_of(client, (VIP, 80), PROTO_TCP);
        let state = |loaded: &mut Loaded| loaded.conn(&flow).map(|c| c.state);
        let send = |loaded: &mut Loaded, p: &Ipv4| {
            assert_eq!(loaded.run(&from_client(p), IF_CLIENT).action, XDP_REDIRECT);
        };
        send(&mut loaded, &Ipv4::tcp(client, (VIP, 80), TCP_SYN, b""));
        assert_eq!(state(&mut loaded), None, "the SYN");
        let mut syn_ack = Ipv4::tcp((WEB1, 8080), client, TCP_SYN | TCP_ACK, b"");
        if let L4::Tcp { seq, ack, .. } = &mut syn_ack.l4 {
            (*seq, *ack) = (BACKEND_ISN, CLIENT_ISN + 1);
        }
        assert_eq!(loaded.run(&from_web1(&syn_ack), IF_BACKEND).action, XDP_REDIRECT);
        assert_eq!(state(&mut loaded), None, "the backend's SYN-ACK");
        send(&mut loaded, &handshake_ack(client, (VIP, 80)));
        assert_eq!(state(&mut loaded), Some(CONN_ESTABLISHED), "the client's ACK");
        send(&mut loaded, &Ipv4::tcp(client, (VIP, 80), TCP_ACK | TCP_PSH, b""));
        assert_eq!(state(&mut loaded), Some(CONN_ESTABLISHED));
        let fin = Ipv4::tcp((WEB1, 8080), client, packet::TCP_FIN | TCP_ACK, b"");
        assert_eq!(loaded.run(&from_web1(&fin), IF_BACKEND).action, XDP_REDIRECT);
        assert_eq!(state(&mut loaded), Some(CONN_CLOSING), "the backend's FIN");
        send(&mut loaded, &Ipv4::tcp(client, (VIP, 80), packet::TCP_RST, b""));
        assert_eq!(state(&mut loaded), Some(CONN_CLOSED), "a RST");
        send(&mut loaded, &Ipv4::tcp(client, (VIP, 80), TCP_SYN, b""));
        assert_eq!(state(&mut loaded), Some(CONN_CLOSED), "a new SYN asks no table");
        // The new connection's handshake replaces the closed entry.
        loaded.handshake(client, (VIP, 80));
        assert_eq!(
            state(&mut loaded),
            Some(CONN_ESTABLISHED),
            "a new connection on the same ports"
        );
    });
}

/// An expired entry counts as absent: a flow on a drained backend keeps it
/// while its entry lives, and is placed anew once the entry has expired; the
/// controller's recount does not count it, and leaves it for the next flow
/// of its set to take.
#[test]
fn expired_connections_count_as_absent() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let timeouts = lb_ctl::desired::model::Timeouts {
            tcp_established: std::time::Duration::from_millis(200), // 2 ticks
            ..lb_ctl::desired::model::Timeouts::default()
        };
        loaded.reconciler.maps_mut().set_timeouts(&timeouts).expect("timeouts");
        let services = lb_ctl::desired::config::parse(&config()).unwrap().services;
        // A flow of the rr service, established on web1 (the first in turn).
        let client = (CLIENT, 45_000);
        let ack = from_client(&Ipv4::tcp(client, (VIP_SCHEDULERS, 81), TCP_ACK, b""));
        assert_eq!(loaded.handshake(client, (VIP_SCHEDULERS, 81)).0, WEB1, "the first in turn");
        // Drain that backend: the live entry keeps the flow on it.
        let mut drained = services.clone();
        let rr = drained.iter_mut().find(|s| s.name == "rr").unwrap();
        rr.backends.iter_mut().find(|b| b.address == WEB1).unwrap().weight = 0;
        loaded.reconciler.apply(&drained).expect("drain");
        assert_eq!(sent_to(&loaded, &ack), WEB1, "kept while live");
        // Three ticks later the entry has expired: the flow is placed anew.
        for _ in 0..3 {
            loaded.reconciler.advance_clock().expect("tick");
        }
        let counts = loaded.reconciler.recount_connections().expect("recount");
        assert!(counts.is_empty(), "the expired entry is not counted: {counts:?}");
        assert_eq!(loaded.conntrack_len(), 1, "left in place");
        let anew = sent_to(&loaded, &ack);
        assert!([WEB2, WEB3].contains(&anew), "placed anew on an undrained backend, not {anew}");
    });
}

/// `lc`: the backend with the least `active * 256 + inactive` connections
/// per unit of weight, ties to the first in the list; each pick counts at
/// once as an inactive connection, so a burst spreads.
#[test]
fn lc_picks_the_least_loaded_backend() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let [web1, web2, web3] =
            [WEB1, WEB2, WEB3].map(|addr| loaded.backend_id(VIP_SCHEDULERS, 84, addr, 85));
        // Scores 256, 1, 0. With each pick adding one inactive connection:
        // web3 (0), web2 (1, tied with web3 and first in the list), web3
        // (1 against 2), web2 (2, tied). Not counted, all four would go to
        // web3; counted as active (+256), the third would go to web1.
        loaded.set_conns(web1, BackendConns { active: 1, inactive: 0 });
        loaded.set_conns(web2, BackendConns { active: 0, inactive: 1 });
        loaded.set_conns(web3, BackendConns { active: 0, inactive: 0 });
        let picks = destinations(&loaded, 84, (0..4).map(|i| (CLIENT, 33_000 + i)));
        assert_eq!(picks, [13, 12, 13, 12], "each pick adds one inactive connection");
        // web2 now counts 3 inactive connections, web1 one active (256).
        loaded.set_conns(web3, BackendConns { active: 10, inactive: 0 });
        assert_eq!(destinations(&loaded, 84, std::iter::once((CLIENT, 33_100))), [12]);
    });
}

/// A flow whose backend was removed from the config (not drained): its next
/// TCP packet gets a reset; a UDP flow is placed anew.
#[test]
fn a_removed_backend_resets_its_tcp_flows() {
    let ns = FixtureNs::create("lbt-fix");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let mut services = lb_ctl::desired::config::parse(&config()).unwrap().services;
        loaded.handshake((CLIENT, 46_000), (VIP, 80));
        let mut data = Ipv4::tcp((CLIENT, 46_000), (VIP, 80), TCP_ACK | TCP_PSH, b"more");
        if let L4::Tcp { ack, .. } = &mut data.l4 {
            *ack = 7000;
        }
        assert_eq!(loaded.run(&from_client(&data), IF_CLIENT).action, XDP_REDIRECT);
        services.iter_mut().find(|s| s.name == "web").unwrap().backends.clear();
        loaded.reconciler.apply(&services).expect("remove web1:8080");
        let before = loaded.counter(Counter::RstBackendGone);
        let out = loaded.run(&from_client(&data), IF_CLIENT);
        assert_eq!(
            (out.action, out.frame),
            (XDP_TX, reset_frame(VIP, 46_000, packet::TCP_RST, 7000, 0))
        );
        assert_eq!(loaded.counter(Counter::RstBackendGone), before + 1);
    });
}

/// The data plane keeps its own time (jiffies, scaled by `lb_epoch`): with
/// no controller advancing anything, a flow's entry is stamped with the
/// current tick, the controller reads the same tick through `lb_clock`, and
/// a changed neighbour is picked up within a tick.
#[test]
fn the_data_plane_clock_runs_without_a_controller() {
    let ns = FixtureNs::create("lbt-fix");
    let ns_name = ns.name.clone();
    in_ns(&ns.name, move || {
        let mut loaded = Loaded::with_running_clock(4096);
        let now = |loaded: &mut Loaded| {
            loaded.reconciler.maps_mut().epoch_now().expect("the data plane's clock")
        };
        let client = (CLIENT, 47_000);
        let flow = flow_of(client, (VIP, 80), PROTO_TCP);
        let send = |loaded: &mut Loaded, flags: u8| {
            loaded.run(&from_client(&Ipv4::tcp(client, (VIP, 80), flags, b"")), IF_CLIENT)
        };
        let first = now(&mut loaded);
        loaded.handshake(client, (VIP, 80));
        // Entries keep the tick's low 32 bits.
        let stamped = loaded.conn(&flow).expect("an entry").last_seen;
        assert!(stamped.wrapping_sub(first as u32) <= 1, "{stamped} against {first}");
        // 450 ms: four or five ticks of 100 ms.
        std::thread::sleep(std::time::Duration::from_millis(450));
        let later = now(&mut loaded);
        assert!((4..=5).contains(&(later - first)), "{} ticks in 450 ms", later - first);
        send(&mut loaded, TCP_ACK);
        let restamped = loaded.conn(&flow).expect("an entry").last_seen;
        assert!(restamped.wrapping_sub(later as u32) <= 1, "{restamped} against {later}");

        // A backend's new MAC, and nobody advances anything: the next-hop
        // cache is stale one tick later.
        let frame = from_client(&syn((VIP, 80)));
        assert_eq!(loaded.run(&frame, IF_CLIENT).frame[..6], WEB_MACS[0]);
        let new_mac = [0x02, 0, 0, 0, 0x02, 0xef];
        web1_moves_to(&ns_name, new_mac);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(loaded.run(&frame, IF_CLIENT).frame[..6], new_mac, "picked up within a tick");
    });
}
