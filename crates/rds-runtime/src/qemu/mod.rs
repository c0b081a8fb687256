//! The qemu runtime: the real guest image (kernel, initramfs, ext4 rootfs, agent as PID 1) on
//! QEMU's `microvm` machine, with KVM when it can run a guest and TCG emulation otherwise.
//!
//! Layout of one VM, `<storage_root>/vms/<id>/` (0700, root):
//!
//! | entry | what |
//! |---|---|
//! | `overlay.ext4` | sparse ext4 disk (label `rds-overlay`) holding the guest's writes, `/workspace` included; kept across stop/start |
//! | `vsock.sock` | hybrid-vsock socket of `vhost-device-vsock`: the host end of the agent ([`Runtime::agent_socket`]) |
//! | `vsock.sock_<port>` | guest→host connections to `<port>` arrive here; the manager binds `vsock.sock_1025` (bridge) |
//! | `vhost-user.sock` | vhost-user control socket between QEMU and `vhost-device-vsock` |
//! | `qmp.sock` | QEMU's QMP control socket |
//! | `processes.json` | pids + start times of QEMU and the vsock backend (also in [`VmHandle::extra`]) |
//! | `console.log` | serial console, QEMU's and the backend's stderr (capped at 1 MiB, see [`crate::cap_console_log`]) |
//!
//! Both processes run in their own session so a manager restart leaves them running; the
//! [`VmHandle`] (QEMU's pid + start time, plus the backend's in `extra`) re-adopts them.
//! A networked VM gets the manager's TAP as a `virtio-net-device`; the guest addresses itself from
//! `rds.net=` on its kernel command line.

mod accel;
pub mod qmp;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rds_proto::{AGENT_VSOCK_PORT, BRIDGE_VSOCK_PORT, READY_VSOCK_PORT};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub use accel::{kvm_boots_guests, Accel, AccelChoice};

use crate::process::HostProcess;
use crate::vmm::{self, GracefulStop, Spawned};
use crate::{check_vm_id, Liveness, Runtime, RuntimeError, RuntimeKind, VmHandle, VmNetwork, VmSpec};
use crate::{
    vm_common, BootNeeds, Capabilities, Isolation, KernelFormat, RootfsForm, RuntimeEntry, RuntimeSettings, Unavailable,
};

/// The guest's vsock CID. Each VM has its own backend process, so CIDs never meet.
pub const GUEST_CID: u32 = 3;
/// ext4 label of the per-VM overlay disk; the initramfs finds it through `rds.overlay=`.
pub const OVERLAY_LABEL: &str = "rds-overlay";
/// Smallest memory size accepted (kernel + initramfs + agent).
const MIN_MEM_MB: u32 = 128;
/// How long the vsock backend gets to create its vhost-user socket.
const BACKEND_READY: Duration = Duration::from_secs(5);
/// How long a KVM guest gets to power off by itself once asked (see [`graceful_stop`]).
const GRACEFUL_STOP_KVM: Duration = Duration::from_secs(30);
/// The same under TCG, where every guest instruction is emulated and a host running many VMs
/// may stop several at once.
const GRACEFUL_STOP_TCG: Duration = Duration::from_secs(120);
/// How long the agent's shutdown call may take (connect, request, status line).
const SHUTDOWN_CALL: Duration = Duration::from_secs(10);
/// How long QEMU gets to exit after QMP `quit` / SIGKILL.
const FORCED_STOP: Duration = Duration::from_secs(3);
/// How long the first handshake with a guest that announced itself may take.
const AGENT_CONNECT: Duration = Duration::from_secs(10);
/// How much of the console log a boot error quotes.
const CONSOLE_TAIL: u64 = 3072;
/// How long a VM may take to boot (TCG emulation is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The QEMU program, found on `PATH` (see [`QemuRuntime::new`]).
const QEMU_BIN: &str = "qemu-system-x86_64";
/// The vhost-user vsock backend, found on `PATH` or in `~/.cargo/bin`.
const VSOCK_BACKEND_BIN: &str = "vhost-device-vsock";

