//! Pins tampered with between two runs of `lb-ctl run`: a map of another
//! type at an `lb_*` path, `lb_*` pins without `lb_meta`, an interface
//! removed from the config. Run as root, one test at a time.
use std::{collections::BTreeMap, path::Path};

use aya::maps::{DevMap, HashMap, Map, MapData};
use lb_testbed::{
    harness::{Lab, lb_ctl_bin},
    netns::{ns_sh, output},
};

/// `lb-ctl run` on the lab's config with `args`, which must be refused;
/// its standard error.
fn refused(lab: &Lab, args: &[&str]) -> String {
    let ns = format!("--net=/var/run/netns/{}", lab.topo.lb());
    let ctl = lb_ctl_bin().to_string_lossy().into_owned();
    let config = lab.config_path.to_string_lossy().into_owned();
    let run_dir = lab.run_dir();
    let mut command = std::process::Command::new("nsenter");
    command.env("LB_RUN_DIR", &run_dir).args([&ns, &ctl, "run", "--config", &config]).args(args);
    let out = command.output().expect("running lb-ctl run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "lb-ctl run {args:?} should be refused:\n{err}");
    err
}

/// Pins a new map of `map_type` (BPF_MAP_TYPE_*) with the given sizes at `path`.
fn pin_new_map(path: &Path, map_type: u32, key: u32, value: u32, entries: u32) {
    let spec = format!(
        "type {} key {key} value {value} entries {entries} name fake",
        match map_type {
            1 => "hash",
            2 => "array",
            other => panic!("map type {other}"),
        }
    );
    let mut args = vec!["bpftool", "map", "create"];
    let path = path.to_string_lossy().into_owned();
    args.push(&path);
    args.extend(spec.split(' '));
    let out = output(&args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A map of another type, same key and value sizes and capacity, pinned
/// in place of `lb_vips`; then `lb_*` pins with no `lb_meta`. Both are
/// refused, naming the map and `lb-ctl down`, which removes them.
#[test]
fn a_map_of_another_type_and_pins_without_lb_meta_are_refused() {
    let mut lab = Lab::start("lbt60");
    assert!(lab.stop().success());
    let pins = Path::new(&lab.pin_dir).to_owned();
    let vips = pins.join("lb_vips");
    let info = MapData::from_pin(&vips).and_then(|m| m.info()).expect("lb_vips pinned");
    std::fs::remove_file(&vips).expect("unpinning lb_vips");
    // An array with a hash's sizes: aya would reuse it without a word.
    pin_new_map(&vips, 2, info.key_size(), info.value_size(), info.max_entries());
    let err = refused(&lab, &[]);
    assert!(
        err.contains("map lb_vips: it is a array map, this build's is a hash map")
            && err.contains("lb-ctl down"),
        "{err}"
    );

    std::fs::remove_file(pins.join("lb_meta")).expect("unpinning lb_meta");
    let err = refused(&lab, &[]);
    assert!(err.contains("without lb_meta") && err.contains("lb-ctl down"), "{err}");
    assert!(err.contains("lb_vips"), "the strays are named: {err}");

    let pin_path = lab.pin_dir.clone();
    lab.ctl_ok(&["down", "--pin-path", &pin_path]);
    assert!(!pins.join("lb_vips").exists(), "lb-ctl down removed the strays");
}

/// A data plane pinned with the default `fullnat_max`, then a config that
/// asks for another: pinned maps keep their size, so the controller
/// refuses them, naming the map, the setting and `lb-ctl down`.
#[test]
fn a_changed_fullnat_max_is_refused_naming_the_setting() {
    let mut lab = Lab::start("lbt63");
    assert!(lab.stop().success());
    let config = std::fs::read_to_string(&lab.config_path).expect("the lab's config");
    let resized = config.replacen("[dataplane]\n", "[dataplane]\nfullnat_max = 1024\n", 1);
    assert_ne!(resized, config, "the config has a [dataplane] table");
    std::fs::write(&lab.config_path, resized).expect("writing the config");
    let err = refused(&lab, &[]);
    assert!(
        err.contains("map lb_fnat_fwd: its max_entries is 65536, this build's is 1024")
            && err.contains("dataplane.fullnat_max")
            && err.contains("lb-ctl down"),
        "{err}"
    );
    let pin_path = lab.pin_dir.clone();
    lab.ctl_ok(&["down", "--pin-path", &pin_path]);
}

/// The redirect targets an adopted data plane holds, read from its pins:
/// ifindex -> slot, and the slots of `lb_tx_ports` that hold an interface.
fn tx_targets(pin_dir: &str) -> (BTreeMap<u32, u32>, BTreeMap<u32, u32>) {
    let open = |name: &str| MapData::from_pin(Path::new(pin_dir).join(name)).expect(name);
    let slots: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(open("lb_tx_slots"))).expect("lb_tx_slots");
    let slots = slots.iter().map(|e| e.expect("reading lb_tx_slots")).collect();
    let ports = DevMap::try_from(Map::DevMap(open("lb_tx_ports"))).expect("lb_tx_ports");
    let ports = (0..ports.len())
        .filter_map(|slot| ports.get(slot, 0).ok().map(|v| (slot, v.if_index)))
        .collect();
    (slots, ports)
}

fn ifindex(lab: &Lab, name: &str) -> u32 {
    let text = ns_sh(&lab.topo.lb(), &["cat", &format!("/sys/class/net/{name}/ifindex")]);
    text.trim().parse().unwrap_or_else(|_| panic!("ifindex of {name}: {text:?}"))
}

/// Run with three interfaces, then with two: the one that went leaves
/// `lb_tx_slots` and `lb_tx_ports` (its old slot is now lb-b's: a packet
/// routed out of it would have left by lb-b).
#[test]
fn an_interface_removed_between_runs_leaves_the_redirect_maps() {
    let mut lab = Lab::start("lbt61");
    let ns = lab.topo.lb();
    // (No dummy driver here: a veth pair whose peer stays in the namespace.)
    ns_sh(&ns, &["ip", "link", "add", "lb-x", "type", "veth", "peer", "name", "lb-xp"]);
    ns_sh(&ns, &["ip", "link", "set", "lb-x", "up"]);
    ns_sh(&ns, &["ip", "link", "set", "lb-xp", "up"]);
    lab.restart_with(&["--iface", "lb-c", "--iface", "lb-x", "--iface", "lb-b"]);
    let (c, x, b) = (ifindex(&lab, "lb-c"), ifindex(&lab, "lb-x"), ifindex(&lab, "lb-b"));
    let three = tx_targets(&lab.pin_dir);
    assert_eq!(
        three,
        (BTreeMap::from([(c, 0), (x, 1), (b, 2)]), BTreeMap::from([(0, c), (1, x), (2, b)]))
    );

    lab.restart_with(&["--iface", "lb-c", "--iface", "lb-b"]);
    let two = tx_targets(&lab.pin_dir);
    assert_eq!(two, (BTreeMap::from([(c, 0), (b, 1)]), BTreeMap::from([(0, c), (1, b)])));
    let body = lb_testbed::netns::in_ns(&lab.topo.client(), lb_testbed::harness::http_get)
        .expect("the VIP still answers");
    assert!(body.contains("Bienvenue"), "{body}");
}
