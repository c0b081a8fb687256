//! VM networking around the lifecycle: egress policies from requests, persisted address slots,
//! the link and policy after boot, their removal on stop/delete, and re-adoption at start-up.
//!
//! Every VM of a manager with networking holds a slot (its /30) from create to delete, so a
//! restart never hands the same addresses to two VMs. A VM whose policy has not been applied yet
//! is closed (rds-net drops everything from an interface without a policy).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use rds_net::{mac_for, EgressPolicy, Network, Slot};
use rds_runtime::{LinkKind, VmHandle, VmNetwork};
use rds_store::{VmRecord, VmState};
use serde_json::json;

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
pub fn policy_of(state: &AppState, vm: &VmRecord) -> Result<EgressPolicy, ApiError> {
    let stored = state.store.vm_network(&vm.id)?.and_then(|n| n.egress_policy_json);
    if let Some(json) = stored {
        return Ok(serde_json::from_str(&json).unwrap_or_else(|e| {
            tracing::warn!(vm_id = %vm.id, error = %e, "unreadable egress policy; treating it as no egress");
            EgressPolicy::deny_all()
        }));
    }
    let ips: Vec<String> =
        vm.allow_ips_json.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
    Ok(EgressPolicy::from_request(Some(vm.outbound_internet), &ips, &[]).unwrap_or_default())
}

/// Persists a VM's policy.
pub fn save_policy(state: &AppState, id: &str, policy: &EgressPolicy) -> Result<(), ApiError> {
    let json = serde_json::to_string(policy).map_err(ApiError::internal)?;
    state.store.set_vm_egress_policy(id, policy.outbound_internet, &json)?;
    Ok(())
}

/// The VM's slot, when networking is on and the recorded slot lies in the current pool.
pub fn slot_of(state: &AppState, id: &str) -> Result<Option<Slot>, ApiError> {
    let Some(network) = state.network.get() else { return Ok(None) };
    let index = state.store.vm_network(id)?.and_then(|n| n.net_slot);
    Ok(index.and_then(|i| network.pool().slot(i).ok()))
}

/// Gives VM `id` a slot if networking is on and it has none (or one outside the pool). The caller
/// holds `create_gate`, so two VMs can never be handed the same slot.
pub fn allocate_slot(state: &AppState, id: &str) -> Result<Option<Slot>, ApiError> {
    let Some(network) = state.network.get() else { return Ok(None) };
    if let Some(slot) = slot_of(state, id)? {
        return Ok(Some(slot));
    }
    let pool = network.pool();
    let used = state.store.used_net_slots()?;
    let index = pool.first_free(&used).ok_or_else(|| {
        ApiError::Quota(format!(
            "no free VM address left: RDS_VM_CIDR={} holds {} VMs",
            pool.cidr(),
            pool.capacity()
        ))
    })?;
    state.store.set_vm_net_slot(id, Some(index))?;
    Ok(Some(pool.slot(index).map_err(ApiError::internal)?))
}

/// Before the runtime starts the VM: what it needs to know of the VM's link. For a TAP runtime
/// the TAP is made and the persisted policy enforced first, so the guest's very first packet is
/// already filtered. Without networking (or a slot) the VM keeps loopback only.
pub async fn before_start(state: &AppState, vm: &VmRecord) -> Result<Option<VmNetwork>, ApiError> {
    let (Some(network), Some(slot)) = (state.network.get(), slot_of(state, &vm.id)?) else {
        return Ok(None);
    };
    let mut link = VmNetwork {
        guest_ip: slot.guest_ip,
        host_ip: slot.host_ip,
        prefix: slot.prefix,
        mac: mac_for(&vm.id),
        tap: None,
    };
    if state.runtime.link_kind() == LinkKind::Tap {
        let tap = network
            .attach_tap(&vm.id, &slot)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot create the VM's TAP device: {e}")))?;
        enforce(state, network, vm, &slot).await?;
        link.tap = Some(tap);
    }
    Ok(Some(link))
}

/// After the runtime started the VM: for a veth runtime, links the VM's network namespace to the
/// host and enforces its persisted policy.
pub async fn after_start(state: &AppState, vm: &VmRecord, handle: &VmHandle) -> Result<(), ApiError> {
    if state.runtime.link_kind() != LinkKind::Veth {
        return Ok(());
    }
    let (Some(network), Some(slot)) = (state.network.get(), slot_of(state, &vm.id)?) else {
        return Ok(());
    };
    ensure_own_netns(handle.pid)?;
    network
        .attach_veth(&vm.id, &slot, handle.pid)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot attach the VM's network: {e}")))?;
    enforce(state, network, vm, &slot).await
}

async fn enforce(state: &AppState, network: &Network, vm: &VmRecord, slot: &Slot) -> Result<(), ApiError> {
    let policy = policy_of(state, vm)?;
    network
        .apply_policy(&vm.id, slot, &policy)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot apply the VM's egress policy: {e}")))
}

