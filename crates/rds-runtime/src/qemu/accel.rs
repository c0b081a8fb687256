//! Choosing QEMU's accelerator: KVM when it can really run a guest, else TCG emulation.
//!
//! `/dev/kvm` existing is not enough (some hosts expose it but hang guests early in boot), so
//! the probe boots the guest kernel under KVM without a root filesystem: a working KVM reaches the
//! "Kernel panic" about the missing root within a second or two and QEMU exits (`-no-reboot`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
/// kernel's panic about the missing root.
pub async fn kvm_boots(qemu: &Path, kernel: &Path) -> bool {
    if !kvm_device_usable() {
        return false;
    }
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
    let Ok(child) = cmd.spawn() else { return false };
    match tokio::time::timeout(PROBE_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).contains("Kernel panic"),
        // Timed out: dropping the future kills QEMU (kill_on_drop).
        _ => false,
    }
}
