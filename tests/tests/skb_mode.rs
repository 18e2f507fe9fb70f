//! Generic (skb) mode, where the program runs after GRO: bulk transfers
//! through the VIP both ways with GRO on where the load balancer receives.
//! Run as root, one test at a time (`cargo xtask test` does both).
//!
//! The kernel skips GRO on a device that has a generic XDP program itself
//! (`netif_elide_gro`), but not on the devices below it: with the load
//! balancer's interfaces bridges over veth ports whose GRO is on, the
//! program would see merged packets of up to 64 KiB: the client's dropped
//! as too big for the backend link (`drop_too_big`), the backend's replies
//! passed to the kernel untranslated (`pass_fib_failed`), and both
//! transfers would stall. The controller turns GRO off below such an interface, writes down
//! what it turned off, and turns it back on when the data plane is detached.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Instant,
};

use lb_common::counter::Counter;
use lb_testbed::{
    counters,
    harness::{Lab, Setup},
    netns::{in_ns, ns_sh},
    topology::{BACKENDS, LB_BACKEND_SIDE, LB_CLIENT_SIDE, LB_IFACES, Topology, VIP},
};
use lb_tests::bulk;

const BULK_PORT: u16 = 9100;
/// A fourth service, VIP:9100 -> web1:9100, served by `bulk::serve`.
const BULK_SERVICE: &str = "\n[[service]]\nname = \"bulk\"\nvip = \"10.77.1.100\"\nport = 9100\nprotocol = \"tcp\"\n  [[service.backend]]\n  address = \"10.77.2.11\"\n  port = 9100\n  weight = 1\n";
const SIZE: u64 = 16 << 20;

fn skb_setup() -> Setup {
    Setup { dataplane: "xdp_mode = \"skb\"\n", tables: BULK_SERVICE, ..Setup::default() }
}

/// Whether software GRO is on for `dev` in `ns` (`ethtool -k`).
fn gro(ns: &str, dev: &str) -> bool {
    let features = ns_sh(ns, &["ethtool", "-k", dev]);
    let line = features
        .lines()
        .find(|l| l.starts_with("generic-receive-offload:"))
        .unwrap_or_else(|| panic!("no GRO line in `ethtool -k {dev}`:\n{features}"));
    line.split_whitespace().nth(1) == Some("on")
}

fn gro_states(ns: &str, devs: &[String]) -> Vec<(String, bool)> {
    devs.iter().map(|d| (d.clone(), gro(ns, d))).collect()
}

/// Turns each of the load balancer's veths into the port (`NAME-p`) of a
/// bridge that takes its name and addresses, GRO on on the port: an
/// interface with a device below it, as a VLAN over a NIC or a bond is.
fn bridges_over_merging_ports(topo: &Topology) {
    let lb = topo.lb();
    let vip = format!("{VIP}/32");
    let client_side = format!("{LB_CLIENT_SIDE}/24");
    let backend_side = format!("{LB_BACKEND_SIDE}/24");
    for (dev, addrs) in [("lb-c", vec![&client_side, &vip]), ("lb-b", vec![&backend_side])] {
        let port = format!("{dev}-p");
        ns_sh(&lb, &["ip", "link", "set", dev, "down"]);
        ns_sh(&lb, &["ip", "link", "set", dev, "name", &port]);
        ns_sh(&lb, &["ip", "link", "add", dev, "type", "bridge"]);
        ns_sh(&lb, &["ip", "link", "set", &port, "master", dev]);
        for a in addrs {
            ns_sh(&lb, &["ip", "addr", "del", a, "dev", &port]);
            ns_sh(&lb, &["ip", "addr", "add", a, "dev", dev]);
        }
        ns_sh(&lb, &["ip", "link", "set", &port, "up"]);
        ns_sh(&lb, &["ip", "link", "set", dev, "up"]);
        ns_sh(&lb, &["ethtool", "-K", &port, "gro", "on"]);
    }
    // A veth hands its peer's NAPI (and GRO) only what it sends with TSO
    // off (veth_skb_is_eligible_for_gro): the client's c0 has it off, the
    // switch's port towards the load balancer too now, so the backend's
    // replies merge as well.
    ns_sh(&topo.switch(), &["ethtool", "-K", "sw-lb", "tso", "off"]);
}

/// 16 MB down from and 16 MB up to web1 through the VIP, each compared
/// byte for byte; the time each took, or why it failed.
fn bulk_both_ways(lab: &Lab) -> (Result<f64, String>, Result<f64, String>) {
    let web1 = BACKENDS[0].1;
    let listener = in_ns(&lab.topo.web("web1"), move || {
        TcpListener::bind((web1, BULK_PORT)).expect("bulk listener")
    });
    let server = bulk::serve(listener, 2);
    let vip = SocketAddr::from((VIP.parse::<Ipv4Addr>().expect("VIP"), BULK_PORT));
    let timed = |f: &dyn Fn() -> std::io::Result<()>| {
        let start = Instant::now();
        f().map(|()| start.elapsed().as_secs_f64()).map_err(|e| e.to_string())
    };
    let result = in_ns(&lab.topo.client(), move || {
        (timed(&|| bulk::download(vip, 1, SIZE)), timed(&|| bulk::upload(vip, 2, SIZE)))
    });
    // Both connections were accepted (a failed one returned early).
    if result.0.is_ok() && result.1.is_ok() {
        server.join().expect("bulk server");
    }
    result
}

