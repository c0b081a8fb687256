//! Per-VM cgroups: memory, CPU and pid limits, OOM accounting and kill-everything removal.
//!
//! Works on cgroup v2 (unified hierarchy with controllers) and v1 (one hierarchy per controller).
//! Groups are created only beneath the manager's own cgroup, as `<own>/<group>/<vm id>`:
//!
//! * v1: one such directory in each of the `memory`, `cpu` and `pids` hierarchies.
//! * v2: one directory. The "no internal processes" rule forbids enabling controllers for children
//!   of a non-root cgroup that itself holds processes, so if enabling them in the manager's own
//!   cgroup fails with `EBUSY`, the manager moves itself into a leaf `<own>/rds-manager` first (the
//!   layout systemd recommends for a delegated subtree) and groups are still created under `<own>`.
//!   On the next start that leaf is recognised and its parent is used again.
//!
//! Inside a VM's group `<id>`, two children separate the agent from the code it runs:
//!
//! * `<id>/agent` holds the sandbox's PID 1 and agent. An OOM in `user` never picks them, so no
//!   code a VM runs can kill its own agent.
//! * `<id>/user` holds user code, limited to the VM's memory and to its pid limit less
//!   [`AGENT_PIDS_RESERVE`] (a fork bomb leaves the agent room to work); it is owned by the VM's
//!   user-namespace root (the agent), which makes one group per command inside it.
//!
//! `<id>` itself is limited to memory + [`AGENT_MEMORY_RESERVE`] and the full pid limit.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::RuntimeError;

/// Root of the cgroup filesystem(s).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Leaf a v2 manager moves itself into so its own cgroup can delegate controllers.
const MANAGER_LEAF: &str = "rds-manager";
/// CFS period used for CPU quotas (100 ms).
const CPU_PERIOD_US: u64 = 100_000;
/// v1 controllers a VM is limited by.
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// How long removal keeps killing processes that remain in a group.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// Memory a VM's agent group may use on top of the VM's own limit.
pub const AGENT_MEMORY_RESERVE: u64 = 32 * 1024 * 1024;
/// Tasks of a VM's pid limit that user code can never take from the agent.
pub const AGENT_PIDS_RESERVE: u64 = 32;
/// The group of a VM's PID 1 and agent.
const AGENT_GROUP: &str = "agent";
/// The group of a VM's user code.
const USER_GROUP: &str = "user";

/// Resource limits of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Hard memory limit of the VM's user code (no swap on top of it).
    pub memory_bytes: u64,
    /// CPU quota in whole cores.
    pub cpus: u32,
    /// Maximum number of tasks, agent included.
    pub pids_max: u64,
    /// Host uid of the VM's user-namespace root: it gets the `user` group to manage.
    pub owner_uid: u32,
}

impl Limits {
    fn user_pids(&self) -> u64 {
        self.pids_max.saturating_sub(AGENT_PIDS_RESERVE).max(1)
    }

    fn total_memory(&self) -> u64 {
        self.memory_bytes.saturating_add(AGENT_MEMORY_RESERVE)
    }
}

/// Limits of a flat VM group (see [`CgroupLayout::create_flat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatLimits {
    /// Hard memory limit of everything in the group (no swap on top of it).
    pub memory_bytes: u64,
    /// CPU quota in whole cores.
    pub cpus: u32,
    /// Maximum number of tasks.
    pub pids_max: u64,
}

/// Where VM cgroups live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified hierarchy: VM groups are `<parent>/<id>`.
    V2 {
        /// `<own cgroup>/<group>` on the cgroup2 mount.
        parent: PathBuf,
    },
    /// Legacy hierarchies: VM groups are `<parent>/<id>` in each hierarchy.
    V1 {
        /// `(controller, <mount>/<own cgroup>/<group>)` for memory, cpu, pids.
        parents: Vec<(&'static str, PathBuf)>,
    },
}

fn cg_err(what: impl std::fmt::Display, path: &Path, e: io::Error) -> RuntimeError {
    RuntimeError::Cgroup(format!(
        "{what} {}: {e} (the sandbox runtime needs root and a writable cgroup hierarchy)",
        path.display()
    ))
}

fn write_file(path: &Path, value: &str) -> Result<(), RuntimeError> {
    std::fs::write(path, value).map_err(|e| cg_err(format!("cannot write {value:?} to"), path, e))
}

