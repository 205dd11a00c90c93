//! The store: vault keys (wrapped under the KEK), AWS key records and their history,
//! policy templates, upload attempts, jobs, the audit log and the cluster's members. Two
//! backends behind one interface: an embedded SQLite file (one host) and PostgreSQL (several
//! bridges sharing one state). Store code is written once against [`db::Db`].

pub mod attempts;
pub mod audit;
pub mod aws_keys;
pub mod cluster;
pub mod db;
pub mod history;
mod migrate;
pub mod refresh;
#[cfg(test)]
mod suite;
pub mod sync_jobs;
pub mod templates;
#[cfg(test)]
pub(crate) mod testing;
pub mod upload_jobs;
pub mod vault;

use std::path::Path;
use std::sync::Arc;

pub(crate) use db::params;
pub use db::{Db, Dialect, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("store: {0}")]
    Pool(String),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: record is unreadable: {0}")]
    Corrupt(String),
    #[error("store worker stopped: {0}")]
    Worker(String),
    #[error("store: {0}")]
    Setup(String),
}

impl StoreError {
    /// The store cannot be written for now (disk full, read-only, its file or server
    /// unreachable): the caller may retry later; nothing is wrong with the request.
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
            StoreError::Postgres(e) => match e.code() {
                // No answer at all: the connection broke or never came up (a conversion
                // error has no code either, but is a defect, not an outage).
                None => {
                    e.is_closed()
                        || std::error::Error::source(e)
                            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                        || e.to_string().starts_with("error connecting")
                        || e.to_string().contains("timed out")
                }
                // Connection exceptions, insufficient resources, operator intervention
                // (shutdown), serialization failures and deadlocks: all pass.
                Some(c) => {
                    let c = c.code();
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57P")
                        || c == "40001"
                        || c == "40P01"
                        || c == "25006"
                }
            },
            StoreError::Pool(_) | StoreError::Io(_) => true,
            _ => false,
        }
    }

    /// A uniqueness (or other integrity) constraint refused the write.
    pub fn is_constraint(&self) -> bool {
        match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            StoreError::Postgres(e) => e.code().is_some_and(|c| c.code().starts_with("23")),
            _ => false,
        }
    }
}

/// Where the store lives, from `[store]`.
pub enum Location<'a> {
    Sqlite(&'a Path),
    Postgres {
        url: &'a str,
        password: Option<secrecy::SecretString>,
        pool_size: usize,
    },
}

/// What `Store::inspect` found.
#[derive(Debug)]
pub struct Inspection {
    pub schema_version: u32,
    pub members: Vec<cluster::Node>,
    pub kek_check: Option<String>,
}

/// The schema version this bridge migrates to.
pub const SCHEMA_VERSION: u32 = migrate::CURRENT;

#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

enum Backend {
    /// One connection, taken in turn: waiting for it is async, so calls in line for the
    /// store hold no thread of the blocking pool (at 64 uploads in flight they held dozens).
    Sqlite(Arc<tokio::sync::Mutex<Db>>),
    Postgres(deadpool_postgres::Pool),
}

