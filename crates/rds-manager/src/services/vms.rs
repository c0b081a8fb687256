//! VM lifecycle: create, start, stop, delete, list — every state change goes through
//! [`crate::lifecycle::check`] under the VM's lock.

use std::time::Duration;

use rds_runtime::{RuntimeError, SnapshotKind, VmHandle, VmSpec};
use rds_store::{now_ms, NewVm, PoolClaim, Quota, SealedSecrets, StoreError, VmLimits, VmRecord, VmState};
use serde_json::json;

use crate::error::ResultExt;
use crate::services::events::vm_event;
use crate::services::images;
use crate::services::{network, peers, pool, seeds, snapshots};
use crate::views::{CreateVmRequest, VmView, PROVISION_BOOT, PROVISION_POOL, PROVISION_SNAPSHOT};
use crate::{lifecycle, liveness};
use crate::{ApiError, AppState};

use crate::views::{MIN_DISK_MB, MIN_MEM_MB};
/// How long a freshly booted agent has to answer `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent gets to shut itself down before the runtime stops the VM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The API view of a record.
pub async fn view(state: &AppState, vm: &VmRecord) -> VmView {
    let net = network::view(state, vm).await;
    VmView {
        id: vm.id.clone(),
        state: vm.state.as_str().to_string(),
        state_reason: vm.state_reason.clone(),
        cpu: vm.cpu,
        mem_mb: vm.mem_mb,
        disk_size_mb: vm.disk_mb,
        image_id: vm.image_id.clone(),
        outbound_internet: vm.outbound_internet,
        runtime: vm.runtime.clone(),
        isolation: state.runtime.isolation().as_str().to_string(),
        created_at: vm.created_at,
        updated_at: vm.updated_at,
        secret_env_keys: state.store.vm_secret_keys(&vm.id).await.unwrap_or_default(),
        peer_links: peers::link_views(state, &vm.id).await.unwrap_or_default(),
        network: net.clone(),
        guest_ip: net.guest_ip,
        provision_mode: vm.provision_mode.clone().unwrap_or_else(|| PROVISION_BOOT.to_string()),
        snapshot_id: vm.snapshot_id.clone(),
    }
}

/// A VM that exists and is not deleted, else 404 (400 for an id a client built from a missing
/// value, as the original answers).
pub async fn find(state: &AppState, id: &str) -> Result<VmRecord, ApiError> {
    let trimmed = id.trim();
    if trimmed.is_empty() || ["undefined", "null"].iter().any(|s| trimmed.eq_ignore_ascii_case(s)) {
        return Err(ApiError::BadRequest("Invalid VM id".into()));
    }
    match state.store.get_vm(id).await? {
        Some(vm) if vm.state != VmState::Deleted && !vm.pool => Ok(vm),
        _ => Err(ApiError::NotFound(format!("VM {id} not found"))),
    }
}

/// A VM that is RUNNING, else 404/409.
pub async fn find_running(state: &AppState, id: &str) -> Result<VmRecord, ApiError> {
    let vm = find(state, id).await?;
    if vm.state != VmState::Running {
        return Err(ApiError::Conflict(format!("VM {id} is {}; it must be RUNNING", vm.state)));
    }
    Ok(vm)
}

/// Lists VMs that are not deleted.
pub async fn list(state: &AppState) -> Result<Vec<VmView>, ApiError> {
    let mut views = Vec::new();
    for vm in state.store.list_vms().await?.into_iter().filter(|v| !v.pool) {
        views.push(view(state, &vm).await);
    }
    Ok(views)
}

