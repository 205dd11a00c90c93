//! Upload attempts: every upload is recorded before its AWS key is created, so that a key
//! left half-made by a failure (or by the daemon dying) is found and scheduled for deletion.

use serde::Serialize;

use super::{Db, Row, StoreError, now_rfc3339, params};

/// Where an attempt stands.
pub mod state {
    /// Recorded; `CreateKey` may be under way.
    pub const CREATING: &str = "creating";
    /// The AWS key exists; the flow is running.
    pub const IN_PROGRESS: &str = "in_progress";
    pub const COMPLETED: &str = "completed";
    /// Failed after `CreateKey`; the key still has to be scheduled for deletion.
    pub const CLEANUP_PENDING: &str = "cleanup_pending";
    /// Failed; the half-made key is scheduled for deletion.
    pub const CLEANED: &str = "cleaned";
    /// Failed before any AWS key existed.
    pub const FAILED: &str = "failed";
    /// Claimed by the cleaner while it talks to AWS.
    pub const CLEANING: &str = "cleaning";
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub id: String,
    #[serde(rename = "requestID")]
    pub request_id: String,
    pub kms_id: String,
    pub kms: String,
    pub region: String,
    pub source_key_tier: String,
    pub source_key_identifier: String,
    pub alias: Option<String>,
    pub aws_key_id: Option<String>,
    pub aws_key_arn: Option<String>,
    pub stage: String,
    pub state: String,
    pub error: Option<String>,
    pub cleanup_error: Option<String>,
    pub cleanup_tries: u32,
    pub deletion_date: Option<String>,
    /// The bridge that runs (or last ran) the attempt.
    #[serde(rename = "node")]
    pub node_id: Option<String>,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

const COLUMNS: &str = "id, request_id, kms_id, kms_name, region, source_tier, source_key, aws_key_id, \
    aws_key_arn, stage, state, error, cleanup_error, cleanup_tries, deletion_date, created_at, updated_at, alias, node_id";

fn from_row(r: &Row) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        id: r.get(0)?,
        request_id: r.get(1)?,
        kms_id: r.get(2)?,
        kms: r.get(3)?,
        region: r.get(4)?,
        source_key_tier: r.get(5)?,
        source_key_identifier: r.get(6)?,
        aws_key_id: r.get(7)?,
        aws_key_arn: r.get(8)?,
        stage: r.get(9)?,
        state: r.get(10)?,
        error: r.get(11)?,
        cleanup_error: r.get(12)?,
        cleanup_tries: r.get(13)?,
        deletion_date: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        alias: r.get(17)?,
        node_id: r.get(18)?,
    })
}

pub struct NewAttempt {
    pub id: String,
    pub request_id: String,
    pub kms_id: String,
    pub kms_name: String,
    pub region: String,
    pub source_tier: String,
    pub source_key: String,
    pub alias: Option<String>,
    pub node_id: Option<String>,
}

pub fn begin(conn: &Db, a: &NewAttempt) -> Result<(), StoreError> {
    let now = now_rfc3339();
    conn.exec(
"INSERT INTO upload_attempts (id, request_id, kms_id, kms_name, region, source_tier, source_key, \
         alias, stage, state, created_at, updated_at, node_id) VALUES (?1,?2,?3,?4,?5,?6,?7,?10,'CreateKey',?8,?9,?9,?11)",
        params![
            a.id,
            a.request_id,
            a.kms_id,
            a.kms_name,
            a.region,
            a.source_tier,
            a.source_key,
            state::CREATING,
            now,
            a.alias,
            a.node_id
        ],
    )?;
    Ok(())
}

/// The key CreateKey made, and the stage the attempt goes on to (recorded in the same
/// write).
pub fn key_created(
    conn: &Db,
    id: &str,
    key_id: &str,
    arn: &str,
    stage: &str,
) -> Result<(), StoreError> {
    conn.exec(
"UPDATE upload_attempts SET aws_key_id = ?2, aws_key_arn = ?3, state = ?4, updated_at = ?5, stage = ?6 WHERE id = ?1",
        params![id, key_id, arn, state::IN_PROGRESS, now_rfc3339(), stage],
    )?;
    Ok(())
}

pub fn set_key(conn: &Db, id: &str, key_id: &str) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE upload_attempts SET aws_key_id = COALESCE(aws_key_id, ?2) WHERE id = ?1",
        params![id, key_id],
    )?;
    Ok(())
}

pub fn stage(conn: &Db, id: &str, stage: &str) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE upload_attempts SET stage = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, stage, now_rfc3339()],
    )?;
    Ok(())
}

