//! The firecracker runtime: the real guest image (ELF kernel, initramfs, ext4 rootfs, agent as
//! PID 1) in a Firecracker microVM, started under Firecracker's jailer and driven through its API
//! ([`rds_firecracker::Client`]).
//!
//! Layout of one VM:
//!
//! | entry | what |
//! |---|---|
//! | `<storage_root>/vms/<id>/overlay.ext4` | sparse ext4 disk (label `rds-overlay`) holding the guest's writes; kept across stop/start |
//! | `…/vms/<id>/console.log` | serial console and the VMM's stdout/stderr (capped at 1 MiB) |
//! | `…/vms/<id>/firecracker.log`, `metrics.json` | Firecracker's own log and metrics (capped) |
//! | `…/vms/<id>/number.json` | the VM's number: guest CID and jailer uid ([`ids`]) |
//! | `…/vms/<id>/processes.json` | Firecracker's pid + start time and how it was started |
//! | `<storage_root>/jail/firecracker/<id>/root/` | the jail: Firecracker's chroot while the VM runs (removed on stop) |
//! | `…/root/{vmlinux,initrd.img,rootfs.ext4}` | the image, hard-linked (or cloned across filesystems) |
//! | `…/root/overlay.ext4`, `firecracker.log`, `metrics.json` | hard links of the VM directory's files |
//! | `…/root/run/api.sock` | Firecracker's API socket |
//! | `…/root/vsock.sock` | hybrid-vsock socket: the host end of the agent ([`Runtime::agent_socket`]); guest→host connections to port P arrive at `vsock.sock_P` |
//!
//! Under the jailer, Firecracker runs chrooted into the jail as the VM's own unprivileged uid/gid,
//! in the VM's cgroup (made by this runtime beneath the manager's own cgroup, v1 or v2) and, for a
//! VM without network, in an empty network namespace of its own. Without a jailer (`JAILER_BIN`
//! not found, or `RDS_FIRECRACKER_JAILER=off`) it runs as root in the jail directory: the manager
//! warns at start-up. Either way it runs in its own session, so a manager restart leaves it
//! running; the [`VmHandle`] re-adopts it.

pub mod ids;
pub mod probe;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rds_firecracker::{jailer, Client};
use rds_proto::{AGENT_VSOCK_PORT, BRIDGE_VSOCK_PORT, READY_VSOCK_PORT};
use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupLayout, FlatLimits};
use crate::process::HostProcess;
pub use crate::vmm::CloneMode;
use crate::vmm::{self, clone_file, GracefulStop, Spawned};
use crate::{check_vm_id, vm_common, Liveness, Runtime, RuntimeError, RuntimeKind, VmHandle, VmSpec};
use crate::{
    BootNeeds, Capabilities, Isolation, KernelFormat, RootfsForm, RuntimeEntry, RuntimeSettings, SnapshotKind,
    Unavailable,
};
use ids::{Claims, VmNumber};

/// ext4 label of the per-VM overlay disk (the same initramfs as qemu's finds it by label).
pub const OVERLAY_LABEL: &str = crate::qemu::OVERLAY_LABEL;
/// Smallest memory size accepted (kernel + initramfs + agent).
const MIN_MEM_MB: u32 = 128;
/// Most vCPUs Firecracker accepts.
const MAX_VCPUS: u32 = 32;
/// Memory the VMM itself may use in the VM's cgroup on top of the guest's.
const VMM_MEMORY_RESERVE: u64 = 128 * 1024 * 1024;
/// Tasks of the VM's cgroup: Firecracker's API, VMM and vCPU threads, with room to spare.
const VMM_PIDS: u64 = 64;
/// How long Firecracker gets to open its API socket.
const API_READY: Duration = Duration::from_secs(5);
/// How long one API call may take.
const API_CALL: Duration = Duration::from_secs(10);
/// How long the guest gets to power off by itself once asked (agent call, then Ctrl+Alt+Del).
const GRACEFUL_STOP: Duration = Duration::from_secs(10);
/// How long the agent's shutdown call may take.
const SHUTDOWN_CALL: Duration = Duration::from_secs(5);
/// How long Firecracker gets to exit after SIGKILL.
const FORCED_STOP: Duration = Duration::from_secs(3);
/// How long the first handshake with a guest that announced itself may take.
const AGENT_CONNECT: Duration = Duration::from_secs(10);
/// How long a VM may take to boot (a KVM guest boots in about a second).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the console and of Firecracker's log a boot error quotes.
const LOG_TAIL: u64 = 2048;
/// How long a probe waits for the API.
const PROBE_API: Duration = Duration::from_secs(2);
/// Longest path a Unix socket address holds (`sun_path` less its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;
/// File-descriptor limit of a jailed Firecracker.
const JAILED_NOFILE: u64 = 4096;

/// Names inside the jail (relative to Firecracker's working directory, the jail's root).
const IN_KERNEL: &str = "vmlinux";
const IN_INITRD: &str = "initrd.img";
const IN_ROOTFS: &str = "rootfs.ext4";
const IN_OVERLAY: &str = "overlay.ext4";
const IN_LOG: &str = "firecracker.log";
const IN_METRICS: &str = "metrics.json";
const IN_API: &str = "run/api.sock";
const IN_VSOCK: &str = "vsock.sock";
const IN_SNAPSHOT: &str = "snapshot";

/// What the firecracker runtime boots from a guest image.
const BOOT_NEEDS: BootNeeds =
    BootNeeds { kernels: &[KernelFormat::Elf], initrd: true, rootfs: RootfsForm::Ext4File, default_root: true };

/// How the manager's selector builds the firecracker runtime.
pub const ENTRY: RuntimeEntry = RuntimeEntry { kind: RuntimeKind::Firecracker, auto: auto_choice, build };

/// Which seccomp filter Firecracker runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// The filter compiled into the binary (official releases embed one).
    #[default]
    Default,
    /// None (`--no-seccomp`): for binaries built without a filter, in tests.
    Off,
    /// A filter file (`--seccomp-filter <path>`).
    Filter(PathBuf),
}

/// The firecracker settings of the manager's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirecrackerSettings {
    /// `FIRECRACKER_BIN`; `None` = `firecracker` on `PATH` or in `/usr/local/bin`.
    pub firecracker_bin: Option<PathBuf>,
    /// `JAILER_BIN`; `None` = `jailer` beside Firecracker or on `PATH`.
    pub jailer_bin: Option<PathBuf>,
    /// `RDS_FIRECRACKER_JAILER=off`: never use the jailer.
    pub jailer_off: bool,
    /// `RDS_FIRECRACKER_SECCOMP`.
    pub seccomp: Seccomp,
    /// `ROOTFS_CLONE_MODE`.
    pub clone_mode: CloneMode,
}

