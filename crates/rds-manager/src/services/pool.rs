//! The warm pool: VMs booted ahead of demand with the template sizes and the default image, no
//! egress, no secrets and no links, hidden from the API and outside `MAX_VMS`. A create asking for
//! those sizes and that image takes one ([`checkout`]) and the member becomes the caller's VM: its
//! egress policy, secrets and peer links are applied to it then, so requests with `allowIps`,
//! `allowDomains`, `secretEnv` or `peerLinks` are served warm too. A background task ([`run`])
//! keeps the pool at its target, removes members that died, and after a manager restart adopts
//! the members that still run (the reconciler re-adopts them as any VM) and removes the rest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rds_store::{PoolClaim, VmRecord, VmState};

use crate::config::WarmPoolSettings;
use crate::views::{CreateVmRequest, PoolView};
use crate::{ApiError, AppState};

/// How often the pool is checked without a reason (a member died, an earlier refill failed).
const CHECK_EVERY: Duration = Duration::from_secs(15);
/// How long a refill waits after a hand-out.
const AFTER_CHECKOUT: Duration = Duration::from_millis(500);
/// The pause after a failed refill before the next attempt.
const AFTER_FAILURE: Duration = Duration::from_secs(30);

/// The pool's counters and its wake-up call (in [`AppState`]).
#[derive(Default)]
pub struct WarmPool {
    hits: AtomicU64,
    misses: AtomicU64,
    refill_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    wake: tokio::sync::Notify,
}

impl WarmPool {
    /// Asks the refill task to look at the pool now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Whether a create of these sizes and image can be served by the pool.
fn fits(settings: &WarmPoolSettings, state: &AppState, record: &VmRecord, default_image: Option<&str>) -> bool {
    record.cpu == settings.cpu
        && record.mem_mb == settings.mem_mb
        && record.disk_mb == state.config.default_disk_mb
        && record.image_id.as_deref() == default_image
}

/// Hands the create of `claim` a pool member if one fits and is ready: `Some(id)` of the member,
/// now an ordinary VM with the claim's policy, secrets and links; `None` for a cold boot. Counts
/// hits and misses of the creates the pool could have served, and wakes the refill.
pub async fn checkout(state: &AppState, record: &VmRecord, claim: PoolClaim) -> Result<Option<String>, ApiError> {
    let Some(settings) = state.config.warm_pool else { return Ok(None) };
    let default_image = crate::services::images::image_for_new_vm(state, None).await.ok().flatten();
    if !fits(&settings, state, record, default_image.as_deref()) {
        return Ok(None);
    }
    let limits = rds_store::VmLimits { max_vms: state.config.max_vms };
    let claimed = state.store.claim_pool_vm(&claim, &limits).await.map_err(|e| match e {
        rds_store::StoreError::QuotaExceeded(rds_store::Quota::Vms { max }) => {
            ApiError::Quota(format!("VM quota exceeded: MAX_VMS={max}"))
        }
        other => other.into(),
    })?;
    let counter = if claimed.is_some() { &state.pool.hits } else { &state.pool.misses };
    counter.fetch_add(1, Ordering::Relaxed);
    state.pool.wake();
    Ok(claimed)
}

/// `GET /v1/pool`.
pub async fn view(state: &AppState) -> Result<PoolView, ApiError> {
    let members: Vec<VmRecord> = state.store.list_vms().await?.into_iter().filter(|v| v.pool).collect();
    let count = |s: VmState| members.iter().filter(|v| v.state == s).count() as u32;
    let settings = state.config.warm_pool;
    Ok(PoolView {
        enabled: settings.is_some(),
        target: settings.map_or(0, |s| s.target),
        cpu: settings.map(|s| s.cpu),
        mem_mb: settings.map(|s| s.mem_mb),
        ready: count(VmState::Running),
        starting: count(VmState::Creating),
        hits: state.pool.hits.load(Ordering::Relaxed),
        misses: state.pool.misses.load(Ordering::Relaxed),
        refill_errors: state.pool.refill_errors.load(Ordering::Relaxed),
        last_error: state.pool.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

/// Keeps the pool at its target until the process ends: on start, after every checkout, every
/// [`CHECK_EVERY`], and [`AFTER_FAILURE`] after a failed boot.
pub async fn run(state: AppState) {
    let Some(settings) = state.config.warm_pool else { return };
    loop {
        let pause = match refill(&state, &settings).await {
            Ok(()) => CHECK_EVERY,
            Err(e) => {
                state.pool.refill_errors.fetch_add(1, Ordering::Relaxed);
                let message = e.to_string();
                tracing::warn!(error = %message, "warm pool refill failed");
                *state.pool.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                AFTER_FAILURE
            }
        };
        if tokio::time::timeout(pause, state.pool.wake.notified()).await.is_ok() {
            // Woken by a hand-out: its caller's first calls come next; a boot beside them would
            // slow them down on a small host, so the refill waits a moment.
            tokio::time::sleep(AFTER_CHECKOUT).await;
        }
    }
}

/// Removes members that are not running or starting (dead, stopped by a restart) and boots
/// members one at a time until the pool holds its target.
async fn refill(state: &AppState, settings: &WarmPoolSettings) -> Result<(), ApiError> {
    loop {
        let members: Vec<VmRecord> = state.store.list_vms().await?.into_iter().filter(|v| v.pool).collect();
        for dead in members.iter().filter(|v| !matches!(v.state, VmState::Running | VmState::Creating)) {
            tracing::info!(vm_id = %dead.id, state = %dead.state, "removing a warm-pool member that no longer runs");
            crate::services::vms::remove(state, &dead.id).await?;
        }
        let live = members.iter().filter(|v| matches!(v.state, VmState::Running | VmState::Creating)).count();
        if live >= settings.target as usize {
            return Ok(());
        }
        let req = CreateVmRequest { cpu: settings.cpu, mem_mb: settings.mem_mb, ..CreateVmRequest::default() };
        crate::services::vms::create_pool_member(state, req).await?;
    }
}
