//! The server's Prometheus metrics: their names and descriptions, the process-wide recorder (installed once,
//! rendered by `GET /metrics`), and one small function per thing measured, so that call sites stay one line.
//!
//! The `metrics` facade has one global recorder per process. Every server in a process (several in one test
//! binary) therefore shares it: figures are process totals, and tests compare them before and after.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "agent_sessions_http_requests_total";
pub const HTTP_DURATION: &str = "agent_sessions_http_request_duration_seconds";
pub const SESSIONS_CREATED: &str = "agent_sessions_sessions_created_total";
pub const SESSIONS_RENEWED: &str = "agent_sessions_sessions_renewed_total";
pub const SESSIONS_EXPIRED: &str = "agent_sessions_sessions_expired_total";
pub const SESSIONS_DELETED: &str = "agent_sessions_sessions_deleted_total";
pub const ACTIVE_SESSIONS: &str = "agent_sessions_active_sessions";
pub const EXPIRY_WARNINGS: &str = "agent_sessions_expiry_warnings_total";
pub const MESSAGES: &str = "agent_sessions_messages_total";
pub const AGENT_REPLY_DURATION: &str = "agent_sessions_agent_reply_duration_seconds";
pub const EVENT_STREAMS: &str = "agent_sessions_event_streams_open";
pub const SOCKETIO_CONNECTIONS: &str = "agent_sessions_socketio_connections";
pub const RATE_LIMITED: &str = "agent_sessions_rate_limited_total";
pub const WEBHOOK_DELIVERIES: &str = "agent_sessions_webhook_deliveries_total";
pub const STORE_COMMIT_BATCH: &str = "agent_sessions_store_commit_batch_size";
pub const STORE_COMMIT_DURATION: &str = "agent_sessions_store_commit_duration_seconds";

/// Upper bounds of the duration histograms, in seconds: from a cached read to an agent that takes a minute.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Upper bounds of the commit batch sizes: how many writes shared one commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into their buckets when nobody scrapes: without it they would pile
/// up in memory between scrapes (the exporter's own HTTP listener, not used here, would do this).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder's handle, installing the recorder on first use. If another recorder was installed first (an
/// embedding program's), this server's figures go there and `/metrics` renders an empty registry.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(STORE_COMMIT_BATCH.into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will be empty");
        } else {
            describe();
            register_at_zero();
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        handle
    })
}

/// The exposition text of every metric.
pub fn render() -> String {
    handle().render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by operation (operationId or route) and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to its response head), by operation"
    );
    describe_counter!(SESSIONS_CREATED, "Sessions created");
    describe_counter!(
        SESSIONS_RENEWED,
        "Sessions renewed on request (renewSession)"
    );
    describe_counter!(
        SESSIONS_EXPIRED,
        "Sessions announced expired by this instance"
    );
    describe_counter!(SESSIONS_DELETED, "Sessions deleted");
    describe_gauge!(
        ACTIVE_SESSIONS,
        "Sessions not yet expired: counted at each purge pass, adjusted by this instance's creates, deletes and expiries in between"
    );
    describe_counter!(EXPIRY_WARNINGS, "Expiry warnings announced");
    describe_counter!(MESSAGES, "User messages accepted, by transport");
    describe_histogram!(
        AGENT_REPLY_DURATION,
        Unit::Seconds,
        "Time an agent took to answer, by backend type and outcome"
    );
    describe_gauge!(
        EVENT_STREAMS,
        "Open event streams (SSE and the WebSocket feed)"
    );
    describe_gauge!(SOCKETIO_CONNECTIONS, "Open Socket.IO connections");
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a rate limit, by principal kind"
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts, by outcome (delivered, failed)"
    );
    describe_histogram!(
        STORE_COMMIT_BATCH,
        "Writes that shared one store commit, by backend"
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Time a store commit took, by backend"
    );
}

/// The series without labels, listed from the first scrape on (at zero), not only once something happened: a
/// dashboard or an alert on them then sees 0, not "no data".
fn register_at_zero() {
    for name in [
        SESSIONS_CREATED,
        SESSIONS_RENEWED,
        SESSIONS_EXPIRED,
        SESSIONS_DELETED,
        EXPIRY_WARNINGS,
    ] {
        counter!(name).increment(0);
    }
    for name in [ACTIVE_SESSIONS, EVENT_STREAMS, SOCKETIO_CONNECTIONS] {
        gauge!(name).increment(0.0);
    }
}