fn assert_intact(lab: &Lab, (down, up): (Result<f64, String>, Result<f64, String>)) {
    let nonzero: Vec<_> =
        counters::read(&lab.pin_dir).into_iter().filter(|(_, v)| *v != 0).collect();
    eprintln!("download {down:?} s, upload {up:?} s; counters {nonzero:?}");
    let too_big = counters::get(&lab.pin_dir, Counter::DropTooBig);
    assert!(
        down.is_ok() && up.is_ok() && too_big == 0,
        "16 MB each way through the VIP: download {down:?}, upload {up:?}, drop_too_big = {too_big}"
    );
    // The data plane carried them (not the kernel).
    let id = counters::service_id(&lab.pin_dir, VIP.parse().expect("VIP"), BULK_PORT)
        .expect("the bulk service");
    let traffic = counters::service_traffic(&lab.pin_dir, id);
    assert!(
        traffic.in_bytes > SIZE && traffic.out_bytes > SIZE,
        "the bulk service's counters: {traffic:?}"
    );
}

#[test]
fn skb_mode_over_ports_that_merge_carries_bulk_transfers_intact_and_gives_gro_back() {
    let lb_devs: Vec<String> = ["lb-c", "lb-c-p", "lb-b", "lb-b-p"].map(String::from).to_vec();
    let mut before = Vec::new();
    let mut lab = Lab::start_prepared("lbt40", skb_setup(), [Some(1); 3], |topo| {
        bridges_over_merging_ports(topo);
        before = gro_states(&topo.lb(), &lb_devs);
    });
    let ns = lab.topo.lb();
    assert!(before.iter().any(|(_, on)| *on), "GRO is on somewhere below: {before:?}");
    assert_intact(&lab, bulk_both_ways(&lab));
    let attached = gro_states(&ns, &lb_devs);
    assert!(attached.iter().all(|(_, on)| !on), "GRO while attached in skb mode: {attached:?}");
    assert!(
        lab.count_lines(&["GRO turned off", "device=lb-c-p"]) == 1
            && lab.count_lines(&["GRO turned off", "device=lb-b-p"]) == 1,
        "the log says where GRO was turned off:\n{}",
        lab.log()
    );

    // SIGTERM leaves the data plane attached: GRO stays off under it.
    let status = lab.stop();
    assert!(status.success(), "lb-ctl exited with {status}:\n{}", lab.log());
    assert_eq!(gro_states(&ns, &lb_devs), attached, "GRO after SIGTERM (still attached)");
    // Detaching gives every device back its setting.
    let down = lab.ctl_ok(&["down", "--config", &lab.config_path.to_string_lossy()]);
    assert!(down.contains("GRO turned back on for lb-c-p"), "lb-ctl down said: {down}");
    assert_eq!(gro_states(&ns, &lb_devs), before, "GRO after lb-ctl down");
}

/// The lab's own veths with GRO on (the kernel merges nothing under a
/// generic program there, but the controller turns it off all the same),
/// and a controller killed with SIGKILL: the next one finds GRO off and
/// knows, from the record, that it was on; `--cleanup-on-exit` turns it
/// back on.
#[test]
fn skb_mode_on_veths_with_gro_on_survives_a_killed_controller_and_cleanup_restores_gro() {
    let devs: Vec<String> = LB_IFACES.map(String::from).to_vec();
    let mut lab = Lab::start_prepared("lbt41", skb_setup(), [Some(1); 3], |topo| {
        for dev in LB_IFACES {
            ns_sh(&topo.lb(), &["ethtool", "-K", dev, "gro", "on"]);
        }
    });
    let ns = lab.topo.lb();
    let off = [("lb-c".to_owned(), false), ("lb-b".to_owned(), false)];
    assert_eq!(gro_states(&ns, &devs), off, "GRO while attached in skb mode");
    lab.kill_and_restart(std::time::Duration::from_millis(100));
    assert_eq!(gro_states(&ns, &devs), off, "GRO after a SIGKILL and a restart");
    assert_intact(&lab, bulk_both_ways(&lab));
    // SIGTERM, then a controller that detaches at its own SIGTERM.
    lab.restart_with(&["--cleanup-on-exit"]);
    assert_eq!(gro_states(&ns, &devs), off, "GRO after a restart");
    let status = lab.stop();
    assert!(status.success(), "lb-ctl exited with {status}:\n{}", lab.log());
    assert!(
        lab.count_lines(&["GRO turned back on", "device=lb-c"]) == 1,
        "the log says where GRO was turned back on:\n{}",
        lab.log()
    );
    assert_eq!(
        gro_states(&ns, &devs),
        [("lb-c".into(), true), ("lb-b".into(), true)],
        "GRO once detached, though the controller that turned it off was killed"
    );
}
