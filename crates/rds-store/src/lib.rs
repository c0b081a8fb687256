//! Persistence for rds behind one trait.
//!
//! [`Store`] is what the manager sees; [`SqliteStore`] implements it on a single SQLite file
//! (`STORAGE_ROOT/rds.db`), and [`open`] is the one place that picks a backend from a
//! [`StoreConfig`]. The trait speaks only in product records and [`StoreError`] names no backend
//! type, so a PostgreSQL implementation can fill it later without touching the manager.
//!
//! Design promises every backend keeps (checked by [`conformance`]):
//! - Methods are async and never block the caller's async threads (SQLite work runs on tokio's
//!   blocking pool).
//! - A method that changes several rows ([`Store::create_vm`], [`Store::allocate_net_slot`],
//!   [`Store::finish_vm_delete`], [`Store::put_peer_link`], [`Store::delete_image`]) does so in
//!   one transaction: it happens whole or not at all.
//! - Quotas and network slots are checked and allocated against the rows in the database inside
//!   that transaction, so several managers sharing one database never exceed `max_vms` nor hand
//!   out one slot twice. Writers wait for each other (SQLite: `BEGIN IMMEDIATE` + busy timeout)
//!   instead of failing.

pub mod conformance;
mod migrations;
mod records;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

pub use records::*;
pub use sqlite::SqliteStore;

/// A boxed error of a backend, kept as the cause of [`StoreError::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed while doing `op` (I/O, corruption, a lock held too long, ...).
    #[error("store operation {op} failed")]
    Backend {
        /// The [`Store`] method (or setup step) that failed.
        op: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// A record to change or to refer to does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique key (an id, a network slot) is already held by another record.
    #[error("{op}: {what} is already taken")]
    Conflict {
        /// The [`Store`] method that was refused.
        op: &'static str,
        /// What is taken, e.g. `network slot 3 (held by VM …)`.
        what: String,
        /// The backend's report of the violated constraint, when it detected it.
        #[source]
        source: Option<BoxError>,
    },
    /// A quota checked inside the store's transaction is exhausted.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(Quota),
    /// A record is still used by others and cannot be removed.
    #[error("{what} is used by {users} VM(s)")]
    InUse {
        /// The record, e.g. `image img-…`.
        what: String,
        /// How many live VMs use it.
        users: u64,
    },
    /// The database directory could not be created or restricted.
    #[error("cannot create the database directory {path}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be created or restricted.
    #[error("cannot create or restrict the database file {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A VM row holds a state this build does not know.
    #[error("database holds an unknown VM state {0:?} (written by a newer rds?)")]
    UnknownState(String),
    /// The schema was written by a newer rds.
    #[error("database schema version {found} is newer than this rds understands ({known})")]
    TooNew { found: i64, known: i64 },
}

/// Which quota a store operation found exhausted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Quota {
    /// Live (not DELETED) VMs reached [`VmLimits::max_vms`].
    #[error("{max} live VMs (MAX_VMS)")]
    Vms { max: u64 },
    /// Every network slot below `capacity` is held (or was skipped).
    #[error("all {capacity} network slots are held")]
    NetSlots { capacity: u32 },
    /// The consumer already holds `max` peer links.
    #[error("VM {consumer} holds {max} peer links, the most allowed")]
    PeerLinks { consumer: String, max: u32 },
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Where the store lives; built from the manager's configuration and handed to [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A SQLite database file (created 0600 in a 0700 directory if missing).
    Sqlite { path: PathBuf },
}

/// Opens the store `config` names and migrates it to the latest schema. The only place that
/// chooses a backend.
pub async fn open(config: &StoreConfig) -> StoreResult<Arc<dyn Store>> {
    match config {
        StoreConfig::Sqlite { path } => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|e| StoreError::Backend { op: "open", source: Box::new(e) })??;
            Ok(Arc::new(store))
        }
    }
}

