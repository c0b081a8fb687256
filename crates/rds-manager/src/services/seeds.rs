//! Image seeds: per image, an internal snapshot (`kind: image_seed`, `scope=internal`) of a VM
//! freshly booted with the template sizes (`SNAPSHOT_TEMPLATE_CPU`, `SNAPSHOT_TEMPLATE_MEM_MB`) and
//! the default disk size, built in the background. Creates start from it instead of booting: a
//! memory seed (qemu, firecracker) resumes a guest that has already booted, when the VM asks for
//! the template sizes; any seed gives a VM of its disk size a ready-made disk instead of a fresh
//! `mkfs`. The original built seeds and never used them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rds_runtime::{SnapshotKind, VmSpec};
use rds_store::{SnapshotRecord, SnapshotState, VmRecord};

use crate::config::ImageSeeds;
use crate::services::snapshots::{self, Baseline, KIND_IMAGE_SEED};
use crate::services::{images, vms};
use crate::{ApiError, AppState};

/// How long a seed VM may take to answer its agent's health check after booting.
const SEED_HEALTH: Duration = Duration::from_secs(60);

/// How long after a failed build a seed is not tried again (creates boot meanwhile).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// Seeds being built by this manager (their ids), so each is built once at a time, and when
/// each last failed.
#[derive(Default)]
pub struct Seeds {
    building: Mutex<HashSet<String>>,
    failed: Mutex<HashMap<String, Instant>>,
}

/// The seed id of an image (`None`: the manager's configured image).
pub fn seed_id(image_id: Option<&str>) -> String {
    format!("seed-{}", image_id.unwrap_or("default"))
}

/// Starts building the seed of `image_id` in the background, unless snapshots are off, the
/// runtime takes none, or it is ready or being built.
pub fn ensure(state: &AppState, image_id: Option<String>) {
    if !enabled(state) {
        return;
    }
    let id = seed_id(image_id.as_deref());
    let failed_lately = state
        .seeds
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
    if failed_lately || !state.seeds.building.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone()) {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = build(&state, image_id.as_deref(), &id).await {
            tracing::warn!(seed = %id, error = %e, "building the image seed failed; creates boot, retried in 5 min");
            state.seeds.failed.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), Instant::now());
        }
        state.seeds.building.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    });
}

/// Whether this manager builds and uses seeds (`IMAGE_SEEDS`, `ENABLE_SNAPSHOTS`, the runtime).
fn enabled(state: &AppState) -> bool {
    let kind = state.runtime.capabilities().snapshots;
    state.config.enable_snapshots
        && match state.config.image_seeds {
            ImageSeeds::Off => false,
            ImageSeeds::On => kind.is_some(),
            ImageSeeds::Auto => kind == Some(SnapshotKind::Memory),
        }
}

/// Removes the seed of `image_id` (its image changed or went away); waits for creates reading it.
pub async fn discard(state: &AppState, image_id: Option<&str>) -> Result<(), ApiError> {
    let id = seed_id(image_id);
    if state.store.get_snapshot(&id).await?.is_some() {
        let _exclusive = state.snapshot_locks.write(&id).await;
        remove(state, &id).await?;
    }
    Ok(())
}

async fn remove(state: &AppState, id: &str) -> Result<(), ApiError> {
    let dir = snapshots::dir(state, id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::internal(format!("cannot remove {}", dir.display()), e)),
    }
    state.store.delete_snapshot(id).await?;
    Ok(())
}

