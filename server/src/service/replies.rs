//! Agent replies, answered one message at a time per session, in the order the messages were stored, by
//! whichever server instance gets there first.
//!
//! The queue is the store: a user message is stored pending a reply, and a worker claims the session's oldest
//! pending message only while no other claim on that session is live (`SessionStore::claim_reply`), so two
//! instances never answer one session at the same time. Requests that wait for a reply (`http`, `sse`) follow
//! it through the session's event feed (chunks, the stored reply, or a failure, all tagged with the message they
//! answer), which reaches every instance; so it does not matter which instance produced it.
//!
//! Deleting the session ends both sides at once: the worker drops the agent call, and waiting requests hear
//! that the session is gone. So does a shutdown: the worker leaves its claim to expire (then this server after a
//! restart, or another instance, answers the message), and waiting requests hear that the server is stopping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agents::{AgentError, AgentRequest, Backends};
use crate::clock::Clock;
use crate::domain::{
    AgentReply, EventKind, EventPayload, Message, ReplyChunk, ReplyFailure, Session, SessionEvent,
};
use crate::store::{ClaimAt, LiveEvents, SessionStore, StoreError};

/// What happens to one message's reply, as a waiting request sees it.
#[derive(Debug, Clone)]
pub enum ReplyProgress {
    /// A piece of the reply.
    Chunk(ReplyChunk),
    /// The stored reply message, and the reply it carries.
    Done {
        message: Message,
        reply: AgentReply,
    },
    Failed(ReplyFailure),
    /// The wait ended before any reply, for a reason of the server's, not the agent's.
    Ended(WaitEnded),
}

/// Why a wait for a reply ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnded {
    /// The session was deleted (its messages with it): no reply will come.
    SessionDeleted,
    /// This server is shutting down; the message stays stored and is answered later.
    ShuttingDown,
}

pub struct Replier {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    backends: Backends,
    agent_timeout: Duration,
    history_limit: u32,
    /// Sessions with a worker on this instance; `true` when it was kicked again while running, so that it
    /// claims once more before leaving (a message stored meanwhile is then not left waiting).
    workers: Mutex<HashMap<Uuid, bool>>,
    /// Cancelled at shutdown: workers stop where they are.
    stopping: CancellationToken,
}

