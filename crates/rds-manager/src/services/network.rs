//! VM networking around the lifecycle: egress policies from requests, persisted address slots,
//! the link and policy after boot, their removal on stop/delete, and re-adoption at start-up.
//!
//! Every VM of a manager with networking holds a slot (its /30) from create to delete, so a
//! restart never hands the same addresses to two VMs. Slots are also claimed host-wide (see
//! [`rds_net::claims`]) so another manager on the host with the same `RDS_VM_CIDR` never takes
//! them. A VM whose policy has not been applied yet is closed (rds-net drops everything from an
//! interface without a policy).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use rds_net::{mac_for, EgressPolicy, Network, Slot};
use rds_runtime::{LinkKind, VmHandle, VmNetwork};
use rds_store::{NetSlotRequest, Quota, StoreError, VmRecord, VmState};
use serde_json::json;

use crate::error::ResultExt;
use crate::services::events::vm_event;
use crate::services::vms;
use crate::views::{NetworkView, PatchNetworkRequest, VmView};
use crate::{ApiError, AppState};

/// Validates the API's egress fields into a policy: 400 naming the bad entry (`allowIps[2]`),
/// 501 when egress is asked for and this manager has no networking.
pub fn policy_from_request(
    state: &AppState,
    outbound_internet: Option<bool>,
    allow_ips: &[String],
    allow_domains: &[String],
) -> Result<EgressPolicy, ApiError> {
    let policy = EgressPolicy::from_request(outbound_internet, allow_ips, allow_domains)
        .map_err(|e| ApiError::BadRequest(format!("invalid egress policy: {e}")))?;
    if policy.outbound_internet {
        state.network.require()?;
    }
    Ok(policy)
}

/// The policy persisted for a VM; VMs from before egress policies fall back to their
/// `outboundInternet`/`allowIps`, and anything unreadable to no egress.
pub async fn policy_of(state: &AppState, vm: &VmRecord) -> Result<EgressPolicy, ApiError> {
    let stored = state.store.vm_network(&vm.id).await?.and_then(|n| n.egress_policy_json);
    if let Some(json) = stored {
        return Ok(serde_json::from_str(&json).unwrap_or_else(|e| {
            tracing::warn!(vm_id = %vm.id, error = %e, "unreadable egress policy; treating it as no egress");
            EgressPolicy::deny_all()
        }));
    }
    let ips: Vec<String> = vm.allow_ips_json.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
    Ok(EgressPolicy::from_request(Some(vm.outbound_internet), &ips, &[]).unwrap_or_default())
}

/// A policy as the store keeps it.
pub fn policy_json(policy: &EgressPolicy) -> Result<String, ApiError> {
    serde_json::to_string(policy).context("encoding the egress policy")
}

/// Persists a VM's policy.
pub async fn save_policy(state: &AppState, id: &str, policy: &EgressPolicy) -> Result<(), ApiError> {
    let json = policy_json(policy)?;
    state.store.set_vm_egress_policy(id, policy.outbound_internet, &json).await?;
    Ok(())
}

/// The VM's slot, when networking is on and the recorded slot lies in the current pool.
pub async fn slot_of(state: &AppState, id: &str) -> Result<Option<Slot>, ApiError> {
    let Some(network) = state.network.get() else { return Ok(None) };
    let index = state.store.vm_network(id).await?.and_then(|n| n.net_slot);
    Ok(index.and_then(|i| network.pool().slot(i).ok()))
}

/// The slots a new VM may get, when networking is on.
pub fn slot_request(state: &AppState) -> Option<NetSlotRequest> {
    state.network.get().map(|network| NetSlotRequest { capacity: network.pool().capacity(), skip: vec![] })
}

/// The 429 for an exhausted address pool.
pub fn no_free_slot(state: &AppState) -> ApiError {
    let (cidr, capacity) = match state.network.get() {
        Some(network) => (network.pool().cidr().to_string(), network.pool().capacity()),
        None => ("(none)".into(), 0),
    };
    ApiError::Quota(format!(
        "no free VM address left: RDS_VM_CIDR={cidr} holds {capacity} VMs, each held by a VM of this database or claimed by another manager on this host"
    ))
}

