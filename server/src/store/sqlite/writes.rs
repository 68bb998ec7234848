//! The SQLite store's writes as data (`Write`), and applying one of them inside the writer's transaction: its
//! statements, the savepoint that makes it all or nothing, and what it did (`Applied`).

use std::sync::LazyLock;

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::activity::Pending;
use super::idempotency;
use super::rows::{self as sqlite_rows, store_error as failed, Params};
use super::webhooks;
use crate::domain::{
    Agent, ClaimOutcome, Delivery, DeliveryOutcome, IdempotencyKey, KeyClaim, Message, Session,
    SessionEvent, StoredResponse, Webhook,
};
use crate::store::rows::{self, Bind};
use crate::store::schema::{
    claim_next_reply, event_prune_cutoff, insert, insert_select, live_claim, mark_events_pruned,
    prune_events, update_activity, update_session, ReplyState, AGENT_COLUMNS, EVENT_INSERT_COLUMNS,
    MESSAGE_CLAIMED_INSERT_COLUMNS, MESSAGE_INSERT_COLUMNS, SESSION_INSERT_COLUMNS,
};
use crate::store::{prune_due, schema, StoreError};

/// One write, as data, so that the writer can apply many of them in one transaction.
pub enum Write {
    InsertAgent(Agent),
    /// Deletes an agent without active sessions (at the given epoch ms) with its sessions.
    DeleteAgent(Uuid, i64),
    InsertSession(Box<Session>),
    UpdateSession(Box<Session>, i64, Vec<SessionEvent>),
    /// `UpdateSession` for a heartbeat: its commit need not wait for `fsync` (see `SessionStore::record_heartbeat`).
    Heartbeat(Box<Session>, i64, Vec<SessionEvent>),
    DeleteSession(Uuid, Vec<SessionEvent>),
    Purge {
        cutoff: i64,
        limit: u32,
    },
    /// A user message; with `(now, stale_before)`, then a reply claim (as `ClaimReply`) in the same transaction.
    RecordMessage(
        Box<Session>,
        i64,
        Box<Message>,
        Vec<SessionEvent>,
        Option<(i64, i64)>,
    ),
    InsertReply(Box<Message>, Vec<SessionEvent>),
    ClaimReply {
        session_id: Uuid,
        now: i64,
        stale_before: i64,
    },
    FinishReply(Uuid, Option<Box<Message>>, Vec<SessionEvent>),
    /// Claims an idempotency key (see `SessionStore::claim_idempotency_key`).
    ClaimKey(Box<KeyClaim>),
    /// Completes an idempotency key's claim with the response to replay.
    CompleteKey(Box<IdempotencyKey>, Uuid, Box<StoredResponse>),
    /// Releases an idempotency key's in-flight claim.
    ReleaseKey(Box<IdempotencyKey>, Uuid),
    /// Deletes up to `limit` idempotency keys expired at `now`.
    PurgeKeys {
        now: i64,
        limit: u32,
    },
    InsertWebhook(Box<Webhook>),
    DeleteWebhook(Uuid),
    /// Times in epoch ms.
    ClaimDeliveries {
        now: i64,
        lease_until: i64,
        claim: Uuid,
        limit: u32,
    },
    FinishDelivery {
        seq: i64,
        claim: Uuid,
        outcome: DeliveryOutcome,
    },
    PurgeFailedDeliveries {
        before: i64,
        limit: u32,
    },
    /// Stores a setting unless it already has a value.
    InsertSetting {
        name: String,
        value: String,
    },
    /// Changes one row, to learn whether a commit reaches the disk now (the health check, after failures).
    Probe,
    /// Changes nothing; the heartbeat log is folded before it (`needs_session_rows`), so that a scan of session
    /// rows that follows sees every heartbeat acknowledged before it.
    Settle,
    /// Changes nothing, and needs no fold: it wakes the writer, which folds the heartbeat log in steps once it
    /// is due and no write waits.
    Nudge,
    /// A write that panics halfway (after a statement), for the test that the writer survives it.
    #[cfg(test)]
    Panic,
}

/// What a write did: rows affected, the seq of an inserted message, a claimed message or claimed deliveries,
/// what claiming an idempotency key found, the events to announce once the transaction has committed
/// (persisted ones carrying their new seq), how many webhook deliveries it queued, and whether it went to the
/// heartbeat log.
#[derive(Default)]
pub struct Applied {
    pub rows: u64,
    pub seq: Option<i64>,
    pub message: Option<Message>,
    pub key_claim: Option<ClaimOutcome>,
    pub deliveries: Vec<Delivery>,
    pub publish: Vec<SessionEvent>,
    pub queued: u64,
    /// A heartbeat appended to the heartbeat log rather than written to its row.
    pub logged: bool,
}

