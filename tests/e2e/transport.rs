//! The HTTP server against slow and greedy clients: headers sent a byte at a time are cut off,
//! connections over the limit are closed at once and their places come back.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

fn addr(b: &Bridge) -> String {
    b.url.trim_start_matches("http://").to_owned()
}

/// Whether the server has closed the connection (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (a 408, say) before the close: keep reading.
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_limited() {
    let tokens = Tokens::new();
    let proxy = crate::proxy::FaultProxy::start().await;
    let b = Bridge::start(
        &tokens,
        Opts {
            kms_endpoint: Some(proxy.url.clone()),
            with_source: false,
            env: vec![
                (
                    "HSM_BRIDGE__SERVER__HEADER_READ_TIMEOUT_SECS".into(),
                    "2".into(),
                ),
                ("HSM_BRIDGE__SERVER__MAX_CONNECTIONS".into(), "4".into()),
            ],
            ..Default::default()
        },
    )
    .await;

    // Headers one byte a second: the server hangs up once its header timeout has passed.
    let mut slow = TcpStream::connect(addr(&b)).await.expect("connect");
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let start = Instant::now();
    let mut cut = false;
    for byte in request {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_secs(1)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client sending a byte a second was never cut off");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "cut off after {took:?}, not within the 2 s header timeout"
    );

    // A request that takes longer than the timeout to answer is not cut: only a client that
    // keeps the server waiting is.
    let material = secret(32);
    let key = b.vault_import("slow-answer", "aes", &material).await;
    proxy.on(
        "CreateKey",
        crate::proxy::Fault::DelayOnce(Duration::from_secs(4)),
    );
    let (s, r) = b
        .upload(
            serde_json::json!({"source_key_identifier": key, "kms": b.kms_name,
                                   "region": REGION}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{r}");
    proxy.heal();

    // An idle connection is closed too.
    let mut idle = TcpStream::connect(addr(&b)).await.expect("connect");
    assert!(
        closed_within(&mut idle, Duration::from_secs(6)).await,
        "an idle connection stayed open"
    );

    // So is a keep-alive connection that sends nothing after its answer.
    let mut kept = TcpStream::connect(addr(&b)).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut answer = [0u8; 256];
    let n = kept.read(&mut answer).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(6)).await,
        "an idle keep-alive connection stayed open"
    );

    // Four connections are taken (the limit); a fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&b)).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(addr(&b)).await.expect("connect");
    assert!(
        closed_within(&mut over, Duration::from_secs(1)).await,
        "a connection over the limit was kept"
    );
    drop(held);
    // The places come back: a request goes through again.
    let start = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{}/healthz", b.url)).await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the connection limit never freed up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.finish().await;
}
