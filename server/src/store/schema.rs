//! The tables as both backends see them: the column lists, the reply states of the reply queue, how a JSON
//! column and an event are written and read back, and the placeholders of the SQL built from the lists.
//! Written once, so that a new column or event field changes this file and `rows.rs` (and a migration per
//! backend), not each backend's copy.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::Postgres;
use uuid::Uuid;

use super::Order;
use crate::domain::SessionEvent;

/// A session as `rows::session` reads it.
pub const SESSION_COLUMNS: &str = "id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
    expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, metadata, \
    renewal_count, version, notice";

/// The columns of a session that its insert sets and no update changes, in `rows::bind_session_key` order.
pub const SESSION_KEY_COLUMNS: &str = "id, channel_id, agent_id, user_id, created_at";

/// The columns of a session that every update writes, in `rows::bind_session_state` order. `warn_at` is
/// derived (expiry minus the warning threshold) and stored only for the notifier's index.
pub const SESSION_STATE_COLUMNS: &str = "last_activity, last_renewal, expires_at, timeout_minutes, auto_renew, \
    max_duration_minutes, warning_threshold_minutes, metadata, renewal_count, version, notice, warn_at";

/// The columns a heartbeat can change (`Session::record_activity`: the activity, a renewal's fields, the row's
/// version), in `rows::bind_session_activity` order. The rest of the row (metadata, timeout) is the one the
/// heartbeat read, since the update is conditional on its version, so a heartbeat neither re-encodes nor rewrites
/// it.
pub const SESSION_ACTIVITY_COLUMNS: &str =
    "last_activity, last_renewal, expires_at, renewal_count, version, notice, warn_at";

/// A message as `rows::message` reads it.
pub const MESSAGE_COLUMNS: &str =
    "seq, id, session_id, author_id, is_agent, content, metadata, attachments, created_at, in_reply_to";

/// The columns a message is inserted with, in `rows::bind_message` order (`seq` is assigned by the database).
pub const MESSAGE_INSERT_COLUMNS: &str =
    "id, session_id, author_id, is_agent, content, metadata, attachments, created_at, in_reply_to, reply_state";

/// [`MESSAGE_INSERT_COLUMNS`] then `claimed_at`: a message stored already claimed for its reply.
pub static MESSAGE_CLAIMED_INSERT_COLUMNS: LazyLock<String> =
    LazyLock::new(|| format!("{MESSAGE_INSERT_COLUMNS}, claimed_at"));

/// An event as `rows::event` reads it.
pub const EVENT_COLUMNS: &str = "seq, session_id, kind, data, created_at";

/// The columns an event is inserted with, in `rows::bind_event` order (`seq` is assigned by the database).
pub const EVENT_INSERT_COLUMNS: &str = "session_id, kind, data, created_at";

/// An agent as `rows::agent` reads it, and as `rows::bind_agent` inserts it.
pub const AGENT_COLUMNS: &str = "id, name, backend, session_defaults, created_at";

/// An idempotency key's record as `rows::idempotency_record` reads it.
pub const IDEMPOTENCY_COLUMNS: &str =
    "principal, scope, key, fingerprint, owner, state, status, response, created_at, expires_at";

/// The columns a claim inserts, in `rows::bind_key_claim` order (`status` and `response` stay NULL until done).
pub const IDEMPOTENCY_CLAIM_COLUMNS: &str =
    "principal, scope, key, fingerprint, owner, state, created_at, expires_at";

/// `idempotency_keys.state`: the first request under the key is still being served.
pub const KEY_IN_FLIGHT: i16 = 1;
/// `idempotency_keys.state`: it succeeded, and `status` and `response` hold its answer.
pub const KEY_DONE: i16 = 2;

