//! Vault keys as stored: metadata plus the key wrapped under the bridge token's KEK.

use super::{Db, Row, StoreError, params};

#[derive(Debug, Clone)]
pub struct VaultKeyRow {
    pub id: String,
    pub name: String,
    pub algorithm: String,
    pub size: u32,
    pub kind: String,
    pub value_len: u32,
    pub usage_mask: u32,
    pub origin: String,
    pub wrapped: Vec<u8>,
    pub wrap_mechanism: u64,
    pub kek_label: String,
    pub kek_id: Vec<u8>,
    pub token_serial: String,
    pub public_key: Option<String>,
    /// CipherTrust's curveid, for EC keys.
    pub curve: Option<String>,
    /// meta, labels and flags the caller gave, echoed back.
    pub extra: String,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "id, name, algorithm, size, kind, value_len, usage_mask, origin, wrapped, \
    wrap_mechanism, kek_label, kek_id, token_serial, public_key, extra, created_at, updated_at, curve";

fn from_row(r: &Row) -> Result<VaultKeyRow, StoreError> {
    Ok(VaultKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        algorithm: r.get(2)?,
        size: r.get(3)?,
        kind: r.get(4)?,
        value_len: r.get(5)?,
        usage_mask: r.get(6)?,
        origin: r.get(7)?,
        wrapped: r.get(8)?,
        wrap_mechanism: r.get::<i64>(9)? as u64,
        kek_label: r.get(10)?,
        kek_id: r.get(11)?,
        token_serial: r.get(12)?,
        public_key: r.get(13)?,
        extra: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        curve: r.get(17)?,
    })
}

/// Inserts a key; `Ok(false)` when the name is taken.
pub fn insert(conn: &Db, k: &VaultKeyRow) -> Result<bool, StoreError> {
    let res = conn.exec(
        &format!("INSERT INTO vault_keys ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)"),
        params![
            k.id,
            k.name,
            k.algorithm,
            k.size,
            k.kind,
            k.value_len,
            k.usage_mask,
            k.origin,
            k.wrapped,
            k.wrap_mechanism as i64,
            k.kek_label,
            k.kek_id,
            k.token_serial,
            k.public_key,
            k.extra,
            k.created_at,
            k.updated_at,
            k.curve
        ],
    );
    match res {
        Ok(_) => Ok(true),
        Err(e) if e.is_constraint() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Notes in the key's `extra` that its material was exported (wrapped).
pub fn mark_exported(conn: &Db, id: &str) -> Result<bool, StoreError> {
    let sql = match conn.dialect() {
        super::Dialect::Sqlite => {
            "UPDATE vault_keys SET extra = json_set(extra, '$.exported', json('true')) WHERE id = ?1"
        }
        super::Dialect::Postgres => {
            "UPDATE vault_keys SET extra = (extra::jsonb || '{\"exported\": true}'::jsonb)::text WHERE id = ?1"
        }
    };
    Ok(conn.exec(sql, params![id])? == 1)
}

/// By id, else by name.
pub fn get(conn: &Db, id_or_name: &str) -> Result<Option<VaultKeyRow>, StoreError> {
    let by_id = conn.query_opt_map(
        &format!("SELECT {COLUMNS} FROM vault_keys WHERE id = ?1 AND deleted_at IS NULL"),
        [id_or_name],
        from_row,
    )?;
    if by_id.is_some() {
        return Ok(by_id);
    }
    conn.query_opt_map(
        &format!("SELECT {COLUMNS} FROM vault_keys WHERE name = ?1 AND deleted_at IS NULL"),
        [id_or_name],
        from_row,
    )
}

/// A deleted key (by id or name) and when it was deleted.
pub fn get_deleted(
    conn: &Db,
    id_or_name: &str,
) -> Result<Option<(VaultKeyRow, String)>, StoreError> {
    conn.query_opt_map(
        &format!(
            "SELECT {COLUMNS}, deleted_at FROM vault_keys \
                 WHERE (id = ?1 OR name = ?1) AND deleted_at IS NOT NULL \
                 ORDER BY deleted_at DESC LIMIT 1"
        ),
        [id_or_name],
        |r| Ok((from_row(r)?, r.get::<String>(18)?)),
    )
}

/// Marks a key deleted; it stays (wrapped) until purged.
pub fn soft_delete(conn: &Db, id: &str, now: &str) -> Result<bool, StoreError> {
    Ok(conn.exec(
        "UPDATE vault_keys SET deleted_at = ?2, updated_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
        params![id, now],
    )? == 1)
}

pub fn restore(conn: &Db, id: &str, now: &str) -> Result<bool, StoreError> {
    Ok(conn.exec(
        "UPDATE vault_keys SET deleted_at = NULL, updated_at = ?2 WHERE id = ?1 AND deleted_at IS NOT NULL",
        params![id, now],
    )? == 1)
}

/// Removes for good the keys deleted before `before` (RFC 3339); their ids.
pub fn purge(conn: &Db, before: &str) -> Result<Vec<String>, StoreError> {
    let stmt = conn.prepare_sql(
        "DELETE FROM vault_keys WHERE deleted_at IS NOT NULL AND deleted_at < ?1 RETURNING id",
    )?;
    let ids = stmt
        .query_map([before], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

pub struct ListFilter {
    pub name: Option<String>,
    pub algorithm: Option<String>,
    pub id: Option<String>,
    pub size: Option<u32>,
    pub skip: u32,
    pub limit: u32,
}

pub fn list(conn: &Db, f: &ListFilter) -> Result<(u64, Vec<VaultKeyRow>), StoreError> {
    let where_sql = "WHERE deleted_at IS NULL AND (CAST(?1 AS TEXT) IS NULL OR name = ?1) AND (CAST(?2 AS TEXT) IS NULL OR lower(algorithm) = lower(CAST(?2 AS TEXT))) \
         AND (CAST(?3 AS TEXT) IS NULL OR id = ?3) AND (CAST(?4 AS BIGINT) IS NULL OR size = ?4)";
    let total: u64 = conn.query_one_map(
        &format!("SELECT COUNT(*) FROM vault_keys {where_sql}"),
        params![f.name, f.algorithm, f.id, f.size],
        |r| r.get(0),
    )?;
    let stmt = conn.prepare_sql(&format!(
        "SELECT {COLUMNS} FROM vault_keys {where_sql} ORDER BY created_at DESC, id LIMIT ?5 OFFSET ?6"
    ))?;
    let rows = stmt
        .query_map(
            params![f.name, f.algorithm, f.id, f.size, f.limit, f.skip],
            from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}
