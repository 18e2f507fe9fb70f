//! The data plane at the edge, through BPF_PROG_TEST_RUN like the packet
//! fixtures: ICMP errors about our flows translated both ways, "fragmentation
//! needed" for packets too big for their next link, and the bounds on every
//! answer the program sends (a budget per CPU and tick; never to a backend
//! or a link-layer group address). Expected frames are built independently
//! by `lb_testbed::packet`, checksums computed from scratch.
use std::net::Ipv4Addr;

use lb_common::counter::Counter;
use lb_ctl::desired::model::ReversePath;
use lb_testbed::{
    fixture::*,
    netns::{in_ns, ns_sh},
    packet::{
        self, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, Ipv4, L4, Mac, TCP_ACK, TCP_SYN, icmp_error,
        quote,
    },
    testrun::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name},
};

/// A router between the clients and the load balancer.
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 254);
/// A router between the load balancer and the backends.
const ROUTER_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 254);
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0xfe];
const FRAG_NEEDED: (u8, u8) = (ICMP_DEST_UNREACH, 4);
const HOST_UNREACHABLE: (u8, u8) = (ICMP_DEST_UNREACH, 1);
const PORT_UNREACHABLE: (u8, u8) = (ICMP_DEST_UNREACH, 3);
const TTL_EXCEEDED: (u8, u8) = (ICMP_TIME_EXCEEDED, 0);
/// The rest of a "fragmentation needed" header: the next-hop MTU.
const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];

fn from_client_side(p: &Ipv4, src_mac: Mac) -> Vec<u8> {
    p.frame(IF_CLIENT_MAC, src_mac)
}

fn from_backend_side(p: &Ipv4, src_mac: Mac) -> Vec<u8> {
    p.frame(IF_BACKEND_MAC, src_mac)
}

/// `p`, one hop later.
fn hop(p: &Ipv4) -> Ipv4 {
    let mut p = p.clone();
    p.ttl -= 1;
    p
}

/// The quote of `translated` as the load balancer writes it over the quote
/// of `original`: addresses and ports translated (the IPv4 header and the
/// first 4 bytes after it), the rest as quoted (a UDP checksum included:
/// it covers a datagram the quote cuts short, so nobody checks it).
fn translated_quote(original: &Ipv4, translated: &Ipv4) -> Vec<u8> {
    let header = 20 + translated.options.len();
    [&quote(translated)[..header + 4], &quote(original)[header + 4..]].concat()
}

/// Runs `frame` and checks the verdict, that `counter` went up by one, and
/// the output (`None`: unchanged).
fn check(
    loaded: &mut Loaded,
    what: &str,
    (frame, ingress): (&[u8], &str),
    action: u32,
    counter: Counter,
    output: Option<&[u8]>,
) {
    let before = loaded.counter(counter);
    let out = loaded.run(frame, ingress);
    assert_eq!(
        action_name(out.action),
        action_name(action),
        "{what}: verdict (counter {})",
        counter.name()
    );
    assert_eq!(loaded.counter(counter), before + 1, "{what}: counter {}", counter.name());
    assert_eq!(out.frame, output.unwrap_or(frame), "{what}: output bytes");
}

