//! `[[tokens]]`: the PKCS#11 tokens, each found by label or serial.

use std::path::PathBuf;

use serde::Deserialize;

use crate::secrets::SecretSource;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    Bridge,
    Source,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub module: PathBuf,
    pub token_label: Option<String>,
    pub token_serial: Option<String>,
    pub pin_file: String,
    pub profile: String,
    pub role: TokenRole,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Label of the vault key-encryption key (bridge token only).
    #[serde(default = "default_kek_label")]
    pub kek_label: String,
    /// Overrides the profile's login user: "user" or "crypto-user".
    pub login_user: Option<String>,
    /// How long one token operation may take before the request is answered 503 and its
    /// session abandoned (a hung HSM must not hold requests for ever).
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
}

fn default_sessions() -> usize {
    4
}

fn default_call_timeout() -> u64 {
    30
}

fn default_kek_label() -> String {
    "hsm-bridge-vault-kek".to_owned()
}

impl TokenConfig {
    pub fn pin_source(&self) -> SecretSource {
        SecretSource::new(self.pin_file.clone())
    }
}
