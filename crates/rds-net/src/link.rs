//! Host-side interfaces: a veth into a sandbox's network namespace, or a TAP for a VMM.
//!
//! Every interface is named `rds<installation id><slot>` and carries the alias `rds-vm:<vm id>`, so
//! the reconciler can tell from the interface alone which installation and VM it belongs to.

use std::fs::File;
use std::net::Ipv4Addr;

use nix::sched::{setns, CloneFlags};

use crate::cmd::{self, ToolError};
use crate::names::InstallationId;
use crate::pool::{mac_string, Slot};

/// Prefix of the interface alias that records the owning VM id.
const ALIAS_PREFIX: &str = "rds-vm:";

/// Interface name the sandbox sees.
pub const GUEST_IFACE: &str = "eth0";

/// A host interface of ours, as found on the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    /// Interface name (`rds<installation id><index>`).
    pub name: String,
    /// Slot index parsed from the name.
    pub index: u32,
    /// VM id from the alias, if the alias is present.
    pub vm_id: Option<String>,
}

/// Why an interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `ip` failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The sandbox process (and so its network namespace) is gone or unreadable.
    #[error("cannot open the network namespace of pid {pid} (has the sandbox exited?): {source}")]
    Namespace {
        /// The pid given.
        pid: i32,
        /// The OS error.
        source: std::io::Error,
    },
    /// Entering the sandbox's network namespace failed.
    #[error("cannot enter the network namespace of pid {pid}: {source}")]
    Setns {
        /// The pid given.
        pid: i32,
        /// The OS error.
        source: nix::Error,
    },
}

/// Creates `host` on the host and `eth0` inside the namespace of `pid`, addressed and routed.
pub async fn create_veth(host: &str, vm_id: &str, slot: &Slot, pid: i32, mac: [u8; 6]) -> Result<(), LinkError> {
    let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(|source| LinkError::Namespace { pid, source })?;
    delete(host).await?;
    let mac = mac_string(mac);
    let pid_text = pid.to_string();
    cmd::ip(&["link", "add", host, "type", "veth", "peer", "name", GUEST_IFACE, "address", &mac, "netns", &pid_text])
        .await?;
    let configured = async {
        configure_host_end(host, vm_id, slot).await?;
        configure_guest_end(netns, pid, slot.guest_ip, slot.host_ip, slot.prefix).await
    };
    if let Err(err) = configured.await {
        let _ = delete(host).await;
        return Err(err);
    }
    Ok(())
}

/// Creates the TAP `host` with the host address; the guest configures itself from its cmdline.
pub async fn create_tap(host: &str, vm_id: &str, slot: &Slot) -> Result<(), LinkError> {
    delete(host).await?;
    cmd::ip(&["tuntap", "add", "dev", host, "mode", "tap"]).await?;
    if let Err(err) = configure_host_end(host, vm_id, slot).await {
        let _ = delete(host).await;
        return Err(err);
    }
    Ok(())
}

/// The TAP a VMM running in a network namespace of its own attaches (inside that namespace).
pub const NETNS_TAP: &str = "tap0";

/// Creates the network namespace `netns` holding the TAP [`NETNS_TAP`], bridged to a veth whose
/// host end `host` carries the host address. A VMM that joins `netns` reaches nothing but this
/// link; from the host the link is a veth like a sandbox's (same name, address and rules).
pub async fn create_netns_tap(host: &str, vm_id: &str, slot: &Slot, netns: &str) -> Result<(), LinkError> {
    delete(host).await?;
    delete_netns(netns).await?;
    cmd::ip(&["netns", "add", netns]).await?;
    let made = async {
        cmd::ip(&["link", "add", host, "type", "veth", "peer", "name", "veth0", "netns", netns]).await?;
        let inside: [&[&str]; 6] = [
            &["link", "set", "lo", "up"],
            &["tuntap", "add", "dev", NETNS_TAP, "mode", "tap"],
            &["link", "add", "br0", "type", "bridge"],
            &["link", "set", "veth0", "master", "br0", "up"],
            &["link", "set", NETNS_TAP, "master", "br0", "up"],
            &["link", "set", "br0", "up"],
        ];
        for args in inside {
            cmd::ip(&[&["-n", netns][..], args].concat()).await?;
        }
        configure_host_end(host, vm_id, slot).await
    };
    if let Err(err) = made.await {
        let _ = delete(host).await;
        let _ = delete_netns(netns).await;
        return Err(err);
    }
    Ok(())
}

