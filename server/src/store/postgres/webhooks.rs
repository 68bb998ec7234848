//! The PostgreSQL store's webhook statements: queueing an event's deliveries inside the transaction that commits
//! it, and the delivery queue's claims (`FOR UPDATE SKIP LOCKED`, so that the dispatchers of several instances
//! each take rows no other holds and never wait on one another), outcomes, reads and purge.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnection};
use uuid::Uuid;

use super::connection::backend;
use super::rows::all;
use crate::domain::{Delivery, DeliveryOutcome, OutboundEvent, Session, SessionEvent, Webhook};
use crate::store::rows;
use crate::store::schema::{
    insert, queue_deliveries, DELIVERY_COLUMNS, DELIVERY_FAILED, DELIVERY_PENDING, QUEUE_HEAD,
    WEBHOOK_COLUMNS,
};
use crate::store::{to_ms, DeliveryCounts, StoreError};

pub async fn insert_webhook(conn: &mut PgConnection, webhook: &Webhook) -> Result<(), StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| insert('$', "webhooks", WEBHOOK_COLUMNS, ""));
    let mut args = PgArguments::default();
    rows::bind_webhook(&mut args, webhook).map_err(backend)?;
    sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map(drop)
        .map_err(backend)
}

pub async fn list_webhooks(conn: &mut PgConnection) -> Result<Vec<Webhook>, StoreError> {
    let found = sqlx::query(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
    ))
    .fetch_all(conn)
    .await
    .map_err(backend)?;
    all(&found, rows::webhook)
}

/// Deletes the webhook, then its deliveries, in the caller's transaction; whether it existed. The webhook row
/// goes first: its delete waits for the transactions queueing deliveries for it (they hold a key-share lock on
/// it, see `queue`), so that the second statement sees, and deletes, every delivery they queued.
pub async fn delete_webhook(conn: &mut PgConnection, id: Uuid) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(backend)?
        .rows_affected();
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(deleted > 0)
}

/// Queues `event` for every webhook that wants it, in the caller's transaction; how many deliveries that made.
async fn queue(conn: &mut PgConnection, event: &OutboundEvent) -> Result<u64, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| queue_deliveries('$', " FOR KEY SHARE"));
    let mut args = PgArguments::default();
    rows::bind_outbound(&mut args, event).map_err(backend)?;
    sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(backend)
}

/// Queues the deliveries of committed session events (those webhooks hear of).
pub async fn queue_events(
    conn: &mut PgConnection,
    events: &[SessionEvent],
) -> Result<u64, StoreError> {
    let mut queued = 0;
    for event in events.iter().filter_map(OutboundEvent::of) {
        queued += queue(&mut *conn, &event).await?;
    }
    Ok(queued)
}

/// Queues `session.created` for a session inserted in this transaction.
pub async fn queue_created(conn: &mut PgConnection, session: &Session) -> Result<u64, StoreError> {
    queue(conn, &OutboundEvent::session_created(session)).await
}

/// See `SessionStore::claim_deliveries`. One statement: the heads are locked (skipping rows another claim is
/// taking right now), leased, and read back with their webhook's URL and secret.
pub async fn claim(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    claim: Uuid,
    limit: u32,
) -> Result<Vec<Delivery>, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH heads AS ( \
               SELECT d.seq FROM webhook_deliveries d WHERE d.{DELIVERY_PENDING} AND d.next_attempt_at <= $1 \
               AND (d.lease_until IS NULL OR d.lease_until <= $1) AND {QUEUE_HEAD} \
               ORDER BY d.seq LIMIT $4 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
               UPDATE webhook_deliveries u SET lease_until = $2, claim = $3, attempts = u.attempts + 1 \
               FROM heads h WHERE u.seq = h.seq RETURNING u.*) \
             SELECT {DELIVERY_COLUMNS} FROM claimed d JOIN webhooks w ON w.id = d.webhook_id ORDER BY d.seq"
        )
    });
    let found = sqlx::query(&SQL)
        .bind(to_ms(now))
        .bind(to_ms(lease_until))
        .bind(claim)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    all(&found, rows::delivery)
}

/// Records an attempt's outcome while `claim` holds the delivery; whether it did.
pub async fn finish(
    conn: &mut PgConnection,
    seq: i64,
    claim: Uuid,
    outcome: &DeliveryOutcome,
) -> Result<bool, StoreError> {
    let query = match outcome {
        DeliveryOutcome::Delivered => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE seq = $1 AND claim = $2")
                .bind(seq)
                .bind(claim)
        }
        DeliveryOutcome::Retry { at, error } => sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = $3, lease_until = NULL, claim = NULL, \
             last_error = $4 WHERE seq = $1 AND claim = $2",
        )
        .bind(seq)
        .bind(claim)
        .bind(to_ms(*at))
        .bind(error.as_str()),
        DeliveryOutcome::Failed { error } => sqlx::query(
            "UPDATE webhook_deliveries SET state = 2, lease_until = NULL, claim = NULL, last_error = $3 \
             WHERE seq = $1 AND claim = $2",
        )
        .bind(seq)
        .bind(claim)
        .bind(error.as_str()),
    };
    let done = query.execute(conn).await.map_err(backend)?;
    Ok(done.rows_affected() > 0)
}

/// The later of when the head of each queue is due and when its lease ends; the earliest of those.
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<i64>, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT MIN(GREATEST(d.next_attempt_at, COALESCE(d.lease_until, 0))) FROM webhook_deliveries d \
             WHERE d.{DELIVERY_PENDING} AND {QUEUE_HEAD}"
        )
    });
    sqlx::query_scalar(&SQL)
        .fetch_one(conn)
        .await
        .map_err(backend)
}

pub async fn purge_failed(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries \
             WHERE {DELIVERY_FAILED} AND created_at <= $1 ORDER BY created_at LIMIT $2)"
        )
    });
    sqlx::query(&SQL)
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(backend)
}

pub async fn counts(conn: &mut PgConnection) -> Result<DeliveryCounts, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT COUNT(*) FILTER (WHERE {DELIVERY_PENDING}), COUNT(*) FILTER (WHERE {DELIVERY_FAILED}) \
             FROM webhook_deliveries"
        )
    });
    let (pending, failed): (i64, i64) = sqlx::query_as(&SQL)
        .fetch_one(conn)
        .await
        .map_err(backend)?;
    Ok(DeliveryCounts {
        pending: pending.max(0) as u64,
        failed: failed.max(0) as u64,
    })
}
