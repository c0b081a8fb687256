//! The qemu runtime: the real guest image (kernel, initramfs, ext4 rootfs, agent as PID 1) on
//! QEMU's `microvm` machine, with KVM when it can run a guest and TCG emulation otherwise.
//!
//! Layout of one VM, `<storage_root>/vms/<id>/` (0700, root):
//!
//! | entry | what |
//! |---|---|
//! | `overlay.ext4` | sparse ext4 disk (label `rds-overlay`) holding the guest's writes, `/workspace` included; kept across stop/start |
//! | `vsock.sock` | hybrid-vsock socket of the agent channel's relay: the host end of the agent ([`Runtime::agent_socket`]) |
//! | `vsock.sock_<port>` | guest→host connections to `<port>` arrive here; the manager binds `vsock.sock_1025` (bridge) |
//! | `serial.sock` | where QEMU's virtio-serial chardev connects to the relay |
//! | `relay.sock` | the relay's pause/resume socket (snapshots) |
//! | `qmp.sock` | QEMU's QMP control socket |
//! | `processes.json` | pids + start times of QEMU and the relay (also in [`VmHandle::extra`]) |
//! | `console.log` | serial console, QEMU's and the relay's stderr (capped at 1 MiB, see [`crate::cap_console_log`]) |
//!
//! The agent channel is a virtio-serial port (`rds.agent`, root-only in the guest) carrying
//! [`rds_mux`] streams; the relay (`rds-agent relay`) turns them back into the hybrid-vsock
//! sockets every runtime offers. Unlike the vhost-user vsock device it replaced, it migrates, so
//! a running VM can be snapshotted with its memory ([`Runtime::snapshot`]) and new VMs resumed from
//! that snapshot with `-incoming` ([`Runtime::start_from_snapshot`]).
//!
//! Both processes run in their own session so a manager restart leaves them running; the
//! [`VmHandle`] (QEMU's pid + start time, plus the relay's in `extra`) re-adopts them.
//! Every VM has a `virtio-net-device` (a VM resumed from a snapshot must have the devices of the
//! one it was taken of): a networked VM's is plugged into the manager's TAP, the guest addressing
//! itself from `rds.net=` on its kernel command line; an unnetworked VM's has no peer.
//!
//! Guest memory is a memfd QEMU maps shared (its fd 3), so a snapshot copies it into a file and
//! leaves it out of the migration stream (`x-ignore-shared`); a VM resumed from a snapshot maps
//! that file privately (copy-on-write: the snapshot is never written), and its own snapshots carry
//! its memory in their migration stream.

mod accel;
pub mod qmp;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::signal::Signal;
use rds_proto::{AGENT_VSOCK_PORT, BRIDGE_VSOCK_PORT, READY_VSOCK_PORT};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub use accel::{kvm_boots_guests, Accel, AccelChoice};

use crate::process::HostProcess;
use crate::vmm::CloneMode;
use crate::vmm::{self, GracefulStop, Spawned};
use crate::{check_vm_id, Liveness, Runtime, RuntimeError, RuntimeKind, SnapshotKind, VmHandle, VmNetwork, VmSpec};
use crate::{
    vm_common, BootNeeds, Capabilities, Isolation, KernelFormat, RootfsForm, RuntimeEntry, RuntimeSettings, Unavailable,
};

