//! The `external-cm` tier, with a second hsm-bridge as the external CipherTrust Manager: each
//! key spec exported wrapped under the uploading bridge's transport key, unwrapped in its token
//! and proven in KMS; the wire carries only wrapped material; credential and renewal failures
//! are clear; nothing leaks from either daemon.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::{Exchange, Fault, FaultProxy};
use hsm_bridge::pkcs11::keys::PrivateKind;

const CM_USER: &str = "cckm";

/// The CM's peer user. No `[export]` section: the users' groups may export (the default).
fn users_toml(password: &str) -> String {
    format!(
        "\n[[users]]\nname = \"{CM_USER}\"\npassword_hash = \"{}\"\ngroups = [\"{GROUP}\"]\n",
        hash_password(password)
    )
}

fn write_secret_file(content: &str) -> PathBuf {
    let p = world()
        .dir
        .path()
        .join(format!("secret-{}", world().next()));
    write_private(&p, content);
    p
}

enum Cred {
    Password(String),
    Refresh(String),
}

fn cm_toml(url: &str, cred: Cred, renew_before: u64) -> String {
    let cred = match cred {
        Cred::Password(p) => format!(
            "username = \"{CM_USER}\"\npassword_file = \"{}\"",
            write_secret_file(&p).display()
        ),
        Cred::Refresh(t) => format!(
            "refresh_token_file = \"{}\"",
            write_secret_file(&t).display()
        ),
    };
    format!(
        "\n[[external_cm]]\nname = \"cm-b\"\nurl = \"{url}\"\n{cred}\nrenew_before_secs = {renew_before}\ntimeout_secs = 30\n"
    )
}

struct Pair {
    cm: Bridge,
    wire: FaultProxy,
    up: Bridge,
    password: String,
}

async fn pair(
    family: Family,
    cm_env: Vec<(String, String)>,
    cred: Option<Cred>,
    kms: Option<String>,
) -> Pair {
    let password = format!("pw-{}", hex::encode(secret(16)));
    let cm = Bridge::start(
        &Tokens::on(family),
        Opts {
            extra_toml: users_toml(&password),
            env: cm_env,
            ..Default::default()
        },
    )
    .await;
    let wire = FaultProxy::start_to(cm.url.clone()).await;
    let up = Bridge::start(
        &Tokens::on(family),
        Opts {
            extra_toml: cm_toml(
                &wire.url,
                cred.unwrap_or(Cred::Password(password.clone())),
                5,
            ),
            kms_endpoint: kms,
            ..Default::default()
        },
    )
    .await;
    Pair {
        cm,
        wire,
        up,
        password,
    }
}

