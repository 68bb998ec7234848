//! The real-time events stream of a session, and the expiry announcements (`warning`, `expired`) that a
//! periodic pass makes when the clock crosses a session's thresholds.

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc};

use super::SessionService;
use crate::domain::{Notice, ReplayGap, SessionError, SessionEvent};

/// Events replayed or announced per store query.
const BATCH: u32 = 500;

/// What a subscriber receives: the session's events, and, where the stored log no longer reaches back to the
/// subscriber's position, a gap first.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Event(SessionEvent),
    /// Events after the subscriber's last one were pruned; the next events are the oldest kept.
    Gap(ReplayGap),
    /// The server is stopping: the last item, so that clients reconnect elsewhere instead of guessing.
    Stopping,
}

/// A subscriber's feed: replayed events first, then live ones, ending after `expired` or `deleted`.
pub type EventSubscription = mpsc::Receiver<FeedItem>;

impl SessionService {
    /// Subscribes to a session's events. With `last_event_id`, first replays every stored event after it, so a
    /// reconnecting client misses nothing still in the session's history; when some of those are no longer
    /// stored, a `FeedItem::Gap` says so before the oldest that are.
    pub async fn subscribe(
        &self,
        id: &str,
        last_event_id: Option<i64>,
    ) -> Result<EventSubscription, SessionError> {
        let now = self.clock.now();
        let session = self.live(id, now).await?;
        // Subscribe before reading the log: an event committed in between is then both replayed and live, and
        // the seq filter below drops the copy, instead of being in neither.
        let live = self.store.subscribe(session.id);
        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        let session_id = session.id;
        // At shutdown the stream ends, after telling the client so, so that the drain does not wait for it.
        let stopping = self.stopping.clone();
        let last_word = tx.clone();
        let feed = async move {
            let mut seen = last_event_id.unwrap_or(0);
            let mut live = live;
            if last_event_id.is_some() && !catch_up(&*store, session_id, &mut seen, &tx).await {
                return;
            }
            loop {
                let event = tokio::select! {
                    event = live.recv() => event,
                    _ = tx.closed() => return,
                };
                match event {
                    Ok(event) => {
                        if event.kind().is_internal() {
                            continue;
                        }
                        if let Some(seq) = event.seq {
                            if seq <= seen {
                                continue;
                            }
                            seen = seq;
                        }
                        let ends = event.kind().ends_stream();
                        if tx.send(FeedItem::Event(event)).await.is_err() || ends {
                            return;
                        }
                    }
                    // Fell behind the live feed: the stored log has everything that matters.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !catch_up(&*store, session_id, &mut seen, &tx).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = feed => {}
                _ = stopping.cancelled() => {
                    // Never waits: a client that stopped reading gets the end of its stream without it.
                    let _ = last_word.try_send(FeedItem::Stopping);
                }
            }
        });
        Ok(rx)
    }

    /// Restarts the answering of sessions whose replies stalled (their worker's instance stopped or crashed);
    /// returns how many sessions were kicked.
    pub async fn recover_stalled_replies(&self, now: DateTime<Utc>) -> Result<u64, SessionError> {
        let stalled = self
            .store
            .sessions_with_stalled_replies(now - self.replies.lease(), BATCH)
            .await?;
        for session_id in &stalled {
            self.replies.kick(*session_id);
        }
        Ok(stalled.len() as u64)
    }

    /// Announces every warning and expiry due at `now`; returns how many were announced.
    pub async fn announce_due(&self, now: DateTime<Utc>) -> Result<u64, SessionError> {
        let mut announced = 0;
        loop {
            let due = self.store.sessions_due_notice(now, BATCH).await?;
            let full = due.len() == BATCH as usize;
            for current in due {
                let mut next = current.clone();
                let (events, expired) = match next.take_due_notice(now) {
                    Some(Notice::Expired) => (vec![SessionEvent::expired(&next, now)], true),
                    Some(Notice::Warned) => (vec![SessionEvent::warning(&next, now)], false),
                    _ => continue,
                };
                next.version = current.version + 1;
                // Losing the race to a request is fine: the next pass sees the new state.
                if self
                    .store
                    .update_session(&next, current.version, events)
                    .await?
                {
                    announced += 1;
                    if expired {
                        crate::metrics::session_expired();
                    } else {
                        crate::metrics::expiry_warning();
                    }
                }
            }
            if !full {
                return Ok(announced);
            }
        }
    }
}

/// Sends the stored events after `seen`, announcing a gap first where events after it were pruned; false once
/// the subscriber is gone or the stream has ended.
async fn catch_up(
    store: &dyn crate::store::SessionStore,
    session_id: uuid::Uuid,
    seen: &mut i64,
    tx: &mpsc::Sender<FeedItem>,
) -> bool {
    loop {
        let replay = match store.replay_events(session_id, *seen, BATCH).await {
            Ok(replay) => replay,
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, "could not replay events");
                return false;
            }
        };
        // Checked on every batch: pruning can overtake a long replay too.
        if replay.pruned_through > *seen {
            let gap = ReplayGap {
                requested: *seen,
                oldest_available: replay.events.first().and_then(|e| e.seq),
            };
            if tx.send(FeedItem::Gap(gap)).await.is_err() {
                return false;
            }
        }
        let done = replay.events.len() < BATCH as usize;
        for event in replay.events {
            *seen = event.seq.unwrap_or(*seen);
            let ends = event.kind().ends_stream();
            if tx.send(FeedItem::Event(event)).await.is_err() || ends {
                return false;
            }
        }
        if done {
            return true;
        }
    }
}
