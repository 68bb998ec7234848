//! A session's whole message history as the SQLite store's row cache keeps it (`History`), and the pages of
//! `list_messages` answered from it.
//!
//! Why: getMessages read its page's rows through SQLite on every request (the index walk, a table lookup and
//! the decoding of each message and its JSON metadata: most of that route's samples, see BENCHMARKS.md), while
//! a session's messages change only when one is added or the session goes. Only short histories are kept
//! whole; a longer one is remembered as such, and its pages are read from SQLite as before.

use chrono::{DateTime, Utc};

use crate::domain::Message;
use crate::store::{MessageWindow, Order};

/// Longest history kept whole.
pub const MOST_KEPT: usize = 100;

/// What the cache knows of a session's messages.
pub enum History {
    /// Every message, `(created_at, seq)` ascending, and roughly how many bytes they take.
    Whole { messages: Vec<Message>, bytes: u64 },
    /// More than `MOST_KEPT` messages: pages come from SQLite.
    TooLong,
}

impl History {
    /// From a read of the session's first `MOST_KEPT + 1` messages in `(created_at, seq)` order.
    pub fn of(messages: Vec<Message>) -> Self {
        if messages.len() > MOST_KEPT {
            return History::TooLong;
        }
        let bytes = messages.iter().map(approximate_size).sum();
        History::Whole { messages, bytes }
    }

    /// Roughly the memory it holds, for the cache's bound.
    pub fn bytes(&self) -> u64 {
        match self {
            History::Whole { bytes, .. } => *bytes,
            History::TooLong => 64,
        }
    }

    /// Up to `limit` messages inside `window`, in `order`, as the SQL query of `list_messages` gives them; None
    /// when the history is not kept whole.
    pub fn page(&self, window: MessageWindow, order: Order, limit: u32) -> Option<Vec<Message>> {
        let History::Whole { messages, .. } = self else {
            return None;
        };
        let ms = |t: DateTime<Utc>| t.timestamp_millis();
        let inside = |m: &&Message| {
            window.after_ms.is_none_or(|after| ms(m.created_at) > after)
                && window
                    .before_ms
                    .is_none_or(|before| ms(m.created_at) < before)
        };
        let limit = limit as usize;
        Some(match order {
            Order::OldestFirst => messages
                .iter()
                .filter(inside)
                .take(limit)
                .cloned()
                .collect(),
            Order::NewestFirst => messages
                .iter()
                .rev()
                .filter(inside)
                .take(limit)
                .cloned()
                .collect(),
        })
    }
}

/// A message's memory, roughly: its fixed part, its text and its metadata and attachments as JSON would spell them.
fn approximate_size(message: &Message) -> u64 {
    let json = |value: &serde_json::Value| value.to_string().len();
    let metadata: usize = message
        .metadata
        .iter()
        .map(|(key, value)| key.len() + json(value))
        .sum();
    let attachments = message
        .attachments
        .as_ref()
        .map_or(0, |a| serde_json::to_string(a).map_or(0, |s| s.len()));
    (std::mem::size_of::<Message>() + message.content.len() + metadata * 2 + attachments * 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn message(seq: i64, at_ms: i64) -> Message {
        Message {
            id: Uuid::new_v4(),
            seq,
            session_id: Uuid::nil(),
            author_id: Uuid::nil(),
            is_agent: false,
            content: format!("m{seq}"),
            metadata: Default::default(),
            attachments: None,
            in_reply_to: None,
            created_at: DateTime::from_timestamp_millis(at_ms).unwrap(),
        }
    }

    fn seqs(page: Option<Vec<Message>>) -> Vec<i64> {
        page.unwrap().iter().map(|m| m.seq).collect()
    }

    /// Pages answer as the SQL does: the window's bounds exclusive, equal times in seq order, both orders.
    #[test]
    fn pages_follow_the_window_the_order_and_the_limit() {
        let history = History::of(vec![
            message(1, 10),
            message(2, 20),
            message(3, 20),
            message(4, 30),
            message(5, 40),
        ]);
        let all = MessageWindow {
            after_ms: None,
            before_ms: None,
        };
        assert_eq!(seqs(history.page(all, Order::NewestFirst, 3)), [5, 4, 3]);
        assert_eq!(seqs(history.page(all, Order::OldestFirst, 3)), [1, 2, 3]);
        let between = MessageWindow {
            after_ms: Some(10),
            before_ms: Some(40),
        };
        assert_eq!(
            seqs(history.page(between, Order::NewestFirst, 10)),
            [4, 3, 2]
        );
        assert_eq!(seqs(history.page(between, Order::OldestFirst, 2)), [2, 3]);
        let before = MessageWindow {
            after_ms: None,
            before_ms: Some(20),
        };
        assert_eq!(seqs(history.page(before, Order::NewestFirst, 10)), [1]);
        assert!(history.bytes() > 0);
    }

    /// A history longer than `MOST_KEPT` is not kept: its pages come from SQLite.
    #[test]
    fn a_long_history_is_not_kept() {
        let long = History::of((0..=MOST_KEPT as i64).map(|i| message(i, i)).collect());
        let all = MessageWindow {
            after_ms: None,
            before_ms: None,
        };
        assert!(long.page(all, Order::NewestFirst, 1).is_none());
        let short = History::of((0..MOST_KEPT as i64).map(|i| message(i, i)).collect());
        assert_eq!(short.page(all, Order::NewestFirst, 1).unwrap().len(), 1);
    }
}
