//! Can this host's KVM run our guest kernel under Firecracker? `/dev/kvm` answering is not
//! enough: a paravirtual KVM (`kvm_pvm`, on hosts that are themselves VMs) runs only kernels built
//! for it, and an ordinary one makes no progress there. The probe boots the image's kernel with no
//! root filesystem (`firecracker --no-api --config-file`): a KVM that runs it reaches the kernel's
//! panic about the missing root within a second or two. The verdict is cached per host boot,
//! Firecracker version and kernel, so `RDS_RUNTIME=auto` pays for it once.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the probe guest gets to reach its panic.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// `Ok` when Firecracker (`firecracker`, with `seccomp_args`) boots `kernel` on this host's KVM;
/// `Err` says why not. The verdict is read from, or written to, `cache`.
pub fn kvm_boots_kernel(
    firecracker: &Path,
    seccomp_args: &[String],
    kernel: &Path,
    cache: &Path,
) -> Result<(), String> {
    super::kvm_api_ok()?;
    crate::probe_cache::verdict(cache, firecracker, kernel, || boot(firecracker, seccomp_args, kernel))
}

/// Boots `kernel` without a root filesystem and watches the serial console for the panic.
fn boot(firecracker: &Path, seccomp_args: &[String], kernel: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a probe directory: {e}"))?;
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "boot_args": "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1",
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    let config_path = dir.path().join("probe.json");
    std::fs::write(&config_path, config.to_string()).map_err(|e| format!("cannot write the probe config: {e}"))?;
    let mut child = Command::new(firecracker)
        .args(["--no-api", "--config-file"])
        .arg(&config_path)
        .args(seccomp_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", firecracker.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(12).any(|w| w == b"Kernel panic") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let started = Instant::now();
    let verdict = rx.recv_timeout(PROBE_LIMIT);
    let _ = child.kill();
    let _ = child.wait();
    match verdict {
        Ok(()) => {
            tracing::info!(took = ?started.elapsed(), "firecracker boot probe: KVM runs the guest kernel");
            Ok(())
        }
        Err(_) => Err(format!(
            "KVM did not run the guest kernel under Firecracker to its first panic within {PROBE_LIMIT:?} \
             (a paravirtual KVM such as kvm_pvm runs only kernels built for it)"
        )),
    }
}
