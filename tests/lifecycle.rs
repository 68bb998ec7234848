//! Every session and agent operation through the generated SDK against a live server.

use agent_sessions::types;
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn create_returns_every_session_field() {
    let ctx = TestContext::new().await;
    let user = Uuid::new_v4();
    let mut metadata = serde_json::Map::new();
    metadata.insert("platform".into(), "web".into());
    let s = ctx
        .client
        .create_session()
        .body(types::CreateSessionRequest {
            agent_id: ctx.agent_id,
            user_id: user,
            metadata: metadata.clone(),
            timeout_config: Some(types::TimeoutConfigInput {
                timeout_minutes: Some(722.0),
                auto_renew: Some(true),
                max_duration_minutes: Some(123.0),
                warning_threshold_minutes: Some(123.0),
            }),
        })
        .send()
        .await
        .expect("create");
    assert_eq!(s.status().as_u16(), 201);
    let s = s.into_inner();
    assert_eq!(s.agent_id, ctx.agent_id);
    assert_eq!(s.user_id, user);
    assert_ne!(s.session_id, s.channel_id);
    assert_eq!(s.metadata, metadata);
    let now = ctx.service.now();
    assert_eq!(s.created_at, now);
    assert_eq!(s.last_activity, now);
    // The reference page's example body: 722 is in range, maxDuration 123 is raised to the timeout.
    assert_eq!(s.timeout_config.timeout_minutes, 722.0);
    assert_eq!(s.timeout_config.max_duration_minutes, 722.0);
    assert_eq!(s.timeout_config.warning_threshold_minutes, 123.0);
    assert!(s.timeout_config.auto_renew);
    assert_eq!(s.expires_at, now + chrono::Duration::minutes(722));
    assert_eq!(s.renewal_count, 0);
    assert_eq!(s.time_remaining, 722 * 60_000);
    assert!(
        !s.is_near_expiration,
        "722 minutes left is outside a 123-minute threshold"
    );
}

#[tokio::test]
async fn get_renew_heartbeat_patch_delete() {
    let (ctx, created) = TestContext::with_session(None).await;
    let id = created.session_id.to_string();

    let got = ctx.get(&id).await;
    assert_eq!(got.session_id, created.session_id);
    assert_eq!(got.expires_at, created.expires_at);

    ctx.advance_minutes(10);
    let hb = ctx.heartbeat(&id).await;
    assert_eq!(hb.renewal_count, 1);
    assert_eq!(hb.last_activity, ctx.service.now());
    assert_eq!(
        hb.expires_at,
        ctx.service.now() + chrono::Duration::minutes(30)
    );

    ctx.advance_minutes(5);
    let renewed = ctx.renew(&id).await;
    assert_eq!(renewed.renewal_count, 2);
    assert_eq!(
        renewed.expires_at,
        ctx.service.now() + chrono::Duration::minutes(30)
    );

    let patched = ctx.update_timeout(&id, timeout_minutes(60.0)).await;
    assert_eq!(patched.timeout_config.timeout_minutes, 60.0);
    assert_eq!(
        patched.expires_at,
        renewed.last_activity + chrono::Duration::minutes(60)
    );
    assert_eq!(patched.renewal_count, 2, "a PATCH is not a renewal");

    let deleted = ctx.delete(&id).await;
    assert!(deleted.success);
    assert_eq!(
        deleted.message,
        format!("Session {id} deleted successfully")
    );
    assert_api_error(
        ctx.try_get(&id).await,
        404,
        types::ErrorCode::SessionNotFound,
    );
}

#[tokio::test]
async fn reads_do_not_count_as_activity() {
    let (ctx, s) = TestContext::with_session(None).await;
    ctx.advance_minutes(20);
    let id = s.session_id.to_string();
    let got = ctx.get(&id).await;
    ctx.list().await;
    ctx.health().await;
    assert_eq!(got.last_activity, s.last_activity);
    assert_eq!(got.renewal_count, 0);
    assert_eq!(got.expires_at, s.expires_at);
    assert_eq!(got.time_remaining, 10 * 60_000);
}

