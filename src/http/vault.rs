//! `/api/v1/vault/keys2`: the local vault.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::roles::{Exporter, Need, Reader, VaultAdmin};
use super::{AppState, paging};
use crate::error::DomainError;
use crate::store::vault::ListFilter;
use crate::vault::{CreateKeyBody, CreateKeyQuery, KeyRefQuery};
use crate::vocabulary::{Unused, Vocabulary, refuse_given};

pub async fn create(
    State(state): State<AppState>,
    Need(caller, _): Need<VaultAdmin>,
    ApiQuery(q): ApiQuery<CreateKeyQuery>,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> Result<axum::response::Response, ApiError> {
    tracing::info!(user = %caller.user, "vault key creation requested");
    refuse_given(
        &[("includeMaterial", q.includeMaterial)],
        "material is never returned by this bridge",
    )
    .map_err(DomainError::Invalid)?;
    body.check_supported()?;
    if q.returnExisting == Some(true)
        && let Some(name) = body.name.as_deref()
        && let Ok(existing) = state.vault.get(name).await
        && existing["name"] == name
    {
        return Ok((StatusCode::OK, Json(existing)).into_response());
    }
    let k = state.vault.create(body).await?;
    Ok((StatusCode::CREATED, Json(k)).into_response())
}

/// The list filters CipherTrust documents; those the vault has no concept of are accepted and
/// ignored (the list is then wider than asked, never narrower).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct VaultQuery {
    name: Option<String>,
    algorithm: Option<String>,
    id: Option<String>,
    size: Option<u32>,
    skip: Option<u32>,
    limit: Option<u32>,
    #[serde(default)]
    state: Unused,
    #[serde(default)]
    alias: Unused,
    #[serde(default)]
    linkType: Unused,
    #[serde(default)]
    fields: Unused,
    #[serde(default)]
    usageMask: Unused,
    #[serde(default)]
    metaContains: Unused,
    #[serde(default)]
    objectType: Unused,
    #[serde(default)]
    sha1Fingerprint: Unused,
    #[serde(default)]
    sha256Fingerprint: Unused,
    #[serde(default)]
    uuid: Unused,
    #[serde(default)]
    muid: Unused,
    #[serde(default)]
    keyId: Unused,
    #[serde(default)]
    compareIDWithUUID: Unused,
    #[serde(default)]
    version: Unused,
    #[serde(default)]
    labels: Unused,
}

impl Vocabulary for VaultQuery {
    fn unused(&self) -> Vec<String> {
        crate::unused_fields!(self, ""; state, alias, linkType, fields, usageMask, metaContains,
            objectType, sha1Fingerprint, sha256Fingerprint, uuid, muid, keyId,
            compareIDWithUUID, version, labels)
    }
}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(q): ApiQuery<VaultQuery>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(q.skip, q.limit)?;
    Ok(Json(
        state
            .vault
            .list(ListFilter {
                name: q.name,
                algorithm: q.algorithm,
                id: q.id,
                size: q.size,
                skip,
                limit,
            })
            .await?,
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<KeyRefQuery>,
) -> Result<Json<Value>, ApiError> {
    q.check()?;
    Ok(Json(state.vault.get(&id).await?))
}

pub async fn export(
    State(state): State<AppState>,
    Need(caller, _): Need<Exporter>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<KeyRefQuery>,
    ApiJson(body): ApiJson<crate::vault::ExportBody>,
) -> Result<Json<Value>, ApiError> {
    tracing::info!(user = %caller.user, key = %id, "vault key export requested");
    q.check()?;
    body.check_supported()?;
    body.wrapping_key_pem()?;
    let policy = &state.export;
    if policy.disabled() {
        return Err(ApiError::forbidden(
            "exports are disabled on this bridge (no export.allowed_groups, no [[users]])",
        ));
    }
    if !caller.peer {
        return Err(ApiError::forbidden(
            "exports need a peer token (issued by POST /api/v1/auth/tokens to a [[users]] peer); \
             operator tokens (hsm-bridge token) cannot export",
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

/// `POST /api/v1/vault/keys2/{id}/restore` (also `recover`, CipherTrust's name).
pub async fn restore(
    State(state): State<AppState>,
    Need(caller, _): Need<VaultAdmin>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tracing::info!(user = %caller.user, key = %id, "vault key restore requested");
    Ok(Json(state.vault.restore(&id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Need(caller, _): Need<VaultAdmin>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<KeyRefQuery>,
) -> Result<StatusCode, ApiError> {
    tracing::info!(user = %caller.user, key = %id, "vault key deletion requested");
    q.check()?;
    state.vault.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
