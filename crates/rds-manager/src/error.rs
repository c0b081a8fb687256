//! The API's error type: every failure becomes `{"error":{"code","message"}}` with the right status.
//!
//! The status and code come from the variant, here and nowhere else ([`ApiError::status_and_code`]).
//! Errors that wrap a lower failure keep it as their `source()`, so the whole cause chain reaches
//! the log. `into_response` neither logs nor reads configuration: it leaves an [`ErrorDetails`]
//! in the response's extensions, and [`report_errors`] (a layer of the router) logs 5xx answers
//! with their chain and, when `EXPOSE_INTERNAL_ERRORS=true`, puts the chain in the message.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rds_proto::ErrorBody;

/// A lower-level failure kept as the cause of an [`ApiError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// 429: the request rate of the API key (or peer link, or one client address's share of a
    /// key's budget) is exhausted.
    #[error("rate limit exceeded ({}); retry in {retry_after_secs} s", budget_text(setting, *limit, *client_share))]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after_secs: u64,
        /// Requests per minute of the exhausted budget.
        limit: u32,
        /// The setting that chose it.
        setting: &'static str,
        /// Seconds until the whole budget is available again.
        reset_secs: u64,
        /// Set when it was one client address's share of the budget (its percentage).
        client_share: Option<u32>,
    },
    /// 501: the runtime (or the guest) cannot do this.
    #[error("{message}")]
    NotImplemented {
        /// What cannot be done, for the caller.
        message: String,
        /// The lower error that said so, if one did.
        #[source]
        source: Option<Cause>,
    },
    /// 502: the guest agent misbehaved (bad response, dropped connection).
    #[error("{message}")]
    Agent {
        /// What failed, for the caller.
        message: String,
        /// The transport or protocol error, if one is known.
        #[source]
        source: Option<Cause>,
    },
    /// 502: the VM did not come up, or its VMM refused it (the message carries the VMM's fault and
    /// the tails of the VM's console and VMM log: what the caller needs to fix an image).
    #[error("{message}")]
    VmFailed {
        /// What failed, for the caller.
        message: String,
        /// The runtime's error.
        #[source]
        source: Option<Cause>,
    },
    /// 504: the guest agent did not answer in time.
    #[error("{message}")]
    Timeout {
        /// What timed out, for the caller.
        message: String,
        /// The timeout error, if one is known.
        #[source]
        source: Option<Cause>,
    },
    /// 500: a bug or host failure. The caller sees only a request id (unless
    /// `EXPOSE_INTERNAL_ERRORS=true`); the log gets `context` and the whole cause chain.
    #[error("{context}")]
    Internal {
        /// What was being done, e.g. "starting VM 1234".
        context: String,
        /// What failed (`None` for an inconsistency found by the manager itself).
        #[source]
        source: Option<Cause>,
    },
}

impl ApiError {
    /// 500 for `context`, keeping `source` as the cause.
    pub fn internal(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        ApiError::Internal { context: context.into(), source: Some(source.into()) }
    }

    /// 500 for an inconsistency the manager found itself (no lower error to keep).
    pub fn internal_msg(context: impl Into<String>) -> Self {
        ApiError::Internal { context: context.into(), source: None }
    }

    /// 501 with a message and no lower error.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        ApiError::NotImplemented { message: message.into(), source: None }
    }

    /// 502 with a message, keeping `source` as the cause.
    pub fn agent(message: impl Into<String>, source: impl Into<Cause>) -> Self {
        ApiError::Agent { message: message.into(), source: Some(source.into()) }
    }

    /// 502 with a message only: for messages that were redacted (a provider's secrets must not
    /// reach the log through an unredacted cause).
    pub fn agent_msg(message: impl Into<String>) -> Self {
        ApiError::Agent { message: message.into(), source: None }
    }

    /// 504 with a message and no lower error.
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::Timeout { message: message.into(), source: None }
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
            ApiError::NotImplemented { .. } => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            ApiError::Agent { .. } => (StatusCode::BAD_GATEWAY, "agent_error"),
            ApiError::VmFailed { .. } => (StatusCode::BAD_GATEWAY, "vm_failed"),
            ApiError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "agent_timeout"),
            ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The message followed by every cause, `"starting VM x: cannot create …: permission denied"`.
    pub fn chain(&self) -> String {
        chain_of(self)
    }
}

