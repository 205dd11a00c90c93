//! PKCS#11: module loading, tokens and their session pools, family profiles, the start-up
//! self-test, and the in-token wrap and unwrap operations.

pub mod error;
pub mod fingerprint;
pub mod keys;
pub mod mechanism_ext;
pub mod ops;
pub mod profile;
pub mod raw;
pub mod restrictions;
pub mod selftest;
pub mod token;

use std::sync::Arc;

pub use self::error::{TokenError, TokenFailure};
pub use self::token::Token;
use crate::config::{Config, TokenRole};

/// Every configured token, opened and self-tested.
pub struct TokenSet {
    tokens: Vec<Arc<Token>>,
    vault: usize,
    /// The vault KEK's check value (see `ops::kek_check_value`), where the token wraps.
    kek_check: Option<String>,
}

/// One token as `probe` sees it: opened and self-tested, or why not.
pub struct Probed {
    pub name: String,
    pub token: Result<Arc<Token>, TokenError>,
}

impl Token {
    /// Whether what the self-test proved is enough for the token's role.
    pub fn verdict(&self) -> Result<(), String> {
        let Some(caps) = self.capabilities() else {
            return Err("no self-test result".into());
        };
        if caps.oaep.is_empty() {
            return Err(format!(
                "token {} proved no RSA-OAEP wrap method; it cannot wrap keys for AWS",
                self.name
            ));
        }
        if self.role == TokenRole::Bridge && caps.storage.is_none() {
            return Err(format!(
                "bridge token {} proved no RFC 5649 method to keep vault keys under its KEK",
                self.name
            ));
        }
        Ok(())
    }
}

/// Opens, logs in and self-tests each token, each on its own.
fn open_each(cfg: &Config) -> Result<Vec<Probed>, TokenError> {
    let modules = token::Modules::default();
    let test_key = selftest::TestKey::generate()?;
    Ok(cfg
        .tokens
        .iter()
        .enumerate()
        .map(|(i, tc)| {
            let opened = Token::open(&modules, tc, i).and_then(|t| {
                let caps = t.run_blocking(|s| {
                    selftest::run(s, &t.profile, &test_key, tc.role == TokenRole::Bridge)
                })?;
                for f in &caps.findings {
                    tracing::info!(token = %t.name, method = %f.method, proven = f.proven, detail = %f.detail, "self-test");
                }
                t.set_capabilities(caps);
                Ok(Arc::new(t))
            });
            Probed {
                name: tc.name.clone(),
                token: opened,
            }
        })
        .collect())
}

impl TokenSet {
    /// Opens every token, logs in, runs the self-test and makes sure the vault KEK exists;
    /// any token that fails or proves too little stops the start. Blocking; called once.
    /// `kek_check` is the KEK check value the store holds (its vault keys are wrapped under
    /// that KEK): then the KEK is never created here, and a token whose KEK differs is refused.
    pub fn open(cfg: &Config, kek_check: Option<&str>) -> Result<Self, TokenError> {
        let mut tokens = Vec::new();
        for p in open_each(cfg)? {
            let t = p.token?;
            t.verdict().map_err(TokenError::SelfTest)?;
            if let Some(caps) = t.capabilities() {
                tracing::info!(token = %t.name, proven = %caps.summary(), "token ready");
            }
            tokens.push(t);
        }
        let vault_name = cfg.vault_token().name.clone();
        let vault = tokens
            .iter()
            .position(|t| t.name == vault_name)
            .ok_or_else(|| TokenError::Refused("no vault token".into()))?;
        let kek_label = tokens[vault].kek_label.clone();
        let storage = tokens[vault]
            .capabilities()
            .and_then(|c| c.storage.as_ref().map(|st| st.mechanism));
        let raw = tokens[vault].functions().clone();
        let tries = restrictions::Tries {
            storage,
            oaep: tokens[vault].capabilities().and_then(|c| c.best_oaep()),
        };
        let name = tokens[vault].name.clone();
        let (found, check) = tokens[vault].run_blocking(|s| {
            if let Some(want) = kek_check
                && ops::find_kek(s, &kek_label)?.is_none()
            {
                return Err(TokenError::Refused(format!(
                    "token {name} has no KEK labelled \"{kek_label}\", and the store's vault keys are \
                     wrapped under one (check value {want}): give this token the same KEK as the other \
                     bridges of the store (the same partition or HA group, or the KEK provisioned with \
                     the same value and CKA_ID)"
                )));
            }
            let (kek, _) = ops::ensure_kek(s, &raw, &kek_label, storage)?;
            let check = storage
                .map(|m| ops::kek_check_value(s, m, kek))
                .transpose()?;
            if let (Some(want), Some(have)) = (kek_check, check.as_deref())
                && want != have
            {
                return Err(TokenError::Refused(format!(
                    "token {name}: its KEK \"{kek_label}\" is not the one the store's vault keys are \
                     wrapped under (check value {have}, the store holds {want}): give every bridge of \
                     the store the same KEK"
                )));
            }
            ops::audit_mac_key(s, true)?;
            ops::ensure_transport_key(s, &raw, ops::TRANSPORT_LABEL)?;
            Ok((restrictions::check(s, &raw, &kek_label, &tries)?, check))
        })?;
        for r in &found {
            if r.state == restrictions::State::NotHonoured {
                tracing::warn!(token = %tokens[vault].name, key = r.key, attribute = r.attribute, detail = %r.detail, "the token does not honour a restriction of the bridge's key");
            } else {
                tracing::info!(token = %tokens[vault].name, key = r.key, attribute = r.attribute, state = ?r.state, detail = %r.detail, "key restriction");
            }
        }
        tokens[vault].set_restrictions(found);
        Ok(Self {
            tokens,
            vault,
            kek_check: check,
        })
    }

    /// Every token, whatever happened to it; nothing in the tokens is changed.
    pub fn probe(cfg: &Config) -> Result<Vec<Probed>, TokenError> {
        open_each(cfg)
    }

    pub fn all(&self) -> &[Arc<Token>] {
        &self.tokens
    }

    pub fn vault(&self) -> &Arc<Token> {
        &self.tokens[self.vault]
    }

    pub fn kek_check(&self) -> Option<&str> {
        self.kek_check.as_deref()
    }

    pub fn sources(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.tokens.iter().filter(|t| t.role == TokenRole::Source)
    }
}
