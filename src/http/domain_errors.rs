//! How the domain's failures are answered: the status and CipherTrust error code of each.

use super::error::{ApiError, ErrorCode};
use crate::error::DomainError;
use crate::kms::KmsErrorKind;
use crate::pkcs11::TokenFailure;

fn code(e: &DomainError) -> ErrorCode {
    match e {
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
        DomainError::Store(s) if s.is_unavailable() => ErrorCode::Unavailable,
        DomainError::Store(_) | DomainError::Internal(_) => ErrorCode::Internal,
        DomainError::Upstream(_) => ErrorCode::BadGateway,
        DomainError::Unavailable(_) => ErrorCode::Unavailable,
        DomainError::Forbidden(_) => ErrorCode::Forbidden,
        DomainError::HalfMade { cause, .. } => code(cause),
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
        let mut api = ApiError::new(code(&e), e.public_message());
        api.detail = detail;
        api
    }
}
