//! Typed configuration: a TOML file read with the `config` crate, every key overridable from
//! the environment.
//!
//! Environment naming: `HSM_BRIDGE__` followed by the key path in upper case, sections and
//! keys separated by `__`, array entries by their index. Examples:
//! `HSM_BRIDGE__SERVER__LISTEN=127.0.0.1:9443`, `HSM_BRIDGE__TOKENS__0__PIN_FILE=/run/pin`,
//! `HSM_BRIDGE__AUTH__ALLOWED_GROUPS='["admin","CCKM Admins"]'` (lists as JSON arrays).

mod jobs;
mod roles;
mod schedules;
mod store;
mod sync;
mod tokens;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use jobs::JobsConfig;
pub use roles::RolesConfig;
pub use schedules::SchedulesConfig;
pub use store::{ClusterConfig, StoreConfig};
pub use sync::SyncConfig;
pub use tokens::{TokenConfig, TokenRole};

use serde::Deserialize;

use crate::secrets::SecretSource;

pub const ENV_PREFIX: &str = "HSM_BRIDGE__";

/// `[audit]`: the audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain's head is sealed with the token's MAC (and at every stop).
    #[serde(default = "default_seal_interval")]
    pub seal_interval_secs: u64,
}

fn default_seal_interval() -> u64 {
    60
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            seal_interval_secs: default_seal_interval(),
        }
    }
}

/// The file a configuration came from and the SHA-256 of its text.
#[derive(Debug, Clone)]
pub struct LoadedFrom {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the configuration was read from (for the audit log); not a key of the file.
    #[serde(skip)]
    pub loaded_from: Option<LoadedFrom>,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub kms: Vec<KmsConfig>,
    #[serde(default)]
    pub cleanup: CleanupConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub schedules: SchedulesConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub vault: VaultConfig,
    /// Other CipherTrust Managers this bridge fetches keys from (`external-cm` tier).
    #[serde(default)]
    pub external_cm: Vec<ExternalCmConfig>,
    /// Data Security Managers reached over KMIP (`dsm` tier).
    #[serde(default)]
    pub dsm: Vec<DsmConfig>,
    /// Users of `POST /api/v1/auth/tokens`, when this bridge itself serves as an external
    /// CipherTrust Manager.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Who may export vault keys (wrapped), and under which wrapping keys; see
    /// [`Config::export_policy`] for what holds without this section.
    pub export: Option<ExportConfig>,
}