/// Gives VM `id` a slot if networking is on and it has none, one outside the pool, or one another
/// manager on this host has claimed meanwhile (its claims vanish at reboot, and whichever manager
/// starts first may take them). The store picks the slot in one transaction against every VM in
/// the database, so no two VMs, of this manager or of another sharing the database, get the same
/// one; the host-wide claim keeps managers with other databases off it.
pub async fn allocate_slot(state: &AppState, id: &str) -> Result<Option<Slot>, ApiError> {
    let Some(network) = state.network.get() else { return Ok(None) };
    let pool = network.pool();
    let mut request = NetSlotRequest { capacity: pool.capacity(), skip: vec![] };
    loop {
        let index = state.store.allocate_net_slot(id, &request).await.map_err(|e| match e {
            StoreError::QuotaExceeded(Quota::NetSlots { .. }) => no_free_slot(state),
            other => other.into(),
        })?;
        let slot = pool.slot(index).context("cannot compute a free VM address")?;
        let claimed = network.claim_slot(&slot).context("cannot claim the VM's addresses")?;
        if claimed {
            return Ok(Some(slot));
        }
        tracing::warn!(vm_id = %id, guest_ip = %slot.guest_ip, "another manager on this host claimed these addresses; picking others");
        request.skip.push(index);
    }
}

/// Before the runtime starts the VM: what it needs to know of the VM's link. For a TAP runtime
/// the TAP is made and the persisted policy enforced first, so the guest's very first packet is
/// already filtered. Without networking (or a slot) the VM keeps loopback only.
pub async fn before_start(state: &AppState, vm: &VmRecord) -> Result<Option<VmNetwork>, ApiError> {
    let (Some(network), Some(slot)) = (state.network.get(), slot_of(state, &vm.id).await?) else {
        return Ok(None);
    };
    let mut link = VmNetwork {
        guest_ip: slot.guest_ip,
        host_ip: slot.host_ip,
        prefix: slot.prefix,
        mac: mac_for(&vm.id),
        tap: None,
        netns: None,
    };
    match state.runtime.link_kind() {
        LinkKind::Veth => {}
        LinkKind::Tap => {
            let tap = network.attach_tap(&vm.id, &slot).await.context("cannot create the VM's TAP device")?;
            enforce(state, network, vm, &slot).await?;
            link.tap = Some(tap);
        }
        LinkKind::NetnsTap => {
            let (tap, netns) = network
                .attach_netns_tap(&vm.id, &slot)
                .await
                .context("cannot create the VM's network namespace and TAP device")?;
            enforce(state, network, vm, &slot).await?;
            link.tap = Some(tap);
            link.netns = Some(netns);
        }
    }
    Ok(Some(link))
}

/// After the runtime started the VM: for a veth runtime, links the VM's network namespace to the
/// host and enforces its persisted policy.
pub async fn after_start(state: &AppState, vm: &VmRecord, handle: &VmHandle) -> Result<(), ApiError> {
    if state.runtime.link_kind() != LinkKind::Veth {
        return Ok(());
    }
    let (Some(network), Some(slot)) = (state.network.get(), slot_of(state, &vm.id).await?) else {
        return Ok(());
    };
    ensure_own_netns(handle.pid)?;
    network.attach_veth(&vm.id, &slot, handle.pid).await.context("cannot attach the VM's network")?;
    enforce(state, network, vm, &slot).await
}

async fn enforce(state: &AppState, network: &Network, vm: &VmRecord, slot: &Slot) -> Result<(), ApiError> {
    let policy = policy_of(state, vm).await?;
    network.apply_policy(&vm.id, slot, &policy).await.context("cannot apply the VM's egress policy")
}

