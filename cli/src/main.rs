//! `agent-sessions`, the terminal client of the agent-sessions server: its command line (clap), the client it
//! builds from the global flags, and the dispatch to the commands; errors end the process with their exit code.

mod chat;
mod commands;
mod errors;
mod output;
mod tail;

use clap::{Args, Parser, Subcommand, ValueEnum};

use errors::CliError;

/// A terminal client for the agent-sessions server: chat with an agent, manage sessions and agents, follow a
/// session's events.
#[derive(Debug, Parser)]
#[command(name = "agent-sessions", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and how to authenticate, and how to print.
#[derive(Debug, Args)]
pub struct Global {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "AGENT_SESSIONS_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub url: String,
    /// An API key (sent as X-API-KEY): needed for everything but the health check on a server with keys.
    #[arg(
        long,
        global = true,
        env = "AGENT_SESSIONS_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// A session token (sent as Authorization: Bearer): admits to that one session only (get, delete, events).
    #[arg(
        long,
        global = true,
        env = "AGENT_SESSIONS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Machine-readable JSON on stdout instead of tables (events: one JSON object per line).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Chat with an agent: each line you type is sent, the reply streams back; Ctrl-D ends (and deletes) the
    /// session. Commands: /status, /renew, /help, /quit.
    Chat(ChatArgs),
    /// List, show or delete sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// List, create or delete agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Follow a session's events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The server's health: status, active sessions, uptime (needs no credentials).
    Health,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The agent to talk to (default: the first agent the server lists, its demo echo agent on a new server).
    #[arg(long)]
    pub agent: Option<uuid::Uuid>,
    /// The session's inactivity timeout, in minutes (default: the agent's or the server's).
    #[arg(long)]
    pub timeout_minutes: Option<f64>,
    /// Do not renew the session on activity: it expires `--timeout-minutes` after creation unless you /renew.
    #[arg(long)]
    pub no_auto_renew: bool,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Active sessions, newest first.
    List {
        /// Only the sessions of this agent.
        #[arg(long)]
        agent: Option<uuid::Uuid>,
        /// Only the sessions of this user.
        #[arg(long)]
        user: Option<uuid::Uuid>,
        /// At most this many (1-100).
        #[arg(long)]
        limit: Option<std::num::NonZeroU32>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<u64>,
    },
    /// One session, with its time left.
    Get { id: String },
    /// Delete a session (its messages and events too).
    Delete { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    Echo,
    Webhook,
    Openai,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Every agent.
    List,
    /// A new agent.
    Create(CreateAgentArgs),
    /// Delete an agent (refused while one of its sessions is active).
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct CreateAgentArgs {
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// How it answers: echo (built in), webhook (POSTs each message to --webhook-url), openai (an OpenAI-compatible
    /// API at --base-url with --model).
    #[arg(long, value_enum, default_value = "echo")]
    pub backend: Backend,
    /// The webhook's URL (not `--url`, which is the server's).
    #[arg(long, required_if_eq("backend", "webhook"))]
    pub webhook_url: Option<String>,
    /// The OpenAI-compatible API's base URL (e.g. http://localhost:11434/v1).
    #[arg(long, required_if_eq("backend", "openai"))]
    pub base_url: Option<String>,
    /// The model name.
    #[arg(long, required_if_eq("backend", "openai"))]
    pub model: Option<String>,
    /// The server's environment variable holding the API key (AGENT_SECRET_...).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// A system prompt for the model.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// The inactivity timeout of this agent's sessions, in minutes.
    #[arg(long)]
    pub session_timeout_minutes: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print a session's events as they come, until it expires or is deleted (Ctrl-C stops); reconnects and
    /// resumes by itself when the connection breaks.
    Tail {
        session_id: String,
        /// Also print reply chunks as the agent streams them.
        #[arg(long)]
        chunks: bool,
    },
}

impl Global {
    /// The SDK client: with the API key if given, else the session token, else no credentials.
    pub fn client(&self) -> Result<agent_sessions::Client, CliError> {
        let url = self.url.trim_end_matches('/');
        let client = match (&self.api_key, &self.token) {
            (Some(key), _) => agent_sessions::Client::with_api_key(url, key),
            (None, Some(token)) => agent_sessions::Client::with_session_token(url, token),
            (None, None) => Ok(agent_sessions::Client::new(url)),
        };
        client.map_err(|e| CliError::usage(format!("--api-key / --token: {e}")))
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(run(cli));
    if let Err(e) = outcome {
        eprintln!("agent-sessions: {}", e.message);
        std::process::exit(e.exit_code);
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let global = &cli.global;
    match cli.command {
        Command::Chat(args) => chat::run(global, args).await,
        Command::Sessions(command) => commands::sessions(global, command).await,
        Command::Agents(command) => commands::agents(global, command).await,
        Command::Events(EventsCommand::Tail { session_id, chunks }) => {
            tail::run(global, &session_id, chunks).await
        }
        Command::Health => commands::health(global).await,
    }
}
