//! A private PostgreSQL server for the tests of bridges that share one store, started once
//! per test process by `softhsm-test/postgres.sh` (initdb + pg_ctl on loopback) and stopped
//! when the process ends. Each test gets a database of its own.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::harness::*;

pub struct Postgres {
    url: String,
    password: String,
    _child: Mutex<(Child, ChildStdin)>,
}

static SERVER: OnceLock<Result<Postgres, String>> = OnceLock::new();

fn server() -> &'static Postgres {
    let s = SERVER.get_or_init(|| {
        std::panic::catch_unwind(start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown failure".into())
        })
    });
    match s {
        Ok(s) => s,
        Err(why) => panic!("PostgreSQL could not be set up: {why}"),
    }
}

fn start() -> Postgres {
    let w = world();
    let dir = w.dir.path().join("postgres");
    std::fs::create_dir_all(&dir).expect("postgres dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut child = Command::new("bash")
        .arg(format!("{REPO}/softhsm-test/postgres.sh"))
        .arg("run")
        .arg(port.to_string())
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start postgres.sh");
    let stdin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("postgres.sh output");
    assert_eq!(
        line.trim(),
        "ready",
        "PostgreSQL did not start (is it installed? run softhsm-test/install-deps.sh); see {}",
        dir.display()
    );
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .trim()
            .to_owned()
    };
    Postgres {
        url: read("url"),
        password: read("password"),
        _child: Mutex::new((child, stdin)),
    }
}

/// A new database on the test server: the `[store]` keys of a bridge that uses it (the
/// password in a 0600 file in `dir`).
pub fn database(dir: &std::path::Path) -> String {
    let s = server();
    let name = format!("e2e_{}_{}", std::process::id(), world().next());
    let out = Command::new("psql")
        .arg(&s.url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .env("PGPASSWORD", &s.password)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password: PathBuf = dir.join(format!("{name}.password"));
    write_private(&password, s.password.as_bytes());
    format!(
        "url = \"{}\"\npassword_file = \"{}\"\n",
        s.url.replace("/postgres", &format!("/{name}")),
        password.display()
    )
}
