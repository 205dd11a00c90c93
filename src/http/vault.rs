//! `/api/v1/vault/keys2`: the local vault.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::{AppState, paging};
use crate::store::vault::ListFilter;
use crate::vault::CreateKeyBody;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    tracing::info!(user = %caller.user, "vault key creation requested");
    let k = state.vault.create(body).await?;
    Ok((StatusCode::CREATED, Json(k)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultQuery {
    name: Option<String>,
    algorithm: Option<String>,
    skip: Option<u32>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<VaultQuery>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(q.skip, q.limit)?;
    Ok(Json(
        state
            .vault
            .list(ListFilter {
                name: q.name,
                algorithm: q.algorithm,
                skip,
                limit,
            })
            .await?,
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.vault.get(&id).await?))
}

pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<crate::vault::ExportBody>,
) -> Result<Json<Value>, ApiError> {
    tracing::info!(user = %caller.user, key = %id, "vault key export requested");
    body.wrapping_key_pem()?;
    let policy = &state.export;
    if policy.disabled() {
        return Err(ApiError::forbidden(
            "exports are disabled on this bridge (no export.allowed_groups, no [[users]])",
        ));
    }
    if !policy.allows(&caller.user, &caller.groups) {
        return Err(ApiError::forbidden(if policy.peers_only.is_some() {
            "only the peers configured in [[users]] may export keys (or set export.allowed_groups)"
        } else {
            "the token's groups may not export keys (export.allowed_groups)"
        }));
    }
    Ok(Json(
        state
            .vault
            .export(&id, body, &policy.allowed_wrapping_keys)
            .await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    tracing::info!(user = %caller.user, key = %id, "vault key deletion requested");
    state.vault.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
