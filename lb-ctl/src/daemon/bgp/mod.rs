//! Scaling out with BGP: the announcer keeps, in the kernel routing table
//! `[bgp]` names, a /32 route for each VIP this node can serve (`wanted`),
//! for BIRD's `kernel` protocol to read and announce to the routers (the
//! routes and their device: `write::vip_routes`). It follows the view the
//! controller publishes (health, readiness), the operator's `lb-ctl node
//! drain`, and stops first at SIGTERM.
//!
//! No window announces a VIP this node cannot serve: the announcer starts
//! once the data plane is attached and its maps filled, withdraws within a
//! publication of any change (a backend DOWN, an attachment lost), at once
//! at a drain, before anything stops at SIGTERM, and a controller that
//! dies takes its device, so its routes, along (`vip_routes`). A stuck
//! loop (no publication for `READY_MAX_AGE`) withdraws too; a frozen
//! process cannot, and keeps its routes while its data plane forwards.
pub mod wanted;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};
use utoipa::ToSchema;

use self::wanted::VipView;
use crate::{
    daemon::api::view::Stats,
    desired::config::Bgp,
    write::vip_routes::{self, TableRoute, VipDevice},
};

/// How often the table is read back and repaired when nothing changed
/// (a route removed by hand comes back within this).
const RECHECK_EVERY: Duration = Duration::from_secs(10);
/// How often a failed write is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What `GET /api/v1/node` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Whether `[bgp]` is configured: the VIPs go to a routing table for BIRD.
    pub bgp: bool,
    /// `lb-ctl node drain`: every VIP withdrawn; what still arrives is forwarded.
    pub drained: bool,
    /// `bgp.table` and `bgp.device`.
    pub table: Option<u32>,
    pub device: Option<String>,
    /// The services as they run, hashed (8 hex digits; also each route's
    /// metric, which the shipped BIRD config sends as a large community):
    /// nodes that differ place flows differently.
    pub fingerprint: String,
    pub vips: Vec<VipView>,
    /// The last failure to write the routes, while it lasts.
    pub error: Option<String>,
}

enum Command {
    /// Drain (true) or undrain; answered once the routes are written.
    Drain(bool, oneshot::Sender<Result<NodeView, NodeError>>),
    /// Withdraw everything, close the device, end; answered when done.
    Stop(oneshot::Sender<()>),
}

/// Why a drain or undrain was not made.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("this node announces nothing: its config has no [bgp]")]
    NoBgp,
    #[error("cannot keep the node's drain in {path}: {source}")]
    Keep { path: PathBuf, source: std::io::Error },
    #[error("the controller is stopping")]
    Stopping,
}

/// The API's and `run`'s side: the view, drain and stop.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<NodeView>,
}

impl Handle {
    pub fn view(&self) -> NodeView {
        self.view.borrow().clone()
    }

    /// Drains (withdraws every VIP) or undrains; kept across restarts.
    pub async fn drain(&self, drained: bool) -> Result<NodeView, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Drain(drained, reply))
            .await
            .map_err(|_| NodeError::Stopping)?;
        answer.await.map_err(|_| NodeError::Stopping)?
    }

    /// Withdraws every route and closes the device; returns when done.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Stop(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Where the drain is kept: beside the state file (`lb.state.json` →
/// `lb.state.drained`), present while drained.
pub fn drained_path(state_path: &Path) -> PathBuf {
    state_path.with_extension("drained")
}

/// The device of `bgp`, created before the data plane is touched: a name
/// taken is refused first, naming `bgp.device`.
pub fn open_device(bgp: Option<&Bgp>) -> anyhow::Result<Option<VipDevice>> {
    let Some(b) = bgp else { return Ok(None) };
    let device = VipDevice::open(&b.device).map_err(|e| {
        anyhow::anyhow!("bgp.device = {:?}: cannot create the tun device: {e}", b.device)
    })?;
    info!(device = %b.device, table = b.table, "BGP: VIP routes go to this table, through this device");
    Ok(Some(device))
}

