//! Fragmented datagrams through the real XDP program (BPF_PROG_TEST_RUN in
//! the fixture namespace): the first fragment is placed and rewritten like
//! a whole packet, the later ones follow it; replies in fragments are
//! translated back, fragment by fragment. Expected fragments come from
//! cutting the expected whole datagram with `packet::fragments`, checksums
//! computed from scratch: the first fragment's transport checksum, which
//! covers the whole datagram, must come out as the translated datagram's.
use std::net::Ipv4Addr;

use lb_common::counter::Counter;
use lb_testbed::{
    fixture::*,
    netns::in_ns,
    packet::{Ipv4, L4, Mac, TCP_ACK, fragments},
    testrun::{XDP_DROP, XDP_PASS, XDP_REDIRECT, action_name},
};

/// The fixture namespace (one test at a time).
const NS: &str = "lbt90";

/// 1,200 bytes of payload, cut at 512 bytes of IP payload: three fragments.
const CHUNK: usize = 512;

fn payload() -> Vec<u8> {
    (0..1200_u32).map(|i| (i % 251) as u8).collect()
}

/// `p`, one hop later, with its destination (`to_backend`) or its source
/// rewritten to `addr:port`.
fn translated(p: &Ipv4, to_backend: bool, (addr, port): (Ipv4Addr, u16)) -> Ipv4 {
    let mut p = p.clone();
    p.ttl -= 1;
    let (a, pt) = match &mut p.l4 {
        L4::Udp { sport, dport, .. } | L4::Tcp { sport, dport, .. } => {
            if to_backend {
                (&mut p.dst, dport)
            } else {
                (&mut p.src, sport)
            }
        }
        L4::Raw { .. } => unreachable!("TCP or UDP"),
    };
    *a = addr;
    *pt = port;
    p
}

/// Runs `frame`: its verdict, the counter it bumped by one, its output.
fn run(
    loaded: &mut Loaded,
    what: &str,
    frame: &[u8],
    ingress: &str,
    (action, counter): (u32, Counter),
) -> Vec<u8> {
    let before = loaded.counter(counter);
    let out = loaded.run(frame, ingress);
    assert_eq!(action_name(out.action), action_name(action), "{what}: verdict");
    assert_eq!(loaded.counter(counter), before + 1, "{what}: counter {}", counter.name());
    out.frame
}

fn frames(parts: &[Ipv4], dst: Mac, src: Mac) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.frame(dst, src)).collect()
}

/// A client's datagram in three fragments goes to the backend its first
/// fragment is placed on, every fragment rewritten; the backend's answer in
/// fragments comes back from the VIP.
#[test]
fn fragments_follow_their_first() {
    let ns = FixtureNs::create(NS);
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let mut query = Ipv4::udp((CLIENT, 46_053), (VIP, 53), &payload());
        query.frag_off = 0;
        let sent = fragments(&query, CHUNK);
        assert_eq!(sent.len(), 3);
        let want = fragments(&translated(&query, true, (WEB2, 5353)), CHUNK);
        let sent = frames(&sent, IF_CLIENT_MAC, CLIENT_MAC);
        let want = frames(&want, WEB_MACS[1], IF_BACKEND_MAC);
        for (i, (frame, want)) in sent.iter().zip(&want).enumerate() {
            let what = format!("the query's fragment {i}");
            let out = run(&mut loaded, &what, frame, IF_CLIENT, (XDP_REDIRECT, Counter::Redirect));
            assert_eq!(&out, want, "{what}: output bytes");
        }

        let mut answer = Ipv4::udp((WEB2, 5353), (CLIENT, 46_053), &payload());
        answer.frag_off = 0;
        answer.id = 0x4321;
        let sent = frames(&fragments(&answer, CHUNK), IF_BACKEND_MAC, WEB_MACS[1]);
        let want = fragments(&translated(&answer, false, (VIP, 53)), CHUNK);
        let want = frames(&want, CLIENT_MAC, IF_CLIENT_MAC);
        for (i, (frame, want)) in sent.iter().zip(&want).enumerate() {
            let what = format!("the answer's fragment {i}");
            let out = run(&mut loaded, &what, frame, IF_BACKEND, (XDP_REDIRECT, Counter::Redirect));
            assert_eq!(&out, want, "{what}: output bytes");
        }

        // Direct routing: every fragment's frame goes to the backend as it is.
        let mut segment = Ipv4::tcp((CLIENT, 46_080), (VIP_DSR, 80), TCP_ACK, &payload());
        segment.frag_off = 0;
        for (i, part) in fragments(&segment, CHUNK).iter().enumerate() {
            let what = format!("a direct-routing fragment {i}");
            let frame = part.frame(IF_CLIENT_MAC, CLIENT_MAC);
            let out = run(&mut loaded, &what, &frame, IF_CLIENT, (XDP_REDIRECT, Counter::Redirect));
            assert_eq!(out, part.frame(WEB_MACS[1], IF_BACKEND_MAC), "{what}: output bytes");
        }
    });
}

