//! Server configuration: command-line flags with environment-variable fallbacks, in one struct.

use clap::Parser;

use crate::api::stream_slots::StreamSlots;
use crate::api::{CorsOrigins, HttpSettings, StreamSettings};
use crate::auth::{AccessSettings, RateLimitSettings};
use crate::domain::TimeoutPolicy;
use crate::service::ServiceConfig;

/// elizaOS-compatible Sessions API server.
#[derive(Debug, Clone, Parser)]
#[command(name = "agent-sessions-server", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SERVER_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SERVER_PORT", default_value_t = 3000)]
    pub port: u16,

    /// Where sessions are stored: `sqlite:PATH` (created if missing) or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:data/agent-sessions.db"
    )]
    pub database_url: String,

    /// Inactivity timeout of a new session, in minutes (clamped to 1-10080).
    #[arg(long, env = "SESSION_DEFAULT_TIMEOUT_MINUTES", default_value_t = 30.0, value_parser = finite)]
    pub session_default_timeout_minutes: f64,

    /// Smallest timeout a session may have, in minutes (clamped to 1-60).
    #[arg(long, env = "SESSION_MIN_TIMEOUT_MINUTES", default_value_t = 5.0, value_parser = finite)]
    pub session_min_timeout_minutes: f64,

    /// Largest timeout a session may have, in minutes (clamped to 60-10080).
    #[arg(long, env = "SESSION_MAX_TIMEOUT_MINUTES", default_value_t = 1440.0, value_parser = finite)]
    pub session_max_timeout_minutes: f64,

    /// Default hard limit on a session's lifetime, in minutes (clamped to 60-20160).
    #[arg(long, env = "SESSION_MAX_DURATION_MINUTES", default_value_t = 720.0, value_parser = finite)]
    pub session_max_duration_minutes: f64,

    /// Default warning threshold before expiry, in minutes (clamped to 1-60).
    #[arg(long, env = "SESSION_WARNING_THRESHOLD_MINUTES", default_value_t = 5.0, value_parser = finite)]
    pub session_warning_threshold_minutes: f64,

    /// How often the sweeper purges sessions past retention, in minutes (clamped to 1-60).
    #[arg(long, env = "SESSION_CLEANUP_INTERVAL_MINUTES", default_value_t = 5.0, value_parser = finite)]
    pub session_cleanup_interval_minutes: f64,

    /// How long an expired session still answers 410 before it is purged (then 404), in minutes.
    #[arg(
        long,
        env = "SESSION_EXPIRED_RETENTION_MINUTES",
        default_value_t = 1440.0,
        value_parser = finite
    )]
    pub session_expired_retention_minutes: f64,

    /// How long an agent may take to answer before the exchange fails (504 `AGENT_TIMEOUT`), in seconds.
    #[arg(long, env = "AGENT_TIMEOUT_SECONDS", default_value_t = 60.0, value_parser = finite)]
    pub agent_timeout_seconds: f64,

    /// How many earlier messages an agent receives as context.
    #[arg(long, env = "AGENT_HISTORY_MESSAGES", default_value_t = 20)]
    pub agent_history_messages: u32,

    /// Interval of keep-alive comments on idle event streams, in seconds.
    #[arg(long, env = "EVENTS_KEEPALIVE_SECONDS", default_value_t = 15.0, value_parser = finite)]
    pub events_keepalive_seconds: f64,

    /// API keys of the operator and its backends, comma-separated (several at once, to rotate one: add the new
    /// key, move the clients, remove the old one). Clients send one as `X-API-KEY` or `Authorization: Bearer`.
    /// With none, the server is open to anyone who reaches it, so it then listens only on a loopback address
    /// unless --allow-anonymous.
    #[arg(
        long = "api-key",
        env = "API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,

    /// One more API key, under the elizaOS server's name for it.
    #[arg(long, env = "ELIZA_SERVER_AUTH_TOKEN", hide_env_values = true)]
    pub eliza_server_auth_token: Option<Secret>,

    /// Serve without API keys on a non-loopback address (e.g. behind a proxy that authenticates).
    #[arg(long, env = "ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// The secret session tokens are signed with (at least 32 bytes), the same on every instance. Unset: one
    /// is generated on first start and kept in the database, which every instance on it then shares.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<Secret>,

    /// A cap on a session token's lifetime, in minutes; 0: until the session's hard end (its max duration).
    #[arg(
        long,
        env = "SESSION_TOKEN_TTL_MINUTES",
        default_value_t = 0.0,
        value_parser = finite
    )]
    pub session_token_ttl_minutes: f64,

    /// Requests per minute per API key (0: unlimited).
    #[arg(long, env = "RATE_LIMIT_KEY_PER_MINUTE", default_value_t = RateLimitSettings::default().key_per_minute)]
    pub rate_limit_key_per_minute: u32,

    /// Requests per minute per session token (0: unlimited).
    #[arg(
        long,
        env = "RATE_LIMIT_SESSION_PER_MINUTE",
        default_value_t = RateLimitSettings::default().session_per_minute
    )]
    pub rate_limit_session_per_minute: u32,

    /// Requests per minute per client IP without valid credentials (0: unlimited).
    #[arg(
        long,
        env = "RATE_LIMIT_ANONYMOUS_PER_MINUTE",
        default_value_t = RateLimitSettings::default().anonymous_per_minute
    )]
    pub rate_limit_anonymous_per_minute: u32,

    /// Take the client IP (for anonymous rate limits) from the last `X-Forwarded-For` entry: only behind a
    /// proxy that appends it.
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,

    /// Origins that may call the API from a browser, comma-separated, or `*`; none by default.
    #[arg(long = "cors-origin", env = "CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// The same, under the elizaOS server's name.
    #[arg(
        long = "api-cors-origin",
        env = "API_CORS_ORIGIN",
        value_delimiter = ',',
        hide = true
    )]
    pub api_cors_origins: Vec<String>,

    /// Most unanswered messages a session may have; further sends get 429 until the agent catches up.
    #[arg(long, env = "MAX_PENDING_MESSAGES", default_value_t = 100)]
    pub max_pending_messages: u32,

    /// Most event streams open at once on one session.
    #[arg(long, env = "MAX_STREAMS_PER_SESSION", default_value_t = crate::api::stream_slots::DEFAULT_PER_SESSION)]
    pub max_streams_per_session: usize,

    /// Most event streams open at once in total.
    #[arg(long, env = "MAX_STREAMS", default_value_t = crate::api::stream_slots::DEFAULT_TOTAL)]
    pub max_streams: usize,

    /// Print the OpenAPI document the handlers generate, and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

