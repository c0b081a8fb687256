//! Extractors that turn bad input into `ApiError`s naming the field, instead of axum's plain text.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// A JSON body parsed with [`rds_proto::parse_json`], limited to `MAX_JSON_BODY_BYTES` (64 KiB by
/// default, the original's limit for these routes).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_json(req, state.config.max_json_body_bytes, "MAX_JSON_BODY_BYTES").await.map(JsonBody)
    }
}

/// An optional JSON body (64 KiB, as [`JsonBody`]): no body at all (or `null`) is
/// `T::default()`, for routes the original called without one.
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_bytes(req, state.config.max_json_body_bytes, "MAX_JSON_BODY_BYTES").await?;
        // No body, or JSON `null` (the body is optional), means the defaults.
        if bytes.trim_ascii().is_empty() || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJsonBody(T::default()));
        }
        rds_proto::parse_json(&bytes).map(OptionalJsonBody).map_err(ApiError::BadRequest)
    }
}

/// The JSON body of exec and the run routes, which carry code: limited to `MAX_EXEC_BODY_BYTES`
/// (1 MiB by default, as the original).
pub struct ExecBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ExecBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_json(req, state.config.max_exec_body_bytes, "MAX_EXEC_BODY_BYTES").await.map(ExecBody)
    }
}

/// Reads at most `limit` bytes of JSON (413 naming `setting` past it) and parses them.
async fn read_json<T: DeserializeOwned>(req: Request, limit: usize, setting: &str) -> Result<T, ApiError> {
    let bytes = read_bytes(req, limit, setting).await?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("request body is empty; expected a JSON object".into()));
    }
    rds_proto::parse_json(&bytes).map_err(ApiError::BadRequest)
}

/// Reads at most `limit` bytes of a body (413 naming `setting` past it).
async fn read_bytes(req: Request, limit: usize, setting: &str) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("JSON body exceeds {setting}={limit}"));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        if is_length_limit(&e) {
            too_large()
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Query parameters; a bad one is a 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                ApiError::BadRequest(format!("invalid query: {inner}"))
            } else {
                ApiError::BadRequest(format!("invalid query parameter `{path}`: {inner}"))
            }
        })
    }
}

/// The raw request body, for streaming uploads.
pub struct RawBody(pub Body, pub Option<u64>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        Ok(RawBody(req.into_body(), declared))
    }
}
