//! Extractors that answer malformed input in the API's error shape: JSON bodies with the path
//! of the offending field, and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};
use crate::vocabulary::Vocabulary;

/// Logs the CipherTrust fields a request carried that the bridge accepted without using.
fn log_unused<T: Vocabulary>(what: &str, v: &T) {
    let unused = v.unused();
    if !unused.is_empty() {
        tracing::debug!(fields = ?unused, "{what}: CipherTrust fields accepted and ignored");
    }
}

/// A JSON body; unknown fields, wrong types and syntax errors name the field at fault.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Vocabulary,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ok = ct
                .to_str()
                .map(|v| {
                    let v = v.to_ascii_lowercase();
                    v.starts_with("application/json") || v.contains("+json")
                })
                .unwrap_or(false);
            if !ok {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "Content-Type must be application/json",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            let code = ErrorCode::for_status(r.status());
            let msg = if code == ErrorCode::PayloadTooLarge {
                "request body is too large".to_owned()
            } else {
                "request body could not be read".to_owned()
            };
            ApiError::new(code, msg)
        })?;
        let parsed = parse_body::<T>(&bytes).map(ApiJson);
        // Bodies may carry key material (vault imports): wipe the buffer once parsed.
        if let Ok(mut owned) = bytes.try_into_mut() {
            zeroize::Zeroize::zeroize(owned.as_mut());
        }
        parsed
    }
}

/// A JSON body already read: parsed as [`ApiJson`] does, its unused CipherTrust fields logged.
pub fn parse_body<T: DeserializeOwned + Vocabulary>(bytes: &[u8]) -> Result<T, ApiError> {
    let v = parse_json::<T>(bytes)?;
    log_unused("request body", &v);
    Ok(v)
}

/// Fields whose values are secrets: their values never appear in an error message.
const SECRET_FIELDS: &[&str] = &["material", "password", "refresh_token", "pin", "wrapPBE"];

fn carries_secret(path: &str) -> bool {
    path.split(['.', '['])
        .any(|seg| SECRET_FIELDS.contains(&seg))
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty; a JSON object is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            // serde's message names the field; strip its line/column noise.
            let m = inner.to_string();
            m.split(" at line ").next().unwrap_or(&m).to_owned()
        };
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(what)
        } else if carries_secret(&path) {
            // serde's message may quote the value (`invalid type: integer `1234``).
            ApiError::bad_request(format!(
                "{path}: not a valid value (not shown: the field carries a secret)"
            ))
        } else {
            ApiError::bad_request(format!("{path}: {what}"))
        }
    })
}

/// A query string; bad values are a 400 in the API's shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Vocabulary,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .inspect(|v| log_unused("query string", v))
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    ApiError::bad_request(format!("query string: {inner}"))
                } else {
                    ApiError::bad_request(format!("query parameter {path}: {inner}"))
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        material: Option<String>,
        size: Option<u32>,
    }

    #[test]
    fn errors_never_quote_a_secret_field() {
        let e = parse_json::<Body>(br#"{"material": 987654321}"#)
            .expect_err("wrong type")
            .to_string();
        assert!(!e.contains("987654321"), "{e}");
        assert!(e.contains("material"), "{e}");
        let e = parse_json::<Body>(br#"{"size": "big"}"#)
            .expect_err("wrong type")
            .to_string();
        assert!(e.contains("big"), "other fields say what was wrong: {e}");
    }
}
