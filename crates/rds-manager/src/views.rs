//! Request and response bodies of the manager API (camelCase on the wire, with OpenAPI schemas).

use rds_proto::coerce;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

// The bounds the validators enforce. The schema annotations below repeat them as literals (utoipa
// takes literals only); the contract tests check each literal against these constants.

/// Smallest `memMb` a VM can boot with.
pub const MIN_MEM_MB: u32 = 32;
/// Smallest `diskSizeMb`.
pub const MIN_DISK_MB: u32 = rds_runtime::MIN_DISK_MB;
/// Most `peerLinks` a consumer may hold.
pub const MAX_PEER_LINKS: usize = 32;
/// Longest image `name`, in characters.
pub const MAX_IMAGE_NAME_CHARS: usize = 128;
/// Longest image `description`, in characters.
pub const MAX_IMAGE_DESCRIPTION_CHARS: usize = 1024;
/// Largest `?limit=` of `GET /v1/peer-calls` (larger values are clamped to it).
pub const MAX_PEER_CALLS_LIMIT: u32 = 500;
/// Largest `?limit=` of `GET /v1/vms/{id}/exec-logs` (larger values are clamped to it).
pub const MAX_EXEC_LOGS_LIMIT: u32 = 200;
/// Largest `?tail=` of `GET /v1/vms/{id}/logs` (larger values are clamped to it).
pub const MAX_CONSOLE_TAIL: u32 = 1000;
/// Longest `allowDomains` entry (a DNS name).
pub const MAX_DOMAIN_LEN: usize = 253;

/// An optional list: `null` is accepted as "omitted".
fn nullable_array() -> ArrayBuilder {
    ArrayBuilder::new().schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
}

/// `allowIps`: at most [`rds_net::MAX_ENTRIES`] addresses or CIDRs, none empty.
fn allow_ips_schema() -> ArrayBuilder {
    let entry = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
    nullable_array()
        .items(entry)
        .max_items(Some(rds_net::MAX_ENTRIES))
        .description(Some("Egress allow-list: IPv4/IPv6 addresses or CIDRs (no host bits set)."))
}

/// `allowDomains`: at most [`rds_net::MAX_ENTRIES`] names.
fn allow_domains_schema() -> ArrayBuilder {
    let entry = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(MAX_DOMAIN_LEN));
    nullable_array()
        .items(entry)
        .max_items(Some(rds_net::MAX_ENTRIES))
        .description(Some("Names (`example.com`, `*.example.com`) the VM may resolve and then reach."))
}

/// `secretEnv`: at most [`rds_peer::secrets::MAX_ENTRIES`] `KEY=value` entries.
fn secret_env_schema() -> ArrayBuilder {
    secret_env_entries(ArrayBuilder::new())
}

/// `secretEnv` where it may be omitted.
fn optional_secret_env_schema() -> ArrayBuilder {
    secret_env_entries(nullable_array())
}

fn secret_env_entries(array: ArrayBuilder) -> ArrayBuilder {
    let entry = ObjectBuilder::new().schema_type(Type::String).pattern(Some(rds_peer::secrets::ENTRY_PATTERN));
    array
        .items(entry)
        .max_items(Some(rds_peer::secrets::MAX_ENTRIES))
        .description(Some("Provider secrets, `[\"KEY=value\"]` (KEY an environment variable name, each at most once)."))
}

/// `POST /v1/vms` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVmRequest {
    /// vCPUs (1..=MAX_CPU; over MAX_CPU is a 429).
    #[serde(deserialize_with = "coerce::u32")]
    #[schema(minimum = 1)]
    pub cpu: u32,
    /// Memory in MiB (32..=MAX_MEM_MB; over MAX_MEM_MB is a 429).
    #[serde(deserialize_with = "coerce::u32")]
    #[schema(minimum = 32)]
    pub mem_mb: u32,
    /// Size of the VM's writable disk (`/workspace`) in MiB (16..=MAX_DISK_MB; default
    /// DEFAULT_DISK_MB, 1024). Writes past it fail with ENOSPC inside the VM.
    #[serde(default, deserialize_with = "coerce::opt_u32")]
    #[schema(minimum = 16)]
    pub disk_size_mb: Option<u32>,
    /// Guest image; omitted = the runtime's default root filesystem.
    #[serde(default)]
    pub image_id: Option<String>,
    /// Egress allow-list (CIDRs); only used with `outboundInternet`.
    #[serde(default, deserialize_with = "coerce::opt_strings")]
    #[schema(schema_with = allow_ips_schema)]
    pub allow_ips: Option<Vec<String>>,
    /// Allow egress to `allowIps` (default false: no network).
    #[serde(default, deserialize_with = "coerce::opt_bool")]
    pub outbound_internet: Option<bool>,
    /// Names (`example.com`, `*.example.com`) the VM may resolve and then reach; only used with
    /// `outboundInternet`. Empty = every name resolves, only `allowIps` are reachable.
    #[serde(default)]
    #[schema(schema_with = allow_domains_schema)]
    pub allow_domains: Option<Vec<String>>,
    /// Provider secrets, `["KEY=value"]`: encrypted at rest, never returned, injected only into
    /// this VM's own processes. Needs `VM_SECRET_KEY`.
    #[serde(default)]
    #[schema(schema_with = optional_secret_env_schema)]
    pub secret_env: Option<Vec<String>>,
    /// Providers this (consumer) VM may call through the bridge.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub peer_links: Option<Vec<PeerLinkRequest>>,
    /// Start from this snapshot (`POST /v1/vms/{id}/snapshots`) instead of booting afresh: the VM
    /// gets a copy of the snapshot's disk and, when the snapshot holds memory and the VM has the
    /// snapshot's `cpu` and `memMb`, resumes where it was (its processes still running). The
    /// image must be the snapshot's.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9-]{1,80}$")]
    pub user_overlay_snapshot_id: Option<String>,
    /// The original API's deprecated alias of `userOverlaySnapshotId`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9-]{1,80}$")]
    pub snapshot_id: Option<String>,
}

