//! Persistence, connection limits and allowed sources end to end (issue
//! 20's tests), namespaces `lbp*`: requests from the client, as an operator
//! checks `ipvsadm -p`, `-x` and `loadBalancerSourceRanges`.
use std::time::Duration;

use lb_testbed::{
    harness::{EchoConn, Lab, Setup, backend_of},
    netns::{in_ns, ns_sh},
    topology::{CLIENT_ADDR, FRESH_CLIENT_ADDRS, VIP},
};

/// `persistence_s = 10`: twenty connections of one client land on one
/// backend, and stay there when the weights turn against it (1 against
/// 100 each: the table gives it about 1 slot in 200); past the 10 s since
/// its last connection, the client is scheduled afresh and lands elsewhere.
#[test]
fn a_persistent_client_keeps_its_backend_until_the_time_runs_out() {
    let mut lab = Lab::start_with(
        "lbp1",
        Setup { web: "persistence_s = 10\n", ..Setup::default() },
        [Some(1); 3],
    );
    let seen = lab.who_answers(20);
    eprintln!("persistent: {seen:?}");
    assert!(seen.iter().all(|b| *b == seen[0]), "one client, one backend: {seen:?}");
    let kept = seen[0].clone();
    let mut weights = [Some(100); 3];
    weights[["web1", "web2", "web3"].iter().position(|n| *n == kept).unwrap()] = Some(1);
    lab.reload(weights);
    let held = lab.who_answers(5);
    assert!(held.iter().all(|b| *b == kept), "kept against the weights: {held:?}");
    std::thread::sleep(Duration::from_secs(11));
    let after = lab.who_answers(20);
    eprintln!("after 11 s: {after:?}");
    assert!(after.iter().all(|b| *b != kept), "scheduled afresh, by the weights: {after:?}");
    assert!(after.iter().all(|b| *b == after[0]), "sticky again, elsewhere: {after:?}");
}

/// `max_conns = 2` on one backend of the line echo, weighted so that the
/// table gives it most flows (10 against 1 and 1), twelve connections held
/// at once: all twelve open, exactly two on the limited backend (without
/// the limit, about ten would be).
#[test]
fn a_backend_at_max_conns_takes_no_more() {
    let mut lab = Lab::start("lbp2");
    let text = lab.config_text([Some(1); 3]).replacen(
        "address = \"10.77.2.11\"\n  port = 9000\n  weight = 1\n",
        "address = \"10.77.2.11\"\n  port = 9000\n  weight = 10\n  max_conns = 2\n",
        1,
    );
    assert!(text.contains("max_conns = 2"), "the echo's web1 in the config:\n{text}");
    lab.reload_text(&text, "configuration reloaded");
    let on = in_ns(&lab.topo.client(), || {
        let mut held = Vec::new();
        let mut on = Vec::new();
        for i in 0..12 {
            let mut conn = EchoConn::open().unwrap_or_else(|e| panic!("connection {i}: {e}"));
            on.push(conn.exchange("hello").unwrap_or_else(|e| panic!("connection {i}: {e}")));
            held.push(conn);
        }
        // Every one still answers with all six open.
        for (i, conn) in held.iter_mut().enumerate() {
            assert_eq!(conn.exchange("again").unwrap(), on[i], "connection {i} moved");
        }
        on
    });
    eprintln!("twelve held connections on {on:?}");
    let limited = on.iter().filter(|b| *b == "web1").count();
    assert_eq!(limited, 2, "connections on the backend limited to 2: {on:?}");
    assert_eq!(on.len(), 12);
}

/// `allowed_sources = ["10.77.1.10/32"]`: the client is served, a client
/// at another address of the same network gets nothing.
#[test]
fn only_an_allowed_source_is_served() {
    let lab = Lab::start_with(
        "lbp3",
        Setup { web: "allowed_sources = [\"10.77.1.10/32\"]\n", ..Setup::default() },
        [Some(1); 3],
    );
    let url = format!("http://{VIP}/");
    let get =
        |src: &str| ns_sh(&lab.topo.client(), &["curl", "-s", "-m", "2", "--interface", src, &url]);
    let served = backend_of(&get(CLIENT_ADDR));
    assert!(served.starts_with("web"), "the allowed client: {served:?}");
    let other = FRESH_CLIENT_ADDRS[0];
    let refused = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.topo.client(), "curl", "-s", "-m", "2"])
        .args(["--interface", other, &url])
        .output()
        .expect("curl");
    assert!(!refused.status.success(), "{other} was answered: {refused:?}");
    assert!(
        refused.stdout.is_empty(),
        "{other} got {:?}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let listed = lab.ctl_ok(&["stats"]);
    assert!(listed.contains("source_not_allowed"), "counted:\n{listed}");
}