/// Starts the announcer over the controller's published view, writing
/// through `device` (from `open_device`, with `bgp`).
pub fn start(
    bgp: Option<Bgp>,
    device: Option<VipDevice>,
    drained_path: PathBuf,
    stats: watch::Receiver<Arc<Stats>>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let drained = drained_path.exists();
    if drained {
        info!(file = %drained_path.display(), "node drained (lb-ctl node undrain announces again)");
    }
    let (commands_tx, commands) = mpsc::channel(8);
    // What the first sync will write, from the first moment the API answers.
    let first = {
        let stats = stats.borrow();
        let mut vips = wanted::decide(&stats, drained, bgp.is_some());
        if let Some(b) = &bgp {
            let none = std::collections::BTreeSet::new();
            wanted::settle(
                &mut vips,
                &mut BTreeMap::new(),
                &none,
                b.announce_delay,
                Instant::now(),
            );
        }
        node_view(bgp.as_ref(), drained, wanted::fingerprint(&stats), vips, None)
    };
    let (view_tx, view) = watch::channel(first);
    let announcer = Announcer {
        bgp,
        device,
        drained,
        drained_path,
        stats,
        view: view_tx,
        commands,
        written: None,
        checked: Instant::now(),
        error: None,
        logged: Vec::new(),
        servable_since: BTreeMap::new(),
        fingerprint: None,
    };
    let task = tokio::spawn(announcer.run());
    (Handle { commands: commands_tx, view }, task)
}

struct Announcer {
    bgp: Option<Bgp>,
    device: Option<VipDevice>,
    drained: bool,
    drained_path: PathBuf,
    stats: watch::Receiver<Arc<Stats>>,
    view: watch::Sender<NodeView>,
    commands: mpsc::Receiver<Command>,
    /// What the table held after the last write that succeeded.
    written: Option<Vec<TableRoute>>,
    checked: Instant,
    error: Option<String>,
    /// The VIPs as last logged.
    logged: Vec<VipView>,
    /// When each VIP became servable (`wanted::settle`).
    servable_since: BTreeMap<String, Instant>,
    /// The last view hashed, and its fingerprint.
    fingerprint: Option<(Arc<Stats>, u32)>,
}

fn node_view(
    bgp: Option<&Bgp>,
    drained: bool,
    fingerprint: u32,
    vips: Vec<VipView>,
    error: Option<String>,
) -> NodeView {
    NodeView {
        bgp: bgp.is_some(),
        drained,
        table: bgp.map(|b| b.table),
        device: bgp.map(|b| b.device.clone()),
        fingerprint: format!("{fingerprint:08x}"),
        vips,
        error,
    }
}

