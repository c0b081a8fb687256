//! Snapshots of VMs: taken of a RUNNING VM into `STORAGE_ROOT/snapshots/<id>/`, listed by scope,
//! read, deleted, and started from by `POST /v1/vms` (`userOverlaySnapshotId` or its alias
//! `snapshotId`). What a snapshot holds depends on the runtime: the VM's disk (every runtime) and,
//! where the runtime can, its memory, so VMs started from it resume without booting.

use std::path::{Path, PathBuf};

use rds_runtime::SnapshotKind;
use rds_store::{SnapshotRecord, SnapshotState, VmRecord};

use crate::services::events::vm_event;
use crate::services::vms;
use crate::views::{CreateSnapshotRequest, SnapshotScope, SnapshotView};
use crate::{ApiError, AppState};

/// The original API's kind of a snapshot a user took of a VM.
pub const KIND_USER: &str = "user_overlay";
/// The original API's kind of an image's internal seed snapshot.
pub const KIND_IMAGE_SEED: &str = "image_seed";

/// The directory holding snapshot `id`'s files.
pub fn dir(state: &AppState, id: &str) -> PathBuf {
    state.config.storage_root.join("snapshots").join(id)
}

/// A snapshot id as this manager makes them (`snap-<uuid>`, `seed-<image>`): anything else never
/// reaches a path.
fn valid_id(id: &str) -> bool {
    (1..=80).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn check_enabled(state: &AppState) -> Result<(), ApiError> {
    if !state.config.enable_snapshots {
        return Err(ApiError::not_implemented("snapshots are disabled on this manager (ENABLE_SNAPSHOTS=false)"));
    }
    Ok(())
}

/// The API's view of a snapshot.
pub fn view(snap: &SnapshotRecord) -> SnapshotView {
    SnapshotView {
        id: snap.id.clone(),
        kind: snap.kind.clone(),
        content: snap.content.clone(),
        state: snap.state.as_str().to_string(),
        internal: snap.internal,
        runtime: snap.runtime.clone(),
        source_vm_id: snap.source_vm_id.clone(),
        image_id: snap.image_id.clone(),
        cpu: snap.cpu,
        mem_mb: snap.mem_mb,
        disk_size_mb: snap.disk_mb,
        size_bytes: snap.bytes,
        created_at: snap.created_at,
        has_disk: false,
        has_overlay: true,
        has_memory: snap.content == SnapshotKind::Memory.as_str(),
    }
}

/// A snapshot that exists, else 404 (400 for an id that cannot be one).
pub async fn find(state: &AppState, id: &str) -> Result<SnapshotRecord, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::BadRequest(format!("invalid snapshot id {id:?}")));
    }
    state.store.get_snapshot(id).await?.ok_or_else(|| ApiError::NotFound(format!("snapshot {id} not found")))
}

/// Snapshots in `scope` (default `user`: what users took; `internal`: image seeds), oldest first.
pub async fn list(state: &AppState, scope: Option<SnapshotScope>) -> Result<Vec<SnapshotView>, ApiError> {
    let scope = scope.unwrap_or(SnapshotScope::User);
    let all = state.store.list_snapshots().await?;
    Ok(all
        .iter()
        .filter(|s| match scope {
            SnapshotScope::User => !s.internal,
            SnapshotScope::Internal => s.internal,
            SnapshotScope::All => true,
        })
        .map(view)
        .collect())
}

/// Takes a snapshot of RUNNING VM `vm_id`: with its memory when the request asks for it, or by
/// default where the runtime can (a provider's never: its memory may hold its secrets).
pub async fn create(state: &AppState, vm_id: &str, req: CreateSnapshotRequest) -> Result<SnapshotView, ApiError> {
    check_enabled(state)?;
    let _lock = state.vm_locks.lock(vm_id).await;
    let vm = vms::find(state, vm_id).await?;
    let Some(best) = state.runtime.capabilities().snapshots else {
        return Err(ApiError::not_implemented(format!("the {} runtime takes no snapshots", state.runtime.kind())));
    };
    if vm.state != rds_store::VmState::Running {
        return Err(ApiError::Conflict(format!("VM must be RUNNING to snapshot (state={})", vm.state)));
    }
    let provider = !state.store.vm_secret_keys(vm_id).await?.is_empty();
    let memory = match req.include_memory {
        Some(true) if best != SnapshotKind::Memory => {
            return Err(ApiError::not_implemented(format!(
                "`includeMemory`: the {} runtime snapshots a VM's disk only",
                state.runtime.kind()
            )))
        }
        Some(true) if provider => {
            return Err(ApiError::BadRequest(
                "`includeMemory`: a provider's memory may hold its secrets, so its snapshots hold its disk only".into(),
            ))
        }
        Some(asked) => asked,
        None => best == SnapshotKind::Memory && !provider,
    };
    let handle = vms::parse_handle(&vm)
        .ok_or_else(|| ApiError::Conflict(format!("VM {vm_id} has no running process to snapshot")))?;
    let record = SnapshotRecord {
        id: format!("snap-{}", uuid::Uuid::new_v4()),
        kind: KIND_USER.into(),
        content: if memory { SnapshotKind::Memory } else { SnapshotKind::Disk }.as_str().into(),
        state: SnapshotState::Creating,
        internal: false,
        runtime: vm.runtime.clone(),
        source_vm_id: Some(vm.id.clone()),
        image_id: vm.image_id.clone(),
        cpu: vm.cpu,
        mem_mb: vm.mem_mb,
        disk_mb: vm.disk_mb,
        bytes: 0,
        created_at: rds_store::now_ms(),
    };
    let snap = take(state, &vm, &handle, record, memory).await?;
    vm_event(
        state,
        vm_id,
        "snapshot.created",
        format!("snapshot {} taken ({})", snap.id, snap.content),
        Some(serde_json::json!({"vmId": vm_id, "snapshotId": snap.id, "cpu": vm.cpu, "memMb": vm.mem_mb, "content": snap.content})),
    )
    .await;
    Ok(view(&snap))
}

