//! The agent's routes: each handler parses its input and hands over to exec, run or files.

use std::convert::Infallible;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyStream;
use hyper::body::Incoming;
use rds_proto::agent_api::{query as param, AgentRoute, TransferSummary, TreeOwner, GZIP, NDJSON};
use rds_proto::pty::{self, PtyRequest};
use rds_proto::{AgentHealth, Capabilities, ContextRequest, ExecEvent, ExecExit, ExecRequest, Language, RunRequest};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::http::{flag, json_response, query, read_json, required, stream_response, ApiError, Body};
use super::Agent;
use crate::exec::capture::{Chunk, Pipe};
use crate::exec::process::find_program;
use crate::files::{self, Owner, TransferLimits};

/// Dispatches one request.
pub async fn handle(req: Request<Incoming>, agent: Arc<Agent>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let result = match AgentRoute::from_path(&path) {
        None => Err(ApiError::no_route(&path)),
        Some(route) if *req.method() != route.method() => Err(ApiError::wrong_method(req.method(), &path)),
        Some(AgentRoute::Health) => Ok(health(&agent)),
        Some(AgentRoute::Exec) => exec(req, &agent).await,
        Some(AgentRoute::Run(language)) => run(req, &agent, language).await,
        Some(AgentRoute::Upload) => upload(req, &agent).await,
        Some(AgentRoute::Download) => download(req, &agent).await,
        Some(AgentRoute::ReplaceTree) => replace_tree(req, &agent).await,
        Some(AgentRoute::Shutdown) => Ok(shutdown(&agent)),
        Some(AgentRoute::Sync) => Ok(sync().await),
        Some(AgentRoute::Identity) => identity(req).await,
        Some(AgentRoute::Contexts) => Ok(json_response(StatusCode::OK, &agent.runner.contexts())),
        Some(AgentRoute::ContextCreate) => create_context(req, &agent).await,
        Some(AgentRoute::ContextRestart) => restart_context(req, &agent).await,
        Some(AgentRoute::ContextDelete) => delete_context(req, &agent).await,
        Some(AgentRoute::Ptys) => Ok(json_response(StatusCode::OK, &agent.ptys.list())),
        Some(AgentRoute::PtyOpen) => open_pty(req, &agent).await,
        Some(AgentRoute::PtyAttach) => attach_pty(req, &agent),
        Some(AgentRoute::PtyKill) => kill_pty(req, &agent),
        Some(AgentRoute::ExecAttach) => exec_attach(req, &agent).await,
    };
    Ok(result.unwrap_or_else(ApiError::into_response))
}

fn health(agent: &Agent) -> Response<Body> {
    let capabilities = Capabilities {
        bash: find_program("bash").is_some(),
        sh: find_program("sh").is_some(),
        deno: find_program("deno").is_some(),
        node: find_program("node").is_some(),
        python3: find_program("python3").is_some(),
    };
    let health = AgentHealth {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_ms: agent.started.elapsed().as_millis() as u64,
        capabilities,
    };
    json_response(StatusCode::OK, &health)
}

async fn exec(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let streaming = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(NDJSON));
    let request: ExecRequest = read_json(req).await?;
    if !streaming {
        let result = agent.executor.start(request, None)?.result().await?;
        return Ok(json_response(StatusCode::OK, &result));
    }
    let (live_tx, mut live_rx) = mpsc::unbounded_channel::<Chunk>();
    let handle = agent.executor.start(request, Some(live_tx))?;
    let (body_tx, body_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let replay = handle.is_replay();
        // Live chunks end when the command's pipes are drained (all senders dropped).
        while let Some((pipe, data)) = live_rx.recv().await {
            if !send_event(&body_tx, &output_event(pipe, data)).await {
                break; // the client went away; the command still runs to completion
            }
        }
        match handle.result().await {
            Ok(result) => {
                if replay {
                    for (pipe, data) in [(Pipe::Stdout, &result.stdout), (Pipe::Stderr, &result.stderr)] {
                        if !data.is_empty() {
                            send_event(&body_tx, &output_event(pipe, data.clone())).await;
                        }
                    }
                }
                send_event(&body_tx, &ExecEvent::Exit(ExecExit::from(&result))).await;
            }
            Err(e) => {
                let _ = body_tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        }
    });
    Ok(stream_response(NDJSON, body_rx))
}

