//! `GET /api/v1/cckm/aws/keys` and `/keys/{id}`: the stored upload records; and the
//! configured KMS connections.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::ApiQuery;
use super::roles::{Need, Reader};
use super::{AppState, paging};
use crate::store::aws_keys::ListFilter;
use crate::vocabulary::{Unused, Vocabulary};

/// The list filters CipherTrust documents for AWS keys. Those naming a field of the record are
/// applied; the rest (sorting, custom key stores, rotation jobs, blocking) are accepted and
/// ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct KeysQuery {
    id: Option<String>,
    keyid: Option<String>,
    arn: Option<String>,
    region: Option<String>,
    alias: Option<String>,
    kms: Option<String>,
    kms_id: Option<String>,
    cloud_name: Option<String>,
    origin: Option<String>,
    keystate: Option<String>,
    keyusage: Option<String>,
    keymanager: Option<String>,
    CustomerMasterKeySpec: Option<String>,
    key_source: Option<String>,
    key_material_origin: Option<String>,
    multi_region: Option<String>,
    enabled: Option<String>,
    gone: Option<String>,
    /// A bridge extension: keys whose material expires within this long (`7d`, `12h`, ...).
    expiring_within: Option<String>,
    skip: Option<u32>,
    limit: Option<u32>,
    #[serde(default)]
    sort: Unused,
    #[serde(default)]
    multi_region_key_type: Unused,
    #[serde(default)]
    custom_key_store_id: Unused,
    #[serde(default)]
    custom_key_store_name: Unused,
    #[serde(default)]
    blocked: Unused,
    #[serde(default)]
    rotation_job_enabled: Unused,
    #[serde(default)]
    job_config_id: Unused,
    #[serde(default)]
    cckm_policy_template_id: Unused,
    #[serde(default)]
    tags: Unused,
}

impl Vocabulary for KeysQuery {
    fn unused(&self) -> Vec<String> {
        crate::unused_fields!(self, ""; sort, multi_region_key_type, custom_key_store_id,
            custom_key_store_name, blocked, rotation_job_enabled, job_config_id,
            cckm_policy_template_id, tags)
    }
}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(q): ApiQuery<KeysQuery>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(q.skip, q.limit)?;
    let kms_id = match (&q.kms, &q.kms_id) {
        (Some(k), _) | (None, Some(k)) => Some(
            state
                .kms
                .find(k)
                .map(|c| c.cfg.id.clone())
                .ok_or_else(|| ApiError::not_found(format!("kms: no KMS connection `{k}`")))?,
        ),
        (None, None) => None,
    };
    let mut fields = Vec::new();
    for (pointer, v) in [
        ("/cloud_name", q.cloud_name),
        ("/aws_param/Origin", q.origin),
        ("/aws_param/KeyState", q.keystate),
        ("/aws_param/KeyUsage", q.keyusage),
        ("/aws_param/KeyManager", q.keymanager),
        ("/aws_param/CustomerMasterKeySpec", q.CustomerMasterKeySpec),
        ("/key_source", q.key_source),
        ("/key_material_origin", q.key_material_origin),
        ("/aws_param/MultiRegion", q.multi_region),
        ("/aws_param/Enabled", q.enabled),
        ("/gone", q.gone),
    ] {
        if let Some(v) = v {
            fields.push((pointer, v));
        }
    }
    let expiring_before = match q.expiring_within.as_deref() {
        Some(v) => {
            let secs = crate::cckm::lease::parse_within(v)
                .map_err(|e| ApiError::from(crate::error::DomainError::Invalid(e)))?;
            Some(
                time::OffsetDateTime::now_utc()
                    .unix_timestamp()
                    .saturating_add(secs.min(i64::MAX as u64) as i64),
            )
        }
        None => None,
    };
    let filter = ListFilter {
        expiring_before,
        id: q.id,
        keyid: q.keyid.or(q.arn),
        region: q.region,
        alias: q.alias,
        kms_id,
        fields,
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
    Need(_caller, _): Need<Reader>,
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

pub async fn list_kms(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
) -> Json<Value> {
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