/// Refuses to put a link into the manager's own network namespace (a runtime that does not
/// isolate the network, such as the test runtime).
fn ensure_own_netns(pid: i32) -> Result<(), ApiError> {
    let inode = |path: String| std::fs::metadata(&path).map(|m| m.ino()).map_err(|e| (path, e));
    let theirs = inode(format!("/proc/{pid}/ns/net"));
    let ours = inode("/proc/self/ns/net".to_string());
    match (theirs, ours) {
        (Ok(a), Ok(b)) if a != b => Ok(()),
        (Ok(_), Ok(_)) => Err(ApiError::internal_msg(format!(
            "VM process {pid} shares the manager's network namespace; refusing to attach a link"
        ))),
        (Err((path, e)), _) | (_, Err((path, e))) => Err(ApiError::internal(format!("cannot read {path}"), e)),
    }
}

/// Removes the VM's link, rules, sets and resolver (its slot stays reserved). Best effort: a
/// failure is logged, and whatever is left is removed as an orphan at the next start-up.
pub async fn detach(state: &AppState, id: &str) {
    let Some(network) = state.network.get() else { return };
    let slot = match slot_of(state, id).await {
        Ok(Some(slot)) => slot,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(vm_id = %id, error = %e, "cannot read the VM's network slot");
            return;
        }
    };
    if let Err(e) = network.detach(id, &slot).await {
        tracing::error!(vm_id = %id, error = %e, "cannot remove the VM's network");
    }
}

/// Releases the host-wide claim of a deleted VM's slot (the store freed the slot itself). A claim
/// left behind by a crash in between is released at the next start-up.
pub fn release_claim(state: &AppState, id: &str, slot: Option<Slot>) {
    if let (Some(network), Some(slot)) = (state.network.get(), slot) {
        if let Err(e) = network.release_slot(&slot) {
            tracing::warn!(vm_id = %id, error = %e, "cannot release the VM's address claim");
        }
    }
}

/// Changes a VM's egress policy: persisted whatever the VM's state, applied atomically when it
/// runs, and recorded as a `vm.network_updated` event.
pub async fn patch(state: &AppState, id: &str, req: PatchNetworkRequest) -> Result<VmView, ApiError> {
    let _lock = state.vm_locks.lock(id).await;
    let vm = vms::find(state, id).await?;
    let current = policy_of(state, &vm).await?;
    let ips = req.allow_ips.unwrap_or_else(|| current.allow_ips.iter().map(|n| n.to_string()).collect());
    let domains = req.allow_domains.unwrap_or_else(|| current.allow_domains.iter().map(|d| d.to_string()).collect());
    let outbound = req.outbound_internet.unwrap_or(current.outbound_internet);
    let policy = policy_from_request(state, Some(outbound), &ips, &domains)?;
    if vm.state == VmState::Running {
        match (state.network.get(), slot_of(state, id).await?) {
            (Some(network), Some(slot)) => {
                network.apply_policy(id, &slot, &policy).await.context("cannot apply the egress policy")?
            }
            (Some(_), None) if policy.outbound_internet => {
                return Err(ApiError::Conflict(format!(
                    "VM {id} was started without a network link; stop and start it, then retry"
                )))
            }
            _ => {}
        }
    }
    save_policy(state, id, &policy).await?;
    vm_event(
        state,
        id,
        "vm.network_updated",
        if policy.outbound_internet {
            "Egress policy changed: egress open to the allowed destinations"
        } else {
            "Egress policy changed: no egress"
        },
        Some(json!(policy)),
    )
    .await;
    Ok(vms::view(state, &vms::find(state, id).await?).await)
}

/// The network part of a VM's API view.
pub async fn view(state: &AppState, vm: &VmRecord) -> NetworkView {
    let policy = policy_of(state, vm).await.unwrap_or_default();
    NetworkView {
        guest_ip: slot_of(state, &vm.id).await.ok().flatten().map(|s| s.guest_ip.to_string()),
        outbound_internet: policy.outbound_internet,
        allow_ips: policy.allow_ips.iter().map(|n| n.to_string()).collect(),
        allow_domains: policy.allow_domains.iter().map(|d| d.to_string()).collect(),
    }
}

