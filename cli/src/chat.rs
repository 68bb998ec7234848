//! `chat`: an interactive conversation. It creates a session, sends each line read from stdin (a terminal or a
//! pipe) with the `sse` transport and prints the reply as it streams; in the background it heartbeats and
//! watches the session's events for the expiry warning and the end. `/status`, `/renew`, `/help`, `/quit`;
//! end of input (Ctrl-D) or Ctrl-C deletes the session.

use std::io::IsTerminal;
use std::time::Duration;

use agent_sessions::streams::{ExchangeEvent, SessionEvent, StreamError};
use agent_sessions::{types, Client};
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::errors::{exit, CliError};
use crate::output::{self, out, outln};
use crate::{ChatArgs, Global};

const HELP: &str = "Type a message and press Enter to send it. Commands:
  /status  time left before the session expires
  /renew   renew the session now
  /help    this help
  /quit    end the chat (deletes the session; so does Ctrl-D)
A line starting with // is sent with one slash less.";

/// How the session ended while the chat was waiting, as the events stream told.
#[derive(Debug, Clone, PartialEq)]
enum Ended {
    Expired,
    Deleted,
}

pub async fn run(global: &Global, args: ChatArgs) -> Result<(), CliError> {
    let client = global.client()?;
    // From the start, so that a Ctrl-C while the session is being created still deletes it.
    let mut interrupted = interrupts();
    let (agent_id, agent_name) = agent(global, &client, args.agent).await?;
    let session = create_session(global, &client, agent_id, &args).await?;
    let id = session.session_id.to_string();
    let what = format!("session {id}");
    // Opened before the first message, so that no event of this session is missed.
    let events = match client.session_events_resuming(&id, None).await {
        Ok(events) => events,
        Err(e) => {
            // No chat without the session's events: the session just made is not left behind.
            let _ = client.delete_session().session_id(&id).send().await;
            return Err(CliError::api(global, &what, e));
        }
    };
    let terminal = std::io::stdin().is_terminal();
    outln!(
        "Chatting with {agent_name} in session {id} (expires in {}). /help lists commands; Ctrl-D ends.",
        output::duration_ms(session.time_remaining)
    );

    let (ended_tx, mut ended) = watch::channel(None);
    let watcher = tokio::spawn(watch_events(events, ended_tx, terminal));
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        id.clone(),
        heartbeat_interval(&session),
    ));
    let chat = Chat {
        global,
        client: &client,
        id: &id,
        agent_name: &agent_name,
    };
    let outcome = chat.converse(terminal, &mut ended, &mut interrupted).await;
    watcher.abort();
    heartbeat.abort();
    match outcome? {
        Some(Ended::Expired) => Err(CliError::new(
            exit::EXPIRED,
            format!("session {id} has expired; start a new chat"),
        )),
        Some(Ended::Deleted) => Err(CliError::new(
            exit::NOT_FOUND,
            format!("session {id} was deleted"),
        )),
        None => {
            let deleted = client.delete_session().session_id(&id).send().await;
            deleted.map_err(|e| CliError::api(global, &what, e))?;
            outln!("Session {id} ended and deleted.");
            Ok(())
        }
    }
}

/// The agent to talk to: the one asked for, or the first the server lists (its demo echo agent when new).
async fn agent(
    global: &Global,
    client: &Client,
    wanted: Option<uuid::Uuid>,
) -> Result<(uuid::Uuid, String), CliError> {
    if let Some(id) = wanted {
        let agent = client.get_agent().agent_id(id.to_string()).send().await;
        let agent = agent.map_err(|e| CliError::api(global, &format!("agent {id}"), e))?;
        return Ok((agent.id, agent.name.clone()));
    }
    let list = client.list_agents().send().await;
    let list = list.map_err(|e| CliError::api(global, "", e))?;
    let first = list.into_inner().agents.into_iter().next();
    let first = first.ok_or_else(|| {
        CliError::new(
            exit::NOT_FOUND,
            "the server has no agent: create one with `agent-sessions agents create --name NAME`",
        )
    })?;
    Ok((first.id, first.name))
}