impl Write {
    /// Whether its commit may skip the `fsync` (a batch of such writes only is committed without one).
    pub fn is_lazy(&self) -> bool {
        matches!(self, Write::Heartbeat(..))
    }

    /// Whether applying it reads or changes existing session rows, which must then hold every heartbeat logged
    /// before it (the writer folds the heartbeat log first; see `activity.rs`). A heartbeat does not: beside
    /// writes that do not, it is logged.
    pub fn needs_session_rows(&self) -> bool {
        match self {
            Write::UpdateSession(..)
            | Write::DeleteSession(..)
            | Write::DeleteAgent(..)
            | Write::Purge { .. }
            | Write::RecordMessage(..)
            | Write::Settle => true,
            Write::Heartbeat(..)
            | Write::InsertAgent(_)
            | Write::InsertSession(_)
            | Write::InsertReply(..)
            | Write::ClaimReply { .. }
            | Write::FinishReply(..)
            | Write::ClaimKey(_)
            | Write::CompleteKey(..)
            | Write::ReleaseKey(..)
            | Write::PurgeKeys { .. }
            | Write::InsertWebhook(_)
            | Write::DeleteWebhook(_)
            | Write::ClaimDeliveries { .. }
            | Write::FinishDelivery { .. }
            | Write::PurgeFailedDeliveries { .. }
            | Write::InsertSetting { .. }
            | Write::Probe
            | Write::Nudge => false,
            #[cfg(test)]
            Write::Panic => false,
        }
    }

    /// Whether applying it takes more than one writing statement.
    fn is_compound(&self) -> bool {
        match self {
            Write::InsertAgent(_)
            | Write::ClaimReply { .. }
            | Write::InsertWebhook(_)
            | Write::FinishDelivery { .. }
            | Write::PurgeFailedDeliveries { .. }
            | Write::InsertSetting { .. }
            | Write::ClaimKey(_)
            | Write::CompleteKey(..)
            | Write::ReleaseKey(..)
            | Write::PurgeKeys { .. }
            | Write::Probe
            | Write::Settle
            | Write::Nudge => false,
            // Events are stored, and webhook deliveries queued, beside the row (live-only events are neither).
            Write::UpdateSession(_, _, events)
            | Write::Heartbeat(_, _, events)
            | Write::InsertReply(_, events) => events.iter().any(|e| !e.is_transient()),
            // The session and its `session.created` deliveries; the claim and the reads of what it claimed.
            Write::InsertSession(_) | Write::ClaimDeliveries { .. } => true,
            Write::DeleteAgent(..)
            | Write::DeleteWebhook(_)
            | Write::DeleteSession(..)
            | Write::Purge { .. }
            | Write::RecordMessage(..)
            | Write::FinishReply(..) => true,
            #[cfg(test)]
            Write::Panic => true,
        }
    }
}

/// Applies one write; a write of several statements runs inside a savepoint of its own. Why: when a statement
/// fails, SQLite undoes that statement only, so without the savepoint the write's earlier statements (a
/// claim marked answered, a session renewed) would commit with the rest of the batch while its caller is
/// told it failed.
///
/// A write that panics fails alone, like one that errs: the panic is caught here, so that one bad write can
/// never take the writer thread, and with it every later write of every client, down.
///
/// `keep`: how many of its newest events each session's log keeps (0: all). With a heartbeat `log`, a heartbeat
/// is appended to it instead of updating its row.
pub fn apply_atomically(
    conn: &Connection,
    write: &mut Write,
    log: Option<&Pending>,
    keep: u32,
) -> Result<Applied, StoreError> {
    let compound = write.is_compound();
    if compound {
        conn.prepare_cached("SAVEPOINT write")
            .and_then(|mut s| s.execute([]))
            .map_err(failed)?;
    }
    let result = caught(|| {
        apply(conn, write, log, keep).and_then(|applied| {
            if compound {
                conn.prepare_cached("RELEASE write")?.execute([])?;
            }
            Ok(applied)
        })
    })
    .and_then(|r| r.map_err(failed));
    if result.is_err() && compound {
        let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
    }
    result
}

