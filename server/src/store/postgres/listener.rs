//! The listener task: LISTENs on the channel of all instances and feeds this store's `EventBus`, for this
//! instance's events as for the others', so that a subscriber sees every event once and in the same order on
//! every instance. If its connection drops, it reconnects (backing off while the database is away) and replays,
//! for every session subscribed here, the stored events committed meanwhile; transient events of that moment
//! are lost. It also tells each writer when its own events have come back (`Loopback`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::connection::{backend, Reachability};
use super::notify::{Ack, Wire, CHANNEL};
use super::replay;
use crate::domain::SessionEvent;
use crate::outage::Backoff;
use crate::store::{from_ms, schema, EventBus, LiveEvents, StoreError};

/// Rows per query when the listener recovers events missed while its connection was down.
const RECOVERY_BATCH: u32 = 500;
/// Longest a write waits for its events to come back through the listener before returning anyway.
const LOOPBACK_WAIT: Duration = Duration::from_secs(5);
/// The listener's reconnection pacing: quick after a blip, at most every few seconds during an outage.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The running listener: stops it and releases its connection.
pub struct ListenerTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    pool: PgPool,
}

impl ListenerTask {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.pool.close().await;
    }
}

/// Connects the listener and starts its task. LISTENs before returning: every event committed after that
/// reaches this store's subscribers. `pool` is the query pool, for reading events back.
pub async fn start(
    options: PgConnectOptions,
    acquire_timeout: Duration,
    pool: PgPool,
    reach: Arc<Reachability>,
) -> Result<(Arc<Shared>, ListenerTask), sqlx::Error> {
    // The listener's connection lives in a pool of one, so that it reconnects even while queries hold every
    // connection of the main pool.
    let listener_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&listener_pool).await?;
    listener.listen(CHANNEL).await?;
    // Where replays after a reconnect start for sessions that have had no event delivered here yet: the log
    // as it stands now, not its beginning (their subscribers did not ask for the history).
    let high_water: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
        .fetch_one(&pool)
        .await?;
    let shared = Arc::new(Shared {
        bus: EventBus::default(),
        watched: StdMutex::new(HashMap::new()),
        high_water: AtomicI64::new(high_water),
        id: Uuid::new_v4(),
        next_ack: AtomicU64::new(0),
        acks: StdMutex::new(HashMap::new()),
        reach,
    });
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run_listener(
        listener,
        listener_pool.clone(),
        pool,
        shared.clone(),
        stopped,
    ));
    let task = ListenerTask {
        stop,
        task,
        pool: listener_pool,
    };
    Ok((shared, task))
}

/// What the listener task and the store share.
pub struct Shared {
    bus: EventBus,
    /// Sessions subscribed on this instance, with what was delivered to them: after a reconnect, the listener
    /// replays each one's stored events from there, so that a dropped connection loses no persisted event.
    watched: StdMutex<HashMap<Uuid, Watch>>,
    /// Highest persisted seq the listener has delivered (of any session).
    high_water: AtomicI64,
    /// This store's name in `Ack`s.
    id: Uuid,
    next_ack: AtomicU64,
    /// Writers waiting for their events to be delivered here.
    acks: StdMutex<HashMap<u64, oneshot::Sender<()>>>,
    /// The database's reachability, shared with the query pool: the listener reports its connection's losses
    /// and returns there, and waits there for a request to get through while it cannot reconnect.
    reach: Arc<Reachability>,
}

impl Shared {
    /// Subscribes to a session's events, and watches it so that a reconnect replays what it missed.
    pub fn subscribe(&self, session_id: Uuid) -> LiveEvents {
        let receiver = self.bus.subscribe(session_id);
        let floor = self.high_water.load(Ordering::Acquire);
        lock(&self.watched).entry(session_id).or_insert(Watch {
            delivered: None,
            floor,
        });
        receiver
    }

