//! Per-session reply workers: the agent answers the messages of one session one at a time, in the order they
//! were stored, whatever transport each was sent with.
//!
//! A worker exists only while its session has replies queued: the first message of a burst starts it, and it
//! leaves when its queue is empty (checked under the map lock, so no job is ever queued to a leaving worker).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use uuid::Uuid;

use crate::agents::{AgentError, AgentRequest, Backends};
use crate::clock::Clock;
use crate::domain::{AgentReply, Message, Session, SessionEvent};
use crate::store::SessionStore;

/// What happens to one message's reply, as it happens.
#[derive(Debug, Clone)]
pub enum ReplyProgress {
    Chunk {
        message_id: Uuid,
        chunk: String,
        index: u64,
    },
    /// The reply, stored as `message`.
    Done {
        message: Message,
        reply: AgentReply,
    },
    Failed(AgentError),
}

pub struct ReplyJob {
    pub session: Session,
    pub message: Message,
    /// The sender's view of the reply; nobody may be listening (websocket transport).
    pub progress: mpsc::UnboundedSender<ReplyProgress>,
}

pub struct Replier {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    backends: Backends,
    agent_timeout: Duration,
    history_limit: u32,
    workers: Mutex<HashMap<Uuid, mpsc::UnboundedSender<ReplyJob>>>,
}

impl Replier {
    pub fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        backends: Backends,
        agent_timeout: Duration,
        history_limit: u32,
    ) -> Self {
        Self {
            store,
            clock,
            backends,
            agent_timeout,
            history_limit,
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// Queues a reply behind the session's earlier ones.
    pub fn enqueue(self: &Arc<Self>, job: ReplyJob) {
        let id = job.session.id;
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let job = match workers.get(&id) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(returned) => returned.0,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        workers.insert(id, tx);
        tokio::spawn(self.clone().run_worker(id, rx));
    }

    async fn run_worker(self: Arc<Self>, id: Uuid, mut rx: mpsc::UnboundedReceiver<ReplyJob>) {
        loop {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            workers.remove(&id);
                            return;
                        }
                    }
                }
            };
            self.answer(job).await;
        }
    }

    async fn answer(&self, job: ReplyJob) {
        let reply_id = Uuid::new_v4();
        let outcome = match self.produce(&job, reply_id).await {
            Ok(reply) => self.store_reply(&job, reply_id, reply).await,
            Err(e) => Err(e),
        };
        let progress = match outcome {
            Ok((message, reply)) => ReplyProgress::Done { message, reply },
            Err(e) => {
                tracing::warn!(session = %job.session.id, message = %job.message.id, error = %e, "no agent reply");
                ReplyProgress::Failed(e)
            }
        };
        let _ = job.progress.send(progress);
    }

    /// Asks the agent, forwarding chunks to subscribers and to the sender, within the agent timeout.
    async fn produce(&self, job: &ReplyJob, reply_id: Uuid) -> Result<AgentReply, AgentError> {
        let failed = |what: &str| AgentError::Failed(what.to_string());
        let agent = self
            .store
            .get_agent(job.session.agent_id)
            .await
            .map_err(|_| failed("could not load the agent"))?
            .ok_or_else(|| failed("the session's agent no longer exists"))?;
        let history = self
            .store
            .recent_messages(job.session.id, job.message.seq, self.history_limit)
            .await
            .map_err(|_| failed("could not load the history"))?;
        let backend = self.backends.for_agent(&agent.backend);
        let request = AgentRequest {
            agent,
            session: job.session.clone(),
            message: job.message.clone(),
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
                self.store.publish(&SessionEvent::chunk(
                    job.session.id,
                    reply_id,
                    &chunk,
                    index,
                    now,
                ));
                let _ = job.progress.send(ReplyProgress::Chunk {
                    message_id: reply_id,
                    chunk,
                    index,
                });
                index += 1;
            }
        };
        let work = async {
            let (reply, ()) = tokio::join!(reply, forward);
            reply
        };
        match tokio::time::timeout(self.agent_timeout, work).await {
            Ok(reply) => reply,
            Err(_) => Err(AgentError::Timeout(self.agent_timeout)),
        }
    }

    async fn store_reply(
        &self,
        job: &ReplyJob,
        reply_id: Uuid,
        reply: AgentReply,
    ) -> Result<(Message, AgentReply), AgentError> {
        let message = Message {
            id: reply_id,
            seq: 0,
            session_id: job.session.id,
            author_id: job.session.agent_id,
            is_agent: true,
            content: reply.text.clone(),
            metadata: reply.metadata(),
            attachments: None,
            created_at: self.clock.now(),
        };
        match self
            .store
            .insert_reply(&message, vec![SessionEvent::message(&message)])
            .await
        {
            Ok(true) => Ok((message, reply)),
            Ok(false) => Err(AgentError::Failed(
                "the session was deleted before the reply".into(),
            )),
            Err(e) => {
                tracing::error!(session = %job.session.id, error = %e, "could not store an agent reply");
                Err(AgentError::Failed("could not store the reply".into()))
            }
        }
    }
}

/// One async lock per key, created on demand and forgotten when nobody holds or waits for it.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Arc<Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>>,
}

pub struct KeyedGuard {
    key: Uuid,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: Arc<Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: Uuid) -> KeyedGuard {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(key).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        KeyedGuard {
            key,
            lock,
            guard: Some(guard),
            locks: self.locks.clone(),
        }
    }
}

impl Drop for KeyedGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours. Others clone only under the map lock, which we hold.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.key);
        }
    }
}
