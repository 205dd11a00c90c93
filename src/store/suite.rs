//! The store's behaviour, run on both backends (see `testing`): every statement of every
//! module is executed at least once against SQLite and PostgreSQL.

use serde_json::json;

use super::testing::each_backend;
use super::{attempts, audit, aws_keys, history, migrate, sync_jobs, templates, vault};

fn attempt(id: &str) -> attempts::NewAttempt {
    attempts::NewAttempt {
        id: id.into(),
        request_id: "req".into(),
        kms_id: "kms-1".into(),
        kms_name: "kms".into(),
        region: "us-east-1".into(),
        source_tier: "local".into(),
        source_key: "k1".into(),
        alias: Some("alias/a".into()),
        node_id: Some("n1".into()),
    }
}

#[test]
fn schema_is_at_the_current_version() {
    each_backend(|c| {
        assert_eq!(migrate::version(c).expect("version"), migrate::CURRENT);
        migrate::run(c).expect("a second run changes nothing");
        assert_eq!(migrate::version(c).expect("version"), migrate::CURRENT);
    });
}

#[test]
fn an_attempt_goes_through_its_states() {
    use attempts::state;
    each_backend(|c| {
        attempts::begin(c, &attempt("a1")).expect("begin");
        attempts::begin(c, &attempt("a2")).expect("begin");
        let a = attempts::get(c, "a1").expect("get").expect("a1");
        assert_eq!(
            (a.state.as_str(), a.alias.as_deref()),
            (state::CREATING, Some("alias/a"))
        );
        assert_eq!(a.node_id.as_deref(), Some("n1"));
        attempts::key_created(c, "a1", "key-1", "arn:1", "GetParametersForImport")
            .expect("created");
        attempts::stage(c, "a1", "ImportKeyMaterial").expect("stage");
        attempts::mark_uncertain(c, "a1").expect("uncertain");
        assert!(attempts::complete(c, "a1").expect("complete"));
        assert!(!attempts::complete(c, "a1").expect("only once"));
        assert_eq!(attempts::uncertain_completed(c).expect("u").len(), 1);
        attempts::clear_uncertain(c, "a1").expect("clear");
        assert!(attempts::uncertain_completed(c).expect("u").is_empty());

        let a2 = attempts::get(c, "a2").expect("get").expect("a2");
        assert!(attempts::claim(c, &a2, "n2").expect("claim"));
        assert!(!attempts::claim(c, &a2, "n2").expect("changed since read"));
        let a2 = attempts::get(c, "a2").expect("get").expect("a2");
        assert_eq!(
            (a2.state.as_str(), a2.node_id.as_deref()),
            (state::CLEANING, Some("n2"))
        );
        attempts::set_key(c, "a2", "key-2").expect("key");
        attempts::cleanup_result(c, "a2", Err("AWS down")).expect("retry");
        let a2 = attempts::get(c, "a2").expect("get").expect("a2");
        assert_eq!(
            (a2.state.as_str(), a2.cleanup_tries),
            (state::CLEANUP_PENDING, 1)
        );
        attempts::cleanup_result(c, "a2", Ok(Some("2027-01-01"))).expect("cleaned");
        attempts::begin(c, &attempt("a3")).expect("begin");
        attempts::finish(c, "a3", state::FAILED, Some("no")).expect("failed");

        assert_eq!(
            attempts::in_states(c, &[state::CLEANED, state::FAILED])
                .expect("s")
                .len(),
            2
        );
        let (n, all) = attempts::list(c, None, 0, 10).expect("list");
        assert_eq!((n, all.len()), (3, 3));
        let (n, some) = attempts::list(c, Some(state::COMPLETED), 0, 10).expect("list");
        assert_eq!((n, some[0].id.as_str()), (1, "a1"));
        let (_, page) = attempts::list(c, None, 2, 10).expect("page");
        assert_eq!(page.len(), 1);
    });
}

