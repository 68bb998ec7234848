//! Bounds on open event streams: per session, so that one client cannot pile up connections on one session, and
//! in total, so that streams cannot take every connection the process can hold. A slot is held by its stream and
//! given back when the stream ends or its client leaves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use poem::http::header::RETRY_AFTER;
use poem::http::StatusCode;
use tokio::sync::watch;
use uuid::Uuid;

use super::error::{ApiError, ErrorCode};

/// The default bounds.
pub const DEFAULT_PER_SESSION: usize = 8;
pub const DEFAULT_TOTAL: usize = 512;

#[derive(Debug)]
pub struct StreamSlots {
    per_session: usize,
    total: usize,
    open: Mutex<Open>,
    /// The number of open streams, for whoever watches it (tests time how fast a departed client's slot
    /// comes back).
    count: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_session: HashMap<Uuid, usize>,
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<StreamSlots>,
    session: Uuid,
}

impl StreamSlots {
    pub fn new(per_session: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_session: per_session.max(1),
            total: total.max(1),
            open: Mutex::new(Open::default()),
            count: watch::Sender::new(0),
        })
    }

    /// A slot for a new stream of `session`, or the error that says which bound it hit.
    pub fn acquire(self: &Arc<Self>, session: Uuid) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.total {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                format!(
                    "The server has its maximum of {} open event streams; try again later",
                    self.total
                ),
            )
            .with_header(RETRY_AFTER, "5"));
        }
        let here = open.by_session.entry(session).or_insert(0);
        if *here >= self.per_session {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimitExceeded,
                format!(
                    "Session '{session}' already has its maximum of {} open event streams; close one first",
                    self.per_session
                ),
            )
            .with_header(RETRY_AFTER, "5"));
        }
        *here += 1;
        open.total += 1;
        self.count.send_replace(open.total);
        crate::metrics::event_stream(1.0);
        Ok(Slot {
            slots: self.clone(),
            session,
        })
    }

    /// Streams open now (all sessions).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Follows the number of open streams as it changes.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::event_stream(-1.0);
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        self.slots.count.send_replace(open.total);
        if let Some(n) = open.by_session.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                open.by_session.remove(&self.session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_per_session_and_in_total_and_slots_come_back() {
        let slots = StreamSlots::new(2, 3);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert_eq!(
            slots.acquire(a).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        let _b1 = slots.acquire(b).unwrap();
        assert_eq!(
            slots.acquire(b).unwrap_err().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop(a1);
        assert_eq!(slots.open(), 2);
        slots.acquire(a).expect("a slot came back");
    }
}
