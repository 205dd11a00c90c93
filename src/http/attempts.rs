//! `/api/v1/cckm/aws/upload-attempts`: every upload attempt, and what became of the AWS key
//! of those that failed after it was created.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::ApiQuery;
use super::roles::{Need, Reader};
use super::{AppState, paging};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    state: Option<String>,
    skip: Option<u32>,
    limit: Option<u32>,
}

impl crate::vocabulary::Vocabulary for AttemptsQuery {}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(q): ApiQuery<AttemptsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(q.skip, q.limit)?;
    let filter = q.state.clone();
    let (total, rows) = state
        .store
        .call(move |c| crate::store::attempts::list(c, filter.as_deref(), skip, limit))
        .await?;
    Ok(Json(
        json!({"skip": skip, "limit": limit, "total": total, "resources": rows}),
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    let a = state
        .store
        .call(move |c| crate::store::attempts::get(c, &key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no upload attempt `{id}`")))?;
    Ok(Json(
        serde_json::to_value(a).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}
