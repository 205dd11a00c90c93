//! Client of an external CipherTrust Manager (`external-cm` tier): authentication with
//! `POST /api/v1/auth/tokens` (password grant, then refresh tokens; the JWT is renewed before it
//! expires and once more on a 401), key metadata, and wrapped exports. Tokens and passwords are
//! held in `secrecy` types and never logged.

use std::time::{Duration, Instant};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::config::ExternalCmConfig;
use crate::secrets::SecretSource;

#[derive(Debug, thiserror::Error)]
pub enum CmError {
    /// The CM could not be reached or timed out.
    #[error("external CipherTrust Manager {cm} is unreachable: {message}")]
    Unreachable { cm: String, message: String },
    /// The CM refused the bridge's credentials (password, refresh token).
    #[error("external CipherTrust Manager {cm} refused the bridge's credentials: {message}")]
    Credentials { cm: String, message: String },
    /// The CM has no such key.
    #[error("external CipherTrust Manager {cm} has no key `{key}`")]
    NotFound { cm: String, key: String },
    /// Anything else the CM answered.
    #[error("external CipherTrust Manager {cm} answered {status}: {message}")]
    Refused {
        cm: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
}

struct Session {
    jwt: Option<(SecretString, Instant)>,
    refresh: Option<SecretString>,
}

pub struct CmClient {
    pub name: String,
    base: reqwest::Url,
    username: Option<String>,
    password: Option<SecretSource>,
    http: reqwest::Client,
    renew_before: Duration,
    session: Mutex<Session>,
}

/// The CipherTrust error body's message, if the answer has one. Anything else (a proxy's
/// HTML page, say) is not passed on: it could carry anything.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["message"]
                .as_str()
                .or_else(|| v["codeDesc"].as_str())
                .map(|m| m.chars().take(300).collect())
        })
        .unwrap_or_else(|| {
            format!(
                "the answer is not a CipherTrust error ({} bytes)",
                body.len()
            )
        })
}

/// A token grant, serialised straight from borrowed secrets (no JSON value holding copies).
/// The serialised body is owned by the HTTP client once sent and is not wiped.
#[derive(serde::Serialize)]
struct Grant<'a> {
    grant_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

