//! Session tokens: HS256 JWTs that name one session and its user and expire no later than the session's hard end
//! (`createdAt + maxDurationMinutes`). The signing secret is shared by every instance on one database (configured,
//! or generated once and kept in the store), so any instance accepts any instance's tokens, also after a restart.
//!
//! Expiry is checked against the injected clock, not by the JWT library (which reads the wall clock), so tests
//! move time instead of waiting.

use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::timeout::add_saturating;
use crate::domain::Session;
use crate::store::SessionStore;

/// The store setting that holds the generated secret.
const SECRET_SETTING: &str = "session_token_secret";
/// The audience of every token: these are credentials for this API's session routes and nothing else.
const AUDIENCE: &str = "agent-sessions:session";
/// A configured secret shorter than this is refused: HS256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The session the token admits.
    sid: Uuid,
    /// The session's user.
    sub: Uuid,
    aud: String,
    iat: i64,
    exp: i64,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// A freshly signed token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Well signed, but past its expiry (then).
    Expired(DateTime<Utc>),
    /// Not a token of this server: malformed, wrongly signed, or for another audience.
    Invalid,
}

/// Tokens verified recently, at most this many: a client sends the same token with every call, and verifying
/// it (base64, an HMAC, JSON claims) cost about a third of a session lookup's CPU.
const VERIFIED_CAPACITY: usize = 16_384;

pub struct SessionTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    clock: Arc<dyn Clock>,
    /// An optional cap on a token's lifetime; without one a token lives until its session's hard end.
    ttl: Option<Duration>,
    /// The claims of tokens whose signature verified, by the whole token text (a token differing in any byte,
    /// its signature included, is not found and is verified afresh). Expiry is still checked on every use.
    /// Hashed with foldhash (seeded per process): the std hasher's SipHash over a whole token was a tenth of a
    /// token-authenticated lookup.
    verified: std::sync::RwLock<
        std::collections::HashMap<Box<str>, TokenClaims, foldhash::fast::RandomState>,
    >,
}

impl SessionTokens {
    pub fn new(secret: &[u8], clock: Arc<dyn Clock>, ttl: Option<Duration>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Checked below against the injected clock.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub", "aud"].map(String::from).into();
        validation.set_audience(&[AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            clock,
            ttl: ttl.filter(|d| *d > Duration::zero()),
            verified: Default::default(),
        }
    }

    /// A token for `session`, expiring at its hard end (or sooner, with a TTL), in whole seconds as JWTs count.
    pub fn issue(&self, session: &Session) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let now = self.clock.now();
        let mut until = session.hard_cap();
        if let Some(ttl) = self.ttl {
            until = until.min(add_saturating(now, ttl));
        }
        let exp = until.timestamp();
        let claims = Claims {
            sid: session.id,
            sub: session.user_id,
            aud: AUDIENCE.to_string(),
            iat: now.timestamp(),
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken {
            token,
            expires_at: DateTime::from_timestamp(exp, 0).unwrap_or(until),
        })
    }

    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let known = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        let claims = match known {
            Some(claims) => claims,
            None => {
                let claims = self.decode(token)?;
                let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
                if verified.len() >= VERIFIED_CAPACITY {
                    verified.clear();
                }
                verified.insert(token.into(), claims.clone());
                claims
            }
        };
        if claims.expires_at <= self.clock.now() {
            return Err(TokenError::Expired(claims.expires_at));
        }
        Ok(claims)
    }

    /// The claims of a well-signed token of this server, expired or not.
    fn decode(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        let expires_at = DateTime::from_timestamp(data.claims.exp, 0).ok_or(TokenError::Invalid)?;
        Ok(TokenClaims {
            session_id: data.claims.sid,
            user_id: data.claims.sub,
            expires_at,
        })
    }
}

/// The signing secret: the configured one, or the one kept in the store, generating and storing it first when
/// this is the first instance on the database to need it.
pub async fn shared_secret(
    configured: Option<&str>,
    store: &dyn SessionStore,
) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        if secret.len() < MIN_SECRET_BYTES {
            anyhow::bail!(
                "the token secret (--token-secret / TOKEN_SECRET) must be at least {MIN_SECRET_BYTES} bytes; \
                 leave it unset to have one generated and kept in the store"
            );
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh)
        .map_err(|e| anyhow::anyhow!("no randomness for the token secret: {e}"))?;
    let fresh = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fresh);
    Ok(store
        .setting_or_insert(SECRET_SETTING, &fresh)
        .await?
        .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;
    use crate::domain::{TimeoutConfigPatch, TimeoutPolicy};

    fn session(clock: &MockClock) -> Session {
        let timeout = TimeoutPolicy::default().resolve(
            &TimeoutConfigPatch::default(),
            &TimeoutConfigPatch::default(),
        );
        Session::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Default::default(),
            timeout,
            clock.now(),
        )
    }

    #[test]
    fn a_token_names_its_session_and_expires_at_the_hard_end() {
        let clock = Arc::new(MockClock::default());
        let tokens = SessionTokens::new(&[7; 32], clock.clone(), None);
        let s = session(&clock);
        let issued = tokens.issue(&s).unwrap();
        assert_eq!(issued.expires_at, s.hard_cap());
        let claims = tokens.verify(&issued.token).unwrap();
        assert_eq!((claims.session_id, claims.user_id), (s.id, s.user_id));
        clock.set(s.hard_cap() - Duration::milliseconds(1));
        assert!(tokens.verify(&issued.token).is_ok());
        clock.set(s.hard_cap());
        assert_eq!(
            tokens.verify(&issued.token),
            Err(TokenError::Expired(s.hard_cap()))
        );
    }

    #[test]
    fn a_ttl_shortens_tokens_and_other_secrets_or_shapes_are_refused() {
        let clock = Arc::new(MockClock::default());
        let tokens = SessionTokens::new(&[7; 32], clock.clone(), Some(Duration::minutes(10)));
        let s = session(&clock);
        let issued = tokens.issue(&s).unwrap();
        assert_eq!(issued.expires_at, clock.now() + Duration::minutes(10));
        let other = SessionTokens::new(&[8; 32], clock.clone(), None);
        assert_eq!(other.verify(&issued.token), Err(TokenError::Invalid));
        assert_eq!(tokens.verify("not.a.token"), Err(TokenError::Invalid));
        assert_eq!(tokens.verify(""), Err(TokenError::Invalid));
        // Another algorithm ("none") with the same claims is refused.
        let mut parts: Vec<&str> = issued.token.split('.').collect();
        let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"none","typ":"JWT"}"#);
        parts[0] = &none;
        assert_eq!(
            tokens.verify(&format!("{}.{}.", parts[0], parts[1])),
            Err(TokenError::Invalid)
        );
    }
}