/// What the qemu runtime boots from a guest image.
const BOOT_NEEDS: BootNeeds = BootNeeds {
    // The ELF boots faster (PVH entry, no self-decompression); QEMU takes either.
    kernels: &[KernelFormat::Elf, KernelFormat::BzImage],
    initrd: true,
    rootfs: RootfsForm::Ext4File,
    // A VM without an image boots the configured one, which the runtime cannot exist without.
    default_root: true,
};

/// How the manager's selector builds the qemu runtime.
pub const ENTRY: RuntimeEntry = RuntimeEntry { kind: RuntimeKind::Qemu, auto: auto_choice, build };

/// `RDS_RUNTIME=auto` takes qemu only with a guest image and a KVM that boots ordinary guests: an
/// image alone never moves `auto` onto TCG emulation (`RDS_RUNTIME=qemu` asks for that).
fn auto_choice(settings: &RuntimeSettings) -> Result<(), String> {
    if settings.image.is_none() {
        // Without an image there is nothing for a VM to boot.
        return Err("no guest image is configured".into());
    }
    if !kvm_boots_guests() {
        return Err("no KVM that boots ordinary guests here (RDS_RUNTIME=qemu runs qemu under TCG emulation)".into());
    }
    Ok(())
}

/// Builds the runtime over the configured guest image and starts the accelerator probe.
fn build(settings: &RuntimeSettings) -> Result<Arc<dyn Runtime>, Unavailable> {
    let runtime = Arc::new(QemuRuntime::from_settings(settings)?);
    // The KVM probe boots a kernel (up to seconds); run it now rather than in the first create.
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let probing = runtime.clone();
        handle.spawn(async move {
            let accel = probing.accel().await;
            tracing::info!(accel = accel.as_str(), "qemu accelerator chosen");
        });
    }
    Ok(runtime)
}

/// Settings of the qemu runtime.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The manager's storage root; VMs live in `<storage_root>/vms/<id>/`.
    pub storage_root: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu_bin: PathBuf,
    /// `vhost-device-vsock`.
    pub vsock_backend_bin: PathBuf,
    /// The guest kernel: the image's ELF `vmlinux` (PVH entry, boots ~0.3 s faster under TCG than
    /// the self-decompressing bzImage `vmlinuz`, which also works).
    pub kernel: PathBuf,
    /// The image's initramfs (`initrd.img`).
    pub initrd: PathBuf,
    /// The read-only base root filesystem (`rootfs.ext4`), shared by all VMs.
    pub base_rootfs: PathBuf,
    /// KVM, TCG or probe.
    pub accel: AccelChoice,
    /// How long `start` waits for the agent (TCG boots take seconds).
    pub boot_timeout: Duration,
}

impl QemuConfig {
    /// Defaults for an image directory as `rds-image` writes it (`vmlinux` or else `vmlinuz`,
    /// `initrd.img`, `rootfs.ext4`).
    pub fn from_image_dir(storage_root: PathBuf, image_dir: &Path) -> Self {
        let kernel = BOOT_NEEDS
            .kernels
            .iter()
            .map(|k| image_dir.join(k.file_name()))
            .find(|p| p.is_file())
            .unwrap_or_else(|| image_dir.join(crate::boot::KERNEL_ELF));
        QemuConfig::with_image(
            storage_root,
            kernel,
            image_dir.join(crate::boot::INITRD),
            image_dir.join(crate::boot::ROOTFS),
        )
    }

    /// Defaults for these image files.
    pub fn with_image(storage_root: PathBuf, kernel: PathBuf, initrd: PathBuf, base_rootfs: PathBuf) -> Self {
        QemuConfig {
            storage_root,
            qemu_bin: PathBuf::from(QEMU_BIN),
            vsock_backend_bin: PathBuf::from(VSOCK_BACKEND_BIN),
            kernel,
            initrd,
            base_rootfs,
            accel: AccelChoice::Auto,
            boot_timeout: BOOT_TIMEOUT,
        }
    }
}

