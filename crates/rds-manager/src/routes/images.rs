//! `/v1/images`: guest images (kernel, initramfs, ext4 rootfs) that VMs boot from.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rds_proto::ErrorBody;
use rds_store::ImagePart;

use crate::extract::{JsonBody, RawBody};
use crate::services::images;
use crate::views::{CreateImageRequest, ImageView};
use crate::{ApiError, AppState};

/// List images (oldest first).
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<ImageView>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<ImageView>>, ApiError> {
    Ok(Json(images::list(&s).await?))
}

/// Create an empty image; upload its files next.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = CreateImageRequest,
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateImageRequest>,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    Ok((StatusCode::CREATED, Json(images::create(&s, req).await?)))
}

/// Get one image, with the builder manifest when it has one.
#[utoipa::path(get, path = "/v1/images/{id}", tag = "images",
    responses((status = 200, body = ImageView), (status = 404, body = ErrorBody)))]
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<ImageView>, ApiError> {
    Ok(Json(images::get(&s, &id).await?))
}

/// Delete an image no VM uses (409 otherwise); removes its files and clears the default.
#[utoipa::path(delete, path = "/v1/images/{id}", tag = "images",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    images::delete(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make this image the one VMs get when created without `imageId` (it must have a rootfs).
/// Answers 204 with no body, as the original API does; `GET /v1/images/{id}` shows `isDefault`.
#[utoipa::path(post, path = "/v1/images/{id}/set-default", tag = "images",
    responses((status = 204, description = "It is the default."), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_default(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    images::set_default(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Image uploads answer 204 with no body, as the original API does; `GET /v1/images/{id}` shows
/// the result.
async fn put_part(s: AppState, id: String, part: ImagePart, body: RawBody) -> Result<StatusCode, ApiError> {
    let RawBody(body, len) = body;
    images::upload_part(&s, &id, part, body, len).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Upload the kernel: an ELF `vmlinux` (Firecracker) or a bzImage `vmlinuz` (QEMU).
#[utoipa::path(put, path = "/v1/images/{id}/kernel", tag = "images",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Stored."), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_kernel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<StatusCode, ApiError> {
    put_part(s, id, ImagePart::Kernel, body).await
}

/// Upload the initramfs: a newc cpio, optionally gzip/zstd/xz/lz4-compressed.
#[utoipa::path(put, path = "/v1/images/{id}/initrd", tag = "images",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Stored."), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_initrd(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<StatusCode, ApiError> {
    put_part(s, id, ImagePart::Initrd, body).await
}

/// Upload the root filesystem: an ext4 image.
#[utoipa::path(put, path = "/v1/images/{id}/rootfs", tag = "images",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Stored."), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_rootfs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<StatusCode, ApiError> {
    put_part(s, id, ImagePart::Rootfs, body).await
}

/// Upload `rds image build`'s output directory as tar.gz (`vmlinuz`, `vmlinux`, `initrd.img`,
/// `rootfs.ext4`, `manifest.json`; any directory prefix). All files are installed, or none.
/// Answers 204 with no body, as the original API does.
#[utoipa::path(put, path = "/v1/images/{id}/bundle", tag = "images",
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses((status = 204, description = "Stored."), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_bundle(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawBody(body, len): RawBody,
) -> Result<StatusCode, ApiError> {
    images::upload_bundle(&s, &id, body, len).await?;
    Ok(StatusCode::NO_CONTENT)
}
