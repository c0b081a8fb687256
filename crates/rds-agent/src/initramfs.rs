//! The initramfs stage of guest PID 1 (`rds-initramfs`, the initramfs's `/init`): load the kernel
//! modules, mount the read-only base disk and the writable overlay disk as an overlayfs root,
//! switch into it and exec its `/sbin/init` (`rds-agent`, see [`crate::init`]). It is a binary of
//! its own so the initramfs stays small: a TCG guest unpacks every byte of it at each boot. The
//! overlay disk stays mounted at [`OVERLAY_DISK_MOUNT`] in the new root, where PID 1 remounts it
//! read-only before powering off.
//!
//! Disks are found by ext4 label rather than by name, because the order in which virtio-mmio
//! devices are enumerated is up to the VMM: the base root is labelled `rds-root` (the image
//! builder's `mkfs.ext4 -L`), the writable overlay disk is named by `rds.overlay=<label>` on the
//! kernel command line (absent: a tmpfs overlay, nothing persists).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::init::{console, ensure_console};

/// Module list written by the image builder (one initramfs-relative `.ko` path per line).
pub const MODULES_LOAD: &str = "/lib/rds/modules.load";
/// Label of the read-only base root filesystem.
pub const ROOT_LABEL: &str = "rds-root";
/// Kernel parameter naming the label of the writable overlay disk.
pub const OVERLAY_PARAM: &str = "rds.overlay=";
/// How long to wait for a disk to appear after its driver loaded.
const DISK_WAIT: Duration = Duration::from_secs(20);
const BASE_DIR: &str = "/mnt/base";
const OVERLAY_DIR: &str = "/mnt/overlay";
const NEW_ROOT: &str = "/mnt/root";
/// Where the overlay disk stays mounted in the new root (under a tmpfs `/run`, in a 0700
/// directory), so PID 1 can remount it read-only before powering off; left in the initramfs it
/// would be unreachable after the root switch.
pub const OVERLAY_DISK_MOUNT: &str = "/run/rds/overlay";
/// ext4 superblock: offset on disk, and offsets of the magic and the volume label within it.
const SUPERBLOCK: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;

/// `rds-initramfs`: mounts the real root and execs its `/sbin/init`. Returns only on failure,
/// after printing why; PID 1 exiting then panics the kernel, which stops the VM.
pub fn main() -> anyhow::Error {
    if nix::unistd::getpid().as_raw() != 1 {
        return anyhow::anyhow!("rds-initramfs must run as PID 1 of a guest's initramfs");
    }
    let e = match try_boot_rootfs() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    console(&format!("initramfs stage failed: {e:#}"));
    e
}