/// Runs `f`, turning a panic into a `StoreError` (logged) instead of unwinding through the writer thread.
pub fn caught<T>(f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        tracing::error!(panic = %what, "a store write panicked; it failed alone and the writer goes on");
        StoreError::Backend(format!("the write panicked: {what}"))
    })
}

/// Applies one write. Its events are moved out (into `Applied::publish`), not copied: a write is applied once.
fn apply(
    conn: &Connection,
    write: &mut Write,
    log: Option<&Pending>,
    keep: u32,
) -> rusqlite::Result<Applied> {
    if let (Write::Heartbeat(session, expected, events), Some(log)) = (&mut *write, log) {
        if log.takes(session.id) {
            if !log.log(conn, session, *expected)? {
                return Ok(Applied::default());
            }
            return Ok(Applied {
                logged: true,
                ..one_row_with_events(conn, events, keep)?
            });
        }
    }
    let heartbeat = matches!(write, Write::Heartbeat(..));
    match write {
        Write::InsertAgent(agent) => insert_agent(conn, agent).map(rows_changed),
        Write::DeleteAgent(id, active_at) => delete_agent(conn, *id, *active_at),
        Write::InsertSession(session) => {
            let n = insert_session(conn, session)?;
            Ok(Applied {
                rows: n as u64,
                queued: if n > 0 {
                    webhooks::queue_created(conn, session)?
                } else {
                    0
                },
                ..Default::default()
            })
        }
        Write::UpdateSession(session, expected, events)
        | Write::Heartbeat(session, expected, events) => {
            if update_session_row(conn, session, *expected, heartbeat)? == 0 {
                return Ok(Applied::default());
            }
            one_row_with_events(conn, events, keep)
        }
        Write::DeleteSession(id, events) => {
            if delete_session(conn, *id)? == 0 {
                return Ok(Applied::default());
            }
            Ok(Applied {
                rows: 1,
                queued: webhooks::queue_events(conn, events)?,
                publish: std::mem::take(events),
                ..Default::default()
            })
        }
        Write::Purge { cutoff, limit } => purge(conn, *cutoff, *limit).map(rows_changed),
        Write::RecordMessage(session, expected, message, events, claim) => {
            if update_session_row(conn, session, *expected, false)? == 0 {
                return Ok(Applied::default());
            }
            let (seq, claimed) = match *claim {
                // Nothing of the session waits for a reply: the message is the next to answer, stored claimed
                // in one row write instead of stored pending and then claimed by `claim_reply`'s statements.
                Some((now, _)) if !awaits_reply(conn, session.id)? => {
                    let seq = insert_claimed_message(conn, message, now)?;
                    (Some(seq), Some(as_stored(message, seq)))
                }
                Some((now, stale_before)) => (
                    insert_message(conn, message, ReplyState::Pending, false)?,
                    claim_waiting(conn, session.id, now, stale_before)?,
                ),
                None => (
                    insert_message(conn, message, ReplyState::Pending, false)?,
                    None,
                ),
            };
            Ok(Applied {
                seq,
                message: claimed,
                ..one_row_with_events(conn, events, keep)?
            })
        }
        Write::InsertReply(message, events) => {
            match insert_message(conn, message, ReplyState::None, true)? {
                None => Ok(Applied::default()),
                Some(seq) => Ok(Applied {
                    seq: Some(seq),
                    ..one_row_with_events(conn, events, keep)?
                }),
            }
        }
        Write::ClaimReply {
            session_id,
            now,
            stale_before,
        } => {
            let claimed = claim_reply(conn, *session_id, *now, *stale_before)?;
            Ok(Applied {
                rows: u64::from(claimed.is_some()),
                message: claimed,
                ..Default::default()
            })
        }
        Write::FinishReply(user_message_id, reply, events) => {
            if !finish_reply(conn, *user_message_id, reply.as_deref())? {
                return Ok(Applied::default());
            }
            one_row_with_events(conn, events, keep)
        }
        Write::ClaimKey(claim) => {
            let outcome = idempotency::claim(conn, claim)?;
            Ok(Applied {
                rows: u64::from(outcome == ClaimOutcome::Claimed),
                key_claim: Some(outcome),
                ..Default::default()
            })
        }
        Write::CompleteKey(key, owner, response) => {
            idempotency::complete(conn, key, *owner, response).map(rows_changed)
        }
        Write::ReleaseKey(key, owner) => idempotency::release(conn, key, *owner).map(rows_changed),
        Write::PurgeKeys { now, limit } => idempotency::purge(conn, *now, *limit).map(rows_changed),
        Write::InsertWebhook(webhook) => webhooks::insert_webhook(conn, webhook).map(rows_changed),
        Write::DeleteWebhook(id) => webhooks::delete_webhook(conn, *id).map(rows_changed),
        Write::ClaimDeliveries {
            now,
            lease_until,
            claim,
            limit,
        } => {
            let deliveries = webhooks::claim(conn, *now, *lease_until, *claim, *limit)?;
            Ok(Applied {
                rows: deliveries.len() as u64,
                deliveries,
                ..Default::default()
            })
        }
        Write::FinishDelivery {
            seq,
            claim,
            outcome,
        } => webhooks::finish(conn, *seq, *claim, outcome).map(rows_changed),
        Write::PurgeFailedDeliveries { before, limit } => {
            webhooks::purge_failed(conn, *before, *limit).map(rows_changed)
        }
        Write::InsertSetting { name, value } => conn
            .prepare_cached(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            )?
            .execute(params![name.as_str(), value.as_str()])
            .map(rows_changed),
        Write::Settle | Write::Nudge => Ok(Applied::default()),
        Write::Probe => conn
            .prepare_cached(
                "INSERT INTO settings (name, value) VALUES ('write_probe', '0') \
                 ON CONFLICT (name) DO UPDATE SET value = CAST(settings.value AS INTEGER) + 1",
            )?
            .execute([])
            .map(rows_changed),
        #[cfg(test)]
        Write::Panic => {
            conn.execute(
                "INSERT INTO settings (name, value) VALUES ('half', 'done')",
                [],
            )?;
            panic!("a write panicked halfway")
        }
    }
}

