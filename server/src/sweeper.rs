//! The background sweeper: purges sessions past their retention period. Expiry itself is decided on every
//! request from `expiresAt` and the clock; the sweeper only reclaims space.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::SessionError;
use crate::service::SessionService;

/// Sessions deleted per transaction: small enough that requests queued behind a purge wait milliseconds.
pub const PURGE_BATCH: u32 = 1000;

pub struct Sweeper {
    service: Arc<SessionService>,
    interval: Duration,
}

impl Sweeper {
    pub fn new(service: Arc<SessionService>, interval: Duration) -> Self {
        Self { service, interval }
    }

    /// One pass at `now`; returns how many sessions were purged.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<u64, SessionError> {
        self.service.purge_expired(now, PURGE_BATCH).await
    }

    /// Runs a pass every interval until `stop` changes.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        match self.run_once(self.service.now()).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(purged = n, "sweeper purged expired sessions"),
                            Err(e) => tracing::warn!(error = %e, "sweeper pass failed"),
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    }
}
