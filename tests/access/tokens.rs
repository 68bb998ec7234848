//! Session tokens: what createSession and issueSessionToken hand out, what a token admits through the SDK's
//! authenticated client (event streams included), and that every instance on one database, and the same
//! instance after a restart, accepts it.

use std::sync::Arc;

use agent_sessions::streams::SessionEvent;
use agent_sessions::types;
use agent_sessions::Client;
use agent_sessions_server::auth::{Access, AccessSettings};
use agent_sessions_server::clock::MockClock;
use chrono::Duration;
use futures::StreamExt;
use uuid::Uuid;

use super::*;
use crate::support::*;

async fn keyed() -> TestContext {
    TestContext::with_options(TestOptions::with_keys(&[KEY])).await
}

fn status<T: std::fmt::Debug>(
    result: Result<agent_sessions::ResponseValue<T>, agent_sessions::Error<types::ErrorResponse>>,
) -> (u16, types::ErrorCode) {
    let (status, code, _) = api_error(result);
    (status, code)
}

/// createSession hands out a token that expires at the session's hard end, and the SDK client built from it
/// can do everything its own session allows, event stream included, and nothing else.
#[tokio::test]
async fn a_session_token_drives_its_own_session_through_the_sdk() {
    let ctx = keyed().await;
    let session = ctx.create_session(Some(timeout_minutes(60.0))).await;
    let token = session.session_token.clone().expect("a sessionToken");
    let expires = session
        .session_token_expires_at
        .expect("sessionTokenExpiresAt");
    let hard_end = session.created_at
        + Duration::milliseconds((session.timeout_config.max_duration_minutes * 60_000.0) as i64);
    assert_eq!(
        expires, hard_end,
        "the hard end (whole seconds, as JWTs count)"
    );
    let id = session.session_id.to_string();

    let user = Client::with_session_token(&ctx.base_url, &token).unwrap();
    let mut events = user
        .session_events(&id, None)
        .await
        .expect("own events stream");
    let got = user.get_session().session_id(&id).send().await.unwrap();
    assert_eq!(got.session_id, session.session_id);
    assert!(
        got.session_token.is_none(),
        "only createSession carries a token"
    );
    user.session_heartbeat()
        .session_id(&id)
        .send()
        .await
        .unwrap();
    user.renew_session().session_id(&id).send().await.unwrap();
    let sent = user
        .send_message()
        .session_id(&id)
        .body(message("hello", types::TransportType::Http))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.agent_response.as_ref().unwrap().text, "Echo: hello");
    let history = user.get_messages().session_id(&id).send().await.unwrap();
    assert_eq!(history.messages.len(), 2);
    // The stream carries the exchange.
    loop {
        let frame = next(&mut events).await;
        if matches!(&frame.event, SessionEvent::Message(m) if m.is_agent) {
            break;
        }
    }

    // Nothing beyond its session.
    let other = ctx.new_session_id(None).await;
    assert_eq!(
        status(user.get_session().session_id(&other).send().await),
        (403, types::ErrorCode::Forbidden)
    );
    assert_eq!(
        status(user.list_agents().send().await),
        (403, types::ErrorCode::Forbidden)
    );
    assert_eq!(
        status(user.list_sessions().send().await),
        (403, types::ErrorCode::Forbidden)
    );
    assert_eq!(
        status(
            user.update_session_timeout()
                .session_id(&id)
                .body(timeout_minutes(90.0))
                .send()
                .await
        ),
        (403, types::ErrorCode::Forbidden)
    );
    assert_eq!(
        status(user.issue_session_token().session_id(&id).send().await),
        (403, types::ErrorCode::Forbidden)
    );
    // Ending its session is allowed; after that the token opens nothing.
    user.delete_session().session_id(&id).send().await.unwrap();
    assert_eq!(
        status(user.get_session().session_id(&id).send().await),
        (404, types::ErrorCode::SessionNotFound)
    );
    // A client with no credentials gets nowhere.
    let nobody = Client::new(&ctx.base_url);
    assert_eq!(
        status(nobody.get_session().session_id(&other).send().await),
        (401, types::ErrorCode::Unauthorized)
    );
}

