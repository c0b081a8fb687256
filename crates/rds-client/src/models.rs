//! The manager's views that have no home in `rds-proto`. Fields a newer manager adds are kept in
//! `extra`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A VM.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Vm {
    pub id: String,
    pub state: String,
    pub cpu: u32,
    pub mem_mb: u32,
    pub disk_size_mb: u32,
    pub runtime: String,
    pub isolation: String,
    pub outbound_internet: bool,
    pub image_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub provision_mode: Option<String>,
    pub state_reason: Option<String>,
    pub guest_ip: Option<String>,
    pub secret_env_keys: Vec<String>,
    pub peer_links: Vec<PeerLink>,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A consumer's link to a provider VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerLink {
    pub alias: String,
    pub vm_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mode: Option<String>,
}

/// The body of `POST /v1/vms`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateVm {
    pub cpu: u32,
    pub mem_mb: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_size_mb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_internet: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_domains: Vec<String>,
    /// `KEY=value` entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_links: Vec<PeerLink>,
    /// Start from this snapshot.
    #[serde(rename = "userOverlaySnapshotId", skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

impl Default for CreateVm {
    fn default() -> Self {
        CreateVm {
            cpu: 1,
            mem_mb: 256,
            disk_size_mb: None,
            image_id: None,
            outbound_internet: None,
            allow_ips: Vec::new(),
            allow_domains: Vec::new(),
            secret_env: Vec::new(),
            peer_links: Vec::new(),
            snapshot_id: None,
        }
    }
}

/// A snapshot of a VM.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Snapshot {
    pub id: String,
    pub kind: String,
    pub content: String,
    pub state: String,
    pub runtime: String,
    pub internal: bool,
    pub cpu: u32,
    pub mem_mb: u32,
    pub disk_size_mb: u32,
    pub size_bytes: u64,
    pub has_memory: bool,
    pub image_id: Option<String>,
    pub source_vm_id: Option<String>,
    pub created_at: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A guest image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub description: String,
    pub is_default: bool,
    pub has_kernel: bool,
    pub has_rootfs: bool,
    pub has_initrd: bool,
    pub created_at: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `PATCH /v1/vms/{id}/network`; `None` fields stay as they are.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_internet: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_ips: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_domains: Option<Vec<String>>,
}

/// A single-use token for a WebSocket route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtyToken {
    pub token: String,
    pub expires_at: u64,
}
