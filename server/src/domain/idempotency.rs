//! Idempotent requests: what identifies one (its key, scoped by who sent it and for which operation), what a
//! request's body is reduced to for comparison (its fingerprint), and what is kept of the first request under a
//! key (in flight, or done with its response), with no HTTP and no SQL.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::SessionError;

/// How long a key is kept after its first request: a retry within it gets the first response.
pub const RETENTION: Duration = Duration::hours(24);

/// Longest key, in characters (Stripe's bound; a UUID takes 36).
pub const MAX_KEY_CHARS: usize = 255;

/// A key as one principal used it for one operation. Keys of different principals, or of different operations
/// (or sessions), never meet, so that one caller's key cannot replay another caller's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Who sent it, as `auth::Access::principal_id` names them (never a credential).
    pub principal: String,
    /// The operation, with the session it acts on: `createSession`, `sendMessage:<sessionId>`.
    pub scope: String,
    /// The key the client chose.
    pub key: String,
}

/// A request body reduced to a SHA-256 of its canonical JSON: object keys sorted at every depth, no
/// whitespace. Two bodies that differ only in key order or spacing have the same fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `body` without its top-level fields `ignored` (a key sent in the body is not part of
    /// what it identifies: a retry may move it to the header).
    pub fn of_body(body: &Value, ignored: &[&str]) -> Self {
        let mut canonical = Vec::new();
        match body {
            Value::Object(map) => {
                let kept = map
                    .iter()
                    .filter(|(name, _)| !ignored.contains(&name.as_str()));
                write_object(&mut canonical, kept);
            }
            other => write_canonical(&mut canonical, other),
        }
        Self(Sha256::digest(&canonical).into())
    }

    /// Lowercase hex, as the store keeps it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads `to_hex`'s form back.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map.iter()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        // Scalars print as serde_json prints them: strings escaped, numbers as parsed.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// Sorted here rather than trusted to `serde_json::Map`, whose order is insertion order when any crate of
/// the build turns on serde_json's `preserve_order`.
fn write_object<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (name, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_canonical(out, &Value::String(name.clone()));
        out.push(b':');
        write_canonical(out, value);
    }
    out.push(b'}');
}

/// The first response under a key, kept to be answered again: its status and its JSON body, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// Where the first request under a key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Still being served (by `owner`, on some instance).
    InFlight,
    /// Served successfully; retries get this.
    Done(StoredResponse),
}

/// What the store keeps of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    /// The request that claimed it: only it may complete or release the claim.
    pub owner: Uuid,
    pub state: KeyState,
    /// When it was claimed.
    pub created_at: DateTime<Utc>,
    /// When it is forgotten (`created_at` + [`RETENTION`]).
    pub expires_at: DateTime<Utc>,
}

/// A request's claim on a key, as the store is asked to make it.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub owner: Uuid,
    pub now: DateTime<Utc>,
    /// An in-flight claim made at or before this instant is taken over (its request died with its instance).
    pub stale_before: DateTime<Utc>,
}

impl KeyClaim {
    pub fn expires_at(&self) -> DateTime<Utc> {
        super::timeout::add_saturating(self.now, RETENTION)
    }
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The key is ours: do the work, then complete or release it.
    Claimed,
    /// Another request holds it (in flight or done): the record says how.
    Held(IdempotencyRecord),
}

/// What a request under a key learns from the record that holds it, fingerprints compared.
pub enum Verdict {
    /// The same request was served: answer its response again.
    Replay(StoredResponse),
    /// The same request is still being served.
    Wait,
}

impl IdempotencyRecord {
    /// A request with `fingerprint` under this record's key: a different body is refused, whatever the state.
    pub fn judge(&self, fingerprint: &Fingerprint) -> Result<Verdict, SessionError> {
        if self.fingerprint != *fingerprint {
            return Err(SessionError::IdempotencyKeyReused {
                key: self.key.key.clone(),
            });
        }
        Ok(match &self.state {
            KeyState::InFlight => Verdict::Wait,
            KeyState::Done(response) => Verdict::Replay(response.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order_spacing_and_ignored_fields() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "s"}], "a": null}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":null,"b":[1,{"x":"s","y":2}]}"#).unwrap();
        assert_eq!(Fingerprint::of_body(&a, &[]), Fingerprint::of_body(&b, &[]));
        let with_id = json!({"a": null, "b": [1, {"x": "s", "y": 2}], "clientMessageId": "k"});
        assert_eq!(
            Fingerprint::of_body(&with_id, &["clientMessageId"]),
            Fingerprint::of_body(&a, &[])
        );
        assert_ne!(
            Fingerprint::of_body(&json!({"a": 1}), &[]),
            Fingerprint::of_body(&json!({"a": 2}), &[])
        );
        // Ignored only at the top level.
        assert_ne!(
            Fingerprint::of_body(&json!({"m": {"clientMessageId": 1}}), &["clientMessageId"]),
            Fingerprint::of_body(&json!({"m": {}}), &["clientMessageId"])
        );
    }

    #[test]
    fn fingerprints_round_trip_through_hex() {
        let f = Fingerprint::of_body(&json!({"content": "hi"}), &[]);
        assert_eq!(f.to_hex().len(), 64);
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }

    #[test]
    fn a_different_body_is_refused_whatever_the_state() {
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let mut record = IdempotencyRecord {
            key: IdempotencyKey {
                principal: "anonymous".into(),
                scope: "createSession".into(),
                key: "k".into(),
            },
            fingerprint: Fingerprint([1; 32]),
            owner: Uuid::nil(),
            state: KeyState::InFlight,
            created_at: at,
            expires_at: at + RETENTION,
        };
        assert!(matches!(
            record.judge(&Fingerprint([1; 32])),
            Ok(Verdict::Wait)
        ));
        record.state = KeyState::Done(StoredResponse {
            status: 201,
            body: "{}".into(),
        });
        assert!(matches!(
            record.judge(&Fingerprint([1; 32])),
            Ok(Verdict::Replay(r)) if r.status == 201
        ));
        assert!(matches!(
            record.judge(&Fingerprint([2; 32])),
            Err(SessionError::IdempotencyKeyReused { .. })
        ));
    }
}