async fn create_session(
    global: &Global,
    client: &Client,
    agent_id: uuid::Uuid,
    args: &ChatArgs,
) -> Result<types::Session, CliError> {
    let timeout_config =
        (args.timeout_minutes.is_some() || args.no_auto_renew).then(|| types::TimeoutConfigInput {
            timeout_minutes: args.timeout_minutes,
            auto_renew: args.no_auto_renew.then_some(false),
            ..Default::default()
        });
    let mut metadata = serde_json::Map::new();
    metadata.insert("platform".into(), "cli".into());
    let request = types::CreateSessionRequest {
        agent_id,
        user_id: uuid::Uuid::new_v4(),
        metadata,
        timeout_config,
    };
    let session = client.create_session().body(request).send().await;
    let session = session.map_err(|e| CliError::api(global, &format!("agent {agent_id}"), e))?;
    Ok(session.into_inner())
}

/// A heartbeat well within the session's timeout (a third of it), and at least every 30 s so that the
/// server sees a client that is still there.
fn heartbeat_interval(session: &types::Session) -> Duration {
    let timeout = Duration::from_secs_f64(session.timeout_config.timeout_minutes.max(0.05) * 60.0);
    (timeout / 3).min(Duration::from_secs(30))
}

/// Heartbeats until aborted. Failures are not reported here: an expired or deleted session is told by the
/// events stream, and a server briefly away is not worth interrupting the chat for.
async fn heartbeat(client: Client, id: String, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let _ = client.session_heartbeat().session_id(&id).send().await;
    }
}

/// Prints the expiry warning and the end of the session as the events stream tells them, and signals the end.
async fn watch_events(
    mut events: agent_sessions::streams::BoxedEvents<agent_sessions::streams::SessionEventFrame>,
    ended: watch::Sender<Option<Ended>>,
    terminal: bool,
) {
    while let Some(frame) = events.next().await {
        let end = match frame {
            Ok(frame) => match frame.event {
                SessionEvent::Warning(w) => {
                    outln!(
                        "\n! The session expires in {} ({}): type /renew to keep it.",
                        output::duration_ms(w.time_remaining),
                        output::timestamp(&w.expires_at)
                    );
                    prompt(terminal);
                    None
                }
                SessionEvent::Expired(_) => Some(Ended::Expired),
                SessionEvent::Deleted(_) => Some(Ended::Deleted),
                _ => None,
            },
            // The stream could not reconnect: because the session is gone, or the server stayed away.
            Err(StreamError::Reconnect(e)) => match e.status().map(|s| s.as_u16()) {
                Some(410) => Some(Ended::Expired),
                Some(404) => Some(Ended::Deleted),
                _ => {
                    eprintln!(
                        "\nagent-sessions: lost the session's events ({e}); expiry warnings will not show"
                    );
                    return;
                }
            },
            Err(_) => None,
        };
        if end.is_some() {
            let _ = ended.send(end);
            return;
        }
    }
}

/// The end of the session once the events stream tells it; never, if the stream is gone without telling.
async fn session_end(ended: &mut watch::Receiver<Option<Ended>>) -> Ended {
    loop {
        if ended.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if let Some(end) = ended.borrow().clone() {
            return end;
        }
    }
}

/// A signal each time Ctrl-C is pressed. Listened for from the start, so that a press while a reply streams
/// is not lost (nor kills the process, which would leave the session behind).
fn interrupts() -> watch::Receiver<()> {
    let (tx, rx) = watch::channel(());
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

fn prompt(terminal: bool) {
    // Only for a person: a script piping lines in wants the replies alone.
    if terminal {
        out!("you> ");
    }
}

struct Chat<'a> {
    global: &'a Global,
    client: &'a Client,
    id: &'a str,
    agent_name: &'a str,
}

