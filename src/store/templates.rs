//! Policy templates, kept as the JSON the API returns.

use serde_json::Value;

use super::{Db, StoreError, params};

/// `Ok(false)` when the name is taken.
pub fn insert(
    conn: &Db,
    id: &str,
    name: &str,
    record: &Value,
    created_at: &str,
) -> Result<bool, StoreError> {
    match conn.exec(
        "INSERT INTO policy_templates (id, name, record, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, record.to_string(), created_at],
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.is_constraint() => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many AWS key records name the template.
pub fn usage_count(conn: &Db, id: &str) -> Result<u64, StoreError> {
    let field = conn.json_text("record", &["policy_template_id"]);
    conn.query_one_map(
        &format!("SELECT COUNT(*) FROM aws_keys WHERE {field} = ?1"),
        params![id],
        |r| r.get(0),
    )
}

pub fn get(conn: &Db, id_or_name: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn.query_opt_map(
        "SELECT record FROM policy_templates WHERE id = ?1 OR name = ?1 LIMIT 1",
        [id_or_name],
        |r| r.get(0),
    )?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

pub fn list(conn: &Db, skip: u32, limit: u32) -> Result<(u64, Vec<Value>), StoreError> {
    let total: u64 =
        conn.query_one_map("SELECT COUNT(*) FROM policy_templates", params![], |r| {
            r.get(0)
        })?;
    let stmt = conn.prepare_sql(
        "SELECT record FROM policy_templates ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2",
    )?;
    let rows = stmt
        .query_map(params![limit, skip], |r| r.get::<String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let records = rows
        .into_iter()
        .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, records))
}

pub fn delete(conn: &Db, id: &str) -> Result<bool, StoreError> {
    Ok(conn.exec("DELETE FROM policy_templates WHERE id = ?1", [id])? > 0)
}
