//! The health route's session counts, kept instead of counted per request: a count reads every retained
//! session, so an unauthenticated route that orchestrators poll must not run one per call. A request answers
//! with the last count while it is younger than [`FRESH`]; an older one (up to [`STALE`]) is still answered
//! while one background task counts again; past that (or before the first count) the request counts itself,
//! one at a time, so that callers never see figures more than [`STALE`] old. Ages are read on the service's
//! clock, so that a moved `MockClock` makes the next call count. Sessions created and deleted through this
//! instance adjust the kept count at once (a client that creates a session and then asks sees it counted);
//! expiries, and other instances' changes, show at the next count.
//!
//! A keeper task also counts in the background whenever the last count is [`KEEPER_AGE`] old, from the
//! server's start (`warm_up`) and for as long as the route was asked within [`KEEP_WARM`]: so a poller never
//! waits for a count (at a million sessions one takes a quarter of a second, and every request that arrived
//! meanwhile waited for it), even when it polls less often than every [`STALE`], and its first call finds the
//! counts made. Only a call within the first count's time after the start, and the first after a longer
//! pause, count in place. Between [`FRESH`] and [`KEEPER_AGE`] only calls start counts, so a quiet route costs
//! a count every [`KEEPER_AGE`], not every [`FRESH`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

use crate::clock::Clock;
use crate::store::{SessionCounts, SessionFilter, SessionStore, StoreError};

/// Counts younger than this are answered as they are. A count reads every retained session (its cost at a
/// million sessions is in BENCHMARKS.md), so it is made at most this often while the route is polled.
const FRESH: Duration = Duration::seconds(5);
/// Counts older than this are never answered: the request counts again first.
const STALE: Duration = Duration::seconds(15);
/// How old the keeper lets a count get before it counts again: under [`STALE`] by one of its turns
/// ([`FRESH`]) and the count's own time, so that a call never finds the counts stale while it is on duty.
const KEEPER_AGE: Duration = Duration::seconds(8);
/// How long after the route was last asked the keeper goes on counting.
const KEEP_WARM: std::time::Duration = std::time::Duration::from_secs(600);

pub struct HealthCounts {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    /// The service's retention: sessions ended longer ago are not counted.
    retention: Duration,
    last: Mutex<Option<(DateTime<Utc>, SessionCounts)>>,
    /// Held while a count runs, in the background or in place: one at a time, and a request that must count
    /// waits for a running count's figures instead of making its own.
    counting: Arc<tokio::sync::Mutex<()>>,
    /// When the route was last asked, in whole seconds since `epoch` (stored only when the second changes:
    /// every call of a polled route reads it), and whether the keeper runs.
    epoch: Instant,
    asked: AtomicU64,
    keeping: AtomicBool,
}

impl HealthCounts {
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>, retention: Duration) -> Self {
        Self {
            store,
            clock,
            retention,
            last: Mutex::default(),
            counting: Arc::default(),
            epoch: Instant::now(),
            asked: AtomicU64::new(0),
            keeping: AtomicBool::new(false),
        }
    }

    fn last(&self) -> Option<(DateTime<Utc>, SessionCounts)> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep(&self, at: DateTime<Utc>, counts: SessionCounts) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // A slow count must not replace a younger one.
        if last.is_none_or(|(kept, _)| kept <= at) {
            *last = Some((at, counts));
        }
    }

    /// A session became active (`1`) or an active one was deleted (`-1`) through this instance.
    pub fn adjust_active(&self, delta: i64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counts)) = last.as_mut() {
            counts.active = counts.active.saturating_add_signed(delta);
            counts.total = counts.total.saturating_add_signed(delta.max(0));
        }
    }

    /// The counts at about `now` (see the module documentation).
    pub async fn get(self: &Arc<Self>, now: DateTime<Utc>) -> Result<SessionCounts, StoreError> {
        self.keep_warm();
        if let Some((at, counts)) = self.last() {
            let age = now - at;
            if age < FRESH && age >= Duration::zero() {
                return Ok(counts);
            }
            if age < STALE && age >= Duration::zero() {
                self.refresh_in_background(now);
                return Ok(counts);
            }
        }
        let _one_at_a_time = self.counting.lock().await;
        // Another request may have counted while this one waited.
        if let Some((at, counts)) = self.last() {
            if now - at < FRESH {
                return Ok(counts);
            }
        }
        let counts = self.count(now).await?;
        self.keep(now, counts);
        Ok(counts)
    }

    /// Counts now in the background and keeps the counts as a call would (for [`KEEP_WARM`]): the server does
    /// this as it starts, so that the route's first call finds figures instead of counting in place.
    pub fn warm_up(self: &Arc<Self>) {
        self.keep_warm();
        self.refresh_in_background(self.clock.now());
    }

    async fn count(&self, now: DateTime<Utc>) -> Result<SessionCounts, StoreError> {
        let retained_after = super::retained_after(now, self.retention);
        self.store
            .count_sessions(&SessionFilter::default(), now, retained_after)
            .await
    }

    /// Notes the call, and starts the keeper unless it runs.
    fn keep_warm(self: &Arc<Self>) {
        let second = self.epoch.elapsed().as_secs();
        if self.asked.load(Ordering::Relaxed) != second {
            self.asked.store(second, Ordering::Relaxed);
        }
        if self.keeping.load(Ordering::Acquire) || self.keeping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Weak: the keeper ends with the service.
        let this = Arc::downgrade(self);
        tokio::spawn(keep(this));
    }

    fn asked_lately(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        now.saturating_sub(self.asked.load(Ordering::Relaxed)) < KEEP_WARM.as_secs()
    }

    fn refresh_in_background(self: &Arc<Self>, now: DateTime<Utc>) {
        let Ok(counting) = self.counting.clone().try_lock_owned() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _counting = counting;
            let counted = this.count(now).await;
            match counted {
                Ok(counts) => this.keep(now, counts),
                // The next request past STALE counts in place and reports the failure.
                Err(e) => {
                    tracing::warn!(error = %e, "counting sessions for the health route failed")
                }
            }
        });
    }
}