/// Parses `/proc/self/cgroup` lines `id:controllers:path` into `(controllers, path)`.
fn own_cgroups(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?.split(',').filter(|c| !c.is_empty()).map(String::from).collect();
            Some((ctrls, parts.next()?.to_string()))
        })
        .collect()
}

/// Joins a cgroup path from `/proc/self/cgroup` (absolute, `/` = root) onto a mount point.
fn under(mount: &Path, cgroup_path: &str) -> PathBuf {
    let rel = cgroup_path.trim_start_matches('/');
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

/// `/sys/fs/cgroup` as PID 1's mount namespace shows it (root only, where PID 1 may be inspected).
const PID1_CGROUP_ROOT: &str = "/proc/1/root/sys/fs/cgroup";

/// True when `root` shows what this module needs: a cgroup2 mount with controllers, or the v1
/// memory, cpu and pids hierarchies.
fn has_hierarchies(root: &Path) -> bool {
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| !c.trim().is_empty());
    v2 || V1_CONTROLLERS.iter().all(|c| root.join(c).join("cgroup.procs").exists())
}

/// One cgroup mount listed in a mountinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// Where it is mounted.
    mount_point: String,
    /// `cgroup` or `cgroup2`.
    fs_type: String,
    /// Super-block options (`cpu,cpuacct`, `memory`, `name=systemd`...), without `rw`/`ro`.
    options: String,
}

/// The cgroup mounts of whole hierarchies (mount root `/`) in a mountinfo text.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent dev root mount-point opts [optional...] - fstype source super-opts`
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fs_type = *right.first()?;
            if !matches!(fs_type, "cgroup" | "cgroup2") || left.get(3) != Some(&"/") {
                return None;
            }
            let options = right
                .get(2)
                .unwrap_or(&"")
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro"))
                .collect::<Vec<_>>()
                .join(",");
            Some(CgroupMount { mount_point: (*left.get(4)?).to_string(), fs_type: fs_type.to_string(), options })
        })
        .collect()
}

/// Finds the cgroup hierarchies: at `/sys/fs/cgroup`; else through PID 1's root; else, when this
/// process has a mount namespace of its own with a fresh `/sys` (`ip netns exec` mounts one,
/// hiding the cgroup mounts), by mounting the hierarchies PID 1's mountinfo lists again, in this
/// namespace only. Fails with what the operator can do instead.
fn cgroup_root() -> Result<PathBuf, RuntimeError> {
    let standard = Path::new(CGROUP_ROOT);
    if has_hierarchies(standard) {
        return Ok(standard.to_path_buf());
    }
    let via_pid1 = Path::new(PID1_CGROUP_ROOT);
    if has_hierarchies(via_pid1) {
        tracing::info!(path = PID1_CGROUP_ROOT, "cgroup hierarchies are hidden at {CGROUP_ROOT}; using PID 1's");
        return Ok(via_pid1.to_path_buf());
    }
    let why = match remount_from_pid1(standard) {
        Ok(()) if has_hierarchies(standard) => {
            tracing::warn!("cgroup hierarchies were hidden at {CGROUP_ROOT} (a fresh /sys); mounted PID 1's again in this mount namespace");
            return Ok(standard.to_path_buf());
        }
        Ok(()) => "the hierarchies PID 1 lists do not include memory, cpu and pids".to_string(),
        Err(why) => why,
    };
    Err(RuntimeError::Cgroup(format!(
        "no cgroup hierarchies at {CGROUP_ROOT} (a fresh /sys, such as `ip netns exec` mounts, hides them) and \
         none found through PID 1 ({why}); run `nsenter --net=/run/netns/<ns> rds serve` instead of \
         `ip netns exec <ns> rds serve`, or mount them first: `mount -t cgroup2 none {CGROUP_ROOT}` on cgroup v2, \
         on v1 a tmpfs at {CGROUP_ROOT} and `mount -t cgroup -o <controller> cgroup {CGROUP_ROOT}/<controller>` \
         for memory, cpu and pids"
    )))
}

