//! The local vault (the `local` tier's keys): keys generated in the bridge token or imported
//! from caller material, kept outside the token wrapped under a KEK that never leaves it.
//! Plaintext is never read out of the token; imported material is pushed in at once and wiped.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::cckm::spec::KeySpec;
use crate::error::DomainError;
use crate::pkcs11::mechanism_ext::RawMechanism;
use crate::pkcs11::ops::{self, SecretKind, SessionObject};
use crate::pkcs11::{Token, TokenError};
use crate::store::vault::{ListFilter, VaultKeyRow};
use crate::store::{Store, now_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultAlgorithm {
    Aes,
    HmacSha224,
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl VaultAlgorithm {
    const ALL: [VaultAlgorithm; 5] = [
        VaultAlgorithm::Aes,
        VaultAlgorithm::HmacSha224,
        VaultAlgorithm::HmacSha256,
        VaultAlgorithm::HmacSha384,
        VaultAlgorithm::HmacSha512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VaultAlgorithm::Aes => "aes",
            VaultAlgorithm::HmacSha224 => "hmac-sha224",
            VaultAlgorithm::HmacSha256 => "hmac-sha256",
            VaultAlgorithm::HmacSha384 => "hmac-sha384",
            VaultAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|a| a.name() == lower)
    }

    pub fn kind(self) -> SecretKind {
        match self {
            VaultAlgorithm::Aes => SecretKind::Aes,
            _ => SecretKind::Hmac,
        }
    }

    fn default_bits(self) -> u32 {
        match self {
            VaultAlgorithm::Aes | VaultAlgorithm::HmacSha256 => 256,
            VaultAlgorithm::HmacSha224 => 224,
            VaultAlgorithm::HmacSha384 => 384,
            VaultAlgorithm::HmacSha512 => 512,
        }
    }

    fn size_ok(self, bits: u32) -> Result<(), String> {
        match self {
            VaultAlgorithm::Aes if [128, 192, 256].contains(&bits) => Ok(()),
            VaultAlgorithm::Aes => Err("size: AES keys are 128, 192 or 256 bits".into()),
            _ if bits.is_multiple_of(8) && (128..=1024).contains(&bits) => Ok(()),
            _ => Err("size: HMAC keys are a multiple of 8 bits from 128 to 1024".into()),
        }
    }

    /// The AWS key spec this vault key can be uploaded as.
    pub fn spec(self) -> KeySpec {
        match self {
            VaultAlgorithm::Aes => KeySpec::SymmetricDefault,
            VaultAlgorithm::HmacSha224 => KeySpec::Hmac224,
            VaultAlgorithm::HmacSha256 => KeySpec::Hmac256,
            VaultAlgorithm::HmacSha384 => KeySpec::Hmac384,
            VaultAlgorithm::HmacSha512 => KeySpec::Hmac512,
        }
    }

    fn default_usage_mask(self) -> u32 {
        match self {
            // Encrypt | Decrypt
            VaultAlgorithm::Aes => 12,
            // MAC Generate | MAC Verify
            _ => 384,
        }
    }
}

/// `POST /api/v1/vault/keys2`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct CreateKeyBody {
    pub name: Option<String>,
    pub algorithm: Option<String>,
    pub size: Option<u32>,
    pub material: Option<String>,
    pub format: Option<String>,
    pub encoding: Option<String>,
    pub usageMask: Option<u32>,
    pub meta: Option<Value>,
    pub labels: Option<BTreeMap<String, String>>,
    pub unexportable: Option<bool>,
    pub undeletable: Option<bool>,
}

pub struct Vault {
    token: Arc<Token>,
    store: Store,
}

fn check_name(name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.chars().count() > 256 {
        return Err(DomainError::Invalid("name: 1 to 256 characters".into()));
    }
    if name
        .chars()
        .any(|c| matches!(c, '<' | '>' | '\\') || c.is_control())
    {
        return Err(DomainError::Invalid(
            "name: must not contain <, >, \\ or control characters".into(),
        ));
    }
    Ok(())
}

/// Caller material, decoded into a buffer that is wiped when dropped.
fn decode_material(text: &str, encoding: Option<&str>) -> Result<Zeroizing<Vec<u8>>, DomainError> {
    let text = Zeroizing::new(text.trim().to_owned());
    let bytes = match encoding.unwrap_or("hex") {
        "hex" => hex::decode(text.as_str()).map_err(|_| {
            DomainError::Invalid("material: not valid hex (encoding is hex)".into())
        })?,
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| DomainError::Invalid("material: not valid base64".into()))?,
        other => {
            return Err(DomainError::Invalid(format!(
                "encoding: `{other}` is not hex or base64"
            )));
        }
    };
    Ok(Zeroizing::new(bytes))
}