#[tokio::test]
async fn list_filters_paginates_and_counts() {
    let ctx = TestContext::new().await;
    let other_agent = ctx.create_agent(agent_request("Other")).await;
    let user = Uuid::new_v4();
    let mut mine = Vec::new();
    for i in 0..5 {
        ctx.clock.advance(chrono::Duration::seconds(1));
        let s = ctx
            .client
            .create_session()
            .body(types::CreateSessionRequest {
                agent_id: if i < 3 { ctx.agent_id } else { other_agent.id },
                user_id: user,
                metadata: Default::default(),
                timeout_config: Some(timeout_minutes(if i == 0 { 5.0 } else { 60.0 })),
            })
            .send()
            .await
            .unwrap()
            .into_inner();
        mine.push(s.session_id);
    }
    ctx.create_session(None).await; // another user's

    let all = ctx.list().await;
    assert_eq!(all.total, 6);
    assert_eq!(all.sessions.len(), 6);
    assert_eq!(all.stats.total_sessions, 6);
    assert_eq!(all.stats.expired_sessions, 0);

    let of_user = || {
        ok(
            "list_sessions",
            ctx.client.list_sessions().user_id(user).send(),
        )
    };
    let by_user = of_user().await;
    let ids: Vec<Uuid> = by_user.sessions.iter().map(|s| s.session_id).collect();
    let newest_first: Vec<Uuid> = mine.iter().rev().copied().collect();
    assert_eq!(ids, newest_first);

    let by_agent = ctx
        .client
        .list_sessions()
        .agent_id(other_agent.id)
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_agent.total, 2);

    let page = ctx
        .client
        .list_sessions()
        .user_id(user)
        .limit(std::num::NonZeroU32::new(2).unwrap())
        .offset(2)
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 5);
    let page_ids: Vec<Uuid> = page.sessions.iter().map(|s| s.session_id).collect();
    assert_eq!(page_ids, newest_first[2..4]);

    // The 5-minute session expires: no longer listed, counted as expired.
    ctx.advance_minutes(6);
    let after = of_user().await;
    assert_eq!(after.total, 4);
    assert_eq!(after.stats.total_sessions, 5);
    assert_eq!(after.stats.active_sessions, 4);
    assert_eq!(after.stats.expired_sessions, 1);
    assert!(!after.sessions.iter().any(|s| s.session_id == mine[0]));
}

#[tokio::test]
async fn health_counts_active_and_expiring_sessions() {
    let ctx = TestContext::new().await;
    ctx.create_session(Some(timeout_minutes(10.0))).await;
    ctx.create_session(Some(timeout_minutes(60.0))).await;
    let h = ctx.health().await;
    assert_eq!(h.status, "healthy");
    assert_eq!(h.active_sessions, 2);
    assert_eq!(h.expiring_soon, 0);
    assert_eq!(h.timestamp, ctx.service.now());
    ctx.advance_minutes(6); // the 10-minute one has 4 minutes left, within the 5-minute threshold
    let h = ctx.health().await;
    assert_eq!((h.active_sessions, h.expiring_soon), (2, 1));
    assert!(h.uptime >= 360.0);
}

/// The health route's counts are kept, not counted per request: calls within a few seconds reuse one count
/// (adjusted for the sessions created and deleted here), and a count older than a few seconds is never answered.
#[tokio::test]
async fn health_counts_are_kept_for_seconds_and_never_answered_stale() {
    let ctx = TestContext::new().await;
    let short = ctx.create_session(Some(timeout_minutes(10.0))).await;
    let h = ctx.health().await;
    assert_eq!((h.active_sessions, h.expiring_soon), (1, 0));
    // Created and deleted here: counted at once, without a recount.
    let other = ctx.create_session(None).await;
    assert_eq!(ctx.health().await.active_sessions, 2);
    ctx.delete(&other.session_id.to_string()).await;
    assert_eq!(ctx.health().await.active_sessions, 1);
    // A session stored by another instance (here: straight into the store) is not counted by a call...
    let elsewhere = agent_sessions_server::domain::Session::new(
        ctx.agent_id,
        Uuid::new_v4(),
        Default::default(),
        agent_sessions_server::domain::TimeoutConfig {
            timeout_minutes: 60.0,
            auto_renew: true,
            max_duration_minutes: 120.0,
            warning_threshold_minutes: 5.0,
        },
        ctx.service.now(),
    );
    assert!(ctx.store.insert_session(&elsewhere).await.unwrap());
    assert_eq!(ctx.health().await.active_sessions, 1, "the kept count");
    // ...until the kept count is too old: then a recount sees it, and the short session's warning window.
    ctx.advance_minutes(6);
    let h = ctx.health().await;
    assert_eq!((h.active_sessions, h.expiring_soon), (2, 1), "{short:?}");
}

