//! Multi-Region replicas (`POST /api/v1/cckm/aws/keys/{id}/replicate-key`): the replica gets
//! the primary's material imported through the bridge (wrapped in the token), its own record
//! linked to the primary, and every key action. LocalStack copies material on ReplicateKey
//! (AWS does not), so the test deletes the replica's material through the bridge and imports
//! it again through the bridge before proving the replica holds the source material.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

async fn upload_mr(b: &Bridge, name: &str, multi_region: bool) -> (Value, Vec<u8>) {
    let material = secret(32);
    let key = b.vault_import(name, "aes", &material).await;
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
                       "aws_param": {"Alias": name, "MultiRegion": multi_region}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    (r, material)
}

async fn act(b: &Bridge, id: &str, action: &str, body: Value) -> (StatusCode, Value) {
    b.post(&format!("/api/v1/cckm/aws/keys/{id}/{action}"), &body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gets_the_material_through_the_bridge_and_its_own_record() {
    let proxy = FaultProxy::start().await;
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::through(&proxy)).await;
    let other = b.kms_in(OTHER_REGION).await;
    let (primary, material) = upload_mr(&b, "mr-a", true).await;
    let pid = primary["id"].as_str().expect("id").to_owned();
    let key_id = primary["aws_param"]["KeyID"]
        .as_str()
        .expect("KeyID")
        .to_owned();

    let (s, replica) = act(
        &b,
        &pid,
        "replicate-key",
        json!({"replica_region": OTHER_REGION,
               "aws_param": {"Description": "replica", "Tags": [{"TagKey": "site", "TagValue": "dr"}]}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{replica}");
    let rid = replica["id"].as_str().expect("id").to_owned();
    assert_ne!(rid, pid);
    assert_eq!(replica["region"], OTHER_REGION);
    assert_eq!(replica["replica_of"]["id"], pid, "{replica}");
    assert_eq!(
        replica["aws_param"]["KeyID"], key_id,
        "a replica shares the key id"
    );
    assert!(
        replica["aws_param"]["Arn"]
            .as_str()
            .is_some_and(|a| a.contains(OTHER_REGION)),
        "{replica}"
    );
    assert_eq!(replica["aws_param"]["Description"], "replica");
    assert_eq!(
        replica["upload"]["fingerprint"],
        primary["upload"]["fingerprint"]
    );
    let (_, p) = b.get(&format!("/api/v1/cckm/aws/keys/{pid}")).await;
    assert_eq!(p["replicas"][0]["id"], rid, "{p}");
    assert_eq!(p["replicas"][0]["region"], OTHER_REGION);
    let wire: Vec<String> = proxy.exchanges().iter().map(|x| x.op.clone()).collect();
    let at = wire
        .iter()
        .rposition(|o| o == "ReplicateKey")
        .expect("ReplicateKey on the wire");
    assert!(
        wire[at..].iter().any(|o| o == "GetParametersForImport")
            && wire[at..].iter().any(|o| o == "ImportKeyMaterial"),
        "the material is imported into the replica: {wire:?}"
    );

    // The replica's material, deleted and imported again through the bridge, is the source's.
    let (s, r) = act(&b, &rid, "delete-material", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["aws_param"]["KeyState"], "PendingImport", "{r}");
    let (s, r) = act(&b, &rid, "import-material", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["aws_param"]["KeyState"], "Enabled", "{r}");
    prove_aes(&other, &key_id, &material).await;
    // Other actions work on the replica, in its Region.
    let (s, r) = act(
        &b,
        &rid,
        "add-tags",
        json!({"tags": [{"tag_key": "tier", "tag_value": "2"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r["aws_param"]["Tags"].to_string().contains("tier"), "{r}");
    let (s, r) = act(&b, &rid, "disable", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["aws_param"]["KeyState"], "Disabled");
    let (_, p) = b.get(&format!("/api/v1/cckm/aws/keys/{pid}")).await;
    assert_eq!(
        p["aws_param"]["KeyState"], "Enabled",
        "the primary is untouched: {p}"
    );

    // Refusals, before anything reaches AWS.
    let (s, e) = act(
        &b,
        &pid,
        "replicate-key",
        json!({"replica_region": OTHER_REGION}),
    )
    .await;
    assert_error(s, &e, 409, "already has a replica");
    let (s, e) = act(&b, &pid, "replicate-key", json!({"replica_region": REGION})).await;
    assert_error(s, &e, 400, "own Region");
    let (s, e) = act(
        &b,
        &pid,
        "replicate-key",
        json!({"replica_region": "eu-north-9"}),
    )
    .await;
    assert_error(s, &e, 400, "not a region");
    let (s, e) = act(&b, &rid, "replicate-key", json!({"replica_region": REGION})).await;
    assert_error(s, &e, 409, "replica");
    let (single, _) = upload_mr(&b, "mr-single", false).await;
    let (s, e) = act(
        &b,
        single["id"].as_str().expect("id"),
        "replicate-key",
        json!({"replica_region": OTHER_REGION}),
    )
    .await;
    assert_error(s, &e, 409, "multi-Region");

    // The import into the replica fails: the replica is scheduled for deletion.
    let (second, _) = upload_mr(&b, "mr-b", true).await;
    let sid = second["id"].as_str().expect("id");
    let skey = second["aws_param"]["KeyID"].as_str().expect("KeyID");
    proxy.on(
        "ImportKeyMaterial",
        Fault::RefuseOnce {
            status: 500,
            aws_type: "KMSInternalException",
        },
    );
    let (s, e) = act(
        &b,
        sid,
        "replicate-key",
        json!({"replica_region": OTHER_REGION}),
    )
    .await;
    assert!(s.is_server_error(), "{s} {e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("scheduled for deletion")),
        "{e}"
    );
    proxy.heal();
    let d = other
        .describe_key()
        .key_id(skey)
        .send()
        .await
        .expect("the replica exists in its Region");
    assert_eq!(
        d.key_metadata()
            .and_then(|m| m.key_state())
            .map(|s| s.as_str()),
        Some("PendingDeletion")
    );
    let (_, p) = b.get(&format!("/api/v1/cckm/aws/keys/{sid}")).await;
    assert!(p["replicas"].is_null(), "no replica recorded: {p}");
    b.finish().await;
}

const THIRD_REGION: &str = "ap-south-1";

/// Every key of the bridge's account in `region`, with its state.
async fn states_in(b: &Bridge, region: &str) -> Vec<(String, String)> {
    kms_keys(&b.kms_in(region).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_replica_regions_makes_every_key_or_leaves_none_enabled() {
    let proxy = FaultProxy::start().await;
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            env: vec![(
                "HSM_BRIDGE__KMS__0__REGIONS".into(),
                format!(r#"["{REGION}","{OTHER_REGION}","{THIRD_REGION}"]"#),
            )],
            ..Opts::default()
        },
    )
    .await;
    let body = |b: &Bridge, key: &str, alias: &str| {
        json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
               "aws_param": {"Alias": alias, "MultiRegion": true,
                             "Tags": [{"TagKey": "app", "TagValue": "pay"}]},
               "replica_regions": [OTHER_REGION, THIRD_REGION]})
    };
    let material = secret(32);
    let key = b.vault_import("mr-all", "aes", &material).await;
    let (s, r) = b.upload(body(&b, &key, "mr-all")).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let replicas = r["replicas"].as_array().expect("replicas").clone();
    assert_eq!(replicas.len(), 2, "{r}");
    let key_id = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    for (link, region) in replicas.iter().zip([OTHER_REGION, THIRD_REGION]) {
        assert_eq!(link["region"], region);
        let (s, rec) = b
            .get(&format!(
                "/api/v1/cckm/aws/keys/{}",
                link["id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{rec}");
        assert_eq!(rec["replica_of"]["id"], r["id"]);
        assert!(
            rec["aws_param"]["Tags"].to_string().contains("pay"),
            "{rec}"
        );
        prove_aes(&b.kms_in(region).await, &key_id, &material).await;
    }

    // The second ReplicateKey (the last Region) fails: the primary and the first replica are
    // scheduled for deletion, and nothing of this request is left enabled anywhere.
    let before: Vec<(String, String)> = states_in(&b, REGION).await;
    proxy.on(
        "ReplicateKey",
        Fault::RefuseNth {
            n: 2,
            status: 500,
            aws_type: "KMSInternalException",
        },
    );
    let key = b.vault_import("mr-fail", "aes", &secret(32)).await;
    let (s, e) = b.upload(body(&b, &key, "mr-fail")).await;
    assert!(s.is_server_error(), "{s} {e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(THIRD_REGION) && msg.contains("Scheduled for deletion"),
        "{e}"
    );
    proxy.heal();
    let new_primary: Vec<_> = states_in(&b, REGION)
        .await
        .into_iter()
        .filter(|k| !before.iter().any(|(id, _)| *id == k.0))
        .collect();
    assert_eq!(new_primary.len(), 1, "{new_primary:?}");
    assert_eq!(new_primary[0].1, "PendingDeletion", "{new_primary:?}");
    for region in [OTHER_REGION, THIRD_REGION] {
        for (id, state) in states_in(&b, region).await {
            assert!(
                id == key_id || state == "PendingDeletion",
                "{region}: {id} is {state}"
            );
        }
    }
    assert!(
        msg.contains(&new_primary[0].0),
        "the answer names the primary: {e}"
    );
    b.finish().await;
}
