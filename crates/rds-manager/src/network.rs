//! The manager's VM networking: whether it is available (`RDS_NETWORK`, `RDS_VM_CIDR`,
//! `RDS_DNS_UPSTREAMS`) and the [`rds_net::Network`] it owns when it is.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rds_net::{AddressPool, InstallationId, Network, NetworkConfig, DEFAULT_VM_CIDR};
use rds_runtime::Runtime;

use crate::config::ConfigError;
use crate::ApiError;

/// `RDS_NETWORK`: whether VMs get a network link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// On when `ip` and `nft` work and the runtime supports it; otherwise loopback only.
    Auto,
    /// Required: the manager refuses to start without it.
    On,
    /// VMs get loopback only.
    Off,
}

/// The networking part of the configuration, validated.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// `RDS_NETWORK` (default `auto`).
    pub mode: NetworkMode,
    /// `RDS_VM_CIDR` (default 10.213.0.0/16): one /30 per VM is carved from it.
    pub pool: AddressPool,
    /// `RDS_DNS_UPSTREAMS`: comma-separated resolvers the VMs' resolvers forward to; `None` =
    /// the host's `/etc/resolv.conf`.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
}

impl NetworkSettings {
    /// Reads `RDS_NETWORK`, `RDS_VM_CIDR` and `RDS_DNS_UPSTREAMS` through `get`.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mode = match get("RDS_NETWORK").as_deref().map(str::trim).map(str::to_ascii_lowercase).as_deref() {
            None | Some("auto") => NetworkMode::Auto,
            Some("on") => NetworkMode::On,
            Some("off") => NetworkMode::Off,
            Some(other) => {
                return Err(ConfigError {
                    var: "RDS_NETWORK",
                    message: format!("{other:?} is not one of auto, on, off"),
                })
            }
        };
        let cidr_text = get("RDS_VM_CIDR").unwrap_or_else(|| DEFAULT_VM_CIDR.to_string());
        let cidr: ipnet::Ipv4Net = cidr_text.trim().parse().map_err(|_| ConfigError {
            var: "RDS_VM_CIDR",
            message: format!("{cidr_text:?} is not an IPv4 network such as {DEFAULT_VM_CIDR}"),
        })?;
        if cidr.trunc() != cidr {
            return Err(ConfigError {
                var: "RDS_VM_CIDR",
                message: format!("{cidr} has bits set after the prefix; did you mean {}?", cidr.trunc()),
            });
        }
        let pool = AddressPool::new(cidr).map_err(|e| ConfigError { var: "RDS_VM_CIDR", message: e.to_string() })?;
        let dns_upstreams = match get("RDS_DNS_UPSTREAMS") {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<SocketAddr>()
                            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                            .map_err(|_| ConfigError {
                                var: "RDS_DNS_UPSTREAMS",
                                message: format!("{s:?} is not an IP address (optionally with :port)"),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(NetworkSettings { mode, pool, dns_upstreams })
    }
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings { mode: NetworkMode::Auto, pool: AddressPool::default(), dns_upstreams: None }
    }
}

/// VM networking as the manager runs it: a [`Network`], or the reason there is none.
pub struct VmNetworking {
    network: Option<Arc<Network>>,
    unavailable: String,
}

/// Why `RDS_NETWORK=on` could not be honoured.
#[derive(Debug, thiserror::Error)]
#[error("RDS_NETWORK=on but VM networking is unavailable: {0}")]
pub struct NetworkUnavailable(pub String);

impl VmNetworking {
    /// No networking; VMs get loopback only. `reason` is what callers asking for egress are told.
    pub fn disabled(reason: impl Into<String>) -> Self {
        VmNetworking { network: None, unavailable: reason.into() }
    }