/// The guest's vsock CID, kept in the process record for older records' sake: the channel is a
/// virtio-serial port now, and the VM has no vsock device.
pub const GUEST_CID: u32 = 3;
/// ext4 label of the per-VM overlay disk; the initramfs finds it through `rds.overlay=`.
pub const OVERLAY_LABEL: &str = "rds-overlay";
/// Smallest memory size accepted (kernel + initramfs + agent).
const MIN_MEM_MB: u32 = 128;
/// How long the relay gets to create its sockets.
const RELAY_READY: Duration = Duration::from_secs(5);
/// How long the agent of a resumed guest may take to answer (TCG is slow).
const RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay gets to pause and resume the channel around a snapshot.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing or reading a snapshot's device state may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// QEMU's descriptor of the guest's memory (a memfd the runtime creates).
const MEMORY_FD: i32 = 3;
/// QEMU's descriptor of the state an `-incoming` QEMU reads.
const INCOMING_FD: i32 = 4;
/// MAC of the NIC of a VM without network (it has no peer; nothing sees it).
const UNPLUGGED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Files of a snapshot directory.
const SNAPSHOT_META: &str = "snapshot.json";
const SNAPSHOT_STATE: &str = "state";
const SNAPSHOT_MEMORY: &str = "memory";
const SNAPSHOT_DISK: &str = "overlay.ext4";
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
/// The agent binary, whose `relay` subcommand is the host end of the agent channel.
const RELAY_BIN: &str = "rds-agent";

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
    /// `rds-agent` (run as `rds-agent relay`, the host end of each VM's agent channel).
    pub relay_bin: PathBuf,
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
            // The manager passes its RDS_AGENT_BIN (see `from_settings`); others may set it too.
            relay_bin: std::env::var_os("RDS_AGENT_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(RELAY_BIN)),
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
    /// The agent channel relay's pid (`rds-agent relay`).
    pub backend_pid: i32,
    /// Its start time.
    pub backend_start_time: u64,
    /// The accelerator QEMU runs with.
    pub accel: Accel,
    /// The guest's vsock CID (unused since the channel is a virtio-serial port).
    pub cid: u32,
    /// Guest memory is a memfd QEMU holds as its fd 3 (else it cannot be copied into a snapshot
    /// and goes into the migration stream).
    #[serde(default)]
    pub shared_memory: bool,
}

impl VmProcesses {
    /// The QEMU process.
    fn qemu(&self) -> HostProcess {
        HostProcess { pid: self.qemu_pid, start_time: self.qemu_start_time }
    }

    /// The relay process.
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
    serial: PathBuf,
    control: PathBuf,
    /// Where the guest's readiness call arrives while it boots (`vsock.sock_1026`).
    ready: PathBuf,
    qmp: PathBuf,
    processes: PathBuf,
    console: PathBuf,
}

