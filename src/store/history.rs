//! The per-key history: every upload and key action, who asked for it, the AWS calls it made
//! and how it ended. Entries are appended, never changed.

use serde::Serialize;
use serde_json::Value;

use super::{Db, StoreError, now_rfc3339, params};

/// One entry to append.
#[derive(Debug, Clone)]
pub struct Entry {
    pub record_id: String,
    pub key_id: String,
    pub action: &'static str,
    pub actor: String,
    pub request_id: String,
    /// `success`, `failed` or `refused`.
    pub outcome: &'static str,
    pub aws_calls: Vec<&'static str>,
    pub detail: Value,
}

pub fn append(conn: &Db, e: &Entry) -> Result<(), StoreError> {
    conn.exec(
        "INSERT INTO key_history (id, record_id, key_id, action, actor, request_id, outcome, \
         aws_calls, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            uuid::Uuid::new_v4().to_string(),
            e.record_id,
            e.key_id,
            e.action,
            e.actor,
            e.request_id,
            e.outcome,
            serde_json::to_string(&e.aws_calls).unwrap_or_else(|_| "[]".into()),
            e.detail.to_string(),
            now_rfc3339(),
        ],
    )?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Stored {
    pub id: String,
    pub record_id: String,
    pub key_id: String,
    pub action: String,
    pub actor: String,
    pub request_id: String,
    pub outcome: String,
    pub aws_calls: Value,
    pub detail: Value,
    pub at: String,
}

/// A key's history, oldest first, and how many entries it has.
pub fn of(
    conn: &Db,
    record_id: &str,
    skip: u32,
    limit: u32,
) -> Result<(u64, Vec<Stored>), StoreError> {
    let total: u64 = conn.query_one_map(
        "SELECT COUNT(*) FROM key_history WHERE record_id = ?1",
        [record_id],
        |r| r.get(0),
    )?;
    let stmt = conn.prepare_sql(
        "SELECT id, record_id, key_id, action, actor, request_id, outcome, aws_calls, detail, at \
         FROM key_history WHERE record_id = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3",
    )?;
    let rows = stmt
        .query_map(params![record_id, limit, skip], |r| {
            let calls: String = r.get(7)?;
            let detail: String = r.get(8)?;
            Ok(Stored {
                id: r.get(0)?,
                record_id: r.get(1)?,
                key_id: r.get(2)?,
                action: r.get(3)?,
                actor: r.get(4)?,
                request_id: r.get(5)?,
                outcome: r.get(6)?,
                aws_calls: serde_json::from_str(&calls).unwrap_or(Value::Null),
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                at: r.get(9)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}
