//! End to end in network namespaces: real clients and servers, the real
//! controller, the real XDP program attached to veth interfaces. Run as root,
//! one test at a time (`cargo xtask test` does both).
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use lb_common::counter::Counter;
use lb_testbed::{
    counters,
    harness::{EchoConn, Lab, backend_of, http_get, lb_ctl_bin, udp_query, wait_for, who_answers},
    netns::{in_ns, ns_sh, ns_try, output},
    topology::{FRESH_CLIENT_ADDRS, LB_CLIENT_SIDE, Topology, VIP},
    traffic::Traffic,
};

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_insert(0) += 1;
    }
    counts
}

#[test]
fn tcp_and_udp_are_spread_over_all_three_backends() {
    let lab = Lab::start("lbt1");
    let (http, udp) = in_ns(&lab.topo.client(), || {
        let http = who_answers(100);
        let udp: Vec<String> = (0..30)
            .map(|i| udp_query(&format!("q{i}")).unwrap_or_else(|e| panic!("UDP query {i}: {e}")))
            .collect();
        (tally(http), tally(udp))
    });
    eprintln!("HTTP: {http:?}\nUDP: {udp:?}");
    assert_eq!(http.values().sum::<usize>(), 100);
    assert_eq!(
        http.keys().collect::<Vec<_>>(),
        ["web1", "web2", "web3"],
        "every backend answers HTTP"
    );
    assert_eq!(udp.values().sum::<usize>(), 30);
    assert!(udp.len() >= 2, "UDP flows are spread too: {udp:?}");
    // The data plane did the forwarding (not the kernel) and counted it.
    let redirected = counters::get(&lab.pin_dir, Counter::Redirect);
    assert!(redirected >= 100 * 4, "only {redirected} packets redirected by XDP");
    let new_flows: u64 =
        (0..3).map(|id| counters::backend_traffic(&lab.pin_dir, id).new_flows).sum();
    assert!(new_flows >= 100, "per-backend new-flow counters: {new_flows}");
}

