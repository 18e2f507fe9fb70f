//! The controller's loop: the one task that owns the `Controller` moves it
//! on at each event, one at a time: a sample of the counters (at a fixed
//! interval), a backend's health changing, a change asked through the
//! admin API, a signal from outside (reload, stop). `lb-ctl run` wires the
//! signals to SIGHUP, SIGTERM and SIGINT; the API's tests drive the same
//! loop with none.
use std::{future::Future, time::Duration};

use tokio::sync::mpsc;

use super::controller::{Controller, Request};

/// What the outside asks of a running controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Read the config file again (`Controller::reload`).
    Reload,
    /// Leave the loop.
    Stop,
}

/// Where signals come from.
pub trait Signals {
    /// The next signal. Cancel-safe: when another event comes first, the
    /// loop drops this future and asks again, and no signal may be lost.
    fn next(&mut self) -> impl Future<Output = Signal>;

    /// The reload the last `Signal::Reload` asked for is done (applied or
    /// refused): `lb-ctl run` tells systemd it is ready again.
    fn reloaded(&mut self) {}
}

/// Runs `controller` until `signals` says stop: samples every
/// `sample_every`, applies health changes as they come, and answers each
/// request of `requests` once the change is made (or refused).
pub async fn run(
    controller: &mut Controller,
    requests: &mut mpsc::Receiver<Request>,
    signals: &mut impl Signals,
    sample_every: Duration,
) {
    // Counters, connections per backend (lc, the operator), and expiry.
    let mut sample = tokio::time::interval(sample_every);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sample.tick() => controller.sample().await,
            () = controller.next_health_change() => controller.health_changed().await,
            Some(request) = requests.recv() => {
                let answer = controller.change(request.change).await;
                let _ = request.reply.send(answer);
            }
            signal = signals.next() => match signal {
                Signal::Reload => {
                    controller.reload().await;
                    signals.reloaded();
                }
                Signal::Stop => break,
            },
        }
    }
}
