//! AWS key records (the upload answer), kept as the JSON the API returns.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::StoreError;

pub struct AwsKeyRow<'a> {
    pub id: &'a str,
    pub key_id: &'a str,
    pub arn: &'a str,
    pub kms_id: &'a str,
    pub region: &'a str,
    pub aliases: &'a [String],
    pub record: &'a Value,
    pub created_at: &'a str,
}

pub fn insert(conn: &rusqlite::Connection, r: &AwsKeyRow<'_>) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO aws_keys (id, key_id, arn, kms_id, region, aliases, record, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        params![
            r.id,
            r.key_id,
            r.arn,
            r.kms_id,
            r.region,
            serde_json::to_string(r.aliases).unwrap_or_else(|_| "[]".into()),
            r.record.to_string(),
            r.created_at
        ],
    )?;
    Ok(())
}

fn parse(text: String) -> Result<Value, StoreError> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// By record id, AWS key id or ARN.
pub fn get(conn: &rusqlite::Connection, id: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM aws_keys WHERE id = ?1 OR key_id = ?1 OR arn = ?1 \
             ORDER BY created_at DESC LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    text.map(parse).transpose()
}

#[derive(Default)]
pub struct ListFilter {
    pub keyid: Option<String>,
    pub region: Option<String>,
    pub alias: Option<String>,
    pub kms_id: Option<String>,
    pub skip: u32,
    pub limit: u32,
}

pub fn list(conn: &rusqlite::Connection, f: &ListFilter) -> Result<(u64, Vec<Value>), StoreError> {
    // Aliases are matched with or without the "alias/" prefix.
    let alias = f.alias.as_ref().map(|a| {
        let full = if a.starts_with("alias/") {
            a.clone()
        } else {
            format!("alias/{a}")
        };
        serde_json::to_string(&full).unwrap_or_default()
    });
    let where_sql = "WHERE (?1 IS NULL OR key_id = ?1 OR arn = ?1) AND (?2 IS NULL OR region = ?2) \
                     AND (?3 IS NULL OR instr(aliases, ?3) > 0) AND (?4 IS NULL OR kms_id = ?4)";
    let total: u64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM aws_keys {where_sql}"),
        params![f.keyid, f.region, alias, f.kms_id],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(&format!(
        "SELECT record FROM aws_keys {where_sql} ORDER BY created_at DESC, id LIMIT ?5 OFFSET ?6"
    ))?;
    let rows = stmt
        .query_map(
            params![f.keyid, f.region, alias, f.kms_id, f.limit, f.skip],
            |r| r.get::<_, String>(0),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let records = rows.into_iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    Ok((total, records))
}
