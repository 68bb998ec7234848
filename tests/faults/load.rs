//! `Load`: a steady stream of creates and heartbeats over HTTP against one or several instances, recording what
//! every request got and how long it took, and every write the server acknowledged, so that a fault test can
//! check afterwards that no acknowledged write was lost and that failures were fast 503s. Also used by the
//! server binary's fault tests (`server/tests/crash.rs`), which include this file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// One request and its outcome.
#[derive(Debug, Clone)]
pub struct Call {
    /// Which of the load's base URLs it went to.
    pub instance: usize,
    pub started: Instant,
    pub took: Duration,
    /// None when no response came (the connection failed).
    pub status: Option<u16>,
    pub code: Option<String>,
    pub retry_after: Option<String>,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub struct Record {
    pub calls: Vec<Call>,
    /// Sessions whose creation was acknowledged (201), by id.
    pub created: Vec<Uuid>,
    /// The highest acknowledged `renewalCount` of each session that had a heartbeat acknowledged.
    pub renewals: HashMap<Uuid, i64>,
}

impl Record {
    /// Calls to `instance` answered with `status`, started at or after `since`.
    pub fn count(&self, instance: usize, status: u16, since: Instant) -> usize {
        self.calls
            .iter()
            .filter(|c| c.instance == instance && c.status == Some(status) && c.started >= since)
            .count()
    }

    /// Calls to `instance` answered 2xx, started at or after `since`.
    pub fn succeeded(&self, instance: usize, since: Instant) -> usize {
        self.calls
            .iter()
            .filter(|c| {
                c.instance == instance
                    && c.status.is_some_and(|s| (200..300).contains(&s))
                    && c.started >= since
            })
            .count()
    }

    /// The slowest call started in `[from, to)`.
    pub fn slowest(&self, from: Instant, to: Instant) -> Duration {
        self.calls
            .iter()
            .filter(|c| c.started >= from && c.started < to)
            .map(|c| c.took)
            .max()
            .unwrap_or_default()
    }
}

pub struct Load {
    record: Arc<Mutex<Record>>,
    /// Bumped after every call, so that `wait_for` wakes to look again.
    calls: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// `workers` tasks, spread over `base_urls`, each alternating a create and a heartbeat of one of the
    /// sessions it created, without pause (the server's answer paces them).
    pub fn start(base_urls: &[String], agent_id: Uuid, workers: usize) -> Self {
        let record = Arc::new(Mutex::new(Record::default()));
        let (calls_tx, calls) = watch::channel(0u64);
        let calls_tx = Arc::new(calls_tx);
        let (stop, stopped) = watch::channel(false);
        let workers = (0..workers)
            .map(|n| {
                let instance = n % base_urls.len();
                let worker = Worker {
                    instance,
                    base: base_urls[instance].clone(),
                    agent_id,
                    // A hang guard only: the server must answer long before it.
                    http: reqwest::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .expect("an HTTP client"),
                    record: record.clone(),
                    calls: calls_tx.clone(),
                };
                tokio::spawn(worker.run(stopped.clone()))
            })
            .collect();
        Self {
            record,
            calls,
            stop,
            workers,
        }
    }

    /// Waits until `done` holds for the record (checked after every call), at most `limit`.
    pub async fn wait_for(&mut self, what: &str, limit: Duration, done: impl Fn(&Record) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.record.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, self.calls.changed())
                .await
                .is_err()
            {
                panic!("waited {limit:?} for {what}");
            }
        }
    }

    /// Runs `f` on the record as it is now.
    pub fn inspect<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap())
    }

    /// Stops the workers (each finishes its request in flight) and returns what they saw.
    pub async fn stop(self) -> Record {
        let _ = self.stop.send(true);
        for worker in self.workers {
            worker.await.expect("a load worker ends cleanly");
        }
        Arc::try_unwrap(self.record)
            .expect("the workers are gone")
            .into_inner()
            .unwrap()
    }
}

struct Worker {
    instance: usize,
    base: String,
    agent_id: Uuid,
    http: reqwest::Client,
    record: Arc<Mutex<Record>>,
    calls: Arc<watch::Sender<u64>>,
}

impl Worker {
    async fn run(self, stop: watch::Receiver<bool>) {
        let mut mine: Vec<Uuid> = Vec::new();
        let mut turn = 0usize;
        // Which session gets the next heartbeat: any of this worker's, so that some get many and others few.
        let mut pick = 0x9e37_79b9_7f4a_7c15_u64 ^ self.instance as u64 ^ turn as u64;
        while !*stop.borrow() {
            turn += 1;
            if turn % 2 == 1 || mine.is_empty() {
                let body = json!({"agentId": self.agent_id, "userId": Uuid::new_v4()});
                let (status, body) = self.call("/api/messaging/sessions", body).await;
                if status == Some(201) {
                    let id = session_id(&body);
                    mine.push(id);
                    self.record.lock().unwrap().created.push(id);
                }
            } else {
                // xorshift64: uniform enough, and no dependency.
                pick ^= pick << 13;
                pick ^= pick >> 7;
                pick ^= pick << 17;
                let id = mine[(pick % mine.len() as u64) as usize];
                let path = format!("/api/messaging/sessions/{id}/heartbeat");
                let (status, body) = self.call(&path, json!({})).await;
                if status == Some(200) {
                    let count = body["renewalCount"].as_i64().expect("a renewal count");
                    let mut record = self.record.lock().unwrap();
                    let acked = record.renewals.entry(id).or_default();
                    *acked = (*acked).max(count);
                }
            }
        }
    }

    /// POSTs `body`; records the call; returns the status and the JSON body.
    async fn call(&self, path: &str, body: Value) -> (Option<u16>, Value) {
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await;
        let (status, retry_after, body) = match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = r.json::<Value>().await.unwrap_or(Value::Null);
                (Some(status), retry_after, body)
            }
            Err(_) => (None, None, Value::Null),
        };
        let call = Call {
            instance: self.instance,
            started,
            took: started.elapsed(),
            status,
            code: body["error"]["code"].as_str().map(str::to_string),
            retry_after,
        };
        self.record.lock().unwrap().calls.push(call);
        self.calls.send_modify(|n| *n += 1);
        (status, body)
    }
}

fn session_id(body: &Value) -> Uuid {
    body["sessionId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a created session has an id")
}
