//! The KMS calls of the key actions after an upload, one function each, so that every one maps
//! AWS's errors the same way.

use aws_sdk_kms::Client;
use aws_sdk_kms::types::Tag;

use super::KmsError;

pub async fn enable(client: &Client, key_id: &str) -> Result<(), KmsError> {
    client
        .enable_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("EnableKey", e))?;
    Ok(())
}

pub async fn disable(client: &Client, key_id: &str) -> Result<(), KmsError> {
    client
        .disable_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("DisableKey", e))?;
    Ok(())
}

pub async fn schedule_deletion(client: &Client, key_id: &str, days: i32) -> Result<(), KmsError> {
    client
        .schedule_key_deletion()
        .key_id(key_id)
        .pending_window_in_days(days)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("ScheduleKeyDeletion", e))?;
    Ok(())
}

pub async fn cancel_deletion(client: &Client, key_id: &str) -> Result<(), KmsError> {
    client
        .cancel_key_deletion()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("CancelKeyDeletion", e))?;
    Ok(())
}

pub async fn delete_material(client: &Client, key_id: &str) -> Result<(), KmsError> {
    client
        .delete_imported_key_material()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("DeleteImportedKeyMaterial", e))?;
    Ok(())
}

pub async fn delete_alias(client: &Client, alias: &str) -> Result<(), KmsError> {
    client
        .delete_alias()
        .alias_name(alias)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("DeleteAlias", e))?;
    Ok(())
}

pub async fn tag(client: &Client, key_id: &str, tags: &[(String, String)]) -> Result<(), KmsError> {
    let mut req = client.tag_resource().key_id(key_id);
    for (k, v) in tags {
        req = req.tags(
            Tag::builder()
                .tag_key(k)
                .tag_value(v)
                .build()
                .map_err(|e| KmsError::internal("TagResource", e.to_string()))?,
        );
    }
    req.send()
        .await
        .map_err(|e| KmsError::from_sdk("TagResource", e))?;
    Ok(())
}

pub async fn untag(client: &Client, key_id: &str, keys: &[String]) -> Result<(), KmsError> {
    client
        .untag_resource()
        .key_id(key_id)
        .set_tag_keys(Some(keys.to_vec()))
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("UntagResource", e))?;
    Ok(())
}

pub async fn update_description(
    client: &Client,
    key_id: &str,
    description: &str,
) -> Result<(), KmsError> {
    client
        .update_key_description()
        .key_id(key_id)
        .description(description)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("UpdateKeyDescription", e))?;
    Ok(())
}

pub async fn put_policy(
    client: &Client,
    key_id: &str,
    policy: &str,
    bypass_lockout: bool,
) -> Result<(), KmsError> {
    client
        .put_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .policy(policy)
        .bypass_policy_lockout_safety_check(bypass_lockout)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("PutKeyPolicy", e))?;
    Ok(())
}

/// Points an existing alias at another key (rotation moves aliases this way).
pub async fn update_alias(client: &Client, alias: &str, key_id: &str) -> Result<(), KmsError> {
    client
        .update_alias()
        .alias_name(alias)
        .target_key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("UpdateAlias", e))?;
    Ok(())
}

/// RotateKeyOnDemand: makes the key's pending new material (imported with
/// `ImportType=NEW_KEY_MATERIAL`) its current material.
pub async fn rotate_on_demand(client: &Client, key_id: &str) -> Result<(), KmsError> {
    client
        .rotate_key_on_demand()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("RotateKeyOnDemand", e))?;
    Ok(())
}

/// ListKeyRotations, as the record shows them (every page).
pub async fn list_rotations(
    client: &Client,
    key_id: &str,
) -> Result<Vec<serde_json::Value>, KmsError> {
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_key_rotations()
            .key_id(key_id)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| KmsError::from_sdk("ListKeyRotations", e))?;
        for r in page.rotations() {
            out.push(serde_json::json!({
                "KeyMaterialId": r.key_material_id(),
                "RotationDate": r.rotation_date().map(|d| crate::store::format_time(
                    time::OffsetDateTime::from_unix_timestamp(d.secs()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH))),
                "RotationType": r.rotation_type().map(|t| t.as_str().to_owned()),
                "ImportState": r.import_state().map(|t| t.as_str().to_owned()),
                "ValidTo": r.valid_to().map(|d| crate::store::format_time(
                    time::OffsetDateTime::from_unix_timestamp(d.secs()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH))),
            }));
        }
        match (page.truncated(), page.next_marker()) {
            (true, Some(m)) => marker = Some(m.to_owned()),
            _ => return Ok(out),
        }
    }
}

/// ReplicateKey: a replica of the multi-Region key `key_id` in `region`, with its own
/// description, policy and tags. AWS makes a replica of an imported key `PendingImport`.
pub async fn replicate_key(
    client: &Client,
    key_id: &str,
    region: &str,
    description: Option<&str>,
    policy: Option<&str>,
    tags: &[(String, String)],
    bypass_lockout: bool,
) -> Result<aws_sdk_kms::types::KeyMetadata, KmsError> {
    let mut req = client
        .replicate_key()
        .key_id(key_id)
        .replica_region(region)
        .set_description(description.map(str::to_owned))
        .set_policy(policy.map(str::to_owned))
        .bypass_policy_lockout_safety_check(bypass_lockout);
    for (k, v) in tags {
        let tag = Tag::builder()
            .tag_key(k)
            .tag_value(v)
            .build()
            .map_err(|e| KmsError::upstream("ReplicateKey", e.to_string()))?;
        req = req.tags(tag);
    }
    req.send()
        .await
        .map_err(|e| KmsError::from_sdk("ReplicateKey", e))?
        .replica_key_metadata
        .ok_or_else(|| KmsError::upstream("ReplicateKey", "answer without the replica's metadata"))
}
