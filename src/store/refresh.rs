//! Refresh tokens: only their SHA-256 digests are stored, with the user, an expiry and the
//! family (the login) they belong to. A token is used once: the refresh grant retires it and
//! issues its successor in the same family, with the family's expiry. A retired token presented
//! again means it was copied, so the whole family is revoked.

use sha2::{Digest, Sha256};

use super::{Db, StoreError, now_rfc3339, params};

pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A refresh token to store: its id, its value and its family (the login it continues).
pub struct NewToken<'a> {
    pub id: &'a str,
    pub token: &'a str,
    pub family: &'a str,
}

/// The first token of a login.
pub fn insert(
    conn: &Db,
    new: &NewToken<'_>,
    username: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    conn.exec(
        "INSERT INTO refresh_tokens (id, digest, username, expires_at, created_at, family) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            new.id,
            digest(new.token),
            username,
            expires_at,
            now_rfc3339(),
            new.family
        ],
    )?;
    conn.exec(
        "DELETE FROM refresh_tokens WHERE expires_at < ?1",
        params![time::OffsetDateTime::now_utc().unix_timestamp() - 86_400],
    )?;
    Ok(())
}

/// What presenting a refresh token came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// The token was live: it is retired and `next` continues the family for `username`.
    Rotated { username: String, family: String },
    /// Unknown or expired.
    Unknown,
    /// Already used once: the family is revoked.
    Reused { username: String },
}

/// Redeems `token` at `now`: retires it and stores `next` in its family, in one transaction.
/// `next.family` is ignored (the family is the presented token's).
pub fn redeem(
    conn: &mut Db,
    token: &str,
    next: &NewToken<'_>,
    now: i64,
) -> Result<Redeemed, StoreError> {
    let tx = conn.transaction()?;
    let found: Option<(String, String, i64, Option<String>)> = tx.query_opt_map(
        "SELECT username, COALESCE(family, id), expires_at, retired_at \
             FROM refresh_tokens WHERE digest = ?1",
        params![digest(token)],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let out = match found {
        None => Redeemed::Unknown,
        Some((_, _, expires_at, _)) if expires_at <= now => Redeemed::Unknown,
        Some((username, family, _, Some(_))) => {
            tx.exec(
                "DELETE FROM refresh_tokens WHERE family = ?1",
                params![family],
            )?;
            Redeemed::Reused { username }
        }
        Some((username, family, expires_at, None)) => {
            // Retired only if nobody retired it meanwhile (two redeems of one token on
            // PostgreSQL both read it unretired): the loser is a reuse.
            let retired = tx.exec(
                "UPDATE refresh_tokens SET retired_at = ?1 WHERE digest = ?2 AND retired_at IS NULL",
                params![now_rfc3339(), digest(token)],
            )?;
            if retired == 0 {
                tx.exec(
                    "DELETE FROM refresh_tokens WHERE family = ?1",
                    params![family],
                )?;
                tx.commit()?;
                return Ok(Redeemed::Reused { username });
            }
            tx.exec(
                "INSERT INTO refresh_tokens (id, digest, username, expires_at, created_at, family) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    next.id,
                    digest(next.token),
                    username,
                    expires_at,
                    now_rfc3339(),
                    family
                ],
            )?;
            Redeemed::Rotated { username, family }
        }
    };
    tx.commit()?;
    Ok(out)
}

/// The user of the refresh token `id` (live or retired).
pub fn owner(conn: &Db, id: &str) -> Result<Option<String>, StoreError> {
    conn.query_opt_map(
        "SELECT username FROM refresh_tokens WHERE id = ?1",
        [id],
        |r| r.get(0),
    )
}

/// Revokes the token `id` and every token of its login; how many rows went.
pub fn revoke_family(conn: &Db, id: &str) -> Result<usize, StoreError> {
    conn.exec(
        "DELETE FROM refresh_tokens WHERE family = (SELECT COALESCE(family, id) FROM refresh_tokens WHERE id = ?1) OR id = ?1",
        [id],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::testing::each_backend;

    #[test]
    fn a_token_is_used_once_and_reuse_revokes_the_family() {
        each_backend(|c| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let first = NewToken {
                id: "1",
                token: "t1",
                family: "f",
            };
            insert(c, &first, "alice", now + 100).expect("insert");
            let second = NewToken {
                id: "2",
                token: "t2",
                family: "",
            };
            assert_eq!(
                redeem(c, "t1", &second, now).expect("redeem"),
                Redeemed::Rotated {
                    username: "alice".into(),
                    family: "f".into()
                }
            );
            let third = NewToken {
                id: "3",
                token: "t3",
                family: "",
            };
            // The retired token again: the family dies, the live successor with it.
            assert_eq!(
                redeem(c, "t1", &third, now).expect("reuse"),
                Redeemed::Reused {
                    username: "alice".into()
                }
            );
            assert_eq!(
                redeem(c, "t2", &third, now).expect("successor"),
                Redeemed::Unknown
            );
        });
    }

    #[test]
    fn expired_and_unknown_tokens_are_refused() {
        each_backend(|c| {
            let t = NewToken {
                id: "1",
                token: "t1",
                family: "f",
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            insert(c, &t, "alice", now + 50).expect("insert");
            let n = NewToken {
                id: "2",
                token: "t2",
                family: "",
            };
            assert_eq!(redeem(c, "t1", &n, now + 60).expect("r"), Redeemed::Unknown);
            assert_eq!(redeem(c, "zz", &n, now).expect("r"), Redeemed::Unknown);
        });
    }
}
