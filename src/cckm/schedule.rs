//! Scheduled rotation: a rotation period kept in the key's record
//! (`POST /api/v1/cckm/aws/keys/{id}/enable-rotation-job`, `.../disable-rotation-job`). When it
//! comes due the bridge rotates the key itself (see `background::schedules`), generating the
//! new material in the bridge token, so only `local` keys can be scheduled.

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::manage::{KeyManager, Who, entry, spec_of};
use super::request::Expiry;
use super::rotate::{Mode, Rotate};
use super::spec::{KeySpec, SourceTier};
use crate::error::DomainError;
use crate::store::aws_keys;
use crate::store::{format_time, now_rfc3339};
use crate::unused_fields;
use crate::vocabulary::{Unused, Vocabulary};

/// Where the schedule's next due time sits in the record (what the scheduler queries).
pub const DUE_PATH: &[&str] = &["rotation_schedule", "next_unix"];

/// How long claimed scheduled work is held before it is due again (its bridge died doing it).
const CLAIM_HOLD_SECS: i64 = 600;

/// The body of `enable-rotation-job`. CipherTrust's `job_config_id` names a scheduler of its
/// own; the bridge keeps the period itself (`rotation_period_days`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableRotationJobBody {
    pub rotation_period_days: Option<u64>,
    /// Test configurations only (`schedules.allow_seconds`).
    pub rotation_period_secs: Option<u64>,
    pub auto_rotate_disable_encrypt: Option<bool>,
    pub auto_rotate_key_source: Option<String>,
    pub rotate_material: Option<bool>,
    pub schedule_deletion_days: Option<i64>,
    #[serde(default)]
    pub job_config_id: Unused,
    #[serde(default)]
    pub auto_rotate_domain_id: Unused,
    #[serde(default)]
    pub auto_rotate_partition_id: Unused,
}

