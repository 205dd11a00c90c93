//! Failures injected after CreateKey: no enabled half-made key stays in KMS, and every
//! failed attempt is recorded with the AWS key id until that key is scheduled for deletion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

async fn setup(cleanup_secs: u64) -> (Tokens, FaultProxy, Bridge, String) {
    let tokens = Tokens::new();
    let proxy = FaultProxy::start().await;
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            cleanup_interval_secs: cleanup_secs,
            ..Default::default()
        },
    )
    .await;
    let id = b.vault_import("faulty", "aes", &secret(32)).await;
    (tokens, proxy, b, id)
}

fn body(b: &Bridge, id: &str, alias: &str) -> Value {
    json!({
        "source_key_identifier": id,
        "kms": b.kms_name,
        "region": REGION,
        "aws_param": {"Alias": alias}
    })
}

async fn only_key(b: &Bridge) -> (String, String) {
    let keys = kms_keys(&b.kms().await).await;
    assert_eq!(keys.len(), 1, "exactly one key was created: {keys:?}");
    keys[0].clone()
}

async fn attempts(b: &Bridge) -> Vec<Value> {
    let (s, v) = b.get("/api/v1/cckm/aws/upload-attempts?limit=100").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["resources"].as_array().expect("resources").clone()
}

/// Waits for the (only) attempt to be settled as cleaned, naming the key.
async fn wait_until_cleaned(b: &Bridge, key_id: &str) {
    let start = Instant::now();
    loop {
        let a = attempts(b).await;
        if a[0]["state"] == "cleaned" {
            assert_eq!(a[0]["aws_key_id"], key_id);
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "attempt not settled: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_state(b: &Bridge, key_id: &str, want: &str, within: Duration) {
    let kms = b.kms().await;
    let start = Instant::now();
    loop {
        let st = kms
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .expect("DescribeKey")
            .key_metadata()
            .and_then(|m| m.key_state())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        if st == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "key {key_id} stayed {st}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refused_schedules_the_new_key_for_deletion_at_once() {
    let (_t, proxy, b, id) = setup(60).await;
    proxy.on(
        "ImportKeyMaterial",
        Fault::Refuse {
            status: 500,
            aws_type: "KMSInternalException",
        },
    );
    let (s, r) = b.upload(body(&b, &id, "refused-import")).await;
    assert_error(s, &r, 503, "scheduled for deletion");
    let (key_id, state) = only_key(&b).await;
    assert_eq!(state, "PendingDeletion");
    assert!(
        r["message"].as_str().expect("message").contains(&key_id),
        "{r}"
    );
    let a = attempts(&b).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["state"], "cleaned");
    assert_eq!(a[0]["stage"], "ImportKeyMaterial");
    assert_eq!(a[0]["aws_key_id"], key_id.as_str());
    assert!(a[0]["deletion_date"].is_string(), "{a:?}");
    let (_, list) = b.get("/api/v1/cckm/aws/keys").await;
    assert_eq!(list["total"], 0, "no record for a failed upload");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_refused_after_import_leaves_no_enabled_key() {
    let (_t, proxy, b, id) = setup(60).await;
    proxy.on(
        "CreateAlias",
        Fault::Refuse {
            status: 400,
            aws_type: "AlreadyExistsException",
        },
    );
    let (s, r) = b.upload(body(&b, &id, "refused-alias")).await;
    assert_error(s, &r, 409, "scheduled for deletion");
    let (_, state) = only_key(&b).await;
    assert_eq!(
        state, "PendingDeletion",
        "the imported (enabled) key must not stay usable"
    );
    assert_eq!(attempts(&b).await[0]["stage"], "CreateAlias");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_going_away_after_create_key_is_cleaned_up_when_it_returns() {
    let (_t, proxy, b, id) = setup(1).await;
    proxy.after("CreateKey", Fault::Drop);
    let (s, r) = b.upload(body(&b, &id, "gone-away")).await;
    assert_error(s, &r, 503, "could not be scheduled for deletion yet");
    let (key_id, state) = only_key(&b).await;
    assert_eq!(
        state, "PendingImport",
        "never usable: no material reached it"
    );
    let a = attempts(&b).await;
    assert_eq!(a[0]["aws_key_id"], key_id.as_str());
    assert_eq!(a[0]["state"], "cleanup_pending");
    assert!(a[0]["cleanup_error"].is_string());

    proxy.heal();
    wait_for_state(&b, &key_id, "PendingDeletion", Duration::from_secs(20)).await;
    let start = Instant::now();
    while attempts(&b).await[0]["state"] != "cleaned" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "attempt not marked cleaned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_key_answer_is_found_by_its_tag_and_cleaned_up() {
    let (_t, proxy, b, id) = setup(1).await;
    // CreateKey's answer is lost and AWS then goes away before the upload can look for the
    // key by its tag: the attempt stays `creating` and the cleaner finds the key later.
    proxy.on("CreateKey", Fault::LoseAnswer);
    proxy.on("ListKeys", Fault::Drop);
    proxy.on("ScheduleKeyDeletion", Fault::Drop);
    let (s, r) = b.upload(body(&b, &id, "lost-answer")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    let (key_id, _) = only_key(&b).await;
    let a = attempts(&b).await;
    assert_eq!(a[0]["state"], "creating", "{a:?}");
    assert!(a[0]["aws_key_id"].is_null());
    proxy.heal();
    wait_for_state(&b, &key_id, "PendingDeletion", Duration::from_secs(20)).await;
    wait_until_cleaned(&b, &key_id).await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_upload_cleans_up_after_restart() {
    let (_t, proxy, mut b, id) = setup(60).await;
    let release = Arc::new(tokio::sync::Notify::new());
    proxy.on("ImportKeyMaterial", Fault::Hold(release.clone()));
    let url = format!("{}/api/v1/cckm/aws/upload-key", b.url);
    let (token, req) = (b.token.clone(), body(&b, &id, "killed"));
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&req)
            .send()
            .await
    });
    let start = Instant::now();
    while !proxy.seen().iter().any(|s| s == "ImportKeyMaterial") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "upload never reached ImportKeyMaterial"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.kill();
    assert!(
        pending.await.expect("join").is_err(),
        "the caller saw the daemon die"
    );
    release.notify_waiters();
    proxy.heal();
    let (key_id, state) = only_key(&b).await;
    assert_eq!(state, "PendingImport");

    b.launch().await;
    wait_for_state(&b, &key_id, "PendingDeletion", Duration::from_secs(20)).await;
    wait_until_cleaned(&b, &key_id).await;
    b.finish().await;
}
