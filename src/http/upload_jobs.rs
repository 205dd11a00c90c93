//! `/api/v1/cckm/aws/upload-jobs`: bulk uploads run in the background (a bridge extension).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, current_request_id};
use super::extract::{ApiJson, ApiQuery};
use super::roles::{Need, Reader, Uploader};
use super::{AppState, Paging, paging};
use crate::cckm::jobs::{self, UploadJobBody};
use crate::store::upload_jobs::{self, item_state};

pub async fn submit(
    State(state): State<AppState>,
    Need(caller, _): Need<Uploader>,
    ApiJson(body): ApiJson<UploadJobBody>,
) -> Result<impl IntoResponse, ApiError> {
    let name = body.name.clone();
    let plan = state
        .keys
        .plan_upload_job(body, state.upload_jobs.cfg.max_items)
        .await?;
    let n = plan.items.len();
    let id = jobs::submit(
        &state.store,
        plan,
        name,
        &caller.user,
        &current_request_id(),
    )
    .await?;
    tracing::info!(user = %caller.user, job = %id, items = n, "upload job submitted");
    state.upload_jobs.wake.notify_one();
    let job = fetch(&state, &id, None).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(p): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(p.skip, p.limit)?;
    let (total, rows) = state
        .store
        .call(move |c| upload_jobs::list(c, skip, limit))
        .await?;
    Ok(Json(json!({
        "skip": skip, "limit": limit, "total": total,
        "resources": rows.iter().map(|j| jobs::render(j, None)).collect::<Vec<_>>(),
    })))
}

/// Which items `GET .../upload-jobs/{id}` shows: all by default, or those in one state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemQuery {
    pub items: Option<String>,
    pub skip: Option<u32>,
    pub limit: Option<u32>,
}

impl crate::vocabulary::Vocabulary for ItemQuery {}

pub async fn get_one(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ItemQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = match q.items.as_deref() {
        None | Some("all") => None,
        Some("none") => Some(None),
        Some(
            s @ (item_state::PENDING
            | item_state::RUNNING
            | item_state::COMPLETED
            | item_state::FAILED
            | item_state::CANCELLED),
        ) => Some(Some(s.to_owned())),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "items: `{other}` is not one of all, none, pending, running, completed, failed, cancelled"
            )));
        }
    };
    let limit = q.limit.unwrap_or(100_000);
    if limit == 0 {
        return Err(ApiError::bad_request("limit: at least 1"));
    }
    let items = match filter {
        Some(None) => None,
        Some(Some(s)) => Some((Some(s), q.skip.unwrap_or(0), limit)),
        None => Some((None, q.skip.unwrap_or(0), limit)),
    };
    Ok(Json(fetch(&state, &id, items).await?))
}

async fn fetch(
    state: &AppState,
    id: &str,
    items: Option<(Option<String>, u32, u32)>,
) -> Result<Value, ApiError> {
    let i = id.to_owned();
    let found = state
        .store
        .call(move |c| {
            let Some(job) = upload_jobs::get(c, &i)? else {
                return Ok(None);
            };
            let items = items
                .map(|(s, skip, limit)| upload_jobs::items(c, &i, s.as_deref(), skip, limit))
                .transpose()?;
            Ok(Some((job, items)))
        })
        .await?;
    let (job, items) = found.ok_or_else(|| ApiError::not_found(format!("no upload job `{id}`")))?;
    Ok(jobs::render(&job, items.as_deref()))
}

pub async fn cancel(
    State(state): State<AppState>,
    Need(caller, _): Need<Uploader>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let i = id.clone();
    let cancelled = state
        .store
        .call(move |c| {
            if upload_jobs::get(c, &i)?.is_none() {
                return Ok(None);
            }
            upload_jobs::cancel(c, &i).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no upload job `{id}`")))?;
    if cancelled {
        tracing::info!(user = %caller.user, job = %id, "upload job cancelled");
    }
    Ok(Json(fetch(&state, &id, None).await?))
}
