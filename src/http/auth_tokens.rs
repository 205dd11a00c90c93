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

/// Hashes verified against when the user is unknown, so the answer takes as long either way.
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
                .unwrap_or_else(|| DECOY_HASH.to_owned());
            let ok = tokio::task::spawn_blocking(move || {
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
            let t = token.expose_secret().to_owned();
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
