//! Rotation of an uploaded key as CipherTrust does it for BYOK keys
//! (`POST /api/v1/cckm/aws/keys/{id}/rotate`): a new AWS key with new material, uploaded by the
//! normal flow (wrapped in the token), the old key's aliases moved to it, then the old key
//! optionally kept under a dated alias, barred from encrypting, or scheduled for deletion.
//! A failure at any step puts the aliases back, undoes what was done to the old key, and
//! schedules the new key for deletion: the alias never points at a half-made key.

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::actions::{Action, expiry_of};
use super::manage::{KeyManager, Save, Target, Who, entry, recorded_tier, spec_of};
use super::material::{self, AwsWrap, Untracked};
use super::record;
use super::request::{AwsParamBody, Expiry, RESERVED_TAGS, TagBody, UploadKeyBody};
use super::spec::{KeySpec, KeyUsage, SourceTier};
use crate::error::DomainError;
use crate::kms::{self, actions as aws};
use crate::store::aws_keys;
use crate::store::now_rfc3339;
use crate::vocabulary::Vocabulary;

/// The body of `rotate`, as CipherTrust documents it, plus `schedule_deletion_days` (a bridge
/// extension: the old key scheduled for deletion once the rotation is done).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    pub source_key_tier: Option<String>,
    #[serde(alias = "source_key_identifier")]
    pub source_key_id: Option<String>,
    pub description: Option<String>,
    pub disable_encrypt: Option<bool>,
    pub retain_alias: Option<bool>,
    #[serde(alias = "KeyExpiration")]
    pub key_expiration: Option<bool>,
    #[serde(alias = "ValidTo")]
    pub valid_to: Option<String>,
    pub schedule_deletion_days: Option<i64>,
    /// On-demand rotation of the key's imported material (AWS's `NEW_KEY_MATERIAL` import and
    /// `RotateKeyOnDemand`) instead of a new key: the key id and aliases stay.
    pub rotate_material: Option<bool>,
}

impl Vocabulary for RotateBody {}

/// A validated rotation request.
#[derive(Debug, Clone)]
pub struct Rotate {
    pub tier: Option<SourceTier>,
    pub source: Option<String>,
    pub description: Option<String>,
    pub disable_encrypt: bool,
    pub retain_alias: bool,
    pub expiry: Expiry,
    pub schedule_deletion_days: Option<i32>,
    pub mode: Mode,
}

/// What a rotation makes: a new AWS key, or new material in the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    NewKey,
    Material,
}

impl RotateBody {
    pub fn validate(self, now: OffsetDateTime) -> Result<Rotate, String> {
        let tier = match self.source_key_tier.as_deref() {
            None | Some("") => None,
            Some(t) => Some(SourceTier::parse(t).ok_or_else(|| {
                format!("source_key_tier: `{t}` is not one of local, dsm, hsm-luna, external-cm")
            })?),
        };
        let source = self.source_key_id.filter(|s| !s.trim().is_empty());
        if source.as_ref().is_some_and(|s| s.len() > 1024) {
            return Err("source_key_id: at most 1024 characters".into());
        }
        if let Some(d) = &self.description
            && d.chars().count() > 8192
        {
            return Err("description: at most 8192 characters".into());
        }
        let schedule_deletion_days = deletion_days(self.schedule_deletion_days)?;
        let mode = if self.rotate_material.unwrap_or(false) {
            if self.retain_alias == Some(true)
                || self.disable_encrypt == Some(true)
                || schedule_deletion_days.is_some()
                || self.description.is_some()
            {
                return Err("rotate_material: keeps the key, its aliases and description; retain_alias, disable_encrypt, schedule_deletion_days and description are for a rotation to a new key".into());
            }
            Mode::Material
        } else {
            Mode::NewKey
        };
        Ok(Rotate {
            mode,
            tier,
            source,
            description: self.description,
            disable_encrypt: self.disable_encrypt.unwrap_or(false),
            retain_alias: self.retain_alias.unwrap_or(false),
            expiry: expiry_of(self.key_expiration, self.valid_to.as_deref(), now)?,
            schedule_deletion_days,
        })
    }
}

/// `schedule_deletion_days`: AWS's waiting period, 7 to 30 days.
pub fn deletion_days(days: Option<i64>) -> Result<Option<i32>, String> {
    match days {
        None => Ok(None),
        Some(d) if (7..=30).contains(&d) => Ok(Some(d as i32)),
        Some(d) => Err(format!(
            "schedule_deletion_days: {d} is not a waiting period of 7 to 30 days"
        )),
    }
}

