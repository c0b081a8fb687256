//! `rds-agent sandbox`: the launcher of the sandbox runtime.
//!
//! Started (detached, already inside the VM's cgroup) by the runtime with a [`SandboxSpec`] and the
//! agent's listening socket as an inherited fd. It makes the VM's own user namespace (uid 0..65535
//! inside = a host uid range no other VM has), enters fresh mount/pid/net/ipc/uts/cgroup namespaces,
//! moves into the VM's `agent` cgroup and forks: the child becomes PID 1 of the new pid namespace,
//! assembles the root — the image's ext4 root read-only, private `/proc`, `/dev`, sized `/tmp`,
//! `/var/tmp`, `/dev/shm` and `/run`, the VM's workspace disk at `/workspace`, its `user` cgroups — with the
//! image and workspace idmapped into the user namespace, `pivot_root`s into it, enters the user
//! namespace, drops capabilities, installs the seccomp filter and supervises the agent. The parent
//! stays outside the pid namespace, forwards SIGTERM/SIGINT to PID 1 and exits with its status;
//! PID 1 dies with it (`PR_SET_PDEATHSIG`), and with PID 1 the whole namespace.
//!
//! Everything before the fork stays single-threaded (no tokio): the agent builds its own runtime.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pivot_root, sethostname, ForkResult, Pid};
use rds_proto::sandbox::{SandboxSpec, MAX_RESOLV_CONF_BYTES, SANDBOX_BRIDGE_DIR, SANDBOX_SPEC_ENV, USERNS_RANGE};

use crate::init::{supervise, ExitAction};
use crate::run::pool::{DEFAULT_WARM_POOL, MAX_WARM_POOL};
use crate::server::{AgentConfig, ListenOn};

/// Arguments of `rds-agent sandbox`.
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// The sandbox spec as JSON, or the path of a JSON file. The runtime passes it in the environment
    /// so it does not show in `/proc/1/cmdline` inside the sandbox.
    #[arg(long, env = SANDBOX_SPEC_ENV, hide_env_values = true)]
    pub spec: String,
}

/// Top-level entries of the new root that get their own fresh mounts instead of a bind of the source.
const OWN_MOUNTS: [&str; 6] = ["proc", "dev", "sys", "tmp", "run", "workspace"];
/// Host device nodes bind-mounted into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// `/proc` entries made read-only: they configure the host kernel.
const PROC_READONLY: [&str; 4] = ["sys", "sysrq-trigger", "irq", "bus"];
/// Host paths always hidden when the host root is the sandbox root.
const ALWAYS_HIDDEN: [&str; 2] = ["/root", "/home"];

/// Entry point of `rds-agent sandbox`.
pub fn main(args: SandboxArgs) -> Result<()> {
    let spec = load_spec(&args.spec)?;
    check_spec(&spec)?;
    // The spec must not reach the agent's (or user code's) environment.
    std::env::remove_var(SANDBOX_SPEC_ENV);
    let listener = take_fd(spec.listen_fd, "listen", Some(libc::S_IFSOCK))?;
    // Held (never read) for as long as the VM lives: the host-wide claim on its uid range.
    let uid_lock = spec.uid_lock_fd.map(|fd| take_fd(fd, "uid lock", Some(libc::S_IFREG))).transpose()?;
    let userns = make_user_namespace(spec.uid_base).context("cannot create the VM's user namespace")?;

    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .context("cannot create namespaces (the sandbox runtime needs root)")?;
    // After the cgroup namespace exists, so its root is the VM's group and the agent can still
    // reach the `user` group beside its own (cgroup v2 only lets a process move others between
    // groups its namespace can see).
    for procs in &spec.agent_cgroup_procs {
        std::fs::write(procs, "0").with_context(|| format!("cannot join {}", procs.display()))?;
    }

    // Block the signals the parent handles synchronously, before the child can exist.
    let mut forwarded = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        forwarded.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), None).context("sigprocmask")?;

    // SAFETY: this process is single-threaded (no runtime has been started), so the child may run
    // arbitrary code after fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(uid_lock);
            let err = run_pid1(&spec, listener, userns, &forwarded).unwrap_err();
            eprintln!("rds-agent sandbox: {err:#}");
            std::process::exit(1);
        }
        ForkResult::Parent { child } => {
            drop(listener);
            drop(userns);
            let code = forward_and_wait(child, &forwarded)?;
            std::process::exit(code);
        }
    }
}

