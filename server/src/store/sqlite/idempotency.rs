//! The SQLite store's idempotency keys: the writes the writer thread applies (claim, complete, release, purge)
//! and the read of a key's record. The writer applies one write at a time, so a claim's insert and its look at
//! the record that holds the key cannot race anything.

use std::sync::LazyLock;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{self as sqlite_rows, Params};
use crate::domain::{ClaimOutcome, IdempotencyKey, IdempotencyRecord, KeyClaim, StoredResponse};
use crate::store::rows;
use crate::store::schema::{claim_key, complete_key, release_key, select_key};

/// Claims the key, or returns the record that holds it.
pub fn claim(conn: &Connection, claim: &KeyClaim) -> rusqlite::Result<ClaimOutcome> {
    static SQL: LazyLock<String> = LazyLock::new(|| claim_key('?'));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_key_claim(&mut args, claim)?;
    if args.execute()? > 0 {
        return Ok(ClaimOutcome::Claimed);
    }
    // The conflict left the row that holds the key; `now` as the expiry bound finds it (the claim would have
    // taken over an expired one).
    let held = select(conn, &claim.key, crate::store::to_ms(claim.now))?;
    held.map(ClaimOutcome::Held)
        .ok_or(rusqlite::Error::QueryReturnedNoRows)
}

/// Completes `owner`'s claim with `response`; rows changed (0: not `owner`'s).
pub fn complete(
    conn: &Connection,
    key: &IdempotencyKey,
    owner: uuid::Uuid,
    response: &StoredResponse,
) -> rusqlite::Result<usize> {
    static SQL: LazyLock<String> = LazyLock::new(|| complete_key('?'));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_key_completion(&mut args, key, owner, response)?;
    args.execute()
}

/// Releases `owner`'s in-flight claim; rows changed (0: not `owner`'s).
pub fn release(
    conn: &Connection,
    key: &IdempotencyKey,
    owner: uuid::Uuid,
) -> rusqlite::Result<usize> {
    static SQL: LazyLock<String> = LazyLock::new(|| release_key('?'));
    let mut statement = conn.prepare_cached(&SQL)?;
    let mut args = Params::new(&mut statement);
    rows::bind_key_owner(&mut args, key, owner)?;
    args.execute()
}

/// Deletes up to `limit` records expired at `now` (epoch ms), oldest first, along the expiry index.
pub fn purge(conn: &Connection, now: i64, limit: u32) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys \
         WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
    )?
    .execute(params![now, limit])
}

/// The look-up of a key's record not expired at an instant: `principal, scope, key, now` (epoch ms).
pub static SELECT: LazyLock<String> = LazyLock::new(|| select_key('?'));

/// The record of `key` not expired at `now` (epoch ms), read inside the writer's transaction.
fn select(
    conn: &Connection,
    key: &IdempotencyKey,
    now: i64,
) -> rusqlite::Result<Option<IdempotencyRecord>> {
    conn.prepare_cached(&SELECT)?
        .query_row(
            params![key.principal, key.scope, key.key, now],
            sqlite_rows::idempotency_record(),
        )
        .optional()
}
