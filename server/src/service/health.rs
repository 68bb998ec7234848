//! The health route's session counts, kept instead of counted per request: a count reads every retained
//! session, so an unauthenticated route that orchestrators poll must not run one per call. A request answers
//! with the last count while it is younger than [`FRESH`]; an older one (up to [`STALE`]) is still answered
//! while one background task counts again; past that (or before the first count) the request counts itself,
//! one at a time, so that callers never see figures more than [`STALE`] old. Ages are read on the service's
//! clock, so that a moved `MockClock` makes the next call count. Sessions created and deleted through this
//! instance adjust the kept count at once (a client that creates a session and then asks sees it counted);
//! expiries, and other instances' changes, show at the next count.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use crate::store::{SessionCounts, SessionFilter, SessionStore, StoreError};

/// Counts younger than this are answered as they are. A count reads every retained session (its cost at a
/// million sessions is in BENCHMARKS.md), so it is made at most this often while the route is polled.
const FRESH: Duration = Duration::seconds(5);
/// Counts older than this are never answered: the request counts again first.
const STALE: Duration = Duration::seconds(15);

#[derive(Default)]
pub struct HealthCounts {
    last: Mutex<Option<(DateTime<Utc>, SessionCounts)>>,
    /// Held while a count runs, in the background or in place: one at a time, and a request that must count
    /// waits for a running count's figures instead of making its own.
    counting: Arc<tokio::sync::Mutex<()>>,
}

impl HealthCounts {
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

    /// The counts at about `now` (see the module documentation); `retained_after` as the store's
    /// `count_sessions` takes it.
    pub async fn get(
        self: &Arc<Self>,
        store: &Arc<dyn SessionStore>,
        now: DateTime<Utc>,
        retained_after: DateTime<Utc>,
    ) -> Result<SessionCounts, StoreError> {
        if let Some((at, counts)) = self.last() {
            let age = now - at;
            if age < FRESH && age >= Duration::zero() {
                return Ok(counts);
            }
            if age < STALE && age >= Duration::zero() {
                self.refresh_in_background(store, now, retained_after);
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
        let counts = store
            .count_sessions(&SessionFilter::default(), now, retained_after)
            .await?;
        self.keep(now, counts);
        Ok(counts)
    }

    fn refresh_in_background(
        self: &Arc<Self>,
        store: &Arc<dyn SessionStore>,
        now: DateTime<Utc>,
        retained_after: DateTime<Utc>,
    ) {
        let Ok(counting) = self.counting.clone().try_lock_owned() else {
            return;
        };
        let (this, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            let _counting = counting;
            let counted = store
                .count_sessions(&SessionFilter::default(), now, retained_after)
                .await;
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
