//! Request and response bodies of Firecracker's API, as `firecracker-api-v1.16.1.yaml` defines
//! them: field names are the YAML's, optional fields are `Option`s left out of the JSON when
//! `None`. Paths are `String`s because under the jailer they are relative to the chroot, not host
//! paths. Fields rds never sets (rate limiters, vhost-user, CPU configs) are not modelled.

use serde::{Deserialize, Serialize};

/// `InstanceInfo.state` before `InstanceStart`.
pub const STATE_NOT_STARTED: &str = "Not started";
/// `InstanceInfo.state` of a started, unpaused VM.
pub const STATE_RUNNING: &str = "Running";
/// `InstanceInfo.state` of a paused VM.
pub const STATE_PAUSED: &str = "Paused";

/// `GET /`: what the Firecracker process says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The `--id` it was started with (`anonymous-instance` without one).
    pub id: String,
    /// `Not started`, `Running` or `Paused` (see the `STATE_*` constants); kept as sent.
    pub state: String,
    /// Firecracker's version, e.g. `1.16.1`.
    pub vmm_version: String,
    /// Always `Firecracker`.
    pub app_name: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// E.g. `1.16.1`.
    pub firecracker_version: String,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What Firecracker refused and why.
    pub fault_message: String,
}

/// `PUT /machine-config` (and `GET`): vCPUs and memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// 1 or an even number, at most 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86 only); Firecracker's default is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking, needed for diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages backing guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// Deprecated static CPU template (`C3`, `T2`, …, `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

/// `MachineConfiguration.huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    None,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// The uncompressed ELF kernel (`vmlinux`) on x86_64.
    pub kernel_image_path: String,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// An initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}`: a virtio-block device backed by a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Also the path parameter; letters, digits and `_`.
    pub drive_id: String,
    /// The backing file.
    pub path_on_host: String,
    /// Whether the kernel is told to mount it as `/` (`root=/dev/vda`).
    pub is_root_device: bool,
    /// Whether the guest sees it read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Root partition's PARTUUID (with `is_root_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// `Unsafe` (default) or `Writeback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// `Sync` (default) or `Async`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device backed by a TAP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Also the path parameter; letters, digits and `_`.
    pub iface_id: String,
    /// The TAP device's name (in Firecracker's network namespace).
    pub host_dev_name: String,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest (68..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// `PUT /vsock`: the guest's vsock device, proxied to a Unix socket on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// The guest's context id, at least 3.
    pub guest_cid: u32,
    /// Firecracker listens here for host-initiated connections (`CONNECT <port>\n`); guest-initiated
    /// ones go to `<uds_path>_<port>`.
    pub uds_path: String,
    /// Deprecated by Firecracker, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// File or named pipe receiving the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info` (default), `Debug`, `Trace`, `Off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with their source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or named pipe receiving JSON metrics lines (on flush and every 60 s).
    pub metrics_path: String,
}

/// `PUT /serial`: where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDevice {
    /// File or named pipe receiving the console output (default: Firecracker's stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boots the configured VM.
    InstanceStart,
    /// Presses Ctrl+Alt+Del on the guest's i8042 keyboard (a clean shutdown request, x86 only).
    SendCtrlAltDel,
    /// Writes the metrics now.
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The state wanted.
    pub state: VmState,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stops the vCPUs.
    Paused,
    /// Lets them run again.
    Resumed,
}

/// `PUT /snapshot/create` (the VM must be paused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// `Full` unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
    /// Receives the VM state.
    pub snapshot_path: String,
    /// Receives guest memory.
    pub mem_file_path: String,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only pages dirtied since the last snapshot (needs `track_dirty_pages`).
    Diff,
}

/// `PUT /snapshot/load` (a fresh process, nothing configured but logger and metrics). Exactly one
/// of `mem_backend` and `mem_file_path` must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated form of a `File` `mem_backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Dirty page tracking in the restored VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// TAP devices replacing the snapshotted ones, by interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A new Unix socket path for the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

/// `SnapshotLoadParams.mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// What `backend_path` is.
    pub backend_type: MemoryBackendType,
    /// The memory file, or the Unix socket of a userfaultfd page server.
    pub backend_path: String,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file written by `PUT /snapshot/create`.
    File,
    /// A userfaultfd handler's socket.
    Uffd,
}

