//! Token errors and the table that maps PKCS#11 return values to what callers are told.

use cryptoki::error::{Error as CkError, RvError};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{op} failed: {rv:?}")]
    Pkcs11 { op: &'static str, rv: RvError },
    #[error("{op} failed: {message}")]
    Library { op: &'static str, message: String },
    #[error("no token with {0} is present")]
    TokenNotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("self-test: {0}")]
    SelfTest(String),
    #[error("the token worker stopped: {0}")]
    Worker(String),
    /// The token refused the PIN (incorrect, locked, expired): never retried.
    #[error("{0}")]
    PinRefused(String),
    /// A call did not return within the token's `call_timeout_secs`.
    #[error("token {token} did not answer within {secs} s")]
    Timeout { token: String, secs: u64 },
}

/// What a PKCS#11 failure means for the caller, independent of the token family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// The key exists but the token will not export it (not extractable, wrap-with-trusted...).
    KeyNotExportable,
    /// The key is of a type or size this operation cannot handle.
    KeyUnsuitable,
    /// Login or device problem: the token is unusable right now.
    Unavailable,
    /// The session is dead and must not go back to the pool.
    SessionLost,
    /// Anything else: an internal fault of the token or of this program.
    Internal,
}

/// The mapping table. Kept in one place so that every operation reports the same way.
pub fn classify(rv: RvError) -> TokenFailure {
    use RvError::*;
    match rv {
        KeyUnextractable | KeyNotWrappable | KeyFunctionNotPermitted | ActionProhibited => {
            TokenFailure::KeyNotExportable
        }
        KeySizeRange
        | KeyTypeInconsistent
        | WrappingKeySizeRange
        | WrappingKeyTypeInconsistent
        | CurveNotSupported
        | DataLenRange => TokenFailure::KeyUnsuitable,
        // A session left with an operation active (a token that ended a call oddly) is of no
        // use for that operation again: it is closed rather than pooled.
        SessionHandleInvalid | SessionClosed | OperationActive => TokenFailure::SessionLost,
        DeviceError
        | DeviceMemory
        | DeviceRemoved
        | TokenNotPresent
        | TokenNotRecognized
        | PinIncorrect
        | PinExpired
        | PinLocked
        | UserPinNotInitialized
        | UserNotLoggedIn
        | CryptokiNotInitialized
        | HostMemory
        | FunctionCanceled => TokenFailure::Unavailable,
        _ => TokenFailure::Internal,
    }
}

impl TokenError {
    pub fn ck(op: &'static str) -> impl FnOnce(CkError) -> TokenError {
        move |e| match e {
            CkError::Pkcs11(rv, _) => TokenError::Pkcs11 { op, rv },
            other => TokenError::Library {
                op,
                message: other.to_string(),
            },
        }
    }

    /// The same failure, naming the operation as the caller knows it.
    pub fn in_op(self, name: &'static str) -> TokenError {
        match self {
            TokenError::Pkcs11 { rv, .. } => TokenError::Pkcs11 { op: name, rv },
            TokenError::Library { message, .. } => TokenError::Library { op: name, message },
            other => other,
        }
    }

    pub fn rv(&self) -> Option<RvError> {
        match self {
            TokenError::Pkcs11 { rv, .. } => Some(*rv),
            _ => None,
        }
    }

    pub fn failure(&self) -> TokenFailure {
        match self {
            TokenError::Pkcs11 { rv, .. } => classify(*rv),
            TokenError::TokenNotFound(_)
            | TokenError::PinRefused(_)
            | TokenError::Timeout { .. } => TokenFailure::Unavailable,
            TokenError::Refused(_) => TokenFailure::KeyUnsuitable,
            _ => TokenFailure::Internal,
        }
    }

    /// Whether the session that produced this error should be dropped rather than reused.
    pub fn poisons_session(&self) -> bool {
        matches!(
            self.failure(),
            TokenFailure::SessionLost | TokenFailure::Unavailable
        )
    }

    /// Device-level failures after which the token is looked up again.
    pub fn needs_rediscovery(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::DeviceError
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
            )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_maps_export_refusals_and_device_faults() {
        assert_eq!(
            classify(RvError::KeyUnextractable),
            TokenFailure::KeyNotExportable
        );
        assert_eq!(
            classify(RvError::KeyNotWrappable),
            TokenFailure::KeyNotExportable
        );
        assert_eq!(classify(RvError::DeviceRemoved), TokenFailure::Unavailable);
        assert_eq!(
            classify(RvError::SessionHandleInvalid),
            TokenFailure::SessionLost
        );
        assert_eq!(
            classify(RvError::OperationActive),
            TokenFailure::SessionLost
        );
        assert_eq!(classify(RvError::GeneralError), TokenFailure::Internal);
        let e = TokenError::Pkcs11 {
            op: "C_WrapKey",
            rv: RvError::DeviceError,
        };
        assert!(e.poisons_session() && e.needs_rediscovery());
    }
}