fn load_spec(arg: &str) -> Result<SandboxSpec> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read sandbox spec {arg}"))?
    };
    rds_proto::parse_json(text.as_bytes()).map_err(|e| anyhow::anyhow!("bad sandbox spec: {e}"))
}

fn check_spec(spec: &SandboxSpec) -> Result<()> {
    let id = &spec.vm_id;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("invalid VM id {id:?}");
    }
    let h = &spec.hostname;
    if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        bail!("invalid hostname {h:?}");
    }
    let paths = [Some(&spec.root_dir), Some(&spec.workspace), Some(&spec.bridge_dir), spec.rootfs.as_ref()];
    let cgroup_dirs = spec.user_cgroups.iter().map(|c| &c.dir);
    for p in paths.into_iter().flatten().chain(&spec.hide_paths).chain(&spec.agent_cgroup_procs).chain(cgroup_dirs) {
        if !p.is_absolute() {
            bail!("sandbox spec path {} is not absolute", p.display());
        }
    }
    for c in &spec.user_cgroups {
        if !c.at.is_empty() && !c.at.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            bail!("invalid cgroup controller name {:?}", c.at);
        }
    }
    if spec.uid_base == 0 || spec.uid_base.checked_add(USERNS_RANGE).is_none() {
        bail!("uid base {} leaves no room for a {USERNS_RANGE}-id range", spec.uid_base);
    }
    if spec.tmp_mb == 0 || spec.shm_mb == 0 {
        bail!("tmp and shm sizes must be at least 1 MiB");
    }
    if let Some(n) = spec.warm_interpreters.filter(|&n| n as usize > MAX_WARM_POOL) {
        bail!("{n} warm interpreters is more than {MAX_WARM_POOL}");
    }
    if spec.listen_fd < 3 {
        bail!("listen fd {} is not an inherited socket", spec.listen_fd);
    }
    if let Some(text) = &spec.resolv_conf {
        if text.len() > MAX_RESOLV_CONF_BYTES || text.contains('\0') {
            bail!("resolv.conf must be at most {MAX_RESOLV_CONF_BYTES} bytes of text");
        }
    }
    Ok(())
}

/// Takes ownership of an inherited fd after checking it is open (and of file type `kind`).
fn take_fd(fd: i32, what: &str, kind: Option<libc::mode_t>) -> Result<OwnedFd> {
    if fd < 3 {
        bail!("{what} fd {fd} is not an inherited descriptor");
    }
    let stat = nix::sys::stat::fstat(fd).with_context(|| format!("{what} fd {fd} is not open"))?;
    if kind.is_some_and(|k| stat.st_mode & libc::S_IFMT != k) {
        bail!("{what} fd {fd} has the wrong file type");
    }
    // SAFETY: the runtime passed this fd to us alone; it is open (fstat succeeded) and nothing else
    // in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Children of the agent (user code) must not inherit it.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).context("fcntl")?;
    Ok(owned)
}

