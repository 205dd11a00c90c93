//! `POST /api/v1/cckm/aws/keys/{id}/<action>` (CipherTrust's key actions),
//! `GET /api/v1/cckm/aws/keys/{id}/history`, and `DELETE /api/v1/cckm/aws/keys/{id}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ApiError, current_request_id};
use super::extract::{ApiQuery, parse_body};
use super::roles::{KeyAdmin, Need, Reader};
use super::{AppState, Paging, paging};
use crate::cckm::actions::{
    Action, AddTagsBody, AliasBody, DeleteMaterialBody, DescriptionBody, ImportMaterialBody,
    NoBody, PolicyBody, RemoveTagsBody, ScheduleDeletionBody,
};
use crate::cckm::manage::Who;
use crate::cckm::schedule::{EnableRotationJobBody, RotationSchedule};
use crate::error::DomainError;
use crate::vocabulary::Vocabulary;

const ACTIONS: &str = "refresh, enable, disable, schedule-deletion, cancel-deletion, \
                       delete-material, import-material, add-alias, delete-alias, add-tags, \
                       remove-tags, update-description, policy, rotate, \
                       enable-rotation-job, disable-rotation-job, replicate-key";

fn body<T: DeserializeOwned + Vocabulary>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_body(if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    })
}

/// The validated action named `name`, from its body.
fn parse(name: &str, bytes: &[u8]) -> Result<Action, ApiError> {
    let invalid = |e: String| ApiError::from(DomainError::Invalid(e));
    Ok(match name {
        "refresh" => body::<NoBody>(bytes).map(|_| Action::Refresh)?,
        "enable" => body::<NoBody>(bytes).map(|_| Action::Enable)?,
        "disable" => body::<NoBody>(bytes).map(|_| Action::Disable)?,
        "cancel-deletion" => body::<NoBody>(bytes).map(|_| Action::CancelDeletion)?,
        "delete-material" => body::<DeleteMaterialBody>(bytes).map(|_| Action::DeleteMaterial)?,
        "schedule-deletion" => body::<ScheduleDeletionBody>(bytes)?
            .validate()
            .map_err(invalid)?,
        "import-material" => body::<ImportMaterialBody>(bytes)?
            .validate(time::OffsetDateTime::now_utc())
            .map_err(invalid)?,
        "add-alias" => body::<AliasBody>(bytes)?.add().map_err(invalid)?,
        "delete-alias" => body::<AliasBody>(bytes)?.delete().map_err(invalid)?,
        "add-tags" => body::<AddTagsBody>(bytes)?.validate().map_err(invalid)?,
        "remove-tags" => body::<RemoveTagsBody>(bytes)?.validate().map_err(invalid)?,
        "update-description" => body::<DescriptionBody>(bytes)?
            .validate()
            .map_err(invalid)?,
        "policy" => body::<PolicyBody>(bytes)?.validate().map_err(invalid)?,
        other => {
            return Err(ApiError::not_found(format!(
                "no key action `{other}` (the actions are {ACTIONS})"
            )));
        }
    })
}

/// `enable-rotation-job` (`Some(Some(..))`) and `disable-rotation-job` (`Some(None)`): the
/// bridge's own rotation schedule, kept in the record.
#[allow(clippy::type_complexity)]
fn rotation_schedule(
    name: &str,
    bytes: &[u8],
    state: &AppState,
) -> Result<Option<Option<RotationSchedule>>, ApiError> {
    match name {
        "enable-rotation-job" => body::<EnableRotationJobBody>(bytes)?
            .validate(state.keys.schedules.allow_seconds)
            .map(|s| Some(Some(s)))
            .map_err(|e| ApiError::from(DomainError::Invalid(e))),
        "disable-rotation-job" => body::<NoBody>(bytes).map(|_| Some(None)),
        _ => Ok(None),
    }
}

fn who(caller: &super::auth::Caller) -> Who {
    Who {
        actor: caller.user.clone(),
        request_id: current_request_id(),
    }
}

pub async fn act(
    State(state): State<AppState>,
    Need(caller, _): Need<KeyAdmin>,
    Path((id, name)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    if let Some(schedule) = rotation_schedule(&name, &bytes, &state)? {
        tracing::info!(user = %caller.user, key = %id, action = %name, "rotation schedule change requested");
        return Ok(Json(
            state
                .keys
                .set_rotation_schedule(&id, schedule, &who(&caller))
                .await?,
        ));
    }
    let action = parse(&name, &bytes)?;
    tracing::info!(user = %caller.user, key = %id, action = action.name(), "key action requested");
    // Like an upload, an action runs to its end even if the caller hangs up.
    let keys = state.keys.clone();
    let who = who(&caller);
    let record = tokio::spawn(async move { keys.act(&id, action, &who).await })
        .await
        .map_err(|e| ApiError::internal("the key action failed").with_detail(e.to_string()))??;
    Ok(Json(record))
}

pub async fn history(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(p.skip, p.limit)?;
    Ok(Json(state.keys.history(&id, skip, limit).await?))
}

pub async fn forget(
    State(state): State<AppState>,
    Need(caller, _): Need<KeyAdmin>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tracing::info!(user = %caller.user, key = %id, "record removal requested");
    Ok(Json(state.keys.forget(&id, &who(&caller)).await?))
}
