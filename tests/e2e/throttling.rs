//! Pacing: a proxy enforces a request quota on GetParametersForImport as AWS does (400
//! ThrottlingException above it). Uploads in flight together all succeed; with the quota
//! configured they run at the quota's rate, and with a wrong (too high) quota the bridge backs
//! off on throttling and still fails none.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;
use crate::proxy::FaultProxy;

const QUOTA: f64 = 2.0;

/// Uploads `n` vault keys at once; answers the GetParametersForImport rate seen by the proxy.
async fn burst(b: &Bridge, proxy: &FaultProxy, n: usize, tag: &str) -> f64 {
    let kms = b.kms().await;
    let mut keys = Vec::new();
    for i in 0..n {
        let material = secret(32);
        let id = b
            .vault_import(&format!("{tag}-{i}"), "aes", &material)
            .await;
        keys.push((id, material));
    }
    let from = proxy.exchanges().len();
    let uploads = keys.iter().map(|(id, _)| {
        b.upload(json!({"source_key_identifier": id, "kms": b.kms_name, "region": REGION}))
    });
    let answers = futures_join_all(uploads).await;
    for ((s, r), (_, material)) in answers.iter().zip(&keys) {
        assert_eq!(
            *s,
            StatusCode::CREATED,
            "{tag}: no upload fails because of throttling: {r}"
        );
        prove_aes(
            &kms,
            r["aws_param"]["KeyID"].as_str().expect("KeyID"),
            material,
        )
        .await;
    }
    let passed: Vec<_> = proxy.exchanges()[from..]
        .iter()
        .filter(|x| x.op == "GetParametersForImport" && x.status == 200)
        .map(|x| x.at)
        .collect();
    assert_eq!(passed.len(), n, "{tag}");
    let span = passed
        .iter()
        .max()
        .expect("last")
        .duration_since(*passed.iter().min().expect("first"));
    (n - 1) as f64 / span.max(Duration::from_millis(1)).as_secs_f64()
}

/// `join_all` without another dependency: every future polled to its end, in order.
async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.map(Box::pin).collect();
    let mut out = Vec::new();
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().map(|r| r.expect("finished")));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_quota_paces_uploads_and_none_fails_on_throttling() {
    let tokens = Tokens::new();
    // The quota known to the bridge: it keeps to it. The calls queue longer than the exchange
    // timeout, which counts only the time AWS takes.
    let proxy = FaultProxy::start().await;
    proxy.enforce_quota("GetParametersForImport", QUOTA);
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            request_quotas: Some(format!("{{ GetParametersForImport = {QUOTA} }}")),
            operation_timeout_secs: 2,
            with_source: false,
            ..Opts::default()
        },
    )
    .await;
    let rate = burst(&b, &proxy, 12, "known").await;
    assert!(
        (0.9 * QUOTA..=1.3 * QUOTA).contains(&rate),
        "at the quota's rate: {rate:.2}/s (throttled {})",
        proxy.throttled()
    );
    b.finish().await;

    // A quota set twice too high: AWS throttles, the bridge slows down and sends the throttled
    // calls again; every upload still succeeds.
    let proxy = FaultProxy::start().await;
    proxy.enforce_quota("GetParametersForImport", QUOTA);
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            request_quotas: Some(format!("{{ GetParametersForImport = {} }}", QUOTA * 4.0)),
            with_source: false,
            ..Opts::default()
        },
    )
    .await;
    let rate = burst(&b, &proxy, 12, "unknown").await;
    assert!(proxy.throttled() > 0, "the proxy throttled");
    assert!(rate <= 1.3 * QUOTA, "{rate:.2}/s");
    let (s, m) = b.get("/api/v1/cckm/aws/keys").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let text = b.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("hsm_bridge_kms_throttles_total{")
                && l.contains("GetParametersForImport")),
        "throttles are counted: {text}"
    );
    b.finish().await;
}
