//! Seeding of a running server over HTTP before the measurements of `bench/run`: creates sessions for the random
//! ids of `getSession`, `sessionHeartbeat` and `sendMessage`, and sessions with a message history (`--messages`
//! exchanges with the echo agent over the http transport: a user message and its reply each) for `getMessages`.
//! Writes `session-ids.txt`, `message-session-ids.txt` (one id a line), `session.json` (one real `getSession`
//! response body, the baseline's body), `session-token.txt` (a session token of the first session) and, on a
//! server with keys, `session-tokens.txt` (`<id> <its sessionToken>` a line, for getSession with tokens) into
//! `--out-dir`. With `--api-key`, every request sends it (a server with keys).
//!
//! Seeded sessions have a 1440-minute timeout, so that none expires or enters its warning window (which would
//! make the sweeper update them all) during a long run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Creates sessions and message histories on a running server (bench/run)")]
struct Args {
    /// The server, e.g. http://127.0.0.1:3000
    #[arg(long)]
    url: String,
    /// Sessions for getSession, sessionHeartbeat and sendMessage.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Sessions with a message history, for getMessages.
    #[arg(long, default_value_t = 200)]
    message_sessions: usize,
    /// Exchanges per history session (each stores a user message and the agent's reply).
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long)]
    out_dir: PathBuf,
    /// An API key to send as `X-API-KEY` (for a server with keys).
    #[arg(long)]
    api_key: Option<String>,
}

struct Seeder {
    http: reqwest::Client,
    base: String,
}

impl Seeder {
    /// A new session's id, and its session token when the server issues one (a server with keys).
    async fn create_session(&self, n: usize) -> anyhow::Result<(String, Option<String>)> {
        let session =
            agent_sessions_bench::create_session(&self.http, &self.base, &format!("user{n}"))
                .await?;
        let id = session["sessionId"]
            .as_str()
            .map(str::to_string)
            .context("createSession: no sessionId in the answer")?;
        Ok((id, session["sessionToken"].as_str().map(str::to_string)))
    }

    async fn send_message(&self, session: &str, n: usize) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!(
                "{}/api/messaging/sessions/{session}/messages",
                self.base
            ))
            .json(&json!({"content": format!("Hello number {n}, how are you today?"), "transport": "http"}))
            .send()
            .await
            .context("sendMessage")?;
        let status = response.status();
        if status.as_u16() != 201 {
            bail!("sendMessage answered {status}: {}", response.text().await?);
        }
        Ok(())
    }

    async fn issue_token(&self, session: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!(
                "{}/api/messaging/sessions/{session}/token",
                self.base
            ))
            .send()
            .await
            .context("issueSessionToken")?;
        let text = agent_sessions_bench::body_if(response, 200, "issueSessionToken").await?;
        let token: Value = serde_json::from_str(&text)?;
        token["sessionToken"]
            .as_str()
            .map(str::to_string)
            .context("issueSessionToken: no sessionToken in the answer")
    }

    async fn get_session(&self, session: &str) -> anyhow::Result<Vec<u8>> {
        let response = self
            .http
            .get(format!("{}/api/messaging/sessions/{session}", self.base))
            .send()
            .await
            .context("getSession")?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.as_u16() != 200 {
            bail!(
                "getSession answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body.to_vec())
    }
}

async fn create_many(
    seeder: &Arc<Seeder>,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    stream::iter(0..count)
        .map(|n| {
            let seeder = seeder.clone();
            async move { seeder.create_session(n).await }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

fn write_ids(path: PathBuf, ids: &[String]) -> anyhow::Result<()> {
    let mut text = ids.join("\n");
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let concurrency = args.concurrency.max(1);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert("x-api-key", key.parse().context("--api-key")?);
    }
    let seeder = Arc::new(Seeder {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .default_headers(headers)
            .build()?,
        base: args.url.trim_end_matches('/').to_string(),
    });
    std::fs::create_dir_all(&args.out_dir)?;

    let started = std::time::Instant::now();
    let created = create_many(&seeder, args.sessions.max(1), concurrency).await?;
    let ids: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();
    write_ids(args.out_dir.join("session-ids.txt"), &ids)?;
    let with_tokens: Vec<String> = created
        .iter()
        .filter_map(|(id, token)| Some(format!("{id} {}", token.as_ref()?)))
        .collect();
    if !with_tokens.is_empty() {
        write_ids(args.out_dir.join("session-tokens.txt"), &with_tokens)?;
    }
    let body = seeder.get_session(&ids[0]).await?;
    std::fs::write(args.out_dir.join("session.json"), &body)?;
    let token = seeder.issue_token(&ids[0]).await?;
    std::fs::write(args.out_dir.join("session-token.txt"), token)?;

    let history: Vec<String> = create_many(&seeder, args.message_sessions.max(1), concurrency)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // One session's messages go in order (its replies are answered one at a time anyway); sessions in parallel.
    stream::iter(history.iter())
        .map(|id| {
            let seeder = seeder.clone();
            async move {
                for n in 0..args.messages {
                    seeder.send_message(id, n).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    write_ids(args.out_dir.join("message-session-ids.txt"), &history)?;
    println!(
        "seeded {} sessions and {} sessions with {} messages each in {:.1} s",
        ids.len(),
        history.len(),
        2 * args.messages,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