    /// Names a write whose events are about to be notified, and what its writer waits on until the listener
    /// has delivered them here.
    pub fn loopback(self: &Arc<Self>) -> (Ack, Loopback) {
        let n = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, back) = oneshot::channel();
        lock(&self.acks).insert(n, tx);
        let ack = Ack { store: self.id, n };
        let loopback = Loopback {
            shared: self.clone(),
            n,
            back,
        };
        (ack, loopback)
    }

    fn acknowledge(&self, ack: Option<Ack>) {
        if let Some(ack) = ack.filter(|a| a.store == self.id) {
            if let Some(tx) = lock(&self.acks).remove(&ack.n) {
                let _ = tx.send(());
            }
        }
    }

    /// Releases every waiting writer: after a reconnect (their events were replayed, or are gone with the
    /// connection) and when the listener stops.
    fn acknowledge_all(&self) {
        lock(&self.acks).clear();
    }
}

#[derive(Clone, Copy)]
struct Watch {
    /// Last seq delivered for this session; later copies (a replay racing the live feed) are dropped.
    delivered: Option<i64>,
    /// Where a replay starts while nothing was delivered: the listener's position at subscription. (An event
    /// of this session given a lower seq but committed after that, while the connection was down, would be
    /// missed; it takes a write in flight across the subscription and a disconnection at that moment.)
    floor: i64,
}

/// A writer waiting for its own events to come back through the listener (see `commit_announcing`).
pub struct Loopback {
    shared: Arc<Shared>,
    n: u64,
    back: oneshot::Receiver<()>,
}

impl Loopback {
    pub async fn wait(mut self) {
        if tokio::time::timeout(LOOPBACK_WAIT, &mut self.back)
            .await
            .is_err()
        {
            tracing::warn!("committed events not seen back from the database in time");
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        lock(&self.shared.acks).remove(&self.n);
    }
}

/// Receives the channel and feeds the local bus, until `stop` fires (or the store is dropped). When the
/// connection is lost it starts over with a new one (backing off while the database is away), and replays
/// what the subscribers here missed meanwhile before going on.
async fn run_listener(
    mut listener: PgListener,
    listener_pool: PgPool,
    pool: PgPool,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    // However the listener ends, no writer is left waiting for it.
    struct ReleaseAll(Arc<Shared>);
    impl Drop for ReleaseAll {
        fn drop(&mut self) {
            self.0.acknowledge_all();
        }
    }
    let _release = ReleaseAll(shared.clone());
    let mut parts: HashMap<Uuid, Vec<String>> = HashMap::new();
    loop {
        let lost = loop {
            let received = tokio::select! {
                r = listener.try_recv() => r,
                _ = &mut stop => return,
            };
            match received {
                Ok(Some(notification)) => {
                    match serde_json::from_str::<Wire>(notification.payload()) {
                        Ok(wire) => {
                            if !receive(wire, &pool, &shared, &mut parts).await {
                                break "a notified event could not be fetched".to_string();
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable event notification"),
                    }
                }
                // The connection was lost (and maybe re-established): notifications in between are gone.
                Ok(None) => break "the event listener's connection was lost".to_string(),
                Err(e) => break format!("the event listener's connection failed: {e}"),
            }
        };
        // Writers waiting for their events are released now: they are replayed once the listener is back.
        shared.reach.listening.store(false, Ordering::Release);
        shared.acknowledge_all();
        shared.reach.outage.failed(&lost);
        parts.clear();
        // A new listener rather than sqlx's reconnection: a connection that failed with an error (such as
        // the server's "terminating connection due to administrator command") stays in a PgListener.
        drop(listener);
        let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        listener = loop {
            match relisten(&listener_pool, &pool, &shared).await {
                Ok(listener) => break listener,
                Err(e) => tracing::debug!(error = %e, "event listener: still no database"),
            }
            // Reconnection pacing while the database is away (a production wait, not a test's).
            tokio::select! {
                _ = tokio::time::sleep(backoff.failed()) => {}
                _ = shared.reach.reachable_again.notified() => {}
                _ = &mut stop => return,
            }
        };
        shared.reach.listening.store(true, Ordering::Release);
        shared.acknowledge_all();
        shared.reach.outage.recovered();
    }
}

/// A new listener, listening, with the events committed while there was none delivered.
async fn relisten(
    listener_pool: &PgPool,
    pool: &PgPool,
    shared: &Shared,
) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(listener_pool)
        .await
        .map_err(backend)?;
    // Listening before reading the log, so that an event committed in between is either in the log or
    // notified (and then dropped as a duplicate).
    listener.listen(CHANNEL).await.map_err(backend)?;
    recover_missed(pool, shared).await?;
    Ok(listener)
}

/// Handles one notification; false if an event could not be delivered and a replay is needed.
async fn receive(
    wire: Wire,
    pool: &PgPool,
    shared: &Shared,
    parts: &mut HashMap<Uuid, Vec<String>>,
) -> bool {
    match wire {
        Wire::Event {
            seq,
            session,
            kind,
            at,
            data,
            ack,
        } => {
            match schema::decode_event(seq, session, from_ms(at), &kind, data) {
                Ok(event) => deliver(shared, event),
                Err(e) => tracing::warn!(kind, error = %e, "undecodable event notification"),
            }
            shared.acknowledge(ack);
        }
        Wire::Ref { seq, session, ack } => {
            let _release = Released(shared, ack);
            // Fetched here, before the next notification is handled, to keep the order.
            match replay::event_by_seq(pool, seq).await {
                Ok(Some(event)) => deliver(shared, event),
                // Deleted with its session since: nobody can be waiting for it.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%session, seq, error = %e, "could not fetch a notified event");
                    // The replay after a reconnect starts at the last event delivered, so it brings this one.
                    return false;
                }
            }
        }
        Wire::Part {
            id,
            index,
            count,
            text,
        } => {
            let pieces = parts.entry(id).or_default();
            if index as usize != pieces.len() {
                // Parts of one event are sent in one statement and arrive in order; anything else is noise.
                parts.remove(&id);
                return true;
            }
            pieces.push(text);
            if pieces.len() == count as usize {
                let whole = parts.remove(&id).unwrap_or_default().concat();
                match serde_json::from_str::<Wire>(&whole) {
                    Ok(wire @ Wire::Event { .. }) => {
                        return Box::pin(receive(wire, pool, shared, parts)).await
                    }
                    _ => tracing::warn!("undecodable split event notification"),
                }
            }
        }
    }
    true
}

/// Acknowledges when dropped, so that every way out of handling a notification releases its writer.
struct Released<'a>(&'a Shared, Option<Ack>);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.acknowledge(self.1);
    }
}