impl Store {
    /// Opens (creating it 0600) the SQLite file and brings its schema up to date.
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
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut db = Db::sqlite(conn);
        migrate::run(&mut db)?;
        Ok(Self {
            backend: Arc::new(Backend::Sqlite(Arc::new(tokio::sync::Mutex::new(db)))),
        })
    }

    /// A SQLite file opened read-only, its schema left as it is (`audit verify`).
    pub fn open_read_only(path: &Path) -> Result<Db, StoreError> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        Ok(Db::sqlite(conn))
    }

    /// Connects a pool to PostgreSQL and brings the schema up to date (one node at a time:
    /// migrations hold an advisory lock).
    pub async fn connect_postgres(
        url: &str,
        password: Option<secrecy::SecretString>,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let store = Self::postgres_pool(url, password, pool_size)?;
        store.call(migrate::run).await?;
        Ok(store)
    }

    fn postgres_pool(
        url: &str,
        password: Option<secrecy::SecretString>,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        use secrecy::ExposeSecret;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Setup(format!("store.url: {e}")))?;
        if let Some(p) = &password {
            pg.password(p.expose_secret().as_bytes());
        }
        pg.application_name("hsm-bridge");
        // A server that stops answering fails the statement (503) instead of holding a
        // blocking thread for ever.
        pg.options("-c statement_timeout=60000");
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(std::time::Duration::from_secs(5));
        }
        let mgr = deadpool_postgres::Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(mgr)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Setup(e.to_string()))?;
        Ok(Self {
            backend: Arc::new(Backend::Postgres(pool)),
        })
    }

    /// What `probe` reports, read without changing the store: its schema version, the
    /// bridges heard from since `since`, and the KEK check value its vault holds. `None`
    /// for a SQLite file not created yet.
    pub async fn inspect(
        location: Location<'_>,
        since: i64,
    ) -> Result<Option<Inspection>, StoreError> {
        let read = move |db: &mut Db| -> Result<Inspection, StoreError> {
            let schema_version = migrate::version(db)?;
            let (members, kek_check) = if schema_version >= 10 {
                (
                    cluster::members(db, since)?,
                    cluster::meta(db, "vault_kek_check")?,
                )
            } else {
                (Vec::new(), None)
            };
            Ok(Inspection {
                schema_version,
                members,
                kek_check,
            })
        };
        match location {
            Location::Sqlite(path) => {
                if !path.exists() {
                    return Ok(None);
                }
                let mut db = Self::open_read_only(path)?;
                read(&mut db).map(Some)
            }
            Location::Postgres {
                url,
                password,
                pool_size: _,
            } => {
                let store = Self::postgres_pool(url, password, 1)?;
                let exists = store
                    .call(|db| {
                        db.query_one_map(
                            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'schema_version'",
                            params![],
                            |r| r.get::<i64>(0),
                        )
                    })
                    .await?;
                if exists == 0 {
                    return Ok(Some(Inspection {
                        schema_version: 0,
                        members: Vec::new(),
                        kek_check: None,
                    }));
                }
                store.call(move |db| read(db)).await.map(Some)
            }
        }
    }

    pub async fn open_at(location: Location<'_>) -> Result<Self, StoreError> {
        match location {
            Location::Sqlite(path) => Self::open(path),
            Location::Postgres {
                url,
                password,
                pool_size,
            } => Self::connect_postgres(url, password, pool_size).await,
        }
    }

    pub fn dialect(&self) -> Dialect {
        match *self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` on one connection, off the async runtime.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match &*self.backend {
            Backend::Sqlite(conn) => {
                let mut guard = conn.clone().lock_owned().await;
                tokio::task::spawn_blocking(move || f(&mut guard))
                    .await
                    .map_err(|e| StoreError::Worker(e.to_string()))?
            }
            Backend::Postgres(pool) => {
                let client = pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Pool(e.to_string()))?;
                let rt = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    let mut db = Db::postgres(client, rt);
                    f(&mut db)
                })
                .await
                .map_err(|e| StoreError::Worker(e.to_string()))?
            }
        }
    }

    /// The same, for writes that need not be durable on their own (an upload's intermediate
    /// stages): committed without waiting for the disk (SQLite's `synchronous=NORMAL` in WAL
    /// mode survives a crash of the process, not of the host; PostgreSQL's
    /// `synchronous_commit=off` the same), and made durable by the next ordinary commit.
    ///
    /// On SQLite such a write only appends to the WAL in the page cache: when the connection
    /// is free it runs right here, since handing it to a blocking thread and back costs more
    /// than the write. It never checkpoints (that waits for the disk): the next ordinary
    /// commit, on a blocking thread, does.
    pub async fn call_relaxed<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        if let Backend::Sqlite(conn) = &*self.backend
            && let Ok(mut db) = conn.try_lock()
        {
            return relaxed(&mut db, f);
        }
        self.call(move |c| relaxed(c, f)).await
    }
}

fn relaxed<T>(
    c: &mut Db,
    f: impl FnOnce(&mut Db) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let (relax, back) = match c.dialect() {
        Dialect::Sqlite => (
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0",
            "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 1000",
        ),
        Dialect::Postgres => (
            "SET synchronous_commit TO off",
            "SET synchronous_commit TO on",
        ),
    };
    c.batch(relax)?;
    let out = f(c);
    let back = c.batch(back);
    let out = out?;
    back?;
    Ok(out)
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
