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

/// How long the agent of a guest resumed from a memory snapshot may take to answer, and to take
/// its new identity.
const IDENTITY_CALL: Duration = Duration::from_secs(10);

/// Gives the agent behind `vsock` of a guest just resumed from a memory snapshot the identity
/// `spec` names: hostname, link and MAC, fresh entropy from the host and the host's clock.
pub(crate) async fn give_identity(vsock: &Path, spec: &VmSpec) -> Result<(), RuntimeError> {
    let mut entropy = vec![0u8; rds_proto::agent_api::Identity::ENTROPY_BYTES];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut entropy))
        .map_err(|e| RuntimeError::io("cannot read /dev/urandom", e))?;
    let unix_time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let identity = rds_proto::agent_api::Identity {
        hostname: spec.hostname.clone(),
        net: spec.network.as_ref().map(|n| n.guest()),
        mac: spec.network.as_ref().map(|n| n.mac),
        entropy,
        unix_time_ms,
    };
    let agent = rds_agent_client::AgentClient::hybrid_vsock(vsock).connect_retry(IDENTITY_CALL).max_idle(0);
    agent
        .set_identity(&identity, IDENTITY_CALL)
        .await
        .map_err(|e| RuntimeError::Boot(format!("the restored guest's agent did not take its new identity: {e}")))
}

/// Asks the agent behind `vsock` to flush the guest's file systems (before its disk is copied).
pub(crate) async fn sync_guest(vsock: &Path) -> Result<(), RuntimeError> {
    let agent = rds_agent_client::AgentClient::hybrid_vsock(vsock).connect_retry(Duration::ZERO).max_idle(0);
    agent
        .sync(SYNC_CALL)
        .await
        .map_err(|e| RuntimeError::Agent(format!("it did not sync its disks before the snapshot: {e}")))
}

/// Refuses to write a snapshot over an existing directory (a snapshot's files are never replaced).
pub(crate) fn check_new_snapshot_dir(dir: &Path) -> Result<(), RuntimeError> {
    if dir.exists() {
        return Err(RuntimeError::InvalidSpec(format!("snapshot directory {} exists already", dir.display())));
    }
    Ok(())
}

/// Starts new VM `spec` of `runtime` on a copy of a snapshot's disk: makes the VM's directory
/// (which must not exist), copies `disk` to `vm_disk` in it, and starts the VM, which finds its
/// disk made (as on a restart). On failure everything is removed again.
pub(crate) async fn start_on_disk_copy<R: crate::Runtime + ?Sized>(
    runtime: &R,
    storage_root: &Path,
    spec: &VmSpec,
    disk: &Path,
    vm_disk: &Path,
) -> Result<VmHandle, RuntimeError> {
    check_vm_id(&spec.id)?;
    let dir = crate::vmm::vm_dir(storage_root, &spec.id);
    if dir.exists() {
        return Err(RuntimeError::InvalidSpec(format!("VM {} exists already", spec.id)));
    }
    crate::vmm::create_vm_dir(storage_root, &dir)?;
    let started = match crate::vmm::clone_file(disk, vm_disk, crate::vmm::CloneMode::Auto) {
        Ok(()) => runtime.start(spec).await,
        Err(e) => Err(e),
    };
    if started.is_err() {
        // A start on an existing directory keeps it (a restart would); this one is new.
        let _ = runtime.destroy(&spec.id, None).await;
    }
    started
}

/// How long a guest may take to flush its file systems.
const SYNC_CALL: Duration = Duration::from_secs(60);

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