fn rows_changed(rows: usize) -> Applied {
    Applied {
        rows: rows as u64,
        ..Default::default()
    }
}

fn insert_agent(conn: &Connection, agent: &Agent) -> rusqlite::Result<usize> {
    static SQL: LazyLock<String> = LazyLock::new(|| insert('?', "agents", AGENT_COLUMNS, ""));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_agent(&mut args, agent)?;
    args.execute()
}

/// Deletes the agent with its sessions, unless it has active ones: then `Applied::seq` says how many.
fn delete_agent(conn: &Connection, id: Uuid, active_at: i64) -> rusqlite::Result<Applied> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        return Ok(Applied::default());
    }
    let active: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM sessions WHERE agent_id = ?1 AND expires_at > ?2")?
        .query_row(params![id, active_at], |row| row.get(0))?;
    if active > 0 {
        return Ok(Applied {
            seq: Some(active),
            ..Default::default()
        });
    }
    for sql in [
        "DELETE FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE agent_id = ?1)",
        "DELETE FROM events WHERE session_id IN (SELECT id FROM sessions WHERE agent_id = ?1)",
        "DELETE FROM sessions WHERE agent_id = ?1",
    ] {
        conn.prepare_cached(sql)?.execute(params![id])?;
    }
    conn.prepare_cached("DELETE FROM agents WHERE id = ?1")?
        .execute(params![id])
        .map(rows_changed)
}

/// Inserts the session only while its agent exists (the writer applies one write at a time, so the check
/// cannot race a deletion).
fn insert_session(conn: &Connection, session: &Session) -> rusqlite::Result<usize> {
    // ?3: `agent_id`, the third of `SESSION_KEY_COLUMNS`.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let condition = "WHERE EXISTS (SELECT 1 FROM agents WHERE id = ?3)";
        insert_select('?', "sessions", &SESSION_INSERT_COLUMNS, condition)
    });
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_session_key(&mut args, session)?;
    rows::bind_session_state(&mut args, session)?;
    args.execute()
}

/// What a write that changed one row leaves to do: its events queued for webhooks, and stored to be published.
fn one_row_with_events(
    conn: &Connection,
    events: &mut Vec<SessionEvent>,
    keep: u32,
) -> rusqlite::Result<Applied> {
    Ok(Applied {
        rows: 1,
        queued: webhooks::queue_events(conn, events)?,
        publish: store_events(conn, std::mem::take(events), keep)?,
        ..Default::default()
    })
}

