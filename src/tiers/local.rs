//! `local`: a key of this bridge's own vault, unwrapped from the store into the bridge token.

use std::sync::Arc;

use cryptoki::session::Session;

use super::{InToken, Materialize, ResolvedSource, Tier, check_private_kind, check_secret_len};
use crate::cckm::spec::KeySpec;
use crate::error::DomainError;
use crate::pkcs11::TokenError;
use crate::store::vault::VaultKeyRow;
use crate::vault::{Shape, Vault, VaultAlgorithm};

pub struct LocalTier {
    vault: Arc<Vault>,
}

impl LocalTier {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

struct StoredKey(VaultKeyRow);

impl Materialize for StoredKey {
    fn materialize<'s>(&self, session: &'s Session) -> Result<InToken<'s>, TokenError> {
        crate::vault::unwrap_into(session, &self.0).map(InToken::Transient)
    }
}

impl Tier for LocalTier {
    async fn resolve(
        &self,
        identifier: &str,
        spec: KeySpec,
    ) -> Result<ResolvedSource, DomainError> {
        let row = self.vault.get_row(identifier).await?.ok_or_else(|| {
            DomainError::NotFound(format!(
                "source_key_identifier: no vault key `{identifier}`"
            ))
        })?;
        let what = format!("vault key `{}`", row.name);
        let shape = Shape::of(&row).ok_or_else(|| {
            DomainError::Internal(format!("vault key {} has an unknown kind", row.id))
        })?;
        let private = match shape {
            Shape::Private(kind) => {
                check_private_kind(spec, kind, &what)?;
                Some(kind)
            }
            Shape::Secret { len, .. } => {
                if spec.private_kind().is_some() {
                    return Err(DomainError::Invalid(format!(
                        "aws_param.CustomerMasterKeySpec: {what} is a secret key; {spec} needs a private key"
                    )));
                }
                let algorithm = VaultAlgorithm::parse(&row.algorithm).ok_or_else(|| {
                    DomainError::Internal(format!("vault key {} has unknown algorithm", row.id))
                })?;
                if algorithm.secret_spec() != Some(spec) {
                    return Err(DomainError::Invalid(format!(
                        "aws_param.CustomerMasterKeySpec: {spec} does not match {what} ({} {} bits{})",
                        row.algorithm,
                        row.size,
                        algorithm
                            .secret_spec()
                            .map(|s| format!(", uploadable as {s}"))
                            .unwrap_or_default()
                    )));
                }
                check_secret_len(spec, len, &what)?;
                None
            }
        };
        let extra: serde_json::Value = serde_json::from_str(&row.extra).unwrap_or_default();
        if extra.get("unexportable").and_then(|v| v.as_bool()) == Some(true) {
            return Err(DomainError::Unprocessable(format!(
                "{what} is marked unexportable"
            )));
        }
        let token = self.vault.token().clone();
        // The token that stored the key may be another bridge's (several bridges share a
        // store, each token holding the same KEK, checked at start): what counts is that this
        // token's KEK unwraps it. Unwrap once now: a missing or replaced KEK is refused
        // before anything reaches AWS.
        let probe = row.clone();
        token
            .run(move |s| crate::vault::unwrap_into(s, &probe).map(|_| ()))
            .await
            .map_err(DomainError::token(&token.name))?;
        let public_spki = row
            .public_key
            .as_deref()
            .and_then(crate::pkcs11::keys::spki_der_from_pem);
        Ok(ResolvedSource {
            token,
            local_key_id: row.id.clone(),
            local_key_name: row.name.clone(),
            private,
            material: Arc::new(StoredKey(row)),
            public_spki,
        })
    }
}
