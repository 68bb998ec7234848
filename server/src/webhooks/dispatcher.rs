//! The webhook dispatcher: a background task (started by the server beside the sweeper, stopped at shutdown)
//! that claims due deliveries from the store's queue, sends each (`attempt.rs`) and records how it went. It
//! never runs inside a request.
//!
//! Every instance runs one; the queue is the store's, so they share it: a claim leases its rows, no two claims
//! hold a row at once, and a row whose dispatcher died is claimed again once its lease has passed. A claim takes
//! only the oldest pending delivery of each webhook and session, so a session's events reach a webhook in
//! order, each after the one before it succeeded (or was given up on).
//!
//! It wakes when this instance queues deliveries (the store's signal), when one of its attempts ends (the next
//! event of that session may go), and every `poll_interval` otherwise (deliveries queued by another instance,
//! retries coming due, leases of dead dispatchers passing). Due times are the injected clock's, so that tests
//! move a mock clock instead of waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::attempt::attempt;
use super::WebhookSettings;
use crate::agents::Backends;
use crate::clock::Clock;
use crate::domain::{Delivery, DeliveryOutcome};
use crate::outage::{Backoff, OutageLog};
use crate::service::SessionService;
use crate::store::{SessionStore, StoreError};

/// Longest pause between passes while the store fails.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How often failed deliveries past their retention are purged, and how many per transaction.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);
const PURGE_BATCH: u32 = 500;

/// What every attempt needs, shared by the attempts in flight.
struct Shared {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    backends: Backends,
    settings: WebhookSettings,
    recorded: watch::Sender<u64>,
}

pub struct Dispatcher {
    service: Arc<SessionService>,
    settings: WebhookSettings,
    recorded: watch::Sender<u64>,
}

impl Dispatcher {
    pub fn new(service: Arc<SessionService>, settings: WebhookSettings) -> Self {
        Self {
            service,
            settings,
            recorded: watch::Sender::new(0),
        }
    }

    /// How many attempts have ended with their outcome recorded (or found no longer theirs), changing after
    /// each: what an observer of the queue waits on, instead of polling the store.
    pub fn recorded(&self) -> watch::Receiver<u64> {
        self.recorded.subscribe()
    }

    /// Runs until `stop` changes (or its sender is gone) or the service starts shutting down; then lets the
    /// attempts in flight finish (each is bounded by the attempt timeout) and returns. An attempt cut short
    /// anyway (the caller gave up waiting) keeps its lease until it passes, and is then made again.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let shared = Arc::new(Shared {
            store: self.service.store().clone(),
            clock: self.service.clock(),
            backends: self.service.backends().clone(),
            settings: self.settings,
            recorded: self.recorded,
        });
        let stopping = self.service.stopping().clone();
        let queued = shared.store.deliveries_queued();
        let outage = OutageLog::new("webhook dispatcher");
        let mut backoff = Backoff::new(shared.settings.poll_interval, MAX_BACKOFF);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut last_purge: Option<Instant> = None;
        loop {
            if *stop.borrow() || stopping.is_cancelled() {
                break;
            }
            while in_flight.try_join_next().is_some() {}
            let mut pause = shared.settings.poll_interval;
            match claim_and_send(&shared, &mut in_flight).await {
                Ok(claimed) => {
                    outage.recovered();
                    backoff.reset();
                    if claimed > 0 {
                        continue;
                    }
                }
                Err(e) => {
                    report(&outage, &e);
                    pause = backoff.failed();
                }
            }
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_INTERVAL) {
                last_purge = Some(Instant::now());
                purge_failed(&shared).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = queued.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                changed = stop.changed() => if changed.is_err() { break },
                _ = stopping.cancelled() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
    }
}

/// Claims as many due deliveries as there is room for in flight and starts sending them; how many it claimed.
async fn claim_and_send(
    shared: &Arc<Shared>,
    in_flight: &mut JoinSet<()>,
) -> Result<usize, StoreError> {
    let room = shared.settings.concurrency.saturating_sub(in_flight.len());
    if room == 0 {
        return Ok(0);
    }
    let now = shared.clock.now();
    // A read first: polling must not take the store's write path (SQLite's writer) while nothing is due.
    match shared.store.next_delivery_at().await? {
        Some(due) if due <= now => {}
        _ => return Ok(0),
    }
    let lease_until = now + shared.settings.lease;
    let claimed = shared
        .store
        .claim_deliveries(now, lease_until, Uuid::new_v4(), room as u32)
        .await?;
    let count = claimed.len();
    for delivery in claimed {
        in_flight.spawn(send(shared.clone(), delivery));
    }
    Ok(count)
}

/// One attempt of a claimed delivery, and its outcome recorded.
async fn send(shared: Arc<Shared>, delivery: Delivery) {
    // The attempt's time signs it and schedules its retry: a retry is due its delay after the attempt began,
    // however long the receiver took to fail.
    let started = shared.clock.now();
    let sent = attempt(
        &shared.backends,
        &delivery,
        started.timestamp(),
        shared.settings.timeout,
    )
    .await;
    crate::metrics::webhook_delivery(sent.is_ok());
    let outcome = match sent {
        Ok(()) => DeliveryOutcome::Delivered,
        Err(error) => shared
            .settings
            .retry
            .after_failure(&delivery, started, error),
    };
    let (webhook, event, attempts) = (delivery.webhook_id, delivery.event_id, delivery.attempts);
    match &outcome {
        DeliveryOutcome::Delivered => {
            tracing::debug!(%webhook, %event, attempts, "webhook delivered");
        }
        DeliveryOutcome::Retry { at, error } => {
            tracing::debug!(%webhook, %event, attempts, %error, retry_at = %at, "webhook delivery failed; will retry");
        }
        DeliveryOutcome::Failed { error } => {
            tracing::warn!(%webhook, %event, attempts, %error, "webhook delivery failed for the last time; given up");
        }
    }
    match shared
        .store
        .finish_delivery(delivery.seq, delivery.claim, &outcome)
        .await
    {
        Ok(true) => {}
        // Our lease passed and another claim took the delivery, or the webhook was deleted meanwhile.
        Ok(false) => tracing::debug!(%webhook, %event, "webhook delivery no longer ours"),
        // The lease passes and the delivery is made again: at least once, never lost.
        Err(e) => {
            tracing::warn!(%webhook, %event, error = %e, "could not record a webhook delivery's outcome")
        }
    }
    shared.recorded.send_modify(|n| *n += 1);
}

/// Deletes failed deliveries past their retention, a batch at a time.
async fn purge_failed(shared: &Shared) {
    let before = shared.clock.now() - shared.settings.failed_retention;
    loop {
        match shared
            .store
            .purge_failed_deliveries(before, PURGE_BATCH)
            .await
        {
            Ok(n) if n == u64::from(PURGE_BATCH) => tokio::task::yield_now().await,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "purging failed webhook deliveries failed");
                return;
            }
        }
    }
}

/// A failed pass: an unavailable store logs the outage itself, so only at debug level here.
fn report(outage: &OutageLog, e: &StoreError) {
    match e {
        StoreError::Unavailable(cause) => {
            tracing::debug!(error = %cause, "webhook dispatcher pass failed: store unavailable");
        }
        e => {
            outage.failed(&format_args!("{e}"));
        }
    }
}
