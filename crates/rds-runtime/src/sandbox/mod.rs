//! The sandbox runtime: the agent runs as PID 1 of fresh user/pid/mount/net/ipc/uts/cgroup
//! namespaces over the guest image's read-only root, with a per-VM host uid range, seccomp, sized
//! tmpfs, a workspace disk of its own and per-VM cgroups. No VM: it shares the host kernel, so it is
//! weaker isolation than firecracker/qemu (see docs/security.md).
//!
//! Layout of one VM, `<storage_root>/vms/<id>/` (0700, root):
//!
//! | entry | what |
//! |---|---|
//! | `agent.sock` | host end of the agent: bound here (0600), its listening fd is passed into the sandbox |
//! | `workspace.img` | the workspace disk: a sparse ext4 file of the VM's disk size (files owned by 1000 on disk), `/workspace` inside |
//! | `workspace/` | the workspace of VMs created before workspace disks (a directory, no quota) |
//! | `bridge/` | (0755) appears at `/run/rds/bridge` inside; the manager binds `bridge/peer.sock` |
//! | `console.log` | launcher/agent stdout+stderr (capped at 1 MiB, see [`crate::cap_console_log`]) |
//! | `root/` | empty mount point where the launcher assembles the new root in its own mount namespace |
//!
//! The launcher is `<agent_bin> sandbox` (see `rds-agent`'s `sandbox` module), spawned detached so a
//! manager crash leaves sandboxes running; [`VmHandle`] identifies it across manager restarts.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rds_proto::sandbox::{SandboxSpec, SANDBOX_SPEC_ENV};
use rds_proto::{AGENT_VSOCK_PORT, SANDBOX_UID};

use crate::cgroup::{CgroupLayout, Limits};
use uid_range::UidRange;

mod uid_range;
use crate::process::HostProcess;
use crate::{check_vm_id, Liveness, Runtime, RuntimeError, RuntimeKind, VmHandle, VmSpec};
use crate::{
    vm_common, vmm, BootNeeds, Capabilities, Isolation, RootfsForm, RuntimeEntry, RuntimeSettings, SnapshotKind,
    Unavailable,
};

/// The workspace disk's name in a snapshot directory.
const SNAPSHOT_DISK: &str = "workspace.img";

/// How long `start` waits for the agent to accept connections.
const BOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits after SIGTERM before SIGKILL.
const GRACEFUL_STOP: Duration = Duration::from_secs(3);
/// How long the launcher gets to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How much of the console log a boot error quotes.
const CONSOLE_TAIL: u64 = 2048;
/// Smallest memory limit accepted (the agent itself needs some).
const MIN_MEM_MB: u32 = 32;
/// Most vCPUs a sandbox may be given (its cgroup CPU quota).
const MAX_CPU: u32 = 64;
/// Default cgroup group name under the manager's own cgroup.
const DEFAULT_CGROUP_GROUP: &str = "rds";
/// PATH of the launcher (its environment is otherwise empty so no manager secret leaks inside).
const LAUNCHER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Smallest workspace disk (ext4 needs room for its own metadata and journal).
pub use crate::MIN_DISK_MB;
/// Tasks allowed per VM when built from the manager's settings.
const DEFAULT_PIDS_MAX: u64 = 512;
/// `/tmp` gets this fraction of the VM's memory (it is memory), `/dev/shm` half of that.
const TMP_MEMORY_DIVISOR: u32 = 2;

/// How the manager's selector builds the sandbox runtime.
pub const ENTRY: RuntimeEntry = RuntimeEntry { kind: RuntimeKind::Sandbox, auto: |_| Ok(()), build };

/// Builds the runtime under the manager's cgroup group.
fn build(settings: &RuntimeSettings) -> Result<Arc<dyn Runtime>, Unavailable> {
    Ok(Arc::new(SandboxRuntime::from_settings(settings)?))
}

