//! Guest PID 1 (`rds-agent init`) and the supervisor shared with the sandbox runtime.
//!
//! PID 1 stays a tiny single-threaded reaper: it must `waitpid(-1)` for orphans, which would steal
//! exit statuses from tokio's child handles, so the tokio agent runs as its child.
//!
//! It runs as the rootfs's `/sbin/init`, exec'd by the initramfs stage ([`crate::initramfs`]):
//! it mounts the remaining kernel filesystems, prepares the guest and supervises the agent. These
//! steps report failures loudly on the console but keep going where the guest can still be useful.

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
use rds_proto::guest_net::GuestNet;
use rds_proto::{AGENT_VSOCK_PORT, SANDBOX_UID, WORKSPACE};

use crate::netconf;
use crate::run::pool::{DEFAULT_WARM_POOL, MAX_WARM_POOL};
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
    mount_kernel_filesystems();
    ensure_console();
    prepare_guest();
    let listen = match agent_channel_port() {
        Some(device) => ListenOn::Serial(device),
        None => ListenOn::Vsock(AGENT_VSOCK_PORT),
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let warm_pool = warm_pool_from_cmdline(&cmdline).unwrap_or(DEFAULT_WARM_POOL);
    supervise(
        || match server::run(listen, AgentConfig { exec_cgroups: true, warm_pool, ..AgentConfig::default() }) {
            Ok(()) => 0,
            Err(e) => {
                console(&format!("agent failed: {e:#}"));
                1
            }
        },
        ExitAction::PowerOff,
    )
}

/// How long the agent channel's port may take to appear once its device is there.
const CHANNEL_PORT_WAIT: Duration = Duration::from_secs(5);