/// Host processes of one running VM, persisted in `processes.json` and in the handle's `extra`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmProcesses {
    /// QEMU's pid.
    pub qemu_pid: i32,
    /// QEMU's start time.
    pub qemu_start_time: u64,
    /// `vhost-device-vsock`'s pid.
    pub backend_pid: i32,
    /// Its start time.
    pub backend_start_time: u64,
    /// The accelerator QEMU runs with.
    pub accel: Accel,
    /// The guest's vsock CID.
    pub cid: u32,
}

impl VmProcesses {
    /// The QEMU process.
    fn qemu(&self) -> HostProcess {
        HostProcess { pid: self.qemu_pid, start_time: self.qemu_start_time }
    }

    /// The vsock backend process.
    fn backend(&self) -> HostProcess {
        HostProcess { pid: self.backend_pid, start_time: self.backend_start_time }
    }
}

/// The QEMU `microvm` runtime.
pub struct QemuRuntime {
    cfg: QemuConfig,
    accel: OnceCell<Accel>,
}

/// Paths of one VM.
struct VmPaths {
    dir: PathBuf,
    overlay: PathBuf,
    vsock: PathBuf,
    vhost_user: PathBuf,
    /// Where the guest's readiness call arrives while it boots (`vsock.sock_1026`).
    ready: PathBuf,
    qmp: PathBuf,
    processes: PathBuf,
    console: PathBuf,
}

impl VmPaths {
    /// Sockets that only live while the VM runs (the manager owns `vsock.sock_1025`).
    fn runtime_sockets(&self) -> [&Path; 4] {
        [&self.vsock, &self.vhost_user, &self.ready, &self.qmp]
    }
}

impl QemuRuntime {
    /// The runtime over the manager's configured guest image (which it needs).
    pub fn from_settings(settings: &RuntimeSettings) -> Result<Self, Unavailable> {
        let Some(image) = &settings.image else {
            return Err(Unavailable::Missing {
                setting: "RDS_IMAGE_DIR",
                reason: "it needs a guest image: set RDS_IMAGE_DIR (from `rds image build`) \
                         or KERNEL_PATH, INITRD_PATH and BASE_ROOTFS_PATH"
                    .into(),
            });
        };
        let cfg = QemuConfig::with_image(
            settings.storage_root.clone(),
            image.kernel.clone(),
            image.initrd.clone(),
            image.rootfs.clone(),
        );
        Ok(QemuRuntime::new(cfg)?)
    }

    /// Creates the runtime after checking that its programs and image files exist.
    pub fn new(cfg: QemuConfig) -> Result<Self, RuntimeError> {
        for (what, path) in [("kernel", &cfg.kernel), ("initrd", &cfg.initrd), ("base rootfs", &cfg.base_rootfs)] {
            if !path.is_file() {
                return Err(RuntimeError::InvalidSpec(format!("the guest {what} {} is not a file", path.display())));
            }
        }
        let mut cfg = cfg;
        for (what, bin) in [("QEMU", &mut cfg.qemu_bin), ("vsock backend", &mut cfg.vsock_backend_bin)] {
            // Resolved now: the processes are spawned with a minimal environment.
            *bin = find_program(bin).ok_or_else(|| {
                RuntimeError::InvalidSpec(format!(
                    "the {what} {} was not found (install qemu-system-x86 / `cargo install --locked vhost-device-vsock`)",
                    bin.display()
                ))
            })?;
        }
        Ok(QemuRuntime { cfg, accel: OnceCell::new() })
    }

