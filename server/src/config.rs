//! Server configuration: command-line flags with environment-variable fallbacks, in one struct.

use clap::Parser;

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

    /// Print the OpenAPI document the handlers generate, and exit.
    #[arg(long)]
    pub print_openapi: bool,
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
