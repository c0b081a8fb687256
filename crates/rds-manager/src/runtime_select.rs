//! Choosing the runtime at start-up. Firecracker and QEMU plug in here when they exist.

use std::sync::Arc;

use rds_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use rds_runtime::Runtime;

use crate::config::{ConfigError, RuntimeChoice};
use crate::Config;

/// Tasks allowed per sandbox VM.
const SANDBOX_PIDS_MAX: u64 = 512;

/// Builds the runtime `RDS_RUNTIME` asks for; `auto` picks the best available (sandbox for now).
/// Asking explicitly for an unavailable runtime is an error.
pub fn select(config: &Config) -> Result<Arc<dyn Runtime>, ConfigError> {
    match config.runtime {
        RuntimeChoice::Auto | RuntimeChoice::Sandbox => sandbox(config),
        RuntimeChoice::Qemu | RuntimeChoice::Firecracker => Err(ConfigError {
            var: "RDS_RUNTIME",
            message: "this build has no qemu or firecracker runtime yet; use auto or sandbox"
                .into(),
        }),
    }
}

fn sandbox(config: &Config) -> Result<Arc<dyn Runtime>, ConfigError> {
    if !config.agent_bin.is_file() {
        return Err(ConfigError {
            var: "RDS_AGENT_BIN",
            message: format!(
                "{} is not a file; build rds-agent or point RDS_AGENT_BIN at it",
                config.agent_bin.display()
            ),
        });
    }
    let runtime = SandboxRuntime::with_cgroup_group(
        SandboxConfig {
            storage_root: config.storage_root.clone(),
            agent_bin: config.agent_bin.clone(),
            pids_max: SANDBOX_PIDS_MAX,
            // The database and every VM directory live here; no sandbox may see them.
            hide_paths: vec![config.storage_root.clone()],
        },
        &config.cgroup_group,
    )
    .map_err(|e| ConfigError {
        var: "RDS_RUNTIME",
        message: format!("the sandbox runtime is unavailable: {e}"),
    })?;
    Ok(Arc::new(runtime))
}
