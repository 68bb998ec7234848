//! Reading agent HTTP responses: whole bodies within the reply size limit, media types, and descriptions of
//! failures that carry no secret.

use std::error::Error as _;

use futures::StreamExt;

use super::AgentError;

/// Why a whole response body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// The body is larger than this many bytes; reading stopped there.
    TooLarge(usize),
    /// The connection failed mid-body (described without secrets).
    Broken(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(max) => write!(f, "reply exceeded {max} bytes"),
            BodyError::Broken(why) => write!(f, "reply {why}"),
        }
    }
}

impl BodyError {
    pub fn into_agent_error(self, who: &str) -> AgentError {
        AgentError::Failed(format!("{who} {self}"))
    }
}

/// Reads a whole response body of at most `max_bytes`. A body announced as larger is refused before reading; one
/// that grows past the limit is dropped at the read that crosses it, which closes the connection.
pub async fn read_body(
    response: reqwest::Response,
    max_bytes: usize,
) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > max_bytes as u64 {
        return Err(BodyError::TooLarge(max_bytes));
    }
    let mut body = Vec::with_capacity(announced as usize);
    let mut stream = response.bytes_stream();
    while let Some(read) = stream.next().await {
        let bytes = read.map_err(|e| BodyError::Broken(describe(e)))?;
        if bytes.len() > max_bytes - body.len() {
            return Err(BodyError::TooLarge(max_bytes));
        }
        if body.capacity() - body.len() < bytes.len() {
            // Doubling as `Vec` does, but never allocating past the limit.
            let target = (body.len() + bytes.len())
                .max(body.capacity() * 2)
                .min(max_bytes);
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&bytes);
    }
    Ok(body)
}

/// A short description of a request failure for logs and `error` events: what failed, then the first specific
/// step and the innermost cause of the source chain (e.g. "could not connect: tcp connect error: Connection
/// refused (os error 111)", "could not connect: invalid peer certificate: UnknownIssuer"). The URL is dropped,
/// since a webhook URL may carry a token; request headers, where a key travels, are never part of the chain.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "body could not be read"
    } else {
        "request failed"
    };
    let mut causes: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // hyper's client error only repeats the kind ("client error (Connect)"), and an `io::Error` wrapping
        // another error shows that error's text again.
        if !text.starts_with("client error (") && causes.last() != Some(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    let detail = match causes.as_slice() {
        [] => return kind.to_string(),
        [only] => only.clone(),
        [first, .., last] => format!("{first}: {last}"),
    };
    format!("{kind}: {}", truncate(&detail, 300))
}

/// The media type of a response without parameters, lowercased (`text/event-stream; charset=utf-8` ->
/// `text/event-stream`); empty when absent.
pub fn media_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// True for `application/json` and `application/<anything>+json`.
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// At most `max` characters of `s`, cut at a character boundary, with `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{is_json, truncate};

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo", 2), "hé…");
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/event-stream"));
        assert!(!is_json(""));
    }
}
