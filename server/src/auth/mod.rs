//! Who is calling: API keys (the operator), session tokens (an end user's client, for one session), and the
//! per-principal rate limits. `Access` turns a request's credentials into a `Principal`; which routes a principal
//! may use is the API's business (`api/access.rs`), which applies this before anything reads the body or the store.
//!
//! With no key configured the server is open, as the elizaOS reference is: every caller acts as the operator.
//! `main` allows that only on a loopback address unless told otherwise (protected mode).

mod keys;
mod limits;
mod tokens;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use keys::{ApiKeys, KeyId};
pub use limits::{LimitKey, RateDecision, RateLimitSettings, RateLimits};
pub use tokens::{shared_secret, IssuedToken, SessionTokens, TokenClaims, TokenError};

use crate::clock::Clock;
use crate::store::SessionStore;

/// Access settings, from configuration.
#[derive(Clone, Default)]
pub struct AccessSettings {
    pub api_keys: Vec<String>,
    /// The token signing secret; None: generated once and kept in the store.
    pub token_secret: Option<String>,
    /// A cap on session tokens' lifetime; None: until the session's hard end.
    pub token_ttl: Option<chrono::Duration>,
    pub limits: RateLimitSettings,
    /// Read the client IP from `X-Forwarded-For` (behind a proxy that sets it).
    pub trust_forwarded_for: bool,
}

impl std::fmt::Debug for AccessSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessSettings")
            .field(
                "api_keys",
                &format_args!("{} redacted", self.api_keys.len()),
            )
            .field(
                "token_secret",
                &self.token_secret.as_ref().map(|_| "redacted"),
            )
            .field("token_ttl", &self.token_ttl)
            .field("limits", &self.limits)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .finish()
    }
}

/// Who a request comes from, as its credentials say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator: a valid API key, or any caller of a server with no key configured (`key` None).
    Operator { key: Option<KeyId> },
    /// An end user's client, admitted to one session's routes.
    Session(TokenClaims),
    /// No credentials.
    Anonymous,
    /// Credentials that are not valid.
    Rejected(Rejection),
}

impl Principal {
    /// The kind of caller, for logs: never the credential itself.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Operator { key: Some(_) } => "api_key",
            Principal::Operator { key: None } => "open",
            Principal::Session(_) => "session_token",
            Principal::Anonymous => "anonymous",
            Principal::Rejected(_) => "rejected",
        }
    }
}

/// Why credentials were refused; the message never repeats them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownKey,
    InvalidToken,
    ExpiredToken(DateTime<Utc>),
}

impl Rejection {
    pub fn message(&self) -> String {
        match self {
            Rejection::UnknownKey => "Invalid API key".to_string(),
            Rejection::InvalidToken => {
                "Invalid credentials: the bearer token is neither an API key nor a session token of this server"
                    .to_string()
            }
            Rejection::ExpiredToken(at) => {
                format!("The session token expired at {}", crate::domain::iso(*at))
            }
        }
    }
}

/// The credentials a request presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// `X-API-KEY`.
    pub api_key: Option<&'a str>,
    /// `Authorization: Bearer …` (or, on the events route only, `?access_token=`).
    pub bearer: Option<&'a str>,
}

pub struct Access {
    keys: ApiKeys,
    tokens: SessionTokens,
    limits: RateLimits,
    trust_forwarded_for: bool,
}

impl Access {
    /// Builds access control over `store` (which keeps the generated token secret) and `clock` (token expiry,
    /// rate-limit windows).
    pub async fn open(
        settings: AccessSettings,
        store: &dyn SessionStore,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let secret = shared_secret(settings.token_secret.as_deref(), store).await?;
        Ok(Self::new(settings, &secret, clock))
    }

    pub fn new(settings: AccessSettings, secret: &[u8], clock: Arc<dyn Clock>) -> Self {
        Self {
            keys: ApiKeys::new(&settings.api_keys),
            tokens: SessionTokens::new(secret, clock.clone(), settings.token_ttl),
            limits: RateLimits::new(settings.limits, clock),
            trust_forwarded_for: settings.trust_forwarded_for,
        }
    }