/// Wrapped exports of vault keys (`POST /api/v1/vault/keys2/{id}/export`). Whoever may export
/// chooses the wrapping key, so this is the power to read keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Groups (from `cust.groups`) allowed to export; none: exports are disabled.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// SHA-256 fingerprints (`sha256:<hex>` of the SubjectPublicKeyInfo DER) of the only
    /// wrapping keys exports may use, such as peer bridges' transport keys; none: any key.
    #[serde(default)]
    pub allowed_wrapping_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCmConfig {
    pub name: String,
    /// https://host[:port] (plain http only towards a loopback address).
    pub url: String,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub refresh_token_file: Option<String>,
    /// CA certificate(s) to trust for this CM, PEM; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Renew the JWT this long before it expires.
    #[serde(default = "default_renew_before")]
    pub renew_before_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_renew_before() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DsmWrapping {
    /// A KEK present in both the DSM (by KMIP Name) and the bridge token (by label); RFC 3394.
    AesKw,
    /// The bridge token's transport public key, registered in the DSM under a Name; RSA-OAEP.
    RsaOaep,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsmConfig {
    pub name: String,
    pub host: String,
    #[serde(default = "default_kmip_port")]
    pub port: u16,
    pub client_cert_file: PathBuf,
    pub client_key_file: String,
    pub ca_file: PathBuf,
    /// The name the server certificate is checked against (default: `host`).
    pub server_name: Option<String>,
    pub wrapping: DsmWrapping,
    /// aes-kw: the KEK's KMIP Name in the DSM.
    pub kek_name: Option<String>,
    /// aes-kw: the KEK's CKA_LABEL in the bridge token (default: `kek_name`).
    pub kek_label: Option<String>,
    /// rsa-oaep: the KMIP Name under which the bridge token's transport public key is registered.
    pub transport_key_name: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_kmip_port() -> u16 {
    5696
}

/// The export rules in force (see [`Config::export_policy`]).
#[derive(Debug, Clone, Default)]
pub struct ExportPolicy {
    pub allowed_groups: Vec<String>,
    /// Set when no `[export]` section exists: only these users (name -> their configured
    /// groups) may export, as tokens from `POST /api/v1/auth/tokens` name them.
    pub peers_only: Option<std::collections::BTreeMap<String, Vec<String>>>,
    pub allowed_wrapping_keys: Vec<String>,
}

impl ExportPolicy {
    /// Whether a caller (user name and token groups) may export.
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        match &self.peers_only {
            Some(peers) => peers
                .get(user)
                .is_some_and(|own| groups.iter().any(|g| own.contains(g))),
            None => groups.iter().any(|g| self.allowed_groups.contains(g)),
        }
    }

    pub fn disabled(&self) -> bool {
        match &self.peers_only {
            Some(peers) => peers.is_empty(),
            None => self.allowed_groups.is_empty(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An Argon2 PHC string (`hsm-bridge hash-password` makes one).
    pub password_hash: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Plain HTTP; refused unless `listen` is a loopback address.
    #[serde(default)]
    pub plaintext: bool,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// When set, the bound address is written here once the server listens
    /// (useful with port 0).
    pub address_file: Option<PathBuf>,
    /// A client must send a request's headers within this time (also the longest an idle
    /// keep-alive connection stays open).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// A whole request, body included, must be read and answered within this time.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Open connections at most; one more is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Uploads (requests and job items) that do their work at the same time; more wait for a
    /// turn, after their request was checked. AWS's quotas pace an account's uploads to a few
    /// per second in each Region, so more at once only costs memory.
    #[serde(default = "default_max_active_uploads")]
    pub max_active_uploads: usize,
    /// A second listener, plain HTTP on a loopback address, serving `GET /metrics` only and
    /// without a token (for a Prometheus agent on the host). `/metrics` on the API stays,
    /// for `reader`s.
    pub metrics_listen: Option<SocketAddr>,
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}

fn default_header_read_timeout() -> u64 {
    10
}

fn default_request_timeout() -> u64 {
    120
}

fn default_max_connections() -> usize {
    512
}

fn default_max_active_uploads() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub issuer: String,
    pub jwt_secret_file: Option<String>,
    pub jwt_public_key_file: Option<String>,
    /// Only used by `hsm-bridge token` when the daemon verifies RS256/ES256.
    pub jwt_private_key_file: Option<String>,
    /// Groups holding every role.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Groups holding one role each.
    #[serde(default)]
    pub roles: RolesConfig,
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Lifetime of refresh tokens issued by `POST /api/v1/auth/tokens`.
    #[serde(default = "default_refresh_ttl")]
    pub refresh_token_ttl_secs: u64,
    /// Failed password grants in a row that lock the user (and the source address).
    #[serde(default = "default_lockout_after")]
    pub lockout_after_failures: u32,
    /// How long such a lock lasts.
    #[serde(default = "default_lockout_secs")]
    pub lockout_secs: u64,
}

/// A KMS endpoint must be https: over plain http anyone on the path could hand the bridge a
/// wrapping key of their own. Plain http is allowed on loopback only (an emulator, a local
/// proxy).
fn check_endpoint(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL (https://host[:port])"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "`{url}` is plain http to a host that is not loopback; use https (over http \
                     anyone on the path could substitute the wrapping key)"
                ))
            }
        }
        other => Err(format!("`{url}`: the scheme must be https, not {other}")),
    }
}

fn default_lockout_after() -> u32 {
    5
}

fn default_lockout_secs() -> u64 {
    300
}

fn default_token_ttl() -> u64 {
    300
}

