//! Material into an AWS key, wrapped in the token: the one path every import takes (upload,
//! re-import): a fresh GetParametersForImport, the AWS wrapping key imported into the token as a
//! session object restricted to its mechanism, the source key made resident, its fingerprint
//! checked against the one expected, `C_WrapKey`, then ImportKeyMaterial.

use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

use super::spec::{KeySpec, WrappingAlgorithm};
use crate::error::DomainError;
use crate::kms::{self, KmsError, MaterialImport};
use crate::pkcs11::TokenError;
use crate::pkcs11::fingerprint::Fingerprint;
use crate::pkcs11::ops::{self, PrivateWrap};
use crate::pkcs11::profile::OaepHash;
use crate::pkcs11::raw::Functions;
use crate::store::Store;
use crate::tiers::ResolvedSource;

/// How the source key is wrapped for AWS, chosen from what its token proved.
#[derive(Debug, Clone, Copy)]
pub enum AwsWrap {
    /// A secret key: RSAES_OAEP_SHA_*.
    Secret(OaepHash),
    /// A private key: RSA_AES_KEY_WRAP_SHA_*.
    Private(PrivateWrap),
}

impl AwsWrap {
    pub fn choose(source: &ResolvedSource) -> Result<AwsWrap, DomainError> {
        let token = &source.token;
        let caps = token.capabilities().ok_or_else(|| {
            DomainError::Internal(format!("token {} has no self-test result", token.name))
        })?;
        match source.private {
            None => caps.best_oaep().map(AwsWrap::Secret).ok_or_else(|| {
                DomainError::Unprocessable(format!(
                    "token {} proved no RSA-OAEP wrap method",
                    token.name
                ))
            }),
            Some(kind) => caps
                .private_wrap(kind)
                .map(AwsWrap::Private)
                .map_err(|why| {
                    DomainError::Unprocessable(format!(
                        "token {} cannot export {kind} keys exactly, so it refuses to upload them \
                     (self-test: {why})",
                        token.name
                    ))
                }),
        }
    }

    pub fn algorithm(self) -> WrappingAlgorithm {
        match self {
            AwsWrap::Secret(OaepHash::Sha1) => WrappingAlgorithm::RsaesOaepSha1,
            AwsWrap::Secret(OaepHash::Sha256) => WrappingAlgorithm::RsaesOaepSha256,
            AwsWrap::Private(m) if m.hash() == OaepHash::Sha1 => {
                WrappingAlgorithm::RsaAesKeyWrapSha1
            }
            AwsWrap::Private(_) => WrappingAlgorithm::RsaAesKeyWrapSha256,
        }
    }

    fn wrapping_key_mechanism(self) -> MechanismType {
        match self {
            AwsWrap::Secret(_) => MechanismType::RSA_PKCS_OAEP,
            AwsWrap::Private(m) => m.wrapping_key_mechanism(),
        }
    }

    fn wrap(
        self,
        raw: &Functions,
        s: &Session,
        modulus_len: usize,
        wrapping: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>, TokenError> {
        match self {
            AwsWrap::Secret(hash) => ops::oaep_wrap_once(raw, s, hash, modulus_len, wrapping, key),
            AwsWrap::Private(m) => ops::rsa_aes_wrap(s, m, wrapping, key),
        }
    }

    pub fn describe(self) -> String {
        match self {
            AwsWrap::Secret(hash) => format!("RSA-OAEP {hash}"),
            AwsWrap::Private(m) => m.describe(),
        }
    }
}

/// Where an import stands, for whoever keeps track (an upload attempt's stage).
pub trait Stages: Sync {
    fn enter(
        &self,
        stage: &'static str,
    ) -> impl std::future::Future<Output = Result<(), DomainError>> + Send;
}

/// An upload attempt: each stage is journaled before it runs.
pub struct AttemptStages<'a> {
    pub store: &'a Store,
    pub attempt: &'a str,
    /// The stage the attempt's last write recorded already (with the key CreateKey made).
    pub recorded: &'static str,
}

impl Stages for AttemptStages<'_> {
    async fn enter(&self, stage: &'static str) -> Result<(), DomainError> {
        if stage == self.recorded {
            return Ok(());
        }
        let id = self.attempt.to_owned();
        // Not durable on its own: the attempt's durable records are its start (before
        // CreateKey) and its end.
        self.store
            .call_relaxed(move |c| crate::store::attempts::stage(c, &id, stage))
            .await
            .map_err(DomainError::from)
    }
}

