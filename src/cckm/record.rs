//! The AWS key record: CipherTrust Manager's answer shape, with values read back from AWS.

use aws_sdk_kms::primitives::DateTime;
use aws_sdk_kms::primitives::DateTimeFormat;
use aws_sdk_kms::types::KeyMetadata;
use serde_json::{Value, json};

use super::request::{PolicyChoice, UploadRequest};
use crate::kms::{KeyState, KmsConn};

pub fn aws_time(t: Option<&DateTime>) -> Value {
    t.and_then(|d| d.fmt(DateTimeFormat::DateTime).ok())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

fn strs<T: AsRef<str>>(v: &[T]) -> Value {
    Value::Array(
        v.iter()
            .map(|s| Value::String(s.as_ref().to_owned()))
            .collect(),
    )
}

/// The `aws_param` section, from what AWS says about the key.
pub fn aws_param(state: &KeyState) -> Value {
    let m: &KeyMetadata = &state.metadata;
    let mut aliases = state.aliases.clone();
    aliases.sort();
    let tags: Vec<Value> = state
        .tags
        .iter()
        .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
        .collect();
    let mut p = json!({
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
        "KeyRotationEnabled": false,
        "KeyState": m.key_state().map(|s| s.as_str()),
        "KeyUsage": m.key_usage().map(|u| u.as_str()),
        "MultiRegion": m.multi_region().unwrap_or(false),
        "Origin": m.origin().map(|o| o.as_str()),
        "ValidTo": aws_time(m.valid_to()),
        "Alias": strs(&aliases),
        "Policy": state.policy,
        "Tags": tags,
    });
    if let Some(algs) = Some(m.encryption_algorithms()).filter(|a| !a.is_empty()) {
        p["EncryptionAlgorithms"] = Value::Array(
            algs.iter()
                .map(|a| Value::String(a.as_str().to_owned()))
                .collect(),
        );
    }
    if let Some(algs) = Some(m.signing_algorithms()).filter(|a| !a.is_empty()) {
        p["SigningAlgorithms"] = Value::Array(
            algs.iter()
                .map(|a| Value::String(a.as_str().to_owned()))
                .collect(),
        );
    }
    if let Some(algs) = Some(m.mac_algorithms()).filter(|a| !a.is_empty()) {
        p["MacAlgorithms"] = Value::Array(
            algs.iter()
                .map(|a| Value::String(a.as_str().to_owned()))
                .collect(),
        );
    }
    if let Some(mr) = m.multi_region_configuration() {
        p["MultiRegionConfiguration"] = json!({
            "MultiRegionKeyType": mr.multi_region_key_type().map(|t| t.as_str()),
            "PrimaryKey": mr.primary_key().map(|k| json!({"Arn": k.arn(), "Region": k.region()})),
            "ReplicaKeys": mr.replica_keys().iter().map(|k| json!({"Arn": k.arn(), "Region": k.region()})).collect::<Vec<_>>(),
        });
    }
    if let Some(d) = m.deletion_date() {
        p["DeletionDate"] = aws_time(Some(d));
    }
    p
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
        "labels": {},
        "deletion_date": Value::Null,
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
        },
    })
}
