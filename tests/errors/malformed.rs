//! A table of malformed requests of every kind that must never get plain text, a 5xx, or a side effect.

use super::*;

struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn case(
    method: Method,
    path: impl Into<String>,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
) -> Case {
    Case {
        method,
        path: path.into(),
        content_type,
        body: body.into(),
    }
}

const JSON: Option<&str> = Some("application/json");

/// `depth` nested arrays around `0`.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn bad_input_never_gets_plain_text_or_a_5xx() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id;
    let agent = ctx.agent_id;
    let user = Uuid::new_v4();
    let patch = format!("{SESSIONS}/{sid}/timeout");
    let long_id = "a".repeat(4000);
    let with = |extra: &str| format!(r#"{{"agentId":"{agent}","userId":"{user}",{extra}}}"#);

    let cases = vec![
        // Odd methods.
        case(Method::from_bytes(b"PURGE").unwrap(), SESSIONS, None, ""),
        case(
            Method::from_bytes(b"BREW").unwrap(),
            format!("{SESSIONS}/{sid}"),
            None,
            "",
        ),
        case(Method::OPTIONS, SESSIONS, None, ""),
        case(Method::TRACE, format!("{SESSIONS}/{sid}"), None, ""),
        case(Method::PUT, format!("{SESSIONS}/{sid}/timeout"), JSON, "{}"),
        case(Method::DELETE, "/api/agents", None, ""),
        // Bodies that are not JSON objects, or not JSON at all.
        case(Method::POST, SESSIONS, JSON, "{\"agentId\":"),
        case(Method::POST, SESSIONS, JSON, "[]"),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(r#"[{{"agentId":"{agent}","userId":"{user}"}}]"#),
        ),
        case(Method::POST, SESSIONS, JSON, "null"),
        case(Method::POST, SESSIONS, JSON, "\"agentId\""),
        case(Method::POST, SESSIONS, JSON, vec![0xff, 0xfe, 0x00, 0x7b]),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            [
                format!(r#"{{"agentId":"{agent}","userId":""#).as_bytes(),
                &[0xc3, 0x28],
                b"\"}",
            ]
            .concat(),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            b"{\"agentId\":\"\xc3\x28\",\"userId\":\"\xed\xa0\x80\"}".to_vec(),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(&format!(r#""metadata":{}"#, nested(10_000))),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)),
        ),
        case(Method::POST, SESSIONS, JSON, "\u{feff}{}"),
        // Numbers: too big, as strings, ids as numbers.
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"timeoutMinutes":1e309}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"timeoutMinutes":-1e309}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"timeoutMinutes":"30"}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"maxDurationMinutes":"NaN"}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(r#"{{"agentId":{},"userId":"{user}"}}"#, agent.as_u128()),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            r#"{"agentId":1e400,"userId":123456789012345678901234567890}"#,
        ),
        // Unicode and odd ids in bodies.
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(r#"{{"agentId":"{}","userId":"{user}"}}"#, "é".repeat(18)),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(
                r#"{{"agentId":"{}","userId":"{user}"}}"#,
                agent.to_string().replace('-', "\u{2010}")
            ),
        ),
        // PATCH with bad numbers and bodies.
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":1e309}"#),
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":1e308}"#),
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":"30"}"#),
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":-0.0001}"#),
        case(Method::PATCH, &patch, JSON, vec![b'{', 0xff, b'}']),
        case(Method::PATCH, &patch, JSON, nested(10_000)),
        case(
            Method::PATCH,
            &patch,
            Some("application/json; charset=utf-8"),
            "[30]",
        ),
        // Odd ids in paths.
        case(Method::GET, format!("{SESSIONS}/%00"), None, ""),
        case(Method::DELETE, format!("{SESSIONS}/%00"), None, ""),
        case(Method::GET, format!("{SESSIONS}/%FF%FE"), None, ""),
        case(
            Method::POST,
            format!("{SESSIONS}/%E2%9C%93/heartbeat"),
            None,
            "",
        ),
        case(Method::POST, format!("{SESSIONS}/🦀/renew"), None, ""),
        case(Method::GET, format!("{SESSIONS}/{long_id}"), None, ""),
        case(Method::DELETE, format!("{SESSIONS}/{long_id}"), None, ""),
        case(
            Method::PATCH,
            format!("{SESSIONS}/{long_id}/timeout"),
            JSON,
            "{}",
        ),
        case(
            Method::GET,
            format!("{SESSIONS}/..%2F..%2Fetc%2Fpasswd"),
            None,
            "",
        ),
        case(Method::GET, format!("{SESSIONS}/{sid}%00"), None, ""),
        case(Method::GET, "/api/agents/%00", None, ""),
        case(Method::DELETE, format!("/api/agents/{long_id}"), None, ""),
        // Odd query values.
        case(Method::GET, format!("{SESSIONS}?limit=1e3"), None, ""),
        case(Method::GET, format!("{SESSIONS}?limit=%00"), None, ""),
        case(
            Method::GET,
            format!("{SESSIONS}?limit=18446744073709551616"),
            None,
            "",
        ),
        case(
            Method::GET,
            format!("{SESSIONS}?offset=18446744073709551616"),
            None,
            "",
        ),
        case(
            Method::GET,
            format!("{SESSIONS}?agentId=%F0%9F%A6%80"),
            None,
            "",
        ),
        // Agents.
        case(Method::POST, "/api/agents", JSON, "[]"),
        case(Method::POST, "/api/agents", JSON, vec![0xff]),
        case(
            Method::POST,
            "/api/agents",
            JSON,
            r#"{"name":"a","sessionDefaults":{"timeoutMinutes":1e309}}"#,
        ),
        case(
            Method::POST,
            "/api/agents",
            JSON,
            format!(r#"{{"name":{}}}"#, nested(10_000)),
        ),
    ];

    let sessions_before = session_count(&ctx).await;
    let agents_before = agent_count(&ctx).await;
    let state_before = state(&ctx.get(sid).await);
    for c in cases {
        let label = format!(
            "{} {} {:?} body {:?}",
            c.method,
            if c.path.len() > 120 {
                &c.path[..120]
            } else {
                &c.path
            },
            c.content_type,
            String::from_utf8_lossy(&c.body[..c.body.len().min(120)])
        );
        let (status, ct, body) = raw(c.method, &ctx.url(&c.path), c.content_type, c.body).await;
        assert!(
            (400..500).contains(&status),
            "{label}: status {status}, body {body}"
        );
        assert!(
            ct.starts_with("application/json"),
            "{label}: content type {ct:?}, status {status}"
        );
        let code = body["error"]["code"].as_str();
        assert!(
            code.is_some_and(|c| !c.is_empty() && c != "INTERNAL_SERVER_ERROR"),
            "{label}: code; body {body}"
        );
        assert!(
            body["error"]["message"].is_string(),
            "{label}: message; body {body}"
        );
        // Stamped by the server's clock (the test's mock), whichever layer refused the request.
        let now = agent_sessions_server::clock::Clock::now(&*ctx.clock)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert_eq!(
            body["error"]["timestamp"].as_str(),
            Some(now.as_str()),
            "{label}: timestamp; body {body}"
        );
        assert_eq!(
            session_count(&ctx).await,
            sessions_before,
            "{label}: a session was created or removed"
        );
        assert_eq!(
            agent_count(&ctx).await,
            agents_before,
            "{label}: an agent was created or removed"
        );
    }
    assert_eq!(
        state(&ctx.get(sid).await),
        state_before,
        "the session was changed by a malformed request"
    );
    let health = ctx.health().await;
    assert_eq!(health.status, "healthy");
    assert_eq!(health.active_sessions, 1);
}