/// The keeper (see the module documentation): every [`FRESH`], a background count when the kept one is
/// [`KEEPER_AGE`] old, until the route has not been asked for [`KEEP_WARM`] (or the service is gone).
async fn keep(counts: Weak<HealthCounts>) {
    loop {
        tokio::time::sleep(FRESH.to_std().unwrap_or_default()).await;
        let Some(counts) = counts.upgrade() else {
            return;
        };
        if !counts.asked_lately() {
            counts.keeping.store(false, Ordering::Release);
            // A call between the check and the store found the keeper running and started none.
            if !counts.asked_lately() || counts.keeping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        let now = counts.clock.now();
        if counts.last().is_none_or(|(at, _)| now - at >= KEEPER_AGE) {
            counts.refresh_in_background(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::clock::MockClock;
    use crate::domain::Session;
    use crate::store::fixtures::{half_hour, store_with_agent};

    /// Counts over a fresh SQLite store with one agent, on a `MockClock`.
    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<MockClock>,
        store: Arc<dyn SessionStore>,
        agent: Uuid,
        counts: Arc<HealthCounts>,
    }

    impl Fixture {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(MockClock::default());
            let (store, agent) = store_with_agent(&dir.path().join("health.db"), clock.now()).await;
            let store: Arc<dyn SessionStore> = Arc::new(store);
            let counts = Arc::new(HealthCounts::new(
                store.clone(),
                clock.clone(),
                Duration::hours(24),
            ));
            Self {
                _dir: dir,
                clock,
                store,
                agent: agent.id,
                counts,
            }
        }

        /// A session stored by another instance: only a count sees it.
        async fn store_elsewhere(&self, now: DateTime<Utc>) {
            let session = Session::new(
                self.agent,
                Uuid::new_v4(),
                Default::default(),
                half_hour(),
                now,
            );
            assert!(self.store.insert_session(&session).await.unwrap());
        }

        /// Yields to the background tasks until the kept counts satisfy `done`.
        async fn wait_for(&self, done: impl Fn(Option<DateTime<Utc>>) -> bool, what: &str) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !done(self.counts.last().map(|(at, _)| at)) {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::task::yield_now().await;
            }
        }
    }

    /// Asked less often than every STALE, the route still never counts in place: the keeper counted meanwhile.
    #[tokio::test(start_paused = true)]
    async fn the_keeper_counts_between_calls() {
        let f = Fixture::new().await;
        let t0 = f.clock.now();
        assert_eq!(f.counts.get(t0).await.unwrap().active, 0);
        f.store_elsewhere(t0).await;

        // Past STALE without a call, the keeper's next turn (tokio's paused clock moved to it) counts.
        let later = t0 + STALE + Duration::seconds(1);
        f.clock.set(later);
        tokio::time::sleep(FRESH.to_std().unwrap()).await;
        f.wait_for(
            |at| at.is_some_and(|at| at >= later),
            "the keeper did not count",
        )
        .await;
        assert_eq!(f.counts.last().unwrap().1.active, 1);
        // So the call answers those figures at once.
        assert_eq!(f.counts.get(later).await.unwrap().active, 1);
    }

    /// Warmed up (as the server does as it starts), the counts are made before the first call, which answers
    /// them instead of counting in place.
    #[tokio::test(start_paused = true)]
    async fn warmed_up_counts_answer_the_first_call() {
        let f = Fixture::new().await;
        let t0 = f.clock.now();
        f.counts.warm_up();
        f.wait_for(|at| at.is_some(), "the warm-up did not count")
            .await;
        // A session stored by another instance after that count: a count in place would see it.
        f.store_elsewhere(t0).await;
        assert_eq!(
            f.counts
                .get(t0 + Duration::seconds(1))
                .await
                .unwrap()
                .active,
            0,
            "the first call answered the warm-up's figures"
        );
    }
}
