//! Building the command that runs untrusted code: a fresh session, no privileges, no inherited
//! file descriptors, a fresh environment.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The unprivileged identity user code runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// `PATH` every command starts with.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The environment every command starts from (the agent's own environment is never passed on).
pub fn base_env(workspace: &Path) -> BTreeMap<String, String> {
    [
        ("PATH", SANDBOX_PATH),
        ("HOME", &workspace.to_string_lossy()),
        ("USER", "user"),
        ("LOGNAME", "user"),
        ("SHELL", "/bin/bash"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Finds `name` in the sandbox `PATH` (the agent's own `PATH` is irrelevant to user code).
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    SANDBOX_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// What to run and how.
pub struct CommandSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// Absolute directory, entered only after privileges are dropped.
    pub cwd: &'a Path,
    pub identity: Identity,
    pub stdin: bool,
    /// Open `cgroup.procs` files the child moves itself into (before dropping privileges).
    pub cgroup_procs: &'a [std::os::fd::RawFd],
}

/// Builds a `tokio` command that, in the child between fork and exec: starts a new session,
/// drops every capability and supplementary group, switches to `identity`, sets no_new_privs,
/// enters `cwd` as that user and marks every inherited descriptor above stderr close-on-exec.
pub fn sandboxed_command(spec: &CommandSpec<'_>) -> io::Result<tokio::process::Command> {
    let cwd = CString::new(spec.cwd.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cwd contains a NUL byte"))?;
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(spec.args)
        .env_clear()
        .envs(spec.env)
        .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let Identity { uid, gid } = spec.identity;
    // Only root can (and needs to) switch identity; an unprivileged agent already runs as the user.
    // SAFETY: geteuid has no preconditions.
    let switch_identity = unsafe { libc::geteuid() } != uid;
    let cgroup_procs = spec.cgroup_procs.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls on data prepared before the fork (`cwd` is owned by the closure).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::umask(0o022);
            // Writing "0" moves the writer itself; done while still privileged (v1 checks the uid).
            for fd in &cgroup_procs {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if switch_identity {
                // Empty the bounding set while we still hold CAP_SETPCAP; EINVAL past the last cap.
                for cap in 0..64 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                }
                if libc::setgroups(0, std::ptr::null()) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Entered as the user, so a symlink planted in the workspace cannot lead root anywhere.
            if libc::chdir(cwd.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Close-on-exec rather than close: std's own exec-error pipe must survive until exec.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    Ok(cmd)
}