/// Nobody keeps track: a key action records its outcome in the key's history instead.
pub struct Untracked;

impl Stages for Untracked {
    async fn enter(&self, _stage: &'static str) -> Result<(), DomainError> {
        Ok(())
    }
}

/// The first stage of [`wrap_and_import`].
pub const FIRST_STAGE: &str = "GetParametersForImport";

/// GetParametersForImport, wrap in the token, ImportKeyMaterial; the fingerprint of the key that
/// was wrapped (none if the token cannot compute it). When `expected` is given, that
/// fingerprint is taken before the wrap and must match: a key swapped in the source between
/// checks is never sent. Errors name the stage they failed at.
#[allow(clippy::too_many_arguments)]
pub async fn wrap_and_import(
    client: &aws_sdk_kms::Client,
    key_id: &str,
    source: &ResolvedSource,
    spec: KeySpec,
    wrap: AwsWrap,
    wrapping_key_spec: &str,
    import: &MaterialImport<'_>,
    expected: Option<&Fingerprint>,
    stages: &impl Stages,
) -> Result<Option<Fingerprint>, (&'static str, DomainError)> {
    let wks = wrapping_key_spec;
    let at = |stage: &'static str| move |e: DomainError| (stage, e);
    stages.enter(FIRST_STAGE).await.map_err(at(FIRST_STAGE))?;
    let params = kms::get_parameters_for_import(client, key_id, wrap.algorithm(), wks)
        .await
        .map_err(|e| ("GetParametersForImport", e.into()))?;
    let bad_key = |why: String| {
        (
            "GetParametersForImport",
            DomainError::Kms(KmsError::upstream("GetParametersForImport", why)),
        )
    };
    let public = RsaPublicKey::from_public_key_der(&params.public_key_der)
        .map_err(|e| bad_key(format!("the wrapping key is not an RSA public key: {e}")))?;
    let want_bits: usize = wks.trim_start_matches("RSA_").parse().unwrap_or(0);
    if public.size() * 8 != want_bits {
        return Err(bad_key(format!(
            "a {}-bit wrapping key came back for {wks}",
            public.size() * 8
        )));
    }
    let modulus_len = public.size();
    let modulus = public.n().to_bytes_be();
    let exponent = public.e().to_bytes_be();

    stages.enter("Wrap").await.map_err(at("Wrap"))?;
    let token = source.token.clone();
    let raw = token.functions().clone();
    let material = source.material.clone();
    let probe = source.fingerprinter(spec);
    let expected = expected.cloned();
    let (wrapped, fingerprint) = token
        .run(move |s| {
            let key = material.materialize(s)?;
            // The key about to be wrapped is fingerprinted in this very session: when a
            // fingerprint is expected it must match (a key swapped in the source between checks
            // is never sent); otherwise it is what the caller records, if the token can tell.
            let fingerprint = match (&expected, probe.compute(s, key.handle())) {
                (Some(want), Ok(got)) if &got == want => Some(got),
                (Some(_), Ok(_)) => {
                    return Err(TokenError::Refused(
                        "the source key no longer holds the material it was checked to hold".into(),
                    ));
                }
                (Some(_), Err(e)) => return Err(e),
                (None, Ok(got)) => Some(got),
                (None, Err(e)) => {
                    tracing::warn!(error = %e, "the source key cannot be fingerprinted; a later import-material into this key cannot prove its material and will be refused");
                    None
                }
            };
            let wrapping = ops::import_rsa_wrapping_key(
                s,
                &modulus,
                &exponent,
                wrap.wrapping_key_mechanism(),
            )?;
            let wrapped = wrap.wrap(&raw, s, modulus_len, wrapping.handle(), key.handle())?;
            Ok((wrapped, fingerprint))
        })
        .await
        .map_err(|e| ("Wrap", DomainError::token(&token.name)(e)))?;

    stages
        .enter("ImportKeyMaterial")
        .await
        .map_err(at("ImportKeyMaterial"))?;
    kms::import_key_material(client, key_id, &params, wrapped, import)
        .await
        .map_err(|e| ("ImportKeyMaterial", e.into()))?;
    Ok(fingerprint)
}
