//! Many load balancers behind a router, by BGP: each node's controller
//! writes a route for each VIP it can serve (`[bgp]`), its BIRD announces
//! it, the router's BIRD merges the nodes' announcements into one ECMP
//! route (the shipped `examples/bird/` configs, test timers). Each event
//! that makes a node unfit withdraws its next hop, and the route comes back
//! when it clears, while long-lived connections of a `maglev` service and
//! a new connection every 10 ms go on unbroken. The times from event to
//! route change are measured by `cargo xtask lab bgp`, not asserted here.
//! IPv6 VIPs go the same way, in the same sessions.
use std::{collections::BTreeSet, time::Duration};

use lb_testbed::{
    ha::{Ha, Mode, NODES, NODES6},
    harness::{backend_of, config, http_get_at},
    netns::in_ns,
    topology::VIP6,
    traffic::Traffic,
};

/// Longest wait for a route change: an UPDATE and a health check's `fall`.
const ROUTE_CHANGE: Duration = Duration::from_secs(10);

/// lb1 is out of the route: after the packets already past the router,
/// lb2 carries every client packet and lb1 none.
fn assert_only_lb2_carries(ha: &Ha, what: &str) {
    std::thread::sleep(Duration::from_millis(200));
    let before = [ha.client_packets_via(0), ha.client_packets_via(1)];
    std::thread::sleep(Duration::from_millis(800));
    let via = [ha.client_packets_via(0) - before[0], ha.client_packets_via(1) - before[1]];
    eprintln!("{what}: client packets via lb1 {}, via lb2 {}", via[0], via[1]);
    assert_eq!(via[0], 0, "{what}: lb1 is out of the route but got client packets");
    assert!(via[1] > 300, "{what}: lb2 carries every flow alone: {} packets", via[1]);
}

/// Each node's next hop goes when the node cannot serve and comes back
/// when it can: `lb-ctl node drain` (kept across a restart), the
/// controller SIGKILLed, every backend DOWN as lb1 sees them, SIGTERM. No
/// connection breaks and no new connection fails throughout.
#[test]
fn each_unfit_node_is_withdrawn_and_nothing_breaks() {
    let mut ha = Ha::start("lbg-a", Mode::Bgp { bfd: true });
    let traffic = Traffic::start(&ha.client(), 8);
    std::thread::sleep(Duration::from_secs(1));
    let spread: Vec<u64> = (0..NODES.len()).map(|i| ha.client_packets_via(i)).collect();
    eprintln!("both next hops: client packets {spread:?}");
    assert!(spread.iter().all(|&n| n > 0), "BGP's ECMP route spreads flows over both nodes");

    // 1. Drained for maintenance: withdrawn, kept across a restart, back
    //    at undrain.
    let node = ha.nodes[0].ctl_ok(&["node", "drain"]);
    assert!(
        node.starts_with("node drained;") && node.contains("withdrawn: node drained"),
        "{node}"
    );
    eprintln!("drain: next hop gone after {:?}", ha.wait_next_hops(&[1], ROUTE_CHANGE));
    assert_only_lb2_carries(&ha, "drained");
    ha.nodes[0].restart();
    // Past bgp.announce_delay_ms (1 s), when it would be back.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ha.next_hops(), [1], "a restart keeps the node drained");
    let node = ha.nodes[0].ctl_ok(&["node", "undrain"]);
    assert!(node.contains("announced"), "{node}");
    eprintln!("undrain: back after {:?}", ha.wait_next_hops(&[0, 1], ROUTE_CHANGE));

    // 2. The controller SIGKILLed: its device, so its routes, go with it.
    ha.nodes[0].kill();
    eprintln!("SIGKILL: next hop gone after {:?}", ha.wait_next_hops(&[1], ROUTE_CHANGE));
    assert_only_lb2_carries(&ha, "controller killed");
    ha.nodes[0].start_again();
    eprintln!("restarted: back after {:?}", ha.wait_next_hops(&[0, 1], ROUTE_CHANGE));

    // 3. Every backend DOWN as lb1 sees them (its probes dropped): lb1
    //    withdraws before its DOWN flags would reset the flows it carries.
    ha.block_probes_from(0, true);
    eprintln!("all DOWN on lb1: next hop gone after {:?}", ha.wait_next_hops(&[1], ROUTE_CHANGE));
    assert_only_lb2_carries(&ha, "all backends DOWN on lb1");
    let node = ha.nodes[0].ctl_ok(&["node"]);
    assert!(node.contains("withdrawn: no usable backend"), "{node}");
    ha.block_probes_from(0, false);
    eprintln!("backends UP: back after {:?}", ha.wait_next_hops(&[0, 1], ROUTE_CHANGE));

    // 4. SIGTERM: withdrawn by the time the controller exits (before a
    //    detach: the second test); the data plane forwards on.
    let status = ha.nodes[0].stop();
    assert!(status.success(), "{status}");
    assert_eq!(ha.next_hops(), [1], "withdrawn by the time lb-ctl exited");
    assert_only_lb2_carries(&ha, "SIGTERM");
    ha.nodes[0].start_again();
    eprintln!("restarted: back after {:?}", ha.wait_next_hops(&[0, 1], ROUTE_CHANGE));
    std::thread::sleep(Duration::from_secs(1));
    let spread: Vec<u64> = (0..NODES.len()).map(|i| ha.client_packets_via(i)).collect();
    assert!(spread.iter().all(|&n| n > 0), "both carry traffic again: {spread:?}");

    traffic.finish_unbroken(500);
}

