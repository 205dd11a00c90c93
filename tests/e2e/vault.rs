//! The local vault: generation and import, listing, and a token's storage limits.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_keys_are_created_listed_and_kept_across_restarts() {
    let tokens = Tokens::new();
    let mut b = Bridge::start(&tokens, Opts::default()).await;

    let (s, k) = b
        .post("/api/v1/vault/keys2", &json!({"name": "default-aes"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    assert_eq!(k["algorithm"], "AES");
    assert_eq!(k["size"], 256);
    assert_eq!(k["objectType"], "Symmetric Key");
    assert!(k["id"].as_str().expect("id").len() == 64);
    assert!(k.get("material").is_none());

    let (s, r) = b
        .post("/api/v1/vault/keys2", &json!({"name": "default-aes"}))
        .await;
    assert_error(s, &r, 409, "already exists");
    let (s, r) = b
        .post("/api/v1/vault/keys2", &json!({"name": "mismatch", "algorithm": "aes", "size": 128, "material": hex::encode(secret(32))}))
        .await;
    assert_error(s, &r, 400, "size");

    // SoftHSM2 2.6.1 pads RFC 5649 input: a 28-byte HMAC-SHA224 key cannot be kept exactly.
    let (s, r) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "h224", "algorithm": "hmac-sha224"}),
        )
        .await;
    assert_error(s, &r, 422, "multiple of 8");
    assert!(
        r["message"].as_str().expect("msg").contains("token bridge"),
        "{r}"
    );
    let (s, k224) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "h224", "algorithm": "hmac-sha224", "size": 256}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k224}");

    let material = secret(48);
    let imported = b
        .vault_import("imported-384", "hmac-sha384", &material)
        .await;
    let (_, list) = b.get("/api/v1/vault/keys2").await;
    assert_eq!(list["total"], 3);
    let (_, by_name) = b.get("/api/v1/vault/keys2?name=imported-384").await;
    assert_eq!(by_name["resources"][0]["id"], imported.as_str());
    let (_, by_alg) = b.get("/api/v1/vault/keys2?algorithm=HMAC-SHA224").await;
    assert_eq!(by_alg["total"], 1);

    // The KEK lives on in the token: after a restart the stored key still uploads, intact.
    b.restart().await;
    let (s, got) = b.get("/api/v1/vault/keys2/imported-384").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["id"], imported.as_str());
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": "imported-384", "kms": b.kms_name, "region": REGION,
                       "aws_param": {"CustomerMasterKeySpec": "HMAC_384"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    prove_hmac(
        &b.kms().await,
        r["aws_param"]["KeyID"].as_str().expect("id"),
        "HMAC_384",
        &material,
    )
    .await;
    b.finish().await;
}
