//! The weight each backend is planned with: its own, unless its script
//! health check gave another (`dynamic_weight`), and ramped up while it is
//! in slow start (`slow_start_s`, HAProxy's `slowstart`). The services the
//! controller hands the reconciler are the desired ones with these
//! weights; the desired ones (the file, the API, the state file) keep the
//! operator's weights.
//!
//! A ramp needs weights below a backend's own, which may be 1: while one
//! of its backends ramps, a service is planned with every weight
//! multiplied by `RAMP_SCALE` and the ramping ones at their fraction of
//! that. The schedulers' tables depend only on the weights' ratios
//! (Maglev's turns, `wrr`'s cycle over their greatest common divisor, `lc`'s
//! connections per unit of weight), so scaling a whole service moves
//! nothing: only the ramping backend's share does.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    desired::model::{Backend, Service},
    plan::ids::{BackendKey, backend_key},
};

/// What every weight of a service is multiplied by while one of its
/// backends ramps: a ramp starts at 1/100 of its weight.
pub const RAMP_SCALE: u32 = 100;

/// The weight `backend` is planned with, given the one its check gave.
/// A weight of 0 is the operator's drain and stays so: a check cannot
/// bring a drained backend back.
pub const fn planned_weight(backend: &Backend, from_check: Option<u32>) -> u32 {
    match from_check {
        Some(w) if backend.weight > 0 => w,
        _ => backend.weight,
    }
}

/// The backends in slow start: each ramps from when it became usable.
#[derive(Debug, Default)]
pub struct Ramps {
    /// When each ramping backend became usable, and how long its ramp is.
    started: BTreeMap<BackendKey, (Instant, Duration)>,
    /// The backends usable at the last `follow`; `None` before the first.
    usable: Option<BTreeSet<BackendKey>>,
}

impl Ramps {
    /// Starts a ramp for every backend with a slow start that is usable
    /// now (active, weight > 0, not DOWN: `is_down`) and was not at the
    /// last call: it came UP, was added or was undrained. The first call
    /// starts none (a controller that starts finds its backends serving).
    /// Ramps that ended, or whose backend is no longer usable, go.
    pub fn follow(
        &mut self,
        services: &[Service],
        is_down: impl Fn(&BackendKey) -> bool,
        now: Instant,
    ) {
        let mut usable = BTreeSet::new();
        let mut lengths = BTreeMap::new();
        for s in services {
            for b in &s.backends {
                let key = backend_key(s, b.address, b.port);
                if b.effective_weight() > 0 && !is_down(&key) {
                    usable.insert(key);
                    lengths.insert(key, b.slow_start_in(s));
                }
            }
        }
        if let Some(before) = &self.usable {
            for key in usable.difference(before) {
                let length = lengths[key];
                if !length.is_zero() {
                    self.started.insert(*key, (now, length));
                }
            }
        }
        self.started
            .retain(|key, (at, length)| usable.contains(key) && now.duration_since(*at) < *length);
        self.usable = Some(usable);
    }

    /// The fraction of its weight `key` gets at `now` while it ramps
    /// (`1 / RAMP_SCALE` at least); `None` when it does not ramp.
    pub fn fraction(&self, key: &BackendKey, now: Instant) -> Option<f64> {
        let (at, length) = self.started.get(key)?;
        let fraction = now.duration_since(*at).as_secs_f64() / length.as_secs_f64();
        (fraction < 1.0).then(|| fraction.max(1.0 / f64::from(RAMP_SCALE)))
    }

    /// Whether a backend ramps: the controller plans again every second
    /// until none does.
    pub fn in_progress(&self) -> bool {
        !self.started.is_empty()
    }
}