/// Drain by config reload (weight 0): no new flows reach the backend, while
/// a connection already on it keeps exchanging data; then removing it from
/// the config takes it out.
#[test]
fn drain_by_reload_keeps_established_flows_and_removal_takes_a_backend_out() {
    let mut lab = Lab::start("lbt2");
    let client = lab.topo.client();
    // A long-lived connection; find out which backend it landed on.
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let long_lived = std::thread::spawn({
        let client = client.clone();
        move || {
            lb_testbed::netns::enter(&client);
            let mut conn = EchoConn::open().expect("long-lived connection");
            let backend = conn.exchange("hello").expect("first exchange");
            done_tx.send(Ok(backend.clone())).unwrap();
            // Keep talking every few milliseconds until told to stop.
            let mut exchanges = 0;
            while rx.try_recv().is_err() {
                match conn.exchange(&format!("line {exchanges}")) {
                    Ok(b) if b == backend => exchanges += 1,
                    Ok(other) => return done_tx.send(Err(format!("moved to {other}"))).unwrap(),
                    Err(e) => {
                        return done_tx
                            .send(Err(format!("broken after {exchanges} exchanges: {e}")))
                            .unwrap();
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            done_tx.send(Ok(format!("{exchanges}"))).unwrap();
        }
    });
    let drained = done_rx.recv().unwrap().expect("long-lived connection started");
    let index = ["web1", "web2", "web3"].iter().position(|n| *n == drained).expect("backend name");
    let mut weights = [Some(1); 3];
    weights[index] = Some(0);
    lab.reload(weights);

    let after_drain = in_ns(&client, || {
        let mut names: Vec<String> =
            (0..60).map(|_| backend_of(&http_get().expect("HTTP after drain"))).collect();
        names.extend((0..30).map(|_| {
            EchoConn::open().and_then(|mut c| c.exchange("new")).expect("echo after drain")
        }));
        tally(names)
    });
    eprintln!("drained {drained}; new flows went to {after_drain:?}");
    assert!(
        !after_drain.contains_key(&drained),
        "a drained backend got new flows: {after_drain:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    tx.send("stop").unwrap();
    let exchanges = done_rx
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("the established connection on {drained}: {e}"));
    long_lived.join().unwrap();
    eprintln!(
        "the established connection on {drained} exchanged {exchanges} lines during and after the drain"
    );
    assert!(exchanges.parse::<u32>().unwrap() > 10);

    // Remove another backend from the config entirely.
    let removed = (index + 1) % 3;
    let mut weights = [Some(1); 3];
    weights[removed] = None;
    lab.reload(weights);
    let after_removal = in_ns(&client, || {
        tally((0..60).map(|_| backend_of(&http_get().expect("HTTP after removal"))))
    });
    let removed_name = format!("web{}", removed + 1);
    eprintln!("removed {removed_name}; requests went to {after_removal:?}");
    assert!(!after_removal.contains_key(&removed_name));
    assert_eq!(after_removal.len(), 2, "the two remaining backends share the load");
}

/// The neighbour-miss path in both directions: the load balancer has no
/// neighbour entry for the backends nor for this client's address, so the
/// first packets each way go through the tc slow path (a reply handed to the
/// kernel instead would be dropped as a martian: its source is the VIP).
#[test]
fn a_client_the_load_balancer_has_never_seen_gets_through() {
    let lab = Lab::start("lbt3");
    ns_sh(&lab.topo.lb(), &["ip", "neigh", "flush", "all"]);
    let before = counters::get(&lab.pin_dir, Counter::SlowPathNeigh);
    let body = ns_sh(
        &lab.topo.client(),
        &["curl", "-s", "-m", "5", "--interface", FRESH_CLIENT_ADDRS[0], &format!("http://{VIP}/")],
    );
    assert!(body.starts_with("Bienvenue sur WEB"), "unexpected answer {body:?}");
    let udp = ns_sh(
        &lab.topo.client(),
        &[
            "bash",
            "-c",
            &format!("echo fresh | socat -T 3 - UDP:{VIP}:5353,bind={}", FRESH_CLIENT_ADDRS[1]),
        ],
    );
    assert!(udp.trim_end().ends_with("fresh"), "unexpected UDP answer {udp:?}");
    let slow = counters::get(&lab.pin_dir, Counter::SlowPathNeigh) - before;
    eprintln!("{slow} packets took the neighbour slow path");
    assert!(slow >= 2, "both directions should have met a neighbour miss, saw {slow}");
}

/// The program passes what is not for a service: the load balancer's own
/// addresses (an admin ssh-like TCP service, ping) keep working while attached.
#[test]
fn the_load_balancers_own_addresses_still_work_while_attached() {
    let lab = Lab::start("lbt4");
    let listener = in_ns(&lab.topo.lb(), || {
        TcpListener::bind("0.0.0.0:2222").expect("listener in the lb namespace")
    });
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0_u8; 4];
            s.read_exact(&mut buf).expect("read");
            s.write_all(b"pong").expect("write");
        }
    });
    for target in [LB_CLIENT_SIDE, VIP] {
        let answer = in_ns(&lab.topo.client(), move || {
            let mut s =
                TcpStream::connect((target, 2222)).expect("connect to the load balancer itself");
            s.write_all(b"ping").unwrap();
            let mut buf = [0_u8; 4];
            s.read_exact(&mut buf).unwrap();
            buf
        });
        assert_eq!(&answer, b"pong", "TCP to {target}:2222");
    }
    server.join().unwrap();
    assert!(
        ns_try(&lab.topo.client(), &["ping", "-c", "2", "-W", "2", LB_CLIENT_SIDE]),
        "ping the load balancer"
    );
    assert!(ns_try(&lab.topo.client(), &["ping", "-c", "2", "-W", "2", VIP]), "ping the VIP");
}

