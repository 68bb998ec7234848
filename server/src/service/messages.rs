//! Sending messages and reading the history.
//!
//! History pages are exact with millisecond cursors even when messages share a timestamp: a page never ends
//! inside a group of equal timestamps (such a group is left whole for the next page, or returned whole if it
//! fills the page by itself), so `before`/`after` set to a page's cursors can neither repeat nor skip a message.

use chrono::{DateTime, Utc};

use super::replies::ReplyWatch;
use super::{too_contended, SendMessage, SessionService, Transport, MAX_UPDATE_ATTEMPTS};
use crate::domain::validate;
use crate::domain::{Message, Session, SessionChange, SessionError, SessionEvent};
use crate::store::{MessageWindow, Order};

/// Default and largest page of `getMessages`.
pub const DEFAULT_MESSAGE_LIMIT: i64 = 50;
pub const MAX_MESSAGE_LIMIT: i64 = 100;

/// A stored user message and how its reply will arrive.
pub struct SendOutcome {
    pub transport: Transport,
    pub user_message: Message,
    /// The session after this message's renewal.
    pub session: Session,
    pub was_renewed: bool,
    pub now: DateTime<Utc>,
    /// How the reply goes, for transports that wait for it (`http`, `sse`).
    pub reply: Option<ReplyWatch>,
}

/// A page of history, newest first.
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// True only if more messages exist in the direction the page was read.
    pub has_more: bool,
}

impl SessionService {
    /// Stores the user's message (renewing the session), pending a reply behind the session's earlier ones,
    /// and makes sure a worker answers it. Checks, in order (after the body's decoding: transport, content
    /// type): session, content, metadata, attachments, the bound on unanswered messages, the message quota.
    pub async fn send(&self, id: &str, body: SendMessage) -> Result<SendOutcome, SessionError> {
        let now = self.clock.now();
        let mut current = self.live(id, now).await?;
        let content = body.content?;
        let metadata = std::sync::Arc::new(body.metadata?);
        let attachments = body.attachments?;
        // Backpressure: a client that sends faster than its agent answers gets told to wait, instead of growing
        // the queue without bound.
        if self.store.count_unanswered(current.id).await? >= u64::from(self.max_pending_messages) {
            return Err(SessionError::TooManyPending {
                limit: self.max_pending_messages,
            });
        }
        if self.max_messages_per_session > 0
            && may_hold(&current, self.max_messages_per_session)
            && self
                .store
                .count_messages(current.id, self.max_messages_per_session)
                .await?
                >= u64::from(self.max_messages_per_session)
        {
            return Err(SessionError::QuotaExceeded(format!(
                "Session '{}' holds {} messages, the most allowed: start a new session",
                current.id, self.max_messages_per_session
            )));
        }
        // Listen before storing, so that no step of the reply can happen before we watch for it.
        let mut feed = match body.transport {
            Transport::WebSocket => None,
            Transport::Http | Transport::Sse => Some(self.store.subscribe(current.id)),
        };
        for attempt in 0..MAX_UPDATE_ATTEMPTS {
            if attempt > 0 {
                current = self.live(id, now).await?;
            }
            let mut next = current.clone();
            let was_renewed = next.record_activity(now);
            next.version = current.version + 1;
            let message = Message {
                id: crate::domain::ids::new_id(now),
                seq: 0,
                session_id: current.id,
                author_id: current.user_id,
                is_agent: false,
                content: content.clone(),
                metadata: metadata.clone(),
                attachments: attachments.clone(),
                in_reply_to: None,
                created_at: now,
            };
            let mut events = vec![SessionEvent::message(&message)];
            if was_renewed {
                events.push(SessionEvent::session(&next, SessionChange::Renewed, now));
            }
            // The reply is claimed with the message (its worker starts on it without a write of its own), and
            // handed to a worker even if this request is dropped meanwhile (see `Replier::record`).
            let (recorded, next, mut message) = self
                .replies
                .record(next, current.version, message, events)
                .await?;
            if let Some(seq) = recorded {
                message.seq = seq;
                let agent_timeout = self.replies.agent_timeout();
                let reply = feed.take().map(|feed| {
                    ReplyWatch::new(feed, message.id, agent_timeout, self.stopping.clone())
                });
                return Ok(SendOutcome {
                    transport: body.transport,
                    user_message: message,
                    session: next,
                    was_renewed,
                    now,
                    reply,
                });
            }
        }
        Err(too_contended(id))
    }

    /// A page of a session's history. Without cursors: the newest messages. With `before`: the newest ones
    /// older than it. With only `after`: the oldest ones newer than it, so that paging forward is contiguous.
    pub async fn messages(
        &self,
        id: &str,
        limit: Option<i64>,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<MessagePage, SessionError> {
        // An empty cursor (`?before=`) is no cursor.
        let before = before
            .filter(|b| !b.is_empty())
            .map(|b| validate::cursor(b, "before"))
            .transpose()?;
        let after = after
            .filter(|a| !a.is_empty())
            .map(|a| validate::cursor(a, "after"))
            .transpose()?;
        let now = self.clock.now();
        let session = self.live(id, now).await?;
        let limit = limit
            .unwrap_or(DEFAULT_MESSAGE_LIMIT)
            .clamp(1, MAX_MESSAGE_LIMIT) as usize;
        let window = MessageWindow {
            after_ms: after,
            before_ms: before,
        };
        let order = if after.is_some() && before.is_none() {
            Order::OldestFirst
        } else {
            Order::NewestFirst
        };
        let mut rows = self
            .store
            .list_messages(session.id, window, order, limit as u32 + 1)
            .await?;
        let mut has_more = rows.len() > limit;
        if has_more {
            let edge = rows[limit - 1].created_at;
            if rows[limit].created_at == edge {
                // The page would end inside a group of equal timestamps: leave the group for the next page.
                rows.truncate(limit);
                rows.retain(|m| m.created_at != edge);
                if rows.is_empty() {
                    // The group alone fills the page: return all of it, then look beyond it.
                    let ms = edge.timestamp_millis();
                    let group = MessageWindow {
                        after_ms: Some(ms - 1),
                        before_ms: Some(ms + 1),
                    };
                    rows = self
                        .store
                        .list_messages(session.id, group, order, u32::MAX)
                        .await?;
                    let beyond = match order {
                        Order::NewestFirst => MessageWindow {
                            before_ms: Some(ms),
                            ..window
                        },
                        Order::OldestFirst => MessageWindow {
                            after_ms: Some(ms),
                            ..window
                        },
                    };
                    has_more = !self
                        .store
                        .list_messages(session.id, beyond, order, 1)
                        .await?
                        .is_empty();
                }
            } else {
                rows.truncate(limit);
            }
        }
        if order == Order::OldestFirst {
            rows.reverse();
        }
        Ok(MessagePage {
            messages: rows,
            has_more,
        })
    }
}

/// Whether the session may already hold `quota` messages, from its version alone. Each stored message is a
/// user message, whose storing raised the session's version by one, or the one reply to such a message, so a
/// session holds at most twice its version in messages. A count reads every message of the session, so only
/// a session that may be near its quota is counted.
fn may_hold(session: &Session, quota: u32) -> bool {
    session.version.saturating_mul(2) >= i64::from(quota)
}
