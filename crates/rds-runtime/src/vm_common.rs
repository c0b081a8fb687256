//! What every runtime does the same way: spec checks, capping and reading a console log,
//! probing a VM's process and agent (the VM directory and its processes: [`crate::vmm`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
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

/// Checks a microVM's spec: the shared basics, a TAP device name for a networked VM (the VMM
/// takes it on its command line or API), and absolute image files that exist. `runtime` names the
/// runtime in messages.
pub(crate) fn check_microvm_spec(
    spec: &VmSpec,
    max_cpu: u32,
    min_mem_mb: u32,
    runtime: &str,
) -> Result<(), RuntimeError> {
    check_spec_basics(spec, max_cpu, min_mem_mb)?;
    if let Some(net) = &spec.network {
        let tap = net.tap.as_deref().ok_or_else(|| {
            RuntimeError::InvalidSpec(format!("a networked {runtime} VM needs the TAP device the manager made for it"))
        })?;
        let name_ok =
            (1..16).contains(&tap.len()) && tap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(RuntimeError::InvalidSpec(format!("{tap:?} is not a network interface name")));
        }
    }
    for (what, file) in [("rootfs", &spec.rootfs), ("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
        if let Some(path) = file {
            if !path.is_absolute() || !path.is_file() {
                return Err(RuntimeError::InvalidSpec(format!("{what} {} is not a file", path.display())));
            }
        }
    }
    Ok(())
}

/// `POST /shutdown` to the agent behind `vsock` with one connection attempt (a guest that does not
/// answer at once gets the VMM's own request instead); true when it accepted.
pub(crate) async fn request_agent_shutdown(vsock: &Path, limit: Duration) -> bool {
    let agent = rds_agent_client::AgentClient::hybrid_vsock(vsock).connect_retry(Duration::ZERO).max_idle(0);
    agent.shutdown(limit).await.is_ok()
}

/// Size past which a console log is cut (see [`cap_console_log`]).
pub const CONSOLE_CAP: u64 = 1024 * 1024;

/// Keeps the console log at `path` under [`CONSOLE_CAP`]: past it, its newest half replaces
/// `<path>.old` and the log starts over. Every writer (QEMU, the vsock backend, the sandbox
/// launcher) appends (`O_APPEND`), so cutting the file under a running VM is safe. True when cut.
pub fn cap_console_log(path: &Path) -> std::io::Result<bool> {
    let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= CONSOLE_CAP {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - CONSOLE_CAP / 2))?;
    let mut tail = Vec::with_capacity((CONSOLE_CAP / 2) as usize);
    file.read_to_end(&mut tail)?;
    let mut old = path.as_os_str().to_owned();
    old.push(".old");
    std::fs::write(&old, &tail)?;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600))?;
    file.set_len(0)?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_log_is_cut_to_its_newest_half_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        assert!(!cap_console_log(&log).unwrap(), "absent is fine");
        std::fs::write(&log, vec![b'a'; CONSOLE_CAP as usize]).unwrap();
        assert!(!cap_console_log(&log).unwrap(), "at the cap it stays");

        // A writer that appends, as QEMU does, keeps its descriptor across the cut.
        let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut writer, b"newest line\n").unwrap();
        assert!(cap_console_log(&log).unwrap());
        let old = std::fs::read(dir.path().join("console.log.old")).unwrap();
        assert_eq!(old.len() as u64, CONSOLE_CAP / 2);
        assert!(old.ends_with(b"newest line\n"));
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        std::io::Write::write_all(&mut writer, b"after\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after\n", "appends land at the new start");
    }
}
