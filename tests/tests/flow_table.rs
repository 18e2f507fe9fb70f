//! How a flow gets into the connection table, through the real program
//! (BPF_PROG_TEST_RUN) in the fixture namespace: a SYN leaves only a
//! handshake record, the client's ACK of the backend's SYN-ACK records the
//! flow with the backend the SYN got, and nothing a forged source can send
//! reaches the table.
use std::net::Ipv4Addr;

use lb_common::{
    abi::{CONN_ESTABLISHED, CONN_UDP, Flow, PROTO_TCP, PROTO_UDP},
    counter::Counter,
};
use lb_testbed::{
    fixture::*,
    netns::in_ns,
    packet::{Ipv4, L4, TCP_ACK, TCP_PSH, TCP_SYN},
    testrun::{XDP_PASS, XDP_REDIRECT, action_name},
};

const RR: (Ipv4Addr, u16) = (VIP_SCHEDULERS, 81);
const MAGLEV: (Ipv4Addr, u16) = (VIP, 443);
const DSR: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 77, 1, 105), 80);

fn flow(client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), proto: u8) -> Flow {
    Flow {
        src: client.0.octets(),
        dst: vip.0.octets(),
        sport: client.1,
        dport: vip.1,
        proto,
        _pad: [0; 3],
    }
}

fn tcp(client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), flags: u8, seq: u32, ack: u32) -> Ipv4 {
    let mut p = Ipv4::tcp(client, vip, flags, b"");
    if let L4::Tcp { seq: s, ack: a, .. } = &mut p.l4 {
        (*s, *a) = (seq, ack);
    }
    p
}

/// Sends a client packet; returns where it was forwarded (address, port).
#[track_caller]
fn send(loaded: &Loaded, p: &Ipv4) -> (Ipv4Addr, u16) {
    let out = loaded.run(&from_client(p), IF_CLIENT);
    assert_eq!(action_name(out.action), action_name(XDP_REDIRECT), "forwarded");
    destination(&out.frame)
}

/// The backend's SYN-ACK to `client`, sequence number `isn`.
#[track_caller]
fn syn_ack(loaded: &Loaded, backend: (Ipv4Addr, u16), client: (Ipv4Addr, u16), isn: u32) {
    let p = tcp(backend, client, TCP_SYN | TCP_ACK, isn, CLIENT_ISN + 1);
    let out = loaded.run(&from_web1(&p), IF_BACKEND);
    assert_eq!(action_name(out.action), action_name(XDP_REDIRECT), "the SYN-ACK is forwarded");
}

/// An `rr` SYN takes its turn and leaves no entry; its retransmission goes
/// where it went, not to the next turn; its ACK, once it acknowledges the
/// backend's SYN-ACK, records the flow on that backend, though other SYNs
/// have moved the rotation on in between.
#[test]
fn the_ack_records_the_backend_the_syn_got() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_000);
        let syn = Ipv4::tcp(client, RR, TCP_SYN, b"");
        let first = send(&loaded, &syn);
        assert_eq!(first.0, WEB1, "the first in turn");
        assert_eq!(loaded.conntrack_len(), 0, "a SYN leaves no entry");
        assert_eq!(send(&loaded, &Ipv4::tcp((CLIENT, 50_001), RR, TCP_SYN, b"")).0, WEB2);
        assert_eq!(send(&loaded, &syn), first, "a retransmitted SYN goes where the first went");
        assert_eq!(send(&loaded, &Ipv4::tcp((CLIENT, 50_002), RR, TCP_SYN, b"")).0, WEB3);
        syn_ack(&loaded, first, client, BACKEND_ISN);
        assert_eq!(send(&loaded, &handshake_ack(client, RR)), first, "the ACK follows its SYN");
        let conn = loaded.conn(&flow(client, RR, PROTO_TCP)).expect("the ACK records the flow");
        assert_eq!(conn.state, CONN_ESTABLISHED);
        assert_eq!(conn.backend_id, loaded.backend_id(RR.0, RR.1, WEB1, 81));
        assert_eq!(loaded.conntrack_len(), 1, "only the flow whose handshake completed");
    });
}

