//! Manager configuration from the environment, validated at startup.

use std::net::IpAddr;
use std::path::PathBuf;

/// A configuration variable held a value the manager cannot use.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

/// The PEM files of the API's TLS certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which runtime the operator asked for (`RDS_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Pick the best available runtime.
    Auto,
    /// Linux-namespaces sandbox.
    Sandbox,
    /// QEMU microvm (needs QEMU and a guest image).
    Qemu,
    /// Firecracker microVMs (needs the firecracker binary, KVM and a guest image).
    Firecracker,
}

/// Everything `rds serve` reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND`: listen address. Defaults to 127.0.0.1 so VMs (and the network) cannot reach the API.
    /// Any other address needs TLS (`TLS_CERT`, `TLS_KEY`) or `RDS_ALLOW_INSECURE_BIND=true` (a
    /// TLS-terminating proxy in front).
    pub bind: IpAddr,
    /// `TLS_CERT` and `TLS_KEY`: PEM certificate chain and private key; the API speaks HTTPS.
    pub tls: Option<TlsFiles>,
    /// `PORT`.
    pub port: u16,
    /// `API_KEY`: a fixed key accepted in addition to stored keys.
    pub api_key: Option<String>,
    /// `STORAGE_ROOT`: database, VM directories.
    pub storage_root: PathBuf,
    /// `RDS_RUNTIME`.
    pub runtime: RuntimeChoice,
    /// `RDS_AGENT_BIN`: the agent binary the sandbox runtime launches.
    pub agent_bin: PathBuf,
    /// `RDS_CGROUP_GROUP`: parent cgroup name of this manager's sandboxes; `None` = `rds-<installation
    /// id>` (see [`crate::installation`]). Two managers on one host must never share one, or each
    /// treats the other's VMs as orphans.
    pub cgroup_group: Option<String>,
    /// The guest image for VM runtimes (`RDS_IMAGE_DIR`, `KERNEL_PATH`, `INITRD_PATH`,
    /// `BASE_ROOTFS_PATH`); `None` when none is configured.
    pub guest_image: Option<GuestImage>,
    /// `MAX_VMS`: quota of non-deleted VMs.
    pub max_vms: u64,
    /// `MAX_CPU`: per-VM vCPU limit.
    pub max_cpu: u32,
    /// `MAX_MEM_MB`: per-VM memory limit.
    pub max_mem_mb: u32,
    /// `MAX_DISK_MB`: largest `diskSizeMb` accepted.
    pub max_disk_mb: u32,
    /// `DEFAULT_DISK_MB`: disk size of a VM created without `diskSizeMb`.
    pub default_disk_mb: u32,
    /// `ENABLE_SNAPSHOTS` (default true): the snapshot routes and creates from a snapshot; false
    /// answers them 501.
    pub enable_snapshots: bool,
    /// The warm pool (`ENABLE_WARM_POOL`, `WARM_POOL_TARGET`, `WARM_POOL_MAX_VMS`,
    /// `SNAPSHOT_TEMPLATE_CPU`, `SNAPSHOT_TEMPLATE_MEM_MB`); `None` when it is off.
    pub warm_pool: Option<WarmPoolSettings>,
    /// `SNAPSHOT_TEMPLATE_CPU`, `SNAPSHOT_TEMPLATE_MEM_MB` (1, 256): the sizes of image seeds and
    /// warm-pool members.
    pub template: Template,
    /// `IMAGE_SEEDS`: `auto` (default: where the runtime takes memory snapshots, so a seed saves
    /// the boot), `on` (also disk seeds, which save only a `mkfs`), `off`.
    pub image_seeds: ImageSeeds,
    /// `RDS_SANDBOX_ROOT=host`: sandbox VMs without an image get the host's root, read-only
    /// (development only; the default, `image`, refuses them).
    pub sandbox_host_root: bool,
    /// `MAX_EXEC_TIMEOUT_MS`: longest `timeoutMs` accepted.
    pub max_exec_timeout_ms: u64,
    /// `MAX_JSON_BODY_BYTES`: JSON bodies of every route but exec and the run routes (64 KiB, the
    /// original's `jsonSmall`).
    pub max_json_body_bytes: usize,
    /// `MAX_EXEC_BODY_BYTES`: JSON bodies of exec, run-ts, run-js and run-python (1 MiB, the
    /// original's `jsonMedium`).
    pub max_exec_body_bytes: usize,
    /// `MAX_UPLOAD_BYTES`: a `files/upload` body as sent, compressed (10 MiB, as the original).
    pub max_upload_bytes: u64,
    /// `MAX_IMAGE_BYTES`: largest guest image upload (one part, or a whole bundle); default 4 GiB.
    pub max_image_bytes: u64,
    /// `RATE_LIMIT_*_PER_MIN`: requests per minute per API key (see [`crate::rate_limit`]).
    pub rate_limits: RateLimits,
    /// `EXPOSE_INTERNAL_ERRORS`: put the cause chain in 500 messages (the router's error layer reads it).
    pub expose_internal_errors: bool,
    /// `VM_SECRET_KEY`: key material for encrypting provider `secretEnv` at rest (≥ 16 chars).
    /// Without it, creating a VM with `secretEnv` is refused.
    pub vm_secret_key: Option<Secret>,
    /// `PEER_CALLS_PER_MIN`: bridge calls per minute per consumer link (0 disables).
    pub peer_calls_per_min: u32,
    /// `WARM_INTERPRETERS` (1): interpreters per language each VM's agent keeps started ahead of
    /// run-ts/run-js/run-python (0 disables them; at most 8).
    pub warm_interpreters: u32,
    /// `FIRECRACKER_BIN`, `JAILER_BIN`, `RDS_FIRECRACKER_JAILER`, `RDS_FIRECRACKER_SECCOMP`,
    /// `ROOTFS_CLONE_MODE`: the firecracker runtime.
    pub firecracker: rds_runtime::firecracker::FirecrackerSettings,
    /// `RDS_NETWORK`, `RDS_VM_CIDR`, `RDS_DNS_UPSTREAMS`: VM networking.
    pub network: crate::network::NetworkSettings,
    /// Variables of the original run-dat-sheesh that are set but have no effect here; reported at
    /// start-up.
    pub not_applied: Vec<crate::original_env::NotApplied>,
}

