//! AWS key records (the upload answer), kept as the JSON the API returns.

use serde_json::Value;

use super::{Db, StoreError, params};

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

pub fn insert(conn: &Db, r: &AwsKeyRow<'_>) -> Result<(), StoreError> {
    conn.exec(
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
pub fn get(conn: &Db, id: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn.query_opt_map(
        "SELECT record FROM aws_keys WHERE id = ?1 OR key_id = ?1 OR arn = ?1 \
             ORDER BY created_at DESC LIMIT 1",
        [id],
        |r| r.get(0),
    )?;
    text.map(parse).transpose()
}

/// The record an upload attempt made (`upload.upload_id`): its id, key id and ARN.
pub fn by_upload_id(
    conn: &Db,
    upload_id: &str,
) -> Result<Option<(String, String, String)>, StoreError> {
    let field = conn.json_text("record", &["upload", "upload_id"]);
    conn.query_opt_map(
        &format!(
            "SELECT id, key_id, arn FROM aws_keys WHERE {field} = ?1 ORDER BY created_at LIMIT 1"
        ),
        [upload_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// What the bridge needs to act on a record: where its key is, and the record itself.
#[derive(Debug, Clone)]
pub struct Located {
    pub id: String,
    pub key_id: String,
    pub kms_id: String,
    pub region: String,
    pub record: Value,
}

/// By record id, AWS key id or ARN (the newest record of a key id). On PostgreSQL the row is
/// locked for the rest of the transaction, so that a read-modify-write of a record on one
/// bridge never loses another bridge's write (SQLite's write lock does this by itself).
pub fn locate(conn: &Db, id: &str) -> Result<Option<Located>, StoreError> {
    let lock = match conn.dialect() {
        super::Dialect::Sqlite => "",
        super::Dialect::Postgres => " FOR UPDATE",
    };
    let row: Option<(String, String, String, String, String)> = conn.query_opt_map(
        &format!(
            "SELECT id, key_id, kms_id, region, record FROM aws_keys \
             WHERE id = ?1 OR key_id = ?1 OR arn = ?1 ORDER BY created_at DESC LIMIT 1{lock}"
        ),
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    row.map(|(id, key_id, kms_id, region, text)| {
        Ok(Located {
            id,
            key_id,
            kms_id,
            region,
            record: parse(text)?,
        })
    })
    .transpose()
}

/// Replaces a record (and the aliases it is found by).
pub fn update(
    conn: &Db,
    id: &str,
    record: &Value,
    aliases: &[String],
    updated_at: &str,
) -> Result<bool, StoreError> {
    Ok(conn.exec(
        "UPDATE aws_keys SET record = ?2, aliases = ?3, updated_at = ?4 WHERE id = ?1",
        params![
            id,
            record.to_string(),
            serde_json::to_string(aliases).unwrap_or_else(|_| "[]".into()),
            updated_at
        ],
    )? == 1)
}

pub fn delete(conn: &Db, id: &str) -> Result<bool, StoreError> {
    Ok(conn.exec("DELETE FROM aws_keys WHERE id = ?1", [id])? == 1)
}

/// The ids of the records in the given kms connections and regions (empty: all), oldest
/// synchronized first.
pub fn ids_for_sync(
    conn: &Db,
    kms_ids: &[String],
    regions: &[String],
) -> Result<Vec<String>, StoreError> {
    // Never synchronized first (SQLite sorts NULL first; PostgreSQL is told to).
    let synced = conn.json_text("record", &["synced_at"]);
    let nulls = match conn.dialect() {
        super::Dialect::Sqlite => "",
        super::Dialect::Postgres => " NULLS FIRST",
    };
    let stmt = conn.prepare_sql(&format!(
        "SELECT id, kms_id, region FROM aws_keys ORDER BY {synced}{nulls}, id"
    ))?;
    let rows = stmt
        .query_map(params![], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter(|(_, k, r)| {
            (kms_ids.is_empty() || kms_ids.contains(k))
                && (regions.is_empty() || regions.contains(r))
        })
        .map(|(id, _, _)| id)
        .collect())
}

/// The ids of the records whose number at `path` (field names, such as
/// `rotation_schedule.next_unix`) is at most `now`: what a schedule has made due, the most
/// overdue first.
pub fn due(conn: &Db, path: &[&str], now: i64) -> Result<Vec<String>, StoreError> {
    let at = conn.json_number("record", path);
    let stmt = conn.prepare_sql(&format!(
        "SELECT id FROM aws_keys WHERE {at} <= ?1 ORDER BY {at}, id"
    ))?;
    let ids = stmt
        .query_map(params![now], |r| r.get::<String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// Claims the due work of record `id`: if its number at `path` is at most `now`, it is set
/// to `hold_until` (so no other bridge takes the same work meanwhile, and a bridge that dies
/// doing it leaves it due again then) and `true` is answered.
pub fn claim_due(
    conn: &mut Db,
    id: &str,
    path: &[&str],
    now: i64,
    hold_until: i64,
) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let Some(loc) = locate(&tx, id)? else {
        return Ok(false);
    };
    let mut record = loc.record;
    let mut at = &mut record;
    for p in &path[..path.len().saturating_sub(1)] {
        at = &mut at[*p];
    }
    let Some(last) = path.last() else {
        return Ok(false);
    };
    if at[*last].as_i64().is_none_or(|due| due > now) {
        return Ok(false);
    }
    at[*last] = serde_json::json!(hold_until);
    let changed = tx.exec(
        "UPDATE aws_keys SET record = ?2, updated_at = ?3 WHERE id = ?1",
        params![loc.id, record.to_string(), super::now_rfc3339()],
    )?;
    tx.commit()?;
    Ok(changed == 1)
}

#[derive(Default)]
pub struct ListFilter {
    pub id: Option<String>,
    pub keyid: Option<String>,
    pub region: Option<String>,
    pub alias: Option<String>,
    pub kms_id: Option<String>,
    /// Fields of the record that must equal the given text (JSON pointer, value): strings
    /// compare without regard to case, booleans as `true`/`false`.
    pub fields: Vec<(&'static str, String)>,
    /// Only records whose material expires at or before this Unix time.
    pub expiring_before: Option<i64>,
    pub skip: u32,
    pub limit: u32,
}

/// When the record's material expires (a lease's end, or an imported `ValidTo`), as Unix time.
pub fn material_expires_unix(record: &Value) -> Option<i64> {
    if let Some(t) = record["lease"]["expires_unix"].as_i64() {
        return Some(t);
    }
    if record["aws_param"]["ExpirationModel"] != "KEY_MATERIAL_EXPIRES" {
        return None;
    }
    let v = record["aws_param"]["ValidTo"].as_str()?;
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn field_matches(record: &Value, pointer: &str, want: &str) -> bool {
    match record.pointer(pointer) {
        Some(Value::String(s)) => s.eq_ignore_ascii_case(want),
        Some(Value::Bool(b)) => want.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => n.to_string() == want,
        Some(Value::Array(a)) => a
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(want))),
        Some(Value::Null) | None => want.is_empty(),
        Some(Value::Object(_)) => false,
    }
}

pub fn list(conn: &Db, f: &ListFilter) -> Result<(u64, Vec<Value>), StoreError> {
    // Aliases are matched with or without the "alias/" prefix.
    let alias = f.alias.as_ref().map(|a| {
        let full = if a.starts_with("alias/") {
            a.clone()
        } else {
            format!("alias/{a}")
        };
        serde_json::to_string(&full).unwrap_or_default()
    });
    let contains = match conn.dialect() {
        super::Dialect::Sqlite => "instr(aliases, ?3) > 0",
        super::Dialect::Postgres => "strpos(aliases, ?3) > 0",
    };
    let where_sql = format!(
        "WHERE (CAST(?1 AS TEXT) IS NULL OR key_id = ?1 OR arn = ?1) AND (CAST(?2 AS TEXT) IS NULL OR region = ?2) \
                     AND (CAST(?3 AS TEXT) IS NULL OR {contains}) AND (CAST(?4 AS TEXT) IS NULL OR kms_id = ?4) \
                     AND (CAST(?5 AS TEXT) IS NULL OR id = ?5)"
    );
    let stmt = conn.prepare_sql(&format!(
        "SELECT record FROM aws_keys {where_sql} ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt
        .query_map(params![f.keyid, f.region, alias, f.kms_id, f.id], |r| {
            r.get::<String>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut records = Vec::new();
    let mut total = 0u64;
    for text in rows {
        let record = parse(text)?;
        if !f
            .fields
            .iter()
            .all(|(p, want)| field_matches(&record, p, want))
        {
            continue;
        }
        if let Some(before) = f.expiring_before
            && material_expires_unix(&record).is_none_or(|t| t > before)
        {
            continue;
        }
        if total >= u64::from(f.skip) && records.len() < f.limit as usize {
            records.push(record);
        }
        total += 1;
    }
    Ok((total, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_match_as_ciphertrust_filters_them() {
        let r = serde_json::json!({"gone": false, "aws_param": {"KeyState": "Enabled",
            "Alias": ["alias/a"], "MultiRegion": true}});
        assert!(field_matches(&r, "/aws_param/KeyState", "enabled"));
        assert!(!field_matches(&r, "/aws_param/KeyState", "Disabled"));
        assert!(field_matches(&r, "/gone", "false"));
        assert!(field_matches(&r, "/aws_param/MultiRegion", "TRUE"));
        assert!(field_matches(&r, "/aws_param/Alias", "alias/a"));
        assert!(!field_matches(&r, "/nothing", "x"));
    }
}
