//! AWS KMS: one client per configured connection and region, the calls of the import flow,
//! and the mapping of AWS failures to what the caller is told.

pub mod actions;
pub mod error;
pub mod limiter;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::{Blob, DateTime};
use aws_sdk_kms::types::{
    AlgorithmSpec, ExpirationModelType, KeyMetadata, KeySpec as AwsKeySpec, KeyUsageType,
    OriginType, Tag, WrappingKeySpec,
};
use tokio::sync::Mutex;

pub use self::error::{KmsError, KmsErrorKind};
use crate::cckm::spec::{KeySpec, KeyUsage, WrappingAlgorithm};
use crate::config::KmsConfig;

/// A configured KMS connection (`[[kms]]`).
#[derive(Debug, Clone)]
pub struct KmsConn {
    pub cfg: KmsConfig,
}

impl KmsConn {
    pub fn has_region(&self, region: &str) -> bool {
        self.cfg.regions.iter().any(|r| r == region)
    }
}

/// A client whose calls the SDK never retries, for CreateKey: a retry after a lost answer
/// would make a second key. Built once per connection and region, beside the ordinary one
/// (overriding the retry policy per call rebuilds the client's runtime on every call).
#[derive(Clone)]
pub struct CreateClient(Client);

/// The two clients of one connection and Region, once built.
type ClientsCell = tokio::sync::OnceCell<(Client, CreateClient)>;

pub struct KmsRegistry {
    conns: Vec<KmsConn>,
    /// One per connection and Region, built by the first caller while the others wait for it
    /// (a burst of first uploads would otherwise load the configuration once each).
    clients: Mutex<HashMap<(String, String), Arc<ClientsCell>>>,
    limiter: Arc<limiter::Limiter>,
}

impl KmsRegistry {
    pub fn new(cfgs: &[KmsConfig]) -> Self {
        let per_account: Vec<_> = cfgs
            .iter()
            .map(|c| {
                (
                    c.account_id.clone(),
                    c.request_quotas
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    Duration::from_secs(c.throttle_deadline_secs),
                )
            })
            .collect();
        Self {
            conns: cfgs.iter().cloned().map(|cfg| KmsConn { cfg }).collect(),
            clients: Mutex::new(HashMap::new()),
            limiter: Arc::new(limiter::Limiter::new(&per_account)),
        }
    }

    /// By name, else by id.
    pub fn find(&self, name_or_id: &str) -> Option<&KmsConn> {
        self.conns
            .iter()
            .find(|c| c.cfg.name == name_or_id)
            .or_else(|| self.conns.iter().find(|c| c.cfg.id == name_or_id))
    }

    pub fn all(&self) -> &[KmsConn] {
        &self.conns
    }

    pub async fn client(&self, conn: &KmsConn, region: &str) -> Client {
        self.clients_for(conn, region).await.0
    }

    /// The client CreateKey is sent with.
    pub async fn create_client(&self, conn: &KmsConn, region: &str) -> CreateClient {
        self.clients_for(conn, region).await.1
    }

    async fn clients_for(&self, conn: &KmsConn, region: &str) -> (Client, CreateClient) {
        let key = (conn.cfg.id.clone(), region.to_owned());
        let cell = self.clients.lock().await.entry(key).or_default().clone();
        // Built without the map's lock held: loading credentials may take a while.
        cell.get_or_init(|| async {
            let c = build_client(&conn.cfg, region, &self.limiter).await;
            let once = CreateClient(Client::from_conf(
                c.config()
                    .to_builder()
                    .retry_config(RetryConfig::disabled())
                    .build(),
            ));
            (c, once)
        })
        .await
        .clone()
    }
}

