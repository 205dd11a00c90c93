//! `hsm-luna`: a key already in a configured source token (a Luna partition in production),
//! found by CKA_LABEL or, failing that, by hex CKA_ID: a secret key for SYMMETRIC_DEFAULT and
//! HMAC specs, a private key for RSA and ECC specs. It is wrapped where it lives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::object::{KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{InToken, Materialize, ResolvedSource, Tier, check_private_kind, check_secret_len};
use crate::cckm::spec::{KeySpec, SpecFamily};
use crate::error::DomainError;
use crate::pkcs11::keys::PrivateKind;
use crate::pkcs11::ops::{self, KeyFacts};
use crate::pkcs11::raw::Functions;
use crate::pkcs11::{Token, TokenError};

/// How long a key found in a source token is remembered, so that uploads of one key (to
/// several Regions, again and again by a job) search the token once: each reads the key's
/// attributes through the remembered handle instead, and searches afresh when the handle no
/// longer names an object of the same class, label and CKA_ID (the key was deleted, replaced
/// or renamed, or the token reset). A key with the same identifier added meanwhile in another
/// token is noticed (as ambiguous) once the time is up.
const REMEMBER: Duration = Duration::from_secs(30);
/// Beyond this many remembered keys, the stale ones are dropped.
const REMEMBER_MAX: usize = 4096;

#[derive(Clone)]
struct Remembered {
    token: Arc<Token>,
    hit: Hit,
    found: Instant,
    /// Cleared by a wrap that found the handle no longer names the key.
    valid: Arc<AtomicBool>,
}

impl Remembered {
    fn fresh(&self) -> bool {
        self.valid.load(Ordering::Relaxed) && self.found.elapsed() < REMEMBER
    }

    /// The key, if its remembered handle still names it (same class, label and CKA_ID, read
    /// in one call with the attributes that can change: whether it may still be wrapped).
    /// `None`: search again.
    async fn revalidated(self) -> Option<Remembered> {
        use cryptoki::object::AttributeType as A;
        let h = self.hit.handle;
        let raw = self.token.functions().clone();
        let now = self
            .token
            .run(move |s| {
                ops::read_facts_once(
                    &raw,
                    s,
                    h,
                    &[
                        A::Class,
                        A::Label,
                        A::Id,
                        A::Extractable,
                        A::WrapWithTrusted,
                    ],
                )
            })
            .await
            .ok()?;
        let was = &self.hit.facts;
        if now.class != was.class || now.label != was.label || now.id != was.id {
            self.valid.store(false, Ordering::Relaxed);
            return None;
        }
        let mut r = self;
        r.hit.facts.extractable = now.extractable;
        r.hit.facts.wrap_with_trusted = now.wrap_with_trusted;
        Some(r)
    }
}

pub struct HsmLunaTier {
    tokens: Vec<Arc<Token>>,
    /// By (private key?, identifier).
    remembered: Mutex<HashMap<(bool, String), Remembered>>,
}