/// Claiming a key: `IDEMPOTENCY_CLAIM_COLUMNS`, then the instant before which an in-flight claim is stale. The
/// insert wins unless a live record holds the key; an expired record, or a stale in-flight one of the same
/// request (its instance died), is taken over in place. One statement, so that of several instances racing on
/// one key exactly one claims it (the primary key decides, `ON CONFLICT` in both databases).
pub fn claim_key(prefix: char) -> String {
    let n = column_count(IDEMPOTENCY_CLAIM_COLUMNS);
    // 6: state, 7: created_at (now), n + 1: stale_before.
    let rest = format!(
        " ON CONFLICT (principal, scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
         owner = excluded.owner, state = excluded.state, status = NULL, response = NULL, \
         created_at = excluded.created_at, expires_at = excluded.expires_at \
         WHERE idempotency_keys.expires_at <= {prefix}7 OR (idempotency_keys.state = {prefix}6 \
         AND idempotency_keys.created_at <= {prefix}{} AND idempotency_keys.fingerprint = excluded.fingerprint)",
        n + 1
    );
    insert(prefix, "idempotency_keys", IDEMPOTENCY_CLAIM_COLUMNS, &rest)
}

/// `WHERE` one key is held by one owner in one state: the key's three columns, the owner, the state.
fn key_held(prefix: char, first: usize) -> String {
    format!(
        "principal = {prefix}{} AND scope = {prefix}{} AND key = {prefix}{} AND owner = {prefix}{} \
         AND state = {prefix}{}",
        first,
        first + 1,
        first + 2,
        first + 3,
        first + 4
    )
}

/// Completing a claim: the new state, status and response, then `key_held` (key, owner, in flight).
pub fn complete_key(prefix: char) -> String {
    format!(
        "UPDATE idempotency_keys SET state = {prefix}1, status = {prefix}2, response = {prefix}3 WHERE {}",
        key_held(prefix, 4)
    )
}

/// Releasing a claim: `key_held` (key, owner, in flight).
pub fn release_key(prefix: char) -> String {
    format!("DELETE FROM idempotency_keys WHERE {}", key_held(prefix, 1))
}

/// A key's live record: the key's three columns, then the instant it must not have expired by.
pub fn select_key(prefix: char) -> String {
    format!(
        "SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys WHERE principal = {prefix}1 \
         AND scope = {prefix}2 AND key = {prefix}3 AND expires_at > {prefix}4"
    )
}

/// A webhook as `rows::webhook` reads it, and as `rows::bind_webhook` inserts it.
pub const WEBHOOK_COLUMNS: &str = "id, url, events, secret, created_at";

/// A claimed delivery as `rows::delivery` reads it: the queue row (`d`) with its webhook's URL and secret (`w`).
pub const DELIVERY_COLUMNS: &str = "d.seq AS seq, d.webhook_id AS webhook_id, w.url AS url, \
    w.secret AS secret, d.event_id AS event_id, d.session_id AS session_id, d.body AS body, \
    d.attempts AS attempts, d.created_at AS created_at, d.claim AS claim";

/// "Pending" and "failed" of `webhook_deliveries.state`, written into the SQL text for the same reason as
/// [`AWAITING_REPLY`]: they are the conditions of the partial indexes `webhook_deliveries_queue` and
/// `webhook_deliveries_failed`, which a planner uses only when it sees them while planning. Delivered rows are
/// deleted, so there is no third state.
pub const DELIVERY_PENDING: &str = "state = 0";
pub const DELIVERY_FAILED: &str = "state = 2";

/// Queues an outbound event (bound by `rows::bind_outbound`) for every webhook whose filter holds its type: one
/// statement inside the transaction that commits the event, which inserts nothing while no webhook wants it.
/// `rest` ends the select (PostgreSQL's row lock).
pub fn queue_deliveries(p: char, rest: &str) -> String {
    format!(
        "INSERT INTO webhook_deliveries \
           (webhook_id, event_id, session_id, kind, body, created_at, next_attempt_at) \
         SELECT id, {p}1, {p}2, {p}3, {p}4, {p}5, {p}5 FROM webhooks WHERE (events & {p}6) <> 0{rest}"
    )
}

