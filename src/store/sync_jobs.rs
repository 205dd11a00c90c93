//! Synchronization jobs: one pass re-reading records from AWS, started on demand or by the
//! periodic synchronization, with its progress.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, now_rfc3339};

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

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SyncJob> {
    Ok(SyncJob {
        id: r.get(0)?,
        kms: serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or_default(),
        regions: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
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
    conn: &rusqlite::Connection,
    id: &str,
    kms: &[String],
    regions: &[String],
    origin: &str,
) -> Result<(), StoreError> {
    let now = now_rfc3339();
    conn.execute(
        "INSERT INTO sync_jobs (id, kms_ids, regions, origin, status, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            id,
            serde_json::to_string(kms).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(regions).unwrap_or_else(|_| "[]".into()),
            origin,
            status::QUEUED,
            now
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

pub fn progress(
    conn: &rusqlite::Connection,
    id: &str,
    p: &Progress,
    state: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE sync_jobs SET total = ?2, done = ?3, changed = ?4, gone = ?5, failed = ?6, \
         status = ?7, updated_at = ?8 WHERE id = ?1",
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

pub fn finish(
    conn: &rusqlite::Connection,
    id: &str,
    state: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_rfc3339();
    conn.execute(
        "UPDATE sync_jobs SET status = ?2, error = ?3, updated_at = ?4, finished_at = ?4 \
         WHERE id = ?1",
        params![id, state, error, now],
    )?;
    Ok(())
}

pub fn get(conn: &rusqlite::Connection, id: &str) -> Result<Option<SyncJob>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM sync_jobs WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

pub fn list(
    conn: &rusqlite::Connection,
    skip: u32,
    limit: u32,
) -> Result<(u64, Vec<SyncJob>), StoreError> {
    let total: u64 = conn.query_row("SELECT COUNT(*) FROM sync_jobs", [], |r| r.get(0))?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM sync_jobs ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt
        .query_map(params![limit, skip], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}

/// Whether a job was asked to stop.
pub fn cancel(conn: &rusqlite::Connection, id: &str) -> Result<bool, StoreError> {
    let now = now_rfc3339();
    Ok(conn.execute(
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

/// Jobs a previous process left running are ended as errors at start.
pub fn abandon_unfinished(conn: &rusqlite::Connection) -> Result<usize, StoreError> {
    let now = now_rfc3339();
    Ok(conn.execute(
        "UPDATE sync_jobs SET status = ?1, error = 'the bridge stopped while the job ran', \
         updated_at = ?2, finished_at = ?2 WHERE status IN (?3, ?4)",
        params![status::ERROR, now, status::QUEUED, status::IN_PROGRESS],
    )?)
}
