//! The audit trail at the HTTP edge: every request that changes something (any method but
//! GET/HEAD/OPTIONS) and every refused or failed request is appended to the audit log, with
//! who made it (the token's user, or the username of a sign-in), the route, the status and the
//! request id; never a body. `GET /api/v1/audit` lists the entries for readers.

use std::cell::RefCell;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{ApiError, current_request_id};
use super::extract::ApiQuery;
use super::roles::{Need, Reader};
use super::{AppState, Paging, paging};
use crate::store::audit::{self, Event};

/// What the middleware knows of the request being served.
#[derive(Default)]
struct Scope {
    /// Who the request turned out to be from, once authentication (or a sign-in) said so.
    actor: Option<String>,
    /// `METHOD route`, as the entry names it.
    action: String,
    path: String,
    /// The handler committed the request's entry itself, with what it did.
    recorded: bool,
}

tokio::task_local! {
    static SCOPE: RefCell<Scope>;
}

/// Names the actor of the request being served.
pub fn set_actor(name: &str) {
    let _ = SCOPE.try_with(|s| s.borrow_mut().actor = Some(name.to_owned()));
}

/// The entry this request gets if it ends with `status`, for a handler that commits it in
/// the same transaction as what it did (an upload's record): then a crash can never keep the
/// one without the other, and the store is written once. The handler calls [`recorded`]
/// once it is committed; otherwise the middleware appends the request's entry as usual.
pub fn entry_for(status: StatusCode) -> Option<Event> {
    SCOPE
        .try_with(|s| {
            let s = s.borrow();
            entry(&s, status)
        })
        .ok()
}

/// The entry [`entry_for`] gave was committed.
pub fn recorded() {
    let _ = SCOPE.try_with(|s| s.borrow_mut().recorded = true);
}

fn entry(s: &Scope, status: StatusCode) -> Event {
    let outcome = if status.is_server_error() {
        "failed"
    } else if status.is_client_error() {
        "refused"
    } else {
        "success"
    };
    Event {
        actor: s.actor.as_deref().unwrap_or("(anonymous)").to_owned(),
        action: s.action.clone(),
        outcome: outcome.to_owned(),
        request_id: current_request_id(),
        detail: json!({"path": s.path, "status": status.as_u16()}),
    }
}

/// Runs the request and appends it to the audit log when it changed something or was refused.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let action = match req.extensions().get::<MatchedPath>() {
        Some(r) => format!("{method} {}", r.as_str()),
        None => format!("{method} (no route)"),
    };
    let scope = Scope {
        actor: None,
        action,
        path: req.uri().path().to_owned(),
        recorded: false,
    };
    let (scope, resp) = SCOPE
        .scope(RefCell::new(scope), async move {
            let resp = next.run(req).await;
            (SCOPE.with(RefCell::take), resp)
        })
        .await;
    let status = resp.status();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !scope.recorded && (changes || status.is_client_error() || status.is_server_error()) {
        state.auditor.record(entry(&scope, status)).await;
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
