//! `/v1/vms/{id}/exec` and `/run-ts|run-js|run-python`.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rds_proto::{ErrorBody, ExecEvent, ExecRequest, ExecResult, Language, RunRequest, RunResult};

use crate::extract::ExecBody;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::rate_limit::Route;
use crate::services::exec::{self as service, NDJSON, SSE};
use crate::services::vms::find_running;
use crate::{ApiError, AppState};

/// Run a shell command as uid 1000 in /workspace. With `Accept: application/x-ndjson` the output
/// streams as `ExecEvent` lines; with `Accept: text/event-stream` as server-sent events named
/// `stdout`, `stderr` and `exit` whose data is the `ExecEvent`.
#[utoipa::path(post, path = "/v1/vms/{id}/exec", tag = "exec", request_body = ExecRequest,
    responses((status = 200, description = "The result; or, by `Accept`, the events as NDJSON lines or server-sent events",
            content((ExecResult = "application/json"), (ExecEvent = "application/x-ndjson"), (ExecEvent = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ExecBody(req): ExecBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if accept.contains(NDJSON) {
        service::exec_stream(&s, &id, req).await
    } else if accept.contains(SSE) {
        service::exec_sse(&s, &id, req).await
    } else {
        Ok(Json(service::exec(&s, &id, req).await?).into_response())
    }
}

/// A shell command fed stdin while it runs, over a WebSocket. The first message is the exec
/// request (JSON text, without `stdin` and `execId`); then binary messages are stdin, and text
/// messages `{"type":"eof"}` closes it and `{"type":"signal","signal":"INT"}` signals the
/// command. The server sends the `ExecEvent`s as JSON text (`stdout`, `stderr`, last `exit`) and
/// closes with 1000; a refused request gets `{"type":"error","status","message"}` and 1008. A
/// client that leaves first ends the command. Authenticated by `X-API-Key` (counted as an exec),
/// or by `token` from `POST /v1/vms/{id}/pty-tokens`.
#[utoipa::path(get, path = "/v1/vms/{id}/exec/ws", tag = "exec", params(SocketQuery),
    responses((status = 101, description = "the WebSocket"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn exec_socket(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SocketQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = crate::routes::ptys::authenticate_socket(&s, &id, Some(Route::Exec), &headers, q.token.as_deref(), ws)?;
    find_running(&s, &id).await?;
    Ok(ws.on_upgrade(move |socket| crate::services::exec_socket::serve(s, id, socket)))
}

/// What `GET /v1/vms/{id}/exec/ws` takes in its query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SocketQuery {
    /// A token from `POST /v1/vms/{id}/pty-tokens`, for clients that cannot send `X-API-Key`.
    pub token: Option<String>,
}

/// Run TypeScript with Deno; `result` is any JSON value.
#[utoipa::path(post, path = "/v1/vms/{id}/run-ts", tag = "exec", request_body = RunRequest,
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn run_ts(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ExecBody(req): ExecBody<RunRequest>,
) -> Result<Json<RunResult>, ApiError> {
    Ok(Json(service::run(&s, &id, Language::Ts, req).await?))
}

/// Run JavaScript with Node.js; `result` is any JSON value.
#[utoipa::path(post, path = "/v1/vms/{id}/run-js", tag = "exec", request_body = RunRequest,
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn run_js(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ExecBody(req): ExecBody<RunRequest>,
) -> Result<Json<RunResult>, ApiError> {
    Ok(Json(service::run(&s, &id, Language::Js, req).await?))
}

/// Run Python 3; `result` is any JSON value.
#[utoipa::path(post, path = "/v1/vms/{id}/run-python", tag = "exec", request_body = RunRequest,
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn run_python(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ExecBody(req): ExecBody<RunRequest>,
) -> Result<Json<RunResult>, ApiError> {
    Ok(Json(service::run(&s, &id, Language::Python, req).await?))
}
