//! Server configuration: command-line flags with environment-variable fallbacks, in one struct.

use std::path::PathBuf;

use clap::Parser;

use crate::agents::egress::{self, EgressPolicy, HostPattern};
use crate::api::stream_slots::StreamSlots;
use crate::api::{CorsOrigins, HostGuard, HttpSettings, StreamSettings};
use crate::auth::{AccessSettings, RateLimitSettings};
use crate::domain::TimeoutPolicy;
use crate::fd_limit::{self, Fitted};
pub use crate::logging::LogFormat;
use crate::serve::ConnectionSettings;
use crate::service::ServiceConfig;
use crate::store::StoreOptions;

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

    /// Longest a request waits for a PostgreSQL connection, in seconds (clamped to 0.1-60); then it fails with
    /// 503 `SERVICE_UNAVAILABLE`. While the database is known to be down, requests fail within half a second.
    #[arg(
        long,
        env = "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
        default_value_t = crate::store::DEFAULT_ACQUIRE_TIMEOUT.as_secs_f64(),
        value_parser = finite
    )]
    pub database_acquire_timeout_seconds: f64,

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

    /// PEM file of extra root certificates (one or more) that https agent backends are verified against, besides
    /// the platform's; for backends behind a private CA. Read at startup: a bad file stops the server.
    #[arg(long, env = "AGENT_CA_FILE")]
    pub agent_ca_file: Option<PathBuf>,

    /// Environment variables an openai agent's `apiKeyEnv` may name, comma-separated, besides those starting with
    /// AGENT_SECRET_ (always allowed). Any other name is refused, so that no agent can have another secret of the
    /// server sent to its endpoint.
    #[arg(long, env = "AGENT_SECRET_ENV", value_parser = comma_list(egress::parse_secret_env_name))]
    pub agent_secret_env: Option<CommaList<String>>,

    /// Hosts agent backends may call, comma-separated: host names, IP addresses, or `*.example.com` for every
    /// name under example.com. Unset: any host. A host listed exactly may also be link-local or a cloud metadata
    /// address (169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200), which are refused otherwise.
    #[arg(long, env = "AGENT_ALLOWED_HOSTS", value_parser = comma_list(str::parse::<HostPattern>))]
    pub agent_allowed_hosts: Option<CommaList<HostPattern>>,

    /// Largest response body read from an agent backend, in bytes (JSON replies, streams, error bodies); a
    /// larger reply fails with `AGENT_ERROR`.
    #[arg(
        long,
        env = "AGENT_MAX_REPLY_BYTES",
        default_value_t = egress::DEFAULT_MAX_REPLY_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub agent_max_reply_bytes: u64,

    /// Interval of keep-alive comments on idle event streams, in seconds.
    #[arg(long, env = "EVENTS_KEEPALIVE_SECONDS", default_value_t = 15.0, value_parser = finite)]
    pub events_keepalive_seconds: f64,

    /// How many of its newest events each session keeps for clients that resume an event stream (0: all, until
    /// the session is purged); older ones are deleted an eighth of this at a time. A client resuming from an
    /// older event is told what it missed (`replay-gap`).
    #[arg(
        long,
        env = "EVENTS_KEPT_PER_SESSION",
        default_value_t = crate::store::DEFAULT_EVENTS_PER_SESSION
    )]
    pub events_kept_per_session: u32,

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

    /// Heartbeats wait for the disk like every other write. By default a SQLite heartbeat is acknowledged once
    /// it survives a crash of the server, before it reaches the disk; only an OS crash or a power loss in the next
    /// moments can undo it, leaving the session its previous expiry. (PostgreSQL heartbeats are always durable.)
    #[arg(long, env = "DURABLE_HEARTBEATS")]
    pub durable_heartbeats: bool,

    /// Most unanswered messages a session may have; further sends get 429 until the agent catches up.
    #[arg(long, env = "MAX_PENDING_MESSAGES", default_value_t = 100)]
    pub max_pending_messages: u32,

    /// Most active sessions one user may have; further creates get 429 `QUOTA_EXCEEDED` (0: no limit).
    #[arg(long, env = "MAX_SESSIONS_PER_USER", default_value_t = 1000)]
    pub max_sessions_per_user: u32,

    /// Most messages (user messages and replies) one session may hold; further sends get 429
    /// `QUOTA_EXCEEDED` (0: no limit).
    #[arg(long, env = "MAX_MESSAGES_PER_SESSION", default_value_t = 10_000)]
    pub max_messages_per_session: u32,

    /// Most event streams open at once on one session.
    #[arg(long, env = "MAX_STREAMS_PER_SESSION", default_value_t = crate::api::stream_slots::DEFAULT_PER_SESSION)]
    pub max_streams_per_session: usize,

    /// Most event streams open at once in total.
    #[arg(long, env = "MAX_STREAMS", default_value_t = crate::api::stream_slots::DEFAULT_TOTAL)]
    pub max_streams: usize,

    /// How long a client may take to send a request's line and headers, in seconds: from opening the connection,
    /// or from the first byte of a request on a kept-alive one. Slower clients are cut (clamped to 0.1-3600).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10.0, value_parser = finite)]
    pub header_read_timeout_seconds: f64,

    /// How long a kept-alive connection may wait for its next request, in seconds, before it is closed (clamped to
    /// 0.1-86400). Behind a load balancer, keep it above the balancer's own idle timeout.
    #[arg(long, env = "IDLE_TIMEOUT_SECONDS", default_value_t = 75.0, value_parser = finite)]
    pub idle_timeout_seconds: f64,

    /// Most client connections open at once; beyond it, new ones wait until one closes. 0: three quarters of the
    /// open-file limit, at most 10 000. Lowered to fit the open-file limit when set higher.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// SIGTERM or SIGINT ends the process within this many seconds, whatever is still open (clamped to 1-3600).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10.0, value_parser = finite)]
    pub shutdown_timeout_seconds: f64,

    /// Host names that a server without API keys on a loopback address answers besides loopback names
    /// (`localhost`, `*.localhost`, 127.0.0.1, [::1]), comma-separated: e.g. the name a local proxy forwards.
    /// Requests addressed to any other name are refused (403), against DNS rebinding.
    #[arg(long = "allowed-hosts", env = "ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Serve `GET /metrics` on this address of its own (e.g. `0.0.0.0:9090`), public there and absent from the
    /// API's port. Unset: `/metrics` is served beside the API, behind an API key when keys are configured.
    #[arg(long, env = "METRICS_ADDR", value_parser = host_port)]
    pub metrics_addr: Option<HostPort>,

    /// Log lines as `text` (colored on a terminal) or `json` (one object per line, for log collectors).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Print the OpenAPI document the handlers generate, and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

