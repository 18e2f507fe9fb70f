//! The ring buffer's one reader, and the subscribers it hands records to.
//! A thread of its own: it sleeps while nobody traces (the trace off), and
//! while someone does it writes the kernel's filter whenever the set of
//! subscribers changes, reads the events, names them, and offers each to
//! every subscriber whose filter it matches. A subscriber's queue is
//! bounded: one that does not read loses its records (counted, and told
//! in a `lost` line), never holds up the reader or the others.
use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use lb_common::abi::answers_per_tick;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::{
    filter::{Filter, kernel_conf},
    record::{Line, Lost, Names, Packet, address_of},
};
use crate::{
    daemon::api::view::Stats,
    plan::ids::{BackendKey, Key},
    write::{dataplane::TraceTap, netdev},
};

/// Most subscribers at once: each costs a queue and a copy of every record.
pub const MAX_SUBSCRIBERS: usize = 8;
/// Records a subscriber's queue holds; past that they are lost.
pub const QUEUE_LINES: usize = 1024;
/// Events each CPU may send per second; the rest are counted as lost.
pub const EVENTS_PER_SECOND: u32 = 2000;
/// How long a read waits for events: how soon a change of subscribers
/// reaches the kernel.
const READ_WAIT: Duration = Duration::from_millis(100);
/// How often the kernel's loss counters are read while tracing.
const LOSS_READ: Duration = Duration::from_secs(1);
/// How long `Hub::stop` waits for the reader to switch the trace off.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The trace's fan-out (cloned into the API's state).
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    subscribers: BTreeMap<u64, Subscriber>,
    next_id: u64,
    /// Moves on with each change of `subscribers`.
    generation: u64,
    stopped: bool,
    /// The reader has returned, the trace switched off (or it could not be).
    reader_done: bool,
}

struct Subscriber {
    filter: Filter,
    lines: mpsc::Sender<Line>,
    queue_full: u64,
    /// The kernel's loss counts when this subscriber started.
    since: Option<(u64, u64)>,
    /// What it was last told of its losses.
    told: Lost,
}

/// A subscriber's end: its records, until it is dropped (the client gone).
pub struct Subscription {
    id: u64,
    shared: Arc<Shared>,
    pub lines: mpsc::Receiver<Line>,
}

/// `MAX_SUBSCRIBERS` are tracing already.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_SUBSCRIBERS} traces are running already; try again when one ends")]
pub struct TooMany;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.subscribers.remove(&self.id);
        state.generation += 1;
        self.shared.changed.notify_all();
    }
}

impl Hub {
    /// Starts the reader on `tap` (the trace off until someone subscribes),
    /// naming services from `stats`.
    pub fn start(tap: Box<dyn TraceTap>, stats: watch::Receiver<Arc<Stats>>) -> Self {
        let shared = Arc::new(Shared { state: Mutex::default(), changed: Condvar::new() });
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("lb-trace".into())
            .spawn(move || {
                read_loop(&reader, tap, &stats);
                reader.lock().reader_done = true;
                reader.changed.notify_all();
            })
            .expect("spawning the trace reader");
        Self { shared }
    }

    /// A new subscriber with `filter`.
    pub fn subscribe(&self, filter: Filter) -> Result<Subscription, TooMany> {
        let mut state = self.shared.lock();
        if state.subscribers.len() >= MAX_SUBSCRIBERS {
            return Err(TooMany);
        }
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        let id = state.next_id;
        state.next_id += 1;
        state.generation += 1;
        state.subscribers.insert(
            id,
            Subscriber { filter, lines: tx, queue_full: 0, since: None, told: Lost::default() },
        );
        self.shared.changed.notify_all();
        Ok(Subscription { id, shared: Arc::clone(&self.shared), lines: rx })
    }

    /// How many are tracing now.
    pub fn subscribers(&self) -> usize {
        self.shared.lock().subscribers.len()
    }

