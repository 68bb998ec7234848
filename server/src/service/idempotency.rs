//! Idempotent requests in the service: claiming a request's key before its work, answering a retry with the
//! first response, waiting (bounded) for a first request still in flight, and settling the claim afterwards:
//! completed with the response on success, released on failure so that a retry does the work.
//!
//! Waiting: a retry on the instance serving the first request is woken as soon as that request settles (a
//! local `Notify`); one on another instance reads the record again at growing intervals (the store is what
//! the instances share), in both cases only until `IdempotencySettings::wait` has passed, then it is told the
//! key is in use (409).

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use chrono::Utc;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::SessionService;
use crate::domain::idempotency::Verdict;
use crate::domain::{
    ClaimOutcome, Fingerprint, IdempotencyKey, KeyClaim, SessionError, StoredResponse,
};
use crate::store::SessionStore;

/// How long a retry waits for the first request under its key by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// First and longest pause between two reads of a record that another instance may settle.
const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(250);

/// The idempotency settings of the service.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencySettings {
    /// How long a retry waits for the first request under its key before it is told the key is in use.
    pub wait: Duration,
    /// How long an in-flight claim holds: past it, its request is presumed dead (its instance stopped) and a
    /// retry takes the key over. Longer than any request runs.
    pub lease: chrono::Duration,
}

/// A request that carries an idempotency key, as the API identified it.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
}

/// How a request under a key goes on.
pub enum Begun {
    /// The key is this request's: do the work, then settle the claim.
    Claimed(Claim),
    /// The same request already succeeded: answer this again.
    Replay(StoredResponse),
}

/// A request's claim on its key. Settle it with `complete` or `release`; dropped unsettled (a panic in its
/// work), it is released in the background.
pub struct Claim {
    store: Arc<dyn SessionStore>,
    settled: Arc<Notify>,
    key: IdempotencyKey,
    owner: Uuid,
    done: bool,
}

impl Claim {
    /// Keeps `response` for retries. A store failure is logged and otherwise ignored: the work is done and its
    /// answer stands; the key stays in flight until its lease runs out.
    pub async fn complete(mut self, response: StoredResponse) {
        self.done = true;
        let completed = self
            .store
            .complete_idempotency_key(&self.key, self.owner, &response)
            .await;
        self.settle(completed, "complete");
    }

    /// Frees the key for a retry: this request failed.
    pub async fn release(mut self) {
        self.done = true;
        let released = self
            .store
            .release_idempotency_key(&self.key, self.owner)
            .await;
        self.settle(released, "release");
    }

    fn settle(&self, outcome: Result<bool, crate::store::StoreError>, what: &str) {
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    what,
                    "an idempotency claim was taken over before it settled"
                )
            }
            Err(e) => tracing::warn!(what, error = %e, "could not settle an idempotency claim"),
        }
        self.settled.notify_waiters();
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, settled) = (self.store.clone(), self.settled.clone());
        let (key, owner) = (self.key.clone(), self.owner);
        runtime.spawn(async move {
            let _ = store.release_idempotency_key(&key, owner).await;
            settled.notify_waiters();
        });
    }
}

impl SessionService {
    /// Claims the request's key, or finds the response to replay: a different body under the key is refused
    /// (`IdempotencyKeyReused`), and a first request still in flight is waited for, up to the configured wait
    /// (then `IdempotencyKeyInUse`).
    pub async fn begin_idempotent(
        &self,
        request: IdempotentRequest,
    ) -> Result<Begun, SessionError> {
        let deadline = Instant::now() + self.idempotency.wait;
        let mut poll = FIRST_POLL;
        let mut waited = false;
        loop {
            // Armed before the store is read, so that a settlement right after the read still wakes us.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let now = self.clock.now();
            // A retry that waited reads the record (cheap), and claims only once it is gone (released).
            let held = match waited {
                true => self.store.get_idempotency_key(&request.key, now).await?,
                false => None,
            };
            let held = match held {
                Some(record) => record,
                None => {
                    let claim = KeyClaim {
                        key: request.key.clone(),
                        fingerprint: request.fingerprint,
                        owner: Uuid::new_v4(),
                        now,
                        stale_before: stale_before(now, self.idempotency.lease),
                    };
                    match self.store.claim_idempotency_key(&claim).await? {
                        ClaimOutcome::Claimed => {
                            return Ok(Begun::Claimed(Claim {
                                store: self.store.clone(),
                                settled: self.settled.clone(),
                                key: claim.key,
                                owner: claim.owner,
                                done: false,
                            }))
                        }
                        ClaimOutcome::Held(record) => record,
                    }
                }
            };
            match held.judge(&request.fingerprint)? {
                Verdict::Replay(response) => return Ok(Begun::Replay(response)),
                Verdict::Wait => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::IdempotencyKeyInUse {
                    key: request.key.key,
                });
            }
            // Woken by a settlement on this instance; otherwise the record is read again after a pause.
            tokio::select! {
                _ = settled => {}
                _ = tokio::time::sleep(poll.min(left)) => {}
            }
            poll = (poll * 2).min(MAX_POLL);
            waited = true;
        }
    }

    /// Deletes the idempotency keys expired at `now`, in batches; how many.
    pub async fn purge_idempotency_keys(
        &self,
        now: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, SessionError> {
        let mut total = 0;
        loop {
            let n = self.store.purge_idempotency_keys(now, batch).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

fn stale_before(now: DateTime<Utc>, lease: chrono::Duration) -> DateTime<Utc> {
    crate::domain::timeout::add_saturating(now, -lease)
}