/// A secret setting (an API key, the token secret): never printed, also not by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A number setting: any finite value (each setting then clamps it to its own range).
fn finite(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("expected a finite number, got '{raw}'")),
    }
}

impl Config {
    pub fn timeout_policy(&self) -> TimeoutPolicy {
        TimeoutPolicy::new(
            self.session_default_timeout_minutes,
            self.session_min_timeout_minutes,
            self.session_max_timeout_minutes,
            self.session_max_duration_minutes,
            self.session_warning_threshold_minutes,
        )
    }

    pub fn retention(&self) -> chrono::Duration {
        let minutes = self.session_expired_retention_minutes.max(0.0);
        chrono::Duration::milliseconds(crate::domain::timeout::minutes_to_ms(minutes))
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            policy: self.timeout_policy(),
            retention: self.retention(),
            agent_timeout: std::time::Duration::from_secs_f64(
                self.agent_timeout_seconds.clamp(0.1, 3600.0),
            ),
            history_limit: self.agent_history_messages.min(1000),
            max_pending_messages: self.max_pending_messages.max(1),
        }
    }

    /// Every configured API key: `API_KEYS` / `--api-key` and `ELIZA_SERVER_AUTH_TOKEN`.
    pub fn api_keys(&self) -> Vec<String> {
        self.api_keys
            .iter()
            .chain(&self.eliza_server_auth_token)
            .map(|k| k.0.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    pub fn access_settings(&self) -> AccessSettings {
        let ttl = self.session_token_ttl_minutes.max(0.0);
        AccessSettings {
            api_keys: self.api_keys(),
            token_secret: self.token_secret.as_ref().map(|s| s.0.clone()),
            token_ttl: (ttl > 0.0).then(|| crate::domain::timeout::minutes_duration(ttl)),
            limits: RateLimitSettings {
                key_per_minute: self.rate_limit_key_per_minute,
                session_per_minute: self.rate_limit_session_per_minute,
                anonymous_per_minute: self.rate_limit_anonymous_per_minute,
            },
            trust_forwarded_for: self.trust_forwarded_for,
        }
    }

    pub fn http_settings(&self) -> HttpSettings {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .chain(&self.api_cors_origins)
            .cloned()
            .collect();
        HttpSettings {
            streams: StreamSettings {
                keepalive: self.keepalive(),
                slots: StreamSlots::new(self.max_streams_per_session, self.max_streams),
            },
            cors: CorsOrigins::parse(&origins),
        }
    }

    pub fn keepalive(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.events_keepalive_seconds.clamp(1.0, 300.0))
    }

    pub fn cleanup_interval(&self) -> std::time::Duration {
        let minutes = self.session_cleanup_interval_minutes.clamp(1.0, 60.0);
        std::time::Duration::from_secs_f64(minutes * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_settings_from_flags_and_secrets_stay_hidden() {
        let c = Config::try_parse_from([
            "agent-sessions-server",
            "--api-key",
            "k1,k2",
            "--eliza-server-auth-token",
            "k3",
            "--token-secret",
            "s3cr3t",
            "--rate-limit-session-per-minute",
            "7",
            "--cors-origin",
            "https://a.example",
            "--allow-anonymous",
        ])
        .unwrap();
        assert_eq!(c.api_keys(), ["k1", "k2", "k3"]);
        assert!(c.allow_anonymous);
        let a = c.access_settings();
        assert_eq!(a.limits.session_per_minute, 7);
        assert_eq!(a.limits.key_per_minute, 60_000);
        assert_eq!(a.token_ttl, None);
        assert_eq!(
            c.http_settings().cors,
            CorsOrigins::List(vec!["https://a.example".into()])
        );
        let printed = format!("{c:?} {a:?}");
        for secret in ["k1", "k3", "s3cr3t"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }
}
