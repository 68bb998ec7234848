//! Timeout semantics (sessions-api.md section 2) through the SDK, with a `MockClock`: clamping, the max-duration
//! cap, `autoRenew` off, PATCH merging, near-expiration, and 410-then-404 around the retention period.

use agent_sessions::types;
use chrono::Duration;
use futures::{FutureExt, StreamExt};

use crate::support::*;

#[tokio::test]
async fn create_clamps_out_of_range_values() {
    let ctx = TestContext::new().await;
    // (timeoutMinutes asked, got), defaults MIN 5, MAX 1440.
    for (asked, got) in [
        (4.999, 5.0),
        (1.0, 5.0),
        (0.0, 5.0),
        (-5.0, 5.0),
        (1440.001, 1440.0),
        (5000.0, 1440.0),
        (7.5, 7.5),
        (30.0, 30.0),
    ] {
        let s = ctx.create_session(Some(timeout_minutes(asked))).await;
        assert_eq!(
            s.timeout_config.timeout_minutes, got,
            "timeoutMinutes {asked}"
        );
        let expected_ms = (got * 60_000.0) as i64;
        assert_eq!(s.time_remaining, expected_ms, "timeRemaining for {asked}");
    }
    // maxDurationMinutes: max(timeout, min(2 x MAX, value)); warningThresholdMinutes at least 1.
    for (timeout, max_duration, got) in [
        (30.0, Some(10.0), 30.0),
        (30.0, Some(100_000.0), 2880.0),
        (30.0, None, 720.0),
        (1440.0, None, 1440.0),
    ] {
        let s = ctx
            .create_session(Some(types::TimeoutConfigInput {
                timeout_minutes: Some(timeout),
                max_duration_minutes: max_duration,
                warning_threshold_minutes: Some(0.0),
                ..Default::default()
            }))
            .await;
        assert_eq!(
            s.timeout_config.max_duration_minutes, got,
            "{timeout} {max_duration:?}"
        );
        assert_eq!(s.timeout_config.warning_threshold_minutes, 1.0);
    }
}

#[tokio::test]
async fn renewal_cannot_pass_the_max_duration() {
    let (ctx, s) = TestContext::with_session(Some(types::TimeoutConfigInput {
        timeout_minutes: Some(60.0),
        max_duration_minutes: Some(90.0),
        ..Default::default()
    }))
    .await;
    let id = s.session_id.to_string();
    let cap = s.created_at + Duration::minutes(90);
    ctx.advance_minutes(50);
    let hb = ctx.heartbeat(&id).await;
    assert_eq!(hb.expires_at, cap, "min(now + 60, createdAt + 90)");
    assert_eq!(hb.renewal_count, 1);
    ctx.advance_minutes(40); // exactly at the cap: expired
    let (status, code, message) = api_error(ctx.try_renew(&id).await);
    assert_eq!((status, code), (410, types::ErrorCode::SessionExpired));
    assert_eq!(
        message,
        format!(
            "Session '{id}' expired at {}",
            cap.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        )
    );
    let (status, _, _) = api_error(ctx.try_heartbeat(&id).await);
    assert_eq!(status, 410);
}