/// An ACK that does not acknowledge the backend's SYN-ACK (a forged
/// source cannot see it) goes to the SYN's backend, which resets it, and
/// is recorded nowhere: sent before the SYN-ACK, with a wrong number, or
/// acknowledging a SYN-ACK forged from another backend of the service.
#[test]
fn an_ack_that_proves_nothing_is_forwarded_but_not_recorded() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_100);
        let placed = send(&loaded, &Ipv4::tcp(client, MAGLEV, TCP_SYN, b""));
        let recorded = |loaded: &mut Loaded| loaded.conn(&flow(client, MAGLEV, PROTO_TCP));
        let guess = tcp(client, MAGLEV, TCP_ACK, CLIENT_ISN + 1, 0x1234_5678);
        assert_eq!(send(&loaded, &guess), placed, "before any SYN-ACK");
        assert_eq!(recorded(&mut loaded), None, "before any SYN-ACK");

        let other = [WEB1, WEB2, WEB3].into_iter().find(|&w| w != placed.0).unwrap();
        syn_ack(&loaded, (other, 443), client, 0x0bad_0000);
        let forged = tcp(client, MAGLEV, TCP_ACK, CLIENT_ISN + 1, 0x0bad_0001);
        assert_eq!(send(&loaded, &forged), placed);
        assert_eq!(
            recorded(&mut loaded),
            None,
            "a SYN-ACK from another backend counts for nothing"
        );

        syn_ack(&loaded, placed, client, BACKEND_ISN);
        for (what, ack) in [
            ("the backend's own number", BACKEND_ISN),
            ("64 KiB past it", BACKEND_ISN + 1 + (1 << 16)),
        ] {
            let wrong = tcp(client, MAGLEV, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, ack);
            assert_eq!(send(&loaded, &wrong), placed);
            assert_eq!(recorded(&mut loaded), None, "{what}");
        }

        assert_eq!(send(&loaded, &handshake_ack(client, MAGLEV)), placed);
        assert_eq!(recorded(&mut loaded).map(|c| c.state), Some(CONN_ESTABLISHED));
    });
}

/// A server that speaks first (an SSH or SMTP banner) whose client's first
/// ACK was lost: the client's next segment acknowledges the banner too,
/// within 64 KiB of the SYN-ACK's number, and records the flow.
#[test]
fn an_ack_of_the_backends_first_data_records_the_flow() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_150);
        let placed = send(&loaded, &Ipv4::tcp(client, RR, TCP_SYN, b""));
        syn_ack(&loaded, placed, client, BACKEND_ISN);
        let banner_acked = tcp(client, RR, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, BACKEND_ISN + 1 + 40);
        assert_eq!(send(&loaded, &banner_acked), placed);
        let conn = loaded.conn(&flow(client, RR, PROTO_TCP)).expect("recorded");
        assert_eq!(conn.state, CONN_ESTABLISHED);
    });
}

/// Direct routing: the backend's SYN-ACK goes to the client without us, so
/// the ACK of a SYN seen here records the flow; a bare ACK does not.
#[test]
fn direct_routing_records_the_ack_of_a_syn_seen_here() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_200);
        send(&loaded, &Ipv4::tcp(client, DSR, TCP_SYN, b""));
        send(&loaded, &tcp(client, DSR, TCP_ACK, CLIENT_ISN + 1, 0x7777_0000));
        let conn = loaded.conn(&flow(client, DSR, PROTO_TCP));
        assert_eq!(conn.map(|c| c.state), Some(CONN_ESTABLISHED), "recorded");

        let bare = (CLIENT, 50_201);
        send(&loaded, &tcp(bare, DSR, TCP_ACK, CLIENT_ISN + 1, 0x7777_0000));
        assert_eq!(loaded.conn(&flow(bare, DSR, PROTO_TCP)), None, "no SYN seen, nothing recorded");
    });
}

