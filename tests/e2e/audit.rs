//! The audit trail: what the bridge did and refused is in it, readers can list it, and
//! `hsm-bridge audit verify` passes on an untouched log and names the entry that was altered
//! or removed.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

/// One stored audit row, as it is.
type Row = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
);

fn db(b: &Bridge) -> rusqlite::Connection {
    rusqlite::Connection::open(&b.db_path).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_and_detects_tampering() {
    let tokens = Tokens::new();
    let mut b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: peers_toml(&[("frank", "frank's password", &[GROUP])]),
            ..Default::default()
        },
    )
    .await;
    let material = secret(32);
    let key = b.vault_import("audited", "aes", &material).await;
    let (s, r) = b
        .upload(json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let (s, _) = b
        .call(
            Method::POST,
            "/api/v1/auth/tokens",
            Some(&json!({"grant_type": "password", "username": "frank", "password": "wrong one"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = b
        .call(Method::GET, "/api/v1/cckm/aws/keys", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let (s, log) = b.get("/api/v1/audit?limit=100").await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let entries = log["resources"].as_array().expect("entries");
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} entry in {log}"))
    };
    assert_eq!(find("configuration-load", "success")["actor"], "hsm-bridge");
    assert_eq!(
        find("POST /api/v1/vault/keys2", "success")["actor"],
        "alice"
    );
    assert_eq!(
        find("POST /api/v1/cckm/aws/upload-key", "success")["actor"],
        "alice"
    );
    // The upload's entry is written with the key's record; the request is not recorded twice.
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "POST /api/v1/cckm/aws/upload-key")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        find("POST /api/v1/auth/tokens", "refused")["actor"],
        "frank"
    );
    assert_eq!(
        find("GET /api/v1/cckm/aws/keys", "refused")["actor"],
        "(anonymous)"
    );
    let text = log.to_string();
    assert!(!text.contains("wrong one") && !text.contains(&hex::encode(&material)));
    b.stop().await;

    // Untouched, the trail verifies (the stop sealed its head).
    let (code, out, err) = b.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit trail intact"), "{out}");
    let total: i64 = db(&b)
        .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
        .expect("count");
    assert!(total >= 5, "{total}");

    // One byte of one entry changed: that entry is named.
    let (seq, actor): (i64, String) = db(&b)
        .query_row(
            "SELECT seq, actor FROM audit_log WHERE actor = 'alice' ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("an entry of alice");
    db(&b)
        .execute("UPDATE audit_log SET actor = 'alicf' WHERE seq = ?1", [seq])
        .expect("tamper");
    let (code, out, _) = b.cli(&["audit", "verify"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("BROKEN at entry {seq}")) && out.contains("altered"),
        "{out}"
    );
    db(&b)
        .execute(
            "UPDATE audit_log SET actor = ?2 WHERE seq = ?1",
            rusqlite::params![seq, actor],
        )
        .expect("untamper");
    let (code, out, _) = b.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");

    // An entry deleted from the middle, then the last (sealed) one: each is named.
    let middle = total / 2;
    let saved: Vec<Row> = {
        let c = db(&b);
        let mut st = c
            .prepare("SELECT seq, at, actor, action, outcome, request_id, detail, prev_hash, hash FROM audit_log WHERE seq IN (?1, ?2)")
            .expect("select");
        st.query_map([middle, total], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    db(&b)
        .execute("DELETE FROM audit_log WHERE seq = ?1", [middle])
        .expect("delete");
    let (code, out, _) = b.cli(&["audit", "verify"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("BROKEN at entry {middle}")) && out.contains("missing"),
        "{out}"
    );
    let restore = |row: &Row| {
        db(&b)
            .execute(
                "INSERT INTO audit_log (seq, at, actor, action, outcome, request_id, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8],
            )
            .expect("restore");
    };
    restore(&saved[0]);
    db(&b)
        .execute("DELETE FROM audit_log WHERE seq = ?1", [total])
        .expect("delete the last");
    let (code, out, _) = b.cli(&["audit", "verify"]);
    assert_ne!(code, 0, "removing the sealed last entry is seen: {out}");
    assert!(out.contains(&format!("entry {total}")), "{out}");
    restore(&saved[1]);
    let (code, out, _) = b.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");

    // A forged seal (its MAC is not the token's) is seen too.
    db(&b)
        .execute(
            "UPDATE audit_seals SET mac = zeroblob(32) WHERE seq = (SELECT MAX(seq) FROM audit_seals)",
            [],
        )
        .expect("forge");
    let (code, out, _) = b.cli(&["audit", "verify"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not the token's"), "{out}");

    b.launch().await;
    b.finish().await;
}
