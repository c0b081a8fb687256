//! Shared by the runtime integration tests: the agent binary, VM specs, and calls to a VM's agent
//! over its hybrid-vsock socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_agent_client::AgentClient;
use rds_proto::{ExecRequest, ExecResult};
use rds_runtime::{Runtime, VmSpec};

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

/// Most a call to a test VM's agent may take (TCG guests are slow).
pub const CALL_LIMIT: Duration = Duration::from_secs(120);

/// A client for the agent of VM `id`, on a fresh connection per client.
pub fn agent(rt: &dyn Runtime, id: &str) -> AgentClient {
    AgentClient::hybrid_vsock(rt.agent_socket(id))
}

/// `exec` of `cmd`; panics unless the agent answers with an ExecResult.
pub async fn exec(rt: &dyn Runtime, id: &str, cmd: &str) -> ExecResult {
    let request = ExecRequest { cmd: cmd.into(), ..ExecRequest::default() };
    agent(rt, id).exec(&request, CALL_LIMIT).await.unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
}
