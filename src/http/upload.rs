//! `POST /api/v1/cckm/aws/upload-key`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, current_request_id};
use super::extract::ApiJson;
use crate::cckm::request::UploadKeyBody;

pub async fn upload_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UploadKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    tracing::info!(user = %caller.user, "upload-key requested");
    let record = state.uploader.upload(body, &current_request_id()).await?;
    Ok((StatusCode::CREATED, axum::Json(record)))
}