/// Errors about a reply the load balancer sent from a VIP (a router past it
/// could not deliver `VIP:80 -> client`) go to the backend that owns the
/// flow, as if about the backend's own packet; errors about anything else
/// go to the kernel untouched.
#[test]
fn errors_about_replies_go_to_their_backend() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 41_000);
        let syn = Ipv4::tcp(client, (VIP, 80), TCP_SYN, b"");
        assert_eq!(loaded.run(&from_client_side(&syn, CLIENT_MAC), IF_CLIENT).action, XDP_REDIRECT);
        let (sent, left) = web_reply(client);
        for kind in [FRAG_NEEDED, HOST_UNREACHABLE, TTL_EXCEEDED, (ICMP_TIME_EXCEEDED, 1)] {
            let rest = if kind == FRAG_NEEDED { MTU_1280 } else { [0; 4] };
            let error = icmp_error(ROUTER_CLIENT_SIDE, VIP, kind, rest, &quote(&left));
            let expected = hop(&icmp_error(
                ROUTER_CLIENT_SIDE,
                WEB1,
                kind,
                rest,
                &translated_quote(&left, &sent),
            ));
            check(
                &mut loaded,
                &format!("ICMP {kind:?} about a reply to the VIP"),
                (&from_client_side(&error, ROUTER_MAC), IF_CLIENT),
                XDP_REDIRECT,
                Counter::IcmpToBackend,
                Some(&expected.frame(WEB_MACS[0], IF_BACKEND_MAC)),
            );
        }

        // UDP: the quoted checksum is left as it was.
        let query = Ipv4::udp((CLIENT, 41_053), (VIP, 53), b"query");
        assert_eq!(
            loaded.run(&from_client_side(&query, CLIENT_MAC), IF_CLIENT).action,
            XDP_REDIRECT
        );
        let answer = hop(&Ipv4::udp((WEB2, 5353), (CLIENT, 41_053), b"a long answer"));
        let mut answer_left = answer.clone();
        answer_left.src = VIP;
        if let L4::Udp { sport, .. } = &mut answer_left.l4 {
            *sport = 53;
        }
        let error =
            icmp_error(ROUTER_CLIENT_SIDE, VIP, FRAG_NEEDED, MTU_1280, &quote(&answer_left));
        let expected = hop(&icmp_error(
            ROUTER_CLIENT_SIDE,
            WEB2,
            FRAG_NEEDED,
            MTU_1280,
            &translated_quote(&answer_left, &answer),
        ));
        check(
            &mut loaded,
            "fragmentation needed about a UDP answer",
            (&from_client_side(&error, ROUTER_MAC), IF_CLIENT),
            XDP_REDIRECT,
            Counter::IcmpToBackend,
            Some(&expected.frame(WEB_MACS[1], IF_BACKEND_MAC)),
        );

        // Direct routing: the backend sent the reply from the VIP itself;
        // it gets the frame as it is.
        let dsr_client = (CLIENT, 41_001);
        let dsr_syn = Ipv4::tcp(dsr_client, (VIP_DSR, 80), TCP_SYN, b"");
        assert_eq!(
            loaded.run(&from_client_side(&dsr_syn, CLIENT_MAC), IF_CLIENT).action,
            XDP_REDIRECT
        );
        let dsr_reply = Ipv4::tcp((VIP_DSR, 80), dsr_client, TCP_SYN | TCP_ACK, b"");
        let error =
            icmp_error(ROUTER_CLIENT_SIDE, VIP_DSR, FRAG_NEEDED, MTU_1280, &quote(&dsr_reply));
        check(
            &mut loaded,
            "an error about a direct-routing reply",
            (&from_client_side(&error, ROUTER_MAC), IF_CLIENT),
            XDP_REDIRECT,
            Counter::IcmpToBackend,
            Some(&error.frame(WEB_MACS[1], IF_BACKEND_MAC)),
        );
    });
}

/// The reply to `client` as web1 sent it, and as it left the load balancer.
fn web_reply(client: (Ipv4Addr, u16)) -> (Ipv4, Ipv4) {
    let mut sent = hop(&Ipv4::tcp((WEB1, 8080), client, TCP_SYN | TCP_ACK, b""));
    if let L4::Tcp { seq, ack, .. } = &mut sent.l4 {
        (*seq, *ack) = (77_000, 1001);
    }
    let mut left = sent.clone();
    left.src = VIP;
    if let L4::Tcp { sport, .. } = &mut left.l4 {
        *sport = 80;
    }
    (sent, left)
}

/// ICMP that is not an error about one of our flows goes to the kernel as
/// it came; an error "from" a martian is dropped like anything to a VIP.
#[test]
fn other_icmp_goes_to_the_kernel() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 41_000);
        let syn = Ipv4::tcp(client, (VIP, 80), TCP_SYN, b"");
        assert_eq!(loaded.run(&from_client_side(&syn, CLIENT_MAC), IF_CLIENT).action, XDP_REDIRECT);
        let (_, left) = web_reply(client);
        // Not ours: a flow the table does not know, a port no service has,
        // a quote cut short, a quote with IPv4 options, an error quoting
        // a later fragment. All to the kernel as they came.
        let mut unknown = left.clone();
        if let L4::Tcp { dport, .. } = &mut unknown.l4 {
            *dport = 41_999;
        }
        let mut other_port = left.clone();
        if let L4::Tcp { sport, .. } = &mut other_port.l4 {
            *sport = 9;
        }
        let mut with_options = left.clone();
        with_options.options = vec![1, 1, 1, 1];
        let mut later_fragment = left.clone();
        later_fragment.frag_off = 0x2000 | 8;
        let cut = &quote(&left)[..24];
        let not_ours = [
            ("an unknown flow", quote(&unknown)),
            ("a port no service has", quote(&other_port)),
            ("a quote cut short", cut.to_vec()),
            ("a quote with options", quote(&with_options)),
            ("a quoted later fragment", left.to_bytes()[..28].to_vec()),
        ];
        for (what, quoted) in not_ours {
            let mut quoted = quoted;
            if what == "a quoted later fragment" {
                quoted[6..8].copy_from_slice(&(0x2000_u16 | 8).to_be_bytes());
            }
            let error = icmp_error(ROUTER_CLIENT_SIDE, VIP, FRAG_NEEDED, MTU_1280, &quoted);
            check(
                &mut loaded,
                what,
                (&from_client_side(&error, ROUTER_MAC), IF_CLIENT),
                XDP_PASS,
                Counter::PassIcmpNotOurs,
                None,
            );
        }
        // Not errors: an echo request to the VIP is the kernel's to answer.
        let echo =
            Ipv4::new(CLIENT, VIP, L4::Raw { proto: 1, bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0] });
        check(
            &mut loaded,
            "an echo request",
            (&from_client_side(&echo, CLIENT_MAC), IF_CLIENT),
            XDP_PASS,
            Counter::PassNotTcpUdp,
            None,
        );
        // An error "from" a martian source is dropped like any packet to a VIP.
        let forged = icmp_error(Ipv4Addr::LOCALHOST, VIP, FRAG_NEEDED, MTU_1280, &quote(&left));
        check(
            &mut loaded,
            "an error from 127.0.0.1",
            (&from_client_side(&forged, ROUTER_MAC), IF_CLIENT),
            XDP_DROP,
            Counter::DropMartianSource,
            None,
        );
    });
}

