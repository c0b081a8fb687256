//! Typed client for the guest agent's HTTP API (`rds-agent serve`): HTTP/1.1 over a VM's
//! hybrid-vsock socket (or any byte stream), with kept-alive connections pooled.
//!
//! Every route the host uses is a method taking and returning `rds-proto` types; paths, methods
//! and query names come from [`AgentRoute`], on which the agent's router dispatches.
//!
//! Retry rule (the service rds replaces re-ran commands whose connection failed mid-request, so a
//! command could run twice): a request is retried only when it
//! provably never left this process — the connection could not be made, or hyper hands the request
//! back unsent because a pooled connection had closed. Once request bytes are written, any failure
//! is returned to the caller.

mod error;
mod exec_stream;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rds_proto::agent_api::{query, AgentRoute, Identity, TransferSummary, TreeOwner, GZIP, NDJSON};
use rds_proto::pty::{PtyInfo, PtyRequest};
use rds_proto::{
    AgentHealth, ContextInfo, ContextRequest, ExecRequest, ExecResult, Language, RunRequest, RunResult,
    AGENT_VSOCK_PORT,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

pub use error::{AgentError, BoxError};
pub use exec_stream::{ExecEvents, ExecStream};
/// An attached terminal session: frames of [`rds_proto::pty`] both ways.
pub type PtyStream = TokioIo<hyper::upgrade::Upgraded>;
/// A response body still streaming from the agent (downloads, streamed execs).
pub use hyper::body::Incoming;
pub use rds_proto::agent_api;

/// Idle connections a client keeps unless told otherwise.
pub const DEFAULT_MAX_IDLE: usize = 8;
/// How long a call keeps trying, unless told otherwise, to reach a socket that is not accepting yet.
pub const DEFAULT_CONNECT_RETRY: Duration = Duration::from_secs(2);
/// Largest JSON response accepted (outputs are capped by the agent well below this).
const MAX_JSON_RESPONSE: usize = 64 << 20;
/// Largest error body read from a streaming call.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Body of a request to the agent.
type RequestBody = UnsyncBoxBody<Bytes, BoxError>;
/// One HTTP/1.1 connection to the agent.
type Sender = SendRequest<RequestBody>;

/// A byte stream to an agent: what a custom connector returns.
pub trait AgentStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentStream for S {}

type Connecting = Pin<Box<dyn Future<Output = Result<Box<dyn AgentStream>, rds_vsock::ConnectError>> + Send>>;

/// How a client opens a new connection.
enum Connector {
    /// The hybrid-vsock handshake for the agent's port on this Unix socket.
    HybridVsock(PathBuf),
    /// A caller-supplied stream.
    Custom(Box<dyn Fn() -> Connecting + Send + Sync>),
}

/// A tar.gz request body: bytes in memory or a stream forwarded as it comes.
pub struct Archive(RequestBody);

impl Archive {
    /// Streams `body` to the agent without buffering it.
    pub fn from_body<B>(body: B) -> Archive
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Archive(body.map_err(Into::into).boxed_unsync())
    }
}

impl From<Vec<u8>> for Archive {
    fn from(bytes: Vec<u8>) -> Archive {
        Archive(full(bytes))
    }
}

impl From<Bytes> for Archive {
    fn from(bytes: Bytes) -> Archive {
        Archive(full(bytes))
    }
}

/// Talks to one agent: typed calls over kept-alive HTTP/1.1 connections.
pub struct AgentClient {
    connector: Connector,
    connect_retry: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Sender>>,
}

impl AgentClient {
    /// A client for the agent behind the hybrid-vsock Unix socket `socket` (a VM's
    /// `Runtime::agent_socket`).
    pub fn hybrid_vsock(socket: impl Into<PathBuf>) -> AgentClient {
        AgentClient::with(Connector::HybridVsock(socket.into()))
    }

    /// A client that opens each connection with `connect`: any byte stream that reaches an agent
    /// (a plain Unix socket, an in-memory pipe). Failures to connect count as never sent.
    pub fn with_connector<F, Fut, S>(connect: F) -> AgentClient
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, rds_vsock::ConnectError>> + Send + 'static,
        S: AgentStream,
    {
        AgentClient::with(Connector::Custom(Box::new(move || {
            let connecting = connect();
            Box::pin(async move { Ok(Box::new(connecting.await?) as Box<dyn AgentStream>) })
        })))
    }

