//! `events tail SESSION_ID`: a session's events printed as they come (a line each, or a JSON object each with
//! `--json`), over the SDK's resuming stream, so that a broken connection or a server restart loses nothing.

use agent_sessions::streams::{SessionEvent, StreamError};
use futures::StreamExt;

use crate::errors::CliError;
use crate::output::{self, outln};
use crate::Global;

pub async fn run(global: &Global, session_id: &str, chunks: bool) -> Result<(), CliError> {
    let client = global.client()?;
    let what = format!("session {session_id}");
    let events = client.session_events_resuming(session_id, None).await;
    let mut events = events.map_err(|e| CliError::api(global, &what, e))?;
    // On stderr, so that stdout holds only events; it also tells a script that the stream is open.
    eprintln!("Following the events of session {session_id} (Ctrl-C stops)");
    while let Some(frame) = events.next().await {
        match frame {
            Ok(frame) => {
                if matches!(frame.event, SessionEvent::Chunk(_)) && !chunks {
                    continue;
                }
                if global.json {
                    outln!("{}", output::event_json(&frame));
                } else {
                    outln!("{}", output::event_line(&frame));
                }
            }
            // One unreadable frame (a newer server's event, say) is no reason to stop following.
            Err(e @ StreamError::Malformed { .. }) => eprintln!("agent-sessions: skipped: {e}"),
            Err(e) => return Err(CliError::stream(global, &what, e)),
        }
    }
    Ok(())
}
