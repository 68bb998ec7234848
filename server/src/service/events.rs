//! The real-time events stream of a session, and the expiry announcements (`warning`, `expired`) that a
//! periodic pass makes when the clock crosses a session's thresholds.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::SessionService;
use crate::domain::{Notice, ReplayGap, SessionError, SessionEvent};
use crate::store::{LiveEvents, SessionStore};

/// Events replayed or announced per store query.
const BATCH: u32 = 500;

/// What a subscriber receives: the session's events, and, where the stored log no longer reaches back to the
/// subscriber's position, a gap first.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// A committed or transient event, shared with the session's other subscribers.
    Event(Arc<SessionEvent>),
    /// Events after the subscriber's last one were pruned; the next events are the oldest kept.
    Gap(ReplayGap),
    /// The server is stopping: the last item, so that clients reconnect elsewhere instead of guessing.
    Stopping,
}

/// A subscriber's feed: replayed events first, then live ones, ending after `expired` or `deleted`. A stream
/// read by the subscriber's own connection: no task or queue of its own between the session's channel and the
/// socket (with thousands of subscribers, each would cost a wake-up per event and memory per subscriber).
pub type EventSubscription = BoxStream<'static, FeedItem>;

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
        // the seq filter drops the copy, instead of being in neither.
        let feed = Feed {
            live: self.store.subscribe(session.id),
            store: self.store.clone(),
            session_id: session.id,
            seen: last_event_id.unwrap_or(0),
            pending: VecDeque::new(),
            catching_up: last_event_id.is_some(),
            // At shutdown the stream ends, after telling the client so, so that the drain does not wait for it.
            stopping: self.stopping.clone(),
            ended: false,
        };
        Ok(stream::unfold(feed, |mut feed| async move {
            feed.next().await.map(|item| (item, feed))
        })
        .boxed())
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

/// One subscriber's position in its session's events.
struct Feed {
    live: LiveEvents,
    store: Arc<dyn SessionStore>,
    session_id: Uuid,
    /// The last event id handed out (or asked to resume from).
    seen: i64,
    /// Read from the store, not yet handed out.
    pending: VecDeque<FeedItem>,
    /// The stored log must be read from `seen` on before live events: on resume, and after falling behind.
    catching_up: bool,
    stopping: CancellationToken,
    ended: bool,
}

impl Feed {
    async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if matches!(&item, FeedItem::Event(e) if e.kind().ends_stream()) {
                    self.ended = true;
                    self.pending.clear();
                }
                return Some(item);
            }
            if self.ended {
                return None;
            }
            // Never waits on the client: one that stopped reading gets the end of its stream without it.
            let received = tokio::select! {
                biased;
                _ = self.stopping.cancelled() => {
                    self.ended = true;
                    return Some(FeedItem::Stopping);
                }
                read = read_stored(&*self.store, self.session_id, &mut self.seen, &mut self.pending),
                    if self.catching_up =>
                {
                    match read {
                        Some(more) => self.catching_up = more,
                        None => self.ended = true,
                    }
                    continue;
                }
                received = self.live.recv(), if !self.catching_up => received,
            };
            match received {
                Ok(event) => {
                    if event.kind().is_internal() {
                        continue;
                    }
                    if let Some(seq) = event.seq {
                        if seq <= self.seen {
                            continue;
                        }
                        self.seen = seq;
                    }
                    self.ended = event.kind().ends_stream();
                    return Some(FeedItem::Event(event));
                }
                // Fell behind the live feed: the stored log has everything that matters.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Reads one batch of the stored events after `seen` into `pending`, with a gap first where events after it
/// were pruned; whether more may follow, or None when the store cannot be read.
async fn read_stored(
    store: &dyn SessionStore,
    session_id: Uuid,
    seen: &mut i64,
    pending: &mut VecDeque<FeedItem>,
) -> Option<bool> {
    let replay = match store.replay_events(session_id, *seen, BATCH).await {
        Ok(replay) => replay,
        Err(e) => {
            tracing::warn!(session = %session_id, error = %e, "could not replay events");
            return None;
        }
    };
    // Checked on every batch: pruning can overtake a long replay too.
    if replay.pruned_through > *seen {
        pending.push_back(FeedItem::Gap(ReplayGap {
            requested: *seen,
            oldest_available: replay.events.first().and_then(|e| e.seq),
        }));
    }
    let more = replay.events.len() == BATCH as usize;
    for event in replay.events {
        *seen = event.seq.unwrap_or(*seen);
        pending.push_back(FeedItem::Event(Arc::new(event)));
    }
    Some(more)
}