/// A listening address: a host name or IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// `host:port`, `[v6]:port` or `:port` (every address: `0.0.0.0`).
fn host_port(raw: &str) -> Result<HostPort, String> {
    let bad = || format!("expected HOST:PORT (e.g. 127.0.0.1:9090), got '{raw}'");
    let (host, port) = raw.trim().rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
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

/// A comma-separated setting. Empty entries are skipped, so that a trailing comma or an empty variable
/// (`AGENT_ALLOWED_HOSTS=` in a compose file) means "none" rather than an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommaList<T>(pub Vec<T>);

fn comma_list<T, F>(
    parse: F,
) -> impl Fn(&str) -> Result<CommaList<T>, String> + Clone + Send + Sync + 'static
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
{
    move |raw: &str| {
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(&parse)
            .collect::<Result<Vec<T>, String>>()
            .map(CommaList)
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

    /// How the store deals with a database that is slow to answer or away.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            acquire_timeout: std::time::Duration::from_secs_f64(
                self.database_acquire_timeout_seconds.clamp(0.1, 60.0),
            ),
            events_per_session: self.events_kept_per_session,
        }
    }

    pub fn retention(&self) -> chrono::Duration {
        let minutes = self.session_expired_retention_minutes.max(0.0);
        chrono::Duration::milliseconds(crate::domain::timeout::minutes_to_ms(minutes))
    }

    /// The service's settings. Fails when `--agent-ca-file` cannot be used, with a message naming the file.
    pub fn service_config(&self) -> anyhow::Result<ServiceConfig> {
        Ok(ServiceConfig {
            policy: self.timeout_policy(),
            retention: self.retention(),
            agent_timeout: std::time::Duration::from_secs_f64(
                self.agent_timeout_seconds.clamp(0.1, 3600.0),
            ),
            history_limit: self.agent_history_messages.min(1000),
            max_pending_messages: self.max_pending_messages.max(1),
            durable_heartbeats: self.durable_heartbeats,
            max_sessions_per_user: self.max_sessions_per_user,
            max_messages_per_session: self.max_messages_per_session,
            egress: self.egress_policy()?,
            ..ServiceConfig::default()
        })
    }

    pub fn egress_policy(&self) -> anyhow::Result<EgressPolicy> {
        let extra_roots = match &self.agent_ca_file {
            Some(path) => egress::read_ca_file(path)?,
            None => Vec::new(),
        };
        Ok(EgressPolicy {
            secret_env: self
                .agent_secret_env
                .clone()
                .map(|list| list.0)
                .unwrap_or_default(),
            // An empty list is no list: refusing every backend host is never what an empty setting means.
            allowed_hosts: self
                .agent_allowed_hosts
                .clone()
                .map(|list| list.0)
                .filter(|hosts| !hosts.is_empty()),
            max_reply_bytes: usize::try_from(self.agent_max_reply_bytes).unwrap_or(usize::MAX),
            extra_roots,
        })
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

    /// The HTTP side's settings for a server listening on `listening`, with at most `max_streams` event streams
    /// (from [`Config::fit`]).
    pub fn http_settings(
        &self,
        listening: std::net::SocketAddr,
        max_streams: usize,
    ) -> HttpSettings {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .chain(&self.api_cors_origins)
            .cloned()
            .collect();
        HttpSettings {
            streams: StreamSettings {
                keepalive: self.keepalive(),
                slots: StreamSlots::new(self.max_streams_per_session, max_streams),
            },
            cors: CorsOrigins::parse(&origins),
            host_guard: HostGuard::for_listener(listening, &self.allowed_hosts),
            metrics: self.metrics_addr.is_none(),
        }
    }

    /// The caps on connections and event streams, fitted under the open-file limit (None: unknown).
    pub fn fit(&self, open_files: Option<u64>) -> Fitted {
        fd_limit::fit(self.max_connections, self.max_streams, open_files)
    }

    /// How connections are served, with at most `max_connections` (from [`Config::fit`]). The drain leaves part
    /// of the shutdown bound to stopping the background work and closing the store.
    pub fn connection_settings(&self, max_connections: usize) -> ConnectionSettings {
        let seconds =
            |value: f64, max: f64| std::time::Duration::from_secs_f64(value.clamp(0.1, max));
        let bound = self.shutdown_timeout();
        ConnectionSettings {
            header_read_timeout: seconds(self.header_read_timeout_seconds, 3600.0),
            idle_timeout: seconds(self.idle_timeout_seconds, 86_400.0),
            max_connections,
            drain_timeout: bound - shutdown_reserve(bound),
        }
    }

    /// The bound on a shutdown, from the signal to the end of the process.
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.shutdown_timeout_seconds.clamp(1.0, 3600.0))
    }

    pub fn keepalive(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.events_keepalive_seconds.clamp(1.0, 300.0))
    }

    pub fn cleanup_interval(&self) -> std::time::Duration {
        let minutes = self.session_cleanup_interval_minutes.clamp(1.0, 60.0);
        std::time::Duration::from_secs_f64(minutes * 60.0)
    }
}