/// Requests per minute per API key; 0 disables a limit. The defaults are the original API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `RATE_LIMIT_PER_MIN` (120): every route without a limit of its own.
    pub global: u32,
    /// `RATE_LIMIT_CREATE_PER_MIN` (30): `POST /v1/vms`.
    pub create: u32,
    /// `RATE_LIMIT_EXEC_PER_MIN` (300): `POST /v1/vms/{id}/exec`.
    pub exec: u32,
    /// `RATE_LIMIT_RUN_PER_MIN` (60): each of run-ts, run-js, run-python.
    pub run: u32,
    /// `RATE_LIMIT_UPLOAD_PER_MIN` (30): `files/upload`.
    pub upload: u32,
    /// `RATE_LIMIT_DOWNLOAD_PER_MIN` (60): `files/download`.
    pub download: u32,
    /// `RATE_LIMIT_CLIENT_SHARE_PERCENT` (50): the part of each of a key's budgets one client
    /// address may use while other addresses use it too, so one caller cannot starve the others
    /// sharing a key (100: no cap).
    pub client_share_percent: u32,
}

impl RateLimits {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let per_min = |var: &'static str, default: u32| parse(get, var, default, "a non-negative integer (0 disables)");
        Ok(RateLimits {
            global: per_min("RATE_LIMIT_PER_MIN", 120)?,
            create: per_min("RATE_LIMIT_CREATE_PER_MIN", 30)?,
            exec: per_min("RATE_LIMIT_EXEC_PER_MIN", 300)?,
            run: per_min("RATE_LIMIT_RUN_PER_MIN", 60)?,
            upload: per_min("RATE_LIMIT_UPLOAD_PER_MIN", 30)?,
            download: per_min("RATE_LIMIT_DOWNLOAD_PER_MIN", 60)?,
            client_share_percent: match parse(get, "RATE_LIMIT_CLIENT_SHARE_PERCENT", 50, "an integer from 1 to 100")? {
                p @ 1..=100 => p,
                _ => {
                    return Err(ConfigError {
                        var: "RATE_LIMIT_CLIENT_SHARE_PERCENT",
                        message: "must be from 1 to 100 (100: no per-client cap)".into(),
                    })
                }
            },
        })
    }
}

