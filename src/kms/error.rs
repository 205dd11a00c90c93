//! AWS failures, sorted into the caller's fault (4xx) and upstream trouble (502/503).

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsErrorKind {
    /// The request itself is wrong for AWS (bad policy, alias taken, ...): 400/409.
    BadRequest,
    Conflict,
    NotFound,
    /// AWS answered with a fault of its own or refused our credentials: 502.
    Upstream,
    /// AWS could not be reached, timed out or throttled us: 503.
    Unavailable,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS {op}: {message}")]
pub struct KmsError {
    pub op: &'static str,
    pub kind: KmsErrorKind,
    pub code: Option<String>,
    pub message: String,
}

impl KmsError {
    pub fn upstream(op: &'static str, message: impl Into<String>) -> Self {
        Self {
            op,
            kind: KmsErrorKind::Upstream,
            code: None,
            message: message.into(),
        }
    }

    pub fn internal(op: &'static str, message: impl Into<String>) -> Self {
        Self::upstream(op, message)
    }

    /// Whether AWS itself answered (an error code), as opposed to a lost or unreadable call,
    /// after which the effect of the call is unknown.
    pub fn answered(&self) -> bool {
        self.code.is_some()
    }

    pub fn from_sdk<E, R>(op: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match &err {
            SdkError::ServiceError(se) => {
                let e = se.err();
                let code = e.code().map(str::to_owned);
                let message = e.message().unwrap_or("no message").to_owned();
                let kind = classify(code.as_deref());
                Self {
                    op,
                    kind,
                    code,
                    message,
                }
            }
            SdkError::TimeoutError(_) => Self {
                op,
                kind: KmsErrorKind::Unavailable,
                code: None,
                message: "timed out".into(),
            },
            SdkError::DispatchFailure(d) => Self {
                op,
                kind: KmsErrorKind::Unavailable,
                code: None,
                message: if d.is_timeout() {
                    "timed out".into()
                } else if d.is_io() {
                    "AWS KMS endpoint unreachable".into()
                } else {
                    "the request could not be sent to AWS KMS".into()
                },
            },
            SdkError::ResponseError(_) => Self {
                op,
                kind: KmsErrorKind::Unavailable,
                code: None,
                message: "unreadable answer from AWS KMS".into(),
            },
            other => Self {
                op,
                kind: KmsErrorKind::Upstream,
                code: None,
                message: other.to_string(),
            },
        }
    }
}

/// The table of AWS error codes.
pub fn classify(code: Option<&str>) -> KmsErrorKind {
    match code {
        Some(
            "MalformedPolicyDocumentException"
            | "TagException"
            | "InvalidAliasNameException"
            | "ValidationException"
            | "InvalidArnException"
            | "UnsupportedOperationException"
            | "InvalidKeyUsageException",
        ) => KmsErrorKind::BadRequest,
        Some("AlreadyExistsException" | "KMSInvalidStateException" | "DisabledException") => {
            KmsErrorKind::Conflict
        }
        Some("NotFoundException") => KmsErrorKind::NotFound,
        Some(
            "KMSInternalException"
            | "DependencyTimeoutException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "ServiceUnavailableException"
            | "InternalFailure",
        ) => KmsErrorKind::Unavailable,
        _ => KmsErrorKind::Upstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sorts_caller_faults_from_upstream_faults() {
        assert_eq!(
            classify(Some("MalformedPolicyDocumentException")),
            KmsErrorKind::BadRequest
        );
        assert_eq!(
            classify(Some("AlreadyExistsException")),
            KmsErrorKind::Conflict
        );
        assert_eq!(
            classify(Some("KMSInternalException")),
            KmsErrorKind::Unavailable
        );
        assert_eq!(
            classify(Some("AccessDeniedException")),
            KmsErrorKind::Upstream
        );
        assert_eq!(classify(None), KmsErrorKind::Upstream);
    }
}
