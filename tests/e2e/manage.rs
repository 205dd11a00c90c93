//! An uploaded key's life after the upload, through CipherTrust's key actions: each action's
//! effect seen in KMS and in the record; delete-material and import-material proven again
//! against the source material; refusals that leave KMS as it was; out-of-band changes found
//! by refresh and by the periodic synchronization; and the key's history.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;
use hsm_bridge::pkcs11::keys::PrivateKind;

/// What KMS says about a key: state, description, aliases, user tags.
#[derive(Debug, PartialEq)]
struct Seen {
    state: String,
    enabled: bool,
    description: String,
    aliases: Vec<String>,
    tags: Vec<(String, String)>,
    policy: Value,
}

async fn seen(kms: &aws_sdk_kms::Client, key_id: &str) -> Seen {
    let m = kms
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .expect("DescribeKey");
    let m = m.key_metadata().expect("metadata");
    let mut aliases: Vec<String> = kms
        .list_aliases()
        .key_id(key_id)
        .send()
        .await
        .expect("ListAliases")
        .aliases()
        .iter()
        .filter_map(|a| a.alias_name().map(str::to_owned))
        .collect();
    aliases.sort();
    let mut tags: Vec<(String, String)> = kms
        .list_resource_tags()
        .key_id(key_id)
        .send()
        .await
        .expect("ListResourceTags")
        .tags()
        .iter()
        .map(|t| (t.tag_key().to_owned(), t.tag_value().to_owned()))
        .filter(|(k, _)| k != "hsm-bridge-upload-id")
        .collect();
    tags.sort();
    let policy = serde_json::from_str(
        kms.get_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .send()
            .await
            .expect("GetKeyPolicy")
            .policy()
            .expect("policy"),
    )
    .expect("policy JSON");
    Seen {
        state: m
            .key_state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        enabled: m.enabled(),
        description: m.description().unwrap_or_default().to_owned(),
        aliases,
        tags,
        policy,
    }
}

