//! Roles: what a caller may do, from the groups of its token (`[auth.roles]`; a group in
//! `auth.allowed_groups` holds every role). Each handler names the role it needs in its
//! signature (`Need<KeyAdmin>`), so no route can be reached without one.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::auth::Caller;
use super::error::ApiError;
use super::state::AppState;
use crate::config::AuthConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Uploader,
    KeyAdmin,
    VaultAdmin,
    Exporter,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Uploader,
        Role::KeyAdmin,
        Role::VaultAdmin,
        Role::Exporter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Uploader => "uploader",
            Role::KeyAdmin => "key-admin",
            Role::VaultAdmin => "vault-admin",
            Role::Exporter => "exporter",
        }
    }
}

/// Groups to roles.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    every: Vec<String>,
    by_role: Vec<(Role, Vec<String>)>,
}

impl RoleMap {
    pub fn from_config(cfg: &AuthConfig) -> Self {
        let r = &cfg.roles;
        RoleMap {
            every: cfg.allowed_groups.clone(),
            by_role: vec![
                (Role::Reader, r.reader.clone()),
                (Role::Uploader, r.uploader.clone()),
                (Role::KeyAdmin, r.key_admin.clone()),
                (Role::VaultAdmin, r.vault_admin.clone()),
                (Role::Exporter, r.exporter.clone()),
            ],
        }
    }

    pub fn roles_of(&self, groups: &[String]) -> BTreeSet<Role> {
        if groups.iter().any(|g| self.every.contains(g)) {
            return Role::ALL.into_iter().collect();
        }
        self.by_role
            .iter()
            .filter(|(_, gs)| groups.iter().any(|g| gs.contains(g)))
            .map(|(r, _)| *r)
            .collect()
    }
}

/// A role a handler needs.
pub trait NeedsRole: Send + Sync {
    const ROLE: Role;
}

macro_rules! role_marker {
    ($($name:ident => $role:expr),* $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` role.")]
            pub struct $name;
            impl NeedsRole for $name {
                const ROLE: Role = $role;
            }
        )*
    };
}

role_marker! {
    Reader => Role::Reader,
    Uploader => Role::Uploader,
    KeyAdmin => Role::KeyAdmin,
    VaultAdmin => Role::VaultAdmin,
    Exporter => Role::Exporter,
}

/// An authenticated caller holding the role `R`: 401 without a valid token, 403 without the
/// role.
pub struct Need<R: NeedsRole>(pub Caller, pub PhantomData<R>);

impl<R: NeedsRole> FromRequestParts<AppState> for Need<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let caller = state.auth.verify(header)?;
        tracing::Span::current().record("user", caller.user.as_str());
        super::audit::set_actor(&caller.user);
        if !caller.roles.contains(&R::ROLE) {
            return Err(ApiError::forbidden(format!(
                "the token's groups do not grant the {} role this operation needs",
                R::ROLE.name()
            )));
        }
        Ok(Need(caller, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_roles_and_allowed_groups_to_all() {
        let cfg: AuthConfig = toml::from_str(
            r#"
issuer = "i"
allowed_groups = ["admin"]
[roles]
reader = ["audit"]
key-admin = ["ops", "audit2"]
"#,
        )
        .expect("config");
        let m = RoleMap::from_config(&cfg);
        assert_eq!(m.roles_of(&["admin".into()]).len(), 5);
        assert_eq!(
            m.roles_of(&["audit".into()]),
            [Role::Reader].into_iter().collect()
        );
        assert_eq!(
            m.roles_of(&["ops".into(), "audit".into()]),
            [Role::Reader, Role::KeyAdmin].into_iter().collect()
        );
        assert!(m.roles_of(&["nobody".into()]).is_empty());
    }
}
