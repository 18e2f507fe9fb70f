//! `lb-lab bgp [ROUNDS]`: many load balancers by BGP. A router running
//! BIRD, two nodes running BIRD and `lb-ctl run` with the same config (the
//! shipped `examples/bird/` configs, the test bed's short timers), the
//! three backends. It shows the router's ECMP route to the VIP, then, under
//! long-lived connections and a new connection every 10 ms, each event
//! that takes lb1 out of the route and back: `lb-ctl node drain`, its
//! controller killed, every backend DOWN as lb1 sees them, SIGTERM, and
//! lb1's front link cut (the node gone: nothing says goodbye, BFD or the
//! hold time notices), with BFD and without. Each event is
//! repeated ROUNDS times (default 1); the times are from the event to the
//! router's route change (polled every 2 ms), the median over the rounds.
use std::time::{Duration, Instant};

use lb_testbed::{
    ha::{Ha, Mode},
    netns::ns_sh,
    traffic::Traffic,
};

/// Longest wait for a route change (BGP's hold time is 3 s here).
const LIMIT: Duration = Duration::from_secs(15);

fn step(text: &str) {
    eprintln!("\n==> {text}");
}

/// An event that takes lb1 out of the route, and what brings it back.
#[derive(Clone, Copy)]
enum Event {
    Drain,
    Sigkill,
    AllDown,
    Sigterm,
    LinkCut,
}

impl Event {
    fn label(self) -> &'static str {
        match self {
            Self::Drain => "lb-ctl node drain / undrain",
            Self::Sigkill => "controller SIGKILL / started again",
            Self::AllDown => "every backend DOWN as lb1 sees them / UP again",
            Self::Sigterm => "controller SIGTERM / started again",
            Self::LinkCut => "lb1's front link cut (the node gone) / back",
        }
    }

    /// Makes lb1 unfit.
    fn start(self, ha: &mut Ha) {
        match self {
            Self::Drain => {
                ha.nodes[0].ctl_ok(&["node", "drain"]);
            }
            Self::Sigkill => ha.nodes[0].kill(),
            Self::AllDown => ha.block_probes_from(0, true),
            Self::Sigterm => ha.nodes[0].terminate(),
            Self::LinkCut => {
                ns_sh(&ha.node(0), &["ip", "link", "set", "lb-c", "down"]);
            }
        }
    }

    /// Makes lb1 fit again.
    fn end(self, ha: &mut Ha) {
        match self {
            Self::Drain => {
                ha.nodes[0].ctl_ok(&["node", "undrain"]);
            }
            Self::Sigkill => ha.nodes[0].start_again(),
            Self::AllDown => ha.block_probes_from(0, false),
            Self::Sigterm => {
                let status = ha.nodes[0].wait_exit();
                assert!(status.success(), "lb-ctl exited {status}");
                ha.nodes[0].start_again();
            }
            Self::LinkCut => {
                let node = ha.node(0);
                ns_sh(&node, &["ip", "link", "set", "lb-c", "up"]);
                // The link's routes went with it.
                ns_sh(&node, &["ip", "route", "replace", "default", "via", "10.77.1.1"]);
            }
        }
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// What one event's rounds measured.
struct Measured {
    label: &'static str,
    withdrawn: Duration,
    back: Duration,
    longest_gap: Duration,
    failed: usize,
    broken: usize,
}

/// `rounds` times: the event, lb1's next hop gone, the end, both back;
/// under a fresh load, whose report goes with the times.
fn measure(ha: &mut Ha, event: Event, rounds: usize) -> Measured {
    step(&format!("{} ({rounds}x)", event.label()));
    let traffic = Traffic::start(&ha.client(), 4);
    let (mut withdrawn, mut back) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let start = Instant::now();
        event.start(ha);
        ha.wait_next_hops(&[1], LIMIT);
        let took = start.elapsed();
        withdrawn.push(took);
        eprintln!("  round {round}: the router's route goes through lb2 only after {took:?}");
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        event.end(ha);
        ha.wait_next_hops(&[0, 1], LIMIT);
        let took = start.elapsed();
        eprintln!("  round {round}: both next hops again after {took:?}");
        back.push(took);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (requests, echoes) = traffic.finish();
    let broken = echoes.iter().filter(|e| e.error.is_some() || e.backends.len() != 1).count();
    eprintln!(
        "  new connections: {} made, {} failed, longest wait between two successes {:?}; long-lived: {} of {} broken",
        requests.done,
        requests.failed.len(),
        requests.longest_gap,
        broken,
        echoes.len()
    );
    Measured {
        label: event.label(),
        withdrawn: median(withdrawn),
        back: median(back),
        longest_gap: requests.longest_gap,
        failed: requests.failed.len(),
        broken,
    }
}

/// The router's route to the VIP, as `ip route` prints it.
fn show_route(ha: &Ha) {
    let route = ns_sh(&ha.router(), &["ip", "route", "show", "10.77.1.100"]);
    for line in route.lines() {
        eprintln!("  {}", line.trim_end());
    }
}

pub fn demo(rounds: usize) {
    let mut all = Vec::new();
    for bfd in [true, false] {
        let with = if bfd { "with BFD" } else { "without BFD (hold time 3 s)" };
        step(&format!(
            "a router and two load balancers (namespaces lbg-lab-*), each running BIRD ({with}) and lb-ctl run with the same config"
        ));
        let mut ha = Ha::start("lbg-lab", Mode::Bgp { bfd });
        step("the router's route to the VIP: one next hop per node (ECMP, BIRD's merge paths)");
        show_route(&ha);
        if let Some(router) = &ha.router_bird {
            for line in router.birdc(&["show", "route", "for", "10.77.1.100", "all"]).lines() {
                if line.contains("via") || line.contains("large_community") {
                    eprintln!("  {}", line.trim());
                }
            }
        }
        eprintln!("  (65001, 1, N): each node's lb-ctl node fingerprint; equal, the same services");
        let events: &[Event] = if bfd {
            &[Event::Drain, Event::Sigkill, Event::AllDown, Event::Sigterm, Event::LinkCut]
        } else {
            &[Event::Sigkill, Event::LinkCut]
        };
        for event in events {
            let mut m = measure(&mut ha, *event, rounds);
            if !bfd {
                m.label = match event {
                    Event::LinkCut => "lb1's front link cut, without BFD",
                    _ => "controller SIGKILL, without BFD",
                };
            }
            all.push(m);
        }
        step("everything back: the router's route");
        show_route(&ha);
        drop(ha);
    }
    step(&format!("summary (median of {rounds}; lb1 withdrawn / back, on a shared machine)"));
    eprintln!(
        "  {:<52} {:>10} {:>10} {:>12} {:>7} {:>7}",
        "event", "withdrawn", "back", "longest gap", "failed", "broken"
    );
    for m in &all {
        eprintln!(
            "  {:<52} {:>10} {:>10} {:>12} {:>7} {:>7}",
            m.label,
            format!("{:.1?}", m.withdrawn),
            format!("{:.1?}", m.back),
            format!("{:.1?}", m.longest_gap),
            m.failed,
            m.broken
        );
    }
    eprintln!(
        "\n(withdrawn: from the event to the router's route without lb1; back: from its end to both next hops, \
         which includes bgp.announce_delay_ms = 1000 and the health checks' rise; the lab is removed now)"
    );
}