/// Settings of the sandbox runtime.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The manager's storage root; VMs live in `<storage_root>/vms/<id>/`. Always hidden inside sandboxes.
    pub storage_root: PathBuf,
    /// The `rds-agent` binary (runs as launcher, PID 1 and agent).
    pub agent_bin: PathBuf,
    /// Maximum tasks per VM (e.g. 512).
    pub pids_max: u64,
    /// More host paths to hide inside sandboxes (secrets dirs, the database...). `/root` and `/home`
    /// are always hidden. Only used with `host_root`.
    pub hide_paths: Vec<PathBuf>,
    /// Development only (`RDS_SANDBOX_ROOT=host`): a VM without an image gets the host's root,
    /// read-only. Otherwise such a VM is refused.
    pub host_root: bool,
}

/// The namespaces runtime.
pub struct SandboxRuntime {
    cfg: SandboxConfig,
    cgroups: CgroupLayout,
}

/// Paths of one VM.
struct VmPaths {
    dir: PathBuf,
    /// Legacy workspace directory (VMs from before workspace disks).
    workspace: PathBuf,
    workspace_img: PathBuf,
    bridge: PathBuf,
    root: PathBuf,
    agent_sock: PathBuf,
    console: PathBuf,
}

impl SandboxRuntime {
    /// Creates the runtime, preparing the `rds` cgroup parent beneath the manager's own cgroup.
    pub fn new(cfg: SandboxConfig) -> Result<Self, RuntimeError> {
        Self::with_cgroup_group(cfg, DEFAULT_CGROUP_GROUP)
    }

    /// The runtime the manager's settings describe (its agent binary must exist).
    pub fn from_settings(settings: &RuntimeSettings) -> Result<Self, Unavailable> {
        if !settings.agent_bin.is_file() {
            return Err(Unavailable::Missing {
                setting: "RDS_AGENT_BIN",
                reason: format!(
                    "{} is not a file; build rds-agent or point RDS_AGENT_BIN at it",
                    settings.agent_bin.display()
                ),
            });
        }
        let group = &settings.cgroup_group;
        tracing::info!(cgroup_group = %group, "sandbox cgroups go under this parent group");
        let runtime = Self::with_cgroup_group(
            SandboxConfig {
                storage_root: settings.storage_root.clone(),
                agent_bin: settings.agent_bin.clone(),
                pids_max: DEFAULT_PIDS_MAX,
                // The database and every VM directory live here; no sandbox may see them.
                hide_paths: vec![settings.storage_root.clone()],
                host_root: settings.sandbox_host_root,
            },
            group,
        )?;
        if settings.sandbox_host_root {
            tracing::warn!(
                "RDS_SANDBOX_ROOT=host: sandbox VMs without an image see the HOST's root filesystem \
                 (read-only). For development only; never expose this manager to untrusted code"
            );
        }
        Ok(runtime)
    }

    /// Like [`SandboxRuntime::new`] with a different cgroup parent name, so two managers (or tests)
    /// in the same cgroup never treat each other's VMs as orphans.
    pub fn with_cgroup_group(cfg: SandboxConfig, group: &str) -> Result<Self, RuntimeError> {
        if !crate::is_valid_vm_id(group) {
            return Err(RuntimeError::InvalidSpec(format!(
                "cgroup group name {group:?} must match [A-Za-z0-9-]{{1,64}}"
            )));
        }
        let cgroups = CgroupLayout::detect(group)?;
        Ok(SandboxRuntime { cfg, cgroups })
    }

