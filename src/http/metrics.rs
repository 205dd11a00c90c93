//! `GET /metrics`: Prometheus text (OpenMetrics) for `reader`s, and the same without a token
//! on the loopback-only `server.metrics_listen`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::error::ApiError;
use super::roles::{Need, Reader};
use crate::metrics::{self, TokenLabels};
use crate::store::attempts::{self, state};

pub async fn render(
    State(state): State<AppState>,
    Need(_caller, _): Need<Reader>,
) -> Result<impl IntoResponse, ApiError> {
    scrape(&state).await
}

/// The router of `server.metrics_listen`: `/metrics` and nothing else.
pub fn loopback_app(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(s): State<AppState>| async move { scrape(&s).await }),
        )
        .fallback(|| async { ApiError::not_found("only /metrics is served here") })
        .with_state(state)
}

async fn scrape(state: &AppState) -> Result<impl IntoResponse + use<>, ApiError> {
    let m = metrics::get();
    // What is read at scrape time rather than counted as it happens.
    for t in state.tokens.all() {
        let labels = TokenLabels {
            token: t.name.clone(),
        };
        m.sessions_in_use
            .get_or_create(&labels)
            .set(t.sessions_in_use() as i64);
        m.token_ready
            .get_or_create(&labels)
            .set(i64::from(t.failure().is_none()));
    }
    let backlog = state
        .store
        .call(|c| attempts::in_states(c, &[state::CLEANUP_PENDING]).map(|a| a.len()))
        .await
        .map_err(crate::error::DomainError::from)?;
    m.cleanup_backlog.set(backlog as i64);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    ))
}