/// A backend drained between a SYN and its ACK keeps that connection: the
/// record holds the backend the SYN got, whatever the new table says.
#[test]
fn a_drained_backend_keeps_a_flow_whose_syn_came_just_before_the_drain() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_300);
        let placed = send(&loaded, &Ipv4::tcp(client, RR, TCP_SYN, b""));
        assert_eq!(placed.0, WEB1);
        let mut services = lb_ctl::desired::config::parse(&config()).unwrap().services;
        let rr = services.iter_mut().find(|s| s.name == "rr").unwrap();
        rr.backends.iter_mut().find(|b| b.address == WEB1).unwrap().weight = 0;
        loaded.reconciler.apply(&services).expect("drain web1");
        for port in 50_301..50_304 {
            let elsewhere = send(&loaded, &Ipv4::tcp((CLIENT, port), RR, TCP_SYN, b""));
            assert_ne!(elsewhere.0, WEB1, "new connections avoid the drained backend");
        }
        syn_ack(&loaded, placed, client, BACKEND_ISN);
        assert_eq!(send(&loaded, &handshake_ack(client, RR)), placed, "the ACK still goes there");
        let conn = loaded.conn(&flow(client, RR, PROTO_TCP)).expect("recorded");
        assert_eq!(conn.backend_id, loaded.backend_id(RR.0, RR.1, WEB1, 81));
        let data = tcp(client, RR, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, BACKEND_ISN + 1);
        assert_eq!(send(&loaded, &data), placed, "and so does the rest of the connection");
    });
}

/// UDP: a one-datagram exchange (a DNS query) leaves only a record; the
/// flow's second datagram records it, on the first one's backend.
#[test]
fn udp_records_a_flow_on_its_second_datagram() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_400);
        let query = Ipv4::udp(client, (VIP, 53), b"query");
        let first = send(&loaded, &query);
        assert_eq!(loaded.conn(&flow(client, (VIP, 53), PROTO_UDP)), None, "one datagram");
        assert_eq!(send(&loaded, &query), first);
        let conn = loaded.conn(&flow(client, (VIP, 53), PROTO_UDP)).expect("recorded");
        assert_eq!(conn.state, CONN_UDP);
    });
}

/// A TCP packet of a flow with neither entry nor record (evicted, or met
/// on another node after a failover) on an `rr` service: placed by its
/// hash in the same table, so every packet of it goes to one backend,
/// without taking a turn of the rotation, and recorded nowhere.
#[test]
fn a_flow_met_mid_way_is_placed_by_its_hash_without_state() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let mut seen = std::collections::BTreeSet::new();
        for port in 50_500..50_520 {
            let client = (CLIENT, port);
            let data = tcp(client, RR, TCP_ACK | TCP_PSH, 5000, 6000);
            let first = send(&loaded, &data);
            for _ in 0..3 {
                assert_eq!(send(&loaded, &data), first, "port {port}: one backend");
            }
            seen.insert(first.0);
        }
        assert!(seen.len() >= 2, "spread over the table: {seen:?}");
        assert_eq!(loaded.conntrack_len(), 0, "recorded nowhere");
        let syn = Ipv4::tcp((CLIENT, 50_520), RR, TCP_SYN, b"");
        assert_eq!(send(&loaded, &syn).0, WEB1, "they took no turn: a SYN is still the first");
    });
}

