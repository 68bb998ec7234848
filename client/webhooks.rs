//! Verifying the server's webhook deliveries on the receiving end (Standard Webhooks): the signature is `v1,`
//! and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret's decoded
//! bytes (the part after `whsec_`), and the timestamp must be recent, so that a captured delivery cannot be
//! replayed later.
//!
//! ```
//! use std::time::Duration;
//! use agent_sessions::webhooks;
//!
//! # fn handle(headers: &reqwest::header::HeaderMap, body: &[u8]) -> Result<(), webhooks::VerifyError> {
//! let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; // from createWebhook's answer
//! webhooks::verify_headers(secret, headers, body, Duration::from_secs(300))?;
//! let delivery: agent_sessions::types::WebhookDelivery = serde_json::from_slice(body).unwrap();
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The headers of a delivery.
pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// What a secret starts with.
const SECRET_PREFIX: &str = "whsec_";

/// Why a delivery is not taken as the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A header is missing or not text.
    MissingHeader(&'static str),
    /// The secret is not `whsec_` followed by base64.
    InvalidSecret,
    /// `webhook-timestamp` is not a number of seconds.
    InvalidTimestamp,
    /// The timestamp is further from now than the tolerance allows: stale (a replay?) or from the future.
    TimestampOutOfTolerance {
        /// The delivery's timestamp and the receiver's clock, in unix seconds.
        timestamp: i64,
        now: i64,
    },
    /// No `v1` signature of the header matches the body: a wrong secret, a changed body, or a forgery.
    NoMatchingSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::MissingHeader(name) => write!(f, "the {name} header is missing"),
            VerifyError::InvalidSecret => {
                f.write_str("the secret is not whsec_ followed by base64")
            }
            VerifyError::InvalidTimestamp => {
                f.write_str("the webhook-timestamp header is not a number of seconds")
            }
            VerifyError::TimestampOutOfTolerance { timestamp, now } => write!(
                f,
                "the delivery's timestamp {timestamp} is too far from now ({now})"
            ),
            VerifyError::NoMatchingSignature => f.write_str(
                "no signature matches the body: wrong secret, changed body, or a forgery",
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Verifies a delivery from its three header values and its body (the exact bytes received), against the
/// receiver's wall clock: Ok when a signature matches and the timestamp is within `tolerance` of now (five
/// minutes is usual).
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), VerifyError> {
    // The receiver's own clock is the one to judge freshness by; `verify_at` takes another.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    verify_at(secret, id, timestamp, signature, body, tolerance, now)
}

/// [`verify`], with the headers read from a request's header map.
pub fn verify_headers(
    secret: &str,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::MissingHeader(name))
    };
    verify(
        secret,
        header(ID_HEADER)?,
        header(TIMESTAMP_HEADER)?,
        header(SIGNATURE_HEADER)?,
        body,
        tolerance,
    )
}