impl Vocabulary for EnableRotationJobBody {
    fn unused(&self) -> Vec<String> {
        unused_fields!(self, ""; job_config_id, auto_rotate_domain_id, auto_rotate_partition_id)
    }
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct RotationSchedule {
    pub period_secs: u64,
    pub mode: Mode,
    pub disable_encrypt: bool,
    pub schedule_deletion_days: Option<i32>,
}

impl EnableRotationJobBody {
    pub fn validate(self, allow_seconds: bool) -> Result<RotationSchedule, String> {
        let period_secs = match (self.rotation_period_days, self.rotation_period_secs) {
            (Some(_), Some(_)) => {
                return Err("rotation_period_days and rotation_period_secs: one of them".into());
            }
            (Some(d), None) if (1..=3650).contains(&d) => d * 86_400,
            (Some(d), None) => {
                return Err(format!("rotation_period_days: {d} is not 1 to 3650"));
            }
            (None, Some(s)) if allow_seconds && s >= 1 => s,
            (None, Some(_)) if allow_seconds => {
                return Err("rotation_period_secs: at least 1".into());
            }
            (None, Some(_)) => {
                return Err("rotation_period_secs: only in test configurations (schedules.allow_seconds); use rotation_period_days".into());
            }
            (None, None) => {
                return Err("rotation_period_days: is required (the bridge keeps the schedule itself; it has no CipherTrust scheduler for job_config_id to name)".into());
            }
        };
        match self.auto_rotate_key_source.as_deref() {
            None | Some("") | Some("local") => {}
            Some(other) => {
                return Err(format!(
                    "auto_rotate_key_source: `{other}`: a scheduled rotation generates the new material in the bridge token, so only local is possible"
                ));
            }
        }
        let schedule_deletion_days = super::rotate::deletion_days(self.schedule_deletion_days)?;
        let mode = if self.rotate_material.unwrap_or(false) {
            if self.auto_rotate_disable_encrypt == Some(true) || schedule_deletion_days.is_some() {
                return Err("rotate_material: keeps the key; auto_rotate_disable_encrypt and schedule_deletion_days are for a rotation to a new key".into());
            }
            Mode::Material
        } else {
            Mode::NewKey
        };
        Ok(RotationSchedule {
            period_secs,
            mode,
            disable_encrypt: self.auto_rotate_disable_encrypt.unwrap_or(false),
            schedule_deletion_days,
        })
    }
}

/// The record's `rotation_schedule` for a schedule whose next rotation is at `next`.
fn schedule_json(s: &Value, next: OffsetDateTime, failures: u64, last_error: Value) -> Value {
    let mut out = s.clone();
    out["next_rotation_at"] = json!(format_time(next));
    out["next_unix"] = json!(next.unix_timestamp());
    out["failures"] = json!(failures);
    out["last_error"] = last_error;
    out
}

impl KeyManager {
    /// `enable-rotation-job` (`Some`) and `disable-rotation-job` (`None`): record-only, no AWS
    /// call.
    pub async fn set_rotation_schedule(
        &self,
        id: &str,
        schedule: Option<RotationSchedule>,
        who: &Who,
    ) -> Result<Value, DomainError> {
        let t = self.target(id).await?;
        let r = &t.loc.record;
        let name = if schedule.is_some() {
            "enable-rotation-job"
        } else {
            "disable-rotation-job"
        };
        let refuse = |why: String| DomainError::Conflict(format!("{name}: {why}"));
        if let Some(s) = &schedule {
            if r["gone"] == true {
                return Err(refuse("the key is marked gone".into()));
            }
            if let Some(to) = r["rotated_to"]["id"].as_str() {
                return Err(refuse(format!(
                    "the key was rotated to {to}; schedule that one"
                )));
            }
            if super::manage::recorded_tier(r) != Some(SourceTier::Local) {
                return Err(DomainError::Unprocessable(format!(
                    "{name}: a scheduled rotation generates the new material as a vault key, so only keys uploaded from the local tier can be scheduled; rotate this one with POST .../rotate and a named source"
                )));
            }
            if s.mode == Mode::Material && spec_of(r)?.0 != KeySpec::SymmetricDefault {
                return Err(DomainError::Unprocessable(format!(
                    "{name}: rotate_material is for SYMMETRIC_DEFAULT keys only"
                )));
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut rec = r.clone();
        let detail = match &schedule {
            Some(s) => {
                let base = json!({
                    "period_secs": s.period_secs,
                    "rotate_material": s.mode == Mode::Material,
                    "disable_encrypt": s.disable_encrypt,
                    "schedule_deletion_days": s.schedule_deletion_days,
                });
                let next = now + time::Duration::seconds(s.period_secs as i64);
                rec["rotation_schedule"] = schedule_json(&base, next, 0, Value::Null);
                base
            }
            None => {
                rec["rotation_schedule"] = Value::Null;
                json!({})
            }
        };
        let stamp = now_rfc3339();
        rec["updatedAt"] = json!(stamp);
        let e = entry(&t.loc, name, who, "success", &[], &detail);
        let save = super::manage::Save {
            id: t.loc.id.clone(),
            record: rec.clone(),
            aliases: super::manage::record_aliases(r),
        };
        self.save(vec![save], vec![e], stamp).await?;
        Ok(rec)
    }

    /// Keys whose scheduled rotation is due.
    pub async fn due_rotations(&self) -> Result<Vec<String>, DomainError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .uploader
            .store
            .call(move |c| aws_keys::due(c, DUE_PATH, now))
            .await?)
    }

