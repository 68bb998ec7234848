//! Outbound webhooks as the domain sees them: the event types an operator may subscribe to, a registered
//! webhook, the outbound event (with its JSON body) that a committed session event becomes, a claimed delivery,
//! and the retry schedule of failed deliveries. No HTTP, no SQL, no clock.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{EventPayload, Message, Session, SessionEvent, TimeoutConfig};

/// What a webhook can be told about. Each has a bit of its own in an [`EventFilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEventType {
    SessionCreated,
    /// A user's message was stored.
    MessageCreated,
    /// An agent's reply was stored.
    MessageReply,
    /// The session entered its warning threshold.
    SessionWarning,
    SessionExpired,
    SessionDeleted,
}

impl WebhookEventType {
    /// Every type, in the order lists show them.
    pub const ALL: [WebhookEventType; 6] = [
        WebhookEventType::SessionCreated,
        WebhookEventType::MessageCreated,
        WebhookEventType::MessageReply,
        WebhookEventType::SessionWarning,
        WebhookEventType::SessionExpired,
        WebhookEventType::SessionDeleted,
    ];

    /// The wire name: the `type` of a delivery and an entry of a webhook's `events`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::SessionCreated => "session.created",
            WebhookEventType::MessageCreated => "message.created",
            WebhookEventType::MessageReply => "message.reply",
            WebhookEventType::SessionWarning => "session.warning",
            WebhookEventType::SessionExpired => "session.expired",
            WebhookEventType::SessionDeleted => "session.deleted",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Its bit in a stored filter. Stored values: never renumber.
    pub const fn bit(self) -> i64 {
        match self {
            WebhookEventType::SessionCreated => 1,
            WebhookEventType::MessageCreated => 2,
            WebhookEventType::MessageReply => 4,
            WebhookEventType::SessionWarning => 8,
            WebhookEventType::SessionExpired => 16,
            WebhookEventType::SessionDeleted => 32,
        }
    }
}

/// The event types a webhook receives, as a bit set: stored as one integer, so that the store picks the webhooks
/// an event goes to with `events & bit <> 0` inside the transaction that commits the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter(i64);

impl EventFilter {
    pub fn all() -> Self {
        Self::of(WebhookEventType::ALL)
    }

    pub fn of(types: impl IntoIterator<Item = WebhookEventType>) -> Self {
        Self(types.into_iter().fold(0, |bits, t| bits | t.bit()))
    }

    /// A stored filter; bits of no known type are dropped.
    pub fn from_bits(bits: i64) -> Self {
        Self(bits & Self::all().0)
    }

    pub fn bits(self) -> i64 {
        self.0
    }

    pub fn contains(self, t: WebhookEventType) -> bool {
        self.0 & t.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The types it holds, in [`WebhookEventType::ALL`] order.
    pub fn types(self) -> Vec<WebhookEventType> {
        WebhookEventType::ALL
            .into_iter()
            .filter(|t| self.contains(*t))
            .collect()
    }
}

/// A registered receiver of events.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: EventFilter,
    /// `whsec_` and the base64 of the key the deliveries are signed with. Shown once, at registration.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// An event on its way out: what the store queues, in the transaction that commits the event, for each webhook
/// whose filter holds `kind`. `body` is the delivery's JSON, made once, so that every attempt sends (and signs)
/// the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundEvent {
    /// The delivery id (`webhook-id`, and `id` in the body): one per event, the same for every webhook and
    /// every attempt, so that receivers can drop duplicates.
    pub id: Uuid,
    pub kind: WebhookEventType,
    pub session_id: Uuid,
    pub at: DateTime<Utc>,
    pub body: String,
}

/// The body of every delivery: `{id, type, timestamp, data}`.
#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    id: Uuid,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "super::iso_format")]
    timestamp: DateTime<Utc>,
    data: &'a D,
}

/// `data` of `session.created`: the new session.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedData<'a> {
    session_id: Uuid,
    channel_id: Uuid,
    agent_id: Uuid,
    user_id: Uuid,
    #[serde(with = "super::iso_format")]
    created_at: DateTime<Utc>,
    #[serde(with = "super::iso_format")]
    expires_at: DateTime<Utc>,
    metadata: &'a Map<String, Value>,
    timeout_config: TimeoutConfig,
}

/// `data` of `message.created` and `message.reply`: the stored message, in the API's `Message` shape.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageData<'a> {
    session_id: Uuid,
    message: &'a Message,
}

/// `data` of `session.warning`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WarningData {
    session_id: Uuid,
    #[serde(with = "super::iso_format")]
    expires_at: DateTime<Utc>,
    /// Milliseconds from the warning to the expiry.
    time_remaining: i64,
    warning_threshold_minutes: f64,
}

/// `data` of `session.expired`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExpiredData {
    session_id: Uuid,
    #[serde(with = "super::iso_format")]
    expired_at: DateTime<Utc>,
}

/// `data` of `session.deleted`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeletedData {
    session_id: Uuid,
}

