//! `/v1/snapshots` and `/v1/vms/{id}/snapshots`: take, list, read and delete snapshots.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use crate::extract::{ApiQuery, OptionalJsonBody};
use crate::services::snapshots;
use crate::views::{CreateSnapshotRequest, SnapshotView, SnapshotsQuery};
use crate::{ApiError, AppState};
use rds_proto::ErrorBody;

/// Snapshot a RUNNING VM: its disk, and its memory where the runtime can (see `includeMemory`).
/// The VM pauses while its memory is written and runs on afterwards.
#[utoipa::path(post, path = "/v1/vms/{id}/snapshots", tag = "snapshots", request_body(content = Option<CreateSnapshotRequest>),
    responses((status = 201, body = SnapshotView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 501, description = "the runtime takes no snapshots (or no memory snapshots), or ENABLE_SNAPSHOTS=false", body = ErrorBody),
        (status = 502, description = "`vm_failed`: the VM or its agent failed while the snapshot was written", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    Ok((StatusCode::CREATED, Json(snapshots::create(&s, &id, req).await?)))
}

/// List snapshots, oldest first: `scope=user` (default) those users took, `internal` the
/// manager's own, `all` both.
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", params(SnapshotsQuery),
    responses((status = 200, body = Vec<SnapshotView>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<SnapshotsQuery>,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    Ok(Json(snapshots::list(&s, q.scope).await?))
}

/// Get one snapshot.
#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "snapshots",
    responses((status = 200, body = SnapshotView), (status = 400, body = ErrorBody)))]
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<SnapshotView>, ApiError> {
    Ok(Json(snapshots::view(&snapshots::find(&s, &id).await?)))
}

/// Delete a snapshot and its files (VMs started from it keep their own copies).
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots",
    responses((status = 204), (status = 400, body = ErrorBody)))]
pub async fn delete(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    snapshots::delete(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