fn output_event(pipe: Pipe, data: String) -> ExecEvent {
    match pipe {
        Pipe::Stdout => ExecEvent::Stdout { data },
        Pipe::Stderr => ExecEvent::Stderr { data },
    }
}

/// Sends one NDJSON line; false when the client is gone.
async fn send_event(body: &mpsc::Sender<io::Result<Bytes>>, event: &ExecEvent) -> bool {
    let mut line = serde_json::to_vec(event).expect("events always serialise");
    line.push(b'\n');
    body.send(Ok(Bytes::from(line))).await.is_ok()
}

async fn run(req: Request<Incoming>, agent: &Agent, language: Language) -> Result<Response<Body>, ApiError> {
    let request: RunRequest = read_json(req).await?;
    let result = agent.runner.start(language, request)?.result().await?;
    Ok(json_response(StatusCode::OK, &result))
}

async fn create_context(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let request: ContextRequest = read_json(req).await?;
    Ok(json_response(StatusCode::CREATED, &agent.runner.create_context(request).await?))
}

async fn restart_context(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let id = required(&query(&req), param::ID)?.to_string();
    Ok(json_response(StatusCode::OK, &agent.runner.restart_context(&id).await?))
}

async fn delete_context(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let id = required(&query(&req), param::ID)?.to_string();
    agent.runner.delete_context(&id).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "status": "deleted" })))
}

async fn open_pty(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let request: PtyRequest = read_json(req).await?;
    Ok(json_response(StatusCode::CREATED, &agent.ptys.open(request)?))
}

/// Answers 101 and serves the session's frames on the upgraded connection.
fn attach_pty(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let session = agent.ptys.get(required(&query(&req), param::ID)?)?;
    check_upgrade(&req, pty::UPGRADE)?;
    let ptys = agent.ptys.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => ptys.attach(session, hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!("a terminal attach was not upgraded: {e}"),
        }
    });
    Ok(switching_protocols(pty::UPGRADE))
}

/// Starts a command with streamed stdin, answers 101 and serves its stdio as frames on the
/// upgraded connection (see [`crate::exec::attach`]).
async fn exec_attach(mut req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    check_upgrade(&req, pty::EXEC_UPGRADE)?;
    let upgrade = hyper::upgrade::on(&mut req);
    let request: ExecRequest = read_json(req).await?;
    let running = agent.executor.start_attached(&request)?;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => crate::exec::attach::serve(running, hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(e) => {
                tracing::debug!("an attached exec was not upgraded: {e}");
                crate::exec::session::kill_session(running.pid()).await;
                drop(running.finish(None).await);
            }
        }
    });
    Ok(switching_protocols(pty::EXEC_UPGRADE))
}

fn check_upgrade(req: &Request<Incoming>, protocol: &str) -> Result<(), ApiError> {
    let wants = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if !wants.is_some_and(|v| v.eq_ignore_ascii_case(protocol)) {
        return Err(ApiError::bad_request(format!("this route needs `Upgrade: {protocol}`")));
    }
    Ok(())
}

fn switching_protocols(protocol: &'static str) -> Response<Body> {
    let mut resp = Response::new(super::http::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static(protocol));
    resp
}

fn kill_pty(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    agent.ptys.kill(required(&query(&req), param::ID)?)?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "status": "killed" })))
}

/// Bridges a request body to a blocking reader for the tar code (streamed, never buffered whole).
fn body_reader(req: Request<Incoming>) -> impl io::Read + Send + 'static {
    let stream = BodyStream::new(req.into_body())
        .try_filter_map(|frame| futures_util::future::ready(Ok(frame.into_data().ok())))
        .map_err(io::Error::other);
    SyncIoBridge::new(StreamReader::new(Box::pin(stream)))
}