/// Settings of the firecracker runtime.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The manager's storage root.
    pub storage_root: PathBuf,
    /// The `firecracker` binary.
    pub firecracker_bin: PathBuf,
    /// The `jailer` binary; `None` = run Firecracker without it.
    pub jailer_bin: Option<PathBuf>,
    /// The guest kernel (ELF `vmlinux`).
    pub kernel: PathBuf,
    /// The image's initramfs.
    pub initrd: PathBuf,
    /// The read-only base root filesystem, shared by all VMs.
    pub base_rootfs: PathBuf,
    /// Seccomp filter.
    pub seccomp: Seccomp,
    /// How image files are cloned across filesystems.
    pub clone_mode: CloneMode,
    /// How long `start` waits for the guest's readiness call.
    pub boot_timeout: Duration,
    /// The parent cgroup of this manager's VMs.
    pub cgroup_group: String,
    /// Where VM numbers are claimed ([`ids::CLAIMS_DIR`]).
    pub claims_dir: PathBuf,
}

/// How a running VM's Firecracker was started, persisted in `processes.json` and the handle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmProcess {
    /// Firecracker's pid (the jailer execs it in place).
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
    /// The VM's number (CID and uid).
    pub number: VmNumber,
    /// Whether it runs under the jailer.
    pub jailed: bool,
    /// The network namespace the runtime made for it (a VM without network), if any; removed
    /// with the VM. A networked VM's namespace is the manager's.
    pub netns: Option<String>,
}

impl VmProcess {
    fn process(&self) -> HostProcess {
        HostProcess { pid: self.pid, start_time: self.start_time }
    }
}

/// A snapshot of a paused VM: Firecracker's state and memory files, and its writable disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl SnapshotFiles {
    /// Firecracker's VM state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join("vm.state")
    }

    /// The guest memory file.
    pub fn memory(&self) -> PathBuf {
        self.dir.join("vm.mem")
    }

    /// The VM's writable disk as it was when the snapshot was taken.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join(IN_OVERLAY)
    }
}

/// Paths of one VM.
struct VmPaths {
    dir: PathBuf,
    overlay: PathBuf,
    console: PathBuf,
    vmm_log: PathBuf,
    metrics: PathBuf,
    number: PathBuf,
    processes: PathBuf,
    /// `<storage_root>/jail/firecracker/<id>`: removed whole on stop.
    jail_dir: PathBuf,
    /// Its `root/`, Firecracker's chroot and working directory.
    jail: PathBuf,
    api: PathBuf,
    vsock: PathBuf,
    ready: PathBuf,
}

/// The Firecracker microVM runtime.
pub struct FirecrackerRuntime {
    cfg: FirecrackerConfig,
    cgroups: CgroupLayout,
    claims: Claims,
}

/// `RDS_RUNTIME=auto` takes firecracker only where KVM boots ordinary guests, with an image and
/// the binaries present.
fn auto_choice(settings: &RuntimeSettings) -> Result<(), String> {
    let Some(image) = &settings.image else { return Err("no guest image is configured".into()) };
    if !crate::qemu::kvm_boots_guests() {
        return Err("no KVM that boots ordinary guests here (kvm_intel/kvm_amd not loaded)".into());
    }
    let firecracker = find_firecracker(&settings.firecracker)?;
    let seccomp: Vec<String> =
        seccomp_args(&settings.firecracker.seccomp).iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let cache = settings.storage_root.join("firecracker-boot-probe");
    probe::kvm_boots_kernel(&firecracker, &seccomp, &image.kernel, &cache)
}

/// Firecracker's seccomp arguments for `seccomp`.
fn seccomp_args(seccomp: &Seccomp) -> Vec<OsString> {
    match seccomp {
        Seccomp::Default => Vec::new(),
        Seccomp::Off => vec!["--no-seccomp".into()],
        Seccomp::Filter(path) => vec!["--seccomp-filter".into(), path.into()],
    }
}

fn build(settings: &RuntimeSettings) -> Result<Arc<dyn Runtime>, Unavailable> {
    Ok(Arc::new(FirecrackerRuntime::from_settings(settings)?))
}

/// The `firecracker` binary the settings name, found.
fn find_firecracker(settings: &FirecrackerSettings) -> Result<PathBuf, String> {
    let wanted = settings.firecracker_bin.clone().unwrap_or_else(|| PathBuf::from("firecracker"));
    rds_host::find_program(&wanted, &[PathBuf::from("/usr/local/bin")]).ok_or_else(|| {
        format!("the Firecracker binary {} was not found (set FIRECRACKER_BIN or run scripts/setup)", wanted.display())
    })
}

/// The `jailer` binary: `JAILER_BIN`, else beside Firecracker, else on `PATH`; `None` when off or
/// not found (the caller warns). A `JAILER_BIN` that does not exist is an error.
fn find_jailer(settings: &FirecrackerSettings, firecracker: &Path) -> Result<Option<PathBuf>, String> {
    if settings.jailer_off {
        return Ok(None);
    }
    if let Some(bin) = &settings.jailer_bin {
        return rds_host::find_program(bin, &[])
            .map(Some)
            .ok_or_else(|| format!("JAILER_BIN {} was not found (or set RDS_FIRECRACKER_JAILER=off)", bin.display()));
    }
    let beside = firecracker.with_file_name("jailer");
    if beside.is_file() {
        return Ok(Some(beside));
    }
    Ok(rds_host::find_program(Path::new("jailer"), &[PathBuf::from("/usr/local/bin")]))
}

/// Whether `/dev/kvm` opens and answers `KVM_GET_API_VERSION` with 12, the only stable version.
pub fn kvm_api_ok() -> Result<(), String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm read-write: {e} (load kvm_intel or kvm_amd; run as root)"))?;
    // KVM_GET_API_VERSION = _IO(0xAE, 0x00).
    // SAFETY: an argument-less ioctl on a descriptor we own.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xAE00) };
    if version == 12 {
        Ok(())
    } else {
        Err(format!("/dev/kvm answered KVM_GET_API_VERSION with {version}, not 12"))
    }
}

impl FirecrackerRuntime {
    /// The runtime over the manager's configured guest image, after its start-up checks.
    pub fn from_settings(settings: &RuntimeSettings) -> Result<Self, Unavailable> {
        let Some(image) = &settings.image else {
            return Err(Unavailable::Missing {
                setting: "RDS_IMAGE_DIR",
                reason: "it needs a guest image: set RDS_IMAGE_DIR (from `rds image build`) \
                         or KERNEL_PATH, INITRD_PATH and BASE_ROOTFS_PATH"
                    .into(),
            });
        };
        let fc = &settings.firecracker;
        let firecracker_bin =
            find_firecracker(fc).map_err(|reason| Unavailable::Missing { setting: "FIRECRACKER_BIN", reason })?;
        let jailer_bin = find_jailer(fc, &firecracker_bin)
            .map_err(|reason| Unavailable::Missing { setting: "JAILER_BIN", reason })?;
        kvm_api_ok().map_err(|reason| Unavailable::Missing { setting: "RDS_RUNTIME", reason })?;
        let cfg = FirecrackerConfig {
            storage_root: settings.storage_root.clone(),
            firecracker_bin,
            jailer_bin,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            base_rootfs: image.rootfs.clone(),
            seccomp: fc.seccomp.clone(),
            clone_mode: fc.clone_mode,
            boot_timeout: BOOT_TIMEOUT,
            cgroup_group: settings.cgroup_group.clone(),
            claims_dir: PathBuf::from(ids::CLAIMS_DIR),
        };
        Ok(FirecrackerRuntime::new(cfg)?)
    }

