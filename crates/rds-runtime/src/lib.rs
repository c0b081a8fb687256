//! The [`Runtime`] trait — the seam between the manager and the things that run guests — and its
//! implementations: [`sandbox`] (Linux namespaces), [`qemu`] (QEMU microvm) and [`firecracker`].
//!
//! A runtime starts, stops, destroys and probes VMs. Whatever it is, it exposes the guest agent as a
//! host Unix socket speaking the hybrid-vsock handshake ([`Runtime::agent_socket`]), so the manager
//! never needs to know which runtime it talks to. The manager persists each [`VmHandle`] as JSON and
//! calls [`Runtime::probe`] after its own restart to re-adopt VMs that kept running.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod boot;
pub mod cgroup;
pub mod firecracker;
mod probe_cache;
pub mod process;
pub mod qemu;
pub mod sandbox;
mod vm_common;
mod vmm;

pub use boot::{BootFiles, BootNeeds, ImageIncomplete, KernelFormat, RootfsForm};
pub use process::process_start_time;
pub use vm_common::{cap_console_log, CONSOLE_CAP};

/// Which kind of runtime runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Linux namespaces + cgroups on the host kernel (weaker isolation).
    Sandbox,
    /// QEMU `microvm` machine (KVM or TCG).
    Qemu,
    /// Firecracker microVM (KVM).
    Firecracker,
}

impl RuntimeKind {
    /// The lowercase name used in the API and in `RDS_RUNTIME`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Sandbox => "sandbox",
            RuntimeKind::Qemu => "qemu",
            RuntimeKind::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Workspace disk size of a VM whose creator did not choose one.
pub const DEFAULT_DISK_MB: u32 = 1024;
/// Smallest writable disk of any runtime (ext4 needs room for its own metadata and journal).
pub const MIN_DISK_MB: u32 = 16;

/// How strongly a runtime separates a VM from the host (the API's `isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces, cgroups and seccomp on the host kernel (sandbox): weaker than a VM.
    Namespaces,
    /// A guest kernel behind hardware virtualisation or emulation (qemu, firecracker).
    Microvm,
    /// None: code runs as the host user (the manager's in-process test runtime).
    None,
}

impl Isolation {
    /// The lowercase name the API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespaces => "namespaces",
            Isolation::Microvm => "microvm",
            Isolation::None => "none",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a runtime can do beyond start, stop and destroy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The richest snapshot a VM can be started from ([`Runtime::snapshot`]); `None` = no
    /// snapshots at all. A runtime that takes [`SnapshotKind::Memory`] snapshots takes disk ones
    /// too, and starts VMs from a memory snapshot's disk alone when asked.
    pub snapshots: Option<SnapshotKind>,
    /// Pausing and resuming a running VM.
    pub pause: bool,
    /// The manager can give its VMs a network link (of [`Runtime::link_kind`]).
    pub network: bool,
}

/// What the manager hands a runtime to build it from (its configuration, resolved).
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// `STORAGE_ROOT`: VMs live in `<storage_root>/vms/<id>/`.
    pub storage_root: PathBuf,
    /// `RDS_AGENT_BIN`: the `rds-agent` binary (the sandbox launches it).
    pub agent_bin: PathBuf,
    /// The configured guest image (`RDS_IMAGE_DIR`, or `KERNEL_PATH`, `INITRD_PATH`,
    /// `BASE_ROOTFS_PATH`): what a VM created without an image boots; `None` when none is set.
    pub image: Option<DefaultImage>,
    /// The parent cgroup name of this manager's VMs (`RDS_CGROUP_GROUP` or derived from the
    /// installation id).
    pub cgroup_group: String,
    /// `RDS_SANDBOX_ROOT=host`: a sandbox VM without an image gets the host's root, read-only.
    pub sandbox_host_root: bool,
    /// The firecracker runtime's binaries and options.
    pub firecracker: firecracker::FirecrackerSettings,
}

/// The files of the manager's configured guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultImage {
    /// Kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Read-only base root filesystem (ext4).
    pub rootfs: PathBuf,
}

/// Why a runtime cannot be built from the manager's settings.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// A setting it needs is not given.
    #[error("{reason}")]
    Missing {
        /// The setting (environment variable) to give.
        setting: &'static str,
        /// What is missing and how to provide it.
        reason: String,
    },
    /// Building it failed (a program, file or host facility is missing).
    #[error(transparent)]
    Failed(#[from] RuntimeError),
}

impl Unavailable {
    /// The setting an operator should look at.
    pub fn setting(&self) -> &'static str {
        match self {
            Unavailable::Missing { setting, .. } => setting,
            Unavailable::Failed(_) => "RDS_RUNTIME",
        }
    }
}