    /// The cgroup directories VM `id` uses (they exist only while it runs).
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.cgroups.vm_dirs(id)
    }

    /// The directory holding everything of VM `id`.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        vmm::vm_dir(&self.cfg.storage_root, id)
    }

    fn paths(&self, id: &str) -> VmPaths {
        let dir = self.vm_dir(id);
        VmPaths {
            workspace: dir.join("workspace"),
            workspace_img: dir.join("workspace.img"),
            bridge: dir.join("bridge"),
            root: dir.join("root"),
            agent_sock: dir.join("agent.sock"),
            console: dir.join("console.log"),
            dir,
        }
    }

    fn hide_paths(&self) -> Vec<PathBuf> {
        let mut hide = vec![self.cfg.storage_root.clone()];
        hide.extend(self.cfg.hide_paths.iter().cloned());
        // Hide the real location too when the configured path goes through a symlink.
        let mut all: Vec<PathBuf> =
            hide.iter().filter_map(|p| std::fs::canonicalize(p).ok()).chain(hide.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Creates the VM's directories and files (a fresh workspace disk of `disk_mb` on first start);
    /// returns whether its workspace already existed.
    async fn prepare_dirs(&self, p: &VmPaths, disk_mb: u32) -> Result<bool, RuntimeError> {
        vmm::create_vm_dir(&self.cfg.storage_root, &p.dir)?;
        let existed = p.workspace.is_dir() || p.workspace_img.is_file();
        if !existed {
            // Files owned by the sandbox user on disk: idmapped, they are uid 1000 inside.
            vmm::make_ext4_disk(&p.workspace_img, u64::from(disk_mb), &[], Some(SANDBOX_UID)).await?;
        }
        vmm::create_dir(&p.bridge, 0o755)?;
        vmm::create_dir(&p.root, 0o700)?;
        vmm::cap_console(&p.console);
        Ok(existed)
    }

    /// Undoes a failed start: kills the launcher, removes cgroups and socket, and the whole VM
    /// directory when this start created it.
    async fn undo_start(&self, id: &str, p: &VmPaths, child: Option<&mut tokio::process::Child>, keep_dir: bool) {
        if let Some(child) = child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let cgroups = self.cgroups.clone();
        let id_owned = id.to_string();
        let _ = tokio::task::spawn_blocking(move || cgroups.remove(&id_owned)).await;
        let _ = std::fs::remove_file(&p.agent_sock);
        if !keep_dir {
            let _ = std::fs::remove_dir_all(&p.dir);
        }
    }

    async fn remove_cgroups(&self, id: &str) -> Result<(), RuntimeError> {
        let cgroups = self.cgroups.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || cgroups.remove(&id))
            .await
            .map_err(|e| RuntimeError::Cgroup(format!("cgroup removal task failed: {e}")))?
    }

    /// Spawns the launcher detached, already inside the VM's cgroups, inheriting the fds `inherit`
    /// (the listening socket and the uid-range lock).
    fn spawn_launcher(
        &self,
        spec: &SandboxSpec,
        inherit: &[RawFd],
        id: &str,
        console: &Path,
    ) -> Result<tokio::process::Child, RuntimeError> {
        let procs: Vec<File> = self
            .cgroups
            .procs_files(id)
            .iter()
            .map(|f| {
                OpenOptions::new()
                    .write(true)
                    .open(f)
                    .map_err(|e| RuntimeError::io(format!("cannot open {}", f.display()), e))
            })
            .collect::<Result<_, _>>()?;
        let procs_fds: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let (log, log2) = vmm::console_output(console)?;
        let json = serde_json::to_string(spec).expect("sandbox spec serialises");
        let inherit = inherit.to_vec();
        let mut cmd = tokio::process::Command::new(&self.cfg.agent_bin);
        cmd.arg("sandbox")
            .env_clear()
            .env("PATH", LAUNCHER_PATH)
            .env(SANDBOX_SPEC_ENV, json)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
        // (setsid, write, fcntl) on fds opened before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Own session: no terminal, not in the manager's process group, survives its death.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Writing "0" to cgroup.procs moves the writer itself; everything it forks follows.
                for fd in &procs_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The listening socket and the uid-range lock are the fds the launcher inherits.
                for fd in &inherit {
                    let flags = libc::fcntl(*fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child =
            cmd.spawn().map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.agent_bin.display())))?;
        drop(procs);
        Ok(child)
    }

    async fn start_inner(
        &self,
        spec: &VmSpec,
        p: &VmPaths,
        child_slot: &mut Option<tokio::process::Child>,
    ) -> Result<VmHandle, RuntimeError> {
        let _ = std::fs::remove_file(&p.agent_sock);
        let listener = std::os::unix::net::UnixListener::bind(&p.agent_sock)
            .map_err(|e| RuntimeError::io(format!("cannot bind {}", p.agent_sock.display()), e))?;
        std::fs::set_permissions(&p.agent_sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| RuntimeError::io(format!("cannot chmod {}", p.agent_sock.display()), e))?;

        let uids: UidRange = uid_range::claim(&spec.id)?;
        let limits = Limits {
            memory_bytes: u64::from(spec.mem_mb) * 1024 * 1024,
            cpus: spec.cpu,
            pids_max: self.cfg.pids_max,
            owner_uid: uids.base,
        };
        let cgroups = self.cgroups.clone();
        let id = spec.id.clone();
        tokio::task::spawn_blocking(move || cgroups.create(&id, limits))
            .await
            .map_err(|e| RuntimeError::Cgroup(format!("cgroup task failed: {e}")))??;

        let tmp_mb = (spec.mem_mb / TMP_MEMORY_DIVISOR).max(1);
        let launch = SandboxSpec {
            vm_id: spec.id.clone(),
            hostname: spec.hostname.clone(),
            rootfs: spec.rootfs.clone(),
            root_dir: p.root.clone(),
            workspace: if p.workspace.is_dir() { p.workspace.clone() } else { p.workspace_img.clone() },
            bridge_dir: p.bridge.clone(),
            hide_paths: self.hide_paths(),
            listen_fd: listener.as_raw_fd(),
            resolv_conf: spec.network.as_ref().map(crate::VmNetwork::resolv_conf),
            uid_base: uids.base,
            agent_cgroup_procs: self.cgroups.agent_procs_files(&spec.id),
            user_cgroups: self.cgroups.user_binds(&spec.id),
            tmp_mb,
            shm_mb: (tmp_mb / 2).max(1),
            uid_lock_fd: Some(uids.lock.as_raw_fd()),
            warm_interpreters: spec.warm_interpreters,
        };
        let inherit = [listener.as_raw_fd(), uids.lock.as_raw_fd()];
        let child = child_slot.insert(self.spawn_launcher(&launch, &inherit, &spec.id, &p.console)?);
        // Only the sandbox may hold the listener now: if it dies, connections are refused, not queued.
        // The uid range stays claimed by the launcher's copy of the lock.
        drop(listener);
        drop(uids);
        let launcher =
            HostProcess::of_child(child).ok_or_else(|| RuntimeError::Boot("the launcher exited immediately".into()))?;

        tokio::select! {
            ready = rds_vsock::connect_retry(&p.agent_sock, AGENT_VSOCK_PORT, BOOT_TIMEOUT) => {
                ready.map_err(|e| RuntimeError::Boot(format!("agent did not come up: {e}")))?;
            }
            status = child.wait() => {
                let status = status.map_err(|e| RuntimeError::io("cannot wait for the launcher", e))?;
                return Err(RuntimeError::Boot(format!("the sandbox exited during boot ({status})")));
            }
        }
        // The launcher (and so PID 1 and the agent) left `<id>` for `<id>/agent` before the agent
        // could listen: the `user` group's limits can be completed now, before any command runs.
        let cgroups = self.cgroups.clone();
        let id = spec.id.clone();
        tokio::task::spawn_blocking(move || cgroups.finish(&id, limits))
            .await
            .map_err(|e| RuntimeError::Cgroup(format!("cgroup task failed: {e}")))??;
        Ok(VmHandle { pid: launcher.pid, start_time: launcher.start_time, extra: serde_json::Value::Null })
    }
}

