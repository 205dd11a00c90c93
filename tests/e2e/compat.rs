//! CipherTrust Manager clients, unchanged: token grants with every field CipherTrust's console
//! sends, answers with every field its clients read, trailing slashes on every route, and the
//! documented fields of the other bodies accepted (used or ignored) while typos stay refused.

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::FaultProxy;

const USER: &str = "console-user";
const PASSWORD: &str = "a console password 1";

fn users_toml() -> String {
    format!(
        "\n[[users]]\nname = \"{USER}\"\npassword_hash = \"{}\"\ngroups = [\"{GROUP}\"]\n",
        hash_password(PASSWORD)
    )
}

/// The claims of a JWT (not verified: the daemon does that).
fn claims(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims")
}

/// Every field CipherTrust's token answer carries, with `duration` = `exp - iat`.
fn assert_token_answer(r: &Value) {
    for f in [
        "jwt",
        "duration",
        "token_type",
        "refresh_token",
        "refresh_token_id",
        "client_id",
    ] {
        assert!(
            r.get(f).is_some_and(|v| !v.is_null()),
            "token answer lacks {f}: {r}"
        );
    }
    assert_eq!(r["token_type"], "Bearer");
    let c = claims(r["jwt"].as_str().expect("jwt"));
    let life = c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat");
    assert_eq!(r["duration"].as_u64(), Some(life), "duration is exp - iat");
}