/// Marks an in-progress upload completed (its last stage, persisting the record, done in the
/// same transaction); `false` if it is no longer in progress.
pub fn complete(conn: &Db, id: &str) -> Result<bool, StoreError> {
    Ok(conn.exec(
        "UPDATE upload_attempts SET state = ?2, updated_at = ?3, stage = 'Persist' WHERE id = ?1 AND state = ?4",
        params![id, state::COMPLETED, now_rfc3339(), state::IN_PROGRESS],
    )? > 0)
}

/// The cleaner of `node` takes an attempt only if nobody changed it since it was read (on
/// any bridge of the store).
pub fn claim(conn: &Db, a: &Attempt, node: &str) -> Result<bool, StoreError> {
    Ok(conn.exec(
        "UPDATE upload_attempts SET state = ?2, updated_at = ?3, node_id = ?6 \
         WHERE id = ?1 AND state = ?4 AND updated_at = ?5",
        params![
            a.id,
            state::CLEANING,
            now_rfc3339(),
            a.state,
            a.updated_at,
            node
        ],
    )? > 0)
}

pub fn finish(conn: &Db, id: &str, new_state: &str, error: Option<&str>) -> Result<(), StoreError> {
    conn.exec(
"UPDATE upload_attempts SET state = ?2, error = COALESCE(?3, error), updated_at = ?4 WHERE id = ?1",
        params![id, new_state, error, now_rfc3339()],
    )?;
    Ok(())
}

pub fn cleanup_result(
    conn: &Db,
    id: &str,
    outcome: Result<Option<&str>, &str>,
) -> Result<(), StoreError> {
    let now = now_rfc3339();
    match outcome {
        Ok(deletion_date) => conn.exec(
"UPDATE upload_attempts SET state = ?2, deletion_date = ?3, cleanup_error = NULL, \
             cleanup_tries = cleanup_tries + 1, updated_at = ?4 WHERE id = ?1",
            params![id, state::CLEANED, deletion_date, now],
        )?,
        Err(e) => conn.exec(
"UPDATE upload_attempts SET state = ?2, cleanup_error = ?3, cleanup_tries = cleanup_tries + 1, \
             updated_at = ?4 WHERE id = ?1",
            params![id, state::CLEANUP_PENDING, e, now],
        )?,
    };
    Ok(())
}

/// CreateKey's answer was lost; the key was found by its tag.
pub fn mark_uncertain(conn: &Db, id: &str) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE upload_attempts SET create_uncertain = 1, updated_at = ?2 WHERE id = ?1",
        params![id, now_rfc3339()],
    )?;
    Ok(())
}

/// Completed attempts whose CreateKey answer was lost: the cleaner checks their tag.
pub fn uncertain_completed(conn: &Db) -> Result<Vec<Attempt>, StoreError> {
    let stmt = conn.prepare_sql(&format!(
        "SELECT {COLUMNS} FROM upload_attempts WHERE create_uncertain = 1 AND state = ?1"
    ))?;
    let rows = stmt
        .query_map([state::COMPLETED], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn clear_uncertain(conn: &Db, id: &str) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE upload_attempts SET create_uncertain = 0 WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

pub fn get(conn: &Db, id: &str) -> Result<Option<Attempt>, StoreError> {
    conn.query_opt_map(
        &format!("SELECT {COLUMNS} FROM upload_attempts WHERE id = ?1"),
        [id],
        from_row,
    )
}

pub fn in_states(conn: &Db, states: &[&str]) -> Result<Vec<Attempt>, StoreError> {
    let mut out = Vec::new();
    for s in states {
        let stmt = conn.prepare_sql(&format!(
            "SELECT {COLUMNS} FROM upload_attempts WHERE state = ?1 ORDER BY created_at"
        ))?;
        let rows = stmt
            .query_map([s], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        out.extend(rows);
    }
    Ok(out)
}

pub fn list(
    conn: &Db,
    state_filter: Option<&str>,
    skip: u32,
    limit: u32,
) -> Result<(u64, Vec<Attempt>), StoreError> {
    let total: u64 = conn.query_one_map(
        "SELECT COUNT(*) FROM upload_attempts WHERE CAST(?1 AS TEXT) IS NULL OR state = ?1",
        [state_filter],
        |r| r.get(0),
    )?;
    let stmt = conn.prepare_sql(&format!(
        "SELECT {COLUMNS} FROM upload_attempts WHERE CAST(?1 AS TEXT) IS NULL OR state = ?1 \
         ORDER BY created_at DESC, id LIMIT ?2 OFFSET ?3"
    ))?;
    let rows = stmt
        .query_map(params![state_filter, limit, skip], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}
