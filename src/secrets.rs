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
    #[error(
        "secret file {path} is readable by its group or by others (mode {mode:o}); make it 0600 or 0400"
    )]
    Shared { path: PathBuf, mode: u32 },
    #[error(
        "`{0}`: a credential name is one file name of the credentials directory (no `/`, not `..`)"
    )]
    BadCredentialName(String),
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
                let one_file = !name.is_empty()
                    && name != "."
                    && name != ".."
                    && !name.contains('/')
                    && !name.contains('\0');
                if !one_file {
                    return Err(SecretError::BadCredentialName(self.0.clone()));
                }
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(self.0.clone()))?;
                Ok(Path::new(&dir).join(name))
            }
            None => Ok(PathBuf::from(&self.0)),
        }
    }

    /// Reads the whole file, without a trailing newline. A file that its group or others may
    /// read is refused: the secret would not be one.
    pub fn read_bytes(&self) -> Result<SecretBox<Vec<u8>>, SecretError> {
        let path = self.path()?;
        refuse_if_shared(&path)?;
        self.read_from(path)
    }

    /// Checks, without reading it, that the secret is named well and (where the file exists)
    /// private to its owner.
    pub fn check_private(&self) -> Result<(), SecretError> {
        let path = match self.path() {
            Err(SecretError::NoCredentialsDirectory(_)) => return Ok(()),
            other => other?,
        };
        if path.exists() {
            refuse_if_shared(&path)?;
        }
        Ok(())
    }

    /// The same for a file that need not be private (a public key).
    pub fn read_public_bytes(&self) -> Result<SecretBox<Vec<u8>>, SecretError> {
        let path = self.path()?;
        self.read_from(path)
    }

    fn read_from(&self, path: PathBuf) -> Result<SecretBox<Vec<u8>>, SecretError> {
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
fn refuse_if_shared(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(SecretError::Shared {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_shared(_path: &Path) -> Result<(), SecretError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").expect("write");
        let src = SecretSource::new(p.to_string_lossy().into_owned());
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(src.read_bytes().is_ok(), ok, "{mode:o}");
            assert_eq!(src.check_private().is_ok(), ok, "{mode:o}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(src.read_public_bytes().is_ok(), "public keys may be shared");
    }

    #[test]
    fn credential_names_stay_in_the_credentials_directory() {
        for bad in [
            "credential:../etc/shadow",
            "credential:a/b",
            "credential:..",
            "credential:",
        ] {
            assert!(
                matches!(
                    SecretSource::new(bad).path(),
                    Err(SecretError::BadCredentialName(_))
                ),
                "{bad}"
            );
        }
        assert!(!matches!(
            SecretSource::new("credential:token-pin").path(),
            Err(SecretError::BadCredentialName(_))
        ));
    }
}