    /// Sets networking up as `settings` ask, for VMs of `runtime`, with host objects named after
    /// `installation`, and logs the outcome.
    pub async fn start(
        settings: &NetworkSettings,
        runtime: &dyn Runtime,
        installation: &InstallationId,
    ) -> Result<Self, NetworkUnavailable> {
        if settings.mode == NetworkMode::Off {
            tracing::info!("VM networking off (RDS_NETWORK=off): VMs get loopback only");
            return Ok(Self::disabled("VM networking is switched off on this manager (RDS_NETWORK=off)"));
        }
        match Self::try_start(settings, runtime, installation).await {
            Ok(network) => {
                tracing::info!(
                    cidr = %settings.pool.cidr(),
                    nft_table = %format!("inet {}", network.nft_table()),
                    interfaces = %installation.iface_wildcard(),
                    "VM networking on: one /30 per VM, egress closed unless a policy opens it"
                );
                Ok(VmNetworking { network: Some(Arc::new(network)), unavailable: String::new() })
            }
            Err(reason) if settings.mode == NetworkMode::On => Err(NetworkUnavailable(reason)),
            Err(reason) => {
                tracing::warn!(%reason, "VM networking unavailable (RDS_NETWORK=auto): VMs get loopback only");
                Ok(Self::disabled(format!("VM networking is unavailable on this manager: {reason}")))
            }
        }
    }

    async fn try_start(
        settings: &NetworkSettings,
        runtime: &dyn Runtime,
        installation: &InstallationId,
    ) -> Result<Network, String> {
        if !runtime.capabilities().network {
            return Err(format!("the {} runtime has no network integration yet", runtime.kind()));
        }
        if !is_root() {
            return Err("it needs root (CAP_NET_ADMIN)".into());
        }
        for (tool, args) in [("ip", &["-V"][..]), ("nft", &["--version"][..])] {
            let ok = tokio::process::Command::new(tool)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`{tool}` does not run (install {})",
                    if tool == "ip" { "iproute2" } else { "nftables" }
                ));
            }
        }
        let config = match &settings.dns_upstreams {
            Some(upstreams) => NetworkConfig {
                dns_upstreams: upstreams.clone(),
                ..NetworkConfig::new(installation.clone(), settings.pool)
            },
            None => NetworkConfig::with_system_dns(installation.clone(), settings.pool),
        };
        if config.dns_upstreams.is_empty() {
            tracing::warn!(
                "no DNS upstreams (RDS_DNS_UPSTREAMS unset and /etc/resolv.conf lists none): VM name lookups will fail"
            );
        }
        Network::new(config).await.map_err(|e| e.to_string())
    }

    /// The network, when VMs get one.
    pub fn get(&self) -> Option<&Arc<Network>> {
        self.network.as_ref()
    }

    /// The network, or 501 with the reason it is unavailable.
    pub fn require(&self) -> Result<&Arc<Network>, ApiError> {
        self.network.as_ref().ok_or_else(|| ApiError::not_implemented(self.unavailable.clone()))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<NetworkSettings, ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        NetworkSettings::from_lookup(&|k: &str| map.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn defaults_are_auto_on_the_default_pool() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.mode, NetworkMode::Auto);
        assert_eq!(s.pool.cidr().to_string(), "10.213.0.0/16");
        assert!(s.dns_upstreams.is_none());
    }

    #[test]
    fn bad_network_values_name_the_variable() {
        for (var, val) in [
            ("RDS_NETWORK", "maybe"),
            ("RDS_VM_CIDR", "10.0.0.0/31"),
            ("RDS_VM_CIDR", "10.0.0.1/16"),
            ("RDS_VM_CIDR", "10.0.0.0/8"),
            ("RDS_VM_CIDR", "fd00::/64"),
            ("RDS_DNS_UPSTREAMS", "1.1.1.1,dns.example"),
        ] {
            let err = settings(&[(var, val)]).unwrap_err();
            assert_eq!(err.var, var, "{val}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn dns_upstreams_take_optional_ports() {
        let s = settings(&[("RDS_DNS_UPSTREAMS", "11.22.33.53, 10.0.0.1:5353"), ("RDS_NETWORK", "OFF")]).unwrap();
        assert_eq!(s.mode, NetworkMode::Off);
        let shown: Vec<String> = s.dns_upstreams.unwrap().iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["11.22.33.53:53", "10.0.0.1:5353"]);
    }
}
