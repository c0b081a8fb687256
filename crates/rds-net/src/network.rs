//! `Network`: the one object the manager holds to give VMs links, addresses and an enforced
//! egress policy.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::claims::{ClaimError, SlotClaims, DEFAULT_CLAIMS_DIR};
use crate::cmd::ToolError;
use crate::dns::Resolver;
use crate::link::{self, HostLink, LinkError};
use crate::names::InstallationId;
use crate::nft::{self, VmRules};
use crate::policy::EgressPolicy;
use crate::pool::{mac_for, AddressPool, PoolError, Slot};

/// Where the host's own resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Longest VM id accepted (it ends up in interface aliases and rule comments).
const MAX_VM_ID_LEN: usize = 64;

/// How the manager's network is set up.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The installation: part of the name of every host object (table, interfaces, claims).
    pub installation: InstallationId,
    /// The VM address pool (`RDS_VM_CIDR`).
    pub pool: AddressPool,
    /// Where VM resolvers forward allowed queries.
    pub dns_upstreams: Vec<SocketAddr>,
    /// The host-wide address claims directory (shared by every installation on the host).
    pub claims_dir: PathBuf,
}

impl NetworkConfig {
    /// A config for `installation` over `pool`, with no DNS upstreams and the default claims directory.
    pub fn new(installation: InstallationId, pool: AddressPool) -> NetworkConfig {
        NetworkConfig { installation, pool, dns_upstreams: Vec::new(), claims_dir: PathBuf::from(DEFAULT_CLAIMS_DIR) }
    }

    /// The same, forwarding DNS to the host's resolvers from `/etc/resolv.conf`.
    pub fn with_system_dns(installation: InstallationId, pool: AddressPool) -> NetworkConfig {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        NetworkConfig { dns_upstreams: parse_resolv_conf(&text), ..NetworkConfig::new(installation, pool) }
    }
}

/// `nameserver` entries of a resolv.conf, as port-53 socket addresses.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            // Drop an IPv6 zone (`fe80::1%eth0`): std cannot parse it and link-local upstreams are rare.
            let addr = words.next()?.split('%').next()?;
            addr.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// What went wrong while configuring VM networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip`/`nft` failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Creating or configuring an interface failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A slot outside the pool.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The host-wide address claims could not be read or written.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The VM id cannot be used in interface aliases and rule comments.
    #[error("VM id {0:?} must be 1-64 characters of letters, digits, '-', '_' or '.'")]
    BadVmId(String),
    /// The slot passed does not belong to this network's pool.
    #[error("slot {index} ({guest_ip}) does not match this network's pool {cidr}")]
    ForeignSlot {
        /// The slot index given.
        index: u32,
        /// The slot's guest address.
        guest_ip: Ipv4Addr,
        /// This network's pool.
        cidr: ipnet::Ipv4Net,
    },
    /// IP forwarding could not be switched on.
    #[error("cannot enable IPv4 forwarding (/proc/sys/net/ipv4/ip_forward): {0}")]
    Forwarding(std::io::Error),
    /// The VM's resolver could not listen on its address.
    #[error("cannot start the DNS resolver for VM {vm_id} on {addr}: {source}")]
    Resolver {
        /// The VM.
        vm_id: String,
        /// The address it should listen on.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What `remove_orphans` cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrphanReport {
    /// Slot indexes whose nft chains and sets were removed.
    pub rules_removed: Vec<u32>,
    /// Host interfaces removed.
    pub links_removed: Vec<String>,
}

struct VmState {
    policy: EgressPolicy,
    resolver: Option<Resolver>,
}

/// Host networking for all VMs of one manager.
pub struct Network {
    id: InstallationId,
    claims: SlotClaims,
    pool: AddressPool,
    upstreams: Arc<Vec<SocketAddr>>,
    vms: Mutex<HashMap<u32, VmState>>,
}

impl Network {
    /// Ensures `table inet rds-<id>` (base chains, maps, sets) and enables IPv4 forwarding.
    pub async fn new(config: NetworkConfig) -> Result<Network, NetError> {
        let id = config.installation;
        nft::apply(nft::base_batch(&id)).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").map_err(NetError::Forwarding)?;
        Ok(Network {
            claims: SlotClaims::new(config.claims_dir, id.clone()),
            id,
            pool: config.pool,
            upstreams: Arc::new(config.dns_upstreams),
            vms: Mutex::new(HashMap::new()),
        })
    }

