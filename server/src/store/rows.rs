//! Records to rows and back, once for both backends: each decoder reads its columns by name through `Row`, and
//! each binder writes a record's values through `Bind`, in the order of its column list in `schema.rs`.
//! `sqlite/rows.rs` and `postgres/rows.rs` fit the two drivers' rows and parameters to these traits.
//!
//! Decoders read the columns in the order of their lists: that is where SQLite's `Row` looks first.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::Postgres;

use super::schema::{self, ReplyState, KEY_DONE, KEY_IN_FLIGHT};
use super::SessionCounts;
use super::{from_ms, to_ms};
use crate::domain::{
    Agent, Delivery, EventFilter, Fingerprint, IdempotencyKey, IdempotencyRecord, KeyClaim,
    KeyState, Message, Notice, OutboundEvent, Session, SessionEvent, StoredResponse, TimeoutConfig,
    Webhook,
};

/// A value both drivers can read from a column.
pub trait Column:
    rusqlite::types::FromSql + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>
{
}

impl<T> Column for T where
    T: rusqlite::types::FromSql + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>
{
}

/// A value both drivers can bind to a parameter, borrowed for `'v` (both encode it at once).
pub trait Param<'v>:
    rusqlite::ToSql + sqlx::Encode<'v, Postgres> + sqlx::Type<Postgres> + Send + 'v
{
}

impl<'v, T> Param<'v> for T where
    T: rusqlite::ToSql + sqlx::Encode<'v, Postgres> + sqlx::Type<Postgres> + Send + 'v
{
}

/// One result row of either driver, read by column name.
pub trait Row {
    /// The driver's error, so that a decoder can run inside the driver's own row mapping.
    type Error;

    fn get<T: Column>(&self, column: &'static str) -> Result<T, Self::Error>;

    /// The error for a column whose value the record cannot take (bad JSON, an unknown event kind).
    fn invalid(&self, column: &'static str, cause: BoxDynError) -> Self::Error;

    fn time(&self, column: &'static str) -> Result<DateTime<Utc>, Self::Error> {
        Ok(from_ms(self.get(column)?))
    }

    fn json<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, Self::Error> {
        let text: String = self.get(column)?;
        schema::from_json(&text).map_err(|e| self.invalid(column, e.into()))
    }

    fn json_or_null<T: DeserializeOwned>(
        &self,
        column: &'static str,
    ) -> Result<Option<T>, Self::Error> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| schema::from_json(&text).map_err(|e| self.invalid(column, e.into())))
            .transpose()
    }
}

/// The parameters of one statement of either driver, bound in order from the first.
pub trait Bind<'v> {
    type Error;

    fn bind<T: Param<'v>>(&mut self, value: T) -> Result<(), Self::Error>;
}

/// Reads `schema::SESSION_COLUMNS`.
pub fn session<R: Row>(row: &R) -> Result<Session, R::Error> {
    Ok(Session {
        id: row.get("id")?,
        channel_id: row.get("channel_id")?,
        agent_id: row.get("agent_id")?,
        user_id: row.get("user_id")?,
        created_at: row.time("created_at")?,
        last_activity: row.time("last_activity")?,
        last_renewal: row.time("last_renewal")?,
        expires_at: row.time("expires_at")?,
        timeout: TimeoutConfig {
            timeout_minutes: row.get("timeout_minutes")?,
            auto_renew: row.get("auto_renew")?,
            max_duration_minutes: row.get("max_duration_minutes")?,
            warning_threshold_minutes: row.get("warning_threshold_minutes")?,
        },
        metadata: row.json("metadata")?,
        renewal_count: row.get("renewal_count")?,
        version: row.get("version")?,
        notice: Notice::from_i64(row.get::<i16>("notice")?.into()),
    })
}

/// Binds `schema::SESSION_KEY_COLUMNS`.
pub fn bind_session_key<'v, B: Bind<'v>>(b: &mut B, s: &'v Session) -> Result<(), B::Error> {
    b.bind(s.id)?;
    b.bind(s.channel_id)?;
    b.bind(s.agent_id)?;
    b.bind(s.user_id)?;
    b.bind(to_ms(s.created_at))
}

/// Binds `schema::SESSION_STATE_COLUMNS`.
pub fn bind_session_state<'v, B: Bind<'v>>(b: &mut B, s: &'v Session) -> Result<(), B::Error> {
    b.bind(to_ms(s.last_activity))?;
    b.bind(to_ms(s.last_renewal))?;
    b.bind(to_ms(s.expires_at))?;
    b.bind(s.timeout.timeout_minutes)?;
    b.bind(s.timeout.auto_renew)?;
    b.bind(s.timeout.max_duration_minutes)?;
    b.bind(s.timeout.warning_threshold_minutes)?;
    b.bind(schema::to_json(&s.metadata))?;
    b.bind(s.renewal_count)?;
    b.bind(s.version)?;
    b.bind(s.notice as i16)?;
    b.bind(to_ms(s.warn_at()))
}

