//! Announcing events through PostgreSQL: NOTIFY payloads on the one channel of all instances (`Wire`), split
//! or sent by reference when too large for a notification, and the publisher task that sends transient events
//! (reply chunks) in `publish` order.
//!
//! NOTIFY payloads must stay under 8000 bytes. A larger persisted event is announced by its seq and fetched by
//! the listeners; a larger transient event is split into parts that the listeners join again, so chunks of any
//! size arrive whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgPool, Postgres};
use sqlx::Executor;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::connection::{is_unavailable, Reachability};
use crate::domain::SessionEvent;
use crate::store::{schema, to_ms};

/// The one NOTIFY channel of all instances sharing the database.
pub const CHANNEL: &str = "agent_sessions_events";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more (default build).
const MAX_PAYLOAD: usize = 7999;
/// Escaped text per part of a split transient event; leaves room for the part's own fields.
const PART_TEXT: usize = 7800;

/// A NOTIFY payload. A persisted event goes whole when it fits, else as a reference the listeners fetch by
/// seq; a transient event (not in any table) that does not fit is split into parts, sent in one statement so
/// that they arrive together and in order, and joined again by the listener.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Wire {
    Event {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        session: Uuid,
        kind: String,
        at: i64,
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<Ack>,
    },
    Ref {
        seq: i64,
        session: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<Ack>,
    },
    Part {
        id: Uuid,
        index: u32,
        count: u32,
        text: String,
    },
}

/// Names one write of one store, so that its listener can tell the writer when the write's events are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub store: Uuid,
    pub n: u64,
}

enum Outgoing {
    Event(Box<SessionEvent>),
    /// Answered once every event queued before it has been sent.
    Flush(oneshot::Sender<()>),
}

/// The sending side of the publisher task: transient events go out through the database, not to the local
/// bus, so that the listener delivers them here as everywhere else.
pub struct Publisher {
    /// Transient events waiting for the publisher task, in `publish` order.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Transient events handed to `publish` and not yet sent; lets writes skip the flush when it is zero.
    pending: Arc<AtomicU64>,
}

impl Publisher {
    /// Starts the publisher task. It stops when the `Publisher` is dropped (its queue closes) or aborted.
    pub fn start(pool: PgPool, reach: Arc<Reachability>) -> (Self, JoinHandle<()>) {
        let (outgoing, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run_publisher(pool, reach, queue, pending.clone()));
        (Self { outgoing, pending }, task)
    }

    /// Queues a transient event; if the database cannot be reached it is dropped (transient events are live
    /// only, and nothing waits for them).
    pub fn publish(&self, event: &SessionEvent) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self
            .outgoing
            .send(Outgoing::Event(Box::new(event.clone())))
            .is_err()
        {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until every transient event published so far has been sent.
    pub async fn flush(&self) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let (done, flushed) = oneshot::channel();
        if self.outgoing.send(Outgoing::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// Queues NOTIFYs for `events`, the last one carrying `ack`; PostgreSQL delivers them when the surrounding
/// transaction commits.
pub async fn notify<'e, E>(
    conn: E,
    events: &[SessionEvent],
    ack: Option<Ack>,
) -> Result<(), sqlx::Error>
where
    E: Executor<'e, Database = Postgres>,
{
    let last = events.len().saturating_sub(1);
    let payloads: Vec<String> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| encode(e, ack.filter(|_| i == last)))
        .collect();
    notify_payloads(conn, payloads).await
}

async fn notify_payloads<'e, E>(conn: E, payloads: Vec<String>) -> Result<(), sqlx::Error>
where
    E: Executor<'e, Database = Postgres>,
{
    if payloads.is_empty() {
        return Ok(());
    }
    // One round trip for all of them; unnest yields the array in order, and the notifications of one
    // transaction are queued in the order they were made.
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(conn)
        .await
        .map(drop)
}

/// The payloads that announce one event (see [`Wire`]).
fn encode(event: &SessionEvent, ack: Option<Ack>) -> Vec<String> {
    let whole = Wire::Event {
        seq: event.seq,
        session: event.session_id,
        kind: schema::event_kind(event).to_owned(),
        at: to_ms(event.at),
        data: schema::event_data_value(event),
        ack,
    };
    let whole = serde_json::to_string(&whole).unwrap_or_default();
    if whole.len() <= MAX_PAYLOAD {
        return vec![whole];
    }
    if let Some(seq) = event.seq {
        let reference = Wire::Ref {
            seq,
            session: event.session_id,
            ack,
        };
        return vec![serde_json::to_string(&reference).unwrap_or_default()];
    }
    let pieces = split_for_json(&whole, PART_TEXT);
    let id = Uuid::new_v4();
    let count = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(index, text)| {
            serde_json::to_string(&Wire::Part {
                id,
                index: index as u32,
                count,
                text: text.to_owned(),
            })
            .unwrap_or_default()
        })
        .collect()
}

