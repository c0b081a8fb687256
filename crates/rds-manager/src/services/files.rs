//! Moving files in and out of a VM's `/workspace`: tar.gz streams proxied to the agent without
//! buffering.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use http::header;
use rds_agent_client::{Archive, Incoming};

use crate::error::ResultExt;
use crate::services::exec::OrAgentError;
use crate::services::vms::find_running;
use crate::{ApiError, AppState};

/// Time allowed for a whole upload or for a download's response head.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// Streams a tar.gz body into `dest`, counting bytes against `MAX_UPLOAD_BYTES` as they pass.
pub async fn upload(
    state: &AppState,
    vm_id: &str,
    dest: Option<String>,
    body: Body,
    declared_len: Option<u64>,
) -> Result<(), ApiError> {
    let dest = dest
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::BadRequest("query parameter `dest` is required".into()))?;
    let max = state.config.max_upload_bytes;
    let too_large = || ApiError::TooLarge(format!("upload exceeds MAX_UPLOAD_BYTES={max}"));
    if declared_len.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    find_running(state, vm_id).await?;
    let seen = Arc::new(AtomicU64::new(0));
    let exceeded = Arc::new(AtomicBool::new(false));
    let (seen2, exceeded2) = (seen.clone(), exceeded.clone());
    let counted = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let total = seen2.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > max {
            exceeded2.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("upload too large"));
        }
        Ok(chunk)
    });
    let archive = Archive::from_body(Body::from_stream(counted));
    let result = state.agent.vm(vm_id).upload(&dest, archive, TRANSFER_TIMEOUT).await;
    if exceeded.load(Ordering::Relaxed) {
        return Err(too_large());
    }
    // The agent's entry and byte counts are not returned: the original API answers 204.
    result.or_agent_error(state, vm_id).await?;
    Ok(())
}

/// Streams `path` back as tar.gz.
pub async fn download(state: &AppState, vm_id: &str, path: Option<String>) -> Result<Response, ApiError> {
    let path = path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::BadRequest("query parameter `path` is required".into()))?;
    find_running(state, vm_id).await?;
    let archive = agent_download(state, vm_id, &path, TRANSFER_TIMEOUT).await?;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/gzip")
        .body(Body::new(archive))
        .context("building the download response")
}

/// Asks a VM's agent for `path` as a tar.gz stream; errors (400/404) arrive before any byte.
pub async fn agent_download(state: &AppState, vm_id: &str, path: &str, limit: Duration) -> Result<Incoming, ApiError> {
    state.agent.vm(vm_id).download(path, limit).await.or_agent_error(state, vm_id).await
}
