//! Health checks: one prober task per checked backend, and a monitor that
//! folds their results into each backend's rise/fall state.
//!
//! Probes of one backend run one after the other (never overlapping, since
//! the timeout is below the interval); probes of different backends run
//! concurrently, each backend starting at its own offset within the interval
//! so that a thousand backends do not get probed in the same millisecond.
pub mod probe;
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use lb_common::{abi::Endpoint, hash::mix64};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use self::{
    probe::Prober,
    state::{CheckResult, Status, Tracker, Transition},
};
use crate::{
    model::{HealthCheck, Probe, Service},
    plan::{BackendKey, backend_key},
};

/// A checked backend: its prober task and its state.
struct Checked {
    check: HealthCheck,
    tracker: Tracker,
    task: JoinHandle<()>,
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health of every checked backend. Backends of services without a
/// `[service.health]` section are not here: they always count as up.
pub struct Monitor {
    checked: HashMap<BackendKey, Checked>,
    results_tx: mpsc::Sender<(BackendKey, CheckResult)>,
    results_rx: mpsc::Receiver<(BackendKey, CheckResult)>,
    /// Probe results received so far (for the benchmark and the stats).
    results_seen: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        let (results_tx, results_rx) = mpsc::channel(1024);
        Self { checked: HashMap::new(), results_tx, results_rx, results_seen: 0 }
    }
}

impl Monitor {
    /// Starts probing new backends, stops probing removed ones, and restarts
    /// those whose check changed. A backend whose check stays keeps its state.
    pub fn sync(&mut self, services: &[Service]) {
        let mut wanted = BTreeMap::new();
        for s in services {
            if let Some(check) = &s.health {
                for b in &s.backends {
                    wanted.insert(
                        backend_key(s, b.address, b.port),
                        (SocketAddr::from((b.address, b.port)), check),
                    );
                }
            }
        }
        // A backend whose check changed is probed anew, but a DOWN one stays
        // DOWN until its new check says otherwise.
        let mut was_down = BTreeSet::new();
        self.checked.retain(|key, checked| {
            let keep = wanted.get(key).is_some_and(|(_, check)| **check == checked.check);
            if !keep && checked.tracker.status() == Status::Down {
                was_down.insert(*key);
            }
            keep
        });
        for (key, (addr, check)) in wanted {
            if self.checked.contains_key(&key) {
                continue;
            }
            let task =
                tokio::spawn(probe_forever(key, addr, check.clone(), self.results_tx.clone()));
            let mut tracker = Tracker::new(check.rise, check.fall);
            if was_down.contains(&key) {
                tracker = tracker.starting_down();
            }
            self.checked.insert(key, Checked { check: check.clone(), tracker, task });
        }
    }

    /// Backends an adopted data plane held DOWN stay DOWN until `rise`
    /// probes say otherwise, rather than taking flows until their first probe.
    pub fn assume_down(&mut self, keys: &BTreeSet<BackendKey>) {
        for (key, checked) in &mut self.checked {
            if keys.contains(key) {
                checked.tracker =
                    Tracker::new(checked.check.rise, checked.check.fall).starting_down();
            }
        }
    }

    /// Waits for the next change of status, logging it with its cause.
    pub async fn next_transition(&mut self) -> (BackendKey, Transition) {
        loop {
            let Some((key, result)) = self.results_rx.recv().await else {
                // The monitor holds a sender itself: the channel never closes.
                std::future::pending::<()>().await;
                continue;
            };
            self.results_seen += 1;
            // A result from a prober that was just replaced or removed.
            let Some(checked) = self.checked.get_mut(&key) else {
                continue;
            };
            if let Some(transition) = checked.tracker.record(result) {
                log(&key, &transition);
                return (key, transition);
            }
        }
    }

    /// How many probe results have come in.
    pub fn results_seen(&self) -> u64 {
        self.results_seen
    }

    /// The backends that must get no new flows.
    pub fn down(&self) -> BTreeSet<BackendKey> {
        self.checked
            .iter()
            .filter(|(_, c)| !c.tracker.status().is_usable())
            .map(|(k, _)| *k)
            .collect()
    }

    /// A checked backend's status and last result.
    pub fn status(&self, key: &BackendKey) -> Option<(Status, Option<&CheckResult>)> {
        self.checked.get(key).map(|c| (c.tracker.status(), c.tracker.last()))
    }
}

fn log(key: &BackendKey, t: &Transition) {
    let backend = endpoint_text(key.1);
    let service = endpoint_text(key.0);
    let took = t.cause.duration.as_millis();
    if t.to == Status::Down {
        warn!(%service, %backend, from = %t.from, reason = %t.cause.detail, took_ms = took, "backend is DOWN");
    } else {
        info!(%service, %backend, from = %t.from, reason = %t.cause.detail, took_ms = took, "backend is UP");
    }
}

fn endpoint_text(e: Endpoint) -> String {
    format!("{}:{}", std::net::Ipv4Addr::from(e.addr), e.port)
}

/// Where in the interval a backend's probes fall: spread by a hash of the
/// backend, so that probes of many backends do not come in bursts.
pub fn start_offset(key: &BackendKey, interval: Duration) -> Duration {
    let h = mix64(u64::from(u32::from_be_bytes(key.1.addr)) << 16 | u64::from(key.1.port));
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(h % millis)
}

async fn probe_forever(
    key: BackendKey,
    addr: SocketAddr,
    check: HealthCheck,
    results: mpsc::Sender<(BackendKey, CheckResult)>,
) {
    let prober = match &check.probe {
        Probe::Tcp => Prober::Tcp,
        Probe::Http { path, expect_status, expect_body } => {
            Prober::http(path, addr, *expect_status, expect_body.as_deref())
        }
    };
    tokio::time::sleep(start_offset(&key, check.interval)).await;
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = prober.run(addr, check.timeout).await;
        if results.send((key, result)).await.is_err() {
            return;
        }
    }
}