/// A pending delivery `d` whose webhook and session have no earlier pending one: the head of its queue, the only
/// one of them that may go.
pub const QUEUE_HEAD: &str = "NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.state = 0 \
    AND e.webhook_id = d.webhook_id AND e.session_id = d.session_id AND e.seq < d.seq)";

/// `messages.reply_state`: where a message stands in the reply queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum ReplyState {
    /// No reply expected (an agent's own message).
    None = 0,
    Pending = 1,
    /// Claimed by a worker (`claimed_at` says when).
    InProgress = 2,
    Answered = 3,
    Failed = 4,
}

impl ReplyState {
    /// The stored value (`smallint` in PostgreSQL, an INTEGER in SQLite).
    pub const fn code(self) -> i16 {
        self as i16
    }
}

impl rusqlite::ToSql for ReplyState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(i64::from(self.code()).into())
    }
}

impl sqlx::Type<Postgres> for ReplyState {
    fn type_info() -> PgTypeInfo {
        <i16 as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for ReplyState {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <i16 as sqlx::Encode<'_, Postgres>>::encode_by_ref(&self.code(), buf)
    }
}

/// "Waiting for a reply" (pending or in progress), the states written into the SQL text instead of bound:
/// the partial index `messages_awaiting_reply` (`WHERE reply_state IN (1, 2)` in both migrations) is used only
/// when the planner sees these values while planning, which with bound parameters SQLite's does not (it would
/// read every message of a session to count its unanswered ones) and PostgreSQL's generic plans do not.
pub static AWAITING_REPLY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "reply_state IN ({}, {})",
        ReplyState::Pending.code(),
        ReplyState::InProgress.code()
    )
});

/// A JSON column's text. Our own types always serialise; the empty string is never written in practice.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A JSON column's value.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

/// An event's `kind` column (and the NOTIFY wire's).
pub fn event_kind(event: &SessionEvent) -> &'static str {
    event.kind().as_str()
}

/// An event's payload as the NOTIFY wire carries it (a JSON value inside the notification's JSON).
pub fn event_data_value(event: &SessionEvent) -> Value {
    event.stored_data()
}

/// An event's `data` column: its payload as JSON text.
pub fn encode_event_data(event: &SessionEvent) -> String {
    event.stored_json()
}

/// An event from its columns (or the NOTIFY wire's fields): the one way back from `event_kind` and
/// `encode_event_data` / `event_data_value`.
pub fn decode_event(
    seq: Option<i64>,
    session_id: Uuid,
    created_at: DateTime<Utc>,
    kind: &str,
    data: Value,
) -> Result<SessionEvent, BoxDynError> {
    Ok(SessionEvent::from_stored(
        seq, session_id, kind, data, created_at,
    )?)
}

/// The seq of a session's (`1`) event at offset `2` from its newest: with `2` the number of events kept, the
/// newest one to prune, if it has more. Walks the `events_by_session` index backwards, at most that many steps.
pub fn event_prune_cutoff(prefix: char) -> String {
    format!(
        "SELECT seq FROM events WHERE session_id = {prefix}1 ORDER BY seq DESC LIMIT 1 OFFSET {prefix}2"
    )
}

/// Deletes a session's (`1`) events up to seq `2` (the cutoff above).
pub fn prune_events(prefix: char) -> String {
    format!("DELETE FROM events WHERE session_id = {prefix}1 AND seq <= {prefix}2")
}

/// Records on the session (`1`) that its events up to seq `2` are gone, so that a subscriber resuming from
/// an earlier id learns it missed some. Only ever raised.
pub fn mark_events_pruned(prefix: char) -> String {
    format!(
        "UPDATE sessions SET events_pruned_through = {prefix}2 \
         WHERE id = {prefix}1 AND events_pruned_through < {prefix}2"
    )
}