impl Vault {
    pub fn new(token: Arc<Token>, store: Store) -> Self {
        Self { token, store }
    }

    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    pub async fn create(&self, body: CreateKeyBody) -> Result<Value, DomainError> {
        let name = body
            .name
            .clone()
            .ok_or_else(|| DomainError::Invalid("name: is required".into()))?;
        check_name(&name)?;
        let algorithm = match body.algorithm.as_deref() {
            None => VaultAlgorithm::Aes,
            Some(a) => VaultAlgorithm::parse(a).ok_or_else(|| {
                DomainError::Invalid(format!(
                    "algorithm: `{a}` is not one of {}",
                    VaultAlgorithm::ALL.map(|a| a.name()).join(", ")
                ))
            })?,
        };
        if let Some(f) = body.format.as_deref()
            && f != "raw"
        {
            return Err(DomainError::Invalid(format!(
                "format: `{f}`; symmetric key material is raw"
            )));
        }
        let material = body
            .material
            .as_deref()
            .map(|m| decode_material(m, body.encoding.as_deref()))
            .transpose()?;
        let bits = match (body.size, &material) {
            (Some(s), Some(m)) if s as usize != m.len() * 8 => {
                return Err(DomainError::Invalid(format!(
                    "size: {s} bits given but the material is {} bits",
                    m.len() * 8
                )));
            }
            (Some(s), _) => s,
            (None, Some(m)) => (m.len() * 8) as u32,
            (None, None) => algorithm.default_bits(),
        };
        algorithm.size_ok(bits).map_err(DomainError::Invalid)?;
        let len = (bits / 8) as usize;
        let caps = self
            .token
            .capabilities()
            .ok_or_else(|| DomainError::Internal("bridge token has no self-test result".into()))?;
        let storage = caps.storage.clone().ok_or_else(|| {
            DomainError::Unprocessable(format!(
                "token {} cannot keep vault keys: no RFC 5649 wrap was proven",
                self.token.name
            ))
        })?;
        if !storage.exact_lengths.contains(&len) {
            return Err(DomainError::Unprocessable(format!(
                "token {} cannot keep a {len}-byte {} key exactly under its KEK: its {} wraps {} \
                 (self-test); choose a size whose byte length it handles (for example {} bits)",
                self.token.name,
                algorithm.name(),
                storage.mechanism.name(),
                crate::pkcs11::selftest::describe_lengths(&storage.exact_lengths),
                suggest_bits(&storage.exact_lengths, len)
            )));
        }
        if self.exists(&name).await? {
            return Err(DomainError::Conflict(format!(
                "a vault key named `{name}` already exists"
            )));
        }
        let kind = algorithm.kind();
        let mech = storage.mechanism;
        let kek_label = self.token.kek_label.clone();
        let (wrapped, kek_id) = self
            .token
            .run(move |s| {
                let (kek, kek_id) = ops::ensure_kek(s, &kek_label)?;
                let obj: SessionObject<'_> = match &material {
                    Some(m) => ops::create_secret(s, kind, m)?,
                    None => ops::generate_secret(s, kind, len)?,
                };
                let wrapped = ops::kwp_wrap(s, mech, kek, obj.handle())?;
                Ok((wrapped, kek_id))
            })
            .await
            .map_err(DomainError::token(&self.token.name))?;
        let now = now_rfc3339();
        let extra = json!({
            "meta": body.meta.unwrap_or_else(|| json!({})),
            "labels": body.labels.unwrap_or_default(),
            "unexportable": body.unexportable.unwrap_or(false),
            "undeletable": body.undeletable.unwrap_or(false),
        });
        let row = VaultKeyRow {
            id: hex::encode(rand::random::<[u8; 32]>()),
            name: name.clone(),
            algorithm: algorithm.name().to_owned(),
            size: bits,
            kind: match kind {
                SecretKind::Aes => "aes".into(),
                SecretKind::Hmac => "hmac".into(),
            },
            value_len: len as u32,
            usage_mask: body
                .usageMask
                .unwrap_or_else(|| algorithm.default_usage_mask()),
            origin: if body.material.is_some() {
                "imported".into()
            } else {
                "generated".into()
            },
            wrapped,
            wrap_mechanism: mech.code(),
            kek_label: self.token.kek_label.clone(),
            kek_id,
            token_serial: self.token.ident().serial,
            public_key: None,
            extra: extra.to_string(),
            created_at: now.clone(),
            updated_at: now,
        };
        let stored = row.clone();
        let inserted = self
            .store
            .call(move |c| crate::store::vault::insert(c, &stored))
            .await?;
        if !inserted {
            return Err(DomainError::Conflict(format!(
                "a vault key named `{name}` already exists"
            )));
        }
        tracing::info!(key = %row.id, name = %row.name, algorithm = %row.algorithm, origin = %row.origin, "vault key created");
        Ok(render(&row))
    }

    async fn exists(&self, name: &str) -> Result<bool, DomainError> {
        let n = name.to_owned();
        Ok(self
            .store
            .call(move |c| crate::store::vault::get(c, &n))
            .await?
            .is_some_and(|r| r.name == name))
    }

    pub async fn get_row(&self, id_or_name: &str) -> Result<Option<VaultKeyRow>, DomainError> {
        let k = id_or_name.to_owned();
        Ok(self
            .store
            .call(move |c| crate::store::vault::get(c, &k))
            .await?)
    }

    pub async fn get(&self, id_or_name: &str) -> Result<Value, DomainError> {
        self.get_row(id_or_name)
            .await?
            .map(|r| render(&r))
            .ok_or_else(|| DomainError::NotFound(format!("no vault key `{id_or_name}`")))
    }

    pub async fn list(&self, filter: ListFilter) -> Result<Value, DomainError> {
        let (skip, limit) = (filter.skip, filter.limit);
        let (total, rows) = self
            .store
            .call(move |c| crate::store::vault::list(c, &filter))
            .await?;
        Ok(json!({
            "skip": skip,
            "limit": limit,
            "total": total,
            "resources": rows.iter().map(render).collect::<Vec<_>>(),
        }))
    }
}

