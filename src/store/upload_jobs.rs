//! Bulk upload jobs: the job and one row per item (a source key to one kms and Region), each
//! item carrying the id of the upload attempt it runs, so that after a crash the bridge can
//! tell an item whose upload completed from one that must run again.

use serde::Serialize;

use super::{Db, Row, StoreError, now_rfc3339, params};

pub mod status {
    pub const QUEUED: &str = "queued";
    pub const IN_PROGRESS: &str = "in_progress";
    pub const COMPLETED: &str = "completed";
    pub const CANCELLED: &str = "cancelled";
}

pub mod item_state {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub name: Option<String>,
    pub actor: String,
    #[serde(rename = "requestID")]
    pub request_id: String,
    pub status: String,
    pub total: u64,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Items by state.
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// When the first and the last item ended (for the rate).
    pub first_item_done_at: Option<String>,
    pub last_item_done_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    #[serde(skip)]
    pub job_id: String,
    pub seq: u64,
    pub source_key_tier: String,
    pub source_key_identifier: String,
    pub kms_id: String,
    pub region: String,
    #[serde(skip)]
    pub body: String,
    pub state: String,
    pub upload_id: Option<String>,
    pub tries: u32,
    pub record_id: Option<String>,
    pub key_id: Option<String>,
    pub arn: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The bridge that runs (or last ran) the item.
    #[serde(rename = "node")]
    pub node_id: Option<String>,
}

pub struct NewJob<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub actor: &'a str,
    pub request_id: &'a str,
}

pub struct NewItem {
    pub source_tier: String,
    pub source_key: String,
    pub kms_id: String,
    pub region: String,
    /// The upload body, as JSON.
    pub body: String,
}

const ITEM_COLUMNS: &str = "job_id, seq, source_tier, source_key, kms_id, region, body, state, \
    attempt_id, tries, record_id, key_id, arn, error, started_at, finished_at, node_id";

fn item_row(r: &Row) -> Result<Item, StoreError> {
    Ok(Item {
        job_id: r.get(0)?,
        seq: r.get(1)?,
        source_key_tier: r.get(2)?,
        source_key_identifier: r.get(3)?,
        kms_id: r.get(4)?,
        region: r.get(5)?,
        body: r.get(6)?,
        state: r.get(7)?,
        upload_id: r.get(8)?,
        tries: r.get(9)?,
        record_id: r.get(10)?,
        key_id: r.get(11)?,
        arn: r.get(12)?,
        error: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        node_id: r.get(16)?,
    })
}

