//! The background sweeper: announces expiry warnings and expirations to subscribers as the clock crosses them,
//! restarts replies whose worker died, and purges sessions past their retention period. Expiry itself is decided on every request from
//! `expiresAt` and the clock; the sweeper only announces and reclaims space.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::SessionError;
use crate::service::SessionService;

/// Sessions deleted per transaction: small enough that requests queued behind a purge wait milliseconds.
pub const PURGE_BATCH: u32 = 250;
/// The background purge rests this many times as long as each batch took before the next one, so that a
/// large purge (a million sessions expiring at once) takes a fraction of the writer and the CPU instead of all
/// of it: run back to back, batches made the p99 of concurrent lookups 3.3 × its usual value, with a rest twice
/// as long 2.3 to 2.9 × (BENCHMARKS.md).
pub const PURGE_REST_FACTOR: u32 = 4;
/// How often due warnings and expirations are announced: the lateness of a `warning` or `expired` event.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub announced: u64,
    /// Sessions whose stalled replies were restarted.
    pub recovered: u64,
    pub purged: u64,
}

pub struct Sweeper {
    service: Arc<SessionService>,
    purge_interval: Duration,
}

impl Sweeper {
    pub fn new(service: Arc<SessionService>, purge_interval: Duration) -> Self {
        Self {
            service,
            purge_interval,
        }
    }

    /// One full pass at `now`: announcements, stalled-reply recovery, then the purge.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<SweepReport, SessionError> {
        let announced = self.service.announce_due(now).await?;
        let recovered = self.service.recover_stalled_replies(now).await?;
        let purged = self.service.purge_expired(now, PURGE_BATCH, 0).await?;
        Ok(SweepReport {
            announced,
            recovered,
            purged,
        })
    }

    /// Announces every second and purges every purge interval, until `stop` changes. The two run side by side:
    /// a long purge does not delay warnings and expirations.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut announce_stop = stop.clone();
            let announcing = async {
                let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
                announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = announce.tick() => {
                            let now = self.service.now();
                            if let Err(e) = self.service.announce_due(now).await {
                                tracing::warn!(error = %e, "announcing expiries failed");
                            }
                            if let Err(e) = self.service.recover_stalled_replies(now).await {
                                tracing::warn!(error = %e, "recovering stalled replies failed");
                            }
                        }
                        _ = announce_stop.changed() => return,
                    }
                }
            };
            let mut purge_stop = stop;
            let purging = async {
                let mut purge = tokio::time::interval(self.purge_interval);
                purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = purge.tick() => {}
                        _ = purge_stop.changed() => return,
                    }
                    let now = self.service.now();
                    tokio::select! {
                        purged = self.service.purge_expired(now, PURGE_BATCH, PURGE_REST_FACTOR) => match purged {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(purged = n, "sweeper purged expired sessions"),
                            Err(e) => tracing::warn!(error = %e, "purge failed"),
                        },
                        _ = purge_stop.changed() => return,
                    }
                }
            };
            tokio::join!(announcing, purging);
        })
    }
}
