//! The launch description the sandbox runtime hands to `rds-agent sandbox`.
//!
//! The runtime serialises a [`SandboxSpec`] to JSON and passes it in the [`SANDBOX_SPEC_ENV`]
//! environment variable (not on the command line, which every process in the sandbox could read
//! through `/proc/1/cmdline`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Environment variable carrying the JSON [`SandboxSpec`] into the launcher.
pub const SANDBOX_SPEC_ENV: &str = "RDS_SANDBOX_SPEC";
/// Where the VM's bridge directory appears inside the sandbox.
pub const SANDBOX_BRIDGE_DIR: &str = "/run/rds/bridge";

/// Everything the launcher needs to build one sandbox. All paths are host paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// The VM id (already validated by the runtime; checked again by the launcher).
    pub vm_id: String,
    /// Hostname set in the sandbox's UTS namespace.
    pub hostname: String,
    /// Image root filesystem (an ext4 file, or a directory) to use as `/`; `None` means the host
    /// root, read-only (development only: `RDS_SANDBOX_ROOT=host`).
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Empty directory on the host where the launcher assembles the new root (in its own mount namespace).
    pub root_dir: PathBuf,
    /// The VM's persistent workspace at `/workspace`: an ext4 image file (its size is the VM's disk
    /// quota), or a directory bound read-write (VMs created before workspace disks existed).
    pub workspace: PathBuf,
    /// The VM's bridge directory, bind-mounted at [`SANDBOX_BRIDGE_DIR`].
    pub bridge_dir: PathBuf,
    /// Host paths covered by an empty read-only directory (or file) inside the sandbox.
    #[serde(default)]
    pub hide_paths: Vec<PathBuf>,
    /// Inherited file descriptor of the agent's listening Unix socket (bound by the runtime on the host).
    pub listen_fd: i32,
    /// Contents shown at `/etc/resolv.conf` inside the sandbox (its network's resolver); `None`
    /// leaves the root's own file.
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// Host uid (and gid) that uid 0 of the VM's own user namespace maps to; the VM gets
    /// [`USERNS_RANGE`] ids from there, and the namespace is owned by this uid.
    pub uid_base: u32,
    /// Host `cgroup.procs` files of the VM's `agent` groups: the launcher moves itself there once
    /// its cgroup namespace (rooted at the VM's group) exists.
    pub agent_cgroup_procs: Vec<PathBuf>,
    /// The VM's `user` cgroups, shown under `/sys/fs/cgroup` for the agent's per-command groups.
    pub user_cgroups: Vec<CgroupBind>,
    /// Size of the `/tmp` tmpfs in MiB.
    pub tmp_mb: u32,
    /// Size of the `/dev/shm` tmpfs in MiB.
    pub shm_mb: u32,
    /// Inherited descriptor holding the host-wide lock on this VM's uid range, kept open for as
    /// long as the sandbox lives.
    #[serde(default)]
    pub uid_lock_fd: Option<i32>,
    /// Interpreters per language the agent keeps started ahead of runs; `None` = its default.
    #[serde(default)]
    pub warm_interpreters: Option<u32>,
}

/// How many uids and gids each VM's user namespace maps.
pub const USERNS_RANGE: u32 = 65536;

/// A host cgroup directory shown inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CgroupBind {
    /// Where under `/sys/fs/cgroup`: `""` for the v2 hierarchy itself, else the v1 controller name.
    pub at: String,
    /// The host directory.
    pub dir: PathBuf,
}

/// Longest `resolv_conf` the launcher accepts.
pub const MAX_RESOLV_CONF_BYTES: usize = 4096;
