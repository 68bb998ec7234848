//! The baseline of the benchmark: a minimal poem server that answers every GET and POST, on any path, with one
//! static JSON body (a real Session response of the server under test, or an embedded one of the same shape).
//! Its requests/s are the HTTP stack's ceiling on this machine; `bench/run` reports the server as a ratio of it.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Parser;
use poem::http::{Method, StatusCode};
use poem::{Endpoint, Request, Response};

/// A representative Session response (about 600 bytes), used when no `--body-file` is given.
const EMBEDDED_SESSION: &str = r#"{"sessionId":"0b6cf2a4-6f0e-4a35-9d0e-2f4f6b1f2f44","channelId":"5d0a3a8e-2c8b-4c36-9a51-7f3b8f0d9d21","agentId":"3c90c3cc-0d44-4b50-8888-8dd25736052a","userId":"9f1b5a8c-7e2d-4f6a-b3c1-2d4e6f8a0b1c","createdAt":"2025-01-01T00:00:00.000Z","lastActivity":"2025-01-01T00:00:00.000Z","expiresAt":"2025-01-02T00:00:00.000Z","metadata":{"platform":"web","username":"ada"},"timeoutConfig":{"timeoutMinutes":1440,"autoRenew":true,"maxDurationMinutes":1440,"warningThresholdMinutes":5},"renewalCount":0,"timeRemaining":86400000,"isNearExpiration":false}"#;

#[derive(Parser, Debug)]
#[command(about = "Static-JSON poem server: the baseline of bench/run")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the address is printed in the "listening on" line.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The JSON body to answer with (default: an embedded Session of about 600 bytes).
    #[arg(long)]
    body_file: Option<PathBuf>,
}

/// Answers every request with `body`, after reading the request's body (as the real server reads its JSON
/// bodies). GET and POST are 200; other methods 405, with the same body.
struct StaticJson {
    body: Bytes,
}

impl Endpoint for StaticJson {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let status = if req.method() == Method::GET || req.method() == Method::POST {
            StatusCode::OK
        } else {
            StatusCode::METHOD_NOT_ALLOWED
        };
        req.into_body().into_bytes().await?;
        Ok(Response::builder()
            .status(status)
            .content_type("application/json")
            .body(self.body.clone()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payload =
        match &args.body_file {
            Some(path) => Bytes::from(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("reading the baseline body {}: {e}", path.display())
            })?),
            None => Bytes::from_static(EMBEDDED_SESSION.as_bytes()),
        };
    serde_json::from_slice::<serde_json::Value>(&payload)
        .map_err(|e| anyhow::anyhow!("the baseline body is not JSON: {e}"))?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!(
        "baseline listening on http://{addr} (static JSON body of {} bytes)",
        payload.len()
    );
    let app = StaticJson { body: payload };
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown(), None)
        .await?;
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