/// After a rejected archive, reads and discards the rest of the body before the answer goes out:
/// answering mid-body and closing would reset the connection under the sender (the manager), which
/// would then see a transport error instead of this 400. The manager bounds what it forwards by
/// `MAX_UPLOAD_BYTES`.
fn finish_reading<T, E>(result: Result<T, E>, reader: &mut impl io::Read) -> Result<T, E> {
    if result.is_err() {
        let _ = io::copy(reader, &mut io::sink());
    }
    result
}

async fn upload(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let query = query(&req);
    let dest = required(&query, param::DEST)?.to_string();
    let workspace = agent.cfg.workspace.clone();
    let owner = Owner::User { uid: agent.cfg.uid, gid: agent.cfg.gid };
    let mut reader = body_reader(req);
    let summary = blocking(move || {
        let result = files::upload(&workspace, &dest, &mut reader, &TransferLimits::default(), owner);
        finish_reading(result, &mut reader)
    })
    .await??;
    Ok(json_response(StatusCode::OK, &TransferSummary { entries: summary.entries as u64, bytes: summary.bytes }))
}

async fn replace_tree(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let query = query(&req);
    let dest = required(&query, param::DEST)?.to_string();
    let read_only = flag(&query, param::READ_ONLY, false)?;
    let owner = match query.get(param::OWNER).map(|v| (v, TreeOwner::parse(v))) {
        None | Some((_, Some(TreeOwner::Root))) => Owner::Root,
        Some((_, Some(TreeOwner::User))) => Owner::User { uid: agent.cfg.uid, gid: agent.cfg.gid },
        Some((other, None)) => {
            return Err(ApiError::bad_request(format!(
                "query parameter `owner` must be `root` or `user`, got {other:?}"
            )))
        }
    };
    let workspace = agent.cfg.workspace.clone();
    let mut reader = body_reader(req);
    let summary = blocking(move || {
        let result = files::replace_tree(&workspace, &dest, &mut reader, &TransferLimits::default(), owner, read_only);
        finish_reading(result, &mut reader)
    })
    .await??;
    Ok(json_response(StatusCode::OK, &TransferSummary { entries: summary.entries as u64, bytes: summary.bytes }))
}

async fn download(req: Request<Incoming>, agent: &Agent) -> Result<Response<Body>, ApiError> {
    let query = query(&req);
    let path = required(&query, param::PATH)?.to_string();
    let workspace = agent.cfg.workspace.clone();
    // Checked first so a bad path is a 400/404, not a 200 that breaks off.
    {
        let (workspace, path) = (workspace.clone(), path.clone());
        blocking(move || files::check_download(&workspace, &path)).await??;
    }
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut out = io::BufWriter::with_capacity(64 * 1024, ChannelWriter(tx.clone()));
        let written = files::download(&workspace, &path, &mut out).map_err(|e| e.to_string());
        let flushed = written.and_then(|()| out.flush().map_err(|e| e.to_string()));
        if let Err(message) = flushed {
            tracing::warn!("download of {path:?} failed mid-stream: {message}");
            let _ = tx.blocking_send(Err(io::Error::other(message)));
        }
    });
    Ok(stream_response(GZIP, rx))
}

/// A blocking writer that feeds a streaming response body.
struct ChannelWriter(mpsc::Sender<io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client closed the download"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: format!("file task failed: {e}"),
    })
}

/// Flushes every file system (`sync(2)` waits for the writes) so a disk copy taken next holds
/// everything written before the call.
async fn sync() -> Response<Body> {
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
    json_response(StatusCode::OK, &serde_json::json!({ "status": "synced" }))
}

async fn identity(req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let identity: rds_proto::agent_api::Identity = read_json(req).await?;
    tokio::task::spawn_blocking(move || crate::identity::apply(&identity)).await.map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "identity_failed",
        message: format!("applying the identity stopped: {e}"),
    })??;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "status": "applied" })))
}

fn shutdown(agent: &Agent) -> Response<Body> {
    agent.request_shutdown();
    json_response(StatusCode::ACCEPTED, &serde_json::json!({ "status": "shutting down" }))
}
