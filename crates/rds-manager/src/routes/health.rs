//! `GET /v1/health` (public).

use axum::extract::State;
use axum::Json;

use crate::views::HealthView;
use crate::AppState;

/// Manager status, runtime and what code it can run. No API key needed.
#[utoipa::path(get, path = "/v1/health", tag = "health", security(()), responses((status = 200, body = HealthView)))]
pub async fn health(State(s): State<AppState>) -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        runtime: s.runtime.kind().as_str().into(),
        runtime_reason: s.runtime_reason.clone(),
        isolation: s.runtime.isolation().as_str().into(),
        capabilities: s.capabilities.clone(),
        installation_id: s.installation.to_string(),
    })
}