fn check_spec(spec: &VmSpec, host_root: bool) -> Result<(), RuntimeError> {
    vm_common::check_spec_basics(spec, MAX_CPU, MIN_MEM_MB)?;
    if spec.rootfs.is_none() && !host_root {
        return Err(RuntimeError::InvalidSpec(
            "the sandbox runtime needs a guest image as the VM's root (register one with `rds image build --register --set-default`, \
             or set RDS_IMAGE_DIR); RDS_SANDBOX_ROOT=host uses the host's root instead, for development only"
                .into(),
        ));
    }
    if spec.disk_mb < MIN_DISK_MB {
        return Err(RuntimeError::InvalidSpec(format!(
            "disk size {} MiB is below the minimum of {MIN_DISK_MB} MiB",
            spec.disk_mb
        )));
    }
    if let Some(rootfs) = &spec.rootfs {
        // An ext4 image file is loop-mounted read-only by the launcher; a directory is bound.
        if !rootfs.is_absolute() || !(rootfs.is_dir() || rootfs.is_file()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "rootfs {} is neither an ext4 image file nor a directory",
                rootfs.display()
            )));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Runtime for SandboxRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Sandbox
    }

    fn isolation(&self) -> Isolation {
        Isolation::Namespaces
    }

    fn link_kind(&self) -> crate::LinkKind {
        crate::LinkKind::Veth
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { snapshots: Some(SnapshotKind::Disk), pause: false, network: true }
    }

    fn boot_needs(&self) -> BootNeeds {
        BootNeeds {
            // The host's kernel runs it: only the image's root is used.
            kernels: &[],
            initrd: false,
            rootfs: RootfsForm::Ext4FileOrDirectory,
            // The host's root, only when the operator chose that (`RDS_SANDBOX_ROOT=host`).
            default_root: self.cfg.host_root,
        }
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError> {
        check_spec(spec, self.cfg.host_root)?;
        let p = self.paths(&spec.id);
        let dir_existed = p.dir.exists();
        let workspace_existed = match self.prepare_dirs(&p, spec.disk_mb).await {
            Ok(existed) => existed,
            Err(e) => {
                if !dir_existed {
                    let _ = std::fs::remove_dir_all(&p.dir);
                }
                return Err(e);
            }
        };
        let mut child = None;
        match self.start_inner(spec, &p, &mut child).await {
            Ok(handle) => {
                let mut child = child.expect("a started VM has a launcher");
                // Reap the launcher when it exits; dropping the runtime or the manager leaves it running.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                Ok(handle)
            }
            Err(e) => {
                let tail = vm_common::console_tail(&p.console, CONSOLE_TAIL);
                self.undo_start(&spec.id, &p, child.as_mut(), workspace_existed || dir_existed).await;
                Err(match e {
                    RuntimeError::Boot(msg) if !tail.is_empty() => {
                        RuntimeError::Boot(format!("{msg}; console:\n{tail}"))
                    }
                    other => other,
                })
            }
        }
    }

    async fn stop(&self, id: &str, handle: &VmHandle) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        let launcher = HostProcess { pid: handle.pid, start_time: handle.start_time };
        launcher.terminate("launcher", GRACEFUL_STOP, KILL_WAIT).await?;
        // Whatever is left in the VM's cgroups (e.g. the launcher was not ours any more) is killed here.
        self.remove_cgroups(id).await?;
        vmm::remove_if_present(&self.paths(id).agent_sock)
    }

    async fn destroy(&self, id: &str, handle: Option<&VmHandle>) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        match handle {
            Some(h) => self.stop(id, h).await?,
            None => self.remove_cgroups(id).await?,
        }
        vmm::remove_vm_dir(&self.vm_dir(id))
    }

    async fn probe(&self, id: &str, handle: &VmHandle) -> Liveness {
        vm_common::probe(id, handle, "launcher", &self.agent_socket(id)).await
    }

    async fn recover(&self, id: &str, handle: &VmHandle) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        let launcher = HostProcess { pid: handle.pid, start_time: handle.start_time };
        if !launcher.is_alive() {
            return Ok(());
        }
        // A snapshot freezes the workspace while it copies the disk; a crash in between leaves
        // every write to /workspace blocked until it is thawed.
        let mounted = PathBuf::from(format!("/proc/{}/root/workspace", handle.pid));
        if tokio::task::spawn_blocking(move || vmm::Frozen::thaw_if_frozen(&mounted))
            .await
            .map_err(|e| RuntimeError::Stop(format!("the thaw task stopped: {e}")))??
        {
            tracing::warn!(vm_id = %id, "thawed a workspace a snapshot left frozen");
        }
        Ok(())
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.paths(id).agent_sock
    }

    fn bridge_socket(&self, id: &str) -> PathBuf {
        self.paths(id).bridge.join("peer.sock")
    }

    fn console_log(&self, id: &str) -> PathBuf {
        self.paths(id).console
    }

    async fn snapshot(
        &self,
        id: &str,
        handle: &VmHandle,
        dir: &Path,
        memory: bool,
    ) -> Result<SnapshotKind, RuntimeError> {
        check_vm_id(id)?;
        if memory {
            return Err(RuntimeError::Unsupported(
                "memory snapshots on the sandbox runtime (it has no VM memory to save: its snapshots hold /workspace)",
            ));
        }
        let p = self.paths(id);
        if !p.workspace_img.is_file() {
            return Err(RuntimeError::Unsupported(
                "snapshots of a sandbox whose workspace is a directory (made before workspace disks)",
            ));
        }
        vm_common::check_new_snapshot_dir(dir)?;
        vm_common::sync_guest(&p.agent_sock).await?;
        let launcher = HostProcess { pid: handle.pid, start_time: handle.start_time };
        if !launcher.is_alive() {
            return Err(RuntimeError::Stop(format!("VM {id} is not running")));
        }
        // The workspace is mounted in the sandbox's own mount namespace; frozen through it, the
        // disk file is a consistent image while it is copied.
        let mounted = PathBuf::from(format!("/proc/{}/root/workspace", handle.pid));
        let to = dir.join(SNAPSHOT_DISK);
        let img = p.workspace_img.clone();
        let dir_owned = dir.to_path_buf();
        let copied = tokio::task::spawn_blocking(move || {
            vmm::create_dir(&dir_owned, 0o700)?;
            let frozen = vmm::Frozen::freeze(&mounted)?;
            let copied = vmm::clone_file(&img, &to, vmm::CloneMode::Auto);
            frozen.thaw()?;
            copied
        })
        .await
        .map_err(|e| RuntimeError::Stop(format!("the snapshot task stopped: {e}")))
        .and_then(|r| r);
        if copied.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        copied.map(|()| SnapshotKind::Disk)
    }

    async fn start_from_snapshot(
        &self,
        spec: &VmSpec,
        dir: &Path,
        kind: SnapshotKind,
    ) -> Result<VmHandle, RuntimeError> {
        if kind != SnapshotKind::Disk {
            return Err(RuntimeError::Unsupported("memory snapshots on the sandbox runtime"));
        }
        check_spec(spec, self.cfg.host_root)?;
        let vm_disk = self.paths(&spec.id).workspace_img;
        vm_common::start_on_disk_copy(self, &self.cfg.storage_root, spec, &dir.join(SNAPSHOT_DISK), &vm_disk).await
    }

    async fn oom_kills(&self, id: &str) -> Option<u64> {
        if !crate::is_valid_vm_id(id) {
            return None;
        }
        self.cgroups.oom_kills(id)
    }

    async fn agent_oom_kills(&self, id: &str) -> Option<u64> {
        if !crate::is_valid_vm_id(id) {
            return None;
        }
        self.cgroups.agent_oom_kills(id)
    }

    async fn remove_orphans(&self, known: &HashSet<String>) -> Vec<String> {
        let mut ids: Vec<String> = self.cgroups.vm_ids();
        ids.extend(vmm::vm_dir_names(&self.cfg.storage_root));
        ids.sort();
        ids.dedup();
        vmm::remove_orphans(ids, known, "sandbox", |id| async move { self.destroy(&id, None).await }).await
    }
}
