//! An uploaded key's life after the upload: key actions, re-reading it from AWS, and its
//! history. Every action is checked against the record (and the state AWS last reported)
//! before any AWS call; after the calls the key is read back, the record updated and the
//! action appended to the key's history, in one store transaction.

use std::sync::Arc;

use serde_json::{Value, json};

use super::actions::{Action, ImportMaterial};
use super::material::{self, AwsWrap, Untracked};
use super::record;
use super::request::{Expiry, TEMPLATE_TAG};
use super::spec::{KeySpec, KeyUsage, SourceTier};
use super::upload::Uploader;
use crate::error::DomainError;
use crate::kms::{self, KmsConn, KmsErrorKind, actions as aws};
use crate::pkcs11::fingerprint::Fingerprint;
use crate::store::aws_keys::{self, Located};
use crate::store::history;
use crate::store::now_rfc3339;

/// Who asked, for the history.
#[derive(Debug, Clone)]
pub struct Who {
    pub actor: String,
    pub request_id: String,
}

impl Who {
    /// Work the bridge does by itself (the periodic synchronization).
    pub fn bridge(what: &str) -> Self {
        Who {
            actor: format!("hsm-bridge ({what})"),
            request_id: String::new(),
        }
    }
}

/// How re-reading one key went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    Unchanged,
    Changed,
    /// AWS no longer has the key, or no longer lets the bridge see it.
    Gone(String),
}

pub struct KeyManager {
    pub uploader: Arc<Uploader>,
    /// Where rotation generates the new key of a `local` key.
    pub vault: Arc<crate::vault::Vault>,
    pub schedules: crate::config::SchedulesConfig,
}

pub(crate) struct Target {
    pub(crate) loc: Located,
    pub(crate) conn: KmsConn,
    pub(crate) client: aws_sdk_kms::Client,
}

/// An AWS answer that means the key is gone for the bridge, and why.
fn gone_reason(e: &kms::KmsError) -> Option<String> {
    match (e.kind, e.code.as_deref()) {
        (KmsErrorKind::NotFound, _) => Some(format!("AWS no longer has the key ({})", e.message)),
        (_, Some("AccessDeniedException")) => Some(format!(
            "the account denies the bridge access to the key ({})",
            e.message
        )),
        _ => None,
    }
}

