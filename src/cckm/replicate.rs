//! Multi-Region replicas (`POST /api/v1/cckm/aws/keys/{id}/replicate-key`). AWS never copies
//! imported material to a replica: `ReplicateKey` makes it `PendingImport`, so the bridge
//! imports the same material into it, wrapped in the token under the replica Region's own
//! `GetParametersForImport`, after proving the source still holds the primary's material. The
//! replica gets its own record, linked to the primary's; every key action works on it.

use serde::Deserialize;
use serde_json::{Value, json};

use super::manage::{KeyManager, Target, Who, entry, spec_of};
use super::material::{self, AwsWrap, Untracked};
use super::record;
use super::request::{PolicyLists, TagBody, UploadKeyBody, choose_policy, validate_tags};
use crate::error::DomainError;
use crate::kms;
use crate::pkcs11::fingerprint::Fingerprint;
use crate::store::aws_keys;
use crate::store::{history, now_rfc3339};
use crate::vocabulary::Vocabulary;

/// The replica's own settings, in AWS's spelling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct ReplicaParamBody {
    pub Description: Option<String>,
    pub Policy: Option<Value>,
    pub Tags: Option<Vec<TagBody>>,
    pub BypassPolicyLockoutSafetyCheck: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateBody {
    pub replica_region: Option<String>,
    pub aws_param: Option<ReplicaParamBody>,
    pub key_admins: Option<Vec<String>>,
    pub key_admins_roles: Option<Vec<String>>,
    pub key_users: Option<Vec<String>>,
    pub key_users_roles: Option<Vec<String>>,
    pub external_accounts: Option<Vec<String>>,
    pub policytemplate: Option<String>,
}

impl Vocabulary for ReplicateBody {}

/// A validated replication request.
#[derive(Debug, Clone)]
pub struct Replicate {
    pub region: String,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    pub policy: Option<super::request::PolicyChoice>,
    pub bypass_lockout: bool,
}

impl ReplicateBody {
    pub fn validate(self) -> Result<Replicate, String> {
        let region = self
            .replica_region
            .filter(|r| !r.is_empty())
            .ok_or("replica_region: is required")?;
        if region.len() > 32
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "replica_region: `{region}` is not an AWS Region name"
            ));
        }
        let p = self.aws_param.unwrap_or_default();
        if let Some(d) = &p.Description
            && d.chars().count() > 8192
        {
            return Err("aws_param.Description: at most 8192 characters".into());
        }
        let tags = validate_tags(p.Tags.unwrap_or_default(), "aws_param.Tags", 49)?
            .into_iter()
            .map(|t| (t.key, t.value))
            .collect();
        let lists = PolicyLists {
            key_admins: self.key_admins.unwrap_or_default(),
            key_admins_roles: self.key_admins_roles.unwrap_or_default(),
            key_users: self.key_users.unwrap_or_default(),
            key_users_roles: self.key_users_roles.unwrap_or_default(),
            external_accounts: self.external_accounts.unwrap_or_default(),
        };
        let policy = choose_policy(p.Policy, self.policytemplate, lists, "aws_param.Policy")?;
        Ok(Replicate {
            region,
            description: p.Description,
            tags,
            policy,
            bypass_lockout: p.BypassPolicyLockoutSafetyCheck.unwrap_or(false),
        })
    }
}

