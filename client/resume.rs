//! The resuming events stream, `Client::session_events_resuming`: a session's events stream that, when its
//! connection breaks before the session ends (`expired`, `deleted`), reconnects by itself from the last event id
//! it delivered, with a bounded backoff, and gives up after a number of failed attempts in a row.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use progenitor_client::Error;

use crate::streams::{BoxedEvents, SessionEvent, SessionEventFrame, StreamError};
use crate::types;
use crate::Client;

/// How a resuming stream reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Failed attempts in a row after which the stream gives up (its last item is then
    /// `StreamError::Reconnect`). A broken connection counts as one; a connection that opens resets the count.
    pub max_failures: u32,
    /// The wait before the first reconnection; it doubles with each failure in a row, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Reconnect {
    /// 8 failures in a row, waiting 0.25 s, 0.5 s, 1 s, 2 s, 4 s, then 5 s between attempts: about 23 s of
    /// trying, enough for a server restart or a deployment's switch to another instance.
    fn default() -> Self {
        Self {
            max_failures: 8,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl Reconnect {
    /// The wait before attempt number `failures` (1, 2, ...) of a series.
    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

impl Client {
    /// The session's events stream, resumed across broken connections: when the connection breaks (or the
    /// server ends the stream, as it does when it stops, after a `reconnect` event) before `expired` or `deleted`, it reconnects with the
    /// last event id it delivered, so that no stored event is lost (the server replays them; reply chunks of
    /// the time away are not replayed, only the stored reply). Events the server no longer keeps come as one
    /// `SessionEvent::ReplayGap`, never as a silent jump. It reconnects as `Reconnect::default()` says. The
    /// server's `SessionEvent::Reconnect` (it is stopping) is acted on here, not passed on.
    ///
    /// Errors opening the first connection are returned as by `session_events`. A reconnection the server
    /// refuses (the session expired or was deleted meanwhile: 410, 404; credentials: 401, 403) ends the
    /// stream with `StreamError::Reconnect`, as does giving up. Without `last_event_id`, events that happen
    /// while disconnected before the first event with an id was received cannot be replayed (there is no
    /// position to resume from).
    pub async fn session_events_resuming(
        &self,
        session_id: &str,
        last_event_id: Option<i64>,
    ) -> Result<BoxedEvents<SessionEventFrame>, Error<types::ErrorResponse>> {
        self.session_events_reconnecting(session_id, last_event_id, Reconnect::default())
            .await
    }

    /// `session_events_resuming`, reconnecting as `policy` says.
    pub async fn session_events_reconnecting(
        &self,
        session_id: &str,
        last_event_id: Option<i64>,
        policy: Reconnect,
    ) -> Result<BoxedEvents<SessionEventFrame>, Error<types::ErrorResponse>> {
        let first = self.session_events(session_id, last_event_id).await?;
        let state = Resuming {
            client: self.clone(),
            session_id: session_id.to_string(),
            last_event_id,
            policy,
            current: Some(first),
            failures: 0,
            ended: false,
        };
        Ok(stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed())
    }
}

struct Resuming {
    client: Client,
    session_id: String,
    /// The id of the last event delivered (or the one the caller gave): where a reconnection resumes.
    last_event_id: Option<i64>,
    policy: Reconnect,
    current: Option<BoxedEvents<SessionEventFrame>>,
    /// Failed attempts in a row.
    failures: u32,
    ended: bool,
}

impl Resuming {
    /// The next item; None once the session ended or the stream gave up.
    async fn next(&mut self) -> Option<Result<SessionEventFrame, StreamError>> {
        while !self.ended {
            let Some(current) = self.current.as_mut() else {
                if let Err(refused) = self.reopen().await {
                    self.ended = true;
                    return Some(Err(StreamError::Reconnect(Box::new(refused))));
                }
                continue;
            };
            match current.next().await {
                // The server is stopping: what this stream is for, so it is not passed on; the end of the
                // connection follows, and the reconnection below.
                Some(Ok(SessionEventFrame {
                    event: SessionEvent::Reconnect(_),
                    ..
                })) => {}
                Some(Ok(frame)) => {
                    if frame.id.is_some() {
                        self.last_event_id = frame.id;
                    }
                    self.ended = frame.event.ends_stream();
                    return Some(Ok(frame));
                }
                // A frame it cannot read is reported; the connection goes on.
                Some(Err(e @ StreamError::Malformed { .. })) => return Some(Err(e)),
                // The connection broke, or the server ended the stream before the session ended.
                Some(Err(_)) | None => {
                    self.current = None;
                    self.failures += 1;
                }
            }
        }
        None
    }

    /// Waits as the policy says, then opens the stream again from the last id. Err when the server refuses,
    /// or when this was the last attempt allowed.
    async fn reopen(&mut self) -> Result<(), Error<types::ErrorResponse>> {
        tokio::time::sleep(self.policy.delay(self.failures.max(1))).await;
        match self
            .client
            .session_events(&self.session_id, self.last_event_id)
            .await
        {
            Ok(events) => {
                self.current = Some(events);
                self.failures = 0;
                Ok(())
            }
            Err(e) if is_transient(&e) && self.failures + 1 < self.policy.max_failures => {
                self.failures += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Failures worth another attempt: no connection, or a server that is stopping, overloaded, or still has the
/// broken stream's slot (429); not an answer about the session or the credentials.
fn is_transient(e: &Error<types::ErrorResponse>) -> bool {
    match e.status() {
        None => true,
        Some(status) => {
            status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
        }
    }
}
