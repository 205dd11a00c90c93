//! Failures of the domain (uploads, vault, templates) and how each is answered.

use crate::http::error::{ApiError, ErrorCode};
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

    fn code(&self) -> ErrorCode {
        match self {
            DomainError::Invalid(_) => ErrorCode::InvalidParam,
            DomainError::NotFound(_) => ErrorCode::NotFound,
            DomainError::Conflict(_) => ErrorCode::Conflict,
            DomainError::Unprocessable(_) => ErrorCode::Unprocessable,
            DomainError::Token { source, .. } => match source.failure() {
                TokenFailure::KeyNotExportable | TokenFailure::KeyUnsuitable => {
                    ErrorCode::Unprocessable
                }
                TokenFailure::Unavailable | TokenFailure::SessionLost => ErrorCode::Unavailable,
                TokenFailure::Internal => ErrorCode::Internal,
            },
            DomainError::Kms(k) => match k.kind {
                KmsErrorKind::BadRequest => ErrorCode::InvalidParam,
                KmsErrorKind::Conflict => ErrorCode::Conflict,
                KmsErrorKind::NotFound => ErrorCode::NotFound,
                KmsErrorKind::Upstream => ErrorCode::BadGateway,
                KmsErrorKind::Unavailable => ErrorCode::Unavailable,
            },
            DomainError::Store(_) | DomainError::Internal(_) => ErrorCode::Internal,
            DomainError::Upstream(_) => ErrorCode::BadGateway,
            DomainError::Unavailable(_) => ErrorCode::Unavailable,
            DomainError::Forbidden(_) => ErrorCode::Forbidden,
            DomainError::HalfMade { cause, .. } => cause.code(),
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
                TokenFailure::Unavailable | TokenFailure::SessionLost => {
                    format!("token {token} is unavailable right now")
                }
                TokenFailure::Internal => format!("token {token} failed to perform the wrap"),
            },
            DomainError::Kms(k) => match k.kind {
                KmsErrorKind::Unavailable => {
                    format!("AWS KMS is unavailable ({}): {}", k.op, k.message)
                }
                KmsErrorKind::Upstream => format!("AWS KMS failed ({}): {}", k.op, k.message),
                _ => format!("AWS KMS refused the request ({}): {}", k.op, k.message),
            },
            DomainError::Store(_) => "the bridge's store failed".into(),
            other => other.to_string(),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let detail = match &e {
            DomainError::Token { source, .. } => Some(source.to_string()),
            DomainError::Kms(k) => Some(format!("{k} (code {:?})", k.code)),
            DomainError::Store(s) => Some(s.to_string()),
            DomainError::HalfMade { cause, .. } => Some(cause.to_string()),
            _ => None,
        };
        let mut api = ApiError::new(e.code(), e.public_message());
        api.detail = detail;
        api
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
