//! Guest PID 1 (`rds-agent init`) and the supervisor shared with the sandbox runtime.
//!
//! PID 1 stays a tiny single-threaded reaper: it must `waitpid(-1)` for orphans, which would steal
//! exit statuses from tokio's child handles, so the tokio agent runs as its child.
//!
//! Boot has two stages, both run by this same binary as PID 1:
//!
//! 1. initramfs (`/init`, recognised by `/lib/rds/modules.load`): load the kernel modules, mount
//!    the read-only base disk and the writable overlay disk as an overlayfs root, switch into it
//!    and exec `/sbin/init` — see [`initramfs`]. Any failure there is fatal and printed.
//! 2. rootfs (`/sbin/init`): mount the remaining kernel filesystems, prepare the guest and
//!    supervise the agent. These steps report failures loudly on the console but keep going where
//!    the guest can still be useful.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use rds_proto::{AGENT_VSOCK_PORT, SANDBOX_UID, WORKSPACE};

use crate::server::{self, AgentConfig, ListenOn};

/// How long processes get to exit after SIGTERM before they are SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for SIGKILLed processes to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Hostname when the kernel command line names none.
const DEFAULT_HOSTNAME: &str = "rds";

/// Set in the agent child of [`supervise`]: shutdown requests then go to the supervisor.
static SUPERVISED: AtomicBool = AtomicBool::new(false);

/// True in a process started by [`supervise`] (its parent owns shutdown).
pub fn is_supervised() -> bool {
    SUPERVISED.load(Ordering::Relaxed)
}

/// What the supervisor does once everything has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Power the machine off (guest PID 1).
    PowerOff,
    /// Exit the process (PID 1 of a sandbox's pid namespace, which then ends).
    Exit,
}

/// `rds-agent init`: boots the guest, then supervises the agent until shutdown.
pub fn main() -> anyhow::Result<()> {
    anyhow::ensure!(getpid().as_raw() == 1, "`rds-agent init` must run as PID 1 of a guest");
    if initramfs::is_initramfs() {
        // Only returns on failure; PID 1 exiting then panics the kernel, which stops the VM.
        let e = initramfs::boot_rootfs();
        console(&format!("initramfs stage failed: {e:#}"));
        return Err(e);
    }
    mount_kernel_filesystems();
    ensure_console();
    prepare_guest();
    supervise(
        || match server::run(ListenOn::Vsock(AGENT_VSOCK_PORT), AgentConfig::default()) {
            Ok(()) => 0,
            Err(e) => {
                console(&format!("agent failed: {e:#}"));
                1
            }
        },
        ExitAction::PowerOff,
    )
}

/// Prints a line on the console (stderr), where a guest's boot problems must be visible.
fn console(message: &str) {
    eprintln!("rds-init: {message}");
}

struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// proc, sys, dev, devpts, shm, cgroup2, tmpfs /tmp and /run. Already-mounted ones are fine.
fn mount_kernel_filesystems() {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts = [
        MountSpec { source: "proc", target: "/proc", fstype: "proc", flags: hardened, data: None },
        MountSpec { source: "sysfs", target: "/sys", fstype: "sysfs", flags: hardened, data: None },
        MountSpec { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: Some("mode=0755") },
        MountSpec {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("mode=0620,ptmxmode=0666"),
        },
        MountSpec {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        MountSpec { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: hardened, data: None },
        MountSpec {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        MountSpec {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
    ];
    for m in &mounts {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            console(&format!("cannot create {}: {e}", m.target));
        }
        // The initramfs stage moves /dev, /proc and /sys over; mounting them again would stack.
        if is_mount_point(Path::new(m.target)) {
            continue;
        }
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => console(&format!("mounting {} on {} failed: {e}", m.fstype, m.target)),
        }
    }
}

/// True when `path` is the root of a mount other than its parent's (a different device).
fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(own), Ok(up)) => own.dev() != up.dev(),
        _ => false,
    }
}