fn default_refresh_ttl() -> u64 {
    24 * 3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    pub name: String,
    pub id: String,
    pub account_id: String,
    pub regions: Vec<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub assume_role_arn: Option<String>,
    #[serde(default = "default_cloud_name")]
    pub cloud_name: String,
    /// RSA_2048, RSA_3072 or RSA_4096: the wrapping key AWS is asked for.
    #[serde(default = "default_wrapping_key_spec")]
    pub wrapping_key_spec: String,
    /// Attempts per AWS call (the SDK's standard retry mode).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long one exchange with AWS may take before it is given up (and retried, within
    /// `max_attempts`); time queued behind the request limiter is not counted.
    #[serde(default = "default_timeout")]
    pub operation_timeout_secs: u64,
    /// A material lease for every upload through this connection that names no expiry of
    /// its own (1 to 365 days).
    pub lease_days: Option<u64>,
    /// Requests per second per operation, replacing AWS's default quotas for this account
    /// (after a quota increase, say): `{ GetParametersForImport = 20 }`.
    #[serde(default)]
    pub request_quotas: std::collections::BTreeMap<String, f64>,
    /// How long a throttled call is sent again before its throttling is the caller's error.
    #[serde(default = "default_throttle_deadline")]
    pub throttle_deadline_secs: u64,
}

fn default_throttle_deadline() -> u64 {
    120
}

fn default_cloud_name() -> String {
    "aws".to_owned()
}
fn default_wrapping_key_spec() -> String {
    "RSA_4096".to_owned()
}
fn default_max_attempts() -> u32 {
    3
}
fn default_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupConfig {
    /// How often half-made AWS keys still awaiting deletion are retried.
    #[serde(default = "default_cleanup_interval")]
    pub interval_secs: u64,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            interval_secs: default_cleanup_interval(),
        }
    }
}

fn default_cleanup_interval() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub json: bool,
    /// Put token and AWS error details in the logs (never in responses).
    #[serde(default)]
    pub detailed_errors: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            json: false,
            detailed_errors: false,
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Name of the bridge token that holds the vault (default: the only bridge token).
    pub token: Option<String>,
    /// How long a deleted vault key can be restored before its wrapped row is purged.
    #[serde(default = "default_deleted_retention")]
    pub deleted_retention_secs: u64,
}