/// Everything the manager persists. Every method is one atomic step: it happens whole or not at
/// all, also when several managers share the database.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a bare VM record (no quota, slot or links; [`Store::create_vm`] is the API's path).
    /// A taken id is [`StoreError::Conflict`].
    async fn insert_vm(&self, vm: &VmRecord) -> StoreResult<()>;
    /// Creates a VM with its egress policy, sealed secrets, peer links and (if `new.net` asks for
    /// one) the lowest free network slot, in one transaction that first checks `limits` against
    /// the live VMs in the database (a warm-pool member, `record.pool`, is outside the quota) and
    /// that `record.image_id`, if any, still exists. Refusals:
    /// [`StoreError::QuotaExceeded`] (VMs or slots), [`StoreError::NotFound`] (image),
    /// [`StoreError::Conflict`] (id). A refused create leaves no row behind.
    async fn create_vm(&self, new: &NewVm, limits: &VmLimits) -> StoreResult<CreatedVm>;
    /// Reads one VM by id, tombstones (DELETED) included.
    async fn get_vm(&self, id: &str) -> StoreResult<Option<VmRecord>>;
    /// Lists every VM that is not DELETED, oldest first (`created_at`, then id).
    async fn list_vms(&self) -> StoreResult<Vec<VmRecord>>;
    /// Counts VMs that are not DELETED nor warm-pool members (the `MAX_VMS` quota).
    async fn count_live_vms(&self) -> StoreResult<u64>;
    /// Sets a VM's state and reason (`None` clears the reason); `NotFound` if no such VM.
    async fn set_vm_state(&self, id: &str, state: VmState, reason: Option<&str>) -> StoreResult<()>;
    /// Stores (or clears) the runtime's handle for a VM, as JSON; `NotFound` if no such VM.
    async fn set_vm_handle(&self, id: &str, handle_json: Option<&str>) -> StoreResult<()>;
    /// Records a VM DELETED in one transaction: clears its reason, handle, network slot and
    /// secrets and removes the links it holds as a consumer. Idempotent; `NotFound` if no such VM.
    async fn finish_vm_delete(&self, id: &str) -> StoreResult<()>;

    /// A VM's network slot and egress policy JSON (`None` when the VM does not exist).
    async fn vm_network(&self, id: &str) -> StoreResult<Option<VmNetworkRecord>>;
    /// Sets (or frees, with `None`) a VM's network slot; a slot held by another VM is
    /// [`StoreError::Conflict`], an unknown VM `NotFound`.
    async fn set_vm_net_slot(&self, id: &str, slot: Option<u32>) -> StoreResult<()>;
    /// Gives VM `id` a network slot in one transaction: its current one if it lies below
    /// `request.capacity` and is not in `request.skip`, else the lowest free slot that is neither
    /// held by another VM nor skipped. [`Quota::NetSlots`] when none is left (the VM keeps what it
    /// had), `NotFound` if no such VM.
    async fn allocate_net_slot(&self, id: &str, request: &NetSlotRequest) -> StoreResult<u32>;
    /// Slots held by VMs that are not DELETED, ascending.
    async fn used_net_slots(&self) -> StoreResult<Vec<u32>>;
    /// Stores a VM's egress policy (JSON) and mirrors its `outbound_internet` flag; `NotFound` if
    /// no such VM.
    async fn set_vm_egress_policy(&self, id: &str, outbound_internet: bool, policy_json: &str) -> StoreResult<()>;

    /// Appends an activity event.
    async fn insert_event(&self, event: &NewEvent) -> StoreResult<()>;
    /// Newest-first activity events (higher id first), at most `limit`.
    async fn list_events(&self, limit: u32) -> StoreResult<Vec<EventRecord>>;

    /// Appends an exec log entry.
    async fn insert_exec_log(&self, entry: &ExecLogRecord) -> StoreResult<()>;
    /// Newest-first (`created_at`, then insertion) exec log entries of one VM, at most `limit`,
    /// plus whether older ones exist.
    async fn list_exec_logs(&self, vm_id: &str, limit: u32) -> StoreResult<(Vec<ExecLogRecord>, bool)>;

    /// Inserts an API key (only its hash is stored); a taken id or hash is a `Conflict`.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    /// Keys that are neither revoked nor expired at `now_ms`, oldest first.
    async fn active_api_keys(&self, now_ms: i64) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes every active key; returns how many were revoked.
    async fn revoke_all_api_keys(&self, now_ms: i64) -> StoreResult<u64>;
    /// Every key, revoked and expired ones included, newest first.
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes one key; `NotFound` if no such key is active (unknown or already revoked).
    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> StoreResult<()>;
    /// Records that key `id` was used at `now_ms`.
    async fn touch_api_key(&self, id: &str, now_ms: i64) -> StoreResult<()>;

    /// Stores (or clears) a VM's sealed `secretEnv` and its key names; `NotFound` if no such VM.
    async fn set_vm_secrets(&self, id: &str, sealed: Option<&[u8]>, keys: &[String]) -> StoreResult<()>;
    /// Key names of a VM's `secretEnv` (values are never stored in clear); empty for unknown VMs.
    async fn vm_secret_keys(&self, id: &str) -> StoreResult<Vec<String>>;

    /// Inserts or replaces the link `(consumer, alias)` (no limit checked).
    async fn upsert_peer_link(&self, link: &PeerLinkRecord) -> StoreResult<()>;
    /// Replaces the link `(consumer, alias)` if it exists, else adds it unless the consumer holds
    /// `max_links` links already ([`Quota::PeerLinks`]); one transaction.
    async fn put_peer_link(&self, link: &PeerLinkRecord, max_links: u32) -> StoreResult<()>;
    /// Removes a link; returns whether it existed.
    async fn delete_peer_link(&self, consumer_vm_id: &str, alias: &str) -> StoreResult<bool>;
    /// Removes every link of a consumer.
    async fn delete_peer_links_of(&self, consumer_vm_id: &str) -> StoreResult<()>;
    /// A consumer's links, by alias.
    async fn list_peer_links(&self, consumer_vm_id: &str) -> StoreResult<Vec<PeerLinkRecord>>;
    /// One link.
    async fn get_peer_link(&self, consumer_vm_id: &str, alias: &str) -> StoreResult<Option<PeerLinkRecord>>;
    /// Records the outcome of syncing one link (a missing link is left alone).
    async fn set_peer_sync(
        &self,
        consumer_vm_id: &str,
        alias: &str,
        status: &str,
        message: Option<&str>,
        manifest_json: Option<&str>,
    ) -> StoreResult<()>;

    /// Appends a bridge call to the audit log.
    async fn insert_peer_call(&self, call: &PeerCallRecord) -> StoreResult<()>;
    /// Newest-first bridge calls where `vm_id` is the consumer or the provider (all with `None`).
    async fn list_peer_calls(&self, vm_id: Option<&str>, limit: u32) -> StoreResult<Vec<PeerCallRecord>>;

    /// Inserts a new guest image; a taken id is a `Conflict`.
    async fn insert_image(&self, image: &ImageRecord) -> StoreResult<()>;
    /// Reads one image.
    async fn get_image(&self, id: &str) -> StoreResult<Option<ImageRecord>>;
    /// Every image, oldest first (`created_at`, then id).
    async fn list_images(&self) -> StoreResult<Vec<ImageRecord>>;
    /// Records that `part` was uploaded with `bytes` bytes at `at_ms` (`NotFound` if the image is gone).
    async fn set_image_part(&self, id: &str, part: ImagePart, bytes: u64, at_ms: i64) -> StoreResult<()>;
    /// Stores (or clears) the builder manifest of an image (`NotFound` if the image is gone).
    async fn set_image_manifest(&self, id: &str, manifest_json: Option<&str>) -> StoreResult<()>;
    /// Removes an image row unless a live VM uses it ([`StoreError::InUse`]), and the default
    /// image setting `default_setting` if it names this image; one transaction. Returns whether
    /// the row existed.
    async fn delete_image(&self, id: &str, default_setting: &str) -> StoreResult<bool>;
    /// Counts VMs that are not DELETED and use `image_id`.
    async fn count_live_vms_with_image(&self, image_id: &str) -> StoreResult<u64>;

    /// Reads a manager setting.
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Writes (or, with `None`, removes) a manager setting.
    async fn set_setting(&self, key: &str, value: Option<&str>) -> StoreResult<()>;
    /// Stores `value` under `key` unless the key already has one; returns the stored value
    /// (so concurrent first starts agree on one).
    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Hands a create the oldest RUNNING warm-pool member matching `claim` (runtime, sizes,
    /// image), in one transaction that first checks `limits` (the member now counts) and then
    /// makes it an ordinary VM with the claim's policy, secrets and links. `None` when no member
    /// matches; [`StoreError::QuotaExceeded`] when the quota is full.
    async fn claim_pool_vm(&self, claim: &PoolClaim, limits: &VmLimits) -> StoreResult<Option<String>>;
    /// Records how VM `id` was last brought up (`boot`, `snapshot`, `pool`) and, when given, the
    /// snapshot it started from; `NotFound` if no such VM.
    async fn set_vm_provision(&self, id: &str, mode: &str, snapshot_id: Option<&str>) -> StoreResult<()>;
    /// Inserts a snapshot (normally [`SnapshotState::Creating`]); a taken id is a `Conflict`.
    async fn insert_snapshot(&self, snap: &SnapshotRecord) -> StoreResult<()>;
    /// Marks a snapshot ready with what it holds and its size; `NotFound` if it is gone.
    async fn finish_snapshot(&self, id: &str, content: &str, bytes: u64) -> StoreResult<()>;
    /// Reads one snapshot.
    async fn get_snapshot(&self, id: &str) -> StoreResult<Option<SnapshotRecord>>;
    /// Every snapshot, oldest first (`created_at`, then id).
    async fn list_snapshots(&self) -> StoreResult<Vec<SnapshotRecord>>;
    /// Removes a snapshot row; returns whether it existed.
    async fn delete_snapshot(&self, id: &str) -> StoreResult<bool>;
}

/// Milliseconds since the Unix epoch, the timestamp unit of every record.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