#[tokio::test]
async fn agents_crud_and_session_defaults() {
    let ctx = TestContext::new().await;
    let listed = ctx.agents().await;
    assert_eq!(listed.total, 1);
    assert_eq!(listed.agents[0].id, ctx.agent_id);
    assert_eq!(
        listed.agents[0].backend.type_,
        types::AgentBackendType::Echo
    );

    let created = ctx
        .client
        .create_agent()
        .body(types::CreateAgentRequest {
            name: "Hooked".into(),
            backend: Some(
                types::AgentBackend {
                    type_: types::AgentBackendType::Webhook,
                    url: Some("http://127.0.0.1:9/hook".into()),
                    base_url: None,
                    model: None,
                    api_key_env: None,
                    system_prompt: None,
                }
                .into(),
            ),
            session_defaults: Some(types::TimeoutConfigInput {
                timeout_minutes: Some(90.0),
                auto_renew: Some(false),
                ..Default::default()
            }),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created = created.into_inner();
    assert_eq!(
        created.backend.url.as_deref(),
        Some("http://127.0.0.1:9/hook")
    );
    let got = ctx.agent(created.id).await;
    assert_eq!(got.name, "Hooked");
    assert_eq!(got.session_defaults.timeout_minutes, Some(90.0));

    // Agent defaults apply between the request and the global defaults.
    let s = ctx
        .client
        .create_session()
        .body(types::CreateSessionRequest {
            timeout_config: Some(types::TimeoutConfigInput {
                auto_renew: Some(true),
                ..Default::default()
            }),
            ..create_request(created.id)
        })
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.timeout_config.timeout_minutes, 90.0);
    assert!(s.timeout_config.auto_renew);

    // Not while one of its sessions is active: the conversation would lose its agent.
    assert_api_error(
        ctx.try_delete_agent(created.id).await,
        409,
        types::ErrorCode::AgentInUse,
    );
    ctx.get(s.session_id).await;
    // Once its sessions have expired, the agent goes, and they go with it.
    ctx.advance_minutes(91);
    let del = ctx.delete_agent(created.id).await;
    assert!(del.success);
    // Sessions go with their agent.
    assert_api_error(
        ctx.try_get(s.session_id).await,
        404,
        types::ErrorCode::SessionNotFound,
    );
    assert_eq!(ctx.agents().await.total, 1);
}

#[tokio::test]
async fn docs_and_spec_are_served() {
    let ctx = TestContext::new().await;
    let html = reqwest::get(ctx.url("/docs")).await.unwrap();
    assert_eq!(html.status().as_u16(), 200);
    let html = html.text().await.unwrap();
    assert!(html.contains("SwaggerUIBundle"), "Swagger UI is embedded");
    assert!(
        html.contains("<title>agent-sessions API</title>"),
        "the page is titled after the project"
    );
    assert!(
        html.contains("createSession"),
        "with the contract's operations"
    );

    let root = reqwest::get(ctx.url("/")).await.unwrap();
    assert_eq!(
        root.url().path(),
        "/docs",
        "the root redirects to the documentation"
    );

    let json: serde_json::Value = reqwest::get(ctx.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let yaml = reqwest::get(ctx.url("/openapi.yaml"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let contract: serde_json::Value =
        serde_yaml::from_str(include_str!("../openapi.yaml")).expect("openapi.yaml parses");
    assert_eq!(json, contract);
    assert_eq!(yaml, include_str!("../openapi.yaml"));
}

#[tokio::test]
async fn the_reference_pages_example_request_works_verbatim() {
    let ctx = TestContext::new().await;
    assert_eq!(ctx.agent_id, agent_sessions_server::service::DEMO_AGENT_ID);
    // The request body of the elizaOS reference page for POST /api/messaging/sessions, as printed there.
    let body = r#"{
  "agentId": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
  "userId": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
  "metadata": {
    "platform": "<string>",
    "username": "<string>",
    "discriminator": "<string>",
    "avatar": "<string>"
  },
  "timeoutConfig": {
    "timeoutMinutes": 722,
    "autoRenew": true,
    "maxDurationMinutes": 123,
    "warningThresholdMinutes": 123
  }
}"#;
    let (status, _, s) = raw(
        reqwest::Method::POST,
        &ctx.url("/api/messaging/sessions"),
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(status, 201, "{s}");
    for field in [
        "sessionId",
        "channelId",
        "agentId",
        "userId",
        "createdAt",
        "lastActivity",
        "expiresAt",
        "metadata",
        "timeoutConfig",
        "renewalCount",
        "timeRemaining",
        "isNearExpiration",
    ] {
        assert!(!s[field].is_null(), "{field} in {s}");
    }
    assert_eq!(s["timeoutConfig"]["timeoutMinutes"], 722);
    assert_eq!(
        s["timeoutConfig"]["maxDurationMinutes"], 722,
        "raised to the timeout"
    );
    assert_eq!(s["timeoutConfig"]["warningThresholdMinutes"], 123);
    assert_eq!(s["metadata"]["discriminator"], "<string>");
}
