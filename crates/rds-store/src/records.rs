//! The records the store reads and writes, in product words.

use crate::StoreError;

/// Lifecycle state of a VM. Legal transitions are owned by the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VmState {
    /// Being booted for the first time.
    Creating,
    /// Being booted again after a stop.
    Starting,
    /// Booted and its agent answered.
    Running,
    /// Being shut down.
    Stopping,
    /// Not running; `/workspace` kept.
    Stopped,
    /// A lifecycle step failed or the VM died; see the reason. It can be started again or deleted.
    Error,
    /// Being deleted: recorded before anything is destroyed, so a restart finishes the delete.
    Deleting,
    /// Tombstone: every trace removed, hidden from the API.
    Deleted,
}

impl VmState {
    /// Every state, for exhaustive tables.
    pub const ALL: [VmState; 8] = [
        VmState::Creating,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Error,
        VmState::Deleting,
        VmState::Deleted,
    ];

    /// The stored and wire spelling, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "CREATING",
            VmState::Starting => "STARTING",
            VmState::Running => "RUNNING",
            VmState::Stopping => "STOPPING",
            VmState::Stopped => "STOPPED",
            VmState::Error => "ERROR",
            VmState::Deleting => "DELETING",
            VmState::Deleted => "DELETED",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        VmState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| StoreError::UnknownState(s.to_string()))
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A persisted VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: String,
    pub state: VmState,
    /// Why the VM is in its state (errors, reconciler decisions).
    pub state_reason: Option<String>,
    pub cpu: u32,
    pub mem_mb: u32,
    /// Size of the VM's writable disk in MiB.
    pub disk_mb: u32,
    /// Runtime that owns the VM (`sandbox`, `qemu`, `firecracker`).
    pub runtime: String,
    pub image_id: Option<String>,
    /// The runtime's handle (pid, start time, extras) as JSON; `None` when nothing runs.
    pub handle_json: Option<String>,
    pub outbound_internet: bool,
    /// Egress allow-list as a JSON array of CIDRs.
    pub allow_ips_json: Option<String>,
    /// Encrypted `secretEnv` (peer providers); never logged or returned.
    pub secret_env_ciphertext: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
    /// How the VM was last brought up: `boot`, `snapshot` (started from a snapshot) or `pool`
    /// (handed out from the warm pool); `None` before its first start.
    pub provision_mode: Option<String>,
    /// The snapshot the VM was created from, if any.
    pub snapshot_id: Option<String>,
    /// A warm-pool member: hidden from the API and outside `MAX_VMS` until a create claims it
    /// ([`crate::Store::claim_pool_vm`]).
    pub pool: bool,
}

/// A VM's network allocation and egress policy, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmNetworkRecord {
    /// Index of the VM's /30 in the address pool; unique among VMs holding one.
    pub net_slot: Option<u32>,
    /// The validated egress policy as JSON (`None` for VMs created before networking existed).
    pub egress_policy_json: Option<String>,
}

/// An activity event to append (no secrets in `meta`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Dotted type such as `vm.created`.
    pub kind: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub message: String,
    pub meta: Option<serde_json::Value>,
}

/// A stored activity event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub created_at: i64,
    pub kind: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub message: String,
    pub meta: Option<serde_json::Value>,
}

/// One exec/run call, summarised (environment values are never recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecLogRecord {
    pub id: String,
    pub vm_id: String,
    /// `exec`, `run-ts`, `run-js` or `run-python`.
    pub kind: String,
    pub exec_id: Option<String>,
    /// Input summary as JSON (command or code, env *keys* only, timeout).
    pub input: serde_json::Value,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// First bytes of stdout/stderr.
    pub output_preview: String,
    pub created_at: i64,
}

/// A managed API key; the key itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// First characters of the key, to recognise it in lists.
    pub prefix: String,
    /// Hex SHA-256 of the full key.
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// When a request last used it (recorded at most about once a minute).
    pub last_used_at: Option<i64>,
}

/// A consumer's link to a provider under an alias.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLinkRecord {
    pub consumer_vm_id: String,
    /// Identifier the consumer imports the provider by.
    pub alias: String,
    pub provider_vm_id: String,
    /// `hidden` or `mirror`.
    pub source_mode: String,
    /// The provider manifest as of the last successful sync; bridge calls are checked against it.
    pub manifest_json: Option<String>,
    /// `pending`, `synced`, `unavailable` (provider not running) or `invalid` (bad manifest).
    pub sync_status: String,
    pub sync_message: Option<String>,
    pub synced_at: Option<i64>,
}

/// One audited bridge call (argument values are never recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerCallRecord {
    pub id: String,
    pub consumer_vm_id: String,
    pub provider_vm_id: Option<String>,
    pub alias: String,
    pub export_name: String,
    /// HTTP-style status answered to the consumer.
    pub status: u16,
    /// `ok` or the error code.
    pub code: String,
    pub duration_ms: u64,
    pub created_at: i64,
}

/// Which file of a guest image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImagePart {
    /// The guest kernel (ELF `vmlinux` or bzImage `vmlinuz`).
    Kernel,
    /// The initramfs.
    Initrd,
    /// The ext4 root filesystem.
    Rootfs,
}