fn suggest_bits(exact: &std::collections::BTreeSet<usize>, len: usize) -> usize {
    exact
        .range(len..)
        .next()
        .or_else(|| exact.iter().next_back())
        .map(|l| l * 8)
        .unwrap_or(256)
}

/// A vault key in CipherTrust Manager's shape. Never carries material.
pub fn render(r: &VaultKeyRow) -> Value {
    let extra: Value = serde_json::from_str(&r.extra).unwrap_or_else(|_| json!({}));
    let object_type = "Symmetric Key";
    json!({
        "id": r.id,
        "uri": format!("kylo:kylo:vault:keys:{}-v0", r.name.to_lowercase()),
        "account": "kylo:kylo:admin:accounts:kylo",
        "application": "ncryptify:gemalto:admin:apps:kylo",
        "devAccount": "ncryptify:gemalto:admin:accounts:gemalto",
        "createdAt": r.created_at,
        "updatedAt": r.updated_at,
        "name": r.name,
        "usageMask": r.usage_mask,
        "meta": extra.get("meta").cloned().unwrap_or_else(|| json!({})),
        "labels": extra.get("labels").cloned().unwrap_or_else(|| json!({})),
        "version": 0,
        "algorithm": r.algorithm.to_uppercase(),
        "size": r.size,
        "unexportable": extra.get("unexportable").and_then(Value::as_bool).unwrap_or(false),
        "undeletable": extra.get("undeletable").and_then(Value::as_bool).unwrap_or(false),
        "neverExported": true,
        "neverExportable": false,
        "emptyMaterial": false,
        "objectType": object_type,
        "state": "Active",
        "activationDate": r.created_at,
        "aliases": [],
        "links": [],
        "origin": r.origin,
        "storage": {
            "token_serial": r.token_serial,
            "kek_label": r.kek_label,
            "mechanism": RawMechanism::new(r.wrap_mechanism).name(),
        },
    })
}

/// Unwraps a vault key into `session` (the bridge token) as a session object, after checking
/// that the KEK is the one it was stored under and that the token gave back the stored length.
pub fn unwrap_into<'s>(
    session: &'s cryptoki::session::Session,
    row: &VaultKeyRow,
) -> Result<SessionObject<'s>, TokenError> {
    let (kek, kek_id) = ops::find_kek(session, &row.kek_label)?.ok_or_else(|| {
        TokenError::Refused(format!(
            "the bridge token has no key labelled \"{}\": vault key {} cannot be unwrapped",
            row.kek_label, row.id
        ))
    })?;
    if kek_id != row.kek_id {
        return Err(TokenError::Refused(format!(
            "vault key {} was stored under another KEK than the one labelled \"{}\" in this token",
            row.id, row.kek_label
        )));
    }
    let kind = if row.kind == "aes" {
        SecretKind::Aes
    } else {
        SecretKind::Hmac
    };
    let obj = ops::kwp_unwrap_secret(
        session,
        RawMechanism::new(row.wrap_mechanism),
        kek,
        &row.wrapped,
        kind,
    )?;
    let len = session
        .get_attributes(obj.handle(), &[cryptoki::object::AttributeType::ValueLen])
        .map_err(TokenError::ck("C_GetAttributeValue"))?
        .into_iter()
        .find_map(|a| match a {
            cryptoki::object::Attribute::ValueLen(l) => Some(u64::from(l)),
            _ => None,
        });
    // Some tokens (SoftHSM2) report 0 for unwrapped keys: only a definite answer is checked.
    if len.is_some_and(|l| l != 0 && l != u64::from(row.value_len)) {
        return Err(TokenError::Refused(format!(
            "vault key {} came back from the token with {} bytes instead of {}",
            row.id,
            len.unwrap_or_default(),
            row.value_len
        )));
    }
    Ok(obj)
}