/// The files a VM boots from, as `rds image build` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Kernel (`KERNEL_PATH`, else `<RDS_IMAGE_DIR>/vmlinuz`).
    pub kernel: PathBuf,
    /// Initramfs (`INITRD_PATH`, else `<RDS_IMAGE_DIR>/initrd.img`).
    pub initrd: PathBuf,
    /// Read-only base root filesystem (`BASE_ROOTFS_PATH`, else `<RDS_IMAGE_DIR>/rootfs.ext4`).
    pub base_rootfs: PathBuf,
}

/// Resolves the guest image variables; every named file must exist.
fn guest_image(get: &impl Fn(&str) -> Option<String>) -> Result<Option<GuestImage>, ConfigError> {
    let dir = get("RDS_IMAGE_DIR").map(PathBuf::from);
    if let Some(d) = &dir {
        if !d.is_dir() {
            return Err(ConfigError {
                var: "RDS_IMAGE_DIR",
                message: format!("{} is not a directory (build one with `rds image build`)", d.display()),
            });
        }
    }
    let mut files = Vec::new();
    // QEMU boots the ELF `vmlinux` straight through its PVH entry; a bzImage first decompresses
    // itself, which costs ~0.3 s per boot under TCG.
    let kernel_name = match &dir {
        Some(d) if d.join("vmlinux").is_file() => "vmlinux",
        _ => "vmlinuz",
    };
    for (var, default_name) in
        [("KERNEL_PATH", kernel_name), ("INITRD_PATH", "initrd.img"), ("BASE_ROOTFS_PATH", "rootfs.ext4")]
    {
        let (source, path) = match (get(var), &dir) {
            (Some(p), _) => (var, Some(PathBuf::from(p))),
            (None, Some(d)) => ("RDS_IMAGE_DIR", Some(d.join(default_name))),
            (None, None) => (var, None),
        };
        if let Some(p) = &path {
            if !p.is_file() {
                return Err(ConfigError { var: source, message: format!("{} is not a file", p.display()) });
            }
        }
        files.push((var, path));
    }
    if files.iter().all(|(_, p)| p.is_none()) {
        return Ok(None);
    }
    if let Some((var, _)) = files.iter().find(|(_, p)| p.is_none()) {
        return Err(ConfigError {
            var,
            message: "the guest image is incomplete: set RDS_IMAGE_DIR, or all of KERNEL_PATH, INITRD_PATH and BASE_ROOTFS_PATH".into(),
        });
    }
    let mut paths = files.into_iter().map(|(_, p)| p.expect("checked above"));
    Ok(Some(GuestImage {
        kernel: paths.next().expect("three files"),
        initrd: paths.next().expect("three files"),
        base_rootfs: paths.next().expect("three files"),
    }))
}

