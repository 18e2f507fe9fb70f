//! Health checks: one prober task per checked backend, and a monitor that
//! folds their results into each backend's rise/fall state (and, for a
//! script check with `dynamic_weight`, the weight its last success gave).
//!
//! Probes of one backend run one after the other (never overlapping, since
//! the timeout is below the interval); probes of different backends run
//! concurrently, each backend starting at its own offset within the interval
//! so that a thousand backends do not get probed in the same millisecond.
mod local;
pub mod probe;
pub mod script;
pub mod state;
pub mod tls;
pub mod udp;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::hash::mix64;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use self::{
    local::LocalFailures,
    probe::{HttpProbe, Probed, Prober, TlsProbe},
    script::{ScriptProbe, Where},
    state::{CheckResult, Status, Tracker, Transition},
    udp::UdpProbe,
};
use crate::{
    desired::model::{HealthCheck, Probe, Service},
    plan::ids::{BackendKey, Key, backend_key},
};

/// A checked backend: its prober task and its state.
struct Checked {
    check: HealthCheck,
    /// Where its probes connect: its own address and port unless a
    /// `check_address` / `check_port` says otherwise.
    target: SocketAddr,
    tracker: Tracker,
    /// The weight a script check's last success gave (`dynamic_weight`).
    weight: Option<u32>,
    /// Which prober of the backend this is: a result a replaced prober
    /// had already queued carries the old one's, and counts for nothing.
    generation: u64,
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
    results_tx: mpsc::Sender<(BackendKey, u64, Probed)>,
    results_rx: mpsc::Receiver<(BackendKey, u64, Probed)>,
    /// The generation the next prober started gets.
    next_generation: u64,
    /// Probe results received so far (for the benchmark and the stats).
    results_seen: u64,
    /// Probes this host could not make: no result, no change of state.
    local: LocalFailures,
}

