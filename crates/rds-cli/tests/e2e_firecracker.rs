//! End-to-end on the firecracker runtime: the real `rds serve` with `RDS_RUNTIME=firecracker`
//! drives the real Firecracker v1.16.1 and jailer (`$FIRECRACKER_BIN`/`$JAILER_BIN`, else
//! `../shared/firecracker/bin/`) over HTTP. Need root.
//!
//! The start-up checks run everywhere: without `/dev/kvm` the runtime is refused by name, and
//! `auto` says in `/v1/health` why it passed firecracker by. The creates need `/dev/kvm` (skipped
//! without it, allow-listed): where KVM cannot boot ordinary guests (a PVM KVM), a create gets as
//! far as a started VM whose guest never calls in, and the caller is told why, with the logs'
//! tails, and nothing of the VM is left on the host; a fault Firecracker reports reaches the
//! caller. The agent end to end on firecracker is in `rds-runtime --test firecracker_runtime`
//! (`boot_runs_code_in_the_guest`).

mod common;

use std::path::{Path, PathBuf};

use common::Server;
use serde_json::json;

/// The real binaries, or why they are not here.
fn binaries() -> Result<(String, String), String> {
    let text = |p: PathBuf| p.to_string_lossy().into_owned();
    Ok((
        text(rds_testkit::firecracker_program("FIRECRACKER_BIN", "firecracker")?),
        text(rds_testkit::firecracker_program("JAILER_BIN", "jailer")?),
    ))
}

/// The manager's variables for the firecracker runtime over the guest image, or why there can be
/// none here.
fn firecracker_env() -> Result<Vec<(&'static str, String)>, String> {
    if let Some(reason) = common::skip_reason() {
        return Err(reason);
    }
    let (fc, jailer) = binaries()?;
    let image = common::guest_image_dir()?.to_string_lossy().into_owned();
    Ok(vec![
        ("RDS_IMAGE_DIR", image),
        ("FIRECRACKER_BIN", fc),
        ("JAILER_BIN", jailer),
        // These binaries have no seccomp filter compiled in (shared/firecracker/bin/README.md).
        ("RDS_FIRECRACKER_SECCOMP", "off".into()),
        // These tests check what one VM leaves behind; an image seed would boot a VM of its own
        // in the background meanwhile.
        ("IMAGE_SEEDS", "off".into()),
    ])
}

/// Whether `/dev/kvm` opens here.
fn kvm_usable() -> bool {
    rds_runtime::firecracker::kvm_api_ok().is_ok()
}

/// A manager on the firecracker runtime, or why there cannot be one here.
fn server() -> Result<Server, String> {
    let env = firecracker_env()?;
    rds_runtime::firecracker::kvm_api_ok().map_err(|e| format!("the firecracker runtime needs KVM: {e}"))?;
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("RDS_RUNTIME", "firecracker"));
    Ok(Server::start(&vars))
}

macro_rules! require_server {
    () => {
        match server() {
            Ok(s) => s,
            Err(reason) => {
                rds_testkit::skip(reason);
                return;
            }
        }
    };
}

#[test]
fn start_up_checks_name_what_is_missing_and_auto_says_why() {
    let env = match firecracker_env() {
        Ok(env) => env,
        Err(reason) => {
            rds_testkit::skip(reason);
            return;
        }
    };
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if kvm_usable() {
        let s = Server::start(&[vars.as_slice(), &[("RDS_RUNTIME", "firecracker")]].concat());
        let (_, health) = s.call("GET", "/v1/health", None);
        assert_eq!(
            (health["runtime"].as_str(), health["runtimeReason"].as_str()),
            (Some("firecracker"), Some("RDS_RUNTIME=firecracker"))
        );
    } else {
        // Asked for explicitly, a runtime that cannot run VMs here stops the start, by name.
        let root = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rds"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STORAGE_ROOT", root.path())
            .env("PORT", "0")
            .env("RDS_NETWORK", "off")
            .env("RDS_RUNTIME", "firecracker")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run rds serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("the firecracker runtime is unavailable") && stderr.contains("/dev/kvm"), "{stderr}");
    }
    // `auto` reports what it chose and why it passed the others by.
    let s = Server::start(&[vars.as_slice(), &[("RDS_RUNTIME", "auto"), ("RUST_LOG", "info")]].concat());
    let (_, health) = s.call("GET", "/v1/health", None);
    let reason = health["runtimeReason"].as_str().unwrap();
    assert!(reason.starts_with("RDS_RUNTIME=auto: "), "{reason}");
    if health["runtime"] != "firecracker" {
        assert!(reason.contains("not firecracker: "), "{reason}");
    }
    assert!(s.log().contains(reason), "the reason is logged at start-up too:\n{}", s.log());
}

