//! What every runtime does the same way: spec checks, reading a console's tail for errors,
//! probing a VM's process and agent, removing a VM directory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use rds_proto::AGENT_VSOCK_PORT;

use crate::process::is_same_process_alive;
use crate::{check_vm_id, process_start_time, Liveness, RuntimeError, VmHandle, VmSpec};

/// How long a probe waits for the agent's handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks the parts of a spec every runtime shares: id, vCPUs, memory floor, hostname.
pub(crate) fn check_spec_basics(spec: &VmSpec, max_cpu: u32, min_mem_mb: u32) -> Result<(), RuntimeError> {
    check_vm_id(&spec.id)?;
    if spec.cpu == 0 || spec.cpu > max_cpu {
        return Err(RuntimeError::InvalidSpec(format!("cpu must be between 1 and {max_cpu}")));
    }
    if spec.mem_mb < min_mem_mb {
        return Err(RuntimeError::InvalidSpec(format!("memMb must be at least {min_mem_mb} on this runtime")));
    }
    let h = &spec.hostname;
    if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(RuntimeError::InvalidSpec(format!("hostname {h:?} must match [A-Za-z0-9.-]{{1,64}}")));
    }
    Ok(())
}

/// The last `bytes` of a console log, for error messages.
pub(crate) fn console_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// Alive when `handle` still names the process we started (pid + start time) and the agent
/// answers the hybrid-vsock handshake on `agent_socket`. `what` names the process in reasons.
pub(crate) async fn probe(id: &str, handle: &VmHandle, what: &str, agent_socket: &Path) -> Liveness {
    if !crate::is_valid_vm_id(id) {
        return Liveness::Dead(format!("invalid VM id {id:?}"));
    }
    if !is_same_process_alive(handle.pid, handle.start_time) {
        return Liveness::Dead(match process_start_time(handle.pid) {
            Some(_) => format!("pid {} now belongs to another process (or exited)", handle.pid),
            None => format!("{what} pid {} is gone", handle.pid),
        });
    }
    match rds_vsock::connect(agent_socket, AGENT_VSOCK_PORT, PROBE_TIMEOUT).await {
        Ok(_) => Liveness::Alive,
        Err(e) => Liveness::Dead(format!("agent not answering: {e}")),
    }
}

/// Removes a VM directory; a missing one is fine.
pub(crate) fn remove_vm_dir(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("cannot remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}
