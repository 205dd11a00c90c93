//! Bulk upload jobs: what a job asks for — a list of upload-key bodies, or a selector of source
//! keys times target kms connections and Regions with options common to every item — checked
//! and expanded into items when it is submitted, so that a job that is accepted can only fail
//! item by item, for reasons AWS or a token give at the time.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::manage::KeyManager;
use super::request::UploadKeyBody;
use super::spec::{KeySpec, SourceTier};
use crate::error::DomainError;
use crate::store::upload_jobs::{self, Item, Job, NewItem, NewJob};
use crate::vocabulary::Vocabulary;

/// The JSON body of `POST /api/v1/cckm/aws/upload-jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadJobBody {
    pub name: Option<String>,
    /// Upload-key bodies, one per item.
    pub items: Option<Vec<Value>>,
    /// Or the source keys to upload...
    pub selector: Option<SelectorBody>,
    /// ...to each of these.
    pub targets: Option<Vec<TargetBody>>,
    // Options common to every item of a selector, as upload-key takes them.
    pub aws_param: Option<Value>,
    pub external_accounts: Option<Value>,
    pub key_admins: Option<Value>,
    pub key_admins_roles: Option<Value>,
    pub key_users: Option<Value>,
    pub key_users_roles: Option<Value>,
    pub policytemplate: Option<Value>,
    pub key_material_description: Option<Value>,
    pub valid_to: Option<Value>,
    #[serde(alias = "KeyExpiration")]
    pub key_expiration: Option<Value>,
    pub lease_days: Option<Value>,
    pub lease_secs: Option<Value>,
}

impl Vocabulary for UploadJobBody {}

/// Which source keys: vault keys (`local`) by name pattern and labels, or keys of the source
/// tokens (`hsm-luna`) by label pattern. Patterns take `*` (any run) and `?` (one character).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorBody {
    pub source_key_tier: Option<String>,
    pub name_pattern: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub label_pattern: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    pub kms: String,
    /// Every Region of the connection when absent.
    pub regions: Option<Vec<String>>,
}

/// `*` and `?` wildcards, anchored at both ends.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn pattern(field: &str, p: &str) -> Result<String, DomainError> {
    if p.is_empty() || p.len() > 256 || p.chars().any(char::is_control) {
        return Err(DomainError::Invalid(format!(
            "selector.{field}: 1 to 256 characters, no control characters"
        )));
    }
    Ok(p.to_owned())
}

/// The checked job: its items in order.
pub struct Plan {
    pub items: Vec<NewItem>,
}