/// Validates the request against the limits; quotas answer 429 naming the field and limit.
fn validate(state: &AppState, req: &CreateVmRequest) -> Result<(), ApiError> {
    let c = &state.config;
    if req.cpu == 0 {
        return Err(ApiError::BadRequest("invalid field `cpu`: must be at least 1".into()));
    }
    if req.cpu > c.max_cpu {
        return Err(ApiError::Quota(format!("cpu {} exceeds MAX_CPU={}", req.cpu, c.max_cpu)));
    }
    if req.mem_mb < MIN_MEM_MB {
        return Err(ApiError::BadRequest(format!("invalid field `memMb`: must be at least {MIN_MEM_MB}")));
    }
    if req.mem_mb > c.max_mem_mb {
        return Err(ApiError::Quota(format!("memMb {} exceeds MAX_MEM_MB={}", req.mem_mb, c.max_mem_mb)));
    }
    if let Some(disk) = req.disk_size_mb {
        if disk < MIN_DISK_MB {
            return Err(ApiError::BadRequest(format!("invalid field `diskSizeMb`: must be at least {MIN_DISK_MB}")));
        }
        if disk > c.max_disk_mb {
            return Err(ApiError::Quota(format!("diskSizeMb {disk} exceeds MAX_DISK_MB={}", c.max_disk_mb)));
        }
    }
    Ok(())
}

/// Creates and boots a VM; returns it RUNNING, ready for exec. A refused create (quota, image,
/// no free address) leaves no record; a later failure leaves nothing behind but an ERROR record
/// with the reason.
pub async fn create(state: &AppState, req: CreateVmRequest) -> Result<VmView, ApiError> {
    create_as(state, req, false).await
}

/// Boots a warm-pool member ([`crate::services::pool`]): a create outside `MAX_VMS`, hidden from
/// the API, never itself served from the pool.
pub async fn create_pool_member(state: &AppState, req: CreateVmRequest) -> Result<VmView, ApiError> {
    create_as(state, req, true).await
}