/// issueSessionToken: a fresh token for an active session, with the key only; 404 and 410 as any lookup.
#[tokio::test]
async fn fresh_tokens_are_issued_with_the_key() {
    let ctx = keyed().await;
    let session = ctx
        .create_session(Some(types::TimeoutConfigInput {
            timeout_minutes: Some(5.0),
            ..Default::default()
        }))
        .await;
    let id = session.session_id.to_string();
    ctx.advance_minutes(1);
    let fresh = ctx
        .client
        .issue_session_token()
        .session_id(&id)
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.session_id, session.session_id);
    assert_ne!(Some(&fresh.session_token), session.session_token.as_ref());
    assert_eq!(
        Some(fresh.session_token_expires_at),
        session.session_token_expires_at
    );
    let user = Client::with_session_token(&ctx.base_url, &fresh.session_token).unwrap();
    user.get_session().session_id(&id).send().await.unwrap();

    assert_eq!(
        status(
            ctx.client
                .issue_session_token()
                .session_id(Uuid::new_v4().to_string())
                .send()
                .await
        ),
        (404, types::ErrorCode::SessionNotFound)
    );
    ctx.advance_minutes(10);
    assert_eq!(
        status(
            ctx.client
                .issue_session_token()
                .session_id(&id)
                .send()
                .await
        ),
        (410, types::ErrorCode::SessionExpired)
    );
}

/// EventSource cannot set headers: the events stream also takes the token as `?access_token=`.
#[tokio::test]
async fn the_events_stream_takes_the_token_in_the_query() {
    let ctx = keyed().await;
    let session = ctx.create_session(None).await;
    let token = session.session_token.unwrap();
    let id = session.session_id;
    let resp = reqwest::Client::new()
        .get(ctx.url(&format!(
            "/api/messaging/sessions/{id}/events?access_token={token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    ctx.heartbeat(id).await;
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: session"), "{text}");
}

/// A token is signed with a secret kept in the store: the same server accepts it after a restart.
#[tokio::test]
async fn tokens_survive_a_restart() {
    let ctx = keyed().await;
    let session = ctx.create_session(None).await;
    let token = session.session_token.unwrap();
    let id = session.session_id.to_string();
    let (dir, db, clock) = ctx.stop().await;
    let ctx = TestContext::start(dir, db, clock, TestOptions::with_keys(&[KEY])).await;
    let user = Client::with_session_token(&ctx.base_url, &token).unwrap();
    user.get_session()
        .session_id(&id)
        .send()
        .await
        .expect("the old token works");
}

/// Two instances on one PostgreSQL database accept each other's tokens without any configuration; a
/// configured secret, the same on both, works too, and one shorter than 32 bytes is refused at start.
#[tokio::test]
async fn instances_on_one_database_accept_each_others_tokens() {
    let Some(url) = crate::pg::postgres_url().await else {
        eprintln!("skipping: no PostgreSQL server");
        return;
    };
    let clock = Arc::new(MockClock::default());
    let a = TestContext::on_url(&url, clock.clone(), TestOptions::with_keys(&[KEY])).await;
    let b = TestContext::on_url(&url, clock.clone(), TestOptions::with_keys(&[KEY])).await;
    let session = a.create_session(None).await;
    let id = session.session_id.to_string();
    let on_b =
        Client::with_session_token(&b.base_url, session.session_token.as_ref().unwrap()).unwrap();
    on_b.session_heartbeat()
        .session_id(&id)
        .send()
        .await
        .expect("B accepts A's token");
    let fresh = b
        .client
        .issue_session_token()
        .session_id(&id)
        .send()
        .await
        .unwrap();
    let on_a = Client::with_session_token(&a.base_url, &fresh.session_token).unwrap();
    on_a.get_session()
        .session_id(&id)
        .send()
        .await
        .expect("A accepts B's token");

    let short = AccessSettings {
        token_secret: Some("too-short".into()),
        ..AccessSettings::default()
    };
    let refused = Access::open(short, &*a.store, clock.clone()).await;
    assert!(refused
        .err()
        .unwrap()
        .to_string()
        .contains("at least 32 bytes"));
}

/// A token of a server with other keys and another secret is refused (401), not mistaken for a key.
#[tokio::test]
async fn another_servers_token_is_refused() {
    let one = keyed().await;
    let two = keyed().await;
    let token = one.create_session(None).await.session_token.unwrap();
    let id = two.create_session(None).await.session_id;
    let path = format!("/api/messaging/sessions/{id}");
    let answer = get_with(&two, &path, &refs(&bearer(&token))).await;
    answer.assert_error(401, "UNAUTHORIZED", "another server's token");
}
