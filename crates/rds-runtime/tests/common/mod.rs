//! Shared by the runtime integration tests: the agent binary, VM specs, and HTTP calls to a VM's
//! agent over its hybrid-vsock socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_proto::{ExecResult, AGENT_VSOCK_PORT};
use rds_runtime::{Runtime, VmSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `$RDS_AGENT_BIN`, else `<workspace>/target/debug/rds-agent` (built if missing).
pub fn agent_bin() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("RDS_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = workspace.join("target/debug/rds-agent");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "rds-agent"])
            .current_dir(&workspace)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("rds-agent does not build".into());
        }
    }
    bin.canonicalize().map_err(|e| format!("{}: {e}", bin.display()))
}

/// A one-vCPU VM without network.
pub fn spec(id: &str, mem_mb: u32) -> VmSpec {
    VmSpec { id: id.into(), cpu: 1, mem_mb, hostname: format!("vm-{}", &id[..8]), ..VmSpec::default() }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One HTTP/1.1 request to the agent over the hybrid-vsock socket; returns status and body.
pub async fn request(rt: &dyn Runtime, id: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = rds_vsock::connect(&rt.agent_socket(id), AGENT_VSOCK_PORT, Duration::from_secs(10)).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut raw)).await.expect("agent answered").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

/// `POST /exec` of `cmd`; panics unless the agent answers 200 with an ExecResult.
pub async fn exec(rt: &dyn Runtime, id: &str, cmd: &str) -> ExecResult {
    let body = serde_json::json!({ "cmd": cmd }).to_string();
    let (status, out) = request(rt, id, "POST", "/exec", body.as_bytes()).await;
    assert_eq!(status, 200, "exec {cmd:?}: {}", String::from_utf8_lossy(&out));
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("bad ExecResult ({e}): {}", String::from_utf8_lossy(&out)))
}