fn default_deleted_retention() -> u64 {
    30 * 24 * 3600
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            token: None,
            deleted_retention_secs: default_deleted_retention(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Who may export. Without an `[export]` section: only the `[[users]]` this bridge issues
    /// tokens to (its peers, when it serves as their external CipherTrust Manager), each with
    /// its own groups, to any wrapping key; without users, nobody.
    pub fn export_policy(&self) -> ExportPolicy {
        match &self.export {
            Some(e) => ExportPolicy {
                allowed_groups: e.allowed_groups.clone(),
                peers_only: None,
                allowed_wrapping_keys: e.allowed_wrapping_keys.clone(),
            },
            None => ExportPolicy {
                allowed_groups: Vec::new(),
                peers_only: Some(
                    self.users
                        .iter()
                        .map(|u| (u.name.clone(), u.groups.clone()))
                        .collect(),
                ),
                allowed_wrapping_keys: Vec::new(),
            },
        }
    }

    /// Reads the file and the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "no such file".into(),
            });
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml));
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = env_key_to_path(rest)
                .ok_or_else(|| ConfigError::key(name.clone(), "not a valid key path"))?;
            builder = builder
                .set_override(&key, env_value(&value))
                .map_err(|e| ConfigError::key(key.clone(), e.to_string()))?;
        }
        let built = builder.build().map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        let mut cfg: Config = serde_path_to_error::deserialize(built).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::key(
                if key == "." { "(top)".into() } else { key },
                one_line(&e.inner().to_string()),
            )
        })?;
        cfg.check()?;
        cfg.loaded_from = Some(LoadedFrom {
            path: path.to_owned(),
            sha256: std::fs::read(path)
                .map(|b| {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(b))
                })
                .unwrap_or_default(),
        });
        Ok(cfg)
    }

    /// Rules serde cannot express.
    fn check(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (k, v) in [
            (
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
            ),
            ("server.request_timeout_secs", s.request_timeout_secs),
            ("server.max_connections", s.max_connections as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::key(k, "must be at least 1"));
            }
        }
        if let Some(m) = s.metrics_listen
            && !m.ip().is_loopback()
        {
            return Err(ConfigError::key(
                "server.metrics_listen",
                "must be a loopback address: it serves metrics without a token",
            ));
        }
        if s.plaintext {
            if !s.listen.ip().is_loopback() {
                return Err(ConfigError::key(
                    "server.plaintext",
                    "plain HTTP is only allowed on a loopback listen address",
                ));
            }
        } else {
            if s.tls_cert_file.is_none() {
                return Err(ConfigError::key(
                    "server.tls_cert_file",
                    "required unless server.plaintext = true",
                ));
            }
            if s.tls_key_file.is_none() {
                return Err(ConfigError::key(
                    "server.tls_key_file",
                    "required unless server.plaintext = true",
                ));
            }
        }
        if s.max_body_bytes < 1024 {
            return Err(ConfigError::key(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        let a = &self.auth;
        match (&a.jwt_secret_file, &a.jwt_public_key_file) {
            (None, None) => {
                return Err(ConfigError::key(
                    "auth.jwt_secret_file",
                    "one of auth.jwt_secret_file or auth.jwt_public_key_file is required",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "auth.jwt_public_key_file",
                    "give either auth.jwt_secret_file or auth.jwt_public_key_file, not both",
                ));
            }
            _ => {}
        }
        if a.issuer.trim().is_empty() {
            return Err(ConfigError::key("auth.issuer", "must not be empty"));
        }
        if a.allowed_groups.is_empty() {
            return Err(ConfigError::key(
                "auth.allowed_groups",
                "at least one group is required",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let k = |f: &str| format!("tokens[{i}].{f}");
            if t.name.trim().is_empty() {
                return Err(ConfigError::key(k("name"), "must not be empty"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(ConfigError::key(k("name"), "duplicate token name"));
            }
            match (&t.token_label, &t.token_serial) {
                (None, None) => {
                    return Err(ConfigError::key(
                        k("token_label"),
                        "token_label or token_serial is required",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::key(
                        k("token_serial"),
                        "give token_label or token_serial, not both",
                    ));
                }
                _ => {}
            }
            if let Err(e) = crate::pkcs11::profile::Profile::load(&t.profile) {
                return Err(ConfigError::key(k("profile"), e.to_string()));
            }
            if t.sessions == 0 || t.sessions > 64 {
                return Err(ConfigError::key(k("sessions"), "must be between 1 and 64"));
            }
            if t.call_timeout_secs == 0 || t.call_timeout_secs > 3600 {
                return Err(ConfigError::key(
                    k("call_timeout_secs"),
                    "must be between 1 and 3600",
                ));
            }
            if let Some(u) = &t.login_user
                && u != "user"
                && u != "crypto-user"
            {
                return Err(ConfigError::key(
                    k("login_user"),
                    "must be \"user\" or \"crypto-user\"",
                ));
            }
        }
        let bridges = self
            .tokens
            .iter()
            .filter(|t| t.role == TokenRole::Bridge)
            .count();
        if bridges == 0 {
            return Err(ConfigError::key(
                "tokens",
                "at least one token with role = \"bridge\" is required",
            ));
        }
        if let Some(v) = &self.vault.token {
            if !self
                .tokens
                .iter()
                .any(|t| &t.name == v && t.role == TokenRole::Bridge)
            {
                return Err(ConfigError::key(
                    "vault.token",
                    "must name a token with role = \"bridge\"",
                ));
            }
        } else if bridges > 1 {
            return Err(ConfigError::key(
                "vault.token",
                "required when more than one bridge token is configured",
            ));
        }
        let mut kms_names = BTreeSet::new();
        for (i, k) in self.kms.iter().enumerate() {
            let key = |f: &str| format!("kms[{i}].{f}");
            if k.name.trim().is_empty() {
                return Err(ConfigError::key(key("name"), "must not be empty"));
            }
            if k.id.trim().is_empty() {
                return Err(ConfigError::key(key("id"), "must not be empty"));
            }
            if !kms_names.insert(k.name.clone()) {
                return Err(ConfigError::key(key("name"), "duplicate kms name"));
            }
            if !kms_names.insert(format!("\u{0}id:{}", k.id)) {
                return Err(ConfigError::key(key("id"), "duplicate kms id"));
            }
            if k.account_id.len() != 12 || !k.account_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError::key(
                    key("account_id"),
                    "must be a 12-digit AWS account id",
                ));
            }
            if k.regions.is_empty() {
                return Err(ConfigError::key(
                    key("regions"),
                    "at least one region is required",
                ));
            }
            if !matches!(
                k.wrapping_key_spec.as_str(),
                "RSA_2048" | "RSA_3072" | "RSA_4096"
            ) {
                return Err(ConfigError::key(
                    key("wrapping_key_spec"),
                    "must be RSA_2048, RSA_3072 or RSA_4096",
                ));
            }
            if let Some(u) = &k.endpoint_url {
                check_endpoint(u).map_err(|why| ConfigError::key(key("endpoint_url"), why))?;
            }
            if k.max_attempts == 0 {
                return Err(ConfigError::key(key("max_attempts"), "must be at least 1"));
            }
            if k.lease_days.is_some_and(|d| !(1..=365).contains(&d)) {
                return Err(ConfigError::key(key("lease_days"), "must be 1 to 365"));
            }
            for (op, rate) in &k.request_quotas {
                if op.is_empty() || !op.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(ConfigError::key(
                        key("request_quotas"),
                        "keys are KMS operation names, like GetParametersForImport",
                    ));
                }
                if !(rate.is_finite() && *rate > 0.0 && *rate <= 100_000.0) {
                    return Err(ConfigError::key(
                        key("request_quotas"),
                        "rates are requests per second, above 0",
                    ));
                }
            }
            if !(1..=3600).contains(&k.throttle_deadline_secs) {
                return Err(ConfigError::key(
                    key("throttle_deadline_secs"),
                    "must be 1 to 3600",
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.external_cm.iter().enumerate() {
            let key = |f: &str| format!("external_cm[{i}].{f}");
            if c.name.trim().is_empty() || c.name.contains(':') {
                return Err(ConfigError::key(
                    key("name"),
                    "must be non-empty and without ':'",
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(ConfigError::key(key("name"), "duplicate name"));
            }
            let url = reqwest::Url::parse(&c.url)
                .map_err(|e| ConfigError::key(key("url"), e.to_string()))?;
            match url.scheme() {
                "https" => {}
                "http"
                    if url.host_str().is_some_and(|h| {
                        h == "localhost"
                            || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
                    }) => {}
                _ => {
                    return Err(ConfigError::key(
                        key("url"),
                        "must be https (plain http only towards a loopback address)",
                    ));
                }
            }
            match (&c.password_file, &c.refresh_token_file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::key(
                        key("password_file"),
                        "give exactly one of password_file or refresh_token_file",
                    ));
                }
                (Some(_), None) if c.username.is_none() => {
                    return Err(ConfigError::key(
                        key("username"),
                        "required with password_file",
                    ));
                }
                _ => {}
            }
        }
        for (i, d) in self.dsm.iter().enumerate() {
            let key = |f: &str| format!("dsm[{i}].{f}");
            if d.name.trim().is_empty() || d.name.contains(':') {
                return Err(ConfigError::key(
                    key("name"),
                    "must be non-empty and without ':'",
                ));
            }
            if !names.insert(d.name.clone()) {
                return Err(ConfigError::key(
                    key("name"),
                    "duplicate name among external_cm and dsm",
                ));
            }
            match d.wrapping {
                DsmWrapping::AesKw if d.kek_name.is_none() => {
                    return Err(ConfigError::key(
                        key("kek_name"),
                        "required with wrapping = \"aes-kw\"",
                    ));
                }
                DsmWrapping::RsaOaep if d.transport_key_name.is_none() => {
                    return Err(ConfigError::key(
                        key("transport_key_name"),
                        "required with wrapping = \"rsa-oaep\"",
                    ));
                }
                _ => {}
            }
        }
        let pinned = self
            .export
            .as_ref()
            .map(|e| e.allowed_wrapping_keys.as_slice())
            .unwrap_or_default();
        for (i, f) in pinned.iter().enumerate() {
            let ok = f
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(ConfigError::key(
                    format!("export.allowed_wrapping_keys[{i}]"),
                    "must be sha256:<64 hex digits> (hsm-bridge probe prints the transport key's)",
                ));
            }
        }
        let mut users = BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if !users.insert(u.name.clone()) {
                return Err(ConfigError::key(
                    format!("users[{i}].name"),
                    "duplicate user",
                ));
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                return Err(ConfigError::key(
                    format!("users[{i}].password_hash"),
                    "not a PHC password hash (make one with `hsm-bridge hash-password`)",
                ));
            }
        }
        if self.auth.allowed_groups.is_empty() && self.auth.roles.is_empty() {
            return Err(ConfigError::key(
                "auth.allowed_groups",
                "no group may do anything: set auth.allowed_groups (every role) or [auth.roles]",
            ));
        }
        if self.audit.seal_interval_secs == 0 {
            return Err(ConfigError::key(
                "audit.seal_interval_secs",
                "must be at least 1",
            ));
        }
        if let Err((key, why)) = self.sync.check() {
            return Err(ConfigError::key(key, why));
        }
        if let Err((key, why)) = self.schedules.check() {
            return Err(ConfigError::key(key, why));
        }
        if let Err((key, why)) = self.jobs.check() {
            return Err(ConfigError::key(key, why));
        }
        for check in [self.store.validate(), self.cluster.validate()] {
            check.map_err(|(key, why)| ConfigError::key(key, why))?;
        }
        if self.cleanup.interval_secs == 0 {
            return Err(ConfigError::key(
                "cleanup.interval_secs",
                "must be at least 1",
            ));
        }
        self.check_secret_files()
    }

    /// Every secret file that exists must be private to its owner; a credential name must be
    /// one file of the credentials directory. (A missing file is reported when it is read.)
    fn check_secret_files(&self) -> Result<(), ConfigError> {
        let mut files: Vec<(String, String)> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            files.push((format!("tokens[{i}].pin_file"), t.pin_file.clone()));
        }
        let a = &self.auth;
        for (k, v) in [
            ("auth.jwt_secret_file", &a.jwt_secret_file),
            ("auth.jwt_private_key_file", &a.jwt_private_key_file),
        ] {
            if let Some(v) = v {
                files.push((k.to_owned(), v.clone()));
            }
        }
        if let Some(k) = &self.server.tls_key_file {
            files.push((
                "server.tls_key_file".to_owned(),
                k.to_string_lossy().into_owned(),
            ));
        }
        for (i, c) in self.external_cm.iter().enumerate() {
            for (k, v) in [
                ("password_file", &c.password_file),
                ("refresh_token_file", &c.refresh_token_file),
            ] {
                if let Some(v) = v {
                    files.push((format!("external_cm[{i}].{k}"), v.clone()));
                }
            }
        }
        if let Some(f) = &self.store.password_file {
            files.push(("store.password_file".to_owned(), f.clone()));
        }
        for (i, d) in self.dsm.iter().enumerate() {
            files.push((
                format!("dsm[{i}].client_key_file"),
                d.client_key_file.clone(),
            ));
        }
        for (key, spec) in files {
            SecretSource::new(spec)
                .check_private()
                .map_err(|e| ConfigError::key(key, e.to_string()))?;
        }
        Ok(())
    }

    pub fn vault_token(&self) -> &TokenConfig {
        let name = self.vault.token.as_deref();
        self.tokens
            .iter()
            .filter(|t| t.role == TokenRole::Bridge)
            .find(|t| name.is_none_or(|n| n == t.name))
            .unwrap_or(&self.tokens[0])
    }
}

/// `TOKENS__0__PIN_FILE` -> `tokens[0].pin_file`
fn env_key_to_path(rest: &str) -> Option<String> {
    let mut out = String::new();
    for part in rest.split("__") {
        if part.is_empty() {
            return None;
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            if out.is_empty() {
                return None;
            }
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part.to_ascii_lowercase());
        }
    }
    (!out.is_empty()).then_some(out)
}

fn env_value(raw: &str) -> config::Value {
    if raw.trim_start().starts_with('[')
        && let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(raw)
    {
        let list: Vec<config::Value> = items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => config::Value::from(s),
                other => config::Value::from(other.to_string()),
            })
            .collect();
        return config::Value::from(list);
    }
    config::Value::from(raw.to_owned())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
plaintext = true

[auth]
issuer = "hsm-bridge"
jwt_secret_file = "/run/jwt"
allowed_groups = ["admin"]

[store]
path = "/tmp/x.db"

[[tokens]]
name = "bridge"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "bridge"
pin_file = "/run/pin"
profile = "softhsm2"
role = "bridge"

[[kms]]
name = "kms"
id = "k1"
account_id = "000000000000"
regions = ["us-east-1"]
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).expect("write");
        Config::load_with_env(&p, env.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn good_config_loads() {
        let c = load(GOOD, &[]).expect("loads");
        assert_eq!(c.tokens[0].sessions, 4);
        assert_eq!(c.kms[0].wrapping_key_spec, "RSA_4096");
    }

    #[test]
    fn env_overrides_scalars_arrays_and_lists() {
        let c = load(
            GOOD,
            &[
                ("HSM_BRIDGE__TOKENS__0__PIN_FILE", "/other/pin"),
                ("HSM_BRIDGE__TOKENS__0__SESSIONS", "7"),
                ("HSM_BRIDGE__AUTH__ALLOWED_GROUPS", r#"["a","b"]"#),
                ("HSM_BRIDGE__KMS__0__ENDPOINT_URL", "http://127.0.0.1:1"),
            ],
        )
        .expect("loads");
        assert_eq!(c.tokens[0].pin_file, "/other/pin");
        assert_eq!(c.tokens[0].sessions, 7);
        assert_eq!(c.auth.allowed_groups, vec!["a", "b"]);
        assert_eq!(c.kms[0].endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn kms_endpoints_are_https_unless_loopback() {
        for ok in [
            "https://kms.eu-west-1.amazonaws.com",
            "http://127.0.0.1:4566",
            "http://localhost:4566/",
            "http://[::1]:4566",
            "https://user@vpce-1.kms.eu-west-1.vpce.amazonaws.com:443/x",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:4566",
            "http://kms.example.com",
            "http://127.0.0.1.evil.example:80",
            "ftp://127.0.0.1",
            "kms.example.com",
            "http://",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exports_default_to_the_peer_users_only_and_are_pinned_by_fingerprint() {
        let c = load(GOOD, &[]).expect("loads");
        assert!(c.export_policy().disabled(), "no users: nobody");
        let users = format!(
            "{GOOD}\n[[users]]\nname = \"peer\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\ngroups = [\"CCKM Admins\", \"x\"]\n"
        );
        let p = load(&users, &[]).expect("loads").export_policy();
        let admins = ["CCKM Admins".to_owned()];
        assert!(p.allows("peer", &admins), "the peer, with its group");
        assert!(
            !p.allows("operator", &admins),
            "another user with the same group is not a peer"
        );
        assert!(
            !p.allows("peer", &["y".to_owned()]),
            "nor the peer without its groups"
        );
        let explicit = format!("{users}\n[export]\nallowed_groups = []\n");
        let p = load(&explicit, &[]).expect("loads").export_policy();
        assert!(p.disabled(), "an explicit empty list disables exports");
        let named = format!("{users}\n[export]\nallowed_groups = [\"CCKM Admins\"]\n");
        let p = load(&named, &[]).expect("loads").export_policy();
        assert!(
            p.allows("operator", &admins),
            "[export] names groups, for any user"
        );
        let bad = format!("{users}\n[export]\nallowed_wrapping_keys = [\"abc\"]\n");
        let e = load(&bad, &[]).expect_err("refused").to_string();
        assert!(e.contains("export.allowed_wrapping_keys[0]"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("plaintext = true", "plaintext = true\nbogus = 1");
        let e = load(&text, &[]).expect_err("refused").to_string();
        assert!(e.contains("server") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let text = GOOD.replace("profile = \"softhsm2\"\n", "");
        let e = load(&text, &[]).expect_err("refused").to_string();
        assert!(e.contains("tokens[0]") && e.contains("profile"), "{e}");
    }

    #[test]
    fn plaintext_needs_loopback() {
        let text = GOOD.replace("127.0.0.1:0", "0.0.0.0:8443");
        let e = load(&text, &[]).expect_err("refused").to_string();
        assert!(e.contains("server.plaintext"), "{e}");
    }

    #[test]
    fn bad_type_is_named() {
        let e = load(GOOD, &[("HSM_BRIDGE__TOKENS__0__SESSIONS", "many")])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("sessions"), "{e}");
    }
}
