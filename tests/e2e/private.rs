//! RSA and ECC keys, from both tiers, on both token families: each upload proven in KMS (or,
//! where the token can only do RSA_AES_KEY_WRAP_SHA_1, which LocalStack refuses, by unwrapping
//! what the daemon imported with a test wrapping key), each refusal clear, and no object left
//! behind in any token.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::FaultProxy;
use hsm_bridge::pkcs11::keys::{PrivateKind, PrivateMaterial};

fn spec_of(kind: PrivateKind) -> &'static str {
    match kind {
        PrivateKind::Rsa2048 => "RSA_2048",
        PrivateKind::Rsa3072 => "RSA_3072",
        PrivateKind::Rsa4096 => "RSA_4096",
        PrivateKind::EcP256 => "ECC_NIST_P256",
        PrivateKind::EcP384 => "ECC_NIST_P384",
        PrivateKind::EcP521 => "ECC_NIST_P521",
        PrivateKind::EcSecp256k1 => "ECC_SECG_P256K1",
    }
}

fn body(
    b: &Bridge,
    tier: &str,
    source: &str,
    kind: PrivateKind,
    usage: &str,
    alias: &str,
) -> Value {
    json!({
        "source_key_tier": tier,
        "source_key_identifier": source,
        "kms": b.kms_name,
        "region": REGION,
        "aws_param": {"Alias": alias, "CustomerMasterKeySpec": spec_of(kind), "KeyUsage": usage}
    })
}

fn label_alias(i: usize) -> String {
    format!("luna/{i}")
}

fn spki_from_pem(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM body")
}