impl HsmLunaTier {
    pub fn new(tokens: Vec<Arc<Token>>) -> Self {
        Self {
            tokens,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    fn recall(&self, key: &(bool, String)) -> Option<Remembered> {
        let map = self.remembered.lock().ok()?;
        map.get(key).filter(|r| r.fresh()).cloned()
    }

    fn remember(&self, key: (bool, String), r: Remembered) {
        if let Ok(mut map) = self.remembered.lock() {
            if map.len() >= REMEMBER_MAX {
                map.retain(|_, r| r.fresh());
            }
            map.insert(key, r);
        }
    }

    /// Searches the source tokens for the one key `identifier` names.
    async fn search(
        &self,
        class: ObjectClass,
        identifier: &str,
    ) -> Result<(Arc<Token>, Hit), DomainError> {
        let mut found: Vec<(Arc<Token>, Hit)> = Vec::new();
        for token in &self.tokens {
            let ident = identifier.to_owned();
            let hits = token
                .run(move |s| find_in(s, class, &ident))
                .await
                .map_err(DomainError::token(&token.name))?;
            found.extend(hits.into_iter().map(|h| (token.clone(), h)));
        }
        let what = if class == ObjectClass::PRIVATE_KEY {
            "private key"
        } else {
            "secret key"
        };
        match found.len() {
            0 => Err(DomainError::NotFound(format!(
                "source_key_identifier: no {what} labelled (or with hex CKA_ID) `{identifier}` in the source tokens"
            ))),
            1 => Ok(found.remove(0)),
            n => Err(DomainError::Conflict(format!(
                "source_key_identifier: {n} keys match `{identifier}` in the source tokens; give their keys unique labels"
            ))),
        }
    }

    /// The labels of the secret and private keys in the source tokens that `matches` accepts,
    /// each with the key spec it uploads as when that follows from the key alone (an AES-256
    /// key, an HMAC key of a typed length, an RSA or EC private key AWS imports). Sorted, once
    /// each.
    pub async fn labelled(
        &self,
        matches: impl Fn(&str) -> bool + Clone + Send + 'static,
    ) -> Result<Vec<(String, Option<KeySpec>)>, DomainError> {
        if self.tokens.is_empty() {
            return Err(DomainError::Invalid(
                "source_key_tier hsm-luna: no source token (role = \"source\") is configured on this bridge".into(),
            ));
        }
        let mut found = std::collections::BTreeMap::new();
        for token in &self.tokens {
            let m = matches.clone();
            let keys = token
                .run(move |s| {
                    let mut out = Vec::new();
                    for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
                        for h in ops::find_keys(s, class, None, None)? {
                            let facts = ops::key_facts(s, h)?;
                            if facts.label.is_empty() || !m(&facts.label) {
                                continue;
                            }
                            let spec = if class == ObjectClass::PRIVATE_KEY {
                                ops::private_key_kind(s, h)?.map(KeySpec::for_private_kind)
                            } else {
                                secret_spec(&facts)
                            };
                            out.push((facts.label, spec));
                        }
                    }
                    Ok(out)
                })
                .await
                .map_err(DomainError::token(&token.name))?;
            for (label, spec) in keys {
                found.entry(label).or_insert(spec);
            }
        }
        Ok(found.into_iter().collect())
    }
}

/// The spec a secret key uploads as, when its type and length say it.
fn secret_spec(f: &KeyFacts) -> Option<KeySpec> {
    let len = f.value_len?;
    match f.key_type? {
        k if k == KeyType::AES && len == 32 => Some(KeySpec::SymmetricDefault),
        k if k == KeyType::SHA224_HMAC => Some(KeySpec::Hmac224),
        k if k == KeyType::SHA256_HMAC => Some(KeySpec::Hmac256),
        k if k == KeyType::SHA384_HMAC => Some(KeySpec::Hmac384),
        k if k == KeyType::SHA512_HMAC => Some(KeySpec::Hmac512),
        _ => None,
    }
}

#[derive(Clone)]
enum Lookup {
    Label(ObjectClass, String),
    Id(ObjectClass, Vec<u8>),
}

impl Lookup {
    fn find(&self, s: &Session) -> Result<Vec<ObjectHandle>, TokenError> {
        match self {
            Lookup::Label(c, l) => ops::find_keys(s, *c, Some(l), None),
            Lookup::Id(c, i) => ops::find_keys(s, *c, None, Some(i)),
        }
    }
}

/// A key in its source token: how it was found, and the handle and identity found then. The
/// handle is used again (one attribute read instead of a search of the token) as long as it
/// still names an object of the same class, label and CKA_ID; otherwise the key is looked up
/// afresh (after a token reset, say, handles can change).
struct ResidentKey {
    raw: Arc<Functions>,
    lookup: Lookup,
    handle: ObjectHandle,
    class: ObjectClass,
    label: String,
    id: Vec<u8>,
    /// Whether the tier may go on remembering the handle.
    valid: Arc<AtomicBool>,
}

impl ResidentKey {
    fn still_there(&self, session: &Session) -> bool {
        use cryptoki::object::AttributeType as A;
        let Ok(now) = ops::read_facts_once(
            &self.raw,
            session,
            self.handle,
            &[A::Class, A::Label, A::Id],
        ) else {
            return false;
        };
        now.class == self.class && now.label == self.label && now.id == self.id
    }
}

impl Materialize for ResidentKey {
    fn materialize<'s>(&self, session: &'s Session) -> Result<InToken<'s>, TokenError> {
        if self.still_there(session) {
            return Ok(InToken::Resident(self.handle));
        }
        self.valid.store(false, Ordering::Relaxed);
        match self.lookup.find(session)?.as_slice() {
            [h] => Ok(InToken::Resident(*h)),
            [] => Err(TokenError::Refused(
                "the source key is gone from its token".into(),
            )),
            _ => Err(TokenError::Refused(
                "the source key is no longer unique".into(),
            )),
        }
    }

    /// The public key object found the way the private key was (same label or CKA_ID).
    fn public_spki(&self, session: &Session) -> Result<Option<Vec<u8>>, TokenError> {
        let public = match &self.lookup {
            Lookup::Label(_, l) => Lookup::Label(ObjectClass::PUBLIC_KEY, l.clone()),
            Lookup::Id(_, i) => Lookup::Id(ObjectClass::PUBLIC_KEY, i.clone()),
        };
        let [private] = self.lookup.find(session)?[..] else {
            return Ok(None);
        };
        let Some(kind) = ops::private_key_kind(session, private)? else {
            return Ok(None);
        };
        match public.find(session)?[..] {
            [h] => ops::public_key_spki(session, h, kind).map(Some),
            _ => Ok(None),
        }
    }
}

