//! Choosing QEMU's accelerator: KVM when it can really run a guest, else TCG emulation.
//!
//! `/dev/kvm` existing is not enough (some hosts expose it but hang guests early in boot), so
//! the probe boots the guest kernel under KVM without a root filesystem: a working KVM reaches the
//! "Kernel panic" about the missing root within a second or two and QEMU exits (`-no-reboot`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the probe's verdict is kept (tmpfs: gone with the boot it is valid for).
pub const PROBE_CACHE: &str = "/run/rds/qemu-kvm-probe";
/// How long the KVM probe may take before KVM is declared unusable.
const PROBE_LIMIT: Duration = Duration::from_secs(6);

/// The accelerator a VM runs with (reported as `accel` in [`crate::VmHandle::extra`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation (slow, works everywhere).
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM if the probe boots a guest with it, else TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// Whether `/dev/kvm` is backed by a hardware-virtualisation module (kvm_intel, kvm_amd) that runs
/// ordinary guest kernels. Paravirtual KVM flavours (e.g. `kvm_pvm`, found on hosts that are
/// themselves VMs) run only guests built for them.
pub fn kvm_boots_guests() -> bool {
    Path::new("/dev/kvm").exists() && ["kvm_intel", "kvm_amd"].iter().any(|m| Path::new("/sys/module").join(m).exists())
}

/// True when `/dev/kvm` can be opened read-write by this process.
fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Boots `kernel` under KVM with no root filesystem and reports whether it got as far as the
/// kernel's panic about the missing root. The verdict is cached in `cache` for this boot of the
/// host, QEMU binary and kernel, so only the first manager start pays for the probe (up to
/// [`PROBE_LIMIT`]).
pub async fn kvm_boots(qemu: &Path, kernel: &Path, cache: &Path) -> bool {
    if !kvm_device_usable() {
        return false;
    }
    if let Some(verdict) = crate::probe_cache::lookup(cache, qemu, kernel) {
        return verdict.is_ok();
    }
    let verdict = probe(qemu, kernel).await;
    crate::probe_cache::store(cache, qemu, kernel, &verdict);
    verdict.is_ok()
}

async fn probe(qemu: &Path, kernel: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(["-accel", "kvm", "-cpu", "host", "-machine", "microvm,pit=on,pic=on,rtc=on"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-m", "128"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 reboot=t"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // The probe dies with the manager: `kill_on_drop` does not run when the process exits.
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    match tokio::time::timeout(PROBE_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) if String::from_utf8_lossy(&out.stdout).contains("Kernel panic") => Ok(()),
        Ok(_) => Err("QEMU exited before the kernel's first panic".into()),
        // Timed out: dropping the future kills QEMU (kill_on_drop).
        Err(_) => Err(format!("the kernel made no progress under KVM within {PROBE_LIMIT:?}")),
    }
}