    /// Turns the trace off and stops the reader (the controller stops),
    /// waiting for it (at most `STOP_WAIT`): the data plane outlives the
    /// controller, and a trace left on costs every packet its capture.
    pub fn stop(&self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        state.subscribers.clear();
        self.shared.changed.notify_all();
        let deadline = Instant::now() + STOP_WAIT;
        while !state.reader_done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                warn!("the packet trace's reader did not stop in time: the trace may be left on");
                return;
            };
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn read_loop(shared: &Shared, mut tap: Box<dyn TraceTap>, views: &watch::Receiver<Arc<Stats>>) {
    let per_tick = answers_per_tick(EVENTS_PER_SECOND);
    // A previous controller that stopped while tracing left the trace on.
    let off = lb_common::trace::TraceConf::default();
    if let Err(e) = tap.set(&off) {
        warn!(error = %e, "cannot switch the packet trace off");
    }
    let mut on = false;
    let mut applied = 0;
    let mut events = Vec::new();
    let mut lost = (0, 0);
    let mut lost_read = Instant::now();
    loop {
        {
            let mut state = shared.lock();
            while state.subscribers.is_empty() && !on && !state.stopped {
                state = shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stopped && !on {
                return;
            }
            if state.generation != applied || state.stopped {
                let generation = state.generation;
                let conf = kernel_conf(state.subscribers.values().map(|s| &s.filter), per_tick);
                drop(state);
                match tap.set(&conf) {
                    Ok(()) => (applied, on) = (generation, conf.on != 0),
                    // Tried again, not taken as done: a trace left on costs
                    // every packet, one never switched on leaves its
                    // readers waiting.
                    Err(e) => {
                        warn!(error = %e, "cannot write the packet trace's filter");
                        std::thread::sleep(READ_WAIT);
                        continue;
                    }
                }
                if !on {
                    continue;
                }
            }
        }
        events.clear();
        if let Err(e) = tap.read(READ_WAIT, &mut events) {
            warn!(error = %e, "reading the packet trace");
            std::thread::sleep(READ_WAIT);
        }
        if lost_read.elapsed() >= LOSS_READ || !events.is_empty() {
            lost = tap.lost().unwrap_or(lost);
            lost_read = Instant::now();
        }
        let services = services_by_key(&views.borrow());
        let backend = |family: u8, id: u32| -> Option<BackendKey> { tap.backend(family, id) };
        let service = |key: &Key| services.get(key).cloned();
        let names = Names { interface: &netdev::name_of, backend: &backend, service: &service };
        let records: Vec<Packet> = events.iter().map(|e| Packet::of(e, &names)).collect();
        offer(&mut shared.lock(), &records, lost);
    }
}

fn services_by_key(stats: &Stats) -> BTreeMap<Key, String> {
    stats.services.iter().filter_map(|s| Some((s.key()?, s.name.clone()))).collect()
}

/// Whether `filter` wants `p`.
pub fn matches(filter: &Filter, p: &Packet) -> bool {
    if filter.drops_only && p.decision != "dropped" {
        return false;
    }
    if let Some(name) = &filter.service
        && p.service.as_deref() != Some(name.as_str())
    {
        return false;
    }
    if let Some(prefix) = &filter.client {
        let either = [&p.src, &p.dst].into_iter().filter_map(|a| address_of(a));
        if !either.into_iter().any(|a| prefix.contains(a)) {
            return false;
        }
    }
    true
}

/// Hands `records` to each subscriber that wants them, and tells each
/// whose losses grew.
fn offer(state: &mut State, records: &[Packet], (rate_limited, ring_full): (u64, u64)) {
    for sub in state.subscribers.values_mut() {
        for p in records.iter().filter(|p| matches(&sub.filter, p)) {
            if sub.lines.try_send(Line::Packet(p.clone())).is_err() {
                sub.queue_full += 1;
            }
        }
        let since = *sub.since.get_or_insert((rate_limited, ring_full));
        let now = Lost {
            rate_limited: rate_limited.saturating_sub(since.0),
            ring_full: ring_full.saturating_sub(since.1),
            queue_full: sub.queue_full,
        };
        if now != sub.told && sub.lines.try_send(Line::Lost(now)).is_ok() {
            sub.told = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::trace::ClientPrefix;

    fn packet(src: &str, decision: &str, service: Option<&str>) -> Packet {
        Packet {
            interface: "eth0".into(),
            protocol: "tcp".into(),
            src: src.into(),
            dst: "10.77.0.100:80".into(),
            tcp_flags: None,
            decision: decision.into(),
            reason: "redirect".into(),
            flow: None,
            service: service.map(Into::into),
            backend: None,
        }
    }

    #[test]
    fn filters_match_service_client_and_drops() {
        let web = packet("10.77.1.10:4000", "forwarded", Some("web"));
        let other = packet("10.77.9.9:4000", "dropped", None);
        assert!(matches(&Filter::default(), &web));
        let client = Filter {
            client: Some(ClientPrefix::parse("10.77.1.0/24").unwrap()),
            ..Filter::default()
        };
        assert!(matches(&client, &web));
        assert!(!matches(&client, &other));
        let drops = Filter { drops_only: true, ..Filter::default() };
        assert!(!matches(&drops, &web));
        assert!(matches(&drops, &other));
        let service = Filter { service: Some("web".into()), ..Filter::default() };
        assert!(matches(&service, &web));
        assert!(!matches(&service, &other));
    }

    /// A subscriber that does not read loses what does not fit, counted and
    /// told; the others get everything.
    #[test]
    fn a_full_queue_loses_records_and_says_so() {
        let mut state = State::default();
        let (slow_tx, mut slow) = mpsc::channel(2);
        let (fast_tx, mut fast) = mpsc::channel(100);
        for (id, tx) in [(0, slow_tx), (1, fast_tx)] {
            state.subscribers.insert(
                id,
                Subscriber {
                    filter: Filter::default(),
                    lines: tx,
                    queue_full: 0,
                    since: None,
                    told: Lost::default(),
                },
            );
        }
        let records: Vec<Packet> =
            (0..5).map(|i| packet(&format!("10.77.1.{i}:1"), "forwarded", None)).collect();
        offer(&mut state, &records, (10, 0));
        assert_eq!(state.subscribers[&0].queue_full, 3);
        let mut got = Vec::new();
        while let Ok(line) = fast.try_recv() {
            got.push(line);
        }
        assert_eq!(got.len(), 5, "the fast reader got every record, and no loss line");
        // The slow one reads now: the next offer tells it what it lost.
        while slow.try_recv().is_ok() {}
        offer(&mut state, &[], (12, 1));
        match slow.try_recv() {
            Ok(Line::Lost(l)) => {
                assert_eq!(l, Lost { rate_limited: 2, ring_full: 1, queue_full: 3 });
            }
            other => panic!("{other:?}"),
        }
        match fast.try_recv() {
            Ok(Line::Lost(l)) => assert_eq!(l.queue_full, 0),
            other => panic!("{other:?}"),
        }
    }
}