/// Errors about a client's packet from the backend side (the backend's
/// port unreachable, a router's time exceeded) reach the client from the
/// VIP, quoting the packet as the client sent it: no backend address shows.
#[test]
fn errors_about_client_packets_reach_the_client_from_the_vip() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        // What the client sent, and what web2 got.
        let sent = hop(&Ipv4::udp((CLIENT, 42_053), (VIP, 53), b"query"));
        let mut got = sent.clone();
        got.dst = WEB2;
        if let L4::Udp { dport, .. } = &mut got.l4 {
            *dport = 5353;
        }
        let error = icmp_error(WEB2, CLIENT, PORT_UNREACHABLE, [0; 4], &quote(&got));
        let expected =
            hop(&icmp_error(VIP, CLIENT, PORT_UNREACHABLE, [0; 4], &translated_quote(&got, &sent)));
        check(
            &mut loaded,
            "web2's port unreachable",
            (&from_backend_side(&error, WEB_MACS[1]), IF_BACKEND),
            XDP_REDIRECT,
            Counter::IcmpToClient,
            Some(&expected.frame(CLIENT_MAC, IF_CLIENT_MAC)),
        );

        // A router before web1 lets a client's TCP segment expire.
        let tcp_sent = hop(&Ipv4::tcp((CLIENT, 42_000), (VIP, 80), TCP_ACK, b"data"));
        let mut tcp_got = tcp_sent.clone();
        tcp_got.dst = WEB1;
        if let L4::Tcp { dport, .. } = &mut tcp_got.l4 {
            *dport = 8080;
        }
        let error = icmp_error(ROUTER_BACKEND_SIDE, CLIENT, TTL_EXCEEDED, [0; 4], &quote(&tcp_got));
        let expected = hop(&icmp_error(
            VIP,
            CLIENT,
            TTL_EXCEEDED,
            [0; 4],
            &translated_quote(&tcp_got, &tcp_sent),
        ));
        check(
            &mut loaded,
            "a router's time exceeded",
            (&from_backend_side(&error, ROUTER_MAC), IF_BACKEND),
            XDP_REDIRECT,
            Counter::IcmpToClient,
            Some(&expected.frame(CLIENT_MAC, IF_CLIENT_MAC)),
        );

        // Not ours: a backend address on a port no service uses, and an
        // error addressed to someone other than the quoted sender.
        let mut other_port = tcp_got.clone();
        if let L4::Tcp { dport, .. } = &mut other_port.l4 {
            *dport = 9999;
        }
        let cases = [
            (
                "a backend's other port",
                icmp_error(WEB1, CLIENT, PORT_UNREACHABLE, [0; 4], &quote(&other_port)),
            ),
            (
                "addressed to another host",
                icmp_error(WEB1, HAIRPIN, PORT_UNREACHABLE, [0; 4], &quote(&tcp_got)),
            ),
        ];
        for (what, error) in cases {
            check(
                &mut loaded,
                what,
                (&from_backend_side(&error, WEB_MACS[0]), IF_BACKEND),
                XDP_PASS,
                Counter::PassIcmpNotOurs,
                None,
            );
        }

        // Errors come from where the quoted packet was going: web1's port
        // unreachable arriving from the client side is a client's forgery,
        // and an error about a reply to the client from the backend side too.
        let forged =
            icmp_error(ROUTER_CLIENT_SIDE, CLIENT, PORT_UNREACHABLE, [0; 4], &quote(&tcp_got));
        check(
            &mut loaded,
            "an error about a packet to web1 from the client side",
            (&from_client_side(&forged, ROUTER_MAC), IF_CLIENT),
            XDP_DROP,
            Counter::DropReversePath,
            None,
        );
        let syn = Ipv4::tcp((CLIENT, 42_001), (VIP, 80), TCP_SYN, b"");
        assert_eq!(loaded.run(&from_client_side(&syn, CLIENT_MAC), IF_CLIENT).action, XDP_REDIRECT);
        let (_, left) = web_reply((CLIENT, 42_001));
        let forged = icmp_error(ROUTER_BACKEND_SIDE, VIP, FRAG_NEEDED, MTU_1280, &quote(&left));
        check(
            &mut loaded,
            "an error about a reply to a client from the backend side",
            (&from_backend_side(&forged, ROUTER_MAC), IF_BACKEND),
            XDP_DROP,
            Counter::DropReversePath,
            None,
        );
    });
}

