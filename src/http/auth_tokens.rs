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
use super::login_guard::{LoginGuard, Subject};
use super::roles::{Need, Reader};
use crate::config::UserConfig;
use crate::store::refresh;
use crate::vocabulary::{Unused, Vocabulary};

pub struct TokenService {
    pub issuer: Option<Issuer>,
    pub users: Vec<UserConfig>,
    pub ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub guard: LoginGuard,
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
        guard: LoginGuard,
    ) -> Self {
        TokenService {
            issuer,
            users,
            ttl_secs,
            refresh_ttl_secs,
            guard,
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

/// The body of `POST /api/v1/auth/tokens` as CipherTrust Manager documents it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    grant_type: String,
    username: Option<String>,
    password: Option<SecretString>,
    refresh_token: Option<SecretString>,
    /// CipherTrust clients may name a domain; only the root domain exists here.
    domain: Option<String>,
    auth_domain: Option<String>,
    auth_domain_path: Option<String>,
    /// The identity provider; this bridge has local accounts only.
    connection: Option<String>,
    /// Every refresh grant issues a new refresh token here (the old one is retired), so
    /// `true` is what happens anyway.
    renew_refresh_token: Option<bool>,
    /// Echoed in the answer.
    client_id: Option<String>,
    #[serde(default)]
    cookies: Unused,
    #[serde(default)]
    labels: Unused,
    #[serde(default)]
    refresh_token_lifetime: Unused,
    #[serde(default)]
    refresh_token_revoke_unused_in: Unused,
}

impl Vocabulary for TokenRequest {
    fn unused(&self) -> Vec<String> {
        crate::unused_fields!(self, ""; cookies, labels, refresh_token_lifetime,
            refresh_token_revoke_unused_in)
    }
}

/// Only used if no user is configured (then no token is issued anyway).
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0vQxMY3v3YKsVUmcqiiQkVf5TTzbY4SIyxQXgHQJb9c";

fn wrong() -> ApiError {
    ApiError::unauthorized("wrong username, password or refresh token")
}

/// A new random refresh token.
fn new_refresh_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The address a request came from, where the server knows it.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

fn locked(for_: std::time::Duration) -> ApiError {
    ApiError::too_many_requests(format!(
        "too many failed sign-ins; try again in {} s",
        for_.as_secs().max(1)
    ))
}

pub async fn issue(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    let svc = state.token_service.clone();
    let issuer = svc.issuer.as_ref().ok_or_else(|| {
        ApiError::not_found("this bridge does not issue tokens (no signing key is configured)")
    })?;
    for d in [&req.domain, &req.auth_domain, &req.auth_domain_path] {
        if d.as_deref()
            .is_some_and(|d| !d.is_empty() && d != "root" && d != "/")
        {
            return Err(wrong());
        }
    }
    if let Some(c) = req.connection.as_deref()
        && !c.is_empty()
        && c != "local_account"
    {
        return Err(ApiError::unauthorized(format!(
            "connection `{c}` is not known here: this bridge has local accounts only (local_account)"
        )));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let next_id = uuid::Uuid::new_v4().to_string();
    let next_token = new_refresh_token();
    let (user, family) = match req.grant_type.as_str() {
        "password" => {
            let (Some(name), Some(password)) = (req.username.clone(), req.password) else {
                return Err(ApiError::bad_request(
                    "the password grant needs username and password",
                ));
            };
            super::audit::set_actor(&name);
            let mut subjects = vec![Subject::User(name.clone())];
            subjects.extend(addr.map(Subject::Address));
            match svc.guard.check(&subjects) {
                Err(left) => {
                    tracing::warn!(user = %name, address = ?addr, "password grant refused: locked after repeated failures");
                    return Err(locked(left));
                }
                Ok(delay) if !delay.is_zero() => tokio::time::sleep(delay).await,
                Ok(_) => {}
            }
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
            let Some(user) = user.filter(|_| ok) else {
                tracing::warn!(user = %name, address = ?addr, "password grant failed");
                for s in svc.guard.failed(&subjects) {
                    tracing::warn!(subject = ?s, "locked after repeated failed sign-ins");
                }
                return Err(wrong());
            };
            svc.guard.succeeded(&subjects[0]);
            let expires = now + svc.refresh_ttl_secs as i64;
            let family = uuid::Uuid::new_v4().to_string();
            let (id, t, f, n) = (
                next_id.clone(),
                next_token.clone(),
                family.clone(),
                user.name.clone(),
            );
            state
                .store
                .call(move |c| {
                    let new = refresh::NewToken {
                        id: &id,
                        token: &t,
                        family: &f,
                    };
                    refresh::insert(c, &new, &n, expires)
                })
                .await?;
            (user, family)
        }
        "refresh_token" => {
            if req.renew_refresh_token == Some(false) {
                tracing::debug!(
                    "renew_refresh_token is false, but refresh tokens are single-use here: a new one is issued"
                );
            }
            let token = req.refresh_token.ok_or_else(|| {
                ApiError::bad_request("the refresh_token grant needs refresh_token")
            })?;
            let t = zeroize::Zeroizing::new(token.expose_secret().to_owned());
            let (id, nt) = (next_id.clone(), next_token.clone());
            let redeemed = state
                .store
                .call(move |c| {
                    let next = refresh::NewToken {
                        id: &id,
                        token: &nt,
                        family: "",
                    };
                    refresh::redeem(c, &t, &next, now)
                })
                .await?;
            let (name, family) = match redeemed {
                refresh::Redeemed::Rotated { username, family } => {
                    super::audit::set_actor(&username);
                    (username, family)
                }
                refresh::Redeemed::Unknown => {
                    return Err(ApiError::unauthorized(
                        "the refresh token is unknown or has expired",
                    ));
                }
                refresh::Redeemed::Reused { username } => {
                    tracing::warn!(user = %username,
                        "a refresh token was presented again after it had been used: \
                         every refresh token of that login is revoked");
                    return Err(ApiError::unauthorized(
                        "the refresh token was already used; the login it belonged to is revoked",
                    ));
                }
            };
            let user = svc
                .users
                .iter()
                .find(|u| u.name == name)
                .cloned()
                .ok_or_else(wrong)?;
            (user, family)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "grant_type: `{other}` is not password or refresh_token"
            )));
        }
    };
    let jwt = issuer
        .issue(
            &user.name,
            &user.groups,
            svc.ttl_secs,
            Some(super::auth::PEER_AUDIENCE),
        )
        .map_err(|e| ApiError::internal("could not sign the token").with_detail(e.to_string()))?;
    tracing::info!(user = %user.name, grant = %req.grant_type, "token issued");
    Ok(Json(json!({
        "jwt": jwt,
        "duration": svc.ttl_secs,
        "token_type": "Bearer",
        "client_id": req.client_id.unwrap_or(family),
        "refresh_token": next_token,
        "refresh_token_id": next_id,
    })))
}

/// `DELETE /api/v1/auth/tokens/{id}`: revokes a refresh token (and every token of its login),
/// by the id the grant answered as `refresh_token_id`. Its own user may revoke it; so may a
/// vault administrator.
pub async fn revoke(
    State(state): State<AppState>,
    Need(caller, _): Need<Reader>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let i = id.clone();
    let owner = state
        .store
        .call(move |c| refresh::owner(c, &i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no refresh token `{id}`")))?;
    if owner != caller.user && !caller.roles.contains(&super::roles::Role::VaultAdmin) {
        return Err(ApiError::forbidden(
            "only the token's own user or a vault-admin may revoke it",
        ));
    }
    let i = id.clone();
    let revoked = state
        .store
        .call(move |c| refresh::revoke_family(c, &i))
        .await?;
    tracing::info!(user = %caller.user, owner = %owner, tokens = revoked, "refresh tokens revoked");
    Ok(Json(json!({"id": id, "revoked": revoked})))
}
