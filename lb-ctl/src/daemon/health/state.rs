//! The rise/fall hysteresis of one backend (HAProxy `check rise N fall M`).
//!
//! A new backend is UNKNOWN and counts as up (it is in the scheduler's table,
//! as HAProxy starts servers UP); its first probe decides at once: a success
//! makes it UP, a failure DOWN. From then on it takes `fall` consecutive
//! failures to go DOWN and `rise` consecutive successes to come back UP, so a
//! flapping backend cannot flap the data plane faster than that.
use std::{
    fmt,
    time::{Duration, SystemTime},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Unknown,
    Up,
    Down,
}

impl Status {
    /// Whether the backend may take new flows.
    pub fn is_usable(self) -> bool {
        self != Self::Down
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "UNKNOWN",
            Self::Up => "UP",
            Self::Down => "DOWN",
        })
    }
}

/// One probe's outcome, kept as the backend's last check result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub ok: bool,
    /// What happened: `HTTP 200`, `timeout after 1000 ms`, `connection refused`…
    pub detail: String,
    pub at: SystemTime,
    pub duration: Duration,
    /// A script check's `dynamic_weight`: the weight its exit status gave
    /// (2 to 255); `None`: the backend's own weight.
    pub weight: Option<u32>,
}

/// A change of status, with the result that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub cause: CheckResult,
}

#[derive(Clone, Debug)]
pub struct Tracker {
    status: Status,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
    last: Option<CheckResult>,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            status: Status::Unknown,
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
            last: None,
        }
    }

    /// A tracker for a backend known to be DOWN (its check was replaced):
    /// it takes `rise` successes, not one, to come back.
    #[must_use]
    pub fn starting_down(mut self) -> Self {
        self.status = Status::Down;
        self
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn last(&self) -> Option<&CheckResult> {
        self.last.as_ref()
    }

    /// Folds in one probe result; returns the transition if the status changed.
    pub fn record(&mut self, result: CheckResult) -> Option<Transition> {
        if result.ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = match self.status {
            Status::Unknown if result.ok => Status::Up,
            Status::Unknown => Status::Down,
            Status::Up if self.failures >= self.fall => Status::Down,
            Status::Down if self.successes >= self.rise => Status::Up,
            same => same,
        };
        let from = self.status;
        self.status = next;
        self.last = Some(result.clone());
        (from != next).then_some(Transition { from, to: next, cause: result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool) -> CheckResult {
        CheckResult {
            ok,
            detail: if ok { "HTTP 200".into() } else { "timeout".into() },
            at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(1),
            weight: None,
        }
    }

    fn statuses(tracker: &mut Tracker, outcomes: &str) -> String {
        outcomes
            .chars()
            .map(|c| {
                tracker.record(result(c == '+'));
                match tracker.status() {
                    Status::Unknown => '?',
                    Status::Up => 'U',
                    Status::Down => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn the_first_probe_decides() {
        assert_eq!(statuses(&mut Tracker::new(2, 3), "+"), "U");
        assert_eq!(statuses(&mut Tracker::new(2, 3), "-"), "D");
        assert!(Tracker::new(2, 3).status().is_usable(), "unknown counts as up");
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_rise_successes_bring_it_back() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(statuses(&mut t, "+--+---++"), "UUUUUUDDU");
    }

    #[test]
    fn a_flapping_backend_does_not_flap_the_status() {
        let mut t = Tracker::new(2, 2);
        let seen = statuses(&mut t, "+-+-+-+-+-+-+-+-");
        assert!(seen.chars().all(|c| c == 'U'), "{seen}");
        let mut t = Tracker::new(2, 2);
        let seen = statuses(&mut t, "--+-+-+-+-+-+-");
        assert!(seen.chars().all(|c| c == 'D'), "{seen}");
    }

    #[test]
    fn a_replaced_check_of_a_down_backend_needs_rise_successes() {
        let mut t = Tracker::new(2, 3).starting_down();
        assert!(!t.status().is_usable());
        assert_eq!(statuses(&mut t, "++"), "DU");
    }

    #[test]
    fn transitions_carry_their_cause_and_the_last_result_is_kept() {
        let mut t = Tracker::new(1, 1);
        let up = t.record(result(true)).expect("unknown -> up");
        assert_eq!((up.from, up.to), (Status::Unknown, Status::Up));
        assert_eq!(t.record(result(true)), None);
        let down = t.record(result(false)).expect("up -> down");
        assert_eq!(down.cause.detail, "timeout");
        assert_eq!(t.last().map(|r| r.ok), Some(false));
    }
}