/// `err` and its sources joined with `": "`. A source whose text its parent already shows (many
/// errors print their cause inside their own message) is not repeated.
pub fn chain_of(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = e.source();
    }
    out
}

/// `.context("starting VM x")?`: turns any error into a 500 that keeps it as its cause.
///
/// Only for failures of the host or of the manager itself: an error the caller caused needs its
/// own variant (400, 404, 409…), which this would hide behind a 500.
pub trait ResultExt<T> {
    /// A 500 saying what was being done, with the error as its source.
    fn context(self, context: impl Into<String>) -> Result<T, ApiError>;
    /// Like [`context`](Self::context), building the text only on failure.
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, ApiError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> ResultExt<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::internal(context, e))
    }

    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::internal(context(), e))
    }
}

impl From<rds_store::StoreError> for ApiError {
    fn from(e: rds_store::StoreError) -> Self {
        use rds_store::StoreError;
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::QuotaExceeded(_) => ApiError::Quota(e.to_string()),
            StoreError::Conflict { .. } | StoreError::InUse { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::internal("database operation failed", other),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal("host I/O failed", e)
    }
}

impl From<rds_runtime::RuntimeError> for ApiError {
    /// 501 for what the runtime cannot do, 400 for a spec it refuses, 502 for a VM that did not
    /// boot or that its VMM refused, 500 for the rest.
    fn from(e: rds_runtime::RuntimeError) -> Self {
        use rds_runtime::RuntimeError;
        match e {
            RuntimeError::Unsupported(_) => {
                ApiError::NotImplemented { message: e.to_string(), source: Some(Box::new(e)) }
            }
            RuntimeError::InvalidSpec(m) => ApiError::BadRequest(m),
            RuntimeError::Boot(_) | RuntimeError::Vmm(_) | RuntimeError::Agent(_) => {
                ApiError::VmFailed { message: e.to_string(), source: Some(Box::new(e)) }
            }
            other => ApiError::internal("the runtime failed", other),
        }
    }
}

impl From<crate::agent::AgentError> for ApiError {
    /// Agent 4xx keep their status (with the agent's message); a timeout is a 504, anything else
    /// a 502. Callers that know the VM stopped meanwhile answer 409 instead
    /// ([`crate::services::exec::agent_error`]).
    fn from(e: crate::agent::AgentError) -> Self {
        use crate::agent::AgentError;
        match e {
            AgentError::Status { status, ref message, .. } => match status.as_u16() {
                400 | 422 => ApiError::BadRequest(message.clone()),
                404 => ApiError::NotFound(message.clone()),
                409 => ApiError::Conflict(message.clone()),
                413 => ApiError::TooLarge(message.clone()),
                501 => ApiError::NotImplemented { message: message.clone(), source: Some(Box::new(e)) },
                _ => {
                    ApiError::Agent { message: format!("agent error ({status}): {message}"), source: Some(Box::new(e)) }
                }
            },
            AgentError::Timeout(_) => ApiError::Timeout { message: e.to_string(), source: Some(Box::new(e)) },
            other => ApiError::Agent { message: other.to_string(), source: Some(Box::new(other)) },
        }
    }
}

/// What an error response leaves for [`report_errors`] in its extensions.
#[derive(Debug, Clone)]
pub struct ErrorDetails {
    /// Names the failure in the log and in the 500 message.
    pub request_id: String,
    /// The stable error code of the body.
    pub code: &'static str,
    /// The error and every cause ([`ApiError::chain`]).
    pub chain: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let request_id = uuid::Uuid::new_v4().to_string();
        let message = match &self {
            ApiError::Internal { .. } => format!("internal error (request id {request_id})"),
            // A 501/502/504 always showed what failed below it (the agent, the runtime).
            other => other.chain(),
        };
        let mut resp = (status, axum::Json(ErrorBody::new(code, message))).into_response();
        if let ApiError::RateLimited { retry_after_secs, limit, reset_secs, .. } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            crate::rate_limit::Allowance { limit, remaining: 0, reset_secs }.write(resp.headers_mut());
        }
        resp.extensions_mut().insert(ErrorDetails { request_id, code, chain: self.chain() });
        resp
    }
}

