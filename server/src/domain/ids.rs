//! The ids the server gives what it stores (sessions, their channels, messages, agents): UUIDs of version 7,
//! whose first 48 bits are the creation time in milliseconds (RFC 9562) and the other 74 random.
//!
//! Why not version 4: each id is the key of a unique index, and random keys put every new row's index entry on
//! a random page of it. A batch of writes then rewrote as many pages as it had rows, in the WAL and again at the
//! checkpoint (see BENCHMARKS.md); keys in creation order share the index's last pages. The time an id shows is
//! no secret: the API returns `createdAt` beside it, and the random bits keep ids unguessable.

use chrono::{DateTime, Utc};
use uuid::{NoContext, Timestamp, Uuid};

/// A new id for something created at `now` (the service's clock).
pub fn new_id(now: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(now.timestamp()).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        secs,
        now.timestamp_subsec_nanos(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_ordered_by_their_time_and_unique() {
        let t = DateTime::from_timestamp_millis(1_735_689_600_123).unwrap();
        let a = new_id(t);
        let b = new_id(t + chrono::Duration::milliseconds(1));
        assert_eq!(a.get_version_num(), 7);
        assert!(a < b, "later ids sort after earlier ones");
        let (ms, _) = a.get_timestamp().unwrap().to_unix();
        assert_eq!(ms, 1_735_689_600);
        assert_ne!(new_id(t), new_id(t), "same millisecond, still distinct");
        // A time before 1970 (a test clock, say) still gives an id.
        assert_eq!(
            new_id(DateTime::UNIX_EPOCH - chrono::Duration::days(1)).get_version_num(),
            7
        );
    }
}
