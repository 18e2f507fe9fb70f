//! Two load balancer nodes with the same config: established connections
//! survive the VIP moving between them (keepalived, VRRP) and the router
//! moving flows between them (ECMP), without any state shared between the
//! nodes: Maglev gives both the same backend for every flow, and the reply
//! path needs no connection state.
use std::time::{Duration, Instant};

use lb_common::counter::Counter;
use lb_testbed::{
    counters,
    ha::{Ha, Mode, NODES},
    harness::{EchoConn, Setup},
    netns::{in_ns, output},
    server::ECHO_PORT,
    topology::VIP,
    traffic::Traffic,
};

/// Lets the load run for `pause`.
fn run_for(pause: Duration) {
    std::thread::sleep(pause);
}

/// keepalived moves the VIP and the backends' gateway to lb2 and back,
/// twice: once because the MASTER's keepalived stops, once because its
/// `track_script` (`lb-ctl health`) fails while the controller is frozen.
/// Every long-lived connection goes on, on its backend.
#[test]
fn established_connections_survive_keepalived_failovers() {
    let mut ha = Ha::start("lbt26", Mode::Vrrp);
    let traffic = Traffic::start(&ha.client(), 3);
    run_for(Duration::from_millis(500));

    // 0. The MASTER's controller restarts (SIGKILL): its data plane goes on
    //    forwarding and the track_script's two-failure margin keeps the VIP.
    ha.nodes[0].kill_and_restart(Duration::from_millis(100));
    // Not one sample in 3 s may see the VIP away from lb1 (a move and a
    // move back between two samples would go unseen).
    let watched = Instant::now();
    let mut samples = 0;
    while watched.elapsed() < Duration::from_secs(3) {
        assert!(
            ha.holds_vip(0) && !ha.holds_vip(1),
            "the VIP left lb1 {:?} after its controller restarted",
            watched.elapsed()
        );
        samples += 1;
        run_for(Duration::from_millis(20));
    }
    eprintln!("lb1 held the VIP in all {samples} samples over 3 s after its controller restart");
    assert!(samples >= 20, "only {samples} samples");

    // 1. The MASTER's keepalived stops: lb2 takes the VIP at once.
    let before = ha.forwarded_by(1);
    ha.stop_keepalived(0);
    let switch = ha.wait_vip_on(1, Duration::from_secs(5));
    run_for(Duration::from_millis(1500));
    let carried = ha.forwarded_by(1) - before;
    eprintln!("keepalived stopped on lb1: lb2 held the VIP after {switch:?}, forwarded {carried}");
    assert!(carried > 100, "lb2 carries the traffic after the switch ({carried} packets)");

    // 2. It comes back and, with the higher priority, takes the VIP back.
    ha.start_keepalived(0);
    let back = ha.wait_vip_on(0, Duration::from_secs(10));
    eprintln!("keepalived restarted on lb1: VIP back after {back:?}");
    run_for(Duration::from_millis(1500));

    // 3. lb1's controller stops answering (frozen): `lb-ctl health` fails,
    //    keepalived gives the VIP up; lb1's data plane forwards meanwhile.
    let pid = ha.nodes[0].pid().to_string();
    assert!(output(&["kill", "-STOP", &pid]).status.success());
    let fault = ha.wait_vip_on(1, Duration::from_secs(15));
    eprintln!("lb1's controller frozen: lb2 held the VIP after {fault:?}");
    let log = ha.keepalived_log(0);
    let script_failed =
        log.lines().any(|l| l.contains("lb_health") && (l.contains("fail") || l.contains("timed")));
    assert!(script_failed, "the track_script's failure is what moved it:\n{log}");
    run_for(Duration::from_secs(1));
    assert!(output(&["kill", "-CONT", &pid]).status.success());
    let recovered = ha.wait_vip_on(0, Duration::from_secs(15));
    eprintln!("lb1's controller thawed: VIP back after {recovered:?}");
    run_for(Duration::from_secs(1));

    // New connections opened in the instant of a switch may need their SYN
    // retransmitted (1 s) but do not fail.
    traffic.finish_unbroken(500);
}

