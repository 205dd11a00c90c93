//! Bearer JWT authentication in CipherTrust Manager's style: signature, `exp`, issuer, and a
//! group of `cust.groups` in the configured `allowed_groups`.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use super::error::ApiError;
use super::roles::{Role, RoleMap};
use crate::config::AuthConfig;
use crate::secrets::SecretSource;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default)]
    pub cust: Cust,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cust {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    roles: RoleMap,
}

/// The audience of tokens this bridge issues to its peers (`POST /api/v1/auth/tokens`):
/// only they may export. Operator tokens (`hsm-bridge token`) carry none.
pub const PEER_AUDIENCE: &str = "hsm-bridge-peer";

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("config key `auth.{key}`: {message}")]
    Key { key: &'static str, message: String },
}

fn setup_err(key: &'static str, message: impl ToString) -> AuthSetupError {
    AuthSetupError::Key {
        key,
        message: message.to_string(),
    }
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        let (key, algs) = if let Some(f) = &cfg.jwt_secret_file {
            let secret = SecretSource::new(f.clone())
                .read_bytes()
                .map_err(|e| setup_err("jwt_secret_file", e))?;
            if secret.expose_secret().len() < 32 {
                return Err(setup_err(
                    "jwt_secret_file",
                    "the HS256 secret must be at least 32 bytes",
                ));
            }
            (
                DecodingKey::from_secret(secret.expose_secret()),
                vec![Algorithm::HS256],
            )
        } else if let Some(f) = &cfg.jwt_public_key_file {
            let pem = SecretSource::new(f.clone())
                .read_public_bytes()
                .map_err(|e| setup_err("jwt_public_key_file", e))?;
            let pem = pem.expose_secret();
            if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (k, vec![Algorithm::RS256])
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (k, vec![Algorithm::ES256])
            } else {
                return Err(setup_err(
                    "jwt_public_key_file",
                    "not an RSA or EC P-256 public key in PEM",
                ));
            }
        } else {
            return Err(setup_err(
                "jwt_secret_file",
                "jwt_secret_file or jwt_public_key_file is required",
            ));
        };
        let mut validation = Validation::new(algs[0]);
        validation.algorithms = algs;
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.validate_aud = false;
        Ok(Self {
            key,
            validation,
            roles: RoleMap::from_config(cfg),
        })
    }

    pub fn verify(&self, header_value: Option<&str>) -> Result<Caller, ApiError> {
        let raw = header_value.ok_or_else(|| {
            ApiError::unauthorized("missing Authorization header; a Bearer token is required")
        })?;
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                let why = match e.kind() {
                    K::ExpiredSignature => "token has expired",
                    K::InvalidIssuer => "token issuer is not accepted",
                    K::InvalidSignature => "token signature is invalid",
                    K::InvalidAlgorithm => "token algorithm is not accepted",
                    K::ImmatureSignature => "token is not valid yet",
                    K::MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "token is malformed",
                };
                ApiError::unauthorized(why)
            })?;
        let claims = data.claims;
        let roles = self.roles.roles_of(&claims.cust.groups);
        if roles.is_empty() {
            return Err(ApiError::forbidden(
                "the token's groups do not allow this operation (they grant no role)",
            ));
        }
        let peer = match &claims.aud {
            Some(serde_json::Value::String(a)) => a == PEER_AUDIENCE,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v == PEER_AUDIENCE),
            _ => false,
        };
        Ok(Caller {
            user: claims.sub,
            groups: claims.cust.groups,
            roles,
            peer,
        })
    }
}

/// The authenticated caller of a request (handlers take it through [`super::roles::Need`]).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
    pub roles: BTreeSet<Role>,
    /// Whether the token was issued to a peer by `POST /api/v1/auth/tokens`.
    pub peer: bool,
}

/// The key tokens are signed with: the HS256 secret, or the RS256/ES256 private key.
pub fn signing_key(cfg: &AuthConfig) -> Result<(EncodingKey, Algorithm), AuthSetupError> {
    if let Some(f) = &cfg.jwt_secret_file {
        let secret = SecretSource::new(f.clone())
            .read_bytes()
            .map_err(|e| setup_err("jwt_secret_file", e))?;
        return Ok((
            EncodingKey::from_secret(secret.expose_secret()),
            Algorithm::HS256,
        ));
    }
    let f = cfg.jwt_private_key_file.as_ref().ok_or_else(|| {
        setup_err(
            "jwt_private_key_file",
            "required to issue tokens when the daemon verifies with a public key",
        )
    })?;
    let pem = SecretSource::new(f.clone())
        .read_bytes()
        .map_err(|e| setup_err("jwt_private_key_file", e))?;
    let pem = pem.expose_secret();
    if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        Ok((k, Algorithm::RS256))
    } else if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        Ok((k, Algorithm::ES256))
    } else {
        Err(setup_err(
            "jwt_private_key_file",
            "not an RSA or EC P-256 private key in PEM",
        ))
    }
}

/// Issues Bearer tokens (the `token` command and `POST /api/v1/auth/tokens`).
pub struct Issuer {
    key: EncodingKey,
    alg: Algorithm,
    issuer: String,
}

impl Issuer {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        let (key, alg) = signing_key(cfg)?;
        Ok(Self {
            key,
            alg,
            issuer: cfg.issuer.clone(),
        })
    }

    pub fn issue(
        &self,
        user: &str,
        groups: &[String],
        ttl_secs: u64,
        audience: Option<&str>,
    ) -> Result<String, AuthSetupError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: user.to_owned(),
            exp: now + ttl_secs,
            iat: now,
            nbf: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            aud: audience.map(|a| serde_json::Value::String(a.to_owned())),
            cust: Cust {
                groups: groups.to_vec(),
                domain_id: None,
            },
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)
            .map_err(|e| setup_err("jwt_secret_file", e))
    }
}

/// Mints a token signed with the configured key (`hsm-bridge token`).
pub fn mint(
    cfg: &AuthConfig,
    user: &str,
    groups: &[String],
    ttl_secs: u64,
) -> Result<String, AuthSetupError> {
    Issuer::from_config(cfg)?.issue(user, groups, ttl_secs, None)
}

pub type SharedAuth = Arc<Authenticator>;
