//! Serving the admin API over TCP with bounds hyper has no defaults for:
//! a client that never finishes its request headers, or keeps an idle
//! connection open, is closed after `header_timeout` (hyper's header timer
//! also runs while a kept-alive connection waits for its next request), and
//! at most `max_connections` are kept at once.
//!
//! At the cap, a new connection takes the place of the one idle the
//! longest (no request in progress: it sent nothing yet, is still sending
//! its headers, or waits between requests), as nginx reuses its idle
//! keep-alive connections: a flood of idle connections then cannot lock
//! the operator, `/readyz` or keepalived out. If every kept connection is
//! in the middle of a request, the new one is closed at once.
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, warn};

/// Most admin connections kept at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers, and the wait for the next request on a kept-alive
/// connection, take at most this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in progress get this long to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// The connections being served.
#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Slot>,
}

struct Slot {
    /// Requests being answered on it.
    in_flight: usize,
    /// Since when it has had no request in progress.
    idle_since: Instant,
    /// Told to close to make room; no longer counted.
    evicted: bool,
    evict: Arc<Notify>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(registry: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    // The registry holds plain counters: a panic elsewhere leaves it usable.
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Room for one more connection: its id and what tells it to close, or
/// `None` if every kept connection is busy.
fn admit(registry: &Shared, cap: usize) -> Option<(u64, Arc<Notify>)> {
    let mut r = lock(registry);
    let kept = r.conns.values().filter(|s| !s.evicted).count();
    if kept >= cap {
        let oldest = r
            .conns
            .values_mut()
            .filter(|s| !s.evicted && s.in_flight == 0)
            .min_by_key(|s| s.idle_since)?;
        oldest.evicted = true;
        oldest.evict.notify_one();
    }
    let id = r.next_id;
    r.next_id += 1;
    let evict = Arc::new(Notify::new());
    let slot =
        Slot { in_flight: 0, idle_since: Instant::now(), evicted: false, evict: evict.clone() };
    r.conns.insert(id, slot);
    Some((id, evict))
}

/// A request in progress on connection `id`, until dropped.
struct Busy {
    registry: Shared,
    id: u64,
}

impl Busy {
    fn start(registry: &Shared, id: u64) -> Self {
        if let Some(slot) = lock(registry).conns.get_mut(&id) {
            slot.in_flight += 1;
        }
        Self { registry: registry.clone(), id }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(slot) = lock(&self.registry).conns.get_mut(&self.id) {
            slot.in_flight -= 1;
            if slot.in_flight == 0 {
                slot.idle_since = Instant::now();
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets requests in progress finish within the grace period,
/// and closes the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let registry = Shared::default();
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    warn!(error = %e, "admin API: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next() => continue,
        };
        let Some((id, evict)) = admit(&registry, limits.max_connections) else {
            debug!("admin API: every connection is busy; a new one is closed");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let busy = registry.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::start(&busy, id);
            let answer = hyper::service::Service::call(&service, request);
            async move {
                let answer = answer.await;
                drop(busy);
                answer
            }
        });
        let (registry, stopping) = (registry.clone(), stopping.clone());
        tasks.spawn(async move {
            connection(stream, service, limits, &evict, stopping).await;
            lock(&registry).conns.remove(&id);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(left = tasks.len(), "admin API: requests still in progress at shutdown are cut");
    }
}

/// One connection, until it ends, is evicted, or the server stops.
async fn connection<S>(
    stream: TcpStream,
    service: S,
    limits: Limits,
    evict: &Notify,
    mut stopping: watch::Receiver<bool>,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Once told to close: how long it may take. A request's handler may be
    // done while its answer (30 MB of metrics at the largest config) still
    // waits for a client that does not read: such a connection counts as
    // idle, and a graceful close would wait for it forever.
    let mut cut_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            // An idle connection closes at once; one in the middle of a
            // request (it began after the eviction was decided) finishes it,
            // within the grace period.
            () = evict.notified(), if cut_at.is_none() => {
                conn.as_mut().graceful_shutdown();
                cut_at = Some(Instant::now() + limits.shutdown_grace);
            }
            _ = stopping.changed(), if cut_at.is_none() => {
                conn.as_mut().graceful_shutdown();
                cut_at = Some(Instant::now() + limits.shutdown_grace);
            }
            () = tokio::time::sleep_until(cut_at.unwrap_or_else(Instant::now)), if cut_at.is_some() => {
                debug!("admin API: a connection told to close did not within the grace period; cut");
                return;
            }
        }
    }
}
