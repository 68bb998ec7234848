//! The SQLite store's webhook statements: registering and deleting webhooks, queueing an event's deliveries
//! inside the writer's transaction that commits it, and the delivery queue's claims, outcomes and purge. The
//! writer applies one write at a time, so a claim's select-then-update cannot race another claim.

use std::cell::Cell;
use std::sync::LazyLock;

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::rows::{self as sqlite_rows, Params};
use crate::domain::{Delivery, DeliveryOutcome, OutboundEvent, Session, SessionEvent, Webhook};
use crate::store::rows;
use crate::store::schema::{
    insert, queue_deliveries, DELIVERY_COLUMNS, DELIVERY_FAILED, DELIVERY_PENDING, QUEUE_HEAD,
    WEBHOOK_COLUMNS,
};

pub fn insert_webhook(conn: &Connection, webhook: &Webhook) -> rusqlite::Result<usize> {
    forget_any_webhook();
    static SQL: LazyLock<String> = LazyLock::new(|| insert('?', "webhooks", WEBHOOK_COLUMNS, ""));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_webhook(&mut args, webhook)?;
    args.execute()
}

/// Deletes the webhook and its deliveries; the rows deleted from `webhooks` (0 or 1).
pub fn delete_webhook(conn: &Connection, id: Uuid) -> rusqlite::Result<usize> {
    forget_any_webhook();
    conn.prepare_cached("DELETE FROM webhook_deliveries WHERE webhook_id = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("DELETE FROM webhooks WHERE id = ?1")?
        .execute(params![id])
}

/// Queues `event` for every webhook that wants it; how many deliveries that made.
pub fn queue(conn: &Connection, event: &OutboundEvent) -> rusqlite::Result<u64> {
    static SQL: LazyLock<String> = LazyLock::new(|| queue_deliveries('?', ""));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_outbound(&mut args, event)?;
    Ok(args.execute()? as u64)
}

/// Whether any webhook is registered. Asked before an event's delivery body is built: most servers have none,
/// and building and offering every event's body to an empty table was a visible share of the writer's work per
/// session created or message sent.
fn any_webhook(conn: &Connection) -> rusqlite::Result<bool> {
    if let Some(known) = ANY_WEBHOOK.get() {
        return Ok(known);
    }
    let any = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM webhooks)")?
        .query_row([], |row| row.get(0))?;
    ANY_WEBHOOK.set(Some(any));
    Ok(any)
}

thread_local! {
    /// Whether a webhook exists, as the writer's current transaction last read it: asked once per transaction
    /// rather than once per write (it showed in the writer's profile under heartbeats, whose renewals are
    /// events). Only the writer thread queues deliveries, and adds or removes webhooks.
    static ANY_WEBHOOK: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Forgets whether a webhook exists: at the start of each of the writer's transactions (one that rolled back
/// may have read its own change), and when a webhook is added or removed.
pub fn forget_any_webhook() {
    ANY_WEBHOOK.set(None);
}

/// Queues the deliveries of committed session events (those webhooks hear of).
pub fn queue_events(conn: &Connection, events: &[SessionEvent]) -> rusqlite::Result<u64> {
    if events.is_empty() || !any_webhook(conn)? {
        return Ok(0);
    }
    let mut queued = 0;
    for event in events.iter().filter_map(OutboundEvent::of) {
        queued += queue(conn, &event)?;
    }
    Ok(queued)
}

/// Queues `session.created` for a session just inserted.
pub fn queue_created(conn: &Connection, session: &Session) -> rusqlite::Result<u64> {
    if !any_webhook(conn)? {
        return Ok(0);
    }
    queue(conn, &OutboundEvent::session_created(session))
}

/// The claim of `Write::ClaimDeliveries` (see `SessionStore::claim_deliveries`), times in epoch ms.
pub fn claim(
    conn: &Connection,
    now: i64,
    lease_until: i64,
    claim: Uuid,
    limit: u32,
) -> rusqlite::Result<Vec<Delivery>> {
    static CLAIM: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE webhook_deliveries SET lease_until = ?2, claim = ?3, attempts = attempts + 1 \
             WHERE seq IN (SELECT d.seq FROM webhook_deliveries d WHERE d.{DELIVERY_PENDING} \
               AND d.next_attempt_at <= ?1 AND (d.lease_until IS NULL OR d.lease_until <= ?1) AND {QUEUE_HEAD} \
               ORDER BY d.seq LIMIT ?4) RETURNING seq"
        )
    });
    static CLAIMED: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.seq = ?1"
        )
    });
    // `RETURNING` cannot join the webhook's URL and secret: each claimed row is read again by its key.
    let mut seqs: Vec<i64> = conn
        .prepare_cached(&CLAIM)?
        .query_map(params![now, lease_until, claim, limit], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut read = conn.prepare_cached(&CLAIMED)?;
    let mut decode = sqlite_rows::delivery();
    // In queue order, as `RETURNING` does not promise one.
    seqs.sort_unstable();
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let mut found = read.query(params![seq])?;
        if let Some(row) = found.next()? {
            out.push(decode(row)?);
        }
    }
    Ok(out)
}

/// Records an attempt's outcome while `claim` holds the delivery; whether it did.
pub fn finish(
    conn: &Connection,
    seq: i64,
    claim: Uuid,
    outcome: &DeliveryOutcome,
) -> rusqlite::Result<usize> {
    match outcome {
        DeliveryOutcome::Delivered => conn
            .prepare_cached("DELETE FROM webhook_deliveries WHERE seq = ?1 AND claim = ?2")?
            .execute(params![seq, claim]),
        DeliveryOutcome::Retry { at, error } => conn
            .prepare_cached(
                "UPDATE webhook_deliveries SET next_attempt_at = ?3, lease_until = NULL, claim = NULL, \
                 last_error = ?4 WHERE seq = ?1 AND claim = ?2",
            )?
            .execute(params![seq, claim, at.timestamp_millis(), error]),
        DeliveryOutcome::Failed { error } => conn
            .prepare_cached(
                "UPDATE webhook_deliveries SET state = 2, lease_until = NULL, claim = NULL, last_error = ?3 \
                 WHERE seq = ?1 AND claim = ?2",
            )?
            .execute(params![seq, claim, error]),
    }
}

/// Deletes up to `limit` failed deliveries committed at or before `before` (epoch ms).
pub fn purge_failed(conn: &Connection, before: i64, limit: u32) -> rusqlite::Result<usize> {
    conn.prepare_cached(&format!(
        "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries \
         WHERE {DELIVERY_FAILED} AND created_at <= ?1 ORDER BY created_at LIMIT ?2)"
    ))?
    .execute(params![before, limit])
}

/// `next_delivery_at`'s query: over the heads of the queues, the later of when each is due and when its lease
/// ends.
pub static NEXT_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT MIN(MAX(d.next_attempt_at, COALESCE(d.lease_until, 0))) FROM webhook_deliveries d \
         WHERE d.{DELIVERY_PENDING} AND {QUEUE_HEAD}"
    )
});

/// `delivery_counts`' query.
pub static COUNTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COALESCE(SUM({DELIVERY_PENDING}), 0), COALESCE(SUM({DELIVERY_FAILED}), 0) \
         FROM webhook_deliveries"
    )
});

/// `list_webhooks`' query.
pub static LIST: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"));
