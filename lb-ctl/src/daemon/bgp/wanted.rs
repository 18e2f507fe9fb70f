//! Which VIPs this node may announce, and why not the others: pure code
//! over the view the controller publishes, so that what is announced and
//! what `/readyz`, `lb-ctl list` and `lb-ctl node` say come from one place.
//! And the fingerprint of the services as they run, which tells nodes that
//! would place flows differently apart.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::daemon::api::view::Stats;

/// One VIP and whether it is announced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VipView {
    pub vip: String,
    /// The services on it (their names).
    pub services: Vec<String>,
    pub announced: bool,
    /// Why it is not: `not ready: …`, `node drained`, `no usable backend`,
    /// `no [bgp] in the config`.
    pub withheld: Option<String>,
}

/// Every VIP of `stats`, in address order: announced while the node is
/// ready (`/readyz`'s conditions), not drained, and every service on the
/// VIP has a backend in rotation here (a client of any of them sent here
/// would otherwise be refused while another node may serve it; services
/// that may fail alone belong on VIPs of their own). `bgp` false: none is.
pub fn decide(stats: &Stats, drained: bool, bgp: bool) -> Vec<VipView> {
    let mut by_vip: BTreeMap<IpAddr, (Vec<String>, bool)> = BTreeMap::new();
    for s in &stats.services {
        // The view's VIPs are the controller's own addresses, printed.
        let Ok(vip) = s.vip.parse::<IpAddr>() else { continue };
        let entry = by_vip.entry(vip).or_insert_with(|| (Vec::new(), true));
        entry.0.push(s.name.clone());
        entry.1 &= s.backends_in_rotation > 0;
    }
    let not_ready = stats.not_ready();
    by_vip
        .into_iter()
        .map(|(vip, (services, usable))| {
            let withheld = if !bgp {
                Some("no [bgp] in the config".to_owned())
            } else if let Some(why) = &not_ready {
                Some(format!("not ready: {why}"))
            } else if drained {
                Some("node drained".to_owned())
            } else if !usable {
                Some("no usable backend".to_owned())
            } else {
                None
            };
            VipView { vip: vip.to_string(), services, announced: withheld.is_none(), withheld }
        })
        .collect()
}

/// Holds back the announcement of a VIP that is not announced yet until it
/// has been servable for `delay` (`bgp.announce_delay_ms`): a node coming
/// back (a restart, backends UP again, an undrain) takes flows only once
/// every backend's health has settled, not with a partial view that would
/// place moved flows elsewhere than the other nodes do. `since` keeps when
/// each VIP became servable; a VIP in `announced` stays announced.
pub fn settle(
    vips: &mut [VipView],
    since: &mut BTreeMap<String, Instant>,
    announced: &BTreeSet<String>,
    delay: Duration,
    now: Instant,
) {
    since.retain(|vip, _| vips.iter().any(|v| v.announced && v.vip == *vip));
    for v in vips.iter_mut().filter(|v| v.announced) {
        let from = *since.entry(v.vip.clone()).or_insert(now);
        if !announced.contains(&v.vip) && now.duration_since(from) < delay {
            v.announced = false;
            v.withheld = Some(format!(
                "settling: announced once servable for {} ms (bgp.announce_delay_ms)",
                delay.as_millis()
            ));
        }
    }
}

