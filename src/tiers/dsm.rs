//! `dsm`: an AES key held by a Data Security Manager, fetched over KMIP with a Key Wrapping
//! Specification (RFC 3394 under a KEK present in both the DSM and the bridge token, or
//! RSA-OAEP under the bridge token's transport key registered in the DSM) and pushed into the
//! bridge token with `C_UnwrapKey`. Only AES-256 is accepted.
//!
//! `source_key_identifier` is the KMIP Name or Unique Identifier; with several DSMs configured
//! it may be pinned as `DSM_NAME:KEY`.

use std::sync::Arc;

use cryptoki::session::Session;

use super::{InToken, Materialize, ResolvedSource, Tier};
use crate::cckm::spec::KeySpec;
use crate::config::{DsmConfig, DsmWrapping};
use crate::error::DomainError;
use crate::kmip::{self, KeyWrapping, KmipClient};
use crate::pkcs11::ops::{self, SecretKind};
use crate::pkcs11::profile::OaepHash;
use crate::pkcs11::{Token, TokenError};

pub struct Dsm {
    pub client: KmipClient,
    pub cfg: DsmConfig,
}

/// The bridge token's label for the KEK shared with a DSM (its DSM name unless set).
fn kek_label(cfg: &DsmConfig) -> String {
    cfg.kek_label
        .clone()
        .or_else(|| cfg.kek_name.clone())
        .unwrap_or_default()
}

/// The OAEP hash asked of a DSM in `rsa-oaep` mode. KMIP 1.2 names the OAEP hash but not the
/// MGF1 hash, which servers take to be SHA-1 or the same hash: SHA-1 for both is the only
/// reading every server shares, so it is used whenever the token proved it.
fn oaep_hash(bridge: &Token) -> Option<OaepHash> {
    let proven = bridge
        .capabilities()
        .and_then(|c| c.unwrap.as_ref())
        .map(|u| u.oaep.clone())
        .unwrap_or_default();
    [OaepHash::Sha1, OaepHash::Sha256]
        .into_iter()
        .find(|h| proven.contains(h))
}

/// Checks a wrapped Get answer against what the tier accepts and unwraps it once in the
/// bridge token, so that a wrong KEK or a bad blob is refused before anything reaches AWS.
async fn accept_wrapped(
    bridge: &Arc<Token>,
    cfg: &DsmConfig,
    what: &str,
    key: kmip::WrappedKey,
    wrapping: &KeyWrapping,
) -> Result<Arc<Fetched>, DomainError> {
    // The key block must say what Get Attributes said.
    check_facts(
        what,
        &kmip::ObjectFacts {
            object_type: key.object_type,
            algorithm: key.algorithm,
            length: key.length,
        },
    )?;
    let unwrap = match wrapping {
        KeyWrapping::AesKeyWrap { .. } => {
            if key.wrapped.len() != 40 {
                return Err(DomainError::Upstream(format!(
                    "{what}: the DSM sent {} bytes where RFC 3394 wraps AES-256 in 40",
                    key.wrapped.len()
                )));
            }
            Unwrap::AesKw {
                kek_label: kek_label(cfg),
            }
        }
        KeyWrapping::RsaOaep { sha256, .. } => Unwrap::RsaOaep {
            hash: if *sha256 {
                OaepHash::Sha256
            } else {
                OaepHash::Sha1
            },
        },
    };
    let fetched = Arc::new(Fetched {
        blob: key.wrapped,
        unwrap,
        dsm: cfg.name.clone(),
    });
    let probe = fetched.clone();
    bridge
        .run(move |s| probe.materialize(s).map(|_| ()))
        .await
        .map_err(|e| DomainError::Upstream(e.to_string()))?;
    Ok(fetched)
}

pub struct DsmTier {
    dsms: Vec<Arc<Dsm>>,
    bridge: Arc<Token>,
}

impl DsmTier {
    pub fn new(dsms: Vec<Arc<Dsm>>, bridge: Arc<Token>) -> Self {
        Self { dsms, bridge }
    }
}

enum Unwrap {
    AesKw { kek_label: String },
    RsaOaep { hash: OaepHash },
}

struct Fetched {
    blob: Vec<u8>,
    unwrap: Unwrap,
    dsm: String,
}