impl KeyManager {
    /// Checks a job and expands it into items; nothing is stored or sent anywhere.
    pub async fn plan_upload_job(
        &self,
        body: UploadJobBody,
        max_items: usize,
    ) -> Result<Plan, DomainError> {
        if let Some(n) = &body.name
            && (n.len() > 256 || n.chars().any(char::is_control))
        {
            return Err(DomainError::Invalid(
                "name: at most 256 characters, no control characters".into(),
            ));
        }
        let bodies = match (body.items.is_some(), body.selector.is_some()) {
            (true, true) => {
                return Err(DomainError::Invalid(
                    "items and selector are mutually exclusive".into(),
                ));
            }
            (false, false) => {
                return Err(DomainError::Invalid(
                    "give items (upload-key bodies) or a selector with targets".into(),
                ));
            }
            (true, false) => {
                if body.targets.is_some() || common(&body).next().is_some() {
                    return Err(DomainError::Invalid(
                        "targets and common options go with a selector; each of items is a whole upload-key body".into(),
                    ));
                }
                body.items.unwrap_or_default()
            }
            (false, true) => self.expand(body, max_items).await?,
        };
        if bodies.is_empty() {
            return Err(DomainError::Invalid("the job has no items".into()));
        }
        if bodies.len() > max_items {
            return Err(DomainError::Invalid(format!(
                "the job has {} items; at most {max_items} (jobs.max_items)",
                bodies.len()
            )));
        }
        let now = OffsetDateTime::now_utc();
        let mut seen: HashMap<(String, String, String, String), usize> = HashMap::new();
        let mut items = Vec::with_capacity(bodies.len());
        for (i, v) in bodies.into_iter().enumerate() {
            let at = |m: String| DomainError::Invalid(format!("items[{i}]: {m}"));
            let parsed: UploadKeyBody =
                serde_json::from_value(v.clone()).map_err(|e| at(e.to_string()))?;
            if parsed
                .replica_regions
                .as_ref()
                .is_some_and(|r| !r.is_empty())
            {
                return Err(at(
                    "replica_regions: not in a job; replicate the keys after it".into(),
                ));
            }
            if parsed.lease_secs.is_some() && !self.uploader.allow_seconds {
                return Err(at(
                    "lease_secs: only in test configurations (schedules.allow_seconds)".into(),
                ));
            }
            let req = parsed.validate(now).map_err(at)?;
            let conn = self.uploader.kms.find(&req.kms).ok_or_else(|| {
                DomainError::NotFound(format!(
                    "items[{i}]: kms: no KMS connection named (or with id) `{}`",
                    req.kms
                ))
            })?;
            if !conn.has_region(&req.region) {
                return Err(at(format!(
                    "region: `{}` is not a region of kms `{}`",
                    req.region, conn.cfg.name
                )));
            }
            // A vault key named by name or by id is the same source key.
            let source = if req.tier == SourceTier::Local {
                self.vault
                    .get_row(&req.source)
                    .await?
                    .ok_or_else(|| {
                        DomainError::NotFound(format!(
                            "items[{i}]: source_key_identifier: no vault key `{}`",
                            req.source
                        ))
                    })?
                    .id
            } else {
                req.source.clone()
            };
            let key = (
                req.tier.as_str().to_owned(),
                source.clone(),
                conn.cfg.id.clone(),
                req.region.clone(),
            );
            if let Some(first) = seen.insert(key, i) {
                return Err(at(format!(
                    "uploads the same source key to the same kms and Region as items[{first}]; a job uploads each at most once"
                )));
            }
            // The item runs with what was checked here: the vault key by id (a key renamed or
            // re-created under the name since is not the one planned), the connection by id.
            let mut v = v;
            if let Value::Object(o) = &mut v {
                o.insert("source_key_identifier".into(), json!(source));
                o.insert("kms".into(), json!(conn.cfg.id));
            }
            items.push(NewItem {
                source_tier: req.tier.as_str().to_owned(),
                source_key: source,
                kms_id: conn.cfg.id.clone(),
                region: req.region,
                body: v.to_string(),
            });
        }
        Ok(Plan { items })
    }

