//! Synchronization jobs: one pass re-reading records from AWS, started on demand or by the
//! periodic synchronization, with its progress.

use serde::Serialize;

use super::{Db, Row, StoreError, now_rfc3339, params};

pub mod status {
    pub const QUEUED: &str = "queued";
    pub const IN_PROGRESS: &str = "in_progress";
    pub const COMPLETED: &str = "completed";
    pub const ERROR: &str = "error";
    pub const CANCELLED: &str = "cancelled";
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncJob {
    pub id: String,
    /// The kms connections (ids) and regions it covers; empty: all.
    pub kms: Vec<String>,
    pub regions: Vec<String>,
    /// `api` or `periodic`.
    pub origin: String,
    pub status: String,
    pub total: u64,
    pub done: u64,
    pub changed: u64,
    pub gone: u64,
    pub failed: u64,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

const COLUMNS: &str = "id, kms_ids, regions, origin, status, total, done, changed, gone, failed, \
                       error, created_at, updated_at, finished_at";

fn from_row(r: &Row) -> Result<SyncJob, StoreError> {
    Ok(SyncJob {
        id: r.get(0)?,
        kms: serde_json::from_str(&r.get::<String>(1)?).unwrap_or_default(),
        regions: serde_json::from_str(&r.get::<String>(2)?).unwrap_or_default(),
        origin: r.get(3)?,
        status: r.get(4)?,
        total: r.get(5)?,
        done: r.get(6)?,
        changed: r.get(7)?,
        gone: r.get(8)?,
        failed: r.get(9)?,
        error: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

pub fn create(
    conn: &Db,
    id: &str,
    kms: &[String],
    regions: &[String],
    origin: &str,
    node: &str,
) -> Result<(), StoreError> {
    let now = now_rfc3339();
    conn.exec(
        "INSERT INTO sync_jobs (id, kms_ids, regions, origin, status, created_at, updated_at, node_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
        params![
            id,
            serde_json::to_string(kms).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(regions).unwrap_or_else(|_| "[]".into()),
            origin,
            status::QUEUED,
            now,
            node
        ],
    )?;
    Ok(())
}

/// Progress: counts so far (and the total once known).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub total: u64,
    pub done: u64,
    pub changed: u64,
    pub gone: u64,
    pub failed: u64,
}

pub fn progress(conn: &Db, id: &str, p: &Progress, state: &str) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE sync_jobs SET total = ?2, done = ?3, changed = ?4, gone = ?5, failed = ?6, \
         status = ?7, updated_at = ?8 WHERE id = ?1 AND status IN ('queued', 'in_progress')",
        params![
            id,
            p.total,
            p.done,
            p.changed,
            p.gone,
            p.failed,
            state,
            now_rfc3339()
        ],
    )?;
    Ok(())
}

pub fn finish(conn: &Db, id: &str, state: &str, error: Option<&str>) -> Result<(), StoreError> {
    let now = now_rfc3339();
    conn.exec(
        "UPDATE sync_jobs SET status = ?2, error = ?3, updated_at = ?4, finished_at = ?4 \
         WHERE id = ?1",
        params![id, state, error, now],
    )?;
    Ok(())
}

pub fn get(conn: &Db, id: &str) -> Result<Option<SyncJob>, StoreError> {
    conn.query_opt_map(
        &format!("SELECT {COLUMNS} FROM sync_jobs WHERE id = ?1"),
        [id],
        from_row,
    )
}

pub fn list(conn: &Db, skip: u32, limit: u32) -> Result<(u64, Vec<SyncJob>), StoreError> {
    let total: u64 =
        conn.query_one_map("SELECT COUNT(*) FROM sync_jobs", params![], |r| r.get(0))?;
    let stmt = conn.prepare_sql(&format!(
        "SELECT {COLUMNS} FROM sync_jobs ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt
        .query_map(params![limit, skip], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}

/// Whether a job was asked to stop.
pub fn cancel(conn: &Db, id: &str) -> Result<bool, StoreError> {
    let now = now_rfc3339();
    Ok(conn.exec(
        "UPDATE sync_jobs SET status = ?2, updated_at = ?3, finished_at = ?3 \
         WHERE id = ?1 AND status IN (?4, ?5)",
        params![
            id,
            status::CANCELLED,
            now,
            status::QUEUED,
            status::IN_PROGRESS
        ],
    )? == 1)
}

/// Jobs left running by a bridge that stopped are ended as errors: those of `me` when `mine`
/// (a previous process of this node, at start) and those of other nodes not heard from
/// since `since` (never this node's own: its heartbeat may only be late).
pub fn abandon_unfinished(
    conn: &Db,
    me: &str,
    mine: bool,
    since: i64,
) -> Result<usize, StoreError> {
    let now = now_rfc3339();
    conn.exec(
        "UPDATE sync_jobs SET status = ?1, error = 'the bridge stopped while the job ran', \
         updated_at = ?2, finished_at = ?2 WHERE status IN (?3, ?4) AND (node_id IS NULL \
         OR (node_id = ?5 AND ?7 = 1) OR (node_id <> ?5 \
         AND node_id NOT IN (SELECT node_id FROM cluster_nodes WHERE seen_unix >= ?6)))",
        params![
            status::ERROR,
            now,
            status::QUEUED,
            status::IN_PROGRESS,
            me,
            since,
            mine
        ],
    )
}