fn try_boot_rootfs() -> anyhow::Result<std::convert::Infallible> {
    step("mounting /dev, /proc, /sys");
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    ensure_console();
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", hardened, None)?;
    mount_fs("sysfs", "/sys", "sysfs", hardened, None)?;

    load_modules(&std::fs::read_to_string(MODULES_LOAD).with_context(|| format!("reading {MODULES_LOAD}"))?)?;

    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let base = wait_for_label(ROOT_LABEL)?;
    step(&format!("mounting {} ({ROOT_LABEL}) read-only on {BASE_DIR}", base.display()));
    let base_src = base.to_str().context("device path is not UTF-8")?;
    mount_fs(base_src, BASE_DIR, "ext4", MsFlags::MS_RDONLY, None)?;

    match overlay_label(&cmdline) {
        Some(label) => {
            let disk = wait_for_label(label)?;
            step(&format!("mounting {} ({label}) read-write on {OVERLAY_DIR}", disk.display()));
            let src = disk.to_str().context("device path is not UTF-8")?;
            mount_fs(src, OVERLAY_DIR, "ext4", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None)?;
        }
        None => {
            step(&format!("no {OVERLAY_PARAM}<label>: writes go to a tmpfs and are lost at shutdown"));
            mount_fs("tmpfs", OVERLAY_DIR, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
        }
    }
    let (upper, work) = (format!("{OVERLAY_DIR}/upper"), format!("{OVERLAY_DIR}/work"));
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    step(&format!("mounting the overlay root on {NEW_ROOT}"));
    let options = format!("lowerdir={BASE_DIR},upperdir={upper},workdir={work}");
    mount_fs("overlay", NEW_ROOT, "overlay", MsFlags::empty(), Some(&options))?;

    hand_over_overlay_disk()?;
    for fs in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{fs}");
        std::fs::create_dir_all(&target).with_context(|| format!("creating {target}"))?;
        mount(Some(fs), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .with_context(|| format!("moving {fs} to {target}"))?;
    }
    step("switching root");
    nix::unistd::chdir(NEW_ROOT).with_context(|| format!("chdir {NEW_ROOT}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    nix::unistd::chdir("/").context("chdir / in the new root")?;
    step("exec /sbin/init");
    let init = CString::new("/sbin/init").expect("no NUL");
    let err = nix::unistd::execv(&init, &[&init]).unwrap_err();
    bail!("exec /sbin/init failed: {err}")
}

/// Moves the overlay disk's mount to [`OVERLAY_DISK_MOUNT`] in the new root, on the tmpfs `/run`
/// that PID 1 would otherwise mount itself (it keeps an existing one).
fn hand_over_overlay_disk() -> anyhow::Result<()> {
    let run = format!("{NEW_ROOT}/run");
    mount_fs("tmpfs", &run, "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    let private = format!("{run}/rds");
    std::fs::DirBuilder::new().mode(0o700).create(&private).with_context(|| format!("creating {private}"))?;
    let target = format!("{NEW_ROOT}{OVERLAY_DISK_MOUNT}");
    std::fs::create_dir(&target).with_context(|| format!("creating {target}"))?;
    mount(Some(OVERLAY_DIR), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .with_context(|| format!("moving {OVERLAY_DIR} to {target}"))
}

fn step(message: &str) {
    console(message);
}

/// Creates `target` and mounts there, naming everything in the error.
fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} {source} on {target}"))
}

/// Module paths from the `modules.load` text: one per line, `#` comments and blanks ignored.
pub fn module_paths(list: &str) -> Vec<&str> {
    list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// Loads every listed module in order; one that is already loaded (EEXIST) is fine.
fn load_modules(list: &str) -> anyhow::Result<()> {
    let paths = module_paths(list);
    step(&format!("loading {} kernel modules", paths.len()));
    for rel in paths {
        let path = Path::new("/").join(rel.trim_start_matches('/'));
        let file = File::open(&path).with_context(|| format!("opening module {}", path.display()))?;
        let params = c"";
        // SAFETY: finit_module reads the module from a valid open fd and a NUL-terminated
        // (empty) parameter string; no memory of ours is written.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let errno = Errno::last();
            if errno != Errno::EEXIST {
                bail!("loading module {} failed: {errno}", path.display());
            }
        }
    }
    Ok(())
}

/// The overlay disk's label from the kernel command line, if any.
pub fn overlay_label(cmdline: &str) -> Option<&str> {
    cmdline.split_ascii_whitespace().find_map(|a| a.strip_prefix(OVERLAY_PARAM)).filter(|l| !l.is_empty())
}

/// Polls the block devices until one holds an ext4 filesystem labelled `label`.
fn wait_for_label(label: &str) -> anyhow::Result<PathBuf> {
    step(&format!("waiting for the disk labelled {label}"));
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Some(dev) = find_label(label) {
            return Ok(dev);
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = std::fs::read_dir("/sys/block")
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            bail!("no disk labelled {label} after {DISK_WAIT:?} (block devices: {seen:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find_label(label: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    names.into_iter().map(|n| PathBuf::from(format!("/dev/{n}"))).find(|dev| {
        let mut sb = [0u8; 136];
        File::open(dev).and_then(|f| f.read_exact_at(&mut sb, SUPERBLOCK)).is_ok() && ext4_label(&sb) == Some(label)
    })
}

/// The volume label of an ext2/3/4 superblock (first 136 bytes), if the magic matches.
pub fn ext4_label(sb: &[u8]) -> Option<&str> {
    let magic = u16::from_le_bytes([*sb.get(56)?, *sb.get(57)?]);
    if magic != EXT4_MAGIC {
        return None;
    }
    let name = sb.get(120..136)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    std::str::from_utf8(&name[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_list_skips_comments_and_blank_lines_in_order() {
        let list = "# header\nlib/modules/k/a.ko\n\n  lib/modules/k/b.ko  \n";
        assert_eq!(module_paths(list), ["lib/modules/k/a.ko", "lib/modules/k/b.ko"]);
    }

    #[test]
    fn ext4_label_requires_the_magic() {
        let mut sb = [0u8; 136];
        sb[120..128].copy_from_slice(b"rds-root");
        assert_eq!(ext4_label(&sb), None);
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(ext4_label(&sb), Some("rds-root"));
    }

    #[test]
    fn overlay_label_comes_from_the_command_line() {
        assert_eq!(overlay_label("console=ttyS0 rds.overlay=rds-overlay"), Some("rds-overlay"));
        assert_eq!(overlay_label("console=ttyS0 rds.overlay="), None);
        assert_eq!(overlay_label("console=ttyS0"), None);
    }
}
