//! `GET /api/v1/system/tokens`: each token, what its self-test proved, and how many objects
//! this daemon sees in it (session objects of a finished operation must be zero).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::roles::{Need, Reader};
use crate::config::TokenRole;
use crate::error::DomainError;
use crate::pkcs11::ops;

pub async fn tokens(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
) -> Result<Json<Value>, ApiError> {
    let mut resources = Vec::new();
    for t in state.tokens.all() {
        // A token that cannot answer is reported as such; the others are still listed.
        let (objects, status) = match t.run(ops::count_objects).await {
            Ok((on_token, in_sessions)) => (
                json!({"token": on_token, "session": in_sessions}),
                json!({"state": "ready"}),
            ),
            Err(e) => (
                Value::Null,
                json!({
                    "state": if t.failure().is_some() { "failed" } else { "unavailable" },
                    "reason": DomainError::token(&t.name)(e).public_message(),
                }),
            ),
        };
        let ident = t.ident();
        let caps = t.capabilities();
        resources.push(json!({
            "name": t.name,
            "role": match t.role { TokenRole::Bridge => "bridge", TokenRole::Source => "source" },
            "profile": t.profile.family,
            "label": ident.label,
            "serial": ident.serial,
            "model": ident.model,
            "proven": caps.map(|c| c.summary()),
            "objects": objects,
            "key_restrictions": t.restrictions(),
            "status": status,
        }));
    }
    Ok(Json(
        json!({"total": resources.len(), "resources": resources}),
    ))
}