/// A configuration value that must never be printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads and validates variables from `get` (testable without touching the process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let storage_root = PathBuf::from(get("STORAGE_ROOT").unwrap_or_else(|| "/var/lib/rds".into()));
        if !storage_root.is_absolute() {
            return Err(ConfigError { var: "STORAGE_ROOT", message: "must be an absolute path".into() });
        }
        let agent_bin = match get("RDS_AGENT_BIN") {
            Some(p) => PathBuf::from(p),
            None => default_agent_bin(),
        };
        let api_key = get("API_KEY");
        if let Some(k) = &api_key {
            if k.len() < 16 {
                return Err(ConfigError { var: "API_KEY", message: "must be at least 16 characters".into() });
            }
        }
        let vm_secret_key = get("VM_SECRET_KEY");
        if let Some(k) = &vm_secret_key {
            if k.len() < rds_peer::secrets::MIN_KEY_MATERIAL {
                return Err(ConfigError {
                    var: "VM_SECRET_KEY",
                    message: format!("must be at least {} characters", rds_peer::secrets::MIN_KEY_MATERIAL),
                });
            }
        }
        let cgroup_group = get("RDS_CGROUP_GROUP");
        if let Some(group) = &cgroup_group {
            if group.len() > 64 || !group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ConfigError { var: "RDS_CGROUP_GROUP", message: "must match [A-Za-z0-9-]{1,64}".into() });
            }
        }
        let max_disk_mb: u32 = positive(&get, "MAX_DISK_MB", 10_240)?;
        let not_applied = crate::original_env::check(&get)?;
        // The original's OVERLAY_SIZE_BYTES is the same thing as DEFAULT_DISK_MB, in bytes.
        let overlay_mb = crate::original_env::overlay_size_mb(&get)?;
        let disk_var = if get("DEFAULT_DISK_MB").is_none() && overlay_mb.is_some() {
            "OVERLAY_SIZE_BYTES"
        } else {
            "DEFAULT_DISK_MB"
        };
        let default_disk_mb: u32 =
            positive(&get, "DEFAULT_DISK_MB", overlay_mb.unwrap_or(rds_runtime::DEFAULT_DISK_MB))?;
        let min_disk = rds_runtime::MIN_DISK_MB;
        if default_disk_mb < min_disk || default_disk_mb > max_disk_mb {
            return Err(ConfigError {
                var: disk_var,
                message: format!("must be between {min_disk} and MAX_DISK_MB ({max_disk_mb})"),
            });
        }
        let bind: IpAddr =
            parse(&get, "BIND", "127.0.0.1".parse().expect("literal"), "an IP address such as 127.0.0.1")?;
        let tls = match (get("TLS_CERT").filter(|v| !v.is_empty()), get("TLS_KEY").filter(|v| !v.is_empty())) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.into(), key: key.into() }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError { var: "TLS_KEY", message: "TLS_CERT is set: set TLS_KEY too".into() })
            }
            (None, Some(_)) => {
                return Err(ConfigError { var: "TLS_CERT", message: "TLS_KEY is set: set TLS_CERT too".into() })
            }
        };
        let allow_insecure: bool = parse(&get, "RDS_ALLOW_INSECURE_BIND", false, "true or false")?;
        if !bind.is_loopback() && tls.is_none() && !allow_insecure {
            return Err(ConfigError {
                var: "BIND",
                message: format!(
                    "{bind} is reachable beyond this host and the API would be plain HTTP (keys in clear): set TLS_CERT and \
                     TLS_KEY, or RDS_ALLOW_INSECURE_BIND=true when a TLS-terminating proxy is in front"
                ),
            });
        }
        Ok(Config {
            bind,
            tls,
            port: parse(&get, "PORT", 3000, "a port number 1-65535")?,
            api_key,
            storage_root,
            runtime: match get("RDS_RUNTIME").as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("auto") => RuntimeChoice::Auto,
                Some("sandbox") => RuntimeChoice::Sandbox,
                Some("qemu") => RuntimeChoice::Qemu,
                Some("firecracker") => RuntimeChoice::Firecracker,
                Some(other) => {
                    return Err(ConfigError {
                        var: "RDS_RUNTIME",
                        message: format!("{other:?} is not one of auto, sandbox, qemu, firecracker"),
                    })
                }
            },
            agent_bin,
            cgroup_group,
            guest_image: guest_image(&get)?,
            max_vms: positive(&get, "MAX_VMS", 20)?,
            max_cpu: positive(&get, "MAX_CPU", 4)?,
            max_mem_mb: positive(&get, "MAX_MEM_MB", 2048)?,
            max_disk_mb,
            default_disk_mb,
            enable_snapshots: parse(&get, "ENABLE_SNAPSHOTS", true, "true or false")?,
            warm_pool: warm_pool_settings(&get)?,
            image_seeds: match get("IMAGE_SEEDS").as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("auto") => ImageSeeds::Auto,
                Some("on") => ImageSeeds::On,
                Some("off") => ImageSeeds::Off,
                Some(other) => {
                    return Err(ConfigError {
                        var: "IMAGE_SEEDS",
                        message: format!("{other:?} is not one of auto, on, off"),
                    })
                }
            },
            template: Template {
                cpu: positive(&get, "SNAPSHOT_TEMPLATE_CPU", 1)?,
                mem_mb: positive(&get, "SNAPSHOT_TEMPLATE_MEM_MB", 256)?,
            },
            sandbox_host_root: match get("RDS_SANDBOX_ROOT").as_deref() {
                None | Some("image") => false,
                Some("host") => true,
                Some(other) => {
                    return Err(ConfigError {
                        var: "RDS_SANDBOX_ROOT",
                        message: format!("{other:?} is not one of image, host"),
                    })
                }
            },
            max_exec_timeout_ms: positive(&get, "MAX_EXEC_TIMEOUT_MS", 120_000)?,
            max_json_body_bytes: positive(&get, "MAX_JSON_BODY_BYTES", 64 << 10)?,
            max_exec_body_bytes: positive(&get, "MAX_EXEC_BODY_BYTES", 1 << 20)?,
            max_upload_bytes: positive(&get, "MAX_UPLOAD_BYTES", 10 << 20)?,
            max_image_bytes: positive(&get, "MAX_IMAGE_BYTES", 4 << 30)?,
            rate_limits: RateLimits::from_lookup(&get)?,
            expose_internal_errors: parse(&get, "EXPOSE_INTERNAL_ERRORS", false, "true or false")?,
            vm_secret_key: vm_secret_key.map(Secret),
            firecracker: firecracker_settings(&get)?,
            network: crate::network::NetworkSettings::from_lookup(&get)?,
            peer_calls_per_min: parse(&get, "PEER_CALLS_PER_MIN", 600, "a non-negative integer (0 disables)")?,
            warm_interpreters: match parse(&get, "WARM_INTERPRETERS", 1, "an integer from 0 to 8")? {
                n @ 0..=8 => n,
                n => {
                    return Err(ConfigError {
                        var: "WARM_INTERPRETERS",
                        message: format!("{n} is not an integer from 0 to 8"),
                    })
                }
            },
            not_applied,
        })
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.storage_root.join("rds.db")
    }

    /// Where the store lives: the SQLite file under `STORAGE_ROOT` (the only backend so far).
    pub fn store_config(&self) -> rds_store::StoreConfig {
        rds_store::StoreConfig::Sqlite { path: self.database_path() }
    }
}