/// Splits `s` at char boundaries into pieces whose JSON-escaped form is at most `budget` bytes.
fn split_for_json(s: &str, budget: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if size + escaped > budget && i > start {
            pieces.push(&s[start..i]);
            (start, size) = (i, 0);
        }
        size += escaped;
    }
    if start < s.len() {
        pieces.push(&s[start..]);
    }
    pieces
}

/// Sends transient events in the order they were published, batching whatever is queued into one statement.
/// While the database is away they are dropped (they are live only), each batch after at most the pool's
/// acquire timeout; the outage is logged once, by `Reachability::outage`.
async fn run_publisher(
    pool: PgPool,
    reach: Arc<Reachability>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    pending: Arc<AtomicU64>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let mut payloads = Vec::new();
        let mut flushes = Vec::new();
        let mut sent = 0;
        for item in batch.drain(..) {
            match item {
                Outgoing::Event(event) => {
                    payloads.extend(encode(&event, None));
                    sent += 1;
                }
                Outgoing::Flush(done) => flushes.push(done),
            }
        }
        if let Err(e) = notify_payloads(&pool, payloads).await {
            if is_unavailable(&e) {
                reach.outage.failed(&e);
                tracing::debug!(error = %e, dropped = sent, "could not send transient events");
            } else {
                tracing::warn!(error = %e, dropped = sent, "could not send transient events");
            }
        }
        pending.fetch_sub(sent, Ordering::AcqRel);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::from_ms;

    fn awkward(len: usize) -> String {
        "a\"b\\c\nd\u{1}e€f🙂g\u{7f}"
            .chars()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn split_pieces_fit_once_escaped_and_rejoin() {
        for len in [0, 1, 100, 7_999, 8_000, 50_000] {
            let text = awkward(len);
            let pieces = split_for_json(&text, PART_TEXT);
            assert_eq!(pieces.concat(), text);
            for piece in &pieces {
                let escaped = serde_json::to_string(piece).unwrap();
                assert!(escaped.len() - 2 <= PART_TEXT, "{} bytes", escaped.len());
            }
        }
    }

    #[test]
    fn every_payload_fits_a_notify() {
        let session = Uuid::new_v4();
        let ack = Some(Ack {
            store: Uuid::new_v4(),
            n: u64::MAX,
        });
        for len in [10, 7_900, 8_000, 100_000] {
            let chunk =
                SessionEvent::chunk(session, session, session, &awkward(len), 3, from_ms(0));
            let payloads = encode(&chunk, ack);
            assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
            // Joined again, the parts are the event with its ack.
            let whole = if payloads.len() == 1 {
                payloads[0].clone()
            } else {
                payloads
                    .iter()
                    .map(|p| match serde_json::from_str::<Wire>(p).unwrap() {
                        Wire::Part { text, .. } => text,
                        other => panic!("not a part: {other:?}"),
                    })
                    .collect()
            };
            match serde_json::from_str::<Wire>(&whole).unwrap() {
                Wire::Event { data, ack: a, .. } => {
                    assert_eq!(data, chunk.stored_data());
                    assert_eq!(a, ack);
                }
                other => panic!("not an event: {other:?}"),
            }

            // Stored events have a seq.
            let mut stored = chunk.clone();
            stored.seq = Some(42);
            let payloads = encode(&stored, ack);
            assert_eq!(
                payloads.len(),
                1,
                "a stored event is fetched by seq when large"
            );
            assert!(payloads[0].len() <= MAX_PAYLOAD);
        }
    }
}
