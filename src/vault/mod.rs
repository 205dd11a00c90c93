//! The local vault (the `local` tier's keys): AES, HMAC, RSA and EC keys generated in the
//! bridge token or imported from caller material, kept outside the token wrapped under a KEK
//! that never leaves it. Plaintext is never read out of the token; material a caller sends is
//! pushed in at once and wiped.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::cckm::spec::KeySpec;
use crate::error::DomainError;
use crate::pkcs11::keys::{self, Curve, PrivateKind, PrivateMaterial};
use crate::pkcs11::mechanism_ext::RawMechanism;
use crate::pkcs11::ops::{self, SecretKind, SessionObject};
use crate::pkcs11::selftest::describe_lengths;
use crate::pkcs11::{Token, TokenError};
use crate::store::vault::{ListFilter, VaultKeyRow};
use crate::store::{Store, now_rfc3339};

pub mod bodies;
pub use bodies::{CreateKeyBody, CreateKeyQuery, ExportBody, KeyRefQuery, WrapRsaAes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultAlgorithm {
    Aes,
    HmacSha224,
    HmacSha256,
    HmacSha384,
    HmacSha512,
    Rsa,
    Ec,
}

impl VaultAlgorithm {
    const ALL: [VaultAlgorithm; 7] = [
        VaultAlgorithm::Aes,
        VaultAlgorithm::HmacSha224,
        VaultAlgorithm::HmacSha256,
        VaultAlgorithm::HmacSha384,
        VaultAlgorithm::HmacSha512,
        VaultAlgorithm::Rsa,
        VaultAlgorithm::Ec,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VaultAlgorithm::Aes => "aes",
            VaultAlgorithm::HmacSha224 => "hmac-sha224",
            VaultAlgorithm::HmacSha256 => "hmac-sha256",
            VaultAlgorithm::HmacSha384 => "hmac-sha384",
            VaultAlgorithm::HmacSha512 => "hmac-sha512",
            VaultAlgorithm::Rsa => "rsa",
            VaultAlgorithm::Ec => "ec",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|a| a.name() == lower)
    }

    fn secret_kind(self) -> Option<SecretKind> {
        match self {
            VaultAlgorithm::Aes => Some(SecretKind::Aes),
            VaultAlgorithm::Rsa | VaultAlgorithm::Ec => None,
            _ => Some(SecretKind::Hmac),
        }
    }

    fn default_bits(self) -> u32 {
        match self {
            VaultAlgorithm::Aes | VaultAlgorithm::HmacSha256 => 256,
            VaultAlgorithm::HmacSha224 => 224,
            VaultAlgorithm::HmacSha384 => 384,
            VaultAlgorithm::HmacSha512 => 512,
            VaultAlgorithm::Rsa => 2048,
            VaultAlgorithm::Ec => 384,
        }
    }

    fn secret_size_ok(self, bits: u32) -> Result<(), String> {
        match self {
            VaultAlgorithm::Aes if [128, 192, 256].contains(&bits) => Ok(()),
            VaultAlgorithm::Aes => Err("size: AES keys are 128, 192 or 256 bits".into()),
            _ if bits.is_multiple_of(8) && (128..=1024).contains(&bits) => Ok(()),
            _ => Err("size: HMAC keys are a multiple of 8 bits from 128 to 1024".into()),
        }
    }

    /// The AWS key spec a secret vault key of this algorithm uploads as.
    pub fn secret_spec(self) -> Option<KeySpec> {
        match self {
            VaultAlgorithm::Aes => Some(KeySpec::SymmetricDefault),
            VaultAlgorithm::HmacSha224 => Some(KeySpec::Hmac224),
            VaultAlgorithm::HmacSha256 => Some(KeySpec::Hmac256),
            VaultAlgorithm::HmacSha384 => Some(KeySpec::Hmac384),
            VaultAlgorithm::HmacSha512 => Some(KeySpec::Hmac512),
            VaultAlgorithm::Rsa | VaultAlgorithm::Ec => None,
        }
    }

    fn default_usage_mask(self) -> u32 {
        match self {
            // Encrypt | Decrypt
            VaultAlgorithm::Aes => 12,
            // Sign | Verify | Encrypt | Decrypt
            VaultAlgorithm::Rsa => 15,
            // Sign | Verify
            VaultAlgorithm::Ec => 3,
            // MAC Generate | MAC Verify
            _ => 384,
        }
    }
}

