//! PKCS#11: module loading, tokens and their session pools, family profiles, the start-up
//! self-test, and the in-token wrap and unwrap operations.

pub mod error;
pub mod keys;
pub mod mechanism_ext;
pub mod ops;
pub mod profile;
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
}

impl TokenSet {
    /// Opens every token, logs in and runs the self-test; when serving, also makes sure the
    /// vault KEK exists (`probe` changes nothing in the tokens). Blocking; called once at start.
    pub fn open(cfg: &Config, serving: bool) -> Result<Self, TokenError> {
        let modules = token::Modules::default();
        let test_key = selftest::TestKey::generate()?;
        let mut tokens = Vec::new();
        for tc in &cfg.tokens {
            let t = Token::open(&modules, tc).map_err(|e| match e {
                TokenError::Refused(m) => TokenError::Refused(m),
                other => TokenError::Refused(format!("token {}: {other}", tc.name)),
            })?;
            let caps = t.run_blocking(|s| {
                selftest::run(s, &t.profile, &test_key, tc.role == TokenRole::Bridge)
            })?;
            for f in &caps.findings {
                tracing::info!(
                    token = %t.name,
                    method = %f.method,
                    proven = f.proven,
                    detail = %f.detail,
                    "self-test"
                );
            }
            if caps.oaep.is_empty() {
                return Err(TokenError::SelfTest(format!(
                    "token {} proved no RSA-OAEP wrap method; it cannot wrap keys for AWS",
                    t.name
                )));
            }
            if tc.role == TokenRole::Bridge && caps.storage.is_none() {
                return Err(TokenError::SelfTest(format!(
                    "bridge token {} proved no RFC 5649 method to keep vault keys under its KEK",
                    t.name
                )));
            }
            tracing::info!(token = %t.name, proven = %caps.summary(), "token ready");
            t.set_capabilities(caps);
            tokens.push(Arc::new(t));
        }
        let vault_name = cfg.vault_token().name.clone();
        let vault = tokens
            .iter()
            .position(|t| t.name == vault_name)
            .ok_or_else(|| TokenError::Refused("no vault token".into()))?;
        if serving {
            let kek_label = tokens[vault].kek_label.clone();
            tokens[vault].run_blocking(|s| ops::ensure_kek(s, &kek_label).map(|_| ()))?;
        }
        Ok(Self { tokens, vault })
    }

    pub fn all(&self) -> &[Arc<Token>] {
        &self.tokens
    }

    pub fn vault(&self) -> &Arc<Token> {
        &self.tokens[self.vault]
    }

    pub fn sources(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.tokens.iter().filter(|t| t.role == TokenRole::Source)
    }
}