/// Records `record` as creating, has the runtime write it and marks it ready; on failure neither
/// the row nor the files are left.
async fn take(
    state: &AppState,
    vm: &VmRecord,
    handle: &rds_runtime::VmHandle,
    record: SnapshotRecord,
    memory: bool,
) -> Result<SnapshotRecord, ApiError> {
    let dir = dir(state, &record.id);
    let parent = dir.parent().expect("a snapshot directory has a parent");
    std::fs::create_dir_all(parent)
        .map_err(|e| ApiError::internal(format!("cannot create {}", parent.display()), e))?;
    state.store.insert_snapshot(&record).await?;
    let written = state.runtime.snapshot(&vm.id, handle, &dir, memory).await;
    let kind = match written {
        Ok(kind) => kind,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            state.store.delete_snapshot(&record.id).await?;
            return Err(vms::runtime_error(e));
        }
    };
    let bytes = disk_usage(&dir);
    if let Err(e) = state.store.finish_snapshot(&record.id, kind.as_str(), bytes).await {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = state.store.delete_snapshot(&record.id).await;
        return Err(e.into());
    }
    Ok(SnapshotRecord { state: SnapshotState::Ready, content: kind.as_str().into(), bytes, ..record })
}

/// Deletes a snapshot and its files; VMs started from it keep theirs (they are copies). Waits for
/// creates reading it to finish.
pub async fn delete(state: &AppState, id: &str) -> Result<(), ApiError> {
    let snap = find(state, id).await?;
    let _in_use = state.snapshot_locks.write(id).await;
    let dir = dir(state, &snap.id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::internal(format!("cannot remove {}", dir.display()), e)),
    }
    state.store.delete_snapshot(id).await?;
    if let Some(vm_id) = &snap.source_vm_id {
        vm_event(state, vm_id, "snapshot.deleted", format!("snapshot {id} deleted"), None).await;
    }
    Ok(())
}

/// Removes snapshots a manager stopped in the middle of (rows still `creating`) with their files.
pub async fn remove_unfinished(state: &AppState) -> Result<(), ApiError> {
    for snap in state.store.list_snapshots().await? {
        if snap.state == SnapshotState::Creating && valid_id(&snap.id) {
            let _ = std::fs::remove_dir_all(dir(state, &snap.id));
            state.store.delete_snapshot(&snap.id).await?;
            tracing::warn!(snapshot = %snap.id, "removed a snapshot left unfinished by an earlier run");
        }
    }
    Ok(())
}

/// What a VM created from snapshot `id` starts from, after checking it fits the request: ready,
/// a user snapshot, taken on this runtime, of the VM's image.
pub struct Baseline {
    /// The snapshot.
    pub snapshot: SnapshotRecord,
    /// Its files.
    pub dir: PathBuf,
}

impl Baseline {
    /// Whether a VM of `cpu` and `mem_mb` resumes from the snapshot's memory (it holds memory
    /// and the VM has its sizes); otherwise it boots on the snapshot's disk.
    pub fn resumable(&self, cpu: u32, mem_mb: u32) -> bool {
        self.snapshot.content == SnapshotKind::Memory.as_str()
            && self.snapshot.cpu == cpu
            && self.snapshot.mem_mb == mem_mb
    }
}

/// Looks up the baseline a create names and checks it against the new VM's image.
pub async fn baseline(state: &AppState, id: &str, image_id: Option<&str>) -> Result<Baseline, ApiError> {
    check_enabled(state)?;
    let snapshot = match find(state, id).await {
        Err(ApiError::NotFound(_)) => return Err(ApiError::NotFound(format!("User overlay snapshot not found: {id}"))),
        other => other?,
    };
    if snapshot.kind != KIND_USER {
        return Err(ApiError::BadRequest("Snapshot kind cannot be used as a user overlay baseline".into()));
    }
    if snapshot.state != SnapshotState::Ready {
        return Err(ApiError::Conflict(format!("snapshot {id} is still being written")));
    }
    let runtime = state.runtime.kind().as_str();
    if snapshot.runtime != runtime {
        return Err(ApiError::BadRequest(format!(
            "snapshot {id} was taken on the {} runtime; this manager runs {runtime}",
            snapshot.runtime
        )));
    }
    if snapshot.image_id.as_deref() != image_id {
        let name = |i: Option<&str>| i.unwrap_or("default").to_string();
        return Err(ApiError::BadRequest(format!(
            "Snapshot image mismatch: snapshot={} vm={}",
            name(snapshot.image_id.as_deref()),
            name(image_id)
        )));
    }
    let dir = dir(state, id);
    if !dir.is_dir() {
        return Err(ApiError::Conflict(format!("Snapshot is missing overlay baseline disk: {}", dir.display())));
    }
    Ok(Baseline { snapshot, dir })
}

/// Allocated size of every file under `dir` (sparse disks count what they hold).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| Some((e.path(), e.file_type().ok()?, e.metadata().ok()?)))
        .map(|(path, kind, meta)| if kind.is_dir() { disk_usage(&path) } else { meta.blocks() * 512 })
        .sum()
}
