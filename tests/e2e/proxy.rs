//! A fault-injecting HTTP proxy between the daemon and the KMS emulator: it forwards every
//! call, unless told to refuse one operation with an AWS error, to drop the connection (AWS
//! "going away"), to hold a call until released, or to forward a call and lose its answer.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::harness::world;

#[derive(Clone)]
pub enum Fault {
    /// Forward as usual (overrides a rule for every operation).
    Pass,
    /// Answer with this AWS error instead of forwarding.
    Refuse { status: u16, aws_type: &'static str },
    /// The same, for the first matching call only.
    RefuseOnce { status: u16, aws_type: &'static str },
    /// Refuse the `n`-th matching call (1 is the first) from now on, and only that one.
    RefuseNth {
        n: usize,
        status: u16,
        aws_type: &'static str,
    },
    /// Answer 200 with this JSON body instead of forwarding (for a call the emulator does
    /// not implement; the request is still recorded).
    Answer(String),
    /// Close the connection without an answer.
    Drop,
    /// Forward the call, then close the connection without passing the answer on.
    LoseAnswer,
    /// The same, for the first matching call only.
    LoseAnswerOnce,
    /// Wait until released, then drop the connection.
    Hold(Arc<Notify>),
    /// Wait this long, then forward.
    Delay(std::time::Duration),
    /// The same, for the first matching call only.
    DelayOnce(std::time::Duration),
}

/// One call that went through, for tests that look at the wire.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub op: String,
    /// When the answer was passed on.
    pub at: std::time::Instant,
    pub status: u16,
    pub request: Vec<u8>,
    pub response: Vec<u8>,
}

#[derive(Default)]
struct Rules {
    by_op: HashMap<String, Fault>,
    all: Option<Fault>,
    /// Once this operation has been forwarded, every later call meets the fault.
    after: Option<(String, Fault)>,
    seen: Vec<String>,
    /// Hand the daemon this public key (SPKI DER) instead of AWS's wrapping key.
    swap_wrapping_key: Option<Vec<u8>>,
    /// The EncryptedKeyMaterial of every ImportKeyMaterial call.
    captured: Vec<Vec<u8>>,
    /// Rules for operations (request paths) containing a string.
    containing: Vec<(String, Fault)>,
    /// Quotas the proxy enforces as AWS does: operation -> (requests per second, tokens, last).
    quotas: HashMap<String, (f64, f64, std::time::Instant)>,
    /// Calls the quotas refused.
    throttled: usize,
    exchanges: Vec<Exchange>,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub url: String,
    rules: Arc<Mutex<Rules>>,
}

impl FaultProxy {
    /// In front of the KMS emulator.
    pub async fn start() -> FaultProxy {
        Self::start_to(world().kms_endpoint.clone()).await
    }