/// SIGTERM stops the controller, not the data plane: it keeps forwarding
/// (the next `lb-ctl run` adopts it); `lb-ctl down` removes it.
#[test]
fn sigterm_leaves_the_data_plane_running_and_down_removes_it() {
    let mut lab = Lab::start("lbt5");
    let lb = lab.topo.lb();
    let attached = |dev: &str| ns_sh(&lb, &["ip", "link", "show", dev]).contains("xdp");
    assert!(attached("lb-c"), "XDP attached while running");
    assert!(std::path::Path::new(&format!("{}/lb_services", lab.pin_dir)).exists());
    let status = lab.stop();
    assert!(status.success(), "exit status {status}:\n{}", lab.log());
    assert!(lab.log().contains("the data plane keeps forwarding"), "{}", lab.log());
    assert!(attached("lb-c") && attached("lb-b"), "XDP stays attached after SIGTERM");
    let body = in_ns(&lab.topo.client(), http_get).expect("the VIP answers without a controller");
    assert!(body.contains("Bienvenue"), "{body}");

    let ctl = lb_ctl_bin();
    let programs = attached_programs(&lab);
    let out = output(&[&ctl.to_string_lossy(), "down", "--pin-path", &lab.pin_dir]);
    assert!(out.status.success(), "lb-ctl down: {out:?}");
    for dev in ["lb-c", "lb-b"] {
        assert!(!attached(dev), "XDP still attached to {dev} after lb-ctl down");
    }
    wait_programs_freed(&programs);
    assert!(!std::path::Path::new(&lab.pin_dir).exists(), "pins removed");
    // With the data plane gone, the VIP is just a local address again.
    assert!(in_ns(&lab.topo.client(), http_get).is_err(), "nothing should answer on the VIP");
}

/// A pinned link: its id and the id of the program it runs.
#[derive(Debug, PartialEq, Eq)]
struct PinnedLink {
    id: String,
    prog_id: String,
}

/// The link pinned as `links/{kind}_{dev}` (`xdp`, or `tc`: tcx ingress).
fn pinned_link(lab: &Lab, kind: &str, dev: &str) -> PinnedLink {
    let link = format!("{}/links/{kind}_{dev}", lab.pin_dir);
    let json = String::from_utf8_lossy(
        &output(&["bpftool", "-j", "link", "show", "pinned", &link]).stdout,
    )
    .into_owned();
    let field = |name: &str| {
        json.split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .unwrap_or_else(|| panic!("no {name} in {json:?}"))
            .to_owned()
    };
    PinnedLink { id: field("id"), prog_id: field("prog_id") }
}

/// The pinned XDP link of lb-c.
fn xdp_link(lab: &Lab) -> PinnedLink {
    pinned_link(lab, "xdp", "lb-c")
}

/// The programs attached to the load balancer's interfaces (XDP and tcx,
/// both links), by id.
fn attached_programs(lab: &Lab) -> Vec<String> {
    ["lb-c", "lb-b"]
        .into_iter()
        .flat_map(|dev| ["xdp", "tc"].map(|kind| pinned_link(lab, kind, dev).prog_id))
        .collect()
}

/// Waits until none of the programs `ids` is loaded any more: what
/// detaching them and dropping every pin and descriptor leaves (the
/// kernel frees them after an RCU grace period). This bpftool (7.1) lists
/// neither tcx links nor, by interface, their programs.
fn wait_programs_freed(ids: &[String]) {
    wait_for("the data plane's programs freed", Duration::from_secs(5), || {
        let loaded: Vec<&String> = ids
            .iter()
            .filter(|id| output(&["bpftool", "prog", "show", "id", id]).status.success())
            .collect();
        if loaded.is_empty() {
            Ok(())
        } else {
            Err(loaded.into_iter().cloned().collect::<Vec<_>>())
        }
    });
}

/// The tag (a hash of its instructions) of the program on lb-c's XDP link.
fn xdp_link_tag(lab: &Lab) -> String {
    let id = xdp_link(lab).prog_id;
    let json =
        String::from_utf8_lossy(&output(&["bpftool", "-j", "prog", "show", "id", &id]).stdout)
            .into_owned();
    json.split("\"tag\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no tag in {json:?}"))
        .to_owned()
}

/// The data plane upgraded under traffic: a controller started with
/// another build of the XDP object (`--object`; one harmless extra
/// instruction) swaps its program in on the same links, keeps the maps and
/// so every connection; then back to the built-in program.
#[test]
fn an_upgraded_program_replaces_the_running_one_without_breaking_a_connection() {
    let object = std::env::var("LB_UPGRADE_OBJECT")
        .expect("LB_UPGRADE_OBJECT: the variant XDP object, which `cargo xtask test` builds");
    let mut lab = Lab::start("lbt28");
    let traffic = Traffic::start(&lab.topo.client(), 3);
    let built_in = xdp_link_tag(&lab);
    let link = xdp_link(&lab).id;
    lab.restart_with(&["--object", &object]);
    let log = lab.log();
    assert!(log.contains("XDP object from file"), "{log}");
    assert!(log.contains("adopted the pinned data plane"), "{log}");
    let upgraded = xdp_link_tag(&lab);
    eprintln!("program tag: built-in {built_in}, upgraded {upgraded}");
    assert_ne!(built_in, upgraded, "the link runs the upgraded program");
    assert_eq!(xdp_link(&lab).id, link, "swapped into the same link, not a new attachment");
    std::thread::sleep(Duration::from_secs(1));
    lab.restart_with(&[]);
    assert_eq!(xdp_link_tag(&lab), built_in, "and the built-in one again");
    assert_eq!(xdp_link(&lab).id, link, "still on the same link");
    std::thread::sleep(Duration::from_secs(1));
    traffic.finish_unbroken(300);
}

