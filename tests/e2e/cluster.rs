//! Two bridges on one PostgreSQL store, each with its own bridge token holding the same KEK
//! (provisioned with the same value and CKA_ID, as an HA group would hold it): a vault key
//! created through one is uploaded through the other; a bridge whose KEK differs refuses to
//! start; a 40-item job submitted to one is finished by the other after the first is killed,
//! every item uploaded exactly once and the keys the killed bridge left half-made cleaned by
//! the survivor. Every uploaded key is proven to hold its source material.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cryptoki::object::{Attribute, KeyType, ObjectClass};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::proxy::FaultProxy;

const KEK_LABEL: &str = "hsm-bridge-vault-kek";

/// Puts an AES-256 KEK of this value and CKA_ID into the token labelled `token`, as the
/// bridge would make it (non-extractable, wrap and unwrap only).
fn provision_kek(token: &str, value: &[u8], id: &[u8]) {
    let s = world().session(token);
    let t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    s.create_object(&t).expect("C_CreateObject (KEK)");
}

/// Token sets for `n` bridges whose bridge tokens hold one KEK.
fn tokens_with_one_kek(n: usize) -> Vec<Tokens> {
    let kek = secret(32);
    let id = random_bytes(16);
    (0..n)
        .map(|_| {
            let t = Tokens::new();
            provision_kek(&t.bridge, &kek, &id);
            t
        })
        .collect()
}

fn cluster_toml(node: &str) -> String {
    format!("\n[cluster]\nnode_name = \"{node}\"\nheartbeat_secs = 1\nnode_timeout_secs = 3\n")
}

