//! Answers lost on the way back from AWS, with the SDK allowed to retry (3 attempts): CreateKey
//! is never repeated (the key it made is found by its upload tag), a CreateAlias or
//! ScheduleKeyDeletion repeated by the SDK is recognised as already done, and afterwards every
//! attempt is closed with exactly one key per completed upload.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

/// Each key of the account with its state and upload tag.
async fn keys_by_upload(b: &Bridge) -> Vec<(String, String, Option<String>)> {
    let kms = b.kms().await;
    let mut out = Vec::new();
    for (id, state) in kms_keys(&kms).await {
        let tags = kms
            .list_resource_tags()
            .key_id(&id)
            .send()
            .await
            .expect("ListResourceTags");
        let upload = tags
            .tags()
            .iter()
            .find(|t| t.tag_key() == "hsm-bridge-upload-id")
            .map(|t| t.tag_value().to_owned());
        out.push((id, state, upload));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_leave_one_key_per_upload_and_every_attempt_closed() {
    let tokens = Tokens::new();
    let proxy = FaultProxy::start().await;
    let mut b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            max_attempts: 3,
            ..Default::default()
        },
    )
    .await;
    let source = b.vault_import("lost-answers", "aes", &secret(32)).await;
    let upload = |alias: &str| {
        json!({"source_key_identifier": source, "kms": b.kms_name, "region": REGION,
               "aws_param": {"Alias": alias}})
    };

    // CreateKey made the key but its answer is lost: the upload goes on with that key.
    proxy.on("CreateKey", Fault::LoseAnswerOnce);
    let (s, r) = b.upload(upload("lost-create")).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let created = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    assert_eq!(
        proxy.seen().iter().filter(|o| *o == "CreateKey").count(),
        1,
        "CreateKey was sent once, never retried"
    );

    // CreateAlias made the alias but its answer is lost; the SDK's retry finds it there.
    proxy.on("CreateAlias", Fault::LoseAnswerOnce);
    let (s, r) = b.upload(upload("lost-alias")).await;
    assert_eq!(s, StatusCode::CREATED, "not a false conflict: {r}");
    let aliased = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    let target = b
        .kms()
        .await
        .describe_key()
        .key_id("alias/lost-alias")
        .send()
        .await
        .expect("DescribeKey");
    assert_eq!(
        target.key_metadata().map(|m| m.key_id()),
        Some(aliased.as_str())
    );

    // An upload fails after CreateKey and the answer of its ScheduleKeyDeletion is lost; the
    // SDK's retry hears "pending deletion", which means done.
    proxy.on(
        "ImportKeyMaterial",
        Fault::Refuse {
            status: 400,
            aws_type: "IncorrectKeyMaterialException",
        },
    );
    proxy.on("ScheduleKeyDeletion", Fault::LoseAnswerOnce);
    let (s, r) = b.upload(upload("lost-schedule")).await;
    assert!(s.is_client_error() || s.is_server_error(), "{r}");
    let message = r["message"].as_str().expect("message");
    assert!(
        message.contains("has been scheduled for deletion"),
        "the caller is told the key was scheduled: {r}"
    );
    proxy.heal();

    let (_, attempts) = b.get("/api/v1/cckm/aws/upload-attempts?limit=100").await;
    let attempts = attempts["resources"].as_array().expect("attempts").clone();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    let mut state_of = HashMap::new();
    for a in &attempts {
        let st = a["state"].as_str().expect("state");
        assert!(
            ["completed", "cleaned"].contains(&st),
            "every attempt is closed: {a}"
        );
        state_of.insert(a["id"].as_str().expect("id").to_owned(), st.to_owned());
    }
    let keys = keys_by_upload(&b).await;
    assert_eq!(keys.len(), 3, "one key per upload, no second key: {keys:?}");
    for (id, state, upload) in &keys {
        let upload = upload.as_ref().expect("every key carries its upload tag");
        match state_of.get(upload).map(String::as_str) {
            Some("completed") => {
                assert_eq!(state, "Enabled", "{id}");
                assert!(id == &created || id == &aliased, "{id}");
            }
            Some("cleaned") => assert_eq!(state, "PendingDeletion", "{id}"),
            other => panic!("key {id} belongs to no attempt ({other:?})"),
        }
    }

    // A second key carrying the tag of the upload whose CreateKey answer was lost (as a slow
    // retry elsewhere could leave): the cleaner schedules it for deletion, not the upload's.
    let lost_attempt = keys
        .iter()
        .find(|(id, _, _)| id == &created)
        .and_then(|(_, _, u)| u.clone())
        .expect("the recovered key's attempt");
    let kms = b.kms().await;
    let stray = kms
        .create_key()
        .origin(aws_sdk_kms::types::OriginType::External)
        .tags(
            aws_sdk_kms::types::Tag::builder()
                .tag_key("hsm-bridge-upload-id")
                .tag_value(&lost_attempt)
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("CreateKey")
        .key_metadata()
        .expect("metadata")
        .key_id()
        .to_owned();
    // The cleaner's pass at start sweeps completed attempts whose CreateKey answer was lost.
    b.restart().await;
    let start = std::time::Instant::now();
    loop {
        let st = kms_keys(&kms).await;
        let state = |k: &str| {
            st.iter()
                .find(|(id, _)| id == k)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        if state(&stray) == "PendingDeletion" {
            assert_eq!(state(&created), "Enabled", "the upload's own key is kept");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the stray key was never scheduled for deletion: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    b.finish().await;
}
