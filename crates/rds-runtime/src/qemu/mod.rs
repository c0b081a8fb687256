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
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use rds_proto::{AGENT_VSOCK_PORT, BRIDGE_VSOCK_PORT, READY_VSOCK_PORT};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub use accel::{Accel, AccelChoice};

use crate::vm_common;
use crate::process::{is_same_process_alive, process_start_time, signal_if_same, wait_gone};
use crate::{check_vm_id, Liveness, Runtime, RuntimeError, RuntimeKind, VmHandle, VmNetwork, VmSpec};

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
        QemuConfig {
            storage_root,
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            vsock_backend_bin: PathBuf::from("vhost-device-vsock"),
            kernel: ["vmlinux", "vmlinuz"]
                .map(|name| image_dir.join(name))
                .into_iter()
                .find(|p| p.is_file())
                .unwrap_or_else(|| image_dir.join("vmlinux")),
            initrd: image_dir.join("initrd.img"),
            base_rootfs: image_dir.join("rootfs.ext4"),
            accel: AccelChoice::Auto,
            boot_timeout: Duration::from_secs(60),
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

/// Spawned-but-not-yet-adopted processes of a starting VM, killed if the start fails.
#[derive(Default)]
struct Starting {
    backend: Option<tokio::process::Child>,
    qemu: Option<tokio::process::Child>,
}

impl Starting {
    async fn kill(&mut self) {
        for child in [self.qemu.as_mut(), self.backend.as_mut()].into_iter().flatten() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl QemuRuntime {
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
        // Path getters cannot fail; an invalid id maps to a name no valid id can produce.
        let name = if crate::is_valid_vm_id(id) { id } else { ".invalid-id" };
        self.cfg.storage_root.join("vms").join(name)
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
                        if accel::kvm_boots(&self.cfg.qemu_bin, &self.cfg.kernel).await {
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

    /// Creates the VM directory and, on first start, its overlay disk.
    /// Readies the VM directory; a first start makes its overlay disk of `disk_mb` MiB.
    async fn prepare(&self, p: &VmPaths, disk_mb: u32) -> Result<(), RuntimeError> {
        for (dir, mode) in [(self.cfg.storage_root.join("vms"), 0o700), (p.dir.clone(), 0o700)] {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)))
                .map_err(|e| RuntimeError::io(format!("cannot create {}", dir.display()), e))?;
        }
        if let Err(e) = vm_common::cap_console_log(&p.console) {
            tracing::warn!(path = %p.console.display(), error = %e, "cannot cap the console log");
        }
        for sock in p.runtime_sockets() {
            remove_if_present(sock)?;
        }
        if !p.overlay.exists() {
            vm_common::make_ext4_disk(&p.overlay, u64::from(disk_mb), &["-L", OVERLAY_LABEL], None).await?;
        }
        Ok(())
    }

    fn console_file(&self, p: &VmPaths) -> Result<(File, File), RuntimeError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&p.console)
            .map_err(|e| RuntimeError::io(format!("cannot open {}", p.console.display()), e))?;
        let log2 = log.try_clone().map_err(|e| RuntimeError::io("cannot duplicate the console log fd", e))?;
        Ok((log, log2))
    }

    /// Starts `vhost-device-vsock` for this VM and waits for its vhost-user socket.
    async fn spawn_backend(&self, p: &VmPaths, starting: &mut Starting) -> Result<(), RuntimeError> {
        let (out, err) = self.console_file(p)?;
        let mut cmd = detached(&self.cfg.vsock_backend_bin);
        cmd.arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&p.vhost_user)
            .arg("--uds-path")
            .arg(&p.vsock)
            // Its warnings fire on every handshake attempt while the guest boots.
            .env("RUST_LOG", "error")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = starting.backend.insert(
            cmd.spawn()
                .map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.vsock_backend_bin.display())))?,
        );
        let end = tokio::time::Instant::now() + BACKEND_READY;
        while !p.vhost_user.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(RuntimeError::Boot(format!("vhost-device-vsock exited at start ({status})")));
            }
            if tokio::time::Instant::now() >= end {
                return Err(RuntimeError::Boot(format!("vhost-device-vsock did not create {}", p.vhost_user.display())));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
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
            cmdline.extend(
                ["lpj=4000000", "no_timer_check", "tsc_early_khz=2000000", "tsc=reliable"].map(String::from),
            );
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

    async fn start_inner(&self, spec: &VmSpec, p: &VmPaths, starting: &mut Starting) -> Result<VmHandle, RuntimeError> {
        self.prepare(p, spec.disk_mb).await?;
        let accel = self.accel().await;
        // Bound before the backend starts, which forwards the guest's call here.
        let ready = tokio::net::UnixListener::bind(&p.ready)
            .map_err(|e| RuntimeError::io(format!("cannot listen on {}", p.ready.display()), e))?;
        self.spawn_backend(p, starting).await?;
        let (out, err) = self.console_file(p)?;
        let mut cmd = detached(&self.cfg.qemu_bin);
        cmd.args(self.qemu_args(spec, p, accel)).stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let qemu = starting
            .qemu
            .insert(cmd.spawn().map_err(|e| RuntimeError::Boot(format!("cannot run {}: {e}", self.cfg.qemu_bin.display())))?);

        let exited = || RuntimeError::Boot("QEMU exited immediately".into());
        let qemu_pid = qemu.id().ok_or_else(exited)? as i32;
        let qemu_start_time = process_start_time(qemu_pid).ok_or_else(exited)?;
        let backend = starting.backend.as_ref().expect("backend spawned first");
        let backend_pid = backend.id().ok_or_else(|| RuntimeError::Boot("vhost-device-vsock exited".into()))? as i32;
        let backend_start_time =
            process_start_time(backend_pid).ok_or_else(|| RuntimeError::Boot("vhost-device-vsock exited".into()))?;
        let procs = VmProcesses { qemu_pid, qemu_start_time, backend_pid, backend_start_time, accel, cid: GUEST_CID };
        // Written before waiting for the guest, so a manager crash mid-boot still leaves a record.
        let json = serde_json::to_vec(&procs).expect("processes serialise");
        std::fs::write(&p.processes, json).map_err(|e| RuntimeError::io(format!("cannot write {}", p.processes.display()), e))?;

        let qemu = starting.qemu.as_mut().expect("just inserted");
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
            pid: qemu_pid,
            start_time: qemu_start_time,
            extra: serde_json::to_value(&procs).expect("processes serialise"),
        })
    }

    /// The VM's processes: from the handle, else from `processes.json`.
    fn processes(&self, id: &str, handle: Option<&VmHandle>) -> Option<VmProcesses> {
        if let Some(procs) = handle.and_then(|h| serde_json::from_value::<VmProcesses>(h.extra.clone()).ok()) {
            return Some(procs);
        }
        let text = std::fs::read(self.paths(id).processes).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Asks the guest to shut down (agent `POST /shutdown`, else the ACPI power button) and waits
    /// for QEMU to exit by itself once the guest powered off; only past [`graceful_stop`] is QEMU
    /// forced down (QMP `quit`, SIGKILL), logged as an error and noted in the console log. Then
    /// ends the vsock backend.
    async fn stop_processes(&self, p: &VmPaths, procs: &VmProcesses) -> Result<(), RuntimeError> {
        let (pid, st) = (procs.qemu_pid, procs.qemu_start_time);
        if is_same_process_alive(pid, st) {
            let limit = graceful_stop(procs.accel);
            if !request_agent_shutdown(&p.vsock).await {
                // The image's guest has no ACPI button driver: unless it is already shutting down,
                // this ends in the forced stop below.
                tracing::warn!(pid, "the guest agent did not accept the shutdown call; pressing the ACPI power button");
                if let Err(e) = qmp::execute(&p.qmp, "system_powerdown", Duration::from_secs(2)).await {
                    tracing::warn!(pid, error = %e, "QMP system_powerdown failed");
                }
            }
            if !wait_gone(pid, st, limit).await {
                // Cutting a guest off loses whatever it had not written yet and leaves its
                // filesystems to journal recovery: never quiet about it.
                tracing::error!(
                    pid,
                    console = %p.console.display(),
                    "the guest did not power off within {limit:?}; killing QEMU (its disks were not quiesced)"
                );
                note_in_console(&p.console, &format!("rds: the guest did not power off within {limit:?}; QEMU was killed"));
                let _ = qmp::execute(&p.qmp, "quit", Duration::from_secs(2)).await;
                if !wait_gone(pid, st, FORCED_STOP).await {
                    signal_if_same(pid, st, Signal::SIGKILL);
                    if !wait_gone(pid, st, FORCED_STOP).await {
                        return Err(RuntimeError::Stop(format!("QEMU pid {pid} survived SIGKILL")));
                    }
                }
            }
        }
        let (bpid, bst) = (procs.backend_pid, procs.backend_start_time);
        if signal_if_same(bpid, bst, Signal::SIGTERM) && !wait_gone(bpid, bst, FORCED_STOP).await {
            signal_if_same(bpid, bst, Signal::SIGKILL);
            if !wait_gone(bpid, bst, FORCED_STOP).await {
                return Err(RuntimeError::Stop(format!("vhost-device-vsock pid {bpid} survived SIGKILL")));
            }
        }
        Ok(())
    }
}