/// How the manager's selector builds one runtime: every runtime module exports its `ENTRY`.
#[derive(Clone, Copy)]
pub struct RuntimeEntry {
    /// The runtime it builds.
    pub kind: RuntimeKind,
    /// Whether `RDS_RUNTIME=auto` should take this runtime on this host: `Err` says why not.
    pub auto: fn(&RuntimeSettings) -> Result<(), String>,
    /// Builds the runtime after checking that it can run here.
    pub build: fn(&RuntimeSettings) -> Result<Arc<dyn Runtime>, Unavailable>,
}

/// What to boot: sizes, root filesystem and identity of one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// VM id (`[A-Za-z0-9-]{1,64}`); used in paths and cgroup names.
    pub id: String,
    /// vCPUs (sandbox: CPU quota in whole cores).
    pub cpu: u32,
    /// Memory limit in MiB.
    pub mem_mb: u32,
    /// Size of the VM's writable disk (sandbox: the `/workspace` filesystem) in MiB, used when
    /// the disk is first made; a restarted VM keeps its disk.
    pub disk_mb: u32,
    /// Image root filesystem (an ext4 file, or a directory for the sandbox); `None` = the runtime's
    /// default (sandbox: the host root, read-only).
    pub rootfs: Option<PathBuf>,
    /// Image kernel, in a format of the runtime's [`BootNeeds::kernels`]; `None` = the runtime's default.
    pub kernel: Option<PathBuf>,
    /// Image initramfs; `None` = the runtime's default (or none, for a kernel that needs none).
    pub initrd: Option<PathBuf>,
    /// Hostname inside the guest.
    pub hostname: String,
    /// The VM's network link; `None` = no network (loopback only).
    pub network: Option<VmNetwork>,
    /// Interpreters per language the VM's agent keeps started ahead of runs (its warm pool; 0
    /// disables it); `None` = the agent's default.
    pub warm_interpreters: Option<u32>,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            id: String::new(),
            cpu: 1,
            mem_mb: 256,
            disk_mb: DEFAULT_DISK_MB,
            rootfs: None,
            kernel: None,
            initrd: None,
            hostname: String::new(),
            network: None,
            warm_interpreters: None,
        }
    }
}

/// Addresses of a VM's one network interface (a /30 shared with the host end).
///
/// The host side (veth or TAP) is created by the manager; a runtime only has to configure what the
/// guest sees. The guest's DNS resolver is `host_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    /// The guest's address.
    pub guest_ip: std::net::Ipv4Addr,
    /// The host end: the guest's default gateway and DNS resolver.
    pub host_ip: std::net::Ipv4Addr,
    /// Prefix length of the link (30).
    pub prefix: u8,
    /// The guest interface's MAC address.
    pub mac: [u8; 6],
    /// The TAP device the manager created for the VM, for runtimes whose link is a
    /// [`LinkKind::Tap`] or [`LinkKind::NetnsTap`]; `None` for [`LinkKind::Veth`].
    pub tap: Option<String>,
    /// For [`LinkKind::NetnsTap`]: the network namespace (`/var/run/netns/<name>`) holding the
    /// TAP, which the VMM must join.
    pub netns: Option<String>,
}

/// How a runtime's VMs are linked to the host network (the manager creates the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A veth pair into the network namespace of the VM's process, made after `start` (sandbox).
    Veth,
    /// A TAP device made before `start` and named in [`VmNetwork::tap`]; the VMM attaches it and
    /// the guest configures itself from [`VmNetwork::guest`] (microVMs).
    Tap,
    /// The same TAP, made before `start` inside a network namespace of its own
    /// ([`VmNetwork::netns`]) that the VMM joins, bridged to a host veth: the VMM process reaches
    /// no other network (jailed firecracker).
    NetnsTap,
}

impl VmNetwork {
    /// What the guest is told about its link (a microVM reads it from its kernel command line).
    pub fn guest(&self) -> rds_proto::guest_net::GuestNet {
        rds_proto::guest_net::GuestNet { addr: self.guest_ip, prefix: self.prefix, gateway: self.host_ip }
    }

    /// The `/etc/resolv.conf` a guest on this link should use: only its own resolver.
    pub fn resolv_conf(&self) -> String {
        self.guest().resolv_conf()
    }
}