/// A session's (`1`) stored events after seq `2`, oldest first, at most `3`, each with the session's
/// `events_pruned_through` read in the same statement (one snapshot: no pruning can slip between the two).
pub fn events_after_with_horizon(prefix: char) -> String {
    format!(
        "SELECT {EVENT_COLUMNS}, COALESCE((SELECT events_pruned_through FROM sessions WHERE id = {prefix}1), 0) \
         AS pruned_through FROM events WHERE session_id = {prefix}1 AND seq > {prefix}2 ORDER BY seq LIMIT {prefix}3"
    )
}

/// The SQL direction of `ORDER BY created_at, seq` for a listing in `order`.
pub fn direction(order: Order) -> &'static str {
    match order {
        Order::OldestFirst => "ASC",
        Order::NewestFirst => "DESC",
    }
}

/// How many columns a list names.
pub fn column_count(columns: &str) -> usize {
    columns.split(',').count()
}

/// `?first, ?first+1, …` (SQLite), or `$first, …` with `prefix` '$' (PostgreSQL): one a column of `columns`.
pub fn placeholders(prefix: char, first: usize, columns: &str) -> String {
    (first..first + column_count(columns))
        .map(|n| format!("{prefix}{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `column = ?first, …`: an UPDATE's SET list, in the order of `columns`.
pub fn assignments(prefix: char, first: usize, columns: &str) -> String {
    columns
        .split(',')
        .enumerate()
        .map(|(i, column)| format!("{} = {prefix}{}", column.trim(), first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT INTO table (columns) VALUES (…)`, then `rest` (such as a `RETURNING`).
pub fn insert(prefix: char, table: &str, columns: &str, rest: &str) -> String {
    let values = placeholders(prefix, 1, columns);
    format!("INSERT INTO {table} ({columns}) VALUES ({values}){rest}")
}

/// `INSERT INTO table (columns) SELECT … rest`: an insert that `rest` makes conditional.
pub fn insert_select(prefix: char, table: &str, columns: &str, rest: &str) -> String {
    let values = placeholders(prefix, 1, columns);
    format!("INSERT INTO {table} ({columns}) SELECT {values} {rest}")
}

/// A new session's columns, `SESSION_KEY_COLUMNS` then `SESSION_STATE_COLUMNS`, as its insert binds them.
pub static SESSION_INSERT_COLUMNS: LazyLock<String> =
    LazyLock::new(|| format!("{SESSION_KEY_COLUMNS}, {SESSION_STATE_COLUMNS}"));

/// The conditional update of a session: its `SESSION_STATE_COLUMNS`, then its id and the version it must
/// still have.
pub fn update_session(prefix: char) -> String {
    conditional_update(prefix, SESSION_STATE_COLUMNS)
}

/// [`update_session`] for a heartbeat: its `SESSION_ACTIVITY_COLUMNS`, then its id and the version it must
/// still have.
pub fn update_activity(prefix: char) -> String {
    conditional_update(prefix, SESSION_ACTIVITY_COLUMNS)
}

fn conditional_update(prefix: char, columns: &str) -> String {
    let n = column_count(columns);
    format!(
        "UPDATE sessions SET {} WHERE id = {prefix}{} AND version = {prefix}{}",
        assignments(prefix, 1, columns),
        n + 1,
        n + 2
    )
}

/// A reply claim's check for a live claim on the session's messages: `1` the session, `2` in progress, `3`
/// the moment before which a claim is stale. It names [`AWAITING_REPLY`], as does [`claim_next_reply`], so that
/// both read the partial index of the messages still waiting; with the state bound alone they read every
/// message the session ever had, on every claim (each exchange made the next one slower).
pub fn live_claim(prefix: char) -> String {
    format!(
        "SELECT seq FROM messages WHERE session_id = {prefix}1 AND {} AND reply_state = {prefix}2 \
         AND claimed_at > {prefix}3 LIMIT 1",
        *AWAITING_REPLY
    )
}

/// Whether the session (`1`) has a message waiting for a reply (pending or in progress, stale or not): the
/// partial index's first entry of the session, if any. When it has none, a message it is sent is the next to
/// answer and can be stored claimed ([`MESSAGE_CLAIMED_INSERT_COLUMNS`]) instead of claimed after its insert.
pub fn awaits_reply(prefix: char) -> String {
    format!(
        "SELECT 1 FROM messages WHERE session_id = {prefix}1 AND {} LIMIT 1",
        *AWAITING_REPLY
    )
}

/// A reply claim: the session's first message pending, or claimed before the stale moment, marked in progress
/// and returned. `1` the session, `2` in progress, `3` now, `4` pending, `5` the stale moment.
pub fn claim_next_reply(prefix: char) -> String {
    format!(
        "UPDATE messages SET reply_state = {prefix}2, claimed_at = {prefix}3 WHERE seq = (SELECT seq FROM messages \
         WHERE session_id = {prefix}1 AND {} \
         AND (reply_state = {prefix}4 OR (reply_state = {prefix}2 AND claimed_at <= {prefix}5)) \
         ORDER BY seq LIMIT 1) RETURNING {MESSAGE_COLUMNS}",
        *AWAITING_REPLY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partial index is used only if a query's condition matches its own: both are written from here
    /// and in the migrations, so this holds them equal.
    #[test]
    fn awaiting_reply_is_the_partial_index_condition_of_both_migrations() {
        let index = format!(
            "messages_awaiting_reply ON messages (session_id, seq) WHERE {}",
            *AWAITING_REPLY
        );
        for migration in [
            include_str!("../../migrations/sqlite/0003_reply_queue.sql"),
            include_str!("../../migrations/postgres/0001_initial.sql"),
        ] {
            assert!(migration.contains(&index), "{index}");
        }
    }

    /// The delivery states written into queries are the conditions of the migrations' partial indexes.
    #[test]
    fn delivery_states_are_the_partial_index_conditions_of_both_migrations() {
        for migration in [
            include_str!("../../migrations/sqlite/0008_webhooks.sql"),
            include_str!("../../migrations/postgres/0006_webhooks.sql"),
        ] {
            for index in [
                format!("(webhook_id, session_id, seq) WHERE {DELIVERY_PENDING};"),
                format!("(created_at) WHERE {DELIVERY_FAILED};"),
            ] {
                assert!(migration.contains(&index), "{index}");
            }
        }
        assert!(QUEUE_HEAD.contains(&format!("e.{DELIVERY_PENDING}")));
    }

    #[test]
    fn sql_lists_number_their_placeholders_in_column_order() {
        assert_eq!(placeholders('?', 1, "a, b, c"), "?1, ?2, ?3");
        assert_eq!(assignments('$', 4, "a, b"), "a = $4, b = $5");
        assert_eq!(column_count(SESSION_STATE_COLUMNS), 12);
        assert_eq!(
            *MESSAGE_CLAIMED_INSERT_COLUMNS,
            format!("{MESSAGE_INSERT_COLUMNS}, claimed_at")
        );
        assert_eq!(
            insert('$', "t", "a, b", " RETURNING a"),
            "INSERT INTO t (a, b) VALUES ($1, $2) RETURNING a"
        );
        assert!(update_session('?').ends_with("warn_at = ?12 WHERE id = ?13 AND version = ?14"));
        assert!(claim_key('$').starts_with(
            "INSERT INTO idempotency_keys (principal, scope, key, fingerprint, owner, state, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT"
        ));
        assert!(claim_key('?').ends_with(
            "created_at <= ?9 AND idempotency_keys.fingerprint = excluded.fingerprint)"
        ));
        assert!(complete_key('?').ends_with("owner = ?7 AND state = ?8"));
        assert!(release_key('$').ends_with("key = $3 AND owner = $4 AND state = $5"));
    }
}