    /// The address pool.
    pub fn pool(&self) -> &AddressPool {
        &self.pool
    }

    /// The installation this network belongs to.
    pub fn installation(&self) -> &InstallationId {
        &self.id
    }

    /// This installation's nftables table (family `inet`).
    pub fn nft_table(&self) -> String {
        self.id.nft_table()
    }

    /// The host-side interface name of `slot` (`rds<id><index>`).
    pub fn iface_name(&self, slot: &Slot) -> String {
        self.id.iface_name(slot.index)
    }

    /// This installation's host interfaces (nobody else's).
    pub async fn links(&self) -> Result<Vec<HostLink>, NetError> {
        Ok(link::list(&self.id).await?)
    }

    /// Claims `slot`'s addresses host-wide: `true` when they are this installation's (now or
    /// already), `false` when another installation on this host holds them.
    pub fn claim_slot(&self, slot: &Slot) -> Result<bool, NetError> {
        self.pool.slot(slot.index)?;
        Ok(self.claims.claim(slot)?)
    }

    /// Gives up this installation's claim of `slot` (never another's).
    pub fn release_slot(&self, slot: &Slot) -> Result<(), NetError> {
        Ok(self.claims.release(slot)?)
    }

    /// The installation holding `slot`'s addresses host-wide, if any.
    pub fn slot_holder(&self, slot: &Slot) -> Result<Option<String>, NetError> {
        Ok(self.claims.holder(slot)?)
    }

    /// Releases this installation's claims of every slot not in `held` (pool indexes); returns
    /// the /30 network addresses released.
    pub fn release_claims_except(&self, held: &HashSet<u32>) -> Result<Vec<Ipv4Addr>, NetError> {
        let networks: HashSet<Ipv4Addr> =
            held.iter().filter_map(|index| self.pool.slot(*index).ok()).map(|slot| slot.network()).collect();
        Ok(self.claims.release_all_but(&networks)?)
    }

    /// Creates a veth pair: `rds<id><idx>` on the host, `eth0` (guest_ip/30, default route via
    /// host_ip, MAC from the VM id) in the network namespace of `netns_of_pid`. Until
    /// `apply_policy` runs, every packet from it is dropped.
    pub async fn attach_veth(&self, vm_id: &str, slot: &Slot, netns_of_pid: i32) -> Result<(), NetError> {
        self.check(vm_id, slot)?;
        link::create_veth(&self.iface_name(slot), vm_id, slot, netns_of_pid, mac_for(vm_id)).await?;
        Ok(())
    }

    /// Creates the TAP `rds<id><idx>` with host_ip/30 and returns its name (for the VMM config).
    /// Until `apply_policy` runs, every packet from it is dropped.
    pub async fn attach_tap(&self, vm_id: &str, slot: &Slot) -> Result<String, NetError> {
        self.check(vm_id, slot)?;
        let name = self.iface_name(slot);
        link::create_tap(&name, vm_id, slot).await?;
        Ok(name)
    }

    /// Creates the network namespace `rds<id><idx>` holding a TAP bridged to the host veth
    /// `rds<id><idx>` (host_ip/30) and returns the TAP's name inside it and the namespace's name,
    /// for a VMM that runs in that namespace. Until `apply_policy` runs, every packet is dropped.
    pub async fn attach_netns_tap(&self, vm_id: &str, slot: &Slot) -> Result<(String, String), NetError> {
        self.check(vm_id, slot)?;
        let name = self.iface_name(slot);
        link::create_netns_tap(&name, vm_id, slot, &name).await?;
        Ok((link::NETNS_TAP.to_string(), name))
    }

