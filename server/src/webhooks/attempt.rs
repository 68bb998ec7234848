//! One delivery attempt: the signed POST of a delivery's body to its webhook, through the agents' HTTP client
//! and under their egress policy, and whether the receiver took it (a 2xx) or why not.

use std::time::Duration;

use crate::agents::response::describe;
use crate::agents::Backends;
use crate::domain::Delivery;

use super::signature;

/// What the receiver is told it talks to.
const USER_AGENT: &str = concat!("agent-sessions-webhooks/", env!("CARGO_PKG_VERSION"));

/// POSTs `delivery` signed at `timestamp` (unix seconds); Ok on a 2xx, otherwise why it failed (for the log and
/// the delivery's `last_error`; never the URL, which may carry a token).
pub async fn attempt(
    backends: &Backends,
    delivery: &Delivery,
    timestamp: i64,
    timeout: Duration,
) -> Result<(), String> {
    // Checked before every attempt, not only at registration: the webhook may predate the policy in force.
    backends
        .policy()
        .check_url("url", &delivery.url)
        .map_err(|refusal| refusal.message)?;
    if let Some(why) = backends.tls_refusal(&delivery.url) {
        return Err(why);
    }
    let key = signature::key(&delivery.secret)
        .ok_or_else(|| "the webhook's stored secret is damaged".to_string())?;
    let id = delivery.event_id.to_string();
    let signed = signature::sign(&key, &id, timestamp, delivery.body.as_bytes());
    let response = backends
        .http()
        .post(&delivery.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, USER_AGENT)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signed)
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(describe)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}
