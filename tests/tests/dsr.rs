//! Direct routing (`forwarding = "dsr"`, IPVS `-g`) end to end: the load
//! balancer only passes the client's packets on to a backend's MAC; the
//! backend, holding the VIP on `lo`, answers the client directly, over the
//! client's second link (`c1`), never through the load balancer.
use std::collections::BTreeSet;

use lb_testbed::{
    counters,
    harness::{Lab, Setup, backend_of, http_get_port},
    netns::{in_ns, output},
    server::DSR_HTTP_PORT,
    topology::{CLIENT_BYPASS_IFACE, VIP},
};

/// A direct-routing HTTP service on web1..web3 (port 8080 on every address).
const DSR_SERVICE: &str = r#"
[[service]]
name = "dsr"
vip = "10.77.1.100"
port = 8080
forwarding = "dsr"
  [[service.backend]]
  address = "10.77.2.11"
  port = 8080
  [[service.backend]]
  address = "10.77.2.12"
  port = 8080
  [[service.backend]]
  address = "10.77.2.13"
  port = 8080
"#;

/// A counter of an interface in namespace `ns`.
fn link_stat(ns: &str, dev: &str, stat: &str) -> u64 {
    let out = output(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        &format!("/sys/class/net/{dev}/statistics/{stat}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{dev} {stat} in {ns}"))
}

/// Packets each way over every backend id the lab can have, from the data
/// plane's own per-backend counters.
fn backend_packets(pin_dir: &str) -> (u64, u64) {
    (0..16)
        .map(|id| counters::backend_traffic(pin_dir, id))
        .fold((0, 0), |(i, o), t| (i + t.in_packets, o + t.out_packets))
}

#[test]
fn direct_routing_replies_bypass_the_load_balancer() {
    let lab =
        Lab::start_with("lbt25", Setup { tables: DSR_SERVICE, ..Setup::default() }, [Some(1); 3]);
    let client = lab.topo.client();
    let bypass_before = link_stat(&client, CLIENT_BYPASS_IFACE, "rx_packets");
    // What reaches the load balancer from the backends' side.
    let lb_back_before = link_stat(&lab.topo.lb(), "lb-b", "rx_packets");
    let (in_before, out_before) = backend_packets(&lab.pin_dir);

    let answers: Vec<String> = in_ns(&client, || {
        (0..30)
            .map(|i| {
                let body = http_get_port(DSR_HTTP_PORT)
                    .unwrap_or_else(|e| panic!("request {i} to {VIP}:{DSR_HTTP_PORT} failed: {e}"));
                backend_of(&body)
            })
            .collect()
    });
    let served: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    eprintln!("answered by {served:?}");
    assert!(
        served.iter().all(|b| ["web1", "web2", "web3"].contains(b)),
        "every request answered by a backend: {answers:?}"
    );
    assert!(served.len() >= 2, "new connections are spread: {answers:?}");

    let (in_after, out_after) = backend_packets(&lab.pin_dir);
    let bypass_after = link_stat(&client, CLIENT_BYPASS_IFACE, "rx_packets");
    let lb_back = link_stat(&lab.topo.lb(), "lb-b", "rx_packets") - lb_back_before;
    eprintln!(
        "load balancer: {} packets to backends, {} back, {lb_back} received on lb-b; client's bypass link: {} packets in",
        in_after - in_before,
        out_after - out_before,
        bypass_after - bypass_before
    );
    // Each request: SYN, ACK, request, FIN, ACK at least through the load
    // balancer; SYN-ACK, response, FIN at least back over the bypass link.
    assert!(in_after - in_before >= 30 * 4, "client packets went through the load balancer");
    assert_eq!(out_after, out_before, "no reply was rewritten by the load balancer");
    // At least 90 replies would arrive here; ARP and the like do (6 seen).
    assert!(lb_back < 30, "replies crossed the load balancer: {lb_back} packets on lb-b");
    assert!(bypass_after - bypass_before >= 30 * 3, "the replies arrived over the bypass link");
    // The NAT services of the same lab still work next to it (each answer
    // names a backend: `who_answers` checks).
    eprintln!("NAT next to it: {:?}", lab.who_answers(3));
}
