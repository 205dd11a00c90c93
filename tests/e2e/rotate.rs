//! Rotation (`POST /api/v1/cckm/aws/keys/{id}/rotate`): a new key with new material takes the
//! old one's aliases, the old key becomes what the request says, the records link; a failure
//! at any step leaves the alias on the old key and no enabled new key.

use aws_sdk_kms::Client as KmsClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

const NO_ENCRYPT_SID: &str = "hsm-bridge-rotated-no-encrypt";

async fn upload_vault_key(b: &Bridge, name: &str, alias: &str) -> (Value, Vec<u8>) {
    let material = secret(32);
    let key = b.vault_import(name, "aes", &material).await;
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
                       "aws_param": {"Alias": alias}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    (r, material)
}

async fn alias_target(kms: &KmsClient, alias: &str) -> String {
    kms.describe_key()
        .key_id(alias)
        .send()
        .await
        .expect("DescribeKey by alias")
        .key_metadata()
        .expect("metadata")
        .key_id()
        .to_owned()
}

async fn aliases_of(kms: &KmsClient, key: &str) -> Vec<String> {
    kms.list_aliases()
        .key_id(key)
        .send()
        .await
        .expect("ListAliases")
        .aliases()
        .iter()
        .filter_map(|a| a.alias_name().map(str::to_owned))
        .collect()
}

async fn policy_of(kms: &KmsClient, key: &str) -> String {
    kms.get_key_policy()
        .key_id(key)
        .policy_name("default")
        .send()
        .await
        .expect("GetKeyPolicy")
        .policy()
        .unwrap_or_default()
        .to_owned()
}