/// One entry of `peerLinks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerLinkRequest {
    /// Identifier (`[A-Za-z_][A-Za-z0-9_]*`, not `_rds` or `__init__`) the consumer imports the
    /// provider by.
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]*$", max_length = 64)]
    pub alias: String,
    /// The provider VM.
    pub vm_id: String,
    /// `hidden` (default), `mirror`, or the original's name for it, `mounted`.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(hidden|mirror|mounted)$")]
    pub source_mode: Option<rds_peer::files::SourceMode>,
}

/// `PATCH /v1/vms/{id}/peers/{alias}`: create or change a link.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchPeerLinkRequest {
    /// The provider VM (required when the link is new).
    #[serde(default)]
    pub vm_id: Option<String>,
    /// `hidden`, `mirror` or `mounted`.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(hidden|mirror|mounted)$")]
    pub source_mode: Option<rds_peer::files::SourceMode>,
}

/// `PATCH /v1/vms/{id}/secrets`: replace a provider's secrets.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretsRequest {
    /// `["KEY=value"]`; an empty list removes every secret.
    #[schema(schema_with = secret_env_schema)]
    pub secret_env: Vec<String>,
}

/// A consumer's link as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerLinkView {
    pub alias: String,
    pub vm_id: String,
    /// `hidden`, `mirror` or `mounted`.
    pub source_mode: String,
    /// `pending`, `synced`, `unavailable` (provider not running) or `invalid` (bad manifest).
    pub sync_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_message: Option<String>,
    /// Exports declared by the synced manifest.
    pub exports: Vec<String>,
}

/// Outcome of a peer sync.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSyncReport {
    pub peers: Vec<PeerLinkView>,
    /// Provider files left out of mirrors (dotenv files, files holding a secret value, links).
    pub skipped: Vec<String>,
}

/// One audited bridge call.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerCallView {
    pub id: String,
    pub consumer_vm_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_vm_id: Option<String>,
    pub alias: String,
    pub export: String,
    /// HTTP-style status answered to the consumer.
    pub status: u16,
    /// `ok` or the error code.
    pub code: String,
    pub duration_ms: u64,
    pub created_at: i64,
}

/// `?vmId=&limit=` of the peer-call audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PeerCallQuery {
    /// Only calls where this VM is the consumer or the provider.
    pub vm_id: Option<String>,
    /// Entries to return (1..=500, default 100; larger values are clamped).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmView {
    pub id: String,
    /// CREATING, STARTING, RUNNING, STOPPING, STOPPED, ERROR or DELETING (see docs/api.md).
    pub state: String,
    /// Why the VM is in its state: errors, how its process ended, reconciler decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    pub cpu: u32,
    pub mem_mb: u32,
    /// Size of the VM's writable disk in MiB.
    pub disk_size_mb: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub outbound_internet: bool,
    /// Runtime running this VM: `sandbox`, `qemu` or `firecracker`.
    pub runtime: String,
    /// `namespaces` (sandbox: weaker than a VM) or `microvm`.
    pub isolation: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    /// Names of the provider secrets held (values are never shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env_keys: Vec<String>,
    /// Providers this VM is linked to.
    #[serde(default)]
    pub peer_links: Vec<PeerLinkView>,
    /// The VM's address and effective egress policy.
    #[serde(default)]
    pub network: NetworkView,
    /// The original API's top-level copy of `network.guestIp`: the VM's IPv4 address, `null` when
    /// it has loopback only.
    #[serde(default)]
    pub guest_ip: Option<String>,
    /// How the VM was last brought up: `boot` (a cold boot), `snapshot` (started from
    /// `snapshotId`) or `pool` (handed out by the warm pool, booted ahead of the create).
    #[serde(default = "boot")]
    pub provision_mode: String,
    /// The snapshot the VM was created from: the one its create named, or its image's seed
    /// (`seed-…`), which the VM started from instead of booting (memory seeds, `provisionMode:
    /// snapshot`) or whose ready-made disk it booted on (disk seeds, `provisionMode: boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

