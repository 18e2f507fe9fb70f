//! `lb-ctl run`: load and attach the data plane, apply the config, reload it
//! on SIGHUP, detach everything on SIGTERM/SIGINT.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{self, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::write::dataplane::Maps as _;
use crate::{
    EBPF_OBJECT,
    daemon::{
        api, bgp, caps,
        control_loop::{self, Signal, Signals},
        controller::{self, Controller},
        limits,
        notify::Notifier,
    },
    desired::{
        config::{self, Config},
        model::XdpMode,
    },
    write::{
        dataplane::kernel::KernelMaps,
        netdev,
        reconciler::{self, Reconciler},
    },
};

/// How often the counters are read and the connection table recounted
/// (and expired entries removed).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Command-line overrides of the `[dataplane]` section.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    /// `--cleanup-on-exit`: detach and unpin at SIGTERM instead of leaving
    /// the data plane running for the next controller.
    pub cleanup_on_exit: bool,
    /// `--object`: the XDP object to load instead of the built-in one.
    pub object: Option<PathBuf>,
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

/// The operator's token (`admin.token_file`), or the one generated for
/// the listen `port` (as bound), made at the first start (see `api::token`).
fn admin_token(config: &Config, port: u16) -> Result<std::sync::Arc<str>, api::ListenError> {
    if let Some(path) = &config.admin.token_file {
        return Ok(api::token::read_configured(path)?);
    }
    let (token, path, created) = api::token::generated(&api::token::run_dir(), port)?;
    if created {
        info!(token_file = %path.display(), "admin API token generated (no admin.token_file)");
    } else {
        info!(token_file = %path.display(), "admin API token read (no admin.token_file)");
    }
    Ok(token)
}

/// SIGHUP reloads the config file; SIGTERM and SIGINT stop the controller.
/// systemd hears of each (`RELOADING=1`, then `READY=1`; `STOPPING=1`).
struct UnixSignals {
    hangup: unix::Signal,
    terminate: unix::Signal,
    interrupt: unix::Signal,
    notifier: Notifier,
}

impl UnixSignals {
    fn install(notifier: Notifier) -> anyhow::Result<Self> {
        let signal = |kind, name| {
            unix::signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Self {
            hangup: signal(SignalKind::hangup(), "SIGHUP")?,
            terminate: signal(SignalKind::terminate(), "SIGTERM")?,
            interrupt: signal(SignalKind::interrupt(), "SIGINT")?,
            notifier,
        })
    }
}

impl Signals for UnixSignals {
    async fn next(&mut self) -> Signal {
        let signal = tokio::select! {
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.terminate.recv() => {
                info!("SIGTERM: shutting down");
                Signal::Stop
            }
            _ = self.interrupt.recv() => {
                info!("SIGINT: shutting down");
                Signal::Stop
            }
        };
        match signal {
            Signal::Reload => self.notifier.reloading(),
            Signal::Stop => self.notifier.stopping(),
        }
        signal
    }

    fn reloaded(&mut self) {
        self.notifier.reloaded();
    }
}

/// Runs the controller on `config` (loaded from `path` by `load`) until SIGTERM.
/// The XDP object `--object` names, else the one built in.
fn xdp_object(overrides: &Overrides) -> anyhow::Result<std::borrow::Cow<'static, [u8]>> {
    let Some(file) = &overrides.object else {
        return Ok(std::borrow::Cow::Borrowed(EBPF_OBJECT));
    };
    let bytes = std::fs::read(file)
        .with_context(|| format!("reading the XDP object {}", file.display()))?;
    info!(object = %file.display(), "XDP object from file, not the built-in one");
    Ok(std::borrow::Cow::Owned(bytes))
}

