//! The health route's body, kept for the millisecond it describes: every call in that millisecond that finds the
//! same counts gets the same bytes, written once.
//!
//! Why: orchestrators and load balancers poll the route, and under load tens of its calls fall in one
//! millisecond. Everything the body holds is fixed by the counts and the instant to the millisecond (its
//! timestamp and uptime are written to the millisecond), so writing it again for each call (a timestamp, a float,
//! two counts) was work done over and over for the same bytes (see BENCHMARKS.md).

use std::sync::Mutex;

use bytes::Bytes;
use poem::Response;

use super::json_out::json_answer;
use super::models::HealthBody;
use crate::service::Health;

/// What fixes the body's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Moment {
    millis: i64,
    uptime: u64,
    active: u64,
    expiring_soon: u64,
}

impl Moment {
    fn of(health: &Health) -> Self {
        Self {
            millis: health.now.timestamp_millis(),
            uptime: health.uptime_seconds.to_bits(),
            active: health.counts.active,
            expiring_soon: health.counts.expiring_soon,
        }
    }
}

/// The last body written, and what it was written for.
#[derive(Default)]
pub struct RenderedHealth {
    last: Mutex<Option<(Moment, Bytes)>>,
}

impl RenderedHealth {
    /// The route's answer: the kept body if it was written for the same moment and counts, else a new one (kept).
    pub fn answer(&self, health: Health) -> Response {
        json_answer(self.body(health))
    }

    fn body(&self, health: Health) -> Result<Bytes, serde_json::Error> {
        let moment = Moment::of(&health);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, body)) = last.as_ref().filter(|(kept, _)| *kept == moment) {
            return Ok(body.clone());
        }
        let body = Bytes::from(serde_json::to_vec(&HealthBody::from(health))?);
        *last = Some((moment, body.clone()));
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};

    use super::*;
    use crate::store::SessionCounts;

    fn health(now: DateTime<Utc>, active: u64, uptime_seconds: f64) -> Health {
        Health {
            counts: SessionCounts {
                total: active + 7,
                active,
                expiring_soon: active / 2,
            },
            now,
            uptime_seconds,
        }
    }

    fn written(health: Health) -> Bytes {
        Bytes::from(serde_json::to_vec(&HealthBody::from(health)).unwrap())
    }

    /// Every answer is what serde writes for its own call, whether the body was kept or not: again within the
    /// millisecond, with other counts in it, in the next millisecond, and back to the first.
    #[test]
    fn kept_bodies_answer_what_serde_writes() {
        let rendered = RenderedHealth::default();
        let start = DateTime::parse_from_rfc3339("2026-12-01T03:30:57.111Z")
            .unwrap()
            .with_timezone(&Utc);
        let calls = [
            health(start, 10, 1.5),
            health(start + Duration::microseconds(400), 10, 1.5),
            health(start + Duration::microseconds(500), 11, 1.5),
            health(start + Duration::milliseconds(1), 11, 1.501),
            health(start, 10, 1.5),
        ];
        for call in calls {
            let expected = written(call.clone());
            assert_eq!(rendered.body(call).unwrap(), expected);
        }
        assert_ne!(
            rendered.body(health(start, 10, 1.5)).unwrap(),
            rendered.body(health(start, 11, 1.5)).unwrap(),
            "new counts in the same millisecond are written anew"
        );
    }
}