/// The vault algorithm (and size or curve) that makes a new key of `spec`.
fn vault_shape(spec: KeySpec) -> (&'static str, Option<u32>, Option<&'static str>) {
    match spec {
        KeySpec::SymmetricDefault => ("aes", Some(256), None),
        KeySpec::Hmac224 => ("hmac-sha224", None, None),
        KeySpec::Hmac256 => ("hmac-sha256", None, None),
        KeySpec::Hmac384 => ("hmac-sha384", None, None),
        KeySpec::Hmac512 => ("hmac-sha512", None, None),
        KeySpec::Rsa2048 => ("rsa", Some(2048), None),
        KeySpec::Rsa3072 => ("rsa", Some(3072), None),
        KeySpec::Rsa4096 => ("rsa", Some(4096), None),
        KeySpec::EccNistP256 => ("ec", None, Some("prime256v1")),
        KeySpec::EccNistP384 => ("ec", None, Some("secp384r1")),
        KeySpec::EccNistP521 => ("ec", None, Some("secp521r1")),
        KeySpec::EccSecgP256k1 => ("ec", None, Some("secp256k1")),
    }
}

/// What the old key may no longer do once `disable_encrypt` is asked: produce new
/// ciphertexts, signatures or MACs. Decrypting and verifying what exists stays allowed.
fn barred_actions(usage: KeyUsage) -> Vec<&'static str> {
    match usage {
        KeyUsage::EncryptDecrypt => vec!["kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncryptTo"],
        KeyUsage::SignVerify => vec!["kms:Sign"],
        KeyUsage::GenerateVerifyMac => vec!["kms:GenerateMac"],
    }
}

pub const NO_ENCRYPT_SID: &str = "hsm-bridge-rotated-no-encrypt";

/// The old key's policy with a statement denying `barred` to everyone.
fn policy_without_encrypt(policy: &str, barred: &[&str]) -> Result<String, DomainError> {
    let mut doc: Value = serde_json::from_str(policy)
        .map_err(|e| DomainError::Upstream(format!("the old key's policy is not JSON: {e}")))?;
    let statements = doc
        .get_mut("Statement")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| {
            DomainError::Upstream("the old key's policy has no Statement list".into())
        })?;
    statements.retain(|s| s["Sid"] != NO_ENCRYPT_SID);
    statements.push(json!({
        "Sid": NO_ENCRYPT_SID,
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": barred,
        "Resource": "*",
    }));
    Ok(doc.to_string())
}

/// What was done to AWS during a rotation, undone in reverse order when a later step fails.
enum Undo {
    /// The alias was moved to the new key: move it back.
    AliasBack(String),
    /// The dated alias was made on the old key: delete it.
    DeleteAlias(String),
    /// The old key's policy was replaced: put this one back.
    Policy(String),
}