/// A packet with DF set too big for its next link is answered like a
/// router would, "fragmentation needed" with the link's MTU, from the VIP:
/// a client's packet to the client, a backend's reply to the backend.
/// Without DF it is dropped (the data plane does not fragment).
#[test]
fn packets_too_big_get_fragmentation_needed() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let big = vec![0x42; usize::from(BACKEND_SIDE_MTU) - 40 + 1];
        let request = Ipv4::tcp((CLIENT, 43_000), (VIP, 80), TCP_ACK, &big);
        let mtu = u32::from(BACKEND_SIDE_MTU).to_be_bytes();
        let expected = icmp_error(VIP, CLIENT, FRAG_NEEDED, mtu, &quote(&request));
        check(
            &mut loaded,
            "a client's segment too big for the backend side",
            (&from_client_side(&request, CLIENT_MAC), IF_CLIENT),
            XDP_TX,
            Counter::FragNeeded,
            Some(&expected.frame(CLIENT_MAC, IF_CLIENT_MAC)),
        );
        let big_datagram = vec![0x42; usize::from(BACKEND_SIDE_MTU) - 28 + 1];
        let mut no_df = Ipv4::udp((CLIENT, 43_053), (VIP, 53), &big_datagram);
        no_df.frag_off = 0;
        check(
            &mut loaded,
            "a datagram too big without DF",
            (&from_client_side(&no_df, CLIENT_MAC), IF_CLIENT),
            XDP_DROP,
            Counter::DropTooBig,
            None,
        );

        // The client side's MTU is 1500.
        let reply = Ipv4::tcp((WEB1, 8080), (CLIENT, 43_000), TCP_ACK, &[0x43; 1500 - 40 + 1]);
        let expected = icmp_error(VIP, WEB1, FRAG_NEEDED, 1500_u32.to_be_bytes(), &quote(&reply));
        check(
            &mut loaded,
            "a backend's reply too big for the client side",
            (&from_backend_side(&reply, WEB_MACS[0]), IF_BACKEND),
            XDP_TX,
            Counter::FragNeeded,
            Some(&expected.frame(WEB_MACS[0], IF_BACKEND_MAC)),
        );
        let mut reply_no_df = reply.clone();
        reply_no_df.frag_off = 0;
        check(
            &mut loaded,
            "a reply too big without DF",
            (&from_backend_side(&reply_no_df, WEB_MACS[0]), IF_BACKEND),
            XDP_DROP,
            Counter::DropTooBig,
            None,
        );
    });
}