/// The independent check of an RSA_AES_KEY_WRAP_SHA_1 blob: OAEP-SHA-1 of the ephemeral key
/// under the test key, then RFC 5649 of the PKCS#8.
fn unwrap_sha1(test_key: &rsa::RsaPrivateKey, blob: &[u8]) -> Vec<u8> {
    use rsa::traits::PublicKeyParts;
    let k = test_key.size();
    let eph = test_key
        .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &blob[..k])
        .expect("the ephemeral key unwraps with the test key and OAEP SHA-1");
    let eph: [u8; 32] = eph.as_slice().try_into().expect("an AES-256 ephemeral key");
    aes_kw::KekAes256::new(&eph.into())
        .unwrap_with_padding_vec(&blob[k..])
        .expect("the private key unwraps with RFC 5649")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kryoptic_uploads_every_private_key_spec_from_both_tiers_proven_in_kms() {
    let tokens = Tokens::on(Family::Kryoptic);
    let cases: Vec<(PrivateKind, &str)> = vec![
        (PrivateKind::Rsa2048, "SIGN_VERIFY"),
        (PrivateKind::Rsa2048, "ENCRYPT_DECRYPT"),
        (PrivateKind::Rsa3072, "SIGN_VERIFY"),
        (PrivateKind::Rsa3072, "ENCRYPT_DECRYPT"),
        (PrivateKind::Rsa4096, "SIGN_VERIFY"),
        (PrivateKind::Rsa4096, "ENCRYPT_DECRYPT"),
        (PrivateKind::EcP256, "SIGN_VERIFY"),
        (PrivateKind::EcP384, "SIGN_VERIFY"),
        (PrivateKind::EcP521, "SIGN_VERIFY"),
    ];
    let mut luna = Vec::new();
    for (i, (kind, _)) in cases.iter().enumerate() {
        let der = openssl_key(*kind);
        put_private(&tokens.source, &format!("luna-{i}"), &der, true);
        luna.push(der);
    }
    // A P-256 scalar whose first byte is zero, held short in the source token as kryoptic's
    // own key generation leaves such keys.
    let mut d: [u8; 32] = rand::random();
    d[0] = 0;
    put_ec_value(&tokens.source, "short-scalar", PrivateKind::EcP256, &d[1..]);
    // The largest wrapping key AWS offers: the OAEP layer is not tied to 2048 bits.
    let b = Bridge::start(
        &tokens,
        Opts {
            wrapping_key_spec: "RSA_4096",
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let before = object_counts(&b).await;

    for (i, (kind, usage)) in cases.iter().enumerate() {
        // hsm-luna: the key lives in the source token and is wrapped there.
        let label = format!("luna-{i}");
        let (s, r) = b
            .upload(body(
                &b,
                "hsm-luna",
                &label,
                *kind,
                usage,
                &format!("luna/{i}"),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{kind} {usage}: {r}");
        assert_eq!(r["aws_param"]["CustomerMasterKeySpec"], spec_of(*kind));
        assert_eq!(r["aws_param"]["KeyUsage"], *usage);
        assert_eq!(r["key_type"], "asymmetric");
        assert_eq!(
            r["upload"]["wrapping_algorithm"],
            "RSA_AES_KEY_WRAP_SHA_256"
        );
        let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
        crate::upload::assert_record(&b, &r, spec_of(*kind), "hsm-luna", &label_alias(i)).await;
        prove_private(&kms, &key, usage, &material(&luna[i])).await;

        // local: the same spec from a vault key imported as PEM.
        let der = openssl_key(*kind);
        let m = material(&der);
        let alg = if kind.rsa_bits().is_some() {
            "rsa"
        } else {
            "ec"
        };
        let (s, k) = b
            .post(
                "/api/v1/vault/keys2",
                &json!({"name": format!("vault-{i}"), "algorithm": alg, "material": pkcs8_pem(&der)}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        assert_eq!(k["objectType"], "Private Key");
        assert_eq!(
            spki_from_pem(k["publickey"].as_str().expect("publickey")),
            m.public_spki_der().expect("spki")
        );
        let (s, r) = b
            .upload(body(
                &b,
                "local",
                &format!("vault-{i}"),
                *kind,
                usage,
                &format!("local/{i}"),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{kind} {usage}: {r}");
        let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
        prove_private(&kms, &key, usage, &m).await;
    }

    // Keys generated in the bridge token: KMS holds the public key the vault shows.
    // kryoptic drops the leading zero bytes of half of the P-521 scalars it generates (and 1 in
    // 256 of the others); the vault measures each key and generates again, so four P-521 keys
    // pass through that path with a chance of 15 in 16, and every one must reach AWS whole.
    let generated = [
        ("rsa", json!({"size": 3072}), PrivateKind::Rsa3072),
        ("ec", json!({"curveid": "prime256v1"}), PrivateKind::EcP256),
        ("ec", json!({"curveid": "secp521r1"}), PrivateKind::EcP521),
        ("ec", json!({"curveid": "secp521r1"}), PrivateKind::EcP521),
        ("ec", json!({"curveid": "secp521r1"}), PrivateKind::EcP521),
        ("ec", json!({"curveid": "secp521r1"}), PrivateKind::EcP521),
    ];
    for (n, (alg, extra, kind)) in generated.into_iter().enumerate() {
        let alg = format!("{alg}-{n}");
        let mut req =
            json!({"name": format!("generated-{alg}"), "algorithm": alg.split('-').next()});
        req.as_object_mut()
            .expect("obj")
            .extend(extra.as_object().expect("obj").clone());
        let (s, k) = b.post("/api/v1/vault/keys2", &req).await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        assert_eq!(k["origin"], "generated");
        let spki = spki_from_pem(k["publickey"].as_str().expect("publickey"));
        let (s, r) = b
            .upload(body(
                &b,
                "local",
                &format!("generated-{alg}"),
                kind,
                "SIGN_VERIFY",
                &format!("gen-{alg}"),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
        let theirs = kms
            .get_public_key()
            .key_id(&key)
            .send()
            .await
            .expect("GetPublicKey");
        assert_eq!(theirs.public_key().expect("pk").as_ref(), spki.as_slice());
        prove_signature(&kms, &key, &spki, kind).await;
    }

    // kryoptic cannot hold secp256k1 keys: refused with the reason, nothing reaches AWS.
    let keys_before = kms_key_count(&kms).await;
    let der = openssl_key(PrivateKind::EcSecp256k1);
    let (s, r) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "k1", "algorithm": "ec", "material": pkcs8_pem(&der)}),
        )
        .await;
    assert_error(s, &r, 422, "cannot keep EC secp256k1 keys");
    assert!(
        r["message"].as_str().expect("msg").contains("token bridge"),
        "{r}"
    );
    assert_eq!(kms_key_count(&kms).await, keys_before);

    // A scalar whose first byte is zero. Imported, it is kept at full length and AWS takes it.
    let der = {
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::SecretKey::from_slice(&d).expect("a P-256 scalar");
        sk.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec()
    };
    let (s, k) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "zero-lead", "algorithm": "ec", "material": pkcs8_pem(&der)}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let (s, r) = b
        .upload(body(
            &b,
            "local",
            "zero-lead",
            PrivateKind::EcP256,
            "SIGN_VERIFY",
            "zero-lead",
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
    prove_private(&kms, &key, "SIGN_VERIFY", &material(&der)).await;
    // Held short in a source token (as kryoptic's own key generation leaves such a key), it
    // would export a PKCS#8 that AWS refuses after CreateKey: refused first, nothing in AWS.
    let keys_before = kms_key_count(&kms).await;
    let (s, r) = b
        .upload(body(
            &b,
            "hsm-luna",
            "short-scalar",
            PrivateKind::EcP256,
            "SIGN_VERIFY",
            "short-scalar",
        ))
        .await;
    assert_error(s, &r, 422, "without its leading zero byte");
    assert_eq!(kms_key_count(&kms).await, keys_before);

    // Every object made for a wrap is gone again.
    assert_eq!(
        object_counts(&b).await,
        before,
        "no object left in any token"
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softhsm_private_keys_are_exported_exactly_or_refused() {
    let tokens = Tokens::on(Family::SoftHsm);
    let p384 = openssl_key(PrivateKind::EcP384);
    let k1 = openssl_key(PrivateKind::EcSecp256k1);
    let p384_local = openssl_key(PrivateKind::EcP384);
    let k1_luna = openssl_key(PrivateKind::EcSecp256k1);
    put_private(&tokens.source, "luna-p384", &p384, true);
    put_private(&tokens.source, "luna-k1", &k1_luna, true);
    for (label, kind) in [
        ("luna-rsa", PrivateKind::Rsa2048),
        ("luna-p256", PrivateKind::EcP256),
        ("luna-p521", PrivateKind::EcP521),
    ] {
        put_private(&tokens.source, label, &openssl_key(kind), true);
    }
    let test_key = match material(&openssl_key(PrivateKind::Rsa2048)) {
        PrivateMaterial::Rsa(k) => *k,
        PrivateMaterial::Ec { .. } => unreachable!("an RSA key"),
    };
    let proxy = FaultProxy::start().await;
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            ..Default::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let before = object_counts(&b).await;

    // SoftHSM2 2.6.1 pads RFC 5649 input: keys whose PKCS#8 is not a multiple of 8 bytes
    // (RSA, P-256, P-521) cannot be exported exactly, so their uploads are refused.
    for (label, kind) in [
        ("luna-rsa", PrivateKind::Rsa2048),
        ("luna-p256", PrivateKind::EcP256),
        ("luna-p521", PrivateKind::EcP521),
    ] {
        let (s, r) = b
            .upload(body(&b, "hsm-luna", label, kind, "SIGN_VERIFY", label))
            .await;
        assert_error(
            s,
            &r,
            422,
            &format!("token luna cannot export {kind} keys exactly"),
        );
        assert!(
            r["message"]
                .as_str()
                .expect("msg")
                .contains("invalid PKCS#8"),
            "{r}"
        );
    }
    let (s, r) = b
        .post("/api/v1/vault/keys2", &json!({"name": "p256", "algorithm": "ec", "material": pkcs8_pem(&openssl_key(PrivateKind::EcP256))}))
        .await;
    assert_error(s, &r, 422, "token bridge cannot keep EC P-256 keys");
    let (s, r) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "rsa", "algorithm": "rsa"}),
        )
        .await;
    assert_error(s, &r, 422, "cannot keep RSA-2048 keys");
    assert_eq!(
        kms_key_count(&kms).await,
        0,
        "no key reached KMS for a refused type"
    );

    // P-384 and secp256k1 are exact, but SoftHSM2 proves only RSA_AES_KEY_WRAP_SHA_1, which
    // LocalStack refuses at import. The proof is a software unwrap of what the daemon sent,
    // with a test wrapping key handed to it in place of LocalStack's.
    use rsa::pkcs8::EncodePublicKey;
    let test_spki = rsa::RsaPublicKey::from(&test_key)
        .to_public_key_der()
        .expect("spki")
        .as_bytes()
        .to_vec();
    proxy.swap_wrapping_key(test_spki);
    for (name, der) in [("k1", &k1), ("p384", &p384_local)] {
        let vault = b
            .post(
                "/api/v1/vault/keys2",
                &json!({"name": name, "algorithm": "ec", "material": pkcs8_pem(der)}),
            )
            .await;
        assert_eq!(vault.0, StatusCode::CREATED, "{}", vault.1);
    }
    for (n, (tier, ident, kind, der)) in [
        ("hsm-luna", "luna-p384", PrivateKind::EcP384, &p384),
        ("hsm-luna", "luna-k1", PrivateKind::EcSecp256k1, &k1_luna),
        ("local", "k1", PrivateKind::EcSecp256k1, &k1),
        ("local", "p384", PrivateKind::EcP384, &p384_local),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, r) = b
            .upload(body(
                &b,
                tier,
                ident,
                kind,
                "SIGN_VERIFY",
                &format!("sha1-{n}"),
            ))
            .await;
        assert!(
            s.is_server_error(),
            "LocalStack refuses RSA_AES_KEY_WRAP_SHA_1: {s} {r}"
        );
        assert!(
            r["message"]
                .as_str()
                .expect("msg")
                .contains("ImportKeyMaterial"),
            "{r}"
        );
        assert!(
            r["message"]
                .as_str()
                .expect("msg")
                .contains("scheduled for deletion"),
            "{r}"
        );
        let captured = proxy.captured();
        assert_eq!(captured.len(), n + 1, "the daemon imported once per upload");
        let der_out = unwrap_sha1(&test_key, &captured[n]);
        assert_eq!(
            der_out.len() % 8,
            0,
            "this key type's PKCS#8 is a multiple of 8 bytes"
        );
        assert!(
            material(&der_out).same_key(&material(der)),
            "{tier} {kind}: the wrapped material is the source key"
        );
        eprintln!(
            "proof for {tier} {kind} on SoftHSM2: software unwrap with a test wrapping key \
             (RSA_AES_KEY_WRAP_SHA_1 is all the token proves, and LocalStack refuses it at import)"
        );
    }
    let keys = kms_keys(&kms).await;
    assert_eq!(keys.len(), 4);
    assert!(
        keys.iter().all(|(_, st)| st == "PendingDeletion"),
        "{keys:?}"
    );

    assert_eq!(
        object_counts(&b).await,
        before,
        "no object left in any token"
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_requests_that_do_not_fit_are_refused_before_aws() {
    let tokens = Tokens::on(Family::Kryoptic);
    put_private(
        &tokens.source,
        "rsa",
        &openssl_key(PrivateKind::Rsa2048),
        true,
    );
    put_private(
        &tokens.source,
        "locked",
        &openssl_key(PrivateKind::EcP384),
        false,
    );
    let b = Bridge::start(&tokens, Opts::default()).await;
    let (s, v) = b
        .post("/api/v1/vault/keys2", &json!({"name": "ec", "algorithm": "ec", "material": pkcs8_pem(&openssl_key(PrivateKind::EcP384))}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    b.vault_import("aes", "aes", &secret(32)).await;
    let up = |tier: &str, id: &str, spec: &str, usage: Option<&str>| {
        let mut v = json!({"source_key_tier": tier, "source_key_identifier": id, "kms": b.kms_name,
                           "region": REGION, "aws_param": {"CustomerMasterKeySpec": spec}});
        if let Some(u) = usage {
            v["aws_param"]["KeyUsage"] = json!(u);
        }
        v
    };
    let cases = [
        (
            up("hsm-luna", "rsa", "RSA_2048", None),
            400,
            "KeyUsage: is required for RSA_2048",
        ),
        (
            up("local", "ec", "ECC_NIST_P384", Some("ENCRYPT_DECRYPT")),
            400,
            "not allowed for ECC_NIST_P384",
        ),
        (
            up("hsm-luna", "rsa", "RSA_3072", Some("SIGN_VERIFY")),
            400,
            "RSA_3072 does not match",
        ),
        (
            up("local", "ec", "ECC_NIST_P256", None),
            400,
            "ECC_NIST_P256 does not match",
        ),
        (
            up("local", "ec", "SYMMETRIC_DEFAULT", None),
            400,
            "needs a secret key",
        ),
        (
            up("local", "aes", "RSA_2048", Some("SIGN_VERIFY")),
            400,
            "needs a private key",
        ),
        (
            up("hsm-luna", "locked", "ECC_NIST_P384", None),
            422,
            "not extractable",
        ),
        (
            up("hsm-luna", "nope", "ECC_NIST_P384", None),
            404,
            "no private key",
        ),
    ];
    for (req, status, needle) in cases {
        let (s, r) = b.upload(req).await;
        assert_error(s, &r, status, needle);
    }
    let (s, r) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "bad", "algorithm": "rsa", "material": "not a pem"}),
        )
        .await;
    assert_error(s, &r, 400, "PEM");
    let (s, r) = b
        .post(
            "/api/v1/vault/keys2",
            &json!({"name": "bad", "algorithm": "rsa", "size": 1024}),
        )
        .await;
    assert_error(s, &r, 400, "2048, 3072 or 4096");
    let (s, r) = b
        .post("/api/v1/vault/keys2", &json!({"name": "bad", "algorithm": "rsa", "material": pkcs8_pem(&openssl_key(PrivateKind::EcP384))}))
        .await;
    assert_error(s, &r, 400, "does not match algorithm rsa");
    assert_eq!(kms_key_count(&b.kms().await).await, 0);
    b.finish().await;
}