/// Creates the VM's user namespace: ids 0..[`USERNS_RANGE`] inside are `base..` on the host, and
/// the namespace is owned by host uid `base`, so per-user kernel accounting (inotify instances,
/// keys, process counts) is charged per VM, never to the host's root. Returns an fd of it.
///
/// A helper child switches to `base`, unshares, and waits while this process (root outside)
/// writes its id maps; the namespace outlives the helper through the returned fd.
fn make_user_namespace(base: u32) -> Result<OwnedFd> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: this process is single-threaded; the child makes only raw system calls and _exits.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            // Our copies of the parent's ends: `go_w` must close here or the read below never ends.
            drop(ready_r);
            drop(go_w);
            // SAFETY: plain system calls on integers and fds owned by this process; no allocation.
            unsafe {
                let ok = libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(base, base, base) == 0
                    && libc::setresuid(base, base, base) == 0
                    && libc::unshare(libc::CLONE_NEWUSER) == 0;
                let errno: i32 = if ok { 0 } else { *libc::__errno_location() };
                libc::write(ready_w.as_raw_fd(), (&errno as *const i32).cast(), 4);
                let mut byte = 0u8;
                libc::read(go_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            let result = (|| {
                let mut errno = [0u8; 4];
                File::from(ready_r).read_exact(&mut errno).context("the user namespace helper died")?;
                let errno = i32::from_ne_bytes(errno);
                if errno != 0 {
                    bail!("unshare(CLONE_NEWUSER) as uid {base}: {}", std::io::Error::from_raw_os_error(errno));
                }
                let map = format!("0 {base} {USERNS_RANGE}\n");
                for file in ["uid_map", "gid_map"] {
                    let path = format!("/proc/{child}/{file}");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(map.as_bytes()))
                        .with_context(|| format!("cannot write {path}"))?;
                }
                let ns = File::open(format!("/proc/{child}/ns/user")).context("cannot open the user namespace")?;
                Ok(OwnedFd::from(ns))
            })();
            drop(go_w);
            let _ = waitpid(child, None);
            result
        }
    }
}

/// Enters the VM's user namespace as its root (host uid `uid_base`), with every capability in it
/// and none outside it. Everything mounted before stays owned by the host's root.
fn enter_user_namespace(userns: OwnedFd) -> Result<()> {
    nix::sched::setns(&userns, CloneFlags::CLONE_NEWUSER).context("setns(user)")?;
    drop(userns);
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
            bail!("cannot become root of the user namespace: {}", std::io::Error::last_os_error());
        }
        // A credential change clears the parent-death signal: set it again.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            bail!("PR_SET_PDEATHSIG: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Parent side: forwards SIGTERM/SIGINT to PID 1 and returns its exit status as a shell would.
fn forward_and_wait(child: Pid, signals: &SigSet) -> Result<i32> {
    loop {
        match signals.wait().context("sigwait")? {
            Signal::SIGCHLD => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    eprintln!("rds-agent sandbox: PID 1 exited with status {code}");
                    return Ok(code);
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    eprintln!("rds-agent sandbox: PID 1 killed by {sig}");
                    return Ok(128 + sig as i32);
                }
                Ok(_) => {}
                Err(e) => bail!("waitpid: {e}"),
            },
            sig => {
                let _ = kill(child, sig);
            }
        }
    }
}

/// Child side: becomes the sandbox's PID 1. Returns only on error.
fn run_pid1(
    spec: &SandboxSpec,
    listener: OwnedFd,
    userns: OwnedFd,
    signals: &SigSet,
) -> Result<std::convert::Infallible> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(signals), None).context("sigprocmask")?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        bail!("PR_SET_PDEATHSIG: {}", std::io::Error::last_os_error());
    }
    build_root(spec, &userns).context("cannot build the sandbox root")?;
    sethostname(&spec.hostname).context("sethostname")?;
    loopback_up().context("cannot bring up lo")?;
    // From here on nothing in the sandbox holds a capability over the host's namespaces.
    enter_user_namespace(userns).context("cannot enter the VM's user namespace")?;
    // No process in the sandbox may gain privileges through execve (setuid binaries, file caps).
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    // The root is built; from here on PID 1 and the agent only run code as uid 1000, move files
    // in /workspace and signal their own processes. Nothing needs mounts, devices or the network.
    keep_only_capabilities(AGENT_CAPABILITIES).context("cannot drop capabilities")?;
    // Last: PID 1, the agent and every user process run under the filter (docs/security.md).
    crate::seccomp::install().context("cannot install the seccomp filter")?;
    supervise(
        move || match crate::server::run(
            ListenOn::Fd(listener),
            AgentConfig {
                exec_cgroups: true,
                warm_pool: spec.warm_interpreters.map_or(DEFAULT_WARM_POOL, |n| n as usize),
                ..AgentConfig::default()
            },
        ) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rds-agent: {e:#}");
                1
            }
        },
        ExitAction::Exit,
    )
}

