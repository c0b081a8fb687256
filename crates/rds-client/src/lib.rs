//! Async Rust client of the rds manager API: one method per operation, typed results and
//! errors, exec and runs retried safely (each carries an `execId`, so a retry joins the first
//! attempt instead of running twice).
//!
//! ```no_run
//! # async fn demo() -> Result<(), rds_client::Error> {
//! let client = rds_client::Client::from_env()?; // RDS_URL, RDS_API_KEY
//! let vm = client.create_vm(&rds_client::CreateVm::default()).await?;
//! let out = client.exec(&vm.id, &rds_client::ExecRequest { cmd: "echo hi".into(), ..Default::default() }).await?;
//! assert_eq!(out.stdout, "hi\n");
//! client.delete_vm(&vm.id).await?;
//! # Ok(()) }
//! ```

mod files;
mod models;

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use files::{pack_dir, pack_file, unpack_into};
pub use models::{CreateVm, Image, NetworkPolicy, PeerLink, PtyToken, Snapshot, Vm};
pub use rds_proto::pty::PtyInfo;
pub use rds_proto::{
    ContextInfo, ContextLanguage, ContextRequest, ExecEvent, ExecExit, ExecRequest, ExecResult, Language, RunRequest,
    RunResult,
};

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manager answered with an error status.
    #[error("{status} {code}: {message}")]
    Api { status: StatusCode, code: String, message: String },
    /// The manager could not be reached (after the retries that were safe).
    #[error("cannot reach the manager: {0}")]
    Unreachable(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A local problem (a file to upload, a bad URL).
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A client of one manager.
#[derive(Clone)]
pub struct Client {
    url: String,
    key: String,
    http: HttpClient<HttpConnector, ReqBody>,
    /// Retries of calls safe to repeat (GETs, exec and runs with their execId).
    pub retries: u32,
}

type ReqBody = BoxBody<Bytes, std::convert::Infallible>;

/// Told how many bytes of an upload were sent, of how many.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Bytes sent per progress report.
const PROGRESS_CHUNK: usize = 256 << 10;

/// `bytes` as a body that reports to `progress` as the transport takes each chunk.
fn reporting_body(bytes: Bytes, progress: Progress) -> ReqBody {
    let total = bytes.len() as u64;
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(PROGRESS_CHUNK)
        .map(|at| bytes.slice(at..(at + PROGRESS_CHUNK).min(bytes.len())))
        .collect();
    let mut sent = 0u64;
    let frames = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
        sent += chunk.len() as u64;
        progress(sent, total);
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk))
    }));
    BoxBody::new(http_body_util::StreamBody::new(frames))
}

/// One request, described.
struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'a str, String)>,
    body: Option<(Bytes, &'static str)>,
    accept: Option<&'static str>,
    retry: bool,
    progress: Option<Progress>,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Call { method, path: path.into(), query: Vec::new(), body: None, accept: None, retry: false, progress: None }
    }
    fn json(mut self, value: &impl Serialize) -> Result<Self> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Local(e.to_string()))?;
        self.body = Some((bytes.into(), "application/json"));
        Ok(self)
    }
    fn query(mut self, key: &'a str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((key, v.to_string()));
        }
        self
    }
    fn retry(mut self) -> Self {
        self.retry = true;
        self
    }
}