/// Every answer takes from its CPU's budget for the tick; past it, the
/// packet is dropped and counted, and the next tick brings a new budget.
/// Answers never go to a backend's address nor answer a frame sent to a
/// link-layer broadcast.
#[test]
fn answers_are_bounded_and_never_reflected() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        // 20 a second: 2 a tick.
        loaded.reconciler.maps_mut().set_policy(20, ReversePath::Strict).expect("the budget");
        let syn = |port: u16| {
            from_client_side(
                &Ipv4::tcp((CLIENT, port), (VIP_REJECTING, 80), TCP_SYN, b""),
                CLIENT_MAC,
            )
        };
        let big = Ipv4::tcp(
            (CLIENT, 44_100),
            (VIP, 80),
            TCP_ACK,
            &vec![0x42; usize::from(BACKEND_SIDE_MTU)],
        );
        check(
            &mut loaded,
            "1st answer",
            (&syn(44_001), IF_CLIENT),
            XDP_TX,
            Counter::RejectTcp,
            Some(&loaded_reset(44_001)),
        );
        let big_frame = from_client_side(&big, CLIENT_MAC);
        let out = loaded.run(&big_frame, IF_CLIENT);
        assert_eq!(action_name(out.action), "XDP_TX", "2nd answer: fragmentation needed");
        check(
            &mut loaded,
            "3rd answer",
            (&syn(44_003), IF_CLIENT),
            XDP_DROP,
            Counter::DropAnswerBudget,
            None,
        );
        check(
            &mut loaded,
            "4th answer",
            (&big_frame, IF_CLIENT),
            XDP_DROP,
            Counter::DropAnswerBudget,
            None,
        );
        loaded.reconciler.advance_clock().expect("a tick");
        check(
            &mut loaded,
            "next tick",
            (&syn(44_005), IF_CLIENT),
            XDP_TX,
            Counter::RejectTcp,
            Some(&loaded_reset(44_005)),
        );

        // A backend as a client (from an ephemeral port) is not answered.
        let from_backend = from_backend_side(
            &Ipv4::tcp((WEB1, 44_006), (VIP_REJECTING, 80), TCP_SYN, b""),
            WEB_MACS[0],
        );
        check(
            &mut loaded,
            "to a backend",
            (&from_backend, IF_BACKEND),
            XDP_DROP,
            Counter::DropAnswerForbidden,
            None,
        );
        // Nor a frame sent to the link's broadcast address: a router
        // forwards only frames sent to it, and answers none of the others.
        let mut broadcast = syn(44_007);
        broadcast[..6].copy_from_slice(&[0xff; 6]);
        check(
            &mut loaded,
            "a broadcast frame",
            (&broadcast, IF_CLIENT),
            XDP_DROP,
            Counter::DropLinkGroup,
            None,
        );

        // A budget of 0: never.
        loaded.reconciler.maps_mut().set_policy(0, ReversePath::Strict).expect("no budget");
        loaded.reconciler.advance_clock().expect("a tick");
        check(
            &mut loaded,
            "no budget",
            (&syn(44_008), IF_CLIENT),
            XDP_DROP,
            Counter::DropAnswerBudget,
            None,
        );
    });
}

/// A packet to a VIP, and a backend's reply, are taken only from where
/// their source is: the route back to it leaves by the interface they
/// arrived on (strict), or at least exists (loose), and it is not one of
/// the load balancer's own addresses. A forged reply moves no connection's
/// state; a forged client packet makes no entry, and a flow the cache knows
/// is not served from it when it arrives by another interface.
#[test]
fn sources_must_be_where_their_route_leaves() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 45_000);
        let flow = lb_common::abi::Flow {
            src: CLIENT.octets(),
            dst: VIP.octets(),
            sport: client.1,
            dport: 80,
            proto: 6,
            _pad: [0; 3],
        };
        loaded.handshake(client, (VIP, 80));
        let established = loaded.conn(&flow).expect("an entry").state;
        let forged_rst = Ipv4::tcp((WEB1, 8080), client, packet::TCP_RST, b"");
        check(
            &mut loaded,
            "web1's reset arriving from the client side",
            (&from_client_side(&forged_rst, ROUTER_MAC), IF_CLIENT),
            XDP_DROP,
            Counter::DropReversePath,
            None,
        );
        assert_eq!(loaded.conn(&flow).expect("an entry").state, established, "state unchanged");

        // Served from the flow cache on the client side; not on the other.
        let data = Ipv4::tcp(client, (VIP, 80), TCP_ACK, b"more");
        assert_eq!(
            loaded.run(&from_client_side(&data, CLIENT_MAC), IF_CLIENT).action,
            XDP_REDIRECT
        );
        check(
            &mut loaded,
            "a known flow's packet arriving from the backend side",
            (&from_backend_side(&data, ROUTER_MAC), IF_BACKEND),
            XDP_DROP,
            Counter::DropReversePath,
            None,
        );

        let syn_from = |src: Ipv4Addr, port: u16| Ipv4::tcp((src, port), (VIP, 80), TCP_SYN, b"");
        let refused = [
            ("web1's address from the client side", syn_from(WEB1, 45_001), IF_CLIENT),
            ("a client from the backend side", syn_from(CLIENT, 45_002), IF_BACKEND),
            ("an address of the load balancer", syn_from(LB_CLIENT_SIDE, 45_003), IF_CLIENT),
            ("a source with no route back", syn_from(UNREACHABLE_CLIENT, 45_004), IF_CLIENT),
        ];
        for (what, syn, ingress) in &refused {
            let before = loaded.conntrack_len();
            check(
                &mut loaded,
                what,
                (&syn.frame(IF_CLIENT_MAC, ROUTER_MAC), ingress),
                XDP_DROP,
                Counter::DropReversePath,
                None,
            );
            assert_eq!(loaded.conntrack_len(), before, "{what}: no entry");
        }
        // A client the load balancer has no neighbour entry for is fine.
        let unseen = syn_from(UNSEEN_CLIENT, 45_005).frame(IF_CLIENT_MAC, ROUTER_MAC);
        assert_eq!(loaded.run(&unseen, IF_CLIENT).action, XDP_REDIRECT, "an unseen client");

        // Loose: any route back will do, but never a local address.
        let loose = [
            // Towards web1, out of the interface it came in on.
            (&refused[1], XDP_TX, Counter::Tx),
            (&refused[2], XDP_DROP, Counter::DropReversePath),
        ];
        loaded.reconciler.maps_mut().set_policy(1000, ReversePath::Loose).expect("loose");
        for ((what, syn, ingress), action, counter) in loose {
            let frame = syn.frame(IF_CLIENT_MAC, ROUTER_MAC);
            let out = loaded.run(&frame, ingress);
            assert_eq!(
                (action_name(out.action), loaded.counter(counter) > 0),
                (action_name(action), true),
                "loose: {what}"
            );
        }
        // Off: no check at all.
        loaded.reconciler.maps_mut().set_policy(1000, ReversePath::Off).expect("off");
        let (what, syn, ingress) = &refused[2];
        let frame = syn.frame(IF_CLIENT_MAC, ROUTER_MAC);
        assert_eq!(loaded.run(&frame, ingress).action, XDP_REDIRECT, "off: {what}");
    });
}

