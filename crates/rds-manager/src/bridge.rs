//! The peer bridge's listeners: one Unix socket per consumer VM, at the runtime's
//! `bridge_socket(id)`. The sandbox runtime mounts its directory into the VM at
//! `/run/rds/bridge/`; microVM runtimes reach it over vsock (guest CID 2). Whoever connects to a
//! VM's socket *is* that VM: the socket, not anything the guest sends, identifies the caller.

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::services::peers;
use crate::AppState;

/// Largest call body a consumer may send.
const MAX_CALL_BODY: usize = 1 << 20;

/// Open bridge listeners, by consumer VM id.
#[derive(Default)]
pub struct Bridges(Mutex<HashMap<String, JoinHandle<()>>>);

impl Bridges {
    /// Starts serving `vm_id`'s bridge socket (idempotent).
    pub fn open(&self, state: &AppState, vm_id: &str) -> std::io::Result<()> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(vm_id).is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let path = state.runtime.bridge_socket(vm_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        // The consumer's user code (uid 1000) connects; only this VM can see the socket.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        let task = tokio::spawn(serve(listener, state.clone(), vm_id.to_string()));
        open.insert(vm_id.to_string(), task);
        Ok(())
    }

    /// Stops serving `vm_id`'s bridge and removes its socket.
    pub fn close(&self, state: &AppState, vm_id: &str) {
        if let Some(task) = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(vm_id) {
            task.abort();
        }
        let _ = std::fs::remove_file(state.runtime.bridge_socket(vm_id));
    }
}

async fn serve(listener: UnixListener, state: AppState, vm_id: String) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(vm_id = %vm_id, error = %e, "bridge accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (state, vm_id) = (state.clone(), vm_id.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), vm_id.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(state: AppState, vm_id: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, payload) = if req.method() != Method::POST || req.uri().path() != "/v1/call" {
        (StatusCode::NOT_FOUND, json!({"error": {"code": "not_found", "message": "the bridge serves POST /v1/call"}}))
    } else {
        match Limited::new(req.into_body(), MAX_CALL_BODY).collect().await {
            Ok(body) => peers::call(&state, &vm_id, &body.to_bytes()).await,
            Err(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": {"code": "payload_too_large", "message": format!("call body exceeds {MAX_CALL_BODY} bytes")}}),
            ),
        }
    };
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid"))
}
