//! The background sweeper: announces expiry warnings and expirations to subscribers as the clock crosses them,
//! restarts replies whose worker died, and purges sessions past their retention period and idempotency keys
//! past their 24 hours. Expiry itself is decided on every request from
//! `expiresAt` and the clock; the sweeper only announces and reclaims space.
//!
//! While the store is unavailable (a database outage), passes fail: the sweeper then waits longer between
//! them (bounded exponential backoff, up to `MAX_BACKOFF`), logs the outage once rather than every pass, and
//! goes back to its usual pace by itself with the first pass that succeeds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::SessionError;
use crate::outage::{Backoff, OutageLog};
use crate::service::SessionService;

/// Sessions deleted per transaction: small enough that requests queued behind a purge wait milliseconds.
pub const PURGE_BATCH: u32 = 250;
/// The background purge rests this many times as long as each batch took before the next one, so that a
/// large purge (a million sessions expiring at once) takes a fraction of the writer and the CPU instead of all
/// of it: batches run back to back make concurrent lookups wait on the writer, and a shorter rest was not enough
/// (BENCHMARKS.md has the figures).
pub const PURGE_REST_FACTOR: u32 = 4;
/// How often due warnings and expirations are announced: the lateness of a `warning` or `expired` event.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between announcement passes while they fail: the most a `warning` or `expired` event is
/// late (beyond the outage itself) once the store is back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub announced: u64,
    /// Sessions whose stalled replies were restarted.
    pub recovered: u64,
    pub purged: u64,
    /// Idempotency keys deleted.
    pub purged_keys: u64,
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

    /// One full pass at `now`: announcements, stalled-reply recovery, then the purges.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<SweepReport, SessionError> {
        let announced = self.service.announce_due(now).await?;
        let recovered = self.service.recover_stalled_replies(now).await?;
        let purged = self.service.purge_expired(now, PURGE_BATCH, 0).await?;
        let purged_keys = self
            .service
            .purge_idempotency_keys(now, PURGE_BATCH)
            .await?;
        Ok(SweepReport {
            announced,
            recovered,
            purged,
            purged_keys,
        })
    }

    /// Announces every second and purges every purge interval, until `stop` changes. The two run side by side:
    /// a long purge does not delay warnings and expirations.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut announce_stop = stop.clone();
            let announcing = async {
                let outage = OutageLog::new("sweeper (expiry announcements)");
                let mut backoff = Backoff::new(ANNOUNCE_INTERVAL, MAX_BACKOFF);
                let mut pause = ANNOUNCE_INTERVAL;
                loop {
                    // The pace of announcements, and the backoff while the store is away: production waits.
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = announce_stop.changed() => return,
                    }
                    let now = self.service.now();
                    let pass = async {
                        self.service.announce_due(now).await?;
                        self.service.recover_stalled_replies(now).await
                    };
                    match pass.await {
                        Ok(_) => {
                            outage.recovered();
                            backoff.reset();
                            pause = ANNOUNCE_INTERVAL;
                        }
                        Err(e) => {
                            report(&outage, &e);
                            pause = backoff.failed();
                        }
                    }
                }
            };
            let mut purge_stop = stop;
            let purging = async {
                let outage = OutageLog::new("sweeper (purge)");
                let mut purge = tokio::time::interval(self.purge_interval);
                purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = purge.tick() => {}
                        _ = purge_stop.changed() => return,
                    }
                    let now = self.service.now();
                    let purges = async {
                        let sessions = self
                            .service
                            .purge_expired(now, PURGE_BATCH, PURGE_REST_FACTOR)
                            .await?;
                        let keys = self
                            .service
                            .purge_idempotency_keys(now, PURGE_BATCH)
                            .await?;
                        Ok::<_, SessionError>((sessions, keys))
                    };
                    tokio::select! {
                        purged = purges => match purged {
                            Ok((sessions, keys)) => {
                                outage.recovered();
                                if let Err(e) = self.service.count_active_sessions(now).await {
                                    tracing::debug!(error = %e, "could not count the active sessions");
                                }
                                if sessions > 0 || keys > 0 {
                                    tracing::info!(
                                        purged = sessions,
                                        purged_keys = keys,
                                        "sweeper purged expired sessions and idempotency keys"
                                    );
                                }
                            }
                            Err(e) => report(&outage, &e),
                        },
                        _ = purge_stop.changed() => return,
                    }
                }
            };
            tokio::join!(announcing, purging);
        })
    }
}

/// A failed pass: an unavailable store is logged by the store itself (once per outage), so here only at debug
/// level; anything else once per burst of failures.
fn report(outage: &OutageLog, e: &SessionError) {
    match e {
        SessionError::Store(crate::store::StoreError::Unavailable(cause)) => {
            tracing::debug!(error = %cause, "sweeper pass failed: store unavailable");
        }
        e => {
            outage.failed(&format_args!("{e:?}"));
        }
    }
}