    /// Enforces `policy` for the VM in one atomic nft batch and points its resolver at it.
    /// Calling it again replaces the policy live (existing connections are re-checked).
    pub async fn apply_policy(&self, vm_id: &str, slot: &Slot, policy: &EgressPolicy) -> Result<(), NetError> {
        self.check(vm_id, slot)?;
        let mut vms = self.vms.lock().await;
        let previous = vms.remove(&slot.index);
        let flush_dns = previous
            .as_ref()
            .is_none_or(|state| !state.policy.filters_domains() || state.policy.allow_domains != policy.allow_domains);
        let epoch = rand::random::<u32>() | 1;
        let rules = VmRules { id: &self.id, vm_id, slot, pool: self.pool.cidr(), policy, epoch, flush_dns };
        if let Err(err) = nft::apply(nft::vm_batch(&rules)).await {
            if let Some(state) = previous {
                vms.insert(slot.index, state);
            }
            return Err(err.into());
        }
        let resolver = match (policy.outbound_internet, previous.and_then(|state| state.resolver)) {
            (false, _) => None,
            (true, Some(running)) => {
                running.update(policy.clone());
                Some(running)
            }
            (true, None) => {
                let addr = SocketAddr::from((slot.host_ip, 53));
                let started = Resolver::start(
                    self.id.clone(),
                    slot.index,
                    addr,
                    slot.guest_ip,
                    self.upstreams.clone(),
                    policy.clone(),
                )
                .await;
                match started {
                    Ok(resolver) => Some(resolver),
                    Err(source) => {
                        // The rules are in place; record them so a retry or detach sees them.
                        vms.insert(slot.index, VmState { policy: policy.clone(), resolver: None });
                        return Err(NetError::Resolver { vm_id: vm_id.to_string(), addr, source });
                    }
                }
            }
        };
        vms.insert(slot.index, VmState { policy: policy.clone(), resolver });
        Ok(())
    }

    /// Removes the VM's interface, chains, sets and resolver. Safe to repeat.
    pub async fn detach(&self, vm_id: &str, slot: &Slot) -> Result<(), NetError> {
        self.check(vm_id, slot)?;
        self.remove_slot(slot.index).await
    }

    /// Removes chains, sets and interfaces of this installation that belong to no VM in `known`
    /// (by VM id). Only this installation's table and interfaces are looked at: another
    /// installation's (or anything else on the host) is never touched. Call it at manager start,
    /// after re-adopting live VMs and before creating new ones.
    pub async fn remove_orphans(&self, known: &HashSet<String>) -> Result<OrphanReport, NetError> {
        let mut report = OrphanReport::default();
        if let Some(listing) = nft::list_table(&self.id).await? {
            for (index, vm_id) in nft::inventory(&listing).vms {
                if !vm_id.is_some_and(|id| known.contains(&id)) {
                    self.remove_slot(index).await?;
                    report.rules_removed.push(index);
                }
            }
        }
        for found in link::list(&self.id).await? {
            if !found.vm_id.as_ref().is_some_and(|id| known.contains(id)) {
                self.vms.lock().await.remove(&found.index);
                link::delete(&found.name).await?;
                report.links_removed.push(found.name);
            }
        }
        // A VMM's namespace goes with its host link: one left without it belongs to no VM.
        let links: HashSet<String> = link::list(&self.id).await?.into_iter().map(|l| l.name).collect();
        for (name, index) in link::list_netns(&self.id) {
            if !links.contains(&name) {
                self.vms.lock().await.remove(&index);
                link::delete_netns(&name).await?;
                report.links_removed.push(name);
            }
        }
        Ok(report)
    }

    async fn remove_slot(&self, index: u32) -> Result<(), NetError> {
        // Stop the resolver first so it cannot add to sets being deleted.
        self.vms.lock().await.remove(&index);
        let guest_ip = self.pool.slot(index).map_or(Ipv4Addr::UNSPECIFIED, |slot| slot.guest_ip);
        nft::apply(nft::remove_vm_batch(&self.id, index, guest_ip)).await?;
        link::delete(&self.id.iface_name(index)).await?;
        link::delete_netns(&self.id.iface_name(index)).await?;
        Ok(())
    }

    fn check(&self, vm_id: &str, slot: &Slot) -> Result<(), NetError> {
        let valid = !vm_id.is_empty()
            && vm_id.len() <= MAX_VM_ID_LEN
            && vm_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(NetError::BadVmId(vm_id.chars().take(80).collect()));
        }
        if self.pool.slot(slot.index)? != *slot {
            return Err(NetError::ForeignSlot { index: slot.index, guest_ip: slot.guest_ip, cidr: self.pool.cidr() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_parsed() {
        let text = "# comment\nsearch lan\nnameserver 1.1.1.1\nnameserver fe80::1%eth0\nnameserver  2001:db8::53\nnameserver bogus\n";
        let parsed: Vec<String> = parse_resolv_conf(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(parsed, ["1.1.1.1:53", "[fe80::1]:53", "[2001:db8::53]:53"]);
    }
}