/// `services` with each backend's planned weight at `now`: a check's, and
/// ramped (see the module's comment).
pub fn planned(
    services: &[Service],
    from_checks: &BTreeMap<BackendKey, u32>,
    ramps: &Ramps,
    now: Instant,
) -> Vec<Service> {
    let mut planned = services.to_vec();
    if from_checks.is_empty() && !ramps.in_progress() {
        return planned;
    }
    for s in &mut planned {
        let keys: Vec<BackendKey> =
            s.backends.iter().map(|b| backend_key(s, b.address, b.port)).collect();
        let fractions: Vec<Option<f64>> = keys.iter().map(|k| ramps.fraction(k, now)).collect();
        let scale = if fractions.iter().any(Option::is_some) { RAMP_SCALE } else { 1 };
        for ((b, key), fraction) in s.backends.iter_mut().zip(&keys).zip(fractions) {
            let full = planned_weight(b, from_checks.get(key).copied()) * scale;
            b.weight = match fraction {
                // Rounded up: never 0, which would drain it.
                // f is in (0, 1): the product is in (0, full].
                #[allow(clippy::cast_sign_loss)]
                Some(f) if full > 0 => ((f64::from(full) * f).ceil() as u32).clamp(1, full),
                _ => full,
            };
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        desired::model::{AdminState, testing::service},
        plan::testing::plan,
    };

    #[test]
    fn a_checks_weight_replaces_the_backends_own_but_not_a_drain() {
        let web = service("web", 80, &[(11, 1), (12, 0), (13, 3)]);
        let key = |i: usize| backend_key(&web, web.backends[i].address, web.backends[i].port);
        let from_checks = BTreeMap::from([(key(0), 5), (key(1), 7)]);
        let planned =
            planned(std::slice::from_ref(&web), &from_checks, &Ramps::default(), Instant::now());
        let weights: Vec<u32> = planned[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [5, 0, 3]);
        assert_eq!(web.backends[0].weight, 1, "the desired weight is kept");
    }

    /// web with three backends of weight 1, 2, 1 and a 10 s slow start.
    fn web() -> Service {
        Service {
            slow_start: Duration::from_secs(10),
            ..service("web", 80, &[(11, 1), (12, 2), (13, 1)])
        }
    }

    fn weights(services: &[Service], ramps: &Ramps, now: Instant) -> Vec<u32> {
        planned(services, &BTreeMap::new(), ramps, now)[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect()
    }

    /// A backend that comes UP, is added or is undrained ramps from 1/100
    /// of its weight to all of it; a starting controller ramps nothing.
    #[test]
    fn usable_again_ramps_up_over_the_slow_start() {
        let web = web();
        let key = |i: usize| backend_key(&web, web.backends[i].address, web.backends[i].port);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let mut ramps = Ramps::default();
        let mut down = BTreeSet::from([key(1)]);
        let services = [web.clone()];
        ramps.follow(&services, |k| down.contains(k), t0);
        assert!(!ramps.in_progress(), "a starting controller ramps nothing");
        assert_eq!(weights(&services, &ramps, t0), [1, 2, 1]);
        // web2 comes UP.
        down.clear();
        ramps.follow(&services, |k| down.contains(k), at(0));
        assert_eq!(weights(&services, &ramps, at(0)), [100, 2, 100], "1/100 of 200");
        assert_eq!(weights(&services, &ramps, at(2500)), [100, 50, 100]);
        assert_eq!(weights(&services, &ramps, at(9999)), [100, 200, 100]);
        ramps.follow(&services, |k| down.contains(k), at(10_000));
        assert!(!ramps.in_progress(), "done at slow_start_s");
        assert_eq!(weights(&services, &ramps, at(10_000)), [1, 2, 1]);
        // Undrained (state), with its own slow start over the service's.
        let mut drained = services.clone();
        drained[0].backends[2].state = AdminState::Drain;
        drained[0].backends[2].slow_start = Some(Duration::from_secs(2));
        ramps.follow(&drained, |_| false, at(11_000));
        let mut undrained = drained.clone();
        undrained[0].backends[2].state = AdminState::Active;
        ramps.follow(&undrained, |_| false, at(12_000));
        assert_eq!(ramps.fraction(&key(2), at(13_000)), Some(0.5));
        assert_eq!(weights(&undrained, &ramps, at(13_000)), [100, 200, 50]);
        // Going DOWN mid-ramp ends it; a slow start of 0 ramps nothing.
        ramps.follow(&undrained, |k| *k == key(2), at(13_500));
        assert!(!ramps.in_progress());
        let mut added = web.clone();
        added.slow_start = Duration::ZERO;
        let mut fewer = added.clone();
        fewer.backends.pop();
        ramps.follow(std::slice::from_ref(&fewer), |_| false, at(14_000));
        ramps.follow(std::slice::from_ref(&added), |_| false, at(14_100));
        assert!(!ramps.in_progress(), "no slow start, no ramp");
    }

    /// A backup standing by counts as usable: when the primaries go and it
    /// starts serving, it does not ramp (it serves alone).
    #[test]
    fn a_backup_that_starts_serving_does_not_ramp() {
        let mut web = web();
        web.backends[2].backup = true;
        let key = |i: usize| backend_key(&web, web.backends[i].address, web.backends[i].port);
        let services = [web.clone()];
        let t0 = Instant::now();
        let mut ramps = Ramps::default();
        ramps.follow(&services, |_| false, t0);
        ramps.follow(&services, |k| *k != key(2), t0 + Duration::from_secs(1));
        assert!(!ramps.in_progress());
    }

    /// Scaling a whole service leaves its Maglev table as it is; a 10 s
    /// ramp re-planned every second moves, in all, little more than the
    /// slots the ramping backend ends up with.
    #[test]
    fn a_ramp_moves_only_the_ramping_backends_slots() {
        let web = web();
        let key = backend_key(&web, web.backends[1].address, web.backends[1].port);
        let ids = crate::plan::ids::Ids::default().assign(std::slice::from_ref(&web)).unwrap();
        let id = ids.backend(&web, web.backends[1].address, web.backends[1].port).unwrap();
        let table = |services: &[Service]| {
            let (ids, image) = plan(&ids, services);
            (*image.maglev[&ids.service(&services[0]).unwrap()]).clone()
        };
        let mut scaled = web.clone();
        for b in &mut scaled.backends {
            b.weight *= RAMP_SCALE;
        }
        assert_eq!(table(std::slice::from_ref(&web)), table(&[scaled]), "scaling moves nothing");

        // Before: web2 out (DOWN, drained: no slot either way).
        let mut out = web.clone();
        out.backends[1].weight = 0;
        let mut previous = table(&[out]);
        let t0 = Instant::now();
        let mut ramps = Ramps::default();
        ramps.follow(std::slice::from_ref(&web), |k| *k == key, t0);
        let (mut moved, mut steps) = (0, 0);
        for second in 0..=10 {
            let now = t0 + Duration::from_secs(second);
            ramps.follow(std::slice::from_ref(&web), |_| false, now);
            let next = table(&planned(std::slice::from_ref(&web), &BTreeMap::new(), &ramps, now));
            let step = previous.iter().zip(&next).filter(|(a, b)| a != b).count();
            (moved, steps) = (moved + step, steps + usize::from(step > 0));
            previous = next;
        }
        assert_eq!(steps, 11, "a step every second, the first at 1/100");
        assert!(!ramps.in_progress());
        assert_eq!(
            previous,
            table(std::slice::from_ref(&web)),
            "the ramp ends on the table of the weights"
        );
        let held = previous.iter().filter(|slot| **slot == id).count();
        eprintln!("a 10 s ramp moved {moved} slots in all; web2 ends with {held}");
        assert!(moved >= held, "{moved} < {held}");
        assert!(moved * 10 < held * 12, "{moved} slots moved for {held} gained");
    }
}