/// Bridge `a`, then bridge `b` on the same store and KMS connection; and the `[store]` keys.
async fn pair(tokens: &[Tokens], opts: Opts) -> (Bridge, Bridge, String) {
    let dir = tempfile::tempdir_in(world().dir.path()).expect("dir");
    let store = crate::postgres::database(dir.path());
    let a = Bridge::start(
        &tokens[0],
        Opts {
            store_toml: Some(store.clone()),
            extra_toml: cluster_toml("a"),
            ..opts.clone()
        },
    )
    .await;
    let b = Bridge::start(
        &tokens[1],
        Opts {
            store_toml: Some(store.clone()),
            extra_toml: cluster_toml("b"),
            same_kms_as: Some(a.kms_identity()),
            ..opts
        },
    )
    .await;
    // The directory of the password file lives as long as the test world.
    std::mem::forget(dir);
    (a, b, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_key_made_through_one_bridge_is_uploaded_through_the_other() {
    let tokens = tokens_with_one_kek(3);
    let (a, b, store) = pair(
        &tokens,
        Opts {
            with_source: false,
            ..Opts::default()
        },
    )
    .await;
    let material = secret(32);
    let id = a.vault_import("shared-aes", "aes", &material).await;
    let (s, r) = b
        .upload(
            json!({"source_key_identifier": id, "kms": b.kms_name, "region": REGION,
                       "aws_param": {"Alias": "alias/cluster-shared"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let key = r["aws_param"]["KeyID"].as_str().expect("KeyID");
    prove_aes(&b.kms().await, key, &material).await;
    // The record is the cluster's: the other bridge finds it.
    let (s, found) = a.get(&format!("/api/v1/cckm/aws/keys/{key}")).await;
    assert_eq!(s, StatusCode::OK, "{found}");

    // probe shows the backend, its schema version and both members.
    let (code, out, err) = a.cli(&["probe"]);
    assert_eq!(code, 0, "probe: {out}{err}");
    assert!(out.contains("store: postgres"), "{out}");
    assert!(out.contains("schema version"), "{out}");
    for node in ["    a on ", "    b on "] {
        assert!(out.contains(node), "{node} in {out}");
    }

    // A third bridge whose token holds another KEK refuses to start.
    let other = Tokens::new();
    provision_kek(&other.bridge, &secret(32), &random_bytes(16));
    let mut c = Bridge::prepare(
        &other,
        Opts {
            store_toml: Some(store.clone()),
            extra_toml: cluster_toml("c"),
            same_kms_as: Some(a.kms_identity()),
            with_source: false,
            ..Opts::default()
        },
    );
    let (code, err) = c.launch_refused().await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("is not the one the store's vault keys are wrapped under"),
        "a clear line: {err}"
    );
    // A bridge with the right KEK but the name of a live one is refused too.
    let mut twin = Bridge::prepare(
        &tokens[2],
        Opts {
            store_toml: Some(store.clone()),
            extra_toml: cluster_toml("a"),
            same_kms_as: Some(a.kms_identity()),
            with_source: false,
            ..Opts::default()
        },
    );
    let (code, err) = twin.launch_refused().await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("another bridge goes by the node name \"a\""),
        "a clear line: {err}"
    );
    // One audit chain for both bridges (each seals it, at start and at stop), intact as
    // either sees it.
    let mut b = b;
    b.stop().await;
    let (code, out, err) = a.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "audit verify: {out}{err}");
    assert!(out.contains("audit trail intact"), "{out}");
    a.finish().await;
    b.finish().await;
}

/// The ids of the attempts `node` has under way.
async fn open_attempts_of(b: &Bridge, node: &str) -> Vec<String> {
    let (s, list) = b.get("/api/v1/cckm/aws/upload-attempts?limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["resources"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|x| {
            x["node"] == node && matches!(x["state"].as_str(), Some("creating" | "in_progress"))
        })
        .map(|x| x["id"].as_str().expect("id").to_owned())
        .collect()
}

fn ended(j: &Value) -> bool {
    matches!(j["status"].as_str(), Some("completed" | "cancelled")) && j["running"] == 0
}

async fn job(b: &Bridge, id: &str) -> Value {
    let (s, j) = b.get(&format!("/api/v1/cckm/aws/upload-jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_bridge_is_finished_by_the_other_exactly_once() {
    let tokens = tokens_with_one_kek(2);
    // GetParametersForImport at 4 per second: the job takes about ten seconds, long enough
    // to kill a bridge in the middle of it.
    let proxy = FaultProxy::start().await;
    proxy.enforce_quota("GetParametersForImport", 4.0);
    let (mut a, b, _) = pair(
        &tokens,
        Opts {
            request_quotas: Some("{ GetParametersForImport = 4 }".into()),
            cleanup_interval_secs: 1,
            with_source: false,
            ..Opts::through(&proxy)
        },
    )
    .await;
    let mut materials = HashMap::new();
    for i in 0..40 {
        let m = secret(32);
        materials.insert(a.vault_import(&format!("ha-{i}"), "aes", &m).await, m);
    }
    let items: Vec<Value> = materials
        .keys()
        .map(|id| {
            json!({"source_key_identifier": id, "kms": a.kms_name, "region": REGION,
                   "aws_param": {"Alias": format!("alias/ha-{id}")}})
        })
        .collect();
    let (s, created) = a
        .post("/api/v1/cckm/aws/upload-jobs", &json!({"items": items}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    // Kill `a` while it runs items of its own.
    let start = Instant::now();
    loop {
        let j = job(&a, &id).await;
        let a_running = j["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["state"] == "running" && i["node"] == "a");
        if j["completed"].as_u64() >= Some(4) && a_running {
            break;
        }
        assert!(
            !ended(&j),
            "the job ended before a bridge could be killed: {j:#}"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "{j:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_on_a = open_attempts_of(&a, "a").await;
    a.kill();
    let start = Instant::now();
    let j = loop {
        let j = job(&b, &id).await;
        if ended(&j) {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the survivor did not finish the job: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        (
            j["status"].as_str(),
            j["completed"].as_u64(),
            j["failed"].as_u64()
        ),
        (Some("completed"), Some(40), Some(0)),
        "{j:#}"
    );
    // Each source key is in exactly one enabled AWS key, the one its item names, which
    // holds its material; each alias names that key.
    let kms = b.kms().await;
    let mut made = HashMap::new();
    for it in j["items"].as_array().expect("items") {
        let key = it["key_id"].as_str().expect("key_id").to_owned();
        let source = it["source_key_identifier"].as_str().expect("source");
        assert!(
            made.insert(key.clone(), source.to_owned()).is_none(),
            "{j:#}"
        );
        prove_aes(&kms, &key, &materials[source]).await;
        let d = kms
            .describe_key()
            .key_id(format!("alias/ha-{source}"))
            .send()
            .await
            .expect("DescribeKey of the alias");
        assert_eq!(d.key_metadata().map(|m| m.key_id()), Some(key.as_str()));
    }
    // The attempts the killed bridge left open are settled by the survivor: its cleaner
    // claimed them (they now name `b`) and scheduled their keys for deletion.
    let start = Instant::now();
    let attempts = loop {
        let (s, list) = b.get("/api/v1/cckm/aws/upload-attempts?limit=1000").await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let all = list["resources"].as_array().expect("attempts").clone();
        let open = all
            .iter()
            .filter(|x| {
                !matches!(
                    x["state"].as_str(),
                    Some("completed" | "cleaned" | "failed")
                )
            })
            .count();
        if open == 0 {
            break all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "attempts left open: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let settled_by_b = open_on_a
        .iter()
        .filter_map(|id| attempts.iter().find(|x| x["id"] == id.as_str()))
        .filter(|x| x["state"] != "completed")
        .inspect(|x| assert_eq!(x["node"], "b", "settled by the survivor: {x}"))
        .count();
    assert!(
        settled_by_b > 0,
        "the killed bridge left attempts half-way ({open_on_a:?}): {attempts:#?}"
    );
    for (key, state) in kms_keys(&kms).await {
        if state == "Enabled" {
            assert!(
                made.contains_key(&key),
                "an enabled key no item made: {key}"
            );
        } else {
            assert!(
                matches!(state.as_str(), "PendingDeletion" | "PendingImport"),
                "{key} is {state}"
            );
        }
    }
    b.finish().await;
}