/// Nodes that run different services would place flows differently: the
/// router sees each node's fingerprint as a large community on its path,
/// and `lb-ctl node` shows it. A device name another controller holds is
/// refused, naming the key, before anything is attached. A lost XDP
/// attachment withdraws the node until a restart attaches again. `SIGTERM` with
/// `--cleanup-on-exit` withdraws first and detaches `withdraw_delay_ms`
/// later (here, with no traffic: a detached node on the backends' way back
/// would not translate their replies).
#[test]
fn a_node_whose_services_differ_is_visible_at_the_router() {
    let mut ha = Ha::start("lbg-b", Mode::Bgp { bfd: false });
    let seen = ha.announced_fingerprints();
    eprintln!("same config: {seen:?}");
    assert_eq!(seen.len(), 2, "one path per node: {seen:?}");
    assert_eq!(seen[0].1, seen[1].1, "same services, same fingerprint: {seen:?}");
    let fingerprint = |ha: &Ha, i: usize| {
        let node = ha.nodes[i].ctl_ok(&["node"]);
        node.split("fingerprint ")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let as_number = u32::from_str_radix(&fingerprint(&ha, 0), 16).expect("hex fingerprint");
    assert_eq!(seen[0].1, format!("(65001, 1, {as_number})"), "the router sees lb-ctl's");

    ha.nodes[1].reload([Some(2), Some(1), Some(1)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let differ = loop {
        let seen = ha.announced_fingerprints();
        if seen.len() == 2 && seen[0].1 != seen[1].1 {
            break seen;
        }
        assert!(std::time::Instant::now() < deadline, "no difference at the router: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("lb2 weighs web1 2: {differ:?}");
    assert_ne!(fingerprint(&ha, 0), fingerprint(&ha, 1));
    assert_eq!(ha.next_hops(), [0, 1], "a new fingerprint is no withdrawal");

    // A second controller with the same device in lb2's namespace.
    let dir = std::env::temp_dir().join("lbg-b-second");
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("lb.toml");
    let pins = "/sys/fs/bpf/lbg-b-second";
    let text = config(
        pins,
        [Some(1); 3],
        lb_testbed::harness::Setup {
            tables: "\n[bgp]\n[admin]\nlisten = \"127.0.0.1:9101\"\n",
            ..lb_testbed::harness::Setup::default()
        },
    );
    std::fs::write(&conf, text).expect("config");
    let ns = format!("--net=/var/run/netns/{}", ha.node(1));
    let ctl = lb_testbed::harness::lb_ctl_bin();
    // Bounded: a controller that took the device anyway would run on.
    let out = std::process::Command::new("timeout")
        .env("LB_RUN_DIR", dir.join("run"))
        .args(["10", "nsenter"])
        .arg(&ns)
        .arg(ctl)
        .args(["run", "--config"])
        .arg(&conf)
        .output()
        .expect("running lb-ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let attached = std::path::Path::new(pins).exists();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(pins);
    assert!(!out.status.success(), "a second controller on lb-vips ran");
    assert!(stderr.contains("bgp.device = \"lb-vips\""), "{stderr}");
    assert!(!attached, "it attached something: {pins}");
    assert_eq!(ha.next_hops(), [0, 1], "the first controller's routes stay");

    // lb2 loses its XDP attachment (its pin is the link's only holder):
    // not ready, withdrawn at the next sample; a restart attaches again.
    std::fs::remove_file(format!("{}/links/xdp_lb-c", ha.nodes[1].pin_dir)).expect("XDP pin");
    let gone = ha.wait_next_hops(&[0], Duration::from_secs(10));
    let node = ha.nodes[1].ctl_ok(&["node"]);
    assert!(node.contains("withdrawn: not ready: ") && node.contains("lb-c"), "{node}");
    eprintln!("XDP link gone on lb2: next hop gone after {gone:?}");
    ha.nodes[1].restart();
    eprintln!("restarted: back after {:?}", ha.wait_next_hops(&[0, 1], Duration::from_secs(10)));

    ha.nodes[0].restart_with(&["--cleanup-on-exit"]);
    eprintln!("restarted: back after {:?}", ha.wait_next_hops(&[0, 1], Duration::from_secs(10)));
    ha.nodes[0].terminate();
    let gone = ha.wait_next_hops(&[1], Duration::from_secs(10));
    assert!(ha.nodes[0].is_running(), "the route went only with the process");
    let status = ha.nodes[0].wait_exit();
    assert!(status.success(), "{status}");
    let log = ha.nodes[0].log();
    assert!(log.contains("waiting bgp.withdraw_delay_ms before detaching"), "{log}");
    assert!(log.contains("data plane detached and unpinned"), "{log}");
    eprintln!("SIGTERM with --cleanup-on-exit: next hop gone after {gone:?}, then detached");
}

/// IPv6 VIPs travel in the same BGP sessions as IPv4's (the shipped
/// configs' ipv6 channel): each node's controller writes a /128 for the
/// IPv6 VIP, its BIRD announces it with the node's IPv6 address as next
/// hop, and the router installs one ECMP route through both nodes, which
/// the client's IPv6 requests take to the backends. A drained node leaves
/// the routes of both families, and comes back to both at undrain.
#[test]
fn an_ipv6_vip_is_learned_by_the_router_from_every_node() {
    let ha = Ha::start_dual_stack("lbv-g", Mode::Bgp { bfd: false });
    let both = ha.wait_next_hops6(&[0, 1], Duration::from_secs(20));
    let router = ha.router_bird.as_ref().expect("the router's BIRD");
    let learnt = router.birdc(&["show", "route", "for", VIP6, "all"]);
    eprintln!("the IPv6 VIP through both nodes after {both:?}:\n{learnt}");
    for (front6, _) in NODES6 {
        assert!(learnt.contains(&format!("via {front6}")), "a path through {front6}:\n{learnt}");
    }
    assert_eq!(learnt.matches("BGP.large_community").count(), 2, "one path per node:\n{learnt}");

    let answers: Vec<String> = in_ns(&ha.client(), || {
        (0..30)
            .map(|i| {
                let body = http_get_at(VIP6, 80)
                    .unwrap_or_else(|e| panic!("request {i} to [{VIP6}]:80: {e}"));
                backend_of(&body)
            })
            .collect()
    });
    let served: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    eprintln!("IPv6 requests answered by {served:?}");
    // 30 flows miss one of three backends with odds of about 2 in 100,000.
    assert_eq!(served.len(), 3, "IPv6 requests reach every backend: {answers:?}");

    let node = ha.nodes[0].ctl_ok(&["node", "drain"]);
    assert!(node.contains("withdrawn: node drained"), "{node}");
    let gone6 = ha.wait_next_hops6(&[1], ROUTE_CHANGE);
    let gone = ha.wait_next_hops(&[1], ROUTE_CHANGE);
    eprintln!("drain: IPv6 next hop gone after {gone6:?}, IPv4's after {gone:?}");
    let node = ha.nodes[0].ctl_ok(&["node", "undrain"]);
    assert!(node.contains("announced"), "{node}");
    let back6 = ha.wait_next_hops6(&[0, 1], ROUTE_CHANGE);
    let back = ha.wait_next_hops(&[0, 1], ROUTE_CHANGE);
    eprintln!("undrain: IPv6 next hop back after {back6:?}, IPv4's after {back:?}");
}
