//! `/api/v1/cckm/aws/synchronization-jobs`: re-read records from AWS on demand, and follow the
//! jobs (the periodic ones too).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::roles::{KeyAdmin, Need, Reader};
use super::{AppState, Paging, paging};
use crate::store::sync_jobs::{self, SyncJob};
use crate::vocabulary::Vocabulary;

/// CipherTrust's body: `kms` and `regions` (names), or `synchronize_all`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    #[serde(default)]
    kms: OneOrMany,
    #[serde(default)]
    regions: OneOrMany,
    synchronize_all: Option<bool>,
}

impl Vocabulary for StartBody {}

/// A name or a list of names.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

fn render(j: &SyncJob) -> Value {
    let mut v = serde_json::to_value(j).unwrap_or(Value::Null);
    v["overall_status"] = Value::String(j.status.clone());
    v["createdAt"] = Value::String(j.created_at.clone());
    v["updatedAt"] = Value::String(j.updated_at.clone());
    v
}

pub async fn start(
    State(state): State<AppState>,
    Need(caller, _): Need<KeyAdmin>,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (kms, regions) = (body.kms.into_vec(), body.regions.into_vec());
    if body.synchronize_all == Some(true) && (!kms.is_empty() || !regions.is_empty()) {
        return Err(ApiError::bad_request(
            "synchronize_all and kms/regions are mutually exclusive",
        ));
    }
    let mut kms_ids = Vec::new();
    for k in &kms {
        let conn = state
            .kms
            .find(k)
            .ok_or_else(|| ApiError::not_found(format!("kms: no KMS connection `{k}`")))?;
        kms_ids.push(conn.cfg.id.clone());
    }
    for r in &regions {
        if !state.kms.all().iter().any(|c| c.has_region(r)) {
            return Err(ApiError::bad_request(format!(
                "regions: `{r}` is not a region of any configured kms"
            )));
        }
    }
    tracing::info!(user = %caller.user, ?kms, ?regions, "synchronization requested");
    let job = state.sync.start(kms_ids, regions, "api").await?;
    Ok((StatusCode::CREATED, Json(render(&job))))
}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(p): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(p.skip, p.limit)?;
    let (total, jobs) = state
        .store
        .call(move |c| sync_jobs::list(c, skip, limit))
        .await?;
    Ok(Json(json!({
        "skip": skip, "limit": limit, "total": total,
        "resources": jobs.iter().map(render).collect::<Vec<_>>(),
    })))
}

pub async fn get_one(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let i = id.clone();
    state
        .store
        .call(move |c| sync_jobs::get(c, &i))
        .await?
        .map(|j| Json(render(&j)))
        .ok_or_else(|| ApiError::not_found(format!("no synchronization job `{id}`")))
}

pub async fn cancel(
    State(state): State<AppState>,
    Need(_caller, _): Need<KeyAdmin>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let i = id.clone();
    let job = state
        .store
        .call(move |c| {
            sync_jobs::cancel(c, &i)?;
            sync_jobs::get(c, &i)
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no synchronization job `{id}`")))?;
    Ok(Json(render(&job)))
}