async fn build_client(cfg: &KmsConfig, region: &str, limiter: &Arc<limiter::Limiter>) -> Client {
    // No operation timeout of the SDK's: it would count the limiter's wait. The limited client
    // bounds each exchange instead.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.max_attempts))
        .timeout_config(timeouts)
        // The limited client bounds every exchange in time already (`operation_timeout_secs`);
        // the SDK's own watch over each body's throughput would only repeat it, per call.
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
        );
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    if let Some(u) = &cfg.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let base = loader.load().await;
    let sdk = match &cfg.assume_role_arn {
        Some(arn) => {
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name("hsm-bridge")
                .region(Region::new(region.to_owned()))
                .configure(&base)
                .build()
                .await;
            base.into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build()
        }
        None => base,
    };
    // Every call of every client is counted (`GET /metrics`) and paced by the limiter.
    let mut b =
        aws_sdk_kms::config::Builder::from(&sdk).interceptor(crate::metrics::KmsCallCounter);
    // The SDK's own default HTTPS client (hyper 1 and rustls), built here so that it can be
    // wrapped: aws-config leaves it to the client otherwise.
    let inner = sdk.http_client().unwrap_or_else(|| {
        use aws_smithy_http_client::tls;
        aws_smithy_http_client::Builder::new()
            // An idle connection is given up before a server would close it (AWS's idle
            // timeout is longer; LocalStack's is 5 s): one never goes out on a connection
            // the server has just closed, which CreateKey, never retried, could not survive.
            .pool_idle_timeout(Duration::from_secs(4))
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build_https()
    });
    b = b.http_client(limiter::LimitedClient {
        inner,
        limiter: limiter.clone(),
        account: cfg.account_id.clone(),
        region: region.to_owned(),
        exchange_timeout: Duration::from_secs(cfg.operation_timeout_secs),
    });
    Client::from_conf(b.build())
}

fn aws_spec(s: KeySpec) -> AwsKeySpec {
    AwsKeySpec::from(s.as_str())
}

fn aws_usage(u: KeyUsage) -> KeyUsageType {
    KeyUsageType::from(u.as_str())
}

pub struct CreateKeyInput<'a> {
    pub spec: KeySpec,
    pub usage: KeyUsage,
    pub description: &'a str,
    pub policy: &'a str,
    pub bypass_lockout: bool,
    pub multi_region: bool,
    pub tags: &'a [(String, String)],
}

pub async fn create_key(
    client: &CreateClient,
    input: CreateKeyInput<'_>,
) -> Result<KeyMetadata, KmsError> {
    let mut req = client
        .0
        .create_key()
        .key_spec(aws_spec(input.spec))
        .key_usage(aws_usage(input.usage))
        .origin(OriginType::External)
        .description(input.description)
        .policy(input.policy)
        .bypass_policy_lockout_safety_check(input.bypass_lockout)
        .multi_region(input.multi_region);
    for (k, v) in input.tags {
        let tag = Tag::builder()
            .tag_key(k)
            .tag_value(v)
            .build()
            .map_err(|e| KmsError::internal("CreateKey", e.to_string()))?;
        req = req.tags(tag);
    }
    // Never retried by the SDK (`CreateClient`): the caller looks for the key a lost answer
    // may hide by its upload tag instead.
    let out = req
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("CreateKey", e))?;
    out.key_metadata
        .ok_or_else(|| KmsError::upstream("CreateKey", "answer without key metadata"))
}

/// The key's metadata (DescribeKey).
pub async fn describe(client: &Client, key_id: &str) -> Result<KeyMetadata, KmsError> {
    client
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("DescribeKey", e))?
        .key_metadata
        .ok_or_else(|| KmsError::upstream("DescribeKey", "answer without key metadata"))
}

pub struct ImportParameters {
    pub public_key_der: Vec<u8>,
    pub import_token: Vec<u8>,
}

pub async fn get_parameters_for_import(
    client: &Client,
    key_id: &str,
    alg: WrappingAlgorithm,
    wrapping_key_spec: &str,
) -> Result<ImportParameters, KmsError> {
    let out = client
        .get_parameters_for_import()
        .key_id(key_id)
        .wrapping_algorithm(AlgorithmSpec::from(alg.as_str()))
        .wrapping_key_spec(WrappingKeySpec::from(wrapping_key_spec))
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("GetParametersForImport", e))?;
    let public_key_der = out.public_key.map(Blob::into_inner).ok_or_else(|| {
        KmsError::upstream("GetParametersForImport", "answer without a public key")
    })?;
    let import_token = out.import_token.map(Blob::into_inner).ok_or_else(|| {
        KmsError::upstream("GetParametersForImport", "answer without an import token")
    })?;
    Ok(ImportParameters {
        public_key_der,
        import_token,
    })
}

