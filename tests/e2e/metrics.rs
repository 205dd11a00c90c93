//! `GET /metrics`: Prometheus text that parses, and counters that match what was done.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

/// One sample: metric name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition strictly enough that a malformed line fails the test.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels: {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("label: {line}"));
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("quoted label value: {line}"));
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (n, labels)
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line}"
        );
        out.push((name.to_owned(), labels, value));
    }
    out
}

pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_was_done() {
    let tokens = Tokens::new();
    let b = Bridge::start(&tokens, Opts::default()).await;
    let kms = b.kms().await;
    for i in 0..2 {
        let material = secret(32);
        let key = b.vault_import(&format!("m-{i}"), "aes", &material).await;
        let (s, r) = b
            .upload(json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        prove_aes(
            &kms,
            r["aws_param"]["KeyID"].as_str().expect("KeyID"),
            &material,
        )
        .await;
    }
    let (s, _) = b
        .upload(json!({"source_key_identifier": "nope", "kms": "no-such-kms", "region": REGION}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = b
        .raw(reqwest::Method::GET, "/metrics", None, Vec::new(), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "readers only");
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", b.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/openmetrics-text"),
    );
    let text = resp.text().await.expect("body");
    let m = parse(&text);
    let up = |outcome| {
        value(
            &m,
            "hsm_bridge_uploads_total",
            &[
                ("tier", "local"),
                ("key_spec", "SYMMETRIC_DEFAULT"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(up("success"), 2.0, "{text}");
    assert_eq!(up("failure"), 1.0, "{text}");
    assert_eq!(
        value(&m, "hsm_bridge_upload_duration_seconds_count", &[]),
        3.0,
        "{text}"
    );
    for op in ["CreateKey", "GetParametersForImport", "ImportKeyMaterial"] {
        assert_eq!(
            value(
                &m,
                "hsm_bridge_kms_calls_total",
                &[("operation", op), ("outcome", "success")]
            ),
            2.0,
            "{op}: {text}"
        );
    }
    assert_eq!(value(&m, "hsm_bridge_kms_throttles_total", &[]), 0.0);
    assert_eq!(
        value(&m, "hsm_bridge_token_ready", &[("token", "bridge")]),
        1.0,
        "{text}"
    );
    assert!(
        m.iter()
            .any(|(n, l, _)| n == "hsm_bridge_token_sessions_in_use" && l.get("token").is_some()),
        "{text}"
    );
    assert_eq!(value(&m, "hsm_bridge_cleanup_backlog", &[]), 0.0);
    assert!(
        value(
            &m,
            "hsm_bridge_token_session_wait_seconds_count",
            &[("token", "bridge")]
        ) > 0.0
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_metrics_listener_serves_metrics_only_and_without_a_token() {
    let tokens = Tokens::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let b = Bridge::start(
        &tokens,
        Opts {
            server_toml: Some(format!(
                "listen = \"127.0.0.1:0\"\nplaintext = true\nmetrics_listen = \"127.0.0.1:{port}\""
            )),
            with_source: false,
            ..Opts::default()
        },
    )
    .await;
    let material = secret(32);
    let id = b.vault_import("scraped", "aes", &material).await;
    let (s, r) = b
        .upload(json!({"source_key_identifier": id, "kms": b.kms_name, "region": REGION}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    prove_aes(
        &b.kms().await,
        r["aws_param"]["KeyID"].as_str().expect("KeyID"),
        &material,
    )
    .await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("GET /metrics on the metrics listener");
    assert_eq!(resp.status(), StatusCode::OK);
    let m = parse(&resp.text().await.expect("body"));
    assert_eq!(
        value(
            &m,
            "hsm_bridge_uploads_total",
            &[("tier", "local"), ("outcome", "success")]
        ),
        1.0
    );
    // Nothing else is served there, and the API's /metrics still wants a reader.
    let other = http
        .get(format!("http://127.0.0.1:{port}/api/v1/cckm/aws/keys"))
        .send()
        .await
        .expect("GET");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let (s, _) = b
        .raw(reqwest::Method::GET, "/metrics", None, Vec::new(), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    b.finish().await;
}
