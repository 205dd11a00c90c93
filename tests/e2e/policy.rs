//! Key policies (default, explicit, from lists, from a template), expiry, multi-Region and
//! tags as AWS ends up holding them.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

async fn aws_policy(b: &Bridge, key_id: &str) -> Value {
    let p = b
        .kms()
        .await
        .get_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .send()
        .await
        .expect("GetKeyPolicy");
    serde_json::from_str(p.policy().expect("policy")).expect("policy JSON")
}

fn sids(p: &Value) -> Vec<String> {
    p["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .filter_map(|s| s["Sid"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_expiry_and_tags_reach_aws() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let material = secret(32);
    let src = b.vault_import("policy-src", "aes", &material).await;
    let base = |alias: &str| {
        json!({"source_key_tier": "local", "source_key_identifier": src, "kms": b.kms_name,
               "region": REGION, "aws_param": {"Alias": alias}})
    };

    // Default policy: the account root only.
    let (s, r) = b.upload(base("default-policy")).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
    let p = aws_policy(&b, &key).await;
    assert_eq!(sids(&p), ["Enable IAM User Permissions"]);
    assert_eq!(
        p["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{}:root", b.account)
    );
    assert_eq!(
        r["aws_param"]["ExpirationModel"],
        "KEY_MATERIAL_DOES_NOT_EXPIRE"
    );

    // Lists: administrators, users, roles and external accounts.
    let mut req = base("list-policy");
    req["key_admins"] = json!(["alice"]);
    req["key_users_roles"] = json!(["app-role"]);
    req["external_accounts"] = json!(["111122223333"]);
    let (s, r) = b.upload(req).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["key_admins"], json!(["alice"]));
    assert_eq!(r["external_accounts"], json!(["111122223333"]));
    let p = aws_policy(&b, r["aws_param"]["KeyID"].as_str().expect("id")).await;
    assert_eq!(
        sids(&p),
        [
            "Enable IAM User Permissions",
            "Allow access for Key Administrators",
            "Allow use of the key",
            "Allow attachment of persistent resources"
        ]
    );
    let text = p.to_string();
    assert!(text.contains(&format!("arn:aws:iam::{}:user/alice", b.account)));
    assert!(text.contains(&format!("arn:aws:iam::{}:role/app-role", b.account)));
    assert!(text.contains("arn:aws:iam::111122223333:root"));

    // An explicit policy is used as given.
    let explicit = json!({"Version": "2012-10-17", "Id": "mine", "Statement": [
        {"Sid": "Only root", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{}:root", b.account)},
         "Action": "kms:*", "Resource": "*"}]});
    let mut req = base("explicit-policy");
    req["aws_param"]["Policy"] = explicit.clone();
    let (s, r) = b.upload(req).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(
        aws_policy(&b, r["aws_param"]["KeyID"].as_str().expect("id")).await,
        explicit
    );

    // Expiry, description, tags, multi-Region.
    let valid_to = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .replace_nanosecond(0)
        .expect("ns")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let mut req = base("expiring");
    req["KeyExpiration"] = json!(true);
    req["aws_param"]["ValidTo"] = json!(valid_to);
    req["aws_param"]["Description"] = json!("expires in a month");
    req["aws_param"]["MultiRegion"] = json!(true);
    req["aws_param"]["Tags"] =
        json!([{"TagKey": "team", "TagValue": "crypto ops"}, {"TagKey": "empty", "TagValue": ""}]);
    let (s, r) = b.upload(req).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let key = r["aws_param"]["KeyID"].as_str().expect("id").to_owned();
    assert_eq!(r["aws_param"]["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(r["aws_param"]["MultiRegion"], true);
    assert_eq!(r["aws_param"]["Description"], "expires in a month");
    let kms = b.kms().await;
    let m = kms
        .describe_key()
        .key_id(&key)
        .send()
        .await
        .expect("DescribeKey");
    let m = m.key_metadata().expect("metadata");
    assert_eq!(
        m.expiration_model().map(|e| e.as_str()),
        Some("KEY_MATERIAL_EXPIRES")
    );
    assert_eq!(m.multi_region(), Some(true));
    let want =
        time::OffsetDateTime::parse(&valid_to, &time::format_description::well_known::Rfc3339)
            .expect("parse")
            .unix_timestamp();
    // LocalStack does not keep ValidTo (real AWS does): the record shows what was imported.
    if let Some(v) = m.valid_to() {
        assert_eq!(v.secs(), want);
    }
    let recorded = time::OffsetDateTime::parse(
        r["aws_param"]["ValidTo"]
            .as_str()
            .expect("ValidTo in the record"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    assert_eq!(recorded.unix_timestamp(), want);
    let tags = kms
        .list_resource_tags()
        .key_id(&key)
        .send()
        .await
        .expect("tags");
    let tags: Vec<(String, String)> = tags
        .tags()
        .iter()
        .map(|t| (t.tag_key().to_owned(), t.tag_value().to_owned()))
        .collect();
    assert!(
        tags.contains(&("team".into(), "crypto ops".into())),
        "{tags:?}"
    );
    assert!(tags.contains(&("empty".into(), String::new())), "{tags:?}");
    prove_aes(&kms, &key, &material).await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_templates_are_stored_applied_and_guarded() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let src = b.vault_import("tpl-src", "hmac-sha256", &secret(32)).await;

    let (s, t) = b
        .post(
            "/api/v1/cckm/aws/templates",
            &json!({"name": "users-only", "kms": b.kms_name, "key_users": ["carol"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let tid = t["id"].as_str().expect("id").to_owned();
    assert_eq!(t["kms_id"], b.kms_id.as_str());
    assert_eq!(t["account_id"], b.account.as_str());

    let (s, _) = b
        .post(
            "/api/v1/cckm/aws/templates",
            &json!({"name": "users-only", "kms": b.kms_name}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "names are unique");
    let (s, r) = b
        .post("/api/v1/cckm/aws/templates", &json!({"name": "mixed", "kms": b.kms_name, "key_users": ["x"], "policy": {"Statement": []}}))
        .await;
    assert_error(s, &r, 400, "mutually exclusive");
    let (s, r) = b
        .post(
            "/api/v1/cckm/aws/templates",
            &json!({"name": "elsewhere", "kms": "no-such-kms"}),
        )
        .await;
    assert_error(s, &r, 404, "no-such-kms");
    let (s, r) = b
        .post("/api/v1/cckm/aws/templates", &json!({"kms": b.kms_name}))
        .await;
    assert_error(s, &r, 400, "name");
    for bad in ["tab\there", "new\nline", "bell\u{7}", "<script>"] {
        let (s, r) = b
            .post(
                "/api/v1/cckm/aws/templates",
                &json!({"name": bad, "kms": b.kms_name, "key_users": ["x"]}),
            )
            .await;
        assert_error(s, &r, 400, "control characters");
    }

    let (s, list) = b.get("/api/v1/cckm/aws/templates").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 1);
    let (s, got) = b.get(&format!("/api/v1/cckm/aws/templates/{tid}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, t);

    let (s, r) = b
        .upload(json!({"source_key_identifier": src, "kms": b.kms_name, "region": REGION,
                       "policytemplate": tid, "aws_param": {"Alias": "templated", "CustomerMasterKeySpec": "HMAC_256"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["policy_template_id"], tid.as_str());
    let tags = r["aws_param"]["Tags"].as_array().expect("tags");
    assert!(
        tags.contains(&json!({"TagKey": "cckm_policy_template_id", "TagValue": tid})),
        "{tags:?}"
    );
    let p = aws_policy(&b, r["aws_param"]["KeyID"].as_str().expect("id")).await;
    assert!(
        p.to_string()
            .contains(&format!("arn:aws:iam::{}:user/carol", b.account))
    );
    assert!(
        p.to_string().contains("kms:GenerateMac"),
        "HMAC key users may MAC: {p}"
    );

    let (s, r) = b
        .call(
            Method::DELETE,
            &format!("/api/v1/cckm/aws/templates/{tid}"),
            None,
            Some(&b.token),
        )
        .await;
    assert_error(s, &r, 409, "associated");
    let (s, t2) = b
        .post(
            "/api/v1/cckm/aws/templates",
            &json!({"name": "unused", "kms": b.kms_id}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = b
        .call(
            Method::DELETE,
            &format!(
                "/api/v1/cckm/aws/templates/{}",
                t2["id"].as_str().expect("id")
            ),
            None,
            Some(&b.token),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, list) = b.get("/api/v1/cckm/aws/templates").await;
    assert_eq!(list["total"], 1);
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_credentials_can_come_from_a_named_profile() {
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            aws_profile: true,
            ..Default::default()
        },
    )
    .await;
    let material = secret(32);
    let src = b.vault_import("profiled", "aes", &material).await;
    let (s, r) = b
        .upload(json!({"source_key_identifier": src, "kms": b.kms_id, "region": REGION, "aws_param": {"Alias": "profiled"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(
        r["aws_param"]["AWSAccountId"],
        b.account.as_str(),
        "the profile's account"
    );
    prove_aes(
        &b.kms().await,
        r["aws_param"]["KeyID"].as_str().expect("id"),
        &material,
    )
    .await;
    b.finish().await;
}
