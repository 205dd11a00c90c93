//! Bearer tokens: each way a token can be wrong is refused with 401 (or 403 for a group that
//! is not allowed), with the error body, and nothing reaches KMS.

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

use crate::harness::*;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sign(secret: &[u8], claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn claims(iss: &str, exp: i64, groups: &[&str]) -> serde_json::Value {
    json!({"iss": iss, "sub": "mallory", "iat": now(), "exp": exp, "cust": {"groups": groups}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_and_nothing_reaches_aws() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let id = b.vault_import("guarded", "aes", &secret(32)).await;
    let body = serde_json::to_vec(&json!({
        "source_key_identifier": id, "kms": b.kms_name, "region": REGION,
        "aws_param": {"Alias": "guarded"}
    }))
    .expect("body");
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(ISSUER, now() + 300, &[GROUP]))
    );
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "missing Authorization"),
        (
            "not bearer",
            Some("Basic YWxpY2U6cHc=".into()),
            401,
            "Bearer",
        ),
        ("garbage", Some("Bearer not.a.jwt".into()), 401, "malformed"),
        (
            "bad signature",
            Some(format!(
                "Bearer {}",
                sign(&random_bytes(48), claims(ISSUER, now() + 300, &[GROUP]))
            )),
            401,
            "signature",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(&b.jwt_secret, claims(ISSUER, now() - 600, &[GROUP]))
            )),
            401,
            "expired",
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                sign(&b.jwt_secret, claims("someone-else", now() + 300, &[GROUP]))
            )),
            401,
            "issuer",
        ),
        ("alg none", Some(format!("Bearer {alg_none}")), 401, "token"),
        (
            "wrong group",
            Some(format!(
                "Bearer {}",
                sign(&b.jwt_secret, claims(ISSUER, now() + 300, &["Key Users"]))
            )),
            403,
            "groups",
        ),
        (
            "no groups",
            Some(format!(
                "Bearer {}",
                sign(
                    &b.jwt_secret,
                    json!({"iss": ISSUER, "sub": "x", "exp": now() + 300})
                )
            )),
            403,
            "groups",
        ),
    ];
    for (name, header, want, needle) in cases {
        let mut rq = reqwest::Client::new()
            .post(format!("{}/api/v1/cckm/aws/upload-key", b.url))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(h) = &header {
            rq = rq.header("authorization", h);
        }
        let resp = rq.send().await.expect("request");
        let s = resp.status();
        let r: serde_json::Value = resp.json().await.expect("json body");
        assert_eq!(s.as_u16(), want, "{name}: {r}");
        assert_error(s, &r, want, needle);
    }
    // Reads need a token too.
    for path in [
        "/api/v1/cckm/aws/keys",
        "/api/v1/vault/keys2",
        "/api/v1/cckm/aws/templates",
        "/api/v1/cckm/aws/upload-attempts",
    ] {
        let (s, r) = b.raw(Method::GET, path, None, Vec::new(), None).await;
        assert_error(s, &r, 401, "Authorization");
    }
    assert_eq!(kms_key_count(&b.kms().await).await, 0);

    // The same request with a good token goes through.
    let (s, r) = b
        .raw(
            Method::POST,
            "/api/v1/cckm/aws/upload-key",
            Some("application/json"),
            body,
            Some(&b.token),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{r}");
    b.finish().await;
}
