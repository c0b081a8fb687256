//! Persistence for rds behind one trait.
//!
//! [`Store`] is what the manager sees; [`SqliteStore`] implements it on a single SQLite file
//! (`STORAGE_ROOT/rds.db`). The trait speaks only in product records so a PostgreSQL
//! implementation can fill it later without touching the manager.

mod migrations;
mod records;
mod sqlite;

pub use records::*;
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("cannot create the database directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create or restrict the database file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("database holds an unknown VM state {0:?} (written by a newer rds?)")]
    UnknownState(String),
    #[error("database schema version {found} is newer than this rds understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("record not found: {0}")]
    NotFound(String),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the manager persists. Methods are synchronous and fast (sub-millisecond on SQLite);
/// async callers run them on a blocking thread or accept the brief hold.
pub trait Store: Send + Sync + 'static {
    /// Inserts a new VM record.
    fn insert_vm(&self, vm: &VmRecord) -> StoreResult<()>;
    /// Reads one VM by id, tombstones (DELETED) included.
    fn get_vm(&self, id: &str) -> StoreResult<Option<VmRecord>>;
    /// Lists every VM that is not DELETED, oldest first.
    fn list_vms(&self) -> StoreResult<Vec<VmRecord>>;
    /// Counts VMs that are not DELETED (the `MAX_VMS` quota).
    fn count_live_vms(&self) -> StoreResult<u64>;
    /// Sets a VM's state and reason (`None` clears the reason).
    fn set_vm_state(&self, id: &str, state: VmState, reason: Option<&str>) -> StoreResult<()>;
    /// Stores (or clears) the runtime's handle for a VM, as JSON.
    fn set_vm_handle(&self, id: &str, handle_json: Option<&str>) -> StoreResult<()>;

    /// A VM's network slot and egress policy JSON (`None` when the VM does not exist).
    fn vm_network(&self, id: &str) -> StoreResult<Option<VmNetworkRecord>>;
    /// Sets (or frees, with `None`) a VM's network slot; a slot held by another VM is an error.
    fn set_vm_net_slot(&self, id: &str, slot: Option<u32>) -> StoreResult<()>;
    /// Slots held by VMs that are not DELETED, ascending.
    fn used_net_slots(&self) -> StoreResult<Vec<u32>>;
    /// Stores a VM's egress policy (JSON) and mirrors its `outbound_internet` flag.
    fn set_vm_egress_policy(&self, id: &str, outbound_internet: bool, policy_json: &str) -> StoreResult<()>;

    /// Appends an activity event.
    fn insert_event(&self, event: &NewEvent) -> StoreResult<()>;
    /// Newest-first activity events.
    fn list_events(&self, limit: u32) -> StoreResult<Vec<EventRecord>>;

    /// Appends an exec log entry.
    fn insert_exec_log(&self, entry: &ExecLogRecord) -> StoreResult<()>;
    /// Newest-first exec log entries of one VM, plus whether older ones exist.
    fn list_exec_logs(&self, vm_id: &str, limit: u32) -> StoreResult<(Vec<ExecLogRecord>, bool)>;

    /// Inserts an API key (only its hash is stored).
    fn insert_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    /// Keys that are neither revoked nor expired at `now_ms`.
    fn active_api_keys(&self, now_ms: i64) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes every active key; returns how many were revoked.
    fn revoke_all_api_keys(&self, now_ms: i64) -> StoreResult<u64>;

    /// Stores (or clears) a VM's sealed `secretEnv` and its key names.
    fn set_vm_secrets(&self, id: &str, sealed: Option<&[u8]>, keys: &[String]) -> StoreResult<()>;
    /// Key names of a VM's `secretEnv` (values are never stored in clear).
    fn vm_secret_keys(&self, id: &str) -> StoreResult<Vec<String>>;

    /// Inserts or replaces the link `(consumer, alias)`.
    fn upsert_peer_link(&self, link: &PeerLinkRecord) -> StoreResult<()>;
    /// Removes a link; returns whether it existed.
    fn delete_peer_link(&self, consumer_vm_id: &str, alias: &str) -> StoreResult<bool>;
    /// Removes every link of a consumer.
    fn delete_peer_links_of(&self, consumer_vm_id: &str) -> StoreResult<()>;
    /// A consumer's links, by alias.
    fn list_peer_links(&self, consumer_vm_id: &str) -> StoreResult<Vec<PeerLinkRecord>>;
    /// One link.
    fn get_peer_link(&self, consumer_vm_id: &str, alias: &str) -> StoreResult<Option<PeerLinkRecord>>;
    /// Records the outcome of syncing one link.
    fn set_peer_sync(
        &self,
        consumer_vm_id: &str,
        alias: &str,
        status: &str,
        message: Option<&str>,
        manifest_json: Option<&str>,
    ) -> StoreResult<()>;

    /// Appends a bridge call to the audit log.
    fn insert_peer_call(&self, call: &PeerCallRecord) -> StoreResult<()>;
    /// Newest-first bridge calls where `vm_id` is the consumer or the provider.
    fn list_peer_calls(&self, vm_id: Option<&str>, limit: u32) -> StoreResult<Vec<PeerCallRecord>>;

    /// Inserts a new guest image.
    fn insert_image(&self, image: &ImageRecord) -> StoreResult<()>;
    /// Reads one image.
    fn get_image(&self, id: &str) -> StoreResult<Option<ImageRecord>>;
    /// Every image, oldest first.
    fn list_images(&self) -> StoreResult<Vec<ImageRecord>>;
    /// Records that `part` was uploaded with `bytes` bytes at `at_ms` (`NotFound` if the image is gone).
    fn set_image_part(&self, id: &str, part: ImagePart, bytes: u64, at_ms: i64) -> StoreResult<()>;
    /// Stores (or clears) the builder manifest of an image.
    fn set_image_manifest(&self, id: &str, manifest_json: Option<&str>) -> StoreResult<()>;
    /// Removes an image row; returns whether it existed.
    fn delete_image(&self, id: &str) -> StoreResult<bool>;
    /// Counts VMs that are not DELETED and use `image_id`.
    fn count_live_vms_with_image(&self, image_id: &str) -> StoreResult<u64>;

    /// Reads a manager setting.
    fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Writes (or, with `None`, removes) a manager setting.
    fn set_setting(&self, key: &str, value: Option<&str>) -> StoreResult<()>;
}

/// Milliseconds since the Unix epoch, the timestamp unit of every record.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