impl Announcer {
    async fn run(mut self) {
        // Readiness ages and announcements settle: re-decided every 100 ms
        // without a publication (writing only what changed).
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = self.stats.changed() => if changed.is_err() {
                    // The controller is gone: nothing is ready any more.
                    self.withdraw_all().await;
                    return;
                },
                command = self.commands.recv() => match command {
                    Some(Command::Drain(drained, reply)) => {
                        let answer = self.set_drained(drained).await;
                        let _ = reply.send(answer);
                        continue;
                    }
                    Some(Command::Stop(reply)) => {
                        self.withdraw_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.withdraw_all().await;
                        return;
                    }
                },
            }
            self.sync().await;
        }
    }

    async fn set_drained(&mut self, drained: bool) -> Result<NodeView, NodeError> {
        if self.bgp.is_none() {
            return Err(NodeError::NoBgp);
        }
        let path = self.drained_path.clone();
        let kept = if drained {
            // As the state file: a symlink planted at its path is never followed.
            crate::desired::private_file::write_atomically(
                &path,
                b"drained by lb-ctl node drain; lb-ctl node undrain removes this file\n",
            )
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        kept.map_err(|source| NodeError::Keep { path, source })?;
        if self.drained != drained {
            info!(
                drained,
                "admin: node {}",
                if drained { "drained: withdrawing every VIP" } else { "undrained" }
            );
        }
        self.drained = drained;
        self.sync().await;
        Ok(self.view.borrow().clone())
    }

    /// Decides, writes what changed, publishes the view.
    async fn sync(&mut self) {
        let stats = self.stats.borrow().clone();
        let mut vips = wanted::decide(&stats, self.drained, self.bgp.is_some());
        // Hashed once per publication (a second), not once per tick.
        let fingerprint = match &self.fingerprint {
            Some((of, hash)) if Arc::ptr_eq(of, &stats) => *hash,
            _ => {
                let hash = wanted::fingerprint(&stats);
                self.fingerprint = Some((Arc::clone(&stats), hash));
                hash
            }
        };
        if let (Some(bgp), Some(device)) = (&self.bgp, &self.device) {
            let announced = self.written.iter().flatten().map(|r| r.dst.clone()).collect();
            wanted::settle(
                &mut vips,
                &mut self.servable_since,
                &announced,
                bgp.announce_delay,
                Instant::now(),
            );
            let wanted: Vec<TableRoute> = vips
                .iter()
                .filter(|v| v.announced)
                .filter_map(|v| v.vip.parse().ok())
                .map(|vip| vip_routes::route(vip, fingerprint, device.name()))
                .collect();
            // A failed write is retried every second, not every tick.
            let since = self.checked.elapsed();
            let due = since >= RECHECK_EVERY || (self.error.is_some() && since >= RETRY_EVERY);
            if due || (self.error.is_none() && self.written.as_ref() != Some(&wanted)) {
                self.write(bgp.table, wanted).await;
            }
            // What the table holds is what is logged.
            if self.error.is_none() {
                for v in &vips {
                    log_change(self.logged.iter().find(|o| o.vip == v.vip), v);
                }
                self.logged.clone_from(&vips);
            }
        }
        let view =
            node_view(self.bgp.as_ref(), self.drained, fingerprint, vips, self.error.clone());
        self.view.send_if_modified(|old| {
            let changed = *old != view;
            *old = view;
            changed
        });
    }

    /// Makes the table hold `wanted`, read back first (nothing else may
    /// live there). On failure, the next tick reads and tries again.
    async fn write(&mut self, table: u32, wanted: Vec<TableRoute>) {
        self.checked = Instant::now();
        let target = wanted.clone();
        let written = tokio::task::spawn_blocking(move || {
            let present = vip_routes::list(table)?;
            vip_routes::run_batch(&vip_routes::batch(table, &present, &target))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match written {
            Ok(()) => {
                if self.error.take().is_some() {
                    info!(table, "BGP: VIP routes written again");
                }
                self.written = Some(wanted);
            }
            Err(e) => {
                if self.error.is_none() {
                    error!(table, error = %e, "BGP: cannot write the VIP routes; retrying every second");
                }
                self.error = Some(e.to_string());
                self.written = None;
            }
        }
    }

    /// Every route out, then the device closed (which would remove them
    /// too, but an explicit removal reaches BIRD as a route deletion).
    async fn withdraw_all(&mut self) {
        if let Some(bgp) = self.bgp.clone() {
            self.write(bgp.table, Vec::new()).await;
            info!("BGP: every VIP withdrawn");
        }
        self.device = None;
    }
}

/// Logs a VIP's announcement changing (once per change).
fn log_change(before: Option<&VipView>, now: &VipView) {
    if before.map(|b| b.announced) == Some(now.announced) {
        return;
    }
    match &now.withheld {
        None => info!(vip = %now.vip, "BGP: VIP announced"),
        Some(why) if before.is_some() => warn!(vip = %now.vip, reason = %why, "BGP: VIP withdrawn"),
        Some(why) => info!(vip = %now.vip, reason = %why, "BGP: VIP not announced"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bgp() -> Bgp {
        Bgp {
            table: 4077,
            device: "lb-vips".into(),
            withdraw_delay: Duration::ZERO,
            announce_delay: Duration::ZERO,
        }
    }

    /// A drain is kept in its file before it is answered, an undrain
    /// removes it; one that cannot be kept changes nothing and says where.
    /// (No device: nothing is written to the kernel here.)
    #[tokio::test]
    async fn a_drain_is_kept_before_it_is_answered_and_a_failed_one_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-{}-drain", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = drained_path(&dir.join("lb.state.json"));
        assert_eq!(path, dir.join("lb.state.drained"));
        let (_publish, stats) = watch::channel(Arc::new(Stats::default()));

        let (node, _task) = start(Some(bgp()), None, path.clone(), stats.clone());
        let view = node.drain(true).await.unwrap();
        assert!(view.drained && path.exists(), "{view:?}");
        // A new announcer (a restart) starts drained.
        let (again, _task) = start(Some(bgp()), None, path.clone(), stats.clone());
        assert!(again.view().drained);
        assert!(!again.drain(false).await.unwrap().drained);
        assert!(!path.exists());
        assert!(!again.drain(false).await.unwrap().drained, "undrain twice is no error");

        let nowhere = dir.join("missing").join("lb.state.drained");
        let (node, _task) = start(Some(bgp()), None, nowhere.clone(), stats);
        let refused = node.drain(true).await.unwrap_err();
        assert!(refused.to_string().contains(&nowhere.display().to_string()), "{refused}");
        assert!(!node.view().drained, "a drain that was not kept is not made");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
