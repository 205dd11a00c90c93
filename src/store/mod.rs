//! Embedded SQLite store: vault keys (wrapped under the KEK), AWS key records, policy
//! templates and upload attempts. Calls run on the blocking pool.

pub mod attempts;
pub mod audit;
pub mod aws_keys;
pub mod history;
pub mod refresh;
pub mod sync_jobs;
pub mod templates;
pub mod upload_jobs;
pub mod vault;

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: record is unreadable: {0}")]
    Corrupt(String),
    #[error("store worker stopped: {0}")]
    Worker(String),
}

impl StoreError {
    /// The store cannot be written for now (disk full, read-only, its file unreachable):
    /// the caller may retry later; nothing is wrong with the request.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                C::DiskFull
                    | C::ReadOnly
                    | C::CannotOpen
                    | C::SystemIoFailure
                    | C::DatabaseBusy
                    | C::DatabaseLocked
            ),
            StoreError::Io(_) => true,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    /// One connection, taken in turn: waiting for it is async, so calls in line for the store
    /// hold no thread of the blocking pool (at 64 uploads in flight they held dozens).
    conn: Arc<tokio::sync::Mutex<Connection>>,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vault_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    algorithm     TEXT NOT NULL,
    size          INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    value_len     INTEGER NOT NULL,
    usage_mask    INTEGER NOT NULL,
    origin        TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    wrap_mechanism INTEGER NOT NULL,
    kek_label     TEXT NOT NULL,
    kek_id        BLOB NOT NULL,
    token_serial  TEXT NOT NULL,
    public_key    TEXT,
    extra         TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE aws_keys (
    id          TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    arn         TEXT NOT NULL,
    kms_id      TEXT NOT NULL,
    region      TEXT NOT NULL,
    aliases     TEXT NOT NULL,
    record      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX aws_keys_key_id ON aws_keys(key_id);
CREATE TABLE policy_templates (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    record      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE upload_attempts (
    id            TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL,
    kms_id        TEXT NOT NULL,
    kms_name      TEXT NOT NULL,
    region        TEXT NOT NULL,
    source_tier   TEXT NOT NULL,
    source_key    TEXT NOT NULL,
    aws_key_id    TEXT,
    aws_key_arn   TEXT,
    stage         TEXT NOT NULL,
    state         TEXT NOT NULL,
    error         TEXT,
    cleanup_error TEXT,
    cleanup_tries INTEGER NOT NULL DEFAULT 0,
    deletion_date TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX upload_attempts_state ON upload_attempts(state);
"#,
    // The alias an attempt asked for (removed again if the attempt fails), and the curve of
    // EC vault keys.
    r#"
ALTER TABLE upload_attempts ADD COLUMN alias TEXT;
ALTER TABLE vault_keys ADD COLUMN curve TEXT;
"#,
    // Refresh tokens of POST /api/v1/auth/tokens, kept as SHA-256 digests only.
    r#"
CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    digest      BLOB NOT NULL UNIQUE,
    username    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
"#,
    // Refresh tokens rotate on use: each belongs to a family (one login); a retired token
    // presented again revokes its whole family.
    r#"
ALTER TABLE refresh_tokens ADD COLUMN family TEXT;
ALTER TABLE refresh_tokens ADD COLUMN retired_at TEXT;
UPDATE refresh_tokens SET family = id WHERE family IS NULL;
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
"#,
    // The life of each AWS key after its upload: what was done to it, by whom, with which AWS
    // calls; synchronization jobs; and why a record is marked gone.
    r#"
CREATE TABLE key_history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    record_id   TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    aws_calls   TEXT NOT NULL,
    detail      TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX key_history_record ON key_history(record_id, seq);
CREATE TABLE sync_jobs (
    id          TEXT PRIMARY KEY,
    kms_ids     TEXT NOT NULL,
    regions     TEXT NOT NULL,
    origin      TEXT NOT NULL,
    status      TEXT NOT NULL,
    total       INTEGER NOT NULL DEFAULT 0,
    done        INTEGER NOT NULL DEFAULT 0,
    changed     INTEGER NOT NULL DEFAULT 0,
    gone        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX sync_jobs_status ON sync_jobs(status);
"#,
    // An attempt whose CreateKey answer was lost and recovered by its tag: once it completes,
    // the cleaner checks that no second key carries the tag.
    r#"
ALTER TABLE upload_attempts ADD COLUMN create_uncertain INTEGER NOT NULL DEFAULT 0;
"#,
    // A deleted vault key is kept (wrapped) until its retention ends, so it can be restored.
    r#"
ALTER TABLE vault_keys ADD COLUMN deleted_at TEXT;
"#,
    // The audit log: a hash chain of entries, its head sealed now and then with a MAC computed
    // by a key in the bridge token.
    r#"
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE TABLE audit_seals (
    seq         INTEGER PRIMARY KEY,
    hash        BLOB NOT NULL,
    mac         BLOB NOT NULL,
    at          TEXT NOT NULL
);
"#,
    // Bulk upload jobs and their items: one source key to one kms and Region at most once per
    // job, each item naming the upload attempt it runs under.
    r#"
CREATE TABLE upload_jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    status      TEXT NOT NULL,
    total       INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);
CREATE INDEX upload_jobs_status ON upload_jobs(status);
CREATE TABLE upload_job_items (
    job_id      TEXT NOT NULL REFERENCES upload_jobs(id),
    seq         INTEGER NOT NULL,
    source_tier TEXT NOT NULL,
    source_key  TEXT NOT NULL,
    kms_id      TEXT NOT NULL,
    region      TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt_id  TEXT,
    tries       INTEGER NOT NULL DEFAULT 0,
    not_before  INTEGER NOT NULL DEFAULT 0,
    record_id   TEXT,
    key_id      TEXT,
    arn         TEXT,
    error       TEXT,
    started_at  TEXT,
    finished_at TEXT,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, source_tier, source_key, kms_id, region)
);
CREATE INDEX upload_job_items_state ON upload_job_items(state);
"#,
];

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        // Created 0600 whatever the umask; SQLite gives its -wal and -shm files the same mode.
        #[cfg(unix)]
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        Ok(Self {
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
        })
    }

    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let mut guard = self.conn.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut guard))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// The same, for writes that need not be durable on their own (an upload's intermediate
    /// stages): committed without an fsync (`synchronous=NORMAL` in WAL mode survives a crash
    /// of the process, not of the host), and made durable by the next ordinary commit.
    pub async fn call_relaxed<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.call(move |c| {
            c.prepare_cached("PRAGMA synchronous = NORMAL")?
                .execute([])?;
            let out = f(c);
            let back = c
                .prepare_cached("PRAGMA synchronous = FULL")
                .and_then(|mut s| s.execute([]));
            let out = out?;
            back?;
            Ok(out)
        })
        .await
    }
}

/// `Connection::execute` with the statement kept prepared: the upload path runs the same few
/// statements every time, and parsing them again cost more than running them.
pub(crate) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

pub fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// RFC 3339 in UTC with microseconds, as CipherTrust Manager writes its dates.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.microsecond();
    t.replace_nanosecond(micros * 1000)
        .unwrap_or(t)
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap_or_default()
}

#[cfg(test)]
mod unavailable_tests {
    use super::*;

    #[test]
    fn a_full_or_read_only_store_is_unavailable_not_broken() {
        for code in [
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_CANTOPEN,
        ] {
            let e = StoreError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ));
            assert!(e.is_unavailable(), "{code}");
        }
        let e = StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        ));
        assert!(!e.is_unavailable());
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
    }
}