impl Chat<'_> {
    /// Reads and answers lines until the input ends or `/quit` (None), or the session ends (Some).
    async fn converse(
        &self,
        terminal: bool,
        ended: &mut watch::Receiver<Option<Ended>>,
        interrupted: &mut watch::Receiver<()>,
    ) -> Result<Option<Ended>, CliError> {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            prompt(terminal);
            let line = tokio::select! {
                line = lines.next_line() => line?,
                end = session_end(ended) => return Ok(Some(end)),
                _ = interrupted.changed() => {
                    outln!();
                    return Ok(None);
                }
            };
            let Some(line) = line else {
                // End of input: Ctrl-D on a terminal, the end of a pipe.
                if terminal {
                    outln!();
                }
                return Ok(None);
            };
            let line = line.trim();
            let handled = async {
                match line {
                    "" => {}
                    "/quit" | "/exit" => return Ok(false),
                    "/help" => outln!("{HELP}"),
                    "/status" => self.status().await?,
                    "/renew" => self.renew().await?,
                    _ if line.starts_with("//") => self.send(&line[1..]).await?,
                    _ if line.starts_with('/') => {
                        outln!("Unknown command {line}; /help lists commands.")
                    }
                    _ => self.send(line).await?,
                }
                Ok::<_, CliError>(true)
            };
            // Ctrl-C while a reply streams ends the chat as between messages (the stream is dropped).
            let go_on = tokio::select! {
                go_on = handled => go_on?,
                _ = interrupted.changed() => {
                    outln!();
                    false
                }
            };
            if !go_on {
                return Ok(None);
            }
        }
    }

    async fn status(&self) -> Result<(), CliError> {
        let session = match self.client.get_session().session_id(self.id).send().await {
            Ok(session) => session,
            Err(e) => return self.report(e),
        };
        outln!(
            "Time left: {} (expires {}); renewals: {}.",
            output::time_left(&session),
            output::timestamp(&session.expires_at),
            session.renewal_count
        );
        Ok(())
    }

    async fn renew(&self) -> Result<(), CliError> {
        let session = match self.client.renew_session().session_id(self.id).send().await {
            Ok(session) => session,
            Err(e) => return self.report(e),
        };
        outln!(
            "Renewed: time left {} (expires {}).",
            output::time_left(&session),
            output::timestamp(&session.expires_at)
        );
        Ok(())
    }

    /// Sends one message and prints the reply's chunks as they arrive. A failed reply is reported and the chat
    /// goes on; a session that is gone ends it.
    async fn send(&self, content: &str) -> Result<(), CliError> {
        let request = types::SendMessageRequest {
            content: content.to_string(),
            attachments: Vec::new(),
            metadata: Default::default(),
            transport: None,
            mode: None,
            client_message_id: None,
        };
        let exchange = self.client.send_message_stream(self.id, request).await;
        let mut exchange = match exchange {
            Ok(exchange) => exchange,
            Err(e) => return self.report(e),
        };
        out!("{}> ", self.agent_name);
        let mut streamed = false;
        while let Some(event) = exchange.next().await {
            match event {
                Ok(ExchangeEvent::UserMessage(_)) => {}
                Ok(ExchangeEvent::Chunk(chunk)) => {
                    streamed = true;
                    out!("{}", chunk.chunk);
                }
                Ok(ExchangeEvent::Done(done)) => {
                    if !streamed {
                        out!("{}", done.agent_response.text);
                    }
                    outln!();
                    return Ok(());
                }
                Ok(ExchangeEvent::Error(e)) => {
                    outln!();
                    eprintln!("agent-sessions: the agent failed: {} ({})", e.error, e.code);
                    return Ok(());
                }
                Err(e) => {
                    outln!();
                    eprintln!("agent-sessions: the reply broke off: {e}");
                    return Ok(());
                }
            }
        }
        outln!();
        eprintln!("agent-sessions: the reply ended without a result");
        Ok(())
    }

    /// A failed call: the session being gone ends the chat (Err); anything else (a refused renewal, a rate
    /// limit, the server briefly away) is told and the chat goes on.
    fn report(&self, error: agent_sessions::Error<types::ErrorResponse>) -> Result<(), CliError> {
        let error = CliError::api(self.global, &format!("session {}", self.id), error);
        if matches!(error.exit_code, exit::NOT_FOUND | exit::EXPIRED) {
            return Err(error);
        }
        eprintln!("agent-sessions: {}", error.message);
        Ok(())
    }
}