/// The router spreads the VIP over both nodes (ECMP, layer-4 hash); a
/// nexthop removed and added back moves flows between the nodes mid-connection.
#[test]
fn established_connections_survive_ecmp_nexthop_changes() {
    let ha = Ha::start("lbt27", Mode::Ecmp);
    let traffic = Traffic::start(&ha.client(), 8);
    run_for(Duration::from_secs(1));
    let spread: Vec<u64> = (0..NODES.len()).map(|i| ha.forwarded_by(i)).collect();
    eprintln!("both nexthops: forwarded {spread:?}");
    assert!(spread.iter().all(|&n| n > 0), "ECMP spreads flows over both nodes: {spread:?}");

    for (alone, label) in [(1, "lb1 removed"), (0, "lb2 removed")] {
        let removed = 1 - alone;
        ha.route_vip_to(&[alone]);
        // Packets already past the router when the route changed.
        run_for(Duration::from_millis(200));
        let before = [ha.client_packets_via(0), ha.client_packets_via(1)];
        run_for(Duration::from_secs(1));
        let moved = ha.client_packets_via(alone) - before[alone];
        let stayed = ha.client_packets_via(removed) - before[removed];
        eprintln!(
            "{label}: client packets via {} {moved}, via {} {stayed}",
            NODES[alone].0, NODES[removed].0
        );
        // 8 connections echoing every 5 ms and a request every 10 ms.
        assert!(moved > 500, "{} carries every flow alone: {moved} packets", NODES[alone].0);
        assert_eq!(stayed, 0, "{} is out of the route but got client packets", NODES[removed].0);
        ha.route_vip_to(&[0, 1]);
        run_for(Duration::from_secs(1));
    }

    traffic.finish_unbroken(500);
}

/// Full NAT's mappings are each node's own: when keepalived moves the VIP,
/// the node that takes it resets the full-NAT connections it has no
/// mapping for (`rst_fullnat_unknown`), new ones work through it at once,
/// and the NAT service's new connections go on unbroken beside them.
#[test]
fn full_nat_connections_are_reset_by_a_failover_and_new_ones_work() {
    let echo = "forwarding = \"fullnat\"\n";
    let mut ha = Ha::start_with("lbt35", Mode::Vrrp, Setup { echo, ..Setup::default() });
    let traffic = Traffic::start(&ha.client(), 3);
    run_for(Duration::from_millis(500));
    let pins = &ha.nodes[1].pin_dir;
    let reset_before = counters::get(pins, Counter::RstFullnatUnknown);

    ha.stop_keepalived(0);
    let switch = ha.wait_vip_on(1, Duration::from_secs(5));
    run_for(Duration::from_millis(1500));
    let (requests, echoes) = traffic.finish();
    eprintln!("lb2 held the VIP after {switch:?}; full-NAT connections: {echoes:?}");
    // Each long-lived full-NAT connection was reset, none hangs.
    for e in &echoes {
        assert!(e.error.as_deref().is_some_and(|x| x.contains("reset")), "not reset: {e:?}");
    }
    let resets = counters::get(&ha.nodes[1].pin_dir, Counter::RstFullnatUnknown) - reset_before;
    assert!(resets >= 3, "lb2 reset them ({resets} resets counted)");
    // The NAT service's new connections went on.
    assert!(requests.failed.is_empty(), "failed requests: {:?}", requests.failed);
    // A new full-NAT connection works through lb2.
    let mut conn = in_ns(&ha.client(), || EchoConn::open_at(VIP, ECHO_PORT))
        .expect("a new full-NAT connection after the switch");
    conn.exchange("after the switch").expect("an echo through lb2");
}