/// Middleware: logs every 5xx answer with its whole cause chain (500 as an error, the others as
/// warnings), and with `expose` (the `EXPOSE_INTERNAL_ERRORS` setting) answers the chain instead
/// of the bare "internal error".
pub async fn report_errors(expose: bool, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let status = resp.status();
    if !status.is_server_error() {
        return resp;
    }
    let Some(details) = resp.extensions_mut().remove::<ErrorDetails>() else {
        return resp;
    };
    // A 500 is the manager's own failure; 501-504 are expected answers about a runtime or guest.
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(request_id = %details.request_id, %method, path, status = status.as_u16(), code = details.code,
            error = %details.chain, "request failed");
    } else {
        tracing::warn!(request_id = %details.request_id, %method, path, status = status.as_u16(), code = details.code,
            error = %details.chain, "request failed");
    }
    if expose {
        let message = format!("{} (request id {})", details.chain, details.request_id);
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = serde_json::to_vec(&ErrorBody::new(details.code, message)).unwrap_or_default();
        resp = Response::from_parts(parts, axum::body::Body::from(body));
    }
    resp
}

/// What a 429 says about the budget it hit.
fn budget_text(setting: &str, limit: u32, client_share: Option<u32>) -> String {
    match client_share {
        None => format!("{setting}={limit} per minute"),
        Some(pct) => format!(
            "this client address may use {pct}% of the key's {setting} budget, {limit} per minute \
             (RATE_LIMIT_CLIENT_SHARE_PERCENT={pct})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner failure")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("middle step failed")]
    struct Middle(#[source] Inner);

    #[test]
    fn internal_errors_keep_their_whole_cause_chain() {
        let err: Result<(), Middle> = Err(Middle(Inner));
        let err = err.context("starting VM x").unwrap_err();
        let mut seen = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = next {
            seen.push(e.to_string());
            next = e.source();
        }
        assert_eq!(seen, ["starting VM x", "middle step failed", "inner failure"]);
        assert!(std::error::Error::source(&err).unwrap().downcast_ref::<Middle>().is_some());
        assert_eq!(err.chain(), "starting VM x: middle step failed: inner failure");
        assert_eq!(err.status_and_code(), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }

    #[test]
    fn chain_does_not_repeat_a_cause_its_parent_already_prints() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let runtime = rds_runtime::RuntimeError::io("creating /x", io);
        let err = ApiError::from(runtime);
        assert_eq!(err.chain(), "the runtime failed: creating /x: denied");
    }

    #[test]
    fn internal_answers_hide_the_cause_and_carry_it_in_the_extensions() {
        let err = ApiError::internal("reading the log", std::io::Error::other("disk on fire"));
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let details = resp.extensions().get::<ErrorDetails>().expect("error details").clone();
        assert_eq!(details.chain, "reading the log: disk on fire");
        assert_eq!(details.code, "internal");
        assert!(!details.request_id.is_empty());
    }

    #[test]
    fn runtime_and_agent_errors_map_to_their_statuses_with_the_source_kept() {
        let unsupported = ApiError::from(rds_runtime::RuntimeError::Unsupported("snapshots"));
        assert_eq!(unsupported.status_and_code().0, StatusCode::NOT_IMPLEMENTED);
        assert!(std::error::Error::source(&unsupported).is_some());
        let timeout = ApiError::from(crate::agent::AgentError::Timeout(std::time::Duration::from_secs(3)));
        assert_eq!(timeout.status_and_code(), (StatusCode::GATEWAY_TIMEOUT, "agent_timeout"));
        assert!(std::error::Error::source(&timeout).is_some());
        let transport = ApiError::from(crate::agent::AgentError::Transport("reset by peer".into()));
        assert_eq!(transport.status_and_code(), (StatusCode::BAD_GATEWAY, "agent_error"));
        assert!(transport.chain().contains("reset by peer"), "{}", transport.chain());
    }

    #[tokio::test]
    async fn a_vm_that_failed_or_was_refused_by_its_vmm_answers_502_with_the_reason() {
        use http_body_util::BodyExt;
        for (err, says) in [
            (rds_runtime::RuntimeError::Vmm("Firecracker refused InstanceStart: bad kernel".into()), "bad kernel"),
            (rds_runtime::RuntimeError::Boot("no readiness call; --- console (tail) ---".into()), "console (tail)"),
        ] {
            let resp = ApiError::from(err).into_response();
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], "vm_failed", "{body}");
            assert!(body["message"].as_str().unwrap().contains(says), "{body}");
        }
    }
}
