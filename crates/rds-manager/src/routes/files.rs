//! `/v1/vms/{id}/files/upload|download`: tar.gz streams.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use rds_proto::ErrorBody;

use crate::extract::{ApiQuery, RawBody};
use crate::services::files;
use crate::views::{DownloadQuery, UploadQuery};
use crate::{ApiError, AppState};

/// Extract a tar.gz body into `dest` under /workspace (links and paths escaping it are refused).
/// Answers 204 with no body, as the original API does (its clients assert it).
#[utoipa::path(post, path = "/v1/vms/{id}/files/upload", tag = "files", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses((status = 204, description = "Extracted."), (status = 400, body = ErrorBody),
        (status = 409, description = "the VM is not running", body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    RawBody(body, len): RawBody,
) -> Result<StatusCode, ApiError> {
    files::upload(&s, &id, q.dest, body, len).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a file or directory under /workspace as tar.gz.
#[utoipa::path(get, path = "/v1/vms/{id}/files/download", tag = "files", params(DownloadQuery),
    responses((status = 200, content_type = "application/gzip", body = Vec<u8>), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn download(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    files::download(&s, &id, q.path).await
}