/// A 32-bit fingerprint of what decides where a flow goes: each service's
/// name, VIP, port, protocol, scheduler, forwarding and answer, and each
/// backend's address, port, weight and state, in order (runtime changes
/// included; health excluded, it is each node's own view). Two nodes with
/// the same one place every flow alike. FNV-1a: the same on every build
/// and version, unlike std's hasher.
pub fn fingerprint(stats: &Stats) -> u32 {
    let mut text = String::new();
    for s in &stats.services {
        let _ = writeln!(
            text,
            "{} {}:{}/{} {} {} {}",
            s.name, s.vip, s.port, s.protocol, s.scheduler, s.forwarding, s.on_no_backend
        );
        for b in &s.backends {
            let _ = writeln!(text, " {}:{} {} {}", b.address, b.port, b.weight, b.state);
        }
    }
    text.bytes()
        .fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::daemon::api::view::{BackendView, ServiceView};

    fn service(name: &str, vip: &str, port: u16, in_rotation: usize) -> ServiceView {
        ServiceView {
            name: name.into(),
            vip: vip.into(),
            port,
            protocol: "tcp".into(),
            scheduler: "maglev".into(),
            backends_in_rotation: in_rotation,
            backends: vec![BackendView {
                address: "10.77.2.11".into(),
                port,
                weight: 1,
                state: "active".into(),
                ..BackendView::default()
            }],
            ..ServiceView::default()
        }
    }

    fn stats(services: Vec<ServiceView>) -> Stats {
        Stats { services, published: Some(Instant::now()), ..Stats::default() }
    }

    fn why(views: &[VipView]) -> Vec<(&str, Option<&str>)> {
        views.iter().map(|v| (v.vip.as_str(), v.withheld.as_deref())).collect()
    }

    /// A VIP is announced while every service on it has a usable
    /// backend; one service without withholds its VIP, and only its VIP.
    #[test]
    fn a_vip_goes_when_one_of_its_services_has_no_usable_backend() {
        let s = stats(vec![
            service("web", "10.77.1.100", 80, 0),
            service("dns", "10.77.1.100", 53, 1),
            service("mail", "10.77.1.101", 25, 2),
        ]);
        let views = decide(&s, false, true);
        assert_eq!(
            why(&views),
            [("10.77.1.100", Some("no usable backend")), ("10.77.1.101", None)]
        );
        assert_eq!(views[0].services, ["web", "dns"]);
        assert!(!views[0].announced && views[1].announced);
    }

    /// Not ready, drained, or no `[bgp]`: nothing is announced, and each
    /// says why, the node's reason before the VIP's own.
    #[test]
    fn a_node_not_ready_or_drained_announces_nothing() {
        let mut s = stats(vec![service("web", "10.77.1.100", 80, 1)]);
        assert_eq!(why(&decide(&s, true, true)), [("10.77.1.100", Some("node drained"))]);
        assert_eq!(
            why(&decide(&s, false, false)),
            [("10.77.1.100", Some("no [bgp] in the config"))]
        );
        s.dataplane_problems = vec!["lb-c: no XDP program attached".into()];
        assert_eq!(
            why(&decide(&s, true, true)),
            [("10.77.1.100", Some("not ready: lb-c: no XDP program attached"))]
        );
        // A loop that stopped publishing (stuck) is not ready either.
        s.dataplane_problems.clear();
        s.published = Instant::now().checked_sub(Duration::from_secs(6));
        let views = decide(&s, false, true);
        assert!(
            views[0]
                .withheld
                .as_deref()
                .unwrap()
                .starts_with("not ready: the controller has published nothing"),
            "{views:?}"
        );
    }

    /// The fingerprint moves with anything that decides placement, and
    /// not with health or traffic.
    #[test]
    fn the_fingerprint_follows_placement_not_health() {
        let base = stats(vec![service("web", "10.77.1.100", 80, 1)]);
        let same = fingerprint(&base);
        let mut healthy_elsewhere = base.clone();
        healthy_elsewhere.services[0].backends_in_rotation = 0;
        healthy_elsewhere.services[0].backends[0].in_rotation = false;
        assert_eq!(fingerprint(&healthy_elsewhere), same);
        let mut weighted = base.clone();
        weighted.services[0].backends[0].weight = 2;
        let mut scheduled = base.clone();
        scheduled.services[0].scheduler = "rr".into();
        let mut drained = base.clone();
        drained.services[0].backends[0].state = "drain".into();
        for other in [weighted, scheduled, drained] {
            assert_ne!(fingerprint(&other), same);
        }
    }

    /// A VIP newly servable waits out the delay, then goes; one announced
    /// already stays; one that stops being servable starts over.
    #[test]
    fn a_vip_is_announced_once_servable_for_the_delay() {
        let s = stats(vec![service("web", "10.77.1.100", 80, 1)]);
        let (delay, t0) = (Duration::from_secs(5), Instant::now());
        let mut since = BTreeMap::new();
        let none = BTreeSet::new();
        let at =
            |since: &mut BTreeMap<String, Instant>, announced: &BTreeSet<String>, t: Instant| {
                let mut vips = decide(&s, false, true);
                settle(&mut vips, since, announced, delay, t);
                vips[0].announced
            };
        assert!(!at(&mut since, &none, t0), "at once");
        assert!(!at(&mut since, &none, t0 + Duration::from_millis(4999)), "before the delay");
        assert!(at(&mut since, &none, t0 + delay), "after it");
        let announced = BTreeSet::from(["10.77.1.100".to_owned()]);
        assert!(at(&mut BTreeMap::new(), &announced, t0), "announced already: stays");
        let mut vips = decide(&s, true, true);
        settle(&mut vips, &mut since, &none, delay, t0 + delay);
        assert!(since.is_empty(), "drained: the wait starts over");
        assert_eq!(vips[0].withheld.as_deref(), Some("node drained"));
    }
}