impl VmPaths {
    /// Sockets that only live while the VM runs (the manager owns `vsock.sock_1025`).
    fn runtime_sockets(&self) -> [&Path; 5] {
        [&self.vsock, &self.serial, &self.control, &self.ready, &self.qmp]
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
        let mut cfg = QemuConfig::with_image(
            settings.storage_root.clone(),
            image.kernel.clone(),
            image.initrd.clone(),
            image.rootfs.clone(),
        );
        cfg.relay_bin = settings.agent_bin.clone();
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
        for (what, bin, hint) in [
            ("QEMU", &mut cfg.qemu_bin, "install qemu-system-x86"),
            ("agent channel relay", &mut cfg.relay_bin, "set RDS_AGENT_BIN to the rds-agent binary"),
        ] {
            // Resolved now: the processes are spawned with a minimal environment.
            *bin = find_program(bin).ok_or_else(|| {
                RuntimeError::InvalidSpec(format!("the {what} {} was not found ({hint})", bin.display()))
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
            serial: dir.join("serial.sock"),
            control: dir.join("relay.sock"),
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

    /// Starts the agent channel's relay (`rds-agent relay`) for this VM and waits for its sockets;
    /// returns its index in `starting`.
    async fn spawn_relay(&self, p: &VmPaths, starting: &mut Spawned) -> Result<usize, RuntimeError> {
        let (out, err) = vmm::console_output(&p.console)?;
        let mut cmd = vmm::detached(&self.cfg.relay_bin);
        cmd.arg("relay")
            .arg("--serial")
            .arg(&p.serial)
            .arg("--agent")
            .arg(&p.vsock)
            .arg("--control")
            .arg(&p.control)
            .stdout(out)
            .stderr(err);
        let index = starting
            .spawn(&mut cmd)
            .map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.relay_bin.display())))?;
        let child = starting.child(index);
        let end = tokio::time::Instant::now() + RELAY_READY;
        // The control socket is bound last.
        while !p.control.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(RuntimeError::Boot(format!("the agent channel relay exited at start ({status})")));
            }
            if tokio::time::Instant::now() >= end {
                return Err(RuntimeError::Boot(format!(
                    "the agent channel relay did not create {}",
                    p.control.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(index)
    }

    /// QEMU's command line for `spec`.
    fn qemu_args(&self, spec: &VmSpec, p: &VmPaths, accel: Accel, memory: &GuestMemory) -> Vec<String> {
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
        if let Some(n) = spec.warm_interpreters {
            cmdline.push(format!("rds.warm={n}"));
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
            "-object".into(),
            memory.backend(mem),
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
            // The agent channel: a virtio-serial port whose chardev connects to the relay (and
            // reconnects, should that connection ever drop).
            "-device".into(),
            "virtio-serial-device,max_ports=2".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={},reconnect=1", qemu_path(&p.serial)),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={}", rds_mux::PORT_NAME),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qemu_path(&p.qmp)),
        ]);
        args.extend(network_args(spec.network.as_ref()));
        args
    }

    /// Spawns the relay and QEMU for `spec` with `memory` (and, to resume a snapshot, its state on
    /// `incoming`), writes the process record; returns the record and QEMU's index in `starting`.
    async fn launch(
        &self,
        spec: &VmSpec,
        p: &VmPaths,
        starting: &mut Spawned,
        memory: &GuestMemory,
        incoming: Option<OwnedFd>,
    ) -> Result<(VmProcesses, usize), RuntimeError> {
        let accel = self.accel().await;
        let relay_index = self.spawn_relay(p, starting).await?;
        let mut fds = Vec::new();
        if let GuestMemory::Shared = memory {
            fds.push((guest_memory_fd(spec.mem_mb)?, MEMORY_FD));
        }
        let mut args = self.qemu_args(spec, p, accel, memory);
        if let Some(state) = incoming {
            fds.push((state, INCOMING_FD));
            args.extend(["-incoming".into(), "defer".into()]);
        }
        let (out, err) = vmm::console_output(&p.console)?;
        let mut cmd = vmm::detached(&self.cfg.qemu_bin);
        cmd.args(args).stdout(out).stderr(err);
        pass_fds(&mut cmd, fds);
        let qemu_index = starting
            .spawn(&mut cmd)
            .map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.qemu_bin.display())))?;

        let qemu = HostProcess::of_child(starting.child(qemu_index))
            .ok_or_else(|| RuntimeError::Boot("QEMU exited immediately".into()))?;
        let relay = HostProcess::of_child(starting.child(relay_index))
            .ok_or_else(|| RuntimeError::Boot("the agent channel relay exited".into()))?;
        let procs = VmProcesses {
            qemu_pid: qemu.pid,
            qemu_start_time: qemu.start_time,
            backend_pid: relay.pid,
            backend_start_time: relay.start_time,
            accel,
            cid: GUEST_CID,
            shared_memory: matches!(memory, GuestMemory::Shared),
        };
        // Written before waiting for the guest, so a manager crash mid-boot still leaves a record.
        vmm::write_record(&p.processes, &procs)?;
        Ok((procs, qemu_index))
    }

    async fn start_inner(&self, spec: &VmSpec, p: &VmPaths, starting: &mut Spawned) -> Result<VmHandle, RuntimeError> {
        self.prepare(p, spec.disk_mb).await?;
        // Bound before the relay starts, which forwards the guest's call here.
        let ready = tokio::net::UnixListener::bind(&p.ready)
            .map_err(|e| RuntimeError::io(format!("cannot listen on {}", p.ready.display()), e))?;
        let (procs, qemu_index) = self.launch(spec, p, starting, &GuestMemory::Shared, None).await?;
        let accel = procs.accel;
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
        Ok(handle_of(&procs))
    }

    /// Resumes the snapshot in `dir` (`meta`) as VM `spec` in the new directory of `p`: its disk
    /// copied, its memory mapped privately, its device state read by an `-incoming` QEMU.
    async fn resume_inner(
        &self,
        spec: &VmSpec,
        p: &VmPaths,
        dir: &Path,
        meta: &SnapshotMeta,
        starting: &mut Spawned,
    ) -> Result<VmHandle, RuntimeError> {
        vmm::create_vm_dir(&self.cfg.storage_root, &p.dir)?;
        vmm::cap_console(&p.console);
        vmm::clone_file(&dir.join(SNAPSHOT_DISK), &p.overlay, CloneMode::Auto)?;
        let state_path = dir.join(SNAPSHOT_STATE);
        let state = std::fs::File::open(&state_path)
            .map_err(|e| RuntimeError::io(format!("cannot open {}", state_path.display()), e))?;
        let memory =
            if meta.memory_file { GuestMemory::Mapped(dir.join(SNAPSHOT_MEMORY)) } else { GuestMemory::Private };
        let (procs, qemu_index) = self.launch(spec, p, starting, &memory, Some(OwnedFd::from(state))).await?;
        let qemu = starting.child(qemu_index);
        let resumed = async {
            let mut qmp = connect_qmp(&p.qmp, RELAY_READY).await?;
            qmp.call("migrate-set-capabilities", ignore_shared()).await?;
            qmp.call("migrate-incoming", serde_json::json!({ "uri": format!("fd:{INCOMING_FD}") })).await?;
            wait_for_migration(&mut qmp).await?;
            // The snapshot was written of a paused VM, so QEMU keeps it paused: run it.
            qmp.call("cont", serde_json::Value::Null).await?;
            Ok::<_, qmp::QmpError>(())
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(MIGRATION_TIMEOUT, resumed) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RuntimeError::Vmm(format!("QEMU could not load the snapshot: {e}"))),
                Err(_) => Err(RuntimeError::Vmm("QEMU did not load the snapshot in time".into())),
            },
            status = qemu.wait() => Err(RuntimeError::Boot(format!("QEMU exited while loading the snapshot ({status:?})"))),
        };
        outcome?;
        rds_vsock::connect_retry(&p.vsock, AGENT_VSOCK_PORT, RESUME_TIMEOUT)
            .await
            .map_err(|e| RuntimeError::Boot(format!("the resumed guest's agent did not answer: {e}")))?;
        vm_common::give_identity(&p.vsock, spec).await?;
        Ok(handle_of(&procs))
    }

    /// Writes a snapshot of running VM `id` into the new directory `dir` (see [`Runtime::snapshot`]).
    async fn snapshot_inner(
        &self,
        id: &str,
        procs: &VmProcesses,
        dir: &Path,
        memory: bool,
    ) -> Result<(), RuntimeError> {
        let p = self.paths(id);
        vm_common::sync_guest(&p.vsock).await?;
        // No byte of the agent channel may be in flight in the memory a clone resumes.
        let quiesced = if memory {
            Some(
                rds_mux::relay::quiesce(&p.control, QUIESCE_TIMEOUT)
                    .await
                    .map_err(|e| RuntimeError::Agent(format!("the agent channel did not pause: {e}")))?,
            )
        } else {
            None
        };
        let mut qmp = connect_qmp(&p.qmp, QUIESCE_TIMEOUT).await.map_err(|e| RuntimeError::Vmm(format!("QMP: {e}")))?;
        qmp.call("stop", serde_json::Value::Null)
            .await
            .map_err(|e| RuntimeError::Vmm(format!("pausing the VM: {e}")))?;
        let written = async {
            vmm::create_dir(dir, 0o700)?;
            if memory {
                self.write_memory_snapshot(procs, &mut qmp, dir).await?;
            }
            // Paused, the guest writes nothing more: the copy is what it had synced, plus what the
            // journal makes consistent (and, with memory, exactly the disk that memory knew).
            vmm::clone_file(&p.overlay, &dir.join(SNAPSHOT_DISK), CloneMode::Auto)
        }
        .await;
        let resumed = qmp.call("cont", serde_json::Value::Null).await;
        if let Some(quiesced) = quiesced {
            if let Err(e) = quiesced.resume(QUIESCE_TIMEOUT).await {
                tracing::warn!(vm = %id, error = %e, "the agent channel did not confirm its resume");
            }
        }
        written?;
        resumed.map(drop).map_err(|e| RuntimeError::Vmm(format!("resuming the VM after its snapshot: {e}")))
    }

    /// The device state (migration stream) and, for shared guest memory, the memory file.
    async fn write_memory_snapshot(
        &self,
        procs: &VmProcesses,
        qmp: &mut qmp::Session,
        dir: &Path,
    ) -> Result<(), RuntimeError> {
        let state_path = dir.join(SNAPSHOT_STATE);
        let state = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&state_path)
            .map_err(|e| RuntimeError::io(format!("cannot create {}", state_path.display()), e))?;
        let migrate = async {
            qmp.call("migrate-set-capabilities", ignore_shared()).await?;
            // The VM is paused: no reason to pace the stream.
            qmp.call("migrate-set-parameters", serde_json::json!({ "max-bandwidth": i64::MAX / 8 })).await?;
            qmp.call_with_fd("getfd", serde_json::json!({ "fdname": "snapshot" }), state.as_fd()).await?;
            qmp.call("migrate", serde_json::json!({ "uri": "fd:snapshot" })).await?;
            wait_for_migration(qmp).await
        };
        tokio::time::timeout(MIGRATION_TIMEOUT, migrate)
            .await
            .map_err(|_| RuntimeError::Vmm("writing the VM's state timed out".into()))?
            .map_err(|e| RuntimeError::Vmm(format!("writing the VM's state: {e}")))?;
        drop(state);
        if procs.shared_memory {
            if !procs.qemu().is_alive() {
                return Err(RuntimeError::Vmm("QEMU exited during the snapshot".into()));
            }
            let ram = PathBuf::from(format!("/proc/{}/fd/{MEMORY_FD}", procs.qemu_pid));
            let to = dir.join(SNAPSHOT_MEMORY);
            tokio::task::spawn_blocking(move || copy_sparse(&ram, &to))
                .await
                .map_err(|e| RuntimeError::io("copying guest memory", std::io::Error::other(e)))??;
        }
        Ok(())
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
        procs.backend().terminate("the agent channel relay", FORCED_STOP, FORCED_STOP).await
    }
}

