//! The AWS key record: CipherTrust Manager's answer shape, with values read back from AWS.

use aws_sdk_kms::primitives::DateTime;
use aws_sdk_kms::primitives::DateTimeFormat;
use aws_sdk_kms::types::KeyMetadata;
use serde_json::{Value, json};

use super::request::{PolicyChoice, UPLOAD_TAG, UploadRequest};
use crate::kms::{KeyState, KmsConn};
use crate::pkcs11::fingerprint::Fingerprint;

pub fn aws_time(t: Option<&DateTime>) -> Value {
    t.and_then(|d| d.fmt(DateTimeFormat::DateTime).ok())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// The strings of a JSON list (nothing for anything else).
pub fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn strs<T: AsRef<str>>(v: &[T]) -> Value {
    Value::Array(
        v.iter()
            .map(|s| Value::String(s.as_ref().to_owned()))
            .collect(),
    )
}

fn names<T: AsRef<str>>(v: &[T]) -> Value {
    Value::Array(
        v.iter()
            .map(|a| Value::String(a.as_ref().to_owned()))
            .collect(),
    )
}

/// The `aws_param` section, from what AWS says about the key: every field of CipherTrust's
/// record, `null` or `[]` where AWS has nothing to say. The bridge's own upload tag is not
/// among the user's `Tags`.
pub fn aws_param(state: &KeyState) -> Value {
    let m: &KeyMetadata = &state.metadata;
    let mut aliases = state.aliases.clone();
    aliases.sort();
    let tags: Vec<Value> = state
        .tags
        .iter()
        .filter(|(k, _)| k != UPLOAD_TAG)
        .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
        .collect();
    // The policy is a JSON document; shown as an object, as CipherTrust shows it.
    let policy = serde_json::from_str::<Value>(&state.policy)
        .unwrap_or_else(|_| Value::String(state.policy.clone()));
    let algs = |v: Vec<&str>| names(&v);
    json!({
        "AWSAccountId": m.aws_account_id(),
        "Arn": m.arn(),
        "CreationDate": aws_time(m.creation_date()),
        "CustomerMasterKeySpec": m.key_spec().map(|s| s.as_str()),
        "KeySpec": m.key_spec().map(|s| s.as_str()),
        "Description": m.description().unwrap_or(""),
        "Enabled": m.enabled(),
        "ExpirationModel": m.expiration_model().map(|e| e.as_str()),
        "KeyID": m.key_id(),
        "KeyManager": m.key_manager().map(|k| k.as_str()),
        "KeyRotationEnabled": state.rotation_enabled,
        "KeyState": m.key_state().map(|s| s.as_str()),
        "KeyUsage": m.key_usage().map(|u| u.as_str()),
        "MultiRegion": m.multi_region().unwrap_or(false),
        "Origin": m.origin().map(|o| o.as_str()),
        "ValidTo": aws_time(m.valid_to()),
        "DeletionDate": aws_time(m.deletion_date()),
        "PendingDeletionWindowInDays": m.pending_deletion_window_in_days(),
        "Alias": strs(&aliases),
        "Policy": policy,
        "Tags": tags,
        "EncryptionAlgorithms": algs(m.encryption_algorithms().iter().map(|a| a.as_str()).collect()),
        "SigningAlgorithms": algs(m.signing_algorithms().iter().map(|a| a.as_str()).collect()),
        "MacAlgorithms": algs(m.mac_algorithms().iter().map(|a| a.as_str()).collect()),
        "MultiRegionConfiguration": m.multi_region_configuration().map(|mr| json!({
            "MultiRegionKeyType": mr.multi_region_key_type().map(|t| t.as_str()),
            "PrimaryKey": mr.primary_key().map(|k| json!({"Arn": k.arn(), "Region": k.region()})),
            "ReplicaKeys": mr.replica_keys().iter().map(|k| json!({"Arn": k.arn(), "Region": k.region()})).collect::<Vec<_>>(),
        })),
    })
}

/// The record brought up to date with what AWS said at `now`. An expiry AWS does not echo
/// (some KMS implementations keep `ValidTo` to themselves) is kept from the last import while
/// the material still expires.
pub fn refreshed(record: &Value, state: &KeyState, now: &str) -> Value {
    let mut r = record.clone();
    let mut p = aws_param(state);
    if p["ValidTo"].is_null() && p["ExpirationModel"] == "KEY_MATERIAL_EXPIRES" {
        p["ValidTo"] = record["aws_param"]["ValidTo"].clone();
    }
    if r["aws_param"] != p {
        r["updatedAt"] = Value::String(now.to_owned());
    }
    r["deletion_date"] = p["DeletionDate"].clone();
    r["aws_param"] = p;
    r["synced_at"] = Value::String(now.to_owned());
    if r["gone"] != Value::Bool(false) {
        r["updatedAt"] = Value::String(now.to_owned());
    }
    r["gone"] = Value::Bool(false);
    r["gone_reason"] = Value::Null;
    r
}

/// The record of a key AWS no longer has (or no longer lets the bridge see), with the reason.
pub fn gone(record: &Value, reason: &str, now: &str) -> Value {
    let mut r = record.clone();
    if r["gone"] != Value::Bool(true) || r["gone_reason"] != reason {
        r["updatedAt"] = Value::String(now.to_owned());
    }
    r["gone"] = Value::Bool(true);
    r["gone_reason"] = Value::String(reason.to_owned());
    r["synced_at"] = Value::String(now.to_owned());
    r
}

/// How the key got there, for the record.
pub struct Provenance<'a> {
    pub local_key_id: &'a str,
    pub local_key_name: &'a str,
    pub token: &'a str,
    pub token_serial: &'a str,
    pub wrapping_algorithm: &'a str,
    pub wrap_method: &'a str,
    pub wrapping_key_spec: &'a str,
    pub upload_id: &'a str,
    pub template_id: Option<&'a str>,
    pub fingerprint: Option<&'a Fingerprint>,
}

