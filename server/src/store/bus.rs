//! `EventBus`: in-process fan-out of committed session events to the subscribers of each session.
//!
//! One broadcast channel per session with subscribers, created on demand and dropped with its last subscriber,
//! so that publishing for a session nobody watches costs one map lookup. An event is shared by its subscribers
//! (`Arc`), not copied for each: a channel holds its last events, and a session may have thousands of watchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::SessionEvent;

/// Events a slow subscriber may fall behind by before it must catch up from the store. Every slot is allocated
/// when the channel is made, per watched session: a reply is a handful of events, so a few hundred is room for
/// dozens of exchanges.
const CHANNEL_CAPACITY: usize = 256;

/// What a subscriber receives: each committed (or transient) event once, shared with the other subscribers.
pub type LiveEvents = broadcast::Receiver<Arc<SessionEvent>>;

#[derive(Default)]
pub struct EventBus {
    channels: Mutex<HashMap<Uuid, broadcast::Sender<Arc<SessionEvent>>>>,
    /// The number of channels after the last sweep of abandoned ones.
    swept: std::sync::atomic::AtomicUsize,
}

impl EventBus {
    pub fn subscribe(&self, session_id: Uuid) -> LiveEvents {
        use std::sync::atomic::Ordering::Relaxed;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        // Channels whose subscribers all left are swept when the map has doubled since the last sweep: a sweep
        // visits every channel, so one per subscription made subscribing cost O(watched sessions).
        if channels.len() >= 2 * self.swept.load(Relaxed).max(64) {
            channels.retain(|_, tx| tx.receiver_count() > 0);
            self.swept.store(channels.len(), Relaxed);
        }
        channels
            .entry(session_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Whether anyone here listens to the session's events.
    pub fn has_subscribers(&self, session_id: Uuid) -> bool {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .get(&session_id)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    pub fn publish(&self, event: &SessionEvent) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = channels.get(&event.session_id) {
            if tx.send(Arc::new(event.clone())).is_err() {
                channels.remove(&event.session_id);
            }
        }
    }
}
