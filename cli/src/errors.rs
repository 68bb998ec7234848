//! What the client says when something fails, and with which exit code: a server it cannot reach, the API's
//! errors by status (which credential is missing, what was not found, what expired), broken streams.

use agent_sessions::streams::StreamError;
use agent_sessions::types::ErrorResponse;

use crate::Global;

/// Exit codes, so that scripts can tell failures apart without reading the message.
pub mod exit {
    /// Anything else the server refused or failed at.
    pub const FAILED: i32 = 1;
    /// A bad command line (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// The server could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// 401 or 403: credentials missing, wrong, or not covering the operation.
    pub const DENIED: i32 = 4;
    /// 404: the session or agent does not exist.
    pub const NOT_FOUND: i32 = 5;
    /// 410: the session expired.
    pub const EXPIRED: i32 = 6;
}

/// A failure to report on stderr, and the process's exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit_code: i32,
}

impl CliError {
    pub fn new(exit_code: i32, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    /// A failed call to the API about `what` ("session 6f1c…", "agent …"; empty when about nothing in
    /// particular), worded for the person who ran the command.
    pub fn api(global: &Global, what: &str, error: agent_sessions::Error<ErrorResponse>) -> Self {
        use agent_sessions::Error;
        match error {
            Error::ErrorResponse(response) => {
                let status = response.status().as_u16();
                Self::status(global, what, status, &response.into_inner())
            }
            Error::CommunicationError(e) if e.is_connect() => Self::unreachable(global, &e),
            Error::CommunicationError(e) if e.is_timeout() => Self::new(
                exit::UNREACHABLE,
                format!("the server at {} did not answer in time", global.url),
            ),
            Error::CommunicationError(e) => Self::new(
                exit::UNREACHABLE,
                format!("the request to {} failed: {}", global.url, root_cause(&e)),
            ),
            Error::UnexpectedResponse(response) => Self::new(
                exit::FAILED,
                format!(
                    "unexpected answer from {} (HTTP {}): is --url the agent-sessions server?",
                    global.url,
                    response.status()
                ),
            ),
            // A 404 answered by something that is not this API (no JSON error body): the URL is wrong.
            Error::InvalidResponsePayload(_, e) => Self::new(
                exit::FAILED,
                format!(
                    "the answer from {} could not be read ({e}): is --url the agent-sessions server?",
                    global.url
                ),
            ),
            other => Self::new(exit::FAILED, other.to_string()),
        }
    }

    /// A stream that broke after it started.
    pub fn stream(global: &Global, what: &str, error: StreamError) -> Self {
        match error {
            StreamError::Reconnect(e) => {
                let reason = Self::api(global, what, *e);
                Self::new(
                    reason.exit_code,
                    format!("the events stream ended: {}", reason.message),
                )
            }
            other => Self::new(exit::FAILED, other.to_string()),
        }
    }

    fn unreachable(global: &Global, error: &(dyn std::error::Error + 'static)) -> Self {
        let reason = root_cause(error);
        let reason = if reason.contains("Connection refused") || reason.contains("os error 111") {
            "connection refused".to_string()
        } else {
            reason
        };
        Self::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the server at {}: {reason}; is it running? start it with \
                 `cargo run --release -p agent-sessions-server` (or `agent-sessions-server`), or point \
                 --url / AGENT_SESSIONS_URL at it",
                global.url
            ),
        )
    }

    fn status(global: &Global, what: &str, status: u16, body: &ErrorResponse) -> Self {
        let said = &body.error.message;
        let what = if what.is_empty() { "it" } else { what };
        match status {
            401 if global.api_key.is_some() || global.token.is_some() => Self::new(
                exit::DENIED,
                format!(
                    "the server refused the credentials given ({}): {said}",
                    credential_source(global)
                ),
            ),
            401 => Self::new(
                exit::DENIED,
                format!(
                    "the server requires an API key: pass --api-key KEY or set AGENT_SESSIONS_API_KEY \
                     (server said: {said})"
                ),
            ),
            403 => Self::new(
                exit::DENIED,
                format!(
                    "forbidden: {said}{}",
                    if global.api_key.is_none() && global.token.is_some() {
                        "; a session token (--token) covers only its own session: use an API key \
                         (--api-key / AGENT_SESSIONS_API_KEY) for this"
                    } else {
                        ""
                    }
                ),
            ),
            404 => Self::new(exit::NOT_FOUND, format!("{what} not found ({said})")),
            410 => Self::new(exit::EXPIRED, format!("{what} has expired ({said})")),
            _ => Self::new(
                exit::FAILED,
                format!("the server answered {status} {}: {said}", body.error.code),
            ),
        }
    }
}

/// The innermost cause of an error: reqwest says "error sending request", the cause people recognise
/// ("Connection refused") is at the bottom of the chain.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        reason = cause.to_string();
        source = cause.source();
    }
    reason
}

/// Which flag or variable the refused credential came from.
fn credential_source(global: &Global) -> &'static str {
    if global.api_key.is_some() {
        "--api-key / AGENT_SESSIONS_API_KEY"
    } else {
        "--token / AGENT_SESSIONS_TOKEN"
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::new(exit::FAILED, e.to_string())
    }
}