pub fn build(
    id: &str,
    now: &str,
    req: &UploadRequest,
    conn: &KmsConn,
    state: &KeyState,
    prov: &Provenance<'_>,
) -> Value {
    let lists = match &req.policy {
        PolicyChoice::Lists(l) => l.clone(),
        _ => Default::default(),
    };
    json!({
        "id": id,
        "uri": format!("kylo:kylo:cckm:aws-key:{id}"),
        "account": "kylo:kylo:admin:accounts:kylo",
        "application": "ncryptify:gemalto:admin:apps:kylo",
        "devAccount": "ncryptify:gemalto:admin:accounts:gemalto",
        "createdAt": now,
        "updatedAt": now,
        "kms_id": conn.cfg.id,
        "kms": conn.cfg.name,
        "synced_at": now,
        "rotation_status": "",
        "cloud_name": conn.cfg.cloud_name,
        "key_type": req.spec.record_key_type(),
        "basic_view_enabled": false,
        "region": req.region,
        "gone": false,
        "key_material_origin": "cckm",
        "key_source": req.tier.as_str(),
        "local_key_id": prov.local_key_id,
        "local_key_name": prov.local_key_name,
        "external_accounts": strs(&lists.external_accounts),
        "key_admins": strs(&lists.key_admins),
        "key_admins_roles": strs(&lists.key_admins_roles),
        "key_users": strs(&lists.key_users),
        "key_users_roles": strs(&lists.key_users_roles),
        "policy_template_id": prov.template_id,
        "gone_reason": Value::Null,
        "labels": {},
        "deletion_date": aws_time(state.metadata.deletion_date()),
        "rotated_at": Value::Null,
        "rotated_from": Value::Null,
        "rotated_to": Value::Null,
        "job_config_id": Value::Null,
        "disable_encrypt_on_auto_rotate": false,
        "aws_param": aws_param(state),
        "upload": {
            "upload_id": prov.upload_id,
            "token": prov.token,
            "token_serial": prov.token_serial,
            "wrapping_algorithm": prov.wrapping_algorithm,
            "wrap_method": prov.wrap_method,
            "wrapping_key_spec": prov.wrapping_key_spec,
            "source_key_tier": req.tier.as_str(),
            "source_key_identifier": req.source,
            "fingerprint": prov.fingerprint,
            "kcv": prov.fingerprint.and_then(|f| f.kcv()),
        },
    })
}