async fn create_as(state: &AppState, req: CreateVmRequest, pool: bool) -> Result<VmView, ApiError> {
    let snapshot_id = match (req.user_overlay_snapshot_id.as_deref(), req.snapshot_id.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::BadRequest(
                "`userOverlaySnapshotId` and its alias `snapshotId` name different snapshots".into(),
            ))
        }
        (a, b) => a.or(b).map(str::to_string),
    };
    validate(state, &req)?;
    let policy = network::policy_from_request(
        state,
        req.outbound_internet,
        req.allow_ips.as_deref().unwrap_or_default(),
        req.allow_domains.as_deref().unwrap_or_default(),
    )?;
    let id = uuid::Uuid::new_v4().to_string();
    let secrets = match req.secret_env.as_deref() {
        Some(entries) if !entries.is_empty() => Some(peers::seal_secrets(state, entries)?),
        _ => None,
    };
    let links = peers::validate_links(state, &id, req.peer_links.as_deref().unwrap_or_default()).await?;
    let now = now_ms();
    let mut record = VmRecord {
        id: id.clone(),
        state: VmState::Creating,
        state_reason: None,
        cpu: req.cpu,
        mem_mb: req.mem_mb,
        disk_mb: req.disk_size_mb.unwrap_or(state.config.default_disk_mb),
        runtime: state.runtime.kind().as_str().to_string(),
        image_id: None,
        handle_json: None,
        outbound_internet: policy.outbound_internet,
        allow_ips_json: Some(serde_json::to_string(&policy.allow_ips).context("encoding allowIps")?),
        secret_env_ciphertext: None,
        created_at: now,
        updated_at: now,
        provision_mode: None,
        snapshot_id: snapshot_id.clone(),
        pool,
    };
    let _lock = state.vm_locks.lock(&id).await;
    // Held until the VM runs: the snapshot's delete waits for it.
    let _snapshot_lock = match &snapshot_id {
        Some(sid) => Some(state.snapshot_locks.read(sid).await),
        None => None,
    };
    let mut baseline = None;
    {
        // Only spares this manager's creates from waiting on each other in the database: the
        // store checks MAX_VMS and picks the slot in the transaction that writes the VM, which
        // holds across managers sharing the database too.
        let _gate = state.create_gate.lock().await;
        record.image_id = images::image_for_new_vm(state, req.image_id.as_deref()).await?;
        require_root_image(state, record.image_id.as_deref()).await?;
        if let Some(sid) = &snapshot_id {
            let found = snapshots::baseline(state, sid, record.image_id.as_deref()).await?;
            // The VM gets a copy of the snapshot's disk, whatever size it asked for.
            record.disk_mb = found.snapshot.disk_mb;
            baseline = Some(found);
        }
        let secrets = secrets.map(|(ciphertext, keys)| SealedSecrets { ciphertext, keys });
        if !pool && baseline.is_none() {
            let claim = PoolClaim {
                runtime: record.runtime.clone(),
                cpu: record.cpu,
                mem_mb: record.mem_mb,
                disk_mb: record.disk_mb,
                image_id: record.image_id.clone(),
                outbound_internet: record.outbound_internet,
                allow_ips_json: record.allow_ips_json.clone(),
                egress_policy_json: Some(network::policy_json(&policy)?),
                secrets: secrets.clone(),
                links: links.clone(),
            };
            if let Some(member) = pool::checkout(state, &record, claim).await? {
                drop(_gate);
                return take_over(state, &member, &policy).await;
            }
        }
        let new = NewVm {
            record: record.clone(),
            egress_policy_json: Some(network::policy_json(&policy)?),
            secrets,
            links,
            net: network::slot_request(state),
        };
        let limits = VmLimits { max_vms: state.config.max_vms };
        state.store.create_vm(&new, &limits).await.map_err(|e| match e {
            StoreError::QuotaExceeded(Quota::Vms { max }) => {
                ApiError::Quota(format!("VM quota exceeded: MAX_VMS={max}"))
            }
            StoreError::QuotaExceeded(Quota::NetSlots { .. }) => network::no_free_slot(state),
            other => other.into(),
        })?;
        // Claims the slot host-wide (or moves the VM to one no other installation claimed).
        if let Err(e) = network::allocate_slot(state, &id).await {
            // The record exists: leave it in ERROR with the reason rather than CREATING forever.
            transition(state, &id, VmState::Creating, VmState::Error, Some(&format!("create failed: {e}"))).await?;
            return Err(e);
        }
    }
    if !pool {
        vm_event(
            state,
            &id,
            "vm.created",
            format!("VM created ({} vCPU, {} MiB)", record.cpu, record.mem_mb),
            Some(json!({"cpu": record.cpu, "memMb": record.mem_mb, "outboundInternet": record.outbound_internet})),
        )
        .await;
    }
    // Without a snapshot of its own, the VM starts from its image's seed where there is one.
    let seed = match &baseline {
        None => seeds::usable(state, &record).await?,
        Some(_) => None,
    };
    let _seed_lock = match &seed {
        Some(s) => Some(state.snapshot_locks.read(&s.snapshot.id).await),
        None => None,
    };
    let from = match (&baseline, &seed) {
        (Some(b), _) => Some(Origin { baseline: b, resume: b.resumable(record.cpu, record.mem_mb), seed: false }),
        (None, Some(s)) => Some(Origin { baseline: s, resume: s.resumable(record.cpu, record.mem_mb), seed: true }),
        (None, None) => None,
    };
    let handle = match boot(state, &record, from).await {
        Ok(handle) => handle,
        Err(e) => {
            let reason = format!("create failed: {e}");
            if let Err(d) = state.runtime.destroy(&id, None).await {
                tracing::warn!(vm_id = %id, error = %d, "cleanup after a failed create failed");
            }
            network::detach(state, &id).await;
            state.store.set_vm_handle(&id, None).await?;
            transition(state, &id, VmState::Creating, VmState::Error, Some(&reason)).await?;
            return Err(e);
        }
    };
    transition(state, &id, VmState::Creating, VmState::Running, None).await?;
    liveness::watch(state, &id, &handle);
    let vm = state.store.get_vm(&id).await?.ok_or_else(|| ApiError::NotFound(format!("VM {id} not found")))?;
    if !pool {
        vm_event(state, &id, "vm.started", "VM started", None).await;
        peers::on_running(state, &vm).await;
    }
    Ok(view(state, &vm).await)
}

