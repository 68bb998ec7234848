//! The Socket.IO connect: who the socket is (an API key, or a session token that admits it to one session's
//! channel), refused with the reference's message otherwise, then the greetings elizaOS clients wait for.

use std::sync::Arc;

use socketioxide::extract::{SocketRef, State, TryData};

use super::wire::{Authenticated, ConnectionEstablished, HandshakeAuth};
use super::{channels, Realtime, Scope};
use crate::auth::{Credentials, Principal, Rejection};

/// The reference's refusal, which elizaOS clients show as the `connect_error`.
const MISSING_KEY: &str = "Invalid or missing API Key";

/// Why a connection is refused (its text is what the client's `connect_error` carries).
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Connect middleware: authenticates the handshake (`auth.apiKey` or the `x-api-key` header; `auth.token` or
/// `Authorization: Bearer`) exactly as an HTTP request is, and keeps the socket's scope.
pub async fn authenticate(
    s: SocketRef,
    TryData(auth): TryData<HandshakeAuth>,
    State(realtime): State<Arc<Realtime>>,
) -> Result<(), Refused> {
    let auth = auth.unwrap_or_default();
    let headers = &s.req_parts().headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let credentials = Credentials {
        api_key: auth.api_key.as_deref().or_else(|| header("x-api-key")),
        bearer: auth.token.as_deref().or(bearer),
    };
    let scope = match realtime.access.authenticate(credentials) {
        Principal::Operator { .. } => Scope::Any,
        Principal::Session(claims) => Scope::Session(claims.session_id),
        Principal::Anonymous | Principal::Rejected(Rejection::UnknownKey) => {
            return Err(Refused(MISSING_KEY.to_string()))
        }
        Principal::Rejected(other) => return Err(Refused(other.message())),
    };
    s.extensions.insert(scope);
    Ok(())
}

/// The connect handler: greets the socket and listens for its joins and messages.
pub async fn on_connect(
    s: SocketRef,
    TryData(auth): TryData<HandshakeAuth>,
    State(realtime): State<Arc<Realtime>>,
) {
    crate::metrics::socketio_connection(1.0);
    // Listening first: a client may join as soon as it sees the connection, before the greetings below.
    s.on("message", channels::on_message);
    s.on("1", channels::on_join);
    s.on("2", channels::on_send);
    s.on_disconnect(channels::on_disconnect);
    if let Some(entity_id) = auth.ok().and_then(|a| a.entity_id) {
        let timestamp = realtime.service.now().timestamp_millis();
        let _ = s.emit(
            "authenticated",
            &Authenticated {
                entity_id,
                timestamp,
            },
        );
    }
    let _ = s.emit(
        "connection_established",
        &ConnectionEstablished {
            message: "Connected to Eliza Socket.IO server",
            socket_id: s.id.to_string(),
        },
    );
}