/// Boots a VM of the image with the template sizes, snapshots it (with memory where the runtime
/// can) and destroys it. A seed of another runtime is replaced.
async fn build(state: &AppState, image_id: Option<&str>, id: &str) -> Result<(), ApiError> {
    let Some(best) = state.runtime.capabilities().snapshots else { return Ok(()) };
    let runtime = state.runtime.kind().as_str();
    if let Some(old) = state.store.get_snapshot(id).await? {
        if old.state == SnapshotState::Ready && old.runtime == runtime {
            return Ok(());
        }
        let _exclusive = state.snapshot_locks.write(id).await;
        remove(state, id).await?;
    }
    let files = images::boot_files(state, image_id).await?;
    let template = state.config.template;
    let vm_id = format!("seedvm-{}", uuid::Uuid::new_v4());
    let spec = VmSpec {
        id: vm_id.clone(),
        cpu: template.cpu,
        mem_mb: template.mem_mb,
        disk_mb: state.config.default_disk_mb,
        rootfs: files.rootfs,
        kernel: files.kernel,
        initrd: files.initrd,
        hostname: "rds-seed".into(),
        network: None,
        warm_interpreters: Some(state.config.warm_interpreters),
    };
    let record = SnapshotRecord {
        id: id.to_string(),
        kind: KIND_IMAGE_SEED.into(),
        content: best.as_str().into(),
        state: SnapshotState::Creating,
        internal: true,
        runtime: runtime.into(),
        source_vm_id: None,
        image_id: image_id.map(str::to_string),
        cpu: spec.cpu,
        mem_mb: spec.mem_mb,
        disk_mb: spec.disk_mb,
        bytes: 0,
        created_at: rds_store::now_ms(),
    };
    let dir = snapshots::dir(state, id);
    let parent = dir.parent().expect("a snapshot directory has a parent");
    std::fs::create_dir_all(parent)
        .map_err(|e| ApiError::internal(format!("cannot create {}", parent.display()), e))?;
    state.store.insert_snapshot(&record).await?;
    let started = std::time::Instant::now();
    // The seed VM has no record: if the manager stops meanwhile, its next start removes it as an
    // orphan, and this `creating` row with it.
    let outcome = async {
        let handle = state.runtime.start(&spec).await.map_err(vms::runtime_error)?;
        let taken = async {
            state
                .agent
                .vm(&vm_id)
                .health(SEED_HEALTH)
                .await
                .map_err(|e| ApiError::internal(format!("seed VM {vm_id}: agent did not become healthy"), e))?;
            state
                .runtime
                .snapshot(&vm_id, &handle, &dir, best == SnapshotKind::Memory)
                .await
                .map_err(vms::runtime_error)
        }
        .await;
        state.agent.forget(&vm_id);
        if let Err(e) = state.runtime.destroy(&vm_id, Some(&handle)).await {
            tracing::warn!(vm_id = %vm_id, error = %e, "removing the seed VM failed");
        }
        taken
    }
    .await;
    match outcome {
        Ok(kind) => {
            let bytes = snapshots::disk_usage(&dir);
            state.store.finish_snapshot(id, kind.as_str(), bytes).await?;
            tracing::info!(seed = %id, content = kind.as_str(), ms = started.elapsed().as_millis() as u64, "image seed ready");
            Ok(())
        }
        Err(e) => {
            let _ = state.runtime.destroy(&vm_id, None).await;
            let _ = remove(state, id).await;
            Err(e)
        }
    }
}

/// The seed a new VM can start from: ready, of this runtime, of the VM's image and disk size.
/// Kicks off building it when there is none yet.
pub async fn usable(state: &AppState, vm: &VmRecord) -> Result<Option<Baseline>, ApiError> {
    if !enabled(state) {
        return Ok(None);
    }
    let id = seed_id(vm.image_id.as_deref());
    let seed = state.store.get_snapshot(&id).await?;
    match seed {
        Some(s) if s.state == SnapshotState::Ready && s.runtime == vm.runtime => {
            let dir = snapshots::dir(state, &id);
            Ok((s.disk_mb == vm.disk_mb && dir.is_dir()).then_some(Baseline { snapshot: s, dir }))
        }
        Some(s) if s.state == SnapshotState::Ready => {
            // A seed of another runtime (a shared database): rebuilt for this one.
            ensure(state, vm.image_id.clone());
            Ok(None)
        }
        Some(_) => Ok(None),
        None => {
            ensure(state, vm.image_id.clone());
            Ok(None)
        }
    }
}

/// Builds the seed of the image a create without `imageId` gets, if any (at manager start).
pub async fn ensure_default(state: &AppState) {
    if !enabled(state) {
        return;
    }
    match images::image_for_new_vm(state, None).await {
        Ok(image) if image.is_some() || state.config.guest_image.is_some() => ensure(state, image),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "no image seed: the default image is unusable"),
    }
}
