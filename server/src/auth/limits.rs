//! Per-principal rate limits: governor's GCRA buckets, one family per kind of caller (API key, session token,
//! anonymous client IP), driven by the injected clock so that tests move time instead of sleeping.
//!
//! A quota of N per minute is a bucket of N requests that refills continuously at N per minute: a burst of N,
//! then a steady N per minute. 0 turns a family off.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use super::keys::KeyId;
use crate::clock::Clock;

/// Requests per minute for each kind of caller; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Per API key.
    pub key_per_minute: u32,
    /// Per session token.
    pub session_per_minute: u32,
    /// Per client IP, for callers without valid credentials (of the public operations: see `api/access.rs`).
    pub anonymous_per_minute: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            key_per_minute: 0,
            session_per_minute: 120,
            anonymous_per_minute: 100,
        }
    }
}

/// Whose bucket a request is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Key(KeyId),
    Session(Uuid),
    Anonymous(IpAddr),
}

impl LimitKey {
    /// The bucket of a client address: IPv6 clients by their /64, since one host usually holds a whole /64 and
    /// could otherwise take a fresh bucket per request; IPv4-mapped IPv6 as the IPv4 address.
    pub fn client(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    IpAddr::V6(segments.into())
                }
            },
            v4 => v4,
        }
    }
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// This kind of caller is not limited.
    Unlimited,
    /// Let through; `remaining` more may pass right now, and the bucket is full again in `reset_secs`.
    Allowed {
        limit: u32,
        remaining: u32,
        reset_secs: u64,
    },
    /// Refused; the next request may pass in `retry_after_secs`.
    Limited { limit: u32, retry_after_secs: u64 },
}

/// governor's view of the injected clock, made monotonic: only forward steps of the clock count, so that a clock
/// set back (NTP on a real one, a test on a `MockClock`) neither fills nor freezes anyone's bucket.
#[derive(Clone)]
struct LimiterClock {
    clock: Arc<dyn Clock>,
    /// The last reading of `clock`, and the monotonic time reached then (nanoseconds since the limiter began).
    last: Arc<Mutex<(DateTime<Utc>, u64)>>,
}

impl LimiterClock {
    fn new(clock: Arc<dyn Clock>) -> Self {
        let start = clock.now();
        Self {
            clock,
            last: Arc::new(Mutex::new((start, 0))),
        }
    }
}

impl governor::clock::Clock for LimiterClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let wall = self.clock.now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let step = (wall - last.0).num_nanoseconds().unwrap_or(i64::MAX).max(0);
        *last = (wall, last.1.saturating_add(step as u64));
        Nanos::from(last.1)
    }
}

type Limiter<K> = RateLimiter<K, DashMapStateStore<K>, LimiterClock, StateInformationMiddleware>;

/// One family of buckets with its quota.
struct Family<K: std::hash::Hash + Eq + Clone> {
    limiter: Limiter<K>,
    per_minute: u32,
    replenish: Duration,
}