impl KeyManager {
    /// Replicates the key `id` into another Region of its kms connection; answers the
    /// replica's record.
    pub async fn replicate(
        &self,
        id: &str,
        req: Replicate,
        who: &Who,
    ) -> Result<Value, DomainError> {
        let t = self.target(id).await?;
        match self.replicate_target(&t, &req, who).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.record_failure(&t.loc, "replicate-key", who, "failed", &[], &e)
                    .await;
                Err(e)
            }
        }
    }

    async fn replicate_target(
        &self,
        t: &Target,
        req: &Replicate,
        who: &Who,
    ) -> Result<Value, DomainError> {
        let r = &t.loc.record;
        let refuse = |why: String| DomainError::Conflict(format!("replicate-key: {why}"));
        if r["gone"] == true {
            return Err(refuse("the key is marked gone".into()));
        }
        if r["aws_param"]["MultiRegion"] != true {
            return Err(refuse(
                "the key is not a multi-Region key (upload it with aws_param.MultiRegion: true)"
                    .into(),
            ));
        }
        if r["replica_of"].is_object() {
            return Err(refuse("the key is a replica; replicate its primary".into()));
        }
        if req.region == t.loc.region {
            return Err(DomainError::Invalid(format!(
                "replica_region: {} is the primary key's own Region",
                req.region
            )));
        }
        if !t.conn.has_region(&req.region) {
            return Err(DomainError::Invalid(format!(
                "replica_region: `{}` is not a region of kms `{}` ({})",
                req.region,
                t.conn.cfg.name,
                t.conn.cfg.regions.join(", ")
            )));
        }
        if r["replicas"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["region"] == req.region.as_str()))
        {
            return Err(refuse(format!(
                "the key already has a replica in {}",
                req.region
            )));
        }
        match r["aws_param"]["KeyState"].as_str().unwrap_or_default() {
            "Enabled" | "Disabled" => {}
            s => return Err(refuse(format!("the key is {s}"))),
        }
        let (spec, usage) = spec_of(r)?;

        // The material must still be the primary's before anything is made in AWS.
        let upload = &r["upload"];
        let tier = super::manage::recorded_tier(r).ok_or_else(|| {
            DomainError::Unprocessable("the record does not say where the key came from".into())
        })?;
        let source_id = upload["source_key_identifier"].as_str().ok_or_else(|| {
            DomainError::Unprocessable("the record does not name the key's source".into())
        })?;
        let want: Fingerprint = serde_json::from_value(upload["fingerprint"].clone()).map_err(|_| {
            DomainError::Unprocessable(
                "the record keeps no fingerprint of the key's material, so the replica's material cannot be proven to be the same".into(),
            )
        })?;
        let source = self.uploader.tiers.resolve(tier, source_id, spec).await?;
        if source.fingerprint(spec).await? != want {
            return Err(DomainError::Conflict(format!(
                "replicate-key: {} `{source_id}` no longer holds this key's material",
                tier.as_str()
            )));
        }
        let wrap = AwsWrap::choose(&source)?;
        let policy = match &req.policy {
            Some(choice) => Some(
                self.uploader
                    .policy_text(choice, &t.conn, spec, usage)
                    .await?
                    .0,
            ),
            None => None,
        };

        let mut calls = vec!["ReplicateKey"];
        let replica = kms::actions::replicate_key(
            &t.client,
            &t.loc.key_id,
            &req.region,
            req.description.as_deref(),
            policy.as_deref(),
            &req.tags,
            req.bypass_lockout,
        )
        .await?;
        let arn = replica.arn().unwrap_or_default().to_owned();
        tracing::info!(key_id = %t.loc.key_id, region = %req.region, "replica made; importing its material");
        let rc = self.uploader.kms.client(&t.conn, &req.region).await;
        let valid_to = r["aws_param"]["ValidTo"]
            .as_str()
            .filter(|_| r["aws_param"]["ExpirationModel"] == "KEY_MATERIAL_EXPIRES")
            .and_then(|v| {
                time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
            });
        let import = kms::MaterialImport {
            valid_to,
            description: None,
            new_material: false,
        };
        calls.extend(["GetParametersForImport", "ImportKeyMaterial"]);
        let imported = material::wrap_and_import(
            &rc,
            &arn,
            &source,
            spec,
            wrap,
            &t.conn.cfg.wrapping_key_spec,
            &import,
            Some(&want),
            &Untracked,
        )
        .await;
        let st = match imported {
            Ok(_) => kms::read_state(&rc, &arn).await.map_err(DomainError::from),
            Err((_, e)) => Err(e),
        };
        let st = match st {
            Ok(st) => st,
            Err(e) => {
                let fate = match kms::schedule_deletion(&rc, &arn).await {
                    Ok(_) => "it was scheduled for deletion".to_owned(),
                    Err(se) => format!(
                        "it could not be scheduled for deletion ({se}); schedule it yourself"
                    ),
                };
                return Err(DomainError::HalfMade {
                    message: format!(
                        "replicate-key: the replica {arn} was made but its material could not be imported: {}; {fate}",
                        e.public_message()
                    ),
                    cause: Box::new(e),
                });
            }
        };
        calls.extend_from_slice(super::manage::READ_CALLS);
        self.store_replica(t, &req.region, &arn, st, who, &calls)
            .await
    }

    async fn store_replica(
        &self,
        t: &Target,
        region: &str,
        arn: &str,
        st: kms::KeyState,
        who: &Who,
        calls: &[&'static str],
    ) -> Result<Value, DomainError> {
        let now = now_rfc3339();
        let id = uuid::Uuid::new_v4().to_string();
        let primary = &t.loc.record;
        let mut rec = record::refreshed(primary, &st, &now);
        for k in [
            "rotated_to",
            "rotated_from",
            "rotated_at",
            "rotation_status",
            "rotation_schedule",
            "replicas",
            "pending_material",
            "material_rotations",
            "key_rotations",
        ] {
            rec[k] = Value::Null;
        }
        rec["id"] = json!(id);
        rec["uri"] = json!(format!("kylo:kylo:cckm:aws-key:{id}"));
        rec["region"] = json!(region);
        rec["createdAt"] = json!(now);
        rec["updatedAt"] = json!(now);
        rec["replica_of"] = json!({"id": t.loc.id, "key_id": t.loc.key_id, "region": t.loc.region});
        let link = json!({"id": id, "key_id": t.loc.key_id, "region": region, "arn": arn});
        let mut prim = primary.clone();
        let mut replicas = prim["replicas"].as_array().cloned().unwrap_or_default();
        replicas.push(link.clone());
        prim["replicas"] = Value::Array(replicas);
        prim["updatedAt"] = json!(now);
        let replica_loc = aws_keys::Located {
            id: id.clone(),
            key_id: t.loc.key_id.clone(),
            kms_id: t.loc.kms_id.clone(),
            region: region.to_owned(),
            record: rec.clone(),
        };
        let e_primary = entry(
            &t.loc,
            "replicate-key",
            who,
            "success",
            calls,
            &json!({"replica": link}),
        );
        let e_replica = entry(
            &replica_loc,
            "replicate-key",
            who,
            "success",
            calls,
            &json!({"replica_of": rec["replica_of"]}),
        );
        let (kid, kms_id, reg, arn_s, aliases) = (
            t.loc.key_id.clone(),
            t.loc.kms_id.clone(),
            region.to_owned(),
            arn.to_owned(),
            st.aliases.clone(),
        );
        let (pid, prim_aliases, stored) = (
            t.loc.id.clone(),
            super::manage::record_aliases(primary),
            rec.clone(),
        );
        self.uploader
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                aws_keys::insert(
                    &tx,
                    &aws_keys::AwsKeyRow {
                        id: &id,
                        key_id: &kid,
                        arn: &arn_s,
                        kms_id: &kms_id,
                        region: &reg,
                        aliases: &aliases,
                        record: &stored,
                        created_at: &now,
                    },
                )?;
                aws_keys::update(&tx, &pid, &prim, &prim_aliases, &now)?;
                history::append(&tx, &e_primary)?;
                history::append(&tx, &e_replica)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        tracing::info!(key_id = %t.loc.key_id, region, "replica complete");
        Ok(rec)
    }
}