async fn state_of(kms: &KmsClient, key: &str) -> String {
    kms.describe_key()
        .key_id(key)
        .send()
        .await
        .expect("DescribeKey")
        .key_metadata()
        .and_then(|m| m.key_state())
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

/// The JSON request of the last `op` that crossed the proxy.
fn body_of(proxy: &FaultProxy, op: &str) -> Value {
    let x = proxy
        .exchanges()
        .into_iter()
        .rev()
        .find(|x| x.op == op)
        .unwrap_or_else(|| panic!("no {op} on the wire"));
    serde_json::from_slice(&x.request).expect("JSON request")
}

fn id_of(r: &Value) -> (String, String) {
    (
        r["id"].as_str().expect("record id").to_owned(),
        r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_the_aliases_to_new_material_and_links_both_records() {
    let tokens = Tokens::new();
    let luna = [secret(32), secret(32)];
    put_secret(&tokens.source, "rot-luna-1", Kind::Aes, &luna[0], true);
    put_secret(&tokens.source, "rot-luna-2", Kind::Aes, &luna[1], true);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;

    // A local key: the new material is a vault key generated in the bridge token.
    let (old, old_material) = upload_vault_key(&b, "rot-a", "rot-a").await;
    let (old_id, old_key) = id_of(&old);
    let (s, new) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{old_id}/rotate"),
            &json!({"retain_alias": true, "disable_encrypt": true, "description": "rotated"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{new}");
    let (new_id, new_key) = id_of(&new);
    assert_ne!(new_key, old_key);
    assert_eq!(new["rotated_from"]["id"], old_id, "{new}");
    assert_eq!(new["rotation_status"], "current");
    assert_eq!(new["aws_param"]["Description"], "rotated");
    assert_eq!(alias_target(&kms, "alias/rot-a").await, new_key);
    let new_vault = new["local_key_id"].as_str().expect("local_key_id");
    assert_ne!(new_vault, old["local_key_id"].as_str().unwrap_or_default());
    prove_vault_key_in_token(&b, &tokens, new_vault, &kms, &new_key, "SYMMETRIC_DEFAULT").await;
    // The old key still decrypts with its own material, keeps a dated alias, may no longer
    // encrypt (by its policy), and its record points to the new one.
    prove_aes(&kms, &old_key, &old_material).await;
    let kept = aliases_of(&kms, &old_key).await;
    assert!(
        kept.len() == 1 && kept[0].starts_with("alias/rot-a-rotated-"),
        "{kept:?}"
    );
    let policy: Value = serde_json::from_str(&policy_of(&kms, &old_key).await).expect("policy");
    let deny = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Sid"] == NO_ENCRYPT_SID)
        .cloned()
        .expect("the deny statement");
    assert_eq!(deny["Effect"], "Deny");
    assert!(deny["Action"].to_string().contains("kms:Encrypt"), "{deny}");
    assert!(!deny["Action"].to_string().contains("Decrypt"), "{deny}");
    let (s, o) = b.get(&format!("/api/v1/cckm/aws/keys/{old_id}")).await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["rotated_to"]["id"], new_id, "{o}");
    assert_eq!(o["rotated_to"]["key_id"], new_key);
    assert_eq!(o["rotation_status"], "rotated");
    assert!(o["rotated_at"].is_string());
    assert_eq!(o["aws_param"]["KeyState"], "Enabled");
    let (s, h) = b
        .get(&format!("/api/v1/cckm/aws/keys/{old_id}/history"))
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert!(h.to_string().contains("\"rotate\""), "{h}");
    // Once rotated, the old key is not rotated again.
    let (s, e) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{old_id}/rotate"),
            &json!({}),
        )
        .await;
    assert_error(s, &e, 409, "already rotated");

    // An hsm-luna key to a named new source key; the old key scheduled for deletion.
    let (s, old) = b
        .upload(
            json!({"source_key_tier": "hsm-luna", "source_key_identifier": "rot-luna-1",
                       "kms": b.kms_name, "region": REGION, "aws_param": {"Alias": "rot-luna"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{old}");
    let (old_id, old_key) = id_of(&old);
    let (s, new) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{old_id}/rotate"),
            &json!({"source_key_tier": "hsm-luna", "source_key_id": "rot-luna-2",
                    "schedule_deletion_days": 7}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{new}");
    let (new_id, new_key) = id_of(&new);
    assert_eq!(alias_target(&kms, "alias/rot-luna").await, new_key);
    prove_aes(&kms, &new_key, &luna[1]).await;
    assert_eq!(state_of(&kms, &old_key).await, "PendingDeletion");
    // A rotation to the same material is none.
    let (s, e) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{new_id}/rotate"),
            &json!({"source_key_tier": "hsm-luna", "source_key_id": "rot-luna-2"}),
        )
        .await;
    assert_error(s, &e, 409, "same material");
    assert_eq!(alias_target(&kms, "alias/rot-luna").await, new_key);
    // Other tiers name their new source.
    let (s, e) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{new_id}/rotate"),
            &json!({"source_key_tier": "hsm-luna"}),
        )
        .await;
    assert_error(s, &e, 400, "source_key_id");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_step_of_a_rotation_leaves_the_alias_on_the_old_key() {
    let proxy = FaultProxy::start().await;
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::through(&proxy)).await;
    let kms = b.kms().await;
    let mut old_keys = Vec::new();
    for (i, op) in [
        "CreateKey",
        "GetParametersForImport",
        "ImportKeyMaterial",
        "UpdateAlias",
        "CreateAlias",
        "PutKeyPolicy",
        "ScheduleKeyDeletion",
    ]
    .into_iter()
    .enumerate()
    {
        let alias = format!("rot-fail-{i}");
        let (old, material) = upload_vault_key(&b, &alias, &alias).await;
        let (old_id, old_key) = id_of(&old);
        let policy_before = policy_of(&kms, &old_key).await;
        old_keys.push(old_key.clone());
        proxy.on(
            op,
            Fault::RefuseOnce {
                status: 500,
                aws_type: "KMSInternalException",
            },
        );
        let (s, e) = b
            .post(
                &format!("/api/v1/cckm/aws/keys/{old_id}/rotate"),
                &json!({"retain_alias": true, "disable_encrypt": true,
                        "schedule_deletion_days": 7}),
            )
            .await;
        assert!(s.is_server_error(), "{op}: {s} {e}");
        assert!(
            e["code"].is_u64() && e["requestID"].is_string(),
            "{op}: {e}"
        );
        proxy.heal();
        assert_eq!(
            alias_target(&kms, &format!("alias/{alias}")).await,
            old_key,
            "{op}: the alias stays on the old key"
        );
        assert_eq!(
            aliases_of(&kms, &old_key).await,
            vec![format!("alias/{alias}")],
            "{op}"
        );
        assert_eq!(state_of(&kms, &old_key).await, "Enabled", "{op}");
        assert_eq!(
            policy_of(&kms, &old_key).await,
            policy_before,
            "{op}: policy restored"
        );
        prove_aes(&kms, &old_key, &material).await;
        // Every key that is not one of the old ones is scheduled for deletion.
        for (id, state) in kms_keys(&kms).await {
            if !old_keys.contains(&id) {
                assert_eq!(state, "PendingDeletion", "{op}: key {id}");
            }
        }
        let (s, o) = b.get(&format!("/api/v1/cckm/aws/keys/{old_id}")).await;
        assert_eq!(s, StatusCode::OK, "{o}");
        assert!(o["rotated_to"].is_null(), "{op}: not rotated: {o}");
        let (_, h) = b
            .get(&format!("/api/v1/cckm/aws/keys/{old_id}/history"))
            .await;
        assert!(h.to_string().contains("\"failed\""), "{op}: {h}");
    }
    b.finish().await;
}

/// On-demand rotation of imported material. LocalStack 4.10 takes `ImportType` but loads the
/// material at once, and raises NotImplementedError for `RotateKeyOnDemand` of an imported
/// key: so the test checks the calls and parameters on the wire against AWS's API reference,
/// and that the bridge answers the emulator's refusal cleanly with the new material recorded
/// as pending; then the proxy answers `RotateKeyOnDemand` as AWS documents it (`{"KeyId"}`)
/// and the retry finishes the rotation without importing the material a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_rotation_sends_new_key_material_then_rotate_key_on_demand() {
    let proxy = FaultProxy::start().await;
    let tokens = Tokens::new();
    let material = [secret(32), secret(32)];
    put_secret(&tokens.source, "od-1", Kind::Aes, &material[0], true);
    put_secret(&tokens.source, "od-2", Kind::Aes, &material[1], true);
    let b = Bridge::start(&tokens, Opts::through(&proxy)).await;
    let kms = b.kms().await;
    let (s, old) = b
        .upload(
            json!({"source_key_tier": "hsm-luna", "source_key_identifier": "od-1",
                       "kms": b.kms_name, "region": REGION, "aws_param": {"Alias": "od"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{old}");
    let (id, key) = id_of(&old);
    let rotate =
        json!({"rotate_material": true, "source_key_tier": "hsm-luna", "source_key_id": "od-2"});
    let calls_before = proxy.exchanges().len();
    let (s, e) = b
        .post(&format!("/api/v1/cckm/aws/keys/{id}/rotate"), &rotate)
        .await;
    assert!(s.is_server_error(), "{s} {e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("RotateKeyOnDemand") && msg.contains("pending"),
        "{e}"
    );
    let wire: Vec<_> = proxy.exchanges()[calls_before..].to_vec();
    let body = |op: &str| -> Value {
        let x = wire
            .iter()
            .rev()
            .find(|x| x.op == op)
            .unwrap_or_else(|| panic!("no {op} on the wire"));
        serde_json::from_slice(&x.request).expect("JSON request")
    };
    let gpi = body("GetParametersForImport");
    assert_eq!(gpi["KeyId"], key);
    assert_eq!(gpi["WrappingAlgorithm"], "RSAES_OAEP_SHA_1");
    assert_eq!(gpi["WrappingKeySpec"], "RSA_2048");
    let ikm = body("ImportKeyMaterial");
    assert_eq!(ikm["KeyId"], key, "{ikm}");
    assert_eq!(ikm["ImportType"], "NEW_KEY_MATERIAL", "{ikm}");
    assert_eq!(
        ikm["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE",
        "{ikm}"
    );
    assert!(ikm["ImportToken"].is_string() && ikm["EncryptedKeyMaterial"].is_string());
    assert!(
        ikm.get("KeyMaterialId").is_none(),
        "new material has no id yet: {ikm}"
    );
    assert_eq!(body("RotateKeyOnDemand"), json!({"KeyId": key}));
    let (_, r) = b.get(&format!("/api/v1/cckm/aws/keys/{id}")).await;
    assert_eq!(r["rotation_status"], "material_pending", "{r}");
    assert_eq!(
        r["pending_material"]["source_key_identifier"], "od-2",
        "{r}"
    );

    // AWS's answers to RotateKeyOnDemand and ListKeyRotations, which the emulator cannot give
    // (it has no ListKeyRotations at all), shaped as AWS's API reference documents them.
    proxy.on(
        "RotateKeyOnDemand",
        Fault::Answer(json!({"KeyId": key}).to_string()),
    );
    proxy.on(
        "ListKeyRotations",
        Fault::Answer(
            json!({"Rotations": [{"KeyId": key, "KeyMaterialId": "a".repeat(64),
                                  "ImportState": "IMPORTED", "KeyMaterialState": "CURRENT",
                                  "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
                                  "RotationDate": 1_796_000_000.0, "RotationType": "ON_DEMAND"}],
                   "Truncated": false})
            .to_string(),
        ),
    );
    let calls_before = proxy.exchanges().len();
    let (s, r) = b
        .post(&format!("/api/v1/cckm/aws/keys/{id}/rotate"), &rotate)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let ops: Vec<String> = proxy.exchanges()[calls_before..]
        .iter()
        .map(|x| x.op.clone())
        .collect();
    assert!(
        !ops.iter().any(|o| o == "ImportKeyMaterial"),
        "the pending material is not imported again: {ops:?}"
    );
    assert!(ops.iter().any(|o| o == "RotateKeyOnDemand"), "{ops:?}");
    assert!(ops.iter().any(|o| o == "ListKeyRotations"), "{ops:?}");
    assert_eq!(r["aws_param"]["KeyID"], key, "the same key");
    assert_eq!(r["rotation_status"], "material_rotated", "{r}");
    assert!(r["pending_material"].is_null(), "{r}");
    assert_eq!(r["upload"]["source_key_identifier"], "od-2");
    assert_eq!(
        r["material_rotations"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    assert_eq!(r["key_rotations"][0]["RotationType"], "ON_DEMAND", "{r}");
    assert_eq!(r["key_rotations"][0]["ImportState"], "IMPORTED", "{r}");
    assert_eq!(body_of(&proxy, "ListKeyRotations"), json!({"KeyId": key}));
    assert_eq!(alias_target(&kms, "alias/od").await, key);
    // What the emulator holds now is the new material (it loaded it at the import).
    prove_aes(&kms, &key, &material[1]).await;
    // Only symmetric keys rotate their material on demand.
    let (s, hmac) = b
        .upload(json!({"source_key_identifier": b.vault_import("od-hmac", "hmac-sha256", &secret(32)).await,
                       "kms": b.kms_name, "region": REGION,
                       "aws_param": {"CustomerMasterKeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hmac}");
    let (s, e) = b
        .post(
            &format!(
                "/api/v1/cckm/aws/keys/{}/rotate",
                hmac["id"].as_str().expect("id")
            ),
            &json!({"rotate_material": true}),
        )
        .await;
    assert_error(s, &e, 422, "SYMMETRIC_DEFAULT");
    b.finish().await;
}

/// Waits until `f` answers something, polling the bridge.
async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{what} did not happen within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_schedule_rotates_due_keys_and_carries_over_to_the_new_key() {
    let tokens = Tokens::new();
    put_secret(&tokens.source, "sched-luna", Kind::Aes, &secret(32), true);
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: "[schedules]\ncheck_interval_secs = 1\nkeys_per_minute = 600\nallow_seconds = true\n"
                .into(),
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let (first, _) = upload_vault_key(&b, "sched", "sched").await;
    let (first_id, first_key) = id_of(&first);
    let (s, r) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{first_id}/enable-rotation-job"),
            &json!({"rotation_period_secs": 2, "auto_rotate_disable_encrypt": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        r["rotation_schedule"]["next_rotation_at"].is_string(),
        "{r}"
    );
    assert_eq!(r["rotation_schedule"]["period_secs"], 2);

    let second_id = wait_for("the scheduled rotation", async || {
        let (_, o) = b.get(&format!("/api/v1/cckm/aws/keys/{first_id}")).await;
        o["rotated_to"]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (_, second) = b.get(&format!("/api/v1/cckm/aws/keys/{second_id}")).await;
    let (_, second_key) = id_of(&second);
    assert_ne!(second_key, first_key);
    assert_eq!(alias_target(&kms, "alias/sched").await, second_key);
    prove_vault_key_in_token(
        &b,
        &tokens,
        second["local_key_id"].as_str().expect("local_key_id"),
        &kms,
        &second_key,
        "SYMMETRIC_DEFAULT",
    )
    .await;
    let (_, old) = b.get(&format!("/api/v1/cckm/aws/keys/{first_id}")).await;
    assert!(
        old["rotation_schedule"].is_null(),
        "moved to the new key: {old}"
    );
    assert!(
        policy_of(&kms, &first_key).await.contains(NO_ENCRYPT_SID),
        "auto_rotate_disable_encrypt"
    );
    let (_, h) = b
        .get(&format!("/api/v1/cckm/aws/keys/{first_id}/history"))
        .await;
    assert!(
        h.to_string().contains("hsm-bridge (scheduled rotation)"),
        "{h}"
    );

    // The schedule carried over, so the new key is rotated in its turn; then it is stopped.
    let third_id = wait_for("the second scheduled rotation", async || {
        let (_, o) = b.get(&format!("/api/v1/cckm/aws/keys/{second_id}")).await;
        o["rotated_to"]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (s, r) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{third_id}/disable-rotation-job"),
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r["rotation_schedule"].is_null(), "{r}");

    // Only local keys can be scheduled: nothing else can make new material unattended.
    let (s, luna) = b
        .upload(
            json!({"source_key_tier": "hsm-luna", "source_key_identifier": "sched-luna",
                       "kms": b.kms_name, "region": REGION}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{luna}");
    let (s, e) = b
        .post(
            &format!(
                "/api/v1/cckm/aws/keys/{}/enable-rotation-job",
                luna["id"].as_str().expect("id")
            ),
            &json!({"rotation_period_days": 90}),
        )
        .await;
    assert_error(s, &e, 422, "local");
    let (s, e) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{third_id}/enable-rotation-job"),
            &json!({"job_config_id": "cm-scheduler-1"}),
        )
        .await;
    assert_error(s, &e, 400, "rotation_period_days");
    b.finish().await;
}
