//! The PostgreSQL store's idempotency keys: claiming one (one `INSERT ... ON CONFLICT` on the primary key, so
//! that of several instances racing on a key exactly one claims it), completing and releasing a claim, reading
//! a record, and purging expired ones. Each statement runs on its own (autocommit): none needs a transaction.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnection};
use uuid::Uuid;

use super::connection::backend;
use super::rows::one;
use crate::domain::{ClaimOutcome, IdempotencyKey, IdempotencyRecord, KeyClaim, StoredResponse};
use crate::store::schema::{claim_key, complete_key, release_key, select_key};
use crate::store::{rows, to_ms, StoreError};

/// Claims the key, or returns the record that holds it. Between a lost insert and the read of the winner,
/// the winner may release its claim (its request failed): then the claim is tried again.
pub async fn claim(conn: &mut PgConnection, claim: &KeyClaim) -> Result<ClaimOutcome, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| claim_key('$'));
    // Bounded, though each retry needs a claim to have been made and released in between.
    for _ in 0..100 {
        let mut args = PgArguments::default();
        rows::bind_key_claim(&mut args, claim).map_err(backend)?;
        let inserted = sqlx::query_with(&SQL, args)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        if inserted.rows_affected() > 0 {
            return Ok(ClaimOutcome::Claimed);
        }
        if let Some(held) = get(conn, &claim.key, claim.now).await? {
            return Ok(ClaimOutcome::Held(held));
        }
    }
    Err(StoreError::Unavailable(format!(
        "idempotency key '{}' is claimed and released too often to claim it",
        claim.key.key
    )))
}

/// Completes `owner`'s claim with `response`; whether it was `owner`'s.
pub async fn complete(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    owner: Uuid,
    response: &StoredResponse,
) -> Result<bool, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| complete_key('$'));
    let mut args = PgArguments::default();
    rows::bind_key_completion(&mut args, key, owner, response).map_err(backend)?;
    let done = sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() > 0)
}

/// Releases `owner`'s in-flight claim; whether it was `owner`'s.
pub async fn release(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    owner: Uuid,
) -> Result<bool, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| release_key('$'));
    let mut args = PgArguments::default();
    rows::bind_key_owner(&mut args, key, owner).map_err(backend)?;
    let done = sqlx::query_with(&SQL, args)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() > 0)
}

/// The record of `key`, unless it has expired at `now`.
pub async fn get(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    now: DateTime<Utc>,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| select_key('$'));
    let row = sqlx::query(&SQL)
        .bind(key.principal.as_str())
        .bind(key.scope.as_str())
        .bind(key.key.as_str())
        .bind(to_ms(now))
        .fetch_optional(conn)
        .await
        .map_err(backend)?;
    one(row, rows::idempotency_record)
}

/// Deletes up to `limit` records expired at `now`; how many. SKIP LOCKED, as for sessions: the sweepers of
/// several instances each take rows nobody else holds.
pub async fn purge(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "WITH victims AS ( \
           SELECT principal, scope, key FROM idempotency_keys WHERE expires_at <= $1 \
           ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         DELETE FROM idempotency_keys k USING victims v \
         WHERE k.principal = v.principal AND k.scope = v.scope AND k.key = v.key",
    )
    .bind(to_ms(now))
    .bind(i64::from(limit))
    .execute(conn)
    .await
    .map_err(backend)?;
    Ok(done.rows_affected())
}