/// At start-up: renews the host-wide claims of every slot this manager's VMs hold (they vanish at
/// reboot) and releases its claims no VM holds (a crash between claim and record).
async fn reconcile_claims(state: &AppState, network: &Network) {
    let vms = match state.store.list_vms().await {
        Ok(vms) => vms,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list VMs to renew their address claims");
            return;
        }
    };
    let mut held = HashSet::new();
    for vm in &vms {
        let slot = match slot_of(state, &vm.id).await {
            Ok(Some(slot)) => slot,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(vm_id = %vm.id, error = %e, "cannot read the VM's network slot");
                return;
            }
        };
        match network.claim_slot(&slot) {
            Ok(true) => {
                held.insert(slot.index);
            }
            Ok(false) => {
                let holder = network.slot_holder(&slot).ok().flatten().unwrap_or_default();
                if vm.state == VmState::Running {
                    let message = format!(
                        "its addresses ({}) are claimed by installation {holder:?} on this host; stop and start the VM to give it new ones",
                        slot.guest_ip
                    );
                    tracing::error!(vm_id = %vm.id, "{message}");
                    vm_event(state, &vm.id, "vm.network_error", message, None).await;
                } else {
                    tracing::info!(vm_id = %vm.id, %holder, "the VM's addresses were claimed by another manager; it gets new ones at its next start");
                }
            }
            Err(e) => {
                // Unverifiable: keep whatever claim there is.
                held.insert(slot.index);
                tracing::warn!(vm_id = %vm.id, error = %e, "cannot renew the VM's address claim");
            }
        }
    }
    match network.release_claims_except(&held) {
        Ok(released) if released.is_empty() => {}
        Ok(released) => tracing::info!(?released, "released address claims no VM holds"),
        Err(e) => tracing::warn!(error = %e, "cannot release stale address claims"),
    }
}

/// At start-up, after live VMs were re-adopted: renews address claims, re-links and re-applies the
/// policy of each adopted VM (which restarts its DNS resolver), then removes every link, chain and
/// set of this installation that no adopted VM owns.
pub async fn reconcile(state: &AppState, adopted: &[(VmRecord, VmHandle)]) {
    let Some(network) = state.network.get() else { return };
    reconcile_claims(state, network).await;
    let links: HashSet<String> = match network.links().await {
        Ok(found) => found.into_iter().map(|l| l.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list VM interfaces");
            HashSet::new()
        }
    };
    let mut known = HashSet::new();
    for (vm, handle) in adopted {
        let slot = match slot_of(state, &vm.id).await {
            Ok(Some(slot)) => slot,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(vm_id = %vm.id, error = %e, "cannot read the VM's network slot");
                continue;
            }
        };
        known.insert(vm.id.clone());
        let result = if links.contains(&network.iface_name(&slot)) {
            match policy_of(state, vm).await {
                Ok(policy) => network.apply_policy(&vm.id, &slot, &policy).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else if state.runtime.link_kind() == LinkKind::Veth {
            after_start(state, vm, handle).await.map_err(|e| e.to_string())
        } else {
            // The VMM holds the TAP it was started with; a new one would stay unplugged.
            Err(format!("its TAP device {} is gone; stop and start the VM to restore it", network.iface_name(&slot)))
        };
        if let Err(e) = result {
            tracing::error!(vm_id = %vm.id, error = %e, "cannot restore the VM's network after restart");
            vm_event(state, &vm.id, "vm.network_error", format!("network not restored after restart: {e}"), None).await;
        }
    }
    match network.remove_orphans(&known).await {
        Ok(report) if report.rules_removed.is_empty() && report.links_removed.is_empty() => {}
        Ok(report) => tracing::info!(
            rules = ?report.rules_removed,
            links = ?report.links_removed,
            "removed orphaned VM networking"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot remove orphaned VM networking"),
    }
}
