//! Policy templates (`/api/v1/cckm/aws/templates`): a stored key policy, or the lists that
//! build one, applied to uploads with `policytemplate`. Keys made from one carry the tag
//! `cckm_policy_template_id`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::policy;
use super::request::{PolicyLists, validate_policy};
use super::spec::{KeySpec, KeyUsage};
use crate::error::DomainError;
use crate::kms::KmsRegistry;
use crate::store::{Store, now_rfc3339};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateBody {
    pub name: Option<String>,
    pub kms: Option<String>,
    pub account_id: Option<String>,
    #[serde(alias = "Policy")]
    pub policy: Option<Value>,
    pub external_accounts: Option<Vec<String>>,
    pub key_admins: Option<Vec<String>>,
    pub key_admins_roles: Option<Vec<String>>,
    pub key_users: Option<Vec<String>>,
    pub key_users_roles: Option<Vec<String>>,
    /// Pushes a changed template to the keys made from it (PATCH in CipherTrust); templates
    /// here are applied at upload only.
    #[serde(default)]
    pub auto_push: crate::vocabulary::Unused,
}

impl crate::vocabulary::Vocabulary for CreateTemplateBody {
    fn unused(&self) -> Vec<String> {
        crate::unused_fields!(self, ""; auto_push)
    }
}

fn strs(v: &[String]) -> Value {
    json!(v)
}

pub async fn create(
    store: &Store,
    kms: &KmsRegistry,
    body: CreateTemplateBody,
) -> Result<Value, DomainError> {
    let name = body
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| DomainError::Invalid("name: is required".into()))?;
    if name.chars().count() > 256 {
        return Err(DomainError::Invalid("name: at most 256 characters".into()));
    }
    if name
        .chars()
        .any(|c| matches!(c, '<' | '>' | '\\') || c.is_control())
    {
        return Err(DomainError::Invalid(
            "name: must not contain <, >, \\ or control characters".into(),
        ));
    }
    let kms_name = body
        .kms
        .ok_or_else(|| DomainError::Invalid("kms: is required".into()))?;
    let conn = kms.find(&kms_name).ok_or_else(|| {
        DomainError::NotFound(format!(
            "kms: no KMS connection named (or with id) `{kms_name}`"
        ))
    })?;
    let account_id = body
        .account_id
        .unwrap_or_else(|| conn.cfg.account_id.clone());
    if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::Invalid(
            "account_id: must be a 12-digit AWS account id".into(),
        ));
    }
    let lists = PolicyLists::from_fields(
        body.external_accounts,
        body.key_admins,
        body.key_admins_roles,
        body.key_users,
        body.key_users_roles,
    );
    if body.policy.is_some() && !lists.is_empty() {
        return Err(DomainError::Invalid(
            "policy and the key_admins/key_users/external_accounts lists are mutually exclusive"
                .into(),
        ));
    }
    let policy_text = body
        .policy
        .as_ref()
        .map(|p| validate_policy(p, "policy"))
        .transpose()
        .map_err(DomainError::Invalid)?;
    lists.validate("").map_err(DomainError::Invalid)?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_rfc3339();
    let record = json!({
        "id": id,
        "uri": format!("kylo:kylo:cckm:aws-key-policy-template:{id}"),
        "account": "kylo:kylo:admin:accounts:kylo",
        "createdAt": now,
        "updatedAt": now,
        "name": name,
        "kms": conn.cfg.name,
        "kms_id": conn.cfg.id,
        "account_id": account_id,
        "is_verified": false,
        "external_accounts": strs(&lists.external_accounts),
        "key_admins": strs(&lists.key_admins),
        "key_admins_roles": strs(&lists.key_admins_roles),
        "key_users": strs(&lists.key_users),
        "key_users_roles": strs(&lists.key_users_roles),
        "policy": policy_text,
    });
    let stored = record.clone();
    let (i, n, t) = (id.clone(), name.clone(), now.clone());
    let inserted = store
        .call(move |c| crate::store::templates::insert(c, &i, &n, &stored, &t))
        .await?;
    if !inserted {
        return Err(DomainError::Conflict(format!(
            "a policy template named `{name}` already exists"
        )));
    }
    Ok(record)
}

pub async fn get(store: &Store, id_or_name: &str) -> Result<Option<Value>, DomainError> {
    let k = id_or_name.to_owned();
    Ok(store
        .call(move |c| crate::store::templates::get(c, &k))
        .await?)
}

pub async fn list(store: &Store, skip: u32, limit: u32) -> Result<Value, DomainError> {
    let (total, rows) = store
        .call(move |c| crate::store::templates::list(c, skip, limit))
        .await?;
    Ok(json!({"skip": skip, "limit": limit, "total": total, "resources": rows}))
}

pub async fn delete(store: &Store, id_or_name: &str) -> Result<(), DomainError> {
    let tpl = get(store, id_or_name)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("no policy template `{id_or_name}`")))?;
    let id = tpl["id"].as_str().unwrap_or_default().to_owned();
    let in_use = {
        let id = id.clone();
        store
            .call(move |c| crate::store::templates::usage_count(c, &id))
            .await?
    };
    if in_use > 0 {
        return Err(DomainError::Conflict(format!(
            "policy template `{id_or_name}` has {in_use} key(s) associated with it"
        )));
    }
    store
        .call(move |c| crate::store::templates::delete(c, &id))
        .await?;
    Ok(())
}

fn list_of(tpl: &Value, field: &str) -> Vec<String> {
    super::record::str_list(&tpl[field])
}

/// The policy text a template gives for a key of this spec and usage.
pub fn policy_text(
    tpl: &Value,
    default_account: &str,
    spec: KeySpec,
    usage: KeyUsage,
) -> Result<String, String> {
    if let Some(p) = tpl["policy"].as_str() {
        return Ok(p.to_owned());
    }
    let account = tpl["account_id"].as_str().unwrap_or(default_account);
    let lists = PolicyLists {
        external_accounts: list_of(tpl, "external_accounts"),
        key_admins: list_of(tpl, "key_admins"),
        key_admins_roles: list_of(tpl, "key_admins_roles"),
        key_users: list_of(tpl, "key_users"),
        key_users_roles: list_of(tpl, "key_users_roles"),
    };
    Ok(if lists.is_empty() {
        policy::default_policy(account).to_string()
    } else {
        policy::from_lists(account, &lists, spec, usage).to_string()
    })
}
