//! Uploads that succeed, for each tier and key spec, each proven in KMS.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

fn secret_specs(family: Family) -> [(&'static str, &'static str, usize); 5] {
    [
        ("SYMMETRIC_DEFAULT", "aes", 32),
        // SoftHSM2 2.6.1 cannot keep 28-byte secrets exactly under its KEK (AWS takes 28-64);
        // kryoptic can.
        (
            "HMAC_224",
            "hmac-sha224",
            if family == Family::SoftHsm { 32 } else { 28 },
        ),
        ("HMAC_256", "hmac-sha256", 32),
        ("HMAC_384", "hmac-sha384", 48),
        ("HMAC_512", "hmac-sha512", 64),
    ]
}

async fn prove(kms: &aws_sdk_kms::Client, key_id: &str, spec: &str, material: &[u8]) {
    if spec == "SYMMETRIC_DEFAULT" {
        prove_aes(kms, key_id, material).await;
    } else {
        prove_hmac(kms, key_id, spec, material).await;
    }
}

/// Every field of CipherTrust's answer is there, with values that agree with AWS.
pub async fn assert_record(bridge: &Bridge, r: &Value, spec: &str, tier: &str, alias: &str) {
    for f in [
        "id",
        "uri",
        "account",
        "application",
        "devAccount",
        "createdAt",
        "updatedAt",
        "kms_id",
        "kms",
        "synced_at",
        "rotation_status",
        "cloud_name",
        "key_type",
        "basic_view_enabled",
        "region",
        "gone",
        "key_material_origin",
        "key_source",
        "local_key_id",
        "local_key_name",
        "external_accounts",
        "key_admins",
        "key_admins_roles",
        "key_users",
        "key_users_roles",
        "labels",
        "aws_param",
    ] {
        assert!(r.get(f).is_some(), "record lacks {f}: {r}");
    }
    let p = &r["aws_param"];
    for f in [
        "AWSAccountId",
        "Arn",
        "CreationDate",
        "CustomerMasterKeySpec",
        "Description",
        "Enabled",
        "ExpirationModel",
        "KeyID",
        "KeyManager",
        "KeyRotationEnabled",
        "KeyState",
        "KeyUsage",
        "MultiRegion",
        "Origin",
        "ValidTo",
        "Alias",
        "Policy",
        "Tags",
        "DeletionDate",
        "EncryptionAlgorithms",
        "SigningAlgorithms",
        "MacAlgorithms",
    ] {
        assert!(p.get(f).is_some(), "aws_param lacks {f}: {p}");
    }
    for f in ["EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms"] {
        assert!(p[f].is_array(), "{f} is a list: {p}");
    }
    assert!(
        r.get("deletion_date").is_some() && r.get("gone_reason").is_some(),
        "{r}"
    );
    assert_eq!(r["gone"], false);
    assert!(
        p["Tags"]
            .as_array()
            .expect("Tags")
            .iter()
            .all(|t| t["TagKey"] != "hsm-bridge-upload-id"),
        "the bridge's own upload tag is not among the user's tags: {p}"
    );
    let key_id = p["KeyID"].as_str().expect("KeyID");
    assert_eq!(r["kms"], bridge.kms_name);
    assert_eq!(r["kms_id"], bridge.kms_id);
    assert_eq!(r["region"], REGION);
    assert_eq!(r["key_source"], tier);
    assert_eq!(r["key_material_origin"], "cckm");
    assert!(
        r["uri"]
            .as_str()
            .expect("uri")
            .ends_with(r["id"].as_str().expect("id"))
    );
    assert_eq!(p["AWSAccountId"], bridge.account.as_str());
    assert_eq!(p["CustomerMasterKeySpec"], spec);
    assert_eq!(p["Origin"], "EXTERNAL");
    assert_eq!(p["KeyState"], "Enabled");
    assert_eq!(p["Enabled"], true);
    assert_eq!(p["Alias"], json!([format!("alias/{alias}")]));
    let policy = &p["Policy"];
    assert!(
        policy.is_object(),
        "aws_param.Policy is an object: {policy}"
    );
    assert!(policy["Statement"].is_array());
    for d in ["createdAt", "updatedAt", "synced_at"] {
        time::OffsetDateTime::parse(
            r[d].as_str().expect(d),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|_| panic!("{d} is RFC 3339"));
    }
    // The record agrees with AWS itself.
    let kms = bridge.kms().await;
    let m = kms
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .expect("DescribeKey");
    let m = m.key_metadata().expect("metadata");
    assert_eq!(p["Arn"].as_str(), m.arn());
    assert_eq!(p["KeyUsage"].as_str(), m.key_usage().map(|u| u.as_str()));
    assert_eq!(
        p["ExpirationModel"].as_str(),
        m.expiration_model().map(|e| e.as_str())
    );
    let algs = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("list")
            .iter()
            .map(|a| a.as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(
        algs(&p["EncryptionAlgorithms"]),
        m.encryption_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        algs(&p["SigningAlgorithms"]),
        m.signing_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        algs(&p["MacAlgorithms"]),
        m.mac_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect::<Vec<_>>()
    );
    let policy_in_aws: Value = serde_json::from_str(
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
    assert_eq!(p["Policy"], policy_in_aws, "the record's policy is AWS's");
    let aliases = kms
        .list_aliases()
        .key_id(key_id)
        .send()
        .await
        .expect("ListAliases");
    assert_eq!(aliases.aliases().len(), 1);
    assert_eq!(
        aliases.aliases()[0].alias_name(),
        Some(format!("alias/{alias}").as_str())
    );
}

fn upload_body(bridge: &Bridge, tier: &str, source: &str, spec: &str, alias: &str) -> Value {
    json!({
        "source_key_tier": tier,
        "source_key_identifier": source,
        "kms": bridge.kms_name,
        "region": REGION,
        "aws_param": {
            "Alias": alias,
            "CustomerMasterKeySpec": spec,
            "Description": format!("{tier} {spec}"),
            "Tags": [{"TagKey": "suite", "TagValue": "e2e"}]
        }
    })
}

async fn local_tier_uploads_every_secret_spec_and_kms_holds_the_source_key(family: Family) {
    let tokens = Tokens::on(family);
    // Each family imports under another wrapping key size.
    let wrapping_key_spec = match family {
        Family::SoftHsm => "RSA_2048",
        Family::Kryoptic => "RSA_3072",
    };
    let mut b = Bridge::start(
        &tokens,
        Opts {
            wrapping_key_spec,
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let objects = object_counts(&b).await;
    let mut secrets = Vec::new();
    let mut uploaded = Vec::new();
    for (spec, alg, len) in secret_specs(family) {
        let material = secret(len);
        let id = b
            .vault_import(&format!("imported-{spec}"), alg, &material)
            .await;
        let alias = format!("local/{}", spec.to_lowercase());
        let (s, r) = b.upload(upload_body(&b, "local", &id, spec, &alias)).await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_record(&b, &r, spec, "local", &alias).await;
        assert_eq!(r["local_key_id"], id.as_str());
        assert_eq!(r["local_key_name"], format!("imported-{spec}"));
        let key_id = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
        prove(&kms, &key_id, spec, &material).await;
        secrets.push(material);
        uploaded.push((r["id"].as_str().expect("id").to_owned(), key_id, r));
    }

    assert_eq!(
        object_counts(&b).await,
        objects,
        "no object left in any token"
    );
    // The records survive a restart and are served again as they were.
    b.restart().await;
    let (s, list) = b.get("/api/v1/cckm/aws/keys?limit=100").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 5, "{list}");
    for (id, key_id, original) in &uploaded {
        let (s, again) = b.get(&format!("/api/v1/cckm/aws/keys/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(&again, original);
        let (_, by_keyid) = b
            .get(&format!("/api/v1/cckm/aws/keys?keyid={key_id}"))
            .await;
        assert_eq!(by_keyid["total"], 1);
        assert_eq!(&by_keyid["resources"][0], original);
    }
    let (_, by_alias) = b.get("/api/v1/cckm/aws/keys?alias=local/hmac_384").await;
    assert_eq!(by_alias["total"], 1, "{by_alias}");
    let (_, by_region) = b
        .get(&format!("/api/v1/cckm/aws/keys?region={OTHER_REGION}"))
        .await;
    assert_eq!(by_region["total"], 0);

    b.finish().await;
}

async fn local_tier_generated_keys_are_proven_through_the_token(family: Family) {
    let tokens = Tokens::on(family);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    for (spec, alg) in [("SYMMETRIC_DEFAULT", "aes"), ("HMAC_512", "hmac-sha512")] {
        let (s, k) = b
            .post(
                "/api/v1/vault/keys2",
                &json!({"name": format!("gen-{alg}"), "algorithm": alg}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        assert_eq!(k["origin"], "generated");
        assert!(k.get("material").is_none());
        let id = k["id"].as_str().expect("id").to_owned();
        let alias = format!("gen-{alg}");
        let (s, r) = b.upload(upload_body(&b, "local", &id, spec, &alias)).await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        // Nobody can read the value out, the test neither: the token proves it.
        prove_vault_key_in_token(
            &b,
            &tokens,
            &id,
            &kms,
            r["aws_param"]["KeyID"].as_str().expect("id"),
            spec,
        )
        .await;
    }
    b.finish().await;
}

async fn hsm_luna_tier_uploads_every_secret_spec_and_kms_holds_the_source_key(family: Family) {
    let tokens = Tokens::on(family);
    let specs = [
        ("SYMMETRIC_DEFAULT", Kind::Aes, 32),
        ("HMAC_224", Kind::Hmac, 28),
        ("HMAC_256", Kind::Hmac, 32),
        ("HMAC_384", Kind::Hmac, 48),
        ("HMAC_512", Kind::Hmac, 64),
    ];
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for (spec, kind, len) in specs {
        let m = secret(len);
        ids.push(put_secret(
            &tokens.source,
            &format!("luna-{spec}"),
            kind,
            &m,
            true,
        ));
        secrets.push(m);
    }
    let mut b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    let objects = object_counts(&b).await;
    for (i, (spec, _, _)) in specs.iter().enumerate() {
        // By label for most, by hex CKA_ID for one.
        let ident = if i == 2 {
            hex::encode(&ids[i])
        } else {
            format!("luna-{spec}")
        };
        let alias = format!("luna/{}", spec.to_lowercase());
        let (s, r) = b
            .upload(upload_body(&b, "hsm-luna", &ident, spec, &alias))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_record(&b, &r, spec, "hsm-luna", &alias).await;
        assert_eq!(r["local_key_name"], format!("luna-{spec}"));
        assert_eq!(r["local_key_id"], hex::encode(&ids[i]));
        prove(
            &kms,
            r["aws_param"]["KeyID"].as_str().expect("id"),
            spec,
            &secrets[i],
        )
        .await;
    }
    assert_eq!(
        object_counts(&b).await,
        objects,
        "no object left in any token"
    );
    b.restart().await;
    let (_, list) = b.get("/api/v1/cckm/aws/keys").await;
    assert_eq!(list["total"], 5);
    b.finish().await;
}

async fn hsm_luna_keys_generated_in_the_token_match_the_tokens_own_operations(family: Family) {
    let tokens = Tokens::on(family);
    generate_secret(&tokens.source, "luna-gen-aes", Kind::Aes, 32);
    generate_secret(&tokens.source, "luna-gen-hmac", Kind::Hmac, 32);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;

    let (s, r) = b
        .upload(upload_body(
            &b,
            "hsm-luna",
            "luna-gen-hmac",
            "HMAC_256",
            "luna-gen-hmac",
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let key_id = r["aws_param"]["KeyID"].as_str().expect("id");
    let msg = random_bytes(100);
    assert_eq!(
        kms_mac(&kms, key_id, "HMAC_256", &msg).await,
        token_hmac(&tokens.source, "luna-gen-hmac", "HMAC_256", &msg),
        "KMS and the token compute the same MAC"
    );

    let (s, r) = b
        .upload(upload_body(
            &b,
            "hsm-luna",
            "luna-gen-aes",
            "SYMMETRIC_DEFAULT",
            "luna-gen-aes",
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let key_id = r["aws_param"]["KeyID"].as_str().expect("id");
    let plain = random_bytes(50);
    let ct = kms_ciphertext(&kms, key_id, &plain).await;
    assert_eq!(
        token_decrypt_kms_ciphertext(&tokens.source, "luna-gen-aes", &ct),
        plain,
        "the token decrypts what KMS encrypted"
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tier_uploads_every_secret_spec_and_kms_holds_the_source_key_on_softhsm() {
    local_tier_uploads_every_secret_spec_and_kms_holds_the_source_key(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tier_uploads_every_secret_spec_and_kms_holds_the_source_key_on_kryoptic() {
    local_tier_uploads_every_secret_spec_and_kms_holds_the_source_key(Family::Kryoptic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tier_generated_keys_are_proven_through_the_token_on_softhsm() {
    local_tier_generated_keys_are_proven_through_the_token(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tier_generated_keys_are_proven_through_the_token_on_kryoptic() {
    local_tier_generated_keys_are_proven_through_the_token(Family::Kryoptic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_luna_tier_uploads_every_secret_spec_and_kms_holds_the_source_key_on_softhsm() {
    hsm_luna_tier_uploads_every_secret_spec_and_kms_holds_the_source_key(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_luna_tier_uploads_every_secret_spec_and_kms_holds_the_source_key_on_kryoptic() {
    hsm_luna_tier_uploads_every_secret_spec_and_kms_holds_the_source_key(Family::Kryoptic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_luna_keys_generated_in_the_token_match_the_tokens_own_operations_on_softhsm() {
    hsm_luna_keys_generated_in_the_token_match_the_tokens_own_operations(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_luna_keys_generated_in_the_token_match_the_tokens_own_operations_on_kryoptic() {
    hsm_luna_keys_generated_in_the_token_match_the_tokens_own_operations(Family::Kryoptic).await;
}

/// Round trips: an upload makes six KMS calls, whatever the tier (external-cm and dsm are
/// counted in their own tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_makes_six_kms_calls_from_the_local_and_hsm_luna_tiers() {
    let tokens = Tokens::new();
    let luna = secret(32);
    put_secret(&tokens.source, "calls-luna", Kind::Aes, &luna, true);
    let wire = crate::proxy::FaultProxy::start().await;
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(wire.url.clone()),
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let local = secret(32);
    let key = b.vault_import("calls-local", "aes", &local).await;
    for (tier, ident, material) in [
        ("local", key.as_str(), &local),
        ("hsm-luna", "calls-luna", &luna),
    ] {
        let from = wire.seen().len();
        let (s, r) = b
            .upload(upload_body(
                &b,
                tier,
                ident,
                "SYMMETRIC_DEFAULT",
                &format!("calls/{tier}"),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        crate::proxy::assert_upload_calls(&wire.seen()[from..], tier);
        let id = r["aws_param"]["KeyID"].as_str().expect("KeyID");
        prove_aes(&kms, id, material).await;
        // What was not read back is what AWS holds: a refresh changes nothing in aws_param.
        let (s, fresh) = b
            .post(
                &format!(
                    "/api/v1/cckm/aws/keys/{}/refresh",
                    r["id"].as_str().expect("id")
                ),
                &json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{fresh}");
        assert_eq!(
            fresh["aws_param"], r["aws_param"],
            "{tier}: the record was true"
        );
    }
    b.finish().await;
}

/// The tier remembers a source key it found; a key replaced in the token under the same label
/// (new material, new CKA_ID) is what the next upload sends, and a key deleted there is not
/// found, before any key is made in AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_key_replaced_or_deleted_in_the_token_is_found_afresh() {
    let tokens = Tokens::new();
    let first = secret(32);
    let first_id = put_secret(&tokens.source, "swap-me", Kind::Aes, &first, true);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    let upload = |alias: &'static str| {
        b.upload(upload_body(
            &b,
            "hsm-luna",
            "swap-me",
            "SYMMETRIC_DEFAULT",
            alias,
        ))
    };
    let (s, r) = upload("swap/first").await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["local_key_id"], hex::encode(&first_id));
    prove_aes(&kms, r["aws_param"]["KeyID"].as_str().expect("id"), &first).await;

    let destroy = || {
        let s = world().session(&tokens.source);
        let h = find_one(&s, "swap-me");
        s.destroy_object(h).expect("C_DestroyObject");
    };
    destroy();
    let second = secret(32);
    let second_id = put_secret(&tokens.source, "swap-me", Kind::Aes, &second, true);
    let (s, r) = upload("swap/second").await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["local_key_id"], hex::encode(&second_id));
    prove_aes(&kms, r["aws_param"]["KeyID"].as_str().expect("id"), &second).await;

    destroy();
    let keys = kms_key_count(&kms).await;
    let (s, r) = upload("swap/gone").await;
    assert_error(s, &r, 404, "source tokens");
    assert_eq!(kms_key_count(&kms).await, keys, "no key made in AWS");
    b.finish().await;
}