fn boot() -> String {
    PROVISION_BOOT.to_string()
}

/// `provisionMode` of a cold-booted VM.
pub const PROVISION_BOOT: &str = "boot";
/// `provisionMode` of a VM started from a snapshot (its disk, and its memory where it could).
pub const PROVISION_SNAPSHOT: &str = "snapshot";
/// `provisionMode` of a VM handed out by the warm pool (booted ahead of the create).
pub const PROVISION_POOL: &str = "pool";

/// `GET /v1/pool`: the warm pool's state and counters since the manager started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// `ENABLE_WARM_POOL=true` with a target above 0.
    pub enabled: bool,
    /// Members kept ready (`min(WARM_POOL_TARGET, WARM_POOL_MAX_VMS)`).
    pub target: u32,
    /// The sizes a create must ask for to be served (`SNAPSHOT_TEMPLATE_CPU`, `_MEM_MB`), with
    /// the default image and disk size.
    pub cpu: Option<u32>,
    pub mem_mb: Option<u32>,
    /// Members running and ready to hand out.
    pub ready: u32,
    /// Members booting.
    pub starting: u32,
    /// Creates served by a member.
    pub hits: u64,
    /// Creates the pool could have served but found it empty (they booted).
    pub misses: u64,
    /// Failed refills.
    pub refill_errors: u64,
    /// The last refill failure.
    pub last_error: Option<String>,
}

/// `POST /v1/vms/{id}/snapshots` (the body is optional: the original sends none).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Also save the VM's memory, so VMs started from the snapshot resume with their processes
    /// running instead of booting. Default: yes where the runtime can (qemu, firecracker) and the
    /// VM holds no `secretEnv`; `true` on a runtime that cannot answers 501.
    #[serde(default, deserialize_with = "coerce::opt_bool")]
    pub include_memory: Option<bool>,
}

/// Which snapshots `GET /v1/snapshots` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotScope {
    /// Snapshots users took (the default).
    User,
    /// The manager's own (image seeds).
    Internal,
    /// Both.
    All,
}

/// `?scope=` of the snapshot list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotsQuery {
    /// `user` (default), `internal` or `all`.
    #[param(inline)]
    pub scope: Option<SnapshotScope>,
}

/// A snapshot: the original API's `meta.json` fields, plus what it holds and its size.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    /// `snap-<uuid>`.
    pub id: String,
    /// `user_overlay` (taken by a user) or `image_seed` (internal).
    pub kind: String,
    /// `disk` (the VM's disk: VMs started from it boot on a copy) or `memory` (disk, memory and
    /// device state: VMs started from it resume).
    pub content: String,
    /// `creating` or `ready`.
    pub state: String,
    /// Hidden from the default listing.
    pub internal: bool,
    /// The runtime whose VMs can start from it.
    pub runtime: String,
    /// The VM it was taken of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_vm_id: Option<String>,
    /// That VM's image (absent: the manager's configured image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub cpu: u32,
    pub mem_mb: u32,
    /// The disk size of VMs started from it.
    pub disk_size_mb: u32,
    /// Bytes its files take on the host.
    pub size_bytes: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The original's legacy full-disk flag: always false.
    pub has_disk: bool,
    /// The original's overlay flag: always true (every snapshot holds the VM's disk).
    pub has_overlay: bool,
    /// Whether it holds memory (`content` is `memory`).
    pub has_memory: bool,
}

/// A VM's network as the API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkView {
    /// The VM's IPv4 address; `null` when it has loopback only.
    pub guest_ip: Option<String>,
    /// Whether egress is open (to exactly `allowIps` and the addresses of `allowDomains`).
    pub outbound_internet: bool,
    /// Reachable networks, normalised (`1.2.3.4` is shown as `1.2.3.4/32`).
    pub allow_ips: Vec<String>,
    /// Names the VM's resolver answers (empty = all names, when egress is open).
    pub allow_domains: Vec<String>,
}

/// `PATCH /v1/vms/{id}/network`: change the egress policy; omitted fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchNetworkRequest {
    #[serde(default)]
    pub outbound_internet: Option<bool>,
    /// Replaces the whole list.
    #[serde(default)]
    #[schema(schema_with = allow_ips_schema)]
    pub allow_ips: Option<Vec<String>>,
    /// Replaces the whole list.
    #[serde(default)]
    #[schema(schema_with = allow_domains_schema)]
    pub allow_domains: Option<Vec<String>>,
}

