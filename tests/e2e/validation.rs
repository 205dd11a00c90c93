//! Every refusal: the status, CipherTrust's error body, and no new key in KMS afterwards.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

struct Case {
    name: &'static str,
    body: Value,
    status: u16,
    needle: &'static str,
}

fn in_days(d: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(d))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Starts from a valid request and changes one thing.
fn with(base: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut v = base.clone();
    f(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_upload_is_refused_before_anything_reaches_aws() {
    let tokens = Tokens::new();
    put_secret(&tokens.source, "locked", Kind::Aes, &secret(32), false);
    put_secret(&tokens.source, "dup", Kind::Aes, &secret(32), true);
    put_secret(&tokens.source, "dup", Kind::Aes, &secret(32), true);
    put_secret(&tokens.source, "short-hmac", Kind::Hmac, &secret(20), true);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let aes = b.vault_import("aes-key", "aes", &secret(32)).await;
    let hmac = b.vault_import("hmac-key", "hmac-sha384", &secret(48)).await;
    let kms = b.kms().await;

    let base = json!({
        "source_key_tier": "local",
        "source_key_identifier": aes,
        "kms": b.kms_name,
        "region": REGION,
        "aws_param": {"Alias": "valid-alias", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT"}
    });
    let cases = vec![
        Case {
            name: "unknown tier",
            body: with(&base, |v| v["source_key_tier"] = json!("cloud")),
            status: 400,
            needle: "source_key_tier",
        },
        Case {
            name: "dsm not configured",
            body: with(&base, |v| v["source_key_tier"] = json!("dsm")),
            status: 400,
            needle: "no Data Security Manager is configured",
        },
        Case {
            name: "external-cm not configured",
            body: with(&base, |v| v["source_key_tier"] = json!("external-cm")),
            status: 400,
            needle: "no external CipherTrust Manager is configured",
        },
        Case {
            name: "no identifier",
            body: with(&base, |v| {
                v.as_object_mut()
                    .expect("obj")
                    .remove("source_key_identifier");
            }),
            status: 400,
            needle: "source_key_identifier: is required",
        },
        Case {
            name: "empty kms",
            body: with(&base, |v| v["kms"] = json!("")),
            status: 400,
            needle: "kms",
        },
        Case {
            name: "no region",
            body: with(&base, |v| {
                v.as_object_mut().expect("obj").remove("region");
            }),
            status: 400,
            needle: "region: is required",
        },
        Case {
            name: "unknown key spec",
            body: with(&base, |v| {
                v["aws_param"]["CustomerMasterKeySpec"] = json!("AES_256")
            }),
            status: 400,
            needle: "CustomerMasterKeySpec",
        },
        Case {
            name: "asymmetric spec not yet",
            body: with(&base, |v| {
                v["aws_param"]["CustomerMasterKeySpec"] = json!("RSA_2048");
                v["aws_param"]["KeyUsage"] = json!("SIGN_VERIFY");
            }),
            status: 400,
            needle: "RSA_2048",
        },
        Case {
            name: "unknown usage",
            body: with(&base, |v| v["aws_param"]["KeyUsage"] = json!("WRAP")),
            status: 400,
            needle: "KeyUsage",
        },
        Case {
            name: "usage wrong for spec",
            body: with(&base, |v| v["aws_param"]["KeyUsage"] = json!("SIGN_VERIFY")),
            status: 400,
            needle: "not allowed for SYMMETRIC_DEFAULT",
        },
        Case {
            name: "hmac with encrypt usage",
            body: with(&base, |v| {
                v["source_key_identifier"] = json!(hmac);
                v["aws_param"]["CustomerMasterKeySpec"] = json!("HMAC_384");
                v["aws_param"]["KeyUsage"] = json!("ENCRYPT_DECRYPT");
            }),
            status: 400,
            needle: "not allowed for HMAC_384",
        },
        Case {
            name: "origin not external",
            body: with(&base, |v| v["aws_param"]["Origin"] = json!("AWS_KMS")),
            status: 400,
            needle: "Origin",
        },
        Case {
            name: "alias characters",
            body: with(&base, |v| v["aws_param"]["Alias"] = json!("no spaces")),
            status: 400,
            needle: "Alias",
        },
        Case {
            name: "alias reserved",
            body: with(&base, |v| v["aws_param"]["Alias"] = json!("alias/aws/mine")),
            status: 400,
            needle: "reserved",
        },
        Case {
            name: "alias too long",
            body: with(&base, |v| v["aws_param"]["Alias"] = json!("a".repeat(300))),
            status: 400,
            needle: "256",
        },
        Case {
            name: "tag aws prefix",
            body: with(&base, |v| {
                v["aws_param"]["Tags"] = json!([{"TagKey": "aws:owner", "TagValue": "x"}])
            }),
            status: 400,
            needle: "aws: prefix",
        },
        Case {
            name: "tag characters",
            body: with(&base, |v| {
                v["aws_param"]["Tags"] = json!([{"TagKey": "k", "TagValue": "a<b>"}])
            }),
            status: 400,
            needle: "TagValue",
        },
        Case {
            name: "tag duplicate",
            body: with(
                &base,
                |v| {
                    v["aws_param"]["Tags"] =
                        json!([{"TagKey": "k", "TagValue": "1"}, {"TagKey": "k", "TagValue": "2"}])
                },
            ),
            status: 400,
            needle: "twice",
        },
        Case {
            name: "tag key too long",
            body: with(&base, |v| {
                v["aws_param"]["Tags"] = json!([{"TagKey": "k".repeat(129), "TagValue": "1"}])
            }),
            status: 400,
            needle: "128",
        },
        Case {
            name: "tag reserved",
            body: with(&base, |v| {
                v["aws_param"]["Tags"] =
                    json!([{"TagKey": "cckm_policy_template_id", "TagValue": "1"}])
            }),
            status: 400,
            needle: "set by the bridge",
        },
        Case {
            name: "expiry without ValidTo",
            body: with(&base, |v| v["key_expiration"] = json!(true)),
            status: 400,
            needle: "ValidTo: is required",
        },
        Case {
            name: "ValidTo not RFC 3339",
            body: with(&base, |v| {
                v["KeyExpiration"] = json!(true);
                v["aws_param"]["ValidTo"] = json!("next tuesday");
            }),
            status: 400,
            needle: "RFC 3339",
        },
        Case {
            name: "ValidTo in the past",
            body: with(&base, |v| {
                v["key_expiration"] = json!(true);
                v["aws_param"]["ValidTo"] = json!(in_days(-1));
            }),
            status: 400,
            needle: "future",
        },
        Case {
            name: "ValidTo too far",
            body: with(&base, |v| {
                v["key_expiration"] = json!(true);
                v["aws_param"]["ValidTo"] = json!(in_days(400));
            }),
            status: 400,
            needle: "365 days",
        },
        Case {
            name: "ValidTo without expiry",
            body: with(&base, |v| v["aws_param"]["ValidTo"] = json!(in_days(10))),
            status: 400,
            needle: "only allowed when key_expiration is true",
        },
        Case {
            name: "policy and template",
            body: with(&base, |v| {
                v["aws_param"]["Policy"] = json!({"Version": "2012-10-17", "Statement": []});
                v["policytemplate"] = json!("t");
            }),
            status: 400,
            needle: "mutually exclusive",
        },
        Case {
            name: "policy and lists",
            body: with(&base, |v| {
                v["aws_param"]["Policy"] = json!({"Version": "2012-10-17", "Statement": []});
                v["key_users"] = json!(["bob"]);
            }),
            status: 400,
            needle: "mutually exclusive",
        },
        Case {
            name: "template and lists",
            body: with(&base, |v| {
                v["policytemplate"] = json!("t");
                v["external_accounts"] = json!(["111122223333"]);
            }),
            status: 400,
            needle: "mutually exclusive",
        },
        Case {
            name: "policy not an object",
            body: with(&base, |v| v["aws_param"]["Policy"] = json!([1, 2])),
            status: 400,
            needle: "Policy",
        },
        Case {
            name: "bad external account",
            body: with(&base, |v| v["external_accounts"] = json!(["12345"])),
            status: 400,
            needle: "12-digit",
        },
        Case {
            name: "bad IAM name",
            body: with(&base, |v| v["key_admins"] = json!(["bad name!"])),
            status: 400,
            needle: "IAM name",
        },
        Case {
            name: "unknown kms",
            body: with(&base, |v| v["kms"] = json!("no-such-kms")),
            status: 404,
            needle: "no-such-kms",
        },
        Case {
            name: "region not of the kms",
            body: with(&base, |v| v["region"] = json!("ap-south-1")),
            status: 400,
            needle: "not a region of kms",
        },
        Case {
            name: "unknown vault key",
            body: with(&base, |v| v["source_key_identifier"] = json!("nope")),
            status: 404,
            needle: "no vault key",
        },
        Case {
            name: "unknown luna key",
            body: with(&base, |v| {
                v["source_key_tier"] = json!("hsm-luna");
                v["source_key_identifier"] = json!("nope");
            }),
            status: 404,
            needle: "source tokens",
        },
        Case {
            name: "unknown template",
            body: with(&base, |v| v["policytemplate"] = json!("no-such-template")),
            status: 404,
            needle: "policy template",
        },
        Case {
            name: "spec does not match vault key",
            body: with(&base, |v| {
                v["aws_param"]["CustomerMasterKeySpec"] = json!("HMAC_256");
            }),
            status: 400,
            needle: "does not match",
        },
        Case {
            name: "spec does not match luna key",
            body: with(&base, |v| {
                v["source_key_tier"] = json!("hsm-luna");
                v["source_key_identifier"] = json!("short-hmac");
                v["aws_param"]["CustomerMasterKeySpec"] = json!("HMAC_256");
            }),
            status: 400,
            needle: "20 bytes",
        },
        Case {
            name: "luna key not extractable",
            body: with(&base, |v| {
                v["source_key_tier"] = json!("hsm-luna");
                v["source_key_identifier"] = json!("locked");
            }),
            status: 422,
            needle: "not extractable",
        },
        Case {
            name: "luna label ambiguous",
            body: with(&base, |v| {
                v["source_key_tier"] = json!("hsm-luna");
                v["source_key_identifier"] = json!("dup");
            }),
            status: 409,
            needle: "unique labels",
        },
    ];
    for c in cases {
        let (s, r) = b.upload(c.body).await;
        assert_eq!(s.as_u16(), c.status, "{}: {r}", c.name);
        assert_error(s, &r, c.status, c.needle);
    }
    assert_eq!(kms_key_count(&kms).await, 0, "no key reached KMS");
    assert_eq!(
        kms_key_count(&b.kms_in(OTHER_REGION).await).await,
        0,
        "nor the other region"
    );
    let (_, a) = b.get("/api/v1/cckm/aws/upload-attempts").await;
    assert_eq!(a["total"], 0, "nothing was attempted: {a}");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_already_taken_is_refused_before_create_key() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let first = b.vault_import("one", "aes", &secret(32)).await;
    let second = b.vault_import("two", "aes", &secret(32)).await;
    let req = |id: &str| json!({"source_key_identifier": id, "kms": b.kms_name, "region": REGION, "aws_param": {"Alias": "taken"}});
    let (s, r) = b.upload(req(&first)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let (s, r) = b.upload(req(&second)).await;
    assert_error(s, &r, 409, "already exists");
    assert_eq!(kms_key_count(&b.kms().await).await, 1, "no second key");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_yield_a_500() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let t = Some(b.token.as_str());
    let up = "/api/v1/cckm/aws/upload-key";
    let json_ct = Some("application/json");
    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "syntax",
            Method::POST,
            up,
            json_ct,
            b"{\"kms\": ".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "not an object",
            Method::POST,
            up,
            json_ct,
            b"[1,2,3]".to_vec(),
            400,
            "invalid type",
        ),
        (
            "empty body",
            Method::POST,
            up,
            json_ct,
            Vec::new(),
            400,
            "empty",
        ),
        (
            "unknown field",
            Method::POST,
            up,
            json_ct,
            br#"{"kms":"k","bogus":1}"#.to_vec(),
            400,
            "bogus",
        ),
        (
            "unknown aws_param field",
            Method::POST,
            up,
            json_ct,
            br#"{"aws_param":{"Colour":"red"}}"#.to_vec(),
            400,
            "aws_param.Colour: unknown field `Colour`",
        ),
        (
            "wrong type",
            Method::POST,
            up,
            json_ct,
            br#"{"region": 5}"#.to_vec(),
            400,
            "region",
        ),
        (
            "wrong nested type",
            Method::POST,
            up,
            json_ct,
            br#"{"aws_param":{"Tags":"x"}}"#.to_vec(),
            400,
            "aws_param.Tags",
        ),
        (
            "both expiry spellings",
            Method::POST,
            up,
            json_ct,
            br#"{"KeyExpiration":true,"key_expiration":true}"#.to_vec(),
            400,
            "duplicate field",
        ),
        (
            "not UTF-8",
            Method::POST,
            up,
            json_ct,
            vec![0xff, 0xfe, 0x7b],
            400,
            "malformed JSON",
        ),
        (
            "wrong content type",
            Method::POST,
            up,
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "application/json",
        ),
        (
            "oversized",
            Method::POST,
            up,
            json_ct,
            format!("{{\"kms\":\"{}\"}}", "x".repeat(200_000)).into_bytes(),
            413,
            "too large",
        ),
        (
            "unknown route",
            Method::GET,
            "/api/v1/nothing/here",
            None,
            Vec::new(),
            404,
            "no such route",
        ),
        (
            "wrong method",
            Method::DELETE,
            up,
            None,
            Vec::new(),
            405,
            "not allowed",
        ),
        (
            "bad query",
            Method::GET,
            "/api/v1/cckm/aws/keys?limit=lots",
            None,
            Vec::new(),
            400,
            "limit",
        ),
        (
            "unknown query",
            Method::GET,
            "/api/v1/cckm/aws/keys?colour=red",
            None,
            Vec::new(),
            400,
            "colour",
        ),
        (
            "vault unknown field",
            Method::POST,
            "/api/v1/vault/keys2",
            json_ct,
            br#"{"name":"x","shape":"round"}"#.to_vec(),
            400,
            "shape",
        ),
        (
            "vault bad hex",
            Method::POST,
            "/api/v1/vault/keys2",
            json_ct,
            br#"{"name":"x","material":"zz"}"#.to_vec(),
            400,
            "hex",
        ),
        (
            "vault bad size",
            Method::POST,
            "/api/v1/vault/keys2",
            json_ct,
            br#"{"name":"x","algorithm":"aes","size":100}"#.to_vec(),
            400,
            "size",
        ),
        (
            "vault bad algorithm",
            Method::POST,
            "/api/v1/vault/keys2",
            json_ct,
            br#"{"name":"x","algorithm":"des"}"#.to_vec(),
            400,
            "algorithm",
        ),
        (
            "vault unknown key",
            Method::GET,
            "/api/v1/vault/keys2/nope",
            None,
            Vec::new(),
            404,
            "no vault key",
        ),
        (
            "aws key unknown",
            Method::GET,
            "/api/v1/cckm/aws/keys/nope",
            None,
            Vec::new(),
            404,
            "no AWS key",
        ),
        (
            "template unknown",
            Method::GET,
            "/api/v1/cckm/aws/templates/nope",
            None,
            Vec::new(),
            404,
            "no policy template",
        ),
    ];
    for (name, m, path, ct, body, want, needle) in cases {
        let (s, r) = b.raw(m, path, ct, body, t).await;
        assert_eq!(s.as_u16(), want, "{name}: {r}");
        assert_error(s, &r, want, needle);
    }
    assert_eq!(kms_key_count(&b.kms().await).await, 0);
    // Still serving after all that.
    let (s, _) = b.get("/api/v1/cckm/aws/keys").await;
    assert_eq!(s, StatusCode::OK);
    b.finish().await;
}
