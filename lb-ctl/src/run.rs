//! `lb-ctl run`: load and attach the data plane, apply the config, reload it
//! on SIGHUP, detach everything on SIGTERM/SIGINT.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use lb_common::abi::NEXTHOP_REFRESH_MS;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    EBPF_OBJECT,
    config::{self, Config},
    dataplane::kernel::KernelMaps,
    health,
    model::XdpMode,
    netdev,
    reconciler::{self, Reconciler},
};

/// How often the connection table is recounted (and expired entries removed).
const RECOUNT_INTERVAL: Duration = Duration::from_secs(1);

/// Command-line overrides of the `[dataplane]` section.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
}

/// Why `run` refused to start: every problem, for exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct Refused(pub Vec<String>);

/// Loads `path`, applies overrides and checks the interfaces exist.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, Refused> {
    let mut config = config::load(path).map_err(|e| Refused(e.problems()))?;
    if !overrides.interfaces.is_empty() {
        config.dataplane.interfaces.clone_from(&overrides.interfaces);
    }
    if let Some(mode) = overrides.xdp_mode {
        config.dataplane.xdp_mode = mode;
    }
    let mut problems: Vec<String> =
        config::missing_interfaces(&config.dataplane).iter().map(ToString::to_string).collect();
    if config.dataplane.interfaces.is_empty() {
        problems.push(
            "dataplane.interfaces: no interface to attach to (set it or pass --iface)".into(),
        );
    }
    if problems.is_empty() { Ok(config) } else { Err(Refused(problems)) }
}

pub async fn run(path: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    let config = load(&path, &overrides)?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    for name in &config.dataplane.interfaces {
        if netdev::ipv4_forwarding(name) == Some(false) {
            warn!(
                interface = %name,
                "IPv4 forwarding is off: nothing will be load balanced \
                 (sysctl -w net.ipv4.conf.all.forwarding=1, as for IPVS NAT)"
            );
        }
    }
    let maps =
        KernelMaps::start(&config.dataplane, EBPF_OBJECT).context("starting the data plane")?;
    let (handle, task) = reconciler::spawn(Reconciler::new(maps));
    let outcome = async {
        handle.apply(config.services.clone()).await.context("applying the configuration")?;
        info!(config = %path.display(), services = config.services.len(), "load balancer running");
        let mut health = health::Monitor::default();
        health.sync(&config.services);
        let mut running = config;
        // A health change the reconciler could not apply yet.
        let mut health_pending = false;
        // The data plane caches FIB answers until the epoch moves on.
        let mut next_hops = tokio::time::interval(Duration::from_millis(NEXTHOP_REFRESH_MS));
        next_hops.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Active/inactive connections per backend (lc, the operator), and expiry.
        let mut recount = tokio::time::interval(RECOUNT_INTERVAL);
        recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = recount.tick() => {
                    if let Err(e) = handle.recount_connections().await {
                        warn!(error = %e, "cannot recount connections");
                    }
                    if health_pending {
                        health_pending = !apply_health(&health, &handle).await;
                    }
                }
                _ = next_hops.tick() => {
                    if let Err(e) = handle.refresh_next_hops().await {
                        warn!(error = %e, "cannot refresh the next-hop cache");
                    }
                }
                _ = health.next_transition() => health_pending = !apply_health(&health, &handle).await,
                _ = hangup.recv() => {
                    running = reload(&path, &overrides, running, &handle).await;
                    health.sync(&running.services);
                    health_pending = !apply_health(&health, &handle).await;
                }
                _ = terminate.recv() => { info!("SIGTERM: shutting down"); break }
                _ = interrupt.recv() => { info!("SIGINT: shutting down"); break }
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(handle);
    // Dropping the maps detaches the programs and removes the pins.
    drop(task.await.context("the reconciler task failed")?);
    info!("data plane detached");
    outcome
}

/// Health changed: DOWN backends leave the scheduler's tables (only their
/// own Maglev slots move), and come back when UP again.
async fn apply_health(health: &health::Monitor, handle: &reconciler::Handle) -> bool {
    let down = health.down();
    let count = down.len();
    match handle.set_down(down).await {
        Ok(applied) => {
            if applied.writes > 0 {
                info!(down = count, writes = applied.writes, "health applied");
            }
            true
        }
        Err(e) => {
            error!(error = %e, "applying health states failed; retrying within a second");
            false
        }
    }
}

/// SIGHUP: apply the file's services if it is valid; otherwise keep running
/// what runs and say why.
async fn reload(
    path: &Path,
    overrides: &Overrides,
    running: Config,
    handle: &reconciler::Handle,
) -> Config {
    let next = match load(path, overrides) {
        Ok(next) => next,
        Err(refused) => {
            error!(problems = ?refused.0, "reload refused; keeping the running configuration");
            return running;
        }
    };
    if next.dataplane != running.dataplane {
        warn!("[dataplane] changes take effect at the next start; applying services only");
    }
    match handle.apply(next.services.clone()).await {
        Ok(applied) => {
            info!(writes = applied.writes, "configuration reloaded");
            Config { dataplane: running.dataplane, ..next }
        }
        Err(e) => {
            error!(error = %e, "reload failed midway; the next reload (SIGHUP) completes or undoes it");
            running
        }
    }
}
