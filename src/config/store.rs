//! `[store]`: where the bridge keeps its state, and `[cluster]`: how bridges sharing one
//! PostgreSQL store see each other.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secrets::SecretSource;
use crate::store::Location;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file of a single bridge.
    pub path: Option<PathBuf>,
    /// `postgres://USER@HOST:PORT/DATABASE`: one PostgreSQL database shared by several
    /// bridges. The password is never part of the URL.
    pub url: Option<String>,
    /// The PostgreSQL password: a file (0600) or `credential:NAME`.
    pub password_file: Option<String>,
    /// PostgreSQL connections held open.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_pool_size() -> usize {
    8
}

/// What was wrong with `[store]`: (key, why).
pub type StoreConfigError = (&'static str, String);

impl StoreConfig {
    pub fn validate(&self) -> Result<(), StoreConfigError> {
        match (&self.path, &self.url) {
            (Some(_), Some(_)) => Err((
                "store.url",
                "set either store.path (SQLite) or store.url (PostgreSQL), not both".into(),
            )),
            (None, None) => Err((
                "store.path",
                "is required (or store.url for PostgreSQL)".into(),
            )),
            (Some(_), None) if self.password_file.is_some() => Err((
                "store.password_file",
                "is for PostgreSQL (store.url); SQLite has no password".into(),
            )),
            (None, Some(url)) => {
                let parsed: tokio_postgres::Config = url
                    .parse()
                    .map_err(|e| ("store.url", format!("is not a PostgreSQL URL: {e}")))?;
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(("store.url", "must start with postgres://".into()));
                }
                if parsed.get_password().is_some() {
                    return Err((
                        "store.url",
                        "must not hold the password; put it in store.password_file".into(),
                    ));
                }
                if self.pool_size == 0 {
                    return Err(("store.pool_size", "must be at least 1".into()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        if self.url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Where to open the store, the password read from its file.
    pub fn location(&self) -> Result<Location<'_>, String> {
        if let Some(url) = &self.url {
            let password = self
                .password_file
                .as_ref()
                .map(|f| SecretSource::new(f).read_string())
                .transpose()
                .map_err(|e| format!("config key `store.password_file`: {e}"))?;
            return Ok(Location::Postgres {
                url,
                password,
                pool_size: self.pool_size,
            });
        }
        let path: &Path = self
            .path
            .as_deref()
            .ok_or_else(|| "config key `store.path` is not set".to_owned())?;
        Ok(Location::Sqlite(path))
    }

    /// For messages: the file, or the URL (which holds no password).
    pub fn describe(&self) -> String {
        match (&self.url, &self.path) {
            (Some(u), _) => format!("store.url {u}"),
            (None, Some(p)) => format!("store.path {}", p.display()),
            (None, None) => "store".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This bridge's name among those sharing the store; the host name if unset.
    pub node_name: Option<String>,
    /// How often the bridge records that it is alive.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// A bridge not heard from for this long is taken for dead: its upload attempts, job
    /// items and leases pass to the others.
    #[serde(default = "default_node_timeout_secs")]
    pub node_timeout_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            heartbeat_secs: default_heartbeat_secs(),
            node_timeout_secs: default_node_timeout_secs(),
        }
    }
}

fn default_heartbeat_secs() -> u64 {
    5
}

fn default_node_timeout_secs() -> u64 {
    30
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), StoreConfigError> {
        if self.heartbeat_secs == 0 {
            return Err(("cluster.heartbeat_secs", "must be at least 1".into()));
        }
        if self.node_timeout_secs < 2 * self.heartbeat_secs {
            return Err((
                "cluster.node_timeout_secs",
                "must be at least twice cluster.heartbeat_secs".into(),
            ));
        }
        if let Some(n) = &self.node_name
            && (n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err((
                "cluster.node_name",
                "must be 1 to 64 letters, digits, `-`, `_` or `.`".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path: Option<&str>, url: Option<&str>, password_file: Option<&str>) -> StoreConfig {
        StoreConfig {
            path: path.map(PathBuf::from),
            url: url.map(str::to_owned),
            password_file: password_file.map(str::to_owned),
            pool_size: 8,
        }
    }

    #[test]
    fn a_store_is_one_sqlite_file_or_one_postgres_url_without_its_password() {
        assert!(store(Some("/var/lib/x.db"), None, None).validate().is_ok());
        assert!(
            store(None, Some("postgres://hsm@db:5432/hsm"), Some("/run/pw"))
                .validate()
                .is_ok()
        );
        for (bad, key) in [
            (store(None, None, None), "store.path"),
            (
                store(Some("/x.db"), Some("postgres://h@db/x"), None),
                "store.url",
            ),
            (
                store(Some("/x.db"), None, Some("/run/pw")),
                "store.password_file",
            ),
            (
                store(None, Some("postgres://hsm:secret@db/x"), None),
                "store.url",
            ),
            (store(None, Some("host=db user=hsm"), None), "store.url"),
        ] {
            assert_eq!(bad.validate().map_err(|e| e.0), Err(key));
        }
        let e = store(None, Some("postgres://hsm:secret@db/x"), None)
            .validate()
            .expect_err("a password in the URL");
        assert!(
            !e.1.contains("secret"),
            "the message does not repeat it: {}",
            e.1
        );
    }

    #[test]
    fn cluster_timings_and_names_are_checked() {
        assert!(ClusterConfig::default().validate().is_ok());
        let c = ClusterConfig {
            node_timeout_secs: 5,
            ..ClusterConfig::default()
        };
        assert_eq!(
            c.validate().map_err(|e| e.0),
            Err("cluster.node_timeout_secs")
        );
        let c = ClusterConfig {
            node_name: Some("a b".into()),
            ..ClusterConfig::default()
        };
        assert_eq!(c.validate().map_err(|e| e.0), Err("cluster.node_name"));
    }
}