/// `GET /v1/vms/{id}/exec-logs` entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecLogView {
    pub id: String,
    /// `exec`, `run-ts`, `run-js` or `run-python`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// Command or code summary; environment values are never recorded (only keys).
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// First bytes of stdout and stderr.
    pub output_preview: String,
    pub created_at: i64,
}

/// `GET /v1/vms/{id}/exec-logs` body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecLogPage {
    /// Newest first.
    pub entries: Vec<ExecLogView>,
    pub has_more: bool,
}

/// `GET /v1/vms/{id}/logs` body: the tail of one of the VM's logs, the original's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogView {
    /// The log type as requested (`console` when none was).
    #[serde(rename = "type")]
    pub kind: String,
    pub lines: Vec<String>,
    /// True when older lines were left out.
    pub truncated: bool,
    /// When the log was last written (ISO-8601, UTC); absent when there is no log file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Interpreters user code can run.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostCapabilities {
    pub deno: bool,
    pub node: bool,
    pub python3: bool,
}

/// `GET /v1/health` body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    /// `ok`.
    pub status: String,
    pub version: String,
    pub runtime: String,
    /// Why this runtime runs VMs: `RDS_RUNTIME`, and under `auto` why each runtime before it was
    /// passed over.
    pub runtime_reason: String,
    pub isolation: String,
    pub capabilities: HostCapabilities,
    /// This manager's installation id: part of the name of its cgroup group, nft table and VM
    /// interfaces on the host.
    pub installation_id: String,
}

/// `?dest=` of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Directory under `/workspace` to extract into (required; a 400 names it when missing).
    #[param(required = true, min_length = 1)]
    pub dest: Option<String>,
}

/// `?path=` of a download.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// File or directory under `/workspace` (required; a 400 names it when missing).
    #[param(required = true, min_length = 1)]
    pub path: Option<String>,
}

/// `?type=&tail=` of the VM logs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `console` (default: the guest console with the VMM's stdout and stderr), `firecracker` (the
    /// VMM's own log) or `metrics`; the original's `firecracker.stdout.log` and
    /// `firecracker.stderr.log` mean `console`, `firecracker.log` means `firecracker`.
    #[serde(rename = "type")]
    #[param(
        pattern = "^(console|firecracker|metrics|firecracker\\.log|firecracker\\.stdout\\.log|firecracker\\.stderr\\.log)$"
    )]
    pub kind: Option<String>,
    /// Lines to return (1..=1000, default 200; other values are clamped).
    #[param(minimum = 1, maximum = 1000)]
    pub tail: Option<i64>,
}

/// `?limit=` of the exec logs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// Entries to return (1..=200, default 50; larger values are clamped).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// `POST /v1/images` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateImageRequest {
    /// Display name (1..=128 characters, not blank, no control characters but tab and newline).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// Free text (at most 1024 characters, no control characters but tab and newline).
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")]
    pub description: Option<String>,
}

/// A guest image as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    /// `img-<uuid>`.
    pub id: String,
    pub name: String,
    pub description: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// VMs created without `imageId` use this image.
    pub is_default: bool,
    pub has_kernel: bool,
    pub has_initrd: bool,
    pub has_rootfs: bool,
    /// `bzimage` (QEMU) when present, else `elf` (Firecracker); `null` without a kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_format: Option<String>,
    /// Every kernel format the image holds (a builder bundle carries both).
    pub kernel_formats: Vec<String>,
    /// Size of the last kernel uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_uploaded_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_uploaded_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_uploaded_at: Option<i64>,
    /// The original API's name of the kernel file (`vmlinux`, else `vmlinuz`); `null` without one.
    #[serde(default)]
    pub kernel_filename: Option<String>,
    /// The original API's name of the root filesystem file (`rootfs.ext4`); `null` without one.
    #[serde(default)]
    pub rootfs_filename: Option<String>,
    /// The original API's name for `rootfsBytes`.
    #[serde(default)]
    pub base_rootfs_bytes: Option<u64>,
    /// `null`: the image's seed (the original's warm-boot seed) is listed by
    /// `GET /v1/snapshots?scope=internal` as `seed-<imageId>`.
    #[serde(default)]
    pub seed_snapshot_id: Option<String>,
    /// `null` (see `seedSnapshotId`).
    #[serde(default)]
    pub seed_status: Option<String>,
    /// `null` (see `seedSnapshotId`).
    #[serde(default)]
    pub seed_updated_at: Option<String>,
    /// `null` (see `seedSnapshotId`).
    #[serde(default)]
    pub seed_error: Option<String>,
    /// The builder's manifest (kernel, packages, artifact hashes), when a bundle carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<serde_json::Value>,
}