/// TCP segments whose flags no connection sends are dropped both ways
/// (SYN+FIN, SYN+RST, none at all), and make no entry; every flag a
/// connection does send goes through.
#[test]
fn segments_with_impossible_flags_are_dropped() {
    use packet::{TCP_FIN, TCP_PSH, TCP_RST};
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        for (i, flags) in [TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST, 0, TCP_FIN, TCP_PSH, 0xff]
            .into_iter()
            .enumerate()
        {
            let to_vip = Ipv4::tcp((CLIENT, 48_000 + i as u16), (VIP, 80), flags, b"");
            let before = loaded.conntrack_len();
            check(
                &mut loaded,
                &format!("flags {flags:#04x} to the VIP"),
                (&from_client_side(&to_vip, CLIENT_MAC), IF_CLIENT),
                XDP_DROP,
                Counter::DropTcpFlags,
                None,
            );
            assert_eq!(loaded.conntrack_len(), before, "flags {flags:#04x}: no entry");
            let reply = Ipv4::tcp((WEB1, 8080), (CLIENT, 48_000), flags, b"");
            check(
                &mut loaded,
                &format!("flags {flags:#04x} from web1"),
                (&from_backend_side(&reply, WEB_MACS[0]), IF_BACKEND),
                XDP_DROP,
                Counter::DropTcpFlags,
                None,
            );
        }
        for (i, flags) in
            [TCP_SYN, TCP_RST, TCP_RST | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_ACK | TCP_PSH]
                .into_iter()
                .enumerate()
        {
            let to_vip = Ipv4::tcp((CLIENT, 48_100 + i as u16), (VIP, 80), flags, b"");
            let out = loaded.run(&from_client_side(&to_vip, CLIENT_MAC), IF_CLIENT);
            assert_eq!(action_name(out.action), "XDP_REDIRECT", "flags {flags:#04x}");
        }
    });
}

/// The address prefilter is a 64 Ki-slot hash: an address that shares a
/// VIP's slot is someone else's, and its odd packets go to the kernel as
/// they are, not dropped as if they were to the VIP.
#[test]
fn a_vips_slot_twin_is_not_taken_for_the_vip() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let slot = lb_common::abi::addr_slot(VIP.octets());
        let twin = (1..=254_u8)
            .flat_map(|a| (0..=255_u8).map(move |b| Ipv4Addr::new(a, b, 10, 77)))
            .find(|t| *t != VIP && lb_common::abi::addr_slot(t.octets()) == slot)
            .expect("an address sharing the VIP's slot");
        let martian = Ipv4::udp((Ipv4Addr::UNSPECIFIED, 68), (twin, 67), b"dhcp");
        check(
            &mut loaded,
            &format!("0.0.0.0 to {twin}"),
            (&from_client_side(&martian, CLIENT_MAC), IF_CLIENT),
            XDP_PASS,
            Counter::PassNotService,
            None,
        );
        let mut short =
            from_client_side(&Ipv4::tcp((CLIENT, 49_000), (twin, 80), TCP_SYN, b""), CLIENT_MAC);
        short.truncate(14 + 20 + 10);
        short[16..18].copy_from_slice(&30_u16.to_be_bytes());
        check(
            &mut loaded,
            &format!("a cut TCP header to {twin}"),
            (&short, IF_CLIENT),
            XDP_PASS,
            Counter::PassMalformed,
            None,
        );
        // The same to the VIP itself is dropped.
        let mut short_to_vip =
            from_client_side(&Ipv4::tcp((CLIENT, 49_000), (VIP, 80), TCP_SYN, b""), CLIENT_MAC);
        short_to_vip.truncate(14 + 20 + 10);
        short_to_vip[16..18].copy_from_slice(&30_u16.to_be_bytes());
        check(
            &mut loaded,
            "a cut TCP header to the VIP",
            (&short_to_vip, IF_CLIENT),
            XDP_DROP,
            Counter::DropMalformed,
            None,
        );
    });
}