/// Reloads under traffic: one the validation refuses changes nothing and
/// says why; a good one (a backend drained) breaks no connection.
#[test]
fn a_refused_reload_changes_nothing_and_a_good_one_breaks_nothing() {
    let mut lab = Lab::start("lbt29");
    let traffic = Traffic::start(&lab.topo.client(), 3);
    // Services, backends, forwarding and weights (not the live counts).
    let settings = |lab: &Lab| -> Vec<String> {
        let list = lab.ctl_ok(&["list"]);
        list.lines().map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" ")).collect()
    };
    let listed = settings(&lab);
    let good = lab.config_text([Some(1); 3]);
    let bad = good.replacen("weight = 1", "weight = -3", 1).replacen("port = 80", "port = 0", 1);
    lab.reload_text(&bad, "reload refused");
    let refusal =
        lab.log().lines().rfind(|l| l.contains("reload refused")).unwrap_or_default().to_owned();
    assert!(refusal.contains("service[0].backend[0].weight"), "{refusal}");
    assert!(refusal.contains("service[0].port"), "{refusal}");
    assert_eq!(settings(&lab), listed, "a refused reload changes nothing");
    lab.reload([Some(1), Some(1), Some(0)]);
    let drained = settings(&lab);
    assert!(
        drained.iter().any(|l| l.starts_with("-> 10.77.2.13:80 Masq 0")),
        "the good reload drained web3: {drained:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    traffic.finish_unbroken(100);
}