impl ImagePart {
    /// Every part, in upload order.
    pub const ALL: [ImagePart; 3] = [ImagePart::Kernel, ImagePart::Initrd, ImagePart::Rootfs];

    /// The API spelling: `kernel`, `initrd`, `rootfs`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePart::Kernel => "kernel",
            ImagePart::Initrd => "initrd",
            ImagePart::Rootfs => "rootfs",
        }
    }
}

impl std::fmt::Display for ImagePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest image: its files live in `STORAGE_ROOT/images/<id>/`; the row records what was uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    /// Size of the last kernel uploaded; `None` until one is.
    pub kernel_bytes: Option<u64>,
    pub initrd_bytes: Option<u64>,
    pub rootfs_bytes: Option<u64>,
    pub kernel_uploaded_at: Option<i64>,
    pub initrd_uploaded_at: Option<i64>,
    pub rootfs_uploaded_at: Option<i64>,
    /// The builder's `manifest.json`, when a bundle carried one.
    pub manifest_json: Option<String>,
}

impl ImageRecord {
    /// A new image with no files yet.
    pub fn new(id: String, name: String, description: String, created_at: i64) -> Self {
        ImageRecord {
            id,
            name,
            description,
            created_at,
            kernel_bytes: None,
            initrd_bytes: None,
            rootfs_bytes: None,
            kernel_uploaded_at: None,
            initrd_uploaded_at: None,
            rootfs_uploaded_at: None,
            manifest_json: None,
        }
    }

    /// Size of `part`, if uploaded.
    pub fn part_bytes(&self, part: ImagePart) -> Option<u64> {
        match part {
            ImagePart::Kernel => self.kernel_bytes,
            ImagePart::Initrd => self.initrd_bytes,
            ImagePart::Rootfs => self.rootfs_bytes,
        }
    }
}

/// A VM to create with everything that belongs to it, written in one transaction by
/// [`crate::Store::create_vm`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewVm {
    /// The VM row (normally `CREATING`).
    pub record: VmRecord,
    /// The validated egress policy as JSON.
    pub egress_policy_json: Option<String>,
    /// Sealed `secretEnv` and its key names.
    pub secrets: Option<SealedSecrets>,
    /// Links the VM holds as a consumer (their `consumer_vm_id` is the VM's id).
    pub links: Vec<PeerLinkRecord>,
    /// Allocate a network slot from this range; `None` when the manager has no networking.
    pub net: Option<NetSlotRequest>,
}

/// A VM's sealed `secretEnv`: the ciphertext and the names of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecrets {
    pub ciphertext: Vec<u8>,
    pub keys: Vec<String>,
}

/// Which network slots an allocation may hand out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetSlotRequest {
    /// Slots `0..capacity` exist (the address pool's size).
    pub capacity: u32,
    /// Slots not to hand out although free in the database (e.g. claimed on this host by another
    /// installation).
    pub skip: Vec<u32>,
}

/// Limits [`crate::Store::create_vm`] checks against the database inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLimits {
    /// Most VMs that are not DELETED (`MAX_VMS`).
    pub max_vms: u64,
}

/// What a create asks of a warm-pool member, and what the member takes on when claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolClaim {
    /// The member must run on this runtime, with these sizes and image.
    pub runtime: String,
    pub cpu: u32,
    pub mem_mb: u32,
    pub disk_mb: u32,
    pub image_id: Option<String>,
    /// The creator's egress policy, as [`NewVm`] carries it.
    pub outbound_internet: bool,
    pub allow_ips_json: Option<String>,
    pub egress_policy_json: Option<String>,
    /// The creator's sealed `secretEnv`.
    pub secrets: Option<SealedSecrets>,
    /// The creator's peer links; their `consumer_vm_id` becomes the claimed member's id.
    pub links: Vec<PeerLinkRecord>,
}

/// What [`crate::Store::create_vm`] allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedVm {
    /// The VM's network slot, when one was asked for.
    pub net_slot: Option<u32>,
}

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotState {
    /// Its files are being written; a restart finds it so and removes it.
    Creating,
    /// Complete: VMs can start from it.
    Ready,
}

impl SnapshotState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Ready => "ready",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        [SnapshotState::Creating, SnapshotState::Ready]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::UnknownState(s.to_string()))
    }
}

/// A snapshot of a VM: its files live in `STORAGE_ROOT/snapshots/<id>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    /// `snap-<uuid>` (user snapshots) or `seed-<image>` (image seeds).
    pub id: String,
    /// The original API's kind: `user_overlay` or `image_seed`.
    pub kind: String,
    /// What it holds: `disk` or `memory` (the runtime's snapshot kind).
    pub content: String,
    pub state: SnapshotState,
    /// Hidden from the default listing (image seeds).
    pub internal: bool,
    /// The runtime whose VMs can start from it.
    pub runtime: String,
    /// The VM it was taken of.
    pub source_vm_id: Option<String>,
    /// The image that VM ran (`None`: the manager's configured default image).
    pub image_id: Option<String>,
    pub cpu: u32,
    pub mem_mb: u32,
    pub disk_mb: u32,
    /// Bytes its files take on disk (allocated blocks), once ready.
    pub bytes: u64,
    pub created_at: i64,
}
