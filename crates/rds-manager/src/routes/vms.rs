//! `/v1/vms`: create, list, get, start, stop, delete, logs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use crate::extract::{ApiQuery, JsonBody};
use crate::services::{logs, vms};
use crate::views::{CreateVmRequest, ExecLogPage, LimitQuery, LogView, LogsQuery, VmView};
use crate::{ApiError, AppState};
use rds_proto::ErrorBody;

/// Create a VM and boot it; returns when it is RUNNING and ready to exec.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVmRequest,
    responses((status = 201, body = VmView), (status = 400, body = ErrorBody),
        (status = 404, description = "the image or snapshot it names does not exist", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 501, description = "egress rules asked of a manager whose VM networking is off (`RDS_NETWORK=off`)", body = ErrorBody),
        (status = 502, description = "`vm_failed`: the VM did not boot or its VMM refused it; the message says why", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateVmRequest>,
) -> Result<(StatusCode, Json<VmView>), ApiError> {
    Ok((StatusCode::CREATED, Json(vms::create(&s, req).await?)))
}

/// List VMs (deleted ones are hidden).
#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = Vec<VmView>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<VmView>>, ApiError> {
    Ok(Json(vms::list(&s).await?))
}

/// Get one VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms",
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody)))]
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<VmView>, ApiError> {
    let vm = vms::find(&s, &id).await?;
    Ok(Json(vms::view(&s, &vm).await))
}

/// Delete a VM and every trace of it. It shows DELETING until done; a manager restart finishes
/// an interrupted delete, and a failed one stays DELETING (with the reason) for a retry.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn delete(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    vms::delete(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a STOPPED or ERROR VM (its /workspace is kept).
#[utoipa::path(post, path = "/v1/vms/{id}/start", tag = "vms",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, description = "`vm_failed`: the VM did not boot or its VMM refused it; the message says why", body = ErrorBody)))]
pub async fn start(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    vms::start(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop a RUNNING VM.
#[utoipa::path(post, path = "/v1/vms/{id}/stop", tag = "vms",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    vms::stop(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tail of one of the VM's logs (the console by default); a log the runtime does not keep, or
/// that is not written yet, answers no lines.
#[utoipa::path(get, path = "/v1/vms/{id}/logs", tag = "vms", params(LogsQuery),
    responses((status = 200, body = LogView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<LogView>, ApiError> {
    Ok(Json(logs::tail(&s, &id, q.kind, q.tail).await?))
}

/// Recent exec/run calls of the VM, newest first.
#[utoipa::path(get, path = "/v1/vms/{id}/exec-logs", tag = "exec", params(LimitQuery),
    responses((status = 200, body = ExecLogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn exec_logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<ExecLogPage>, ApiError> {
    Ok(Json(logs::exec_logs(&s, &id, q.limit).await?))
}
