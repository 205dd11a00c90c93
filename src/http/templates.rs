//! `/api/v1/cckm/aws/templates`: create, list, get, delete policy templates.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::roles::{KeyAdmin, Need, Reader};
use super::{AppState, Paging, paging};
use crate::cckm::templates::{self, CreateTemplateBody};

pub async fn create(
    State(state): State<AppState>,
    Need(_caller, _): Need<KeyAdmin>,
    ApiJson(body): ApiJson<CreateTemplateBody>,
) -> Result<impl IntoResponse, ApiError> {
    let t = templates::create(&state.store, &state.kms, body).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(p): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(p.skip, p.limit)?;
    Ok(Json(templates::list(&state.store, skip, limit).await?))
}

pub async fn get_one(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    templates::get(&state.store, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no policy template `{id}`")))
}

pub async fn delete(
    State(state): State<AppState>,
    Need(_caller, _): Need<KeyAdmin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    templates::delete(&state.store, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