#[test]
fn aws_key_records_are_found_filtered_and_made_due() {
    each_backend(|c| {
        let rec = |id: &str, alias: &str, next: i64| {
            json!({"id": id, "upload": {"upload_id": format!("up-{id}")},
                   "aws_param": {"KeyState": "Enabled"}, "policy_template_id": "tpl",
                   "rotation_schedule": {"next_unix": next}, "synced_at": null, "alias": alias})
        };
        for (i, (id, region, next)) in [("r1", "us-east-1", 100), ("r2", "eu-west-1", 50)]
            .iter()
            .enumerate()
        {
            let aliases = vec![format!("alias/{id}")];
            aws_keys::insert(
                c,
                &aws_keys::AwsKeyRow {
                    id,
                    key_id: &format!("key-{id}"),
                    arn: &format!("arn:{id}"),
                    kms_id: "kms-1",
                    region,
                    aliases: &aliases,
                    record: &rec(id, &aliases[0], *next),
                    created_at: &format!("2026-01-0{}T00:00:00Z", i + 1),
                },
            )
            .expect("insert");
        }
        assert_eq!(
            aws_keys::get(c, "key-r1").expect("get").expect("r1")["id"],
            "r1"
        );
        assert_eq!(
            aws_keys::get(c, "arn:r2").expect("get").expect("r2")["id"],
            "r2"
        );
        assert!(aws_keys::get(c, "none").expect("get").is_none());
        let l = aws_keys::locate(c, "r1").expect("locate").expect("r1");
        assert_eq!(
            (l.key_id.as_str(), l.region.as_str()),
            ("key-r1", "us-east-1")
        );
        assert_eq!(
            aws_keys::by_upload_id(c, "up-r2")
                .expect("by upload")
                .map(|r| r.0),
            Some("r2".to_owned())
        );
        assert_eq!(templates::usage_count(c, "tpl").expect("count"), 2);

        let f = aws_keys::ListFilter {
            alias: Some("r2".into()),
            limit: 10,
            ..Default::default()
        };
        let (n, found) = aws_keys::list(c, &f).expect("list");
        assert_eq!((n, found[0]["id"].as_str()), (1, Some("r2")));
        let f = aws_keys::ListFilter {
            region: Some("us-east-1".into()),
            fields: vec![("/aws_param/KeyState", "enabled".into())],
            limit: 10,
            ..Default::default()
        };
        assert_eq!(aws_keys::list(c, &f).expect("list").0, 1);
        let all = aws_keys::ListFilter {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(aws_keys::list(c, &all).expect("list").0, 2);

        let path = &["rotation_schedule", "next_unix"];
        assert_eq!(aws_keys::due(c, path, 75).expect("due"), vec!["r2"]);
        assert_eq!(aws_keys::due(c, path, 100).expect("due"), vec!["r2", "r1"]);
        // Due work is taken by one bridge: held until 700, then due again.
        assert!(aws_keys::claim_due(c, "r2", path, 75, 700).expect("claim"));
        assert!(!aws_keys::claim_due(c, "r2", path, 75, 700).expect("taken"));
        assert!(!aws_keys::claim_due(c, "r1", path, 75, 700).expect("not due"));
        assert_eq!(aws_keys::due(c, path, 100).expect("due"), vec!["r1"]);
        assert_eq!(aws_keys::due(c, path, 700).expect("due"), vec!["r1", "r2"]);

        let mut r1 = rec("r1", "alias/r1", 100);
        r1["synced_at"] = json!("2026-02-01T00:00:00Z");
        assert!(aws_keys::update(c, "r1", &r1, &["alias/r1".into()], "now").expect("update"));
        assert_eq!(
            aws_keys::ids_for_sync(c, &[], &[]).expect("sync order"),
            vec!["r2", "r1"],
            "never synchronized first"
        );
        assert_eq!(
            aws_keys::ids_for_sync(c, &[], &["us-east-1".into()]).expect("ids"),
            vec!["r1"]
        );
        assert!(aws_keys::delete(c, "r2").expect("delete"));
        assert!(!aws_keys::delete(c, "r2").expect("gone"));
    });
}

fn vault_row(id: &str, name: &str) -> vault::VaultKeyRow {
    vault::VaultKeyRow {
        id: id.into(),
        name: name.into(),
        algorithm: "AES".into(),
        size: 256,
        kind: "secret".into(),
        value_len: 32,
        usage_mask: 12,
        origin: "generated".into(),
        wrapped: vec![0, 1, 2, 255],
        wrap_mechanism: 0x2109,
        kek_label: "kek".into(),
        kek_id: vec![9, 9],
        token_serial: "s".into(),
        public_key: None,
        curve: None,
        extra: "{}".into(),
        created_at: format!("2026-01-01T00:00:0{}Z", id.len()),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

#[test]
fn vault_keys_keep_their_bytes_and_are_deleted_softly() {
    each_backend(|c| {
        assert!(vault::insert(c, &vault_row("v1", "one")).expect("insert"));
        assert!(!vault::insert(c, &vault_row("v2", "one")).expect("name taken"));
        assert!(vault::insert(c, &vault_row("v22", "two")).expect("insert"));
        let k = vault::get(c, "one").expect("get").expect("by name");
        assert_eq!(
            (k.id.as_str(), k.wrapped.clone(), k.wrap_mechanism),
            ("v1", vec![0, 1, 2, 255], 0x2109)
        );
        let f = |algorithm: Option<&str>, size: Option<u32>| vault::ListFilter {
            name: None,
            algorithm: algorithm.map(str::to_owned),
            id: None,
            size,
            skip: 0,
            limit: 10,
        };
        assert_eq!(
            vault::list(c, &f(Some("aes"), Some(256))).expect("list").0,
            2
        );
        assert_eq!(vault::list(c, &f(None, Some(128))).expect("list").0, 0);
        assert!(vault::mark_exported(c, "v1").expect("exported"));
        let extra: serde_json::Value =
            serde_json::from_str(&vault::get(c, "v1").expect("get").expect("v1").extra)
                .expect("json");
        assert_eq!(extra["exported"], true);
        assert!(vault::soft_delete(c, "v1", "2026-01-02T00:00:00Z").expect("delete"));
        assert!(vault::get(c, "v1").expect("get").is_none());
        let (row, at) = vault::get_deleted(c, "one")
            .expect("deleted")
            .expect("kept");
        assert_eq!(
            (row.id.as_str(), at.as_str()),
            ("v1", "2026-01-02T00:00:00Z")
        );
        assert!(vault::restore(c, "v1", "now").expect("restore"));
        assert!(vault::soft_delete(c, "v1", "2026-01-02T00:00:00Z").expect("delete"));
        assert_eq!(
            vault::purge(c, "2026-01-03T00:00:00Z").expect("purge"),
            vec!["v1"]
        );
        assert!(vault::get_deleted(c, "one").expect("purged").is_none());
    });
}

#[test]
fn templates_and_history() {
    each_backend(|c| {
        let t = json!({"id": "t1", "name": "n"});
        assert!(templates::insert(c, "t1", "n", &t, "2026").expect("insert"));
        assert!(!templates::insert(c, "t2", "n", &t, "2026").expect("name taken"));
        assert_eq!(templates::get(c, "n").expect("get"), Some(t));
        assert_eq!(templates::list(c, 0, 10).expect("list").0, 1);
        assert!(templates::delete(c, "t1").expect("delete"));

        for action in ["upload", "rotate"] {
            history::append(
                c,
                &history::Entry {
                    record_id: "r1".into(),
                    key_id: "k".into(),
                    action,
                    actor: "admin".into(),
                    request_id: "q".into(),
                    outcome: "success",
                    aws_calls: vec!["CreateKey"],
                    detail: json!({"a": 1}),
                },
            )
            .expect("append");
        }
        let (n, h) = history::of(c, "r1", 0, 10).expect("history");
        assert_eq!(
            (n, h[0].action.as_str(), h[1].action.as_str()),
            (2, "upload", "rotate")
        );
        assert_eq!(h[0].aws_calls, json!(["CreateKey"]));
    });
}

#[test]
fn sync_jobs_run_end_and_are_abandoned_by_their_node_only() {
    use sync_jobs::status;
    each_backend(|c| {
        sync_jobs::create(c, "s1", &["kms-1".into()], &[], "api", "n1").expect("create");
        sync_jobs::create(c, "s2", &[], &[], "periodic", "n2").expect("create");
        let p = sync_jobs::Progress {
            total: 3,
            done: 1,
            changed: 1,
            gone: 0,
            failed: 0,
        };
        sync_jobs::progress(c, "s1", &p, status::IN_PROGRESS).expect("progress");
        let j = sync_jobs::get(c, "s1").expect("get").expect("s1");
        assert_eq!(
            (j.total, j.done, j.kms.clone()),
            (3, 1, vec!["kms-1".to_owned()])
        );
        // n2 is not heard from lately; n1 is.
        super::cluster::heartbeat(
            c,
            &super::cluster::Node {
                node_id: "n1".into(),
                host: "h".into(),
                version: "v".into(),
                started_at: "t".into(),
                seen_unix: 100,
            },
        )
        .expect("heartbeat");
        assert_eq!(
            sync_jobs::abandon_unfinished(c, "n3", true, 90).expect("abandon"),
            1
        );
        assert_eq!(
            sync_jobs::get(c, "s2").expect("get").expect("s2").status,
            status::ERROR
        );
        assert!(sync_jobs::cancel(c, "s1").expect("cancel"));
        assert!(!sync_jobs::cancel(c, "s1").expect("once"));
        sync_jobs::finish(c, "s1", status::CANCELLED, None).expect("finish");
        assert_eq!(sync_jobs::list(c, 0, 10).expect("list").0, 2);
    });
}

#[test]
fn the_audit_chain_appends_and_seals() {
    each_backend(|c| {
        for i in 0..3 {
            audit::append(
                c,
                &audit::Event {
                    actor: "a".into(),
                    action: format!("act{i}"),
                    outcome: "success".into(),
                    request_id: "r".into(),
                    detail: json!({"i": i}),
                },
            )
            .expect("append");
        }
        let (seq, hash) = audit::head(c).expect("head").expect("entries");
        assert_eq!(seq, 3);
        assert!(!audit::sealed(c, seq).expect("sealed"));
        audit::seal(c, seq, &hash, b"mac", "n1").expect("seal");
        audit::seal(c, seq, &hash, b"other", "n2").expect("sealing twice is harmless");
        assert!(audit::sealed(c, seq).expect("sealed"));
        let all = audit::all(c).expect("all");
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].0.prev_hash, all[0].0.hash, "a chain");
        let seals = audit::seals(c).expect("seals");
        assert_eq!(
            (seals.len(), seals[0].node_id.as_deref()),
            (1, Some("n1")),
            "the first seal holds"
        );
        let (n, page) = audit::list(c, 0, 2).expect("list");
        assert_eq!((n, page[0].seq), (3, 3));
    });
}
