//! Timeout configuration: the global policy (from environment/flags), per-session effective config, and the
//! rules that turn a request's partial config into an effective one (clamping on create, strict range on PATCH).

use serde::{Deserialize, Serialize};

/// Global defaults and bounds, each already clamped to the range the reference server allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutPolicy {
    pub default_timeout_minutes: f64,
    pub min_timeout_minutes: f64,
    pub max_timeout_minutes: f64,
    pub max_duration_minutes: f64,
    pub warning_threshold_minutes: f64,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self::new(30.0, 5.0, 1440.0, 720.0, 5.0)
    }
}

impl TimeoutPolicy {
    /// Builds a policy from raw setting values, clamping each to its documented bounds (sessions-api.md §2).
    pub fn new(default: f64, min: f64, max: f64, max_duration: f64, warning: f64) -> Self {
        Self {
            default_timeout_minutes: default.clamp(1.0, 10080.0),
            min_timeout_minutes: min.clamp(1.0, 60.0),
            max_timeout_minutes: max.clamp(60.0, 10080.0),
            max_duration_minutes: max_duration.clamp(60.0, 20160.0),
            warning_threshold_minutes: warning.clamp(1.0, 60.0),
        }
    }

    /// The effective config of a new session: request > agent defaults > global defaults, field by field,
    /// then clamped. Out-of-range values are clamped, never rejected, because clients rely on that.
    pub fn resolve(
        &self,
        requested: &TimeoutConfigPatch,
        agent: &TimeoutConfigPatch,
    ) -> TimeoutConfig {
        let pick = |r: Option<f64>, a: Option<f64>, d: f64| r.or(a).unwrap_or(d);
        let timeout = pick(
            requested.timeout_minutes,
            agent.timeout_minutes,
            self.default_timeout_minutes,
        )
        .clamp(self.min_timeout_minutes, self.max_timeout_minutes);
        let config = TimeoutConfig {
            timeout_minutes: timeout,
            auto_renew: requested.auto_renew.or(agent.auto_renew).unwrap_or(true),
            max_duration_minutes: pick(
                requested.max_duration_minutes,
                agent.max_duration_minutes,
                self.max_duration_minutes,
            ),
            warning_threshold_minutes: pick(
                requested.warning_threshold_minutes,
                agent.warning_threshold_minutes,
                self.warning_threshold_minutes,
            ),
        };
        self.normalize(config)
    }

    /// The config after a PATCH: the current config with the given fields replaced. Unlike create, a timeout
    /// outside [min, max] is rejected, since the caller is changing a live session on purpose.
    pub fn apply_patch(
        &self,
        current: &TimeoutConfig,
        patch: &TimeoutConfigPatch,
    ) -> Result<TimeoutConfig, String> {
        if let Some(t) = patch.timeout_minutes {
            if t < self.min_timeout_minutes || t > self.max_timeout_minutes {
                return Err(format!(
                    "Timeout must be between {} and {} minutes",
                    fmt_minutes(self.min_timeout_minutes),
                    fmt_minutes(self.max_timeout_minutes)
                ));
            }
        }
        Ok(self.normalize(TimeoutConfig {
            timeout_minutes: patch.timeout_minutes.unwrap_or(current.timeout_minutes),
            auto_renew: patch.auto_renew.unwrap_or(current.auto_renew),
            max_duration_minutes: patch
                .max_duration_minutes
                .unwrap_or(current.max_duration_minutes),
            warning_threshold_minutes: patch
                .warning_threshold_minutes
                .unwrap_or(current.warning_threshold_minutes),
        }))
    }

    /// The reference's cross-field rules: the max duration is at least the timeout and at most twice the
    /// max timeout; the warning threshold is at least one minute. The threshold is also at most the max
    /// duration: no session has more time left than that, so a larger threshold means the same (always near
    /// expiration), and unbounded it overflowed the expiry arithmetic (`warningThresholdMinutes: 1e12`).
    fn normalize(&self, mut c: TimeoutConfig) -> TimeoutConfig {
        c.max_duration_minutes = c
            .max_duration_minutes
            .min(2.0 * self.max_timeout_minutes)
            .max(c.timeout_minutes);
        c.warning_threshold_minutes = c
            .warning_threshold_minutes
            .min(c.max_duration_minutes)
            .max(1.0);
        c
    }
}

/// Minutes as a person writes them: `5`, not `5.0`; `7.5` stays `7.5`.
pub fn fmt_minutes(m: f64) -> String {
    minutes_json(m).to_string()
}

/// Minutes as the API prints them: whole minutes as integers (`30`, not `30.0`).
pub fn minutes_json(m: f64) -> serde_json::Value {
    if m.fract() == 0.0 && m.abs() < 9.0e15 {
        serde_json::Value::from(m as i64)
    } else {
        serde_json::Value::from(m)
    }
}

/// The effective timeout config of a session: every field set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfig {
    pub timeout_minutes: f64,
    pub auto_renew: bool,
    pub max_duration_minutes: f64,
    pub warning_threshold_minutes: f64,
}

/// A partial config: what a create request, a PATCH, or an agent's session defaults specify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfigPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_renew: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_minutes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_threshold_minutes: Option<f64>,
}

/// The longest span any setting or session field can stand for: a hundred years. Every conversion of minutes
/// to a duration is clamped to it, so that no input, however large, can overflow the date arithmetic (chrono
/// panics on an out-of-range duration or instant).
pub const MAX_SPAN_MINUTES: f64 = 100.0 * 366.0 * 24.0 * 60.0;

