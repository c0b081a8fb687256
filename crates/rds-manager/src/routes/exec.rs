//! `/v1/vms/{id}/exec` and `/run-ts|run-js|run-python`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rds_proto::{ErrorBody, ExecEvent, ExecRequest, ExecResult, Language, RunRequest, RunResult};

use crate::extract::ExecBody;
use crate::services::exec::{self as service, NDJSON};
use crate::{ApiError, AppState};

/// Run a shell command as uid 1000 in /workspace. With `Accept: application/x-ndjson` the output
/// streams as `ExecEvent` lines.
#[utoipa::path(post, path = "/v1/vms/{id}/exec", tag = "exec", request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 200, content_type = "application/x-ndjson", body = ExecEvent),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ExecBody(req): ExecBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let wants_stream = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(NDJSON));
    if wants_stream {
        service::exec_stream(&s, &id, req).await
    } else {
        Ok(Json(service::exec(&s, &id, req).await?).into_response())
    }
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