    /// The directory holding everything of VM `id`.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        vmm::vm_dir(&self.cfg.storage_root, id)
    }

    /// The accelerator VMs of this runtime use (probed once when `Auto`).
    pub async fn accel(&self) -> Accel {
        *self
            .accel
            .get_or_init(|| async {
                match self.cfg.accel {
                    AccelChoice::Kvm => Accel::Kvm,
                    AccelChoice::Tcg => Accel::Tcg,
                    AccelChoice::Auto => {
                        // Host-wide: the verdict is the host's, whichever manager asks.
                        let cache = Path::new(accel::PROBE_CACHE);
                        if accel::kvm_boots(&self.cfg.qemu_bin, &self.cfg.kernel, cache).await {
                            Accel::Kvm
                        } else {
                            tracing::info!("KVM cannot boot a guest here; QEMU VMs use TCG emulation");
                            Accel::Tcg
                        }
                    }
                }
            })
            .await
    }

    fn paths(&self, id: &str) -> VmPaths {
        let dir = self.vm_dir(id);
        let vsock = dir.join("vsock.sock");
        VmPaths {
            overlay: dir.join("overlay.ext4"),
            ready: rds_vsock::host_side_path(&vsock, READY_VSOCK_PORT),
            vsock,
            vhost_user: dir.join("vhost-user.sock"),
            qmp: dir.join("qmp.sock"),
            processes: dir.join("processes.json"),
            console: dir.join("console.log"),
            dir,
        }
    }

    /// Readies the VM directory; a first start makes its overlay disk of `disk_mb` MiB.
    async fn prepare(&self, p: &VmPaths, disk_mb: u32) -> Result<(), RuntimeError> {
        vmm::create_vm_dir(&self.cfg.storage_root, &p.dir)?;
        vmm::cap_console(&p.console);
        for sock in p.runtime_sockets() {
            vmm::remove_if_present(sock)?;
        }
        if !p.overlay.exists() {
            vmm::make_ext4_disk(&p.overlay, u64::from(disk_mb), &["-L", OVERLAY_LABEL], None).await?;
        }
        Ok(())
    }

    /// Starts `vhost-device-vsock` for this VM and waits for its vhost-user socket; returns its
    /// index in `starting`.
    async fn spawn_backend(&self, p: &VmPaths, starting: &mut Spawned) -> Result<usize, RuntimeError> {
        let (out, err) = vmm::console_output(&p.console)?;
        let mut cmd = vmm::detached(&self.cfg.vsock_backend_bin);
        cmd.arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&p.vhost_user)
            .arg("--uds-path")
            .arg(&p.vsock)
            // Its warnings fire on every handshake attempt while the guest boots.
            .env("RUST_LOG", "error")
            .stdout(out)
            .stderr(err);
        let index = starting
            .spawn(&mut cmd)
            .map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.vsock_backend_bin.display())))?;
        let child = starting.child(index);
        let end = tokio::time::Instant::now() + BACKEND_READY;
        while !p.vhost_user.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(RuntimeError::Boot(format!("vhost-device-vsock exited at start ({status})")));
            }
            if tokio::time::Instant::now() >= end {
                return Err(RuntimeError::Boot(format!(
                    "vhost-device-vsock did not create {}",
                    p.vhost_user.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(index)
    }

    /// QEMU's command line for `spec`.
    fn qemu_args(&self, spec: &VmSpec, p: &VmPaths, accel: Accel) -> Vec<String> {
        let base = spec.rootfs.as_deref().unwrap_or(&self.cfg.base_rootfs);
        let kernel = spec.kernel.as_deref().unwrap_or(&self.cfg.kernel);
        let initrd = spec.initrd.as_deref().unwrap_or(&self.cfg.initrd);
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "reboot=t".into(),
            "panic=-1".into(),
            "quiet".into(),
            // Crypto self-tests are a FIPS/debugging aid; under TCG they cost ~0.4 s of every boot.
            "cryptomgr.notests".into(),
            // Boot-time trims for a machine with one serial port, no PCI and no audit daemon;
            // expedited RCU grace periods shorten module loading and mounts (~0.1 s under TCG).
            "rcupdate.rcu_expedited=1".into(),
            "8250.nr_uarts=1".into(),
            "pci=off".into(),
            "audit=0".into(),
            format!("rds.hostname={}", spec.hostname),
            format!("rds.overlay={OVERLAY_LABEL}"),
        ];
        if let Some(net) = &spec.network {
            cmdline.push(net.guest().to_param());
        }
        if accel == Accel::Tcg {
            // TCG guests cannot calibrate against the PIT (no timer interrupts that early): the
            // delay loop hangs without `lpj`, and the APIC timer calibration without a known TSC
            // rate. TCG's TSC follows the host clock, so it is reliable once its rate is given.
            cmdline
                .extend(["lpj=4000000", "no_timer_check", "tsc_early_khz=2000000", "tsc=reliable"].map(String::from));
        }
        let mem = spec.mem_mb;
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("rds-{}", spec.id),
            "-machine".into(),
            "microvm,pit=on,pic=on,rtc=on,memory-backend=mem".into(),
            "-accel".into(),
            accel.as_str().into(),
        ];
        if accel == Accel::Kvm {
            args.extend(["-cpu".into(), "host".into()]);
        }
        args.extend([
            "-smp".into(),
            spec.cpu.to_string(),
            "-m".into(),
            format!("{mem}M"),
            // vhost-user needs guest memory the backend can map: a shared memfd.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            path_arg(kernel),
            "-initrd".into(),
            path_arg(initrd),
            "-append".into(),
            cmdline.join(" "),
            "-chardev".into(),
            format!("file,id=console,path={},append=on", qemu_path(&p.console)),
            "-serial".into(),
            "chardev:console".into(),
            "-drive".into(),
            format!("if=none,id=base,format=raw,readonly=on,file={}", qemu_path(base)),
            "-device".into(),
            "virtio-blk-device,drive=base".into(),
            "-drive".into(),
            format!("if=none,id=overlay,format=raw,file={}", qemu_path(&p.overlay)),
            "-device".into(),
            "virtio-blk-device,drive=overlay".into(),
            "-chardev".into(),
            format!("socket,id=vsock,path={}", qemu_path(&p.vhost_user)),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qemu_path(&p.qmp)),
        ]);
        args.extend(network_args(spec.network.as_ref()));
        args
    }

    async fn start_inner(&self, spec: &VmSpec, p: &VmPaths, starting: &mut Spawned) -> Result<VmHandle, RuntimeError> {
        self.prepare(p, spec.disk_mb).await?;
        let accel = self.accel().await;
        // Bound before the backend starts, which forwards the guest's call here.
        let ready = tokio::net::UnixListener::bind(&p.ready)
            .map_err(|e| RuntimeError::io(format!("cannot listen on {}", p.ready.display()), e))?;
        let backend_index = self.spawn_backend(p, starting).await?;
        let (out, err) = vmm::console_output(&p.console)?;
        let mut cmd = vmm::detached(&self.cfg.qemu_bin);
        cmd.args(self.qemu_args(spec, p, accel)).stdout(out).stderr(err);
        let qemu_index = starting
            .spawn(&mut cmd)
            .map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.qemu_bin.display())))?;

        let qemu = HostProcess::of_child(starting.child(qemu_index))
            .ok_or_else(|| RuntimeError::Boot("QEMU exited immediately".into()))?;
        let backend = HostProcess::of_child(starting.child(backend_index))
            .ok_or_else(|| RuntimeError::Boot("vhost-device-vsock exited".into()))?;
        let procs = VmProcesses {
            qemu_pid: qemu.pid,
            qemu_start_time: qemu.start_time,
            backend_pid: backend.pid,
            backend_start_time: backend.start_time,
            accel,
            cid: GUEST_CID,
        };
        // Written before waiting for the guest, so a manager crash mid-boot still leaves a record.
        vmm::write_record(&p.processes, &procs)?;

        let qemu = starting.child(qemu_index);
        let booted = tokio::time::timeout(self.cfg.boot_timeout, wait_for_agent(&ready, &p.vsock));
        let outcome = tokio::select! {
            booted = booted => booted
                .map_err(|_| format!("no readiness call within {:?}", self.cfg.boot_timeout))
                .and_then(|r| r)
                .map_err(|e| RuntimeError::Boot(format!("the agent did not come up ({}): {e}", accel.as_str()))),
            status = qemu.wait() => match status {
                Ok(status) => Err(RuntimeError::Boot(format!("QEMU exited during boot ({status})"))),
                Err(e) => Err(RuntimeError::io("cannot wait for QEMU", e)),
            },
        };
        // Booted or not, nobody listens on the readiness port from here on.
        drop(ready);
        let _ = std::fs::remove_file(&p.ready);
        outcome?;
        Ok(VmHandle {
            pid: procs.qemu_pid,
            start_time: procs.qemu_start_time,
            extra: serde_json::to_value(&procs).expect("processes serialise"),
        })
    }

    /// The VM's processes: from the handle, else from `processes.json`.
    fn processes(&self, id: &str, handle: Option<&VmHandle>) -> Option<VmProcesses> {
        vmm::read_record(handle.map(|h| &h.extra), &self.paths(id).processes)
    }

    /// Asks the guest to shut down (agent `POST /shutdown`, else the ACPI power button) and waits
    /// for QEMU to exit by itself once the guest powered off; only past [`graceful_stop`] is QEMU
    /// forced down (QMP `quit`, SIGKILL), logged as an error and noted in the console log. Then
    /// ends the vsock backend.
    async fn stop_processes(&self, p: &VmPaths, procs: &VmProcesses) -> Result<(), RuntimeError> {
        let qemu = procs.qemu();
        let pid = qemu.pid;
        let ask = async {
            if !vm_common::request_agent_shutdown(&p.vsock, SHUTDOWN_CALL).await {
                // The image's guest has no ACPI button driver: unless it is already shutting down,
                // this ends in the forced stop.
                tracing::warn!(pid, "the guest agent did not accept the shutdown call; pressing the ACPI power button");
                if let Err(e) = qmp::execute(&p.qmp, "system_powerdown", Duration::from_secs(2)).await {
                    tracing::warn!(pid, error = %e, "QMP system_powerdown failed");
                }
            }
        };
        let force = async {
            let _ = qmp::execute(&p.qmp, "quit", Duration::from_secs(2)).await;
        };
        let stop = GracefulStop {
            what: "QEMU",
            console: &p.console,
            limit: graceful_stop(procs.accel),
            forced_wait: FORCED_STOP,
        };
        vmm::stop_gracefully(qemu, stop, ask, force).await?;
        procs.backend().terminate("vhost-device-vsock", FORCED_STOP, FORCED_STOP).await
    }
}

