//! `hsm-luna`: a key already in a configured source token (a Luna partition in production),
//! found by CKA_LABEL or, failing that, by hex CKA_ID. It is wrapped where it lives.

use std::sync::Arc;

use cryptoki::object::{KeyType, ObjectClass};
use cryptoki::session::Session;

use super::{InToken, Materialize, ResolvedSource, Tier, check_secret_len};
use crate::cckm::spec::{KeySpec, SpecFamily};
use crate::error::DomainError;
use crate::pkcs11::ops::{self, KeyFacts};
use crate::pkcs11::{Token, TokenError};

pub struct HsmLunaTier {
    tokens: Vec<Arc<Token>>,
}

impl HsmLunaTier {
    pub fn new(tokens: Vec<Arc<Token>>) -> Self {
        Self { tokens }
    }
}

#[derive(Clone)]
enum Lookup {
    Label(String),
    Id(Vec<u8>),
}

impl Lookup {
    fn find(&self, s: &Session) -> Result<Vec<cryptoki::object::ObjectHandle>, TokenError> {
        match self {
            Lookup::Label(l) => ops::find_keys(s, ObjectClass::SECRET_KEY, Some(l), None),
            Lookup::Id(i) => ops::find_keys(s, ObjectClass::SECRET_KEY, None, Some(i)),
        }
    }
}

struct ResidentKey(Lookup);

impl Materialize for ResidentKey {
    fn materialize<'s>(&self, session: &'s Session) -> Result<InToken<'s>, TokenError> {
        match self.0.find(session)?.as_slice() {
            [h] => Ok(InToken::Resident(*h)),
            [] => Err(TokenError::Refused(
                "the source key is gone from its token".into(),
            )),
            _ => Err(TokenError::Refused(
                "the source key is no longer unique".into(),
            )),
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

fn check_facts(f: &KeyFacts, spec: KeySpec, token: &str) -> Result<(), DomainError> {
    let what = format!("key `{}` in token {token}", f.label);
    let key_type = f
        .key_type
        .ok_or_else(|| DomainError::Unprocessable(format!("{what} does not tell its key type")))?;
    match spec.family() {
        SpecFamily::Symmetric if key_type != KeyType::AES => {
            return Err(DomainError::Invalid(format!(
                "aws_param.CustomerMasterKeySpec: {spec} needs an AES key; {what} is {key_type}"
            )));
        }
        SpecFamily::Hmac if !is_hmac_type(key_type) => {
            return Err(DomainError::Invalid(format!(
                "aws_param.CustomerMasterKeySpec: {spec} needs an HMAC (generic secret) key; {what} is {key_type}"
            )));
        }
        _ => {}
    }
    let len = f
        .value_len
        .ok_or_else(|| DomainError::Unprocessable(format!("{what} does not tell its length")))?;
    check_secret_len(spec, len as usize, &what)?;
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
        let mut found: Vec<(Arc<Token>, Lookup, KeyFacts)> = Vec::new();
        for token in &self.tokens {
            let label = Lookup::Label(identifier.to_owned());
            let id = hex::decode(identifier)
                .ok()
                .filter(|b| !b.is_empty())
                .map(Lookup::Id);
            let hits = token
                .run(move |s| {
                    let mut hits = Vec::new();
                    for lookup in std::iter::once(label).chain(id) {
                        let handles = lookup.find(s)?;
                        for h in &handles {
                            hits.push((lookup.clone(), ops::key_facts(s, *h)?));
                        }
                        if !handles.is_empty() {
                            break;
                        }
                    }
                    Ok(hits)
                })
                .await
                .map_err(DomainError::token(&token.name))?;
            found.extend(hits.into_iter().map(|(l, f)| (token.clone(), l, f)));
        }
        let (token, lookup, facts) = match found.len() {
            0 => {
                return Err(DomainError::NotFound(format!(
                    "source_key_identifier: no secret key labelled (or with hex CKA_ID) `{identifier}` in the source tokens"
                )));
            }
            1 => found.remove(0),
            n => {
                return Err(DomainError::Conflict(format!(
                    "source_key_identifier: {n} keys match `{identifier}` in the source tokens; give their keys unique labels"
                )));
            }
        };
        check_facts(&facts, spec, &token.name)?;
        let id_hex = hex::encode(&facts.id);
        Ok(ResolvedSource {
            token,
            local_key_id: if id_hex.is_empty() {
                facts.label.clone()
            } else {
                id_hex
            },
            local_key_name: facts.label.clone(),
            material: Arc::new(ResidentKey(lookup)),
        })
    }
}