    /// Runs the rotation of `id` its schedule asks for, and carries the schedule over: to the
    /// new key after a rotation to a new key, forward on the same key after a material one.
    /// A failure is counted and retried later (backing off, never later than one period).
    pub async fn run_scheduled_rotation(&self, id: &str, retry_base_secs: u64) {
        if !self.claim_due(id, DUE_PATH).await {
            return;
        }
        let Ok(t) = self.target(id).await else { return };
        let s = t.loc.record["rotation_schedule"].clone();
        let period = s["period_secs"].as_u64().unwrap_or(86_400).max(1);
        let mode = if s["rotate_material"] == true {
            Mode::Material
        } else {
            Mode::NewKey
        };
        let rotate = Rotate {
            tier: Some(SourceTier::Local),
            source: None,
            description: None,
            disable_encrypt: s["disable_encrypt"] == true,
            retain_alias: mode == Mode::NewKey,
            expiry: Expiry::Never,
            schedule_deletion_days: s["schedule_deletion_days"].as_i64().map(|d| d as i32),
            mode,
        };
        let who = Who::bridge("scheduled rotation");
        let now = OffsetDateTime::now_utc();
        let next = now + time::Duration::seconds(period as i64);
        match self.rotate(id, rotate, &who).await {
            Ok(new) => {
                let carried = schedule_json(&s, next, 0, Value::Null);
                let new_id = new["id"].as_str().unwrap_or(id).to_owned();
                if new_id != id {
                    self.patch_record(id, |r| r["rotation_schedule"] = Value::Null)
                        .await;
                }
                self.patch_record(&new_id, move |r| r["rotation_schedule"] = carried)
                    .await;
                tracing::info!(key = %id, new = %new_id, "scheduled rotation done");
            }
            Err(e) => {
                let failures = s["failures"].as_u64().unwrap_or(0) + 1;
                let backoff = retry_base_secs
                    .saturating_mul(1u64 << failures.min(16))
                    .min(period);
                let retry = now + time::Duration::seconds(backoff as i64);
                let why = e.public_message();
                tracing::warn!(key = %id, failures, retry_in_secs = backoff, error = %why, "a scheduled rotation failed; it is retried");
                let updated = schedule_json(&s, retry, failures, json!(why));
                self.patch_record(id, move |r| r["rotation_schedule"] = updated)
                    .await;
            }
        }
    }

    /// Takes the due work at `path` of record `id` for this bridge (another bridge of the
    /// store may have taken or done it since the due list was read): `false` if it is not due
    /// any more. A bridge that dies doing it leaves it due again after `CLAIM_HOLD_SECS`.
    pub(crate) async fn claim_due(&self, id: &str, path: &'static [&'static str]) -> bool {
        let key = id.to_owned();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        match self
            .uploader
            .store
            .call(move |c| aws_keys::claim_due(c, &key, path, now, now + CLAIM_HOLD_SECS))
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(key = %id, error = %e, "could not claim scheduled work; it stays due");
                false
            }
        }
    }

    /// Changes a stored record in place (fields the bridge keeps; no AWS call).
    pub(crate) async fn patch_record(&self, id: &str, f: impl FnOnce(&mut Value) + Send + 'static) {
        let key = id.to_owned();
        let done = self
            .uploader
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                if let Some(loc) = aws_keys::locate(&tx, &key)? {
                    let mut r = loc.record;
                    f(&mut r);
                    let aliases = super::manage::record_aliases(&r);
                    aws_keys::update(&tx, &loc.id, &r, &aliases, &now_rfc3339())?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = done {
            tracing::error!(key = %id, error = %e, "could not update the record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_days_unless_a_test_allows_seconds() {
        let days = EnableRotationJobBody {
            rotation_period_days: Some(90),
            ..Default::default()
        };
        assert_eq!(days.validate(false).unwrap().period_secs, 90 * 86_400);
        let secs = || EnableRotationJobBody {
            rotation_period_secs: Some(2),
            ..Default::default()
        };
        assert!(secs().validate(false).is_err());
        assert_eq!(secs().validate(true).unwrap().period_secs, 2);
        assert!(EnableRotationJobBody::default().validate(true).is_err());
        let hsm = EnableRotationJobBody {
            rotation_period_days: Some(30),
            auto_rotate_key_source: Some("hsm-luna".into()),
            ..Default::default()
        };
        assert!(hsm.validate(false).is_err());
    }
}