/// The firecracker runtime's variables.
fn firecracker_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<rds_runtime::firecracker::FirecrackerSettings, ConfigError> {
    use rds_runtime::firecracker::{CloneMode, FirecrackerSettings, Seccomp};
    let jailer_off = match get("RDS_FIRECRACKER_JAILER").as_deref() {
        None | Some("auto") => false,
        Some("off") => true,
        Some(other) => {
            return Err(ConfigError {
                var: "RDS_FIRECRACKER_JAILER",
                message: format!("{other:?} is not one of auto, off"),
            })
        }
    };
    let seccomp = match get("RDS_FIRECRACKER_SECCOMP").as_deref() {
        None | Some("default") => Seccomp::Default,
        Some("off") => Seccomp::Off,
        Some(path) if path.starts_with('/') => Seccomp::Filter(PathBuf::from(path)),
        Some(other) => {
            return Err(ConfigError {
                var: "RDS_FIRECRACKER_SECCOMP",
                message: format!("{other:?} is not one of default, off or an absolute path to a filter"),
            })
        }
    };
    let clone_mode = match get("ROOTFS_CLONE_MODE").as_deref() {
        None | Some("auto") => CloneMode::Auto,
        Some("reflink") => CloneMode::Reflink,
        Some("copy") => CloneMode::Copy,
        Some(other) => {
            return Err(ConfigError {
                var: "ROOTFS_CLONE_MODE",
                message: format!("{other:?} is not one of auto, reflink, copy"),
            })
        }
    };
    Ok(FirecrackerSettings {
        firecracker_bin: get("FIRECRACKER_BIN").map(PathBuf::from),
        jailer_bin: get("JAILER_BIN").map(PathBuf::from),
        jailer_off,
        seccomp,
        clone_mode,
    })
}

