//! Living through a database outage: `Backoff` paces a background task's retries (bounded exponential), and
//! `OutageLog` reports a burst of failures with one line when it starts and one when it ends, instead of a line
//! per failed request or retry.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounded exponential backoff: each failure doubles the next delay, up to `max`; a success starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            next: base,
        }
    }

    /// The delay before the next attempt, after a failure (the one after that is twice as long, up to `max`).
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// One component's failures, logged per burst: the first failure of a burst is logged (with its cause, at
/// error level: it needs an operator), the following ones only at debug level, and the end of the burst once
/// (at info, with how long it lasted and how many failures it counted). A burst ends with the first success
/// after `QUIET` without failures, so that a store that half works (small writes fit, large ones do not) does
/// not log a line per alternation. A database that is down for an hour under load writes two lines, not
/// millions.
pub struct OutageLog {
    what: &'static str,
    /// Whether the last outcome reported was a failure.
    failing: AtomicBool,
    /// Whether a burst is open (the fast path of `recovered`, called on every success).
    open: AtomicBool,
    burst: Mutex<Option<Burst>>,
}

/// How long a component must go without failures before a success ends its burst.
pub const QUIET: Duration = Duration::from_secs(5);

struct Burst {
    since: Instant,
    last_failure: Instant,
    failures: u64,
}

impl OutageLog {
    /// `what` names the component in the log lines ("PostgreSQL", "SQLite writes", "sweeper").
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            failing: AtomicBool::new(false),
            open: AtomicBool::new(false),
            burst: Mutex::new(None),
        }
    }

    /// Whether the last outcome reported was a failure. One atomic load: cheap enough for every request.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Whether a burst of failures is going on: one has not yet been followed by `QUIET` and a success.
    pub fn in_burst(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Records a failure; logs it if it starts a burst, and returns whether it did.
    pub fn failed(&self, cause: &dyn Display) -> bool {
        let mut burst = self.burst.lock().unwrap_or_else(|e| e.into_inner());
        self.failing.store(true, Ordering::Release);
        let now = Instant::now();
        match burst.as_mut() {
            Some(burst) => {
                burst.failures += 1;
                burst.last_failure = now;
                tracing::debug!(component = self.what, error = %cause, "still failing");
                false
            }
            None => {
                *burst = Some(Burst {
                    since: now,
                    last_failure: now,
                    failures: 1,
                });
                self.open.store(true, Ordering::Release);
                tracing::error!(
                    component = self.what,
                    error = %cause,
                    "{} failing: {cause} (further failures are logged at debug level only, until it recovers)",
                    self.what
                );
                true
            }
        }
    }

    /// Records a success; if it ends the burst, logs that and returns how long the failures went on.
    pub fn recovered(&self) -> Option<Duration> {
        if self.failing.load(Ordering::Acquire) {
            self.failing.store(false, Ordering::Release);
        }
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let mut burst = self.burst.lock().unwrap_or_else(|e| e.into_inner());
        if burst.as_ref()?.last_failure.elapsed() < QUIET {
            return None;
        }
        let ended = burst.take()?;
        self.open.store(false, Ordering::Release);
        // From the first failure to the last one: how long it was failing, not how long until we noticed.
        let lasted = ended.last_failure - ended.since;
        tracing::info!(
            component = self.what,
            seconds = lasted.as_secs_f64(),
            failures = ended.failures,
            "{} recovered: {} failures over {:.1} s",
            self.what,
            ended.failures,
            lasted.as_secs_f64()
        );
        Some(lasted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_starts_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let delays: Vec<u128> = (0..6).map(|_| b.failed().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }

    #[test]
    fn a_burst_is_reported_once_and_ends_after_a_quiet_success() {
        let log = OutageLog::new("test store");
        assert!(!log.is_failing() && !log.in_burst());
        assert_eq!(log.recovered(), None, "no burst, nothing to end");
        assert!(
            log.failed(&"connection refused"),
            "the first failure starts a burst"
        );
        for _ in 0..1000 {
            assert!(
                !log.failed(&"connection refused"),
                "later ones are not logged"
            );
            // A success in between (a write that fit) neither ends the burst nor starts a new one.
            assert_eq!(log.recovered(), None);
            assert!(!log.is_failing() && log.in_burst());
        }
        // As if the last failure were `QUIET` ago.
        log.burst.lock().unwrap().as_mut().unwrap().last_failure -= QUIET;
        assert!(
            log.recovered().is_some(),
            "a success after a quiet spell ends it"
        );
        assert!(!log.is_failing() && !log.in_burst());
        assert_eq!(log.recovered(), None, "ended once");
        assert!(log.failed(&"disk full"), "a new burst is reported again");
    }
}
