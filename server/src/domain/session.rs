//! The session state machine: creation, expiry, renewal, heartbeat and timeout changes as pure functions of
//! the session and `now`. Nothing here reads a clock or touches storage.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::timeout::{add_saturating, minutes_duration, minutes_to_ms, TimeoutConfig};

/// A stored session. `expires_at` is derived from the other fields, but kept so that the store can index it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub agent_id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
    /// The last successful renewal (or creation). With `autoRenew` off the timeout counts from here, so that an
    /// explicit `POST /renew` extends the session and a later PATCH does not undo that.
    pub last_renewal: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Shared, not copied, by every copy of the session (the row cache's, each request's, each event's): it is
    /// set once at creation and never changes, and copying a map of strings per lookup was a share of each read.
    pub metadata: Arc<Map<String, Value>>,
    pub timeout: TimeoutConfig,
    pub renewal_count: i64,
    /// Which expiry announcement has been made, so that each is made once.
    pub notice: Notice,
    /// Row version for optimistic concurrency: every update is conditional on the version it read.
    pub version: i64,
}

/// The expiry announcements a session has received (events `warning` and `expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Notice {
    None = 0,
    Warned = 1,
    Expired = 2,
}

impl Notice {
    pub fn from_i64(n: i64) -> Self {
        match n {
            1 => Notice::Warned,
            2 => Notice::Expired,
            _ => Notice::None,
        }
    }
}

/// Where a session stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Active,
    /// Expired, but still inside the retention period: answers 410.
    Expired,
    /// Past the retention period: as good as purged, answers 404.
    Gone,
}

/// Why an explicit renewal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewRefused {
    MaxDurationReached,
}

impl Session {
    pub fn new(
        agent_id: Uuid,
        user_id: Uuid,
        metadata: Map<String, Value>,
        timeout: TimeoutConfig,
        now: DateTime<Utc>,
    ) -> Self {
        let mut s = Session {
            id: super::ids::new_id(now),
            channel_id: super::ids::new_id(now),
            agent_id,
            user_id,
            created_at: now,
            last_activity: now,
            last_renewal: now,
            expires_at: now,
            metadata: Arc::new(metadata),
            timeout,
            renewal_count: 0,
            notice: Notice::None,
            version: 0,
        };
        s.expires_at = s.compute_expires_at();
        s
    }

    /// `min(base + timeout, createdAt + maxDuration)`; base is the last activity with autoRenew on, the last
    /// explicit renewal (initially creation) with it off.
    pub fn compute_expires_at(&self) -> DateTime<Utc> {
        let base = if self.timeout.auto_renew {
            self.last_activity
        } else {
            self.last_renewal
        };
        let by_timeout = add_saturating(base, minutes_duration(self.timeout.timeout_minutes));
        by_timeout.min(self.hard_cap())
    }

    /// The instant past which nothing can keep the session alive.
    pub fn hard_cap(&self) -> DateTime<Utc> {
        add_saturating(
            self.created_at,
            minutes_duration(self.timeout.max_duration_minutes),
        )
    }

    /// When the session enters its warning threshold.
    pub fn warn_at(&self) -> DateTime<Utc> {
        add_saturating(
            self.expires_at,
            -minutes_duration(self.timeout.warning_threshold_minutes),
        )
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }

    pub fn liveness(&self, now: DateTime<Utc>, retention: Duration) -> Liveness {
        if !self.is_expired(now) {
            Liveness::Active
        } else if now < add_saturating(self.expires_at, retention) {
            Liveness::Expired
        } else {
            Liveness::Gone
        }
    }

    /// `max(0, expiresAt - now)` in milliseconds.
    pub fn time_remaining_ms(&self, now: DateTime<Utc>) -> i64 {
        remaining_ms(self.expires_at, now)
    }

    /// True while the remaining time is positive and within the warning threshold.
    pub fn is_near_expiration(&self, now: DateTime<Utc>) -> bool {
        near_expiration(self.expires_at, &self.timeout, now)
    }

    /// An explicit renewal (`POST /renew`): works whatever `autoRenew` says, but not past the max duration.
    pub fn renew(&mut self, now: DateTime<Utc>) -> Result<(), RenewRefused> {
        if now >= self.hard_cap() {
            return Err(RenewRefused::MaxDurationReached);
        }
        self.last_activity = now;
        self.last_renewal = now;
        self.renewal_count += 1;
        self.expires_at = self.compute_expires_at();
        self.rearm_warning(now);
        Ok(())
    }

    /// Activity (a heartbeat, a message): renews when `autoRenew` is on, otherwise only records the activity.
    /// Returns whether the session was renewed.
    pub fn record_activity(&mut self, now: DateTime<Utc>) -> bool {
        if self.timeout.auto_renew && self.renew(now).is_ok() {
            return true;
        }
        self.last_activity = now;
        self.expires_at = self.compute_expires_at();
        false
    }

    /// Replaces the timeout config and recomputes the expiry from it.
    pub fn set_timeout(&mut self, timeout: TimeoutConfig, now: DateTime<Utc>) {
        self.timeout = timeout;
        self.expires_at = self.compute_expires_at();
        self.rearm_warning(now);
    }