impl Default for Monitor {
    fn default() -> Self {
        let (results_tx, results_rx) = mpsc::channel(1024);
        Self {
            checked: HashMap::new(),
            results_tx,
            results_rx,
            next_generation: 0,
            results_seen: 0,
            local: LocalFailures::default(),
        }
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
                    let own = SocketAddr::from((b.address, b.port));
                    let target = check.target_of(b);
                    let service = SocketAddr::new(s.vip, s.port);
                    let at = Endpoints { own, target, service };
                    wanted.insert(backend_key(s, b.address, b.port), (at, check));
                }
            }
        }
        // A backend whose check or target changed is probed anew, but a DOWN
        // one stays DOWN until its new check says otherwise.
        let mut was_down = BTreeSet::new();
        self.checked.retain(|key, checked| {
            // The service's `target` is in the check, but what counts is each
            // backend's own resolved target: an override that still wins
            // leaves its prober (and its rise/fall count) as it is.
            let keep = wanted.get(key).is_some_and(|(at, check)| {
                check.probes_like(&checked.check) && at.target == checked.target
            });
            if !keep && checked.tracker.status() == Status::Down {
                was_down.insert(*key);
            }
            keep
        });
        for (key, (at, check)) in wanted {
            if self.checked.contains_key(&key) {
                continue;
            }
            let target = at.target;
            let generation = self.next_generation;
            self.next_generation += 1;
            let results = (self.results_tx.clone(), generation);
            let task = tokio::spawn(probe_forever(key, at, check.clone(), results));
            let mut tracker = Tracker::new(check.rise, check.fall);
            if was_down.contains(&key) {
                tracker = tracker.starting_down();
            }
            let checked =
                Checked { check: check.clone(), target, tracker, weight: None, generation, task };
            self.checked.insert(key, checked);
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

    /// Waits for the next change of status, or of the weight a script
    /// check gives (then `from` and `to` are the same), logging it with its cause.
    pub async fn next_transition(&mut self) -> (BackendKey, Transition) {
        loop {
            let Some((key, generation, probed)) = self.results_rx.recv().await else {
                // The monitor holds a sender itself: the channel never closes.
                std::future::pending::<()>().await;
                continue;
            };
            let result = match probed {
                Ok(result) => result,
                // Neither a success nor a failure: the backend stays as it is.
                Err(local) => {
                    self.local.note(&endpoint_text(key.1), &local, Instant::now());
                    continue;
                }
            };
            self.results_seen += 1;
            // A result from a prober that was just replaced or removed: its
            // probe ran the old check (or at the old target).
            let Some(checked) = self.checked.get_mut(&key).filter(|c| c.generation == generation)
            else {
                continue;
            };
            // A failure leaves the weight: it counts again once UP.
            let reweighted = result.ok && result.weight != checked.weight;
            if reweighted {
                checked.weight = result.weight;
            }
            if let Some(transition) = checked.tracker.record(result.clone()) {
                log(&key, &transition);
                return (key, transition);
            }
            if reweighted {
                let status = checked.tracker.status();
                let weight = checked.weight.map_or_else(|| "its own".to_owned(), |w| w.to_string());
                info!(service = %endpoint_text(key.0), backend = %endpoint_text(key.1), %weight, reason = %result.detail, "backend weight set by its check");
                return (key, Transition { from: status, to: status, cause: result });
            }
        }
    }

    /// How many probe results have come in.
    pub fn results_seen(&self) -> u64 {
        self.results_seen
    }

    /// How many probes could not run for a local reason (no result).
    pub fn local_failures(&self) -> u64 {
        self.local.total()
    }

    /// The backends that must get no new flows.
    pub fn down(&self) -> BTreeSet<BackendKey> {
        self.checked
            .iter()
            .filter(|(_, c)| !c.tracker.status().is_usable())
            .map(|(k, _)| *k)
            .collect()
    }

    /// The weights script checks gave (`dynamic_weight`), by backend.
    pub fn weights(&self) -> BTreeMap<BackendKey, u32> {
        self.checked.iter().filter_map(|(k, c)| Some((*k, c.weight?))).collect()
    }

    /// The weight a checked backend's script gave, if any.
    pub fn weight(&self, key: &BackendKey) -> Option<u32> {
        self.checked.get(key).and_then(|c| c.weight)
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

fn endpoint_text(e: Key) -> String {
    e.socket().to_string()
}

/// Where in the interval a backend's probes fall: spread by a hash of the
/// backend, so that probes of many backends do not come in bursts.
pub fn start_offset(key: &BackendKey, interval: Duration) -> Duration {
    let addr = match key.1.addr {
        IpAddr::V4(a) => u64::from(a.to_bits()),
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            (bits >> 64) as u64 ^ bits as u64
        }
    };
    let h = mix64(addr << 16 | u64::from(key.1.port));
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(h % millis)
}

/// A backend's own endpoint, the one its probes connect to, and its service's.
#[derive(Clone, Copy)]
struct Endpoints {
    /// What an HTTP check's `Host` names, wherever the probe connects.
    own: SocketAddr,
    target: SocketAddr,
    service: SocketAddr,
}

/// The prober of `probe` for a backend at `at`.
fn prober(probe: &Probe, at: Endpoints) -> Prober {
    match probe {
        Probe::Tcp => Prober::Tcp,
        Probe::Http { path, expect_status, expect_body, tls } => {
            // With a name to send, the request names it too (a virtual
            // host's server would answer another host's 421 or 404).
            let host = tls.as_ref().and_then(|t| t.sni.clone()).unwrap_or(at.own.to_string());
            let tls = match tls.as_ref().map(|t| (t, tls::connector(t))) {
                None => None,
                Some((_, Err(why))) => return Prober::Unusable(why),
                Some((t, Ok(connector))) => Some(TlsProbe {
                    connector,
                    name: t.sni.as_deref().and_then(|n| tls::server_name(n).ok()),
                }),
            };
            let http = HttpProbe::new(path, &host, *expect_status, expect_body.as_deref(), tls);
            Prober::Http(http)
        }
        Probe::Udp { send, expect } => Prober::Udp(UdpProbe::new(send.clone(), expect.as_deref())),
        Probe::Script { command, dynamic_weight } => {
            let at = Where { backend: at.own, target: at.target, service: at.service };
            Prober::Script(ScriptProbe::new(command, *dynamic_weight, at))
        }
    }
}

async fn probe_forever(
    key: BackendKey,
    at: Endpoints,
    check: HealthCheck,
    (results, generation): (mpsc::Sender<(BackendKey, u64, Probed)>, u64),
) {
    let prober = prober(&check.probe, at);
    tokio::time::sleep(start_offset(&key, check.interval)).await;
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = prober.run(at.target, check.timeout).await;
        if results.send((key, generation, result)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{self, Read as _},
        net::Ipv4Addr,
        sync::{Arc, Mutex},
    };

    use tokio::{net::TcpListener, time::Instant};

    use super::*;
    use crate::desired::model::{
        AdminState, Backend, CheckTarget, Forwarding, Protocol, Scheduler,
    };

    /// A service on 10.77.1.100:80 checked with `check`, whose backends are
    /// (loopback address, weight, state).
    fn checked(check: HealthCheck, backends: &[(SocketAddr, u32, AdminState)]) -> Service {
        Service {
            name: "web".into(),
            vip: Ipv4Addr::new(10, 77, 1, 100).into(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Nat,
            reject: true,
            health: Some(check),
            slow_start: Duration::ZERO,
            persistence: None,
            allowed_sources: Vec::new(),
            snat: crate::desired::model::Snat::default(),
            backends: backends
                .iter()
                .map(|&(addr, weight, state)| Backend {
                    address: v4(addr).into(),
                    port: addr.port(),
                    weight,
                    state,
                    check: CheckTarget::default(),
                    backup: false,
                    slow_start: None,
                    max_conns: 0,
                })
                .collect(),
        }
    }

    fn v4(addr: SocketAddr) -> Ipv4Addr {
        match addr {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(a) => panic!("{a} is not IPv4"),
        }
    }

    fn tcp_check(interval_ms: u64, timeout_ms: u64) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise: 1,
            fall: 1,
            target: CheckTarget::default(),
        }
    }

    /// A loopback listener that records when it accepts each connection.
    struct Recorder {
        addr: SocketAddr,
        accepts: Arc<Mutex<Vec<Instant>>>,
        task: JoinHandle<()>,
    }

    impl Recorder {
        async fn start() -> Self {
            // A loopback address of its own: the other tests of this process
            // listen on 127.0.0.1, and a prober of theirs still running could
            // otherwise reach a port the kernel gave again to a recorder,
            // whose first probe would then come before its offset.
            let listener = TcpListener::bind("127.77.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepts = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&accepts);
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    seen.lock().unwrap().push(Instant::now());
                    drop(stream);
                }
            });
            Self { addr, accepts, task }
        }

        fn first(&self) -> Option<Instant> {
            self.accepts.lock().unwrap().first().copied()
        }
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The first probe of each backend comes at that backend's own offset
    /// in the interval (`start_offset`), so that backends are not probed in
    /// one burst when the controller starts.
    #[tokio::test]
    async fn first_probes_come_at_each_backends_own_offset_in_the_interval() {
        const INTERVAL: Duration = Duration::from_secs(2);
        // How late a probe may be seen on a busy machine (timers never fire early).
        const LATE: Duration = Duration::from_millis(400);
        let mut servers = Vec::new();
        for _ in 0..16 {
            servers.push(Recorder::start().await);
        }
        let backends: Vec<_> = servers.iter().map(|s| (s.addr, 1, AdminState::Active)).collect();
        let service = checked(tcp_check(2000, 100), &backends);
        let start = Instant::now();
        let mut monitor = Monitor::default();
        monitor.sync(std::slice::from_ref(&service));

        let deadline = start + INTERVAL + LATE + Duration::from_secs(2);
        while servers.iter().any(|s| s.first().is_none()) {
            assert!(Instant::now() < deadline, "a backend was not probed within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut firsts = Vec::new();
        for s in &servers {
            let key = backend_key(&service, v4(s.addr).into(), s.addr.port());
            let want = start_offset(&key, INTERVAL);
            assert!(want < INTERVAL, "{}: offset {want:?} beyond the interval", s.addr);
            let got = s.first().unwrap() - start;
            assert!(
                got >= want && got <= want + LATE,
                "{}: first probe after {got:?}, its offset in the interval is {want:?}",
                s.addr
            );
            firsts.push(got);
        }
        // Not all at once: 16 offsets spread over the interval (a hash of each
        // backend) span more than a quarter of it.
        let span = firsts.iter().max().unwrap().saturating_sub(*firsts.iter().min().unwrap());
        assert!(span > INTERVAL / 4, "first probes within {span:?} of each other: {firsts:?}");
    }

    /// Probes that could not run for a local reason (here: no file
    /// descriptor) move no backend, UP or DOWN, however many there are;
    /// the next real result counts from where the backend was.
    #[tokio::test]
    async fn local_failures_change_no_state() {
        let service = checked(tcp_check(1000, 100), &[]);
        let up = backend_key(&service, Ipv4Addr::new(10, 77, 2, 11).into(), 80);
        let down = backend_key(&service, Ipv4Addr::new(10, 77, 2, 12).into(), 80);
        let mut monitor = Monitor::default();
        for (key, tracker) in [(up, Tracker::new(1, 2)), (down, Tracker::new(1, 2).starting_down())]
        {
            // No prober: the test sends the results.
            let task = tokio::spawn(async {});
            let target = key.1.socket();
            let check = tcp_check(1000, 100);
            let checked = Checked { check, target, tracker, weight: None, generation: 0, task };
            monitor.checked.insert(key, checked);
        }
        let result = |ok| CheckResult {
            ok,
            detail: String::new(),
            at: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            weight: None,
        };
        let tx = monitor.results_tx.clone();
        tx.send((up, 0, Ok(result(true)))).await.unwrap();
        let (_, t) = monitor.next_transition().await;
        assert_eq!(t.to, Status::Up);
        for _ in 0..100 {
            for key in [up, down] {
                let error = io::Error::from_raw_os_error(libc::EMFILE);
                let local = probe::LocalFailure { cause: probe::LocalCause::NoDescriptors, error };
                tx.send((key, 0, Err(local))).await.unwrap();
            }
        }
        let moved =
            tokio::time::timeout(Duration::from_millis(300), monitor.next_transition()).await;
        assert!(moved.is_err(), "a local failure moved a backend: {moved:?}");
        assert_eq!(monitor.local_failures(), 200);
        assert_eq!(monitor.status(&up).map(|(s, _)| s), Some(Status::Up));
        assert_eq!(monitor.status(&down).map(|(s, _)| s), Some(Status::Down));
        assert_eq!(monitor.results_seen(), 1);
        // One real failure after them is the first of `fall` (2), not the 101st.
        tx.send((up, 0, Ok(result(false)))).await.unwrap();
        let moved =
            tokio::time::timeout(Duration::from_millis(300), monitor.next_transition()).await;
        assert!(moved.is_err(), "one failure took it DOWN: {moved:?}");
    }

    /// A result a replaced prober had already queued (the old check's)
    /// counts neither toward the new prober's first state nor at all.
    #[tokio::test]
    async fn a_replaced_probers_queued_result_does_not_count() {
        let service = checked(tcp_check(1000, 100), &[]);
        let key = backend_key(&service, Ipv4Addr::new(10, 77, 2, 11).into(), 80);
        let mut monitor = Monitor::default();
        let task = tokio::spawn(async {});
        let (check, target) = (tcp_check(1000, 100), key.1.socket());
        let tracker = Tracker::new(1, 1);
        let checked = Checked { check, target, tracker, weight: None, generation: 7, task };
        monitor.checked.insert(key, checked);
        let result = CheckResult {
            ok: true,
            detail: String::new(),
            at: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            weight: None,
        };
        let tx = monitor.results_tx.clone();
        tx.send((key, 6, Ok(result.clone()))).await.unwrap();
        let moved =
            tokio::time::timeout(Duration::from_millis(200), monitor.next_transition()).await;
        assert!(moved.is_err(), "the old prober's result counted: {moved:?}");
        tx.send((key, 7, Ok(result))).await.unwrap();
        let (_, t) = monitor.next_transition().await;
        assert_eq!(t.to, Status::Up, "the current prober's does");
    }

    /// Offsets are spread evenly over the interval, whatever its length.
    #[test]
    fn start_offsets_are_spread_evenly_over_the_interval() {
        let service = checked(tcp_check(1000, 100), &[]);
        for interval_ms in [10_u64, 1000, 2000, 3_600_000] {
            let interval = Duration::from_millis(interval_ms);
            let mut tenths = [0_u32; 10];
            for i in 0..2000_u32 {
                let [_, _, c, d] = (0x0a4d_0000 + i).to_be_bytes();
                let key = backend_key(&service, Ipv4Addr::new(10, 77, c, d).into(), 80);
                let offset = start_offset(&key, interval);
                assert!(offset < interval, "{offset:?} beyond {interval:?}");
                tenths[(offset.as_millis() * 10 / interval.as_millis()) as usize] += 1;
            }
            // 200 expected in each tenth.
            assert!(
                tenths.iter().all(|n| (140..=260).contains(n)),
                "interval {interval:?}: offsets per tenth {tenths:?}"
            );
        }
    }

    /// A silent HTTP server (it reads the request and never answers) that
    /// records, at each connection it accepts, how many of its earlier
    /// connections the prober still held open.
    struct Silent {
        addr: SocketAddr,
        /// (accepted at, earlier connections still open then).
        accepts: Arc<Mutex<Vec<(Instant, usize)>>>,
        task: JoinHandle<()>,
    }

    impl Silent {
        async fn start() -> Self {
            // A loopback address of its own: the other tests of this process
            // listen on 127.0.0.1, and a prober of theirs still running could
            // otherwise reach a port the kernel gave again to a recorder,
            // whose first probe would then come before its offset.
            let listener = TcpListener::bind("127.77.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepts = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&accepts);
            let task = tokio::spawn(async move {
                let mut held: Vec<std::net::TcpStream> = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let at = Instant::now();
                    // The previous probe's reset is sent before the next
                    // connect; give it a moment to land all the same.
                    let grace = at + Duration::from_millis(20);
                    loop {
                        held.retain(is_open);
                        if held.is_empty() || Instant::now() >= grace {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    seen.lock().unwrap().push((at, held.len()));
                    // Plain reads on a non-blocking socket: tokio's `try_read`
                    // would answer from its cached readiness instead.
                    held.push(stream.into_std().unwrap());
                }
            });
            Self { addr, accepts, task }
        }
    }

    impl Drop for Silent {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Whether the peer still holds `stream` open (the request it sent is
    /// read and ignored).
    fn is_open(stream: &std::net::TcpStream) -> bool {
        let mut buf = [0_u8; 1024];
        loop {
            match (&*stream).read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    /// A backend whose probe takes longer than the interval does not get a
    /// second probe while the first one runs: the next starts when it ends.
    #[tokio::test]
    async fn probes_of_a_backend_never_overlap() {
        let server = Silent::start().await;
        let timeout = Duration::from_millis(200);
        // The config refuses a timeout at or above the interval; this check
        // has one, so that only the prober's own scheduling keeps probes apart.
        let check = HealthCheck {
            probe: Probe::Http {
                path: "/".into(),
                expect_status: 200,
                expect_body: None,
                tls: None,
            },
            interval: Duration::from_millis(50),
            timeout,
            rise: 1,
            fall: 1,
            target: CheckTarget::default(),
        };
        let mut monitor = Monitor::default();
        monitor.sync(&[checked(check, &[(server.addr, 1, AdminState::Active)])]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.accepts.lock().unwrap().len() < 5 {
            assert!(Instant::now() < deadline, "fewer than 5 probes in 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(monitor);
        let accepts = server.accepts.lock().unwrap().clone();
        for (i, (_, open)) in accepts.iter().enumerate() {
            assert_eq!(*open, 0, "probe {i} began while {open} earlier probe(s) were open");
        }
        for (i, pair) in accepts.windows(2).enumerate() {
            let gap = pair[1].0 - pair[0].0;
            // Each probe runs its whole timeout against a silent server.
            assert!(
                gap >= timeout.saturating_sub(Duration::from_millis(20)),
                "probe {} began {gap:?} after probe {i}, which runs for {timeout:?}",
                i + 1
            );
        }
    }

    /// A port on 127.77.0.2 that nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.77.0.2:0").unwrap().local_addr().unwrap().port()
    }

    /// The next transition within 5 s.
    async fn next_within_5_s(monitor: &mut Monitor) -> (BackendKey, Transition) {
        tokio::time::timeout(Duration::from_secs(5), monitor.next_transition())
            .await
            .expect("a transition within 5 s")
    }

    /// Backends whose own ports are closed, probed where the service's
    /// `check_port` (or the backend's own, which wins) says: they come UP
    /// under their own keys, and go DOWN when that port closes.
    #[tokio::test]
    async fn a_check_port_moves_the_probe_not_the_backends_state() {
        // 127.77.0.2: no other test listens there (see `Recorder::start`).
        let service_port = TcpListener::bind("127.77.0.2:0").await.unwrap();
        let own_port = TcpListener::bind("127.77.0.2:0").await.unwrap();
        let at = |l: &TcpListener| l.local_addr().unwrap().port();
        let (first, second) = (closed_port(), closed_port());
        let address = Ipv4Addr::new(127, 77, 0, 2);
        let mut check = tcp_check(50, 40);
        check.target.port = Some(at(&service_port));
        let mut service = checked(
            check,
            &[
                ((address, first).into(), 1, AdminState::Active),
                ((address, second).into(), 1, AdminState::Active),
            ],
        );
        service.backends[1].check.port = Some(at(&own_port));
        let keys = [
            backend_key(&service, address.into(), first),
            backend_key(&service, address.into(), second),
        ];
        let mut monitor = Monitor::default();
        monitor.sync(std::slice::from_ref(&service));
        let mut up = BTreeSet::new();
        while up.len() < 2 {
            let (key, t) = next_within_5_s(&mut monitor).await;
            assert_eq!(t.to, Status::Up, "{key:?}: {t:?}");
            up.insert(key);
        }
        assert_eq!(up, keys.into_iter().collect(), "the states are the backends' own");

        // The second backend's own check port closes: it alone goes DOWN.
        drop(own_port);
        let (key, t) = next_within_5_s(&mut monitor).await;
        assert_eq!((key, t.to), (keys[1], Status::Down));
        assert_eq!(t.cause.detail, "connection refused");
        assert_eq!(monitor.down(), BTreeSet::from([keys[1]]));

        // Without its own, it is probed on the service's again: UP.
        service.backends[1].check.port = None;
        monitor.sync(std::slice::from_ref(&service));
        let (key, t) = next_within_5_s(&mut monitor).await;
        assert_eq!((key, t.to), (keys[1], Status::Up));
        assert!(monitor.down().is_empty());
    }

    /// An HTTP check sent elsewhere still names the backend in its `Host`.
    #[tokio::test]
    async fn an_http_check_elsewhere_names_the_backend_as_host() {
        let health = TcpListener::bind("127.77.0.2:0").await.unwrap();
        let mut check = tcp_check(50, 40);
        check.probe = Probe::Http {
            path: "/health".into(),
            expect_status: 200,
            expect_body: None,
            tls: None,
        };
        check.target.port = Some(health.local_addr().unwrap().port());
        let own: SocketAddr = (Ipv4Addr::new(127, 77, 0, 2), closed_port()).into();
        let mut monitor = Monitor::default();
        monitor.sync(&[checked(check, &[(own, 1, AdminState::Active)])]);
        let (mut stream, _) =
            tokio::time::timeout(Duration::from_secs(5), health.accept()).await.unwrap().unwrap();
        let mut request = vec![0_u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await.unwrap();
        let request = String::from_utf8_lossy(&request[..n]);
        assert!(request.starts_with("GET /health HTTP/1.0\r\n"), "{request}");
        assert!(request.contains(&format!("\r\nHost: {own}\r\n")), "{request}");
    }

    /// A drained backend (weight 0, or state drain) and one in maintenance
    /// get no new flows, but their health checks go on: their status
    /// follows their probes.
    #[tokio::test]
    async fn drained_and_maintained_backends_are_still_probed() {
        let mut listeners = Vec::new();
        for _ in 0..3 {
            // The kernel completes the handshakes: TCP probes pass.
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let service = checked(
            tcp_check(50, 40),
            &[
                (addrs[0], 0, AdminState::Active),
                (addrs[1], 3, AdminState::Drain),
                (addrs[2], 3, AdminState::Maint),
            ],
        );
        let ordered: Vec<BackendKey> =
            addrs.iter().map(|a| backend_key(&service, v4(*a).into(), a.port())).collect();
        let keys: BTreeSet<BackendKey> = ordered.iter().copied().collect();
        let mut monitor = Monitor::default();
        monitor.sync(std::slice::from_ref(&service));
        for (key, what) in ordered.iter().zip(["weight 0", "drain", "maint"]) {
            let status = monitor.status(key).map(|(s, _)| s);
            assert_eq!(status, Some(Status::Unknown), "the {what} backend is not checked");
        }

        // Every status follows the probes: UP while they pass, DOWN once refused.
        let await_all = async |monitor: &mut Monitor, to: Status| {
            let mut pending = keys.clone();
            while !pending.is_empty() {
                let (key, t) =
                    tokio::time::timeout(Duration::from_secs(5), monitor.next_transition())
                        .await
                        .unwrap_or_else(|_| panic!("still not {to} after 5 s: {pending:?}"));
                assert_eq!(t.to, to, "{key:?}: {t:?}");
                pending.remove(&key);
            }
        };
        await_all(&mut monitor, Status::Up).await;
        drop(listeners);
        await_all(&mut monitor, Status::Down).await;
        assert_eq!(monitor.down(), keys);
        for key in &keys {
            let last = monitor.status(key).and_then(|(_, last)| last.cloned());
            assert_eq!(last.map(|r| r.detail).as_deref(), Some("connection refused"));
        }
    }
}
