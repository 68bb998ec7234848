//! Reading stored events back: a session's events after a seq (a stream resuming after its `Last-Event-ID`,
//! with how far the session's log has been pruned; and the listener's replay after a reconnect) and one event by its seq (a notification too large to carry
//! the event names it instead).

use std::sync::LazyLock;

use sqlx::postgres::{PgPool, Postgres};
use sqlx::Executor;
use uuid::Uuid;

use super::connection::backend;
use super::rows::all;
use crate::domain::SessionEvent;
use crate::store::rows;
use crate::store::schema::{events_after_with_horizon, EVENT_COLUMNS};
use crate::store::{EventReplay, StoreError};

/// The session's events with `seq > after_seq`, oldest first, at most `limit`.
pub async fn events_after<'e, E>(
    conn: E,
    session_id: Uuid,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<SessionEvent>, StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )
    });
    let found = sqlx::query(&SQL)
        .bind(session_id)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    all(&found, rows::event)
}

/// The session's events with `seq > after_seq`, oldest first, at most `limit`, with how far its log has been
/// pruned (one statement, so one snapshot).
pub async fn replay_events<'e, E>(
    conn: E,
    session_id: Uuid,
    after_seq: i64,
    limit: u32,
) -> Result<EventReplay, StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    static SQL: LazyLock<String> = LazyLock::new(|| events_after_with_horizon('$'));
    let found = sqlx::query(&SQL)
        .bind(session_id)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    Ok(EventReplay::from_rows(all(
        &found,
        rows::event_with_horizon,
    )?))
}

/// The event stored under `seq`; None once deleted (with its session).
pub async fn event_by_seq(pool: &PgPool, seq: i64) -> Result<Option<SessionEvent>, sqlx::Error> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = $1"));
    let row = sqlx::query(&SQL).bind(seq).fetch_optional(pool).await?;
    row.as_ref().map(rows::event).transpose()
}
