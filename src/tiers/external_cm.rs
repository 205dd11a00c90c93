//! `external-cm`: a key held by another CipherTrust Manager. Its metadata is checked against
//! the key spec, then it is exported wrapped under the bridge token's transport key (RSA-OAEP
//! for secret keys, RSA-AES key wrap for private keys, with the OAEP digest the token proved it
//! unwraps exactly) and pushed into the bridge token with `C_UnwrapKey`. The plaintext never
//! exists outside the two key managers.
//!
//! `source_key_identifier` is the key's id or name on the CM; with several CMs configured it
//! may be pinned as `CM_NAME:KEY`, otherwise every CM is asked and the key must exist on one.

use std::sync::Arc;

use cryptoki::session::Session;
use serde_json::{Value, json};

use super::{InToken, Materialize, ResolvedSource, Tier, check_private_kind, check_secret_len};
use crate::cckm::spec::{KeySpec, SpecFamily};
use crate::error::DomainError;
use crate::extcm::{CmClient, CmError};
use crate::pkcs11::keys::{Curve, PrivateKind};
use crate::pkcs11::mechanism_ext::RawMechanism;
use crate::pkcs11::ops::{self, SecretKind};
use crate::pkcs11::profile::OaepHash;
use crate::pkcs11::{Token, TokenError};

pub struct ExternalCmTier {
    cms: Vec<Arc<CmClient>>,
    bridge: Arc<Token>,
}

impl ExternalCmTier {
    pub fn new(cms: Vec<Arc<CmClient>>, bridge: Arc<Token>) -> Self {
        Self { cms, bridge }
    }
}

/// A key that arrived wrapped under the transport key.
struct Transported {
    blob: Vec<u8>,
    hash: OaepHash,
    shape: Transport,
}

#[derive(Clone, Copy)]
enum Transport {
    /// `len`: the size in bytes the CM announced.
    Secret { kind: SecretKind, len: usize },
    Private {
        kind: PrivateKind,
        kwp: RawMechanism,
    },
}

impl Materialize for Transported {
    fn materialize<'s>(&self, s: &'s Session) -> Result<InToken<'s>, TokenError> {
        let (public, private) = ops::find_transport_key(s, ops::TRANSPORT_LABEL)?
            .ok_or_else(|| TokenError::Refused("the bridge token has no transport key".into()))?;
        let obj = match self.shape {
            Transport::Secret { kind, .. } => {
                ops::oaep_unwrap_secret(s, self.hash, private, &self.blob, kind)
            }
            Transport::Private { kind, kwp } => {
                let (modulus, _) = ops::rsa_public_parts(s, public)?;
                ops::rsa_aes_unwrap_private(
                    s,
                    self.hash,
                    kwp,
                    private,
                    modulus.len(),
                    &self.blob,
                    kind,
                )
            }
        }
        .map_err(|e| {
            TokenError::Refused(format!(
                "the key exported by the external CM does not unwrap under the transport key ({e})"
            ))
        })?;
        let expected = match self.shape {
            Transport::Secret { len, .. } => ops::Expected::SecretLen(len),
            Transport::Private { kind, .. } => ops::Expected::Private(kind),
        };
        ops::check_unwrapped(s, obj.handle(), expected).map_err(|e| {
            TokenError::Refused(format!("the key exported by the external CM: {e}"))
        })?;
        Ok(InToken::Transient(obj))
    }
}

/// The OAEP hash asked of a CM: SHA-256 where the token proved it, else what it proved.
pub fn preferred_oaep(proven: &[OaepHash]) -> Option<OaepHash> {
    proven
        .iter()
        .copied()
        .find(|h| *h == OaepHash::Sha256)
        .or_else(|| proven.first().copied())
}