/// `s` as one path segment (percent-encoded beyond the unreserved characters).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// A client of the manager at `url` (`http://host:port`) using `api_key`.
    pub fn new(url: &str, api_key: &str) -> Result<Client> {
        if !url.starts_with("http://") {
            return Err(Error::Local(format!("the manager URL must start with http:// (got {url:?})")));
        }
        let http = HttpClient::builder(TokioExecutor::new()).build_http();
        Ok(Client { url: url.trim_end_matches('/').to_string(), key: api_key.to_string(), http, retries: 2 })
    }

    /// A client configured by `RDS_URL` (default `http://127.0.0.1:3000`) and `RDS_API_KEY`.
    pub fn from_env() -> Result<Client> {
        let url = std::env::var("RDS_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into());
        let key = std::env::var("RDS_API_KEY").map_err(|_| Error::Local("set RDS_API_KEY".into()))?;
        Client::new(&url, &key)
    }

    /// The manager's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The manager's answer to `call` once its status is a success.
    async fn send(&self, call: Call<'_>) -> Result<http::Response<hyper::body::Incoming>> {
        let mut uri = format!("{}{}", self.url, call.path);
        if !call.query.is_empty() {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &call.query {
                q.append_pair(k, v);
            }
            uri = format!("{uri}?{}", q.finish());
        }
        let attempts = 1 + if call.retry { self.retries } else { 0 };
        let mut attempt = 0;
        loop {
            let mut req = Request::builder().method(call.method.clone()).uri(&uri).header("x-api-key", &self.key);
            if let Some((_, content_type)) = &call.body {
                req = req.header(header::CONTENT_TYPE, *content_type);
            }
            if let Some(accept) = call.accept {
                req = req.header(header::ACCEPT, accept);
            }
            let body = call.body.as_ref().map(|(b, _)| b.clone()).unwrap_or_default();
            let body = match &call.progress {
                Some(progress) => reporting_body(body, progress.clone()),
                None => BoxBody::new(Full::new(body)),
            };
            let req = req.body(body).map_err(|e| Error::Local(e.to_string()))?;
            match self.http.request(req).await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => return Err(api_error(resp).await),
                Err(e) => {
                    attempt += 1;
                    if attempt >= attempts {
                        return Err(Error::Unreachable(format!("{} {}: {e}", call.method, call.path)));
                    }
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    async fn bytes(&self, call: Call<'_>) -> Result<Bytes> {
        let resp = self.send(call).await?;
        Ok(resp.into_body().collect().await.map_err(|e| Error::Unreachable(e.to_string()))?.to_bytes())
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T> {
        let bytes = self.bytes(call).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn none(&self, call: Call<'_>) -> Result<()> {
        self.bytes(call).await.map(drop)
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Value> {
        self.json(Call::new(Method::GET, "/v1/health").retry()).await
    }

    /// `POST /v1/vms`: a RUNNING VM.
    pub async fn create_vm(&self, req: &CreateVm) -> Result<Vm> {
        self.json(Call::new(Method::POST, "/v1/vms").json(req)?).await
    }

    /// `GET /v1/vms`.
    pub async fn list_vms(&self) -> Result<Vec<Vm>> {
        self.json(Call::new(Method::GET, "/v1/vms").retry()).await
    }

    /// `GET /v1/vms/{id}`.
    pub async fn get_vm(&self, id: &str) -> Result<Vm> {
        self.json(Call::new(Method::GET, format!("/v1/vms/{}", seg(id))).retry()).await
    }

    /// `POST /v1/vms/{id}/start`.
    pub async fn start_vm(&self, id: &str) -> Result<()> {
        self.none(Call::new(Method::POST, format!("/v1/vms/{}/start", seg(id)))).await
    }

    /// `POST /v1/vms/{id}/stop`.
    pub async fn stop_vm(&self, id: &str) -> Result<()> {
        self.none(Call::new(Method::POST, format!("/v1/vms/{}/stop", seg(id)))).await
    }

    /// `DELETE /v1/vms/{id}`.
    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/vms/{}", seg(id)))).await
    }

    /// `GET /v1/vms/{id}/logs`.
    pub async fn logs(&self, id: &str, log_type: Option<&str>, tail: Option<u32>) -> Result<Value> {
        let call =
            Call::new(Method::GET, format!("/v1/vms/{}/logs", seg(id))).query("type", log_type).query("tail", tail);
        self.json(call.retry()).await
    }

    /// `GET /v1/vms/{id}/exec-logs`.
    pub async fn exec_logs(&self, id: &str, limit: Option<u32>) -> Result<Value> {
        self.json(Call::new(Method::GET, format!("/v1/vms/{}/exec-logs", seg(id))).query("limit", limit).retry()).await
    }

    /// `POST /v1/vms/{id}/exec` (an `execId` is added unless given).
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        let req = ExecRequest { exec_id: Some(req.exec_id.clone().unwrap_or_else(new_id)), ..req.clone() };
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/exec", seg(id))).json(&req)?.retry()).await
    }

    /// `POST /v1/vms/{id}/exec` streamed: calls `on_event` with each output event as it comes and
    /// returns the final exit event.
    pub async fn exec_stream(
        &self,
        id: &str,
        req: &ExecRequest,
        mut on_event: impl FnMut(ExecEvent),
    ) -> Result<ExecExit> {
        let req = ExecRequest { exec_id: Some(req.exec_id.clone().unwrap_or_else(new_id)), ..req.clone() };
        let mut call = Call::new(Method::POST, format!("/v1/vms/{}/exec", seg(id))).json(&req)?;
        call.accept = Some("application/x-ndjson");
        let mut body = self.send(call).await?.into_body();
        let mut buf = Vec::new();
        loop {
            while let Some(at) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice(&line).map_err(|e| Error::Decode(e.to_string()))? {
                    ExecEvent::Exit(exit) => return Ok(exit),
                    event => on_event(event),
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Error::Unreachable(e.to_string())),
                None => return Err(Error::Decode("the exec stream ended without its exit event".into())),
            }
        }
    }

    /// `POST /v1/vms/{id}/run-ts|run-js|run-python` (an `execId` is added unless given).
    pub async fn run(&self, id: &str, language: Language, req: &RunRequest) -> Result<RunResult> {
        let req = RunRequest { exec_id: Some(req.exec_id.clone().unwrap_or_else(new_id)), ..req.clone() };
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/{}", seg(id), language.route())).json(&req)?.retry())
            .await
    }

    /// `POST /v1/vms/{id}/run-ts`.
    pub async fn run_ts(&self, id: &str, req: &RunRequest) -> Result<RunResult> {
        self.run(id, Language::Ts, req).await
    }

    /// `POST /v1/vms/{id}/run-js`.
    pub async fn run_js(&self, id: &str, req: &RunRequest) -> Result<RunResult> {
        self.run(id, Language::Js, req).await
    }

    /// `POST /v1/vms/{id}/run-python`.
    pub async fn run_python(&self, id: &str, req: &RunRequest) -> Result<RunResult> {
        self.run(id, Language::Python, req).await
    }

    /// `POST /v1/vms/{id}/contexts`.
    pub async fn create_context(&self, id: &str, req: &ContextRequest) -> Result<ContextInfo> {
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/contexts", seg(id))).json(req)?).await
    }

    /// `GET /v1/vms/{id}/contexts`.
    pub async fn list_contexts(&self, id: &str) -> Result<Vec<ContextInfo>> {
        self.json(Call::new(Method::GET, format!("/v1/vms/{}/contexts", seg(id))).retry()).await
    }

    /// `GET /v1/vms/{id}/contexts/{contextId}`.
    pub async fn get_context(&self, id: &str, context_id: &str) -> Result<ContextInfo> {
        self.json(Call::new(Method::GET, format!("/v1/vms/{}/contexts/{}", seg(id), seg(context_id))).retry()).await
    }

    /// `POST /v1/vms/{id}/contexts/{contextId}/restart`.
    pub async fn restart_context(&self, id: &str, context_id: &str) -> Result<ContextInfo> {
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/contexts/{}/restart", seg(id), seg(context_id)))).await
    }

    /// `DELETE /v1/vms/{id}/contexts/{contextId}`.
    pub async fn delete_context(&self, id: &str, context_id: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/vms/{}/contexts/{}", seg(id), seg(context_id)))).await
    }

    /// `POST /v1/vms/{id}/files/upload`: unpacks a tar.gz under `dest` (in the workspace).
    pub async fn upload(&self, id: &str, archive: Vec<u8>, dest: &str) -> Result<()> {
        self.upload_reporting(id, archive, dest, None).await
    }

    /// [`Client::upload`], telling `progress` how much was sent as it goes.
    pub async fn upload_reporting(
        &self,
        id: &str,
        archive: Vec<u8>,
        dest: &str,
        progress: Option<Progress>,
    ) -> Result<()> {
        let mut call = Call::new(Method::POST, format!("/v1/vms/{}/files/upload", seg(id))).query("dest", Some(dest));
        call.body = Some((archive.into(), "application/gzip"));
        call.progress = progress;
        self.none(call).await
    }

    /// `GET /v1/vms/{id}/files/download`: `path` as a tar.gz.
    pub async fn download(&self, id: &str, path: &str) -> Result<Bytes> {
        self.bytes(
            Call::new(Method::GET, format!("/v1/vms/{}/files/download", seg(id))).query("path", Some(path)).retry(),
        )
        .await
    }

    /// Uploads a local file or directory's contents into `dest`; the bytes sent (compressed).
    pub async fn upload_path(&self, id: &str, local: &std::path::Path, dest: &str) -> Result<u64> {
        self.upload_path_reporting(id, local, dest, None).await
    }

    /// [`Client::upload_path`], telling `progress` how much was sent as it goes.
    pub async fn upload_path_reporting(
        &self,
        id: &str,
        local: &std::path::Path,
        dest: &str,
        progress: Option<Progress>,
    ) -> Result<u64> {
        let archive = if local.is_dir() {
            files::pack_dir(local)?
        } else {
            let name = local
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Local(format!("{}: no file name", local.display())))?;
            files::pack_file(
                name,
                &std::fs::read(local).map_err(|e| Error::Local(format!("{}: {e}", local.display())))?,
            )?
        };
        let size = archive.len() as u64;
        self.upload_reporting(id, archive, dest, progress).await?;
        Ok(size)
    }

    /// Downloads `path` into the local directory `local_dir`; the files written.
    pub async fn download_into(&self, id: &str, path: &str, local_dir: &std::path::Path) -> Result<Vec<String>> {
        files::unpack_into(&self.download(id, path).await?, local_dir)
    }

    /// `POST /v1/vms/{id}/snapshots`.
    pub async fn create_snapshot(&self, id: &str, include_memory: Option<bool>) -> Result<Snapshot> {
        let body = serde_json::json!({ "includeMemory": include_memory });
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/snapshots", seg(id))).json(&body)?).await
    }

    /// `GET /v1/snapshots`.
    pub async fn list_snapshots(&self, scope: Option<&str>) -> Result<Vec<Snapshot>> {
        self.json(Call::new(Method::GET, "/v1/snapshots").query("scope", scope).retry()).await
    }

    /// `GET /v1/snapshots/{id}`.
    pub async fn get_snapshot(&self, snapshot_id: &str) -> Result<Snapshot> {
        self.json(Call::new(Method::GET, format!("/v1/snapshots/{}", seg(snapshot_id))).retry()).await
    }

    /// `DELETE /v1/snapshots/{id}`.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/snapshots/{}", seg(snapshot_id)))).await
    }

    /// `GET /v1/images`.
    pub async fn list_images(&self) -> Result<Vec<Image>> {
        self.json(Call::new(Method::GET, "/v1/images").retry()).await
    }

    /// `GET /v1/images/{id}`.
    pub async fn get_image(&self, image_id: &str) -> Result<Image> {
        self.json(Call::new(Method::GET, format!("/v1/images/{}", seg(image_id))).retry()).await
    }

    /// `POST /v1/images`.
    pub async fn create_image(&self, name: &str, description: Option<&str>) -> Result<Image> {
        let body = serde_json::json!({ "name": name, "description": description });
        self.json(Call::new(Method::POST, "/v1/images").json(&body)?).await
    }

    /// `DELETE /v1/images/{id}`.
    pub async fn delete_image(&self, image_id: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/images/{}", seg(image_id)))).await
    }

    /// `POST /v1/images/{id}/set-default`.
    pub async fn set_default_image(&self, image_id: &str) -> Result<()> {
        self.none(Call::new(Method::POST, format!("/v1/images/{}/set-default", seg(image_id)))).await
    }

    /// `PUT /v1/images/{id}/{kernel|rootfs|initrd|bundle}`.
    pub async fn upload_image_part(&self, image_id: &str, part: &str, data: Vec<u8>) -> Result<Image> {
        self.upload_image_part_reporting(image_id, part, data, None).await
    }

    /// [`Client::upload_image_part`], telling `progress` how much was sent as it goes.
    pub async fn upload_image_part_reporting(
        &self,
        image_id: &str,
        part: &str,
        data: Vec<u8>,
        progress: Option<Progress>,
    ) -> Result<Image> {
        let content_type = if part == "bundle" { "application/gzip" } else { "application/octet-stream" };
        let mut call = Call::new(Method::PUT, format!("/v1/images/{}/{}", seg(image_id), seg(part)));
        call.body = Some((data.into(), content_type));
        call.progress = progress;
        self.json(call).await
    }

    /// `PATCH /v1/vms/{id}/network`.
    pub async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<Vm> {
        self.json(Call::new(Method::PATCH, format!("/v1/vms/{}/network", seg(id))).json(policy)?).await
    }

    /// `GET /v1/vms/{id}/peers`.
    pub async fn list_peers(&self, id: &str) -> Result<Vec<Value>> {
        self.json(Call::new(Method::GET, format!("/v1/vms/{}/peers", seg(id))).retry()).await
    }

    /// `PATCH /v1/vms/{id}/peers/{alias}`.
    pub async fn set_peer_link(
        &self,
        id: &str,
        alias: &str,
        provider_id: Option<&str>,
        source_mode: Option<&str>,
    ) -> Result<Value> {
        let body = serde_json::json!({ "vmId": provider_id, "sourceMode": source_mode });
        self.json(Call::new(Method::PATCH, format!("/v1/vms/{}/peers/{}", seg(id), seg(alias))).json(&body)?).await
    }

    /// `DELETE /v1/vms/{id}/peers/{alias}`.
    pub async fn delete_peer_link(&self, id: &str, alias: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/vms/{}/peers/{}", seg(id), seg(alias)))).await
    }

    /// `POST /v1/vms/{id}/peers/sync`.
    pub async fn sync_peers(&self, id: &str) -> Result<Value> {
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/peers/sync", seg(id)))).await
    }

    /// `GET /v1/peer-calls`.
    pub async fn peer_calls(&self, vm_id: Option<&str>, limit: Option<u32>) -> Result<Value> {
        self.json(Call::new(Method::GET, "/v1/peer-calls").query("vmId", vm_id).query("limit", limit).retry()).await
    }

    /// `PATCH /v1/vms/{id}/secrets` (`KEY=value` entries).
    pub async fn set_secrets(&self, id: &str, secret_env: &[String]) -> Result<()> {
        let body = serde_json::json!({ "secretEnv": secret_env });
        self.none(Call::new(Method::PATCH, format!("/v1/vms/{}/secrets", seg(id))).json(&body)?).await
    }

    /// `POST /v1/api-keys`: a new API key; the answer holds `key`, shown this once.
    pub async fn create_api_key(&self, name: &str, expires_in_days: Option<u32>) -> Result<Value> {
        let body = serde_json::json!({ "name": name, "expiresInDays": expires_in_days });
        self.json(Call::new(Method::POST, "/v1/api-keys").json(&body)?).await
    }

    /// `GET /v1/api-keys`.
    pub async fn list_api_keys(&self) -> Result<Vec<Value>> {
        self.json(Call::new(Method::GET, "/v1/api-keys").retry()).await
    }

    /// `DELETE /v1/api-keys/{id}`.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/api-keys/{}", seg(key_id)))).await
    }

    /// `GET /v1/pool`.
    pub async fn pool(&self) -> Result<Value> {
        self.json(Call::new(Method::GET, "/v1/pool").retry()).await
    }

    /// `POST /v1/vms/{id}/pty-tokens`.
    pub async fn create_pty_token(&self, id: &str) -> Result<PtyToken> {
        self.json(Call::new(Method::POST, format!("/v1/vms/{}/pty-tokens", seg(id)))).await
    }

    /// `GET /v1/vms/{id}/pty-sessions`.
    pub async fn list_pty_sessions(&self, id: &str) -> Result<Vec<PtyInfo>> {
        self.json(Call::new(Method::GET, format!("/v1/vms/{}/pty-sessions", seg(id))).retry()).await
    }

    /// `DELETE /v1/vms/{id}/pty-sessions/{sessionId}`.
    pub async fn kill_pty_session(&self, id: &str, session_id: &str) -> Result<()> {
        self.none(Call::new(Method::DELETE, format!("/v1/vms/{}/pty-sessions/{}", seg(id), seg(session_id)))).await
    }

    /// The WebSocket URL of a terminal (`GET /v1/vms/{id}/pty`), without credentials: send
    /// `X-API-Key` with it (the CLI's `rds vm shell` does).
    pub fn terminal_url(&self, id: &str, query: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            q.append_pair(k, v);
        }
        format!("ws{}/v1/vms/{}/pty?{}", &self.url[4..], seg(id), q.finish())
    }

    /// The WebSocket URL of an exec with streamed stdin (`GET /v1/vms/{id}/exec/ws`), without
    /// credentials.
    pub fn exec_socket_url(&self, id: &str) -> String {
        format!("ws{}/v1/vms/{}/exec/ws", &self.url[4..], seg(id))
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn api_error(resp: http::Response<hyper::body::Incoming>) -> Error {
    let status = resp.status();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = parsed["error"]["code"].as_str().unwrap_or("error").to_string();
    let message = parsed["error"]["message"]
        .as_str()
        .or(parsed["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Error::Api { status, code, message }
}

/// Each operation of the manager's `/openapi.json` and the method implementing it (the CLI's
/// tests hold it against the live spec).
pub const OPERATIONS: &[(&str, &str)] = &[
    ("GET /v1/health", "health"),
    ("POST /v1/vms", "create_vm"),
    ("GET /v1/vms", "list_vms"),
    ("GET /v1/vms/{id}", "get_vm"),
    ("DELETE /v1/vms/{id}", "delete_vm"),
    ("POST /v1/vms/{id}/start", "start_vm"),
    ("POST /v1/vms/{id}/stop", "stop_vm"),
    ("GET /v1/vms/{id}/logs", "logs"),
    ("GET /v1/vms/{id}/exec-logs", "exec_logs"),
    ("POST /v1/vms/{id}/exec", "exec"),
    ("POST /v1/vms/{id}/run-ts", "run_ts"),
    ("POST /v1/vms/{id}/run-js", "run_js"),
    ("POST /v1/vms/{id}/run-python", "run_python"),
    ("POST /v1/vms/{id}/contexts", "create_context"),
    ("GET /v1/vms/{id}/contexts", "list_contexts"),
    ("GET /v1/vms/{id}/contexts/{contextId}", "get_context"),
    ("DELETE /v1/vms/{id}/contexts/{contextId}", "delete_context"),
    ("POST /v1/vms/{id}/contexts/{contextId}/restart", "restart_context"),
    ("POST /v1/vms/{id}/files/upload", "upload"),
    ("GET /v1/vms/{id}/files/download", "download"),
    ("POST /v1/vms/{id}/snapshots", "create_snapshot"),
    ("GET /v1/snapshots", "list_snapshots"),
    ("GET /v1/snapshots/{id}", "get_snapshot"),
    ("DELETE /v1/snapshots/{id}", "delete_snapshot"),
    ("GET /v1/images", "list_images"),
    ("POST /v1/images", "create_image"),
    ("GET /v1/images/{id}", "get_image"),
    ("DELETE /v1/images/{id}", "delete_image"),
    ("POST /v1/images/{id}/set-default", "set_default_image"),
    ("PUT /v1/images/{id}/kernel", "upload_image_part"),
    ("PUT /v1/images/{id}/rootfs", "upload_image_part"),
    ("PUT /v1/images/{id}/initrd", "upload_image_part"),
    ("PUT /v1/images/{id}/bundle", "upload_image_part"),
    ("PATCH /v1/vms/{id}/network", "update_network"),
    ("GET /v1/vms/{id}/peers", "list_peers"),
    ("PATCH /v1/vms/{id}/peers/{alias}", "set_peer_link"),
    ("DELETE /v1/vms/{id}/peers/{alias}", "delete_peer_link"),
    ("POST /v1/vms/{id}/peers/sync", "sync_peers"),
    ("GET /v1/peer-calls", "peer_calls"),
    ("PATCH /v1/vms/{id}/secrets", "set_secrets"),
    ("GET /v1/pool", "pool"),
    ("POST /v1/api-keys", "create_api_key"),
    ("GET /v1/api-keys", "list_api_keys"),
    ("DELETE /v1/api-keys/{id}", "revoke_api_key"),
    ("POST /v1/vms/{id}/pty-tokens", "create_pty_token"),
    ("GET /v1/vms/{id}/pty-sessions", "list_pty_sessions"),
    ("DELETE /v1/vms/{id}/pty-sessions/{sessionId}", "kill_pty_session"),
    ("GET /v1/vms/{id}/pty", "terminal_url"),
    ("GET /v1/vms/{id}/exec/ws", "exec_socket_url"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method OPERATIONS names exists (the list cannot drift from the code).
    #[test]
    fn every_listed_method_exists() {
        macro_rules! methods {
            ($($m:ident),* $(,)?) => {{ $(let _ = Client::$m;)* vec![$(stringify!($m)),*] }};
        }
        let known = methods!(
            health,
            create_vm,
            list_vms,
            get_vm,
            delete_vm,
            start_vm,
            stop_vm,
            logs,
            exec_logs,
            exec,
            run_ts,
            run_js,
            run_python,
            create_context,
            list_contexts,
            get_context,
            delete_context,
            restart_context,
            upload,
            download,
            create_snapshot,
            list_snapshots,
            get_snapshot,
            delete_snapshot,
            list_images,
            create_image,
            get_image,
            delete_image,
            set_default_image,
            upload_image_part,
            update_network,
            list_peers,
            set_peer_link,
            delete_peer_link,
            sync_peers,
            peer_calls,
            set_secrets,
            pool,
            create_pty_token,
            list_pty_sessions,
            kill_pty_session,
            terminal_url,
            exec_socket_url,
            create_api_key,
            list_api_keys,
            revoke_api_key,
        );
        for (op, method) in OPERATIONS {
            assert!(known.contains(method), "{op}: {method} is not a method");
        }
    }

    #[test]
    fn urls_are_checked_and_socket_urls_derived() {
        assert!(Client::new("https://x", "k").is_err());
        let c = Client::new("http://127.0.0.1:3000/", "k").unwrap();
        assert_eq!(c.exec_socket_url("vm 1"), "ws://127.0.0.1:3000/v1/vms/vm%201/exec/ws");
        assert_eq!(c.terminal_url("v", &[("cmd", "ls -l")]), "ws://127.0.0.1:3000/v1/vms/v/pty?cmd=ls+-l");
    }
}
