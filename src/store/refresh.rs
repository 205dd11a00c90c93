//! Refresh tokens: only their SHA-256 digests are stored, with the user and an expiry.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{StoreError, now_rfc3339};

pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub fn insert(
    conn: &rusqlite::Connection,
    id: &str,
    token: &str,
    username: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO refresh_tokens (id, digest, username, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, digest(token), username, expires_at, now_rfc3339()],
    )?;
    conn.execute(
        "DELETE FROM refresh_tokens WHERE expires_at < ?1",
        params![time::OffsetDateTime::now_utc().unix_timestamp() - 86_400],
    )?;
    Ok(())
}

/// The user of a refresh token that exists and has not expired at `now`.
pub fn user_of(
    conn: &rusqlite::Connection,
    token: &str,
    now: i64,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, username FROM refresh_tokens WHERE digest = ?1 AND expires_at > ?2",
            params![digest(token), now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}
