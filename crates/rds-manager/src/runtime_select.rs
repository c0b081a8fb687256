//! Choosing the runtime at start-up: one line per runtime in [`RUNTIMES`]; everything else about a
//! runtime is asked of its module.

use std::sync::Arc;

use rds_net::InstallationId;
use rds_runtime::{DefaultImage, Runtime, RuntimeEntry, RuntimeKind, RuntimeSettings};

use crate::config::{ConfigError, RuntimeChoice};
use crate::Config;

/// The runtimes this build has, in the order `RDS_RUNTIME=auto` tries them.
const RUNTIMES: &[RuntimeEntry] =
    &[rds_runtime::firecracker::ENTRY, rds_runtime::qemu::ENTRY, rds_runtime::sandbox::ENTRY];

/// The runtime chosen, and why (logged at start-up and reported by `/v1/health`).
pub struct Selected {
    /// The runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Why it was chosen, e.g. "RDS_RUNTIME=auto: not firecracker (…); not qemu (…); sandbox".
    pub reason: String,
}

/// Builds the runtime `RDS_RUNTIME` asks for; `auto` takes the first of [`RUNTIMES`] that wants
/// this host and builds (firecracker, else qemu, with a guest image and a KVM that boots ordinary
/// guests, else the sandbox). Asking explicitly for an unavailable runtime is an error. Host resources are named
/// after `installation`.
pub fn select(config: &Config, installation: &InstallationId) -> Result<Selected, ConfigError> {
    let settings = settings(config, installation);
    let kind = match config.runtime {
        RuntimeChoice::Auto => return auto(&settings),
        RuntimeChoice::Sandbox => RuntimeKind::Sandbox,
        RuntimeChoice::Qemu => RuntimeKind::Qemu,
        RuntimeChoice::Firecracker => RuntimeKind::Firecracker,
    };
    let Some(entry) = RUNTIMES.iter().find(|e| e.kind == kind) else {
        return Err(ConfigError {
            var: "RDS_RUNTIME",
            message: format!("this build has no {kind} runtime yet; use auto or one of {}", names()),
        });
    };
    let runtime = build(entry, &settings)?;
    Ok(Selected { runtime, reason: format!("RDS_RUNTIME={kind}") })
}

/// The first runtime that wants this host and builds; the last one's failure is the error.
fn auto(settings: &RuntimeSettings) -> Result<Selected, ConfigError> {
    let (last, preferred) = RUNTIMES.split_last().expect("at least one runtime");
    let mut passed = Vec::new();
    for entry in preferred {
        match (entry.auto)(settings) {
            Err(reason) => passed.push(format!("not {}: {reason}", entry.kind)),
            Ok(()) => match build(entry, settings) {
                Ok(runtime) => {
                    passed.push(format!("{} (it wants this host and built)", entry.kind));
                    return Ok(Selected { runtime, reason: format!("RDS_RUNTIME=auto: {}", passed.join("; ")) });
                }
                Err(e) => passed.push(format!("not {}: {e}", entry.kind)),
            },
        }
    }
    let runtime = build(last, settings)?;
    passed.push(format!("{} (the last resort)", last.kind));
    Ok(Selected { runtime, reason: format!("RDS_RUNTIME=auto: {}", passed.join("; ")) })
}

fn build(entry: &RuntimeEntry, settings: &RuntimeSettings) -> Result<Arc<dyn Runtime>, ConfigError> {
    (entry.build)(settings).map_err(|e| ConfigError {
        var: e.setting(),
        message: format!("the {} runtime is unavailable: {e}", entry.kind),
    })
}

/// What a runtime may need from the manager's configuration.
fn settings(config: &Config, installation: &InstallationId) -> RuntimeSettings {
    RuntimeSettings {
        storage_root: config.storage_root.clone(),
        agent_bin: config.agent_bin.clone(),
        image: config.guest_image.as_ref().map(|image| DefaultImage {
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            rootfs: image.base_rootfs.clone(),
        }),
        cgroup_group: config
            .cgroup_group
            .clone()
            .unwrap_or_else(|| crate::installation::default_cgroup_group(installation)),
        sandbox_host_root: config.sandbox_host_root,
        firecracker: config.firecracker.clone(),
    }
}

/// The names of [`RUNTIMES`], for messages.
fn names() -> String {
    RUNTIMES.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_is_listed_once_and_the_sandbox_is_the_last_resort() {
        let kinds: Vec<RuntimeKind> = RUNTIMES.iter().map(|e| e.kind).collect();
        let unique: std::collections::HashSet<RuntimeKind> = kinds.iter().copied().collect();
        assert_eq!(unique.len(), kinds.len(), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&RuntimeKind::Sandbox), "auto falls back to what needs no image");
    }
}