/// The reset `VIP_REJECTING:80` sends a SYN from `CLIENT:port`.
fn loaded_reset(port: u16) -> Vec<u8> {
    reset_to(CLIENT, port)
}

/// The reset `VIP_REJECTING:80` sends a SYN from `client:port` (on the
/// client side, through `CLIENT_MAC`).
fn reset_to(client: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut reset = Ipv4::new(
        VIP_REJECTING,
        client,
        L4::Tcp {
            sport: 80,
            dport: port,
            flags: packet::TCP_RST | TCP_ACK,
            seq: 0,
            ack: 1001,
            window: 0,
            payload: Vec::new(),
        },
    );
    reset.id = 0;
    reset.frame(CLIENT_MAC, IF_CLIENT_MAC)
}

/// Who is a backend is known exactly (`lb_backend_addrs`), not by the
/// address prefilter's word: a direct-routing backend's address, which the
/// prefilter's `ADDR_REAL` does not flag, gets no answer; a client whose
/// address only shares a backend's prefilter slot gets its reset and its
/// "fragmentation needed".
#[test]
fn answers_know_backends_exactly() {
    let ns = FixtureNs::create("lbt-edge");
    // A client behind the client side's router whose address shares web1's
    // slot in the prefilter.
    let slot = lb_common::abi::addr_slot(WEB1.octets());
    let twin = (0..=255_u8)
        .flat_map(|a| (0..=255_u8).map(move |b| Ipv4Addr::new(10, 88, a, b)))
        .find(|t| lb_common::abi::addr_slot(t.octets()) == slot)
        .expect("an address sharing web1's slot");
    let route = format!("{twin}/32");
    ns_sh(&ns.name, &["ip", "route", "add", &route, "via", &CLIENT.to_string(), "dev", IF_CLIENT]);
    in_ns(&ns.name, move || {
        let mut loaded = Loaded::new(4096);
        let dsr_mac = [0x02, 0, 0, 0, 0x02, 0x33];
        let from_dsr_backend =
            Ipv4::tcp((DSR_NO_NEIGH_BACKEND, 46_000), (VIP_REJECTING, 80), TCP_SYN, b"");
        check(
            &mut loaded,
            "a direct-routing backend's address to a rejecting service",
            (&from_backend_side(&from_dsr_backend, dsr_mac), IF_BACKEND),
            XDP_DROP,
            Counter::DropAnswerForbidden,
            None,
        );
        let syn = Ipv4::tcp((twin, 46_001), (VIP_REJECTING, 80), TCP_SYN, b"");
        check(
            &mut loaded,
            &format!("{twin}, web1's slot twin, to a rejecting service"),
            (&from_client_side(&syn, CLIENT_MAC), IF_CLIENT),
            XDP_TX,
            Counter::RejectTcp,
            Some(&reset_to(twin, 46_001)),
        );
        let big = vec![0x42; usize::from(BACKEND_SIDE_MTU) - 40 + 1];
        let request = Ipv4::tcp((twin, 46_002), (VIP, 80), TCP_ACK, &big);
        let mtu = u32::from(BACKEND_SIDE_MTU).to_be_bytes();
        let expected = icmp_error(VIP, twin, FRAG_NEEDED, mtu, &quote(&request));
        check(
            &mut loaded,
            &format!("{twin}, web1's slot twin, too big for the backend side"),
            (&from_client_side(&request, CLIENT_MAC), IF_CLIENT),
            XDP_TX,
            Counter::FragNeeded,
            Some(&expected.frame(CLIENT_MAC, IF_CLIENT_MAC)),
        );
    });
}