/// The AWS key spec a vault key uploads as.
pub fn upload_spec(row: &VaultKeyRow) -> Option<KeySpec> {
    match Shape::of(row)? {
        Shape::Private(kind) => Some(KeySpec::for_private_kind(kind)),
        Shape::Secret { .. } => VaultAlgorithm::parse(&row.algorithm)?.secret_spec(),
    }
}

/// What a vault key is, as the token sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Secret { kind: SecretKind, len: usize },
    Private(PrivateKind),
}

impl Shape {
    /// From a stored row.
    pub fn of(row: &VaultKeyRow) -> Option<Shape> {
        match row.kind.as_str() {
            "aes" => Some(Shape::Secret {
                kind: SecretKind::Aes,
                len: row.value_len as usize,
            }),
            "hmac" => Some(Shape::Secret {
                kind: SecretKind::Hmac,
                len: row.value_len as usize,
            }),
            "rsa" => PrivateKind::from_rsa_bits(row.size as usize).map(Shape::Private),
            "ec" => row
                .curve
                .as_deref()
                .and_then(Curve::from_ciphertrust)
                .map(|c| Shape::Private(PrivateKind::from_curve(c))),
            _ => None,
        }
    }
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

/// Secret caller material, decoded into a buffer that is wiped when dropped.
fn decode_secret(text: &str, encoding: Option<&str>) -> Result<Zeroizing<Vec<u8>>, DomainError> {
    let text = text.trim();
    let bytes = match encoding.unwrap_or("hex") {
        "hex" => hex::decode(text).map_err(|_| {
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

/// Material the token work needs, owned so it can move to the blocking pool.
enum Source {
    GenerateSecret(SecretKind, usize),
    ImportSecret(SecretKind, Zeroizing<Vec<u8>>),
    GeneratePrivate(PrivateKind),
    ImportPrivate(PrivateKind, Box<PrivateMaterial>),
}

struct Plan {
    algorithm: VaultAlgorithm,
    shape: Shape,
    bits: u32,
    curve: Option<Curve>,
    source: Source,
    imported: bool,
}

impl Vault {
    pub fn new(token: Arc<Token>, store: Store) -> Self {
        Self { token, store }
    }

    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    /// Decides what to create from the body; nothing touches the token yet.
    fn plan(&self, body: &CreateKeyBody) -> Result<Plan, DomainError> {
        let algorithm = match body.algorithm.as_deref() {
            None => VaultAlgorithm::Aes,
            Some(a) => VaultAlgorithm::parse(a).ok_or_else(|| {
                DomainError::Invalid(format!(
                    "algorithm: `{a}` is not one of {}",
                    VaultAlgorithm::ALL.map(|a| a.name()).join(", ")
                ))
            })?,
        };
        if body.curveid.is_some() && algorithm != VaultAlgorithm::Ec {
            return Err(DomainError::Invalid(
                "curveid: only for algorithm ec".into(),
            ));
        }
        let material = body.material.as_ref().map(|m| m.expose_secret());
        if let Some(kind) = algorithm.secret_kind() {
            if let Some(f) = body.format.as_deref().filter(|f| *f != "raw") {
                return Err(DomainError::Invalid(format!(
                    "format: `{f}`; symmetric key material is raw"
                )));
            }
            let decoded = material
                .map(|m| decode_secret(m, body.encoding.as_deref()))
                .transpose()?;
            let bits = match (body.size, &decoded) {
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
            algorithm
                .secret_size_ok(bits)
                .map_err(DomainError::Invalid)?;
            let len = (bits / 8) as usize;
            return Ok(Plan {
                algorithm,
                shape: Shape::Secret { kind, len },
                bits,
                curve: None,
                imported: decoded.is_some(),
                source: match decoded {
                    Some(m) => Source::ImportSecret(kind, m),
                    None => Source::GenerateSecret(kind, len),
                },
            });
        }
        if let Some(f) = body.format.as_deref()
            && !["pkcs8", "pkcs1", "sec1", "pem"].contains(&f)
        {
            return Err(DomainError::Invalid(format!(
                "format: `{f}`; private keys are imported as PEM (pkcs8, pkcs1 or sec1)"
            )));
        }
        let wanted: Option<PrivateKind> = match algorithm {
            VaultAlgorithm::Rsa => match body.size {
                Some(s) => Some(PrivateKind::from_rsa_bits(s as usize).ok_or_else(|| {
                    DomainError::Invalid("size: RSA keys are 2048, 3072 or 4096 bits".into())
                })?),
                None => None,
            },
            _ => match body.curveid.as_deref() {
                Some(c) => Some(PrivateKind::from_curve(Curve::from_ciphertrust(c).ok_or_else(
                    || {
                        DomainError::Invalid(format!(
                            "curveid: `{c}` is not one of prime256v1, secp384r1, secp521r1, secp256k1"
                        ))
                    },
                )?)),
                None => None,
            },
        };
        let (kind, source) = match material {
            Some(pem) => {
                let m = PrivateMaterial::from_pem(pem)
                    .map_err(|e| DomainError::Invalid(format!("material: {e}")))?;
                let kind = m
                    .kind()
                    .map_err(|e| DomainError::Invalid(format!("material: {e}")))?;
                let family_ok = (algorithm == VaultAlgorithm::Rsa) == kind.rsa_bits().is_some();
                if !family_ok || wanted.is_some_and(|w| w != kind) {
                    return Err(DomainError::Invalid(format!(
                        "material: a {kind} key does not match algorithm {}{}",
                        algorithm.name(),
                        wanted.map(|w| format!(" ({w})")).unwrap_or_default()
                    )));
                }
                (kind, Source::ImportPrivate(kind, Box::new(m)))
            }
            None => {
                let kind = wanted.unwrap_or(match algorithm {
                    VaultAlgorithm::Rsa => PrivateKind::Rsa2048,
                    _ => PrivateKind::EcP384,
                });
                (kind, Source::GeneratePrivate(kind))
            }
        };
        Ok(Plan {
            algorithm,
            shape: Shape::Private(kind),
            bits: kind
                .rsa_bits()
                .or(kind.curve().map(|c| {
                    if c == Curve::P521 {
                        521
                    } else {
                        (c.scalar_len() * 8) as u32
                    }
                }))
                .unwrap_or_default(),
            curve: kind.curve(),
            imported: matches!(source, Source::ImportPrivate(..)),
            source,
        })
    }

    /// Refuses what this token cannot keep exactly, naming the token and the reason.
    fn check_storable(&self, plan: &Plan) -> Result<RawMechanism, DomainError> {
        let t = &self.token;
        let caps = t
            .capabilities()
            .ok_or_else(|| DomainError::Internal("bridge token has no self-test result".into()))?;
        let storage = caps.storage.clone().ok_or_else(|| {
            DomainError::Unprocessable(format!(
                "token {} cannot keep vault keys: no RFC 5649 wrap was proven",
                t.name
            ))
        })?;
        match plan.shape {
            Shape::Secret { kind, len } => {
                let lengths = match kind {
                    SecretKind::Aes => &storage.aes_lengths,
                    SecretKind::Hmac => &storage.exact_lengths,
                };
                if !lengths.contains(&len) {
                    return Err(DomainError::Unprocessable(format!(
                        "token {} cannot keep a {len}-byte {} key exactly under its KEK: its {} wraps {} \
                         (self-test); choose a size whose byte length it handles (for example {} bits)",
                        t.name,
                        plan.algorithm.name(),
                        storage.mechanism.name(),
                        describe_lengths(lengths),
                        suggest_bits(lengths, len)
                    )));
                }
            }
            Shape::Private(kind) => {
                if !caps.private_storage.contains(&kind) {
                    let why = caps.private_wrap(kind).err().unwrap_or_else(|| {
                        format!(
                            "its {} does not keep them exactly",
                            storage.mechanism.name()
                        )
                    });
                    return Err(DomainError::Unprocessable(format!(
                        "token {} cannot keep {kind} keys exactly under its KEK, so the vault refuses them (self-test: {why})",
                        t.name
                    )));
                }
            }
        }
        Ok(storage.mechanism)
    }

    pub async fn create(&self, body: CreateKeyBody) -> Result<Value, DomainError> {
        let name = body
            .name
            .clone()
            .ok_or_else(|| DomainError::Invalid("name: is required".into()))?;
        check_name(&name)?;
        let plan = self.plan(&body)?;
        let mech = self.check_storable(&plan)?;
        if self.exists(&name).await? {
            return Err(DomainError::Conflict(format!(
                "a vault key named `{name}` already exists"
            )));
        }
        let kek_label = self.token.kek_label.clone();
        let short_scalars = self.token.profile.quirks.keygen_short_ec_scalar;
        let Plan {
            algorithm,
            shape,
            bits,
            curve,
            source,
            imported,
        } = plan;
        let (wrapped, kek_id, public_key) = self
            .token
            .run(move |s| {
                // The KEK is made at start; one missing now is an error, never replaced.
                let (kek, kek_id) = ops::find_kek(s, &kek_label)?.ok_or_else(|| {
                    TokenError::Refused(format!(
                        "the bridge token has no key-encryption key labelled \"{kek_label}\""
                    ))
                })?;
                let (obj, public): (SessionObject<'_>, Option<Vec<u8>>) = match &source {
                    Source::GenerateSecret(kind, len) => {
                        (ops::generate_secret(s, *kind, *len)?, None)
                    }
                    Source::ImportSecret(kind, m) => (ops::create_secret(s, *kind, m)?, None),
                    Source::GeneratePrivate(kind) => {
                        let (public, private) = if short_scalars {
                            ops::generate_full_length_key_pair(s, *kind)?
                        } else {
                            ops::generate_key_pair(s, *kind)?
                        };
                        let spki = ops::public_key_spki(s, public.handle(), *kind)?;
                        (private, Some(spki))
                    }
                    Source::ImportPrivate(kind, m) => {
                        let spki = m.public_spki_der().map_err(TokenError::Refused)?;
                        (ops::create_private_key(s, m, *kind)?, Some(spki))
                    }
                };
                let wrapped = ops::kwp_wrap(s, mech, kek, obj.handle())?;
                Ok((wrapped, kek_id, public))
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
        let (kind, value_len) = match shape {
            Shape::Secret {
                kind: SecretKind::Aes,
                len,
            } => ("aes", len),
            Shape::Secret { len, .. } => ("hmac", len),
            Shape::Private(k) if k.rsa_bits().is_some() => ("rsa", 0),
            Shape::Private(_) => ("ec", 0),
        };
        let row = VaultKeyRow {
            id: hex::encode(rand::random::<[u8; 32]>()),
            name: name.clone(),
            algorithm: algorithm.name().to_owned(),
            size: bits,
            kind: kind.to_owned(),
            value_len: value_len as u32,
            usage_mask: body
                .usageMask
                .unwrap_or_else(|| algorithm.default_usage_mask()),
            origin: if imported { "imported" } else { "generated" }.to_owned(),
            wrapped,
            wrap_mechanism: mech.code(),
            kek_label: self.token.kek_label.clone(),
            kek_id,
            token_serial: self.token.ident().serial,
            public_key: public_key.map(|d| keys::spki_pem(&d)),
            curve: curve.map(|c| c.ciphertrust_name().to_owned()),
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

    /// Every vault key not deleted (a bulk job's selector looks through them).
    pub async fn all_rows(&self) -> Result<Vec<VaultKeyRow>, DomainError> {
        let f = ListFilter {
            name: None,
            algorithm: None,
            id: None,
            size: None,
            skip: 0,
            limit: u32::MAX,
        };
        Ok(self
            .store
            .call(move |c| crate::store::vault::list(c, &f))
            .await?
            .1)
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

fn suggest_bits(exact: &BTreeSet<usize>, len: usize) -> usize {
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
    let private = matches!(r.kind.as_str(), "rsa" | "ec");
    let mut v = json!({
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
        "neverExported": extra.get("exported").and_then(Value::as_bool) != Some(true),
        "neverExportable": false,
        "emptyMaterial": false,
        "objectType": if private { "Private Key" } else { "Symmetric Key" },
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
    });
    if let Some(c) = &r.curve {
        v["curveid"] = json!(c);
    }
    if let Some(p) = &r.public_key {
        v["publickey"] = json!(p);
    }
    v
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
    let mech = RawMechanism::new(row.wrap_mechanism);
    let shape = Shape::of(row)
        .ok_or_else(|| TokenError::Refused(format!("vault key {} has an unknown kind", row.id)))?;
    let (obj, expected) = match shape {
        Shape::Private(kind) => (
            ops::kwp_unwrap_private(session, mech, kek, &row.wrapped, kind)?,
            ops::Expected::Private(kind),
        ),
        Shape::Secret { kind, .. } => (
            ops::kwp_unwrap_secret(session, mech, kek, &row.wrapped, kind)?,
            ops::Expected::SecretLen(row.value_len as usize),
        ),
    };
    ops::check_unwrapped(session, obj.handle(), expected)
        .map_err(|e| TokenError::Refused(format!("vault key {}: {e}", row.id)))?;
    Ok(obj)
}

fn padding_hash(
    p: Option<&str>,
    field: &str,
) -> Result<crate::pkcs11::profile::OaepHash, DomainError> {
    use crate::pkcs11::profile::OaepHash;
    match p.unwrap_or("oaep256").to_ascii_lowercase().as_str() {
        "oaep256" | "oaep-sha256" => Ok(OaepHash::Sha256),
        "oaep" | "oaep-sha1" => Ok(OaepHash::Sha1),
        other => Err(DomainError::Invalid(format!(
            "{field}: `{other}` is not offered (oaep or oaep256)"
        ))),
    }
}

fn rsa_public_from_pem(pem: &str) -> Result<rsa::RsaPublicKey, DomainError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let k = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|_| DomainError::Invalid("wrapPublicKey: not an RSA public key in PEM".into()))?;
    if k.size() * 8 < 2048 {
        return Err(DomainError::Invalid(
            "wrapPublicKey: RSA keys of at least 2048 bits only".into(),
        ));
    }
    Ok(k)
}

impl Vault {
    /// A wrapped export, done inside the bridge token. `allowed` lists the fingerprints of the
    /// only wrapping keys accepted (empty: any).
    pub async fn export(
        &self,
        id_or_name: &str,
        body: ExportBody,
        allowed: &[String],
    ) -> Result<Value, DomainError> {
        use rsa::traits::PublicKeyParts;
        let row = self
            .get_row(id_or_name)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no vault key `{id_or_name}`")))?;
        let pem = body.wrapping_key_pem()?;
        let extra: Value = serde_json::from_str(&row.extra).unwrap_or_default();
        if extra.get("unexportable").and_then(Value::as_bool) == Some(true) {
            return Err(DomainError::Forbidden(format!(
                "vault key `{}` is marked unexportable",
                row.name
            )));
        }
        if let Some(m) = body.wrappingMethod.as_deref().filter(|m| *m != "encrypt") {
            return Err(DomainError::Invalid(format!(
                "wrappingMethod: `{m}` is not offered (encrypt)"
            )));
        }
        let public = rsa_public_from_pem(pem)?;
        let fingerprint = {
            use rsa::pkcs8::EncodePublicKey;
            let der = public
                .to_public_key_der()
                .map_err(|e| DomainError::Invalid(format!("wrapPublicKey: {e}")))?;
            crate::pkcs11::keys::spki_fingerprint(der.as_bytes())
        };
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&fingerprint)) {
            return Err(DomainError::Forbidden(format!(
                "exports to wrapping key {fingerprint} are not allowed (export.allowed_wrapping_keys)"
            )));
        }
        let shape = Shape::of(&row).ok_or_else(|| {
            DomainError::Internal(format!("vault key {} has an unknown kind", row.id))
        })?;
        let caps = self
            .token
            .capabilities()
            .ok_or_else(|| DomainError::Internal("bridge token has no self-test result".into()))?;
        let wrap = match shape {
            Shape::Secret { .. } => {
                if body.wrappingEncryptionAlgo.is_some() || body.wrapRSAAES.is_some() {
                    return Err(DomainError::Invalid(
                        "wrappingEncryptionAlgo: secret keys are exported with RSA-OAEP (wrapPublicKeyPadding)".into(),
                    ));
                }
                let hash =
                    padding_hash(body.wrapPublicKeyPadding.as_deref(), "wrapPublicKeyPadding")?;
                if !caps.oaep.contains(&hash) {
                    return Err(DomainError::Unprocessable(format!(
                        "token {} does not wrap with RSA-OAEP {hash} (self-test); ask for another padding",
                        self.token.name
                    )));
                }
                Export::Secret(hash)
            }
            Shape::Private(kind) => {
                let algo = body.wrappingEncryptionAlgo.as_deref().unwrap_or_default();
                if !algo.eq_ignore_ascii_case("RSA/RSAAESKEYWRAPPADDING") {
                    return Err(DomainError::Invalid(
                        "wrappingEncryptionAlgo: private keys are exported with RSA/RSAAESKEYWRAPPADDING".into(),
                    ));
                }
                let params = body.wrapRSAAES.unwrap_or_default();
                if params.aesKeySize.is_some_and(|s| s != 256) {
                    return Err(DomainError::Invalid(
                        "wrapRSAAES.aesKeySize: only 256 is offered".into(),
                    ));
                }
                let hash = padding_hash(params.padding.as_deref(), "wrapRSAAES.padding")?;
                let method = caps
                    .private
                    .get(&kind)
                    .and_then(|m| m.iter().find(|m| m.hash() == hash))
                    .copied()
                    .ok_or_else(|| {
                        DomainError::Unprocessable(format!(
                            "token {} cannot export {kind} keys exactly with OAEP {hash} (self-test)",
                            self.token.name
                        ))
                    })?;
                Export::Private(method)
            }
        };
        let modulus = public.n().to_bytes_be();
        let exponent = public.e().to_bytes_be();
        let stored = row.clone();
        let wrapped = self
            .token
            .run(move |s| {
                let key = unwrap_into(s, &stored)?;
                let mech = match wrap {
                    Export::Secret(_) => cryptoki::mechanism::MechanismType::RSA_PKCS_OAEP,
                    Export::Private(m) => m.wrapping_key_mechanism(),
                };
                let wrapping = ops::import_rsa_wrapping_key(s, &modulus, &exponent, mech)?;
                match wrap {
                    Export::Secret(hash) => {
                        ops::oaep_wrap(s, hash, wrapping.handle(), key.handle())
                    }
                    Export::Private(m) => ops::rsa_aes_wrap(s, m, wrapping.handle(), key.handle()),
                }
            })
            .await
            .map_err(DomainError::token(&self.token.name))?;
        tracing::info!(key = %row.id, name = %row.name, wrapping_key = %fingerprint, "vault key exported wrapped");
        let id = row.id.clone();
        self.store
            .call(move |c| crate::store::vault::mark_exported(c, &id))
            .await?;
        let mut row = row;
        let mut extra: Value = serde_json::from_str(&row.extra).unwrap_or_else(|_| json!({}));
        extra["exported"] = json!(true);
        row.extra = extra.to_string();
        let mut v = render(&row);
        v["material"] = json!(hex::encode(wrapped));
        v["wrapped"] = json!(true);
        Ok(v)
    }

    /// Brings back a deleted key that has not been purged yet.
    pub async fn restore(&self, id_or_name: &str) -> Result<Value, DomainError> {
        let k = id_or_name.to_owned();
        let (row, _) = self
            .store
            .call(move |c| crate::store::vault::get_deleted(c, &k))
            .await?
            .ok_or_else(|| {
                DomainError::NotFound(format!(
                    "no deleted vault key `{id_or_name}` (it may have been purged)"
                ))
            })?;
        let (id, name) = (row.id.clone(), row.name.clone());
        let taken = self.exists(&name).await?;
        if taken {
            return Err(DomainError::Conflict(format!(
                "a vault key named `{name}` exists again; the deleted one cannot take its name back"
            )));
        }
        self.store
            .call(move |c| crate::store::vault::restore(c, &id, &now_rfc3339()))
            .await?;
        tracing::info!(key = %row.id, name = %row.name, "vault key restored");
        self.get(&row.id).await
    }

    /// Purges the keys deleted more than `retention` ago; their wrapped rows are gone for good.
    pub async fn purge_deleted(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, DomainError> {
        let before = crate::store::format_time(
            time::OffsetDateTime::now_utc() - time::Duration::seconds(retention.as_secs() as i64),
        );
        let ids = self
            .store
            .call(move |c| crate::store::vault::purge(c, &before))
            .await?;
        for id in &ids {
            tracing::info!(key = %id, "deleted vault key purged");
        }
        Ok(ids.len())
    }

    pub async fn delete(&self, id_or_name: &str) -> Result<(), DomainError> {
        let row = self
            .get_row(id_or_name)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no vault key `{id_or_name}`")))?;
        let extra: Value = serde_json::from_str(&row.extra).unwrap_or_default();
        if extra.get("undeletable").and_then(Value::as_bool) == Some(true) {
            return Err(DomainError::Conflict(format!(
                "vault key `{}` is marked undeletable",
                row.name
            )));
        }
        let id = row.id.clone();
        self.store
            .call(move |c| crate::store::vault::soft_delete(c, &id, &now_rfc3339()))
            .await?;
        tracing::info!(key = %row.id, name = %row.name, "vault key deleted (restorable until its retention ends)");
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Export {
    Secret(crate::pkcs11::profile::OaepHash),
    Private(crate::pkcs11::ops::PrivateWrap),
}
