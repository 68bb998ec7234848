//! Time source: the `Clock` trait, the real `SystemClock`, and the `MockClock` that tests move by hand.
//!
//! Every operation reads the clock once and passes `now` down, so expiry decisions inside one request agree
//! with each other, and tests can cross timeout boundaries exactly without sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Duration, DurationRound, TimeDelta, Utc};

/// A source of the current time, truncated to milliseconds (the precision of the wire format and the store).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
    fn now(&self) -> DateTime<Utc> {
        // Built from whole milliseconds rather than truncated after: `duration_trunc` converts to and from the
        // calendar again, and every request reads this clock a few times.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|since| {
                let secs = i64::try_from(since.as_secs()).ok()?;
                DateTime::from_timestamp(secs, since.subsec_millis() * 1_000_000)
            })
            .unwrap_or_else(|| truncate_ms(Utc::now()))
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct MockClock {
    now: Mutex<DateTime<Utc>>,
}

impl MockClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(truncate_ms(start)),
        }
    }

    /// Moves time forward (or backward, with a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = truncate_ms(*now + by);
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = truncate_ms(to);
    }
}

impl Default for MockClock {
    /// 2025-01-01T00:00:00Z: a fixed, readable start for tests.
    fn default() -> Self {
        Self::new(DateTime::from_timestamp(1_735_689_600, 0).expect("valid timestamp"))
    }
}

impl Clock for MockClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_clock_moves_only_when_told() {
        let clock = MockClock::default();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::minutes(5));
        assert_eq!(clock.now() - t0, Duration::minutes(5));
    }

    #[test]
    fn times_are_millisecond_precision() {
        let clock = MockClock::new(DateTime::from_timestamp(10, 123_456_789).unwrap());
        assert_eq!(clock.now().timestamp_subsec_nanos(), 123_000_000);
    }

    /// The wall clock is read in whole milliseconds, between the truncated readings around it.
    #[test]
    #[allow(clippy::disallowed_methods)] // compared with the wall clock itself
    fn the_system_clock_reads_whole_milliseconds_of_now() {
        for _ in 0..1000 {
            let before = truncate_ms(Utc::now());
            let now = SystemClock.now();
            let after = Utc::now();
            assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0, "{now:?}");
            assert!(
                before <= now && now <= after,
                "{before:?} {now:?} {after:?}"
            );
        }
    }
}