/// Makes warm-pool member `id`, just claimed for a create (its record already carries the
/// create's policy, secrets and links), the caller's VM: applies the egress policy to its running
/// link, opens its bridge and writes its peer files. If the policy cannot be applied the VM is
/// removed rather than handed out with the wrong one.
async fn take_over(state: &AppState, id: &str, policy: &rds_net::EgressPolicy) -> Result<VmView, ApiError> {
    let _lock = state.vm_locks.lock(id).await;
    if let (Some(net), Some(slot)) = (state.network.get(), network::slot_of(state, id).await?) {
        if let Err(e) = net.apply_policy(id, &slot, policy).await {
            let _ = finish_delete_of(state, id).await;
            return Err(ApiError::internal(format!("warm VM {id}: cannot apply the egress policy"), e));
        }
    }
    state.store.set_vm_provision(id, PROVISION_POOL, None).await?;
    let vm = find(state, id).await?;
    vm_event(
        state,
        id,
        "vm.created",
        format!("VM created from the warm pool ({} vCPU, {} MiB)", vm.cpu, vm.mem_mb),
        Some(json!({"cpu": vm.cpu, "memMb": vm.mem_mb, "outboundInternet": vm.outbound_internet, "provisionMode": PROVISION_POOL})),
    )
    .await;
    peers::on_running(state, &vm).await;
    Ok(view(state, &vm).await)
}

/// Refuses a VM that would have no image root on a runtime without a root of its own (the
/// sandbox never runs user code over the host's root unless the operator chose that).
async fn require_root_image(state: &AppState, image_id: Option<&str>) -> Result<(), ApiError> {
    let no_root = images::boot_files(state, image_id).await?.rootfs.is_none();
    if no_root && !state.runtime.boot_needs().default_root {
        return Err(ApiError::Conflict(format!(
            "no guest image: register one (`rds image build --register --set-default`, or scripts/run does it) \
             or start the manager with RDS_IMAGE_DIR; the {} runtime has no root filesystem of its own",
            state.runtime.kind()
        )));
    }
    Ok(())
}

/// The snapshot a new VM starts from, whether it resumes from its memory, and whether it is its
/// image's seed (a VM booted on a seed's disk is still a boot).
#[derive(Clone, Copy)]
struct Origin<'a> {
    baseline: &'a snapshots::Baseline,
    resume: bool,
    seed: bool,
}

/// Starts the runtime VM (afresh, or `from` a snapshot), persists its handle, records how it was
/// provisioned and waits for the agent's health.
async fn boot(state: &AppState, vm: &VmRecord, from: Option<Origin<'_>>) -> Result<VmHandle, ApiError> {
    let files = images::boot_files(state, vm.image_id.as_deref()).await?;
    let spec = VmSpec {
        id: vm.id.clone(),
        cpu: vm.cpu,
        mem_mb: vm.mem_mb,
        disk_mb: vm.disk_mb,
        rootfs: files.rootfs,
        kernel: files.kernel,
        initrd: files.initrd,
        hostname: format!("rds-{}", &vm.id[..8.min(vm.id.len())]),
        network: network::before_start(state, vm).await?,
        warm_interpreters: Some(state.config.warm_interpreters),
    };
    let (handle, resumed, from) = match from {
        None => state.runtime.start(&spec).await.map(|h| (h, false, None)),
        Some(from) => match start_from(state, &spec, from).await {
            Ok((h, resumed)) => Ok((h, resumed, Some(from))),
            // A seed that does not start is dropped (and rebuilt later); this VM boots.
            Err(e) if from.seed => {
                tracing::warn!(vm_id = %vm.id, seed = %from.baseline.snapshot.id, error = %e, "starting from the image seed failed; booting");
                let discard_state = state.clone();
                let image = vm.image_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = seeds::discard(&discard_state, image.as_deref()).await {
                        tracing::warn!(error = %e, "cannot drop a seed that failed to start a VM");
                    }
                });
                state.runtime.start(&spec).await.map(|h| (h, false, None))
            }
            Err(e) => Err(e),
        },
    }
    .map_err(runtime_error)?;
    let json = serde_json::to_string(&handle).context("encoding the runtime handle")?;
    state.store.set_vm_handle(&vm.id, Some(&json)).await?;
    let mode = match from {
        Some(from) if resumed || !from.seed => PROVISION_SNAPSHOT,
        _ => PROVISION_BOOT,
    };
    let seed = from.filter(|f| f.seed).map(|f| f.baseline.snapshot.id.as_str());
    state.store.set_vm_provision(&vm.id, mode, seed).await?;
    network::after_start(state, vm, &handle).await?;
    state
        .agent
        .vm(&vm.id)
        .health(HEALTH_TIMEOUT)
        .await
        .map_err(|e| ApiError::internal(format!("VM {}: agent did not become healthy", vm.id), e))?;
    Ok(handle)
}