impl Materialize for Fetched {
    fn materialize<'s>(&self, s: &'s Session) -> Result<InToken<'s>, TokenError> {
        let obj = match &self.unwrap {
            Unwrap::AesKw { kek_label } => {
                let kek = ops::find_keys(
                    s,
                    cryptoki::object::ObjectClass::SECRET_KEY,
                    Some(kek_label),
                    None,
                )?;
                let [kek] = kek.as_slice() else {
                    return Err(TokenError::Refused(format!(
                        "the bridge token has {} keys labelled \"{kek_label}\"; exactly one KEK is expected",
                        kek.len()
                    )));
                };
                ops::aes_kw_unwrap_secret(s, *kek, &self.blob, SecretKind::Aes).map_err(|e| {
                    TokenError::Refused(format!(
                        "the key from DSM {} does not unwrap under the bridge token's KEK \"{kek_label}\" \
                         (are the KEKs the same?): {e}",
                        self.dsm
                    ))
                })?
            }
            Unwrap::RsaOaep { hash } => {
                let (_, private) =
                    ops::find_transport_key(s, ops::TRANSPORT_LABEL)?.ok_or_else(|| {
                        TokenError::Refused("the bridge token has no transport key".into())
                    })?;
                ops::oaep_unwrap_secret(s, *hash, private, &self.blob, SecretKind::Aes).map_err(
                    |e| {
                        TokenError::Refused(format!(
                            "the key from DSM {} does not unwrap under the transport key: {e}",
                            self.dsm
                        ))
                    },
                )?
            }
        };
        ops::check_unwrapped(s, obj.handle(), ops::Expected::SecretLen(32))
            .map_err(|e| TokenError::Refused(format!("the key from DSM {}: {e}", self.dsm)))?;
        Ok(InToken::Transient(obj))
    }
}

/// Only AES-256 symmetric keys travel from a DSM.
fn check_facts(what: &str, f: &kmip::ObjectFacts) -> Result<(), DomainError> {
    if f.object_type != Some(kmip::OBJECT_SYMMETRIC_KEY) {
        return Err(DomainError::Invalid(format!(
            "source_key_identifier: {what} is not a symmetric key; DSM uploads are AES-256 only"
        )));
    }
    if f.algorithm != Some(kmip::ALG_AES) {
        return Err(DomainError::Invalid(format!(
            "source_key_identifier: {what} is a {} key; DSM uploads are AES only",
            f.algorithm
                .map(kmip::algorithm_name)
                .unwrap_or_else(|| "non-AES".into())
        )));
    }
    if f.length != Some(256) {
        return Err(DomainError::Invalid(format!(
            "source_key_identifier: {what} is AES-{}; SYMMETRIC_DEFAULT takes AES-256",
            f.length.unwrap_or_default()
        )));
    }
    Ok(())
}

impl DsmTier {
    fn pick<'a>(&'a self, identifier: &'a str) -> Result<Vec<(Arc<Dsm>, &'a str)>, DomainError> {
        if self.dsms.is_empty() {
            return Err(DomainError::Invalid(
                "source_key_tier dsm: no Data Security Manager is configured on this bridge".into(),
            ));
        }
        if let Some((name, key)) = identifier.split_once(':')
            && let Some(d) = self.dsms.iter().find(|d| d.cfg.name == name)
        {
            return Ok(vec![(d.clone(), key)]);
        }
        Ok(self.dsms.iter().map(|d| (d.clone(), identifier)).collect())
    }

    /// The Unique Identifier: the object with this Name, else the identifier itself.
    async fn uid(dsm: &Dsm, key: &str) -> Result<String, DomainError> {
        let found = dsm.client.locate_by_name(key).await?;
        match found.len() {
            0 => Ok(key.to_owned()),
            1 => Ok(found[0].clone()),
            n => Err(DomainError::Conflict(format!(
                "source_key_identifier: {n} objects are named `{key}` on DSM {}",
                dsm.cfg.name
            ))),
        }
    }
}