    /// A session moved back out of its warning window will be warned again when it re-enters it.
    fn rearm_warning(&mut self, now: DateTime<Utc>) {
        if self.notice == Notice::Warned && !self.is_near_expiration(now) && !self.is_expired(now) {
            self.notice = Notice::None;
        }
    }

    /// The announcement due at `now`, if any, recorded as made: `Expired` once expired, else `Warned` once
    /// inside the warning threshold.
    pub fn take_due_notice(&mut self, now: DateTime<Utc>) -> Option<Notice> {
        if self.notice < Notice::Expired && self.is_expired(now) {
            self.notice = Notice::Expired;
            return Some(Notice::Expired);
        }
        if self.notice == Notice::None && self.is_near_expiration(now) {
            self.notice = Notice::Warned;
            return Some(Notice::Warned);
        }
        None
    }
}

/// Milliseconds from `now` until `expires_at`, never negative.
pub fn remaining_ms(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (expires_at - now).num_milliseconds().max(0)
}

/// True while the time left before `expires_at` is positive and within the warning threshold.
pub fn near_expiration(
    expires_at: DateTime<Utc>,
    timeout: &TimeoutConfig,
    now: DateTime<Utc>,
) -> bool {
    let remaining = remaining_ms(expires_at, now);
    remaining > 0 && remaining <= minutes_to_ms(timeout.warning_threshold_minutes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::timeout::{TimeoutConfigPatch, TimeoutPolicy};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_735_689_600, 0).unwrap()
    }

    fn session(patch: TimeoutConfigPatch) -> Session {
        let cfg = TimeoutPolicy::default().resolve(&patch, &TimeoutConfigPatch::default());
        Session::new(Uuid::nil(), Uuid::nil(), Map::new(), cfg, t0())
    }

    #[test]
    fn activity_renews_with_auto_renew_on() {
        let mut s = session(TimeoutConfigPatch::default());
        assert_eq!(s.expires_at, t0() + Duration::minutes(30));
        let later = t0() + Duration::minutes(20);
        assert!(s.record_activity(later));
        assert_eq!(s.renewal_count, 1);
        assert_eq!(s.expires_at, later + Duration::minutes(30));
    }

    #[test]
    fn activity_only_touches_with_auto_renew_off() {
        let mut s = session(TimeoutConfigPatch {
            auto_renew: Some(false),
            ..Default::default()
        });
        let later = t0() + Duration::minutes(20);
        assert!(!s.record_activity(later));
        assert_eq!(s.renewal_count, 0);
        assert_eq!(s.last_activity, later);
        assert_eq!(s.expires_at, t0() + Duration::minutes(30));
        // An explicit renewal still works, and survives a timeout change.
        s.renew(later).unwrap();
        assert_eq!(s.expires_at, later + Duration::minutes(30));
        s.set_timeout(s.timeout, later);
        assert_eq!(s.expires_at, later + Duration::minutes(30));
    }

    #[test]
    fn expiry_is_capped_by_max_duration() {
        let mut s = session(TimeoutConfigPatch {
            timeout_minutes: Some(60.0),
            max_duration_minutes: Some(90.0),
            ..Default::default()
        });
        let later = t0() + Duration::minutes(50);
        s.record_activity(later);
        assert_eq!(s.expires_at, t0() + Duration::minutes(90));
        assert_eq!(
            s.renew(t0() + Duration::minutes(90)),
            Err(RenewRefused::MaxDurationReached)
        );
    }

    #[test]
    fn notices_are_announced_once_and_rearmed_by_renewal() {
        let mut s = session(TimeoutConfigPatch::default());
        assert_eq!(s.take_due_notice(t0()), None);
        let near = t0() + Duration::minutes(26);
        assert_eq!(s.take_due_notice(near), Some(Notice::Warned));
        assert_eq!(s.take_due_notice(near), None, "once");
        s.record_activity(near);
        assert_eq!(s.notice, Notice::None, "renewed out of the window");
        let expired = near + Duration::minutes(30);
        assert_eq!(s.take_due_notice(expired), Some(Notice::Expired));
        assert_eq!(s.take_due_notice(expired), None);
    }

    #[test]
    fn liveness_and_near_expiration() {
        let s = session(TimeoutConfigPatch::default());
        let retention = Duration::hours(24);
        assert_eq!(s.liveness(t0(), retention), Liveness::Active);
        assert!(!s.is_near_expiration(t0() + Duration::minutes(24)));
        assert!(s.is_near_expiration(t0() + Duration::minutes(25)));
        assert!(s.is_near_expiration(t0() + Duration::milliseconds(30 * 60_000 - 1)));
        let at_expiry = t0() + Duration::minutes(30);
        assert!(!s.is_near_expiration(at_expiry));
        assert_eq!(s.time_remaining_ms(at_expiry), 0);
        assert_eq!(s.liveness(at_expiry, retention), Liveness::Expired);
        assert_eq!(s.liveness(at_expiry + retention, retention), Liveness::Gone);
    }
}
