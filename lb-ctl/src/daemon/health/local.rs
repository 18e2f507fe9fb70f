//! Probes this host could not make (see `probe::LocalFailure`): counted,
//! and logged once per cause rather than once per probe: out of file
//! descriptors, a thousand backends would otherwise log a thousand lines a
//! second, the log itself adding to the trouble.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tracing::warn;

use super::probe::{LocalCause, LocalFailure};

/// How often a cause that goes on is logged again, with its count.
pub const REMIND_EVERY: Duration = Duration::from_mins(1);

#[derive(Debug, Default)]
pub struct LocalFailures {
    /// Every local failure so far.
    total: u64,
    /// By cause: when it was last logged, and how many since.
    causes: BTreeMap<LocalCause, (Instant, u64)>,
}

impl LocalFailures {
    /// Counts `failure` of a probe of `backend`; logs it if its cause is new
    /// or was last logged `REMIND_EVERY` ago. Returns whether it logged.
    pub fn note(&mut self, backend: &str, failure: &LocalFailure, now: Instant) -> bool {
        self.total += 1;
        let due = match self.causes.get_mut(&failure.cause) {
            Some((logged, since)) if now.duration_since(*logged) < REMIND_EVERY => {
                *since += 1;
                return false;
            }
            Some((_, since)) => *since + 1,
            None => 1,
        };
        self.causes.insert(failure.cause, (now, 0));
        warn!(
            cause = %failure.cause,
            error = %failure.error,
            %backend,
            probes = due,
            "health probes cannot run: this host's fault, not the backends'; their states stay as they are"
        );
        true
    }

    /// Local failures so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn failure(errno: i32) -> LocalFailure {
        let error = io::Error::from_raw_os_error(errno);
        LocalFailure { cause: LocalCause::of(&error).unwrap(), error }
    }

    #[test]
    fn each_cause_is_logged_once_then_reminded() {
        let mut seen = LocalFailures::default();
        let t0 = Instant::now();
        let logged: Vec<bool> = (0..100)
            .map(|i| seen.note("b", &failure(libc::EMFILE), t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(logged.iter().filter(|l| **l).count(), 1, "once, not per probe");
        assert!(seen.note("b", &failure(libc::EADDRNOTAVAIL), t0), "another cause is logged");
        assert!(!seen.note("b", &failure(libc::ENFILE), t0 + Duration::from_secs(1)));
        assert!(seen.note("b", &failure(libc::EMFILE), t0 + REMIND_EVERY), "reminded");
        assert_eq!(seen.total(), 103);
    }
}
