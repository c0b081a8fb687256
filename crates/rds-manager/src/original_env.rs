//! The original run-dat-sheesh's environment variables, so an existing `.env` keeps working.
//!
//! Most of them mean the same here and are read by [`crate::Config`] under the same name
//! (`API_KEY`, `PORT`, `STORAGE_ROOT`, `KERNEL_PATH`, `BASE_ROOTFS_PATH`, `VM_SECRET_KEY`,
//! `MAX_VMS`, `MAX_CPU`, `MAX_MEM_MB`, `MAX_EXEC_TIMEOUT_MS`, `EXPOSE_INTERNAL_ERRORS`,
//! `FIRECRACKER_BIN`, `JAILER_BIN`, `ROOTFS_CLONE_MODE`, `ENABLE_SNAPSHOTS`, `ENABLE_WARM_POOL`,
//! `WARM_POOL_TARGET`, `WARM_POOL_MAX_VMS`, `SNAPSHOT_TEMPLATE_CPU`, `SNAPSHOT_TEMPLATE_MEM_MB`);
//! `OVERLAY_SIZE_BYTES` sets the default disk size. The rest are listed in [`NOT_APPLIED`]: one
//! that is set is reported by name at start-up with what this build does instead, never silently
//! ignored. `DB_DIALECT=postgres` stops start-up: quietly using SQLite would split the operator's data.

use crate::config::ConfigError;

/// A variable of the original that is set but has no effect here, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplied {
    /// The variable's name.
    pub var: &'static str,
    /// What this build does instead.
    pub reason: &'static str,
}

const NO_CONSOLE: &str = "this build has no admin console yet; use API keys";
const NO_OTEL: &str = "this build has no OpenTelemetry export; logs go to stderr (RUST_LOG)";
const UNDER_STORAGE_ROOT: &str = "rds keeps its database and images under STORAGE_ROOT, private to the manager";
const FIXED_TRANSPORT: &str = "the agent transport's time and size limits are fixed (see docs/api.md)";

/// The original's variables that this build does not apply, with what it does instead.
pub const NOT_APPLIED: &[NotApplied] = &[
    NotApplied { var: "ADMIN_EMAIL", reason: NO_CONSOLE },
    NotApplied { var: "ADMIN_PASSWORD", reason: NO_CONSOLE },
    NotApplied { var: "IMAGES_DIR", reason: UNDER_STORAGE_ROOT },
    NotApplied { var: "SQLITE_PATH", reason: UNDER_STORAGE_ROOT },
    NotApplied {
        var: "DATABASE_URL",
        reason: "the database is SQLite under STORAGE_ROOT (PostgreSQL is not in this build)",
    },
    NotApplied {
        var: "MANAGER_INTERNAL_BASE_URL",
        reason: "consumers reach the peer bridge over vsock, not a URL on the host network",
    },
    NotApplied { var: "AGENT_VSOCK_PORT", reason: "the agent's vsock port is fixed by the guest image" },
    NotApplied { var: "JAILER_CHROOT_BASE_DIR", reason: "firecracker jails live under STORAGE_ROOT/jail" },
    NotApplied {
        var: "JAILER_UID",
        reason: "each firecracker VM runs as a uid of its own (from 805306368 up), never a shared one",
    },
    NotApplied { var: "JAILER_GID", reason: "each firecracker VM runs as a gid of its own, equal to its uid" },
    NotApplied { var: "FIRECRACKER_LOG_LEVEL", reason: "Firecracker logs at Info into the VM's firecracker log" },
    NotApplied { var: "OVERLAY_DEVICE_WAIT_MS", reason: "the guest's init waits for its overlay disk by itself" },
    NotApplied {
        var: "DNS_SERVER_IP",
        reason: "guests resolve through the manager's own resolver on their link, which enforces allowDomains",
    },
    NotApplied { var: "MAX_ALLOW_IPS", reason: "allowIps holds at most 64 entries (documented in /openapi.json)" },
    NotApplied { var: "MAX_RUNTS_TIMEOUT_MS", reason: "MAX_EXEC_TIMEOUT_MS bounds run-ts, run-js and run-python too" },
    NotApplied { var: "VSOCK_RETRY_ATTEMPTS", reason: FIXED_TRANSPORT },
    NotApplied { var: "VSOCK_RETRY_DELAY_MS", reason: FIXED_TRANSPORT },
    NotApplied { var: "VSOCK_TIMEOUT_MS", reason: FIXED_TRANSPORT },
    NotApplied { var: "VSOCK_HEALTH_TIMEOUT_MS", reason: FIXED_TRANSPORT },
    NotApplied { var: "VSOCK_BINARY_TIMEOUT_MS", reason: FIXED_TRANSPORT },
    NotApplied { var: "VSOCK_MAX_JSON_RESPONSE_BYTES", reason: FIXED_TRANSPORT },
    NotApplied { var: "VSOCK_MAX_BINARY_RESPONSE_BYTES", reason: FIXED_TRANSPORT },
    NotApplied { var: "OTEL_EXPORTER_OTLP_ENDPOINT", reason: NO_OTEL },
    NotApplied { var: "OTEL_SERVICE_NAME", reason: NO_OTEL },
    NotApplied { var: "OTEL_DIAGNOSTIC_LOG_LEVEL", reason: NO_OTEL },
    NotApplied { var: "NODE_ENV", reason: "a Node.js convention; rds is not a Node.js program" },
];