impl<K: std::hash::Hash + Eq + Clone> Family<K> {
    fn new(per_minute: u32, clock: &LimiterClock) -> Option<Self> {
        let burst = NonZeroU32::new(per_minute)?;
        let quota = Quota::per_minute(burst);
        Some(Self {
            limiter: RateLimiter::<K, _, _, NoOpMiddleware<Nanos>>::new(
                quota,
                DashMapStateStore::default(),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            per_minute,
            replenish: quota.replenish_interval(),
        })
    }

    fn check(&self, key: &K, clock: &LimiterClock) -> RateDecision {
        let limit = self.per_minute;
        match self.limiter.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let missing = limit.saturating_sub(remaining);
                RateDecision::Allowed {
                    limit,
                    remaining,
                    reset_secs: (self.replenish * missing).as_secs_f64().ceil() as u64,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(clock));
                RateDecision::Limited {
                    limit,
                    retry_after_secs: (wait.as_secs_f64().ceil() as u64).max(1),
                }
            }
        }
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

pub struct RateLimits {
    clock: LimiterClock,
    keys: Option<Family<KeyId>>,
    sessions: Option<Family<Uuid>>,
    anonymous: Option<Family<IpAddr>>,
    checks: AtomicU64,
}

/// Every this many checks, buckets back at full capacity are dropped, so that the memory held is bounded by the
/// callers of the last minute or so rather than by every IP ever seen.
const FORGET_EVERY: u64 = 1 << 14;

impl RateLimits {
    pub fn new(settings: RateLimitSettings, clock: Arc<dyn Clock>) -> Self {
        let clock = LimiterClock::new(clock);
        Self {
            keys: Family::new(settings.key_per_minute, &clock),
            sessions: Family::new(settings.session_per_minute, &clock),
            anonymous: Family::new(settings.anonymous_per_minute, &clock),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key`'s caller.
    pub fn check(&self, key: &LimitKey) -> RateDecision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.forget_idle();
        }
        let decision = match key {
            LimitKey::Key(id) => self.keys.as_ref().map(|f| f.check(id, &self.clock)),
            LimitKey::Session(id) => self.sessions.as_ref().map(|f| f.check(id, &self.clock)),
            LimitKey::Anonymous(ip) => self.anonymous.as_ref().map(|f| f.check(ip, &self.clock)),
        };
        decision.unwrap_or(RateDecision::Unlimited)
    }

    fn forget_idle(&self) {
        if let Some(f) = &self.keys {
            f.forget_idle();
        }
        if let Some(f) = &self.sessions {
            f.forget_idle();
        }
        if let Some(f) = &self.anonymous {
            f.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;

    fn limits(per_minute: u32) -> (Arc<MockClock>, RateLimits) {
        let clock = Arc::new(MockClock::default());
        let settings = RateLimitSettings {
            key_per_minute: per_minute,
            session_per_minute: per_minute,
            anonymous_per_minute: per_minute,
        };
        (clock.clone(), RateLimits::new(settings, clock))
    }

    #[test]
    fn the_limit_plus_one_is_refused_until_time_passes() {
        let (clock, limits) = limits(3);
        let key = LimitKey::Key(KeyId(0));
        for remaining in [2, 1, 0] {
            match limits.check(&key) {
                RateDecision::Allowed {
                    limit: 3,
                    remaining: r,
                    ..
                } => assert_eq!(r, remaining),
                other => panic!("{other:?}"),
            }
        }
        let RateDecision::Limited {
            retry_after_secs, ..
        } = limits.check(&key)
        else {
            panic!("the 4th is limited")
        };
        assert_eq!(retry_after_secs, 20, "one request every 20 s");
        assert!(
            matches!(
                limits.check(&LimitKey::Key(KeyId(1))),
                RateDecision::Allowed { .. }
            ),
            "keys do not share"
        );
        clock.advance(chrono::Duration::seconds(20));
        assert!(matches!(
            limits.check(&key),
            RateDecision::Allowed { remaining: 0, .. }
        ));
        clock.advance(chrono::Duration::minutes(1));
        assert!(matches!(
            limits.check(&key),
            RateDecision::Allowed { remaining: 2, .. }
        ));
    }

    #[test]
    fn a_clock_set_back_neither_fills_nor_freezes_a_bucket() {
        let (clock, limits) = limits(2);
        let key = LimitKey::Session(Uuid::new_v4());
        limits.check(&key);
        limits.check(&key);
        clock.advance(chrono::Duration::hours(-1));
        assert!(matches!(
            limits.check(&key),
            RateDecision::Limited {
                retry_after_secs: 30,
                ..
            }
        ));
        clock.advance(chrono::Duration::seconds(30));
        assert!(
            matches!(limits.check(&key), RateDecision::Allowed { .. }),
            "30 s after the jump, as if there had been none"
        );
    }

    #[test]
    fn zero_is_unlimited_and_ipv6_hosts_share_their_64() {
        let (_, limits) = limits(0);
        assert_eq!(
            limits.check(&LimitKey::Anonymous("::1".parse().unwrap())),
            RateDecision::Unlimited
        );
        let a = LimitKey::client("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = LimitKey::client("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            LimitKey::client("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