/// The job and all its items, in one transaction: a job is never seen half-made. A second
/// item for the same source key, kms and Region is refused by the table itself.
pub fn create(conn: &mut Db, job: &NewJob<'_>, items: &[NewItem]) -> Result<(), StoreError> {
    let now = now_rfc3339();
    let tx = conn.transaction()?;
    tx.exec("INSERT INTO upload_jobs (id, name, actor, request_id, status, total, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            job.id,
            job.name,
            job.actor,
            job.request_id,
            status::QUEUED,
            items.len() as u64,
            now
        ],
    )?;
    {
        let stmt = tx.prepare_sql(
            "INSERT INTO upload_job_items (job_id, seq, source_tier, source_key, kms_id, region, body, state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (i, it) in items.iter().enumerate() {
            stmt.execute(params![
                job.id,
                i as u64 + 1,
                it.source_tier,
                it.source_key,
                it.kms_id,
                it.region,
                it.body,
                item_state::PENDING
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

const JOB_SELECT: &str = "SELECT j.id, j.name, j.actor, j.request_id, j.status, j.total, j.created_at, \
    j.updated_at, j.started_at, j.finished_at, \
    (SELECT COUNT(*) FROM upload_job_items i WHERE i.job_id = j.id AND i.state = 'pending'), \
    (SELECT COUNT(*) FROM upload_job_items i WHERE i.job_id = j.id AND i.state = 'running'), \
    (SELECT COUNT(*) FROM upload_job_items i WHERE i.job_id = j.id AND i.state = 'completed'), \
    (SELECT COUNT(*) FROM upload_job_items i WHERE i.job_id = j.id AND i.state = 'failed'), \
    (SELECT COUNT(*) FROM upload_job_items i WHERE i.job_id = j.id AND i.state = 'cancelled'), \
    (SELECT MIN(finished_at) FROM upload_job_items i WHERE i.job_id = j.id AND i.state IN ('completed', 'failed')), \
    (SELECT MAX(finished_at) FROM upload_job_items i WHERE i.job_id = j.id AND i.state IN ('completed', 'failed')) \
    FROM upload_jobs j";

fn job_row(r: &Row) -> Result<Job, StoreError> {
    Ok(Job {
        id: r.get(0)?,
        name: r.get(1)?,
        actor: r.get(2)?,
        request_id: r.get(3)?,
        status: r.get(4)?,
        total: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        pending: r.get(10)?,
        running: r.get(11)?,
        completed: r.get(12)?,
        failed: r.get(13)?,
        cancelled: r.get(14)?,
        first_item_done_at: r.get(15)?,
        last_item_done_at: r.get(16)?,
    })
}

pub fn get(conn: &Db, id: &str) -> Result<Option<Job>, StoreError> {
    conn.query_opt_map(&format!("{JOB_SELECT} WHERE j.id = ?1"), [id], job_row)
}

pub fn list(conn: &Db, skip: u32, limit: u32) -> Result<(u64, Vec<Job>), StoreError> {
    let total: u64 =
        conn.query_one_map("SELECT COUNT(*) FROM upload_jobs", params![], |r| r.get(0))?;
    let stmt = conn.prepare_sql(&format!(
        "{JOB_SELECT} ORDER BY j.created_at DESC, j.id LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt
        .query_map(params![limit, skip], job_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}

/// Items of a job in order, `state` (if given) only.
pub fn items(
    conn: &Db,
    job: &str,
    state: Option<&str>,
    skip: u32,
    limit: u32,
) -> Result<Vec<Item>, StoreError> {
    let stmt = conn.prepare_sql(&format!(
        "SELECT {ITEM_COLUMNS} FROM upload_job_items WHERE job_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR state = ?2) \
         ORDER BY seq LIMIT ?3 OFFSET ?4"
    ))?;
    let rows = stmt
        .query_map(params![job, state, limit, skip], item_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Jobs with work left, oldest first.
pub fn runnable(conn: &Db) -> Result<Vec<String>, StoreError> {
    let stmt = conn.prepare_sql(
        "SELECT id FROM upload_jobs WHERE status IN (?1, ?2) ORDER BY created_at, id",
    )?;
    let rows = stmt
        .query_map(params![status::QUEUED, status::IN_PROGRESS], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(rows)
}

/// Takes the next pending item of a running job whose retry time has come and whose previous
/// attempt (if any) has settled — its half-made key scheduled for deletion and its alias
/// removed by the cleaner, so the next run neither finds the alias taken nor leaves two keys
/// enabled: it is marked running under a new upload attempt id, which the upload then uses.
/// Nothing is due: `None`.
pub fn claim(
    conn: &mut Db,
    job: &str,
    now_unix: i64,
    node: &str,
) -> Result<Option<Item>, StoreError> {
    let tx = conn.transaction()?;
    let open: Option<String> =
        tx.query_opt_map("SELECT status FROM upload_jobs WHERE id = ?1", [job], |r| {
            r.get(0)
        })?;
    if !matches!(open.as_deref(), Some(status::QUEUED | status::IN_PROGRESS)) {
        return Ok(None);
    }
    // Bridges sharing a PostgreSQL store claim side by side: each skips the rows another
    // has locked. (SQLite's write lock lets one claim at a time.)
    let lock = match tx.dialect() {
        super::Dialect::Sqlite => "",
        super::Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    let seq: Option<u64> = tx.query_opt_map(
        &format!(
            "SELECT seq FROM upload_job_items i WHERE job_id = ?1 AND state = ?2 AND not_before <= ?3 \
             AND NOT EXISTS (SELECT 1 FROM upload_attempts a WHERE a.id = i.attempt_id \
             AND a.state IN ('creating', 'in_progress', 'cleanup_pending', 'cleaning', 'completed')) \
             ORDER BY seq LIMIT 1{lock}"
        ),
        params![job, item_state::PENDING, now_unix],
        |r| r.get(0),
    )?;
    let Some(seq) = seq else {
        return Ok(None);
    };
    let now = now_rfc3339();
    let attempt = uuid::Uuid::new_v4().to_string();
    let took = tx.exec(
        "UPDATE upload_job_items SET state = ?3, attempt_id = ?4, tries = tries + 1, \
         started_at = COALESCE(started_at, ?5), node_id = ?6 WHERE job_id = ?1 AND seq = ?2 AND state = ?7",
        params![job, seq, item_state::RUNNING, attempt, now, node, item_state::PENDING],
    )?;
    if took == 0 {
        return Ok(None);
    }
    tx.exec("UPDATE upload_jobs SET status = ?2, started_at = COALESCE(started_at, ?3), updated_at = ?3 \
         WHERE id = ?1",
        params![job, status::IN_PROGRESS, now],
    )?;
    let item = tx.query_one_map(
        &format!("SELECT {ITEM_COLUMNS} FROM upload_job_items WHERE job_id = ?1 AND seq = ?2"),
        params![job, seq],
        item_row,
    )?;
    tx.commit()?;
    Ok(Some(item))
}

/// The earliest time (unix seconds) a pending item of the job may run, if one is pending.
pub fn next_due(conn: &Db, job: &str) -> Result<Option<i64>, StoreError> {
    conn.query_one_map(
        "SELECT MIN(not_before) FROM upload_job_items WHERE job_id = ?1 AND state = ?2",
        params![job, item_state::PENDING],
        |r| r.get(0),
    )
}

/// How a running item ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed {
        record_id: String,
        key_id: String,
        arn: String,
    },
    Failed(String),
    /// Failed for a reason that may pass: run again at `not_before` (unix seconds).
    Retry {
        error: String,
        not_before: i64,
    },
}

/// Records the end of the item's run under `attempt` (and nothing if the item has moved on
/// since, which only a resumed job can do).
pub fn finish_item(
    conn: &Db,
    job: &str,
    seq: u64,
    attempt: &str,
    outcome: &Outcome,
) -> Result<bool, StoreError> {
    let now = now_rfc3339();
    let changed = match outcome {
        Outcome::Completed {
            record_id,
            key_id,
            arn,
        } => conn.exec(
"UPDATE upload_job_items SET state = ?4, record_id = ?5, key_id = ?6, arn = ?7, \
             error = NULL, finished_at = ?8 WHERE job_id = ?1 AND seq = ?2 AND attempt_id = ?3 \
             AND state <> ?4",
            params![
                job,
                seq,
                attempt,
                item_state::COMPLETED,
                record_id,
                key_id,
                arn,
                now
            ],
        )?,
        Outcome::Failed(error) => conn.exec(
"UPDATE upload_job_items SET state = ?4, error = ?5, finished_at = ?6 \
             WHERE job_id = ?1 AND seq = ?2 AND attempt_id = ?3",
            params![job, seq, attempt, item_state::FAILED, error, now],
        )?,
        // A cancelled job takes no more runs: the item ends cancelled instead.
        Outcome::Retry { error, not_before } => conn.exec(
"UPDATE upload_job_items SET state = CASE WHEN (SELECT status FROM upload_jobs WHERE id = ?1) = ?7 \
             THEN ?8 ELSE ?4 END, error = ?5, not_before = ?6 \
             WHERE job_id = ?1 AND seq = ?2 AND attempt_id = ?3",
            params![
                job,
                seq,
                attempt,
                item_state::PENDING,
                error,
                not_before,
                status::CANCELLED,
                item_state::CANCELLED
            ],
        )?,
    };
    conn.exec(
        "UPDATE upload_jobs SET updated_at = ?2 WHERE id = ?1",
        params![job, now],
    )?;
    Ok(changed > 0)
}

/// Ends the job once no item is pending or running. Answers whether it ended now.
pub fn finish_if_done(conn: &Db, job: &str) -> Result<bool, StoreError> {
    let now = now_rfc3339();
    Ok(conn.exec(
        "UPDATE upload_jobs SET status = ?2, updated_at = ?3, finished_at = ?3 \
         WHERE id = ?1 AND status IN (?4, ?5) AND NOT EXISTS \
         (SELECT 1 FROM upload_job_items WHERE job_id = ?1 AND state IN (?6, ?7))",
        params![
            job,
            status::COMPLETED,
            now,
            status::QUEUED,
            status::IN_PROGRESS,
            item_state::PENDING,
            item_state::RUNNING
        ],
    )? == 1)
}

/// Stops a job: its pending items are cancelled at once; items already running finish (an
/// upload is never cut short half-way). Answers whether the job was still open.
pub fn cancel(conn: &mut Db, id: &str) -> Result<bool, StoreError> {
    let now = now_rfc3339();
    let tx = conn.transaction()?;
    let changed = tx.exec(
        "UPDATE upload_jobs SET status = ?2, updated_at = ?3, finished_at = ?3 \
         WHERE id = ?1 AND status IN (?4, ?5)",
        params![
            id,
            status::CANCELLED,
            now,
            status::QUEUED,
            status::IN_PROGRESS
        ],
    )? == 1;
    if changed {
        tx.exec("UPDATE upload_job_items SET state = ?2, finished_at = ?3 WHERE job_id = ?1 AND state = ?4",
            params![id, item_state::CANCELLED, now, item_state::PENDING],
        )?;
    }
    tx.commit()?;
    Ok(changed)
}

/// Items a stopped bridge left running: those of `me` when `mine` (this node's previous
/// process, at start) and those of other nodes not heard from since `since` (never this
/// node's own live ones: its heartbeat may only be late); and items set pending again whose
/// last attempt completed after all (its bridge was slow, not dead). Each is found completed
/// (its attempt completed) or set pending again, to run under a new attempt.
pub fn running(conn: &Db, me: &str, mine: bool, since: i64) -> Result<Vec<Item>, StoreError> {
    let stmt = conn.prepare_sql(&format!(
        "SELECT {ITEM_COLUMNS} FROM upload_job_items i WHERE (state = ?1 AND (node_id IS NULL \
         OR (node_id = ?2 AND ?4 = 1) OR (node_id <> ?2 \
         AND node_id NOT IN (SELECT node_id FROM cluster_nodes WHERE seen_unix >= ?3)))) \
         OR (state = ?5 AND EXISTS (SELECT 1 FROM upload_attempts a WHERE a.id = i.attempt_id \
         AND a.state = 'completed')) ORDER BY job_id, seq"
    ))?;
    let rows = stmt
        .query_map(
            params![item_state::RUNNING, me, since, mine, item_state::PENDING],
            item_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A running item whose attempt never completed goes back to pending.
pub fn requeue(conn: &Db, job: &str, seq: u64, attempt: &str) -> Result<(), StoreError> {
    conn.exec(
"UPDATE upload_job_items SET state = CASE WHEN (SELECT status FROM upload_jobs WHERE id = ?1) = ?5 \
         THEN ?6 ELSE ?4 END, not_before = 0 WHERE job_id = ?1 AND seq = ?2 AND attempt_id = ?3 AND state = ?7",
        params![
            job,
            seq,
            attempt,
            item_state::PENDING,
            status::CANCELLED,
            item_state::CANCELLED,
            item_state::RUNNING
        ],
    )?;
    Ok(())
}

/// Item counts over every open job, by state (for the metrics).
pub fn open_counts(conn: &Db) -> Result<Vec<(String, u64)>, StoreError> {
    let stmt = conn.prepare_sql(
        "SELECT i.state, COUNT(*) FROM upload_job_items i JOIN upload_jobs j ON j.id = i.job_id \
         WHERE j.status IN (?1, ?2) GROUP BY i.state",
    )?;
    let rows = stmt
        .query_map(params![status::QUEUED, status::IN_PROGRESS], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::testing::each_backend;

    fn item(source: &str) -> NewItem {
        NewItem {
            source_tier: "local".into(),
            source_key: source.into(),
            kms_id: "kms-1".into(),
            region: "us-east-1".into(),
            body: "{}".into(),
        }
    }

    fn job(c: &mut Db, id: &str, sources: &[&str]) -> Result<(), StoreError> {
        let items: Vec<NewItem> = sources.iter().map(|s| item(s)).collect();
        create(
            c,
            &NewJob {
                id,
                name: None,
                actor: "t",
                request_id: "r",
            },
            &items,
        )
    }

    #[test]
    fn a_source_goes_to_a_kms_and_region_once_per_job_and_a_refused_job_leaves_nothing() {
        each_backend(|c| {
            assert!(job(c, "j1", &["a", "a"]).is_err());
            assert!(get(c, "j1").expect("get").is_none(), "nothing half-made");
            job(c, "j1", &["a", "b"]).expect("two items");
            // Another job may upload the same key again.
            job(c, "j2", &["a"]).expect("another job");
        });
    }

    #[test]
    fn items_are_claimed_once_each_and_the_job_ends_when_all_have() {
        each_backend(|c| {
            job(c, "j", &["a", "b"]).expect("job");
            let first = claim(c, "j", 0, "n").expect("claim").expect("an item");
            let second = claim(c, "j", 0, "n").expect("claim").expect("an item");
            assert_ne!(first.seq, second.seq);
            assert_ne!(first.upload_id, second.upload_id);
            assert!(claim(c, "j", 0, "n").expect("claim").is_none());
            let a1 = first.upload_id.clone().expect("attempt");
            // A retry waits for its time, under a new attempt.
            finish_item(
                c,
                "j",
                first.seq,
                &a1,
                &Outcome::Retry {
                    error: "503".into(),
                    not_before: 100,
                },
            )
            .expect("retry");
            assert!(claim(c, "j", 99, "n").expect("claim").is_none());
            assert_eq!(next_due(c, "j").expect("due"), Some(100));
            let again = claim(c, "j", 100, "n").expect("claim").expect("due now");
            assert_eq!((again.seq, again.tries), (first.seq, 2));
            assert_ne!(again.upload_id.as_deref(), Some(a1.as_str()));
            // The outcome of a stale attempt changes nothing.
            finish_item(c, "j", first.seq, &a1, &Outcome::Failed("late".into())).expect("stale");
            assert_eq!(
                items(c, "j", Some(item_state::FAILED), 0, 10)
                    .expect("items")
                    .len(),
                0
            );
            let done = Outcome::Completed {
                record_id: "r".into(),
                key_id: "k".into(),
                arn: "arn".into(),
            };
            finish_item(
                c,
                "j",
                again.seq,
                again.upload_id.as_deref().expect("a"),
                &done,
            )
            .expect("done");
            assert!(!finish_if_done(c, "j").expect("not yet"));
            finish_item(
                c,
                "j",
                second.seq,
                second.upload_id.as_deref().expect("a"),
                &Outcome::Failed("no".into()),
            )
            .expect("failed");
            assert!(finish_if_done(c, "j").expect("done"));
            let j = get(c, "j").expect("get").expect("job");
            assert_eq!(
                (j.status.as_str(), j.completed, j.failed),
                (status::COMPLETED, 1, 1)
            );
            assert!(runnable(c).expect("runnable").is_empty());
        });
    }

    #[test]
    fn cancelling_stops_pending_items_and_running_ones_end_as_they_end() {
        each_backend(|c| {
            job(c, "j", &["a", "b", "c"]).expect("job");
            let running = claim(c, "j", 0, "n").expect("claim").expect("item");
            assert!(cancel(c, "j").expect("cancel"));
            assert!(!cancel(c, "j").expect("once"));
            assert!(claim(c, "j", 0, "n").expect("claim").is_none());
            let j = get(c, "j").expect("get").expect("job");
            assert_eq!((j.cancelled, j.running), (2, 1));
            // A retry of a cancelled job's item ends it cancelled.
            finish_item(
                c,
                "j",
                running.seq,
                running.upload_id.as_deref().expect("a"),
                &Outcome::Retry {
                    error: "503".into(),
                    not_before: 0,
                },
            )
            .expect("retry");
            let j = get(c, "j").expect("get").expect("job");
            assert_eq!(
                (j.status.as_str(), j.cancelled, j.running),
                (status::CANCELLED, 3, 0)
            );
        });
    }

    #[test]
    fn an_item_runs_again_only_once_its_last_attempt_has_settled() {
        each_backend(|c| {
            job(c, "j", &["a"]).expect("job");
            let it = claim(c, "j", 0, "n").expect("claim").expect("item");
            let attempt = it.upload_id.clone().expect("attempt");
            c.exec(
                "INSERT INTO upload_attempts (id, request_id, kms_id, kms_name, region, source_tier, \
                 source_key, stage, state, created_at, updated_at) \
                 VALUES (?1, 'r', 'k', 'k', 'us-east-1', 'local', 'a', 'ImportKeyMaterial', 'in_progress', 'now', 'now')",
                params![attempt],
            )
            .expect("attempt");
            requeue(c, "j", it.seq, &attempt).expect("requeue");
            assert!(
                claim(c, "j", 0, "n").expect("claim").is_none(),
                "its key is not settled"
            );
            c.exec(
                "UPDATE upload_attempts SET state = 'cleaned' WHERE id = ?1",
                params![attempt],
            )
            .expect("cleaned");
            assert!(claim(c, "j", 0, "n").expect("claim").is_some());
        });
    }

    #[test]
    fn an_item_left_running_by_a_dead_process_goes_back_to_pending() {
        each_backend(|c| {
            job(c, "j", &["a"]).expect("job");
            let it = claim(c, "j", 0, "n").expect("claim").expect("item");
            let left = running(c, "n", true, 0).expect("running");
            assert_eq!(left.len(), 1);
            requeue(c, "j", it.seq, it.upload_id.as_deref().expect("a")).expect("requeue");
            assert!(running(c, "n", true, 0).expect("running").is_empty());
            let again = claim(c, "j", 0, "n")
                .expect("claim")
                .expect("pending again");
            assert_eq!(again.tries, 2);
        });
    }
}
