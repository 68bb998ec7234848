//! Outbound webhooks: signed deliveries of session events to the URLs an operator registered, at least once,
//! in order per session, retried with backoff. The queue is the store's (see `store`); this module signs
//! (`signature`), sends one attempt (`attempt`) and runs the background dispatcher (`dispatcher`).

mod attempt;
mod dispatcher;
pub mod signature;

use std::time::Duration;

use crate::domain::RetryPolicy;

pub use dispatcher::Dispatcher;

/// How deliveries are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    /// When failed deliveries are tried again, and when they are given up.
    pub retry: RetryPolicy,
    /// How long a claimed delivery is held by its dispatcher before another may take it over: well above
    /// `timeout`, so that a live dispatcher always records its outcome first.
    pub lease: chrono::Duration,
    /// Longest one attempt may take, from connecting to the receiver's status line.
    pub timeout: Duration,
    /// How often the queue is looked at when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// Attempts in flight at once (each to a different webhook or session).
    pub concurrency: usize,
    /// How long deliveries given up on are kept (for inspection) before they are purged.
    pub failed_retention: chrono::Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            lease: chrono::Duration::seconds(60),
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            concurrency: 16,
            failed_retention: chrono::Duration::days(7),
        }
    }
}