/// A later fragment of a UDP datagram that comes before its first finds
/// nothing: it goes to the kernel (XDP cannot hold it back), and so do the
/// datagram's other fragments, its first included, for the kernel to
/// reassemble (the controller sends the datagram on, see lb-ctl
/// `reassembled`). A TCP segment's is dropped (the kernel would answer the
/// reassembled segment with a reset); its first, and the ones after it, go
/// through. A decision lasts 2 s (20 ticks): then the datagram's first
/// fragment is placed again. Fragments not to a VIP are the kernel's; a TCP
/// fragment at offset 8 (RFC 1858's overlap) is dropped; a later fragment
/// from the wrong side fails the reverse-path check.
#[test]
fn fragments_without_their_first() {
    let ns = FixtureNs::create(NS);
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let mut query = Ipv4::udp((CLIENT, 47_053), (VIP, 53), &payload());
        query.frag_off = 0;
        let parts = frames(&fragments(&query, CHUNK), IF_CLIENT_MAC, CLIENT_MAC);
        let unchanged = |out: Vec<u8>, frame: &[u8], what: &str| assert_eq!(out, frame, "{what}");
        let to_kernel = (XDP_PASS, Counter::PassFragmentToKernel);
        for (i, what) in [(2, "the last fragment first"), (0, "then the first"), (1, "the middle")]
        {
            let out = run(&mut loaded, what, &parts[i], IF_CLIENT, to_kernel);
            unchanged(out, &parts[i], "passed as it came");
        }

        let mut segment = Ipv4::tcp((CLIENT, 47_080), (VIP, 80), TCP_ACK, &payload());
        segment.frag_off = 0;
        let pieces = frames(&fragments(&segment, CHUNK), IF_CLIENT_MAC, CLIENT_MAC);
        let early = (XDP_DROP, Counter::DropFragment);
        let out =
            run(&mut loaded, "a TCP segment's last fragment first", &pieces[2], IF_CLIENT, early);
        unchanged(out, &pieces[2], "left as it came");
        let forwarded = (XDP_REDIRECT, Counter::Redirect);
        run(&mut loaded, "then its first", &pieces[0], IF_CLIENT, forwarded);
        run(&mut loaded, "then its middle one", &pieces[1], IF_CLIENT, forwarded);
        run(&mut loaded, "its last one again", &pieces[2], IF_CLIENT, forwarded);
        run(
            &mut loaded,
            "from the backend side",
            &pieces[1],
            IF_BACKEND,
            (XDP_DROP, Counter::DropReversePath),
        );

        for _ in 0..21 {
            loaded.reconciler.advance_clock().expect("a tick");
        }
        run(&mut loaded, "a TCP fragment 2.1 s later", &pieces[1], IF_CLIENT, early);
        for (i, part) in parts.iter().enumerate() {
            let what = format!("2.1 s later, the datagram in order: fragment {i}");
            run(&mut loaded, &what, part, IF_CLIENT, forwarded);
        }

        let mut elsewhere = query.clone();
        elsewhere.dst = LB_CLIENT_SIDE;
        let elsewhere = fragments(&elsewhere, CHUNK)[1].frame(IF_CLIENT_MAC, CLIENT_MAC);
        let out = run(
            &mut loaded,
            "not to a VIP",
            &elsewhere,
            IF_CLIENT,
            (XDP_PASS, Counter::PassNotService),
        );
        unchanged(out, &elsewhere, "passed as it came");

        let mut segment = Ipv4::tcp((CLIENT, 47_080), (VIP, 80), TCP_ACK, &payload());
        segment.frag_off = 0;
        let mut overlap = fragments(&segment, CHUNK)[1].clone();
        overlap.frag_off = 1; // bytes 8.. of the TCP header: its flags
        let overlap = overlap.frame(IF_CLIENT_MAC, CLIENT_MAC);
        run(
            &mut loaded,
            "a TCP fragment at offset 8",
            &overlap,
            IF_CLIENT,
            (XDP_DROP, Counter::DropMalformed),
        );
    });
}

/// The kernel's path for out-of-order fragments has no edge checks of its
/// own: the data plane makes them before it passes anything. The loop
/// datagram `web2:5353 -> VIP:53` (web2 is the dns service's backend) in
/// fragments, its later one first, makes no entry and its first is refused
/// as any such datagram; a client's address arriving from the backend side
/// makes no entry either, so the same datagram from the client side later
/// is placed by XDP, not handed to the kernel.
#[test]
fn out_of_order_fragments_pass_the_edge_checks_first() {
    let ns = FixtureNs::create("lbt-frag");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let mut looping = Ipv4::udp((WEB2, 5353), (VIP, 53), &payload());
        looping.frag_off = 0;
        let parts = frames(&fragments(&looping, CHUNK), IF_CLIENT_MAC, CLIENT_MAC);
        let out = run(
            &mut loaded,
            "the loop's later fragment",
            &parts[2],
            IF_CLIENT,
            (XDP_DROP, Counter::DropFragment),
        );
        assert_eq!(out, parts[2], "left as it came");
        run(
            &mut loaded,
            "the loop's first fragment",
            &parts[0],
            IF_CLIENT,
            (XDP_DROP, Counter::DropBackendPortToVip),
        );

        let mut query = Ipv4::udp((CLIENT, 48_053), (VIP, 53), &payload());
        query.frag_off = 0;
        let from_client = frames(&fragments(&query, CHUNK), IF_CLIENT_MAC, CLIENT_MAC);
        let from_backend_side = frames(&fragments(&query, CHUNK), IF_BACKEND_MAC, WEB_MACS[0]);
        run(
            &mut loaded,
            "a client's later fragment from the backend side",
            &from_backend_side[2],
            IF_BACKEND,
            (XDP_DROP, Counter::DropReversePath),
        );
        let forwarded = (XDP_REDIRECT, Counter::Redirect);
        run(
            &mut loaded,
            "then its first from the client side",
            &from_client[0],
            IF_CLIENT,
            forwarded,
        );
        run(&mut loaded, "and its last", &from_client[2], IF_CLIENT, forwarded);
    });
}
