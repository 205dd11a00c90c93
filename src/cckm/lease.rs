//! Material leases (a bridge extension, `lease_days` on an upload or a kms connection): the
//! material is imported to expire (`KEY_MATERIAL_EXPIRES`, `ValidTo` = now + lease) and the
//! bridge imports the same material again, fingerprint-checked and wrapped in the token,
//! before it expires. If the bridge, its token or its operator stops renewing, AWS disables
//! the key by itself when the material expires: the HSM stays the authority over whether AWS
//! may use the key.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::actions::{Action, ImportMaterial};
use super::manage::{KeyManager, Who, entry};
use super::request::{Expiry, Lease};
use crate::error::DomainError;
use crate::store::{aws_keys, format_time, history};

/// Where the lease's next renewal sits in the record (what the scheduler queries).
pub const DUE_PATH: &[&str] = &["lease", "next_unix"];

/// The record's `lease` after material good until `expires` was imported at `at`.
pub fn fresh(lease: Lease, at: OffsetDateTime, expires: OffsetDateTime) -> Value {
    let next = lease.renew_at(at);
    json!({
        "lease_secs": lease.secs,
        "expires_at": format_time(expires),
        "expires_unix": expires.unix_timestamp(),
        "last_renewal": null,
        "renewals": 0,
        "next_renewal_at": format_time(next),
        "next_unix": next.unix_timestamp(),
        "failures": 0,
        "last_error": null,
    })
}

/// The lease after a successful import of material good until `expires`, at `at`.
pub fn renewed(
    old: &Value,
    at: OffsetDateTime,
    expires: OffsetDateTime,
    by_renewal: bool,
) -> Value {
    let secs = old["lease_secs"].as_u64().unwrap_or(86_400);
    let mut l = fresh(
        Lease {
            secs,
            in_seconds: false,
        },
        at,
        expires,
    );
    let renewals = old["renewals"].as_u64().unwrap_or(0);
    l["renewals"] = json!(if by_renewal { renewals + 1 } else { renewals });
    l["last_renewal"] = if by_renewal {
        json!(format_time(at))
    } else {
        old["last_renewal"].clone()
    };
    l
}

/// Parses `expiring_within` as CipherTrust-style durations: `7d`, `12h`, `30m`, `45s`, or a
/// plain number of days.
pub fn parse_within(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c),
        _ => (v, 'd'),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("expiring_within: `{v}` is not a duration like 7d, 12h, 30m or 45s")
    })?;
    let per = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => {
            return Err(format!(
                "expiring_within: `{v}` is not a duration like 7d, 12h, 30m or 45s"
            ));
        }
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("expiring_within: `{v}` is too long"))
}

impl KeyManager {
    /// Keys whose lease is due for renewal.
    pub async fn due_renewals(&self) -> Result<Vec<String>, DomainError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .uploader
            .store
            .call(move |c| aws_keys::due(c, DUE_PATH, now))
            .await?)
    }

    /// Renews the lease of `id`: the same material again, good for another lease. A failure
    /// is retried with a growing delay that always leaves time before the material expires;
    /// each failure is logged as a warning and entered in the key's history.
    pub async fn renew_lease(&self, id: &str, retry_base_secs: u64) {
        if !self.claim_due(id, DUE_PATH).await {
            return;
        }
        let Ok(t) = self.target(id).await else { return };
        let r = &t.loc.record;
        let lease = r["lease"].clone();
        let secs = lease["lease_secs"].as_u64().unwrap_or(86_400).max(1);
        let state = r["aws_param"]["KeyState"].as_str().unwrap_or_default();
        if r["gone"] == true || state == "PendingDeletion" {
            tracing::info!(key = %id, state, "the key is gone or pending deletion: its lease is no longer renewed");
            let mut stopped = lease.clone();
            stopped["next_unix"] = Value::Null;
            stopped["next_renewal_at"] = Value::Null;
            self.patch_record(id, move |r| r["lease"] = stopped).await;
            return;
        }
        let now = OffsetDateTime::now_utc();
        let valid_to = now + time::Duration::seconds(secs as i64);
        let who = Who::bridge("lease renewal");
        let action = Action::ImportMaterial(ImportMaterial {
            tier: None,
            source: None,
            expiry: Expiry::At(valid_to),
            description: None,
        });
        match self.act(id, action, &who).await {
            Ok(_) => {
                let l = renewed(&lease, now, valid_to, true);
                self.patch_record(id, move |r| r["lease"] = l).await;
                tracing::info!(key = %id, valid_to = %format_time(valid_to), "material lease renewed");
            }
            Err(e) => {
                let failures = lease["failures"].as_u64().unwrap_or(0) + 1;
                let expires = lease["expires_unix"]
                    .as_i64()
                    .unwrap_or(now.unix_timestamp());
                let left = (expires - now.unix_timestamp()).max(0) as u64;
                let backoff = retry_base_secs
                    .saturating_mul(1u64 << failures.min(16))
                    .min((left / 4).max(retry_base_secs.max(1)));
                let retry = now + time::Duration::seconds(backoff as i64);
                let why = e.public_message();
                tracing::warn!(
                    key = %id,
                    failures,
                    expires_at = lease["expires_at"].as_str().unwrap_or_default(),
                    seconds_left = left,
                    error = %why,
                    "a material lease could not be renewed; AWS disables the key when its material expires unless a renewal succeeds"
                );
                let mut l = lease.clone();
                l["failures"] = json!(failures);
                l["last_error"] = json!(why);
                l["next_unix"] = json!(retry.unix_timestamp());
                l["next_renewal_at"] = json!(format_time(retry));
                let detail = json!({
                    "error": why,
                    "failures": failures,
                    "expires_at": lease["expires_at"],
                    "seconds_left": left,
                    "next_try": format_time(retry),
                });
                let e = entry(&t.loc, "lease-renewal", &who, "failed", &[], &detail);
                if let Err(err) = self
                    .uploader
                    .store
                    .call(move |c| history::append(c, &e))
                    .await
                {
                    tracing::error!(error = %err, "could not append to the key's history");
                }
                self.patch_record(id, move |r| r["lease"] = l).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_ciphertrust_writes_them() {
        assert_eq!(parse_within("7d").unwrap(), 7 * 86_400);
        assert_eq!(parse_within("12h").unwrap(), 12 * 3_600);
        assert_eq!(parse_within("30m").unwrap(), 1_800);
        assert_eq!(parse_within("45s").unwrap(), 45);
        assert_eq!(parse_within("3").unwrap(), 3 * 86_400);
        assert!(parse_within("soon").is_err());
        assert!(parse_within("7w").is_err());
    }

    #[test]
    fn a_lease_is_renewed_two_thirds_in() {
        let at = time::macros::datetime!(2026-12-02 00:00:00 UTC);
        let l = fresh(
            Lease {
                secs: 90,
                in_seconds: true,
            },
            at,
            at + time::Duration::seconds(90),
        );
        assert_eq!(l["next_unix"], at.unix_timestamp() + 60);
        assert_eq!(l["expires_unix"], at.unix_timestamp() + 90);
    }
}
