//! Secrets (PINs, JWT keys, passwords) are read from files or systemd credentials and
//! kept in `secrecy` types so that they cannot reach a log line by accident.

use std::path::{Path, PathBuf};

use secrecy::{SecretBox, SecretString};
use zeroize::Zeroize;

/// Where a secret lives: a plain path, or `credential:NAME` for a systemd credential
/// (`LoadCredential=NAME:...` in the unit, read from `$CREDENTIALS_DIRECTORY/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource(String);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{0}` names a systemd credential but CREDENTIALS_DIRECTORY is not set")]
    NoCredentialsDirectory(String),
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {0} is empty")]
    Empty(PathBuf),
    #[error("secret file {0} is not UTF-8")]
    NotUtf8(PathBuf),
}

impl SecretSource {
    pub fn new(spec: impl Into<String>) -> Self {
        Self(spec.into())
    }

    pub fn spec(&self) -> &str {
        &self.0
    }

    pub fn path(&self) -> Result<PathBuf, SecretError> {
        match self.0.strip_prefix("credential:") {
            Some(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(self.0.clone()))?;
                Ok(Path::new(&dir).join(name))
            }
            None => Ok(PathBuf::from(&self.0)),
        }
    }

    /// Reads the whole file, without a trailing newline.
    pub fn read_bytes(&self) -> Result<SecretBox<Vec<u8>>, SecretError> {
        let path = self.path()?;
        let mut raw = std::fs::read(&path).map_err(|source| SecretError::Read {
            path: path.clone(),
            source,
        })?;
        while matches!(raw.last(), Some(b'\n' | b'\r')) {
            if let Some(b) = raw.last_mut() {
                b.zeroize();
            }
            raw.pop();
        }
        if raw.is_empty() {
            return Err(SecretError::Empty(path));
        }
        warn_if_shared(&path);
        Ok(SecretBox::new(Box::new(raw)))
    }

    pub fn read_string(&self) -> Result<SecretString, SecretError> {
        let bytes = self.read_bytes()?;
        use secrecy::ExposeSecret;
        let s = std::str::from_utf8(bytes.expose_secret())
            .map_err(|_| SecretError::NotUtf8(self.path().unwrap_or_default()))?;
        Ok(SecretString::from(s.to_owned()))
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(path = %path.display(), "secret file is readable by every user");
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}