    fn with(connector: Connector) -> AgentClient {
        AgentClient {
            connector,
            connect_retry: DEFAULT_CONNECT_RETRY,
            max_idle: DEFAULT_MAX_IDLE,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Keeps at most `n` idle connections (0: every call opens its own).
    pub fn max_idle(mut self, n: usize) -> AgentClient {
        self.max_idle = n;
        self
    }

    /// Keeps retrying a hybrid-vsock socket that is not accepting yet for up to `window` per call
    /// (a booting guest); zero makes one attempt.
    pub fn connect_retry(mut self, window: Duration) -> AgentClient {
        self.connect_retry = window;
        self
    }

    /// The hybrid-vsock socket this client dials, if it dials one.
    pub fn socket(&self) -> Option<&Path> {
        match &self.connector {
            Connector::HybridVsock(path) => Some(path),
            Connector::Custom(_) => None,
        }
    }

    /// Idle connections kept for reuse that are still open.
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|s| !s.is_closed()).count()
    }

    /// `GET /health`: the agent is up; its version and capabilities.
    pub async fn health(&self, limit: Duration) -> Result<AgentHealth, AgentError> {
        self.call_json(request(AgentRoute::Health, &[], None, None, empty())?, limit).await
    }

    /// `POST /exec`: runs a shell command and returns its buffered result.
    pub async fn exec(&self, exec: &ExecRequest, limit: Duration) -> Result<ExecResult, AgentError> {
        self.call_json(json_request(AgentRoute::Exec, exec, None)?, limit).await
    }

    /// `POST /exec` with `Accept: application/x-ndjson`: the command's events as they come. `limit`
    /// covers the response head; the stream ends when the command does.
    pub async fn exec_stream(&self, exec: &ExecRequest, limit: Duration) -> Result<ExecStream, AgentError> {
        let req = json_request(AgentRoute::Exec, exec, Some(NDJSON))?;
        let resp = self.call_streaming(req, limit).await?;
        Ok(ExecStream::new(resp.into_body()))
    }

    /// `POST /run-ts|run-js|run-python`: runs a snippet or file in `language`.
    pub async fn run(&self, language: Language, run: &RunRequest, limit: Duration) -> Result<RunResult, AgentError> {
        self.call_json(json_request(AgentRoute::Run(language), run, None)?, limit).await
    }

    /// `GET /contexts`: the code contexts.
    pub async fn contexts(&self, limit: Duration) -> Result<Vec<ContextInfo>, AgentError> {
        self.call_json(request(AgentRoute::Contexts, &[], None, None, empty())?, limit).await
    }

    /// `POST /contexts/create`: starts a code context (once its interpreter answers).
    pub async fn create_context(&self, context: &ContextRequest, limit: Duration) -> Result<ContextInfo, AgentError> {
        self.call_json(json_request(AgentRoute::ContextCreate, context, None)?, limit).await
    }

    /// `POST /contexts/restart`: restarts a context's interpreter, dropping its state.
    pub async fn restart_context(&self, id: &str, limit: Duration) -> Result<ContextInfo, AgentError> {
        self.call_json(request(AgentRoute::ContextRestart, &[(query::ID, id)], None, None, empty())?, limit).await
    }

    /// `POST /contexts/delete`: stops a code context.
    pub async fn delete_context(&self, id: &str, limit: Duration) -> Result<(), AgentError> {
        let req = request(AgentRoute::ContextDelete, &[(query::ID, id)], None, None, empty())?;
        self.call_bytes(req, limit).await.map(drop)
    }

    /// `GET /pty`: the terminal sessions.
    pub async fn ptys(&self, limit: Duration) -> Result<Vec<PtyInfo>, AgentError> {
        self.call_json(request(AgentRoute::Ptys, &[], None, None, empty())?, limit).await
    }

    /// `POST /pty/open`: starts a terminal session.
    pub async fn open_pty(&self, pty: &PtyRequest, limit: Duration) -> Result<PtyInfo, AgentError> {
        self.call_json(json_request(AgentRoute::PtyOpen, pty, None)?, limit).await
    }

    /// `POST /pty/kill`: ends a terminal session and everything it started.
    pub async fn kill_pty(&self, id: &str, limit: Duration) -> Result<(), AgentError> {
        let req = request(AgentRoute::PtyKill, &[(query::ID, id)], None, None, empty())?;
        self.call_bytes(req, limit).await.map(drop)
    }

    /// `GET /pty/attach`: session `id`'s terminal on a connection of its own, carrying the frames
    /// of [`rds_proto::pty`]. `limit` covers reaching the agent and its answer.
    pub async fn attach_pty(&self, id: &str, limit: Duration) -> Result<PtyStream, AgentError> {
        let req = request(AgentRoute::PtyAttach, &[(query::ID, id)], None, None, empty())?;
        self.upgrade(req, rds_proto::pty::UPGRADE, limit).await
    }

