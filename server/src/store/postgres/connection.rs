//! Living with a database that may be away: the query pool, handing out connections that fail fast
//! (`StoreError::Unavailable`, 503) instead of hanging while the database cannot be reached, the sorting of
//! sqlx's errors into "unavailable" and the rest, and what requests and the listener know of the database's
//! reachability (`Reachability`), so that an outage is logged once and the listener reconnects as soon as a
//! request gets through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};

use crate::outage::OutageLog;
use crate::store::StoreError;

/// Connections for queries; the listener has its own.
const POOL_SIZE: u32 = 10;
/// How long a request waits for a connection while the database is known to be unreachable: enough to
/// connect to one that is back (each request is also a probe), short enough that an outage answers 503 at
/// once rather than after the full acquire timeout.
const UNREACHABLE_WAIT: Duration = Duration::from_millis(500);

/// Whether the database answers, as requests and the listener last found it.
pub struct Reachability {
    /// Logs an outage once, and makes requests fail fast while it lasts.
    pub outage: OutageLog,
    /// Bursts of requests that found every connection of the pool busy for the whole acquire timeout (load,
    /// not an outage), logged once each.
    saturation: OutageLog,
    /// Whether the listener is connected and caught up. While it is not, writes do not wait for their events
    /// to come back through it (they are replayed to subscribers once it is back).
    pub listening: AtomicBool,
    /// Cuts the listener's reconnection backoff short once a request has reached the database again.
    pub reachable_again: tokio::sync::Notify,
}

impl Reachability {
    pub fn new() -> Self {
        Self {
            outage: OutageLog::new("PostgreSQL"),
            saturation: OutageLog::new("PostgreSQL connection pool"),
            listening: AtomicBool::new(true),
            reachable_again: tokio::sync::Notify::new(),
        }
    }

    /// A request reached the database after failures: wakes the listener if it is waiting to reconnect.
    fn reached_again(&self) {
        if !self.listening.load(Ordering::Acquire) {
            self.reachable_again.notify_one();
        }
    }
}

/// The query pool, with its outage-aware `acquire`.
pub struct Connections {
    pub pool: PgPool,
    /// Longest a query waits for a connection (`StoreOptions::acquire_timeout`).
    pub acquire_timeout: Duration,
    pub reach: Arc<Reachability>,
}

impl Connections {
    pub async fn open(
        options: PgConnectOptions,
        acquire_timeout: Duration,
        reach: Arc<Reachability>,
    ) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            acquire_timeout,
            reach,
        })
    }

    /// A connection for one operation. Waits at most the acquire timeout for one, and only `UNREACHABLE_WAIT`
    /// while the database is known to be unreachable; either way a database that cannot be reached answers
    /// `Unavailable` quickly, never after sqlx's 30 s default.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let unreachable = self.reach.outage.is_failing();
        let wait = if unreachable {
            UNREACHABLE_WAIT.min(self.acquire_timeout)
        } else {
            self.acquire_timeout
        };
        match tokio::time::timeout(wait, self.pool.acquire()).await {
            Ok(Ok(conn)) => {
                self.reach.outage.recovered();
                self.reach.saturation.recovered();
                if unreachable {
                    self.reach.reached_again();
                }
                Ok(conn)
            }
            Ok(Err(e)) => Err(self.acquire_failed(e)),
            Err(_) => Err(self.acquire_failed(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Why no connection came: the database cannot be reached (an outage: logged once), or every connection
    /// is busy (load: nothing to log).
    fn acquire_failed(&self, e: sqlx::Error) -> StoreError {
        // The pool opens connections as needed up to its size: a timeout below it means that none could be
        // opened. (Idle connections found dead are closed first, so after an outage the pool is small.)
        let could_not_connect =
            !matches!(e, sqlx::Error::PoolTimedOut) || self.pool.size() < POOL_SIZE;
        if matches!(e, sqlx::Error::PoolTimedOut) {
            let message = if could_not_connect {
                "could not connect to the database"
            } else {
                "every database connection stayed busy"
            };
            let e = StoreError::Unavailable(message.into());
            if could_not_connect {
                self.reach.outage.failed(&e);
            } else {
                self.reach.saturation.failed(&e);
            }
            return e;
        }
        let e = backend(e);
        if matches!(e, StoreError::Unavailable(_)) {
            self.reach.outage.failed(&e);
        }
        e
    }
}

/// Sorts an error into "the database cannot serve this right now" (503) and anything else (500).
pub fn backend(e: sqlx::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// Errors of a database that is away, restarting, refusing connections or writes, or out of resources, as
/// opposed to errors of the request or the data.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01..57P05: admin shutdown, crash shutdown, cannot connect now
            // (starting up, shutting down), database dropped, idle session timeout; 53: insufficient
            // resources (disk full, out of memory, too many connections); 25006: a read-only transaction (a
            // standby, or `default_transaction_read_only` during maintenance); 28: the role may not connect
            // (now).
            ["08", "57P", "53", "28"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "25006"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_query_errors_are_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            assert!(matches!(backend(e), StoreError::Unavailable(_)));
        }
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("x".into()),
            sqlx::Error::Protocol("unexpected message".into()),
        ] {
            assert!(matches!(backend(e), StoreError::Backend(_)));
        }
    }
}