/// What the sandbox's PID 1 and agent keep: switching to uid 1000 (SETUID, SETGID, and SETPCAP to
/// empty the children's bounding set), signalling user processes (KILL), and working on user-owned
/// files in /workspace (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID). Notably gone:
/// SYS_ADMIN, NET_ADMIN, SYS_PTRACE, SYS_MODULE, MKNOD, SYS_CHROOT.
const AGENT_CAPABILITIES: &[u32] = &[
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    2, // CAP_DAC_READ_SEARCH
    3, // CAP_FOWNER
    4, // CAP_FSETID
    5, // CAP_KILL
    6, // CAP_SETGID
    7, // CAP_SETUID
    8, // CAP_SETPCAP
];

/// Reduces this process's bounding, ambient, effective, permitted and inheritable capability sets
/// to `keep` (children forked afterwards inherit the reduced sets).
fn keep_only_capabilities(keep: &[u32]) -> Result<()> {
    const LAST_CAP: u32 = 63;
    for cap in 0..=LAST_CAP {
        if !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments only; EINVAL past the kernel's last cap is fine.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut sets = [Data::default(); 2];
    for &cap in keep {
        let slot = &mut sets[(cap / 32) as usize];
        slot.effective |= 1 << (cap % 32);
        slot.permitted |= 1 << (cap % 32);
    }
    let header = Header { version: VERSION_3, pid: 0 };
    // SAFETY: capset reads one header and two data structs laid out as the kernel's v3 ABI expects;
    // both live on this stack frame for the duration of the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, sets.as_ptr()) } != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_at(src: Option<&Path>, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<()> {
    mount(src, target, fstype, flags, data).with_context(|| {
        format!(
            "mount {} on {} ({fstype:?}, {flags:?})",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display()
        )
    })
}

fn bind(src: &Path, target: &Path, recursive: bool) -> Result<()> {
    let flags = if recursive { MsFlags::MS_BIND | MsFlags::MS_REC } else { MsFlags::MS_BIND };
    mount_at(Some(src), target, None, flags, None)
}

/// Sets mount attributes on `target` (and everything below it when `recursive`).
fn set_mount_attrs(target: &Path, attrs: u64, recursive: bool) -> Result<()> {
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    let attr = libc::mount_attr { attr_set: attrs, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is a valid C string and `attr` a properly sized mount_attr living across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        bail!("mount_setattr {}: {}", target.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

const RO_NOSUID_NODEV: u64 = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new().mode(mode).create(path).with_context(|| format!("mkdir {}", path.display()))
}

/// Assembles the sandbox root at `spec.root_dir` and pivots into it. The image root and the
/// workspace are idmapped through `userns`: a file owned by uid 1000 on disk is uid 1000 inside.
fn build_root(spec: &SandboxSpec, userns: &OwnedFd) -> Result<()> {
    // Nothing done below may propagate back to the host's mount namespace.
    mount_at(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    let canonical = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()));
    let root = canonical(&spec.root_dir)?;
    let source = canonical(spec.rootfs.as_deref().unwrap_or(Path::new("/")))?;
    let workspace = canonical(&spec.workspace)?;
    let bridge = canonical(&spec.bridge_dir)?;

    if spec.rootfs.is_some() {
        // An image: its ext4 file (or a directory), read-only, is the whole root; the mount points
        // must be in it.
        if source.is_file() {
            crate::loop_device::mount_image(&source, &root, true)?;
        } else {
            bind(&source, &root, false)?;
        }
        idmap_mount(&root, userns)?;
        for name in OWN_MOUNTS {
            // A symlink here (an uploaded image is hostile) would aim our mounts elsewhere.
            let real_dir = std::fs::symlink_metadata(root.join(name)).is_ok_and(|m| m.is_dir());
            if !real_dir {
                bail!("image {} has no /{name} directory to mount on (symlinks are refused)", source.display());
            }
        }
    } else {
        mount_at(
            Some(Path::new("tmpfs")),
            &root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=1m"),
        )?;
        mirror_top_level(&source, &root)?;
        for name in OWN_MOUNTS {
            mkdir(&root.join(name), 0o755)?;
        }
    }
    // Everything so far (the new root and every bind below it) becomes read-only, nosuid, nodev.
    set_mount_attrs(&root, RO_NOSUID_NODEV, true)?;

    mount_proc(&root.join("proc"))?;
    mount_at(
        Some(Path::new("sysfs")),
        &root.join("sys"),
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    // tmpfs pages are charged to the memory cgroup of whoever writes them; the sizes make a full
    // /tmp an ENOSPC for the writer long before it is an OOM for the VM.
    let owner = format!("uid={0},gid={0}", spec.uid_base);
    mount_dev(&root.join("dev"), &format!("mode=1777,size={}m,{owner}", spec.shm_mb))?;
    let tmp_opts = format!("mode=1777,size={}m,{owner}", spec.tmp_mb);
    mount_at(
        Some(Path::new("tmpfs")),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&tmp_opts),
    )?;
    mount_var_tmp(&root, &format!("mode=1777,size={}m,{owner}", (spec.tmp_mb / 2).max(1)))?;
    mount_run(&root.join("run"), &bridge, &owner)?;
    let ws_target = root.join("workspace");
    if workspace.is_file() {
        crate::loop_device::mount_image(&workspace, &ws_target, false)?;
        // mkfs's lost+found would be the one entry of a fresh workspace; e2fsck remakes it if needed.
        let _ = std::fs::remove_dir(ws_target.join("lost+found"));
    } else {
        bind(&workspace, &ws_target, false)?;
    }
    idmap_mount(&ws_target, userns)?;
    set_mount_attrs(&ws_target, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV, false)?;
    mount_cgroups(&root.join("sys/fs/cgroup"), &spec.user_cgroups)?;
    if spec.rootfs.is_none() {
        let always = ALWAYS_HIDDEN.iter().map(PathBuf::from);
        for path in spec.hide_paths.iter().cloned().chain(always) {
            hide(&root, &path)?;
        }
    }

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves only the new.
    std::env::set_current_dir(&root)?;
    pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("cannot detach the old root")?;
    std::env::set_current_dir("/")?;
    if let Some(text) = &spec.resolv_conf {
        install_resolv_conf(text).context("cannot install /etc/resolv.conf")?;
    }
    Ok(())
}

/// Where the sandbox's own resolv.conf is written (root-only `/run` tmpfs of the sandbox).
const OWN_RESOLV_CONF: &str = "/run/rds/resolv.conf";

/// Makes `/etc/resolv.conf` show `text`. Runs after `pivot_root`, so every path (and symlink)
/// resolves inside the sandbox and nothing on the host can be touched.
fn install_resolv_conf(text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let ours = Path::new(OWN_RESOLV_CONF);
    std::fs::write(ours, text).with_context(|| format!("write {OWN_RESOLV_CONF}"))?;
    std::fs::set_permissions(ours, std::fs::Permissions::from_mode(0o644))?;
    let etc = Path::new("/etc/resolv.conf");
    match std::fs::canonicalize(etc) {
        // A file (or a symlink to one): cover it with ours, read-only.
        Ok(real) => {
            bind(ours, &real, false)?;
            set_mount_attrs(&real, RO_NOSUID_NODEV, false)
        }
        // A symlink into the sandbox's own (empty) `/run`, as with systemd-resolved: create its target.
        Err(_) => match std::fs::read_link(etc) {
            Ok(target) if target.starts_with("/run/") => {
                if let Some(dir) = target.parent() {
                    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
                }
                std::fs::write(&target, text).with_context(|| format!("write {}", target.display()))
            }
            // No resolv.conf in this root at all: names will not resolve; say so in the console.
            _ => {
                eprintln!("rds-agent sandbox: the root has no /etc/resolv.conf; DNS is unconfigured");
                Ok(())
            }
        },
    }
}

/// Recreates `source`'s top-level entries in `root`: directories and files as recursive binds,
/// symlinks as symlinks. Entries in [`OWN_MOUNTS`] are skipped.
fn mirror_top_level(source: &Path, root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(source).with_context(|| format!("cannot list {}", source.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if OWN_MOUNTS.iter().any(|m| name == *m) {
            continue;
        }
        let (from, to) = (entry.path(), root.join(&name));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            symlink(std::fs::read_link(&from)?, &to).with_context(|| format!("symlink {}", to.display()))?;
        } else if kind.is_dir() {
            mkdir(&to, 0o755)?;
            bind(&from, &to, true)?;
        } else if kind.is_file() {
            File::create(&to).with_context(|| format!("create {}", to.display()))?;
            bind(&from, &to, false)?;
        }
    }
    Ok(())
}

/// A fresh procfs for the new pid namespace, with the host-kernel knobs read-only.
fn mount_proc(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at(Some(Path::new("proc")), target, Some("proc"), flags, None)?;
    for name in PROC_READONLY {
        let p = target.join(name);
        if p.exists() {
            bind(&p, &p, true)?;
            set_mount_attrs(&p, RO_NOSUID_NODEV, true)?;
        }
    }
    Ok(())
}

/// A minimal `/dev`: a few host nodes, a private devpts, `/dev/shm` (tmpfs with `shm_opts`), and
/// the usual links.
fn mount_dev(dev: &Path, shm_opts: &str) -> Result<()> {
    mount_at(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        File::create(&target).with_context(|| format!("create {}", target.display()))?;
        bind(&Path::new("/dev").join(name), &target, false)?;
    }
    mkdir(&dev.join("pts"), 0o755)?;
    mount_at(
        Some(Path::new("devpts")),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // No gid=: host gid 5 means nothing in the VM's user namespace; ptys get the opener's gid.
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    mkdir(&dev.join("shm"), 0o1777)?;
    mount_at(
        Some(Path::new("tmpfs")),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(shm_opts),
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name))?;
    }
    // Nothing more is created in /dev itself; its submounts (pts, shm) stay writable.
    set_mount_attrs(dev, libc::MOUNT_ATTR_RDONLY, false)
}

/// `/var/tmp` as a private tmpfs of half `/tmp`'s size (programs and Deno expect it writable; the root
/// below it is read-only). Skipped, with a note on the console, when the root has no real
/// `/var/tmp` directory: a symlink there (an uploaded image is hostile) would aim the mount elsewhere.
fn mount_var_tmp(root: &Path, opts: &str) -> Result<()> {
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let target = root.join("var/tmp");
    if !real_dir(&root.join("var")) || !real_dir(&target) {
        eprintln!("rds-agent sandbox: the root has no /var/tmp directory; /var/tmp is not writable");
        return Ok(());
    }
    mount_at(Some(Path::new("tmpfs")), &target, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts))
}