/// The VM's network device: the manager's TAP as a `virtio-net-device` with the VM's MAC (the
/// TAP name was checked by [`check_spec`]). The guest addresses itself from `rds.net=`.
fn network_args(network: Option<&VmNetwork>) -> Vec<String> {
    let Some((net, tap)) = network.and_then(|n| Some((n, n.tap.as_deref()?))) else { return Vec::new() };
    let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
    vec![
        "-netdev".into(),
        format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={mac}"),
    ]
}

/// A path as one QEMU option value: commas are doubled, QEMU's escape inside option strings.
fn qemu_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `program` if it is a path to a file, else its location on `PATH`, in `/usr/local/bin` or where
/// `cargo install` puts vhost-device-vsock.
fn find_program(program: &Path) -> Option<PathBuf> {
    rds_host::find_program(program, &[PathBuf::from("/usr/local/bin"), rds_host::cargo_install_dir()])
}

/// Waits for the agent's call on `ready` (see [`READY_VSOCK_PORT`]), then connects to it.
///
/// The host must not dial a guest before then: vhost-device-vsock 0.3.0 loses its vring worker
/// for good when a host connection arrives between the guest driver's memory-table and vring setup
/// (seen as a guest that boots but never answers), so readiness comes from the guest.
async fn wait_for_agent(ready: &tokio::net::UnixListener, vsock: &Path) -> Result<(), String> {
    ready.accept().await.map_err(|e| format!("waiting for the readiness call: {e}"))?;
    rds_vsock::connect(vsock, AGENT_VSOCK_PORT, AGENT_CONNECT).await.map(drop).map_err(|e| e.to_string())
}

