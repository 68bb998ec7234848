//! Hand-written constructors of a `Client` that authenticates every request, the event streams included: with an
//! API key (`X-API-KEY`, for backends) or with a session token (`Authorization: Bearer`, for an end user's client,
//! admitted to that one session's routes).

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::Client;

/// The generated `Client::new`'s timeouts, kept for authenticated clients (event streams lift the total one).
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a credential cannot be sent: it is not a valid HTTP header value (a line break, a control character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCredential;

impl std::fmt::Display for InvalidCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the credential is not a valid HTTP header value")
    }
}

impl std::error::Error for InvalidCredential {}

impl Client {
    /// A client that sends `key` as `X-API-KEY` on every request: an operator or backend, allowed everything.
    pub fn with_api_key(baseurl: &str, key: &str) -> Result<Self, InvalidCredential> {
        authenticated(baseurl, HeaderName::from_static("x-api-key"), key)
    }

    /// A client that sends `token` (a `sessionToken` from `create_session` or `issue_session_token`) as
    /// `Authorization: Bearer`: admitted to that session's own routes only.
    pub fn with_session_token(baseurl: &str, token: &str) -> Result<Self, InvalidCredential> {
        authenticated(baseurl, AUTHORIZATION, &format!("Bearer {token}"))
    }
}

fn authenticated(
    baseurl: &str,
    name: HeaderName,
    value: &str,
) -> Result<Client, InvalidCredential> {
    let mut value = HeaderValue::from_str(value).map_err(|_| InvalidCredential)?;
    // Kept out of reqwest's debug output.
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    let http = reqwest::ClientBuilder::new()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .default_headers(headers)
        .build()
        .map_err(|_| InvalidCredential)?;
    Ok(Client::new_with_client(baseurl, http))
}
