//! The open-file limit and what fits under it. Every client connection, event stream and agent call holds a file
//! descriptor, and the usual soft limit (1 024) is far below what the system lets a process have (the hard
//! limit): at start the soft limit is raised to the hard one, and the caps on connections and event streams are
//! fitted under the result, so that the process never runs out of descriptors (then it could accept nothing,
//! and every request would wait).

/// The open-file limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub was: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (where the system allows it; a no-op elsewhere).
pub fn raise() -> std::io::Result<OpenFileLimit> {
    let (was, hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(hard)?;
    Ok(OpenFileLimit { was, now, hard })
}

/// The share of descriptors client connections may take; the rest is for the store (SQLite's files, a PostgreSQL
/// pool), connections to agent backends, the listener and logs.
const CONNECTION_SHARE: (u64, u64) = (3, 4);
/// The automatic connection cap never exceeds this, however high the limit: each connection costs memory too.
pub const MAX_AUTO_CONNECTIONS: usize = 10_000;
/// Event streams may take this share of the connection cap, so that ordinary requests always find room.
const STREAM_SHARE: (usize, usize) = (3, 4);

/// The caps on connections and event streams, fitted under an open-file limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub max_connections: usize,
    pub max_streams: usize,
    /// A sentence for each setting that had to be lowered, to log.
    pub lowered: Vec<String>,
}

/// Fits `max_connections` (0: automatic) and `max_streams` under `open_files` (None: unknown, no constraint).
pub fn fit(max_connections: usize, max_streams: usize, open_files: Option<u64>) -> Fitted {
    let budget = open_files.map(|n| {
        usize::try_from(n.saturating_mul(CONNECTION_SHARE.0) / CONNECTION_SHARE.1)
            .unwrap_or(usize::MAX)
            .max(1)
    });
    let mut lowered = Vec::new();
    let connections = match (max_connections, budget) {
        (0, Some(budget)) => budget.min(MAX_AUTO_CONNECTIONS),
        (0, None) => crate::serve::DEFAULT_MAX_CONNECTIONS,
        (wanted, Some(budget)) if wanted > budget => {
            lowered.push(format!(
                "MAX_CONNECTIONS {wanted} lowered to {budget}: the open-file limit is {}",
                open_files.unwrap_or_default()
            ));
            budget
        }
        (wanted, _) => wanted,
    };
    let stream_room = (connections * STREAM_SHARE.0 / STREAM_SHARE.1).max(1);
    let streams = if max_streams > stream_room {
        lowered.push(format!(
            "MAX_STREAMS {max_streams} lowered to {stream_room}, three quarters of the {connections} connections, so \
             that open event streams leave room for other requests"
        ));
        stream_room
    } else {
        max_streams
    };
    Fitted {
        max_connections: connections,
        max_streams: streams,
        lowered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_the_usual_limit_of_1024() {
        let fitted = fit(0, crate::api::stream_slots::DEFAULT_TOTAL, Some(1024));
        assert_eq!((fitted.max_connections, fitted.max_streams), (768, 512));
        assert!(fitted.lowered.is_empty(), "{:?}", fitted.lowered);
    }

    #[test]
    fn a_high_limit_is_capped_and_an_unknown_one_takes_the_default() {
        assert_eq!(
            fit(0, 512, Some(1 << 20)).max_connections,
            MAX_AUTO_CONNECTIONS
        );
        assert_eq!(
            fit(0, 512, None).max_connections,
            crate::serve::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(fit(50_000, 512, None).max_connections, 50_000);
    }

    #[test]
    fn settings_beyond_the_limit_are_lowered_and_say_so() {
        let fitted = fit(5000, 4000, Some(1024));
        assert_eq!((fitted.max_connections, fitted.max_streams), (768, 576));
        assert_eq!(fitted.lowered.len(), 2, "{:?}", fitted.lowered);
        assert!(fitted.lowered[0].contains("open-file limit is 1024"));
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let limit = raise().expect("getrlimit works here");
        assert!(limit.now >= limit.was);
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!((soft, hard), (limit.now, limit.hard));
        assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    }
}