impl Tier for DsmTier {
    async fn resolve(
        &self,
        identifier: &str,
        spec: KeySpec,
    ) -> Result<ResolvedSource, DomainError> {
        if spec != KeySpec::SymmetricDefault {
            return Err(DomainError::Invalid(format!(
                "aws_param.CustomerMasterKeySpec: {spec}: DSM keys are AES-256 only (use SYMMETRIC_DEFAULT)"
            )));
        }
        let candidates = self.pick(identifier)?;
        let several = candidates.len() > 1;
        let mut hits = Vec::new();
        let mut refused = Vec::new();
        for (dsm, key) in candidates {
            let uid = Self::uid(&dsm, key).await?;
            let facts = match dsm.client.facts(&uid).await {
                Ok(f) => f,
                Err(e) if e.not_found() && several => continue,
                Err(e) if e.not_found() => {
                    return Err(DomainError::NotFound(format!(
                        "source_key_identifier: DSM {} has no key `{key}`",
                        dsm.cfg.name
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let what = format!("DSM {} key `{key}`", dsm.cfg.name);
            // Unpinned, another DSM may hold the AES key under this name: keep looking.
            if let Err(e) = check_facts(&what, &facts) {
                if several {
                    refused.push(e);
                    continue;
                }
                return Err(e);
            }
            let wrapping = match dsm.cfg.wrapping {
                DsmWrapping::AesKw => {
                    let name = dsm.cfg.kek_name.clone().unwrap_or_default();
                    let found = dsm.client.locate_by_name(&name).await?;
                    let [kek] = found.as_slice() else {
                        return Err(DomainError::Upstream(format!(
                            "DSM {}: {} objects are named `{name}`; exactly one KEK is expected",
                            dsm.cfg.name,
                            found.len()
                        )));
                    };
                    if *kek == uid {
                        return Err(DomainError::Invalid(format!(
                            "source_key_identifier: {what} is the KEK this bridge shares with the DSM; it is never uploaded"
                        )));
                    }
                    KeyWrapping::AesKeyWrap {
                        kek_uid: kek.clone(),
                    }
                }
                DsmWrapping::RsaOaep => {
                    let name = dsm.cfg.transport_key_name.clone().unwrap_or_default();
                    let found = dsm.client.locate_by_name(&name).await?;
                    let [public] = found.as_slice() else {
                        return Err(DomainError::Upstream(format!(
                            "DSM {}: the transport key `{name}` is not registered exactly once",
                            dsm.cfg.name
                        )));
                    };
                    let hash = oaep_hash(&self.bridge).ok_or_else(|| {
                        DomainError::Unprocessable(format!(
                            "token {} proved no RSA-OAEP unwrap, so it cannot receive keys from DSM {} (wrapping = \"rsa-oaep\")",
                            self.bridge.name, dsm.cfg.name
                        ))
                    })?;
                    let sha256 = hash == OaepHash::Sha256;
                    KeyWrapping::RsaOaep {
                        public_uid: public.clone(),
                        sha256,
                    }
                }
            };
            match dsm.client.get_wrapped(&uid, &wrapping).await {
                Ok(k) => hits.push((dsm.clone(), uid, k, wrapping)),
                Err(e) if e.not_found() && several => {}
                Err(e) if e.not_found() => {
                    return Err(DomainError::NotFound(format!(
                        "source_key_identifier: DSM {} has no key `{key}`",
                        dsm.cfg.name
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (dsm, uid, key, wrapping) = match hits.len() {
            0 if !refused.is_empty() => return Err(refused.remove(0)),
            0 => {
                return Err(DomainError::NotFound(format!(
                    "source_key_identifier: no Data Security Manager has a key `{identifier}`"
                )));
            }
            1 => hits.remove(0),
            _ => {
                return Err(DomainError::Conflict(format!(
                    "source_key_identifier: several DSMs have a key `{identifier}`; pin it as DSM_NAME:{identifier}"
                )));
            }
        };
        let what = format!("DSM {} key `{identifier}`", dsm.cfg.name);
        let token = self.bridge.clone();
        let fetched = accept_wrapped(&token, &dsm.cfg, &what, key, &wrapping).await?;
        Ok(ResolvedSource {
            token,
            local_key_id: uid,
            local_key_name: identifier.to_owned(),
            private: None,
            material: fetched,
            public_spki: None,
        })
    }
}
