//! The controller's state and its every move: the config file, the runtime
//! changes on top of it, the health of each backend, the counters. One task
//! owns it (`control_loop`); the admin API asks it for changes and reads what it
//! publishes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::{
    daemon::{
        api::view::{
            self, ConntrackView, HealthLookup, ReassembledView, RuntimeChanges, Samples, Stats,
        },
        health::{
            self,
            state::{CheckResult, Status},
        },
        run::{self, Overrides},
        weights,
    },
    desired::{
        changes::{self, Change, ChangeError, Changes},
        config::Config,
        model::{AdminState, Forwarding, Service},
        names::Named as _,
        problem::Problem,
        snat,
    },
    plan::ids::{BackendKey, PlanError},
    write::reconciler::{self, ReconcileError},
};

/// Why a change through the API was not made; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Refused(#[from] ChangeError),
    #[error("the change does not fit: {0}")]
    DoesNotFit(PlanError),
    #[error("{0}")]
    Failed(String),
}

/// A change asked by the API, answered once the kernel holds it.
pub struct Request {
    pub change: Change,
    pub reply: oneshot::Sender<Result<Arc<Stats>, ControlError>>,
}

pub struct Controller {
    config_path: PathBuf,
    overrides: Overrides,
    /// The config file as last loaded.
    config: Config,
    changes: Changes,
    state_path: PathBuf,
    /// What runs: the file's services with the runtime changes applied.
    services: Vec<Service>,
    health: health::Monitor,
    reconciler: reconciler::Handle,
    samples: Samples,
    /// What the last sample found wrong with the data plane (`/readyz`).
    dataplane_problems: Vec<String>,
    started: Instant,
    published: watch::Sender<Arc<Stats>>,
    /// A health change the reconciler could not apply yet.
    health_pending: bool,
    /// The backends in slow start.
    ramps: weights::Ramps,
    /// The services as last planned (weights from checks and ramps): what
    /// the reconciler holds; `None` after a failed apply of them.
    planned: Option<Vec<Service>>,
    /// The maps may hold part of a failed change (see `restore`).
    restore_pending: bool,
    /// The DOWN backends the maps flag DOWN.
    applied_down: BTreeSet<BackendKey>,
    /// With `[bgp]`: backends seen DOWN, and when their DOWN flag is due
    /// (see `apply_health`).
    down_due: BTreeMap<BackendKey, Instant>,
}

/// What the view needs of the health checks and the ramps, at one moment.
struct Lookup<'a> {
    health: &'a health::Monitor,
    ramps: &'a weights::Ramps,
    now: Instant,
}

impl HealthLookup for Lookup<'_> {
    fn status(&self, key: &BackendKey) -> Option<(Status, Option<&CheckResult>)> {
        self.health.status(key)
    }

    fn is_down(&self, key: &BackendKey) -> bool {
        self.status(key).is_some_and(|(s, _)| !s.is_usable())
    }

    fn weight(&self, key: &BackendKey) -> Option<u32> {
        self.health.weight(key)
    }

    fn ramp(&self, key: &BackendKey) -> Option<f64> {
        self.ramps.fraction(key, self.now)
    }
}