    /// True when API keys are configured: then every non-public route needs credentials.
    pub fn requires_credentials(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn tokens(&self) -> &SessionTokens {
        &self.tokens
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    pub fn trust_forwarded_for(&self) -> bool {
        self.trust_forwarded_for
    }

    /// The principal `credentials` make. Any invalid credential is a rejection (it is never silently ignored in
    /// favour of another), except on a server without keys, which is open anyway and, like the reference, ignores
    /// keys it was not given; a valid session token still scopes its caller to that session there. With both a
    /// valid key and a valid token, the key decides.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Principal {
        let open = self.keys.is_empty();
        let key = credentials.api_key.map(|k| self.keys.find(k));
        let bearer = credentials.bearer.map(|b| self.bearer(b));
        if !open {
            // Every credential sent must be valid: a bad one next to a good one is still refused, so that a
            // client's mistake (a stale token, a mistyped header) shows instead of passing unnoticed.
            if key == Some(None) {
                return Principal::Rejected(Rejection::UnknownKey);
            }
            match &bearer {
                Some(Err(TokenError::Invalid)) => {
                    return Principal::Rejected(Rejection::InvalidToken)
                }
                Some(Err(TokenError::Expired(at))) => {
                    return Principal::Rejected(Rejection::ExpiredToken(*at))
                }
                _ => {}
            }
        }
        if let Some(Some(id)) = key {
            return Principal::Operator { key: Some(id) };
        }
        match bearer {
            Some(Ok(principal)) => principal,
            _ if open => Principal::Operator { key: None },
            _ => Principal::Anonymous,
        }
    }

    /// What a bearer credential is: a key, or else a session token. One shaped as a token (three dot-separated
    /// parts) is tried as a token first, so that the calls browsers make most do not also pay for a key's
    /// digest; a key of that shape is still found when it is no valid token.
    fn bearer(&self, presented: &str) -> Result<Principal, TokenError> {
        let as_key = || {
            self.keys
                .find(presented)
                .map(|id| Principal::Operator { key: Some(id) })
        };
        if presented.bytes().filter(|&b| b == b'.').count() == 2 {
            return match self.tokens.verify(presented) {
                Ok(claims) => Ok(Principal::Session(claims)),
                Err(e) => as_key().ok_or(e),
            };
        }
        as_key().map_or_else(|| self.tokens.verify(presented).map(Principal::Session), Ok)
    }

    /// A stable, storable name of `principal`, by which idempotency keys are scoped: `key:<digest>` for an API
    /// key (a digest, never the key; the same on every instance configured with it), `session:<id>` for a
    /// session token, and `anonymous` for every caller of a server without keys (they cannot be told apart).
    pub fn principal_id(&self, principal: &Principal) -> String {
        match principal {
            Principal::Operator { key: Some(id) } => match self.keys.identity(*id) {
                Some(identity) => format!("key:{identity}"),
                None => "anonymous".to_string(),
            },
            Principal::Session(claims) => format!("session:{}", claims.session_id),
            Principal::Operator { key: None } | Principal::Anonymous | Principal::Rejected(_) => {
                "anonymous".to_string()
            }
        }
    }

    /// The rate-limit bucket of a request from `principal` at client address `ip`. None for the callers of a
    /// server without keys: it is on loopback (a developer's machine, a benchmark) or, with `--allow-anonymous`,
    /// behind a proxy that authenticates, whose limits are the ones that can tell clients apart.
    pub fn limit_key(principal: &Principal, ip: std::net::IpAddr) -> Option<LimitKey> {
        Some(match principal {
            Principal::Operator { key: Some(id) } => LimitKey::Key(*id),
            Principal::Operator { key: None } => return None,
            Principal::Session(claims) => LimitKey::Session(claims.session_id),
            Principal::Anonymous | Principal::Rejected(_) => {
                LimitKey::Anonymous(LimitKey::client(ip))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;

    fn access(keys: &[&str]) -> Access {
        Access::new(
            AccessSettings {
                api_keys: keys.iter().map(|k| k.to_string()).collect(),
                ..Default::default()
            },
            &[1; 32],
            Arc::new(MockClock::default()),
        )
    }

    fn creds<'a>(api_key: Option<&'a str>, bearer: Option<&'a str>) -> Credentials<'a> {
        Credentials { api_key, bearer }
    }

    #[test]
    fn keys_configured_every_bad_credential_is_rejected() {
        let a = access(&["k1", "k2"]);
        assert!(a.requires_credentials());
        assert_eq!(
            a.authenticate(creds(Some("k2"), None)),
            Principal::Operator {
                key: Some(KeyId(1))
            }
        );
        assert_eq!(
            a.authenticate(creds(None, Some("k1"))),
            Principal::Operator {
                key: Some(KeyId(0))
            }
        );
        assert_eq!(a.authenticate(creds(None, None)), Principal::Anonymous);
        assert_eq!(
            a.authenticate(creds(Some("nope"), Some("k1"))),
            Principal::Rejected(Rejection::UnknownKey)
        );
        assert_eq!(
            a.authenticate(creds(None, Some("nope"))),
            Principal::Rejected(Rejection::InvalidToken)
        );
    }

    /// A bearer shaped as a token is tried as one first, and as a key after: both kinds are still told apart,
    /// whatever the shape, and a token-shaped bearer that is neither is refused as a token.
    #[test]
    fn bearers_of_either_shape_are_keys_or_tokens() {
        let a = access(&["k1", "dotted.api.key"]);
        assert_eq!(
            a.authenticate(creds(None, Some("dotted.api.key"))),
            Principal::Operator {
                key: Some(KeyId(1))
            }
        );
        use crate::domain::{Session, TimeoutConfigPatch, TimeoutPolicy};
        let none = TimeoutConfigPatch::default();
        let timeout = TimeoutPolicy::default().resolve(&none, &none);
        let now = MockClock::default().now();
        let session = Session::new(
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            Default::default(),
            timeout,
            now,
        );
        let token = a.tokens().issue(&session).unwrap().token;
        match a.authenticate(creds(None, Some(&token))) {
            Principal::Session(claims) => assert_eq!(claims.session_id, session.id),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.authenticate(creds(None, Some("not.a.token"))),
            Principal::Rejected(Rejection::InvalidToken)
        );
        assert_eq!(
            a.authenticate(creds(None, Some("k2"))),
            Principal::Rejected(Rejection::InvalidToken)
        );
    }

    #[test]
    fn without_keys_everyone_is_the_operator() {
        let a = access(&[]);
        assert!(!a.requires_credentials());
        for c in [
            creds(None, None),
            creds(Some("x"), None),
            creds(None, Some("y")),
        ] {
            assert_eq!(a.authenticate(c), Principal::Operator { key: None });
        }
    }
}