/// Asserts that the manager left no VM on the host: no VM directory, jail, process running from
/// its storage root, VM cgroup, network namespace or VM number.
fn assert_nothing_left(s: &Server) {
    assert_nothing_left_under(s.root.path(), &s.cgroup_group());
}

/// [`assert_nothing_left`] for the manager with storage root `root` and cgroup group `group`.
fn assert_nothing_left_under(root: &Path, group: &str) {
    for dir in ["vms", "jail/firecracker"] {
        let left: Vec<_> =
            std::fs::read_dir(root.join(dir)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{dir} left: {left:?}");
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe")) {
            assert!(!exe.starts_with(root), "process {:?} runs {}", entry.file_name(), exe.display());
        }
    }
    let layout = rds_runtime::cgroup::CgroupLayout::detect(group).unwrap();
    for parent in layout.parents() {
        let children: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(children.is_empty(), "VM cgroups left: {children:?}");
    }
    let netns: Vec<_> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    assert!(!netns.iter().any(|n: &String| n.starts_with(&format!("{group}-"))), "namespaces left: {netns:?}");
    let claims = rds_runtime::firecracker::ids::Claims::new(rds_runtime::firecracker::ids::CLAIMS_DIR, root);
    assert!(claims.owned().is_empty(), "VM numbers left: {:?}", claims.owned());
}

#[test]
fn a_create_whose_guest_never_calls_in_fails_with_the_logs_and_leaves_nothing() {
    let s = require_server!();
    let (_, health) = s.call("GET", "/v1/health", None);
    assert_eq!((health["runtime"].as_str(), health["isolation"].as_str()), (Some("firecracker"), Some("microvm")));

    let started = std::time::Instant::now();
    let (st, body) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256})));
    eprintln!("create failed after {:?}", started.elapsed());
    if st == 201 {
        // A host whose KVM boots ordinary guests: the VM came up.
        assert!(rds_runtime::qemu::kvm_boots_guests(), "{body}");
        return;
    }
    assert_eq!(st, 502, "{body}; log:\n{}", s.log());
    assert_eq!(body["error"]["code"], "vm_failed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("no readiness call from the guest") || message.contains("Firecracker exited during boot"),
        "{message}"
    );
    assert!(message.contains("(tail) ---"), "the logs' tails are quoted: {message}");
    let (_, vms) = s.call("GET", "/v1/vms", None);
    assert!(vms.as_array().unwrap().iter().all(|v| v["state"] != "RUNNING"), "{vms}");
    assert_nothing_left(&s);
}

#[test]
fn a_fault_firecracker_reports_reaches_the_caller() {
    let s = require_server!();
    let (st, img) = s.call("POST", "/v1/images", Some(json!({"name": "bad-kernel"})));
    assert_eq!(st, 201, "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    // An ELF header and nothing a loader can use.
    let mut kernel = b"\x7fELF\x02\x01\x01".to_vec();
    kernel.resize(4096, 0);
    let image = common::guest_image_dir().unwrap();
    for (part, data) in [
        ("kernel", kernel),
        ("initrd", std::fs::read(image.join("initrd.img")).unwrap()),
        ("rootfs", std::fs::read(image.join("rootfs.ext4")).unwrap()),
    ] {
        let (st, body) = common::into_status_json(
            s.req("PUT", &format!("/v1/images/{id}/{part}"))
                .set("Content-Type", "application/octet-stream")
                .send_bytes(&data),
        );
        assert!(st == 200 || st == 204, "{part}: {st} {body}");
    }
    let (st, body) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "imageId": id})));
    assert_eq!(st, 502, "{body}; log:\n{}", s.log());
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("Firecracker refused InstanceStart"), "{message}");
    assert!(message.to_lowercase().contains("kernel"), "Firecracker's fault_message: {message}");
    assert_nothing_left(&s);
}