/// A backend's reply goes to a client, never to one of ours: rewritten,
/// `web1:8080 -> web2:5353` would reach web2 "from the VIP". Dropped
/// before it moves any state, to a NAT backend's address and to a
/// direct-routing one's alike; one to a VIP is a backend's service
/// endpoint sending to a VIP.
#[test]
fn replies_to_our_own_addresses_are_dropped() {
    let ns = FixtureNs::create("lbt-edge");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        for (what, dst) in [
            ("web2:5353, a NAT backend", (WEB2, 5353)),
            ("10.77.2.51:82, a direct-routing backend only", (DSR_NO_NEIGH_BACKEND, 82)),
            ("web1 itself", (WEB1, 40_000)),
        ] {
            let reply = Ipv4::tcp((WEB1, 8080), dst, TCP_ACK, b"from the VIP?");
            check(
                &mut loaded,
                &format!("web1:8080's reply to {what}"),
                (&from_backend_side(&reply, WEB_MACS[0]), IF_BACKEND),
                XDP_DROP,
                Counter::DropReplyToOurs,
                None,
            );
        }
        let to_vip = Ipv4::tcp((WEB1, 8080), (VIP, 9999), TCP_ACK, b"from the VIP?");
        check(
            &mut loaded,
            "web1:8080's reply to VIP:9999",
            (&from_backend_side(&to_vip, WEB_MACS[0]), IF_BACKEND),
            XDP_DROP,
            Counter::DropBackendPortToVip,
            None,
        );
        // A client's reply still goes through.
        let client = (CLIENT, 46_100);
        let syn = Ipv4::tcp(client, (VIP, 80), TCP_SYN, b"");
        assert_eq!(loaded.run(&from_client_side(&syn, CLIENT_MAC), IF_CLIENT).action, XDP_REDIRECT);
        let (sent, _) = web_reply(client);
        let out = loaded.run(&from_backend_side(&sent, WEB_MACS[0]), IF_BACKEND);
        assert_eq!(action_name(out.action), "XDP_REDIRECT", "an ordinary reply goes through");
        // A backend that is a client of the VIP (from an ephemeral port)
        // gets the replies of the flow it opened: the table vouches for it.
        let opened = Ipv4::tcp((WEB1, 46_200), (VIP, 80), TCP_SYN, b"");
        assert_eq!(loaded.run(&from_backend_side(&opened, WEB_MACS[0]), IF_BACKEND).action, XDP_TX);
        let reply = Ipv4::tcp((WEB1, 8080), (WEB1, 46_200), TCP_SYN | TCP_ACK, b"");
        let out = loaded.run(&from_backend_side(&reply, WEB_MACS[0]), IF_BACKEND);
        assert_eq!(action_name(out.action), "XDP_TX", "the reply of a flow a backend opened");
        let mut want = reply.clone();
        want.ttl -= 1;
        want.src = VIP;
        if let L4::Tcp { sport, .. } = &mut want.l4 {
            *sport = 80;
        }
        assert_eq!(out.frame, want.frame(WEB_MACS[0], IF_BACKEND_MAC), "translated like any reply");

        // Only the backend the flow is on: web1 opens a flow to the
        // three-backend service, and another of its backends "replies" with
        // a FIN, which would close it. Dropped; the flow, in its handshake,
        // has only its record, which no FIN turns into an entry.
        let opened = Ipv4::tcp((WEB1, 46_300), (VIP, 443), TCP_SYN, b"");
        let out = loaded.run(&from_backend_side(&opened, WEB_MACS[0]), IF_BACKEND);
        let on = Ipv4Addr::new(out.frame[30], out.frame[31], out.frame[32], out.frame[33]);
        let other = [WEB1, WEB2, WEB3].into_iter().find(|w| *w != on).expect("another backend");
        let flow = lb_common::abi::Flow {
            src: WEB1.octets(),
            dst: VIP.octets(),
            sport: 46_300,
            dport: 443,
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(loaded.conn(&flow), None, "a SYN leaves no entry");
        let forged = Ipv4::tcp((other, 443), (WEB1, 46_300), packet::TCP_FIN | TCP_ACK, b"");
        check(
            &mut loaded,
            &format!("{other}:443's FIN on a flow placed on {on}"),
            (&from_backend_side(&forged, WEB_MACS[0]), IF_BACKEND),
            XDP_DROP,
            Counter::DropReplyToOurs,
            None,
        );
        assert_eq!(loaded.conn(&flow), None, "still no entry");

        // An expired record vouches for nothing: a handshake record older
        // than the SYN timeout (200 ms, 2 ticks here).
        let timeouts = lb_ctl::desired::model::Timeouts {
            tcp_syn: std::time::Duration::from_millis(200),
            ..lb_ctl::desired::model::Timeouts::default()
        };
        loaded.reconciler.maps_mut().set_timeouts(&timeouts).expect("timeouts");
        let from_on = Ipv4::tcp((on, 443), (WEB1, 46_300), TCP_SYN | TCP_ACK, b"");
        let frame = from_backend_side(&from_on, WEB_MACS[0]);
        assert_eq!(action_name(loaded.run(&frame, IF_BACKEND).action), "XDP_TX", "while live");
        for _ in 0..3 {
            loaded.reconciler.advance_clock().expect("a tick");
        }
        check(
            &mut loaded,
            "the reply of a flow whose record expired",
            (&frame, IF_BACKEND),
            XDP_DROP,
            Counter::DropReplyToOurs,
            None,
        );
    });
}
