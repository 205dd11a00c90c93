//! `POST /api/v1/auth/tokens`, so that this bridge can serve as an external CipherTrust
//! Manager: the password grant for configured users (Argon2 hashes), and the refresh-token
//! grant. JWTs are signed with the configured key and carry the user's groups.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Issuer;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::config::UserConfig;

pub struct TokenService {
    pub issuer: Option<Issuer>,
    pub users: Vec<UserConfig>,
    pub ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// Argon2 is deliberately costly: at most this many verifications run at once, so a flood
    /// of password grants cannot take every blocking thread and all memory.
    verifying: Arc<tokio::sync::Semaphore>,
}

const CONCURRENT_VERIFICATIONS: usize = 2;
const VERIFICATION_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl TokenService {
    pub fn new(
        issuer: Option<Issuer>,
        users: Vec<UserConfig>,
        ttl_secs: u64,
        refresh_ttl_secs: u64,
    ) -> Self {
        TokenService {
            issuer,
            users,
            ttl_secs,
            refresh_ttl_secs,
            verifying: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS)),
        }
    }

    /// The hash an unknown user's password is checked against: a configured user's, so the
    /// work (and the time) is the same as for a known user. The result is ignored.
    fn decoy_hash(&self) -> String {
        self.users
            .first()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| DECOY_HASH.to_owned())
    }
}

pub type SharedTokens = Arc<TokenService>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    grant_type: String,
    username: Option<String>,
    password: Option<SecretString>,
    refresh_token: Option<SecretString>,
    /// CipherTrust clients may name a domain; only the root domain exists here.
    domain: Option<String>,
}

/// Only used if no user is configured (then no token is issued anyway).
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0vQxMY3v3YKsVUmcqiiQkVf5TTzbY4SIyxQXgHQJb9c";

fn wrong() -> ApiError {
    ApiError::unauthorized("wrong username, password or refresh token")
}

pub async fn issue(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    let svc = state.token_service.clone();
    let issuer = svc.issuer.as_ref().ok_or_else(|| {
        ApiError::not_found("this bridge does not issue tokens (no signing key is configured)")
    })?;
    if req
        .domain
        .as_deref()
        .is_some_and(|d| !d.is_empty() && d != "root")
    {
        return Err(wrong());
    }
    let (user, refresh) = match req.grant_type.as_str() {
        "password" => {
            let (Some(name), Some(password)) = (req.username.clone(), req.password) else {
                return Err(ApiError::bad_request(
                    "the password grant needs username and password",
                ));
            };
            let user = svc.users.iter().find(|u| u.name == name).cloned();
            let hash = user
                .as_ref()
                .map(|u| u.password_hash.clone())
                .unwrap_or_else(|| svc.decoy_hash());
            let permit = tokio::time::timeout(
                VERIFICATION_QUEUE_WAIT,
                svc.verifying.clone().acquire_owned(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ApiError::too_many_requests("too many password grants at once; retry later")
            })?;
            // The permit goes with the work: a caller hanging up does not free it early.
            let ok = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(&hash)
                    .map(|h| {
                        argon2::Argon2::default()
                            .verify_password(password.expose_secret().as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            let user = user.filter(|_| ok).ok_or_else(wrong)?;
            let token = {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
            };
            let expires =
                time::OffsetDateTime::now_utc().unix_timestamp() + svc.refresh_ttl_secs as i64;
            let (id, t, n) = (
                uuid::Uuid::new_v4().to_string(),
                token.clone(),
                user.name.clone(),
            );
            let rid = id.clone();
            state
                .store
                .call(move |c| crate::store::refresh::insert(c, &id, &t, &n, expires))
                .await?;
            (user, Some((rid, token)))
        }
        "refresh_token" => {
            let token = req.refresh_token.ok_or_else(|| {
                ApiError::bad_request("the refresh_token grant needs refresh_token")
            })?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let t = zeroize::Zeroizing::new(token.expose_secret().to_owned());
            let found = state
                .store
                .call(move |c| crate::store::refresh::user_of(c, &t, now))
                .await?;
            let (_, name) = found.ok_or_else(|| {
                ApiError::unauthorized("the refresh token is unknown or has expired")
            })?;
            let user = svc
                .users
                .iter()
                .find(|u| u.name == name)
                .cloned()
                .ok_or_else(wrong)?;
            (user, None)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "grant_type: `{other}` is not password or refresh_token"
            )));
        }
    };
    let jwt = issuer
        .issue(&user.name, &user.groups, svc.ttl_secs)
        .map_err(|e| ApiError::internal("could not sign the token").with_detail(e.to_string()))?;
    tracing::info!(user = %user.name, grant = %req.grant_type, "token issued");
    let mut out = json!({
        "jwt": jwt,
        "duration": svc.ttl_secs,
        "token_type": "Bearer",
        "client_id": Value::Null,
    });
    if let Some((id, token)) = refresh {
        out["refresh_token"] = json!(token);
        out["refresh_token_id"] = json!(id);
    }
    Ok(Json(out))
}