impl Controller {
    /// Restores the runtime changes over `config`, applies the result and
    /// starts the health checks.
    pub async fn start(
        config_path: PathBuf,
        overrides: Overrides,
        config: Config,
        reconciler: reconciler::Handle,
    ) -> anyhow::Result<(Self, watch::Receiver<Arc<Stats>>)> {
        let state_path = state_path(&config_path, &config);
        let changes = Changes::load(&state_path)?;
        let mut services = replay(&changes, &config.services, &state_path);
        // The file's services were checked against the file's pool; one
        // added through the API before may have a VIP the pool now holds.
        for (k, i) in
            snat::vips_in_pool(&services, &config.dataplane.snat_addresses).into_iter().rev()
        {
            let s = services.remove(k);
            warn!(
                service = s.name,
                vip = %s.vip,
                "runtime change no longer applies; skipped: its VIP is dataplane.snat_addresses[{i}] (the full-NAT pool)"
            );
        }
        // An adopted data plane's DOWN backends (maintenance included) stay
        // out until their probes bring them back.
        let held_down = reconciler.down().await?;
        let mut first = services.clone();
        take_default_pools(&mut first, &config.dataplane.snat_addresses);
        reconciler.apply(first).await?;
        let mut health = health::Monitor::default();
        health.sync(&services);
        health.assume_down(&held_down);
        let held_down = held_down.into_iter().collect();
        let (published, view) = watch::channel(Arc::new(Stats::default()));
        let mut controller = Self {
            config_path,
            overrides,
            config,
            changes,
            state_path,
            services,
            health,
            reconciler,
            samples: Samples::default(),
            dataplane_problems: Vec::new(),
            started: Instant::now(),
            published,
            health_pending: false,
            ramps: weights::Ramps::default(),
            planned: None,
            restore_pending: false,
            applied_down: held_down,
            down_due: BTreeMap::new(),
        };
        // The health view replaces whatever an adopted data plane held
        // (a backend DOWN before may have lost its checks since).
        controller.apply_health().await;
        controller.publish();
        Ok((controller, view))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Makes `change`, keeps it in the state file, and answers with the new
    /// view. The kernel holds the change before the answer; if the state
    /// file cannot be written, the change is undone.
    pub async fn change(&mut self, change: Change) -> Result<Arc<Stats>, ControlError> {
        let next = changes::apply(&self.services, &change)?;
        let pool = &self.config.dataplane.snat_addresses;
        if let Some((k, i)) = snat::vips_in_pool(&next, pool).into_iter().next() {
            return Err(ChangeError::Invalid(vec![Problem {
                key: "vip".into(),
                message: format!(
                    "{} (service {:?}) is in the running dataplane.snat_addresses[{i}], the full-NAT pool: replies to it would be taken for packets to the VIP",
                    next[k].vip, next[k].name
                ),
            }])
            .into());
        }
        let planned = self.planned(&next);
        if let Err(e) = self.reconciler.apply(planned).await {
            // A plan that does not fit wrote nothing; a failed write may
            // have left part of the change in the maps.
            if matches!(e, ReconcileError::Dataplane(_)) {
                error!(error = %e, "undoing the change: writing it failed midway");
                self.restore().await;
            }
            return Err(reconcile_error(e));
        }
        let mut recorded = self.changes.clone();
        recorded.record(&change, &next);
        if let Err(e) = recorded.save(&self.state_path) {
            error!(error = %e, "undoing the change: it could not be kept");
            self.restore().await;
            return Err(ControlError::Failed(e.to_string()));
        }
        log_change(&change);
        self.changes = recorded;
        self.services = next;
        self.health.sync(&self.services);
        self.apply_health().await;
        Ok(self.publish())
    }

    /// Makes the maps hold what runs again, after a change that failed; if
    /// that fails too, every sample retries until it works.
    async fn restore(&mut self) {
        let planned = self.planned(&self.services.clone());
        match self.reconciler.apply(planned).await {
            Ok(_) => self.restore_pending = false,
            Err(e) => {
                error!(error = %e, "restoring the running state failed; retrying every second");
                self.restore_pending = true;
            }
        }
    }

    /// SIGHUP: the file's services, with the runtime changes on top, if
    /// the file is valid; otherwise keep running what runs and say why.
    pub async fn reload(&mut self) {
        // Reading the file may resolve the syslog host: a DNS server that
        // drops queries holds that for seconds, which must not hold up the
        // probes' timers on this thread.
        let (path, overrides) = (self.config_path.clone(), self.overrides.clone());
        let loaded = tokio::task::spawn_blocking(move || run::load(&path, &overrides)).await;
        let Ok(loaded) = loaded else {
            error!("reload: reading the configuration failed (the reading thread died)");
            return;
        };
        let next = match loaded {
            Ok(next) => next,
            Err(refused) => {
                error!(problems = ?refused.0, "reload refused; keeping the running configuration");
                return;
            }
        };
        if next.dataplane != self.config.dataplane
            || next.admin != self.config.admin
            || next.log != self.config.log
            || next.bgp != self.config.bgp
        {
            warn!(
                "[dataplane], [admin], [log] and [bgp] changes take effect at the next start; applying services only"
            );
        }
        let services = replay(&self.changes, &next.services, &self.state_path);
        // `[dataplane]` changes wait for the next start: the running pool
        // is the one no VIP may be in.
        let pool = &self.config.dataplane.snat_addresses;
        if let Some((k, i)) = snat::vips_in_pool(&services, pool).into_iter().next() {
            error!(
                service = services[k].name,
                vip = %services[k].vip,
                "reload refused: the VIP is in the running dataplane.snat_addresses[{i}] (the full-NAT pool); keeping the running configuration"
            );
            return;
        }
        let planned = self.planned(&services);
        match self.reconciler.apply(planned).await {
            Ok(applied) => {
                info!(writes = applied.writes, "configuration reloaded");
                self.config = Config {
                    dataplane: self.config.dataplane.clone(),
                    admin: self.config.admin.clone(),
                    log: self.config.log.clone(),
                    bgp: self.config.bgp.clone(),
                    ..next
                };
                self.services = services;
                self.health.sync(&self.services);
                self.apply_health().await;
                self.publish();
            }
            // Undone at once, as a failed API change is: left half-applied,
            // the next health change would silently revert it (the
            // reconciler's desired state is still the running one), and
            // until then the maps would hold a mix of both configurations.
            Err(e @ ReconcileError::Dataplane(_)) => {
                error!(error = %e, "reload failed midway and is undone; the running configuration stays, the next reload (SIGHUP) tries again");
                self.restore().await;
            }
            Err(e) => {
                error!(error = %e, "reload refused; keeping the running configuration");
            }
        }
    }

    /// Checks the programs' attachment, reads the counters (and recounts
    /// connections), then publishes. Either failing makes `/readyz` say so.
    pub async fn sample(&mut self) {
        let mut problems = self
            .reconciler
            .attachment_problems()
            .await
            .unwrap_or_else(|e| vec![format!("cannot check the data plane's attachment: {e}")]);
        match self.reconciler.sample().await {
            Ok(sample) => self.samples.push(sample),
            Err(e) => {
                warn!(error = %e, "cannot read the data plane's counters");
                problems.push(format!("cannot read the data plane's counters: {e}"));
            }
        }
        self.dataplane_problems = problems;
        if self.restore_pending {
            self.restore().await;
        }
        // A ramp moves on every sample (every second) until it ends.
        if self.health_pending || self.ramps.in_progress() {
            self.apply_health().await;
        }
        self.publish();
    }

    /// Waits for a backend's health to change. Cancel-safe (a `select!`
    /// branch): the change is recorded when this returns, and applied by
    /// `health_changed`, which must not be cancelled.
    pub async fn next_health_change(&mut self) {
        self.health.next_transition().await;
    }

    /// Applies the health change `next_health_change` saw.
    pub async fn health_changed(&mut self) {
        self.apply_health().await;
        self.publish();
    }

    /// `services` with the weights their checks gave and their ramps (see
    /// `weights`), which the reconciler is then known to hold.
    fn planned(&mut self, services: &[Service]) -> Vec<Service> {
        let planned = self.plan(services);
        self.planned = Some(planned.clone());
        planned
    }

    /// `services` as `planned` would give them now, the ramps moved on.
    fn plan(&mut self, services: &[Service]) -> Vec<Service> {
        let now = Instant::now();
        let down = self.health.down();
        self.ramps.follow(services, |key| down.contains(key), now);
        let mut planned = weights::planned(services, &self.health.weights(), &self.ramps, now);
        take_default_pools(&mut planned, &self.config.dataplane.snat_addresses);
        planned
    }

    /// DOWN backends leave the scheduler's tables (only their own Maglev
    /// slots move), and come back when UP again; a weight a check gave, or
    /// a ramp's step, moves only that backend's share.
    ///
    /// With `[bgp]`, a backend that goes DOWN stays in the maps as it was
    /// for `bgp.withdraw_delay` (the view says DOWN at once): when it was
    /// the last usable backend of a service here, the VIP is withdrawn
    /// meanwhile, and the routers move its flows to the other nodes before
    /// this one would reset them or, for flows it forwards without an entry
    /// (moved here from another node), place them elsewhere than the other
    /// nodes do.
    async fn apply_health(&mut self) {
        let planned = self.plan(&self.services.clone());
        if self.planned.as_ref() != Some(&planned) {
            if let Err(e) = self.reconciler.apply(planned.clone()).await {
                error!(error = %e, "applying the planned weights failed; retrying within a second");
                self.planned = None;
                self.health_pending = true;
                return;
            }
            self.planned = Some(planned);
        }
        let down = self.health.down();
        let due = self.grace(&down);
        let count = due.len();
        match self.reconciler.set_down(due.clone()).await {
            Ok(applied) => {
                if applied.writes > 0 {
                    info!(down = count, writes = applied.writes, "health applied");
                }
                if due.len() < down.len() && self.applied_down.len() + 1 > due.len() {
                    info!(
                        waiting = down.len() - due.len(),
                        delay_ms = self.withdraw_delay().as_millis() as u64,
                        "DOWN backends flagged after bgp.withdraw_delay_ms"
                    );
                }
                self.applied_down = due;
                // Every sample looks again until every DOWN flag is due.
                self.health_pending = count < down.len();
            }
            Err(e) => {
                error!(error = %e, "applying health states failed; retrying within a second");
                self.health_pending = true;
            }
        }
    }

    /// `[bgp]`'s `withdraw_delay`, or zero without `[bgp]`.
    fn withdraw_delay(&self) -> std::time::Duration {
        self.config.bgp.as_ref().map_or(std::time::Duration::ZERO, |b| b.withdraw_delay)
    }

    /// Of the backends `down`, those whose DOWN flag is due. Under
    /// `[bgp]`, one not flagged yet is due `withdraw_delay` after it was
    /// first seen DOWN (`down_due`); without, at once.
    fn grace(&mut self, down: &BTreeSet<BackendKey>) -> BTreeSet<BackendKey> {
        let delay = self.withdraw_delay();
        let now = Instant::now();
        self.down_due.retain(|k, _| down.contains(k));
        if !delay.is_zero() {
            let before = self.down_due.len();
            for key in down.difference(&self.applied_down) {
                self.down_due.entry(*key).or_insert(now + delay);
            }
            if self.down_due.len() > before {
                info!(
                    backends = self.down_due.len() - before,
                    delay_ms = delay.as_millis() as u64,
                    "DOWN: left as they are in the maps until bgp.withdraw_delay_ms has passed"
                );
            }
        }
        down.iter()
            .filter(|k| self.down_due.get(k).is_none_or(|due| now >= *due))
            .copied()
            .collect()
    }

    /// The view of everything, for the API's readers.
    fn publish(&self) -> Arc<Stats> {
        let (services, backends) = self.changes.len();
        let last = self.samples.last.as_ref();
        let stats = Arc::new(Stats {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            services: view::services(
                &self.services,
                &self.config.dataplane.snat_addresses,
                &Lookup { health: &self.health, ramps: &self.ramps, now: Instant::now() },
                &self.samples,
            ),
            packets: view::packets(&self.samples),
            conntrack: ConntrackView {
                entries: last.map_or(0, |(_, s)| s.tracked),
                capacity: u64::from(self.config.dataplane.conntrack_max),
            },
            reassembled: {
                let counts = self.reconciler.reassembled();
                ReassembledView {
                    forwarded: counts.forwarded.load(std::sync::atomic::Ordering::Relaxed),
                    dropped: counts.dropped.load(std::sync::atomic::Ordering::Relaxed),
                }
            },
            runtime_changes: RuntimeChanges {
                services,
                backends,
                state_file: Some(self.state_path.display().to_string()),
            },
            dataplane_problems: self.dataplane_problems.clone(),
            published: Some(Instant::now()),
        });
        self.published.send_replace(Arc::clone(&stats));
        stats
    }
}

/// Where `config`'s runtime changes are kept.
pub fn state_path(config_path: &Path, config: &Config) -> PathBuf {
    config.admin.state_file.clone().unwrap_or_else(|| changes::default_state_path(config_path))
}

/// Reads the state file `start` will read, so that `run` refuses an
/// unusable one before it touches the data plane.
pub fn check_state_file(config_path: &Path, config: &Config) -> Result<(), changes::StateError> {
    Changes::load(&state_path(config_path, config)).map(drop)
}

fn reconcile_error(e: ReconcileError) -> ControlError {
    match e {
        ReconcileError::Plan(p) => ControlError::DoesNotFit(p),
        other => ControlError::Failed(other.to_string()),
    }
}

/// Each full-NAT service naming no pool of its own takes `[dataplane]`'s
/// (`default`) for the maps; the desired state keeps what it says.
fn take_default_pools(services: &mut [Service], default: &[IpAddr]) {
    for s in services.iter_mut().filter(|s| s.forwarding == Forwarding::FullNat) {
        s.snat.addresses = snat::pool_addresses(s, default);
    }
}

/// The file's services with the runtime changes on top; says what it
/// restored and what no longer fits.
fn replay(changes: &Changes, base: &[Service], state_path: &Path) -> Vec<Service> {
    let (services, skipped) = changes.replay(base);
    if !changes.is_empty() {
        let (s, b) = changes.len();
        info!(
            state_file = %state_path.display(),
            services = s,
            backends = b,
            "runtime changes restored over the config file"
        );
    }
    for s in skipped {
        warn!(change = %s.what, reason = %s.why, "runtime change no longer applies; skipped");
    }
    services
}

/// Every admin action is logged (and so reaches syslog).
fn log_change(change: &Change) {
    let service = change.service();
    match change {
        Change::AddService(s) => {
            info!(service, vip = %s.vip, port = s.port, "admin: service added");
        }
        Change::PutService(s) => {
            info!(service, vip = %s.vip, port = s.port, "admin: service replaced");
        }
        Change::RemoveService(_) => info!(service, "admin: service removed"),
        Change::AddBackend { backend: b, .. } | Change::PutBackend { backend: b, .. } => {
            info!(service, backend = %std::net::SocketAddr::new(b.address, b.port), weight = b.weight, state = %b.state, "admin: backend added");
        }
        Change::SetBackend { backend, weight, state, edit, .. } => {
            info!(service, %backend, weight = ?weight, state = ?state.map(AdminState::name), backup = ?edit.backup, max_conns = ?edit.max_conns, check = ?edit.check, "admin: backend changed");
        }
        Change::RemoveBackend { backend, .. } => info!(service, %backend, "admin: backend removed"),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

    use lb_common::abi::BACKEND_DOWN;
    use tokio::net::TcpListener;

    use super::*;
    use crate::{
        desired::config,
        plan::ids::backend_key,
        write::{
            dataplane::fake::FakeMaps,
            reconciler::{Reconciler, spawn},
        },
    };

    /// A directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-ctl-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The DOWN flag of each backend the maps hold, by port (all on 127.0.0.1).
    fn down_flags(fake: &FakeMaps) -> BTreeSet<(u16, bool)> {
        let image = fake.state.lock().unwrap();
        image.v4.backends.values().map(|b| (b.port, b.flags & BACKEND_DOWN != 0)).collect()
    }

    /// A reload whose map writes fail midway is undone at once, as the log
    /// says: the maps hold the running configuration again (not a mix that
    /// the next health change would revert silently), and the next SIGHUP
    /// applies the file.
    #[tokio::test]
    async fn a_reload_that_fails_midway_is_undone_and_the_next_sighup_retries_it() {
        let dir = TempDir::new("reload-fails");
        let text = |backends: &[u8]| {
            let mut t = format!(
                "[dataplane]\ninterfaces = [\"lo\"]\n[admin]\nstate_file = \"{}\"\n\n[[service]]\nname = \"web\"\nvip = \"10.77.1.100\"\nport = 80\nscheduler = \"rr\"\n",
                dir.0.join("lb.state.json").display()
            );
            for last in backends {
                t.push_str("  [[service.backend]]\n  address = \"10.77.2.");
                t.push_str(&last.to_string());
                t.push_str("\"\n  port = 80\n");
            }
            t
        };
        let config_path = dir.0.join("lb.toml");
        std::fs::write(&config_path, text(&[11, 12])).unwrap();
        let config = config::parse(&text(&[11, 12])).unwrap();
        let fake = FakeMaps::default();
        let (handle, _task) = spawn(Reconciler::new(fake.clone())).unwrap();
        let (mut controller, _view) =
            Controller::start(config_path.clone(), Overrides::default(), config, handle)
                .await
                .unwrap();
        let running = fake.state.lock().unwrap().clone();

        std::fs::write(&config_path, text(&[13, 14, 15])).unwrap();
        // Past the counter resets and one new backend: a partial write.
        *fake.fail_once_after.lock().unwrap() = Some(4);
        controller.reload().await;
        // (Images hold 65537-slot tables: compared, not printed.)
        assert!(*fake.state.lock().unwrap() == running, "the failed reload is not undone at once");
        assert_eq!(controller.services()[0].backends.len(), 2, "the running services stay");

        // A health change re-applies what runs: nothing moves.
        controller.health_changed().await;
        assert!(*fake.state.lock().unwrap() == running, "a health change moved the maps");

        controller.reload().await;
        let ports: BTreeSet<[u8; 4]> =
            fake.state.lock().unwrap().v4.backends.values().map(|b| b.addr).collect();
        let want: BTreeSet<[u8; 4]> = [13, 14, 15].iter().map(|l| [10, 77, 2, *l]).collect();
        assert_eq!(ports, want, "the next SIGHUP applies the file");
    }

    /// A backend DOWN in the data plane a new controller adopts stays DOWN
    /// in its first image, although its probes now pass: it comes back
    /// after `rise` of them, not at its first as a new backend would.
    #[tokio::test]
    async fn a_backend_held_down_stays_down_across_a_restart_until_rise_probes_pass() {
        let dir = TempDir::new("held-down");
        // Both backends accept connections: every TCP probe passes.
        let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (held_port, other_port) =
            (held.local_addr().unwrap().port(), other.local_addr().unwrap().port());
        let text = format!(
            r#"
[dataplane]
interfaces = ["lb-test0"]

[admin]
state_file = "{}"

[[service]]
name = "web"
vip = "10.77.1.100"
port = 80

  [service.health]
  check = "tcp"
  interval_ms = 50
  timeout_ms = 40
  rise = 2
  fall = 1

  [[service.backend]]
  address = "127.0.0.1"
  port = {held_port}

  [[service.backend]]
  address = "127.0.0.1"
  port = {other_port}
"#,
            dir.0.join("lb.state.json").display()
        );
        let config_path = dir.0.join("lb.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = config::parse(&text).unwrap();
        let held_key = backend_key(&config.services[0], Ipv4Addr::LOCALHOST.into(), held_port);

        // What the previous controller left in the maps: `held` DOWN.
        let fake = FakeMaps::default();
        let mut previous = Reconciler::new(fake.clone());
        previous.apply(&config.services).unwrap();
        previous.set_down(BTreeSet::from([held_key])).unwrap();
        drop(previous);
        let left = BTreeSet::from([(held_port, true), (other_port, false)]);
        assert_eq!(down_flags(&fake), left, "the previous controller's image");

        let (handle, _task) = spawn(Reconciler::adopt(fake.clone()).unwrap()).unwrap();
        let (mut controller, view) =
            Controller::start(config_path, Overrides::default(), config, handle).await.unwrap();
        // The first image and view, before any probe result is taken in.
        assert_eq!(down_flags(&fake), left, "the new controller's first image");
        let stats = view.borrow().clone();
        let backend = stats.services[0].backends.iter().find(|b| b.port == held_port).unwrap();
        assert_eq!(backend.health.status, "DOWN", "{backend:?}");
        assert!(!backend.in_rotation, "{backend:?}");

        // Its probes pass; it takes `rise` (2) of them, from DOWN, to bring it back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (key, transition) =
                tokio::time::timeout_at(deadline, controller.health.next_transition())
                    .await
                    .expect("the held backend back UP within 5 s");
            controller.health_changed().await;
            if key == held_key {
                assert_eq!((transition.from, transition.to), (Status::Down, Status::Up));
                break;
            }
        }
        assert_eq!(down_flags(&fake), BTreeSet::from([(held_port, false), (other_port, false)]));
    }
}
