//! Conformance checks of idempotency keys: claiming (once, however many race for it), completing and
//! releasing a claim (its owner only), reading a record back, scoping by principal and operation, expiry, the
//! takeover of a stale claim, and the purge.

use super::*;

use agent_sessions_server::domain::{
    ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyRecord, KeyClaim, KeyState,
    StoredResponse,
};

pub(super) fn key(principal: &str, scope: &str, key: &str) -> IdempotencyKey {
    IdempotencyKey {
        principal: principal.into(),
        scope: scope.into(),
        key: key.into(),
    }
}

/// A claim of `key` for a request whose fingerprint is `body`'s, at `now`, by a new owner; claims made an hour
/// or more before `now` count as stale.
pub(super) fn claim_of(key: &IdempotencyKey, body: Value, now: DateTime<Utc>) -> KeyClaim {
    KeyClaim {
        key: key.clone(),
        fingerprint: Fingerprint::of_body(&body, &[]),
        owner: Uuid::new_v4(),
        now,
        stale_before: now - Duration::hours(1),
    }
}

fn held(outcome: ClaimOutcome) -> IdempotencyRecord {
    match outcome {
        ClaimOutcome::Held(record) => record,
        ClaimOutcome::Claimed => panic!("expected the key to be held"),
    }
}

async fn claimed(store: &dyn SessionStore, claim: &KeyClaim) {
    let outcome = store.claim_idempotency_key(claim).await.unwrap();
    assert_eq!(outcome, ClaimOutcome::Claimed, "{:?}", claim.key);
}

fn created(body: &str) -> StoredResponse {
    StoredResponse {
        status: 201,
        body: body.to_string(),
    }
}

pub(super) async fn idempotency_keys_claim_complete_and_replay(store: Arc<dyn SessionStore>) {
    let k = key("key:abc", "createSession", "retry-me");
    let first = claim_of(&k, json!({"userId": "u"}), at(0));
    claimed(&*store, &first).await;
    let record = store.get_idempotency_key(&k, at(1)).await.unwrap().unwrap();
    assert_eq!(
        record,
        IdempotencyRecord {
            key: k.clone(),
            fingerprint: first.fingerprint,
            owner: first.owner,
            state: KeyState::InFlight,
            created_at: at(0),
            expires_at: at(0) + Duration::hours(24),
        }
    );

    // A retry, or a request with another body, finds the first one in flight.
    let retry = claim_of(&k, json!({"userId": "u"}), at(5));
    assert_eq!(
        held(store.claim_idempotency_key(&retry).await.unwrap()),
        record
    );
    let other_body = claim_of(&k, json!({"userId": "v"}), at(5));
    assert_eq!(
        held(store.claim_idempotency_key(&other_body).await.unwrap()).fingerprint,
        first.fingerprint,
        "the record keeps the first request's fingerprint"
    );

    // Only the owner completes it, once; the body is kept byte for byte.
    let body = format!(r#"{{"sessionId":"s","note":{}}}"#, json!(awkward_text(300)));
    assert!(!store
        .complete_idempotency_key(&k, retry.owner, &created(&body))
        .await
        .unwrap());
    assert!(store
        .complete_idempotency_key(&k, first.owner, &created(&body))
        .await
        .unwrap());
    assert!(!store
        .complete_idempotency_key(&k, first.owner, &created("{}"))
        .await
        .unwrap());
    assert!(
        !store
            .release_idempotency_key(&k, first.owner)
            .await
            .unwrap(),
        "a completed key is not released"
    );
    let done = held(store.claim_idempotency_key(&retry).await.unwrap());
    assert_eq!(done.state, KeyState::Done(created(&body)));
    assert_eq!(done.created_at, at(0));
    assert_eq!(
        store.get_idempotency_key(&k, at(10)).await.unwrap(),
        Some(done)
    );

    // The same key of another principal, or for another operation, is another key.
    for other in [
        key("key:def", "createSession", "retry-me"),
        key("session:1", "createSession", "retry-me"),
        key("key:abc", "sendMessage:s", "retry-me"),
        key("key:abc", "createSession", "Retry-me"),
    ] {
        claimed(&*store, &claim_of(&other, json!({"userId": "u"}), at(20))).await;
    }
    assert_eq!(
        store
            .get_idempotency_key(&key("anonymous", "createSession", "retry-me"), at(20))
            .await
            .unwrap(),
        None
    );
}

pub(super) async fn a_released_idempotency_key_is_claimed_again(store: Arc<dyn SessionStore>) {
    let k = key("anonymous", "sendMessage:s", "k");
    let first = claim_of(&k, json!({"content": "hi"}), at(0));
    claimed(&*store, &first).await;
    assert!(!store
        .release_idempotency_key(&k, Uuid::new_v4())
        .await
        .unwrap());
    assert!(store
        .release_idempotency_key(&k, first.owner)
        .await
        .unwrap());
    assert_eq!(store.get_idempotency_key(&k, at(1)).await.unwrap(), None);
    assert!(!store
        .complete_idempotency_key(&k, first.owner, &created("{}"))
        .await
        .unwrap());
    // The retry may even carry another body: the key is free.
    let retry = claim_of(&k, json!({"content": "hello"}), at(2));
    claimed(&*store, &retry).await;
    let record = store.get_idempotency_key(&k, at(2)).await.unwrap().unwrap();
    assert_eq!(
        (record.owner, record.fingerprint),
        (retry.owner, retry.fingerprint)
    );
}

pub(super) async fn idempotency_keys_expire_and_stale_claims_are_taken_over(
    store: Arc<dyn SessionStore>,
) {
    let day = Duration::hours(24);
    // Expired: gone from reads at `expires_at`, and claimed again whatever the body.
    let k = key("anonymous", "createSession", "old");
    let first = claim_of(&k, json!({"a": 1}), at(0));
    claimed(&*store, &first).await;
    store
        .complete_idempotency_key(&k, first.owner, &created("{}"))
        .await
        .unwrap();
    let almost = at(0) + day - Duration::milliseconds(1);
    assert!(store
        .get_idempotency_key(&k, almost)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.get_idempotency_key(&k, at(0) + day).await.unwrap(),
        None
    );
    let later = claim_of(&k, json!({"a": 2}), at(0) + day);
    claimed(&*store, &later).await;
    let record = store
        .get_idempotency_key(&k, at(0) + day)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, KeyState::InFlight);
    assert_eq!(record.expires_at, at(0) + day + day);

    // In flight past its lease: the same request takes it over, and the first owner can no longer settle it.
    let k = key("anonymous", "createSession", "stuck");
    let first = claim_of(&k, json!({"a": 1}), at(0));
    claimed(&*store, &first).await;
    let not_yet = KeyClaim {
        stale_before: at(-1),
        ..claim_of(&k, json!({"a": 1}), at(60_000))
    };
    held(store.claim_idempotency_key(&not_yet).await.unwrap());
    let other_body = KeyClaim {
        stale_before: at(0),
        ..claim_of(&k, json!({"a": 2}), at(60_000))
    };
    held(store.claim_idempotency_key(&other_body).await.unwrap());
    let takeover = KeyClaim {
        stale_before: at(0),
        ..claim_of(&k, json!({"a": 1}), at(60_000))
    };
    claimed(&*store, &takeover).await;
    assert!(!store
        .complete_idempotency_key(&k, first.owner, &created("{}"))
        .await
        .unwrap());
    assert!(!store
        .release_idempotency_key(&k, first.owner)
        .await
        .unwrap());
    let record = store
        .get_idempotency_key(&k, at(60_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.owner, record.created_at),
        (takeover.owner, at(60_000))
    );
    // A completed key is never stale.
    assert!(store
        .complete_idempotency_key(&k, takeover.owner, &created("{}"))
        .await
        .unwrap());
    let much_later = KeyClaim {
        stale_before: at(3_600_000),
        ..claim_of(&k, json!({"a": 1}), at(3_600_000))
    };
    assert!(matches!(
        held(store.claim_idempotency_key(&much_later).await.unwrap()).state,
        KeyState::Done(_)
    ));
}