/// Points stdin/stdout/stderr at `/dev/console` if the kernel could not (no `/dev` at boot).
fn ensure_console() {
    // SAFETY: F_GETFD on fd 2 only queries descriptor flags.
    if unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0 {
        return;
    }
    let Ok(path) = CString::new("/dev/console") else { return };
    // SAFETY: open/dup2/close on a valid C string and descriptors this process owns.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// Hostname, loopback and the user's workspace.
fn prepare_guest() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let hostname = hostname_from_cmdline(&cmdline).unwrap_or(DEFAULT_HOSTNAME);
    if let Err(e) = nix::unistd::sethostname(hostname) {
        console(&format!("setting hostname {hostname:?} failed: {e}"));
    }
    if let Err(e) = bring_up_loopback() {
        console(&format!("bringing up lo failed: {e}"));
    }
    if let Err(e) = prepare_workspace(Path::new(WORKSPACE)) {
        console(&format!("preparing {WORKSPACE} failed: {e}"));
    }
}

/// `rds.hostname=` from the kernel command line, if it is a valid hostname.
fn hostname_from_cmdline(cmdline: &str) -> Option<&str> {
    let name = cmdline.split_ascii_whitespace().find_map(|arg| arg.strip_prefix("rds.hostname="))?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

/// Sets IFF_UP on `lo` with SIOCSIFFLAGS (no `ip` binary needed).
fn bring_up_loopback() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() has no memory preconditions; the result is checked before being owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data for which all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `request`, a valid ifreq naming `lo`.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the workspace a real directory owned by the sandbox user.
fn prepare_workspace(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", path.display())));
    }
    std::os::unix::fs::lchown(path, Some(SANDBOX_UID), Some(SANDBOX_UID))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Runs as PID 1 (single-threaded, no tokio): forks a child that calls `agent()` (whose return
/// value is the child's exit code), reaps every zombie, restarts nothing; on SIGTERM/SIGINT (and
/// Ctrl-Alt-Del, delivered as SIGINT once disabled in the kernel) stops gracefully: SIGTERM to
/// every process, up to 3 s, SIGKILL the rest, `sync()`; then powers off or exits.
/// If the agent dies unexpectedly it is logged and everything shuts down the same way.
pub fn supervise(agent: impl FnOnce() -> i32, exit: ExitAction) -> ! {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    let mut previous = SigSet::empty();
    // Blocked before the fork so no signal is lost; they are collected with sigtimedwait below.
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), Some(&mut previous)) {
        console(&format!("blocking signals failed: {e}"));
    }
    let is_pid1 = getpid().as_raw() == 1;
    if is_pid1 && exit == ExitAction::PowerOff {
        // Ctrl-Alt-Del then arrives as SIGINT instead of an immediate reboot.
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            console(&format!("disabling Ctrl-Alt-Del failed: {e}"));
        }
    }

    // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code after fork.
    let agent_pid = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            SUPERVISED.store(true, Ordering::Relaxed);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
            let code = agent();
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => Some(child),
        Err(e) => {
            console(&format!("starting the agent failed: {e}"));
            None
        }
    };

    let code = match agent_pid {
        None => 1,
        Some(agent_pid) => wait_for_stop(&signals, agent_pid),
    };
    stop_everything(&signals, is_pid1, agent_pid);
    nix::unistd::sync();
    match exit {
        ExitAction::PowerOff => {
            console("powering off");
            // Only returns on failure; PID 1 exiting then at least stops the guest (kernel panic).
            let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
            console(&format!("power off failed: {e}"));
            std::process::exit(code)
        }
        ExitAction::Exit => std::process::exit(code),
    }
}

/// Reaps children until a stop signal arrives (exit code 0) or the agent dies (its code).
fn wait_for_stop(signals: &SigSet, agent_pid: Pid) -> i32 {
    loop {
        match wait_signal(signals, None) {
            Some(libc::SIGTERM) | Some(libc::SIGINT) => {
                console("shutdown requested");
                return 0;
            }
            _ => {
                for (pid, status) in reap() {
                    if pid == agent_pid {
                        let code = match status {
                            WaitStatus::Exited(_, code) => code,
                            _ => 1,
                        };
                        console(&format!("the agent ended unexpectedly ({status:?}); shutting down"));
                        return if code == 0 { 1 } else { code };
                    }
                }
            }
        }
    }
}

