//! Each session's stored fields as `getSession` or a heartbeat last wrote them, kept as bytes by session
//! version, so that reading an unchanged session again writes only the two fields that move with the clock, and
//! renewing it only those and its activity fields.
//!
//! Why: a client polling its session gets the same stored state again and again, and writing it as JSON (four
//! ids, three timestamps, the metadata, the timeout configuration) was the largest part of the route's own work
//! (see BENCHMARKS.md). Everything a session's answer holds but `timeRemaining` and `isNearExpiration`, which
//! come last, is fixed by the session's stored state, and every change of that state takes the session to a
//! new version: so the kept bytes are answered only for the same session at the same version, followed by those
//! two fields of the moment. A heartbeat takes the session to a new version that differs in its activity fields
//! alone (the last activity, the expiry, the renewal count): those are spliced into the kept bytes (writing the
//! whole session was the largest part of a heartbeat's own work on the workers, see BENCHMARKS.md).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use poem::Response;
use uuid::Uuid;

use super::json_out::json_answer;
use super::kept::{Kept, Weighed};
use super::models::SessionBody;
use crate::domain::session::{near_expiration, remaining_ms};
use crate::domain::{IsoStamp, Session, TimeoutConfig};
use crate::service::SessionView;

/// Bytes kept in all.
const KEPT_BYTES: u64 = 8 << 20;
/// Sessions expected at most, for the cache's sizing: about half a kilobyte each.
const EXPECTED_SESSIONS: usize = 20_000;
/// Where the fields of the moment begin in a session's answer (they are its last two).
const MOMENT: &[u8] = br#","timeRemaining":"#;

/// A session's answer up to the fields of the moment, the version it shows, and where its activity fields are.
struct Rendered {
    version: i64,
    stored: Bytes,
    activity: Option<Activity>,
}

/// Where a kept answer's activity fields are (`lastActivity`, `expiresAt`, `renewalCount`: what a renewal
/// changes), and what the rest was written from. A later version of the session with the same rest (its ids,
/// creation and metadata never change; its timeout configuration may) is answered with the kept bytes and its
/// own activity fields spliced in, rather than written whole.
struct Activity {
    last_activity: std::ops::Range<usize>,
    expires_at: std::ops::Range<usize>,
    renewal_count: usize,
    created_at: DateTime<Utc>,
    timeout: TimeoutConfig,
    /// The metadata's address, compared and never followed: a session's copies share it (`Session::metadata`).
    metadata: usize,
}