/// The variables of [`NOT_APPLIED`] that `get` finds set; fails on a setting that asks for
/// something this build cannot give without losing data (`DB_DIALECT=postgres`).
pub fn check(get: &impl Fn(&str) -> Option<String>) -> Result<Vec<NotApplied>, ConfigError> {
    match get("DB_DIALECT").map(|d| d.trim().to_ascii_lowercase()).as_deref() {
        None | Some("sqlite") => {}
        Some("postgres") => {
            return Err(ConfigError {
                var: "DB_DIALECT",
                message: "postgres is not in this build: rds stores its state in SQLite under STORAGE_ROOT".into(),
            })
        }
        Some(other) => return Err(ConfigError { var: "DB_DIALECT", message: format!("{other:?} is not sqlite") }),
    }
    Ok(NOT_APPLIED.iter().filter(|n| get(n.var).is_some()).cloned().collect())
}

/// `OVERLAY_SIZE_BYTES` (the original's per-VM writable disk) as a size in MiB, rounded up.
pub fn overlay_size_mb(get: &impl Fn(&str) -> Option<String>) -> Result<Option<u32>, ConfigError> {
    let Some(raw) = get("OVERLAY_SIZE_BYTES") else { return Ok(None) };
    let bytes: u64 = raw.trim().parse().ok().filter(|b| *b > 0).ok_or_else(|| ConfigError {
        var: "OVERLAY_SIZE_BYTES",
        message: format!("{raw:?} is not a positive number of bytes"),
    })?;
    u32::try_from(bytes.div_ceil(1 << 20))
        .map(Some)
        .map_err(|_| ConfigError { var: "OVERLAY_SIZE_BYTES", message: "is too large".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn set_variables_are_reported_by_name_and_unset_ones_not() {
        let get = lookup(&[("JAILER_UID", "1000"), ("NODE_ENV", "production"), ("ENABLE_WARM_POOL", "true")]);
        let names: Vec<&str> = check(&get).unwrap().iter().map(|n| n.var).collect();
        // ENABLE_WARM_POOL means the same here: not reported.
        assert_eq!(names, ["JAILER_UID", "NODE_ENV"]);
        assert!(check(&lookup(&[])).unwrap().is_empty());
    }

    #[test]
    fn postgres_is_refused_and_sqlite_accepted() {
        assert_eq!(check(&lookup(&[("DB_DIALECT", "Postgres")])).unwrap_err().var, "DB_DIALECT");
        assert_eq!(check(&lookup(&[("DB_DIALECT", "oracle")])).unwrap_err().var, "DB_DIALECT");
        assert!(check(&lookup(&[("DB_DIALECT", "SQLite")])).unwrap().is_empty());
    }

    #[test]
    fn overlay_size_rounds_up_to_mib() {
        assert_eq!(overlay_size_mb(&lookup(&[("OVERLAY_SIZE_BYTES", "536870912")])).unwrap(), Some(512));
        assert_eq!(overlay_size_mb(&lookup(&[("OVERLAY_SIZE_BYTES", "1")])).unwrap(), Some(1));
        assert_eq!(overlay_size_mb(&lookup(&[])).unwrap(), None);
        assert_eq!(overlay_size_mb(&lookup(&[("OVERLAY_SIZE_BYTES", "0")])).unwrap_err().var, "OVERLAY_SIZE_BYTES");
    }
}