/// Mounts, at `root` in this mount namespace, the cgroup hierarchies PID 1 has under
/// `/sys/fs/cgroup`. Refuses when this namespace already shows any cgroup mount there (then it
/// is not simply a fresh `/sys`, and nothing is guessed).
fn remount_from_pid1(root: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let pid1 =
        std::fs::read_to_string("/proc/1/mountinfo").map_err(|e| format!("cannot read /proc/1/mountinfo: {e}"))?;
    let own = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let prefix = format!("{CGROUP_ROOT}/");
    let beneath = |m: &CgroupMount| m.mount_point == CGROUP_ROOT || m.mount_point.starts_with(&prefix);
    let wanted: Vec<CgroupMount> = cgroup_mounts(&pid1).into_iter().filter(|m| beneath(m)).collect();
    if wanted.is_empty() {
        return Err("PID 1 has no cgroup hierarchy mounted under /sys/fs/cgroup either".into());
    }
    // Same mounts as PID 1 would mean the same namespace: then mounting would change the host's.
    if cgroup_mounts(&own).iter().any(beneath) {
        return Err(format!("{CGROUP_ROOT} shows some cgroup mounts but not memory, cpu and pids"));
    }
    let fail = |what: String, e: nix::Error| format!("{what}: {e}");
    if let Some(unified) = wanted.iter().find(|m| m.mount_point == CGROUP_ROOT && m.fs_type == "cgroup2") {
        return mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(unified.options.as_str()),
        )
        .map_err(|e| fail(format!("cannot mount cgroup2 at {}", root.display()), e));
    }
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(|e| fail(format!("cannot mount a tmpfs at {}", root.display()), e))?;
    // Nothing mounted below may propagate to another namespace.
    mount(None::<&str>, root, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| fail(format!("cannot make {} private", root.display()), e))?;
    for m in wanted.iter().filter(|m| m.mount_point.starts_with(&prefix)) {
        let name = &m.mount_point[prefix.len()..];
        if name.is_empty() || name.contains('/') {
            continue;
        }
        let dir = root.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let data = (!m.options.is_empty()).then_some(m.options.as_str());
        mount(
            Some(m.fs_type.as_str()),
            &dir,
            Some(m.fs_type.as_str()),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data,
        )
        .map_err(|e| fail(format!("cannot mount {} ({}) at {}", m.fs_type, m.options, dir.display()), e))?;
        // Co-mounted controllers (`cpu,cpuacct`) are also reachable by each name, as systemd does it.
        if name.contains(',') {
            for single in name.split(',') {
                let _ = std::os::unix::fs::symlink(name, root.join(single));
            }
        }
    }
    Ok(())
}

