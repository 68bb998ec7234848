//! The agent-sessions SDK: a typed client for the Sessions API, generated at build time from `openapi.yaml` by
//! progenitor (builder style).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_sessions::{types, Client};
//!
//! let client = Client::new("http://127.0.0.1:3000");
//! let agents = client.list_agents().send().await?;
//! let session = client
//!     .create_session()
//!     .body(types::CreateSessionRequest {
//!         agent_id: agents.agents[0].id,
//!         user_id: uuid::Uuid::new_v4(),
//!         metadata: Default::default(),
//!         timeout_config: None,
//!     })
//!     .send()
//!     .await?;
//! println!("session {} expires at {}", session.session_id, session.expires_at);
//! # Ok(()) }
//! ```
//!
//! **Generated** from the contract (one method per `operationId`): `get_sessions_health`, `create_session`,
//! `list_sessions`, `get_session`, `delete_session`, `send_message` (transports `websocket` and `http`),
//! `get_messages`, `renew_session`, `update_session_timeout`, `session_heartbeat`, `list_agents`,
//! `create_agent`, `get_agent`, `delete_agent`, `create_webhook`, `list_webhooks`, `delete_webhook`. Errors
//! come back as `Error::ErrorResponse` carrying the API's `ErrorResponse` body (`error.code`, `error.message`).
//!
//! **Authentication**: [`Client::with_api_key`] (an operator or backend: `X-API-KEY`) and
//! [`Client::with_session_token`] (an end user's client, one session: `Authorization: Bearer`) authenticate every
//! request, the event streams included. `Client::new` sends no credentials (a server without keys, on loopback).
//!
//! **Hand-written** (event streams, which progenitor cannot type; see [`streams`]):
//! [`Client::send_message_stream`] (`sendMessage` with the `sse` transport) and [`Client::session_events`]
//! (`streamSessionEvents`), each a `Stream` of typed events; [`Client::session_events_resuming`], the events
//! stream reconnecting by itself from the last event id (see [`Reconnect`]). The WebSocket feed
//! (`streamSessionEventsWebSocket`) needs a WebSocket client of your choice; its messages read as typed
//! frames with [`streams::SessionEventFrame::from_websocket`]. For receivers of the server's webhooks,
//! [`webhooks::verify`] (the signature and the timestamp of a delivery).

mod generated {
    #![allow(clippy::all, unused_imports, unreachable_pub, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/codegen.rs"));
}

/// The README's Rust snippets, compiled as doc tests: they must build as shown.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeSnippets;

mod auth;
mod convert;
mod resume;
pub mod streams;
pub mod webhooks;

pub use auth::InvalidCredential;
pub use generated::*;
pub use resume::Reconnect;