#[tokio::test]
async fn auto_renew_off_heartbeat_only_records_activity() {
    let (ctx, s) = TestContext::with_session(Some(types::TimeoutConfigInput {
        timeout_minutes: Some(30.0),
        auto_renew: Some(false),
        ..Default::default()
    }))
    .await;
    let id = s.session_id.to_string();
    ctx.advance_minutes(20);
    let hb = ctx.heartbeat(&id).await;
    assert_eq!(hb.renewal_count, 0);
    assert_eq!(hb.last_activity, ctx.service.now());
    assert_eq!(hb.expires_at, s.expires_at, "no renewal with autoRenew off");

    // An explicit renewal works even with autoRenew off.
    let renewed = ctx.renew(&id).await;
    assert_eq!(renewed.renewal_count, 1);
    assert_eq!(
        renewed.expires_at,
        ctx.service.now() + Duration::minutes(30)
    );

    // And it is not undone when a PATCH recomputes expiresAt.
    let patched = ctx
        .update_timeout(
            &id,
            types::TimeoutConfigInput {
                warning_threshold_minutes: Some(10.0),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(patched.expires_at, renewed.expires_at);
}

#[tokio::test]
async fn patch_merges_with_the_current_config() {
    let (ctx, s) = TestContext::with_session(Some(types::TimeoutConfigInput {
        timeout_minutes: Some(60.0),
        auto_renew: Some(false),
        max_duration_minutes: Some(600.0),
        warning_threshold_minutes: Some(15.0),
    }))
    .await;
    let id = s.session_id.to_string();
    ctx.advance_minutes(10);
    let patched = ctx.update_timeout(&id, timeout_minutes(120.0)).await;
    let c = &patched.timeout_config;
    assert_eq!(c.timeout_minutes, 120.0);
    assert!(
        !c.auto_renew,
        "omitted autoRenew keeps its value (the reference resets it)"
    );
    assert_eq!(c.max_duration_minutes, 600.0);
    assert_eq!(c.warning_threshold_minutes, 15.0);
    // autoRenew off: the timeout counts from creation (the last renewal).
    assert_eq!(patched.expires_at, s.created_at + Duration::minutes(120));
    let message = assert_api_error(
        ctx.try_update_timeout(&id, timeout_minutes(4.0)).await,
        400,
        types::ErrorCode::ValidationError,
    );
    assert_eq!(
        message,
        "Invalid timeout configuration: Timeout must be between 5 and 1440 minutes"
    );
    // Boundaries are accepted (5 last: ten minutes after creation it expires this non-renewing session).
    for ok in [1440.0, 5.0] {
        let r = ctx.update_timeout(&id, timeout_minutes(ok)).await;
        assert_eq!(r.timeout_config.timeout_minutes, ok);
    }
}

#[tokio::test]
async fn near_expiration_and_time_remaining_follow_the_clock() {
    let (ctx, s) = TestContext::with_session(None).await; // 30 min, warning 5 min
    let id = s.session_id.to_string();
    let get = || async { ctx.get(&id).await };
    assert!(!get().await.is_near_expiration);
    ctx.advance_minutes(24);
    let g = get().await;
    assert_eq!(g.time_remaining, 6 * 60_000);
    assert!(!g.is_near_expiration);
    ctx.advance_minutes(1);
    let g = get().await;
    assert_eq!(g.time_remaining, 5 * 60_000);
    assert!(g.is_near_expiration, "exactly at the threshold counts");
    ctx.clock.advance(Duration::milliseconds(5 * 60_000 - 1));
    let g = get().await;
    assert_eq!(g.time_remaining, 1);
    assert!(g.is_near_expiration);
    // A heartbeat moves it out of the warning window.
    let hb = ctx.heartbeat(&id).await;
    assert!(!hb.is_near_expiration);
    assert_eq!(hb.time_remaining, 30 * 60_000);
}

#[tokio::test]
async fn expired_answers_410_during_retention_then_404_after_purge() {
    let ctx = TestContext::with_options(TestOptions {
        retention: Duration::hours(2),
        ..Default::default()
    })
    .await;
    let s = ctx.create_session(None).await;
    let keep = ctx.create_session(Some(timeout_minutes(1440.0))).await;
    let id = s.session_id.to_string();
    ctx.advance_minutes(30);
    // Every session endpoint but DELETE answers 410, again and again (the reference answers it once).
    for _ in 0..2 {
        assert_api_error(
            ctx.try_get(&id).await,
            410,
            types::ErrorCode::SessionExpired,
        );
    }
    assert_eq!(api_error(ctx.try_heartbeat(&id).await).0, 410);
    assert_eq!(api_error(ctx.try_renew(&id).await).0, 410);
    assert_eq!(
        api_error(ctx.try_update_timeout(&id, timeout_minutes(60.0)).await).0,
        410
    );

    // The sweeper leaves it alone while it is retained...
    let sweeper = ctx.sweeper();
    assert_eq!(sweeper.run_once(ctx.service.now()).await.unwrap().purged, 0);
    ctx.clock
        .advance(Duration::hours(2) - Duration::milliseconds(1));
    assert_eq!(api_error(ctx.try_get(&id).await).0, 410);
    assert_eq!(sweeper.run_once(ctx.service.now()).await.unwrap().purged, 0);

    // ...and after retention it is gone: 404, with or without the purge having run.
    ctx.clock.advance(Duration::milliseconds(1));
    assert_api_error(
        ctx.try_get(&id).await,
        404,
        types::ErrorCode::SessionNotFound,
    );
    assert_eq!(sweeper.run_once(ctx.service.now()).await.unwrap().purged, 1);
    assert!(
        ctx.store.get_session(s.session_id).await.unwrap().is_none(),
        "row purged"
    );
    assert!(
        ctx.store
            .get_session(keep.session_id)
            .await
            .unwrap()
            .is_some(),
        "live session kept"
    );
}

#[tokio::test]
async fn delete_still_works_on_an_expired_session() {
    let (ctx, s) = TestContext::with_session(None).await;
    let id = s.session_id.to_string();
    ctx.advance_minutes(31);
    let deleted = ctx.delete(&id).await;
    assert!(deleted.success);
    assert_eq!(api_error(ctx.try_get(&id).await).0, 404);
}

/// A server holding two full purge batches and then some of sessions already past their retention.
async fn sessions_past_retention() -> (TestContext, usize) {
    let ctx = TestContext::with_options(TestOptions {
        retention: Duration::minutes(1),
        ..Default::default()
    })
    .await;
    let n = agent_sessions_server::sweeper::PURGE_BATCH as usize * 2 + 7;
    // Concurrent creates: the store commits them in groups, which this also exercises.
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |_| {
            ctx.create_session(Some(timeout_minutes(5.0))).map(drop)
        })
        .await;
    ctx.advance_minutes(7);
    (ctx, n)
}

#[tokio::test]
async fn sweeper_purges_in_batches() {
    let (ctx, n) = sessions_past_retention().await;
    assert_eq!(
        ctx.sweeper()
            .run_once(ctx.service.now())
            .await
            .unwrap()
            .purged,
        n as u64
    );
    let h = ctx.list().await;
    assert_eq!(h.stats.total_sessions, 0);
}

/// The running sweeper (`Sweeper::spawn`, as the binary starts it) purges everything due, batch after paced
/// batch, and stops when told to.
#[tokio::test]
async fn running_sweeper_purges_everything_due_then_stops() {
    let (ctx, _) = sessions_past_retention().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sweeper = agent_sessions_server::sweeper::Sweeper::new(
        ctx.service.clone(),
        std::time::Duration::from_millis(10),
    )
    .spawn(stopped);
    // Waits for the background purge to finish (each batch is followed by a short rest), with a deadline.
    let total = || async { ctx.list().await.stats.total_sessions };
    let purged = tokio::time::timeout(WAIT, async {
        while total().await > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        purged.is_ok(),
        "{} sessions left after {WAIT:?}",
        total().await
    );
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, sweeper)
        .await
        .expect("the sweeper stops when told to")
        .unwrap();
}
