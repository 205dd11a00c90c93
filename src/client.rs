//! The command line's side of the API: `hsm-bridge upload-job` submits a job to the daemon the
//! configuration describes (its address, its certificate, a token signed with its key) and
//! follows it to its end.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error("cannot reach the daemon at {url}: {why}")]
    Unreachable { url: String, why: String },
}

/// Where the daemon listens: `--url`, else the address it wrote (`server.address_file`), else
/// `server.listen` (a wildcard address reached on loopback).
pub fn daemon_url(cfg: &Config, url: Option<&str>) -> Result<String, ClientError> {
    if let Some(u) = url {
        return Ok(u.trim_end_matches('/').to_owned());
    }
    if let Some(f) = &cfg.server.address_file
        && let Ok(text) = std::fs::read_to_string(f)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().trim_end_matches('/').to_owned());
    }
    let mut addr = cfg.server.listen;
    if addr.port() == 0 {
        return Err(ClientError::Setup(
            "server.listen has port 0 and no address file was written: give --url".into(),
        ));
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if cfg.server.plaintext {
        "http"
    } else {
        "https"
    };
    Ok(format!("{scheme}://{addr}"))
}

/// A short-lived token with the groups that let it submit and read jobs.
fn token(cfg: &Config, user: &str) -> Result<String, ClientError> {
    let groups: Vec<String> = match cfg.auth.allowed_groups.first() {
        Some(g) => vec![g.clone()],
        None => {
            let r = &cfg.auth.roles;
            match (r.uploader.first(), r.reader.first()) {
                (Some(u), Some(rd)) => vec![u.clone(), rd.clone()],
                _ => {
                    return Err(ClientError::Setup(
                        "the configuration maps no group to the uploader and reader roles \
                         (auth.allowed_groups or auth.roles)"
                            .into(),
                    ));
                }
            }
        }
    };
    crate::http::auth::mint(&cfg.auth, user, &groups, 3600)
        .map_err(|e| ClientError::Setup(e.to_string()))
}

fn http_client(cfg: &Config, ca: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    // Long enough for a large selector to be expanded and stored: a submission that timed out
    // here may still have made its job, and submitting again would make a second one.
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(600));
    let ca = ca.or(cfg.server.tls_cert_file.as_deref());
    if !cfg.server.plaintext
        && let Some(path) = ca
    {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| ClientError::Setup(e.to_string()))
}

pub struct UploadJobArgs<'a> {
    pub file: &'a Path,
    pub follow: bool,
    pub url: Option<&'a str>,
    pub ca: Option<&'a Path>,
    pub user: &'a str,
}

async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<(reqwest::StatusCode, Value), ClientError> {
    let resp = req.send().await.map_err(|e| ClientError::Unreachable {
        url: url.to_owned(),
        why: e.to_string(),
    })?;
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn refusal(status: reqwest::StatusCode, body: &Value) -> ClientError {
    ClientError::Refused(format!(
        "{status}: {}",
        body["message"].as_str().unwrap_or("no message")
    ))
}

/// Submits the job and, with `follow`, shows its progress until it ends. Answers the job as
/// submitted, or with `follow` as it ended.
pub async fn upload_job(cfg: &Config, args: UploadJobArgs<'_>) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(args.file)
        .map_err(|e| ClientError::Setup(format!("{}: {e}", args.file.display())))?;
    let job: Value = serde_json::from_str(&text)
        .map_err(|e| ClientError::Setup(format!("{}: not JSON: {e}", args.file.display())))?;
    let base = daemon_url(cfg, args.url)?;
    let http = http_client(cfg, args.ca)?;
    let bearer = token(cfg, args.user)?;
    let url = format!("{base}/api/v1/cckm/aws/upload-jobs");
    let (status, created) = send(http.post(&url).bearer_auth(&bearer).json(&job), &url).await?;
    if !status.is_success() {
        return Err(refusal(status, &created));
    }
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "upload job {id}: {} items",
        created["total"].as_u64().unwrap_or(0)
    );
    if !args.follow {
        return Ok(created);
    }
    let bar = indicatif::ProgressBar::new(created["total"].as_u64().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} items  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let one = format!("{url}/{id}?items=none");
    // The daemon may restart while the job runs (the job resumes): keep asking for a while.
    let patience = Duration::from_secs(300);
    let mut unreachable_since: Option<std::time::Instant> = None;
    let last = loop {
        // A fresh token each time: a job may run for longer than one lives.
        let bearer = token(cfg, args.user)?;
        let (status, j) = match send(http.get(&one).bearer_auth(&bearer), &one).await {
            Ok(r) => {
                unreachable_since = None;
                r
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > patience {
                    bar.abandon();
                    return Err(e);
                }
                bar.set_message(format!("waiting for the daemon: {e}"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if status.is_server_error() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        if !status.is_success() {
            bar.abandon();
            return Err(refusal(status, &j));
        }
        let n = |k: &str| j[k].as_u64().unwrap_or(0);
        bar.set_position(n("completed") + n("failed") + n("cancelled"));
        let rate = j["rate_per_second"]
            .as_f64()
            .map(|r| format!("{r:.2}/s"))
            .unwrap_or_else(|| "-/s".into());
        let eta = j["eta_seconds"]
            .as_u64()
            .map(|s| format!("ETA {}m{:02}s", s / 60, s % 60))
            .unwrap_or_else(|| "ETA -".into());
        bar.set_message(format!(
            "{rate}  {eta}  failed {}  {}",
            n("failed"),
            j["status"].as_str().unwrap_or_default()
        ));
        match j["status"].as_str() {
            Some("completed" | "cancelled") if n("running") == 0 => break j,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    bar.finish();
    Ok(last)
}