/// How long a guest of `accel` gets to power off by itself after it was asked to.
fn graceful_stop(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => GRACEFUL_STOP_KVM,
        Accel::Tcg => GRACEFUL_STOP_TCG,
    }
}

fn check_spec(spec: &VmSpec) -> Result<(), RuntimeError> {
    vm_common::check_microvm_spec(spec, 64, MIN_MEM_MB, "qemu")
}

#[async_trait::async_trait]
impl Runtime for QemuRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Qemu
    }

    fn isolation(&self) -> Isolation {
        Isolation::Microvm
    }

    fn link_kind(&self) -> crate::LinkKind {
        crate::LinkKind::Tap
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { snapshots: None, pause: false, network: true }
    }

    fn boot_needs(&self) -> BootNeeds {
        BOOT_NEEDS
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError> {
        check_spec(spec)?;
        let p = self.paths(&spec.id);
        let dir_existed = p.dir.exists();
        let mut starting = Spawned::default();
        match self.start_inner(spec, &p, &mut starting).await {
            Ok(handle) => {
                starting.release();
                Ok(handle)
            }
            Err(e) => {
                let tail = vm_common::console_tail(&p.console, CONSOLE_TAIL);
                starting.kill().await;
                for sock in p.runtime_sockets() {
                    let _ = std::fs::remove_file(sock);
                }
                let _ = std::fs::remove_file(&p.processes);
                if !dir_existed {
                    let _ = std::fs::remove_dir_all(&p.dir);
                }
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
        let p = self.paths(id);
        if let Some(procs) = self.processes(id, Some(handle)) {
            self.stop_processes(&p, &procs).await?;
        } else {
            let qemu = HostProcess { pid: handle.pid, start_time: handle.start_time };
            if qemu.signal(Signal::SIGKILL) {
                // A handle without extras: at least QEMU goes.
                tracing::error!(
                    pid = handle.pid,
                    "no process record for this VM; QEMU killed without a guest shutdown"
                );
                qemu.wait_gone(FORCED_STOP).await;
            }
        }
        for sock in p.runtime_sockets() {
            vmm::remove_if_present(sock)?;
        }
        vmm::remove_if_present(&p.processes)
    }

    async fn destroy(&self, id: &str, handle: Option<&VmHandle>) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        let p = self.paths(id);
        if let Some(procs) = self.processes(id, handle) {
            self.stop_processes(&p, &procs).await?;
        }
        vmm::remove_vm_dir(&p.dir)
    }

    async fn probe(&self, id: &str, handle: &VmHandle) -> Liveness {
        vm_common::probe(id, handle, "QEMU", &self.agent_socket(id)).await
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

    async fn oom_kills(&self, _id: &str) -> Option<u64> {
        // OOM kills happen inside the guest kernel; the host cannot count them.
        None
    }

    async fn remove_orphans(&self, known: &HashSet<String>) -> Vec<String> {
        let names = vmm::vm_dir_names(&self.cfg.storage_root);
        vmm::remove_orphans(names, known, "QEMU VM", |id| async move { self.destroy(&id, None).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> QemuRuntime {
        let cfg = QemuConfig::from_image_dir(PathBuf::from("/var/lib/rds"), Path::new("/img"));
        QemuRuntime { cfg, accel: OnceCell::new() }
    }

    fn spec() -> VmSpec {
        VmSpec {
            id: "vm-1".into(),
            cpu: 2,
            mem_mb: 512,
            disk_mb: crate::DEFAULT_DISK_MB,
            rootfs: None,
            kernel: None,
            initrd: None,
            hostname: "box".into(),
            network: None,
        }
    }

    #[test]
    fn tcg_command_line_presets_the_delay_loop_and_kvm_does_not() {
        let rt = runtime();
        let p = rt.paths("vm-1");
        let tcg = rt.qemu_args(&spec(), &p, Accel::Tcg).join(" ");
        assert!(tcg.contains("-accel tcg") && tcg.contains("lpj=4000000 no_timer_check tsc_early_khz="), "{tcg}");
        assert!(tcg.contains("memory-backend-memfd,id=mem,size=512M,share=on"), "{tcg}");
        assert!(tcg.contains("rds.overlay=rds-overlay") && tcg.contains("rds.hostname=box"), "{tcg}");
        assert!(tcg.contains("-no-reboot") && tcg.contains("reboot=t"), "{tcg}");
        let kvm = rt.qemu_args(&spec(), &p, Accel::Kvm).join(" ");
        assert!(kvm.contains("-accel kvm") && !kvm.contains("lpj="), "{kvm}");
    }

    #[test]
    fn a_networked_vm_gets_its_tap_and_its_addresses_on_the_command_line() {
        let rt = runtime();
        let p = rt.paths("vm-1");
        assert!(!rt.qemu_args(&spec(), &p, Accel::Tcg).join(" ").contains("-netdev"));
        let net = VmNetwork {
            guest_ip: "10.213.0.6".parse().unwrap(),
            host_ip: "10.213.0.5".parse().unwrap(),
            prefix: 30,
            mac: [0x02, 0xab, 0, 0, 0, 0x01],
            tap: Some("rdsv1".into()),
            netns: None,
        };
        let networked = VmSpec { network: Some(net.clone()), ..spec() };
        check_spec(&networked).unwrap();
        let args = rt.qemu_args(&networked, &p, Accel::Tcg).join(" ");
        assert!(args.contains("-netdev tap,id=net0,ifname=rdsv1,script=no,downscript=no"), "{args}");
        assert!(args.contains("-device virtio-net-device,netdev=net0,mac=02:ab:00:00:00:01"), "{args}");
        assert!(args.contains(" rds.net=10.213.0.6/30,10.213.0.5"), "{args}");
        for tap in [None, Some(""), Some("rdsv1,script=/x"), Some("a-very-long-interface")] {
            let bad = VmSpec { network: Some(VmNetwork { tap: tap.map(String::from), ..net.clone() }), ..spec() };
            assert!(matches!(check_spec(&bad), Err(RuntimeError::InvalidSpec(_))), "{tap:?}");
        }
    }

    #[test]
    fn bridge_socket_is_the_guest_to_host_path_for_port_1025() {
        let rt = runtime();
        assert_eq!(rt.bridge_socket("vm-1"), PathBuf::from("/var/lib/rds/vms/vm-1/vsock.sock_1025"));
        assert_eq!(rt.agent_socket("vm-1"), PathBuf::from("/var/lib/rds/vms/vm-1/vsock.sock"));
    }

    #[test]
    fn without_an_image_auto_passes_qemu_by_and_asking_for_it_names_the_setting() {
        let settings = RuntimeSettings {
            storage_root: PathBuf::from("/var/lib/rds"),
            agent_bin: PathBuf::from("/usr/local/bin/rds-agent"),
            image: None,
            cgroup_group: "rds-test".into(),
            sandbox_host_root: false,
            firecracker: Default::default(),
        };
        assert!(auto_choice(&settings).unwrap_err().contains("no guest image"));
        let err = QemuRuntime::from_settings(&settings).err().expect("no image, no runtime");
        assert_eq!(err.setting(), "RDS_IMAGE_DIR", "{err}");
    }

    #[test]
    fn qemu_option_values_escape_commas() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn spec_checks_reject_tiny_memory_and_directory_rootfs() {
        let mut s = spec();
        s.mem_mb = 64;
        assert!(matches!(check_spec(&s), Err(RuntimeError::InvalidSpec(_))));
        let mut s = spec();
        s.rootfs = Some(PathBuf::from("/"));
        assert!(matches!(check_spec(&s), Err(RuntimeError::InvalidSpec(_))));
        assert!(check_spec(&spec()).is_ok());
    }

    #[test]
    fn processes_round_trip_through_the_handle_extra() {
        let procs = VmProcesses {
            qemu_pid: 10,
            qemu_start_time: 20,
            backend_pid: 11,
            backend_start_time: 21,
            accel: Accel::Tcg,
            cid: GUEST_CID,
        };
        let value = serde_json::to_value(&procs).unwrap();
        assert_eq!(value["accel"], "tcg");
        let handle = VmHandle { pid: 10, start_time: 20, extra: value };
        assert_eq!(runtime().processes("vm-1", Some(&handle)), Some(procs));
    }
}