/// With the smallest table (for 1024 flows), 10 × 1024 forged handshakes
/// from random sources (SYN, the backend's SYN-ACK, an ACK guessing its
/// number) record nothing: the established `rr` and Maglev flows keep their
/// entries and their backends.
#[test]
fn established_flows_survive_a_flood_of_forged_handshakes() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(1024);
        let rr_client = (CLIENT, 50_600);
        let maglev_client = (CLIENT, 50_601);
        let rr_backend = loaded.handshake(rr_client, RR);
        let maglev_backend = loaded.handshake(maglev_client, MAGLEV);
        assert_eq!(loaded.conntrack_len(), 2);

        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // A guess lands in the 64 KiB window past the backend's number
        // once in 65,536; the seed is fixed, so the count is too (`lucky`).
        let mut lucky = 0;
        for i in 0..10 * 1024 {
            let [a, _, p, q, ..] = random().to_le_bytes();
            // 10.77.3.0/24: routed back through the client side.
            let forger = (Ipv4Addr::new(10, 77, 3, a | 1), u16::from_le_bytes([p, q]) | 1024);
            let vip = if i % 2 == 0 { RR } else { MAGLEV };
            let placed = send(&loaded, &Ipv4::tcp(forger, vip, TCP_SYN, b""));
            let isn = random() as u32;
            syn_ack(&loaded, placed, forger, isn);
            let guess = (random() >> 32) as u32;
            lucky += u32::from(guess.wrapping_sub(isn.wrapping_add(1)) < 1 << 16);
            send(&loaded, &tcp(forger, vip, TCP_ACK, CLIENT_ISN + 1, guess));
        }
        let recorded = loaded.conntrack_len();
        assert_eq!(recorded, 2 + lucky as usize, "the flood recorded only its lucky guesses");
        let data = |client| tcp(client, RR, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, BACKEND_ISN + 1);
        assert_eq!(send(&loaded, &data(rr_client)), rr_backend, "the rr flow");
        let maglev_data = tcp(maglev_client, MAGLEV, TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1);
        assert_eq!(send(&loaded, &maglev_data), maglev_backend, "the Maglev flow");
    });
}

/// `lc` too: a packet met mid-way is placed by its hash over the service's
/// backends, the same for every packet of it, and counts no connection.
#[test]
fn an_lc_flow_met_mid_way_takes_no_pick() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let loaded = Loaded::new(4096);
        let lc = (VIP_SCHEDULERS, 84);
        let mut seen = std::collections::BTreeSet::new();
        for port in 50_700..50_720 {
            let data = tcp((CLIENT, port), lc, TCP_ACK | TCP_PSH, 5000, 6000);
            let first = send(&loaded, &data);
            for _ in 0..3 {
                assert_eq!(send(&loaded, &data), first, "port {port}: one backend");
            }
            seen.insert(first.0);
        }
        assert!(seen.len() >= 2, "spread over the backends: {seen:?}");
        // No pick was counted: the three backends tie, and a SYN takes the first.
        let syn = Ipv4::tcp((CLIENT, 50_720), lc, TCP_SYN, b"");
        assert_eq!(send(&loaded, &syn).0, WEB1, "no connection counted on any backend");
    });
}

/// A forged SYN on the ports of a closing connection leaves a record, but
/// the connection's next packet, which proves nothing of that record,
/// keeps to the connection's entry and backend.
#[test]
fn a_forged_syn_does_not_divert_a_closing_connection() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_800);
        let backend = loaded.handshake(client, RR);
        let fin = tcp(
            backend,
            client,
            lb_testbed::packet::TCP_FIN | TCP_ACK,
            BACKEND_ISN + 1,
            CLIENT_ISN + 1,
        );
        let out = loaded.run(&from_web1(&fin), IF_BACKEND);
        assert_eq!(action_name(out.action), action_name(XDP_REDIRECT), "the backend's FIN");
        let forged = send(&loaded, &Ipv4::tcp(client, RR, TCP_SYN, b""));
        assert_ne!(forged, backend, "the forged SYN took the next turn");
        // A tick later: this CPU's flow cache asks the table again.
        loaded.reconciler.advance_clock().expect("a tick");
        let last_ack = tcp(client, RR, TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 2);
        assert_eq!(send(&loaded, &last_ack), backend, "the closing connection keeps its backend");
    });
}