/// Identifies a running VM's host process across manager restarts (persisted as JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VmHandle {
    /// Host pid of the VM's top process (sandbox launcher, firecracker, qemu).
    pub pid: i32,
    /// That process's start time (`/proc/<pid>/stat` field 22, clock ticks since boot), so a reused
    /// pid is never mistaken for the VM.
    pub start_time: u64,
    /// Runtime-specific extras (e.g. a firecracker API socket path).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// Result of [`Runtime::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The VM we started is running and its agent answers the handshake.
    Alive,
    /// The VM is gone or is not the one we started; the string says why.
    Dead(String),
}

/// Why a runtime operation failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime cannot do this at all (maps to HTTP 501).
    #[error("not supported by this runtime: {0}")]
    Unsupported(&'static str),
    /// The caller passed something unusable (bad id, bad size).
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// The guest did not come up; the message includes the tail of its console log.
    #[error("VM failed to boot: {0}")]
    Boot(String),
    /// Creating, limiting or removing a cgroup failed.
    #[error("cgroup error: {0}")]
    Cgroup(String),
    /// The VMM refused a request (Firecracker's `fault_message`); the message includes the tails
    /// of the VM's logs.
    #[error("the VMM refused the VM: {0}")]
    Vmm(String),
    /// Stopping the VM's processes failed.
    #[error("could not stop VM: {0}")]
    Stop(String),
    /// The guest's agent did not do what the runtime asked of it (sync its disks before a
    /// snapshot); the VM runs on.
    #[error("the guest's agent failed: {0}")]
    Agent(String),
    /// A host file operation failed; the message names the path.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io { context: context.into(), source }
    }
}

/// What a snapshot holds (the API's `kind` of a snapshot's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// The VM's writable disk only (the sandbox: its `/workspace`): a VM started from it boots
    /// afresh on a copy of that disk.
    Disk,
    /// Its disk, memory and device state: a VM started from it resumes where the snapshot was
    /// taken, its processes still running, without booting.
    Memory,
}

impl SnapshotKind {
    /// The lowercase name the API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Disk => "disk",
            SnapshotKind::Memory => "memory",
        }
    }
}

/// A log a runtime keeps per VM (`GET /v1/vms/{id}/logs?type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// The guest's serial console with the VMM's own stdout and stderr ([`Runtime::console_log`]).
    Console,
    /// The VMM's own log (Firecracker's `--log-path`).
    Vmm,
    /// The VMM's metrics (Firecracker's `--metrics-path`).
    Metrics,
}