/// The VM's network device, which every VM has: plugged into the manager's TAP with the VM's MAC
/// (the TAP name was checked by [`check_spec`]; the guest addresses itself from `rds.net=`), or
/// without a peer for a VM without network, so that a VM resumed from its snapshot may have one.
fn network_args(network: Option<&VmNetwork>) -> Vec<String> {
    let Some((net, tap)) = network.and_then(|n| Some((n, n.tap.as_deref()?))) else {
        let mac = UNPLUGGED_MAC.map(|b| format!("{b:02x}")).join(":");
        return vec!["-device".into(), format!("virtio-net-device,mac={mac}")];
    };
    let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
    vec![
        "-netdev".into(),
        format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={mac}"),
    ]
}

/// Where a VM's guest memory lives.
#[derive(Debug, Clone, PartialEq)]
enum GuestMemory {
    /// A memfd the runtime creates, QEMU's fd [`MEMORY_FD`], mapped shared: a snapshot copies it
    /// out and leaves it out of the migration stream.
    Shared,
    /// A snapshot's memory file mapped privately: pages are copied on write, the file never changes.
    Mapped(PathBuf),
    /// Anonymous memory, filled from a migration stream that carries it.
    Private,
}

impl GuestMemory {
    /// The `-object` value of the machine's memory backend (`mem`) of `mem_mb` MiB.
    fn backend(&self, mem_mb: u32) -> String {
        match self {
            GuestMemory::Shared => {
                format!("memory-backend-file,id=mem,size={mem_mb}M,share=on,mem-path=/proc/self/fd/{MEMORY_FD}")
            }
            GuestMemory::Mapped(path) => {
                format!("memory-backend-file,id=mem,size={mem_mb}M,share=off,mem-path={}", qemu_path(path))
            }
            GuestMemory::Private => format!("memory-backend-ram,id=mem,size={mem_mb}M"),
        }
    }
}