/// `/run` (root-only writable tmpfs) with the VM's bridge directory at [`SANDBOX_BRIDGE_DIR`], where
/// the manager binds this VM's peer-bridge socket.
fn mount_run(run: &Path, bridge: &Path, owner: &str) -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at(Some(Path::new("tmpfs")), run, Some("tmpfs"), flags, Some(&format!("mode=0755,size={RUN_MB}m,{owner}")))?;
    let rds = run.join("rds");
    mkdir(&rds, 0o755)?;
    let inside = run.join(SANDBOX_BRIDGE_DIR.trim_start_matches("/run/"));
    mkdir(&inside, 0o755)?;
    bind(bridge, &inside, false)?;
    set_mount_attrs(&inside, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC, false)
}

/// Size of the sandbox's `/run` tmpfs (sockets and a few small files).
const RUN_MB: u32 = 8;

/// Shows the VM's `user` cgroups at `target` (`/sys/fs/cgroup`): the v2 group itself, or for v1 a
/// small read-only tmpfs with one directory per controller bound to that controller's group.
fn mount_cgroups(target: &Path, binds: &[rds_proto::sandbox::CgroupBind]) -> Result<()> {
    if let [only] = binds {
        if only.at.is_empty() {
            return bind(&only.dir, target, false);
        }
    }
    if binds.is_empty() {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at(Some(Path::new("tmpfs")), target, Some("tmpfs"), flags, Some("mode=0755,size=16k"))?;
    for c in binds {
        if c.at.is_empty() {
            bail!("a cgroup v2 group cannot be shown beside v1 controllers");
        }
        let at = target.join(&c.at);
        mkdir(&at, 0o755)?;
        bind(&c.dir, &at, false)?;
    }
    set_mount_attrs(target, libc::MOUNT_ATTR_RDONLY, false)
}

/// `move_mount` flag: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Replaces the mount at `target` with a clone whose ids go through `userns`'s mapping (on-disk
/// uid N is uid N inside the VM's user namespace, host uid `uid_base + N` outside), so files keep
/// the same owners whichever uid range the VM gets at its next start.
fn idmap_mount(target: &Path, userns: &OwnedFd) -> Result<()> {
    let path = CString::new(target.as_os_str().as_bytes())?;
    let empty = c"";
    // SAFETY: `path` is a valid C string; open_tree returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!("open_tree {}: {}", target.display(), std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `tree` is a detached mount fd, `empty` a valid C string, `attr` a properly sized
    // mount_attr living across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        bail!("idmapping {}: {}", target.display(), std::io::Error::last_os_error());
    }
    umount2(target, MntFlags::MNT_DETACH).with_context(|| format!("umount {}", target.display()))?;
    // SAFETY: valid fds and C strings; move_mount attaches the detached tree at `path`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        bail!("move_mount {}: {}", target.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// Covers host path `path` (as seen inside `root`) with an empty read-only directory, or with
/// `/dev/null` if it is a file. Paths absent from the new root are already invisible.
fn hide(root: &Path, path: &Path) -> Result<()> {
    let Ok(rel) = path.strip_prefix("/") else { return Ok(()) };
    if rel.as_os_str().is_empty() {
        return Ok(()); // hiding "/" would hide everything; the spec never asks for it
    }
    // Resolve on the host: the new root mirrors the host's top level, and a canonical path has no
    // symlink that could lead the mount outside the new root.
    let Ok(real) = std::fs::canonicalize(path) else { return Ok(()) };
    let target = root.join(real.strip_prefix("/").unwrap_or(rel));
    let Ok(meta) = std::fs::symlink_metadata(&target) else { return Ok(()) };
    if meta.is_dir() {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount_at(Some(Path::new("tmpfs")), &target, Some("tmpfs"), flags, Some("size=4k,mode=0755"))
    } else {
        bind(&root.join("dev/null"), &target, false)?;
        set_mount_attrs(&target, RO_NOSUID_NODEV, false)
    }
}

/// Brings up `lo` in the new network namespace (it starts down).
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2); the fd is wrapped in OwnedFd immediately.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the flags member of a properly initialised ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            bail!("SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            bail!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