/// Binds `schema::SESSION_ACTIVITY_COLUMNS`.
pub fn bind_session_activity<'v, B: Bind<'v>>(b: &mut B, s: &'v Session) -> Result<(), B::Error> {
    b.bind(to_ms(s.last_activity))?;
    b.bind(to_ms(s.last_renewal))?;
    b.bind(to_ms(s.expires_at))?;
    b.bind(s.renewal_count)?;
    b.bind(s.version)?;
    b.bind(s.notice as i16)?;
    b.bind(to_ms(s.warn_at()))
}

/// Reads the `total, active, expiring_soon` of a session count.
pub fn session_counts<R: Row>(row: &R) -> Result<SessionCounts, R::Error> {
    let count = |column| row.get::<i64>(column).map(|n| n.max(0) as u64);
    Ok(SessionCounts {
        total: count("total")?,
        active: count("active")?,
        expiring_soon: count("expiring_soon")?,
    })
}

/// Reads `schema::MESSAGE_COLUMNS`.
pub fn message<R: Row>(row: &R) -> Result<Message, R::Error> {
    Ok(Message {
        seq: row.get("seq")?,
        id: row.get("id")?,
        session_id: row.get("session_id")?,
        author_id: row.get("author_id")?,
        is_agent: row.get("is_agent")?,
        content: row.get("content")?,
        metadata: row.json("metadata")?,
        attachments: row.json_or_null("attachments")?,
        created_at: row.time("created_at")?,
        in_reply_to: row.get("in_reply_to")?,
    })
}

/// Binds `schema::MESSAGE_INSERT_COLUMNS`.
pub fn bind_message<'v, B: Bind<'v>>(
    b: &mut B,
    m: &'v Message,
    state: ReplyState,
) -> Result<(), B::Error> {
    b.bind(m.id)?;
    b.bind(m.session_id)?;
    b.bind(m.author_id)?;
    b.bind(m.is_agent)?;
    b.bind(m.content.as_str())?;
    b.bind(schema::to_json(&m.metadata))?;
    b.bind(m.attachments.as_ref().map(schema::to_json))?;
    b.bind(to_ms(m.created_at))?;
    b.bind(m.in_reply_to)?;
    b.bind(state)
}

/// Reads `schema::EVENT_COLUMNS`.
pub fn event<R: Row>(row: &R) -> Result<SessionEvent, R::Error> {
    let seq = row.get("seq")?;
    let session_id = row.get("session_id")?;
    let kind: String = row.get("kind")?;
    let data: Value = row.json("data")?;
    let created_at = row.time("created_at")?;
    schema::decode_event(Some(seq), session_id, created_at, &kind, data)
        .map_err(|e| row.invalid("kind", e))
}

/// Reads a row of `schema::events_after_with_horizon`: the event, and its session's `events_pruned_through`.
pub fn event_with_horizon<R: Row>(row: &R) -> Result<(SessionEvent, i64), R::Error> {
    let event = event(row)?;
    Ok((event, row.get("pruned_through")?))
}

/// Binds `schema::EVENT_INSERT_COLUMNS`.
pub fn bind_event<'v, B: Bind<'v>>(b: &mut B, e: &'v SessionEvent) -> Result<(), B::Error> {
    b.bind(e.session_id)?;
    b.bind(schema::event_kind(e))?;
    b.bind(schema::encode_event_data(e))?;
    b.bind(to_ms(e.at))
}

/// Reads `schema::AGENT_COLUMNS`.
pub fn agent<R: Row>(row: &R) -> Result<Agent, R::Error> {
    Ok(Agent {
        id: row.get("id")?,
        name: row.get("name")?,
        backend: row.json("backend")?,
        session_defaults: row.json("session_defaults")?,
        created_at: row.time("created_at")?,
    })
}

/// Binds `schema::AGENT_COLUMNS`.
pub fn bind_agent<'v, B: Bind<'v>>(b: &mut B, a: &'v Agent) -> Result<(), B::Error> {
    b.bind(a.id)?;
    b.bind(a.name.as_str())?;
    b.bind(schema::to_json(&a.backend))?;
    b.bind(schema::to_json(&a.session_defaults))?;
    b.bind(to_ms(a.created_at))
}