/// A fresh memfd of `mem_mb` MiB for [`GuestMemory::Shared`].
fn guest_memory_fd(mem_mb: u32) -> Result<OwnedFd, RuntimeError> {
    let fd = nix::sys::memfd::memfd_create(c"rds-guest-memory", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| RuntimeError::io("cannot create the guest's memory (memfd_create)", e.into()))?;
    let file = std::fs::File::from(fd);
    file.set_len(u64::from(mem_mb) * 1024 * 1024).map_err(|e| RuntimeError::io("cannot size the guest's memory", e))?;
    Ok(OwnedFd::from(file))
}

/// Has `cmd`'s process receive each descriptor as the number paired with it.
fn pass_fds(cmd: &mut tokio::process::Command, fds: Vec<(OwnedFd, i32)>) {
    if fds.is_empty() {
        return;
    }
    let raw: Vec<(i32, i32)> = fds.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect();
    // The descriptors stay open in this process until the command is dropped after spawning.
    let keep = std::sync::Arc::new(fds);
    // SAFETY: only fcntl and dup2 (async-signal-safe) run between fork and exec; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &keep;
            // Out of the way first, so no target number overwrites a source still to come.
            let mut moved = [(0i32, 0i32); 4];
            for (i, (from, to)) in raw.iter().enumerate().take(moved.len()) {
                let high = libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 64);
                if high < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved[i] = (high, *to);
            }
            for (high, to) in moved.iter().take(raw.len()) {
                // dup2 leaves the new descriptor without close-on-exec.
                if libc::dup2(*high, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// `x-ignore-shared` on: shared guest memory stays out of the migration stream.
fn ignore_shared() -> serde_json::Value {
    serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

/// Connects to QEMU's QMP socket, retrying while QEMU is still creating it.
async fn connect_qmp(path: &Path, limit: Duration) -> Result<qmp::Session, qmp::QmpError> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        match qmp::Session::connect(path).await {
            Err(qmp::QmpError::Io(e)) if tokio::time::Instant::now() < end => {
                tracing::trace!(error = %e, "QMP not up yet");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            other => return other,
        }
    }
}

/// Polls `query-migrate` until the migration completed (or failed).
async fn wait_for_migration(qmp: &mut qmp::Session) -> Result<(), qmp::QmpError> {
    loop {
        let status = qmp.call("query-migrate", serde_json::Value::Null).await?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = status.get("error-desc").and_then(|e| e.as_str()).unwrap_or("no reason given");
                return Err(qmp::QmpError::Protocol(format!("migration failed: {why}")));
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Copies `from` to the new file `to`, leaving its holes (never-touched guest pages) holes.
fn copy_sparse(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::FileExt;
    let fail = |what: &str, e: std::io::Error| RuntimeError::io(format!("cannot {what} {}", from.display()), e);
    let src = std::fs::File::open(from).map_err(|e| fail("open", e))?;
    let len = src.metadata().map_err(|e| fail("stat", e))?.len();
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| RuntimeError::io(format!("cannot create {}", to.display()), e))?;
    dst.set_len(len).map_err(|e| RuntimeError::io(format!("cannot size {}", to.display()), e))?;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(src.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(fail("seek in", e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(fail("seek in", std::io::Error::last_os_error()));
        }
        let mut at = data as u64;
        while at < hole as u64 {
            let n = ((hole as u64 - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at).map_err(|e| fail("read", e))?;
            dst.write_all_at(&buf[..n], at)
                .map_err(|e| RuntimeError::io(format!("cannot write {}", to.display()), e))?;
            at += n as u64;
        }
        offset = hole;
    }
    Ok(())
}

/// What a snapshot directory holds beyond its files: what a VM resumed from it must match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SnapshotMeta {
    /// vCPUs of the VM it was taken of.
    cpu: u32,
    /// Its memory size.
    mem_mb: u32,
    /// Its accelerator (device state does not cross between KVM and TCG).
    accel: Accel,
    /// Its base root filesystem (the guest's memory knows that disk).
    rootfs: PathBuf,
    /// Memory is in the `memory` file (else in the `state` stream).
    memory_file: bool,
}

fn read_meta(dir: &Path) -> Result<SnapshotMeta, RuntimeError> {
    let path = dir.join(SNAPSHOT_META);
    let text = std::fs::read(&path).map_err(|e| RuntimeError::io(format!("cannot read {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| {
        RuntimeError::io(format!("{} is not a qemu memory snapshot", path.display()), std::io::Error::other(e))
    })
}

fn handle_of(procs: &VmProcesses) -> VmHandle {
    VmHandle {
        pid: procs.qemu_pid,
        start_time: procs.qemu_start_time,
        extra: serde_json::to_value(procs).expect("processes serialise"),
    }
}

/// The arguments of a QEMU command line (`/proc/<pid>/cmdline`).
fn cmdline_args(cmdline: &[u8]) -> Vec<String> {
    cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The value following `flag` on a QEMU command line.
fn arg_after(cmdline: &[u8], flag: &str) -> Option<String> {
    let args = cmdline_args(cmdline);
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1).cloned())
}

/// vCPUs (`-smp N`) of a QEMU command line.
fn smp_of(cmdline: &[u8]) -> Option<u32> {
    arg_after(cmdline, "-smp")?.parse().ok()
}

/// Memory (`-m NM`) of a QEMU command line.
fn mem_of(cmdline: &[u8]) -> Option<u32> {
    arg_after(cmdline, "-m")?.strip_suffix('M')?.parse().ok()
}

/// The base root filesystem (`-drive ...,id=base,...,file=PATH`) of a QEMU command line.
fn rootfs_of(cmdline: &[u8]) -> Option<PathBuf> {
    let drive = cmdline_args(cmdline).into_iter().find(|a| a.starts_with("if=none,id=base,"))?;
    let file = drive.split_once(",file=")?.1;
    Some(PathBuf::from(file.replace(",,", ",")))
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
        Capabilities { snapshots: Some(SnapshotKind::Memory), pause: true, network: true }
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

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        qmp::execute(&self.paths(id).qmp, "stop", QUIESCE_TIMEOUT)
            .await
            .map_err(|e| RuntimeError::Vmm(format!("pausing the VM: {e}")))
    }

    async fn recover(&self, id: &str, _handle: &VmHandle) -> Result<(), RuntimeError> {
        // A snapshot stops the vCPUs while it writes; `cont` on a running guest changes nothing.
        self.resume(id).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        qmp::execute(&self.paths(id).qmp, "cont", QUIESCE_TIMEOUT)
            .await
            .map_err(|e| RuntimeError::Vmm(format!("resuming the VM: {e}")))
    }

    async fn snapshot(
        &self,
        id: &str,
        handle: &VmHandle,
        dir: &Path,
        memory: bool,
    ) -> Result<SnapshotKind, RuntimeError> {
        check_vm_id(id)?;
        vm_common::check_new_snapshot_dir(dir)?;
        let procs = self
            .processes(id, Some(handle))
            .filter(|procs| procs.qemu().is_alive())
            .ok_or_else(|| RuntimeError::InvalidSpec(format!("VM {id} is not running")))?;
        let written = async {
            self.snapshot_inner(id, &procs, dir, memory).await?;
            if !memory {
                return Ok(SnapshotKind::Disk);
            }
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", procs.qemu_pid)).unwrap_or_default();
            let meta = SnapshotMeta {
                cpu: smp_of(&cmdline).ok_or_else(|| RuntimeError::Vmm("cannot read QEMU's -smp".into()))?,
                mem_mb: mem_of(&cmdline).ok_or_else(|| RuntimeError::Vmm("cannot read QEMU's -m".into()))?,
                accel: procs.accel,
                rootfs: rootfs_of(&cmdline).unwrap_or_else(|| self.cfg.base_rootfs.clone()),
                memory_file: procs.shared_memory,
            };
            vmm::write_record(&dir.join(SNAPSHOT_META), &meta)?;
            Ok(SnapshotKind::Memory)
        }
        .await;
        if written.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        written
    }

    async fn start_from_snapshot(
        &self,
        spec: &VmSpec,
        dir: &Path,
        kind: SnapshotKind,
    ) -> Result<VmHandle, RuntimeError> {
        check_spec(spec)?;
        let p = self.paths(&spec.id);
        if kind == SnapshotKind::Disk {
            return vm_common::start_on_disk_copy(
                self,
                &self.cfg.storage_root,
                spec,
                &dir.join(SNAPSHOT_DISK),
                &p.overlay,
            )
            .await;
        }
        let meta = read_meta(dir)?;
        let rootfs = spec.rootfs.clone().unwrap_or_else(|| self.cfg.base_rootfs.clone());
        let accel = self.accel().await;
        if (meta.cpu, meta.mem_mb) != (spec.cpu, spec.mem_mb) {
            return Err(RuntimeError::InvalidSpec(format!(
                "the snapshot was taken of a VM with {} vCPUs and {} MiB: a VM resumed from it has the same",
                meta.cpu, meta.mem_mb
            )));
        }
        if meta.accel != accel || meta.rootfs != rootfs {
            return Err(RuntimeError::InvalidSpec(format!(
                "the snapshot was taken under {} on {}: this VM would run under {} on {}",
                meta.accel.as_str(),
                meta.rootfs.display(),
                accel.as_str(),
                rootfs.display()
            )));
        }
        if p.dir.exists() {
            return Err(RuntimeError::InvalidSpec(format!("VM {} exists already", spec.id)));
        }
        let mut starting = Spawned::default();
        match self.resume_inner(spec, &p, dir, &meta, &mut starting).await {
            Ok(handle) => {
                starting.release();
                Ok(handle)
            }
            Err(e) => {
                let tail = vm_common::console_tail(&p.console, CONSOLE_TAIL);
                starting.kill().await;
                let _ = std::fs::remove_dir_all(&p.dir);
                Err(match e {
                    RuntimeError::Boot(msg) | RuntimeError::Vmm(msg) if !tail.is_empty() => {
                        RuntimeError::Boot(format!("{msg}; console:\n{tail}"))
                    }
                    other => other,
                })
            }
        }
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
            warm_interpreters: Some(3),
        }
    }

    #[test]
    fn tcg_command_line_presets_the_delay_loop_and_kvm_does_not() {
        let rt = runtime();
        let p = rt.paths("vm-1");
        let tcg = rt.qemu_args(&spec(), &p, Accel::Tcg, &GuestMemory::Shared).join(" ");
        assert!(tcg.contains("-accel tcg") && tcg.contains("lpj=4000000 no_timer_check tsc_early_khz="), "{tcg}");
        assert!(tcg.contains("memory-backend-file,id=mem,size=512M,share=on,mem-path=/proc/self/fd/3"), "{tcg}");
        assert!(tcg.contains("-device virtserialport,chardev=agent,name=rds.agent"), "{tcg}");
        assert!(!tcg.contains("vsock"), "no vsock device: {tcg}");
        assert!(tcg.contains("rds.overlay=rds-overlay") && tcg.contains("rds.hostname=box"), "{tcg}");
        assert!(tcg.contains(" rds.warm=3"), "{tcg}");
        assert!(tcg.contains("-no-reboot") && tcg.contains("reboot=t"), "{tcg}");
        let kvm = rt.qemu_args(&spec(), &p, Accel::Kvm, &GuestMemory::Shared).join(" ");
        assert!(kvm.contains("-accel kvm") && !kvm.contains("lpj="), "{kvm}");
    }

    #[test]
    fn a_networked_vm_gets_its_tap_and_its_addresses_on_the_command_line() {
        let rt = runtime();
        let p = rt.paths("vm-1");
        let unplugged = rt.qemu_args(&spec(), &p, Accel::Tcg, &GuestMemory::Shared).join(" ");
        assert!(!unplugged.contains("-netdev"), "{unplugged}");
        assert!(unplugged.contains("-device virtio-net-device,mac=02:00:00:00:00:01"), "{unplugged}");
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
        let args = rt.qemu_args(&networked, &p, Accel::Tcg, &GuestMemory::Shared).join(" ");
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
    fn a_resumed_vm_maps_the_snapshot_memory_privately_or_takes_it_from_the_stream() {
        let mapped = GuestMemory::Mapped(PathBuf::from("/snaps/a,b/memory")).backend(256);
        assert_eq!(mapped, "memory-backend-file,id=mem,size=256M,share=off,mem-path=/snaps/a,,b/memory");
        assert_eq!(GuestMemory::Private.backend(256), "memory-backend-ram,id=mem,size=256M");
    }

    #[test]
    fn snapshot_facts_are_read_back_from_the_qemu_command_line() {
        let rt = runtime();
        let p = rt.paths("vm-1");
        let args = rt.qemu_args(&spec(), &p, Accel::Tcg, &GuestMemory::Shared);
        let cmdline: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let cmdline = [b"qemu-system-x86_64\0".as_slice(), &cmdline].concat();
        assert_eq!(smp_of(&cmdline), Some(2));
        assert_eq!(mem_of(&cmdline), Some(512));
        assert_eq!(rootfs_of(&cmdline), Some(PathBuf::from("/img/rootfs.ext4")));
    }

    #[test]
    fn sparse_copies_keep_holes_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let f = std::fs::File::create(&from).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"start", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 4 << 20).unwrap();
        let to = dir.path().join("to");
        copy_sparse(&from, &to).unwrap();
        let copied = std::fs::read(&to).unwrap();
        assert_eq!(copied, std::fs::read(&from).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&to).unwrap().blocks() * 512 < 1 << 20, "holes were filled");
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
            shared_memory: true,
        };
        let value = serde_json::to_value(&procs).unwrap();
        assert_eq!(value["accel"], "tcg");
        let handle = VmHandle { pid: 10, start_time: 20, extra: value };
        assert_eq!(runtime().processes("vm-1", Some(&handle)), Some(procs));
    }
}
