//! The domain: sessions, agents, timeout rules and input validation, with no HTTP and no SQL.

pub mod agent;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod ids;
pub mod message;
pub mod session;
pub mod timeout;
pub mod validate;
pub mod webhook;

use chrono::{DateTime, SecondsFormat, Utc};

pub use agent::{Agent, AgentBackend, OpenAiBackend};
pub use error::{SessionError, StoreError};
pub use event::{
    EventKind, EventPayload, ReplayGap, ReplyChunk, ReplyFailure, SessionChange, SessionEvent,
    SessionSnapshot,
};
pub use idempotency::{
    ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyRecord, KeyClaim, KeyState,
    StoredResponse,
};
pub use message::{AgentReply, Attachment, AttachmentKind, Message};
pub use session::{Liveness, Notice, RenewRefused, Session};
pub use timeout::{TimeoutConfig, TimeoutConfigPatch, TimeoutPolicy};
pub use webhook::{
    Delivery, DeliveryOutcome, EventFilter, OutboundEvent, RetryPolicy, Webhook, WebhookEventType,
};

/// ISO-8601 in UTC with millisecond precision, the one timestamp format of the API.
pub fn iso(t: DateTime<Utc>) -> String {
    IsoStamp::of(t).as_str().to_string()
}

/// [`iso`] without an allocation, for serializers: written by hand for the years 0 to 9999 and a time that is no
/// leap second, by chrono otherwise. Why: chrono's general formatter, and its string, were a visible share of
/// serializing a session or a page of messages.
pub enum IsoStamp {
    Short([u8; 24]),
    Long(String),
}

impl IsoStamp {
    pub fn of(t: DateTime<Utc>) -> Self {
        use chrono::{Datelike, Timelike};
        let (year, nanos) = (t.year(), t.nanosecond());
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return Self::Long(t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        put(20, 3, nanos / 1_000_000);
        Self::Short(out)
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Only ASCII digits and separators are written into it.
            Self::Short(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Self::Long(s) => s,
        }
    }
}

/// Serde of a timestamp in the API's format ([`iso`]); reads any RFC 3339 date-time.
pub mod iso_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::IsoStamp::of(*t).as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written stamp is chrono's, for every kind of instant: the epoch, sub-millisecond parts cut (not
    /// rounded), the last millisecond of a year, a leap day, years beyond 9999 and before 0, a leap second.
    #[test]
    fn iso_stamps_are_chronos() {
        let chrono_iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut instants = vec![
            DateTime::UNIX_EPOCH,
            DateTime::from_timestamp(1_735_689_600, 999_999_999).unwrap(),
            DateTime::from_timestamp(1_709_164_800, 1_000_000).unwrap(), // 2024-02-29
            DateTime::from_timestamp(253_402_300_799, 999_000_000).unwrap(), // 9999-12-31T23:59:59.999
            DateTime::from_timestamp(253_402_300_800, 0).unwrap(),           // year 10000
            DateTime::from_timestamp(-62_167_219_200, 0).unwrap(),           // year 0
            DateTime::from_timestamp(-62_167_219_201, 0).unwrap(),           // year -1
            DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(), // a leap second
        ];
        // And a spread of ordinary instants.
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = x.rem_euclid(253_402_300_800_000);
            instants.push(DateTime::from_timestamp_millis(ms).unwrap());
        }
        for t in instants {
            assert_eq!(IsoStamp::of(t).as_str(), chrono_iso(t), "{t:?}");
            assert_eq!(iso(t), chrono_iso(t));
        }
    }
}