    /// In front of any HTTP server (another bridge, say); operations are request paths.
    pub async fn start_to(upstream: String) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let rules = Arc::new(Mutex::new(Rules::default()));
        let client = reqwest::Client::new();
        let r = rules.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rules, upstream, client) = (r.clone(), upstream.clone(), client.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (rules, upstream, client) =
                            (rules.clone(), upstream.clone(), client.clone());
                        async move { handle(req, rules, upstream, client).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy { url, rules }
    }

    /// A rule for every operation whose name (or path) contains `part`.
    pub fn on_containing(&self, part: &str, fault: Fault) {
        self.rules
            .lock()
            .expect("rules")
            .containing
            .push((part.to_owned(), fault));
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.rules.lock().expect("rules").exchanges.clone()
    }

    pub fn on(&self, op: &str, fault: Fault) {
        self.rules
            .lock()
            .expect("rules")
            .by_op
            .insert(op.to_owned(), fault);
    }

    /// Enforce a request quota on `op` as AWS does: calls above `per_second` are answered
    /// 400 ThrottlingException.
    pub fn enforce_quota(&self, op: &str, per_second: f64) {
        self.rules.lock().expect("rules").quotas.insert(
            op.to_owned(),
            (per_second, per_second.max(1.0), std::time::Instant::now()),
        );
    }

    /// How many calls the quotas refused.
    pub fn throttled(&self) -> usize {
        self.rules.lock().expect("rules").throttled
    }

    pub fn everything(&self, fault: Fault) {
        self.rules.lock().expect("rules").all = Some(fault);
    }

    pub fn after(&self, op: &str, fault: Fault) {
        self.rules.lock().expect("rules").after = Some((op.to_owned(), fault));
    }

    /// From now on GetParametersForImport answers carry `spki` as the wrapping key, so that
    /// the test can unwrap what the daemon imports.
    pub fn swap_wrapping_key(&self, spki: Vec<u8>) {
        self.rules.lock().expect("rules").swap_wrapping_key = Some(spki);
    }

    /// The wrapped material of every ImportKeyMaterial call so far.
    pub fn captured(&self) -> Vec<Vec<u8>> {
        self.rules.lock().expect("rules").captured.clone()
    }

    pub fn heal(&self) {
        let mut r = self.rules.lock().expect("rules");
        r.by_op.clear();
        r.all = None;
        r.after = None;
    }

    /// The operations seen so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.rules.lock().expect("rules").seen.clone()
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(
    req: Request<Incoming>,
    rules: Arc<Mutex<Rules>>,
    upstream: String,
    client: reqwest::Client,
) -> Answer {
    let op = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('.').next())
        .map(str::to_owned)
        .unwrap_or_else(|| req.uri().path().to_owned());
    let fault = {
        let mut r = rules.lock().expect("rules");
        let tripped = r
            .after
            .as_ref()
            .filter(|(after, _)| r.seen.iter().any(|s| s == after))
            .map(|(_, f)| f.clone());
        r.seen.push(op.clone());
        let at = r
            .containing
            .iter()
            .position(|(part, _)| op.contains(part.as_str()));
        let containing = at.map(|i| r.containing[i].1.clone());
        if let (Some(i), Some(Fault::DelayOnce(_))) = (at, &containing) {
            r.containing.remove(i);
        }
        let mut by_op = r.by_op.get(&op).cloned();
        if matches!(
            by_op,
            Some(Fault::LoseAnswerOnce | Fault::RefuseOnce { .. })
        ) {
            r.by_op.remove(&op);
        }
        if let Some(Fault::RefuseNth {
            n,
            status,
            aws_type,
        }) = by_op
        {
            by_op = if n <= 1 {
                r.by_op.remove(&op);
                Some(Fault::Refuse { status, aws_type })
            } else {
                r.by_op.insert(
                    op.clone(),
                    Fault::RefuseNth {
                        n: n - 1,
                        status,
                        aws_type,
                    },
                );
                None
            };
        }
        let over_quota = match r.quotas.get_mut(&op) {
            Some((rate, tokens, last)) => {
                let now = std::time::Instant::now();
                *tokens =
                    (*tokens + now.duration_since(*last).as_secs_f64() * *rate).min(rate.max(1.0));
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    false
                } else {
                    true
                }
            }
            None => false,
        };
        if over_quota {
            r.throttled += 1;
            Some(Fault::Refuse {
                status: 400,
                aws_type: "ThrottlingException",
            })
        } else {
            tripped.or(by_op).or(containing).or_else(|| r.all.clone())
        }
    };
    let drop_it = || {
        Err(std::io::Error::other(
            "connection dropped by the fault proxy",
        ))
    };
    match fault {
        Some(Fault::Refuse { status, aws_type } | Fault::RefuseOnce { status, aws_type }) => {
            let body =
                format!(r#"{{"__type":"{aws_type}","message":"injected by the fault proxy"}}"#);
            return Ok(Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amzn-query-error", format!("{aws_type};Sender"))
                .body(Full::new(Bytes::from(body)))
                .expect("response"));
        }
        Some(Fault::Answer(json)) => {
            let (_, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            rules.lock().expect("rules").exchanges.push(Exchange {
                op: op.clone(),
                at: std::time::Instant::now(),
                status: 200,
                request: body.to_vec(),
                response: json.clone().into_bytes(),
            });
            return Ok(Response::builder()
                .status(200)
                .header("content-type", "application/x-amz-json-1.1")
                .body(Full::new(Bytes::from(json)))
                .expect("response"));
        }
        Some(Fault::Drop) => return drop_it(),
        Some(Fault::Delay(d)) | Some(Fault::DelayOnce(d)) => tokio::time::sleep(d).await,
        Some(Fault::Pass)
        | Some(Fault::LoseAnswer)
        | Some(Fault::LoseAnswerOnce)
        | Some(Fault::RefuseNth { .. })
        | None => {}
        Some(Fault::Hold(n)) => {
            n.notified().await;
            return drop_it();
        }
    }
    let lose = matches!(fault, Some(Fault::LoseAnswer | Fault::LoseAnswerOnce));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if op == "ImportKeyMaterial" {
        use base64::Engine;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(b) = v["EncryptedKeyMaterial"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        {
            rules.lock().expect("rules").captured.push(b);
        }
    }
    let swap = if op == "GetParametersForImport" {
        rules.lock().expect("rules").swap_wrapping_key.clone()
    } else {
        None
    };
    let mut fwd = client.request(parts.method.clone(), format!("{upstream}{}", parts.uri));
    for (k, v) in parts.headers.iter() {
        if k != "host" {
            fwd = fwd.header(k, v);
        }
    }
    let request_body = body.to_vec();
    let resp = fwd.body(body).send().await.map_err(std::io::Error::other)?;
    if lose {
        return drop_it();
    }
    let resp_status = resp.status().as_u16();
    let mut out = Response::builder().status(resp_status);
    for (k, v) in resp.headers().iter() {
        if k != "content-length" && k != "transfer-encoding" && k != "connection" {
            out = out.header(k, v);
        }
    }
    let mut bytes = resp.bytes().await.map_err(std::io::Error::other)?;
    if let Some(spki) = swap {
        use base64::Engine;
        let mut v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        if v.get("PublicKey").is_some() {
            v["PublicKey"] =
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&spki));
            bytes = Bytes::from(v.to_string());
        }
    }
    rules.lock().expect("rules").exchanges.push(Exchange {
        op: op.clone(),
        at: std::time::Instant::now(),
        status: resp_status,
        request: request_body,
        response: bytes.to_vec(),
    });
    Ok(out.body(Full::new(bytes)).expect("response"))
}

/// The KMS calls of one upload with an alias: the alias check, CreateKey,
/// GetParametersForImport, ImportKeyMaterial, CreateAlias and one DescribeKey of the result.
pub const UPLOAD_CALLS: [&str; 6] = [
    "DescribeKey",
    "CreateKey",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "CreateAlias",
    "DescribeKey",
];

/// `seen` (the calls of one upload) are those six, in that order.
pub fn assert_upload_calls(seen: &[String], what: &str) {
    assert_eq!(seen, UPLOAD_CALLS, "{what}: the KMS calls of one upload");
}
