//! How results are printed: tables and short lines for people, JSON for scripts (`--json`), and the one-line
//! renderings of session events and durations that chat and `events tail` share.

use agent_sessions::streams::{SessionEvent, SessionEventFrame};
use agent_sessions::types;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// `println!` on stdout, except that a reader that went away (`| head`) ends the process quietly, as other
/// Unix tools do, instead of a panic.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` as `outln!` does it, flushed at once (reply chunks, the prompt).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

pub fn write(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(text).and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Pretty JSON on stdout (one document per command).
pub fn json<T: Serialize>(value: &T) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("API types serialize")
    );
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

pub fn sessions(list: &types::SessionList) {
    if list.sessions.is_empty() {
        outln!(
            "No active sessions ({} stored, {} expired).",
            list.stats.total_sessions,
            list.stats.expired_sessions
        );
        return;
    }
    let mut t = table(&[
        "session",
        "agent",
        "user",
        "created",
        "time left",
        "renewals",
    ]);
    for s in &list.sessions {
        t.add_row(vec![
            s.session_id.to_string(),
            s.agent_id.to_string(),
            s.user_id.to_string(),
            timestamp(&s.created_at),
            time_left(s),
            s.renewal_count.to_string(),
        ]);
    }
    outln!("{t}");
    outln!(
        "{} of {} active sessions ({} stored, {} expired)",
        list.sessions.len(),
        list.total,
        list.stats.total_sessions,
        list.stats.expired_sessions
    );
}

pub fn session(s: &types::Session) {
    let mut t = table(&["field", "value"]);
    let config = &s.timeout_config;
    let rows = [
        ("session", s.session_id.to_string()),
        ("agent", s.agent_id.to_string()),
        ("user", s.user_id.to_string()),
        ("channel", s.channel_id.to_string()),
        ("created", timestamp(&s.created_at)),
        ("last activity", timestamp(&s.last_activity)),
        ("expires", timestamp(&s.expires_at)),
        ("time left", time_left(s)),
        ("renewals", s.renewal_count.to_string()),
        (
            "timeout",
            format!(
                "{} min, auto-renew {}, max {} min, warning at {} min",
                config.timeout_minutes,
                if config.auto_renew { "on" } else { "off" },
                config.max_duration_minutes,
                config.warning_threshold_minutes
            ),
        ),
        (
            "metadata",
            serde_json::Value::Object(s.metadata.clone()).to_string(),
        ),
    ];
    for (field, value) in rows {
        t.add_row(vec![field.to_string(), value]);
    }
    outln!("{t}");
}

pub fn agents(list: &types::AgentList) {
    if list.agents.is_empty() {
        outln!("No agents: create one with `agent-sessions agents create --name NAME`.");
        return;
    }
    let mut t = table(&["agent", "name", "backend", "created"]);
    for a in &list.agents {
        t.add_row(vec![
            a.id.to_string(),
            a.name.clone(),
            backend(&a.backend),
            timestamp(&a.created_at),
        ]);
    }
    outln!("{t}");
    outln!(
        "{} agent{}",
        list.total,
        if list.total == 1 { "" } else { "s" }
    );
}

pub fn agent(a: &types::Agent) {
    outln!(
        "Created agent {} ({}, {})",
        a.id,
        a.name,
        backend(&a.backend)
    );
}

fn backend(b: &types::AgentBackend) -> String {
    match (&b.url, &b.base_url, &b.model) {
        (Some(url), _, _) => format!("{} {url}", b.type_),
        (None, Some(base), Some(model)) => format!("{} {model} at {base}", b.type_),
        _ => b.type_.to_string(),
    }
}

pub fn health(h: &types::SessionsHealth) {
    outln!(
        "{}: {} active sessions, {} expiring soon, up {}",
        h.status,
        h.active_sessions,
        h.expiring_soon,
        duration_ms((h.uptime * 1000.0) as i64)
    );
}

/// "29m 58s (expires 09:35:00 UTC)", or "expired".
pub fn time_left(s: &types::Session) -> String {
    if s.time_remaining <= 0 {
        return "expired".into();
    }
    let near = if s.is_near_expiration {
        ", expiring soon"
    } else {
        ""
    };
    format!("{}{near}", duration_ms(s.time_remaining))
}

/// A duration in milliseconds as people read it: "1h 02m", "29m 58s", "12s".
pub fn duration_ms(ms: i64) -> String {
    let seconds = ms.max(0) / 1000;
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m"),
    }
}

pub fn timestamp(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A session event as one line for people: `#12 message agent: Echo: hi`. Chunks are pieces of a reply, whose
/// stored message follows: shown only when asked for.
pub fn event_line(frame: &SessionEventFrame) -> String {
    let id = frame.id.map(|id| format!("#{id} ")).unwrap_or_default();
    let body = match &frame.event {
        SessionEvent::Message(m) => {
            let who = if m.is_agent { "agent" } else { "user" };
            format!("message {who}: {}", m.content)
        }
        SessionEvent::Chunk(c) => format!("chunk {}: {:?}", c.index, c.chunk),
        SessionEvent::Session(change) => format!(
            "session {}: expires {} (in {})",
            change.reason,
            timestamp(&change.session.expires_at),
            duration_ms(change.session.time_remaining)
        ),
        SessionEvent::Warning(w) => format!(
            "warning: the session expires in {} ({})",
            duration_ms(w.time_remaining),
            timestamp(&w.expires_at)
        ),
        SessionEvent::Expired(e) => format!("expired at {}", timestamp(&e.expired_at)),
        SessionEvent::Deleted(_) => "deleted".to_string(),
        SessionEvent::ReplayGap(g) => format!(
            "replay-gap: events after {} are gone (oldest kept: {}); refetch the history",
            g.requested,
            g.oldest_available.as_deref().unwrap_or("none")
        ),
        SessionEvent::Reconnect(r) => format!("reconnect: {}", r.reason),
    };
    format!("{id}{body}")
}

/// A session event as one JSON object, as the WebSocket feed sends it: `{"id", "event", "data"}`.
pub fn event_json(frame: &SessionEventFrame) -> String {
    let (name, data) = match &frame.event {
        SessionEvent::Message(m) => ("message", serde_json::to_value(m)),
        SessionEvent::Chunk(c) => ("chunk", serde_json::to_value(c)),
        SessionEvent::Session(s) => ("session", serde_json::to_value(s)),
        SessionEvent::Warning(w) => ("warning", serde_json::to_value(w)),
        SessionEvent::Expired(e) => ("expired", serde_json::to_value(e)),
        SessionEvent::Deleted(d) => ("deleted", serde_json::to_value(d)),
        SessionEvent::ReplayGap(g) => ("replay-gap", serde_json::to_value(g)),
        SessionEvent::Reconnect(r) => ("reconnect", serde_json::to_value(r)),
    };
    serde_json::json!({
        "id": frame.id.map(|id| id.to_string()),
        "event": name,
        "data": data.expect("API types serialize"),
    })
    .to_string()
}