fn is_hmac_type(k: KeyType) -> bool {
    k == KeyType::GENERIC_SECRET
        || k == KeyType::SHA_1_HMAC
        || k == KeyType::SHA224_HMAC
        || k == KeyType::SHA256_HMAC
        || k == KeyType::SHA384_HMAC
        || k == KeyType::SHA512_HMAC
}

/// A key found for the identifier: where, how to find it again, what it is.
#[derive(Clone)]
struct Hit {
    lookup: Lookup,
    handle: ObjectHandle,
    facts: KeyFacts,
    private: Option<PrivateKind>,
}

fn check_facts(hit: &Hit, spec: KeySpec, token: &str) -> Result<(), DomainError> {
    let f = &hit.facts;
    let what = format!("key `{}` in token {token}", f.label);
    if f.class == ObjectClass::PRIVATE_KEY {
        let kind = hit.private.ok_or_else(|| {
            DomainError::Invalid(format!(
                "aws_param.CustomerMasterKeySpec: {what} is a private key of a type AWS does not \
                 import (RSA 2048/3072/4096, EC P-256/P-384/P-521/secp256k1)"
            ))
        })?;
        check_private_kind(spec, kind, &what)?;
        return check_export(f, &what);
    }
    let key_type = f
        .key_type
        .ok_or_else(|| DomainError::Unprocessable(format!("{what} does not tell its key type")))?;
    let wrong = match spec.family() {
        SpecFamily::Symmetric if key_type != KeyType::AES => Some("an AES key"),
        SpecFamily::Hmac if !is_hmac_type(key_type) => Some("an HMAC (generic secret) key"),
        SpecFamily::Rsa | SpecFamily::Ecc => Some("a private key"),
        _ => None,
    };
    if let Some(needed) = wrong {
        return Err(DomainError::Invalid(format!(
            "aws_param.CustomerMasterKeySpec: {spec} needs {needed}; {what} is {key_type}"
        )));
    }
    let len = f
        .value_len
        .ok_or_else(|| DomainError::Unprocessable(format!("{what} does not tell its length")))?;
    check_secret_len(spec, len as usize, &what)?;
    check_export(f, &what)
}