    /// Creates the runtime after checking its binaries (and their versions), image and cgroups.
    pub fn new(cfg: FirecrackerConfig) -> Result<Self, RuntimeError> {
        for (what, path) in [("kernel", &cfg.kernel), ("initrd", &cfg.initrd), ("base rootfs", &cfg.base_rootfs)] {
            if !path.is_file() {
                return Err(RuntimeError::InvalidSpec(format!("the guest {what} {} is not a file", path.display())));
            }
        }
        let version = program_version(&cfg.firecracker_bin)?;
        match &cfg.jailer_bin {
            Some(jailer) => {
                let jailer_version = program_version(jailer)?;
                if jailer_version != version {
                    return Err(RuntimeError::InvalidSpec(format!(
                        "the jailer {} is version {jailer_version} but Firecracker {} is {version}: use the same release",
                        jailer.display(),
                        cfg.firecracker_bin.display()
                    )));
                }
                tracing::info!(firecracker = %cfg.firecracker_bin.display(), jailer = %jailer.display(), %version, "firecracker runtime: VMs run under the jailer");
            }
            None => tracing::warn!(
                firecracker = %cfg.firecracker_bin.display(),
                %version,
                "firecracker runtime WITHOUT the jailer: Firecracker runs as root, unchrooted, in the host's \
                 network namespace; install the jailer (JAILER_BIN) for production"
            ),
        }
        if cfg.seccomp == Seccomp::Off {
            tracing::warn!("Firecracker runs without a seccomp filter (RDS_FIRECRACKER_SECCOMP=off)");
        }
        let cgroups = CgroupLayout::detect(&cfg.cgroup_group)?;
        let claims = Claims::new(&cfg.claims_dir, &cfg.storage_root);
        let runtime = FirecrackerRuntime { cfg, cgroups, claims };
        // The manager's VM ids are UUIDs: their sockets must fit in a Unix socket address.
        runtime.check_socket_paths(&"0".repeat(36))?;
        Ok(runtime)
    }

    /// The settings it runs with.
    pub fn config(&self) -> &FirecrackerConfig {
        &self.cfg
    }

    fn paths(&self, id: &str) -> VmPaths {
        let dir = vmm::vm_dir(&self.cfg.storage_root, id);
        let name = if crate::is_valid_vm_id(id) { id } else { ".invalid-id" };
        let jail_dir = self.cfg.storage_root.join("jail").join("firecracker").join(name);
        let jail = jail_dir.join("root");
        let vsock = jail.join(IN_VSOCK);
        VmPaths {
            overlay: dir.join(IN_OVERLAY),
            console: dir.join("console.log"),
            vmm_log: dir.join(IN_LOG),
            metrics: dir.join(IN_METRICS),
            number: dir.join("number.json"),
            processes: dir.join("processes.json"),
            api: jail.join(IN_API),
            ready: rds_vsock::host_side_path(&vsock, READY_VSOCK_PORT),
            vsock,
            jail,
            jail_dir,
            dir,
        }
    }

    /// Refuses a VM whose longest socket path (`vsock.sock_1025` in its jail) would not fit in a
    /// Unix socket address, naming `STORAGE_ROOT` (which makes up the rest of the path).
    fn check_socket_paths(&self, id: &str) -> Result<(), RuntimeError> {
        let longest = rds_vsock::host_side_path(&self.paths(id).vsock, BRIDGE_VSOCK_PORT);
        let len = longest.as_os_str().len();
        if len > SOCKET_PATH_MAX {
            return Err(RuntimeError::InvalidSpec(format!(
                "the VM's socket {} is {len} bytes, longer than a Unix socket address takes ({SOCKET_PATH_MAX}): \
                 use a shorter STORAGE_ROOT",
                longest.display()
            )));
        }
        Ok(())
    }

    /// Checks `spec` (and that its sockets fit) and returns its paths and whether its directory
    /// exists already (a restart: its disk and number stay whatever happens).
    fn checked_paths(&self, spec: &VmSpec) -> Result<(VmPaths, bool), RuntimeError> {
        check_spec(spec)?;
        self.check_socket_paths(&spec.id)?;
        let p = self.paths(&spec.id);
        let dir_existed = p.dir.exists();
        Ok((p, dir_existed))
    }

