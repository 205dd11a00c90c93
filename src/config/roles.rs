//! `[auth.roles]`: which JWT groups hold which role.

use serde::Deserialize;

/// Each role's groups. A group in `auth.allowed_groups` holds every role.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    /// The GET routes.
    #[serde(default)]
    pub reader: Vec<String>,
    /// upload-key (and upload jobs).
    #[serde(default)]
    pub uploader: Vec<String>,
    /// The key actions, records, policy templates and synchronization jobs.
    #[serde(default, rename = "key-admin")]
    pub key_admin: Vec<String>,
    /// Creating, deleting and restoring vault keys.
    #[serde(default, rename = "vault-admin")]
    pub vault_admin: Vec<String>,
    /// Exporting vault keys (wrapped), with a peer token.
    #[serde(default)]
    pub exporter: Vec<String>,
}

impl RolesConfig {
    pub fn is_empty(&self) -> bool {
        self.reader.is_empty()
            && self.uploader.is_empty()
            && self.key_admin.is_empty()
            && self.vault_admin.is_empty()
            && self.exporter.is_empty()
    }
}