/// What the CM's metadata says the key is, checked against the spec.
fn check_metadata(meta: &Value, spec: KeySpec, what: &str) -> Result<Transport, DomainError> {
    let alg = meta["algorithm"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let size = meta["size"].as_u64().unwrap_or(0) as usize;
    let mismatch = |is: String| {
        DomainError::Invalid(format!(
            "aws_param.CustomerMasterKeySpec: {spec} does not match {what}, which is {is}"
        ))
    };
    match spec.family() {
        SpecFamily::Symmetric => {
            if alg != "aes" || size != 256 {
                return Err(mismatch(format!(
                    "{alg} {size} bits (SYMMETRIC_DEFAULT takes AES-256)"
                )));
            }
            Ok(Transport::Secret {
                kind: SecretKind::Aes,
                len: 32,
            })
        }
        SpecFamily::Hmac => {
            let want = match spec {
                KeySpec::Hmac224 => "hmac-sha224",
                KeySpec::Hmac256 => "hmac-sha256",
                KeySpec::Hmac384 => "hmac-sha384",
                _ => "hmac-sha512",
            };
            if alg != want {
                return Err(mismatch(format!("{alg} {size} bits")));
            }
            check_secret_len(spec, size / 8, what)?;
            Ok(Transport::Secret {
                kind: SecretKind::Hmac,
                len: size / 8,
            })
        }
        SpecFamily::Rsa | SpecFamily::Ecc => {
            let kind = match alg.as_str() {
                "rsa" => PrivateKind::from_rsa_bits(size),
                "ec" => meta["curveid"]
                    .as_str()
                    .and_then(Curve::from_ciphertrust)
                    .map(PrivateKind::from_curve),
                _ => None,
            }
            .ok_or_else(|| mismatch(format!("{alg} {size} bits")))?;
            check_private_kind(spec, kind, what)?;
            Ok(Transport::Private {
                kind,
                kwp: RawMechanism::new(0),
            })
        }
    }
}

impl ExternalCmTier {
    /// The CM and the key's id on it.
    async fn locate(&self, identifier: &str) -> Result<(Arc<CmClient>, Value), DomainError> {
        if self.cms.is_empty() {
            return Err(DomainError::Invalid(
                "source_key_tier external-cm: no external CipherTrust Manager is configured on this bridge".into(),
            ));
        }
        if let Some((name, key)) = identifier.split_once(':')
            && let Some(cm) = self.cms.iter().find(|c| c.name == name)
        {
            let meta = cm.key(key).await?;
            return Ok((cm.clone(), meta));
        }
        let mut found = Vec::new();
        for cm in &self.cms {
            match cm.key(identifier).await {
                Ok(meta) => found.push((cm.clone(), meta)),
                Err(CmError::NotFound { .. }) if self.cms.len() > 1 => {}
                Err(e) => return Err(e.into()),
            }
        }
        match found.len() {
            0 => Err(DomainError::NotFound(format!(
                "source_key_identifier: no external CipherTrust Manager has a key `{identifier}`"
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(DomainError::Conflict(format!(
                "source_key_identifier: several external CipherTrust Managers have a key `{identifier}`; \
                 pin it as CM_NAME:{identifier}"
            ))),
        }
    }
}

impl Tier for ExternalCmTier {
    async fn resolve(
        &self,
        identifier: &str,
        spec: KeySpec,
    ) -> Result<ResolvedSource, DomainError> {
        let (cm, meta) = self.locate(identifier).await?;
        let key_id = meta["id"].as_str().unwrap_or(identifier).to_owned();
        let key_name = meta["name"].as_str().unwrap_or(&key_id).to_owned();
        let what = format!(
            "key `{key_name}` on external CipherTrust Manager {}",
            cm.name
        );
        let mut shape = check_metadata(&meta, spec, &what)?;
        let token = self.bridge.clone();
        let caps = token
            .capabilities()
            .and_then(|c| c.unwrap.clone())
            .ok_or_else(|| {
                DomainError::Internal("the bridge token has no unwrap self-test result".into())
            })?;
        let storage = token.capabilities().and_then(|c| c.storage.clone());
        let (hash, request) = match &mut shape {
            Transport::Secret { .. } => {
                let hash = preferred_oaep(&caps.oaep).ok_or_else(|| {
                    DomainError::Unprocessable(format!(
                        "token {} proved no RSA-OAEP unwrap",
                        token.name
                    ))
                })?;
                (
                    hash,
                    json!({"wrapPublicKeyPadding": if hash == OaepHash::Sha256 { "oaep256" } else { "oaep" }}),
                )
            }
            Transport::Private { kind, kwp } => {
                let proven = caps.private.get(kind).cloned().unwrap_or_default();
                let hash = preferred_oaep(&proven).ok_or_else(|| {
                    DomainError::Unprocessable(format!(
                        "token {} cannot unwrap {kind} keys exactly, so it cannot receive them from an external CM",
                        token.name
                    ))
                })?;
                *kwp = storage
                    .as_ref()
                    .map(|s| s.mechanism)
                    .ok_or_else(|| DomainError::Internal("no RFC 5649 mechanism".into()))?;
                let padding = if hash == OaepHash::Sha256 {
                    "oaep256"
                } else {
                    "oaep"
                };
                (
                    hash,
                    json!({
                        "wrappingEncryptionAlgo": "RSA/RSAAESKEYWRAPPADDING",
                        "wrapRSAAES": {"aesKeySize": 256, "padding": padding},
                    }),
                )
            }
        };
        let public_pem = token
            .run(|s| {
                ops::transport_spki_der(s)?
                    .map(|d| crate::pkcs11::keys::spki_pem(&d))
                    .ok_or_else(|| {
                        TokenError::Refused("the bridge token has no transport key".into())
                    })
            })
            .await
            .map_err(DomainError::token(&token.name))?;
        let mut request = request;
        request["wrapPublicKey"] = Value::String(public_pem);
        let blob = cm.export(&key_id, &request).await?;
        let transported = Arc::new(Transported { blob, hash, shape });
        // Unwrap once now: a blob that does not unwrap is refused before anything reaches AWS.
        let probe = transported.clone();
        token
            .run(move |s| probe.materialize(s).map(|_| ()))
            .await
            .map_err(|e| DomainError::Upstream(format!("{what}: {e}")))?;
        Ok(ResolvedSource {
            token,
            local_key_id: key_id,
            local_key_name: key_name,
            private: match shape {
                Transport::Private { kind, .. } => Some(kind),
                Transport::Secret { .. } => None,
            },
            material: transported,
            public_spki: meta["publickey"]
                .as_str()
                .and_then(crate::pkcs11::keys::spki_der_from_pem),
        })
    }
}