    /// The network namespace a VM without network runs in (named after this manager's cgroup
    /// group, which names its installation).
    fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.cfg.cgroup_group)
    }

    /// Firecracker's API of VM `id` (its socket exists only while it runs).
    pub fn client(&self, id: &str) -> Client {
        Client::new(self.paths(id).api).with_timeout(API_CALL)
    }

    /// The VM's process record: from the handle, else from `processes.json`.
    fn record(&self, id: &str, handle: Option<&VmHandle>) -> Option<VmProcess> {
        vmm::read_record(handle.map(|h| &h.extra), &self.paths(id).processes)
    }

    /// Readies the VM directory (overlay disk on a first start), its number and a fresh jail
    /// holding the files Firecracker opens. Returns the VM's number (also noted in `made`).
    async fn prepare(
        &self,
        p: &VmPaths,
        spec: &VmSpec,
        jailed: bool,
        made: &mut Made,
    ) -> Result<VmNumber, RuntimeError> {
        let (id, disk_mb) = (spec.id.as_str(), spec.disk_mb);
        vmm::create_vm_dir(&self.cfg.storage_root, &p.dir)?;
        vmm::cap_console(&p.console);
        for log in [&p.vmm_log, &p.metrics] {
            vmm::cap_console(log);
        }
        if !p.overlay.exists() {
            vmm::make_ext4_disk(&p.overlay, u64::from(disk_mb), &["-L", OVERLAY_LABEL], None).await?;
        }
        let earlier: Option<VmNumber> = vmm::read_record(None, &p.number);
        let number = self.claims.claim(id, earlier)?;
        made.number = Some(number);
        vmm::write_record(&p.number, &number)?;

        remove_tree(&p.jail_dir)?;
        vmm::create_dir(&p.jail.join("run"), 0o700)?;
        let image = [
            (spec.kernel.as_ref().unwrap_or(&self.cfg.kernel), IN_KERNEL),
            (spec.initrd.as_ref().unwrap_or(&self.cfg.initrd), IN_INITRD),
            (spec.rootfs.as_ref().unwrap_or(&self.cfg.base_rootfs), IN_ROOTFS),
        ];
        for (from, name) in image {
            let to = p.jail.join(name);
            let readable = std::fs::metadata(from).map(|m| m.permissions().mode() & 0o004 != 0).unwrap_or(false);
            if !jailed || readable {
                clone_into(from, &to, self.cfg.clone_mode)?;
            } else {
                // A link would share the file's mode, which the VM's uid cannot read: a clone it owns.
                clone_file(from, &to, self.cfg.clone_mode)?;
                std::os::unix::fs::chown(&to, Some(number.uid()), Some(number.uid()))
                    .map_err(|e| RuntimeError::io(format!("cannot chown {}", to.display()), e))?;
            }
        }
        for log in [&p.vmm_log, &p.metrics] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(log)
                .map_err(|e| RuntimeError::io(format!("cannot create {}", log.display()), e))?;
        }
        // The VM's own files are hard links: what Firecracker writes stays in the VM directory.
        for (from, name) in [(&p.overlay, IN_OVERLAY), (&p.vmm_log, IN_LOG), (&p.metrics, IN_METRICS)] {
            let to = p.jail.join(name);
            std::fs::hard_link(from, &to)
                .map_err(|e| RuntimeError::io(format!("cannot link {} to {}", from.display(), to.display()), e))?;
        }
        if jailed {
            // Firecracker runs as the VM's uid: it writes these and creates its sockets here.
            let uid = number.uid();
            for path in [&p.jail, &p.jail.join("run"), &p.overlay, &p.vmm_log, &p.metrics] {
                std::os::unix::fs::chown(path, Some(uid), Some(uid))
                    .map_err(|e| RuntimeError::io(format!("cannot chown {}", path.display()), e))?;
            }
        }
        Ok(number)
    }

    /// Firecracker's own arguments.
    fn firecracker_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--api-sock".into(), IN_API.into()];
        args.extend(seccomp_args(&self.cfg.seccomp));
        args
    }

    /// The jailer invocation for VM `id`.
    fn jail(&self, id: &str, number: VmNumber, netns: Option<&str>) -> jailer::Jail {
        jailer::Jail {
            id: id.to_string(),
            exec_file: self.cfg.firecracker_bin.clone(),
            uid: number.uid(),
            gid: number.uid(),
            chroot_base: self.cfg.storage_root.join("jail"),
            cgroup_version: if self.cgroups.version() == 2 {
                jailer::CgroupVersion::V2
            } else {
                jailer::CgroupVersion::V1
            },
            // v2: the jailer moves Firecracker into the group this runtime made and limited (it is
            // there already, from before the exec); v1 groups are joined the same way.
            parent_cgroup: self.cgroups.v2_relative(id),
            cgroups: Vec::new(),
            netns: netns.map(|n| PathBuf::from("/var/run/netns").join(n)),
            daemonize: false,
            new_pid_ns: false,
            resource_limits: vec![("no-file".into(), JAILED_NOFILE)],
        }
    }

    /// Starts Firecracker for VM `spec.id` (jailed or not) in its cgroup and session, output to
    /// the console log; returns its index in `starting`.
    fn spawn_vmm(
        &self,
        spec: &VmSpec,
        p: &VmPaths,
        number: VmNumber,
        netns: Option<&str>,
        starting: &mut Spawned,
    ) -> Result<usize, RuntimeError> {
        let procs: Vec<std::fs::File> = self
            .cgroups
            .procs_files(&spec.id)
            .iter()
            .map(|f| {
                OpenOptions::new()
                    .write(true)
                    .open(f)
                    .map_err(|e| RuntimeError::io(format!("cannot open {}", f.display()), e))
            })
            .collect::<Result<_, _>>()?;
        let procs_fds: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let (out, err) = vmm::console_output(&p.console)?;
        let mut cmd = match &self.cfg.jailer_bin {
            Some(jailer_bin) => {
                let mut cmd = vmm::detached(jailer_bin);
                cmd.args(self.jail(&spec.id, number, netns).args(&self.firecracker_args()));
                cmd
            }
            None => {
                let mut cmd = vmm::detached(&self.cfg.firecracker_bin);
                cmd.args(self.firecracker_args()).current_dir(&p.jail);
                cmd
            }
        };
        cmd.stdout(out).stderr(err);
        // SAFETY: the closure only calls write(2) on descriptors opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" to cgroup.procs moves the writer itself; Firecracker's threads follow.
                for fd in &procs_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let what = self.cfg.jailer_bin.as_ref().unwrap_or(&self.cfg.firecracker_bin);
        let index =
            starting.spawn(&mut cmd).map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", what.display())))?;
        drop(procs);
        Ok(index)
    }

    /// The kernel command line of `spec`.
    fn boot_args(spec: &VmSpec) -> String {
        let mut args = vec![
            "console=ttyS0".to_string(),
            // Firecracker ends the VM when the guest reboots (its i8042 reset): reboot=k, panic=1.
            "reboot=k".into(),
            "panic=1".into(),
            // It has no power-off device either: the agent's shutdown resets the guest instead.
            "rds.poweroff=reset".into(),
            "pci=off".into(),
            "quiet".into(),
            "cryptomgr.notests".into(),
            "rcupdate.rcu_expedited=1".into(),
            "8250.nr_uarts=1".into(),
            "audit=0".into(),
            format!("rds.hostname={}", spec.hostname),
            format!("rds.overlay={OVERLAY_LABEL}"),
        ];
        if let Some(net) = &spec.network {
            args.push(net.guest().to_param());
        }
        if let Some(n) = spec.warm_interpreters {
            args.push(format!("rds.warm={n}"));
        }
        args.join(" ")
    }

    /// Configures a fresh Firecracker for `spec` through its API (every path relative to the jail).
    async fn configure(&self, client: &Client, spec: &VmSpec, number: VmNumber) -> Result<(), RuntimeError> {
        use rds_firecracker::{BootSource, Drive, Logger, MachineConfiguration, Metrics, NetworkInterface, Vsock};
        let refused = |what: &'static str| move |e: rds_firecracker::Error| vmm_refused(what, e);
        client
            .put_logger(&Logger {
                log_path: Some(IN_LOG.into()),
                level: Some("Info".into()),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: None,
            })
            .await
            .map_err(refused("the logger"))?;
        client.put_metrics(&Metrics { metrics_path: IN_METRICS.into() }).await.map_err(refused("the metrics file"))?;
        client
            .put_machine_config(&MachineConfiguration {
                vcpu_count: spec.cpu as _,
                mem_size_mib: spec.mem_mb as _,
                ..Default::default()
            })
            .await
            .map_err(refused("the machine configuration"))?;
        client
            .put_boot_source(&BootSource {
                kernel_image_path: IN_KERNEL.into(),
                boot_args: Some(Self::boot_args(spec)),
                initrd_path: Some(IN_INITRD.into()),
            })
            .await
            .map_err(refused("the kernel"))?;
        // Drive order is device order: the initramfs mounts vda as the base and finds the overlay
        // by its label.
        for (drive_id, path, read_only) in [("base", IN_ROOTFS, true), ("overlay", IN_OVERLAY, false)] {
            client
                .put_drive(&Drive {
                    drive_id: drive_id.into(),
                    path_on_host: path.into(),
                    is_root_device: false,
                    is_read_only: Some(read_only),
                    ..Default::default()
                })
                .await
                .map_err(refused("a drive"))?;
        }
        client
            .put_vsock(&Vsock { guest_cid: number.cid(), uds_path: IN_VSOCK.into(), ..Default::default() })
            .await
            .map_err(refused("the vsock device"))?;
        if let Some((net, tap)) = spec.network.as_ref().and_then(|n| Some((n, n.tap.as_deref()?))) {
            client
                .put_network_interface(&NetworkInterface {
                    iface_id: "eth0".into(),
                    host_dev_name: tap.into(),
                    guest_mac: Some(mac_string(net.mac)),
                    ..Default::default()
                })
                .await
                .map_err(refused("the network interface"))?;
        }
        Ok(())
    }

    /// Everything of a start up to a running VMM: directory, number, jail, cgroup, namespace,
    /// process, API. The record is written as soon as the process exists.
    async fn launch_inner(
        &self,
        spec: &VmSpec,
        p: &VmPaths,
        starting: &mut Spawned,
        made: &mut Made,
    ) -> Result<(usize, VmProcess), RuntimeError> {
        let jailed = self.cfg.jailer_bin.is_some();
        let number = self.prepare(p, spec, jailed, made).await?;
        let limits = FlatLimits {
            memory_bytes: u64::from(spec.mem_mb) * 1024 * 1024 + VMM_MEMORY_RESERVE,
            cpus: spec.cpu,
            pids_max: VMM_PIDS,
        };
        self.cgroups.create_flat(&spec.id, limits)?;
        // A jailed VMM joins a network namespace: the one holding the TAP the manager made for a
        // networked VM, else an empty one of its own. Unjailed, it stays in the host's.
        let netns = match spec.network.as_ref().and_then(|n| n.netns.clone()) {
            Some(theirs) if jailed => Some(theirs),
            _ if jailed && spec.network.is_none() => {
                let name = self.netns_name(&spec.id);
                create_netns(&name).await?;
                made.netns = Some(name.clone());
                Some(name)
            }
            _ => None,
        };
        let index = self.spawn_vmm(spec, p, number, netns.as_deref(), starting)?;
        let process = HostProcess::of_child(starting.child(index))
            .ok_or_else(|| RuntimeError::Boot("Firecracker exited immediately".into()))?;
        let record =
            VmProcess { pid: process.pid, start_time: process.start_time, number, jailed, netns: made.netns.clone() };
        vmm::write_record(&p.processes, &record)?;
        let client = Client::new(&p.api).with_timeout(API_CALL);
        tokio::select! {
            ready = client.wait_ready(API_READY) => {
                ready.map_err(|e| RuntimeError::Boot(format!("Firecracker's API did not come up: {e}")))?;
            }
            status = starting.child(index).wait() => {
                return Err(RuntimeError::Boot(format!("Firecracker exited at start ({})", exit_text(status))));
            }
        }
        Ok((index, record))
    }

    /// Brings VM `spec` up to a configured Firecracker (jailed, in its cgroup and namespace, every
    /// device set) and, with `instance_start`, starts the guest, without waiting for its agent:
    /// what snapshot seeding and a pool of ready VMMs build on (`start` waits for the agent).
    /// On failure everything it made is removed.
    pub async fn launch(&self, spec: &VmSpec, instance_start: bool) -> Result<VmHandle, RuntimeError> {
        let (p, dir_existed) = self.checked_paths(spec)?;
        let mut starting = Spawned::default();
        let mut made = Made::default();
        let launched = async {
            let (_, record) = self.launch_inner(spec, &p, &mut starting, &mut made).await?;
            let client = Client::new(&p.api).with_timeout(API_CALL);
            self.configure(&client, spec, record.number).await?;
            if instance_start {
                client.start().await.map_err(|e| vmm_refused("InstanceStart", e))?;
            }
            Ok::<_, RuntimeError>(record)
        };
        let outcome = launched.await;
        self.settle(&spec.id, &p, &mut starting, made, dir_existed, outcome).await
    }

    /// Ends a start: on success the VMM is handed over (it outlives this call and the manager); on
    /// failure everything the start made is removed ([`Self::abandon`]).
    async fn settle(
        &self,
        id: &str,
        p: &VmPaths,
        starting: &mut Spawned,
        made: Made,
        dir_existed: bool,
        outcome: Result<VmProcess, RuntimeError>,
    ) -> Result<VmHandle, RuntimeError> {
        match outcome {
            Ok(record) => {
                starting.release();
                Ok(handle_of(&record))
            }
            Err(e) => Err(self.abandon(id, p, starting, made, dir_existed, e).await),
        }
    }

    /// Removes what a failed start made and returns its error with the logs' tails.
    async fn abandon(
        &self,
        id: &str,
        p: &VmPaths,
        starting: &mut Spawned,
        made: Made,
        dir_existed: bool,
        error: RuntimeError,
    ) -> RuntimeError {
        let error = with_tails(error, p);
        starting.kill().await;
        if let Err(e) = self.teardown(id, p, made.netns.as_deref()).await {
            tracing::warn!(vm = %id, error = %e, "cleanup after a failed firecracker start");
        }
        if !dir_existed {
            if let Some(n) = made.number {
                self.claims.release(n, id);
            }
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        error
    }

    /// Removes a stopped VM's jail, cgroup, namespace, sockets and process record.
    async fn teardown(&self, id: &str, p: &VmPaths, netns: Option<&str>) -> Result<(), RuntimeError> {
        let mut first_err = None;
        if let Err(e) = self.cgroups.remove(id) {
            first_err.get_or_insert(e);
        }
        if let Err(e) = remove_tree(&p.jail_dir) {
            first_err.get_or_insert(e);
        }
        if let Some(name) = netns {
            if let Err(e) = delete_netns(name).await {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = vmm::remove_if_present(&p.processes) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops the VM's Firecracker: the agent's shutdown call, else Ctrl+Alt+Del; past
    /// [`GRACEFUL_STOP`] SIGKILL (noted in the console log).
    async fn stop_process(&self, p: &VmPaths, record: &VmProcess) -> Result<(), RuntimeError> {
        let client = Client::new(&p.api).with_timeout(Duration::from_secs(2));
        match client.instance_info().await.map(|info| info.state) {
            // No guest ever ran: nothing to quiesce.
            Ok(state) if state == rds_firecracker::STATE_NOT_STARTED => {
                return record.process().kill("Firecracker", FORCED_STOP).await;
            }
            // A paused guest cannot shut down: let it run to do so.
            Ok(state) if state == rds_firecracker::STATE_PAUSED => {
                if let Err(e) = client.resume().await {
                    tracing::warn!(pid = record.pid, error = %e, "cannot resume the paused VM to stop it");
                }
            }
            _ => {}
        }
        let ask = async {
            if !vm_common::request_agent_shutdown(&p.vsock, SHUTDOWN_CALL).await {
                tracing::warn!(
                    pid = record.pid,
                    "the guest agent did not accept the shutdown call; sending Ctrl+Alt+Del"
                );
                vmm::note_in_console(&p.console, "rds: the agent did not accept the shutdown call; sent Ctrl+Alt+Del");
                if let Err(e) = client.send_ctrl_alt_del().await {
                    tracing::warn!(pid = record.pid, error = %e, "SendCtrlAltDel failed");
                }
            }
        };
        let stop =
            GracefulStop { what: "Firecracker", console: &p.console, limit: GRACEFUL_STOP, forced_wait: FORCED_STOP };
        vmm::stop_gracefully(record.process(), stop, ask, async {}).await
    }

    /// Writes a full snapshot of paused VM `id` into `dest` (created; on the storage root's
    /// filesystem): Firecracker's state and memory, and a copy of the writable disk.
    pub async fn create_snapshot(&self, id: &str, dest: &Path) -> Result<SnapshotFiles, RuntimeError> {
        check_vm_id(id)?;
        let p = self.paths(id);
        let record = self.record(id, None).ok_or_else(|| RuntimeError::Stop(format!("VM {id} is not running")))?;
        let inside = p.jail.join(IN_SNAPSHOT);
        vmm::create_dir(&inside, 0o700)?;
        if record.jailed {
            let uid = record.number.uid();
            std::os::unix::fs::chown(&inside, Some(uid), Some(uid))
                .map_err(|e| RuntimeError::io(format!("cannot chown {}", inside.display()), e))?;
        }
        let files = SnapshotFiles { dir: dest.to_path_buf() };
        let made = async {
            self.client(id)
                .with_timeout(Duration::from_secs(120))
                .create_snapshot(&rds_firecracker::SnapshotCreateParams {
                    snapshot_type: Some(rds_firecracker::SnapshotType::Full),
                    snapshot_path: format!("{IN_SNAPSHOT}/vm.state"),
                    mem_file_path: format!("{IN_SNAPSHOT}/vm.mem"),
                })
                .await
                .map_err(|e| vmm_refused("the snapshot", e))?;
            vmm::create_dir(dest, 0o700)?;
            for (name, to) in [("vm.state", files.state()), ("vm.mem", files.memory())] {
                let from = inside.join(name);
                std::fs::rename(&from, &to)
                    .map_err(|e| RuntimeError::io(format!("cannot move {} to {}", from.display(), to.display()), e))?;
            }
            clone_file(&p.overlay, &files.overlay(), CloneMode::Auto)
        };
        let result = made.await;
        let _ = std::fs::remove_dir_all(&inside);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        result.map(|()| files)
    }

    /// Starts VM `spec` from `snapshot` (taken of a VM of the same image): the snapshot's disk
    /// becomes the VM's, Firecracker loads the state and memory and resumes the guest when
    /// `resume` (else it stays paused). Returns once Firecracker reports the VM loaded; the
    /// guest's agent was already up when the snapshot was taken. On failure nothing is left.
    pub async fn restore(
        &self,
        spec: &VmSpec,
        snapshot: &SnapshotFiles,
        resume: bool,
    ) -> Result<VmHandle, RuntimeError> {
        let (p, dir_existed) = self.checked_paths(spec)?;
        if spec.network.is_some() {
            return Err(RuntimeError::Unsupported("restoring a snapshot into a VM with network"));
        }
        if dir_existed {
            return Err(RuntimeError::InvalidSpec(format!("VM {} exists already", spec.id)));
        }
        vmm::create_vm_dir(&self.cfg.storage_root, &p.dir)?;
        let mut starting = Spawned::default();
        let mut made = Made::default();
        let restored = async {
            clone_file(&snapshot.overlay(), &p.overlay, CloneMode::Auto)?;
            let (_, record) = self.launch_inner(spec, &p, &mut starting, &mut made).await?;
            for (from, name) in [(snapshot.state(), "vm.state"), (snapshot.memory(), "vm.mem")] {
                let to = p.jail.join(name);
                std::fs::hard_link(&from, &to)
                    .or_else(|_| clone_file(&from, &to, CloneMode::Auto).map_err(std::io::Error::other))
                    .map_err(|e| RuntimeError::io(format!("cannot link {} to {}", from.display(), to.display()), e))?;
                if record.jailed {
                    let uid = record.number.uid();
                    std::os::unix::fs::chown(&to, Some(uid), Some(uid))
                        .map_err(|e| RuntimeError::io(format!("cannot chown {}", to.display()), e))?;
                }
            }
            Client::new(&p.api)
                .with_timeout(Duration::from_secs(120))
                .load_snapshot(&rds_firecracker::SnapshotLoadParams {
                    snapshot_path: "vm.state".into(),
                    mem_backend: Some(rds_firecracker::MemoryBackend {
                        backend_type: rds_firecracker::MemoryBackendType::File,
                        backend_path: "vm.mem".into(),
                    }),
                    resume_vm: Some(resume),
                    ..Default::default()
                })
                .await
                .map_err(|e| vmm_refused("the snapshot", e))?;
            Ok::<_, RuntimeError>(record)
        };
        let outcome = restored.await;
        self.settle(&spec.id, &p, &mut starting, made, false, outcome).await
    }
}

/// What a start made that a failure must remove beyond the jail and cgroup.
#[derive(Default)]
struct Made {
    number: Option<VmNumber>,
    netns: Option<String>,
}

fn handle_of(record: &VmProcess) -> VmHandle {
    VmHandle {
        pid: record.pid,
        start_time: record.start_time,
        extra: serde_json::to_value(record).expect("process records serialise"),
    }
}

/// A Firecracker API failure while doing `what`, with its `fault_message`.
fn vmm_refused(what: &str, e: rds_firecracker::Error) -> RuntimeError {
    match e.fault_message() {
        Some(fault) => RuntimeError::Vmm(format!("Firecracker refused {what}: {fault}")),
        None => RuntimeError::Boot(format!("Firecracker failed at {what}: {e}")),
    }
}

/// `error` with the tails of the console and Firecracker's log appended (boot and VMM errors).
fn with_tails(error: RuntimeError, p: &VmPaths) -> RuntimeError {
    let tails = |msg: String| {
        let mut msg = msg;
        for (what, path) in [("console", &p.console), ("firecracker.log", &p.vmm_log)] {
            let tail = vm_common::console_tail(path, LOG_TAIL);
            if !tail.is_empty() {
                msg.push_str(&format!("\n--- {what} (tail) ---\n{tail}"));
            }
        }
        msg
    };
    match error {
        RuntimeError::Boot(msg) => RuntimeError::Boot(tails(msg)),
        RuntimeError::Vmm(msg) => RuntimeError::Vmm(tails(msg)),
        other => other,
    }
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// `<program> --version`, e.g. `Firecracker v1.16.1` → `1.16.1`.
fn program_version(program: &Path) -> Result<String, RuntimeError> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| RuntimeError::io(format!("cannot run {} --version", program.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('v').filter(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        .map(String::from)
        .ok_or_else(|| {
            RuntimeError::InvalidSpec(format!("{} --version printed no version: {text:?}", program.display()))
        })
}

/// Removes a directory tree; a missing one is fine.
fn remove_tree(dir: &Path) -> Result<(), RuntimeError> {
    vmm::remove_vm_dir(dir)
}

/// Puts `from` at `to`: a hard link, else (another filesystem) a clone by `mode`.
fn clone_into(from: &Path, to: &Path, mode: CloneMode) -> Result<(), RuntimeError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => clone_file(from, to, mode),
        Err(e) => Err(RuntimeError::io(format!("cannot link {} to {}", from.display(), to.display()), e)),
    }
}

/// `ip netns add <name>` with loopback up.
async fn create_netns(name: &str) -> Result<(), RuntimeError> {
    let _ = delete_netns(name).await;
    ip(&["netns", "add", name]).await?;
    ip(&["-n", name, "link", "set", "lo", "up"]).await
}

/// `ip netns del <name>`; an absent one is fine.
async fn delete_netns(name: &str) -> Result<(), RuntimeError> {
    if !Path::new("/var/run/netns").join(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name]).await
}

async fn ip(args: &[&str]) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| RuntimeError::io("cannot run ip (install iproute2)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Boot(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Waits for the agent's call on `ready` (see [`READY_VSOCK_PORT`]), then connects to it.
async fn wait_for_agent(ready: &tokio::net::UnixListener, vsock: &Path) -> Result<(), String> {
    ready.accept().await.map_err(|e| format!("waiting for the readiness call: {e}"))?;
    rds_vsock::connect(vsock, AGENT_VSOCK_PORT, AGENT_CONNECT).await.map(drop).map_err(|e| e.to_string())
}

fn check_spec(spec: &VmSpec) -> Result<(), RuntimeError> {
    vm_common::check_microvm_spec(spec, MAX_VCPUS, MIN_MEM_MB, "firecracker")?;
    if let Some(netns) = spec.network.as_ref().and_then(|n| n.netns.as_deref()) {
        let name_ok = (1..=64).contains(&netns.len()) && netns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok || !Path::new("/var/run/netns").join(netns).exists() {
            return Err(RuntimeError::InvalidSpec(format!("{netns:?} is not a network namespace in /var/run/netns")));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Runtime for FirecrackerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Firecracker
    }

    fn isolation(&self) -> Isolation {
        Isolation::Microvm
    }

    fn link_kind(&self) -> crate::LinkKind {
        // Jailed, the VMM runs in a namespace of its own, where the TAP must be; unjailed it opens
        // a TAP in the host's.
        if self.cfg.jailer_bin.is_some() {
            crate::LinkKind::NetnsTap
        } else {
            crate::LinkKind::Tap
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { snapshots: Some(SnapshotKind::Memory), pause: true, network: true }
    }

    fn boot_needs(&self) -> BootNeeds {
        BOOT_NEEDS
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError> {
        let (p, dir_existed) = self.checked_paths(spec)?;
        let mut starting = Spawned::default();
        let mut made = Made::default();
        let started = async {
            let (index, record) = self.launch_inner(spec, &p, &mut starting, &mut made).await?;
            // Bound before the guest boots; the jailed VMM (the VM's uid) connects to it.
            let ready = tokio::net::UnixListener::bind(&p.ready)
                .map_err(|e| RuntimeError::io(format!("cannot listen on {}", p.ready.display()), e))?;
            if record.jailed {
                let uid = record.number.uid();
                std::os::unix::fs::chown(&p.ready, Some(uid), Some(uid))
                    .map_err(|e| RuntimeError::io(format!("cannot chown {}", p.ready.display()), e))?;
            }
            let client = Client::new(&p.api).with_timeout(API_CALL);
            self.configure(&client, spec, record.number).await?;
            client.start().await.map_err(|e| vmm_refused("InstanceStart", e))?;
            let timeout = self.cfg.boot_timeout;
            let booted = tokio::time::timeout(timeout, wait_for_agent(&ready, &p.vsock));
            let outcome = tokio::select! {
                booted = booted => booted
                    .map_err(|_| format!("no readiness call from the guest within {timeout:?}"))
                    .and_then(|r| r)
                    .map_err(|e| RuntimeError::Boot(format!("the agent did not come up: {e}"))),
                status = starting.child(index).wait() => {
                    Err(RuntimeError::Boot(format!("Firecracker exited during boot ({})", exit_text(status))))
                }
            };
            drop(ready);
            let _ = std::fs::remove_file(&p.ready);
            outcome.map(|()| record)
        };
        let outcome = started.await;
        self.settle(&spec.id, &p, &mut starting, made, dir_existed, outcome).await
    }

    async fn stop(&self, id: &str, handle: &VmHandle) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        let p = self.paths(id);
        let record = self.record(id, Some(handle));
        match &record {
            Some(record) => self.stop_process(&p, record).await?,
            None => {
                let process = HostProcess { pid: handle.pid, start_time: handle.start_time };
                if process.signal(Signal::SIGKILL) {
                    tracing::error!(pid = handle.pid, "no process record for this VM; Firecracker killed");
                    process.wait_gone(FORCED_STOP).await;
                }
            }
        }
        self.teardown(id, &p, record.as_ref().and_then(|r| r.netns.as_deref())).await
    }

    async fn destroy(&self, id: &str, handle: Option<&VmHandle>) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        let p = self.paths(id);
        let record = self.record(id, handle);
        if let Some(record) = &record {
            self.stop_process(&p, record).await?;
        }
        // A VM stopped earlier has no record: its namespace (if any) went with that stop.
        let netns = record.as_ref().and_then(|r| r.netns.clone()).or_else(|| {
            let name = self.netns_name(id);
            Path::new("/var/run/netns").join(&name).exists().then_some(name)
        });
        self.teardown(id, &p, netns.as_deref()).await?;
        if let Some(n) = self.claims.held_by(id) {
            self.claims.release(n, id);
        }
        vmm::remove_vm_dir(&p.dir)
    }

    async fn probe(&self, id: &str, handle: &VmHandle) -> Liveness {
        if !crate::is_valid_vm_id(id) {
            return Liveness::Dead(format!("invalid VM id {id:?}"));
        }
        let process = HostProcess { pid: handle.pid, start_time: handle.start_time };
        if !process.is_alive() {
            return Liveness::Dead(format!("Firecracker pid {} is gone (or is another process now)", handle.pid));
        }
        // The API answering says the process is a working Firecracker. A running guest must also
        // have its agent answering; a paused (or not yet started) one cannot.
        match self.client(id).with_timeout(PROBE_API).instance_info().await {
            Ok(info) if info.state == rds_firecracker::STATE_RUNNING => {
                vm_common::probe(id, handle, "Firecracker", &self.agent_socket(id)).await
            }
            Ok(_) => Liveness::Alive,
            Err(e) => Liveness::Dead(format!("Firecracker's API does not answer: {e}")),
        }
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.paths(id).vsock
    }

    fn bridge_socket(&self, id: &str) -> PathBuf {
        rds_vsock::host_side_path(&self.paths(id).vsock, BRIDGE_VSOCK_PORT)
    }

    fn console_log(&self, id: &str) -> PathBuf {
        self.paths(id).console
    }

    fn log_file(&self, id: &str, kind: crate::LogKind) -> Option<PathBuf> {
        let p = self.paths(id);
        Some(match kind {
            crate::LogKind::Console => p.console,
            crate::LogKind::Vmm => p.vmm_log,
            crate::LogKind::Metrics => p.metrics,
        })
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        self.client(id).pause().await.map_err(|e| vmm_refused("pausing the VM", e))
    }

    async fn recover(&self, id: &str, _handle: &VmHandle) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        // A snapshot pauses the VM while it writes; a crash in between leaves it paused.
        let info = self.client(id).instance_info().await.map_err(|e| vmm_refused("reading the VM's state", e))?;
        if info.state == rds_firecracker::STATE_PAUSED {
            self.resume(id).await?;
            tracing::warn!(vm_id = %id, "resumed a VM a snapshot left paused");
        }
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        self.client(id).resume().await.map_err(|e| vmm_refused("resuming the VM", e))
    }

    async fn snapshot(
        &self,
        id: &str,
        _handle: &VmHandle,
        dir: &Path,
        memory: bool,
    ) -> Result<SnapshotKind, RuntimeError> {
        check_vm_id(id)?;
        vm_common::check_new_snapshot_dir(dir)?;
        let p = self.paths(id);
        vm_common::sync_guest(&p.vsock).await?;
        self.pause(id).await?;
        let written = if memory {
            self.create_snapshot(id, dir).await.map(|_| SnapshotKind::Memory)
        } else {
            // Paused, the guest writes nothing more: the copy is what it had synced, plus
            // whatever the journal makes consistent.
            vmm::create_dir(dir, 0o700)
                .and_then(|()| {
                    clone_file(&p.overlay, &SnapshotFiles { dir: dir.to_path_buf() }.overlay(), CloneMode::Auto)
                })
                .map(|()| SnapshotKind::Disk)
        };
        let resumed = self.resume(id).await;
        if written.is_err() || resumed.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let kind = written?;
        resumed.map(|()| kind)
    }

    async fn start_from_snapshot(
        &self,
        spec: &VmSpec,
        dir: &Path,
        kind: SnapshotKind,
    ) -> Result<VmHandle, RuntimeError> {
        let files = SnapshotFiles { dir: dir.to_path_buf() };
        match kind {
            SnapshotKind::Memory => {
                let handle = self.restore(spec, &files, true).await?;
                if let Err(e) = vm_common::give_identity(&self.paths(&spec.id).vsock, spec).await {
                    let _ = self.destroy(&spec.id, Some(&handle)).await;
                    return Err(with_tails(e, &self.paths(&spec.id)));
                }
                Ok(handle)
            }
            SnapshotKind::Disk => {
                self.check_socket_paths(&spec.id)?;
                let vm_disk = self.paths(&spec.id).overlay;
                vm_common::start_on_disk_copy(self, &self.cfg.storage_root, spec, &files.overlay(), &vm_disk).await
            }
        }
    }

    async fn oom_kills(&self, id: &str) -> Option<u64> {
        // Kills of the VMM by its cgroup (the guest's own OOM kills are inside the guest).
        self.cgroups.oom_kills(id)
    }

    async fn remove_orphans(&self, known: &HashSet<String>) -> Vec<String> {
        let mut names = vmm::vm_dir_names(&self.cfg.storage_root);
        let jails = self.cfg.storage_root.join("jail").join("firecracker");
        if let Ok(entries) = std::fs::read_dir(&jails) {
            names.extend(entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)));
        }
        names.extend(self.cgroups.vm_ids());
        names.extend(self.claims.owned().into_iter().map(|(_, id)| id));
        let prefix = format!("{}-", self.cfg.cgroup_group);
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            let ours =
                entries.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix).map(String::from));
            names.extend(ours);
        }
        names.sort();
        names.dedup();
        vmm::remove_orphans(names, known, "Firecracker VM", |id| async move { self.destroy(&id, None).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmNetwork;

    #[test]
    fn versions_are_read_from_the_first_v_word() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fc");
        std::fs::write(&script, "#!/bin/sh\necho 'Firecracker v1.16.1'\necho\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(program_version(&script).unwrap(), "1.16.1");
    }

    #[test]
    fn boot_args_carry_hostname_overlay_and_network() {
        let mut spec = VmSpec { id: "vm-1".into(), hostname: "box".into(), ..Default::default() };
        let args = FirecrackerRuntime::boot_args(&spec);
        assert!(args.contains("reboot=k") && args.contains("rds.hostname=box"), "{args}");
        assert!(args.contains("rds.overlay=rds-overlay") && !args.contains("rds.net="), "{args}");
        assert!(!args.contains("rds.warm="), "{args}");
        let warm = FirecrackerRuntime::boot_args(&VmSpec { warm_interpreters: Some(2), ..spec.clone() });
        assert!(warm.contains(" rds.warm=2"), "{warm}");
        spec.network = Some(VmNetwork {
            guest_ip: "10.213.0.6".parse().unwrap(),
            host_ip: "10.213.0.5".parse().unwrap(),
            prefix: 30,
            mac: [2, 0xab, 0, 0, 0, 1],
            tap: Some("rdsv1".into()),
            netns: None,
        });
        assert!(FirecrackerRuntime::boot_args(&spec).contains(" rds.net=10.213.0.6/30,10.213.0.5"));
        check_spec(&VmSpec { cpu: 1, mem_mb: 256, ..spec.clone() }).unwrap();
        let bad =
            VmSpec { network: Some(VmNetwork { tap: Some("x,y".into()), ..spec.network.clone().unwrap() }), ..spec };
        assert!(matches!(check_spec(&bad), Err(RuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn clones_copy_across_filesystems_and_reflink_mode_fails_where_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        std::fs::write(&from, b"image bytes").unwrap();
        let to = dir.path().join("b");
        clone_file(&from, &to, CloneMode::Auto).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"image bytes");
        let copied = dir.path().join("c");
        clone_file(&from, &copied, CloneMode::Copy).unwrap();
        assert_eq!(std::fs::read(&copied).unwrap(), b"image bytes");
        // A link within a filesystem is a link.
        let linked = dir.path().join("d");
        clone_into(&from, &linked, CloneMode::Copy).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&linked).unwrap().ino(), std::fs::metadata(&from).unwrap().ino());
    }
}
