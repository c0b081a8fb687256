//! The API's error type: every failure becomes `{"error":{"code","message"}}` with the right status.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rds_proto::ErrorBody;

static EXPOSE_INTERNAL: AtomicBool = AtomicBool::new(false);

/// Makes 500 responses carry the real message (`EXPOSE_INTERNAL_ERRORS=true`).
pub fn expose_internal_errors(on: bool) {
    EXPOSE_INTERNAL.store(on, Ordering::Relaxed);
}

/// An error answered to an API caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong `X-API-Key`.
    #[error("missing or invalid X-API-Key")]
    Unauthorized,
    /// 403: the caller may not do this (e.g. a VM calling a peer it is not linked to).
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the VM is in the wrong state for this operation.
    #[error("{0}")]
    Conflict(String),
    /// 413: body over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// 429: a quota (VM count, cpu, memory) is exhausted.
    #[error("{0}")]
    Quota(String),
    /// 429: the API key's request rate is exhausted.
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after_secs: u64,
    },
    /// 501: the runtime cannot do this.
    #[error("{0}")]
    NotImplemented(String),
    /// 502: the guest agent misbehaved (bad response, dropped connection).
    #[error("{0}")]
    Agent(String),
    /// 504: the guest agent did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// 500: a bug or host failure; the message is logged, not returned (unless exposed).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Wraps any error as an internal one.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    /// The HTTP status and stable error code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            ApiError::Agent(_) => (StatusCode::BAD_GATEWAY, "agent_error"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "agent_timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<rds_store::StoreError> for ApiError {
    fn from(e: rds_store::StoreError) -> Self {
        use rds_store::StoreError;
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::QuotaExceeded(_) => ApiError::Quota(e.to_string()),
            StoreError::Conflict { .. } | StoreError::InUse { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(real) => {
                let request_id = uuid::Uuid::new_v4();
                tracing::error!(%request_id, error = %real, "internal error");
                if EXPOSE_INTERNAL.load(Ordering::Relaxed) {
                    format!("{real} (request id {request_id})")
                } else {
                    format!("internal error (request id {request_id})")
                }
            }
            other => other.to_string(),
        };
        let mut resp = (status, axum::Json(ErrorBody::new(code, message))).into_response();
        if let ApiError::RateLimited { retry_after_secs } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}