impl Activity {
    /// Finds the activity fields in a session's answer as serde wrote it, up to the fields of the moment. The
    /// first `"lastActivity"` and `"expiresAt"` are the session's own (only ids and a timestamp come before
    /// them), and so is the last `"renewalCount"` (only the timeout configuration's fixed keys come between it
    /// and the metadata).
    fn find(stored: &[u8], session: &Session) -> Option<Self> {
        let string = |key: &[u8]| {
            let start = find(stored, key)? + key.len();
            let len = stored[start..].iter().position(|&b| b == b'"')?;
            Some(start..start + len)
        };
        let last_activity = string(br#","lastActivity":""#)?;
        let expires_at = string(br#","expiresAt":""#)?;
        let key = br#","renewalCount":"#;
        let renewal_count = rfind(stored, key)? + key.len();
        (last_activity.end < expires_at.start && expires_at.end < renewal_count).then(|| Self {
            last_activity,
            expires_at,
            renewal_count,
            created_at: session.created_at,
            timeout: session.timeout,
            metadata: address(session),
        })
    }

    /// Whether `session` differs from what the kept answer shows in its activity fields at most.
    fn fits(&self, session: &Session) -> bool {
        self.created_at == session.created_at
            && self.timeout == session.timeout
            && self.metadata == address(session)
    }

    /// The kept answer with `session`'s activity fields, and where they are in it.
    fn splice(&self, stored: &[u8], session: &Session) -> (Vec<u8>, Activity) {
        let mut out = Vec::with_capacity(stored.len() + 64);
        out.extend_from_slice(&stored[..self.last_activity.start]);
        let last_activity = stamp(&mut out, session.last_activity);
        out.extend_from_slice(&stored[self.last_activity.end..self.expires_at.start]);
        let expires_at = stamp(&mut out, session.expires_at);
        out.extend_from_slice(&stored[self.expires_at.end..self.renewal_count]);
        let renewal_count = out.len();
        out.extend_from_slice(itoa::Buffer::new().format(session.renewal_count).as_bytes());
        let activity = Activity {
            last_activity,
            expires_at,
            renewal_count,
            created_at: self.created_at,
            timeout: self.timeout,
            metadata: self.metadata,
        };
        (out, activity)
    }
}

/// Writes a timestamp as serde writes it inside its quotes (`Timestamp`: nothing in it needs escaping); where.
fn stamp(out: &mut Vec<u8>, at: DateTime<Utc>) -> std::ops::Range<usize> {
    let start = out.len();
    out.extend_from_slice(IsoStamp::of(at).as_str().as_bytes());
    start..out.len()
}

fn address(session: &Session) -> usize {
    Arc::as_ptr(&session.metadata) as usize
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

impl Weighed for Rendered {
    fn bytes(&self) -> u64 {
        self.stored.len() as u64
    }
}

/// The kept renderings, by session.
pub struct RenderedSessions {
    sessions: Kept<Rendered>,
}

impl Default for RenderedSessions {
    fn default() -> Self {
        Self {
            sessions: Kept::new(EXPECTED_SESSIONS, KEPT_BYTES),
        }
    }
}

impl RenderedSessions {
    /// The session as `getSession` answers it: the kept bytes of its version with the fields of the moment, or of
    /// an earlier version with its activity fields spliced in (and kept), else the whole answer serialized (and
    /// its stored part kept).
    pub fn answer(&self, view: SessionView) -> Response {
        json_answer(self.body(view, true))
    }

    /// The session as a heartbeat answers it: as `answer`, but a splice is not kept. A heartbeat's version is
    /// answered once, where a read's is answered again; the next heartbeat splices into the same kept bytes.
    pub fn answer_renewed(&self, view: SessionView) -> Response {
        json_answer(self.body(view, false))
    }

    fn body(&self, view: SessionView, keep_splice: bool) -> Result<Vec<u8>, serde_json::Error> {
        let session = &view.session;
        let version = session.version;
        let kept = self.sessions.get(&session.id);
        let mut out = match kept.as_deref() {
            Some(kept) if kept.version == version => {
                let mut out = Vec::with_capacity(kept.stored.len() + 64);
                out.extend_from_slice(&kept.stored);
                out
            }
            Some(Rendered {
                stored,
                activity: Some(activity),
                ..
            }) if activity.fits(session) => {
                let (out, activity) = activity.splice(stored, session);
                if keep_splice {
                    self.keep(
                        session.id,
                        version,
                        Bytes::copy_from_slice(&out),
                        Some(activity),
                    );
                }
                out
            }
            _ => return self.written(view),
        };
        moment(&mut out, &view);
        Ok(out)
    }

    /// The whole answer serialized, and its stored part kept.
    fn written(&self, view: SessionView) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(1024);
        let body = SessionBody::from_view(view.clone());
        // Only a map with non-string keys can fail, and the models have none; answered as the API's error anyway.
        serde_json::to_writer(&mut out, &body)?;
        // The last occurrence: the metadata, which comes before, may hold the same text (a key of its own).
        let tokenless = body.session_token.is_none() && body.session_token_expires_at.is_none();
        if let Some(at) = tokenless.then(|| rfind(&out, MOMENT)).flatten() {
            let stored = &out[..at];
            let activity = Activity::find(stored, &view.session);
            self.keep(
                view.session.id,
                view.session.version,
                Bytes::copy_from_slice(stored),
                activity,
            );
        }
        Ok(out)
    }

    fn keep(&self, id: Uuid, version: i64, stored: Bytes, activity: Option<Activity>) {
        self.sessions.insert(
            id,
            Rendered {
                version,
                stored,
                activity,
            },
        );
    }
}

/// Appends the fields of the moment and the object's end, as serde writes them: integers and booleans in their
/// plain JSON form.
fn moment(out: &mut Vec<u8>, view: &SessionView) {
    let s = &view.session;
    out.extend_from_slice(MOMENT);
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(remaining_ms(s.expires_at, view.now))
            .as_bytes(),
    );
    out.extend_from_slice(if near_expiration(s.expires_at, &s.timeout, view.now) {
        br#","isNearExpiration":true}"#
    } else {
        br#","isNearExpiration":false}"#
    });
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use uuid::Uuid;

    use super::*;
    use crate::domain::Session;

    fn session() -> Session {
        let mut metadata = serde_json::Map::new();
        // The marker of the fields of the moment, as a string and as a key that is not the first.
        metadata.insert(
            "note".into(),
            serde_json::Value::String(r#","timeRemaining":1,"a\"b"#.into()),
        );
        metadata.insert("timeRemaining".into(), serde_json::Value::from(1));
        // The activity fields' keys, as keys of the metadata (after the session's own first two, before its last).
        metadata.insert("lastActivity".into(), serde_json::Value::from("x"));
        metadata.insert("expiresAt".into(), serde_json::Value::from("y"));
        metadata.insert("renewalCount".into(), serde_json::Value::from(1));
        let now = crate::clock::Clock::now(&crate::clock::MockClock::default());
        Session::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            metadata,
            crate::store::fixtures::half_hour(),
            now,
        )
    }

    /// The kept bytes with the fields of the moment are the answer serde writes, byte for byte, at any moment;
    /// a new version of the session is written again, not answered from the bytes of the old one.
    #[test]
    fn kept_bytes_answer_what_serde_writes() {
        let rendered = RenderedSessions::default();
        let mut s = session();
        let start = s.created_at;
        for minutes in [0, 1, 26, 29, 31] {
            let now = start + Duration::minutes(minutes);
            let view = SessionView {
                session: s.clone(),
                now,
            };
            let expected = serde_json::to_vec(&SessionBody::from_view(view.clone())).unwrap();
            assert_eq!(
                rendered.body(view, true).unwrap(),
                expected,
                "at +{minutes} min"
            );
            assert!(rendered.sessions.get(&s.id).is_some(), "kept");
        }
        // A renewal: a new version, with new stored fields.
        s.renewal_count += 1;
        s.last_activity = start + Duration::minutes(2);
        s.expires_at = start + Duration::minutes(32);
        s.version += 1;
        let view = SessionView {
            session: s.clone(),
            now: start + Duration::minutes(3),
        };
        let expected = serde_json::to_vec(&SessionBody::from_view(view.clone())).unwrap();
        assert_eq!(
            rendered.body(view.clone(), true).unwrap(),
            expected,
            "written again"
        );
        assert_eq!(rendered.body(view, true).unwrap(), expected, "and kept");
    }

    /// A renewed session (activity fields only) is answered by splicing them into the kept bytes, byte for byte
    /// what serde writes, renewal after renewal (the count's digits growing); a session whose configuration
    /// changed, or read again with metadata of its own, is written whole.
    #[test]
    fn renewals_are_spliced_and_other_changes_written_whole() {
        let rendered = RenderedSessions::default();
        let mut s = session();
        let start = s.created_at;
        let check = |s: &Session, minutes: i64, keep: bool, what: &str| {
            let view = SessionView {
                session: s.clone(),
                now: start + Duration::minutes(minutes),
            };
            let expected = serde_json::to_vec(&SessionBody::from_view(view.clone())).unwrap();
            assert_eq!(
                String::from_utf8(rendered.body(view, keep).unwrap()).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{what}"
            );
        };
        check(&s, 0, true, "first written whole");
        let first = s.version;
        for (i, count) in [1, 9, 10, 99, 100, 12_345].into_iter().enumerate() {
            let minutes = i as i64 + 1;
            s.renewal_count = count;
            s.last_activity = start + Duration::milliseconds(minutes * 61_001);
            s.expires_at = s.last_activity + Duration::minutes(30);
            s.version += 1;
            check(&s, minutes, false, "a heartbeat's answer");
            assert_eq!(
                rendered.sessions.get(&s.id).unwrap().version,
                first,
                "not kept"
            );
        }
        for (i, count) in [12_346, 7].into_iter().enumerate() {
            s.renewal_count = count;
            s.last_activity += Duration::seconds(1);
            s.version += 1;
            check(&s, 8 + i as i64, true, "a read of a renewed session");
            let kept = rendered.sessions.get(&s.id).unwrap();
            assert_eq!(kept.version, s.version, "the renewal's bytes kept");
            assert!(kept.activity.is_some(), "and where its activity is");
        }
        // A renewal of a session read back from the store: the same fields, its own copy of the metadata.
        s.metadata = Arc::new((*s.metadata).clone());
        s.version += 1;
        check(&s, 10, false, "other metadata: written whole");
        s.timeout.timeout_minutes = 45.0;
        s.expires_at = s.last_activity + Duration::minutes(45);
        s.version += 1;
        check(&s, 11, false, "another timeout: written whole");
        s.renewal_count += 1;
        s.version += 1;
        check(&s, 12, false, "renewed after it");
    }
}