/// The dated alias that keeps the old key findable: `alias/NAME-rotated-YYYYMMDDHHMMSS`.
fn dated(alias: &str, at: OffsetDateTime) -> String {
    format!(
        "{alias}-rotated-{:04}{:02}{:02}{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

impl KeyManager {
    /// Rotates the key `id`; answers the new key's record.
    pub async fn rotate(&self, id: &str, r: Rotate, who: &Who) -> Result<Value, DomainError> {
        let t = self.target(id).await?;
        match self.rotate_target(&t, &r, who).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.record_failure(&t.loc, "rotate", who, "failed", &[], &e)
                    .await;
                Err(e)
            }
        }
    }

    async fn rotate_target(&self, t: &Target, r: &Rotate, who: &Who) -> Result<Value, DomainError> {
        let old = &t.loc.record;
        let refuse = |why: String| DomainError::Conflict(format!("rotate: {why}"));
        if old["gone"] == true {
            return Err(refuse(
                "the key is marked gone; refresh it if it is back".into(),
            ));
        }
        if let Some(to) = old["rotated_to"]["id"].as_str() {
            return Err(refuse(format!("the key was already rotated to {to}")));
        }
        match old["aws_param"]["KeyState"].as_str().unwrap_or_default() {
            "Enabled" | "Disabled" => {}
            s => return Err(refuse(format!("the key is {s}"))),
        }
        let (spec, usage) = spec_of(old)?;
        if r.mode == Mode::Material && spec != KeySpec::SymmetricDefault {
            return Err(DomainError::Unprocessable(format!(
                "rotate_material: AWS rotates imported material on demand for SYMMETRIC_DEFAULT keys only; this key is {}; rotate it to a new key instead",
                spec.as_str()
            )));
        }
        let tier = r.tier.or(recorded_tier(old)).unwrap_or(SourceTier::Local);

        // The old key as AWS has it now: its aliases, policy and tags go to the new key.
        let st = kms::read_state(&t.client, &t.loc.key_id).await?;

        let (source_id, generated) = match (&r.source, tier) {
            (Some(s), _) => (s.clone(), None),
            (None, SourceTier::Local) => {
                let made = self.new_vault_key(spec, old).await?;
                (made.clone(), Some(made))
            }
            (None, other) => {
                return Err(DomainError::Invalid(format!(
                    "source_key_id: is required to rotate from the {} tier (only local keys are generated)",
                    other.as_str()
                )));
            }
        };
        let result = match r.mode {
            Mode::NewKey => {
                self.rotate_with(t, r, who, &st, spec, usage, tier, &source_id)
                    .await
            }
            Mode::Material => {
                self.rotate_material(t, r, who, spec, tier, &source_id)
                    .await
            }
        };
        if let (Err(_), Some(v)) = (&result, &generated)
            && let Err(e) = self.vault.delete(v).await
        {
            tracing::warn!(vault_key = %v, error = %e, "could not delete the vault key made for a failed rotation");
        }
        result
    }

    async fn new_vault_key(&self, spec: KeySpec, old: &Value) -> Result<String, DomainError> {
        let (algorithm, size, curve) = vault_shape(spec);
        let base = old["local_key_name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("rotated");
        let stamp = OffsetDateTime::now_utc().unix_timestamp();
        let name: String = format!("{base}-rotated-{stamp}")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(200)
            .collect();
        let body = crate::vault::bodies::CreateKeyBody {
            name: Some(name),
            algorithm: Some(algorithm.to_owned()),
            size,
            curveid: curve.map(str::to_owned),
            ..Default::default()
        };
        let made = self.vault.create(body).await?;
        made["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| DomainError::Internal("the new vault key has no id".into()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn rotate_with(
        &self,
        t: &Target,
        r: &Rotate,
        who: &Who,
        st: &kms::KeyState,
        spec: KeySpec,
        usage: KeyUsage,
        tier: SourceTier,
        source_id: &str,
    ) -> Result<Value, DomainError> {
        // New material, or it is no rotation.
        drop(self.new_material(t, spec, tier, source_id).await?);

        let tags: Vec<TagBody> = st
            .tags
            .iter()
            .filter(|(k, _)| !RESERVED_TAGS.contains(&k.as_str()))
            .map(|(k, v)| TagBody {
                TagKey: k.clone(),
                TagValue: v.clone(),
            })
            .collect();
        let policy: Value = serde_json::from_str(&st.policy)
            .map_err(|e| DomainError::Upstream(format!("the old key's policy is not JSON: {e}")))?;
        let (key_expiration, valid_to) = match r.expiry {
            Expiry::Never => (None, None),
            Expiry::At(at) => (Some(true), Some(crate::store::format_time(at))),
        };
        let body = UploadKeyBody {
            source_key_tier: Some(tier.as_str().to_owned()),
            source_key_identifier: Some(source_id.to_owned()),
            kms: Some(t.loc.kms_id.clone()),
            region: Some(t.loc.region.clone()),
            key_expiration,
            valid_to,
            aws_param: Some(AwsParamBody {
                CustomerMasterKeySpec: Some(spec.as_str().to_owned()),
                KeyUsage: Some(usage.as_str().to_owned()),
                Description: r
                    .description
                    .clone()
                    .or_else(|| st.metadata.description().map(str::to_owned)),
                MultiRegion: st.metadata.multi_region(),
                Policy: Some(policy),
                Tags: (!tags.is_empty()).then_some(tags),
                ..Default::default()
            }),
            ..Default::default()
        };
        let new = self
            .uploader
            .upload(body, &who.request_id, &who.actor)
            .await?;
        let new_id = new["id"].as_str().unwrap_or_default().to_owned();
        let new_key = new["aws_param"]["KeyID"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        tracing::info!(old = %t.loc.key_id, new = %new_key, "rotation: the new key is uploaded");

        let mut undo = Vec::new();
        let mut calls: Vec<&'static str> = Vec::new();
        let at = OffsetDateTime::now_utc();
        match self
            .finish_rotation(t, r, st, usage, &new_key, at, &mut undo, &mut calls)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                let undone = self.undo(t, &new_key, undo).await;
                let scheduled = self
                    .act(&new_id, Action::ScheduleDeletion { days: 7 }, who)
                    .await;
                let fate = match &scheduled {
                    Ok(_) => format!("the new key {new_key} was scheduled for deletion"),
                    Err(se) => {
                        let _ = aws::disable(&self.client_of(t).await, &new_key).await;
                        format!(
                            "the new key {new_key} could not be scheduled for deletion ({}); it was disabled, schedule it yourself",
                            se.public_message()
                        )
                    }
                };
                let aliases = if undone {
                    "the aliases are back on the old key"
                } else {
                    "some aliases could not be moved back (see the key's history)"
                };
                return Err(DomainError::HalfMade {
                    message: format!("rotate failed: {}. {aliases}; {fate}.", e.public_message()),
                    cause: Box::new(e),
                });
            }
        }
        self.link(t, &new_id, &new_key, at, who, &calls).await
    }

    /// New material into the same key: imported as `NEW_KEY_MATERIAL` (wrapped in the token
    /// like any import), then `RotateKeyOnDemand` makes it current.
    async fn rotate_material(
        &self,
        t: &Target,
        r: &Rotate,
        who: &Who,
        spec: KeySpec,
        tier: SourceTier,
        source_id: &str,
    ) -> Result<Value, DomainError> {
        let old = &t.loc.record;
        let (source, fingerprint) = self.new_material(t, spec, tier, source_id).await?;
        let wrap = AwsWrap::choose(&source)?;
        let import = kms::MaterialImport {
            valid_to: match r.expiry {
                Expiry::Never => None,
                Expiry::At(at) => Some(at),
            },
            description: None,
            new_material: true,
        };
        // Material already imported by an earlier try whose RotateKeyOnDemand failed is
        // pending in AWS: it is not imported again, only rotated to.
        let pending = serde_json::to_value(&fingerprint).ok().as_ref()
            == Some(&old["pending_material"]["fingerprint"]);
        let mut calls = Vec::new();
        if !pending {
            calls.extend(["GetParametersForImport", "ImportKeyMaterial"]);
            material::wrap_and_import(
                &t.client,
                &t.loc.key_id,
                &source,
                spec,
                wrap,
                &t.conn.cfg.wrapping_key_spec,
                &import,
                Some(&fingerprint),
                &Untracked,
            )
            .await
            .map_err(|(_, e)| e)?;
        }
        let now = now_rfc3339();
        let material = json!({
            "fingerprint": fingerprint,
            "kcv": fingerprint.kcv(),
            "source_key_tier": tier.as_str(),
            "source_key_identifier": source_id,
            "imported_at": now,
        });
        calls.push("RotateKeyOnDemand");
        if let Err(e) = aws::rotate_on_demand(&t.client, &t.loc.key_id).await {
            // AWS keeps the new material pending: the record says so, and a retry with the
            // same source finishes the rotation.
            let mut rec = old.clone();
            rec["pending_material"] = material;
            rec["rotation_status"] = json!("material_pending");
            let (rid, aliases) = (t.loc.id.clone(), super::manage::record_aliases(old));
            let at = now.clone();
            self.uploader
                .store
                .call(move |c| aws_keys::update(c, &rid, &rec, &aliases, &at).map(|_| ()))
                .await?;
            let e = DomainError::from(e);
            self.record_failure(&t.loc, "rotate", who, "failed", &calls, &e)
                .await;
            return Err(DomainError::HalfMade {
                message: format!(
                    "rotate: the new material was imported (NEW_KEY_MATERIAL) but RotateKeyOnDemand failed: {}. The key keeps its current material; the new one is pending (see pending_material); rotate again with the same source to finish",
                    e.public_message()
                ),
                cause: Box::new(e),
            });
        }
        calls.push("ListKeyRotations");
        let rotations = match aws::list_rotations(&t.client, &t.loc.key_id).await {
            Ok(v) => Value::Array(v),
            Err(e) => {
                tracing::warn!(key_id = %t.loc.key_id, error = %e, "ListKeyRotations failed; the record shows the rotations at the next refresh");
                Value::Null
            }
        };
        calls.extend_from_slice(super::manage::READ_CALLS);
        let st = kms::read_state(&t.client, &t.loc.key_id).await?;
        let mut rec = record::refreshed(old, &st, &now);
        let mut history_of_material = rec["material_rotations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        history_of_material.push(json!({
            "rotated_at": now,
            "previous": {
                "fingerprint": old["upload"]["fingerprint"],
                "source_key_tier": old["upload"]["source_key_tier"],
                "source_key_identifier": old["upload"]["source_key_identifier"],
            },
            "current": material,
        }));
        rec["material_rotations"] = Value::Array(history_of_material);
        rec["upload"]["fingerprint"] = json!(fingerprint);
        rec["upload"]["kcv"] = json!(fingerprint.kcv());
        rec["upload"]["source_key_tier"] = json!(tier.as_str());
        rec["upload"]["source_key_identifier"] = json!(source_id);
        rec["local_key_id"] = json!(source.local_key_id);
        rec["local_key_name"] = json!(source.local_key_name);
        // Outside aws_param, which every refresh rebuilds from DescribeKey.
        rec["key_rotations"] = rotations;
        rec["pending_material"] = Value::Null;
        rec["rotation_status"] = json!("material_rotated");
        rec["rotated_at"] = json!(now);
        rec["updatedAt"] = json!(now);
        let e = entry(
            &t.loc,
            "rotate",
            who,
            "success",
            &calls,
            &json!({"rotate_material": true, "source_key_tier": tier.as_str(), "source_key_identifier": source_id}),
        );
        let save = Save {
            id: t.loc.id.clone(),
            record: rec.clone(),
            aliases: st.aliases,
        };
        self.save(vec![save], vec![e], now).await?;
        tracing::info!(key_id = %t.loc.key_id, "material rotated on demand");
        Ok(rec)
    }

    /// The named source, refused when it holds the key's current material (by fingerprint).
    async fn new_material(
        &self,
        t: &Target,
        spec: KeySpec,
        tier: SourceTier,
        source_id: &str,
    ) -> Result<
        (
            crate::tiers::ResolvedSource,
            crate::pkcs11::fingerprint::Fingerprint,
        ),
        DomainError,
    > {
        let source = self.uploader.tiers.resolve(tier, source_id, spec).await?;
        let fingerprint = source.fingerprint(spec).await?;
        if serde_json::to_value(&fingerprint).ok().as_ref()
            == Some(&t.loc.record["upload"]["fingerprint"])
        {
            return Err(DomainError::Conflict(format!(
                "rotate: {} `{source_id}` holds the same material as the key being rotated; a rotation needs new material",
                tier.as_str()
            )));
        }
        Ok((source, fingerprint))
    }

    async fn client_of(&self, t: &Target) -> aws_sdk_kms::Client {
        self.uploader.kms.client(&t.conn, &t.loc.region).await
    }

    /// The steps after the new key is whole: aliases over, then what the old key becomes.
    #[allow(clippy::too_many_arguments)]
    async fn finish_rotation(
        &self,
        t: &Target,
        r: &Rotate,
        st: &kms::KeyState,
        usage: KeyUsage,
        new_key: &str,
        at: OffsetDateTime,
        undo: &mut Vec<Undo>,
        calls: &mut Vec<&'static str>,
    ) -> Result<(), DomainError> {
        let c = &t.client;
        for alias in &st.aliases {
            calls.push("UpdateAlias");
            aws::update_alias(c, alias, new_key).await?;
            undo.push(Undo::AliasBack(alias.clone()));
        }
        if r.retain_alias {
            for alias in &st.aliases {
                let kept = dated(alias, at);
                calls.push("CreateAlias");
                kms::create_alias(c, &kept, &t.loc.key_id).await?;
                undo.push(Undo::DeleteAlias(kept));
            }
        }
        if r.disable_encrypt {
            let text = policy_without_encrypt(&st.policy, &barred_actions(usage))?;
            calls.push("PutKeyPolicy");
            aws::put_policy(c, &t.loc.key_id, &text, false).await?;
            undo.push(Undo::Policy(st.policy.clone()));
        }
        if let Some(days) = r.schedule_deletion_days {
            calls.push("ScheduleKeyDeletion");
            aws::schedule_deletion(c, &t.loc.key_id, days).await?;
        }
        Ok(())
    }

    /// Undoes `steps` in reverse; false if any could not be undone (each is logged).
    async fn undo(&self, t: &Target, new_key: &str, steps: Vec<Undo>) -> bool {
        let c = &t.client;
        let mut all = true;
        for step in steps.into_iter().rev() {
            let done = match &step {
                Undo::AliasBack(a) => aws::update_alias(c, a, &t.loc.key_id).await,
                Undo::DeleteAlias(a) => aws::delete_alias(c, a).await,
                Undo::Policy(p) => aws::put_policy(c, &t.loc.key_id, p, false).await,
            };
            if let Err(e) = done {
                all = false;
                let what = match &step {
                    Undo::AliasBack(a) => format!("moving {a} back from {new_key}"),
                    Undo::DeleteAlias(a) => format!("deleting {a}"),
                    Undo::Policy(_) => "restoring the old key's policy".to_owned(),
                };
                tracing::error!(key_id = %t.loc.key_id, error = %e, "rotation: {what} failed");
            }
        }
        all
    }

    /// Reads both keys back and stores them linked, with a history entry each, together.
    async fn link(
        &self,
        t: &Target,
        new_id: &str,
        new_key: &str,
        at: OffsetDateTime,
        who: &Who,
        calls: &[&'static str],
    ) -> Result<Value, DomainError> {
        let now = now_rfc3339();
        let at = crate::store::format_time(at);
        let old_state = kms::read_state(&t.client, &t.loc.key_id).await?;
        let new_t = self.target(new_id).await?;
        let new_state = kms::read_state(&new_t.client, new_key).await?;
        let mut old_r = record::refreshed(&t.loc.record, &old_state, &now);
        old_r["rotated_to"] = json!({"id": new_id, "key_id": new_key});
        old_r["rotated_at"] = json!(at);
        old_r["rotation_status"] = json!("rotated");
        old_r["updatedAt"] = json!(now);
        let mut new_r = record::refreshed(&new_t.loc.record, &new_state, &now);
        new_r["rotated_from"] = json!({"id": t.loc.id, "key_id": t.loc.key_id});
        new_r["rotated_at"] = json!(at);
        new_r["rotation_status"] = json!("current");
        new_r["updatedAt"] = json!(now);
        let detail = json!({"rotated_to": {"id": new_id, "key_id": new_key}});
        let old_entry = entry(&t.loc, "rotate", who, "success", calls, &detail);
        let new_entry = entry(
            &new_t.loc,
            "rotate",
            who,
            "success",
            &[],
            &json!({"rotated_from": {"id": t.loc.id, "key_id": t.loc.key_id}}),
        );
        let records = vec![
            Save {
                id: t.loc.id.clone(),
                record: old_r,
                aliases: old_state.aliases,
            },
            Save {
                id: new_id.to_owned(),
                record: new_r.clone(),
                aliases: new_state.aliases,
            },
        ];
        self.save(records, vec![old_entry, new_entry], now).await?;
        tracing::info!(old = %t.loc.key_id, new = %new_key, "rotation complete");
        Ok(new_r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dated_alias_keeps_the_name_and_says_when() {
        let at = time::macros::datetime!(2026-12-02 03:04:05 UTC);
        assert_eq!(dated("alias/app", at), "alias/app-rotated-20261202030405");
    }

    #[test]
    fn disable_encrypt_denies_new_ciphertexts_only() {
        let p = r#"{"Version":"2012-10-17","Statement":[{"Sid":"root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:root"},"Action":"kms:*","Resource":"*"}]}"#;
        let out: Value = serde_json::from_str(
            &policy_without_encrypt(p, &barred_actions(KeyUsage::EncryptDecrypt)).unwrap(),
        )
        .unwrap();
        let st = out["Statement"].as_array().unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[1]["Effect"], "Deny");
        assert!(!st[1]["Action"].to_string().contains("Decrypt"));
        // Applying it twice does not stack statements.
        let again = policy_without_encrypt(&out.to_string(), &["kms:Encrypt"]).unwrap();
        assert_eq!(again.matches(NO_ENCRYPT_SID).count(), 1);
    }

    #[test]
    fn rotate_bodies_are_validated() {
        let now = OffsetDateTime::now_utc();
        let ok = RotateBody {
            retain_alias: Some(true),
            schedule_deletion_days: Some(7),
            ..Default::default()
        }
        .validate(now)
        .unwrap();
        assert!(ok.retain_alias && ok.schedule_deletion_days == Some(7));
        for bad in [
            RotateBody {
                schedule_deletion_days: Some(3),
                ..Default::default()
            },
            RotateBody {
                source_key_tier: Some("cloud".into()),
                ..Default::default()
            },
            RotateBody {
                key_expiration: Some(true),
                ..Default::default()
            },
        ] {
            assert!(bad.validate(now).is_err());
        }
    }
}