/// The part of the shutdown bound kept, after draining connections, for the background work and the store.
pub fn shutdown_reserve(bound: std::time::Duration) -> std::time::Duration {
    (bound / 5).min(std::time::Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The environment is the process's: tests that set it take turns, and leave it as they found it.
    static ENV: Mutex<()> = Mutex::new(());

    const SETTINGS_VARS: [&str; 10] = [
        "DURABLE_HEARTBEATS",
        "AGENT_CA_FILE",
        "AGENT_SECRET_ENV",
        "AGENT_ALLOWED_HOSTS",
        "AGENT_MAX_REPLY_BYTES",
        "HEADER_READ_TIMEOUT_SECONDS",
        "IDLE_TIMEOUT_SECONDS",
        "SHUTDOWN_TIMEOUT_SECONDS",
        "MAX_CONNECTIONS",
        "ALLOWED_HOSTS",
    ];

    fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let saved: Vec<_> = SETTINGS_VARS
            .iter()
            .map(|name| (*name, std::env::var_os(name)))
            .collect();
        for name in SETTINGS_VARS {
            std::env::remove_var(name);
        }
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let out = f();
        for (name, value) in saved {
            match value {
                Some(v) => std::env::set_var(name, v),
                None => std::env::remove_var(name),
            }
        }
        out
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("agent-sessions-server").chain(args.iter().copied()))
    }

    fn hosts(list: &[&str]) -> Option<CommaList<HostPattern>> {
        Some(CommaList(list.iter().map(|h| h.parse().unwrap()).collect()))
    }

    fn names(list: &[&str]) -> Option<CommaList<String>> {
        Some(CommaList(list.iter().map(|n| n.to_string()).collect()))
    }

    #[test]
    fn egress_defaults() {
        let config = with_env(&[], || parse(&[])).unwrap();
        assert_eq!(config.agent_ca_file, None);
        assert_eq!(config.agent_secret_env, None);
        assert_eq!(config.agent_allowed_hosts, None);
        assert_eq!(config.agent_max_reply_bytes, 1_048_576);
        let policy = config.egress_policy().unwrap();
        assert_eq!(policy.max_reply_bytes, 1_048_576);
        assert!(policy.extra_roots.is_empty() && policy.secret_env.is_empty());
        assert_eq!(policy.allowed_hosts, None);
    }

    #[test]
    fn heartbeats_are_lazy_unless_made_durable() {
        let durable = |env: &[(&str, &str)], args: &[&str]| {
            with_env(env, || parse(args))
                .unwrap()
                .service_config()
                .unwrap()
                .durable_heartbeats
        };
        assert!(!durable(&[], &[]));
        assert!(durable(&[], &["--durable-heartbeats"]));
        assert!(durable(&[("DURABLE_HEARTBEATS", "true")], &[]));
    }

    #[test]
    fn empty_egress_variables_count_as_unset() {
        let env = [("AGENT_ALLOWED_HOSTS", ""), ("AGENT_SECRET_ENV", "")];
        let policy = with_env(&env, || parse(&[]))
            .unwrap()
            .egress_policy()
            .unwrap();
        assert_eq!(policy.allowed_hosts, None);
        assert!(policy.secret_env.is_empty());
        let policy = with_env(&[], || parse(&["--agent-allowed-hosts", " , "]))
            .unwrap()
            .egress_policy()
            .unwrap();
        assert_eq!(policy.allowed_hosts, None);
    }

    #[test]
    fn egress_flags_parse() {
        let config = with_env(&[], || {
            parse(&[
                "--agent-secret-env",
                "OPENAI_API_KEY, GROQ_KEY",
                "--agent-allowed-hosts",
                "localhost,*.example.com,[fe80::1],",
                "--agent-max-reply-bytes",
                "65536",
                "--agent-ca-file",
                "/etc/agent-ca.pem",
            ])
        })
        .unwrap();
        assert_eq!(
            config.agent_secret_env,
            names(&["OPENAI_API_KEY", "GROQ_KEY"])
        );
        assert_eq!(
            config.agent_allowed_hosts,
            hosts(&["localhost", "*.example.com", "fe80::1"])
        );
        assert_eq!(config.agent_max_reply_bytes, 65_536);
        assert_eq!(
            config.agent_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/agent-ca.pem"))
        );
    }

    #[test]
    fn egress_settings_parse_from_the_environment_and_flags_win() {
        let env = [
            ("AGENT_SECRET_ENV", "OPENAI_API_KEY"),
            ("AGENT_ALLOWED_HOSTS", "api.openai.com,*.internal.test"),
            ("AGENT_MAX_REPLY_BYTES", "2048"),
            ("AGENT_CA_FILE", "/srv/ca.pem"),
        ];
        let config = with_env(&env, || parse(&[])).unwrap();
        assert_eq!(config.agent_secret_env, names(&["OPENAI_API_KEY"]));
        assert_eq!(
            config.agent_allowed_hosts,
            hosts(&["api.openai.com", "*.internal.test"])
        );
        assert_eq!(config.agent_max_reply_bytes, 2048);
        assert_eq!(
            config.agent_ca_file.as_deref(),
            Some(std::path::Path::new("/srv/ca.pem"))
        );
        let config = with_env(&env, || parse(&["--agent-max-reply-bytes", "4096"])).unwrap();
        assert_eq!(config.agent_max_reply_bytes, 4096);
    }

    #[test]
    fn bad_egress_settings_are_refused_at_startup() {
        for args in [
            &["--agent-max-reply-bytes", "0"][..],
            &["--agent-max-reply-bytes", "lots"],
            &["--agent-allowed-hosts", "http://example.com"],
            &["--agent-allowed-hosts", "a.com,*,b.com"],
            &["--agent-allowed-hosts", "example.com:443"],
            &["--agent-secret-env", "NOT-A-NAME"],
        ] {
            assert!(with_env(&[], || parse(args)).is_err(), "{args:?}");
        }
        let e = with_env(&[("AGENT_ALLOWED_HOSTS", "*")], || parse(&[])).unwrap_err();
        assert!(e.to_string().contains("'*' is not a host"), "{e}");

        let config = with_env(&[], || {
            parse(&["--agent-ca-file", "/nonexistent/agent-ca.pem"])
        })
        .unwrap();
        let e = format!("{:#}", config.service_config().unwrap_err());
        assert!(
            e.contains("--agent-ca-file /nonexistent/agent-ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn the_acquire_timeout_is_short_by_default_and_clamped() {
        let timeout = |args: &[&str]| {
            with_env(&[], || parse(args))
                .unwrap()
                .store_options()
                .acquire_timeout
        };
        assert_eq!(timeout(&[]), std::time::Duration::from_secs(3));
        assert_eq!(
            timeout(&["--database-acquire-timeout-seconds", "1.5"]),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(
            timeout(&["--database-acquire-timeout-seconds", "0"]),
            std::time::Duration::from_millis(100)
        );
        assert_eq!(
            timeout(&["--database-acquire-timeout-seconds", "1e9"]),
            std::time::Duration::from_secs(60)
        );
    }

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
        assert_eq!(
            a.limits.key_per_minute, 0,
            "API keys are unlimited unless a limit is set"
        );
        assert_eq!(a.token_ttl, None);
        assert_eq!(
            c.http_settings("127.0.0.1:0".parse().unwrap(), 512).cors,
            CorsOrigins::List(vec!["https://a.example".into()])
        );
        let printed = format!("{c:?} {a:?}");
        for secret in ["k1", "k3", "s3cr3t"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }

    #[test]
    fn connection_settings_default_clamp_and_come_from_the_environment() {
        let c = with_env(&[], || parse(&[])).unwrap();
        let conn = c.connection_settings(768);
        assert_eq!(conn.header_read_timeout, std::time::Duration::from_secs(10));
        assert_eq!(conn.idle_timeout, std::time::Duration::from_secs(75));
        assert_eq!(conn.max_connections, 768);
        assert_eq!(c.shutdown_timeout(), std::time::Duration::from_secs(10));
        // The drain leaves 2 s of the 10 s bound to the background work and the store.
        assert_eq!(conn.drain_timeout, std::time::Duration::from_secs(8));
        assert_eq!((c.max_connections, c.allowed_hosts.len()), (0, 0));

        let c = with_env(
            &[
                ("HEADER_READ_TIMEOUT_SECONDS", "0"),
                ("IDLE_TIMEOUT_SECONDS", "1e9"),
                ("SHUTDOWN_TIMEOUT_SECONDS", "2"),
                ("MAX_CONNECTIONS", "100"),
                ("ALLOWED_HOSTS", "proxy.internal,app.test"),
            ],
            || parse(&[]),
        )
        .unwrap();
        let conn = c.connection_settings(c.fit(Some(1024)).max_connections);
        assert_eq!(
            conn.header_read_timeout,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(conn.idle_timeout, std::time::Duration::from_secs(86_400));
        assert_eq!(conn.drain_timeout, std::time::Duration::from_millis(1600));
        assert_eq!(conn.max_connections, 100);
        assert_eq!(
            c.fit(Some(1024)).max_streams,
            75,
            "three quarters of 100 connections"
        );
        assert_eq!(c.allowed_hosts, ["proxy.internal", "app.test"]);
        assert_eq!(
            c.http_settings("127.0.0.1:3000".parse().unwrap(), 75)
                .host_guard,
            HostGuard::LoopbackNames {
                extra: vec!["proxy.internal".into(), "app.test".into()]
            }
        );
        assert_eq!(
            c.http_settings("0.0.0.0:3000".parse().unwrap(), 75)
                .host_guard,
            HostGuard::Off
        );
    }
}