/// Runs guests. Implemented by the sandbox, qemu and firecracker runtimes; used by the manager only
/// through this trait.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// The isolation level reported to users.
    fn isolation(&self) -> Isolation;

    /// How the manager links this runtime's VMs to the host network.
    fn link_kind(&self) -> LinkKind;

    /// What it can do beyond start, stop and destroy.
    fn capabilities(&self) -> Capabilities;

    /// Which artefacts of a guest image its VMs boot from.
    fn boot_needs(&self) -> BootNeeds;

    /// The files of the image in `image_dir` a VM of this runtime boots from; `Err` says what the
    /// image lacks.
    fn boot_files(&self, image_dir: &Path) -> Result<BootFiles, ImageIncomplete> {
        self.boot_needs().resolve(image_dir)
    }

    /// Boots the VM (fresh, or restarting a stopped one — its workspace/disk is kept) and returns once
    /// the agent accepts hybrid-vsock connections on [`Runtime::agent_socket`]. On failure it removes
    /// everything this call created.
    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError>;

    /// Graceful stop (SIGTERM to the guest's PID 1, which stops children and syncs), forced (SIGKILL)
    /// after a few seconds; keeps the workspace; removes processes, cgroups and sockets.
    async fn stop(&self, id: &str, handle: &VmHandle) -> Result<(), RuntimeError>;

    /// Stops the VM if running and removes every trace: processes, cgroups, mounts, sockets, files,
    /// workspace.
    async fn destroy(&self, id: &str, handle: Option<&VmHandle>) -> Result<(), RuntimeError>;

    /// Is this VM still the one we started? Pid alive AND same start time AND agent answering.
    async fn probe(&self, id: &str, handle: &VmHandle) -> Liveness;

    /// Host Unix socket speaking the hybrid-vsock handshake to the guest agent.
    fn agent_socket(&self, id: &str) -> PathBuf;

    /// Host Unix socket the manager listens on for this VM's guest→host peer-bridge calls.
    fn bridge_socket(&self, id: &str) -> PathBuf;

    /// Guest console / launcher output (capped).
    fn console_log(&self, id: &str) -> PathBuf;

    /// The file holding the VM's log of `kind`; `None` when this runtime keeps no such log.
    fn log_file(&self, id: &str, kind: LogKind) -> Option<PathBuf> {
        match kind {
            LogKind::Console => Some(self.console_log(id)),
            LogKind::Vmm | LogKind::Metrics => None,
        }
    }

    /// OOM kills so far in this VM's memory cgroup; `None` when unknown (no cgroup, not running).
    async fn oom_kills(&self, id: &str) -> Option<u64>;

    /// OOM kills so far among the VM's own machinery (its PID 1 and agent), as opposed to the code
    /// it runs: non-zero means the VM itself ran out of memory. `None` when the runtime cannot tell.
    async fn agent_oom_kills(&self, _id: &str) -> Option<u64> {
        None
    }

    /// Undoes what a step cut short by a manager crash may have left on a VM that still runs — a
    /// frozen workspace (a sandbox snapshot), stopped vCPUs (a qemu or firecracker snapshot) — so
    /// the VM answers again and can be adopted. Leaves a VM in its normal running state as it is.
    async fn recover(&self, _id: &str, _handle: &VmHandle) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Pauses a running VM: its vCPUs stop, its process and memory stay (snapshots need it).
    async fn pause(&self, _id: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("pausing a VM"))
    }

    /// Resumes a paused VM.
    async fn resume(&self, _id: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("resuming a VM"))
    }

    /// Writes a snapshot of running VM `id` (`handle`) into `dir` (which this call creates; it must not
    /// exist): [`SnapshotKind::Memory`] when `memory` (the VM pauses while its memory is written,
    /// then runs on), else [`SnapshotKind::Disk`]. Either way the guest's file systems are synced
    /// first and the disk copy is crash-consistent. Returns what it wrote; on failure `dir` is
    /// removed and the VM runs on.
    async fn snapshot(
        &self,
        _id: &str,
        _handle: &VmHandle,
        _dir: &Path,
        _memory: bool,
    ) -> Result<SnapshotKind, RuntimeError> {
        Err(RuntimeError::Unsupported("snapshots"))
    }

    /// Starts VM `spec` from the snapshot in `dir` (written by [`Runtime::snapshot`] of a VM of the
    /// same image; `kind` is what it returned). A disk snapshot boots afresh on a copy of its disk
    /// (`spec` may size the VM differently); a memory snapshot resumes the guest where it was,
    /// with the snapshot's vCPUs and memory (the caller passes them in `spec`), and before
    /// returning gives the guest the identity `spec` names ([`rds_proto::identity::Identity`]:
    /// hostname, network, fresh entropy, the host's clock) through its agent, so no two clones
    /// share one. `dir` is only read, so many VMs may start from it at once.
    /// On failure it removes everything this call created.
    async fn start_from_snapshot(
        &self,
        _spec: &VmSpec,
        _dir: &Path,
        _kind: SnapshotKind,
    ) -> Result<VmHandle, RuntimeError> {
        Err(RuntimeError::Unsupported("starting a VM from a snapshot"))
    }

    /// Removes leftovers (VM dirs, cgroups, processes) of VM ids not in `known`; returns the ids removed.
    async fn remove_orphans(&self, known: &HashSet<String>) -> Vec<String>;
}

/// True when `id` is safe to use in paths and cgroup names: `[A-Za-z0-9-]{1,64}`.
pub fn is_valid_vm_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Rejects ids that are unsafe in paths.
pub fn check_vm_id(id: &str) -> Result<(), RuntimeError> {
    if is_valid_vm_id(id) {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!("VM id {id:?} must match [A-Za-z0-9-]{{1,64}}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_id_rejects_path_tricks() {
        assert!(is_valid_vm_id("3f1c-aa"));
        for bad in ["", "..", "a/b", "a b", ".hidden", &"x".repeat(65)] {
            assert!(!is_valid_vm_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn handle_round_trips_without_extra() {
        let h: VmHandle = serde_json::from_str(r#"{"pid":12,"start_time":34}"#).unwrap();
        assert_eq!(h, VmHandle { pid: 12, start_time: 34, extra: serde_json::Value::Null });
        let back: VmHandle = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn isolation_names_are_what_the_api_always_reported() {
        assert_eq!(Isolation::Namespaces.as_str(), "namespaces");
        assert_eq!(Isolation::Microvm.to_string(), "microvm");
        assert_eq!(serde_json::to_string(&Isolation::Microvm).unwrap(), "\"microvm\"");
    }

    #[test]
    fn runtime_kind_is_lowercase_on_the_wire() {
        assert_eq!(serde_json::to_string(&RuntimeKind::Firecracker).unwrap(), "\"firecracker\"");
        assert_eq!(RuntimeKind::Sandbox.as_str(), "sandbox");
    }
}