/// `SnapshotLoadParams.network_overrides[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The snapshotted interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// `SnapshotLoadParams.vsock_override`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The new Unix socket path.
    pub uds_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_json(value: impl Serialize) -> serde_json::Value {
        serde_json::to_value(value).expect("serialize")
    }

    #[test]
    fn machine_configuration_uses_the_yaml_names_and_omits_unset_fields() {
        let minimal = MachineConfiguration { vcpu_count: 2, mem_size_mib: 256, ..Default::default() };
        assert_eq!(to_json(&minimal), json!({"vcpu_count": 2, "mem_size_mib": 256}));
        let full = MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: Some(false),
            track_dirty_pages: Some(true),
            huge_pages: Some(HugePages::Hugetlbfs2M),
            cpu_template: Some("None".into()),
        };
        assert_eq!(
            to_json(&full),
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": true,
                   "huge_pages": "2M", "cpu_template": "None"})
        );
        assert_eq!(to_json(HugePages::None), json!("None"));
    }

    #[test]
    fn boot_source_and_drive_match_the_yaml() {
        let boot = BootSource {
            kernel_image_path: "/vmlinux".into(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: None,
        };
        assert_eq!(to_json(&boot), json!({"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"}));
        let drive = Drive {
            drive_id: "rootfs".into(),
            path_on_host: "/rootfs.ext4".into(),
            is_root_device: true,
            is_read_only: Some(true),
            cache_type: Some("Writeback".into()),
            io_engine: Some("Async".into()),
            ..Default::default()
        };
        assert_eq!(
            to_json(&drive),
            json!({"drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": true,
                   "is_read_only": true, "cache_type": "Writeback", "io_engine": "Async"})
        );
        let bare = Drive { drive_id: "d".into(), path_on_host: "/d".into(), ..Default::default() };
        assert_eq!(to_json(&bare), json!({"drive_id": "d", "path_on_host": "/d", "is_root_device": false}));
    }

    #[test]
    fn devices_logger_and_metrics_match_the_yaml() {
        let net = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:ac:10:00:02".into()),
            mtu: None,
        };
        assert_eq!(
            to_json(&net),
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"})
        );
        let vsock = Vsock { guest_cid: 3, uds_path: "/v.sock".into(), vsock_id: None };
        assert_eq!(to_json(&vsock), json!({"guest_cid": 3, "uds_path": "/v.sock"}));
        let logger = Logger {
            log_path: Some("/fc.log".into()),
            level: Some("Info".into()),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: None,
        };
        assert_eq!(
            to_json(&logger),
            json!({"log_path": "/fc.log", "level": "Info", "show_level": true, "show_log_origin": false})
        );
        assert_eq!(to_json(Metrics { metrics_path: "/m".into() }), json!({"metrics_path": "/m"}));
        assert_eq!(to_json(SerialDevice { serial_out_path: Some("/c".into()) }), json!({"serial_out_path": "/c"}));
    }

    #[test]
    fn actions_and_vm_state_match_the_yaml() {
        for (action, name) in [
            (ActionType::InstanceStart, "InstanceStart"),
            (ActionType::SendCtrlAltDel, "SendCtrlAltDel"),
            (ActionType::FlushMetrics, "FlushMetrics"),
        ] {
            assert_eq!(to_json(InstanceActionInfo { action_type: action }), json!({"action_type": name}));
        }
        assert_eq!(to_json(Vm { state: VmState::Paused }), json!({"state": "Paused"}));
        assert_eq!(to_json(Vm { state: VmState::Resumed }), json!({"state": "Resumed"}));
    }

    #[test]
    fn snapshot_params_match_the_yaml() {
        let create = SnapshotCreateParams {
            snapshot_type: Some(SnapshotType::Full),
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
        };
        assert_eq!(to_json(&create), json!({"snapshot_type": "Full", "snapshot_path": "/s", "mem_file_path": "/m"}));
        let load = SnapshotLoadParams {
            snapshot_path: "/s".into(),
            mem_backend: Some(MemoryBackend { backend_type: MemoryBackendType::File, backend_path: "/m".into() }),
            resume_vm: Some(true),
            network_overrides: Some(vec![NetworkOverride { iface_id: "eth0".into(), host_dev_name: "tap9".into() }]),
            vsock_override: Some(VsockOverride { uds_path: "/v2.sock".into() }),
            ..Default::default()
        };
        assert_eq!(
            to_json(&load),
            json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                   "resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
                   "vsock_override": {"uds_path": "/v2.sock"}})
        );
        assert_eq!(to_json(MemoryBackendType::Uffd), json!("Uffd"));
        assert_eq!(to_json(SnapshotType::Diff), json!("Diff"));
    }

    #[test]
    fn instance_info_and_fault_parse_firecrackers_answers() {
        let info: InstanceInfo = serde_json::from_value(
            json!({"id": "vm1", "state": "Not started", "vmm_version": "1.16.1", "app_name": "Firecracker"}),
        )
        .expect("parse");
        assert_eq!(info.state, STATE_NOT_STARTED);
        assert_eq!(info.id, "vm1");
        let fault: Fault = serde_json::from_str(r#"{"fault_message":"bad"}"#).expect("parse");
        assert_eq!(fault.fault_message, "bad");
    }
}