pub(super) async fn expired_idempotency_keys_are_purged_in_batches(store: Arc<dyn SessionStore>) {
    let day = Duration::hours(24);
    for i in 0..5 {
        let claim = claim_of(
            &key("p", "createSession", &format!("early{i}")),
            json!({}),
            at(i),
        );
        claimed(&*store, &claim).await;
    }
    let late = key("p", "createSession", "late");
    claimed(&*store, &claim_of(&late, json!({}), at(3_600_000))).await;
    assert_eq!(
        store
            .purge_idempotency_keys(at(4) + day - Duration::milliseconds(1), 10)
            .await
            .unwrap(),
        4
    );
    let cutoff = at(10) + day;
    assert_eq!(store.purge_idempotency_keys(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.purge_idempotency_keys(cutoff, 2).await.unwrap(), 0);
    assert!(store
        .get_idempotency_key(&late, cutoff)
        .await
        .unwrap()
        .is_some());
    // A purged key is a new key.
    let again = claim_of(
        &key("p", "createSession", "early0"),
        json!({"new": true}),
        cutoff,
    );
    claimed(&*store, &again).await;
}

pub(super) async fn concurrent_idempotency_claims_take_a_key_once(store: Arc<dyn SessionStore>) {
    let k = key("anonymous", "sendMessage:s", "racing");
    let winners = concurrent_key_claims(std::slice::from_ref(&store), &k, 20).await;
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let record = store.get_idempotency_key(&k, at(0)).await.unwrap().unwrap();
    assert_eq!(record.owner, winners[0]);
}

/// `n` simultaneous claims of `key` (one body) spread over `stores`; returns the owners that claimed it, after
/// checking that every other claim found the winner's record.
pub(super) async fn concurrent_key_claims(
    stores: &[Arc<dyn SessionStore>],
    k: &IdempotencyKey,
    n: usize,
) -> Vec<Uuid> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let claim = claim_of(k, json!({"content": "once"}), at(0));
            tokio::spawn(async move {
                let outcome = store.claim_idempotency_key(&claim).await.expect("claim");
                (claim.owner, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut holders = Vec::new();
    for task in tasks {
        match task.await.expect("claim task") {
            (owner, ClaimOutcome::Claimed) => winners.push(owner),
            (_, ClaimOutcome::Held(record)) => holders.push(record.owner),
        }
    }
    assert!(
        holders.iter().all(|owner| winners.contains(owner)),
        "every loser found the winner"
    );
    winners
}
