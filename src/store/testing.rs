//! The store's tests run on both backends: an in-memory SQLite database, and a fresh
//! database on a private PostgreSQL server started once per test process by
//! `softhsm-test/postgres.sh` (it stops when this process ends). No PostgreSQL is a failure,
//! not a skip.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{Db, Dialect, migrate};

struct Server {
    url: String,
    password: String,
    _dir: tempfile::TempDir,
    _child: Mutex<(Child, ChildStdin)>,
    rt: tokio::runtime::Runtime,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(why) => panic!("PostgreSQL for the store tests: {why}"),
    }
}

fn start() -> Result<Server, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-test/postgres.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .arg("run")
        .arg(port.to_string())
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{script}: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!(
            "{script} did not start PostgreSQL (run softhsm-test/install-deps.sh)"
        ));
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("{f}: {e}"))
    };
    Ok(Server {
        url: read("url")?,
        password: read("password")?,
        _dir: dir,
        _child: Mutex::new((child, stdin)),
        rt: tokio::runtime::Runtime::new().map_err(|e| e.to_string())?,
    })
}

/// The test server's URL and password, and a database of its own for one test.
pub fn postgres_database() -> (String, String) {
    let s = server();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = postgres_db(&s.url, &s.password);
    admin
        .batch(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let url = s.url.replace("/postgres", &format!("/{name}"));
    (url, s.password.clone())
}

fn postgres_db(url: &str, password: &str) -> Db {
    let s = server();
    let mut cfg: tokio_postgres::Config = url.parse().expect("url");
    cfg.password(password);
    let mgr = deadpool_postgres::Manager::new(cfg, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(mgr)
        .max_size(1)
        .build()
        .expect("pool");
    let client =
        s.rt.block_on(pool.get())
            .expect("connect to the test server");
    Db::postgres(client, s.rt.handle().clone())
}

/// A migrated, empty store on `dialect`.
pub fn db(dialect: Dialect) -> Db {
    let mut db = match dialect {
        Dialect::Sqlite => Db::sqlite(rusqlite::Connection::open_in_memory().expect("open")),
        Dialect::Postgres => {
            let (url, password) = postgres_database();
            postgres_db(&url, &password)
        }
    };
    migrate::run(&mut db).expect("migrate");
    db
}

/// Runs `test` once on each backend; a failure names the backend.
pub fn each_backend(test: impl Fn(&mut Db)) {
    for d in [Dialect::Sqlite, Dialect::Postgres] {
        let mut db = db(d);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&mut db)));
        if let Err(e) = r {
            eprintln!("store test failed on {d:?}");
            std::panic::resume_unwind(e);
        }
    }
}