    /// A selector times its targets: one upload-key body each.
    async fn expand(
        &self,
        body: UploadJobBody,
        max_items: usize,
    ) -> Result<Vec<Value>, DomainError> {
        let sel = body
            .selector
            .as_ref()
            .ok_or_else(|| DomainError::Invalid("selector: is required without items".into()))?;
        let targets = body.targets.as_deref().unwrap_or_default();
        if targets.is_empty() {
            return Err(DomainError::Invalid(
                "targets: a selector needs at least one target ({\"kms\": ..., \"regions\": [...]})"
                    .into(),
            ));
        }
        if let Some(p) = body.aws_param.as_ref().and_then(|p| p.get("Alias"))
            && !p.is_null()
        {
            return Err(DomainError::Invalid(
                "aws_param.Alias: an alias names one key, so a job's common options cannot carry one"
                    .into(),
            ));
        }
        let explicit_spec = body.aws_param.as_ref().is_some_and(|p| {
            ["CustomerMasterKeySpec", "KeySpec"]
                .iter()
                .any(|k| p.get(k).is_some_and(|v| !v.is_null()))
        });
        let tier = match sel.source_key_tier.as_deref() {
            None | Some("") => SourceTier::Local,
            Some(t) => SourceTier::parse(t).ok_or_else(|| {
                DomainError::Invalid(format!(
                    "selector.source_key_tier: `{t}` is not one of local, hsm-luna"
                ))
            })?,
        };
        let sources = match tier {
            SourceTier::Local => {
                if sel.label_pattern.is_some() {
                    return Err(DomainError::Invalid(
                        "selector.label_pattern: for hsm-luna keys; vault keys are chosen by name_pattern and labels".into(),
                    ));
                }
                if sel.name_pattern.is_none() && sel.labels.is_none() {
                    return Err(DomainError::Invalid(
                        "selector: give name_pattern and/or labels for vault keys".into(),
                    ));
                }
                let name = sel
                    .name_pattern
                    .as_deref()
                    .map(|p| pattern("name_pattern", p))
                    .transpose()?;
                self.vault_keys(name.as_deref(), sel.labels.as_ref())
                    .await?
            }
            SourceTier::HsmLuna => {
                if sel.name_pattern.is_some() || sel.labels.is_some() {
                    return Err(DomainError::Invalid(
                        "selector: keys of the source tokens are chosen by label_pattern only"
                            .into(),
                    ));
                }
                let p = pattern(
                    "label_pattern",
                    sel.label_pattern.as_deref().ok_or_else(|| {
                        DomainError::Invalid(
                            "selector.label_pattern: is required for hsm-luna keys".into(),
                        )
                    })?,
                )?;
                self.uploader
                    .tiers
                    .hsm_luna
                    .labelled(move |l| glob_match(&p, l))
                    .await?
            }
            other => {
                return Err(DomainError::Invalid(format!(
                    "selector.source_key_tier: a selector lists local or hsm-luna keys, not {other}; give items for other tiers"
                )));
            }
        };
        if sources.is_empty() {
            return Err(DomainError::NotFound(
                "selector: no source key matches".into(),
            ));
        }
        let mut regions = Vec::new();
        for t in targets {
            let conn = self.uploader.kms.find(&t.kms).ok_or_else(|| {
                DomainError::NotFound(format!(
                    "targets: no KMS connection named (or with id) `{}`",
                    t.kms
                ))
            })?;
            let rs = t
                .regions
                .clone()
                .unwrap_or_else(|| conn.cfg.regions.clone());
            if rs.is_empty() {
                return Err(DomainError::Invalid(format!(
                    "targets: kms `{}` with no regions",
                    t.kms
                )));
            }
            for r in rs {
                regions.push((conn.cfg.name.clone(), r));
            }
        }
        if sources.len().saturating_mul(regions.len()) > max_items {
            return Err(DomainError::Invalid(format!(
                "the selector makes {} items ({} keys to {} Regions); at most {max_items} (jobs.max_items)",
                sources.len() * regions.len(),
                sources.len(),
                regions.len()
            )));
        }
        let common: Map<String, Value> = common(&body)
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (source, spec) in &sources {
            if !explicit_spec && spec.is_none() {
                return Err(DomainError::Invalid(format!(
                    "selector: the key spec of source key `{source}` does not follow from the key; give aws_param.CustomerMasterKeySpec"
                )));
            }
            for (kms, region) in &regions {
                let mut item = common.clone();
                item.insert("source_key_tier".into(), json!(tier.as_str()));
                item.insert("source_key_identifier".into(), json!(source));
                item.insert("kms".into(), json!(kms));
                item.insert("region".into(), json!(region));
                if let (false, Some(spec)) = (explicit_spec, spec) {
                    let p = item
                        .entry("aws_param")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(p) = p {
                        p.insert("CustomerMasterKeySpec".into(), json!(spec.as_str()));
                    }
                }
                out.push(Value::Object(item));
            }
        }
        Ok(out)
    }

