//! Client for the guest agent: HTTP/1.1 over the runtime's hybrid-vsock socket, with kept-alive
//! connections pooled per VM.
//!
//! Retry rule (the reference re-ran commands, behaviour.md §3.5): a request is retried only when it
//! provably never left the manager — the connection could not be made, or hyper hands the request
//! back unsent because a pooled connection had closed. Once request bytes are written, any failure
//! is returned to the caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rds_proto::{ErrorBody, AGENT_VSOCK_PORT};
use rds_runtime::Runtime;
use serde::{de::DeserializeOwned, Serialize};
use tokio::time::Instant;

/// Idle connections kept per VM.
const MAX_IDLE_PER_VM: usize = 8;
/// How long to keep trying to reach a socket that is not accepting yet.
const CONNECT_WINDOW: Duration = Duration::from_secs(2);
/// Largest JSON response accepted from an agent (outputs are capped by the agent well below this).
const MAX_JSON_RESPONSE: usize = 64 << 20;

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection could be made: the request was never sent.
    #[error("cannot reach the VM's agent: {0}")]
    Unreachable(#[from] rds_vsock::ConnectError),
    /// The connection failed after the request was sent; it is not retried.
    #[error("connection to the VM's agent failed: {0}")]
    Transport(String),
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
    BadResponse(String),
}

/// A connection to one VM's agent, returned to the pool when a buffered call completes.
type Sender = SendRequest<Body>;

/// Talks to guest agents through the runtime's sockets.
pub struct AgentClient {
    runtime: Arc<dyn Runtime>,
    idle: Mutex<HashMap<String, Vec<Sender>>>,
}

impl AgentClient {
    /// A client that finds each VM's socket through `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        AgentClient {
            runtime,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Drops pooled connections to `vm_id` (after stop or delete).
    pub fn forget(&self, vm_id: &str) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id);
    }

    /// `GET`/`POST` with a JSON body (or none), decoding a JSON response.
    pub async fn call_json<B: Serialize, T: DeserializeOwned>(
        &self,
        vm_id: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        limit: Duration,
    ) -> Result<T, AgentError> {
        let bytes = self.call_bytes(vm_id, method, path, body, limit).await?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::BadResponse(e.to_string()))
    }

    /// Like [`call_json`](Self::call_json) but returns the raw successful body.
    pub async fn call_bytes<B: Serialize>(
        &self,
        vm_id: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        limit: Duration,
    ) -> Result<Bytes, AgentError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "agent");
        let body = match body {
            Some(b) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(
                    serde_json::to_vec(b).map_err(|e| AgentError::BadResponse(e.to_string()))?,
                )
            }
            None => Body::empty(),
        };
        let req = builder
            .body(body)
            .map_err(|e| AgentError::BadResponse(e.to_string()))?;
        let deadline = Instant::now() + limit;
        let work = async {
            let (resp, sender) = self.send(vm_id, req, deadline).await?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_JSON_RESPONSE)
                .collect()
                .await
                .map_err(|e| AgentError::Transport(e.to_string()))?
                .to_bytes();
            self.give_back(vm_id, sender);
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(status_error(status, &bytes))
            }
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| AgentError::Timeout(limit))?
    }

    /// Sends `req` and returns the response head with its body still streaming. Error statuses
    /// are turned into [`AgentError::Status`].
    pub async fn call_streaming(
        &self,
        vm_id: &str,
        req: Request<Body>,
        limit: Duration,
    ) -> Result<Response<Incoming>, AgentError> {
        let deadline = Instant::now() + limit;
        let work = async {
            let (resp, _sender) = self.send(vm_id, req, deadline).await?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 10)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Err(status_error(status, &bytes))
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| AgentError::Timeout(limit))?
    }

    /// Sends on a pooled or fresh connection, retrying only requests that were never written.
    async fn send(
        &self,
        vm_id: &str,
        mut req: Request<Body>,
        deadline: Instant,
    ) -> Result<(Response<Incoming>, Sender), AgentError> {
        loop {
            let (mut sender, pooled) = match self.take_idle(vm_id) {
                Some(s) => (s, true),
                None => (self.connect(vm_id, deadline).await?, false),
            };
            if sender.ready().await.is_err() {
                if pooled {
                    continue;
                }
                return Err(AgentError::Transport("agent closed the connection".into()));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: safe to try again on another connection.
                    Some(unsent) if pooled => req = unsent,
                    _ => return Err(AgentError::Transport(e.into_error().to_string())),
                },
            }
        }
    }

    async fn connect(&self, vm_id: &str, deadline: Instant) -> Result<Sender, AgentError> {
        let path = self.runtime.agent_socket(vm_id);
        let window = deadline
            .saturating_duration_since(Instant::now())
            .min(CONNECT_WINDOW);
        let stream = rds_vsock::connect_retry(&path, AGENT_VSOCK_PORT, window).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the agent or the manager closes the connection.
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn take_idle(&self, vm_id: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(vm_id)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, vm_id: &str, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(vm_id.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_VM {
            list.push(sender);
        }
    }
}

/// Turns an agent error response (`{"error":{"code","message"}}`) into [`AgentError::Status`].
fn status_error(status: StatusCode, body: &[u8]) -> AgentError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => AgentError::Status {
            status,
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => AgentError::Status {
            status,
            code: "agent_error".into(),
            message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        },
    }
}