impl OutboundEvent {
    fn new<D: Serialize>(
        kind: WebhookEventType,
        session_id: Uuid,
        at: DateTime<Utc>,
        data: &D,
    ) -> Self {
        let id = Uuid::new_v4();
        let envelope = Envelope {
            id,
            kind: kind.as_str(),
            timestamp: at,
            data,
        };
        Self {
            id,
            kind,
            session_id,
            at,
            // Our own types always serialise.
            body: serde_json::to_string(&envelope).unwrap_or_default(),
        }
    }

    /// `session.created` for a session just stored.
    pub fn session_created(s: &Session) -> Self {
        let data = CreatedData {
            session_id: s.id,
            channel_id: s.channel_id,
            agent_id: s.agent_id,
            user_id: s.user_id,
            created_at: s.created_at,
            expires_at: s.expires_at,
            metadata: &s.metadata,
            timeout_config: s.timeout,
        };
        Self::new(WebhookEventType::SessionCreated, s.id, s.created_at, &data)
    }

    /// What a committed session event becomes, if webhooks hear of it at all: stored messages, warnings,
    /// expiries and deletions do; renewals, reply chunks and the internal reply failures do not.
    pub fn of(event: &SessionEvent) -> Option<Self> {
        let session_id = event.session_id;
        let at = event.at;
        Some(match &event.payload {
            EventPayload::Message(message) => {
                let kind = if message.is_agent {
                    WebhookEventType::MessageReply
                } else {
                    WebhookEventType::MessageCreated
                };
                Self::new(
                    kind,
                    session_id,
                    at,
                    &MessageData {
                        session_id,
                        message,
                    },
                )
            }
            EventPayload::Warning {
                expires_at,
                warning_threshold_minutes,
            } => {
                let data = WarningData {
                    session_id,
                    expires_at: *expires_at,
                    time_remaining: (*expires_at - at).num_milliseconds().max(0),
                    warning_threshold_minutes: *warning_threshold_minutes,
                };
                Self::new(WebhookEventType::SessionWarning, session_id, at, &data)
            }
            EventPayload::Expired { expired_at } => {
                let data = ExpiredData {
                    session_id,
                    expired_at: *expired_at,
                };
                Self::new(WebhookEventType::SessionExpired, session_id, at, &data)
            }
            EventPayload::Deleted => {
                let data = DeletedData { session_id };
                Self::new(WebhookEventType::SessionDeleted, session_id, at, &data)
            }
            EventPayload::Chunk(_)
            | EventPayload::Session { .. }
            | EventPayload::ReplyFailed { .. } => return None,
        })
    }
}

/// A delivery a dispatcher has claimed: one event for one webhook, leased to that dispatcher until its lease
/// ends (then another may take it over).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Queue order, which is commit order within a session.
    pub seq: i64,
    pub webhook_id: Uuid,
    pub url: String,
    pub secret: String,
    pub event_id: Uuid,
    pub session_id: Uuid,
    pub body: String,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// When the event was committed: the age limit of retries counts from here.
    pub enqueued_at: DateTime<Utc>,
    /// The claim this delivery was taken under; its outcome is recorded only while the claim still holds.
    pub claim: Uuid,
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// A 2xx: the delivery leaves the queue, and the next event of its session may go.
    Delivered,
    /// Failed; tried again at `at`, and nothing after it in its session goes before.
    Retry { at: DateTime<Utc>, error: String },
    /// Failed for the last time: kept, marked failed, and no longer holding its session's queue.
    Failed { error: String },
}