/// Reads `schema::IDEMPOTENCY_COLUMNS`.
pub fn idempotency_record<R: Row>(row: &R) -> Result<IdempotencyRecord, R::Error> {
    let key = IdempotencyKey {
        principal: row.get("principal")?,
        scope: row.get("scope")?,
        key: row.get("key")?,
    };
    let fingerprint: String = row.get("fingerprint")?;
    let fingerprint = Fingerprint::from_hex(&fingerprint)
        .ok_or_else(|| row.invalid("fingerprint", "not a SHA-256 digest in hex".into()))?;
    let owner = row.get("owner")?;
    let state: i16 = row.get("state")?;
    let status: Option<i16> = row.get("status")?;
    let response: Option<String> = row.get("response")?;
    let state = match (state, status, response) {
        (KEY_IN_FLIGHT, _, _) => KeyState::InFlight,
        (KEY_DONE, Some(status), Some(body)) => KeyState::Done(StoredResponse {
            status: u16::try_from(status).map_err(|e| row.invalid("status", e.into()))?,
            body,
        }),
        _ => return Err(row.invalid("state", format!("no such key state: {state}").into())),
    };
    Ok(IdempotencyRecord {
        key,
        fingerprint,
        owner,
        state,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
    })
}

/// Binds the three columns that name a key: `principal, scope, key`.
pub fn bind_key<'v, B: Bind<'v>>(b: &mut B, key: &'v IdempotencyKey) -> Result<(), B::Error> {
    b.bind(key.principal.as_str())?;
    b.bind(key.scope.as_str())?;
    b.bind(key.key.as_str())
}

/// Binds `schema::IDEMPOTENCY_CLAIM_COLUMNS`, then the claim's `stale_before` (see `schema::claim_key`).
pub fn bind_key_claim<'v, B: Bind<'v>>(b: &mut B, claim: &'v KeyClaim) -> Result<(), B::Error> {
    bind_key(b, &claim.key)?;
    b.bind(claim.fingerprint.to_hex())?;
    b.bind(claim.owner)?;
    b.bind(KEY_IN_FLIGHT)?;
    b.bind(to_ms(claim.now))?;
    b.bind(to_ms(claim.expires_at()))?;
    b.bind(to_ms(claim.stale_before))
}

/// Binds what `schema::complete_key` sets, then the key, its owner and the state it must still be in.
pub fn bind_key_completion<'v, B: Bind<'v>>(
    b: &mut B,
    key: &'v IdempotencyKey,
    owner: uuid::Uuid,
    response: &'v StoredResponse,
) -> Result<(), B::Error> {
    b.bind(KEY_DONE)?;
    b.bind(i16::try_from(response.status).unwrap_or(i16::MAX))?;
    b.bind(response.body.as_str())?;
    bind_key_owner(b, key, owner)
}

/// Binds the key, its owner and the in-flight state (`schema::release_key`, and the end of a completion).
pub fn bind_key_owner<'v, B: Bind<'v>>(
    b: &mut B,
    key: &'v IdempotencyKey,
    owner: uuid::Uuid,
) -> Result<(), B::Error> {
    bind_key(b, key)?;
    b.bind(owner)?;
    b.bind(KEY_IN_FLIGHT)
}

/// Reads `schema::WEBHOOK_COLUMNS`.
pub fn webhook<R: Row>(row: &R) -> Result<Webhook, R::Error> {
    Ok(Webhook {
        id: row.get("id")?,
        url: row.get("url")?,
        events: EventFilter::from_bits(row.get("events")?),
        secret: row.get("secret")?,
        created_at: row.time("created_at")?,
    })
}

/// Binds `schema::WEBHOOK_COLUMNS`.
pub fn bind_webhook<'v, B: Bind<'v>>(b: &mut B, w: &'v Webhook) -> Result<(), B::Error> {
    b.bind(w.id)?;
    b.bind(w.url.as_str())?;
    b.bind(w.events.bits())?;
    b.bind(w.secret.as_str())?;
    b.bind(to_ms(w.created_at))
}

/// Binds the parameters of `schema::queue_deliveries`.
pub fn bind_outbound<'v, B: Bind<'v>>(b: &mut B, e: &'v OutboundEvent) -> Result<(), B::Error> {
    b.bind(e.id)?;
    b.bind(e.session_id)?;
    b.bind(e.kind.as_str())?;
    b.bind(e.body.as_str())?;
    b.bind(to_ms(e.at))?;
    b.bind(e.kind.bit())
}

/// Reads `schema::DELIVERY_COLUMNS`.
pub fn delivery<R: Row>(row: &R) -> Result<Delivery, R::Error> {
    Ok(Delivery {
        seq: row.get("seq")?,
        webhook_id: row.get("webhook_id")?,
        url: row.get("url")?,
        secret: row.get("secret")?,
        event_id: row.get("event_id")?,
        session_id: row.get("session_id")?,
        body: row.get("body")?,
        attempts: row.get::<i32>("attempts")?.max(0) as u32,
        enqueued_at: row.time("created_at")?,
        claim: row.get("claim")?,
    })
}