/// `lb-ctl health` (keepalived's track_script) answers 0 while XDP runs on
/// every interface, and 1 naming the interface once a link is gone.
#[test]
fn health_names_an_interface_that_lost_its_program() {
    let lab = Lab::start("lbt30");
    let out = lab.ctl(&["health"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The pin is the link's only holder: removing it detaches XDP from lb-c.
    std::fs::remove_file(format!("{}/links/xdp_lb-c", lab.pin_dir)).expect("the XDP link pin");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let stderr = loop {
        let out = lab.ctl(&["health"]);
        if out.status.code() == Some(1) {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(std::time::Instant::now() < deadline, "lb-ctl health still says ready");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stderr.contains("no XDP link for lb-c"), "{stderr}");
}

/// One controller per pinned data plane; pins it cannot use (another
/// layout, a path off bpffs) are refused with a clear message, and the
/// running data plane is left as it was.
#[test]
fn a_second_controller_and_unusable_pins_are_refused() {
    let mut lab = Lab::start("lbt23");
    let ctl = lb_ctl_bin().to_string_lossy().into_owned();
    let ns = format!("--net=/var/run/netns/{}", lab.topo.lb());
    let config = std::fs::read_to_string(&lab.config_path).expect("config");
    let (dir, pin_dir) = (lab.dir.clone(), lab.pin_dir.clone());
    let run_with = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("config");
        let out = std::process::Command::new("nsenter")
            .env("LB_RUN_DIR", dir.join("run"))
            .args([ns.as_str(), ctl.as_str(), "run", "--config", &path.to_string_lossy()])
            .output()
            .expect("running lb-ctl run");
        assert_eq!(out.status.code(), Some(1), "lb-ctl run with {name} should be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let other_admin = format!("{config}\n[admin]\nlisten = \"127.0.0.1:9101\"\n");
    let err = run_with("second.toml", other_admin.clone());
    assert!(err.contains("another lb-ctl run is using it"), "{err}");

    assert!(lab.stop().success());
    let bigger = other_admin.replace("conntrack_max = 65536", "conntrack_max = 131072");
    let err = run_with("bigger.toml", bigger);
    assert!(err.contains("lb_conntrack") && err.contains("lb-ctl down"), "{err}");
    let off_bpffs = other_admin.replace(&pin_dir, "/tmp/lbt23-not-bpffs/lb");
    let err = run_with("elsewhere.toml", off_bpffs);
    assert!(err.contains("is not a bpf filesystem"), "{err}");
    // The refused runs touched nothing: the data plane still forwards.
    let body = in_ns(&lab.topo.client(), http_get).expect("the VIP still answers");
    assert!(body.contains("Bienvenue"), "{body}");
}

/// `lb-ctl run` killed (SIGKILL) and started again while long-lived
/// connections exchange data every few milliseconds and a client keeps
/// opening new ones: the new controller adopts the pinned data plane, and
/// not one request fails nor one connection breaks.
#[test]
fn a_killed_controller_restarts_without_breaking_a_connection() {
    let mut lab = Lab::start("lbt22");
    let traffic = Traffic::start(&lab.topo.client(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let before = xdp_link(&lab);
    lab.kill_and_restart(Duration::from_millis(500));
    assert!(lab.log().contains("adopted the pinned data plane"), "{}", lab.log());
    // The new controller's program replaced the old one on the same link.
    let after = xdp_link(&lab);
    assert_ne!(before.prog_id, after.prog_id, "the link runs the new program");
    assert_eq!(before.id, after.id, "on the same link");
    std::thread::sleep(Duration::from_millis(1500));
    let requests = traffic.finish_unbroken(100);
    assert!(requests.done > 100, "only {} requests were made", requests.done);
}

#[test]
fn an_invalid_config_is_refused_with_every_problem_and_nothing_attached() {
    let topo = Topology::create("lbt6");
    let dir = std::env::temp_dir().join("lbt6-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[dataplane]
interfaces = ["lb-c", "nope0"]

[[service]]
name = "web"
vip = "10.77.1.300"
port = 0
scheduler = "fastest"
  [[service.backend]]
  address = "10.77.2.11"
  port = 80
  [[service.backend]]
  address = "10.77.2.11"
  port = 80
"#,
    )
    .unwrap();
    let ctl = lb_ctl_bin();
    let ns_path = format!("--net=/var/run/netns/{}", topo.lb());
    let path_str = path.to_string_lossy().into_owned();
    for command in ["check", "run"] {
        let out =
            output(&["nsenter", &ns_path, &ctl.to_string_lossy(), command, "--config", &path_str]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "lb-ctl {command} should exit 1:\n{stderr}");
        for key in
            ["service[0].vip", "service[0].port", "service[0].scheduler", "service[0].backend[1]"]
        {
            assert!(stderr.contains(key), "lb-ctl {command} does not name {key}:\n{stderr}");
        }
        let links = ns_sh(&topo.lb(), &["ip", "link", "show", "lb-c"]);
        assert!(!links.contains("xdp"), "nothing may be attached after a refused config");
    }
    // The interface problem is reported once the file itself is valid.
    std::fs::write(&path, "[dataplane]\ninterfaces = [\"lb-c\", \"nope0\"]\n").unwrap();
    let out = output(&["nsenter", &ns_path, &ctl.to_string_lossy(), "run", "--config", &path_str]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("dataplane.interfaces[1]: no interface named \"nope0\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lb-ctl run --cleanup-on-exit`: at SIGTERM the controller detaches both
/// programs and removes its pins, where a plain SIGTERM leaves the data
/// plane forwarding.
#[test]
fn cleanup_on_exit_removes_the_data_plane_at_sigterm() {
    let mut lab = Lab::start("lbt32");
    lab.restart_with(&["--cleanup-on-exit"]);
    let programs = attached_programs(&lab);
    let body = in_ns(&lab.topo.client(), http_get).expect("the VIP answers");
    assert!(body.contains("Bienvenue"), "{body}");
    let status = lab.stop();
    assert!(status.success(), "exit status {status}:\n{}", lab.log());
    let lb = lab.topo.lb();
    for dev in ["lb-c", "lb-b"] {
        let link = ns_sh(&lb, &["ip", "link", "show", dev]);
        assert!(!link.contains("xdp"), "XDP still attached to {dev}: {link}");
    }
    wait_programs_freed(&programs);
    assert!(!std::path::Path::new(&lab.pin_dir).exists(), "pins removed");
    assert!(in_ns(&lab.topo.client(), http_get).is_err(), "nothing answers on the VIP");
}
