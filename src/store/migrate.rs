//! Versioned schema migrations, applied at start. SQLite counts its versions in
//! `PRAGMA user_version`; PostgreSQL in `schema_version`, under an advisory lock so that two
//! bridges starting together migrate once. Both backends end at the same version with the
//! same tables; PostgreSQL starts from a baseline equal to SQLite's first nine versions.

use super::{Db, Dialect, StoreError};

/// SQLite: one entry per version, applied in order (`PRAGMA user_version` counts them).
const SQLITE: &[&str] = &[
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

/// PostgreSQL: the schema of SQLite's version 9, in one step (integers are BIGINT, bytes
/// BYTEA).
const POSTGRES_BASELINE: (u32, &str) = (
    9,
    r#"
CREATE TABLE vault_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    algorithm     TEXT NOT NULL,
    size          BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    value_len     BIGINT NOT NULL,
    usage_mask    BIGINT NOT NULL,
    origin        TEXT NOT NULL,
    wrapped       BYTEA NOT NULL,
    wrap_mechanism BIGINT NOT NULL,
    kek_label     TEXT NOT NULL,
    kek_id        BYTEA NOT NULL,
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
    cleanup_tries BIGINT NOT NULL DEFAULT 0,
    deletion_date TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX upload_attempts_state ON upload_attempts(state);


ALTER TABLE upload_attempts ADD COLUMN alias TEXT;
ALTER TABLE vault_keys ADD COLUMN curve TEXT;


CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    digest      BYTEA NOT NULL UNIQUE,
    username    TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  TEXT NOT NULL
);


ALTER TABLE refresh_tokens ADD COLUMN family TEXT;
ALTER TABLE refresh_tokens ADD COLUMN retired_at TEXT;
UPDATE refresh_tokens SET family = id WHERE family IS NULL;
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);


CREATE TABLE key_history (
    seq         BIGSERIAL PRIMARY KEY,
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
    total       BIGINT NOT NULL DEFAULT 0,
    done        BIGINT NOT NULL DEFAULT 0,
    changed     BIGINT NOT NULL DEFAULT 0,
    gone        BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX sync_jobs_status ON sync_jobs(status);


ALTER TABLE upload_attempts ADD COLUMN create_uncertain BIGINT NOT NULL DEFAULT 0;


ALTER TABLE vault_keys ADD COLUMN deleted_at TEXT;


CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);
CREATE TABLE audit_seals (
    seq         BIGINT PRIMARY KEY,
    hash        BYTEA NOT NULL,
    mac         BYTEA NOT NULL,
    at          TEXT NOT NULL
);


CREATE TABLE upload_jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    status      TEXT NOT NULL,
    total       BIGINT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);
CREATE INDEX upload_jobs_status ON upload_jobs(status);
CREATE TABLE upload_job_items (
    job_id      TEXT NOT NULL REFERENCES upload_jobs(id),
    seq         BIGINT NOT NULL,
    source_tier TEXT NOT NULL,
    source_key  TEXT NOT NULL,
    kms_id      TEXT NOT NULL,
    region      TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt_id  TEXT,
    tries       BIGINT NOT NULL DEFAULT 0,
    not_before  BIGINT NOT NULL DEFAULT 0,
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
);

/// Versions after the baseline: the same change for each backend.
const LATER: &[(u32, &str, &str)] = &[(10, SQLITE_CLUSTER, POSTGRES_CLUSTER)];

// Several bridges on one store: who is alive (heartbeats), which node owns an upload
// attempt or a job item, named leases for work that runs on one node at a time, and values
// every node must agree on (the KEK's check value).
const SQLITE_CLUSTER: &str = r#"
CREATE TABLE cluster_nodes (
    node_id     TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    version     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    seen_unix   INTEGER NOT NULL
);
CREATE TABLE work_leases (
    name        TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    until_unix  INTEGER NOT NULL
);
CREATE TABLE store_meta (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
ALTER TABLE upload_attempts ADD COLUMN node_id TEXT;
ALTER TABLE upload_job_items ADD COLUMN node_id TEXT;
ALTER TABLE sync_jobs ADD COLUMN node_id TEXT;
ALTER TABLE audit_seals ADD COLUMN node_id TEXT;
"#;
const POSTGRES_CLUSTER: &str = r#"
CREATE TABLE cluster_nodes (
    node_id     TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    version     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    seen_unix   BIGINT NOT NULL
);
CREATE TABLE work_leases (
    name        TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    until_unix  BIGINT NOT NULL
);
CREATE TABLE store_meta (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
ALTER TABLE upload_attempts ADD COLUMN node_id TEXT;
ALTER TABLE upload_job_items ADD COLUMN node_id TEXT;
ALTER TABLE sync_jobs ADD COLUMN node_id TEXT;
ALTER TABLE audit_seals ADD COLUMN node_id TEXT;
"#;

/// The version a store is at once migrated.
pub const CURRENT: u32 = 10;

pub fn run(db: &mut Db) -> Result<(), StoreError> {
    match db.dialect() {
        Dialect::Sqlite => sqlite(db),
        Dialect::Postgres => postgres(db),
    }
}

/// The schema version the store is at.
pub fn version(db: &Db) -> Result<u32, StoreError> {
    match db.dialect() {
        Dialect::Sqlite => db
            .query_one("PRAGMA user_version", super::params![])?
            .get(0),
        Dialect::Postgres => Ok(db
            .query_opt_map(
                "SELECT version FROM schema_version",
                super::params![],
                |r| r.get(0),
            )?
            .unwrap_or(0)),
    }
}

fn sqlite(db: &mut Db) -> Result<(), StoreError> {
    let version = version(db)? as usize;
    if version > SQLITE.len() + LATER.len() {
        return Err(newer(version as u32));
    }
    let all = SQLITE
        .iter()
        .copied()
        .chain(LATER.iter().map(|(_, s, _)| *s));
    for (i, sql) in all.enumerate().skip(version) {
        db.batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

fn postgres(db: &mut Db) -> Result<(), StoreError> {
    let tx = db.transaction()?;
    // One migrating node at a time; the others wait here and then find nothing to do.
    tx.batch("SELECT pg_advisory_xact_lock(7205759403792793)")?;
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let mut at = version(&tx)?;
    if at > CURRENT {
        return Err(newer(at));
    }
    if at == 0 {
        tx.batch(POSTGRES_BASELINE.1)?;
        tx.exec(
            "INSERT INTO schema_version (version) VALUES (?1)",
            super::params![POSTGRES_BASELINE.0],
        )?;
        at = POSTGRES_BASELINE.0;
    }
    for (v, _, sql) in LATER.iter().filter(|(v, _, _)| *v > at) {
        tx.batch(sql)?;
        tx.exec("UPDATE schema_version SET version = ?1", super::params![*v])?;
    }
    tx.commit()
}

fn newer(v: u32) -> StoreError {
    StoreError::Setup(format!(
        "the store is at schema version {v}, newer than this bridge knows ({CURRENT}): run the newer bridge"
    ))
}