/// A refresh token issued by the CM for its user (password grant).
async fn refresh_token(p: &Pair) -> String {
    let (s, r) =
        p.cm.call(
            reqwest::Method::POST,
            "/api/v1/auth/tokens",
            Some(&json!({"grant_type": "password", "username": CM_USER, "password": p.password})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["token_type"], "Bearer");
    assert!(r["jwt"].as_str().is_some_and(|j| j.split('.').count() == 3));
    r["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

fn upload_body(b: &Bridge, ident: &str, spec: &str, usage: Option<&str>, alias: &str) -> Value {
    let mut v = json!({"source_key_tier": "external-cm", "source_key_identifier": ident, "kms": b.kms_name,
                       "region": REGION, "aws_param": {"Alias": alias, "CustomerMasterKeySpec": spec}});
    if let Some(u) = usage {
        v["aws_param"]["KeyUsage"] = json!(u);
    }
    v
}

/// Every export answer that crossed the wire carried wrapped material only.
fn assert_wire_wrapped(exchanges: &[Exchange], expected_exports: usize) {
    let exports: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| e.op.ends_with("/export") && e.status == 200)
        .collect();
    assert!(
        exports.len() >= expected_exports,
        "{} exports seen",
        exports.len()
    );
    let secrets = remembered();
    for e in &exports {
        let v: Value = serde_json::from_slice(&e.response).expect("JSON export answer");
        assert_eq!(v["wrapped"], true);
        assert!(v["material"].as_str().is_some_and(|m| m.len() > 64), "{v}");
        assert_no_material_in("an export answer on the wire", &e.response, &secrets);
        assert_no_material_in("an export request on the wire", &e.request, &secrets);
    }
    for e in exchanges {
        assert_no_material_in(&format!("the wire ({})", e.op), &e.response, &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_cm_uploads_every_key_spec_on_kryoptic() {
    let p = pair(Family::Kryoptic, Vec::new(), None, None).await;
    let kms = p.up.kms().await;
    let mut n = 0;
    for (spec, alg, len) in [
        ("SYMMETRIC_DEFAULT", "aes", 32),
        ("HMAC_224", "hmac-sha224", 28),
        ("HMAC_256", "hmac-sha256", 32),
        ("HMAC_384", "hmac-sha384", 48),
        ("HMAC_512", "hmac-sha512", 64),
    ] {
        let material = secret(len);
        let id =
            p.cm.vault_import(&format!("secret-{spec}"), alg, &material)
                .await;
        // Half by id, half pinned by name to the configured CM.
        let ident = if n % 2 == 0 {
            id
        } else {
            format!("cm-b:secret-{spec}")
        };
        n += 1;
        let (s, r) =
            p.up.upload(upload_body(&p.up, &ident, spec, None, &format!("ext/{n}")))
                .await;
        assert_eq!(s, StatusCode::CREATED, "{spec}: {r}");
        assert_eq!(r["key_source"], "external-cm");
        assert_eq!(r["local_key_name"], format!("secret-{spec}"));
        let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
        if spec == "SYMMETRIC_DEFAULT" {
            prove_aes(&kms, &key, &material).await;
        } else {
            prove_hmac(&kms, &key, spec, &material).await;
        }
    }
    for (kind, usage) in [
        (PrivateKind::Rsa2048, "SIGN_VERIFY"),
        (PrivateKind::Rsa3072, "ENCRYPT_DECRYPT"),
        (PrivateKind::Rsa4096, "SIGN_VERIFY"),
        (PrivateKind::EcP256, "SIGN_VERIFY"),
        (PrivateKind::EcP384, "SIGN_VERIFY"),
        (PrivateKind::EcP521, "SIGN_VERIFY"),
    ] {
        let der = openssl_key(kind);
        let alg = if kind.rsa_bits().is_some() {
            "rsa"
        } else {
            "ec"
        };
        let (s, v) = p
            .cm
            .post("/api/v1/vault/keys2", &json!({"name": format!("private-{n}"), "algorithm": alg, "material": pkcs8_pem(&der)}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let spec = match kind {
            PrivateKind::Rsa2048 => "RSA_2048",
            PrivateKind::Rsa3072 => "RSA_3072",
            PrivateKind::Rsa4096 => "RSA_4096",
            PrivateKind::EcP256 => "ECC_NIST_P256",
            PrivateKind::EcP384 => "ECC_NIST_P384",
            _ => "ECC_NIST_P521",
        };
        n += 1;
        let (s, r) =
            p.up.upload(upload_body(
                &p.up,
                v["id"].as_str().expect("id"),
                spec,
                Some(usage),
                &format!("ext/{n}"),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{kind}: {r}");
        assert_eq!(
            r["upload"]["wrapping_algorithm"],
            "RSA_AES_KEY_WRAP_SHA_256"
        );
        prove_private(
            &kms,
            r["aws_param"]["KeyID"].as_str().expect("id"),
            usage,
            &material(&der),
        )
        .await;
    }
    assert_wire_wrapped(&p.wire.exchanges(), 11);
    // The uploading bridge left no object in its tokens.
    let counts = object_counts(&p.up).await;
    assert!(
        counts.iter().all(|(_, _, session)| *session == 0),
        "{counts:?}"
    );
    p.up.finish().await;
    p.cm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_cm_on_softhsm_secret_keys_and_what_sha1_allows() {
    let kms_wire = FaultProxy::start().await;
    let p = pair(
        Family::SoftHsm,
        Vec::new(),
        None,
        Some(kms_wire.url.clone()),
    )
    .await;
    let kms = p.up.kms().await;
    for (i, (spec, alg, len)) in [
        ("SYMMETRIC_DEFAULT", "aes", 32),
        ("HMAC_224", "hmac-sha224", 32),
        ("HMAC_384", "hmac-sha384", 48),
    ]
    .into_iter()
    .enumerate()
    {
        let material = secret(len);
        let id = p.cm.vault_import(&format!("k{i}"), alg, &material).await;
        let from = kms_wire.seen().len();
        let (s, r) =
            p.up.upload(upload_body(&p.up, &id, spec, None, &format!("soft/{i}")))
                .await;
        assert_eq!(s, StatusCode::CREATED, "{spec}: {r}");
        crate::proxy::assert_upload_calls(&kms_wire.seen()[from..], "external-cm");
        let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
        if spec == "SYMMETRIC_DEFAULT" {
            prove_aes(&kms, &key, &material).await;
        } else {
            prove_hmac(&kms, &key, spec, &material).await;
        }
    }
    // P-384 and secp256k1 go SoftHSM -> SoftHSM with RSA-AES key wrap over SHA-1, and on to AWS with
    // RSA_AES_KEY_WRAP_SHA_1, which LocalStack refuses: proven by a software unwrap of what
    // the uploading bridge imported, with a test wrapping key handed to it.
    let test_key = match material(&openssl_key(PrivateKind::Rsa2048)) {
        hsm_bridge::pkcs11::keys::PrivateMaterial::Rsa(k) => *k,
        _ => unreachable!("an RSA key"),
    };
    use rsa::pkcs8::EncodePublicKey;
    kms_wire.swap_wrapping_key(
        rsa::RsaPublicKey::from(&test_key)
            .to_public_key_der()
            .expect("spki")
            .as_bytes()
            .to_vec(),
    );
    for (kind, name, spec) in [
        (PrivateKind::EcP384, "p384", "ECC_NIST_P384"),
        (PrivateKind::EcSecp256k1, "secp256k1", "ECC_SECG_P256K1"),
    ] {
        let der = openssl_key(kind);
        let (s, v) =
            p.cm.post(
                "/api/v1/vault/keys2",
                &json!({"name": name, "algorithm": "ec", "material": pkcs8_pem(&der)}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, r) =
            p.up.upload(upload_body(
                &p.up,
                name,
                spec,
                None,
                &format!("soft/{name}"),
            ))
            .await;
        assert!(
            s.is_server_error()
                && r["message"]
                    .as_str()
                    .expect("msg")
                    .contains("ImportKeyMaterial"),
            "{s} {r}"
        );
        let blob = kms_wire.captured().pop().expect("imported material");
        use rsa::traits::PublicKeyParts;
        let k = test_key.size();
        let eph = test_key
            .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &blob[..k])
            .expect("ephemeral key");
        let eph: [u8; 32] = eph.as_slice().try_into().expect("AES-256");
        let out = aes_kw::KekAes256::new(&eph.into())
            .unwrap_with_padding_vec(&blob[k..])
            .expect("RFC 5649");
        assert!(
            material(&out).same_key(&material(&der)),
            "the wrapped {kind} material is the CM's key"
        );
        eprintln!(
            "proof for external-cm {kind} on SoftHSM2: software unwrap with a test wrapping key"
        );
    }
    // An uploader that holds only a refresh token (refresh_token_file) works the same.
    let with_refresh = Bridge::start(
        &Tokens::new(),
        Opts {
            extra_toml: cm_toml(&p.wire.url, Cred::Refresh(refresh_token(&p).await), 5),
            ..Default::default()
        },
    )
    .await;
    let material = secret(32);
    let id = p.cm.vault_import("via-refresh", "aes", &material).await;
    let (s, r) = with_refresh
        .upload(upload_body(
            &with_refresh,
            &id,
            "SYMMETRIC_DEFAULT",
            None,
            "refresh",
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    prove_aes(
        &with_refresh.kms().await,
        r["aws_param"]["KeyID"].as_str().expect("id"),
        &material,
    )
    .await;
    assert_wire_wrapped(&p.wire.exchanges(), 5);
    with_refresh.finish().await;
    p.up.finish().await;
    p.cm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_cm_credential_failures_and_wrong_key_types_are_clear() {
    // The CM's refresh tokens live 1 s here.
    let p = pair(
        Family::SoftHsm,
        vec![(
            "HSM_BRIDGE__AUTH__REFRESH_TOKEN_TTL_SECS".into(),
            "1".into(),
        )],
        None,
        None,
    )
    .await;
    let hmac = p.cm.vault_import("mac", "hmac-sha256", &secret(32)).await;
    let aes = p.cm.vault_import("aes", "aes", &secret(32)).await;

    // The CM's own endpoints, as any CipherTrust client uses them.
    let (s, r) =
        p.cm.call(
            reqwest::Method::POST,
            "/api/v1/auth/tokens",
            Some(&json!({"grant_type": "password", "username": CM_USER, "password": "nope"})),
            None,
        )
        .await;
    assert_error(s, &r, 401, "wrong username");
    let (s, r) =
        p.cm.call(
            reqwest::Method::POST,
            "/api/v1/auth/tokens",
            Some(&json!({"grant_type": "client_credentials"})),
            None,
        )
        .await;
    assert_error(s, &r, 400, "grant_type");
    let (s, r) =
        p.cm.post(&format!("/api/v1/vault/keys2/{aes}/export"), &json!({}))
            .await;
    assert_error(s, &r, 403, "plaintext export is refused");
    // Without an [export] section only the configured peer user may export: an operator
    // token with the same group may not, whatever the wrapping key.
    let operator = mint_cli(&p.cm.config, "operator", &[GROUP]);
    let pem = {
        use rsa::pkcs8::EncodePublicKey;
        rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .expect("software RSA key")
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .expect("PEM")
    };
    let (s, r) =
        p.cm.call(
            reqwest::Method::POST,
            &format!("/api/v1/vault/keys2/{aes}/export"),
            Some(&json!({"wrapPublicKey": pem, "wrapPublicKeyPadding": "oaep"})),
            Some(&operator),
        )
        .await;
    assert_error(s, &r, 403, "peer token");

    // Wrong password at the CM: 502 naming the cause.
    let wrong = Bridge::start(
        &Tokens::new(),
        Opts {
            extra_toml: cm_toml(&p.wire.url, Cred::Password("not-the-password".into()), 5),
            ..Default::default()
        },
    )
    .await;
    let (s, r) = wrong
        .upload(upload_body(&wrong, &aes, "SYMMETRIC_DEFAULT", None, "x"))
        .await;
    assert_error(s, &r, 502, "refused the bridge's credentials");

    // An expired refresh token.
    let token = refresh_token(&p).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expired = Bridge::start(
        &Tokens::new(),
        Opts {
            extra_toml: cm_toml(&p.wire.url, Cred::Refresh(token), 5),
            ..Default::default()
        },
    )
    .await;
    let (s, r) = expired
        .upload(upload_body(&expired, &aes, "SYMMETRIC_DEFAULT", None, "x"))
        .await;
    assert_error(s, &r, 502, "refresh token is unknown or has expired");

    // A key of the wrong type for the spec, and an unknown key: refused before any export.
    let (s, r) =
        p.up.upload(upload_body(&p.up, &hmac, "SYMMETRIC_DEFAULT", None, "x"))
            .await;
    assert_error(s, &r, 400, "does not match");
    let (s, r) =
        p.up.upload(upload_body(
            &p.up,
            "no-such-key",
            "SYMMETRIC_DEFAULT",
            None,
            "x",
        ))
        .await;
    assert_error(s, &r, 404, "has no key");
    assert!(
        !p.wire
            .exchanges()
            .iter()
            .any(|e| e.op.ends_with("/export") && e.status == 200),
        "nothing was exported"
    );
    for b in [&p.up, &wrong, &expired] {
        assert_eq!(kms_key_count(&b.kms().await).await, 0, "no key reached KMS");
    }
    wrong.finish().await;
    expired.finish().await;
    p.up.finish().await;
    p.cm.finish().await;
}

/// The grant types of every token request on the wire, in order.
fn grants(wire: &FaultProxy) -> Vec<String> {
    wire.exchanges()
        .iter()
        .filter(|e| e.op == "/api/v1/auth/tokens")
        .map(|e| {
            serde_json::from_slice::<Value>(&e.request).expect("json")["grant_type"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_expiring_mid_upload_is_renewed_without_failing_it() {
    // The CM's JWTs live 1 s (its checks allow 5 s of clock skew). The uploader renews only
    // when a JWT has expired by its own clock (renew_before_secs = 0).
    let password = format!("pw-{}", hex::encode(secret(16)));
    let cm = Bridge::start(
        &Tokens::new(),
        Opts {
            extra_toml: users_toml(&password),
            env: vec![("HSM_BRIDGE__AUTH__TOKEN_TTL_SECS".into(), "1".into())],
            ..Default::default()
        },
    )
    .await;
    let wire = FaultProxy::start_to(cm.url.clone()).await;
    let up = Bridge::start(
        &Tokens::new(),
        Opts {
            extra_toml: cm_toml(&wire.url, Cred::Password(password), 0),
            ..Default::default()
        },
    )
    .await;
    let kms = up.kms().await;

    // 1. The export is held 7 s on the wire: the JWT it carries has expired when the CM sees
    //    it. The CM answers 401, the uploader renews with its refresh token and retries.
    // A CM vault key uploaded through `up` and proven in KMS.
    let upload_proven = |name: &'static str| {
        let (cm, up, kms) = (&cm, &up, &kms);
        async move {
            let material = secret(32);
            let id = cm.vault_import(name, "aes", &material).await;
            let (s, r) = up
                .upload(upload_body(up, &id, "SYMMETRIC_DEFAULT", None, name))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{r}");
            prove_aes(
                kms,
                r["aws_param"]["KeyID"].as_str().expect("id"),
                &material,
            )
            .await;
        }
    };
    wire.on_containing("/export", Fault::DelayOnce(Duration::from_secs(7)));
    upload_proven("renewed").await;
    let statuses = |wire: &FaultProxy| -> Vec<u16> {
        wire.exchanges()
            .iter()
            .filter(|e| e.op.ends_with("/export"))
            .map(|e| e.status)
            .collect()
    };
    assert_eq!(
        statuses(&wire),
        [401, 200],
        "refused once with the expired JWT, then served"
    );
    assert_eq!(
        grants(&wire),
        ["password", "refresh_token"],
        "renewed with the refresh token"
    );

    // 2. Later, the uploader's JWT has expired by its own clock: it renews before calling, so
    //    the CM never sees an expired JWT.
    tokio::time::sleep(Duration::from_secs(2)).await;
    upload_proven("ahead").await;
    // The CM tolerates some clock skew, so the statuses alone would not show the renewal:
    // the third grant on the wire does.
    assert_eq!(statuses(&wire), [401, 200, 200], "no second 401");
    assert_eq!(
        grants(&wire),
        ["password", "refresh_token", "refresh_token"],
        "renewed ahead of the call"
    );

    // The JWTs and refresh tokens that crossed the wire reach neither daemon's logs.
    let issued: Vec<Vec<u8>> = wire
        .exchanges()
        .iter()
        .filter(|e| e.op == "/api/v1/auth/tokens")
        .flat_map(|e| {
            let v: Value = serde_json::from_slice(&e.response).unwrap_or_default();
            [v["jwt"].as_str(), v["refresh_token"].as_str()]
                .into_iter()
                .flatten()
                .map(|t| t.as_bytes().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(issued.len() >= 4, "{} tokens seen", issued.len());
    for b in [&up, &cm] {
        assert_no_material_in("a daemon's logs", &b.logs(), &issued);
    }
    up.finish().await;
    cm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_checks_each_cm_and_dsm_end_to_end() {
    let k = kmip();
    let n = world().next();
    let kek = secret(32);
    let kek_name = format!("probe-kek-{n}");
    k.register(&kek_name, "aes", &kek, true);
    let password = format!("pw-{}", hex::encode(secret(16)));
    let cm = Bridge::start(
        &Tokens::new(),
        Opts {
            extra_toml: users_toml(&password),
            ..Default::default()
        },
    )
    .await;
    let tokens = Tokens::new();
    put_kek(&tokens.bridge, "dsm-kek", &kek);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let extra = [
        cm_toml(&cm.url, Cred::Password(password), 5),
        k.dsm_toml("dsm", &kek_name, "dsm-kek", k.port),
    ]
    .concat();
    let up = Bridge::start(
        &tokens,
        Opts {
            extra_toml: extra.clone(),
            ..Default::default()
        },
    )
    .await;
    let (code, out, err) = up.cli(&["probe"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("external CM cm-b"), "{out}");
    assert!(out.contains("a throwaway AES key was exported wrapped (RSA-OAEP SHA-1) and unwrapped in token bridge"), "{out}");
    assert!(out.contains("DSM dsm (127.0.0.1"), "{out}");
    assert!(
        out.contains("a throwaway AES key was fetched wrapped and unwrapped in token bridge"),
        "{out}"
    );
    assert!(
        out.contains("BEGIN PUBLIC KEY"),
        "the transport key is shown: {out}"
    );
    // Its fingerprint, as export.allowed_wrapping_keys takes it, is that of the key shown.
    {
        use base64::Engine;
        use sha2::Digest;
        let b64: String = out
            .split("-----BEGIN PUBLIC KEY-----")
            .nth(1)
            .and_then(|r| r.split("-----END PUBLIC KEY-----").next())
            .expect("PEM")
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let want = format!(
            "fingerprint (for export.allowed_wrapping_keys): sha256:{}",
            hex::encode(sha2::Sha256::digest(&der))
        );
        assert!(out.contains(&want), "{want}\n{out}");
    }
    // The throwaway key on the CM was deleted again.
    let (_, keys) = cm.get("/api/v1/vault/keys2").await;
    assert_eq!(keys["total"], 0, "{keys}");
    up.finish().await;

    // A DSM that does not answer makes probe fail, and says which.
    let tokens = Tokens::new();
    let down = Bridge::start(
        &tokens,
        Opts {
            extra_toml: k.dsm_toml("down", &kek_name, "dsm-kek", closed),
            ..Default::default()
        },
    )
    .await;
    let (code, out, _) = down.cli(&["probe"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("DSM down") && out.contains("NOT USABLE") && out.contains("cannot reach"),
        "{out}"
    );
    down.finish().await;
    cm.finish().await;
}
