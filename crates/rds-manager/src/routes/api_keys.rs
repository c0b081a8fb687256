//! `/v1/api-keys`: keys managed through the API (created shown once, stored hashed, listed,
//! revoked), beside `API_KEY` from the environment.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rds_proto::ErrorBody;

use crate::extract::JsonBody;
use crate::services::api_keys::{self, ApiKeyView, CreateApiKeyRequest, CreatedApiKey};
use crate::{ApiError, AppState};

/// Create an API key; the answer is the only time the key itself is shown.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    Ok((StatusCode::CREATED, Json(api_keys::create(&s, req).await?)))
}

/// The stored API keys, revoked and expired ones included, newest first (never their hashes).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", responses((status = 200, body = Vec<ApiKeyView>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    Ok(Json(api_keys::list(&s).await?))
}

/// Revoke an API key: refused from the next request on.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    api_keys::revoke(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
