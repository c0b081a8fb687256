//! Loop devices for ext4 image files: image root filesystems (read-only) and per-VM workspace
//! disks (read-write), used by the sandbox launcher.
//!
//! [`mount_image`] attaches an ext4 image file to a free loop device with `LO_FLAGS_AUTOCLEAR`
//! (and `LO_FLAGS_READ_ONLY` for a read-only mount) in one `LOOP_CONFIGURE` call and mounts it.
//! The only long-lived reference to the device is then the mount: when the mount namespace that
//! holds it dies, the kernel detaches the device by itself, so nothing is left to clean up even
//! if the launcher is killed.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use linux_raw_sys::loop_device::{
    loop_config, loop_info64, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY,
};
use nix::mount::{mount, MsFlags};

/// How often a free device is claimed again when another process takes it first. Concurrent
/// claimers all get the same free device from LOOP_CTL_GET_FREE and only one wins per round, so
/// this bounds how many may attach at once where the lock below is not shared (50 creates at once
/// beside other managers exhausted 16).
const CLAIM_ATTEMPTS: usize = 512;

/// A configured loop device; closing it (drop) detaches it unless something (a mount) still uses it.
pub struct LoopDevice {
    file: File,
    path: PathBuf,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Attaches `image` to a free loop device that detaches itself when its last user goes.
pub fn attach(image: &Path, read_only: bool) -> Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .with_context(|| format!("cannot open image {}", image.display()))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .context("cannot open /dev/loop-control (is the loop module loaded?)")?;
    let config = loop_config_for(&backing, image, read_only);
    // Claims are serialised host-wide by a lock on /dev/loop-control (every process that opens the
    // same device node shares it), so GET_FREE and CONFIGURE do not race; the lock goes with
    // `control` at return. Without it (a lock refused, or a private device node) the retries
    // below still settle the race.
    // SAFETY: flock on a descriptor we own; it only blocks until another claimer is done.
    let _ = unsafe { libc::flock(control.as_raw_fd(), libc::LOCK_EX) };
    for attempt in 0..CLAIM_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            bail!("LOOP_CTL_GET_FREE: {}", std::io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: `config` is a fully initialised loop_config that outlives the call; the kernel
        // only reads it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CONFIGURE as _, &config as *const loop_config) };
        if rc == 0 {
            return Ok(LoopDevice { file, path });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            bail!("LOOP_CONFIGURE {} with {}: {err}", path.display(), image.display());
        }
        // Another process configured this device between GET_FREE and CONFIGURE: take the next,
        // after a short pause that grows, so the racers spread out.
        std::thread::sleep(std::time::Duration::from_micros(100 * (attempt as u64 % 20 + 1)));
    }
    bail!("no free loop device after {CLAIM_ATTEMPTS} attempts")
}

fn loop_config_for(backing: &File, image: &Path, read_only: bool) -> loop_config {
    // SAFETY: loop_info64 is plain old data; all-zero is its documented "unset" value.
    let mut info: loop_info64 = unsafe { std::mem::zeroed() };
    info.lo_flags = LO_FLAGS_AUTOCLEAR as u32 | if read_only { LO_FLAGS_READ_ONLY as u32 } else { 0 };
    // Shown by `losetup -a`; truncated, informational only (the kernel keeps the real path).
    let name = image.as_os_str().as_bytes();
    let len = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    // SAFETY: as above, all-zero loop_config means "default block size, no extra flags".
    let mut config: loop_config = unsafe { std::mem::zeroed() };
    config.fd = backing.as_raw_fd() as u32;
    config.info = info;
    config
}

/// Mounts the ext4 image `image` nosuid, nodev (and read-only when `read_only`) on `target`
/// through an auto-clearing loop device. Returns the device path (for messages).
pub fn mount_image(image: &Path, target: &Path, read_only: bool) -> Result<PathBuf> {
    let device = attach(image, read_only)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(Some(device.path()), target, Some("ext4"), flags, None::<&str>).with_context(|| {
        format!("cannot mount {} ({}) as ext4 on {}", image.display(), device.path().display(), target.display())
    })?;
    let path = device.path.clone();
    // The mount now holds the device; closing our fd leaves AUTOCLEAR to the kernel.
    drop(device.file);
    Ok(path)
}