/// A command that runs in its own session (survives the manager) with an empty environment.
fn detached(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
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

/// `program` if it is a path to a file, else its location on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin"), dirs_home_cargo_bin()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `$HOME/.cargo/bin`, where `cargo install` puts vhost-device-vsock.
fn dirs_home_cargo_bin() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root")).join(".cargo/bin")
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

/// Appends a host-side line to the VM's console log, where whoever reads the guest's story looks.
fn note_in_console(console: &Path, line: &str) {
    let appended = OpenOptions::new()
        .append(true)
        .open(console)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    if let Err(e) = appended {
        tracing::warn!(path = %console.display(), error = %e, "cannot write to the console log");
    }
}

/// `POST /shutdown` to the agent; true when it accepted.
async fn request_agent_shutdown(vsock: &Path) -> bool {
    // One connection attempt: a guest that does not answer at once gets the ACPI button instead.
    let agent = rds_agent_client::AgentClient::hybrid_vsock(vsock).connect_retry(Duration::ZERO).max_idle(0);
    agent.shutdown(SHUTDOWN_CALL).await.is_ok()
}

fn remove_if_present(path: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("cannot remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

fn check_spec(spec: &VmSpec) -> Result<(), RuntimeError> {
    vm_common::check_spec_basics(spec, 64, MIN_MEM_MB)?;
    if let Some(net) = &spec.network {
        let tap = net.tap.as_deref().ok_or_else(|| {
            RuntimeError::InvalidSpec("a networked qemu VM needs the TAP device the manager made for it".into())
        })?;
        let name_ok = (1..16).contains(&tap.len()) && tap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
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

#[async_trait::async_trait]
impl Runtime for QemuRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Qemu
    }

    fn isolation(&self) -> &'static str {
        "microvm"
    }

    fn link_kind(&self) -> crate::LinkKind {
        crate::LinkKind::Tap
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError> {
        check_spec(spec)?;
        let p = self.paths(&spec.id);
        let dir_existed = p.dir.exists();
        let mut starting = Starting::default();
        match self.start_inner(spec, &p, &mut starting).await {
            Ok(handle) => {
                // Reap both when they exit; dropping the runtime leaves them running.
                for mut child in [starting.qemu.take(), starting.backend.take()].into_iter().flatten() {
                    tokio::spawn(async move {
                        let _ = child.wait().await;
                    });
                }
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
                    RuntimeError::Boot(msg) if !tail.is_empty() => RuntimeError::Boot(format!("{msg}; console:\n{tail}")),
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
        } else if signal_if_same(handle.pid, handle.start_time, Signal::SIGKILL) {
            // A handle without extras: at least QEMU goes.
            tracing::error!(pid = handle.pid, "no process record for this VM; QEMU killed without a guest shutdown");
            wait_gone(handle.pid, handle.start_time, FORCED_STOP).await;
        }
        for sock in p.runtime_sockets() {
            remove_if_present(sock)?;
        }
        remove_if_present(&p.processes)
    }

    async fn destroy(&self, id: &str, handle: Option<&VmHandle>) -> Result<(), RuntimeError> {
        check_vm_id(id)?;
        let p = self.paths(id);
        if let Some(procs) = self.processes(id, handle) {
            self.stop_processes(&p, &procs).await?;
        }
        vm_common::remove_vm_dir(&p.dir)
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
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.cfg.storage_root.join("vms")) else { return removed };
        let mut ids: Vec<String> = entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect();
        ids.sort();
        for id in ids {
            // Never touch names this runtime could not have created.
            if known.contains(&id) || !crate::is_valid_vm_id(&id) {
                continue;
            }
            match self.destroy(&id, None).await {
                Ok(()) => removed.push(id),
                Err(e) => tracing::warn!(vm = %id, error = %e, "could not remove orphaned QEMU VM"),
            }
        }
        removed
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
        VmSpec { id: "vm-1".into(), cpu: 2, mem_mb: 512, disk_mb: crate::DEFAULT_DISK_MB, rootfs: None, kernel: None, initrd: None, hostname: "box".into(), network: None }
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