/// How material is imported: its expiry (none: it never expires) and its description.
#[derive(Debug, Default, Clone)]
pub struct MaterialImport<'a> {
    pub valid_to: Option<time::OffsetDateTime>,
    pub description: Option<&'a str>,
    /// `ImportType=NEW_KEY_MATERIAL`: material for an on-demand rotation, not a re-import.
    pub new_material: bool,
}

pub async fn import_key_material(
    client: &Client,
    key_id: &str,
    params: &ImportParameters,
    wrapped: Vec<u8>,
    import: &MaterialImport<'_>,
) -> Result<(), KmsError> {
    let mut req = client
        .import_key_material()
        .key_id(key_id)
        .import_token(Blob::new(params.import_token.clone()))
        .encrypted_key_material(Blob::new(wrapped))
        .set_key_material_description(import.description.map(str::to_owned));
    if import.new_material {
        req = req.import_type(aws_sdk_kms::types::ImportType::NewKeyMaterial);
    }
    req = match import.valid_to {
        Some(t) => req
            .expiration_model(ExpirationModelType::KeyMaterialExpires)
            .valid_to(DateTime::from_secs(t.unix_timestamp())),
        None => req.expiration_model(ExpirationModelType::KeyMaterialDoesNotExpire),
    };
    req.send()
        .await
        .map_err(|e| KmsError::from_sdk("ImportKeyMaterial", e))?;
    Ok(())
}

/// CreateAlias. When AWS says the alias exists and it points at `key_id`, an earlier try whose
/// answer was lost made it: that is success, not a conflict.
pub async fn create_alias(client: &Client, alias: &str, key_id: &str) -> Result<(), KmsError> {
    match client
        .create_alias()
        .alias_name(alias)
        .target_key_id(key_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = KmsError::from_sdk("CreateAlias", e);
            if err.code.as_deref() == Some("AlreadyExistsException")
                && let Ok(m) = describe(client, alias).await
                && m.key_id() == key_id
            {
                tracing::info!(
                    alias,
                    key_id,
                    "the alias already points at this key (an earlier answer was lost)"
                );
                return Ok(());
            }
            Err(err)
        }
    }
}

/// Whether an alias is taken, asked before anything is created.
pub async fn alias_exists(client: &Client, alias: &str) -> Result<bool, KmsError> {
    match client.describe_key().key_id(alias).send().await {
        Ok(_) => Ok(true),
        Err(e) => {
            let err = KmsError::from_sdk("DescribeKey", e);
            if err.code.as_deref() == Some("NotFoundException") {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// Everything the record shows about a key, read back from AWS.
pub struct KeyState {
    pub metadata: KeyMetadata,
    pub policy: String,
    pub aliases: Vec<String>,
    pub tags: Vec<(String, String)>,
    /// GetKeyRotationStatus; `false` where AWS does not rotate the key (imported material).
    pub rotation_enabled: bool,
}

/// What the bridge itself sent with a new key, which an upload does not read back.
pub struct Sent<'a> {
    pub policy: &'a str,
    pub aliases: Vec<String>,
    pub tags: &'a [(String, String)],
}

/// The state of a key the bridge just made: one DescribeKey, the rest from what it sent (the
/// periodic synchronization keeps the record true afterwards). Imported material is never
/// rotated by AWS on a schedule, so rotation is off.
pub async fn read_new_state(
    client: &Client,
    key_id: &str,
    sent: Sent<'_>,
) -> Result<KeyState, KmsError> {
    Ok(KeyState {
        metadata: describe(client, key_id).await?,
        policy: sent.policy.to_owned(),
        aliases: sent.aliases,
        tags: sent.tags.to_vec(),
        rotation_enabled: false,
    })
}

pub async fn read_state(client: &Client, key_id: &str) -> Result<KeyState, KmsError> {
    let metadata = client
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("DescribeKey", e))?
        .key_metadata
        .ok_or_else(|| KmsError::upstream("DescribeKey", "answer without key metadata"))?;
    let policy = client
        .get_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("GetKeyPolicy", e))?
        .policy
        .unwrap_or_default();
    let mut aliases = Vec::new();
    let mut marker = None;
    loop {
        let out = client
            .list_aliases()
            .key_id(key_id)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| KmsError::from_sdk("ListAliases", e))?;
        aliases.extend(
            out.aliases()
                .iter()
                .filter_map(|a| a.alias_name().map(str::to_owned)),
        );
        match (out.truncated, out.next_marker) {
            (true, Some(m)) => marker = Some(m),
            _ => break,
        }
    }
    let mut tags = Vec::new();
    let mut marker = None;
    loop {
        let out = client
            .list_resource_tags()
            .key_id(key_id)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| KmsError::from_sdk("ListResourceTags", e))?;
        tags.extend(
            out.tags()
                .iter()
                .map(|t| (t.tag_key().to_owned(), t.tag_value().to_owned())),
        );
        match (out.truncated, out.next_marker) {
            (true, Some(m)) => marker = Some(m),
            _ => break,
        }
    }
    let rotation_enabled = match client.get_key_rotation_status().key_id(key_id).send().await {
        Ok(out) => out.key_rotation_enabled,
        Err(e) => {
            let err = KmsError::from_sdk("GetKeyRotationStatus", e);
            // Imported keys do not rotate automatically; AWS says so as an unsupported
            // operation (or, pending deletion, an invalid state).
            if err.answered() && err.kind != KmsErrorKind::NotFound {
                false
            } else {
                return Err(err);
            }
        }
    };
    Ok(KeyState {
        metadata,
        policy,
        aliases,
        tags,
        rotation_enabled,
    })
}