    /// `POST /exec/attach`: starts `exec` (no `stdin`, no `execId`) with its stdin, stdout and
    /// stderr as the frames of [`rds_proto::pty`] on a connection of its own. `limit` covers
    /// reaching the agent and its answer; a bad request is refused before anything runs.
    pub async fn attach_exec(&self, exec: &ExecRequest, limit: Duration) -> Result<PtyStream, AgentError> {
        let req = json_request(AgentRoute::ExecAttach, exec, None)?;
        self.upgrade(req, rds_proto::pty::EXEC_UPGRADE, limit).await
    }

    /// Sends `req` asking to switch to `protocol` and returns the switched connection.
    async fn upgrade(
        &self,
        mut req: Request<RequestBody>,
        protocol: &'static str,
        limit: Duration,
    ) -> Result<PtyStream, AgentError> {
        let deadline = Instant::now() + limit;
        let work = async {
            let stream = self.open_stream(deadline).await?;
            let (mut sender, conn) =
                http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Transport(e.into()))?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            req.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static(protocol));
            let resp = sender.send_request(req).await.map_err(|e| AgentError::Transport(e.into()))?;
            if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                return Err(status_error(resp).await);
            }
            let upgraded = hyper::upgrade::on(resp).await.map_err(|e| AgentError::Transport(e.into()))?;
            Ok(TokioIo::new(upgraded))
        };
        tokio::time::timeout_at(deadline, work).await.map_err(|_| AgentError::Timeout(limit))?
    }

    /// `POST /files/upload`: unpacks a tar.gz into `dest` in the workspace, owned by the user.
    pub async fn upload(
        &self,
        dest: &str,
        archive: impl Into<Archive>,
        limit: Duration,
    ) -> Result<TransferSummary, AgentError> {
        let req = request(AgentRoute::Upload, &[(query::DEST, dest)], Some(GZIP), None, archive.into().0)?;
        self.call_json(req, limit).await
    }

    /// `GET /files/download`: `path` as a tar.gz stream. A bad or missing path is an error before
    /// any byte; `limit` covers the response head only.
    pub async fn download(&self, path: &str, limit: Duration) -> Result<Incoming, AgentError> {
        let req = request(AgentRoute::Download, &[(query::PATH, path)], None, None, empty())?;
        Ok(self.call_streaming(req, limit).await?.into_body())
    }

    /// `POST /internal/replace-tree`: replaces the tree at `dest` with a tar.gz, owned by `owner`.
    pub async fn replace_tree(
        &self,
        dest: &str,
        owner: TreeOwner,
        read_only: bool,
        archive: impl Into<Archive>,
        limit: Duration,
    ) -> Result<TransferSummary, AgentError> {
        let read_only = if read_only { "true" } else { "false" };
        let params = [(query::DEST, dest), (query::OWNER, owner.as_str()), (query::READ_ONLY, read_only)];
        let req = request(AgentRoute::ReplaceTree, &params, Some(GZIP), None, archive.into().0)?;
        self.call_json(req, limit).await
    }

    /// `POST /shutdown`: asks the guest to sync and power off; `Ok` once the agent accepted.
    pub async fn shutdown(&self, limit: Duration) -> Result<(), AgentError> {
        self.call_bytes(request(AgentRoute::Shutdown, &[], None, None, empty())?, limit).await.map(drop)
    }

    /// `POST /internal/sync`: flushes the guest's file systems; `Ok` once they are on disk.
    pub async fn sync(&self, limit: Duration) -> Result<(), AgentError> {
        self.call_bytes(request(AgentRoute::Sync, &[], None, None, empty())?, limit).await.map(drop)
    }

    /// `POST /internal/identity`: gives a guest resumed from a memory snapshot its own hostname,
    /// link, entropy and clock.
    pub async fn set_identity(&self, identity: &Identity, limit: Duration) -> Result<(), AgentError> {
        self.call_bytes(json_request(AgentRoute::Identity, identity, None)?, limit).await.map(drop)
    }

    /// Sends `req` and decodes a JSON success body.
    async fn call_json<T: DeserializeOwned>(
        &self,
        req: Request<RequestBody>,
        limit: Duration,
    ) -> Result<T, AgentError> {
        let bytes = self.call_bytes(req, limit).await?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::BadResponse(e.into()))
    }

    /// Sends `req` and returns the whole successful body; the connection goes back to the pool.
    async fn call_bytes(&self, req: Request<RequestBody>, limit: Duration) -> Result<Bytes, AgentError> {
        let deadline = Instant::now() + limit;
        let work = async {
            let (resp, sender) = self.send(req, deadline).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_JSON_RESPONSE)
                .collect()
                .await
                .map_err(AgentError::Transport)?
                .to_bytes();
            self.give_back(sender);
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(AgentError::from_status(status, &bytes))
            }
        };
        tokio::time::timeout_at(deadline, work).await.map_err(|_| AgentError::Timeout(limit))?
    }

    /// Sends `req` and returns the response head with its body still streaming. Error statuses
    /// are turned into [`AgentError::Status`].
    async fn call_streaming(
        &self,
        req: Request<RequestBody>,
        limit: Duration,
    ) -> Result<Response<Incoming>, AgentError> {
        let deadline = Instant::now() + limit;
        let work = async {
            let (resp, _sender) = self.send(req, deadline).await?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            Err(status_error(resp).await)
        };
        tokio::time::timeout_at(deadline, work).await.map_err(|_| AgentError::Timeout(limit))?
    }

    /// Sends on a pooled or fresh connection, retrying only requests that were never written.
    async fn send(
        &self,
        mut req: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<(Response<Incoming>, Sender), AgentError> {
        loop {
            let (mut sender, pooled) = match self.take_idle() {
                Some(s) => (s, true),
                None => (self.connect(deadline).await?, false),
            };
            if let Err(e) = sender.ready().await {
                if pooled {
                    continue;
                }
                return Err(AgentError::Transport(e.into()));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: safe to try again on another connection.
                    Some(unsent) if pooled => req = unsent,
                    _ => return Err(AgentError::Transport(e.into_error().into())),
                },
            }
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<Sender, AgentError> {
        handshake(self.open_stream(deadline).await?).await
    }

    /// A fresh byte stream to the agent.
    async fn open_stream(&self, deadline: Instant) -> Result<Box<dyn AgentStream>, AgentError> {
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(match &self.connector {
            Connector::HybridVsock(path) if self.connect_retry.is_zero() => {
                Box::new(rds_vsock::connect(path, AGENT_VSOCK_PORT, left).await?)
            }
            Connector::HybridVsock(path) => {
                let window = left.min(self.connect_retry);
                Box::new(rds_vsock::connect_retry(path, AGENT_VSOCK_PORT, window).await?)
            }
            Connector::Custom(connect) => connect().await?,
        })
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }
}

/// Starts HTTP/1.1 on a fresh stream; the connection task ends when either side closes it.
async fn handshake(stream: impl AgentStream) -> Result<Sender, AgentError> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Transport(e.into()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The error an unexpected answer carries (its body read up to [`MAX_ERROR_BODY`]).
async fn status_error(resp: Response<Incoming>) -> AgentError {
    let status = resp.status();
    let bytes =
        Limited::new(resp.into_body(), MAX_ERROR_BODY).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    AgentError::from_status(status, &bytes)
}

/// A request for `route` with its query parameters encoded.
fn request(
    route: AgentRoute,
    params: &[(&str, &str)],
    content_type: Option<&str>,
    accept: Option<&str>,
    body: RequestBody,
) -> Result<Request<RequestBody>, AgentError> {
    let mut uri = route.path().to_string();
    if !params.is_empty() {
        uri.push('?');
        uri.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish());
    }
    let mut builder = Request::builder().method(route.method()).uri(uri).header(header::HOST, "agent");
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(accept) = accept {
        builder = builder.header(header::ACCEPT, accept);
    }
    builder.body(body).map_err(|e| AgentError::InvalidRequest(e.into()))
}

/// A request for `route` with `value` as its JSON body.
fn json_request<T: Serialize>(
    route: AgentRoute,
    value: &T,
    accept: Option<&str>,
) -> Result<Request<RequestBody>, AgentError> {
    let body = serde_json::to_vec(value).map_err(|e| AgentError::InvalidRequest(e.into()))?;
    request(route, &[], Some("application/json"), accept, full(body))
}

fn full(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_requests_encode_their_query_and_use_the_route_method() {
        let req = request(AgentRoute::Download, &[(query::PATH, "a b/c&d")], None, None, empty()).unwrap();
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri().path(), "/files/download");
        assert_eq!(req.uri().query(), Some("path=a+b%2Fc%26d"));
        let req = request(AgentRoute::Shutdown, &[], None, None, empty()).unwrap();
        assert_eq!((req.method(), req.uri().to_string().as_str()), (&http::Method::POST, "/shutdown"));
    }

    #[test]
    fn error_bodies_become_status_errors_with_the_agents_code() {
        let body = br#"{"error":{"code":"not_found","message":"no such path: x"}}"#;
        match AgentError::from_status(http::StatusCode::NOT_FOUND, body) {
            AgentError::Status { status, code, message } => {
                assert_eq!((status.as_u16(), code.as_str(), message.as_str()), (404, "not_found", "no such path: x"));
            }
            other => panic!("{other:?}"),
        }
        match AgentError::from_status(http::StatusCode::BAD_GATEWAY, b"proxy trouble") {
            AgentError::Status { code, message, .. } => {
                assert_eq!((code.as_str(), message.as_str()), ("agent_error", "proxy trouble"))
            }
            other => panic!("{other:?}"),
        }
    }
}