/// Starts VM `spec` from a snapshot: resumed from its memory when `from.resume`, unless the
/// runtime cannot for this VM (e.g. firecracker with a network link), when it boots on the
/// snapshot's disk instead (which a memory snapshot holds too).
/// Returns the handle and whether the VM resumed.
async fn start_from(state: &AppState, spec: &VmSpec, from: Origin<'_>) -> Result<(VmHandle, bool), RuntimeError> {
    let dir = &from.baseline.dir;
    if from.resume {
        match state.runtime.start_from_snapshot(spec, dir, SnapshotKind::Memory).await {
            Err(RuntimeError::Unsupported(what)) => {
                tracing::info!(vm_id = %spec.id, what, "memory restore not possible here; booting on the snapshot's disk");
            }
            other => return other.map(|h| (h, true)),
        }
    }
    state.runtime.start_from_snapshot(spec, dir, SnapshotKind::Disk).await.map(|h| (h, false))
}

/// Starts a STOPPED (or ERROR) VM; its `/workspace` is kept. A failed start returns it to STOPPED.
pub async fn start(state: &AppState, id: &str) -> Result<(), ApiError> {
    let _lock = state.vm_locks.lock(id).await;
    let vm = find(state, id).await?;
    lifecycle::check(vm.state, VmState::Starting).map_err(|_| {
        ApiError::Conflict(format!("VM {id} is {}; only a STOPPED or ERROR VM can be started", vm.state))
    })?;
    transition(state, id, vm.state, VmState::Starting, None).await?;
    // A VM created while networking was off gets its addresses now.
    let slot = {
        let _gate = state.create_gate.lock().await;
        network::allocate_slot(state, id).await
    };
    match async {
        slot?;
        boot(state, &vm, None).await
    }
    .await
    {
        Ok(handle) => {
            transition(state, id, VmState::Starting, VmState::Running, None).await?;
            liveness::watch(state, id, &handle);
            vm_event(state, id, "vm.started", "VM started", None).await;
            peers::on_running(state, &find(state, id).await?).await;
            Ok(())
        }
        Err(e) => {
            if let Some(h) = current_handle(state, id).await? {
                let _ = state.runtime.stop(id, &h).await;
            }
            network::detach(state, id).await;
            state.store.set_vm_handle(id, None).await?;
            transition(state, id, VmState::Starting, VmState::Stopped, Some(&format!("start failed: {e}"))).await?;
            Err(e)
        }
    }
}

/// Stops a RUNNING VM: asks the agent to shut down, then the runtime stops what remains.
pub async fn stop(state: &AppState, id: &str) -> Result<(), ApiError> {
    let _lock = state.vm_locks.lock(id).await;
    let vm = find(state, id).await?;
    lifecycle::check(vm.state, VmState::Stopping)
        .map_err(|_| ApiError::Conflict(format!("VM {id} is {}; only a RUNNING VM can be stopped", vm.state)))?;
    transition(state, id, vm.state, VmState::Stopping, None).await?;
    state.bridges.close(state, id);
    // Best effort: lets the guest sync and exit cleanly; the runtime forces what is left.
    let _ = state.agent.vm(id).shutdown(SHUTDOWN_TIMEOUT).await;
    state.agent.forget(id);
    let result = match parse_handle(&vm) {
        Some(h) => state.runtime.stop(id, &h).await,
        None => Ok(()),
    };
    network::detach(state, id).await;
    state.store.set_vm_handle(id, None).await?;
    match result {
        Ok(()) => {
            transition(state, id, VmState::Stopping, VmState::Stopped, None).await?;
            vm_event(state, id, "vm.stopped", "VM stopped", None).await;
            Ok(())
        }
        Err(e) => {
            let reason = format!("stop failed: {e}");
            transition(state, id, VmState::Stopping, VmState::Error, Some(&reason)).await?;
            Err(runtime_error(e))
        }
    }
}

