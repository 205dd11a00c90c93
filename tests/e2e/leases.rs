//! Material leases: the material is imported to expire and the bridge imports it again before
//! it does. LocalStack does not keep ValidTo, so the recording proxy shows what the bridge
//! sends: each renewal's ImportKeyMaterial with a later ValidTo.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::FaultProxy;

async fn record(b: &Bridge, id: &str) -> Value {
    let (s, r) = b.get(&format!("/api/v1/cckm/aws/keys/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    r
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "{what} did not happen within 90 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The ValidTo (Unix seconds) of every ImportKeyMaterial of `key` that crossed the proxy.
fn imported_valid_to(proxy: &FaultProxy, key: &str) -> Vec<f64> {
    proxy
        .exchanges()
        .iter()
        .filter(|x| x.op == "ImportKeyMaterial" && x.status == 200)
        .filter_map(|x| serde_json::from_slice::<Value>(&x.request).ok())
        .filter(|v| v["KeyId"] == key)
        .map(|v| {
            assert_eq!(v["ExpirationModel"], "KEY_MATERIAL_EXPIRES", "{v}");
            v["ValidTo"].as_f64().expect("ValidTo")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_key_is_renewed_before_it_expires_and_failing_renewals_are_reported() {
    let proxy = FaultProxy::start().await;
    let tokens = Tokens::new();
    let material = secret(32);
    put_secret(&tokens.source, "lease-aes", Kind::Aes, &material, true);
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            extra_toml: "[schedules]\ncheck_interval_secs = 1\nkeys_per_minute = 600\nallow_seconds = true\n"
                .into(),
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let body = json!({"source_key_tier": "hsm-luna", "source_key_identifier": "lease-aes",
                      "kms": b.kms_name, "region": REGION, "aws_param": {"Alias": "leased"},
                      "lease_secs": 9});
    let mut both = body.clone();
    both["aws_param"]["ValidTo"] = json!("2027-01-31T00:00:00Z");
    both["key_expiration"] = json!(true);
    let (s, e) = b.upload(both).await;
    assert_error(s, &e, 400, "lease");

    let before = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let (s, r) = b.upload(body).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let id = r["id"].as_str().expect("id").to_owned();
    let key = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    assert_eq!(r["lease"]["lease_secs"], 9, "{r}");
    assert_eq!(r["aws_param"]["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert!(r["lease"]["next_renewal_at"].is_string(), "{r}");
    let first = imported_valid_to(&proxy, &key);
    assert_eq!(first.len(), 1);
    assert!(
        (first[0] - before - 9.0).abs() < 5.0,
        "ValidTo is now + the lease: {first:?}"
    );

    // Renewed twice, each import with a later ValidTo.
    wait_until("two renewals", async || {
        record(&b, &id).await["lease"]["renewals"].as_u64() >= Some(2)
    })
    .await;
    let valid_to = imported_valid_to(&proxy, &key);
    assert!(valid_to.len() >= 3, "{valid_to:?}");
    assert!(
        valid_to.windows(2).all(|w| w[1] > w[0]),
        "each renewal moves ValidTo forward: {valid_to:?}"
    );
    let r = record(&b, &id).await;
    assert!(r["lease"]["last_renewal"].is_string(), "{r}");
    assert_eq!(r["lease"]["failures"], 0);
    let (_, h) = b.get(&format!("/api/v1/cckm/aws/keys/{id}/history")).await;
    assert!(h.to_string().contains("hsm-bridge (lease renewal)"), "{h}");
    prove_aes(&kms, &key, &material).await;

    // Listed among the keys whose material expires soon; a key without expiry is not.
    let plain = b.vault_import("lease-none", "aes", &secret(32)).await;
    let (s, other) = b
        .upload(json!({"source_key_identifier": plain, "kms": b.kms_name, "region": REGION}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let (s, l) = b.get("/api/v1/cckm/aws/keys?expiring_within=1d").await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let ids: Vec<&str> = l["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && !ids.contains(&other["id"].as_str().unwrap_or("")),
        "{l}"
    );
    let (s, e) = b.get("/api/v1/cckm/aws/keys?expiring_within=soon").await;
    assert_error(s, &e, 400, "expiring_within");

    // An operator's import-material with a valid_to moves the lease; without one it is refused.
    let (s, e) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{id}/import-material"),
            &json!({}),
        )
        .await;
    assert_error(s, &e, 400, "leased");
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let later_s = later
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (s, r) = b
        .post(
            &format!("/api/v1/cckm/aws/keys/{id}/import-material"),
            &json!({"key_expiration": true, "valid_to": later_s}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["lease"]["expires_unix"], later.unix_timestamp(), "{r}");

    // The source key gone: renewals fail, are retried, and are reported.
    {
        let s = world().session(&tokens.source);
        let k = find_one(&s, "lease-aes");
        s.destroy_object(k).expect("destroy the source key");
    }
    wait_until("two failed renewals", async || {
        record(&b, &id).await["lease"]["failures"].as_u64() >= Some(2)
    })
    .await;
    let r = record(&b, &id).await;
    assert!(r["lease"]["last_error"].is_string(), "{r}");
    let (_, h) = b
        .get(&format!("/api/v1/cckm/aws/keys/{id}/history?limit=100"))
        .await;
    let failed = h["resources"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["action"] == "lease-renewal" && e["outcome"] == "failed")
        .count();
    assert!(failed >= 2, "{h}");
    assert!(
        b.stderr().contains("a material lease could not be renewed"),
        "a warning in the log"
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_connection_lease_applies_to_uploads_that_name_no_expiry() {
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            env: vec![("HSM_BRIDGE__KMS__0__LEASE_DAYS".into(), "30".into())],
            with_source: false,
            ..Opts::default()
        },
    )
    .await;
    let material = secret(32);
    let key = b.vault_import("conn-lease", "aes", &material).await;
    let (s, r) = b
        .upload(json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["lease"]["lease_secs"], 30 * 86_400, "{r}");
    assert_eq!(r["aws_param"]["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    let expires = r["lease"]["expires_unix"].as_i64().expect("expires_unix");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((expires - now - 30 * 86_400).abs() < 60, "{r}");
    prove_aes(
        &b.kms().await,
        r["aws_param"]["KeyID"].as_str().expect("KeyID"),
        &material,
    )
    .await;
    // An upload naming its own expiry keeps it, without a lease.
    let valid_to = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let key = b.vault_import("own-expiry", "aes", &secret(32)).await;
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
                       "key_expiration": true, "aws_param": {"ValidTo": valid_to}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert!(r["lease"].is_null(), "{r}");
    // Seconds are for test configurations only.
    let (s, e) = b
        .upload(
            json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
                       "lease_secs": 10}),
        )
        .await;
    assert_error(s, &e, 400, "test configurations");
    b.finish().await;
}
