//! `POST /api/v1/cckm/aws/keys/{id}/replicate-key`: a replica of a multi-Region key in another
//! Region, with the same material imported into it (see `cckm::replicate`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, current_request_id};
use super::extract::parse_body;
use super::roles::{KeyAdmin, Need, Uploader};
use crate::cckm::manage::Who;
use crate::cckm::replicate::ReplicateBody;
use crate::error::DomainError;

pub async fn replicate(
    State(state): State<AppState>,
    Need(caller, _): Need<KeyAdmin>,
    Need(_, _): Need<Uploader>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let body: ReplicateBody = parse_body(&bytes)?;
    let req = body.validate().map_err(DomainError::Invalid)?;
    tracing::info!(user = %caller.user, key = %id, region = %req.region, "replication requested");
    let who = Who {
        actor: caller.user.clone(),
        request_id: current_request_id(),
    };
    let keys = state.keys.clone();
    let record = tokio::spawn(async move { keys.replicate(&id, req, &who).await })
        .await
        .map_err(|e| ApiError::internal("the replication failed").with_detail(e.to_string()))??;
    Ok((axum::http::StatusCode::CREATED, Json(record)))
}