/// SIGTERM to every process (PID 1: all of them; otherwise just the agent), wait, then SIGKILL.
fn stop_everything(signals: &SigSet, is_pid1: bool, agent_pid: Option<Pid>) {
    // kill(-1) outside a PID namespace of our own would hit the whole host: only PID 1 uses it.
    let everyone = if is_pid1 { Some(Pid::from_raw(-1)) } else { agent_pid };
    let Some(target) = everyone else { return };
    let _ = kill(target, Signal::SIGTERM);
    if !reap_until_gone(signals, TERM_GRACE) {
        console("processes still running after SIGTERM; sending SIGKILL");
        let _ = kill(target, Signal::SIGKILL);
        if !reap_until_gone(signals, KILL_GRACE) {
            console("some processes did not exit after SIGKILL");
        }
    }
}

/// Reaps until no child is left (true) or `limit` passes (false).
fn reap_until_gone(signals: &SigSet, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        reap();
        if matches!(waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)), Err(Errno::ECHILD)) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        wait_signal(signals, Some(left.min(Duration::from_millis(100))));
    }
}

/// Collects every exited child without blocking.
fn reap() -> Vec<(Pid, WaitStatus)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    reaped.push((pid, status));
                }
            }
        }
    }
}

/// Waits for one of the blocked `signals` (or the timeout); returns its number.
fn wait_signal(signals: &SigSet, timeout: Option<Duration>) -> Option<i32> {
    let timespec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timespec_ptr = timespec.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `signals` is a valid sigset, siginfo may be null, and the timespec (if any) lives
    // on this stack frame for the duration of the call.
    let signal = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), timespec_ptr) };
    (signal > 0).then_some(signal)
}

/// The initramfs stage of guest PID 1: modules, disks, overlay root, `switch_root`.
///
/// Disks are found by ext4 label rather than by name, because the order in which virtio-mmio
/// devices are enumerated is up to the VMM: the base root is labelled `rds-root` (the image
/// builder's `mkfs.ext4 -L`), the writable overlay disk is named by `rds.overlay=<label>` on the
/// kernel command line (absent: a tmpfs overlay, nothing persists).
pub mod initramfs {
    use std::ffi::CString;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use nix::errno::Errno;
    use nix::mount::{mount, MsFlags};

    use super::console;

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
    /// ext4 superblock: offset on disk, and offsets of the magic and the volume label within it.
    const SUPERBLOCK: u64 = 1024;
    const EXT4_MAGIC: u16 = 0xEF53;

    /// True in the initramfs (the rootfs has no module list).
    pub fn is_initramfs() -> bool {
        Path::new(MODULES_LOAD).is_file()
    }

    /// Mounts the real root and execs its `/sbin/init`; returns only the error that stopped it.
    pub fn boot_rootfs() -> anyhow::Error {
        match try_boot_rootfs() {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    fn try_boot_rootfs() -> anyhow::Result<std::convert::Infallible> {
        step("mounting /dev, /proc, /sys");
        mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
        super::ensure_console();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_comes_from_cmdline_only_when_valid() {
        assert_eq!(hostname_from_cmdline("console=ttyS0 rds.hostname=vm-1 quiet"), Some("vm-1"));
        assert_eq!(hostname_from_cmdline("rds.hostname=bad/name"), None);
        assert_eq!(hostname_from_cmdline("quiet"), None);
    }

    #[test]
    fn module_list_skips_comments_and_blank_lines_in_order() {
        let list = "# header\nlib/modules/k/a.ko\n\n  lib/modules/k/b.ko  \n";
        assert_eq!(initramfs::module_paths(list), ["lib/modules/k/a.ko", "lib/modules/k/b.ko"]);
    }

    #[test]
    fn ext4_label_requires_the_magic() {
        let mut sb = [0u8; 136];
        sb[120..128].copy_from_slice(b"rds-root");
        assert_eq!(initramfs::ext4_label(&sb), None);
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(initramfs::ext4_label(&sb), Some("rds-root"));
    }

    #[test]
    fn overlay_label_comes_from_the_command_line() {
        assert_eq!(initramfs::overlay_label("console=ttyS0 rds.overlay=rds-overlay"), Some("rds-overlay"));
        assert_eq!(initramfs::overlay_label("console=ttyS0 rds.overlay="), None);
        assert_eq!(initramfs::overlay_label("console=ttyS0"), None);
    }
}
