//! `POST /api/v1/cckm/aws/keys/{id}/rotate`: a new key with new material takes the old one's
//! place (see `cckm::rotate`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, current_request_id};
use super::extract::parse_body;
use super::roles::{KeyAdmin, Need, Uploader};
use crate::cckm::manage::Who;
use crate::cckm::rotate::RotateBody;
use crate::error::DomainError;

pub async fn rotate(
    State(state): State<AppState>,
    Need(caller, _): Need<KeyAdmin>,
    Need(_, _): Need<Uploader>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: RotateBody = parse_body(if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    })?;
    let rotate = body
        .validate(time::OffsetDateTime::now_utc())
        .map_err(DomainError::Invalid)?;
    tracing::info!(user = %caller.user, key = %id, "rotation requested");
    let who = Who {
        actor: caller.user.clone(),
        request_id: current_request_id(),
    };
    // Like an upload, a rotation runs to its end even if the caller hangs up.
    let keys = state.keys.clone();
    let record = tokio::spawn(async move { keys.rotate(&id, rotate, &who).await })
        .await
        .map_err(|e| ApiError::internal("the rotation failed").with_detail(e.to_string()))??;
    Ok(Json(record))
}