/// Schedules deletion at the shortest window AWS allows (7 days). A key already pending
/// deletion counts as done.
pub async fn schedule_deletion(
    client: &Client,
    key_id: &str,
) -> Result<Option<DateTime>, KmsError> {
    match client
        .schedule_key_deletion()
        .key_id(key_id)
        .pending_window_in_days(7)
        .send()
        .await
    {
        Ok(out) => Ok(out.deletion_date),
        Err(e) => {
            let err = KmsError::from_sdk("ScheduleKeyDeletion", e);
            // Already pending deletion (an earlier answer was lost): done, with its date.
            if err.code.as_deref() == Some("KMSInvalidStateException")
                && let Ok(m) = describe(client, key_id).await
                && m.key_state() == Some(&aws_sdk_kms::types::KeyState::PendingDeletion)
            {
                return Ok(m.deletion_date().cloned());
            }
            Err(err)
        }
    }
}

/// Removes `alias` if it still points at `key_id` (a failed upload's alias); a missing alias
/// or one that points elsewhere is left alone.
pub async fn delete_alias_of(client: &Client, alias: &str, key_id: &str) -> Result<(), KmsError> {
    match client.describe_key().key_id(alias).send().await {
        Ok(out) => {
            if out.key_metadata().map(|m| m.key_id()) != Some(key_id) {
                return Ok(());
            }
        }
        Err(e) => {
            let err = KmsError::from_sdk("DescribeKey", e);
            return if err.kind == KmsErrorKind::NotFound {
                Ok(())
            } else {
                Err(err)
            };
        }
    }
    match client.delete_alias().alias_name(alias).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = KmsError::from_sdk("DeleteAlias", e);
            if err.kind == KmsErrorKind::NotFound {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// Keys whose tag `tag_key` equals `value` (crash recovery; walks the region's keys). Keys
/// whose tags cannot be read are skipped; only failing to list keys is an error.
pub async fn find_keys_tagged(
    client: &Client,
    tag_key: &str,
    value: &str,
) -> Result<Vec<String>, KmsError> {
    let mut found = Vec::new();
    let mut marker = None;
    loop {
        let out = client
            .list_keys()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| KmsError::from_sdk("ListKeys", e))?;
        for k in out.keys() {
            let Some(id) = k.key_id() else { continue };
            let tags = match client.list_resource_tags().key_id(id).send().await {
                Ok(t) => t,
                Err(e) => {
                    let err = KmsError::from_sdk("ListResourceTags", e);
                    if err.code.is_none() {
                        return Err(err);
                    }
                    continue;
                }
            };
            if tags
                .tags()
                .iter()
                .any(|t| t.tag_key() == tag_key && t.tag_value() == value)
            {
                found.push(id.to_owned());
            }
        }
        match (out.truncated, out.next_marker) {
            (true, Some(m)) => marker = Some(m),
            _ => break,
        }
    }
    Ok(found)
}

pub type SharedKms = Arc<KmsRegistry>;