/// Refuses to put a link into the manager's own network namespace (a runtime that does not
/// isolate the network, such as the test runtime).
fn ensure_own_netns(pid: i32) -> Result<(), ApiError> {
    let inode = |path: String| std::fs::metadata(&path).map(|m| m.ino()).map_err(|e| (path, e));
    let theirs = inode(format!("/proc/{pid}/ns/net"));
    let ours = inode("/proc/self/ns/net".to_string());
    match (theirs, ours) {
        (Ok(a), Ok(b)) if a != b => Ok(()),
        (Ok(_), Ok(_)) => Err(ApiError::Internal(format!(
            "VM process {pid} shares the manager's network namespace; refusing to attach a link"
        ))),
        (Err((path, e)), _) | (_, Err((path, e))) => {
            Err(ApiError::Internal(format!("cannot read {path}: {e}")))
        }
    }
}

/// Removes the VM's link, rules, sets and resolver (its slot stays reserved). Best effort: a
/// failure is logged, and whatever is left is removed as an orphan at the next start-up.
pub async fn detach(state: &AppState, id: &str) {
    let Some(network) = state.network.get() else { return };
    let slot = match slot_of(state, id) {
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

/// Frees a deleted VM's slot for reuse.
pub fn free_slot(state: &AppState, id: &str) -> Result<(), ApiError> {
    state.store.set_vm_net_slot(id, None)?;
    Ok(())
}

/// Changes a VM's egress policy: persisted whatever the VM's state, applied atomically when it
/// runs, and recorded as a `vm.network_updated` event.
pub async fn patch(state: &AppState, id: &str, req: PatchNetworkRequest) -> Result<VmView, ApiError> {
    let _lock = state.vm_locks.lock(id).await;
    let vm = vms::find(state, id)?;
    let current = policy_of(state, &vm)?;
    let ips = req
        .allow_ips
        .unwrap_or_else(|| current.allow_ips.iter().map(|n| n.to_string()).collect());
    let domains = req
        .allow_domains
        .unwrap_or_else(|| current.allow_domains.iter().map(|d| d.to_string()).collect());
    let outbound = req.outbound_internet.unwrap_or(current.outbound_internet);
    let policy = policy_from_request(state, Some(outbound), &ips, &domains)?;
    if vm.state == VmState::Running {
        match (state.network.get(), slot_of(state, id)?) {
            (Some(network), Some(slot)) => network
                .apply_policy(id, &slot, &policy)
                .await
                .map_err(|e| ApiError::Internal(format!("cannot apply the egress policy: {e}")))?,
            (Some(_), None) if policy.outbound_internet => {
                return Err(ApiError::Conflict(format!(
                    "VM {id} was started without a network link; stop and start it, then retry"
                )))
            }
            _ => {}
        }
    }
    save_policy(state, id, &policy)?;
    vm_event(
        state,
        id,
        "vm.network_updated",
        if policy.outbound_internet { "Egress policy changed: egress open to the allowed destinations" } else { "Egress policy changed: no egress" },
        Some(json!(policy)),
    );
    Ok(vms::view(state, &vms::find(state, id)?))
}

/// The network part of a VM's API view.
pub fn view(state: &AppState, vm: &VmRecord) -> NetworkView {
    let policy = policy_of(state, vm).unwrap_or_default();
    NetworkView {
        guest_ip: slot_of(state, &vm.id).ok().flatten().map(|s| s.guest_ip.to_string()),
        outbound_internet: policy.outbound_internet,
        allow_ips: policy.allow_ips.iter().map(|n| n.to_string()).collect(),
        allow_domains: policy.allow_domains.iter().map(|d| d.to_string()).collect(),
    }
}

/// At start-up, after live VMs were re-adopted: re-links and re-applies the policy of each adopted
/// VM (which restarts its DNS resolver), then removes every link, chain and set no adopted VM owns.
pub async fn reconcile(state: &AppState, adopted: &[(VmRecord, VmHandle)]) {
    let Some(network) = state.network.get() else { return };
    let links: HashSet<String> = match rds_net::link::list().await {
        Ok(found) => found.into_iter().map(|l| l.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list VM interfaces");
            HashSet::new()
        }
    };
    let mut known = HashSet::new();
    for (vm, handle) in adopted {
        let slot = match slot_of(state, &vm.id) {
            Ok(Some(slot)) => slot,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(vm_id = %vm.id, error = %e, "cannot read the VM's network slot");
                continue;
            }
        };
        known.insert(vm.id.clone());
        let result = if links.contains(&slot.iface()) {
            match policy_of(state, vm) {
                Ok(policy) => network.apply_policy(&vm.id, &slot, &policy).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else if state.runtime.link_kind() == LinkKind::Veth {
            after_start(state, vm, handle).await.map_err(|e| e.to_string())
        } else {
            // The VMM holds the TAP it was started with; a new one would stay unplugged.
            Err(format!("its TAP device {} is gone; stop and start the VM to restore it", slot.iface()))
        };
        if let Err(e) = result {
            tracing::error!(vm_id = %vm.id, error = %e, "cannot restore the VM's network after restart");
            vm_event(state, &vm.id, "vm.network_error", format!("network not restored after restart: {e}"), None);
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