/// `rds-agent` next to the running executable.
fn default_agent_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("rds-agent")))
        .unwrap_or_else(|| PathBuf::from("rds-agent"))
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    expected: &str,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError { var, message: format!("{v:?} is not {expected}") }),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    let v = parse(get, var, default, "a positive integer")?;
    if v <= T::default() {
        return Err(ConfigError { var, message: "must be greater than zero".into() });
    }
    Ok(v)
}

/// Which runtimes build image seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSeeds {
    /// Runtimes that take memory snapshots.
    Auto,
    /// Every runtime that takes snapshots.
    On,
    /// None.
    Off,
}

/// The sizes of image seeds and warm-pool members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// vCPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub mem_mb: u32,
}

/// The warm pool's settings: VMs booted ahead of demand with the template sizes, handed to
/// creates that ask for those sizes and the default image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmPoolSettings {
    /// Members kept ready: `min(WARM_POOL_TARGET, WARM_POOL_MAX_VMS)`.
    pub target: u32,
    /// `SNAPSHOT_TEMPLATE_CPU`: vCPUs of a member.
    pub cpu: u32,
    /// `SNAPSHOT_TEMPLATE_MEM_MB`: memory of a member.
    pub mem_mb: u32,
}

/// `ENABLE_WARM_POOL=true` (as the original: anything else is off) with its target, cap and sizes.
fn warm_pool_settings(get: &impl Fn(&str) -> Option<String>) -> Result<Option<WarmPoolSettings>, ConfigError> {
    let target: u32 = parse(get, "WARM_POOL_TARGET", 1, "a non-negative integer")?;
    let max: u32 = parse(get, "WARM_POOL_MAX_VMS", 4, "a non-negative integer")?;
    let cpu: u32 = positive(get, "SNAPSHOT_TEMPLATE_CPU", 1)?;
    let mem_mb: u32 = positive(get, "SNAPSHOT_TEMPLATE_MEM_MB", 256)?;
    // (The same variables size image seeds: `Config::template`.)
    let enabled = get("ENABLE_WARM_POOL").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let target = target.min(max);
    Ok((enabled && target > 0).then_some(WarmPoolSettings { target, cpu, mem_mb }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_local_and_conservative() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.port, 3000);
        assert_eq!(c.max_vms, 20);
        assert_eq!(c.max_json_body_bytes, 64 << 10);
        assert_eq!(c.runtime, RuntimeChoice::Auto);
        assert!(!c.expose_internal_errors);
        assert_eq!(c.cgroup_group, None, "the default group is derived from the installation id");
        assert_eq!(cfg(&[("RDS_CGROUP_GROUP", "rds-blue")]).unwrap().cgroup_group.as_deref(), Some("rds-blue"));
    }

    #[test]
    fn beyond_loopback_the_api_needs_tls_or_an_explicit_allowance() {
        assert_eq!(cfg(&[("BIND", "0.0.0.0")]).unwrap_err().var, "BIND");
        assert_eq!(cfg(&[("BIND", "10.1.2.3")]).unwrap_err().var, "BIND");
        assert!(cfg(&[("BIND", "::1")]).unwrap().tls.is_none());
        assert!(cfg(&[("BIND", "0.0.0.0"), ("RDS_ALLOW_INSECURE_BIND", "true")]).is_ok());
        let c = cfg(&[("BIND", "0.0.0.0"), ("TLS_CERT", "/c.pem"), ("TLS_KEY", "/k.pem")]).unwrap();
        assert_eq!(c.tls, Some(TlsFiles { cert: "/c.pem".into(), key: "/k.pem".into() }));
        assert_eq!(cfg(&[("TLS_CERT", "/c.pem")]).unwrap_err().var, "TLS_KEY");
        assert_eq!(cfg(&[("TLS_KEY", "/k.pem")]).unwrap_err().var, "TLS_CERT");
        assert_eq!(cfg(&[("RDS_ALLOW_INSECURE_BIND", "maybe")]).unwrap_err().var, "RDS_ALLOW_INSECURE_BIND");
    }

    #[test]
    fn rate_and_body_limits_default_to_the_originals_and_are_configurable() {
        let c = cfg(&[]).unwrap();
        let original = RateLimits {
            global: 120,
            create: 30,
            exec: 300,
            run: 60,
            upload: 30,
            download: 60,
            client_share_percent: 50,
        };
        assert_eq!(c.rate_limits, original);
        assert_eq!((c.max_json_body_bytes, c.max_exec_body_bytes, c.max_upload_bytes), (64 << 10, 1 << 20, 10 << 20));
        let c = cfg(&[
            ("RATE_LIMIT_PER_MIN", "0"),
            ("RATE_LIMIT_CREATE_PER_MIN", "1"),
            ("RATE_LIMIT_EXEC_PER_MIN", "2"),
            ("RATE_LIMIT_RUN_PER_MIN", "3"),
            ("RATE_LIMIT_UPLOAD_PER_MIN", "4"),
            ("RATE_LIMIT_DOWNLOAD_PER_MIN", "5"),
            ("MAX_EXEC_BODY_BYTES", "2048"),
        ])
        .unwrap();
        assert_eq!(
            c.rate_limits,
            RateLimits { global: 0, create: 1, exec: 2, run: 3, upload: 4, download: 5, client_share_percent: 50 }
        );
        assert_eq!(c.max_exec_body_bytes, 2048);
        for var in ["RATE_LIMIT_RUN_PER_MIN", "RATE_LIMIT_DOWNLOAD_PER_MIN"] {
            assert_eq!(cfg(&[(var, "-1")]).unwrap_err().var, var);
        }
        assert_eq!(cfg(&[("MAX_EXEC_BODY_BYTES", "0")]).unwrap_err().var, "MAX_EXEC_BODY_BYTES");
    }

    #[test]
    fn warm_interpreters_default_to_one_and_stay_within_eight() {
        assert_eq!(cfg(&[]).unwrap().warm_interpreters, 1);
        assert_eq!(cfg(&[("WARM_INTERPRETERS", "0")]).unwrap().warm_interpreters, 0);
        for bad in ["0", "101", "half"] {
            let e = cfg(&[("RATE_LIMIT_CLIENT_SHARE_PERCENT", bad)]).unwrap_err();
            assert_eq!(e.var, "RATE_LIMIT_CLIENT_SHARE_PERCENT", "{bad}");
        }
        assert_eq!(cfg(&[("RATE_LIMIT_CLIENT_SHARE_PERCENT", "100")]).unwrap().rate_limits.client_share_percent, 100);
        assert_eq!(cfg(&[("WARM_INTERPRETERS", "8")]).unwrap().warm_interpreters, 8);
        for bad in ["9", "-1", "two"] {
            assert_eq!(cfg(&[("WARM_INTERPRETERS", bad)]).unwrap_err().var, "WARM_INTERPRETERS", "{bad}");
        }
    }

    #[test]
    fn an_original_env_file_starts_with_its_unused_variables_named() {
        let c = cfg(&[("OVERLAY_SIZE_BYTES", "536870912"), ("FIRECRACKER_LOG_LEVEL", "Debug"), ("JAILER_UID", "1234")])
            .unwrap();
        assert_eq!(c.default_disk_mb, 512);
        let named: Vec<&str> = c.not_applied.iter().map(|n| n.var).collect();
        assert_eq!(named, ["JAILER_UID", "FIRECRACKER_LOG_LEVEL"]);
        assert!(c.enable_snapshots);
        assert!(!cfg(&[("ENABLE_SNAPSHOTS", "false")]).unwrap().enable_snapshots);
        assert_eq!(cfg(&[("ENABLE_SNAPSHOTS", "maybe")]).unwrap_err().var, "ENABLE_SNAPSHOTS");
        // The warm pool, as the original reads it: only "true" turns it on; the cap bounds the target.
        assert_eq!(c.warm_pool, None);
        let pool = |vars: &[(&str, &str)]| cfg(vars).unwrap().warm_pool;
        assert_eq!(pool(&[("ENABLE_WARM_POOL", "yes")]), None);
        assert_eq!(
            pool(&[("ENABLE_WARM_POOL", "TRUE")]),
            Some(crate::config::WarmPoolSettings { target: 1, cpu: 1, mem_mb: 256 })
        );
        let capped = pool(&[("ENABLE_WARM_POOL", "true"), ("WARM_POOL_TARGET", "9"), ("WARM_POOL_MAX_VMS", "3")]);
        assert_eq!(capped.map(|p| p.target), Some(3));
        assert_eq!(pool(&[("ENABLE_WARM_POOL", "true"), ("WARM_POOL_TARGET", "0")]), None);
        assert_eq!(cfg(&[("OVERLAY_SIZE_BYTES", "1024")]).unwrap_err().var, "OVERLAY_SIZE_BYTES", "below the minimum");
        assert_eq!(cfg(&[("OVERLAY_SIZE_BYTES", "1"), ("DEFAULT_DISK_MB", "64")]).unwrap().default_disk_mb, 64);
        assert_eq!(cfg(&[("DB_DIALECT", "postgres")]).unwrap_err().var, "DB_DIALECT");
    }

    #[test]
    fn guest_image_comes_from_the_image_dir_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(cfg(&[]).unwrap().guest_image, None);
        let err = cfg(&[("RDS_IMAGE_DIR", d)]).unwrap_err();
        assert_eq!(err.var, "RDS_IMAGE_DIR");
        assert!(err.message.contains("vmlinuz"), "{err}");
        for f in ["vmlinuz", "initrd.img", "rootfs.ext4"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let image = cfg(&[("RDS_IMAGE_DIR", d)]).unwrap().guest_image.unwrap();
        assert_eq!(image.base_rootfs, dir.path().join("rootfs.ext4"));
        let err = cfg(&[("KERNEL_PATH", "/nonexistent/vmlinuz")]).unwrap_err();
        assert_eq!(err.var, "KERNEL_PATH");
        let kernel = dir.path().join("vmlinuz");
        let err = cfg(&[("KERNEL_PATH", kernel.to_str().unwrap())]).unwrap_err();
        assert_eq!(err.var, "INITRD_PATH", "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("PORT", "x"),
            ("MAX_VMS", "0"),
            ("RDS_RUNTIME", "docker"),
            ("BIND", "nope"),
            ("STORAGE_ROOT", "rel"),
            ("API_KEY", "short"),
            ("RDS_CGROUP_GROUP", "../x"),
        ] {
            let err = cfg(&[(var, val)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