/// Removes every trace of a VM and leaves a hidden DELETED tombstone. DELETING is recorded first,
/// so a manager that dies half-way finishes the delete at its next start instead of bringing the
/// VM back; a failed delete stays DELETING with the reason and can be retried.
pub async fn delete(state: &AppState, id: &str) -> Result<(), ApiError> {
    let lock = state.vm_locks.lock(id).await;
    find(state, id).await?;
    finish_delete_of(state, id).await?;
    drop(lock);
    state.vm_locks.forget(id);
    Ok(())
}

/// Deletes VM `id` whatever it is (a warm-pool member too); a VM already gone is fine.
pub async fn remove(state: &AppState, id: &str) -> Result<(), ApiError> {
    let lock = state.vm_locks.lock(id).await;
    finish_delete_of(state, id).await?;
    drop(lock);
    state.vm_locks.forget(id);
    Ok(())
}

/// Records VM `id` DELETING and destroys it. The caller holds the VM's lock.
async fn finish_delete_of(state: &AppState, id: &str) -> Result<(), ApiError> {
    let Some(vm) = state.store.get_vm(id).await?.filter(|v| v.state != VmState::Deleted) else { return Ok(()) };
    if vm.state != VmState::Deleting {
        transition(state, id, vm.state, VmState::Deleting, None).await?;
    }
    finish_delete(state, &vm).await
}

/// Destroys what a DELETING VM still holds and records it DELETED. The caller holds the VM's lock.
pub async fn finish_delete(state: &AppState, vm: &VmRecord) -> Result<(), ApiError> {
    let id = vm.id.as_str();
    state.bridges.close(state, id);
    state.agent.forget(id);
    let handle = parse_handle(vm);
    if let Err(e) = state.runtime.destroy(id, handle.as_ref()).await {
        let reason = format!("delete failed (retry the delete): {e}");
        state.store.set_vm_state(id, VmState::Deleting, Some(&reason)).await?;
        vm_event(state, id, "vm.error", reason, None).await;
        return Err(runtime_error(e));
    }
    network::detach(state, id).await;
    let slot = network::slot_of(state, id).await?;
    lifecycle::check(VmState::Deleting, VmState::Deleted).map_err(|e| ApiError::Conflict(e.to_string()))?;
    // One transaction: the tombstone never keeps a slot, secrets or links, and they never
    // vanish from a VM that is not DELETED.
    state.store.finish_vm_delete(id).await?;
    network::release_claim(state, id, slot);
    vm_event(state, id, "vm.deleted", "VM deleted", None).await;
    Ok(())
}

/// Moves a VM from `from` to `to` if the state machine allows it, and records it.
pub async fn transition(
    state: &AppState,
    id: &str,
    from: VmState,
    to: VmState,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    if from != to {
        lifecycle::check(from, to).map_err(|e| ApiError::Conflict(e.to_string()))?;
    }
    state.store.set_vm_state(id, to, reason).await?;
    if to == VmState::Error {
        vm_event(state, id, "vm.error", reason.unwrap_or("VM failed").to_string(), None).await;
    }
    Ok(())
}

/// The runtime handle persisted for a VM, if it parses.
pub fn parse_handle(vm: &VmRecord) -> Option<VmHandle> {
    vm.handle_json.as_deref().and_then(|j| serde_json::from_str(j).ok())
}

async fn current_handle(state: &AppState, id: &str) -> Result<Option<VmHandle>, ApiError> {
    Ok(state.store.get_vm(id).await?.as_ref().and_then(parse_handle))
}

/// Maps runtime failures onto API errors (501 for unsupported, 400 for bad specs), keeping the
/// runtime's error as the cause.
pub fn runtime_error(e: RuntimeError) -> ApiError {
    ApiError::from(e)
}