/// The session's conditional update: the columns any update writes, or for a `heartbeat` only those a heartbeat
/// can change (`schema::SESSION_ACTIVITY_COLUMNS`).
fn update_session_row(
    conn: &Connection,
    session: &Session,
    expected: i64,
    heartbeat: bool,
) -> rusqlite::Result<usize> {
    static ANY: LazyLock<String> = LazyLock::new(|| update_session('?'));
    static ACTIVITY: LazyLock<String> = LazyLock::new(|| update_activity('?'));
    let mut statement = conn.prepare_cached(if heartbeat { &ACTIVITY } else { &ANY })?;
    let mut args = Params::new(&mut statement);
    if heartbeat {
        rows::bind_session_activity(&mut args, session)?;
    } else {
        rows::bind_session_state(&mut args, session)?;
    }
    args.bind(session.id)?;
    args.bind(expected)?;
    args.execute()
}

fn delete_session(conn: &Connection, id: Uuid) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM messages WHERE session_id = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("DELETE FROM events WHERE session_id = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
        .execute(params![id])
}

/// The sessions a purge batch deletes: up to `?2` expired at `?1`. The same deterministic subquery names the same
/// sessions in all three statements of `purge`. It follows the expiry index exactly (its entries are ordered by
/// expires_at, warn_at, then rowid), so each batch reads only its own rows; ordering by the id column instead
/// sorted every expired session for every batch.
pub(super) const PURGE_VICTIMS: &str =
    "SELECT id FROM sessions WHERE expires_at <= ?1 ORDER BY expires_at, warn_at, rowid LIMIT ?2";

fn purge(conn: &Connection, cutoff: i64, limit: u32) -> rusqlite::Result<usize> {
    for table in ["messages", "events"] {
        conn.prepare_cached(&format!(
            "DELETE FROM {table} WHERE session_id IN ({PURGE_VICTIMS})"
        ))?
        .execute(params![cutoff, limit])?;
    }
    conn.prepare_cached(&format!(
        "DELETE FROM sessions WHERE id IN ({PURGE_VICTIMS})"
    ))?
    .execute(params![cutoff, limit])
}

/// The session's next message to answer, claimed; None while another claim on it is live. The writer applies
/// one write at a time, so this check-then-claim cannot race.
fn claim_reply(
    conn: &Connection,
    session_id: Uuid,
    now: i64,
    stale_before: i64,
) -> rusqlite::Result<Option<Message>> {
    // The common case, a worker looking for more after its last reply: one probe of the partial index says
    // nothing waits, without the claim's update (and the table SQLite builds for its `RETURNING`).
    if !awaits_reply(conn, session_id)? {
        return Ok(None);
    }
    claim_waiting(conn, session_id, now, stale_before)
}

/// `claim_reply` once the session is known to have a message waiting for a reply.
fn claim_waiting(
    conn: &Connection,
    session_id: Uuid,
    now: i64,
    stale_before: i64,
) -> rusqlite::Result<Option<Message>> {
    static LIVE_CLAIM: LazyLock<String> = LazyLock::new(|| live_claim('?'));
    static CLAIM_NEXT: LazyLock<String> = LazyLock::new(|| claim_next_reply('?'));
    let busy: Option<i64> = conn
        .prepare_cached(&LIVE_CLAIM)?
        .query_row(
            params![session_id, ReplyState::InProgress, stale_before],
            |row| row.get(0),
        )
        .optional()?;
    if busy.is_some() {
        return Ok(None);
    }
    conn.prepare_cached(&CLAIM_NEXT)?
        .query_row(
            params![
                session_id,
                ReplyState::InProgress,
                now,
                ReplyState::Pending,
                stale_before
            ],
            sqlite_rows::message(),
        )
        .optional()
}

/// Whether the session has a message waiting for a reply ([`awaits_reply`](crate::store::schema::awaits_reply)).
fn awaits_reply(conn: &Connection, session_id: Uuid) -> rusqlite::Result<bool> {
    static SQL: LazyLock<String> = LazyLock::new(|| schema::awaits_reply('?'));
    conn.prepare_cached(&SQL)?.exists(params![session_id])
}

/// Stores a user message claimed for its reply at `now` (in progress), as `claim_reply` would have left it.
fn insert_claimed_message(conn: &Connection, message: &Message, now: i64) -> rusqlite::Result<i64> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| insert('?', "messages", &MESSAGE_CLAIMED_INSERT_COLUMNS, ""));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_message(&mut args, message, ReplyState::InProgress)?;
    args.bind(now)?;
    args.execute()?;
    Ok(conn.last_insert_rowid())
}

