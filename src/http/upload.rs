//! `POST /api/v1/cckm/aws/upload-key`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tracing::Instrument;

use super::AppState;
use super::error::{ApiError, current_request_id};
use super::extract::ApiJson;
use super::roles::{Need, Uploader};
use crate::cckm::request::UploadKeyBody;

pub async fn upload_key(
    State(state): State<AppState>,
    Need(caller, _): Need<Uploader>,
    ApiJson(body): ApiJson<UploadKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    tracing::info!(user = %caller.user, "upload-key requested");
    let labels = body.metric_labels();
    let started = std::time::Instant::now();
    let result = run(state, caller, body).await;
    crate::metrics::get().upload_done(labels.0, labels.1, result.is_ok(), started.elapsed());
    result
}

async fn run(
    state: AppState,
    caller: super::auth::Caller,
    mut body: UploadKeyBody,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), ApiError> {
    if let Some(regions) = body.replica_regions.take().filter(|r| !r.is_empty()) {
        let keys = state.keys.clone();
        let who = crate::cckm::manage::Who {
            actor: caller.user.clone(),
            request_id: current_request_id(),
        };
        let record = tokio::spawn(
            async move { keys.upload_with_replicas(body, regions, &who).await }
                .instrument(tracing::Span::current()),
        )
        .await
        .map_err(|e| ApiError::internal("the upload task failed").with_detail(e.to_string()))??;
        return Ok((StatusCode::CREATED, axum::Json(record)));
    }
    // The upload runs in its own task: a caller hanging up mid-flow must not cut the AWS
    // sequence short, which would leave its cleanup to the next cleaner pass.
    let uploader = state.uploader.clone();
    let request_id = current_request_id();
    let actor = caller.user.clone();
    let entry = super::audit::entry_for(StatusCode::CREATED);
    let record = tokio::spawn(
        async move {
            match entry {
                Some(e) => uploader.upload_recorded(body, &request_id, &actor, e).await,
                None => uploader.upload(body, &request_id, &actor).await,
            }
        }
        .instrument(tracing::Span::current()),
    )
    .await
    .map_err(|e| ApiError::internal("the upload task failed").with_detail(e.to_string()))??;
    super::audit::recorded();
    Ok((StatusCode::CREATED, axum::Json(record)))
}
