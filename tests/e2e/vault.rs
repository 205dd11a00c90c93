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

    // Without an [export] section nobody may export, whatever the wrapping key.
    let (s, r) = b
        .post(
            &format!("/api/v1/vault/keys2/{imported}/export"),
            &json!({"wrapPublicKey": wrapping_pem(&test_rsa_key()), "wrapPublicKeyPadding": "oaep"}),
        )
        .await;
    assert_error(s, &r, 403, "exports are disabled");
    b.finish().await;
}

fn test_rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("software RSA key")
}

fn wrapping_pem(k: &rsa::RsaPrivateKey) -> String {
    use rsa::pkcs8::EncodePublicKey;
    k.to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .expect("PEM")
}

fn fingerprint(k: &rsa::RsaPrivateKey) -> String {
    use rsa::pkcs8::EncodePublicKey;
    use sha2::Digest;
    let der = k.to_public_key().to_public_key_der().expect("DER");
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(der.as_bytes()))
    )
}

/// Exporting is the power to read a key: only the configured groups may, and only to the
/// configured wrapping keys. What an allowed export yields is the key, wrapped for its holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_need_an_allowed_group_and_an_allowed_wrapping_key() {
    let tokens = Tokens::new();
    let allowed = test_rsa_key();
    let other = test_rsa_key();
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: format!(
                "\n[export]\nallowed_groups = [\"admin\"]\nallowed_wrapping_keys = [\"{}\"]\n{}",
                fingerprint(&allowed)
                    .to_uppercase()
                    .replace("SHA256:", "sha256:"),
                peers_toml(&[
                    ("root", "root's password", &["admin"]),
                    ("carol", "carol's password", &[GROUP]),
                ])
            ),
            ..Opts::default()
        },
    )
    .await;
    let material = secret(32);
    let id = b.vault_import("exportable", "aes", &material).await;
    let path = format!("/api/v1/vault/keys2/{id}/export");
    let to = |k: &rsa::RsaPrivateKey| json!({"wrapPublicKey": wrapping_pem(k), "wrapPublicKeyPadding": "oaep"});

    // A peer whose groups may not export; an operator token of an allowed group (only peer
    // tokens export); then the allowed peer.
    let carol = peer_token(&b, "carol", "carol's password").await;
    let (s, r) = b
        .call(
            reqwest::Method::POST,
            &path,
            Some(&to(&allowed)),
            Some(&carol),
        )
        .await;
    assert_error(s, &r, 403, "export.allowed_groups");
    let operator = mint_cli(&b.config, "root", &["admin"]);
    let (s, r) = b
        .call(
            reqwest::Method::POST,
            &path,
            Some(&to(&allowed)),
            Some(&operator),
        )
        .await;
    assert_error(s, &r, 403, "peer token");
    let admin = peer_token(&b, "root", "root's password").await;
    let (s, r) = b
        .call(
            reqwest::Method::POST,
            &path,
            Some(&to(&other)),
            Some(&admin),
        )
        .await;
    assert_error(s, &r, 403, "export.allowed_wrapping_keys");
    assert!(
        r["message"]
            .as_str()
            .expect("msg")
            .contains(&fingerprint(&other)),
        "the refusal names the refused key: {r}"
    );
    let (_, k) = b.get(&path.replace("/export", "")).await;
    assert_eq!(k["neverExported"], true, "{k}");

    let (s, r) = b
        .call(
            reqwest::Method::POST,
            &path,
            Some(&to(&allowed)),
            Some(&admin),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["wrapped"], true);
    let wrapped = hex::decode(r["material"].as_str().expect("material")).expect("hex");
    assert_ne!(wrapped, material);
    let unwrapped = allowed
        .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &wrapped)
        .expect("the export unwraps with the allowed key");
    assert_eq!(unwrapped, material, "the export is the vault key");
    let (_, k) = b.get(&path.replace("/export", "")).await;
    assert_eq!(k["neverExported"], false, "{k}");

    // The KEK is replaced behind the daemon's back: the stored key is refused before any
    // key is created in KMS.
    {
        let s = world().session(&tokens.bridge);
        s.destroy_object(find_one(&s, "hsm-bridge-vault-kek"))
            .expect("C_DestroyObject");
    }
    put_kek(&tokens.bridge, "hsm-bridge-vault-kek", &secret(32));
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": "exportable", "kms": b.kms_name, "region": REGION,
                       "aws_param": {"CustomerMasterKeySpec": "SYMMETRIC_DEFAULT"}}),
        )
        .await;
    assert_error(s, &r, 422, "stored under another KEK");
    assert_eq!(
        kms_key_count(&b.kms().await).await,
        0,
        "nothing reached KMS"
    );
    b.finish().await;
}
