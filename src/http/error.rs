//! The one error type of the API: CipherTrust Manager's body
//! `{code, codeDesc, message, requestID}` with the matching HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "none".to_owned())
}

/// CipherTrust Manager's error codes, as its clients test them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed body, unknown field, wrong type, bad query.
    BadRequest,
    /// A parameter has a value the operation does not accept.
    InvalidParam,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request is valid but a token cannot do what it asks.
    Unprocessable,
    TooManyRequests,
    Internal,
    BadGateway,
    Unavailable,
}

impl ErrorCode {
    /// (HTTP status, numeric code, codeDesc).
    pub fn parts(self) -> (StatusCode, u32, &'static str) {
        match self {
            ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, 15, "NCERRBadRequest: bad request"),
            ErrorCode::InvalidParam => (
                StatusCode::BAD_REQUEST,
                9,
                "NCERRInvalidParamValue: invalid parameter value",
            ),
            ErrorCode::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                1,
                "NCERRUnauthorized: token missing, expired, or invalid",
            ),
            ErrorCode::Forbidden => (
                StatusCode::FORBIDDEN,
                5,
                "NCERRUnauthorizedAccess: not allowed",
            ),
            ErrorCode::NotFound => (
                StatusCode::NOT_FOUND,
                16,
                "NCERRResourceNotFound: resource not found",
            ),
            ErrorCode::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                15,
                "NCERRBadRequest: method not allowed",
            ),
            ErrorCode::Conflict => (StatusCode::CONFLICT, 11, "NCERRConflict: conflict"),
            ErrorCode::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                15,
                "NCERRBadRequest: request body too large",
            ),
            ErrorCode::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                15,
                "NCERRBadRequest: unsupported media type",
            ),
            ErrorCode::Unprocessable => (
                StatusCode::UNPROCESSABLE_ENTITY,
                9,
                "NCERRInvalidParamValue: the key cannot be processed",
            ),
            ErrorCode::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                15,
                "NCERRBadRequest: too many requests",
            ),
            ErrorCode::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                14,
                "NCERRInternalServerError: unexpected error",
            ),
            ErrorCode::BadGateway => (
                StatusCode::BAD_GATEWAY,
                14,
                "NCERRInternalServerError: upstream service failed",
            ),
            ErrorCode::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                "NCERRInternalServerError: service unavailable",
            ),
        }
    }

    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::TooManyRequests,
            502 => ErrorCode::BadGateway,
            503 | 504 => ErrorCode::Unavailable,
            s if s < 500 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    /// What the caller is told.
    pub message: String,
    /// What only the logs are told, and only with `logging.detailed_errors`.
    pub detail: Option<String>,
}

/// Marks responses already in the CipherTrust shape, so the catch-all leaves them alone.
#[derive(Clone, Debug)]
pub struct ShapedError {
    pub detail: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParam, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, m)
    }
    pub fn unprocessable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unprocessable, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, m)
    }
    pub fn too_many_requests(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooManyRequests, m)
    }

    pub fn status(&self) -> StatusCode {
        self.code.parts().0
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub fn body(code: ErrorCode, message: &str, request_id: &str) -> serde_json::Value {
    let (_, num, desc) = code.parts();
    json!({
        "code": num,
        "codeDesc": desc,
        "message": message,
        "requestID": request_id,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.code.parts();
        let rid = current_request_id();
        let mut resp = (status, Json(body(self.code, &self.message, &rid))).into_response();
        resp.extensions_mut().insert(ShapedError {
            detail: self.detail,
            message: self.message,
        });
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(crate::error::DomainError::Store(e))
    }
}