impl Replier {
    pub fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        backends: Backends,
        agent_timeout: Duration,
        history_limit: u32,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            store,
            clock,
            backends,
            agent_timeout,
            history_limit,
            workers: Mutex::new(HashMap::new()),
            stopping,
        }
    }

    pub fn agent_timeout(&self) -> Duration {
        self.agent_timeout
    }

    /// How long a claim holds: past it, the claiming worker is presumed dead and another may take over.
    pub fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.agent_timeout * 2 + Duration::from_secs(10))
            .unwrap_or(chrono::Duration::minutes(10))
    }

    /// A claim made `now`: it takes over claims made before the lease (their worker is presumed dead).
    pub fn claim_at(&self, now: chrono::DateTime<chrono::Utc>) -> ClaimAt {
        ClaimAt {
            now,
            stale_before: now - self.lease(),
        }
    }

    /// Stores a user message (with its session's update and events), claimed for its reply when it is the
    /// session's next to answer, and hands that claim to a worker here: in a task of its own, so that it is
    /// done even if the caller is dropped meanwhile (a request whose client left). A claim stored but never
    /// handed over would hold the session's queue, every later message of it waiting, until its lease ran out.
    /// Gives back the session and message with the stored seq, or None when the session's version moved on.
    pub async fn record(
        self: &Arc<Self>,
        session: Session,
        expected_version: i64,
        message: Message,
        events: Vec<SessionEvent>,
    ) -> Result<(Option<i64>, Session, Message), StoreError> {
        let replier = self.clone();
        let recording = tokio::spawn(async move {
            let claim = replier.claim_at(message.created_at);
            let recorded = replier
                .store
                .record_message(&session, expected_version, &message, events, Some(claim))
                .await?;
            let seq = recorded.map(|recorded| {
                replier.start(session.id, recorded.claimed);
                recorded.seq
            });
            Ok((seq, session, message))
        });
        match recording.await {
            Ok(recorded) => recorded,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Unavailable("the server is stopping".into())),
        }
    }

    /// Makes sure the session's pending messages get answered: starts a worker here unless one runs already.
    pub fn kick(self: &Arc<Self>, session_id: Uuid) {
        self.start(session_id, None);
    }

    /// As `kick`, with the message already `claimed` for this instance (with the message just stored, see
    /// `SessionStore::record_message`), if any: it is answered at once, and the session's worker goes on from
    /// there. A worker of the session already running here holds no claim (the claim was free), so it finds
    /// this one live and leaves; the claimed message's own task kicks the session once it is answered, so that
    /// messages stored meanwhile are not left to the sweep.
    pub fn start(self: &Arc<Self>, session_id: Uuid, claimed: Option<Message>) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        match (workers.get_mut(&session_id), claimed) {
            (Some(again), None) => *again = true,
            (Some(_), Some(message)) => {
                let replier = self.clone();
                tokio::spawn(async move {
                    if replier.clone().run(session_id, Some(message), false).await {
                        replier.kick(session_id);
                    }
                });
            }
            (None, claimed) => {
                workers.insert(session_id, false);
                tokio::spawn(self.clone().run(session_id, claimed, true));
            }
        }
    }

    /// Answers `first`, then (a `worker`) the session's next messages; true unless the server stopped first.
    async fn run(self: Arc<Self>, session_id: Uuid, first: Option<Message>, worker: bool) -> bool {
        let stopping = self.stopping.clone();
        tokio::select! {
            _ = self.work(session_id, first, worker) => true,
            // The claim in hand, if any, expires after its lease; then the message is answered again.
            _ = stopping.cancelled() => false,
        }
    }

    async fn work(&self, session_id: Uuid, mut first: Option<Message>, worker: bool) {
        loop {
            let claimed = match first.take() {
                Some(message) => Ok(Some(message)),
                None if !worker => return,
                None => {
                    let at = self.claim_at(self.clock.now());
                    self.store
                        .claim_reply(session_id, at.now, at.stale_before)
                        .await
                }
            };
            match claimed {
                Ok(Some(message)) => {
                    // Listening before the agent is asked, so that a deletion meanwhile is not missed.
                    let feed = self.store.subscribe(session_id);
                    tokio::select! {
                        _ = self.answer(message) => {}
                        _ = deleted(feed) => {
                            tracing::info!(session = %session_id, "session deleted: its reply is abandoned");
                        }
                    }
                    continue;
                }
                // Nothing pending, or another worker (maybe on another instance) is answering this session: it
                // goes on to the next pending message itself.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(session = %session_id, error = %e, "could not claim a reply")
                }
            }
            let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            if workers.get(&session_id) == Some(&true) {
                workers.insert(session_id, false);
                continue;
            }
            workers.remove(&session_id);
            return;
        }
    }

    async fn answer(&self, message: Message) {
        // Named before the agent answers (streamed chunks carry it), at the time its production starts.
        let reply_id = crate::domain::ids::new_id(self.clock.now());
        let outcome = match self.store.get_session(message.session_id).await {
            Ok(Some(session)) => self
                .produce(&session, &message, reply_id)
                .await
                .map(|r| (session, r)),
            Ok(None) => Err(AgentError::Failed("the session no longer exists".into())),
            Err(_) => Err(AgentError::Failed("could not load the session".into())),
        };
        let now = self.clock.now();
        let finished = match outcome {
            Ok((session, reply)) => {
                let stored = Message {
                    id: reply_id,
                    seq: 0,
                    session_id: session.id,
                    author_id: session.agent_id,
                    is_agent: true,
                    content: reply.text.clone(),
                    metadata: reply.metadata().into(),
                    attachments: None,
                    in_reply_to: Some(message.id),
                    created_at: now,
                };
                let events = vec![SessionEvent::message(&stored)];
                self.store
                    .finish_reply(message.id, Some(&stored), events)
                    .await
            }
            Err(e) => {
                tracing::warn!(session = %message.session_id, message = %message.id, error = %e, "no agent reply");
                let failed =
                    SessionEvent::reply_failed(message.session_id, message.id, failure_of(e), now);
                self.store
                    .finish_reply(message.id, None, vec![failed])
                    .await
            }
        };
        match finished {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(message = %message.id, "reply not stored: session gone or claim taken over")
            }
            Err(e) => {
                tracing::error!(message = %message.id, error = %e, "could not finish a reply")
            }
        }
    }

    /// Asks the agent, publishing chunks as they come, within the agent timeout.
    async fn produce(
        &self,
        session: &Session,
        message: &Message,
        reply_id: Uuid,
    ) -> Result<AgentReply, AgentError> {
        let failed = |what: &str| AgentError::Failed(what.to_string());
        let agent = self
            .store
            .get_agent(session.agent_id)
            .await
            .map_err(|_| failed("could not load the agent"))?
            .ok_or_else(|| failed("the session's agent no longer exists"))?;
        let backend_kind = match &agent.backend {
            crate::domain::AgentBackend::Echo => "echo",
            crate::domain::AgentBackend::Webhook { .. } => "webhook",
            crate::domain::AgentBackend::OpenAi(_) => "openai",
        };
        let backend = self.backends.for_agent(&agent.backend)?;
        let history = if backend.reads_history() {
            self.store
                .recent_messages(session.id, message.seq, self.history_limit)
                .await
                .map_err(|_| failed("could not load the history"))?
        } else {
            Vec::new()
        };
        let request = AgentRequest {
            agent,
            session: session.clone(),
            message: message.clone(),
            history,
        };
        let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<String>();
        let reply = async move {
            // The sender is dropped when the backend is done, which ends the forwarding below.
            let chunks = chunk_tx;
            backend.reply(&request, &chunks).await
        };
        let forward = async {
            let mut index = 0;
            while let Some(chunk) = chunk_rx.recv().await {
                let now = self.clock.now();
                let event =
                    SessionEvent::chunk(session.id, message.id, reply_id, &chunk, index, now);
                self.store.publish(&event);
                index += 1;
            }
        };
        let work = async {
            let (reply, ()) = tokio::join!(reply, forward);
            reply
        };
        let started = std::time::Instant::now();
        let reply = match tokio::time::timeout(self.agent_timeout, work).await {
            Ok(reply) => reply,
            Err(_) => Err(AgentError::Timeout(self.agent_timeout)),
        };
        let outcome = match &reply {
            Ok(_) => "ok",
            Err(AgentError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        crate::metrics::agent_reply(backend_kind, outcome, started.elapsed());
        reply
    }
}

/// What every instance hears of an agent's failure.
fn failure_of(e: AgentError) -> ReplyFailure {
    match e {
        AgentError::Failed(reason) => ReplyFailure::Failed { reason },
        AgentError::Timeout(limit) => ReplyFailure::TimedOut {
            after_ms: limit.as_millis().try_into().unwrap_or(u64::MAX),
        },
    }
}

/// Completes when the feed announces the session's deletion.
async fn deleted(mut feed: LiveEvents) {
    loop {
        match feed.recv().await {
            Ok(event) if event.kind() == EventKind::Deleted => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// A request's view of one message's reply, read from the session's event feed.
pub struct ReplyWatch {
    events: LiveEvents,
    message_id: Uuid,
    agent_timeout: Duration,
    stopping: CancellationToken,
    finished: bool,
}

impl ReplyWatch {
    pub(super) fn new(
        events: LiveEvents,
        message_id: Uuid,
        agent_timeout: Duration,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            events,
            message_id,
            agent_timeout,
            stopping,
            finished: false,
        }
    }

    /// The next step of the reply; None after `Done`, `Failed` or `Ended`. Gives up when the session's queue
    /// shows no progress for longer than an agent may take (its worker is gone), so that no request waits
    /// forever; ends at once when the session is deleted or the server stops.
    pub async fn next(&mut self) -> Option<ReplyProgress> {
        if self.finished {
            return None;
        }
        let idle = self.agent_timeout + Duration::from_secs(5);
        loop {
            let received = tokio::select! {
                received = tokio::time::timeout(idle, self.events.recv()) => received,
                _ = self.stopping.cancelled() => {
                    return self.finish(ReplyProgress::Ended(WaitEnded::ShuttingDown))
                }
            };
            let event = match received {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => {
                    let timed_out = failure_of(AgentError::Timeout(self.agent_timeout));
                    return self.finish(ReplyProgress::Failed(timed_out));
                }
                // Any event of the session means its queue is moving: keep waiting.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Ok(event)) => event,
            };
            if event.kind() == EventKind::Deleted {
                return self.finish(ReplyProgress::Ended(WaitEnded::SessionDeleted));
            }
            if event.in_reply_to() != Some(self.message_id) {
                continue;
            }
            match Arc::unwrap_or_clone(event).payload {
                EventPayload::Chunk(chunk) => return Some(ReplyProgress::Chunk(chunk)),
                EventPayload::Message(message) => {
                    let reply = AgentReply::of(&message);
                    return self.finish(ReplyProgress::Done { message, reply });
                }
                EventPayload::ReplyFailed { failure, .. } => {
                    return self.finish(ReplyProgress::Failed(failure))
                }
                _ => continue,
            }
        }
    }

    fn finish(&mut self, last: ReplyProgress) -> Option<ReplyProgress> {
        self.finished = true;
        Some(last)
    }
}