/// An ACK with TTL 1 proves the handshake but records nothing: the kernel
/// answers it (`pass_ttl_expired`); the same ACK with a TTL to spare records.
#[test]
fn an_expiring_ack_records_nothing() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let client = (CLIENT, 50_900);
        let placed = send(&loaded, &Ipv4::tcp(client, RR, TCP_SYN, b""));
        syn_ack(&loaded, placed, client, BACKEND_ISN);
        let mut expiring = handshake_ack(client, RR);
        expiring.ttl = 1;
        let before = loaded.counter(Counter::PassTtlExpired);
        let out = loaded.run(&from_client(&expiring), IF_CLIENT);
        assert_eq!(action_name(out.action), action_name(XDP_PASS));
        assert_eq!(loaded.counter(Counter::PassTtlExpired), before + 1);
        assert_eq!(loaded.conn(&flow(client, RR, PROTO_TCP)), None, "TTL 1: nothing recorded");
        assert_eq!(send(&loaded, &handshake_ack(client, RR)), placed);
        assert!(loaded.conn(&flow(client, RR, PROTO_TCP)).is_some(), "TTL to spare: recorded");
    });
}

/// A backend's FIN moves only its own connection's entry: an expired entry
/// of another backend (the flow placed elsewhere since) stays expired.
#[test]
fn another_backends_fin_does_not_revive_an_expired_entry() {
    use lb_common::abi::CONN_CLOSING;
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let timeouts = lb_ctl::desired::model::Timeouts {
            tcp_established: std::time::Duration::from_millis(200), // 2 ticks
            ..lb_ctl::desired::model::Timeouts::default()
        };
        loaded.reconciler.maps_mut().set_timeouts(&timeouts).expect("timeouts");
        let client = (CLIENT, 51_000);
        let (placed, _) = loaded.handshake(client, RR);
        for _ in 0..3 {
            loaded.reconciler.advance_clock().expect("a tick");
        }
        let other = [WEB1, WEB2, WEB3].into_iter().find(|&w| w != placed).unwrap();
        let fin = tcp((other, 81), client, lb_testbed::packet::TCP_FIN | TCP_ACK, 7, 7);
        loaded.run(&from_web1(&fin), IF_BACKEND);
        let mine = tcp((placed, 81), client, lb_testbed::packet::TCP_FIN | TCP_ACK, 7, 7);
        let state =
            |loaded: &mut Loaded| loaded.conn(&flow(client, RR, PROTO_TCP)).map(|c| c.state);
        assert_eq!(state(&mut loaded), Some(CONN_ESTABLISHED), "another backend's FIN: unchanged");
        loaded.run(&from_web1(&mine), IF_BACKEND);
        assert_eq!(state(&mut loaded), Some(CONN_CLOSING), "its own backend's FIN moves it");
    });
}

/// `handshake_proof = "syn-seen"` (nodes whose backends' SYN-ACKs may
/// return through another node): on a NAT service too, the first ACK after
/// a SYN records the flow, without a SYN-ACK seen here.
#[test]
fn syn_seen_records_the_ack_of_a_syn_without_its_syn_ack() {
    let ns = FixtureNs::create("lbt-ft");
    in_ns(&ns.name, || {
        let mut loaded = Loaded::new(4096);
        let maps = loaded.reconciler.maps_mut();
        maps.set_handshake_proof(lb_ctl::desired::model::HandshakeProof::SynSeen)
            .expect("syn-seen");
        let client = (CLIENT, 51_100);
        let placed = send(&loaded, &Ipv4::tcp(client, RR, TCP_SYN, b""));
        let ack = tcp(client, RR, TCP_ACK, CLIENT_ISN + 1, 0x0bad_cafe);
        assert_eq!(send(&loaded, &ack), placed);
        let conn = loaded.conn(&flow(client, RR, PROTO_TCP)).expect("recorded");
        assert_eq!(conn.state, CONN_ESTABLISHED);
        // A bare ACK (no SYN seen) still records nothing.
        let bare = (CLIENT, 51_101);
        send(&loaded, &tcp(bare, RR, TCP_ACK, CLIENT_ISN + 1, 0x0bad_cafe));
        assert_eq!(loaded.conn(&flow(bare, RR, PROTO_TCP)), None, "no SYN seen");
    });
}
