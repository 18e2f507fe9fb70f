//! Sorry servers end to end: a backend added with `--backup` takes no new
//! flow while a primary backend of its service is usable, every new flow
//! once none is, and none again as soon as one primary is UP: counted by
//! the data plane's per-backend counters.
use std::{net::Ipv4Addr, time::Duration};

use lb_testbed::{
    counters::{backend_id, backend_traffic},
    harness::{FAST_CHECKS, Lab},
    netns::{block_input, unblock_input},
    server::DSR_HTTP_PORT,
    topology::BACKENDS,
};

/// The backup: web1's other HTTP server (port 8080), a backend of its own,
/// which the rules below (port 80 only) leave alone.
const BACKUP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 77, 2, 11), DSR_HTTP_PORT);

#[test]
fn a_backup_serves_only_while_no_primary_is_usable() {
    let lab = Lab::start_with_checks("lbk4", Some(&FAST_CHECKS));
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let backup = format!("{}:{}", BACKUP.0, BACKUP.1);
    let added = lab.ctl_ok(&["backend", "add", "web", &backup, "--backup"]);
    assert!(added.contains("backup") && added.contains("out of rotation"), "{added}");
    lab.wait_lines(&["backend is UP", &format!("backend={backup}")], 1, Duration::from_secs(10));
    let id = backend_id(&lab.pin_dir, BACKUP.0, BACKUP.1);
    let new_flows = || backend_traffic(&lab.pin_dir, id).new_flows;

    // Standing by: the primaries take every new flow.
    lab.who_answers(30);
    assert_eq!(new_flows(), 0, "a backup took new flows while the primaries were UP");
    let view = lab.backend_view(&BACKUP.0.to_string(), BACKUP.1);
    assert!(view.backup && !view.in_rotation, "{view:?}");

    // Every primary DOWN: the backup answers every request.
    for (name, _) in BACKENDS {
        block_input(&lab.topo.web(name), &["tcp", "dport", "80", "drop"]);
    }
    lab.wait_lines(&["health applied", "down=3"], 1, Duration::from_secs(10));
    // The view is published once the change is applied, after the log line.
    listed(&lab, "  backup (serving: no primary is usable)\n");
    let before = new_flows();
    let answers = lab.who_answers(30);
    assert!(answers.iter().all(|a| a == "web1"), "{answers:?}");
    assert_eq!(new_flows() - before, 30, "the backup took every new flow");

    // One primary UP again: the backup gets no new flow.
    // (down=2 was logged once on the way down already.)
    let seen = lab.count_lines(&["health applied", "down=2"]);
    unblock_input(&lab.topo.web("web2"));
    lab.wait_lines(&["health applied", "down=2"], seen + 1, Duration::from_secs(10));
    let before = new_flows();
    let answers = lab.who_answers(30);
    assert!(answers.iter().all(|a| a == "web2"), "{answers:?}");
    assert_eq!(new_flows(), before, "the backup took new flows once a primary was back");
    listed(&lab, "  backup (standing by");
}

/// Waits until `lb-ctl list web` says `text`.
fn listed(lab: &Lab, text: &str) {
    lb_testbed::harness::wait_for(text, Duration::from_secs(2), || {
        let list = lab.ctl_ok(&["list", "web"]);
        if list.contains(text) { Ok(()) } else { Err(list) }
    });
}