impl CgroupLayout {
    /// Finds this process's cgroup(s) and prepares the parent group named `group` beneath them.
    pub fn detect(group: &str) -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| RuntimeError::io("cannot read /proc/self/cgroup", e))?;
        let own = own_cgroups(&text);
        let root = cgroup_root()?;
        let root = root.as_path();
        let unified_controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if !unified_controllers.trim().is_empty() {
            let path = own
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| p.clone())
                .ok_or_else(|| RuntimeError::Cgroup("no cgroup v2 entry in /proc/self/cgroup".into()))?;
            let mut base = under(root, &path);
            if base.file_name().is_some_and(|n| n == MANAGER_LEAF) {
                base.pop();
            }
            return Self::prepare_v2(&base, group);
        }
        let mut parents = Vec::new();
        for ctrl in V1_CONTROLLERS {
            let mount = root.join(ctrl);
            let path = own
                .iter()
                .find(|(c, _)| c.iter().any(|c| c == ctrl))
                .map(|(_, p)| p.clone())
                .ok_or_else(|| RuntimeError::Cgroup(format!("the {ctrl} cgroup controller is not mounted")))?;
            if !mount.join("cgroup.procs").exists() {
                return Err(RuntimeError::Cgroup(format!(
                    "the {ctrl} cgroup controller is not mounted at {}",
                    mount.display()
                )));
            }
            let parent = under(&mount, &path).join(group);
            std::fs::create_dir_all(&parent).map_err(|e| cg_err("cannot create", &parent, e))?;
            parents.push((ctrl, parent));
        }
        Ok(CgroupLayout::V1 { parents })
    }

    fn prepare_v2(base: &Path, group: &str) -> Result<Self, RuntimeError> {
        let wanted = ["memory", "cpu", "pids"];
        let available = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        for c in wanted {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(RuntimeError::Cgroup(format!(
                    "the {c} controller is not delegated to {} (enable it in the parent's cgroup.subtree_control)",
                    base.display()
                )));
            }
        }
        let enable = wanted.map(|c| format!("+{c}")).join(" ");
        let control = base.join("cgroup.subtree_control");
        if let Err(e) = std::fs::write(&control, &enable) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(cg_err("cannot enable controllers in", &control, e));
            }
            // We sit in `base` ourselves: move into a leaf so `base` may delegate controllers.
            let leaf = base.join(MANAGER_LEAF);
            std::fs::create_dir_all(&leaf).map_err(|e| cg_err("cannot create", &leaf, e))?;
            write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            write_file(&control, &enable)?;
        }
        let parent = base.join(group);
        std::fs::create_dir_all(&parent).map_err(|e| cg_err("cannot create", &parent, e))?;
        write_file(&parent.join("cgroup.subtree_control"), &enable)?;
        Ok(CgroupLayout::V2 { parent })
    }

    /// Removes this process's parent group `group` where it is empty (VM groups gone), without
    /// creating or moving anything; used when a manager with its own group name goes away for good.
    pub fn remove_empty_group(group: &str) {
        let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else { return };
        let root = [Path::new(CGROUP_ROOT), Path::new(PID1_CGROUP_ROOT)]
            .into_iter()
            .find(|r| has_hierarchies(r))
            .unwrap_or(Path::new(CGROUP_ROOT));
        for (controllers, path) in own_cgroups(&text) {
            let mount = match controllers.iter().find(|c| V1_CONTROLLERS.contains(&c.as_str())) {
                Some(c) => root.join(c),
                None if controllers.is_empty() => root.to_path_buf(),
                None => continue,
            };
            let mut base = under(&mount, &path);
            if base.file_name().is_some_and(|n| n == MANAGER_LEAF) {
                base.pop();
            }
            // rmdir refuses non-empty groups, which is exactly the guard wanted here.
            let _ = std::fs::remove_dir(base.join(group));
        }
    }

    /// The parent directories VM groups are created in (one on v2, one per controller on v1).
    pub fn parents(&self) -> Vec<PathBuf> {
        match self {
            CgroupLayout::V2 { parent } => vec![parent.clone()],
            CgroupLayout::V1 { parents } => parents.iter().map(|(_, p)| p.clone()).collect(),
        }
    }

    /// The cgroup directories of VM `id` (they may not exist).
    pub fn vm_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.parents().into_iter().map(|p| p.join(id)).collect()
    }

    /// The `cgroup.procs` files a process writes itself into to join VM `id`'s groups.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.vm_dirs(id).into_iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The `cgroup.procs` files of VM `id`'s agent groups.
    pub fn agent_procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.vm_dirs(id).into_iter().map(|d| d.join(AGENT_GROUP).join("cgroup.procs")).collect()
    }

    /// VM `id`'s user groups as the sandbox shows them under `/sys/fs/cgroup`: the v2 group
    /// itself, or the v1 `memory` and `pids` groups (per-command groups live in `pids`).
    pub fn user_binds(&self, id: &str) -> Vec<rds_proto::sandbox::CgroupBind> {
        match self {
            CgroupLayout::V2 { parent } => {
                vec![rds_proto::sandbox::CgroupBind { at: String::new(), dir: parent.join(id).join(USER_GROUP) }]
            }
            CgroupLayout::V1 { parents } => parents
                .iter()
                .filter(|(c, _)| matches!(*c, "memory" | "pids"))
                .map(|(c, p)| rds_proto::sandbox::CgroupBind { at: c.to_string(), dir: p.join(id).join(USER_GROUP) })
                .collect(),
        }
    }

    fn memory_dir(&self, id: &str) -> PathBuf {
        match self {
            CgroupLayout::V2 { parent } => parent.join(id),
            CgroupLayout::V1 { parents } => {
                parents.iter().find(|(c, _)| *c == "memory").map(|(_, p)| p.join(id)).unwrap_or_default()
            }
        }
    }

    /// Creates VM `id`'s groups (removing stale ones first) and applies `limits`.
    /// On failure nothing is left behind.
    pub fn create(&self, id: &str, limits: Limits) -> Result<(), RuntimeError> {
        self.remove(id)?;
        let result = self.create_inner(id, limits);
        if result.is_err() {
            let _ = self.remove(id);
        }
        result
    }

    fn create_inner(&self, id: &str, limits: Limits) -> Result<(), RuntimeError> {
        let quota = (u64::from(limits.cpus.max(1)) * CPU_PERIOD_US).to_string();
        let total_mem = limits.total_memory().to_string();
        let pids = limits.pids_max.to_string();
        for dir in self.vm_dirs(id) {
            std::fs::create_dir(&dir).map_err(|e| cg_err("cannot create", &dir, e))?;
            for child in [AGENT_GROUP, USER_GROUP] {
                let sub = dir.join(child);
                std::fs::create_dir(&sub).map_err(|e| cg_err("cannot create", &sub, e))?;
            }
            // The agent (the VM's user-namespace root) makes per-command groups in `user` and moves
            // user code there; on v2 moving needs write access to the common ancestor's procs too.
            let user = dir.join(USER_GROUP);
            for path in [user.clone(), user.join("cgroup.procs"), dir.join("cgroup.procs")] {
                std::os::unix::fs::chown(&path, Some(limits.owner_uid), Some(limits.owner_uid))
                    .map_err(|e| cg_err("cannot chown", &path, e))?;
            }
        }
        match self {
            CgroupLayout::V2 { parent } => {
                let d = parent.join(id);
                write_file(&d.join("memory.max"), &total_mem)?;
                if d.join("memory.swap.max").exists() {
                    write_file(&d.join("memory.swap.max"), "0")?;
                }
                write_file(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write_file(&d.join("pids.max"), &pids)?;
                // The `user` limits need controllers enabled in `<id>`, which v2 allows only once
                // no process is left in `<id>` itself: see [`CgroupLayout::finish`].
            }
            CgroupLayout::V1 { parents } => {
                for (ctrl, parent) in parents {
                    let d = parent.join(id);
                    let user = d.join(USER_GROUP);
                    match *ctrl {
                        "memory" => {
                            write_v1_memory(&d, limits.total_memory())?;
                            write_v1_memory(&user, limits.memory_bytes)?;
                        }
                        "cpu" => {
                            write_file(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                            write_file(&d.join("cpu.cfs_quota_us"), &quota)?;
                        }
                        "pids" => {
                            write_file(&d.join("pids.max"), &pids)?;
                            write_file(&user.join("pids.max"), &limits.user_pids().to_string())?;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates VM `id`'s group as one flat group limited to `limits` (removing a stale one
    /// first): a microVM's whole VMM process goes there, its agent is inside the guest. On failure
    /// nothing is left behind.
    pub fn create_flat(&self, id: &str, limits: FlatLimits) -> Result<(), RuntimeError> {
        self.remove(id)?;
        let result = self.create_flat_inner(id, limits);
        if result.is_err() {
            let _ = self.remove(id);
        }
        result
    }

    fn create_flat_inner(&self, id: &str, limits: FlatLimits) -> Result<(), RuntimeError> {
        let quota = (u64::from(limits.cpus.max(1)) * CPU_PERIOD_US).to_string();
        for dir in self.vm_dirs(id) {
            std::fs::create_dir(&dir).map_err(|e| cg_err("cannot create", &dir, e))?;
        }
        match self {
            CgroupLayout::V2 { parent } => {
                let d = parent.join(id);
                write_file(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                if d.join("memory.swap.max").exists() {
                    write_file(&d.join("memory.swap.max"), "0")?;
                }
                write_file(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write_file(&d.join("pids.max"), &limits.pids_max.to_string())?;
            }
            CgroupLayout::V1 { parents } => {
                for (ctrl, parent) in parents {
                    let d = parent.join(id);
                    match *ctrl {
                        "memory" => write_v1_memory(&d, limits.memory_bytes)?,
                        "cpu" => {
                            write_file(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                            write_file(&d.join("cpu.cfs_quota_us"), &quota)?;
                        }
                        "pids" => write_file(&d.join("pids.max"), &limits.pids_max.to_string())?,
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The cgroup version of this host's layout (1 or 2).
    pub fn version(&self) -> u8 {
        match self {
            CgroupLayout::V2 { .. } => 2,
            CgroupLayout::V1 { .. } => 1,
        }
    }

    /// On cgroup v2, VM `id`'s group as a path relative to the hierarchy's root (what the
    /// Firecracker jailer's `--parent-cgroup` takes); `None` on v1.
    pub fn v2_relative(&self, id: &str) -> Option<String> {
        let CgroupLayout::V2 { parent } = self else { return None };
        let dir = parent.join(id);
        [CGROUP_ROOT, PID1_CGROUP_ROOT]
            .iter()
            .find_map(|root| dir.strip_prefix(root).ok())
            .map(|rel| rel.to_string_lossy().into_owned())
    }

    /// Completes VM `id`'s groups once its launcher has moved from `<id>` into `<id>/agent`
    /// (cgroup v2: enables memory and pids for the children and limits `user`).
    pub fn finish(&self, id: &str, limits: Limits) -> Result<(), RuntimeError> {
        let CgroupLayout::V2 { parent } = self else { return Ok(()) };
        let d = parent.join(id);
        write_file(&d.join("cgroup.subtree_control"), "+memory +pids")?;
        let user = d.join(USER_GROUP);
        write_file(&user.join("memory.max"), &limits.memory_bytes.to_string())?;
        if user.join("memory.swap.max").exists() {
            write_file(&user.join("memory.swap.max"), "0")?;
        }
        write_file(&user.join("pids.max"), &limits.user_pids().to_string())
    }

    /// Kills every process left in VM `id`'s groups and removes them. Absent groups are fine.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut first_err = None;
        for dir in self.vm_dirs(id) {
            if let Err(e) = remove_group(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// OOM kills recorded in VM `id`'s memory groups (v2 counts children in the parent; v1 does
    /// not, so its three groups are added up).
    pub fn oom_kills(&self, id: &str) -> Option<u64> {
        let dir = self.memory_dir(id);
        let read = |path: PathBuf| -> Option<u64> {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
        };
        match self {
            CgroupLayout::V2 { .. } => read(dir.join("memory.events")),
            CgroupLayout::V1 { .. } => {
                let own = read(dir.join("memory.oom_control"))?;
                let children =
                    [AGENT_GROUP, USER_GROUP].map(|c| read(dir.join(c).join("memory.oom_control")).unwrap_or(0));
                Some(own + children.iter().sum::<u64>())
            }
        }
    }

    /// OOM kills recorded in VM `id`'s `agent` memory group (PID 1 and the agent): kills that took
    /// the VM's own machinery, never those of its user code.
    pub fn agent_oom_kills(&self, id: &str) -> Option<u64> {
        let dir = self.memory_dir(id).join(AGENT_GROUP);
        let file = match self {
            CgroupLayout::V2 { .. } => "memory.events",
            CgroupLayout::V1 { .. } => "memory.oom_control",
        };
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// Ids of all VM groups present under the parent(s).
    pub fn vm_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(&parent) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Some(name) = entry.file_name().to_str() {
                        if !ids.iter().any(|i| i == name) {
                            ids.push(name.to_string());
                        }
                    }
                }
            }
        }
        ids
    }
}

/// Sets a v1 memory limit without swap on top (memsw must stay >= the memory limit, so the order
/// of the two writes depends on whether the limit grows or shrinks; groups here are fresh).
fn write_v1_memory(dir: &Path, bytes: u64) -> Result<(), RuntimeError> {
    write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
    if dir.join("memory.memsw.limit_in_bytes").exists() {
        write_file(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string())?;
    }
    Ok(())
}

/// Kills everything in the group at `dir` (and its child groups), then removes them, deepest first.
fn remove_group(dir: &Path) -> Result<(), RuntimeError> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_group(&entry.path())?;
            }
        }
    }
    // cgroup.kill (v2, Linux 5.14+) kills atomically, even processes forking right now.
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        let _ = std::fs::write(&kill_file, "1");
    }
    let deadline = std::time::Instant::now() + KILL_DEADLINE;
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
        let rmdir =
            if pids.is_empty() { std::fs::remove_dir(dir) } else { Err(io::Error::from_raw_os_error(libc::EBUSY)) };
        match rmdir {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(cg_err("cannot remove (processes keep running in it)", dir, e))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_lines() {
        let own = own_cgroups("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(own[0], (vec!["memory".to_string()], "/a/b".to_string()));
        assert_eq!(own[1].0, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert_eq!(own[2], (vec![], "/user.slice".to_string()));
    }

    #[test]
    fn mountinfo_cgroup_mounts_keep_controllers_and_skip_subtrees() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n\
            50 23 0:32 /some/sub /mnt/sub rw,relatime - cgroup cgroup rw,memory\n";
        let m = cgroup_mounts(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0],
            CgroupMount {
                mount_point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                fs_type: "cgroup".into(),
                options: "cpu,cpuacct".into()
            }
        );
        assert_eq!(
            (m[1].options.as_str(), m[2].fs_type.as_str(), m[2].options.as_str()),
            ("memory", "cgroup2", "nsdelegate")
        );
    }

    #[test]
    fn root_cgroup_maps_to_the_mount_itself() {
        assert_eq!(under(Path::new("/sys/fs/cgroup/pids"), "/"), PathBuf::from("/sys/fs/cgroup/pids"));
        assert_eq!(under(Path::new("/m"), "/x/y"), PathBuf::from("/m/x/y"));
    }
}
