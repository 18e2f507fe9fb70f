//! The schedulers and "no backend" answers end to end, checked the way IPVS
//! and HAProxy users check them: a loop of requests from the client.
use std::time::{Duration, Instant};

use lb_testbed::{
    harness::{EchoConn, Lab, Setup, backend_of, http_get, wait_for},
    netns::{in_ns, ns_sh},
    topology::{CLIENT_ADDR, FRESH_CLIENT_ADDRS, VIP},
};

#[test]
fn rr_rotates_whatever_cpu_the_packets_land_on() {
    let lab = Lab::start_with(
        "lbt11",
        Setup { web: "scheduler = \"rr\"\n", ..Setup::default() },
        [Some(1); 3],
    );
    let seen = lab.who_answers(9);
    eprintln!("rr: {seen:?}");
    assert_eq!(seen, ["web1", "web2", "web3", "web1", "web2", "web3", "web1", "web2", "web3"]);
}

#[test]
fn wrr_3_1_1_interleaves_exactly() {
    let lab = Lab::start_with(
        "lbt12",
        Setup { web: "scheduler = \"wrr\"\n", ..Setup::default() },
        [Some(3), Some(1), Some(1)],
    );
    let seen = lab.who_answers(10);
    eprintln!("wrr: {seen:?}");
    assert_eq!(
        seen,
        ["web1", "web2", "web1", "web3", "web1", "web1", "web2", "web1", "web3", "web1"]
    );
}

/// `sh`: each client sticks to one backend for every connection; removing a
/// backend moves only its own clients.
#[test]
fn sh_sticks_clients_and_a_removal_moves_only_its_own_clients() {
    let mut lab = Lab::start_with(
        "lbt13",
        Setup { web: "scheduler = \"sh\"\n", ..Setup::default() },
        [Some(1); 3],
    );
    let clients: Vec<&str> = std::iter::once(CLIENT_ADDR).chain(FRESH_CLIENT_ADDRS).collect();
    let url = format!("http://{VIP}/");
    let placement = |lab: &Lab| -> Vec<String> {
        clients
            .iter()
            .map(|src| {
                let names: Vec<String> = (0..4)
                    .map(|_| {
                        backend_of(&ns_sh(
                            &lab.topo.client(),
                            &["curl", "-s", "-m", "3", "--interface", src, &url],
                        ))
                    })
                    .collect();
                assert!(
                    names.iter().all(|n| *n == names[0]),
                    "client {src} moved between connections: {names:?}"
                );
                names[0].clone()
            })
            .collect()
    };
    let before = placement(&lab);
    eprintln!("sh placement of {clients:?}: {before:?}");
    let removed = before[0].clone();
    let index = ["web1", "web2", "web3"].iter().position(|n| *n == removed).unwrap();
    let mut weights = [Some(1); 3];
    weights[index] = None;
    lab.reload(weights);
    let after = placement(&lab);
    eprintln!("after removing {removed}: {after:?}");
    let stayers = before.iter().filter(|b| **b != removed).count();
    assert!(stayers > 0, "no client was on a surviving backend, so none could show it stays");
    for ((client, b), a) in clients.iter().zip(&before).zip(&after) {
        if *b == removed {
            assert_ne!(*a, removed, "{client} still on the removed backend");
        } else {
            assert_eq!(a, b, "{client} moved although its backend stayed");
        }
    }
}

/// `on_no_backend = "reject"` (the default): with every backend out, the
/// client is refused at once instead of waiting for a timeout.
#[test]
fn with_every_backend_out_clients_are_refused_at_once() {
    let lab = Lab::start_with("lbt14", Setup::default(), [Some(0); 3]);
    let started = Instant::now();
    let err = in_ns(&lab.topo.client(), http_get).expect_err("no backend can answer");
    let took = started.elapsed();
    eprintln!("refused after {} ms: {err}", took.as_millis());
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(500), "took {took:?}");
    // UDP: ICMP port unreachable, which a connected socket reports as refused.
    let udp = in_ns(&lab.topo.client(), || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        socket.connect((VIP, 5353)).unwrap();
        socket.send(b"anyone?").unwrap();
        socket.recv(&mut [0_u8; 64]).expect_err("no answer but an ICMP error")
    });
    assert_eq!(udp.kind(), std::io::ErrorKind::ConnectionRefused, "{udp}");
}

fn echo_backend(conn: &mut EchoConn) -> String {
    conn.exchange("who").expect("echo exchange")
}

/// `lc`: connections held open on web1 push new ones to web2 and web3.
#[test]
fn lc_sends_new_connections_away_from_a_loaded_backend() {
    let setup = Setup { echo: "scheduler = \"lc\"\n", ..Setup::default() };
    let mut lab = Lab::start_with("lbt15", setup, [Some(1), Some(0), Some(0)]);
    let client = lab.topo.client();
    // Four connections held open, all on web1 (the others are drained).
    let held: Vec<EchoConn> = in_ns(&client, || {
        (0..4)
            .map(|_| {
                let mut c = EchoConn::open().expect("connection");
                assert_eq!(echo_backend(&mut c), "web1");
                c
            })
            .collect()
    });
    lab.reload([Some(1); 3]);
    // The controller recounts every second: web1 now has 4 active.
    let web1_addr = "10.77.2.11".parse().unwrap();
    wait_for("web1 counted with 4 active", Duration::from_secs(5), || {
        let web1 = lb_testbed::counters::backend_conns(&lab.pin_dir, web1_addr, 9000);
        if web1.active == 4 { Ok(()) } else { Err(web1) }
    });
    let new: Vec<String> = in_ns(&client, || {
        (0..4).map(|_| echo_backend(&mut EchoConn::open().expect("connection"))).collect()
    });
    eprintln!("lc with web1 holding 4 connections: new ones went to {new:?}");
    assert!(!new.contains(&"web1".to_string()), "{new:?}");
    assert_eq!(new.iter().filter(|n| *n == "web2").count(), 2, "{new:?}");
    drop(held);
}

/// Drain to the end: a drained backend keeps its connections, and its
/// active count falls to 0 as they close.
#[test]
fn a_drained_backend_counts_down_to_zero_as_its_connections_close() {
    let mut lab = Lab::start_with("lbt16", Setup::default(), [Some(1), Some(0), Some(0)]);
    let client = lab.topo.client();
    let mut held: Vec<EchoConn> =
        in_ns(&client, || (0..3).map(|_| EchoConn::open().expect("connection")).collect());
    for c in &mut held {
        assert_eq!(echo_backend(c), "web1");
    }
    lab.reload([Some(0), Some(1), Some(1)]);
    let web1 = "10.77.2.11".parse().unwrap();
    let active = || lb_testbed::counters::backend_conns(&lab.pin_dir, web1, 9000).active;
    // The recount runs every second: each count must show up in turn.
    let count_reaches = |n: u32| {
        wait_for(&format!("web1 counted with {n} active"), Duration::from_secs(5), || {
            let now = active();
            if now == n { Ok(now) } else { Err(now) }
        })
    };
    let mut seen = vec![count_reaches(3)];
    while let Some(mut conn) = held.pop() {
        assert_eq!(
            echo_backend(&mut conn),
            "web1",
            "the drained backend still serves its connections"
        );
        drop(conn);
        seen.push(count_reaches(u32::try_from(held.len()).expect("a few connections")));
    }
    eprintln!("web1's active connections while they close: {seen:?}");
}