/// The virtio-serial port of the agent channel ([`rds_mux::PORT_NAME`]) when the VM has a
/// virtio-serial device (QEMU), else `None` (vsock, Firecracker). The device node is root-only
/// (devtmpfs's default 0600), so user code cannot open it.
fn agent_channel_port() -> Option<std::path::PathBuf> {
    let has_device = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_console")
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("virtio")))
        .unwrap_or(false);
    if !has_device {
        return None;
    }
    // Ports are announced by the device after its driver bound: give it a moment.
    let end = Instant::now() + CHANNEL_PORT_WAIT;
    loop {
        if let Some(port) = rds_mux::guest::find_port(rds_mux::PORT_NAME) {
            if port.exists() {
                return Some(port);
            }
        }
        if Instant::now() >= end {
            console(&format!("a virtio-serial device but no port {:?}: using vsock", rds_mux::PORT_NAME));
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Prints a line on the console (stderr), where a guest's boot problems must be visible.
pub(crate) fn console(message: &str) {
    eprintln!("rds-init: {message}");
}

struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// proc, sys, dev, devpts, shm, cgroup2, tmpfs /tmp, /var/tmp and /run. Already-mounted ones are fine.
fn mount_kernel_filesystems() {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts = [
        MountSpec { source: "proc", target: "/proc", fstype: "proc", flags: hardened, data: None },
        MountSpec { source: "sysfs", target: "/sys", fstype: "sysfs", flags: hardened, data: None },
        MountSpec {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
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
        // Private and writable whatever the image's /var/tmp looks like, as in the sandbox runtime.
        MountSpec {
            source: "tmpfs",
            target: "/var/tmp",
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
pub(crate) fn ensure_console() {
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

/// Hostname, loopback, the network link (`rds.net=`) and the user's workspace.
fn prepare_guest() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let hostname = hostname_from_cmdline(&cmdline).unwrap_or(DEFAULT_HOSTNAME);
    if let Err(e) = nix::unistd::sethostname(hostname) {
        console(&format!("setting hostname {hostname:?} failed: {e}"));
    }
    if let Err(e) = netconf::bring_up_loopback() {
        console(&format!("bringing up lo failed: {e}"));
    }
    match GuestNet::from_cmdline(&cmdline) {
        None => {}
        Some(Err(e)) => console(&format!("no network: {e}")),
        Some(Ok(net)) => {
            if let Err(e) = netconf::configure(netconf::GUEST_IFACE, &net) {
                console(&format!("configuring {} failed: {e}", netconf::GUEST_IFACE));
            }
            if let Err(e) = write_resolv_conf(&net.resolv_conf()) {
                console(&format!("writing /etc/resolv.conf failed: {e}"));
            }
        }
    }
    // The overlay disk's root holds the overlay's upper and work directories: root's alone, also
    // once `/run/rds` lets user code pass through to the peer bridge.
    let overlay_disk = Path::new(crate::initramfs::OVERLAY_DISK_MOUNT);
    if overlay_disk.is_dir() {
        if let Err(e) = std::fs::set_permissions(overlay_disk, std::fs::Permissions::from_mode(0o700)) {
            console(&format!("narrowing {} failed: {e}", overlay_disk.display()));
        }
    }
    if let Err(e) = prepare_workspace(Path::new(WORKSPACE)) {
        console(&format!("preparing {WORKSPACE} failed: {e}"));
    }
}

/// Whether the kernel command line says the VMM ends the VM on a reset rather than a power-off.
fn resets_to_power_off(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|arg| arg == "rds.poweroff=reset")
}

/// `rds.warm=` from the kernel command line: the interpreters per language the agent keeps
/// started ahead of runs, if it is a number the agent accepts.
fn warm_pool_from_cmdline(cmdline: &str) -> Option<usize> {
    let n = cmdline.split_ascii_whitespace().find_map(|arg| arg.strip_prefix("rds.warm="))?.parse().ok()?;
    (n <= MAX_WARM_POOL).then_some(n)
}

/// `rds.hostname=` from the kernel command line, if it is a valid hostname.
fn hostname_from_cmdline(cmdline: &str) -> Option<&str> {
    let name = cmdline.split_ascii_whitespace().find_map(|arg| arg.strip_prefix("rds.hostname="))?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

/// Replaces `/etc/resolv.conf` (a file or a symlink in the image) with `text`, root-owned 0644.
pub(crate) fn write_resolv_conf(text: &str) -> io::Result<()> {
    let path = Path::new("/etc/resolv.conf");
    let staged = Path::new("/etc/.resolv.conf.rds");
    std::fs::write(staged, text)?;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(staged, path)
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
/// every process, up to 3 s, SIGKILL the rest, `sync()`; then exits, or (guest PID 1) remounts
/// the disk filesystems read-only, syncs again and powers off.
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
            // The kernel powers off with its filesystems still mounted read-write: without this,
            // ext4's journal and lazy-init threads may still write to the overlay disk while the
            // devices shut down.
            quiesce_filesystems();
            nix::unistd::sync();
            // Firecracker has no power-off device: its VM ends when the guest resets (`reboot=k`),
            // so its kernel command line asks for a reset instead (`rds.poweroff=reset`).
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let mode = if resets_to_power_off(&cmdline) {
                console("powering off (by a reset)");
                nix::sys::reboot::RebootMode::RB_AUTOBOOT
            } else {
                console("powering off");
                nix::sys::reboot::RebootMode::RB_POWER_OFF
            };
            // Only returns on failure; PID 1 exiting then at least stops the guest (kernel panic).
            let Err(e) = nix::sys::reboot::reboot(mode);
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

/// A mount from `/proc/self/mountinfo`: where it is, its filesystem type and source, and whether
/// its superblock is writable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    target: String,
    fstype: String,
    source: String,
    writable: bool,
}

/// Parses `/proc/self/mountinfo` text; lines it cannot read are skipped.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // `<id> <parent> <dev> <root> <target> <opts> [optional...] - <fstype> <source> <super opts>`
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let (fstype, source, super_opts) = (right.next()?, right.next()?, right.next()?);
            Some(MountEntry {
                target: unescape_mountinfo(target),
                fstype: fstype.to_string(),
                source: unescape_mountinfo(source),
                writable: super_opts.split(',').any(|o| o == "rw"),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writable filesystems that hold data on a disk: overlays and block-device mounts (tmpfs, proc
/// and the like keep nothing across a power-off). Later mounts first, so children precede parents.
fn disk_backed_writable(mounts: &[MountEntry]) -> Vec<String> {
    mounts
        .iter()
        .rev()
        .filter(|m| m.writable && (m.fstype == "overlay" || m.source.starts_with("/dev/")))
        .map(|m| m.target.clone())
        .collect()
}

/// Remounts every disk-backed writable filesystem read-only (the root overlay flushes into its
/// upper filesystem; the upper ext4 commits its journal, marks itself clean and stops its
/// background threads), so nothing writes to a disk after this returns. The root overlay cannot
/// be unmounted while PID 1 runs from it; read-only is as quiet.
fn quiesce_filesystems() {
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            console(&format!("cannot read /proc/self/mountinfo ({e}); powering off with filesystems read-write"));
            return;
        }
    };
    let mut pending = disk_backed_writable(&parse_mountinfo(&text));
    let mut errors = Vec::new();
    let mut done = Vec::new();
    // Mount order says little about stacking once mounts were moved: one that was still busy
    // because of another is retried until a pass changes nothing.
    while !pending.is_empty() {
        errors.clear();
        let before = pending.len();
        pending.retain(|target| {
            match mount(
                None::<&str>,
                target.as_str(),
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ) {
                Ok(()) => {
                    done.push(target.clone());
                    false
                }
                Err(e) => {
                    errors.push(format!("{target}: {e}"));
                    true
                }
            }
        });
        if pending.len() == before {
            break;
        }
    }
    if errors.is_empty() {
        console(&format!("filesystems read-only: [{}]", done.join(", ")));
    } else {
        console(&format!("could not remount read-only ({}); powering off anyway", errors.join("; ")));
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
    let timespec = timeout
        .map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as libc::c_long });
    let timespec_ptr = timespec.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `signals` is a valid sigset, siginfo may be null, and the timespec (if any) lives
    // on this stack frame for the duration of the call.
    let signal = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), timespec_ptr) };
    (signal > 0).then_some(signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_replaces_the_power_off_only_when_the_cmdline_asks() {
        assert!(resets_to_power_off("console=ttyS0 reboot=k rds.poweroff=reset quiet"));
        assert!(!resets_to_power_off("console=ttyS0 rds.poweroff=resetx"));
        assert!(!resets_to_power_off("console=ttyS0"));
    }

    #[test]
    fn warm_pool_comes_from_cmdline_only_when_valid() {
        assert_eq!(warm_pool_from_cmdline("console=ttyS0 rds.warm=0 quiet"), Some(0));
        assert_eq!(warm_pool_from_cmdline("rds.warm=3"), Some(3));
        assert_eq!(warm_pool_from_cmdline("rds.warm=9"), None);
        assert_eq!(warm_pool_from_cmdline("rds.warm=-1 rds.warmer=2"), None);
        assert_eq!(warm_pool_from_cmdline("quiet"), None);
    }

    #[test]
    fn hostname_comes_from_cmdline_only_when_valid() {
        assert_eq!(hostname_from_cmdline("console=ttyS0 rds.hostname=vm-1 quiet"), Some("vm-1"));
        assert_eq!(hostname_from_cmdline("rds.hostname=bad/name"), None);
        assert_eq!(hostname_from_cmdline("quiet"), None);
    }

    #[test]
    fn mountinfo_yields_writable_disk_filesystems_children_first() {
        let text = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/mnt/base,upperdir=/mnt/overlay/upper,workdir=/mnt/overlay/work
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=4k,mode=755
24 22 0:22 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
25 24 254:16 / /run/rds/overlay rw,nosuid,nodev - ext4 /dev/vdb rw
26 22 254:0 / /base\\040dir ro,relatime - ext4 /dev/vda ro
27 22 254:32 / /data\\040disk rw shared:1 - ext4 /dev/vdc rw,errors=remount-ro
garbage line
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 6);
        assert_eq!(
            mounts[4],
            MountEntry {
                target: "/base dir".into(),
                fstype: "ext4".into(),
                source: "/dev/vda".into(),
                writable: false
            }
        );
        assert_eq!(disk_backed_writable(&mounts), ["/data disk", "/run/rds/overlay", "/"]);
    }

    #[test]
    fn mountinfo_unescaping_leaves_plain_and_malformed_text_alone() {
        assert_eq!(unescape_mountinfo("/a\\011b\\134c"), "/a\tb\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\09"), "/x\\09");
    }
}