    /// Vault keys (their ids) whose name matches and whose labels include `labels`, with the
    /// spec each uploads as.
    async fn vault_keys(
        &self,
        name: Option<&str>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<(String, Option<KeySpec>)>, DomainError> {
        let rows = self.vault.all_rows().await?;
        let mut out: Vec<(String, String, Option<KeySpec>)> = rows
            .into_iter()
            .filter(|r| name.is_none_or(|p| glob_match(p, &r.name)))
            .filter(|r| {
                labels.is_none_or(|want| {
                    let extra: Value = serde_json::from_str(&r.extra).unwrap_or_default();
                    want.iter()
                        .all(|(k, v)| extra["labels"][k].as_str() == Some(v.as_str()))
                })
            })
            .map(|r| {
                let spec = crate::vault::upload_spec(&r);
                (r.name, r.id, spec)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out.into_iter().map(|(_, id, spec)| (id, spec)).collect())
    }
}

/// The common options a job body carries, by upload-key field name.
fn common(b: &UploadJobBody) -> impl Iterator<Item = (&'static str, &Value)> {
    [
        ("aws_param", &b.aws_param),
        ("external_accounts", &b.external_accounts),
        ("key_admins", &b.key_admins),
        ("key_admins_roles", &b.key_admins_roles),
        ("key_users", &b.key_users),
        ("key_users_roles", &b.key_users_roles),
        ("policytemplate", &b.policytemplate),
        ("key_material_description", &b.key_material_description),
        ("valid_to", &b.valid_to),
        ("key_expiration", &b.key_expiration),
        ("lease_days", &b.lease_days),
        ("lease_secs", &b.lease_secs),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
}

/// Submits a checked job: the job and all its items in one transaction.
pub async fn submit(
    store: &crate::store::Store,
    plan: Plan,
    name: Option<String>,
    actor: &str,
    request_id: &str,
) -> Result<String, DomainError> {
    let id = uuid::Uuid::new_v4().to_string();
    let (jid, actor, rid) = (id.clone(), actor.to_owned(), request_id.to_owned());
    store
        .call(move |c| {
            upload_jobs::create(
                c,
                &NewJob {
                    id: &jid,
                    name: name.as_deref(),
                    actor: &actor,
                    request_id: &rid,
                },
                &plan.items,
            )
        })
        .await?;
    Ok(id)
}

fn parse_time(s: Option<&str>) -> Option<OffsetDateTime> {
    s.and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// A job as the API shows it: counts, progress, rate (items per second since it started),
/// ETA, and the items given.
pub fn render(job: &Job, items: Option<&[Item]>) -> Value {
    let done = job.completed + job.failed;
    let left = job.pending + job.running;
    let started = parse_time(job.started_at.as_deref());
    let until = if left == 0 {
        parse_time(job.last_item_done_at.as_deref())
    } else {
        Some(OffsetDateTime::now_utc())
    };
    let rate = match (started, until) {
        (Some(s), Some(u)) if done > 0 => {
            let secs = (u - s).as_seconds_f64();
            (secs > 0.0).then(|| done as f64 / secs)
        }
        _ => None,
    };
    let eta = match rate {
        Some(r) if left > 0 && r > 0.0 => Some((left as f64 / r).ceil() as u64),
        _ if left == 0 => Some(0),
        _ => None,
    };
    let mut v = json!({
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "overall_status": job.status,
        "createdBy": job.actor,
        "requestID": job.request_id,
        "total": job.total,
        "pending": job.pending,
        "running": job.running,
        "completed": job.completed,
        "failed": job.failed,
        "cancelled": job.cancelled,
        "progress": if job.total == 0 { 1.0 } else { (done + job.cancelled) as f64 / job.total as f64 },
        "rate_per_second": rate.map(|r| (r * 1000.0).round() / 1000.0),
        "eta_seconds": eta,
        "createdAt": job.created_at,
        "updatedAt": job.updated_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    });
    if let Some(items) = items {
        v["items"] = Value::Array(
            items
                .iter()
                .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
                .collect(),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("app-*", "app-1"));
        assert!(glob_match("app-*", "app-"));
        assert!(!glob_match("app-*", "xapp-1"));
        assert!(glob_match("*-prod", "db-prod"));
        assert!(!glob_match("*-prod", "db-prod2"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact1"));
    }
}
