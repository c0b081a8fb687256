//! Manager start-up: re-adopt VMs that kept running, finish lifecycle steps a crash interrupted,
//! and remove what no record owns.

use std::collections::HashSet;

use rds_runtime::Liveness;
use rds_store::VmState;

use crate::services::events::vm_event;
use crate::services::vms::{finish_delete, parse_handle, transition};
use crate::{ApiError, AppState};

/// What the reconciler did, for the start-up log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// RUNNING VMs found alive and kept.
    pub adopted: Vec<String>,
    /// VMs moved to STOPPED or ERROR.
    pub settled: Vec<String>,
    /// Interrupted deletes finished.
    pub deleted: Vec<String>,
    /// Runtime leftovers with no record.
    pub orphans_removed: Vec<String>,
}

/// Why reconciling at start-up stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or updating the VM records failed.
    #[error("reading or updating the VM records failed")]
    Store(#[from] rds_store::StoreError),
    /// Moving a VM to its settled state failed.
    #[error("settling a VM's state failed")]
    Lifecycle(#[from] ApiError),
}

/// Brings every record in line with what the runtime actually has.
pub async fn reconcile(state: &AppState) -> Result<Reconciled, ReconcileError> {
    let mut out = Reconciled::default();
    let vms = state.store.list_vms().await?;
    let mut adopted = Vec::new();
    for vm in &vms {
        let _lock = state.vm_locks.lock(&vm.id).await;
        let handle = parse_handle(vm);
        match vm.state {
            VmState::Running => {
                let liveness = match &handle {
                    Some(h) => {
                        // A step the crash cut short may have left it frozen or paused.
                        if let Err(e) = state.runtime.recover(&vm.id, h).await {
                            tracing::warn!(vm_id = %vm.id, error = %e, "cannot undo what an interrupted step left");
                        }
                        state.runtime.probe(&vm.id, h).await
                    }
                    None => Liveness::Dead("no runtime handle recorded".into()),
                };
                match liveness {
                    Liveness::Alive => {
                        if !state.store.list_peer_links(&vm.id).await?.is_empty() {
                            if let Err(e) = state.bridges.open(state, &vm.id) {
                                tracing::warn!(vm_id = %vm.id, error = %e, "cannot reopen the peer bridge");
                            }
                        }
                        out.adopted.push(vm.id.clone());
                        if let Some(h) = &handle {
                            crate::liveness::watch(state, &vm.id, h);
                            adopted.push((vm.clone(), h.clone()));
                        }
                    }
                    Liveness::Dead(why) => {
                        if let Some(h) = &handle {
                            let _ = state.runtime.stop(&vm.id, h).await;
                        }
                        state.store.set_vm_handle(&vm.id, None).await?;
                        let reason = format!("found dead at manager start: {why}");
                        transition(state, &vm.id, vm.state, VmState::Stopped, Some(&reason)).await?;
                        vm_event(state, &vm.id, "vm.stopped", reason, None).await;
                        out.settled.push(vm.id.clone());
                    }
                }
            }
            VmState::Creating => {
                // A half-made VM has nothing worth keeping.
                let _ = state.runtime.destroy(&vm.id, handle.as_ref()).await;
                state.store.set_vm_handle(&vm.id, None).await?;
                transition(
                    state,
                    &vm.id,
                    vm.state,
                    VmState::Error,
                    Some("manager restarted while the VM was being created"),
                )
                .await?;
                out.settled.push(vm.id.clone());
            }
            VmState::Starting | VmState::Stopping => {
                // Keep the workspace: finish as a stop.
                if let Some(h) = &handle {
                    let _ = state.runtime.stop(&vm.id, h).await;
                }
                state.store.set_vm_handle(&vm.id, None).await?;
                let reason = format!("manager restarted while the VM was {}", vm.state);
                transition(state, &vm.id, vm.state, VmState::Stopped, Some(&reason)).await?;
                out.settled.push(vm.id.clone());
            }
            VmState::Deleting => {
                // The delete was recorded before anything was destroyed: finish it, never undo it.
                match finish_delete(state, vm).await {
                    Ok(()) => out.deleted.push(vm.id.clone()),
                    Err(e) => tracing::warn!(vm_id = %vm.id, error = %e, "cannot finish an interrupted delete"),
                }
            }
            VmState::Stopped | VmState::Error | VmState::Deleted => {}
        }
    }
    crate::services::network::reconcile(state, &adopted).await;
    crate::services::snapshots::remove_unfinished(state).await?;
    let known: HashSet<String> = vms.into_iter().map(|v| v.id).collect();
    out.orphans_removed = state.runtime.remove_orphans(&known).await;
    Ok(out)
}

/// How often running VMs' console logs are checked against [`rds_runtime::CONSOLE_CAP`].
const CONSOLE_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps the console logs of running VMs capped while they run (a runtime caps them at start;
/// a guest that prints for days would otherwise fill the disk). Runs until the process ends.
pub async fn cap_consoles(state: AppState) {
    let mut tick = tokio::time::interval(CONSOLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(vms) = state.store.list_vms().await else { continue };
        for vm in vms.iter().filter(|vm| vm.state == VmState::Running) {
            let kinds = [rds_runtime::LogKind::Console, rds_runtime::LogKind::Vmm, rds_runtime::LogKind::Metrics];
            for log in kinds.into_iter().filter_map(|kind| state.runtime.log_file(&vm.id, kind)) {
                match rds_runtime::cap_console_log(&log) {
                    Ok(true) => {
                        tracing::info!(vm_id = %vm.id, log = %log.display(), "log reached its cap; kept its newest half")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(vm_id = %vm.id, log = %log.display(), error = %e, "cannot cap the log"),
                }
            }
        }
    }
}
