//! HTTP plumbing shared by the agent's routes: the body type, typed API errors, JSON and
//! streaming responses, query strings and capped request bodies.

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use rds_proto::ErrorBody;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use crate::exec::ExecError;
use crate::files::FileError;

/// Body of every agent response.
pub type Body = BoxBody<Bytes, io::Error>;

/// Largest JSON request body accepted.
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// An error answered as `{"error":{"code","message"}}` with a matching status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// 400 with `message` (which names the field at fault).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }

    /// 404 for a route that does not exist.
    pub fn no_route(path: &str) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no route {path}") }
    }

    /// 405 for a known route called with the wrong method.
    pub fn wrong_method(method: &http::Method, path: &str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: format!("{method} is not allowed on {path}"),
        }
    }

    /// Renders the error response.
    pub fn into_response(self) -> Response<Body> {
        json_response(self.status, &ErrorBody::new(self.code, self.message))
    }
}

impl From<crate::identity::IdentityError> for ApiError {
    fn from(e: crate::identity::IdentityError) -> Self {
        use crate::identity::IdentityError;
        match e {
            IdentityError::Invalid(message) => ApiError::bad_request(message),
            IdentityError::Apply { .. } => {
                ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "identity_failed", message: e.to_string() }
            }
        }
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        let (status, code) = match &e {
            ExecError::Invalid(_) | ExecError::MissingCwd(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ExecError::Conflict(_) | ExecError::Abandoned(_) | ExecError::Refused(_) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ExecError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ExecError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            // The VM's own disk or /tmp is full: the caller's to free, not an agent failure.
            ExecError::Io { source, .. } if is_full(source) => (StatusCode::CONFLICT, "conflict"),
            ExecError::Spawn { .. } | ExecError::Io { .. } | ExecError::Lost => {
                tracing::error!("exec failed: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError { status, code, message: e.to_string() }
    }
}

/// No space (or quota) left on a file system of the VM.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        let (status, code) = match &e {
            FileError::Rejected(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            FileError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            FileError::Io(source) if is_full(source) => (StatusCode::CONFLICT, "conflict"),
            FileError::Io(_) => {
                tracing::error!("file transfer failed: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError { status, code, message: e.to_string() }
    }
}

/// A JSON response.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("response types always serialise");
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A chunked body fed by a channel; an `Err` item aborts the response (the client sees a broken
/// transfer rather than a silently truncated one).
pub fn channel_body(receiver: mpsc::Receiver<io::Result<Bytes>>) -> Body {
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        Some((item.map(Frame::data), receiver))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A streaming response of `content_type`, fed by `receiver`.
pub fn stream_response(content_type: &'static str, receiver: mpsc::Receiver<io::Result<Bytes>>) -> Response<Body> {
    let mut response = Response::new(channel_body(receiver));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes into `T` (400 naming the field, 413 if too big).
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "payload_too_large",
        message: format!("request body exceeds {MAX_JSON_BODY} bytes"),
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JSON_BODY as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_JSON_BODY).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            too_large()
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    rds_proto::parse_json(&body.to_bytes()).map_err(ApiError::bad_request)
}

/// The query string's parameters (later duplicates win).
pub fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

/// A required query parameter.
pub fn required<'a>(query: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    query
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("query parameter `{name}` is required")))
}

/// An optional boolean query parameter (`true` / `false`).
pub fn flag(query: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => {
            Err(ApiError::bad_request(format!("query parameter `{name}` must be `true` or `false`, got {other:?}")))
        }
    }
}