/// The record agrees with what KMS says.
fn agrees(r: &Value, s: &Seen) {
    let p = &r["aws_param"];
    assert_eq!(p["KeyState"], s.state.as_str(), "{r}");
    assert_eq!(p["Enabled"], s.enabled, "{r}");
    assert_eq!(p["Description"], s.description.as_str(), "{r}");
    let mut aliases: Vec<String> = p["Alias"]
        .as_array()
        .expect("Alias")
        .iter()
        .map(|a| a.as_str().expect("alias").to_owned())
        .collect();
    aliases.sort();
    assert_eq!(aliases, s.aliases, "{r}");
    let mut tags: Vec<(String, String)> = p["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| {
            (
                t["TagKey"].as_str().expect("key").to_owned(),
                t["TagValue"].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    tags.sort();
    assert_eq!(tags, s.tags, "{r}");
    assert_eq!(p["Policy"], s.policy, "{r}");
}

/// What must hold in KMS after an action.
type Check = Box<dyn Fn(&Seen)>;

async fn act(b: &Bridge, id: &str, action: &str, body: Value) -> (StatusCode, Value) {
    b.post(&format!("/api/v1/cckm/aws/keys/{id}/{action}"), &body)
        .await
}

async fn ok(b: &Bridge, id: &str, action: &str, body: Value) -> Value {
    let (s, r) = act(b, id, action, body).await;
    assert_eq!(s, StatusCode::OK, "{action}: {r}");
    r
}

fn alias() -> String {
    format!("managed-{}", world().next())
}

/// An AES-256 vault key uploaded with an alias: (record id, AWS key id, material).
async fn upload_aes(b: &Bridge, alias: &str) -> (String, String, Vec<u8>) {
    let material = secret(32);
    let v = b
        .vault_import(&format!("vault-{alias}"), "aes", &material)
        .await;
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": v, "kms": b.kms_name, "region": REGION,
                       "aws_param": {"Alias": alias, "Description": "managed"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    (
        r["id"].as_str().expect("id").to_owned(),
        r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned(),
        material,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_action_changes_kms_and_the_record_agrees() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    let first = alias();
    let (id, key, material) = upload_aes(&b, &first).await;
    let second = format!("alias/{}", alias());

    let steps: Vec<(&str, Value, Check)> = vec![
        (
            "disable",
            json!({}),
            Box::new(|s: &Seen| assert_eq!(s.state, "Disabled")),
        ),
        (
            "enable",
            Value::Null,
            Box::new(|s: &Seen| assert_eq!(s.state, "Enabled")),
        ),
        (
            "update-description",
            json!({"description": "payments, 2027"}),
            Box::new(|s: &Seen| assert_eq!(s.description, "payments, 2027")),
        ),
        (
            "add-alias",
            json!({"alias": second.clone()}),
            Box::new({
                let second = second.clone();
                move |s: &Seen| assert!(s.aliases.contains(&second), "{s:?}")
            }),
        ),
        (
            "delete-alias",
            json!({"alias": second.clone()}),
            Box::new({
                let second = second.clone();
                move |s: &Seen| assert!(!s.aliases.contains(&second), "{s:?}")
            }),
        ),
        (
            "add-tags",
            json!({"tags": [{"tag_key": "team", "tag_value": "payments"},
                            {"TagKey": "cost-centre", "TagValue": "42"}]}),
            Box::new(|s: &Seen| {
                assert!(
                    s.tags.contains(&("team".into(), "payments".into())),
                    "{s:?}"
                )
            }),
        ),
        (
            "remove-tags",
            json!({"tags": ["team"]}),
            Box::new(|s: &Seen| {
                assert_eq!(s.tags, vec![("cost-centre".into(), "42".into())], "{s:?}")
            }),
        ),
        (
            "policy",
            json!({"key_users": ["alice"]}),
            Box::new(|s: &Seen| {
                assert!(
                    s.policy.to_string().contains("user/alice"),
                    "{:?}",
                    s.policy
                )
            }),
        ),
        (
            "schedule-deletion",
            json!({"days": 7}),
            Box::new(|s: &Seen| assert_eq!(s.state, "PendingDeletion")),
        ),
        (
            "cancel-deletion",
            json!({}),
            Box::new(|s: &Seen| assert_eq!(s.state, "Disabled")),
        ),
        (
            "enable",
            json!({}),
            Box::new(|s: &Seen| assert_eq!(s.state, "Enabled")),
        ),
        ("refresh", json!({}), Box::new(|_: &Seen| {})),
    ];
    let mut done = vec!["upload-key".to_owned()];
    for (action, body, check) in &steps {
        let (s, r) = if body.is_null() {
            // An action without a body at all, as some clients send it.
            b.call(
                Method::POST,
                &format!("/api/v1/cckm/aws/keys/{id}/{action}"),
                None,
                Some(&b.token),
            )
            .await
        } else {
            act(&b, &id, action, body.clone()).await
        };
        assert_eq!(s, StatusCode::OK, "{action}: {r}");
        let now = seen(&kms, &key).await;
        check(&now);
        agrees(&r, &now);
        // The stored record says the same as the answer.
        let (_, stored) = b.get(&format!("/api/v1/cckm/aws/keys/{id}")).await;
        agrees(&stored, &now);
        if *action == "schedule-deletion" {
            assert!(r["aws_param"]["DeletionDate"].is_string(), "{r}");
            assert_eq!(r["deletion_date"], r["aws_param"]["DeletionDate"]);
        }
        done.push((*action).to_owned());
    }
    prove_aes(&kms, &key, &material).await;

    // The history lists the upload and each action, in order, with the AWS calls made.
    let (s, h) = b
        .get(&format!("/api/v1/cckm/aws/keys/{id}/history?limit=100"))
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let listed: Vec<String> = h["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect();
    assert_eq!(listed, done);
    for e in h["resources"].as_array().expect("resources") {
        assert_eq!(e["actor"], "alice", "{e}");
        assert_eq!(e["outcome"], "success", "{e}");
        assert!(e["at"].is_string() && e["aws_calls"].is_array(), "{e}");
    }
    let disable = &h["resources"][1];
    assert!(
        disable["aws_calls"]
            .as_array()
            .expect("calls")
            .contains(&json!("DisableKey")),
        "{disable}"
    );

    // DELETE removes the record only.
    let (s, r) = b
        .call(
            Method::DELETE,
            &format!("/api/v1/cckm/aws/keys/{id}"),
            None,
            Some(&b.token),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        r["message"]
            .as_str()
            .expect("message")
            .contains("untouched"),
        "{r}"
    );
    let (s, r) = b.get(&format!("/api/v1/cckm/aws/keys/{id}")).await;
    assert_error(s, &r, 404, "no AWS key");
    assert_eq!(seen(&kms, &key).await.state, "Enabled");
    // The history outlives the record, and ends with its removal.
    let (s, h) = b
        .get(&format!(
            "/api/v1/cckm/aws/keys/{id}/history?skip=1&limit=100"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let entries = h["resources"].as_array().expect("resources");
    assert_eq!(entries.len(), done.len());
    assert_eq!(entries[entries.len() - 1]["action"], "delete-record");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_actions_are_refused_before_aws_and_kms_is_unchanged() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    let (id, key, _) = upload_aes(&b, &alias()).await;
    let taken = alias();
    let (other_id, other_key, _) = upload_aes(&b, &taken).await;
    let (s, _) = act(&b, &other_id, "schedule-deletion", json!({"days": 7})).await;
    assert_eq!(s, StatusCode::OK);
    let before = seen(&kms, &key).await;
    let other_before = seen(&kms, &other_key).await;

    let long = "d".repeat(9000);
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        ("no-such-key", "enable", json!({}), 404, "no AWS key"),
        (&id, "explode", json!({}), 404, "no key action"),
        (&id, "schedule-deletion", json!({"days": 3}), 400, "7 to 30"),
        (
            &id,
            "schedule-deletion",
            json!({"days": 31}),
            400,
            "7 to 30",
        ),
        (&id, "schedule-deletion", json!({}), 400, "days"),
        (
            &id,
            "schedule-deletion",
            json!({"days": "seven"}),
            400,
            "days",
        ),
        (&id, "schedule-deletion", json!({"dayz": 7}), 400, "dayz"),
        (
            &id,
            "cancel-deletion",
            json!({}),
            409,
            "not pending deletion",
        ),
        (
            &id,
            "add-alias",
            json!({"alias": taken.clone()}),
            409,
            "already exists",
        ),
        (
            &id,
            "add-alias",
            json!({"alias": "bad alias"}),
            400,
            "alias",
        ),
        (
            &id,
            "add-alias",
            json!({"alias": "alias/aws/mine"}),
            400,
            "reserved",
        ),
        (&id, "add-alias", json!({}), 400, "alias"),
        (
            &id,
            "delete-alias",
            json!({"alias": "alias/not-this-keys"}),
            404,
            "not an alias",
        ),
        (
            &id,
            "add-tags",
            json!({"tags": [{"tag_key": "aws:owner", "tag_value": "x"}]}),
            400,
            "aws:",
        ),
        (
            &id,
            "add-tags",
            json!({"tags": [{"tag_key": "ok", "tag_value": "<bad>"}]}),
            400,
            "TagValue",
        ),
        (&id, "add-tags", json!({"tags": []}), 400, "tags"),
        (
            &id,
            "remove-tags",
            json!({"tags": ["hsm-bridge-upload-id"]}),
            400,
            "set by the bridge",
        ),
        (
            &id,
            "update-description",
            json!({"description": long}),
            400,
            "8192",
        ),
        (
            &id,
            "policy",
            json!({"key_users": ["alice"], "policytemplate": "t"}),
            400,
            "mutually exclusive",
        ),
        (&id, "policy", json!({}), 400, "exactly one"),
        (
            &id,
            "policy",
            json!({"policy": {"Version": "2012-10-17"}}),
            400,
            "Statement",
        ),
        (
            &id,
            "import-material",
            json!({"import_type": "NEW_KEY_MATERIAL"}),
            400,
            "import_type",
        ),
        (
            &id,
            "import-material",
            json!({"source_key_tier": "nowhere"}),
            400,
            "source_key_tier",
        ),
        (
            &id,
            "import-material",
            json!({"key_expiration": true}),
            400,
            "valid_to",
        ),
        (&id, "enable", json!({"force": true}), 400, "force"),
        (
            &other_id,
            "import-material",
            json!({}),
            409,
            "pending deletion",
        ),
        (&other_id, "enable", json!({}), 409, "pending deletion"),
        (
            &other_id,
            "add-alias",
            json!({"alias": alias()}),
            409,
            "pending deletion",
        ),
    ];
    for (target, action, body, want, needle) in cases {
        let (s, r) = act(&b, target, action, body).await;
        assert_error(s, &r, want, needle);
        assert_eq!(seen(&kms, &key).await, before, "{action} changed KMS");
        assert_eq!(
            seen(&kms, &other_key).await,
            other_before,
            "{action} changed KMS"
        );
    }
    // Refusals are in the history too.
    let (_, h) = b
        .get(&format!("/api/v1/cckm/aws/keys/{other_id}/history"))
        .await;
    let outcomes: Vec<&str> = h["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|e| e["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(
        outcomes,
        ["success", "success", "refused", "refused", "refused"]
    );
    b.finish().await;
}

async fn material_comes_back(family: Family) {
    let tokens = Tokens::on(family);
    let hmac = secret(32);
    put_secret(&tokens.source, "managed-hmac", Kind::Hmac, &hmac, true);
    let other = secret(32);
    put_secret(&tokens.source, "other-hmac", Kind::Hmac, &other, true);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    let (aes_id, aes_key, aes) = upload_aes(&b, &alias()).await;
    {
        // The AES key check value, as any HSM computes it: AES-ECB of a zero block.
        use aes_gcm::aes::cipher::{BlockEncrypt, KeyInit};
        let cipher = aes_gcm::aes::Aes256::new_from_slice(&aes).expect("AES-256");
        let mut block = aes_gcm::aes::Block::default();
        cipher.encrypt_block(&mut block);
        let (_, r) = b.get(&format!("/api/v1/cckm/aws/keys/{aes_id}")).await;
        assert_eq!(r["upload"]["kcv"], hex::encode(&block[..3]), "{r}");
        assert_eq!(r["upload"]["fingerprint"]["method"], "aes-kcv");
        let fp = r["upload"]["fingerprint"]["value"].as_str().expect("value");
        assert!(!fp.contains(&hex::encode(block)), "only a digest is kept");
    }
    let (s, r) = b
        .upload(
            json!({"source_key_tier": "hsm-luna", "source_key_identifier": "managed-hmac",
                       "kms": b.kms_name, "region": REGION,
                       "aws_param": {"Alias": alias(), "CustomerMasterKeySpec": "HMAC_256"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let hmac_id = r["id"].as_str().expect("id").to_owned();
    let hmac_key = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    assert_eq!(r["upload"]["fingerprint"]["method"], "hmac-sha256");
    assert!(
        r["upload"]["kcv"].is_null(),
        "a KCV is for AES keys only: {r}"
    );
    let other_vault = b.vault_import("not-the-same", "aes", &secret(32)).await;

    for (id, key) in [(&aes_id, &aes_key), (&hmac_id, &hmac_key)] {
        let r = ok(&b, id, "delete-material", json!({})).await;
        let now = seen(&kms, key).await;
        assert_eq!(now.state, "PendingImport");
        agrees(&r, &now);
    }
    // A different source key is refused before AWS is asked; the key stays without material.
    let (s, r) = act(
        &b,
        &aes_id,
        "import-material",
        json!({"source_key_tier": "local", "source_key_identifier": other_vault}),
    )
    .await;
    assert_error(s, &r, 409, "does not hold this key's material");
    let (s, r) = act(
        &b,
        &hmac_id,
        "import-material",
        json!({"source_key_tier": "hsm-luna", "source_key_identifier": "other-hmac"}),
    )
    .await;
    assert_error(s, &r, 409, "does not hold this key's material");
    assert_eq!(seen(&kms, &aes_key).await.state, "PendingImport");
    assert_eq!(seen(&kms, &hmac_key).await.state, "PendingImport");

    // The upload's own source (named, and implied), wrapped in the token again.
    let r = ok(&b, &aes_id, "import-material", json!({})).await;
    let now = seen(&kms, &aes_key).await;
    assert_eq!(now.state, "Enabled");
    agrees(&r, &now);
    prove_aes(&kms, &aes_key, &aes).await;
    let r = ok(
        &b,
        &hmac_id,
        "import-material",
        json!({"source_key_tier": "hsm-luna", "source_key_identifier": "managed-hmac",
               "key_expiration": false}),
    )
    .await;
    assert_eq!(r["aws_param"]["KeyState"], "Enabled");
    prove_hmac(&kms, &hmac_key, "HMAC_256", &hmac).await;
    let (_, h) = b
        .get(&format!("/api/v1/cckm/aws/keys/{aes_id}/history"))
        .await;
    let listed: Vec<(&str, &str)> = h["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().expect("action"),
                e["outcome"].as_str().expect("outcome"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("upload-key", "success"),
            ("delete-material", "success"),
            ("import-material", "refused"),
            ("import-material", "success")
        ]
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_material_then_import_material_brings_secret_keys_back_on_softhsm() {
    material_comes_back(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_material_then_import_material_brings_secret_keys_back_on_kryoptic() {
    material_comes_back(Family::Kryoptic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_is_reimported_and_proven_on_kryoptic() {
    let tokens = Tokens::on(Family::Kryoptic);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    for (kind, alg, spec) in [
        (PrivateKind::Rsa2048, "rsa", "RSA_2048"),
        (PrivateKind::EcP256, "ec", "ECC_NIST_P256"),
    ] {
        let der = openssl_key(kind);
        let m = material(&der);
        let name = format!("private-{alg}");
        let (s, k) = b
            .post(
                "/api/v1/vault/keys2",
                &json!({"name": name, "algorithm": alg, "material": pkcs8_pem(&der)}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        let (s, r) = b
            .upload(
                json!({"source_key_identifier": name, "kms": b.kms_name, "region": REGION,
                           "aws_param": {"Alias": alias(), "CustomerMasterKeySpec": spec,
                                         "KeyUsage": "SIGN_VERIFY"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_eq!(r["upload"]["fingerprint"]["method"], "public-key-sha256");
        let id = r["id"].as_str().expect("id").to_owned();
        let key = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
        ok(&b, &id, "delete-material", json!({})).await;
        assert_eq!(seen(&kms, &key).await.state, "PendingImport");

        let impostor = format!("impostor-{alg}");
        let (s, k) = b
            .post(
                "/api/v1/vault/keys2",
                &json!({"name": impostor, "algorithm": alg, "material": pkcs8_pem(&openssl_key(kind))}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        let (s, r) = act(
            &b,
            &id,
            "import-material",
            json!({"source_key_identifier": impostor}),
        )
        .await;
        assert_error(s, &r, 409, "does not hold this key's material");
        assert_eq!(seen(&kms, &key).await.state, "PendingImport");

        let r = ok(&b, &id, "import-material", json!({})).await;
        assert_eq!(r["aws_param"]["KeyState"], "Enabled");
        assert_eq!(seen(&kms, &key).await.state, "Enabled");
        prove_private(&kms, &key, "SIGN_VERIFY", &m).await;
    }
    b.finish().await;
}

/// Polls the record until `done` holds (the periodic synchronization runs every second here).
async fn record_until(b: &Bridge, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (s, r) = b.get(&format!("/api/v1/cckm/aws/keys/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the record never showed {what}: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_behind_the_bridge_show_after_refresh_and_after_a_sync() {
    let tokens = Tokens::new();
    let mut b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: "\n[sync]\ninterval_secs = 1\nkeys_per_second = 50\n".into(),
            ..Default::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let (a_id, a_key, _) = upload_aes(&b, &alias()).await;
    let (b_id, b_key, _) = upload_aes(&b, &alias()).await;
    let (c_id, c_key, _) = upload_aes(&b, &alias()).await;

    // Straight to KMS, behind the bridge's back.
    kms.disable_key()
        .key_id(&a_key)
        .send()
        .await
        .expect("DisableKey");
    kms.schedule_key_deletion()
        .key_id(&b_key)
        .pending_window_in_days(7)
        .send()
        .await
        .expect("ScheduleKeyDeletion");
    kms.tag_resource()
        .key_id(&c_key)
        .tags(
            aws_sdk_kms::types::Tag::builder()
                .tag_key("changed")
                .tag_value("outside")
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("TagResource");

    let r = ok(&b, &a_id, "refresh", json!({})).await;
    assert_eq!(r["aws_param"]["KeyState"], "Disabled");
    agrees(&r, &seen(&kms, &a_key).await);
    let r = record_until(&b, &b_id, "PendingDeletion", |r| {
        r["aws_param"]["KeyState"] == "PendingDeletion"
    })
    .await;
    assert!(r["deletion_date"].is_string(), "{r}");
    agrees(&r, &seen(&kms, &b_key).await);
    let r = record_until(&b, &c_id, "the new tag", |r| {
        r["aws_param"]["Tags"].to_string().contains("outside")
    })
    .await;
    agrees(&r, &seen(&kms, &c_key).await);

    // A synchronization job on demand, for one kms and region.
    let (s, job) = b
        .post(
            "/api/v1/cckm/aws/synchronization-jobs",
            &json!({"kms": [b.kms_name], "regions": [REGION]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_str().expect("job id").to_owned();
    let start = std::time::Instant::now();
    let job = loop {
        let (s, j) = b
            .get(&format!("/api/v1/cckm/aws/synchronization-jobs/{job_id}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        if j["overall_status"] != "queued" && j["overall_status"] != "in_progress" {
            break j;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "{j}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(job["overall_status"], "completed", "{job}");
    assert_eq!(job["total"], 3);
    assert_eq!(job["done"], 3);
    let (s, r) = b
        .post(
            "/api/v1/cckm/aws/synchronization-jobs",
            &json!({"kms": ["no-such-kms"]}),
        )
        .await;
    assert_error(s, &r, 404, "no-such-kms");
    let (s, jobs) = b.get("/api/v1/cckm/aws/synchronization-jobs").await;
    assert_eq!(s, StatusCode::OK, "{jobs}");
    assert!(
        jobs["resources"]
            .as_array()
            .expect("jobs")
            .iter()
            .any(|j| j["origin"] == "periodic"),
        "the periodic synchronization shows among the jobs: {jobs}"
    );

    // The emulator no longer knows the keys (as if its state were wiped: the bridge now
    // reaches another, empty, account): records are marked gone with the reason, not dropped.
    b.stop().await;
    b.account = world().new_account();
    b.launch().await;
    let (s, r) = act(&b, &a_id, "refresh", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["gone"], true, "{r}");
    assert!(
        r["gone_reason"]
            .as_str()
            .expect("reason")
            .contains("no longer"),
        "{r}"
    );
    let r = record_until(&b, &c_id, "gone", |r| r["gone"] == true).await;
    assert!(r["gone_reason"].is_string(), "{r}");
    let (s, r) = act(&b, &c_id, "disable", json!({})).await;
    assert_error(s, &r, 409, "gone");
    let (_, list) = b.get("/api/v1/cckm/aws/keys?gone=true").await;
    assert_eq!(list["total"], 3, "every record is kept: {list}");
    b.finish().await;
}