pub(crate) fn entry(
    loc: &Located,
    action: &'static str,
    who: &Who,
    outcome: &'static str,
    calls: &[&'static str],
    detail: &Value,
) -> history::Entry {
    history::Entry {
        record_id: loc.id.clone(),
        key_id: loc.key_id.clone(),
        action,
        actor: who.actor.clone(),
        request_id: who.request_id.clone(),
        outcome,
        aws_calls: calls.to_vec(),
        detail: detail.clone(),
    }
}

/// A record to store, with its aliases.
pub(crate) struct Save {
    pub id: String,
    pub record: Value,
    pub aliases: Vec<String>,
}

impl KeyManager {
    /// Stores records and history entries together, in one transaction.
    pub(crate) async fn save(
        &self,
        records: Vec<Save>,
        entries: Vec<history::Entry>,
        now: String,
    ) -> Result<(), DomainError> {
        self.uploader
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                for s in &records {
                    aws_keys::update(&tx, &s.id, &s.record, &s.aliases, &now)?;
                }
                for e in &entries {
                    history::append(&tx, e)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn locate(&self, id: &str) -> Result<Located, DomainError> {
        let key = id.to_owned();
        self.uploader
            .store
            .call(move |c| aws_keys::locate(c, &key))
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no AWS key `{id}`")))
    }

    pub(crate) async fn target(&self, id: &str) -> Result<Target, DomainError> {
        let loc = self.locate(id).await?;
        let conn = self
            .uploader
            .kms
            .find(&loc.kms_id)
            .cloned()
            .ok_or_else(|| {
                DomainError::Conflict(format!(
                    "the key's kms connection ({}) is no longer configured",
                    loc.kms_id
                ))
            })?;
        let client = self.uploader.kms.client(&conn, &loc.region).await;
        Ok(Target { loc, conn, client })
    }

    /// Re-reads one key from AWS and stores what it says (`refresh`, and the synchronization).
    pub async fn sync(&self, id: &str) -> Result<(Synced, Value), DomainError> {
        let t = self.target(id).await?;
        self.sync_target(&t).await
    }

    async fn sync_target(&self, t: &Target) -> Result<(Synced, Value), DomainError> {
        let now = now_rfc3339();
        let (outcome, updated, aliases) = match kms::read_state(&t.client, &t.loc.key_id).await {
            Ok(st) => {
                let r = record::refreshed(&t.loc.record, &st, &now);
                let changed = r["aws_param"] != t.loc.record["aws_param"]
                    || r["gone"] != t.loc.record["gone"];
                (
                    if changed {
                        Synced::Changed
                    } else {
                        Synced::Unchanged
                    },
                    r,
                    st.aliases,
                )
            }
            Err(e) => match gone_reason(&e) {
                Some(why) => (
                    Synced::Gone(why.clone()),
                    record::gone(&t.loc.record, &why, &now),
                    Vec::new(),
                ),
                None => return Err(e.into()),
            },
        };
        let (rid, stored) = (t.loc.id.clone(), updated.clone());
        let aliases = if matches!(outcome, Synced::Gone(_)) {
            record_aliases(&t.loc.record)
        } else {
            aliases
        };
        self.uploader
            .store
            .call(move |c| aws_keys::update(c, &rid, &stored, &aliases, &now).map(|_| ()))
            .await?;
        Ok((outcome, updated))
    }

    /// Runs one action on the key `id` and answers its record.
    pub async fn act(&self, id: &str, action: Action, who: &Who) -> Result<Value, DomainError> {
        let t = self.target(id).await?;
        if matches!(action, Action::Refresh) {
            let (outcome, record) = self.sync_target(&t).await?;
            let detail = match &outcome {
                Synced::Gone(why) => json!({"gone": why}),
                Synced::Changed => json!({"changed": true}),
                Synced::Unchanged => json!({"changed": false}),
            };
            self.record_history(&t.loc, "refresh", who, "success", READ_CALLS, &detail)
                .await;
            return Ok(record);
        }
        let name = action.name();
        let refuse = |why: String| DomainError::Conflict(format!("{name}: {why}"));
        if t.loc.record["gone"] == true {
            let why = t.loc.record["gone_reason"]
                .as_str()
                .unwrap_or("it is gone")
                .to_owned();
            let e = refuse(format!(
                "the key is marked gone ({why}); refresh it if it is back"
            ));
            self.record_failure(&t.loc, name, who, "refused", &[], &e)
                .await;
            return Err(e);
        }
        let state = t.loc.record["aws_param"]["KeyState"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(why) = action.refused_in(&state) {
            let e = refuse(why);
            self.record_failure(&t.loc, name, who, "refused", &[], &e)
                .await;
            return Err(e);
        }
        let leased = t.loc.record["lease"].is_object();
        if let (true, Action::ImportMaterial(im)) = (leased, &action)
            && im.expiry == Expiry::Never
        {
            let e = DomainError::Invalid(
                "valid_to: this key's material is leased (it must expire); give key_expiration and valid_to".into(),
            );
            self.record_failure(&t.loc, name, who, "refused", &[], &e)
                .await;
            return Err(e);
        }
        let mut calls: Vec<&'static str> = Vec::new();
        let mut detail = json!({});
        let done = self
            .perform(&t, &action, &mut calls, &mut detail)
            .await
            .map_err(|e| match e {
                DomainError::Kms(k) if k.code.as_deref() == Some("KMSInvalidStateException") => {
                    DomainError::Conflict(format!(
                        "{name}: AWS refuses it in the key's state: {}",
                        k.message
                    ))
                }
                other => other,
            });
        if let Err(e) = done {
            let outcome = if calls.is_empty() {
                "refused"
            } else {
                "failed"
            };
            self.record_failure(&t.loc, name, who, outcome, &calls, &e)
                .await;
            // AWS may have changed the key before failing: keep the record true.
            if !calls.is_empty() {
                let _ = self.sync_target(&t).await;
            }
            return Err(e);
        }
        calls.extend_from_slice(READ_CALLS);
        let mut record = self.read_back(&t, name, who, &calls, &detail).await?;
        // An operator's import into a leased key moves the lease to its ValidTo (the bridge's
        // own renewals keep the lease themselves).
        if let (true, Action::ImportMaterial(im)) = (leased, &action)
            && let Expiry::At(v) = im.expiry
            && !who.actor.contains("(lease renewal)")
        {
            let l = super::lease::renewed(
                &t.loc.record["lease"],
                time::OffsetDateTime::now_utc(),
                v,
                false,
            );
            record["lease"] = l.clone();
            self.patch_record(id, move |r| r["lease"] = l).await;
        }
        Ok(record)
    }

    /// The AWS calls of one action (the read-back excepted).
    async fn perform(
        &self,
        t: &Target,
        action: &Action,
        calls: &mut Vec<&'static str>,
        detail: &mut Value,
    ) -> Result<(), DomainError> {
        let (c, key) = (&t.client, t.loc.key_id.as_str());
        match action {
            Action::Refresh => {}
            Action::Enable => {
                calls.push("EnableKey");
                aws::enable(c, key).await?;
            }
            Action::Disable => {
                calls.push("DisableKey");
                aws::disable(c, key).await?;
            }
            Action::ScheduleDeletion { days } => {
                *detail = json!({"days": days});
                calls.push("ScheduleKeyDeletion");
                aws::schedule_deletion(c, key, *days).await?;
            }
            Action::CancelDeletion => {
                calls.push("CancelKeyDeletion");
                aws::cancel_deletion(c, key).await?;
            }
            Action::DeleteMaterial => {
                calls.push("DeleteImportedKeyMaterial");
                aws::delete_material(c, key).await?;
            }
            Action::ImportMaterial(im) => {
                self.import_material(t, im, calls, detail).await?;
            }
            Action::AddAlias(a) => {
                *detail = json!({"alias": a.as_str()});
                calls.push("DescribeKey");
                if kms::alias_exists(c, a.as_str()).await? {
                    return Err(DomainError::Conflict(format!(
                        "alias: {} already exists in {}",
                        a.as_str(),
                        t.loc.region
                    )));
                }
                calls.push("CreateAlias");
                kms::create_alias(c, a.as_str(), key).await?;
            }
            Action::DeleteAlias(a) => {
                *detail = json!({"alias": a.as_str()});
                if !record_aliases(&t.loc.record)
                    .iter()
                    .any(|x| x == a.as_str())
                {
                    return Err(DomainError::NotFound(format!(
                        "alias: {} is not an alias of this key",
                        a.as_str()
                    )));
                }
                calls.push("DeleteAlias");
                aws::delete_alias(c, a.as_str()).await?;
            }
            Action::AddTags(tags) => {
                let pairs: Vec<(String, String)> = tags
                    .iter()
                    .map(|t| (t.key.clone(), t.value.clone()))
                    .collect();
                let present = t.loc.record["aws_param"]["Tags"]
                    .as_array()
                    .map(|a| a.len())
                    .unwrap_or(0);
                // AWS counts the bridge's upload tag among its 50.
                if present + pairs.len() + 1 > 50 {
                    return Err(DomainError::Invalid(format!(
                        "tags: the key has {present} tags; with {} more it would pass AWS's 50",
                        pairs.len()
                    )));
                }
                *detail = json!({"tags": pairs.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>()});
                calls.push("TagResource");
                aws::tag(c, key, &pairs).await?;
            }
            Action::RemoveTags(keys) => {
                *detail = json!({"tags": keys});
                calls.push("UntagResource");
                aws::untag(c, key, keys).await?;
            }
            Action::UpdateDescription(d) => {
                *detail = json!({"description": d});
                calls.push("UpdateKeyDescription");
                aws::update_description(c, key, d).await?;
            }
            Action::Policy {
                choice,
                bypass_lockout,
            } => {
                let (spec, usage) = spec_of(&t.loc.record)?;
                let (text, template) = self
                    .uploader
                    .policy_text(choice, &t.conn, spec, usage)
                    .await?;
                *detail = json!({"policytemplate": template});
                calls.push("PutKeyPolicy");
                aws::put_policy(c, key, &text, *bypass_lockout).await?;
                if let Some(tpl) = template {
                    calls.push("TagResource");
                    aws::tag(c, key, &[(TEMPLATE_TAG.to_owned(), tpl)]).await?;
                }
            }
        }
        Ok(())
    }

    /// The material of the upload again (or of a named source proven to hold the same),
    /// wrapped in the token under a fresh GetParametersForImport.
    async fn import_material(
        &self,
        t: &Target,
        im: &ImportMaterial,
        calls: &mut Vec<&'static str>,
        detail: &mut Value,
    ) -> Result<(), DomainError> {
        let r = &t.loc.record;
        let upload = &r["upload"];
        let recorded_tier = recorded_tier(r);
        let tier = im.tier.or(recorded_tier).ok_or_else(|| {
            DomainError::Invalid(
                "source_key_tier: the record does not say where the key came from; name it".into(),
            )
        })?;
        let source_id = match (&im.source, upload["source_key_identifier"].as_str()) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) if Some(tier) == recorded_tier => s.to_owned(),
            _ => {
                return Err(DomainError::Invalid(
                    "source_key_identifier: is required when the tier differs from the upload's"
                        .into(),
                ));
            }
        };
        let want: Fingerprint = serde_json::from_value(upload["fingerprint"].clone()).map_err(|_| {
            DomainError::Unprocessable(
                "the record keeps no fingerprint of the key's material (its source key could not be fingerprinted at upload), so no import can be proven to carry the same material".into(),
            )
        })?;
        let (spec, _) = spec_of(r)?;
        let source = self.uploader.tiers.resolve(tier, &source_id, spec).await?;
        let got = source.fingerprint(spec).await?;
        *detail = json!({
            "source_key_tier": tier.as_str(),
            "source_key_identifier": source_id,
            "fingerprint": got.method,
        });
        if got != want {
            return Err(DomainError::Conflict(format!(
                "import-material: {} `{source_id}` does not hold this key's material (its fingerprint differs); AWS accepts only the same material again",
                tier.as_str()
            )));
        }
        let wrap = AwsWrap::choose(&source)?;
        let valid_to = match im.expiry {
            Expiry::Never => None,
            Expiry::At(at) => Some(at),
        };
        let import = kms::MaterialImport {
            valid_to,
            description: im
                .description
                .as_deref()
                .filter(|_| spec == KeySpec::SymmetricDefault),
            new_material: false,
        };
        calls.extend_from_slice(&["GetParametersForImport", "ImportKeyMaterial"]);
        material::wrap_and_import(
            &t.client,
            &t.loc.key_id,
            &source,
            spec,
            wrap,
            &t.conn.cfg.wrapping_key_spec,
            &import,
            Some(&want),
            &Untracked,
        )
        .await
        .map_err(|(_, e)| e)?;
        if let Some(at) = valid_to {
            detail["ValidTo"] = Value::String(crate::store::format_time(at));
        }
        detail["wrapping_algorithm"] = Value::String(wrap.algorithm().as_str().to_owned());
        Ok(())
    }

    /// Reads the key back, stores the record and the history entry together.
    async fn read_back(
        &self,
        t: &Target,
        action: &'static str,
        who: &Who,
        calls: &[&'static str],
        detail: &Value,
    ) -> Result<Value, DomainError> {
        let now = now_rfc3339();
        let st = kms::read_state(&t.client, &t.loc.key_id).await?;
        let mut r = record::refreshed(&t.loc.record, &st, &now);
        r["updatedAt"] = Value::String(now.clone());
        if let Some(v) = detail.get("ValidTo")
            && r["aws_param"]["ValidTo"].is_null()
            && r["aws_param"]["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
        {
            r["aws_param"]["ValidTo"] = v.clone();
        }
        if action == "import-material"
            && r["aws_param"]["ExpirationModel"] != "KEY_MATERIAL_EXPIRES"
        {
            r["aws_param"]["ValidTo"] = Value::Null;
        }
        let e = entry(&t.loc, action, who, "success", calls, detail);
        self.save(
            vec![Save {
                id: t.loc.id.clone(),
                record: r.clone(),
                aliases: st.aliases.clone(),
            }],
            vec![e],
            now,
        )
        .await?;
        tracing::info!(key_id = %t.loc.key_id, action, "key action done");
        Ok(r)
    }

    pub(crate) async fn record_failure(
        &self,
        loc: &Located,
        action: &'static str,
        who: &Who,
        outcome: &'static str,
        calls: &[&'static str],
        e: &DomainError,
    ) {
        let detail = json!({"error": e.public_message()});
        self.record_history(loc, action, who, outcome, calls, &detail)
            .await;
    }

    pub(crate) async fn record_history(
        &self,
        loc: &Located,
        action: &'static str,
        who: &Who,
        outcome: &'static str,
        calls: &[&'static str],
        detail: &Value,
    ) {
        let e = entry(loc, action, who, outcome, calls, detail);
        if let Err(e) = self
            .uploader
            .store
            .call(move |c| history::append(c, &e))
            .await
        {
            tracing::error!(error = %e, "could not append to the key's history");
        }
    }

    /// `DELETE /api/v1/cckm/aws/keys/{id}`: forgets the record; the AWS key is untouched.
    pub async fn forget(&self, id: &str, who: &Who) -> Result<Value, DomainError> {
        let loc = self.locate(id).await?;
        let rid = loc.id.clone();
        let e = entry(&loc, "delete-record", who, "success", &[], &json!({}));
        self.uploader
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                aws_keys::delete(&tx, &rid)?;
                history::append(&tx, &e)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(json!({
            "id": loc.id,
            "message": format!(
                "the record of AWS key {} is removed from this bridge; the key itself is untouched in AWS \
                 (its state, material, aliases and policy are as they were)",
                loc.key_id
            ),
        }))
    }

    /// A key's history, oldest first. The history of a removed record stays readable by its id.
    pub async fn history(&self, id: &str, skip: u32, limit: u32) -> Result<Value, DomainError> {
        let key = id.to_owned();
        let rid = self
            .uploader
            .store
            .call(move |c| aws_keys::locate(c, &key).map(|l| l.map(|l| l.id)))
            .await?
            .unwrap_or_else(|| id.to_owned());
        let (total, rows) = self
            .uploader
            .store
            .call(move |c| history::of(c, &rid, skip, limit))
            .await?;
        if total == 0 {
            return Err(DomainError::NotFound(format!("no AWS key `{id}`")));
        }
        Ok(json!({"skip": skip, "limit": limit, "total": total, "resources": rows}))
    }
}

/// The calls of the read-back after an action.
pub(crate) const READ_CALLS: &[&str] = &[
    "DescribeKey",
    "GetKeyPolicy",
    "ListAliases",
    "ListResourceTags",
    "GetKeyRotationStatus",
];

pub(crate) fn record_aliases(r: &Value) -> Vec<String> {
    record::str_list(&r["aws_param"]["Alias"])
}

/// The tier the record's material came from (the upload's, or the current one after a
/// rotation of material).
pub(crate) fn recorded_tier(r: &Value) -> Option<SourceTier> {
    r["upload"]["source_key_tier"]
        .as_str()
        .or(r["key_source"].as_str())
        .and_then(SourceTier::parse)
}

pub(crate) fn spec_of(r: &Value) -> Result<(KeySpec, KeyUsage), DomainError> {
    let p = &r["aws_param"];
    let spec = p["CustomerMasterKeySpec"]
        .as_str()
        .and_then(KeySpec::parse)
        .ok_or_else(|| DomainError::Internal("the record has no key spec".into()))?;
    let usage = p["KeyUsage"]
        .as_str()
        .and_then(KeyUsage::parse)
        .ok_or_else(|| DomainError::Internal("the record has no key usage".into()))?;
    Ok((spec, usage))
}