async fn grant(b: &Bridge, path: &str, body: Value) -> (StatusCode, Value) {
    b.call(Method::POST, path, Some(&body), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_grants_as_the_console_sends_them() {
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: users_toml(),
            with_source: false,
            ..Default::default()
        },
    )
    .await;

    // The password grant exactly as CipherTrust's web console sends it.
    let (s, first) = grant(
        &b,
        "/api/v1/auth/tokens/",
        json!({
            "grant_type": "password", "username": USER, "password": PASSWORD,
            "connection": "local_account", "cookies": true, "labels": ["web-console"],
            "renew_refresh_token": false, "domain": "root"
        }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_token_answer(&first);

    // Refreshed twice in a row, each time with the refresh token the last answer returned.
    let mut last = first.clone();
    let mut answers = Vec::new();
    for renew in [true, false] {
        let (s, r) = grant(
            &b,
            "/api/v1/auth/tokens",
            json!({
                "grant_type": "refresh_token", "refresh_token": last["refresh_token"],
                "cookies": false, "labels": [], "renew_refresh_token": renew
            }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "refresh (renew {renew}): {r}");
        assert_token_answer(&r);
        assert_ne!(
            r["refresh_token"], last["refresh_token"],
            "a new refresh token"
        );
        assert_ne!(r["refresh_token_id"], last["refresh_token_id"]);
        assert_eq!(r["client_id"], first["client_id"], "the same client");
        last = r.clone();
        answers.push(r);
    }
    // The JWT of the last refresh is accepted.
    let (s, r) = b
        .call(
            Method::GET,
            "/api/v1/cckm/aws/keys",
            None,
            last["jwt"].as_str(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");

    // A refresh token that was used is dead, and presenting it again revokes its successors.
    let (s, r) = grant(
        &b,
        "/api/v1/auth/tokens",
        json!({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}),
    )
    .await;
    assert_error(s, &r, 401, "already used");
    let (s, r) = grant(
        &b,
        "/api/v1/auth/tokens",
        json!({"grant_type": "refresh_token", "refresh_token": last["refresh_token"]}),
    )
    .await;
    assert_error(s, &r, 401, "refresh token");

    // Typos are still refused, naming the field; other connections are not known here.
    let (s, r) = grant(
        &b,
        "/api/v1/auth/tokens",
        json!({"grant_type": "password", "usernme": USER, "password": PASSWORD}),
    )
    .await;
    assert_error(s, &r, 400, "usernme");
    let (s, r) = grant(
        &b,
        "/api/v1/auth/tokens",
        json!({"grant_type": "password", "username": USER, "password": PASSWORD,
               "connection": "corporate-ldap"}),
    )
    .await;
    assert_error(s, &r, 401, "local_account");

    let logs = String::from_utf8_lossy(&b.logs()).into_owned();
    assert!(
        logs.contains("CipherTrust fields accepted and ignored") && logs.contains("cookies"),
        "the ignored fields are logged at debug"
    );
    for secret in [PASSWORD.to_owned()].into_iter().chain(
        answers
            .iter()
            .map(|a| a["refresh_token"].as_str().unwrap_or("?").to_owned()),
    ) {
        assert!(!logs.contains(&secret), "a credential reached the log");
    }
    b.finish().await;
}

/// The same request with and without a trailing slash gets the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_a_trailing_slash() {
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: users_toml(),
            ..Default::default()
        },
    )
    .await;
    let key = b.vault_import("slash-key", "aes", &secret(32)).await;
    let (s, t) = b
        .post(
            "/api/v1/cckm/aws/templates/",
            &json!({"name": "slash-template", "kms": b.kms_name,
                    "key_users": ["alice"]}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "template through a slashed path: {t}"
    );
    let template = t["id"].as_str().expect("template id").to_owned();
    let (s, up) = b
        .post(
            "/api/v1/cckm/aws/upload-key/",
            &json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
                    "aws_param": {"Alias": format!("slash-{}", world().next())}}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "upload through a slashed path: {up}"
    );
    let record = up["id"].as_str().expect("record id").to_owned();
    let (_, attempts) = b.get("/api/v1/cckm/aws/upload-attempts").await;
    let attempt = attempts["resources"][0]["id"]
        .as_str()
        .expect("attempt id")
        .to_owned();

    for path in [
        "/healthz".to_owned(),
        "/api/v1/cckm/aws/keys".to_owned(),
        format!("/api/v1/cckm/aws/keys/{record}"),
        "/api/v1/cckm/aws/templates".to_owned(),
        format!("/api/v1/cckm/aws/templates/{template}"),
        "/api/v1/cckm/aws/kms".to_owned(),
        "/api/v1/cckm/aws/upload-attempts".to_owned(),
        format!("/api/v1/cckm/aws/upload-attempts/{attempt}"),
        "/api/v1/vault/keys2".to_owned(),
        format!("/api/v1/vault/keys2/{key}"),
        "/api/v1/system/tokens".to_owned(),
    ] {
        let (s1, plain) = b.get(&path).await;
        let (s2, slashed) = b.get(&format!("{path}/")).await;
        assert_eq!(s1, StatusCode::OK, "{path}: {plain}");
        assert_eq!(s1, s2, "{path}/: {slashed}");
        assert_eq!(plain, slashed, "{path}/ answers the same");
    }
    // Methods a route does not have, and paths that are no route, answer alike too.
    let (s, r) = b
        .call(Method::PUT, "/api/v1/vault/keys2/", None, Some(&b.token))
        .await;
    assert_error(s, &r, 405, "not allowed");
    let (s, r) = b.get("/api/v1/no-such-thing/").await;
    assert_error(s, &r, 404, "no such route");

    // The token route and the write routes with a slash.
    let (s, r) = grant(
        &b,
        "/api/v1/auth/tokens/",
        json!({"grant_type": "password", "username": USER, "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, r) = b
        .post(
            "/api/v1/vault/keys2/",
            &json!({"name": "slash-created", "algorithm": "aes", "size": 256}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let created = r["id"].as_str().expect("id").to_owned();
    let (s, r) = b
        .call(
            Method::DELETE,
            &format!("/api/v1/vault/keys2/{created}/"),
            None,
            Some(&b.token),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{r}");
    let (s, r) = b
        .call(
            Method::DELETE,
            &format!("/api/v1/cckm/aws/templates/{template}/"),
            None,
            Some(&b.token),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{r}");
    b.finish().await;
}

/// An upload and a vault key carrying CipherTrust-only fields: accepted, used where the bridge
/// has the concept (the material description goes to ImportKeyMaterial, the top-level
/// `valid_to` is the expiry), and the key in KMS proven to be the source key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertrust_fields_are_accepted_and_the_upload_is_proven() {
    let proxy = FaultProxy::start().await;
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            ..Default::default()
        },
    )
    .await;
    let material = secret(32);
    let (s, v) = b
        .post(
            "/api/v1/vault/keys2?returnExisting=false",
            &json!({
                "name": "console-key", "algorithm": "aes", "size": 256, "usageMask": 12,
                "material": hex::encode(&material), "format": "raw", "encoding": "hex",
                "meta": {"ownerId": "local|console"}, "labels": {"team": "payments"},
                "unexportable": false, "undeletable": false, "objectType": "Symmetric Key",
                "activationDate": "2026-01-01T00:00:00Z", "aliases": [], "idSize": 16,
                "xts": false, "rotationFrequencyDays": "0", "state": "Active"
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = v["id"].as_str().expect("id").to_owned();
    // Asked again with returnExisting, the same key comes back.
    let (s, again) = b
        .post(
            "/api/v1/vault/keys2?returnExisting=true",
            &json!({"name": "console-key", "algorithm": "aes", "size": 256}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], key.as_str());
    // Documented options the vault does not implement are refused, not read differently.
    for (field, value) in [
        ("wrapKeyName", json!("some-kek")),
        ("emptyMaterial", json!(true)),
        ("password", json!("pkcs12 password")),
    ] {
        let mut body = json!({"name": format!("refused-{field}"), "algorithm": "aes"});
        body[field] = value;
        let (s, r) = b.post("/api/v1/vault/keys2", &body).await;
        assert_error(s, &r, 400, field);
    }
    let (s, r) = b
        .post(
            &format!("/api/v1/vault/keys2/{key}/export?type=id&version=0"),
            &json!({"wrapPublicKey": "unused", "wrapJWE": {"keyEncryptionAlgorithm": "RSA-OAEP"}}),
        )
        .await;
    assert_error(s, &r, 400, "wrapJWE");
    let (s, r) = b
        .get("/api/v1/vault/keys2?name=console-key&state=Active&fields=name&limit=5")
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["total"], 1);

    let valid_to = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .replace_nanosecond(0)
        .expect("whole seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (s, up) = b
        .upload(json!({
            "source_key_tier": "local", "source_key_identifier": key,
            "kms": b.kms_name, "region": REGION,
            "key_expiration": true, "valid_to": valid_to,
            "key_material_description": "uploaded from the console",
            "aws_param": {"Alias": format!("console-{}", world().next()),
                          "Origin": "EXTERNAL", "CurrentKeyMaterialId": "ignored"}
        }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{up}");
    let key_id = up["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    prove_aes(&b.kms().await, &key_id, &material).await;

    let import = proxy
        .exchanges()
        .into_iter()
        .find(|e| e.op == "ImportKeyMaterial")
        .expect("ImportKeyMaterial went through the proxy");
    let sent: Value = serde_json::from_slice(&import.request).expect("JSON request");
    assert_eq!(sent["KeyMaterialDescription"], "uploaded from the console");
    assert_eq!(sent["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    let expected =
        time::OffsetDateTime::parse(&valid_to, &time::format_description::well_known::Rfc3339)
            .expect("parse")
            .unix_timestamp();
    assert_eq!(sent["ValidTo"].as_f64().map(|f| f as i64), Some(expected));

    // A misspelled upload field is still a 400 naming it, and nothing reaches KMS.
    let before = kms_key_count(&b.kms().await).await;
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
                       "key_materail_description": "typo"}),
        )
        .await;
    assert_error(s, &r, 400, "key_materail_description");
    assert_eq!(kms_key_count(&b.kms().await).await, before);
    b.finish().await;
}
