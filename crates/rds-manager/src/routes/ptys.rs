//! `/v1/vms/{id}/pty`: interactive terminals over a WebSocket, their sessions and attach tokens.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use rds_proto::pty::PtyInfo;
use rds_proto::ErrorBody;

use crate::auth::API_KEY_HEADER;
use crate::rate_limit::Route;
use crate::services::ptys::{self, AttachQuery, PtyToken};
use crate::{ApiError, AppState};

/// A terminal in the VM as a WebSocket: a new login shell (or `cmd`) as the VM's user in
/// `/workspace`, or the session named by `session`. Binary messages carry terminal bytes both
/// ways; the client sends text messages `{"type":"resize","cols","rows"}` and
/// `{"type":"signal","signal":"INT"}`; the server's first message is
/// `{"type":"session","sessionId"}` and its last `{"type":"exit","exitCode","signal"?}` before it
/// closes with 1000. Authenticated by `X-API-Key`, or by `token` from `POST
/// /v1/vms/{id}/pty-tokens`.
#[utoipa::path(get, path = "/v1/vms/{id}/pty", tag = "terminals", params(AttachQuery),
    responses((status = 101, description = "the WebSocket"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = authenticate_socket(&s, &id, None, &headers, q.token.as_deref(), ws)?;
    let (session_id, stream) = ptys::open_and_attach(&s, &id, &q).await?;
    Ok(ws.on_upgrade(move |socket| ptys::relay(socket, session_id, stream)))
}

/// Checks the caller of a WebSocket route of VM `vm_id` (its `X-API-Key`, counted against the
/// key's budgets as any protected route, `route`'s own included, or a single-use `token`) and
/// that it asked for a socket.
pub fn authenticate_socket(
    s: &AppState,
    vm_id: &str,
    route: Option<Route>,
    headers: &HeaderMap,
    token: Option<&str>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    match headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).and_then(|k| s.keys.verify(k)) {
        Some(key) => drop(s.limiter.check(&key, route, None)?),
        None if token.is_some_and(|t| s.pty_tokens.redeem(t, vm_id)) => {}
        None => return Err(ApiError::Unauthorized),
    }
    ws.map_err(|e| ApiError::BadRequest(format!("this route is a WebSocket; connect with `Upgrade: websocket` ({e})")))
}

/// A single-use token that authenticates one `GET /v1/vms/{id}/pty` or `/exec/ws` within 60 s (for browsers,
/// which cannot set headers on a WebSocket; the API key never goes into a URL).
#[utoipa::path(post, path = "/v1/vms/{id}/pty-tokens", tag = "terminals",
    responses((status = 201, body = PtyToken), (status = 409, body = ErrorBody)))]
pub async fn token(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<PtyToken>), ApiError> {
    Ok((StatusCode::CREATED, Json(ptys::issue_token(&s, &id).await?)))
}

/// The VM's terminal sessions (running, or ended with nobody told yet).
#[utoipa::path(get, path = "/v1/vms/{id}/pty-sessions", tag = "terminals",
    responses((status = 200, body = Vec<PtyInfo>), (status = 409, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Vec<PtyInfo>>, ApiError> {
    Ok(Json(ptys::list(&s, &id).await?))
}

/// End a terminal session and everything it started.
#[utoipa::path(delete, path = "/v1/vms/{id}/pty-sessions/{sessionId}", tag = "terminals",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn kill(
    State(s): State<AppState>,
    Path((id, session_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ptys::kill(&s, &id, &session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