/// When failed deliveries are tried again: exponential backoff from `first_delay`, doubling up to `max_delay`,
/// until `max_attempts` attempts or until the next one would come later than `max_age` after the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    /// 5 s, 10 s, 20 s, ... up to an hour between attempts, for up to 24 hours or 30 attempts.
    fn default() -> Self {
        Self {
            first_delay: Duration::seconds(5),
            max_delay: Duration::hours(1),
            max_attempts: 30,
            max_age: Duration::hours(24),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt.
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        let first = self.first_delay.num_milliseconds().max(1);
        let delay = first.saturating_mul(1_i64 << doublings);
        Duration::milliseconds(delay.min(self.max_delay.num_milliseconds().max(first)))
    }

    /// What a failed attempt of `delivery`, made at `now`, leads to.
    pub fn after_failure(
        &self,
        delivery: &Delivery,
        now: DateTime<Utc>,
        error: String,
    ) -> DeliveryOutcome {
        let at = now + self.delay(delivery.attempts);
        if delivery.attempts >= self.max_attempts || at > delivery.enqueued_at + self.max_age {
            DeliveryOutcome::Failed { error }
        } else {
            DeliveryOutcome::Retry { at, error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ReplyFailure, SessionChange, TimeoutConfigPatch, TimeoutPolicy};
    use serde_json::json;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_735_689_600_000 + ms).unwrap()
    }

    fn session() -> Session {
        let timeout = TimeoutPolicy::default().resolve(
            &TimeoutConfigPatch::default(),
            &TimeoutConfigPatch::default(),
        );
        let metadata = json!({"platform": "web"}).as_object().unwrap().clone();
        Session::new(Uuid::new_v4(), Uuid::new_v4(), metadata, timeout, at(0))
    }

    fn body(e: &OutboundEvent) -> Value {
        serde_json::from_str(&e.body).unwrap()
    }

    #[test]
    fn filters_are_bit_sets_of_the_types() {
        let all = EventFilter::all();
        assert_eq!(all.types(), WebhookEventType::ALL.to_vec());
        assert_eq!(all.bits(), 63);
        let two = EventFilter::of([
            WebhookEventType::SessionDeleted,
            WebhookEventType::MessageReply,
        ]);
        assert_eq!(
            two.types(),
            vec![
                WebhookEventType::MessageReply,
                WebhookEventType::SessionDeleted
            ]
        );
        assert!(!two.contains(WebhookEventType::MessageCreated));
        assert_eq!(EventFilter::from_bits(two.bits() | 1024), two);
        assert!(EventFilter::of([]).is_empty());
        for t in WebhookEventType::ALL {
            assert_eq!(WebhookEventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(WebhookEventType::parse("session.renewed"), None);
    }

    #[test]
    fn every_delivered_kind_has_its_envelope_and_data() {
        let s = session();
        let created = OutboundEvent::session_created(&s);
        let b = body(&created);
        assert_eq!(b["id"], created.id.to_string());
        assert_eq!(b["type"], "session.created");
        assert_eq!(b["timestamp"], "2025-01-01T00:00:00.000Z");
        assert_eq!(b["data"]["sessionId"], s.id.to_string());
        assert_eq!(b["data"]["metadata"]["platform"], "web");
        assert_eq!(b["data"]["timeoutConfig"]["timeoutMinutes"], 30.0);

        let user = Message {
            id: Uuid::new_v4(),
            seq: 0,
            session_id: s.id,
            author_id: s.user_id,
            is_agent: false,
            content: "hello".into(),
            metadata: Default::default(),
            attachments: None,
            in_reply_to: None,
            created_at: at(5),
        };
        let reply = Message {
            is_agent: true,
            in_reply_to: Some(user.id),
            ..user.clone()
        };
        let sent = OutboundEvent::of(&SessionEvent::message(&user)).unwrap();
        assert_eq!(sent.kind, WebhookEventType::MessageCreated);
        let b = body(&sent);
        assert_eq!(b["data"]["message"]["content"], "hello");
        assert_eq!(
            b["data"]["message"]["createdAt"],
            "2025-01-01T00:00:00.005Z"
        );
        assert_eq!(b["data"]["sessionId"], s.id.to_string());
        let answered = OutboundEvent::of(&SessionEvent::message(&reply)).unwrap();
        assert_eq!(answered.kind, WebhookEventType::MessageReply);
        assert_ne!(answered.id, sent.id, "one id per event");

        let warning = OutboundEvent::of(&SessionEvent::warning(&s, at(60_000))).unwrap();
        let b = body(&warning);
        assert_eq!(b["type"], "session.warning");
        assert_eq!(b["data"]["timeRemaining"], 30 * 60_000 - 60_000);
        let expired = OutboundEvent::of(&SessionEvent::expired(&s, at(1))).unwrap();
        assert_eq!(
            body(&expired)["data"]["expiredAt"],
            "2025-01-01T00:30:00.000Z"
        );
        let deleted = OutboundEvent::of(&SessionEvent::deleted(s.id, at(2))).unwrap();
        assert_eq!(
            body(&deleted)["data"],
            json!({"sessionId": s.id.to_string()})
        );

        for quiet in [
            SessionEvent::session(&s, SessionChange::Renewed, at(1)),
            SessionEvent::chunk(s.id, user.id, reply.id, "c", 0, at(1)),
            SessionEvent::reply_failed(
                s.id,
                user.id,
                ReplyFailure::TimedOut { after_ms: 1 },
                at(1),
            ),
        ] {
            assert_eq!(OutboundEvent::of(&quiet), None, "{:?}", quiet.kind());
        }
    }

    fn delivery(attempts: u32) -> Delivery {
        Delivery {
            seq: 1,
            webhook_id: Uuid::new_v4(),
            url: "http://127.0.0.1/".into(),
            secret: "whsec_".into(),
            event_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            body: "{}".into(),
            attempts,
            enqueued_at: at(0),
            claim: Uuid::new_v4(),
        }
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap_then_give_up() {
        let policy = RetryPolicy::default();
        let delays: Vec<i64> = (1..=12).map(|n| policy.delay(n).num_seconds()).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(policy.delay(u32::MAX), Duration::hours(1));
        assert_eq!(
            policy.after_failure(&delivery(1), at(0), "503".into()),
            DeliveryOutcome::Retry {
                at: at(5_000),
                error: "503".into()
            }
        );
        assert!(matches!(
            policy.after_failure(&delivery(30), at(0), "503".into()),
            DeliveryOutcome::Failed { .. }
        ));
        // Past the age limit, even with attempts left.
        let late = at(0) + Duration::hours(24) - Duration::seconds(1);
        assert!(matches!(
            policy.after_failure(&delivery(3), late, "503".into()),
            DeliveryOutcome::Failed { .. }
        ));
    }
}
