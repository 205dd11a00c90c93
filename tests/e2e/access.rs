//! Access: each role reaches exactly its routes; only peer tokens export; refresh tokens can
//! be revoked; repeated failed sign-ins lock the user; a deleted vault key can be restored
//! until its retention ends.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

const ROLES: [&str; 5] = ["reader", "uploader", "key-admin", "vault-admin", "exporter"];

fn roles_toml() -> String {
    let mut t = String::from("\n[auth.roles]\n");
    for r in ROLES {
        t.push_str(&format!("\"{r}\" = [\"group-{r}\"]\n"));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_exactly_its_routes() {
    let tokens = Tokens::new();
    let peers: Vec<(String, String)> = ROLES
        .iter()
        .map(|r| (format!("peer-{r}"), format!("password of {r}")))
        .collect();
    let groups: Vec<String> = ROLES.iter().map(|r| format!("group-{r}")).collect();
    let mut users = String::new();
    for (i, (name, password)) in peers.iter().enumerate() {
        users.push_str(&peers_toml(&[(name, password, &[groups[i].as_str()])]));
    }
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: format!("{}{users}", roles_toml()),
            with_source: false,
            ..Default::default()
        },
    )
    .await;
    // The routes, each with the role it needs. Bodies and ids are such that the holder of the
    // role gets an answer that changes nothing (400 or 404); everyone else a 403.
    let routes: Vec<(Method, &str, Option<Value>, &str)> = vec![
        (Method::GET, "/api/v1/cckm/aws/keys", None, "reader"),
        (Method::GET, "/api/v1/cckm/aws/keys/nope", None, "reader"),
        (
            Method::GET,
            "/api/v1/cckm/aws/keys/nope/history",
            None,
            "reader",
        ),
        (Method::GET, "/api/v1/cckm/aws/templates", None, "reader"),
        (
            Method::GET,
            "/api/v1/cckm/aws/templates/nope",
            None,
            "reader",
        ),
        (Method::GET, "/api/v1/cckm/aws/kms", None, "reader"),
        (
            Method::GET,
            "/api/v1/cckm/aws/upload-attempts",
            None,
            "reader",
        ),
        (
            Method::GET,
            "/api/v1/cckm/aws/upload-attempts/nope",
            None,
            "reader",
        ),
        (
            Method::GET,
            "/api/v1/cckm/aws/synchronization-jobs",
            None,
            "reader",
        ),
        (
            Method::GET,
            "/api/v1/cckm/aws/synchronization-jobs/nope",
            None,
            "reader",
        ),
        (Method::GET, "/api/v1/vault/keys2", None, "reader"),
        (Method::GET, "/api/v1/vault/keys2/nope", None, "reader"),
        (Method::GET, "/api/v1/system/tokens", None, "reader"),
        (Method::GET, "/api/v1/cckm/aws/upload-jobs", None, "reader"),
        (
            Method::GET,
            "/api/v1/cckm/aws/upload-jobs/nope",
            None,
            "reader",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/upload-key",
            Some(json!({})),
            "uploader",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/upload-jobs",
            Some(json!({})),
            "uploader",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/upload-jobs/nope/cancel",
            None,
            "uploader",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/keys/nope/enable",
            Some(json!({})),
            "key-admin",
        ),
        (
            Method::DELETE,
            "/api/v1/cckm/aws/keys/nope",
            None,
            "key-admin",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/templates",
            Some(json!({})),
            "key-admin",
        ),
        (
            Method::DELETE,
            "/api/v1/cckm/aws/templates/nope",
            None,
            "key-admin",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/synchronization-jobs",
            Some(json!({"kms": ["nope"]})),
            "key-admin",
        ),
        (
            Method::POST,
            "/api/v1/cckm/aws/synchronization-jobs/nope/cancel",
            None,
            "key-admin",
        ),
        (
            Method::POST,
            "/api/v1/vault/keys2",
            Some(json!({})),
            "vault-admin",
        ),
        (
            Method::DELETE,
            "/api/v1/vault/keys2/nope",
            None,
            "vault-admin",
        ),
        (
            Method::POST,
            "/api/v1/vault/keys2/nope/restore",
            None,
            "vault-admin",
        ),
        (
            Method::POST,
            "/api/v1/vault/keys2/nope/export",
            Some(json!({"wrapPublicKey": "x"})),
            "exporter",
        ),
    ];
    let mut tokens_by_role = Vec::new();
    for (i, r) in ROLES.iter().enumerate() {
        // Peer tokens (the only ones that may export); the role comes from the group.
        tokens_by_role.push((*r, peer_token(&b, &peers[i].0, &peers[i].1).await));
    }
    for (method, path, body, needs) in &routes {
        for (role, token) in &tokens_by_role {
            let (s, r) = b
                .call(method.clone(), path, body.as_ref(), Some(token))
                .await;
            if role == needs {
                assert!(
                    s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED && s.as_u16() < 500,
                    "{role} may {method} {path}: {s} {r}"
                );
            } else {
                assert_error(s, &r, 403, needs);
            }
        }
    }
    // Rotating and replicating make keys with material: key-admin and uploader together.
    let both = mint_cli(&b.config, "rotator", &["group-key-admin", "group-uploader"]);
    for (path, body) in [
        ("/api/v1/cckm/aws/keys/nope/rotate", json!({})),
        (
            "/api/v1/cckm/aws/keys/nope/replicate-key",
            json!({"replica_region": OTHER_REGION}),
        ),
    ] {
        for (role, token) in &tokens_by_role {
            let (s, r) = b.call(Method::POST, path, Some(&body), Some(token)).await;
            assert_eq!(
                s,
                StatusCode::FORBIDDEN,
                "{role} alone may not POST {path}: {r}"
            );
        }
        let (s, r) = b.call(Method::POST, path, Some(&body), Some(&both)).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "key-admin and uploader may POST {path}: {r}"
        );
    }
    // A group that grants nothing.
    let nobody = mint_cli(&b.config, "nobody", &["group-nothing"]);
    let (s, r) = b
        .call(Method::GET, "/api/v1/cckm/aws/keys", None, Some(&nobody))
        .await;
    assert_error(s, &r, 403, "no role");
    // An operator token of the exporter group cannot export; the peer token could (above).
    let operator = mint_cli(&b.config, "peer-exporter", &["group-exporter"]);
    let (s, r) = b
        .call(
            Method::POST,
            "/api/v1/vault/keys2/nope/export",
            Some(&json!({"wrapPublicKey": "x"})),
            Some(&operator),
        )
        .await;
    assert_error(s, &r, 403, "peer token");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_can_be_revoked_and_failed_sign_ins_lock_the_user() {
    let tokens = Tokens::new();
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: format!(
                "{}\n",
                peers_toml(&[
                    ("dana", "dana's password", &[GROUP]),
                    ("erin", "erin's password", &[GROUP]),
                ])
            ),
            with_source: false,
            env: vec![
                (
                    "HSM_BRIDGE__AUTH__LOCKOUT_AFTER_FAILURES".into(),
                    "3".into(),
                ),
                ("HSM_BRIDGE__AUTH__LOCKOUT_SECS".into(), "3".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let grant = |user: &str, password: &str| json!({"grant_type": "password", "username": user, "password": password});
    let post = |body: Value| {
        let b = &b;
        async move {
            b.call(Method::POST, "/api/v1/auth/tokens", Some(&body), None)
                .await
        }
    };

    // Revocation: by the token's own user, by id; the refresh token is dead afterwards.
    let (s, first) = post(grant("dana", "dana's password")).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let id = first["refresh_token_id"].as_str().expect("id").to_owned();
    let jwt = first["jwt"].as_str().expect("jwt").to_owned();
    let (s, r) = b
        .call(
            Method::DELETE,
            &format!("/api/v1/auth/tokens/{id}"),
            None,
            Some(&jwt),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, r) = post(json!({"grant_type": "refresh_token",
                              "refresh_token": first["refresh_token"]}))
    .await;
    assert_error(s, &r, 401, "refresh token");

    // Failed sign-ins: slowed down, then locked; the right password is refused while locked.
    let start = Instant::now();
    for _ in 0..3 {
        let (s, r) = post(grant("erin", "a guess")).await;
        assert_error(s, &r, 401, "wrong");
    }
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "each failure slows the next attempt down"
    );
    let (s, r) = post(grant("erin", "erin's password")).await;
    assert_error(s, &r, 429, "too many failed sign-ins");
    let logs = String::from_utf8_lossy(&b.logs()).into_owned();
    assert!(
        logs.contains("password grant failed") && logs.contains("erin"),
        "the failures are logged with the username"
    );
    assert!(!logs.contains("a guess") && !logs.contains("erin's password"));
    // Once the lockout ends, the right password works again.
    let start = Instant::now();
    loop {
        let (s, r) = post(grant("erin", "erin's password")).await;
        if s == StatusCode::OK {
            break;
        }
        assert_error(s, &r, 429, "too many");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lock never ended"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.finish().await;
}

async fn delete_vault_key(b: &Bridge, id: &str) {
    let (s, r) = b
        .call(
            Method::DELETE,
            &format!("/api/v1/vault/keys2/{id}"),
            None,
            Some(&b.token),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_vault_key_can_be_restored_until_it_is_purged() {
    let tokens = Tokens::new();
    let mut b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: "\n[vault]\ndeleted_retention_secs = 3600\n".into(),
            ..Default::default()
        },
    )
    .await;
    let material = secret(32);
    let id = b.vault_import("keep-me", "aes", &material).await;
    delete_vault_key(&b, &id).await;
    let (s, r) = b.get(&format!("/api/v1/vault/keys2/{id}")).await;
    assert_error(s, &r, 404, "no vault key");
    let (s, r) = b
        .upload(json!({"source_key_identifier": id, "kms": b.kms_name, "region": REGION}))
        .await;
    assert_error(s, &r, 404, "no vault key");
    let (s, r) = b
        .post(&format!("/api/v1/vault/keys2/{id}/restore"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["id"], id.as_str());
    let (s, up) = b
        .upload(json!({"source_key_identifier": id, "kms": b.kms_name, "region": REGION}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "the restored key is usable: {up}");
    let key = up["aws_param"]["KeyID"].as_str().expect("KeyID");
    prove_aes(&b.kms().await, key, &material).await;

    // With a retention of one second, a deleted key is purged: restore then finds nothing.
    delete_vault_key(&b, &id).await;
    b.stop().await;
    b.env.push((
        "HSM_BRIDGE__VAULT__DELETED_RETENTION_SECS".into(),
        "1".into(),
    ));
    b.launch().await;
    // Restore only once the daemon says it purged the key: a restore before that would
    // (rightly) bring the key back.
    let start = Instant::now();
    while !b
        .stderr()
        .lines()
        .any(|l| l.contains("deleted vault key purged") && l.contains(id.as_str()))
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never purged: {}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, r) = b
        .post(&format!("/api/v1/vault/keys2/{id}/restore"), &json!({}))
        .await;
    assert_error(s, &r, 404, "purged");
    b.finish().await;
}
