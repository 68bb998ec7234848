//! Each session's stored fields as `getSession` last wrote them, kept as bytes by session version, so that
//! reading an unchanged session again writes only the two fields that move with the clock.
//!
//! Why: a client polling its session gets the same stored state again and again, and writing it as JSON (four
//! ids, three timestamps, the metadata, the timeout configuration) was the largest part of the route's own work
//! (see BENCHMARKS.md). Everything a session's answer holds but `timeRemaining` and `isNearExpiration`, which
//! come last, is fixed by the session's stored state, and every change of that state takes the session to a
//! new version: so the kept bytes are answered only for the same session at the same version, followed by those
//! two fields of the moment.

use std::io::Write;

use bytes::Bytes;
use poem::Response;

use super::json_out::json_answer;
use super::kept::{Kept, Weighed};
use super::models::SessionBody;
use crate::service::SessionView;

/// Bytes kept in all.
const KEPT_BYTES: u64 = 8 << 20;
/// Sessions expected at most, for the cache's sizing: about half a kilobyte each.
const EXPECTED_SESSIONS: usize = 20_000;
/// Where the fields of the moment begin in a session's answer (they are its last two).
const MOMENT: &[u8] = br#","timeRemaining":"#;

/// A session's answer up to the fields of the moment, and the version it shows.
struct Rendered {
    version: i64,
    stored: Bytes,
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
    /// The session as `getSession` answers it: the kept bytes of its version with the fields of the moment, else
    /// the whole answer serialized (and its stored part kept).
    pub fn answer(&self, view: SessionView) -> Response {
        json_answer(self.body(view))
    }

    fn body(&self, view: SessionView) -> Result<Vec<u8>, serde_json::Error> {
        let version = view.session.version;
        let body = SessionBody::from_view(view);
        if let Some(kept) = self
            .sessions
            .get(&body.session_id)
            .filter(|kept| kept.version == version)
        {
            let mut out = Vec::with_capacity(kept.stored.len() + 64);
            out.extend_from_slice(&kept.stored);
            // As serde writes them: integers and booleans in their plain JSON form, then the object's end.
            let _ = write!(
                out,
                r#","timeRemaining":{},"isNearExpiration":{}}}"#,
                body.time_remaining, body.is_near_expiration
            );
            return Ok(out);
        }
        let mut out = Vec::with_capacity(1024);
        // Only a map with non-string keys can fail, and the models have none; answered as the API's error anyway.
        serde_json::to_writer(&mut out, &body)?;
        // The last occurrence: the metadata, which comes before, may hold the same text (a key of its own).
        let tokenless = body.session_token.is_none() && body.session_token_expires_at.is_none();
        if let Some(at) = tokenless
            .then(|| out.windows(MOMENT.len()).rposition(|w| w == MOMENT))
            .flatten()
        {
            let stored = Bytes::copy_from_slice(&out[..at]);
            self.sessions
                .insert(body.session_id, Rendered { version, stored });
        }
        Ok(out)
    }
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
            assert_eq!(rendered.body(view).unwrap(), expected, "at +{minutes} min");
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
            rendered.body(view.clone()).unwrap(),
            expected,
            "written again"
        );
        assert_eq!(rendered.body(view).unwrap(), expected, "and kept");
    }
}