/// A worker thread's handles, by the operation name's address and the status. foldhash: the keys are this
/// server's own, and SipHash (the std default, made to resist chosen keys) is slower.
type HandleMap = std::collections::HashMap<
    (usize, u16),
    (metrics::Counter, metrics::Histogram),
    foldhash::fast::FixedState,
>;

/// An answered HTTP request. `operation` is a static name, never a raw path (ids would make a series each).
pub fn http_request(operation: &'static str, status: u16, took: Duration) {
    // The registry's lookup (hashing the labels, a shared map) would run on every request; each worker thread
    // keeps the handles it has used instead. The key is the static name's address, so no string is hashed.
    thread_local! {
        static HANDLES: std::cell::RefCell<HandleMap> = Default::default();
    }
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let (count, duration) = handles
            .entry((operation.as_ptr() as usize, status))
            .or_insert_with(|| {
                (
                    counter!(HTTP_REQUESTS, "operation" => operation, "status" => status_label(status)),
                    histogram!(HTTP_DURATION, "operation" => operation),
                )
            });
        count.increment(1);
        duration.record(took.as_secs_f64());
    });
}

/// The status as a label, without an allocation for the statuses this server answers.
fn status_label(status: u16) -> Cow<'static, str> {
    Cow::Borrowed(match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        409 => "409",
        410 => "410",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return Cow::Owned(other.to_string()),
    })
}

pub fn session_created() {
    counter!(SESSIONS_CREATED).increment(1);
    gauge!(ACTIVE_SESSIONS).increment(1.0);
}

pub fn session_renewed() {
    counter!(SESSIONS_RENEWED).increment(1);
}

pub fn session_expired() {
    counter!(SESSIONS_EXPIRED).increment(1);
    gauge!(ACTIVE_SESSIONS).decrement(1.0);
}

/// A session deleted; `was_active`: it had not expired yet (an expired one left the gauge already).
pub fn session_deleted(was_active: bool) {
    counter!(SESSIONS_DELETED).increment(1);
    if was_active {
        gauge!(ACTIVE_SESSIONS).decrement(1.0);
    }
}

/// The active sessions as counted by the store (at a purge pass): corrects what the adjustments missed, such
/// as another instance's work on a shared database.
pub fn set_active_sessions(active: u64) {
    gauge!(ACTIVE_SESSIONS).set(active as f64);
}

pub fn expiry_warning() {
    counter!(EXPIRY_WARNINGS).increment(1);
}

/// A user message accepted over `transport` (`http`, `sse`, `websocket`, `socketio`).
pub fn message(transport: &'static str) {
    counter!(MESSAGES, "transport" => transport).increment(1);
}

/// An agent's answer (or failure: `outcome` is `ok`, `error` or `timeout`) from a backend of type `backend`.
pub fn agent_reply(backend: &'static str, outcome: &'static str, took: Duration) {
    histogram!(AGENT_REPLY_DURATION, "backend" => backend, "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// An event stream (SSE or the WebSocket feed) opened (+1) or closed (-1).
pub fn event_stream(delta: f64) {
    gauge!(EVENT_STREAMS).increment(delta);
}

/// A Socket.IO connection opened (+1) or closed (-1).
pub fn socketio_connection(delta: f64) {
    gauge!(SOCKETIO_CONNECTIONS).increment(delta);
}

pub fn rate_limited(principal: &'static str) {
    counter!(RATE_LIMITED, "principal" => principal).increment(1);
}

/// A webhook delivery attempt; `delivered`: the receiver took it (2xx).
pub fn webhook_delivery(delivered: bool) {
    let outcome = if delivered { "delivered" } else { "failed" };
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// One store commit of `writes` writes on `backend` (`sqlite`, `postgres`).
pub fn store_commit(backend: &'static str, writes: usize, took: Duration) {
    histogram!(STORE_COMMIT_BATCH, "backend" => backend).record(writes as f64);
    histogram!(STORE_COMMIT_DURATION, "backend" => backend).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_numbers() {
        for status in [101, 200, 404, 418, 503, 599] {
            assert_eq!(status_label(status), status.to_string());
        }
    }
}
