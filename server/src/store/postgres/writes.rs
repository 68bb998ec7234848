//! The statements the PostgreSQL store's writes are made of, each run inside the caller's transaction: the
//! rows they insert or update (bound through `store::rows`), and the row locks that order one session's
//! writes across instances.

use std::sync::LazyLock;

use sqlx::postgres::{PgArguments, PgConnection};
use uuid::Uuid;

use super::connection::backend;
use crate::domain::{Agent, Message, Session, SessionEvent};
use crate::store::rows::{self, Bind};
use crate::store::schema::{
    event_prune_cutoff, insert, insert_select, mark_events_pruned, prune_events, update_session,
    ReplyState, AGENT_COLUMNS, EVENT_INSERT_COLUMNS, MESSAGE_INSERT_COLUMNS,
    SESSION_INSERT_COLUMNS,
};
use crate::store::{prune_due, StoreError};

pub async fn insert_agent(conn: &mut PgConnection, agent: &Agent) -> Result<(), StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| insert('$', "agents", AGENT_COLUMNS, ""));
    let mut args = PgArguments::default();
    rows::bind_agent(&mut args, agent).map_err(backend)?;
    sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map(drop)
        .map_err(backend)
}

/// Inserts the session only while its agent row exists, holding a key-share lock on it until commit: a
/// concurrent agent deletion either waits for this insert (and then sees the session) or has already
/// removed the agent (and this inserts nothing). Returns whether it inserted.
pub async fn insert_session(
    conn: &mut PgConnection,
    session: &Session,
) -> Result<bool, StoreError> {
    // $3: `agent_id`, the third of `SESSION_KEY_COLUMNS`.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let condition = "FROM agents WHERE id = $3 FOR KEY SHARE";
        insert_select('$', "sessions", &SESSION_INSERT_COLUMNS, condition)
    });
    let mut args = PgArguments::default();
    rows::bind_session_key(&mut args, session).map_err(backend)?;
    rows::bind_session_state(&mut args, session).map_err(backend)?;
    let inserted = sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(inserted.rows_affected() > 0)
}

/// Updates the session if it is still at `expected` (its version); returns the rows changed (0 or 1).
pub async fn update_session_row(
    conn: &mut PgConnection,
    session: &Session,
    expected: i64,
) -> Result<u64, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| update_session('$'));
    let mut args = PgArguments::default();
    rows::bind_session_state(&mut args, session).map_err(backend)?;
    args.bind(session.id).map_err(backend)?;
    args.bind(expected).map_err(backend)?;
    // The row lock this takes serialises the session's writers across processes: a second writer with the
    // same expected version waits, then re-reads the row and finds the version moved on.
    sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(backend)
}

/// Inserts a message; returns its seq.
pub async fn insert_message(
    conn: &mut PgConnection,
    message: &Message,
    state: ReplyState,
) -> Result<i64, StoreError> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| insert('$', "messages", MESSAGE_INSERT_COLUMNS, " RETURNING seq"));
    let mut args = PgArguments::default();
    rows::bind_message(&mut args, message, state).map_err(backend)?;
    sqlx::query_scalar_with(&SQL, args)
        .fetch_one(conn)
        .await
        .map_err(backend)
}

/// Stores the persistent events (assigning their seq), prunes the log of their session down to its `keep`
/// newest events when due (`prune_due`), and returns all of them for announcement. The caller holds the session's row lock
/// (every write of a session takes it), so two writers never prune one log at once.
pub async fn store_events(
    conn: &mut PgConnection,
    events: &[SessionEvent],
    keep: u32,
) -> Result<Vec<SessionEvent>, StoreError> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| insert('$', "events", EVENT_INSERT_COLUMNS, " RETURNING seq"));
    let mut out = Vec::with_capacity(events.len());
    let mut prune_for = None;
    for event in events {
        let mut event = event.clone();
        if !event.is_transient() {
            let mut args = PgArguments::default();
            rows::bind_event(&mut args, &event).map_err(backend)?;
            let seq: i64 = sqlx::query_scalar_with(&SQL, args)
                .fetch_one(&mut *conn)
                .await
                .map_err(backend)?;
            event.seq = Some(seq);
            if prune_due(seq, keep) {
                prune_for = Some(event.session_id);
            }
        }
        out.push(event);
    }
    // A write's events are all of one session.
    if let Some(session_id) = prune_for {
        prune(conn, session_id, keep).await?;
    }
    Ok(out)
}

/// Deletes the session's events older than its `keep` newest, and records how far its log now starts.
async fn prune(conn: &mut PgConnection, session_id: Uuid, keep: u32) -> Result<(), StoreError> {
    static CUTOFF: LazyLock<String> = LazyLock::new(|| event_prune_cutoff('$'));
    static DELETE: LazyLock<String> = LazyLock::new(|| prune_events('$'));
    static MARK: LazyLock<String> = LazyLock::new(|| mark_events_pruned('$'));
    let cutoff: Option<i64> = sqlx::query_scalar(&CUTOFF)
        .bind(session_id)
        .bind(i64::from(keep))
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend)?;
    let Some(cutoff) = cutoff else {
        return Ok(());
    };
    for sql in [&*DELETE, &*MARK] {
        sqlx::query(sql)
            .bind(session_id)
            .bind(cutoff)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Locks a session's row for the rest of the transaction; false if there is no such session. Writes to a
/// session's messages and events that do not update the row itself take this first, so that they are ordered
/// with the session's other writes (and a concurrent delete either waits for them or wins outright).
pub async fn lock_session(conn: &mut PgConnection, id: Uuid) -> Result<bool, StoreError> {
    sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map(|row| row.is_some())
        .map_err(backend)
}

/// Deletes the messages and events of sessions already deleted in this transaction.
pub async fn delete_children(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    for sql in [
        "DELETE FROM messages WHERE session_id = ANY($1)",
        "DELETE FROM events WHERE session_id = ANY($1)",
    ] {
        sqlx::query(sql)
            .bind(ids)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    }
    Ok(())
}
