//! HTTP: routing, the request context (request id, logging, error shape), authentication,
//! and one file per resource.

pub mod attempts;
pub mod audit;
pub mod auth;
pub mod auth_tokens;
pub mod aws_keys;
pub mod domain_errors;
pub mod error;
pub mod extract;
pub mod key_actions;
pub mod limits;
pub mod login_guard;
pub mod metrics;
pub mod replicas;
pub mod roles;
pub mod rotation;
pub mod server;
pub mod state;
pub mod sync_jobs;
pub mod system;
pub mod templates;
pub mod upload;
pub mod upload_jobs;
pub mod vault;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use tracing::Instrument;

use self::error::{ApiError, ErrorCode, REQUEST_ID, ShapedError};
pub use self::state::AppState;

/// The whole API. Tests build it around their own state.
pub fn app(state: AppState, max_body_bytes: usize, request_timeout: std::time::Duration) -> Router {
    Routes::default()
        .at("/api/v1/cckm/aws/upload-key", post(upload::upload_key))
        .at(
            "/api/v1/cckm/aws/upload-jobs",
            post(upload_jobs::submit).get(upload_jobs::list),
        )
        .at(
            "/api/v1/cckm/aws/upload-jobs/{id}",
            get(upload_jobs::get_one),
        )
        .at(
            "/api/v1/cckm/aws/upload-jobs/{id}/cancel",
            post(upload_jobs::cancel),
        )
        .at("/api/v1/cckm/aws/keys", get(aws_keys::list))
        .at(
            "/api/v1/cckm/aws/keys/{id}",
            get(aws_keys::get_one).delete(key_actions::forget),
        )
        .at(
            "/api/v1/cckm/aws/keys/{id}/history",
            get(key_actions::history),
        )
        .at("/api/v1/cckm/aws/keys/{id}/rotate", post(rotation::rotate))
        .at(
            "/api/v1/cckm/aws/keys/{id}/replicate-key",
            post(replicas::replicate),
        )
        .at(
            "/api/v1/cckm/aws/keys/{id}/{action}",
            post(key_actions::act),
        )
        .at(
            "/api/v1/cckm/aws/synchronization-jobs",
            post(sync_jobs::start).get(sync_jobs::list),
        )
        .at(
            "/api/v1/cckm/aws/synchronization-jobs/{id}",
            get(sync_jobs::get_one),
        )
        .at(
            "/api/v1/cckm/aws/synchronization-jobs/{id}/cancel",
            post(sync_jobs::cancel),
        )
        .at(
            "/api/v1/cckm/aws/templates",
            post(templates::create).get(templates::list),
        )
        .at(
            "/api/v1/cckm/aws/templates/{id}",
            get(templates::get_one).delete(templates::delete),
        )
        .at("/api/v1/cckm/aws/kms", get(aws_keys::list_kms))
        .at("/api/v1/cckm/aws/upload-attempts", get(attempts::list))
        .at(
            "/api/v1/cckm/aws/upload-attempts/{id}",
            get(attempts::get_one),
        )
        .at("/api/v1/vault/keys2", post(vault::create).get(vault::list))
        .at(
            "/api/v1/vault/keys2/{id}",
            get(vault::get_one).delete(vault::delete),
        )
        .at("/api/v1/vault/keys2/{id}/export", post(vault::export))
        .at("/api/v1/vault/keys2/{id}/restore", post(vault::restore))
        .at("/api/v1/vault/keys2/{id}/recover", post(vault::restore))
        .at("/api/v1/auth/tokens", post(auth_tokens::issue))
        .at(
            "/api/v1/auth/tokens/{id}",
            axum::routing::delete(auth_tokens::revoke),
        )
        .at("/api/v1/system/tokens", get(system::tokens))
        .at("/api/v1/audit", get(audit::list))
        .at("/healthz", get(health))
        .at("/metrics", get(metrics::render))
        .0
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            request_timeout,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            max_body_bytes,
            refuse_oversized,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// The routes, each served with and without a trailing slash: CipherTrust documents many
/// paths with one (`/api/v1/auth/tokens/`) and its clients send them as documented.
#[derive(Default)]
struct Routes(Router<AppState>);

impl Routes {
    fn at(self, path: &str, handler: MethodRouter<AppState>) -> Self {
        let slashed = format!("{path}/");
        Routes(self.0.route(path, handler.clone()).route(&slashed, handler))
    }
}

/// Bodies declared larger than the limit are read and discarded (up to a bound) before the
/// 413 is sent, so that the client is still listening when the answer comes.
async fn refuse_oversized(State(max): State<usize>, req: Request, next: Next) -> Response {
    const DRAIN_AT_MOST: usize = 8 * 1024 * 1024;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(n) if n > max => {
            if n <= DRAIN_AT_MOST {
                let _ = axum::body::to_bytes(req.into_body(), DRAIN_AT_MOST).await;
            }
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is too large ({n} bytes; at most {max})"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Liveness and readiness: 503 once a token is out of use for good (it refused the PIN), so
/// a load balancer or an operator sees the daemon cannot serve.
async fn health(State(state): State<AppState>) -> axum::response::Response {
    let failed: Vec<String> = state
        .tokens
        .all()
        .iter()
        .filter_map(|t| t.failure())
        .collect();
    if failed.is_empty() {
        return axum::Json(serde_json::json!({"status": "ok"})).into_response();
    }
    ApiError::new(ErrorCode::Unavailable, failed.join("; ")).into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such route: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Gives every request an id (in error bodies, the `X-Request-ID` header and every log line),
/// logs its outcome, and turns any error response not already in the CipherTrust shape
/// (framework rejections, panics) into it.
async fn request_context(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
        user = tracing::field::Empty,
    );
    let rid = request_id.clone();
    let mut resp = REQUEST_ID
        .scope(request_id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        let shaped = resp.extensions().get::<ShapedError>().cloned();
        let message = match &shaped {
            Some(s) => s.message.clone(),
            None => {
                let code = ErrorCode::for_status(status);
                let text = match status {
                    StatusCode::INTERNAL_SERVER_ERROR => "unexpected error".to_owned(),
                    s => s.canonical_reason().unwrap_or("error").to_owned(),
                };
                resp = (status, axum::Json(error::body(code, &text, &rid))).into_response();
                text
            }
        };
        let _enter = span.enter();
        let detail = shaped.and_then(|s| s.detail);
        if status.is_server_error() {
            match (&detail, state.detailed_errors) {
                (Some(d), true) => {
                    tracing::error!(status = status.as_u16(), %message, detail = %d, "request failed")
                }
                _ => tracing::error!(status = status.as_u16(), %message, "request failed"),
            }
        } else {
            match (&detail, state.detailed_errors) {
                (Some(d), true) => {
                    tracing::warn!(status = status.as_u16(), %message, detail = %d, "request refused")
                }
                _ => tracing::warn!(status = status.as_u16(), %message, "request refused"),
            }
        }
    } else {
        let _enter = span.enter();
        tracing::info!(status = status.as_u16(), "request served");
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// `skip` and `limit` as CipherTrust lists take them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    pub skip: Option<u32>,
    pub limit: Option<u32>,
}

impl crate::vocabulary::Vocabulary for Paging {}

pub fn paging(skip: Option<u32>, limit: Option<u32>) -> Result<(u32, u32), ApiError> {
    let limit = limit.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit: 1 to 1000"));
    }
    Ok((skip.unwrap_or(0), limit))
}
