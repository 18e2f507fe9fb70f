//! Slow start end to end: a backend that comes back UP in a service with
//! `slow_start_s` gets a growing part of the new flows over that time, not
//! its whole share at once, counted by the data plane's per-backend
//! counters under a steady stream of new connections.
use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_testbed::{
    counters::{backend_id, backend_traffic},
    harness::{FAST_CHECKS, Lab, Setup, http_get},
    netns::{block_input, in_ns, unblock_input},
    topology::BACKENDS,
};

const SLOW_START: Duration = Duration::from_secs(4);
/// How often the counters are read.
const WINDOW: Duration = Duration::from_millis(500);

#[test]
fn a_recovered_backend_gets_a_growing_share_over_the_slow_start() {
    let setup = Setup { checks: Some(&FAST_CHECKS), web: "slow_start_s = 4\n", ..Setup::default() };
    let lab = Lab::start_with("lbk5", setup, [Some(1); 3]);
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let ids: Vec<u32> = BACKENDS
        .iter()
        .map(|(_, a)| backend_id(&lab.pin_dir, a.parse::<Ipv4Addr>().unwrap(), 80))
        .collect();
    let web2 = BACKENDS[1].1;
    let tag = format!("backend={web2}:80");
    block_input(&lab.topo.web("web2"), &["tcp", "dport", "80", "drop"]);
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(10));

    // A steady stream of new connections from the client.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (ns, stop) = (lab.topo.client(), Arc::clone(&stop));
        std::thread::spawn(move || {
            in_ns(&ns, move || {
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) {
                    failed += usize::from(http_get().is_err());
                }
                failed
            })
        })
    };
    let new_flows = || -> Vec<u64> {
        ids.iter().map(|id| backend_traffic(&lab.pin_dir, *id).new_flows).collect()
    };
    unblock_input(&lab.topo.web("web2"));
    lab.wait_lines(&["backend is UP", &tag], 1, Duration::from_secs(10));
    let up = Instant::now();
    // The view is published once the UP is applied, right after the log line.
    let ramping =
        lb_testbed::harness::wait_for("web2 UP in the API", Duration::from_secs(2), || {
            let view = lab.backend_view(web2, 80);
            if view.in_rotation { Ok(view) } else { Err(view.health.status) }
        });
    // Counted from the UP: windows of half a second through the ramp and
    // two seconds past it.
    let mut windows = Vec::new();
    let mut last = new_flows();
    while up.elapsed() < SLOW_START + Duration::from_secs(2) {
        std::thread::sleep(WINDOW);
        let now = new_flows();
        let delta: Vec<u64> = now.iter().zip(&last).map(|(a, b)| a - b).collect();
        windows.push((up.elapsed(), delta));
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let failed = client.join().expect("the client");
    assert_eq!(failed, 0, "requests failed");

    let share = |d: &Vec<u64>| d[1] as f64 / d.iter().sum::<u64>().max(1) as f64;
    for (at, d) in &windows {
        eprintln!(
            "{:>5} ms after UP: new flows {d:?}, web2 {:.1}%, {:.0}/s to web2",
            at.as_millis(),
            share(d) * 100.0,
            d[1] as f64 / WINDOW.as_secs_f64()
        );
    }
    eprintln!(
        "the API right after UP: {:?} ramp, effective weight {}",
        ramping.ramp, ramping.effective_weight
    );
    let during: Vec<f64> =
        windows.iter().filter(|(at, _)| *at <= SLOW_START).map(|(_, d)| share(d)).collect();
    let after: Vec<f64> = windows
        .iter()
        .filter(|(at, _)| *at > SLOW_START + Duration::from_secs(1))
        .map(|(_, d)| share(d))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (first_half, second_half) = during.split_at(during.len() / 2);
    // Without a ramp web2 takes a third of every window from the start.
    assert!(during[0] < 0.12, "web2 took {:.1}% at once", during[0] * 100.0);
    assert!(mean(first_half) < mean(second_half), "no growth: {first_half:?} then {second_half:?}");
    assert!(mean(&after) > 0.25, "web2's full share never came: {after:?}");
    assert!(mean(first_half) < mean(&after) / 2.0, "{first_half:?} against {after:?}");
    // The API showed it ramping.
    assert!(ramping.ramp.is_some_and(|r| r < 1.0), "{ramping:?}");
    assert!(ramping.effective_weight < 1.0, "{ramping:?}");
    let done = lab.backend_view(web2, 80);
    assert_eq!((done.ramp, done.effective_weight), (None, 1.0), "{done:?}");
}