impl CmClient {
    pub fn new(cfg: &ExternalCmConfig, index: usize) -> Result<Self, CmError> {
        let key = |k: &str| format!("config key `external_cm[{index}].{k}`");
        let base = reqwest::Url::parse(&cfg.url)
            .map_err(|e| CmError::Setup(format!("{}: {e}", key("url"))))?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(5))
            .https_only(base.scheme() == "https");
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                CmError::Setup(format!(
                    "{}: cannot read {}: {e}",
                    key("ca_file"),
                    ca.display()
                ))
            })?;
            // Only the configured CAs: the CM's certificate is pinned to them.
            builder = builder.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CmError::Setup(format!("{}: {e}", key("ca_file"))))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CmError::Setup(format!("{}: {e}", key("url"))))?;
        let refresh = match &cfg.refresh_token_file {
            Some(f) => Some(
                SecretSource::new(f.clone())
                    .read_string()
                    .map_err(|e| CmError::Setup(format!("{}: {e}", key("refresh_token_file"))))?,
            ),
            None => None,
        };
        let password = cfg.password_file.clone().map(SecretSource::new);
        if let Some(p) = &password {
            // Read once now so that a missing file stops the start, not the first upload.
            p.read_string()
                .map_err(|e| CmError::Setup(format!("{}: {e}", key("password_file"))))?;
        }
        Ok(Self {
            name: cfg.name.clone(),
            base,
            username: cfg.username.clone(),
            password,
            http,
            renew_before: Duration::from_secs(cfg.renew_before_secs),
            session: Mutex::new(Session { jwt: None, refresh }),
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, CmError> {
        self.base
            .join(path)
            .map_err(|e| CmError::Setup(format!("external CM {}: {e}", self.name)))
    }

    fn unreachable(&self, e: reqwest::Error) -> CmError {
        CmError::Unreachable {
            cm: self.name.clone(),
            message: if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "connection failed".into()
            } else {
                "the request failed".into()
            },
        }
    }

    /// `POST /api/v1/auth/tokens` with a grant; returns (jwt, lifetime, refresh token).
    async fn grant(
        &self,
        grant: Grant<'_>,
    ) -> Result<(SecretString, Duration, Option<SecretString>), CmError> {
        let payload = serde_json::to_vec(&grant)
            .map_err(|e| CmError::Setup(format!("external CM {}: {e}", self.name)))?;
        let resp = self
            .http
            .post(self.url("/api/v1/auth/tokens")?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = Zeroizing::new(resp.text().await.map_err(|e| self.unreachable(e))?);
        if status.as_u16() == 401 || status.as_u16() == 403 || status.as_u16() == 400 {
            return Err(CmError::Credentials {
                cm: self.name.clone(),
                message: error_message(&text),
            });
        }
        if !status.is_success() {
            return Err(CmError::Refused {
                cm: self.name.clone(),
                status: status.as_u16(),
                message: error_message(&text),
            });
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            jwt: Option<SecretString>,
            duration: Option<u64>,
            refresh_token: Option<SecretString>,
        }
        let v: Answer = serde_json::from_str(&text).map_err(|_| CmError::Refused {
            cm: self.name.clone(),
            status: status.as_u16(),
            message: "the token answer is not the expected JSON".into(),
        })?;
        let jwt = v.jwt.ok_or_else(|| CmError::Refused {
            cm: self.name.clone(),
            status: status.as_u16(),
            message: "the token answer has no jwt".into(),
        })?;
        let duration = Duration::from_secs(v.duration.unwrap_or(300));
        Ok((jwt, duration, v.refresh_token))
    }

    /// A JWT valid for at least `renew_before` (refresh grant first, password grant after).
    async fn bearer(&self, force: bool) -> Result<SecretString, CmError> {
        let mut s = self.session.lock().await;
        if !force
            && let Some((jwt, expires)) = &s.jwt
            && Instant::now() + self.renew_before < *expires
        {
            return Ok(jwt.clone());
        }
        let mut last = None;
        if let Some(r) = s.refresh.clone() {
            match self
                .grant(Grant {
                    grant_type: "refresh_token",
                    username: None,
                    password: None,
                    refresh_token: Some(r.expose_secret()),
                })
                .await
            {
                Ok((jwt, life, refresh)) => {
                    s.jwt = Some((jwt.clone(), Instant::now() + life));
                    if let Some(r) = refresh {
                        s.refresh = Some(r);
                    }
                    tracing::debug!(cm = %self.name, "external CM token renewed with the refresh token");
                    return Ok(jwt);
                }
                Err(e @ CmError::Credentials { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        match (&self.username, &self.password) {
            (Some(user), Some(p)) => {
                let password = p
                    .read_string()
                    .map_err(|e| CmError::Setup(format!("external CM {}: {e}", self.name)))?;
                let (jwt, life, refresh) = self
                    .grant(Grant {
                        grant_type: "password",
                        username: Some(user),
                        password: Some(password.expose_secret()),
                        refresh_token: None,
                    })
                    .await?;
                s.jwt = Some((jwt.clone(), Instant::now() + life));
                s.refresh = refresh;
                tracing::debug!(cm = %self.name, "external CM token obtained with the password");
                Ok(jwt)
            }
            _ => Err(last.unwrap_or_else(|| CmError::Credentials {
                cm: self.name.clone(),
                message: "no credentials configured".into(),
            })),
        }
    }

    /// An authenticated JSON call; a 401 renews the JWT and retries once.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CmError> {
        let mut force = false;
        loop {
            let jwt = self.bearer(force).await?;
            let mut rq = self
                .http
                .request(method.clone(), self.url(path)?)
                .bearer_auth(jwt.expose_secret());
            if let Some(b) = body {
                rq = rq.json(b);
            }
            let resp = rq.send().await.map_err(|e| self.unreachable(e))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| self.unreachable(e))?;
            if status == 401 && !force {
                tracing::debug!(cm = %self.name, "external CM refused the JWT; renewing");
                force = true;
                continue;
            }
            if status == 401 {
                return Err(CmError::Credentials {
                    cm: self.name.clone(),
                    message: error_message(&text),
                });
            }
            let v = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !(200..300).contains(&status) {
                return Ok((status, json!({"message": error_message(&text)})));
            }
            return Ok((status, v));
        }
    }

    /// The key's metadata (`GET /api/v1/vault/keys2/{id}`).
    pub async fn key(&self, id: &str) -> Result<Value, CmError> {
        let path = format!("/api/v1/vault/keys2/{}", urlencode(id));
        let (status, v) = self.call(reqwest::Method::GET, &path, None).await?;
        match status {
            200 => Ok(v),
            404 => Err(CmError::NotFound {
                cm: self.name.clone(),
                key: id.to_owned(),
            }),
            s => Err(CmError::Refused {
                cm: self.name.clone(),
                status: s,
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            }),
        }
    }

    /// A wrapped export (`POST /api/v1/vault/keys2/{id}/export`); returns the wrapped bytes.
    pub async fn export(&self, id: &str, request: &Value) -> Result<Vec<u8>, CmError> {
        let path = format!("/api/v1/vault/keys2/{}/export", urlencode(id));
        let (status, v) = self
            .call(reqwest::Method::POST, &path, Some(request))
            .await?;
        if !(200..300).contains(&status) {
            return Err(CmError::Refused {
                cm: self.name.clone(),
                status,
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        let material = v["material"].as_str().ok_or_else(|| CmError::Refused {
            cm: self.name.clone(),
            status,
            message: "the export answer has no material".into(),
        })?;
        hex::decode(material)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(material))
            .map_err(|_| CmError::Refused {
                cm: self.name.clone(),
                status,
                message: "the exported material is neither hex nor base64".into(),
            })
    }

    /// Authenticates (for `probe`).
    pub async fn check(&self) -> Result<(), CmError> {
        self.bearer(true).await.map(|_| ())
    }

    pub async fn create_key(&self, body: &Value) -> Result<Value, CmError> {
        let (status, v) = self
            .call(reqwest::Method::POST, "/api/v1/vault/keys2", Some(body))
            .await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(CmError::Refused {
                cm: self.name.clone(),
                status,
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    pub async fn delete_key(&self, id: &str) -> Result<(), CmError> {
        let path = format!("/api/v1/vault/keys2/{}", urlencode(id));
        let (status, v) = self.call(reqwest::Method::DELETE, &path, None).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(CmError::Refused {
                cm: self.name.clone(),
                status,
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