fn check_export(f: &KeyFacts, what: &str) -> Result<(), DomainError> {
    if f.extractable != Some(true) {
        return Err(DomainError::Unprocessable(format!(
            "{what} is not extractable (CKA_EXTRACTABLE is false): the token will not wrap it for AWS"
        )));
    }
    if f.wrap_with_trusted == Some(true) {
        return Err(DomainError::Unprocessable(format!(
            "{what} may only be wrapped by trusted keys (CKA_WRAP_WITH_TRUSTED), which AWS's wrapping key cannot be"
        )));
    }
    Ok(())
}

fn find_in(s: &Session, class: ObjectClass, identifier: &str) -> Result<Vec<Hit>, TokenError> {
    let label = Lookup::Label(class, identifier.to_owned());
    let id = hex::decode(identifier)
        .ok()
        .filter(|b| !b.is_empty())
        .map(|i| Lookup::Id(class, i));
    let mut hits = Vec::new();
    for lookup in std::iter::once(label).chain(id) {
        let handles = lookup.find(s)?;
        for h in &handles {
            let facts = ops::key_facts(s, *h)?;
            let private = if facts.class == ObjectClass::PRIVATE_KEY {
                ops::private_key_kind(s, *h)?
            } else {
                None
            };
            hits.push(Hit {
                lookup: lookup.clone(),
                handle: *h,
                facts,
                private,
            });
        }
        if !handles.is_empty() {
            break;
        }
    }
    Ok(hits)
}

impl Tier for HsmLunaTier {
    async fn resolve(
        &self,
        identifier: &str,
        spec: KeySpec,
    ) -> Result<ResolvedSource, DomainError> {
        if self.tokens.is_empty() {
            return Err(DomainError::Invalid(
                "source_key_tier hsm-luna: no source token (role = \"source\") is configured on this bridge".into(),
            ));
        }
        // Secret specs look for secret keys, asymmetric ones for private keys.
        let class = if spec.private_kind().is_some() {
            ObjectClass::PRIVATE_KEY
        } else {
            ObjectClass::SECRET_KEY
        };
        let key = (class == ObjectClass::PRIVATE_KEY, identifier.to_owned());
        let recalled = match self.recall(&key) {
            Some(r) => r.revalidated().await,
            None => None,
        };
        let (token, hit, valid, searched) = match recalled {
            Some(r) => (r.token, r.hit, r.valid, false),
            None => {
                let (token, hit) = self.search(class, identifier).await?;
                (token, hit, Arc::new(AtomicBool::new(true)), true)
            }
        };
        check_facts(&hit, spec, &token.name)?;
        if let (Some(kind), true) = (hit.private, token.profile.quirks.keygen_short_ec_scalar) {
            let h = hit.handle;
            let full = token
                .run(move |s| ops::exports_full_scalar(s, h, kind))
                .await
                .map_err(DomainError::token(&token.name))?;
            if !full {
                return Err(DomainError::Unprocessable(format!(
                    "key `{}` in token {}: the token exports this {kind} key's scalar without its \
                     leading zero byte, which AWS refuses as key material; nothing was created in AWS",
                    hit.facts.label, token.name
                )));
            }
        }
        // Only a key that passed the checks: one that failed is looked at afresh. A private key
        // of a token that may export it short is checked again each time.
        if searched && !(hit.private.is_some() && token.profile.quirks.keygen_short_ec_scalar) {
            self.remember(
                key,
                Remembered {
                    token: token.clone(),
                    hit: hit.clone(),
                    found: Instant::now(),
                    valid: valid.clone(),
                },
            );
        }
        let id_hex = hex::encode(&hit.facts.id);
        let raw = token.functions().clone();
        Ok(ResolvedSource {
            token,
            local_key_id: if id_hex.is_empty() {
                hit.facts.label.clone()
            } else {
                id_hex
            },
            local_key_name: hit.facts.label.clone(),
            private: hit.private,
            material: Arc::new(ResidentKey {
                raw,
                lookup: hit.lookup,
                handle: hit.handle,
                class: hit.facts.class,
                label: hit.facts.label,
                id: hit.facts.id,
                valid,
            }),
            public_spki: None,
        })
    }
}