pub async fn run(path: PathBuf, overrides: Overrides, config: Config) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    let mut signals = UnixSignals::install(notifier.clone())?;

    // Before anything opens a descriptor: each probe in flight holds one.
    match limits::raise_open_files() {
        Ok(l) => info!(soft = l.soft, hard = l.hard, was = l.was, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Refuse an unusable state file or admin setup before touching the data plane.
    controller::check_state_file(&path, &config)?;
    // The listen address first: a refused one must not leave a token behind.
    let listener = api::bind(config.admin.listen, config.admin.token_file.is_some()).await?;
    let port = listener.local_addr().map_or(config.admin.listen.port(), |a| a.port());
    let token = admin_token(&config, port)?;
    // Before the data plane is touched: without one of these the kernel
    // would refuse it halfway (maps made, programs not loaded or attached).
    caps::check()?;
    for name in &config.dataplane.interfaces {
        if netdev::ipv4_forwarding(name) == Some(false) {
            warn!(
                interface = %name,
                "IPv4 forwarding is off: nothing will be load balanced \
                 (sysctl -w net.ipv4.conf.all.forwarding=1, as for IPVS NAT)"
            );
        }
    }
    // The VIP routes' device, before the data plane: a name taken is
    // refused with nothing attached.
    let device = bgp::open_device(config.bgp.as_ref())?;
    let object = xdp_object(&overrides)?;
    let maps = KernelMaps::start(&config.dataplane, &object).context("starting the data plane")?;
    let cleanup_on_exit = overrides.cleanup_on_exit;
    // The ring buffer's one reader, before the reconciler takes the maps.
    let trace_tap = maps.trace_tap().context("opening the packet trace")?;
    let (handle, task) =
        reconciler::spawn(Reconciler::adopt(maps).context("reading the adopted data plane")?)
            .context("starting the reconciler")?;
    let config_hosts = config.admin.allowed_hosts.clone();
    let bgp_config = config.bgp.clone();
    let drained_path = bgp::drained_path(&controller::state_path(&path, &config));
    let outcome = async {
        let services = config.services.len();
        let (mut controller, stats) =
            Controller::start(path.clone(), overrides, config, handle.clone())
                .await
                .context("applying the configuration")?;
        // With the services applied: their sockets open before we say we run.
        handle.start_reassembly().context("starting the reassembly slow path")?;
        // The data plane is attached and its maps filled: only now may a
        // VIP be announced.
        let (node, announcer) = bgp::start(bgp_config.clone(), device, drained_path, stats.clone());
        let (requests_tx, mut requests) = mpsc::channel(64);
        let trace = crate::daemon::trace::Hub::start(trace_tap, stats.clone());
        let admin = listener.local_addr().context("the admin listener")?;
        let access = api::Access { token, hosts: api::access::Hosts::new(admin, &config_hosts) };
        let app = api::app(
            api::ApiState {
                requests: requests_tx,
                stats: stats.clone(),
                reconciler: handle.clone(),
                node: node.clone(),
                renders: std::sync::Arc::default(),
                trace: trace.clone(),
            },
            access,
        );
        let (stop_server, server_stops) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve::serve(
            listener,
            app,
            api::serve::Limits::default(),
            async move {
                let _ = server_stops.await;
            },
        ));
        info!(config = %path.display(), services, %admin, "load balancer running");
        let ready = tokio::spawn(notifier.clone().when_ready(
            stats,
            format!("load balancing {services} service(s); admin API on {admin}"),
        ));
        control_loop::run(&mut controller, &mut requests, &mut signals, SAMPLE_INTERVAL).await;
        ready.abort();
        // Withdrawn before anything stops; before a detach, the routers get
        // time to move the flows away.
        node.stop().await;
        let _ = announcer.await;
        if let Some(bgp) = bgp_config.as_ref().filter(|_| cleanup_on_exit) {
            info!(
                delay_ms = bgp.withdraw_delay.as_millis() as u64,
                "waiting bgp.withdraw_delay_ms before detaching"
            );
            tokio::time::sleep(bgp.withdraw_delay).await;
        }
        // Changes still queued are answered 503 ("stopping"), then requests
        // in progress get the server's grace period.
        drop(requests);
        // Trace streams end (and the trace goes off) before the server's
        // grace; the wait for the reader is a blocking one (a second at most).
        let stopping = trace.clone();
        let _ = tokio::task::spawn_blocking(move || stopping.stop()).await;
        let _ = stop_server.send(());
        let _ = server.await;
        anyhow::Ok(())
    }
    .await;
    drop(handle);
    let maps = task.await.context("the reconciler thread failed")?;
    // A data plane this run created and could not set up goes too.
    if cleanup_on_exit || (outcome.is_err() && !maps.adopted()) {
        maps.remove();
        info!("data plane detached and unpinned");
    } else {
        info!("controller stopped; the data plane keeps forwarding (lb-ctl down removes it)");
    }
    outcome
}