/// Deletes the named network namespace (and every interface in it); absent is fine.
pub async fn delete_netns(name: &str) -> Result<(), LinkError> {
    if !std::path::Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    cmd::ip(&["netns", "del", name]).await?;
    Ok(())
}

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Names of this installation's network namespaces (named like its interfaces).
pub fn list_netns(id: &InstallationId) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = id.index_from_iface(&name)?;
            Some((name, index))
        })
        .collect()
}

async fn configure_host_end(host: &str, vm_id: &str, slot: &Slot) -> Result<(), LinkError> {
    let addr = format!("{}/{}", slot.host_ip, slot.prefix);
    let alias = format!("{ALIAS_PREFIX}{vm_id}");
    cmd::ip(&["addr", "add", &addr, "dev", host]).await?;
    cmd::ip(&["link", "set", "dev", host, "alias", &alias, "up"]).await?;
    Ok(())
}

/// Configures `eth0`/`lo` inside another namespace from a throwaway thread, so no runtime
/// thread ever changes namespace; the `ip` children inherit the thread's namespace.
async fn configure_guest_end(
    netns: File,
    pid: i32,
    guest_ip: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), LinkError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| -> Result<(), LinkError> {
            setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|source| LinkError::Setns { pid, source })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| LinkError::Namespace { pid, source })?;
            runtime.block_on(async {
                let addr = format!("{guest_ip}/{prefix}");
                let gateway = gateway.to_string();
                cmd::ip(&["link", "set", "dev", "lo", "up"]).await?;
                cmd::ip(&["addr", "add", &addr, "dev", GUEST_IFACE]).await?;
                cmd::ip(&["link", "set", "dev", GUEST_IFACE, "up"]).await?;
                cmd::ip(&["route", "replace", "default", "via", &gateway, "dev", GUEST_IFACE]).await?;
                Ok(())
            })
        })();
        let _ = done_tx.send(result);
    });
    done_rx.await.unwrap_or_else(|_| {
        Err(LinkError::Namespace { pid, source: std::io::Error::other("namespace worker thread panicked") })
    })
}

/// Deletes a host interface (and a veth's peer with it); absent is fine.
pub async fn delete(name: &str) -> Result<(), LinkError> {
    match cmd::ip(&["link", "del", "dev", name]).await {
        Ok(_) => Ok(()),
        Err(err) if err.is_not_found() => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Lists the host interfaces of installation `id` (`rds<id><idx>`); nobody else's.
pub async fn list(id: &InstallationId) -> Result<Vec<HostLink>, LinkError> {
    let json = cmd::ip(&["-j", "link", "show"]).await?;
    Ok(parse_link_list(&json, id))
}

fn parse_link_list(json: &str, id: &InstallationId) -> Vec<HostLink> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    links
        .iter()
        .filter_map(|link| {
            let name = link.get("ifname")?.as_str()?;
            let index = id.index_from_iface(name)?;
            let vm_id = link
                .get("ifalias")
                .and_then(|alias| alias.as_str())
                .and_then(|alias| alias.strip_prefix(ALIAS_PREFIX))
                .map(str::to_string);
            Some(HostLink { name: name.to_string(), index, vm_id })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_listing_recovers_index_and_vm_id_of_our_links_only() {
        let id = InstallationId::parse("abcdef").unwrap();
        let json = r#"[{"ifname":"lo"},{"ifname":"rdsabcdef3","ifalias":"rds-vm:abc"},{"ifname":"rdsabcdef4"},
            {"ifname":"rdsabcdefx"},{"ifname":"rdsabcdeg5","ifalias":"rds-vm:theirs"},{"ifname":"rdsv6","ifalias":"rds-vm:old"}]"#;
        let links = parse_link_list(json, &id);
        assert_eq!(
            links,
            vec![
                HostLink { name: "rdsabcdef3".into(), index: 3, vm_id: Some("abc".into()) },
                HostLink { name: "rdsabcdef4".into(), index: 4, vm_id: None },
            ]
        );
    }
}