/// Converts minutes to whole milliseconds, the store's and the wire's resolution, clamped to
/// ±[`MAX_SPAN_MINUTES`]; NaN counts as zero.
pub fn minutes_to_ms(minutes: f64) -> i64 {
    let minutes = if minutes.is_nan() { 0.0 } else { minutes };
    (minutes.clamp(-MAX_SPAN_MINUTES, MAX_SPAN_MINUTES) * 60_000.0).round() as i64
}

/// Minutes as a duration, clamped like [`minutes_to_ms`].
pub fn minutes_duration(minutes: f64) -> chrono::Duration {
    chrono::Duration::milliseconds(minutes_to_ms(minutes))
}

/// `t + d`, saturating at the ends of chrono's range instead of panicking.
pub fn add_saturating(
    t: chrono::DateTime<chrono::Utc>,
    d: chrono::Duration,
) -> chrono::DateTime<chrono::Utc> {
    t.checked_add_signed(d)
        .unwrap_or(if d < chrono::Duration::zero() {
            chrono::DateTime::<chrono::Utc>::MIN_UTC
        } else {
            chrono::DateTime::<chrono::Utc>::MAX_UTC
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(t: f64) -> TimeoutConfigPatch {
        TimeoutConfigPatch {
            timeout_minutes: Some(t),
            ..Default::default()
        }
    }

    #[test]
    fn policy_values_are_clamped_to_their_bounds() {
        let p = TimeoutPolicy::new(0.0, 100.0, 10.0, 1.0, 0.0);
        assert_eq!(p.default_timeout_minutes, 1.0);
        assert_eq!(p.min_timeout_minutes, 60.0);
        assert_eq!(p.max_timeout_minutes, 60.0);
        assert_eq!(p.max_duration_minutes, 60.0);
        assert_eq!(p.warning_threshold_minutes, 1.0);
    }

    #[test]
    fn create_clamps_timeout_and_keeps_fractions() {
        let p = TimeoutPolicy::default();
        let none = TimeoutConfigPatch::default();
        for (asked, got) in [
            (1.0, 5.0),
            (0.0, 5.0),
            (-5.0, 5.0),
            (5000.0, 1440.0),
            (7.5, 7.5),
            (60.0, 60.0),
        ] {
            assert_eq!(
                p.resolve(&timeout(asked), &none).timeout_minutes,
                got,
                "{asked}"
            );
        }
    }

    #[test]
    fn max_duration_is_between_timeout_and_twice_max() {
        let p = TimeoutPolicy::default();
        let none = TimeoutConfigPatch::default();
        let c = p.resolve(&TimeoutConfigPatch::default(), &none);
        assert_eq!(c.max_duration_minutes, 720.0);
        let c = p.resolve(&timeout(1440.0), &none);
        assert_eq!(c.max_duration_minutes, 1440.0, "raised to the timeout");
        let c = p.resolve(
            &TimeoutConfigPatch {
                max_duration_minutes: Some(100_000.0),
                ..Default::default()
            },
            &none,
        );
        assert_eq!(c.max_duration_minutes, 2880.0, "capped at 2 x max timeout");
    }

    #[test]
    fn request_beats_agent_beats_global() {
        let p = TimeoutPolicy::default();
        let agent = TimeoutConfigPatch {
            timeout_minutes: Some(45.0),
            auto_renew: Some(false),
            ..Default::default()
        };
        let c = p.resolve(&timeout(10.0), &agent);
        assert_eq!(c.timeout_minutes, 10.0);
        assert!(!c.auto_renew);
        assert_eq!(c.warning_threshold_minutes, 5.0);
    }

    #[test]
    fn huge_and_odd_minutes_never_overflow() {
        let p = TimeoutPolicy::default();
        let none = TimeoutConfigPatch::default();
        let c = p.resolve(
            &TimeoutConfigPatch {
                warning_threshold_minutes: Some(1e12),
                max_duration_minutes: Some(f64::MAX),
                timeout_minutes: Some(f64::MAX),
                auto_renew: None,
            },
            &none,
        );
        assert_eq!(c.timeout_minutes, 1440.0);
        assert_eq!(c.max_duration_minutes, 2880.0);
        assert_eq!(
            c.warning_threshold_minutes, 2880.0,
            "at most the max duration"
        );
        let c = p.resolve(
            &none,
            &TimeoutConfigPatch {
                warning_threshold_minutes: Some(1e300),
                ..Default::default()
            },
        );
        assert_eq!(c.warning_threshold_minutes, c.max_duration_minutes);
        for m in [f64::MAX, f64::MIN, f64::NAN, 1e12, -1e12] {
            let _ = minutes_duration(m);
        }
        assert_eq!(minutes_to_ms(f64::NAN), 0);
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        assert_eq!(add_saturating(far, minutes_duration(1e12)), far);
    }

    #[test]
    fn patch_rejects_out_of_range_and_merges() {
        let p = TimeoutPolicy::default();
        let current = p.resolve(
            &TimeoutConfigPatch {
                timeout_minutes: Some(60.0),
                auto_renew: Some(false),
                warning_threshold_minutes: Some(10.0),
                ..Default::default()
            },
            &TimeoutConfigPatch::default(),
        );
        assert_eq!(
            p.apply_patch(&current, &timeout(4.0)).unwrap_err(),
            "Timeout must be between 5 and 1440 minutes"
        );
        assert!(p.apply_patch(&current, &timeout(1441.0)).is_err());
        let next = p.apply_patch(&current, &timeout(90.0)).unwrap();
        assert_eq!(next.timeout_minutes, 90.0);
        assert!(!next.auto_renew, "omitted fields keep their current value");
        assert_eq!(next.warning_threshold_minutes, 10.0);
    }
}