/// A message as a read of its row returns it: its seq, and its time at the stored millisecond.
fn as_stored(message: &Message, seq: i64) -> Message {
    Message {
        seq,
        created_at: crate::store::as_stored(message.created_at),
        ..message.clone()
    }
}

/// Ends our claim on `user_message_id`, storing `reply` (if any) while the session exists; false, changing
/// nothing that stays, when the claim was not ours or the session is gone.
fn finish_reply(
    conn: &Connection,
    user_message_id: Uuid,
    reply: Option<&Message>,
) -> rusqlite::Result<bool> {
    let state = if reply.is_some() {
        ReplyState::Answered
    } else {
        ReplyState::Failed
    };
    let ours = conn
        .prepare_cached("UPDATE messages SET reply_state = ?2 WHERE id = ?1 AND reply_state = ?3")?
        .execute(params![user_message_id, state, ReplyState::InProgress])?;
    if ours == 0 {
        return Ok(false);
    }
    match reply {
        Some(m) => Ok(insert_message(conn, m, ReplyState::None, true)?.is_some()),
        None => Ok(true),
    }
}

/// Stores the persistent events (assigning their seq), prunes the log of their session down to its `keep`
/// newest events when due (`prune_due`), and returns all of them for announcement.
///
/// The seq is the row's INTEGER PRIMARY KEY, read back with `last_insert_rowid` rather than `RETURNING`: SQLite
/// buffers `RETURNING` rows in an ephemeral table, and opening and closing that table (a pager and page cache
/// of its own) on every insert showed in the writer's profile under heartbeats.
fn store_events(
    conn: &Connection,
    events: Vec<SessionEvent>,
    keep: u32,
) -> rusqlite::Result<Vec<SessionEvent>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| insert('?', "events", EVENT_INSERT_COLUMNS, ""));
    let mut out = Vec::with_capacity(events.len());
    let mut prune_for = None;
    for mut event in events {
        if !event.is_transient() {
            let mut statement = conn.prepare_cached(&SQL)?;
            let mut args = Params::new(&mut statement);
            rows::bind_event(&mut args, &event)?;
            args.execute()?;
            let seq = conn.last_insert_rowid();
            event.seq = Some(seq);
            if prune_due(seq, keep) {
                prune_for = Some(event.session_id);
            }
        }
        out.push(event);
    }
    // A write's events are all of one session.
    if let Some(session_id) = prune_for {
        prune(conn, session_id, keep)?;
    }
    Ok(out)
}

/// Deletes the session's events older than its `keep` newest, and records how far its log now starts.
fn prune(conn: &Connection, session_id: Uuid, keep: u32) -> rusqlite::Result<()> {
    static CUTOFF: LazyLock<String> = LazyLock::new(|| event_prune_cutoff('?'));
    static DELETE: LazyLock<String> = LazyLock::new(|| prune_events('?'));
    static MARK: LazyLock<String> = LazyLock::new(|| mark_events_pruned('?'));
    let cutoff: Option<i64> = conn
        .prepare_cached(&CUTOFF)?
        .query_row(params![session_id, keep], |row| row.get(0))
        .optional()?;
    if let Some(cutoff) = cutoff {
        conn.prepare_cached(&DELETE)?
            .execute(params![session_id, cutoff])?;
        conn.prepare_cached(&MARK)?
            .execute(params![session_id, cutoff])?;
    }
    Ok(())
}

/// Inserts a message and returns its seq (see `store_events` on why not `RETURNING`); with `only_if_session`,
/// inserts nothing and returns None when the session no longer exists.
fn insert_message(
    conn: &Connection,
    message: &Message,
    state: ReplyState,
    only_if_session: bool,
) -> rusqlite::Result<Option<i64>> {
    // ?2: `session_id`, the second of `MESSAGE_INSERT_COLUMNS`.
    static IF_SESSION: LazyLock<String> = LazyLock::new(|| {
        let condition = "WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?2)";
        insert_select('?', "messages", MESSAGE_INSERT_COLUMNS, condition)
    });
    static ALWAYS: LazyLock<String> =
        LazyLock::new(|| insert('?', "messages", MESSAGE_INSERT_COLUMNS, ""));
    let sql = if only_if_session {
        &IF_SESSION
    } else {
        &ALWAYS
    };
    let mut statement = conn.prepare_cached(sql)?;
    let mut args = Params::new(&mut statement);
    rows::bind_message(&mut args, message, state)?;
    let inserted = args.execute()?;
    Ok((inserted > 0).then(|| conn.last_insert_rowid()))
}
