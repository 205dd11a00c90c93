//! Policy templates, kept as the JSON the API returns.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::StoreError;

/// `Ok(false)` when the name is taken.
pub fn insert(
    conn: &rusqlite::Connection,
    id: &str,
    name: &str,
    record: &Value,
    created_at: &str,
) -> Result<bool, StoreError> {
    match conn.execute(
        "INSERT INTO policy_templates (id, name, record, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, record.to_string(), created_at],
    ) {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn get(conn: &rusqlite::Connection, id_or_name: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM policy_templates WHERE id = ?1 OR name = ?1 LIMIT 1",
            [id_or_name],
            |r| r.get(0),
        )
        .optional()?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

pub fn list(
    conn: &rusqlite::Connection,
    skip: u32,
    limit: u32,
) -> Result<(u64, Vec<Value>), StoreError> {
    let total: u64 = conn.query_row("SELECT COUNT(*) FROM policy_templates", [], |r| r.get(0))?;
    let mut stmt = conn.prepare(
        "SELECT record FROM policy_templates ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2",
    )?;
    let rows = stmt
        .query_map(params![limit, skip], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let records = rows
        .into_iter()
        .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, records))
}

pub fn delete(conn: &rusqlite::Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM policy_templates WHERE id = ?1", [id])? > 0)
}