/// The real manager (in this process, over the real firecracker runtime, which needs no KVM to be
/// built this way) answers a create that Firecracker refuses with Firecracker's `fault_message`,
/// and leaves nothing. Runs on any host: without `/dev/kvm` the fault is KVM's absence, with it the
/// bad kernel's.
#[test]
fn through_the_manager_a_fault_firecracker_reports_reaches_the_caller_and_nothing_is_left() {
    let env = match firecracker_env() {
        Ok(env) => env,
        Err(reason) => {
            rds_testkit::skip(reason);
            return;
        }
    };
    let get = |k: &str| env.iter().find(|(key, _)| *key == k).map(|(_, v)| PathBuf::from(v));
    let image = get("RDS_IMAGE_DIR").unwrap();
    let root = tempfile::Builder::new().prefix("rds-fc-").tempdir().unwrap();
    let group = format!("rds-fctest-{}", std::process::id());
    // Removes the manager's (empty) cgroup group however the test ends; declared first, so it is
    // dropped after the manager's runtime.
    struct GroupGuard(String);
    impl Drop for GroupGuard {
        fn drop(&mut self) {
            rds_runtime::cgroup::CgroupLayout::remove_empty_group(&self.0);
        }
    }
    let _group_guard = GroupGuard(group.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let vars: Vec<(String, String)> = vec![
        ("API_KEY".into(), common::KEY.into()),
        ("PORT".into(), port.to_string()),
        ("STORAGE_ROOT".into(), root.path().to_string_lossy().into()),
        ("RDS_NETWORK".into(), "off".into()),
        ("RDS_CGROUP_GROUP".into(), group.clone()),
        ("RDS_IMAGE_DIR".into(), image.to_string_lossy().into()),
        // The test checks what a failed create leaves; an image seed would boot a VM meanwhile.
        ("IMAGE_SEEDS".into(), "off".into()),
    ];
    let config = rds_manager::Config::from_lookup(|k| vars.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()))
        .expect("configuration");
    let runtime = rds_runtime::firecracker::FirecrackerRuntime::new(rds_runtime::firecracker::FirecrackerConfig {
        storage_root: root.path().to_path_buf(),
        firecracker_bin: get("FIRECRACKER_BIN").unwrap(),
        jailer_bin: get("JAILER_BIN"),
        kernel: image.join("vmlinux"),
        initrd: image.join("initrd.img"),
        base_rootfs: image.join("rootfs.ext4"),
        seccomp: rds_runtime::firecracker::Seccomp::Off,
        clone_mode: rds_runtime::firecracker::CloneMode::Auto,
        boot_timeout: std::time::Duration::from_secs(10),
        cgroup_group: group.clone(),
        claims_dir: PathBuf::from(rds_runtime::firecracker::ids::CLAIMS_DIR),
    })
    .expect("the firecracker runtime");
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let prepared = tokio_rt
        .block_on(rds_manager::server::prepare_with_runtime(config, std::sync::Arc::new(runtime), false))
        .expect("the manager starts");
    tokio_rt.spawn(rds_manager::server::serve(prepared));
    let url = format!("http://127.0.0.1:{port}");
    let call = |method: &str, path: &str| ureq::request(method, &format!("{url}{path}")).set("X-API-Key", common::KEY);

    let (st, img) = common::into_status_json(call("POST", "/v1/images").send_json(json!({"name": "bad-kernel"})));
    assert_eq!(st, 201, "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    let mut kernel = b"\x7fELF\x02\x01\x01".to_vec();
    kernel.resize(4096, 0);
    for (part, data) in [
        ("kernel", kernel),
        ("initrd", std::fs::read(image.join("initrd.img")).unwrap()),
        ("rootfs", std::fs::read(image.join("rootfs.ext4")).unwrap()),
    ] {
        let put = call("PUT", &format!("/v1/images/{id}/{part}")).set("Content-Type", "application/octet-stream");
        let (st, body) = common::into_status_json(put.send_bytes(&data));
        assert_eq!(st, 204, "{part}: {body}");
    }
    let (st, body) =
        common::into_status_json(call("POST", "/v1/vms").send_json(json!({"cpu": 1, "memMb": 256, "imageId": id})));
    assert_eq!(st, 502, "{body}");
    assert_eq!(body["error"]["code"], "vm_failed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("Firecracker refused InstanceStart: "), "Firecracker's fault_message: {message}");
    assert!(message.contains("--- firecracker.log (tail) ---"), "{message}");
    let (_, vms) = common::into_status_json(call("GET", "/v1/vms").call());
    assert!(vms.as_array().unwrap().iter().all(|v| v["state"] != "RUNNING"), "{vms}");
    assert_nothing_left_under(root.path(), &group);
    drop(tokio_rt);
}