impl KeyManager {
    /// An upload with `replica_regions`: the primary, then a replica in each Region, each with
    /// the material imported through the token. If any step fails, every key this request
    /// made is scheduled for deletion, and the answer names them.
    pub async fn upload_with_replicas(
        &self,
        body: UploadKeyBody,
        regions: Vec<String>,
        who: &Who,
    ) -> Result<Value, DomainError> {
        // Everything that can be checked is checked before anything is made.
        if body.aws_param.as_ref().and_then(|p| p.MultiRegion) != Some(true) {
            return Err(DomainError::Invalid(
                "replica_regions: needs a multi-Region key (aws_param.MultiRegion: true)".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let conn = body
            .kms
            .as_deref()
            .and_then(|k| self.uploader.kms.find(k))
            .cloned();
        for r in &regions {
            if !seen.insert(r.clone()) {
                return Err(DomainError::Invalid(format!(
                    "replica_regions: {r} is named twice"
                )));
            }
            if body.region.as_deref() == Some(r.as_str()) {
                return Err(DomainError::Invalid(format!(
                    "replica_regions: {r} is the primary key's own Region"
                )));
            }
            if let Some(c) = &conn
                && !c.has_region(r)
            {
                return Err(DomainError::Invalid(format!(
                    "replica_regions: `{r}` is not a region of kms `{}` ({})",
                    c.cfg.name,
                    c.cfg.regions.join(", ")
                )));
            }
        }
        if regions.len() > 16 {
            return Err(DomainError::Invalid("replica_regions: at most 16".into()));
        }
        let primary = self
            .uploader
            .upload(body, &who.request_id, &who.actor)
            .await?;
        let pid = primary["id"].as_str().unwrap_or_default().to_owned();
        let tags: Vec<(String, String)> = primary["aws_param"]["Tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some((
                    t["TagKey"].as_str()?.to_owned(),
                    t["TagValue"].as_str().unwrap_or_default().to_owned(),
                ))
            })
            .collect();
        let policy =
            super::request::PolicyChoice::Explicit(primary["aws_param"]["Policy"].to_string());
        let mut made: Vec<(String, String)> = Vec::new();
        for region in regions {
            let req = Replicate {
                region: region.clone(),
                description: primary["aws_param"]["Description"]
                    .as_str()
                    .map(str::to_owned),
                tags: tags.clone(),
                policy: Some(policy.clone()),
                bypass_lockout: false,
            };
            match self.replicate(&pid, req, who).await {
                Ok(r) => made.push((
                    r["id"].as_str().unwrap_or_default().to_owned(),
                    r["aws_param"]["Arn"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )),
                Err(e) => {
                    let mut scheduled = Vec::new();
                    let mut left = Vec::new();
                    let primary_arn = primary["aws_param"]["Arn"].as_str().unwrap_or_default();
                    // Replicas first: AWS deletes a primary only after its replicas.
                    let all: Vec<(String, String)> = made
                        .iter()
                        .cloned()
                        .chain(std::iter::once((pid.clone(), primary_arn.to_owned())))
                        .collect();
                    for (id, arn) in all {
                        match self
                            .act(
                                &id,
                                super::actions::Action::ScheduleDeletion { days: 7 },
                                who,
                            )
                            .await
                        {
                            Ok(_) => scheduled.push(arn),
                            Err(se) => left.push(format!("{arn} ({})", se.public_message())),
                        }
                    }
                    let mut message = format!(
                        "upload with replica_regions failed in {region}: {}. Scheduled for deletion: {}",
                        e.public_message(),
                        scheduled.join(", ")
                    );
                    if !left.is_empty() {
                        message.push_str(&format!(
                            "; not scheduled (do it yourself): {}",
                            left.join(", ")
                        ));
                    }
                    return Err(DomainError::HalfMade {
                        message,
                        cause: Box::new(e),
                    });
                }
            }
        }
        let (_, record) = self.sync(&pid).await?;
        Ok(record)
    }
}
