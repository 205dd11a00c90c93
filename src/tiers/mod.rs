//! Source tiers. Each resolves a `source_key_identifier` into a key that can be made
//! resident in a token, without creating anything; the AWS wrap is then common to all tiers.

pub mod dsm;
pub mod external_cm;
pub mod hsm_luna;
pub mod local;

use std::sync::Arc;

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use crate::cckm::spec::{KeySpec, SourceTier};
use crate::error::DomainError;
use crate::pkcs11::fingerprint::{self, Fingerprint, Subject};
use crate::pkcs11::keys::PrivateKind;
use crate::pkcs11::ops::SessionObject;
use crate::pkcs11::raw::Functions;
use crate::pkcs11::{Token, TokenError};

/// A key made resident in a session: already there, or unwrapped for this operation only.
pub enum InToken<'s> {
    Resident(ObjectHandle),
    Transient(SessionObject<'s>),
}

impl InToken<'_> {
    pub fn handle(&self) -> ObjectHandle {
        match self {
            InToken::Resident(h) => *h,
            InToken::Transient(o) => o.handle(),
        }
    }
}

/// Brings a resolved source key into a session of its token.
pub trait Materialize: Send + Sync {
    fn materialize<'s>(&self, session: &'s Session) -> Result<InToken<'s>, TokenError>;

    /// The public key (SubjectPublicKeyInfo DER) of a private key, where its token holds it
    /// beside the key.
    fn public_spki(&self, _session: &Session) -> Result<Option<Vec<u8>>, TokenError> {
        Ok(None)
    }
}

/// A source key found and checked against the requested key spec.
pub struct ResolvedSource {
    /// The token the key is (or will be made) resident in; the AWS wrap runs there.
    pub token: Arc<Token>,
    pub local_key_id: String,
    pub local_key_name: String,
    /// `Some` for private keys (wrapped with RSA_AES_KEY_WRAP), `None` for secret keys.
    pub private: Option<PrivateKind>,
    pub material: Arc<dyn Materialize>,
    /// The public key of a private key, as the source knows it (vault row, CM answer).
    pub public_spki: Option<Vec<u8>>,
}

impl ResolvedSource {
    /// What kind of key the fingerprint is taken of.
    pub fn subject(&self, spec: KeySpec) -> Subject {
        match (self.private, spec) {
            (Some(kind), _) => Subject::Private(kind),
            (None, KeySpec::SymmetricDefault) => Subject::Aes,
            (None, _) => Subject::Hmac,
        }
    }

    /// The fingerprint of the source key's material, computed in its token (see
    /// [`fingerprint`]): what proves a later import carries the same material.
    pub async fn fingerprint(&self, spec: KeySpec) -> Result<Fingerprint, DomainError> {
        let probe = self.fingerprinter(spec);
        let material = self.material.clone();
        self.token
            .run(move |s| {
                let key = material.materialize(s)?;
                probe.compute(s, key.handle())
            })
            .await
            .map_err(DomainError::token(&self.token.name))
    }

    /// What computes the fingerprint of this source's key inside a session of its token (so
    /// that the key being wrapped can be fingerprinted in the same session).
    pub fn fingerprinter(&self, spec: KeySpec) -> Fingerprinter {
        Fingerprinter {
            raw: self.token.functions().clone(),
            subject: self.subject(spec),
            material: self.material.clone(),
            known_public: self.public_spki.clone(),
        }
    }
}

/// Computes a source key's fingerprint in a session of its token.
pub struct Fingerprinter {
    raw: Arc<Functions>,
    subject: Subject,
    material: Arc<dyn Materialize>,
    known_public: Option<Vec<u8>>,
}

impl Fingerprinter {
    /// The fingerprint of the resident key `key` (the source's, made resident in `s`).
    pub fn compute(&self, s: &Session, key: ObjectHandle) -> Result<Fingerprint, TokenError> {
        let public = match (&self.subject, &self.known_public) {
            (Subject::Private(_), None) => self.material.public_spki(s)?,
            (_, known) => known.clone(),
        };
        fingerprint::compute(&self.raw, s, key, self.subject, public.as_deref())
    }
}

/// One tier: find the key, check it fits, create nothing.
pub trait Tier: Send + Sync {
    fn resolve(
        &self,
        identifier: &str,
        spec: KeySpec,
    ) -> impl std::future::Future<Output = Result<ResolvedSource, DomainError>> + Send;
}

pub struct Tiers {
    pub local: local::LocalTier,
    pub hsm_luna: hsm_luna::HsmLunaTier,
    pub external_cm: external_cm::ExternalCmTier,
    pub dsm: dsm::DsmTier,
}

impl Tiers {
    pub async fn resolve(
        &self,
        tier: SourceTier,
        identifier: &str,
        spec: KeySpec,
    ) -> Result<ResolvedSource, DomainError> {
        match tier {
            SourceTier::Local => self.local.resolve(identifier, spec).await,
            SourceTier::HsmLuna => self.hsm_luna.resolve(identifier, spec).await,
            SourceTier::Dsm => self.dsm.resolve(identifier, spec).await,
            SourceTier::ExternalCm => self.external_cm.resolve(identifier, spec).await,
        }
    }
}

/// Checks a secret key's length against what AWS accepts for the spec.
pub fn check_secret_len(spec: KeySpec, len: usize, what: &str) -> Result<(), DomainError> {
    match spec.secret_len_range() {
        Some(r) if r.contains(&len) => Ok(()),
        Some(r) => Err(DomainError::Invalid(format!(
            "{what} is {len} bytes but {spec} takes {}{} bytes",
            r.start(),
            if r.start() == r.end() {
                String::new()
            } else {
                format!(" to {}", r.end())
            }
        ))),
        None => Err(DomainError::Invalid(format!(
            "aws_param.CustomerMasterKeySpec: {what} is a secret key; {spec} needs a private key"
        ))),
    }
}

/// Checks a private key's type, size or curve against the spec.
pub fn check_private_kind(spec: KeySpec, kind: PrivateKind, what: &str) -> Result<(), DomainError> {
    match spec.private_kind() {
        Some(k) if k == kind => Ok(()),
        Some(_) => Err(DomainError::Invalid(format!(
            "aws_param.CustomerMasterKeySpec: {spec} does not match {what}, a {kind} key (uploadable as {})",
            KeySpec::for_private_kind(kind)
        ))),
        None => Err(DomainError::Invalid(format!(
            "aws_param.CustomerMasterKeySpec: {what} is a {kind} private key; {spec} needs a secret key (use {})",
            KeySpec::for_private_kind(kind)
        ))),
    }
}
