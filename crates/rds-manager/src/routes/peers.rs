//! Provider/consumer peers: links, sync, secrets rotation, and the bridge's audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rds_proto::ErrorBody;

use crate::extract::{ApiQuery, JsonBody};
use crate::services::{peers, vms};
use crate::views::{PatchPeerLinkRequest, PeerCallQuery, PeerCallView, PeerLinkView, PeerSyncReport, SecretsRequest};
use crate::{ApiError, AppState};

/// A consumer's peer links and their sync status.
#[utoipa::path(get, path = "/v1/vms/{id}/peers", tag = "peers",
    responses((status = 200, body = Vec<PeerLinkView>), (status = 404, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Vec<PeerLinkView>>, ApiError> {
    vms::find(&s, &id).await?;
    Ok(Json(peers::link_views(&s, &id).await?))
}

/// Rewrite the consumer's `/workspace/peers` from its providers' manifests.
#[utoipa::path(post, path = "/v1/vms/{id}/peers/sync", tag = "peers",
    responses((status = 200, body = PeerSyncReport), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn sync(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<PeerSyncReport>, ApiError> {
    Ok(Json(peers::sync(&s, &id).await?))
}

/// Create or change the link `alias` (then re-sync a running consumer).
#[utoipa::path(patch, path = "/v1/vms/{id}/peers/{alias}", tag = "peers", request_body = PatchPeerLinkRequest,
    params(("id" = String, Path, description = "The consumer VM."),
        ("alias" = String, Path, description = "The link's identifier (not `_rds` or `__init__`).",
            pattern = "^[A-Za-z_][A-Za-z0-9_]*$", max_length = 64)),
    responses((status = 200, body = PeerSyncReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_link(
    State(s): State<AppState>,
    Path((id, alias)): Path<(String, String)>,
    JsonBody(req): JsonBody<PatchPeerLinkRequest>,
) -> Result<Json<PeerSyncReport>, ApiError> {
    Ok(Json(peers::set_link(&s, &id, &alias, req).await?))
}

/// Remove the link `alias`.
#[utoipa::path(delete, path = "/v1/vms/{id}/peers/{alias}", tag = "peers",
    params(("id" = String, Path, description = "The consumer VM."),
        ("alias" = String, Path, description = "The link's identifier.", pattern = "^[A-Za-z_][A-Za-z0-9_]*$", max_length = 64)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_link(
    State(s): State<AppState>,
    Path((id, alias)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    peers::delete_link(&s, &id, &alias).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a provider's `secretEnv` (values are never returned).
#[utoipa::path(patch, path = "/v1/vms/{id}/secrets", tag = "peers", request_body = SecretsRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_secrets(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SecretsRequest>,
) -> Result<StatusCode, ApiError> {
    peers::set_secrets(&s, &id, &req.secret_env).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Audited bridge calls, newest first (argument values are never recorded).
#[utoipa::path(get, path = "/v1/peer-calls", tag = "peers", params(PeerCallQuery),
    responses((status = 200, body = Vec<PeerCallView>), (status = 400, body = ErrorBody)))]
pub async fn calls(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PeerCallQuery>,
) -> Result<Json<Vec<PeerCallView>>, ApiError> {
    Ok(Json(peers::list_calls(&s, q.vm_id.as_deref(), q.limit).await?))
}
