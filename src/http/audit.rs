//! The audit trail at the HTTP edge: every request that changes something (any method but
//! GET/HEAD/OPTIONS) and every refused or failed request is appended to the audit log, with
//! who made it (the token's user, or the username of a sign-in), the route, the status and the
//! request id; never a body. `GET /api/v1/audit` lists the entries for readers.

use std::cell::RefCell;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{ApiError, current_request_id};
use super::extract::ApiQuery;
use super::roles::{Need, Reader};
use super::{AppState, Paging, paging};
use crate::store::audit;

tokio::task_local! {
    /// Who the request turned out to be from, once authentication (or a sign-in) said so.
    static ACTOR: RefCell<Option<String>>;
}

/// Names the actor of the request being served.
pub fn set_actor(name: &str) {
    let _ = ACTOR.try_with(|a| *a.borrow_mut() = Some(name.to_owned()));
}

/// Runs the request and appends it to the audit log when it changed something or was refused.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let (actor, resp) = ACTOR
        .scope(RefCell::new(None), async move {
            let resp = next.run(req).await;
            (ACTOR.with(|a| a.borrow().clone()), resp)
        })
        .await;
    let status = resp.status();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes || status.is_client_error() || status.is_server_error() {
        let outcome = if status.is_server_error() {
            "failed"
        } else if status.is_client_error() {
            "refused"
        } else {
            "success"
        };
        let action = match &route {
            Some(r) => format!("{method} {r}"),
            None => format!("{method} (no route)"),
        };
        state
            .auditor
            .event(
                actor.as_deref().unwrap_or("(anonymous)"),
                &action,
                outcome,
                &current_request_id(),
                json!({"path": path, "status": status.as_u16()}),
            )
            .await;
    }
    resp
}

pub async fn list(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
    ApiQuery(p): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (skip, limit) = paging(p.skip, p.limit)?;
    let (total, entries) = state
        .store
        .call(move |c| audit::list(c, skip, limit))
        .await?;
    Ok(Json(json!({
        "skip": skip, "limit": limit, "total": total, "resources": entries,
    })))
}
