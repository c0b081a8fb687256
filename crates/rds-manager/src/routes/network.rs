//! `/v1/vms/{id}/network`: the VM's egress policy, changed at run time.

use axum::extract::{Path, State};
use axum::Json;

use crate::extract::JsonBody;
use crate::services::network;
use crate::views::{PatchNetworkRequest, VmView};
use crate::{ApiError, AppState};
use rds_proto::ErrorBody;

/// Change a VM's egress policy (omitted fields keep their value). Applied atomically while the
/// VM runs; stored for a stopped VM and applied when it starts.
#[utoipa::path(patch, path = "/v1/vms/{id}/network", tag = "vms", request_body = PatchNetworkRequest,
    responses((status = 200, body = VmView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn patch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PatchNetworkRequest>,
) -> Result<Json<VmView>, ApiError> {
    Ok(Json(network::patch(&s, &id, req).await?))
}
