//! Why a call to an agent failed.

use std::time::Duration;

use http::StatusCode;

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection could be made: the request was never sent.
    #[error("cannot reach the VM's agent: {0}")]
    Unreachable(#[from] rds_vsock::ConnectError),
    /// The connection failed after the request was sent; it is not retried.
    #[error("connection to the VM's agent failed: {0}")]
    Transport(#[source] BoxError),
    /// No response within the call's time limit.
    #[error("the VM's agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with an error status.
    #[error("{message}")]
    Status {
        /// HTTP status from the agent.
        status: StatusCode,
        /// The agent's error code.
        code: String,
        /// The agent's error message.
        message: String,
    },
    /// The agent's response could not be understood.
    #[error("unexpected response from the VM's agent: {0}")]
    BadResponse(#[source] BoxError),
    /// The request could not be built (nothing was sent).
    #[error("cannot build the request to the VM's agent: {0}")]
    InvalidRequest(#[source] BoxError),
}

impl AgentError {
    /// Turns an agent error response (`{"error":{"code","message"}}`) into [`AgentError::Status`].
    pub(crate) fn from_status(status: StatusCode, body: &[u8]) -> AgentError {
        match serde_json::from_slice::<rds_proto::ErrorBody>(body) {
            Ok(e) => AgentError::Status { status, code: e.error.code, message: e.error.message },
            Err(_) => AgentError::Status {
                status,
                code: "agent_error".into(),
                message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            },
        }
    }
}