/// Hands one event to the local subscribers, once.
fn deliver(shared: &Shared, event: SessionEvent) {
    {
        let mut watched = lock(&shared.watched);
        if let Some(seq) = event.seq {
            shared.high_water.fetch_max(seq, Ordering::AcqRel);
            if let Some(watch) = watched.get_mut(&event.session_id) {
                if watch.delivered.is_some_and(|d| seq <= d) {
                    return;
                }
                watch.delivered = Some(seq);
            }
        }
        if event.kind().ends_stream() {
            // The session has nothing more to say, so nothing more to replay.
            watched.remove(&event.session_id);
        }
    }
    shared.bus.publish(&event);
}

/// After the listener's connection came back: delivers, for every session subscribed here, the stored events
/// committed while it was away. Transient events of that time (chunks) are lost: they are live only.
async fn recover_missed(pool: &PgPool, shared: &Shared) -> Result<(), StoreError> {
    let sessions: Vec<(Uuid, Watch)> = {
        let mut watched = lock(&shared.watched);
        // Sessions nobody here listens to any more have nobody to replay to (a later subscriber catches up
        // from its own Last-Event-ID): forgetting them keeps a recovery to one query per open stream.
        watched.retain(|id, _| shared.bus.has_subscribers(*id));
        watched.iter().map(|(id, w)| (*id, *w)).collect()
    };
    for (session_id, watch) in sessions {
        let mut after = watch.delivered.unwrap_or(watch.floor);
        loop {
            let events = replay::events_after(pool, session_id, after, RECOVERY_BATCH).await?;
            let done = events.len() < RECOVERY_BATCH as usize;
            for event in events {
                after = event.seq.unwrap_or(after);
                deliver(shared, event);
            }
            if done {
                break;
            }
        }
    }
    Ok(())
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
