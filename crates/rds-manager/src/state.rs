//! `AppState`: what every handler and service shares.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use rds_runtime::Runtime;
use rds_store::Store;

use rds_peer::secrets::SecretBox;

use crate::agent::AgentClient;
use crate::auth::ApiKeyRing;
use crate::bridge::Bridges;
use crate::rate_limit::{ApiRateLimiter, Limit, RateLimiter};
use crate::services::peers::ManifestCache;
use crate::views::HostCapabilities;
use crate::Config;

/// Shared manager state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The fields behind [`AppState`].
pub struct Inner {
    /// Validated configuration.
    pub config: Config,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// The runtime that boots VMs.
    pub runtime: Arc<dyn Runtime>,
    /// Client for the guest agents.
    pub agent: AgentClient,
    /// Serialises lifecycle operations per VM.
    pub vm_locks: VmLocks,
    /// Held shared by creates reading a snapshot, exclusively by its delete.
    pub snapshot_locks: SnapshotLocks,
    /// The warm pool's counters and refill wake-up.
    pub pool: crate::services::pool::WarmPool,
    /// Image seeds being built.
    pub seeds: crate::services::seeds::Seeds,
    /// Queues this manager's creates (and image deletes) in memory rather than on the database's
    /// lock; only an optimisation: the store checks `MAX_VMS` and allocates slots in its own
    /// transactions, which also hold across managers sharing the database.
    pub create_gate: tokio::sync::Mutex<()>,
    /// Accepted API keys (hashes).
    pub keys: ApiKeyRing,
    /// Per-key (and per-route) request rate limiter.
    pub limiter: ApiRateLimiter,
    /// Interpreters user code can run.
    pub capabilities: HostCapabilities,
    /// Seals provider secrets at rest (`VM_SECRET_KEY`); `None` when unset.
    pub secrets: Option<SecretBox>,
    /// Per-link bridge call limiter (`PEER_CALLS_PER_MIN`).
    pub peer_limiter: RateLimiter,
    /// Running peer-bridge listeners, one per consumer VM.
    pub bridges: Bridges,
    /// Compiled provider manifests.
    pub manifests: ManifestCache,
    /// VM networking (links, egress policies, resolvers), or why there is none.
    pub network: crate::network::VmNetworking,
    /// This installation's id (see [`crate::installation`]).
    pub installation: rds_net::InstallationId,
    /// Why this runtime runs VMs (`RDS_RUNTIME` and what `auto` found), for `/v1/health`.
    pub runtime_reason: String,
    /// Outstanding single-use terminal attach tokens.
    pub pty_tokens: crate::services::ptys::PtyTokens,
}

impl AppState {
    /// Bundles the parts into shared state.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        keys: ApiKeyRing,
        capabilities: HostCapabilities,
    ) -> Self {
        let limiter = ApiRateLimiter::new(config.rate_limits);
        let peer_limiter =
            RateLimiter::new(Limit { per_min: config.peer_calls_per_min, setting: "PEER_CALLS_PER_MIN" });
        let secrets = config
            .vm_secret_key
            .as_ref()
            .map(|k| SecretBox::new(&k.0).expect("VM_SECRET_KEY length is validated with the configuration"));
        AppState(Arc::new(Inner {
            agent: AgentClient::new(runtime.clone()),
            config,
            store,
            runtime,
            vm_locks: VmLocks::default(),
            snapshot_locks: SnapshotLocks::default(),
            pool: Default::default(),
            seeds: Default::default(),
            create_gate: tokio::sync::Mutex::new(()),
            keys,
            limiter,
            capabilities,
            secrets,
            peer_limiter,
            bridges: Bridges::default(),
            manifests: ManifestCache::default(),
            network: crate::network::VmNetworking::disabled("VM networking was not set up on this manager"),
            // Replaced by the stored id through `with_installation` before the state is shared.
            installation: rds_net::InstallationId::generate(),
            runtime_reason: "chosen by the code that built this manager".into(),
            pty_tokens: Default::default(),
        }))
    }
}

impl AppState {
    /// Sets the installation id; only while building the state, before it is shared.
    pub fn with_installation(mut self, installation: rds_net::InstallationId) -> Self {
        Arc::get_mut(&mut self.0).expect("with_installation is called before the state is shared").installation =
            installation;
        self
    }

    /// Records why the runtime was chosen; only while building the state, before it is shared.
    pub fn with_runtime_reason(mut self, reason: String) -> Self {
        Arc::get_mut(&mut self.0).expect("with_runtime_reason is called before the state is shared").runtime_reason =
            reason;
        self
    }

    /// Installs the VM networking; only while building the state, before it is shared.
    pub fn with_network(mut self, network: crate::network::VmNetworking) -> Self {
        Arc::get_mut(&mut self.0).expect("with_network is called before the state is shared").network = network;
        self
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// One async mutex per VM id.
#[derive(Default)]
pub struct VmLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl VmLocks {
    /// Waits for and holds the lifecycle lock of `id`.
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Drops the lock entry of a deleted VM.
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// A read-write lock per snapshot id: many VMs may start from one snapshot at once, and its
/// delete waits for them.
#[derive(Default)]
pub struct SnapshotLocks(Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>);

impl SnapshotLocks {
    fn entry(&self, id: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Entries nobody holds are dropped as others are added, so the map stays small.
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(id.to_string()).or_default().clone()
    }

    /// Shared: a VM is being started from the snapshot.
    pub async fn read(&self, id: &str) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.entry(id).read_owned().await
    }

    /// Exclusive: the snapshot is being deleted.
    pub async fn write(&self, id: &str) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.entry(id).write_owned().await
    }
}
