//! Opening a session's event feed for a client, the same for both transports that carry it (the SSE stream and
//! the WebSocket): the resume position it asks for, the checks made before anything is sent (the session exists
//! and is live, a stream slot is free), and the feed as wire frames, holding its slot until it ends.

use std::sync::Arc;

use futures::future;
use futures::stream::{BoxStream, StreamExt};
use poem::http::StatusCode;

use super::error::{ApiError, ErrorCode};
use super::event_wire;
use super::models::SessionStreamEvent;
use super::stream_slots::{Slot, StreamSlots};
use super::types::LastEventId;
use crate::service::{EventSubscription, SessionService};

/// A subscription that passed every check, with its stream slot. Built before a response starts, so that a
/// refusal is still an HTTP error; turned into frames once the response (or the upgraded socket) is there.
pub struct OpenFeed {
    subscription: EventSubscription,
    slot: Slot,
}

/// The position a client resumes from: `lastEventId` (query) or else `Last-Event-ID` (header); empty is none.
/// Both are checked, whichever is used: a malformed one is an error even next to a good one.
pub fn resume_position(
    query: Option<LastEventId>,
    header: Option<LastEventId>,
) -> Result<Option<i64>, ApiError> {
    let ids = [query, header].map(|id| id.map(|id| id.0));
    let invalid = |raw: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationError,
            format!("Invalid Last-Event-ID '{raw}': expected an event id"),
        )
    };
    if let Some(bad) = ids
        .iter()
        .flatten()
        .find(|id| id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(bad));
    }
    let [query_id, header_id] = ids;
    match query_id.or(header_id).filter(|id| !id.is_empty()) {
        None => Ok(None),
        Some(raw) => raw.parse::<i64>().map(Some).map_err(|_| invalid(&raw)),
    }
}

/// Checks the session (404, 410) and takes a stream slot (429, 503), then subscribes from `last_event_id`.
pub async fn open(
    service: &Arc<SessionService>,
    slots: &Arc<StreamSlots>,
    session_id: &str,
    last_event_id: Option<i64>,
) -> Result<OpenFeed, ApiError> {
    // The session is checked before a slot is taken, so that unknown ids count against nothing.
    let session = service.get(session_id).await?.session;
    let slot = slots.acquire(session.id)?;
    let subscription = service.subscribe(session_id, last_event_id).await?;
    Ok(OpenFeed { subscription, slot })
}

impl OpenFeed {
    /// The feed's frames, in order; the slot lives as long as the stream, dropped when it ends or when the
    /// client goes away.
    pub fn frames(self) -> BoxStream<'static, SessionStreamEvent> {
        let slot = self.slot;
        self.subscription
            .filter_map(move |item| {
                let _held = &slot;
                future::ready(event_wire::feed_frame(&item))
            })
            .boxed()
    }
}
