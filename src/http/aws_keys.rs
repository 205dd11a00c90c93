//! `GET /api/v1/cckm/aws/keys` and `/keys/{id}`: the stored upload records; and the
//! configured KMS connections.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::{AppState, paging};
use crate::store::aws_keys::ListFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    keyid: Option<String>,
    region: Option<String>,
    alias: Option<String>,
    kms: Option<String>,
    skip: Option<u32>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<KeysQuery>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(q.skip, q.limit)?;
    let kms_id = match &q.kms {
        Some(k) => Some(
            state
                .kms
                .find(k)
                .map(|c| c.cfg.id.clone())
                .ok_or_else(|| ApiError::not_found(format!("kms: no KMS connection `{k}`")))?,
        ),
        None => None,
    };
    let filter = ListFilter {
        keyid: q.keyid,
        region: q.region,
        alias: q.alias,
        kms_id,
        skip,
        limit,
    };
    let (total, resources) = state
        .store
        .call(move |c| crate::store::aws_keys::list(c, &filter))
        .await?;
    Ok(Json(json!({
        "skip": skip,
        "limit": limit,
        "total": total,
        "resources": resources,
    })))
}

pub async fn get_one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    state
        .store
        .call(move |c| crate::store::aws_keys::get(c, &key))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no AWS key `{id}`")))
}

pub async fn list_kms(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let resources: Vec<Value> = state
        .kms
        .all()
        .iter()
        .map(|c| {
            json!({
                "id": c.cfg.id,
                "name": c.cfg.name,
                "account_id": c.cfg.account_id,
                "regions": c.cfg.regions,
                "cloud_name": c.cfg.cloud_name,
                "assume_role_arn": c.cfg.assume_role_arn,
            })
        })
        .collect();
    Json(
        json!({"skip": 0, "limit": resources.len(), "total": resources.len(), "resources": resources}),
    )
}
