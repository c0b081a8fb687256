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
    /// Image root filesystem to use as `/`; `None` means the host root, read-only.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Empty directory on the host where the launcher assembles the new root (in its own mount namespace).
    pub root_dir: PathBuf,
    /// The VM's persistent workspace, bind-mounted read-write at `/workspace`.
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
}

/// Longest `resolv_conf` the launcher accepts.
pub const MAX_RESOLV_CONF_BYTES: usize = 4096;