/// [`verify`] at `now` (unix seconds) instead of the wall clock.
pub fn verify_at(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    tolerance: Duration,
    now: i64,
) -> Result<(), VerifyError> {
    let key = key(secret)?;
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if sent.abs_diff(now) > tolerance.unsigned_abs() {
        return Err(VerifyError::TimestampOutOfTolerance {
            timestamp: sent,
            now,
        });
    }
    // Several signatures may be listed (space-separated) while a secret is rotated; one is enough.
    let matches = signature.split_whitespace().any(|entry| {
        let Some(("v1", encoded)) = entry.split_once(',') else {
            return false;
        };
        let Ok(expected) = STANDARD.decode(encoded) else {
            return false;
        };
        // `verify_slice` compares in constant time.
        mac(&key, id, sent, body).verify_slice(&expected).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// The `webhook-signature` value the server sends for `body` with `id` at `timestamp`: for tests, and for
/// anyone relaying deliveries.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, VerifyError> {
    let tag = mac(&key(secret)?, id, timestamp, body)
        .finalize()
        .into_bytes();
    Ok(format!("v1,{}", STANDARD.encode(tag)))
}

fn key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(VerifyError::InvalidSecret)?;
    STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::InvalidSecret)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    /// The example's signature and body, checked at its time against this secret, id and timestamp header.
    fn signed_as(secret: &str, id: &str, timestamp: &str) -> Result<(), VerifyError> {
        verify_at(
            secret,
            id,
            timestamp,
            SIGNATURE,
            BODY,
            FIVE_MINUTES,
            TIMESTAMP,
        )
    }

    fn check(signature: &str, body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify_at(
            SECRET,
            ID,
            &TIMESTAMP.to_string(),
            signature,
            body,
            FIVE_MINUTES,
            now,
        )
    }

    #[test]
    fn the_specifications_example_verifies() {
        assert_eq!(sign(SECRET, ID, TIMESTAMP, BODY).unwrap(), SIGNATURE);
        assert_eq!(check(SIGNATURE, BODY, TIMESTAMP), Ok(()));
        assert_eq!(check(SIGNATURE, BODY, TIMESTAMP + 300), Ok(()));
        assert_eq!(check(SIGNATURE, BODY, TIMESTAMP - 300), Ok(()));
    }

    #[test]
    fn a_changed_body_id_or_secret_fails() {
        assert_eq!(
            check(SIGNATURE, br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        let other_id = signed_as(SECRET, "msg_other", &TIMESTAMP.to_string());
        assert_eq!(other_id, Err(VerifyError::NoMatchingSignature));
        let other_secret = signed_as("whsec_bm90IHRoZSBzZWNyZXQ=", ID, &TIMESTAMP.to_string());
        assert_eq!(other_secret, Err(VerifyError::NoMatchingSignature));
        // The timestamp is signed too: a delivery moved in time fails.
        let moved = signed_as(SECRET, ID, &(TIMESTAMP + 1).to_string());
        assert_eq!(moved, Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn stale_and_future_timestamps_fail() {
        for now in [TIMESTAMP + 301, TIMESTAMP - 301] {
            assert_eq!(
                check(SIGNATURE, BODY, now),
                Err(VerifyError::TimestampOutOfTolerance {
                    timestamp: TIMESTAMP,
                    now
                })
            );
        }
    }

    #[test]
    fn one_matching_signature_of_several_is_enough() {
        let listed = format!("v1,bm90IGl0 v2,abc {SIGNATURE}");
        assert_eq!(check(&listed, BODY, TIMESTAMP), Ok(()));
        for bad in [
            "",
            "v1,",
            "v1,!!!",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "garbage",
        ] {
            assert_eq!(
                check(bad, BODY, TIMESTAMP),
                Err(VerifyError::NoMatchingSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_inputs_say_what_is_wrong() {
        let at = |secret: &str, timestamp: &str| signed_as(secret, ID, timestamp);
        assert_eq!(
            at("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "1614265330"),
            Err(VerifyError::InvalidSecret)
        );
        assert_eq!(
            at("whsec_***", "1614265330"),
            Err(VerifyError::InvalidSecret)
        );
        assert_eq!(at(SECRET, "soon"), Err(VerifyError::InvalidTimestamp));

        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(ID_HEADER, ID.parse().unwrap());
        headers.insert(SIGNATURE_HEADER, SIGNATURE.parse().unwrap());
        assert_eq!(
            verify_headers(SECRET, &headers, BODY, FIVE_MINUTES),
            Err(VerifyError::MissingHeader(TIMESTAMP_HEADER))
        );
        // Against the wall clock, the example is years old.
        headers.insert(TIMESTAMP_HEADER, TIMESTAMP.to_string().parse().unwrap());
        assert!(matches!(
            verify_headers(SECRET, &headers, BODY, FIVE_MINUTES),
            Err(VerifyError::TimestampOutOfTolerance { .. })
        ));
    }
}
