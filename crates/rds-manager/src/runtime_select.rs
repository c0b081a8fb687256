//! Choosing the runtime at start-up. Firecracker plugs in here when it exists.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rds_runtime::qemu::{AccelChoice, QemuConfig, QemuRuntime};
use rds_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use rds_net::InstallationId;
use rds_runtime::Runtime;

use crate::config::{ConfigError, GuestImage, RuntimeChoice};
use crate::Config;

/// Tasks allowed per sandbox VM.
const SANDBOX_PIDS_MAX: u64 = 512;

/// How long a QEMU VM may take to boot (TCG emulation is slow).
const QEMU_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the runtime `RDS_RUNTIME` asks for; `auto` picks qemu when a guest image is configured,
/// QEMU + vhost-device-vsock are installed and KVM can boot ordinary guests, else sandbox (an
/// image alone never moves `auto` onto TCG emulation: `RDS_RUNTIME=qemu` asks for that). Asking
/// explicitly for an unavailable runtime is an error. Host resources are named after `installation`.
pub fn select(config: &Config, installation: &InstallationId) -> Result<Arc<dyn Runtime>, ConfigError> {
    match config.runtime {
        RuntimeChoice::Sandbox => sandbox(config, installation),
        RuntimeChoice::Qemu => {
            let Some(image) = &config.guest_image else {
                return Err(ConfigError {
                    var: "RDS_IMAGE_DIR",
                    message: "RDS_RUNTIME=qemu needs a guest image: set RDS_IMAGE_DIR (from `rds image build`) \
                              or KERNEL_PATH, INITRD_PATH and BASE_ROOTFS_PATH"
                        .into(),
                });
            };
            qemu(config, image)
        }
        RuntimeChoice::Auto => match &config.guest_image {
            // Without an image there is nothing for a VM to boot: the sandbox is the default.
            None => sandbox(config, installation),
            Some(_) if !kvm_boots_guests() => {
                tracing::info!("no KVM that boots ordinary guests here: using the sandbox runtime (RDS_RUNTIME=qemu runs qemu under TCG emulation)");
                sandbox(config, installation)
            }
            Some(image) => qemu(config, image).or_else(|e| {
                tracing::info!("not using qemu ({e}); falling back to the sandbox runtime");
                sandbox(config, installation)
            }),
        },
        RuntimeChoice::Firecracker => Err(ConfigError {
            var: "RDS_RUNTIME",
            message: "this build has no firecracker runtime yet; use auto, qemu or sandbox".into(),
        }),
    }
}

/// Whether `/dev/kvm` is backed by a hardware-virtualisation module (kvm_intel, kvm_amd) that runs
/// ordinary guest kernels. Paravirtual KVM flavours (e.g. `kvm_pvm`, found on hosts that are
/// themselves VMs) run only guests built for them.
fn kvm_boots_guests() -> bool {
    std::path::Path::new("/dev/kvm").exists()
        && ["kvm_intel", "kvm_amd"].iter().any(|m| std::path::Path::new("/sys/module").join(m).exists())
}

fn qemu(config: &Config, image: &GuestImage) -> Result<Arc<dyn Runtime>, ConfigError> {
    let runtime = QemuRuntime::new(QemuConfig {
        storage_root: config.storage_root.clone(),
        qemu_bin: PathBuf::from("qemu-system-x86_64"),
        vsock_backend_bin: PathBuf::from("vhost-device-vsock"),
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        base_rootfs: image.base_rootfs.clone(),
        accel: AccelChoice::Auto,
        boot_timeout: QEMU_BOOT_TIMEOUT,
    })
    .map_err(|e| ConfigError {
        var: "RDS_RUNTIME",
        message: format!("the qemu runtime is unavailable: {e}"),
    })?;
    let runtime = Arc::new(runtime);
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

fn sandbox(config: &Config, installation: &InstallationId) -> Result<Arc<dyn Runtime>, ConfigError> {
    if !config.agent_bin.is_file() {
        return Err(ConfigError {
            var: "RDS_AGENT_BIN",
            message: format!(
                "{} is not a file; build rds-agent or point RDS_AGENT_BIN at it",
                config.agent_bin.display()
            ),
        });
    }
    let cgroup_group =
        config.cgroup_group.clone().unwrap_or_else(|| crate::installation::default_cgroup_group(installation));
    tracing::info!(%cgroup_group, "sandbox cgroups go under this parent group");
    let runtime = SandboxRuntime::with_cgroup_group(
        SandboxConfig {
            storage_root: config.storage_root.clone(),
            agent_bin: config.agent_bin.clone(),
            pids_max: SANDBOX_PIDS_MAX,
            // The database and every VM directory live here; no sandbox may see them.
            hide_paths: vec![config.storage_root.clone()],
            host_root: config.sandbox_host_root,
        },
        &cgroup_group,
    )
    .map_err(|e| ConfigError {
        var: "RDS_RUNTIME",
        message: format!("the sandbox runtime is unavailable: {e}"),
    })?;
    if config.sandbox_host_root {
        tracing::warn!(
            "RDS_SANDBOX_ROOT=host: sandbox VMs without an image see the HOST's root filesystem \
             (read-only). For development only; never expose this manager to untrusted code"
        );
    }
    Ok(Arc::new(runtime))
}
