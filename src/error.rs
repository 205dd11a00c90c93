//! Failures of the domain (uploads, vault, templates) and what the caller reads of each; the
//! HTTP status and CipherTrust code of each are `http::domain_errors`.

use crate::kms::{KmsError, KmsErrorKind};
use crate::pkcs11::{TokenError, TokenFailure};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request is valid but the source key or its token cannot serve it.
    #[error("{0}")]
    Unprocessable(String),
    #[error("token {token}: {source}")]
    Token {
        token: String,
        #[source]
        source: TokenError,
    },
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
    /// Another key manager (external CM, DSM) failed or refused the bridge: 502.
    #[error("{0}")]
    Upstream(String),
    /// Another key manager could not be reached: 503.
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not do this (plaintext export): 403.
    #[error("{0}")]
    Forbidden(String),
    /// A step after `CreateKey` failed; the key was (or will be) scheduled for deletion.
    #[error("{message}")]
    HalfMade {
        message: String,
        cause: Box<DomainError>,
    },
}

impl DomainError {
    pub fn token(token: &str) -> impl FnOnce(TokenError) -> DomainError + '_ {
        move |source| DomainError::Token {
            token: token.to_owned(),
            source,
        }
    }

    /// A failure that may pass by itself (AWS, a token, the store or another key manager out
    /// of reach for now): worth running again later. A token that refused its PIN is not.
    pub fn is_transient(&self) -> bool {
        match self {
            DomainError::Token { source, .. } => {
                matches!(
                    source.failure(),
                    TokenFailure::Unavailable | TokenFailure::SessionLost
                ) && !matches!(source, TokenError::PinRefused(_))
            }
            DomainError::Kms(k) => k.kind == KmsErrorKind::Unavailable,
            DomainError::Store(e) => e.is_unavailable(),
            DomainError::Unavailable(_) => true,
            DomainError::HalfMade { cause, .. } => cause.is_transient(),
            _ => false,
        }
    }

    /// What the caller reads: no PKCS#11 or SDK internals unless they help them act.
    pub fn public_message(&self) -> String {
        match self {
            DomainError::Token { token, source } => match source.failure() {
                TokenFailure::KeyNotExportable => format!(
                    "token {token} refused to export the key by wrapping (is it extractable?)"
                ),
                TokenFailure::KeyUnsuitable => {
                    format!("token {token} cannot wrap this key: {source}")
                }
                TokenFailure::Unavailable | TokenFailure::SessionLost => match source {
                    TokenError::Timeout { secs, .. } => format!(
                        "token {token} did not answer within {secs} s; the request was abandoned"
                    ),
                    TokenError::PinRefused(_) => format!(
                        "token {token} refused the PIN and is not used until the PIN is fixed"
                    ),
                    _ => format!("token {token} is unavailable right now"),
                },
                TokenFailure::Internal => format!("token {token} failed to perform the wrap"),
            },
            DomainError::Kms(k) => match k.kind {
                KmsErrorKind::Unavailable => {
                    format!("AWS KMS is unavailable ({}): {}", k.op, k.message)
                }
                KmsErrorKind::Upstream => format!("AWS KMS failed ({}): {}", k.op, k.message),
                _ => format!("AWS KMS refused the request ({}): {}", k.op, k.message),
            },
            DomainError::Store(e) if e.is_unavailable() => {
                "the bridge's store cannot be written right now (disk full or read-only); nothing was sent to AWS".into()
            }
            DomainError::Store(_) => "the bridge's store failed".into(),
            other => other.to_string(),
        }
    }
}

impl From<crate::extcm::CmError> for DomainError {
    fn from(e: crate::extcm::CmError) -> Self {
        use crate::extcm::CmError as C;
        match e {
            C::Unreachable { .. } => DomainError::Unavailable(e.to_string()),
            C::NotFound { .. } => DomainError::NotFound(format!("source_key_identifier: {e}")),
            C::Credentials { .. } | C::Refused { .. } => DomainError::Upstream(e.to_string()),
            C::Setup(m) => DomainError::Internal(m),
        }
    }
}

impl From<crate::kmip::KmipError> for DomainError {
    fn from(e: crate::kmip::KmipError) -> Self {
        use crate::kmip::KmipError as K;
        match e {
            K::Unreachable(_) => DomainError::Unavailable(format!("Data Security Manager: {e}")),
            K::Setup(m) => DomainError::Internal(m),
            _ => DomainError::Upstream(format!("Data Security Manager: {e}")),
        }
    }
}
