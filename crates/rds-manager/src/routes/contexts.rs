//! `/v1/vms/{id}/contexts`: code contexts, interpreters that keep state from one run to the next
//! (run with `contextId` on `run-ts`, `run-js` or `run-python`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rds_proto::{ContextInfo, ContextRequest, ErrorBody};

use crate::extract::ExecBody;
use crate::services::contexts;
use crate::{ApiError, AppState};

/// Start a code context: an interpreter (`typescript` under Deno, `javascript` under Node,
/// `python`) whose top-level variables, imports and functions stay defined for later runs that
/// name its `contextId`. A provider's secrets are in its environment.
#[utoipa::path(post, path = "/v1/vms/{id}/contexts", tag = "exec", request_body = ContextRequest,
    responses((status = 201, body = ContextInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 501, description = "the guest lacks the language's interpreter", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ExecBody(req): ExecBody<ContextRequest>,
) -> Result<(StatusCode, Json<ContextInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(contexts::create(&s, &id, req).await?)))
}

/// List a VM's code contexts.
#[utoipa::path(get, path = "/v1/vms/{id}/contexts", tag = "exec",
    responses((status = 200, body = Vec<ContextInfo>), (status = 409, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Vec<ContextInfo>>, ApiError> {
    Ok(Json(contexts::list(&s, &id).await?))
}

/// Get one code context.
#[utoipa::path(get, path = "/v1/vms/{id}/contexts/{contextId}", tag = "exec",
    responses((status = 200, body = ContextInfo), (status = 409, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path((id, context_id)): Path<(String, String)>,
) -> Result<Json<ContextInfo>, ApiError> {
    Ok(Json(contexts::get(&s, &id, &context_id).await?))
}

/// Stop a code context (a run in progress ends, reporting `ContextDeleted`).
#[utoipa::path(delete, path = "/v1/vms/{id}/contexts/{contextId}", tag = "exec",
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Path((id, context_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    contexts::delete(&s, &id, &context_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restart a code context's interpreter: everything its runs defined is dropped.
#[utoipa::path(post, path = "/v1/vms/{id}/contexts/{contextId}/restart", tag = "exec",
    responses((status = 200, body = ContextInfo), (status = 409, body = ErrorBody)))]
pub async fn restart(
    State(s): State<AppState>,
    Path((id, context_id)): Path<(String, String)>,
) -> Result<Json<ContextInfo>, ApiError> {
    Ok(Json(contexts::restart(&s, &id, &context_id).await?))
}
