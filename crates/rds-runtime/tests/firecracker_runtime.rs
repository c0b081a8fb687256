//! The firecracker runtime against the real Firecracker v1.16.1 and jailer binaries
//! (`$FIRECRACKER_BIN`/`$JAILER_BIN`, else `../shared/firecracker/bin/` beside the workspace),
//! with the real guest image. Need root.
//!
//! Everything up to `InstanceStart` runs on any Linux host: the jail seen from the host (chroot,
//! uid, cgroup, network namespace), the configuration Firecracker accepts, re-adoption by a new
//! runtime, stop escalation (Ctrl+Alt+Del, then kill), Firecracker's faults reaching the caller
//! and the cleanup after a failed start. What runs a guest needs `/dev/kvm` (skipped without it,
//! allow-listed in `.ci/skip-allowlist`): the readiness deadline of a guest that never calls in,
//! pause and snapshots; and the agent end to end needs a KVM that boots ordinary guests.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rds_runtime::firecracker::{ids, CloneMode, FirecrackerConfig, FirecrackerRuntime, Seccomp, VmProcess};
use rds_runtime::process::is_same_process_alive;
use rds_runtime::{Liveness, Runtime, RuntimeError, VmHandle};

use common::{new_id, spec};

/// The real binaries, or why they are not here.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    Ok((
        rds_testkit::firecracker_program("FIRECRACKER_BIN", "firecracker")?,
        rds_testkit::firecracker_program("JAILER_BIN", "jailer")?,
    ))
}

/// What every test needs: root, the binaries and the image.
fn prerequisites() -> Result<((PathBuf, PathBuf), PathBuf), String> {
    let bins = binaries()?;
    Ok((bins, common::guest_image()?))
}

/// The prerequisites, or a recorded skip.
macro_rules! require_env {
    () => {
        match prerequisites() {
            Ok(found) => found,
            Err(reason) => {
                rds_testkit::skip(reason);
                return;
            }
        }
    };
}

/// The prerequisites and a usable `/dev/kvm` (a guest runs), or a recorded skip.
macro_rules! require_kvm {
    () => {{
        let found = require_env!();
        if let Err(reason) = rds_runtime::firecracker::kvm_api_ok() {
            rds_testkit::skip(format!("a guest needs KVM: {reason}"));
            return;
        }
        found
    }};
}

/// A private storage root and cgroup group, and a runtime over them; whatever a failed test left
/// is removed on drop.
struct Env {
    storage: tempfile::TempDir,
    cfg: FirecrackerConfig,
}

impl Env {
    fn new(((fc, jailer), image): ((PathBuf, PathBuf), PathBuf), boot_timeout: Duration) -> Env {
        let storage = tempfile::Builder::new().prefix("rds-fc-test-").tempdir_in("/var/tmp").unwrap();
        let cfg = FirecrackerConfig {
            storage_root: storage.path().to_path_buf(),
            firecracker_bin: fc,
            jailer_bin: Some(jailer),
            kernel: image.join("vmlinux"),
            initrd: image.join("initrd.img"),
            base_rootfs: image.join("rootfs.ext4"),
            // These binaries have no filter compiled in (shared/firecracker/bin/README.md).
            seccomp: Seccomp::Off,
            clone_mode: CloneMode::Auto,
            boot_timeout,
            cgroup_group: format!("rds-fctest-{}", &new_id()[..8]),
            claims_dir: PathBuf::from(ids::CLAIMS_DIR),
        };
        Env { storage, cfg }
    }

    fn runtime(&self) -> FirecrackerRuntime {
        FirecrackerRuntime::new(self.cfg.clone()).expect("firecracker runtime")
    }

    fn jail(&self, id: &str) -> PathBuf {
        self.storage.path().join("jail/firecracker").join(id)
    }

    fn netns(&self, id: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(format!("{}-{id}", self.cfg.cgroup_group))
    }

    /// VM `id`'s cgroup directories (v1: one per controller; v2: one).
    fn cgroups(&self, id: &str) -> Vec<PathBuf> {
        rds_runtime::cgroup::CgroupLayout::detect(&self.cfg.cgroup_group).unwrap().vm_dirs(id)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let rt = self.runtime();
        // A fresh thread: tests drop `Env` inside their own tokio runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(tokio_rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    tokio_rt.block_on(rt.remove_orphans(&HashSet::new()));
                }
            });
        });
        rds_runtime::cgroup::CgroupLayout::remove_empty_group(&self.cfg.cgroup_group);
    }
}

fn record(handle: &VmHandle) -> VmProcess {
    serde_json::from_value(handle.extra.clone()).expect("the handle carries the process record")
}

/// `Uid:` of `/proc/<pid>/status`: real, effective, saved, fs.
fn uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect()
}

/// Asserts that VM `id` left nothing on the host: process, jail (sockets), cgroups, namespace,
/// number, directory.
fn assert_no_trace(env: &Env, id: &str, process: Option<(i32, u64)>) {
    if let Some((pid, start)) = process {
        assert!(!is_same_process_alive(pid, start), "Firecracker {pid} still runs");
    }
    assert!(!env.jail(id).exists(), "jail {} left", env.jail(id).display());
    assert!(!env.storage.path().join("vms").join(id).exists(), "VM directory left");
    for dir in env.cgroups(id) {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
    assert!(!env.netns(id).exists(), "network namespace {} left", env.netns(id).display());
    let claims = ids::Claims::new(ids::CLAIMS_DIR, env.storage.path());
    assert_eq!(claims.held_by(id), None, "VM number (CID, uid) still claimed");
}

/// Asserts, from the host, that VM `id`'s Firecracker is confined as the runtime says.
async fn assert_confined(env: &Env, rt: &FirecrackerRuntime, id: &str, record: &VmProcess) {
    let pid = record.pid;
    assert!(record.jailed);
    let uid = record.number.uid();
    assert!(uid >= ids::FIRST_UID, "an unprivileged uid of its own: {uid}");
    assert_eq!(uids(pid), vec![uid; 4], "Firecracker runs as the VM's uid");
    let jail_root = env.jail(id).join("root");
    // The jailer pivots into the jail inside a mount namespace of its own: its `/` is the jail.
    let (root, jail) =
        (std::fs::metadata(format!("/proc/{pid}/root")).unwrap(), std::fs::metadata(&jail_root).unwrap());
    assert_eq!((root.dev(), root.ino()), (jail.dev(), jail.ino()), "chrooted into the jail");
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino(),
        std::fs::metadata(env.netns(id)).unwrap().ino(),
        "in the VM's own network namespace"
    );
    assert_ne!(
        std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino(),
        std::fs::metadata("/proc/self/ns/net").unwrap().ino()
    );
    let own_cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let group_path = format!("{}/{id}", env.cfg.cgroup_group);
    for controller in if own_cgroups.contains(":memory:") { vec![":memory:", ":cpu", ":pids:"] } else { vec!["0::"] } {
        assert!(
            own_cgroups.lines().any(|l| l.contains(controller) && l.ends_with(&group_path)),
            "in the VM's {controller} cgroup: {own_cgroups}"
        );
    }
    let memory_dir = env
        .cgroups(id)
        .into_iter()
        .find(|d| d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists())
        .unwrap();
    let limit = std::fs::read_to_string(memory_dir.join("memory.max"))
        .or_else(|_| std::fs::read_to_string(memory_dir.join("memory.limit_in_bytes")))
        .unwrap();
    assert_eq!(limit.trim().parse::<u64>().unwrap(), (256 + 128) << 20, "guest memory + the VMM's reserve");
    // The configuration Firecracker accepted, as it reports it.
    let config = rt.client(id).machine_config().await.expect("machine config");
    assert_eq!((config.vcpu_count as u32, config.mem_size_mib as u32), (1, 256));
    for name in ["vmlinux", "initrd.img", "rootfs.ext4", "overlay.ext4", "run/api.sock", "firecracker"] {
        assert!(jail_root.join(name).exists(), "{name} is in the jail");
    }
    // The VM's own files are hard links into its directory, writable by its uid only.
    let overlay = std::fs::metadata(jail_root.join("overlay.ext4")).unwrap();
    let kept = std::fs::metadata(env.storage.path().join("vms").join(id).join("overlay.ext4")).unwrap();
    assert_eq!((overlay.ino(), overlay.uid(), overlay.mode() & 0o777), (kept.ino(), uid, 0o600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_vm_is_configured_confined_readopted_and_stopped() {
    let found = require_env!();
    let env = Env::new(found, Duration::from_secs(8));
    let id = new_id();
    let handle = {
        let rt = env.runtime();
        let t = Instant::now();
        let handle = rt.launch(&spec(&id, 256), false).await.expect("jailed and configured");
        eprintln!("jailer start -> API ready -> configured: {:?}", t.elapsed());
        assert_eq!(rt.client(&id).instance_info().await.unwrap().state, "Not started");
        assert_confined(&env, &rt, &id, &record(&handle)).await;
        handle
        // The runtime goes away here, as with a manager killed: the VMM stays.
    };
    let rt = env.runtime();
    assert_eq!(rt.probe(&id, &handle).await, Liveness::Alive, "re-adopted by pid, start time and API");
    let stale = VmHandle { start_time: handle.start_time + 1, ..handle.clone() };
    assert!(matches!(rt.probe(&id, &stale).await, Liveness::Dead(_)), "another start time is another process");

    // No guest ever ran: nothing to quiesce, so the stop is a kill.
    let stopping = Instant::now();
    rt.stop(&id, &handle).await.expect("stop");
    eprintln!("stop of a VM never started took {:?}", stopping.elapsed());
    assert!(!is_same_process_alive(handle.pid, handle.start_time));
    // Stopped: the jail, cgroups and namespace are gone; the disk and the VM's number stay.
    assert!(!env.jail(&id).exists());
    assert!(env.cgroups(&id).iter().all(|d| !d.exists()));
    assert!(!env.netns(&id).exists());
    assert!(env.storage.path().join("vms").join(&id).join("overlay.ext4").exists());
    let claims = ids::Claims::new(ids::CLAIMS_DIR, env.storage.path());
    assert_eq!(claims.held_by(&id), Some(record(&handle).number));

    // A second launch keeps the VM's number (its uid and CID).
    let again = rt.launch(&spec(&id, 256), false).await.expect("launch again");
    assert_eq!(record(&again).number, record(&handle).number);
    rt.destroy(&id, Some(&again)).await.expect("destroy");
    assert_no_trace(&env, &id, Some((again.pid, again.start_time)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networked_jailed_vm_opens_its_tap_inside_a_namespace_that_reaches_only_the_host_link() {
    let found = require_env!();
    let env = Env::new(found, Duration::from_secs(8));
    let rt = env.runtime();
    assert_eq!(rt.link_kind(), rds_runtime::LinkKind::NetnsTap);
    // What the manager makes for a networked VM (rds-net): a namespace with a TAP bridged to a
    // host veth carrying the host address.
    let name = format!("rdsfct{}", std::process::id() % 100_000);
    let third = (std::process::id() % 200) as u8;
    let slot = rds_net::Slot {
        index: 0,
        host_ip: std::net::Ipv4Addr::new(10, 251, third, 1),
        guest_ip: std::net::Ipv4Addr::new(10, 251, third, 2),
        prefix: 30,
    };
    let id = new_id();
    rds_net::link::create_netns_tap(&name, &id, &slot, &name).await.expect("namespace, bridge, TAP, veth");
    let network = rds_runtime::VmNetwork {
        guest_ip: slot.guest_ip,
        host_ip: slot.host_ip,
        prefix: 30,
        mac: rds_net::mac_for(&id),
        tap: Some(rds_net::link::NETNS_TAP.into()),
        netns: Some(name.clone()),
    };
    let vm = rds_runtime::VmSpec { network: Some(network), ..spec(&id, 256) };
    // Firecracker opens the TAP when its network interface is configured: inside the namespace.
    let launched = rt.launch(&vm, false).await;
    let joined = launched.as_ref().ok().map(|h| std::fs::metadata(format!("/proc/{}/ns/net", h.pid)).unwrap().ino());
    let expected = std::fs::metadata(format!("/var/run/netns/{name}")).unwrap().ino();
    if let Ok(handle) = &launched {
        rt.destroy(&id, Some(handle)).await.expect("destroy");
    }
    rds_net::link::delete(&name).await.unwrap();
    rds_net::link::delete_netns(&name).await.unwrap();
    let handle = launched.expect("the TAP in the VM's namespace is accepted");
    assert_eq!(joined, Some(expected), "Firecracker runs in the namespace holding its TAP");
    assert_no_trace(&env, &id, Some((handle.pid, handle.start_time)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecrackers_fault_message_reaches_the_caller_and_nothing_is_left() {
    let found = require_env!();
    let env = Env::new(found, Duration::from_secs(8));
    let rt = env.runtime();
    let id = new_id();
    // An ELF header and nothing a loader can use: InstanceStart fails on any host (without KVM
    // it fails earlier, creating the VM; either way with Firecracker's fault_message).
    let kernel = env.storage.path().join("not-a-kernel");
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(&kernel, bytes).unwrap();
    let vm = rds_runtime::VmSpec { kernel: Some(kernel), ..spec(&id, 256) };
    let err = rt.start(&vm).await.expect_err("no kernel in that file");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, RuntimeError::Vmm(_)), "{text}");
    assert!(text.contains("Firecracker refused InstanceStart: "), "{text}");
    assert!(text.contains("firecracker.log (tail)"), "Firecracker's log is quoted: {text}");
    assert_no_trace(&env, &id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_guest_that_never_calls_in_misses_its_deadline_and_leaves_nothing() {
    let found = require_kvm!();
    let env = Env::new(found, Duration::from_secs(8));
    let rt = std::sync::Arc::new(env.runtime());
    let id = new_id();
    let start = tokio::spawn({
        let (rt, vm) = (rt.clone(), spec(&id, 256));
        async move { rt.start(&vm).await }
    });
    // While it waits for the guest, look at it from the host.
    let processes = env.storage.path().join("vms").join(&id).join("processes.json");
    let mut running = None;
    for _ in 0..200 {
        if let (Ok(text), Ok(info)) = (std::fs::read(&processes), rt.client(&id).instance_info().await) {
            if info.state == "Running" {
                running = Some(serde_json::from_slice::<VmProcess>(&text).unwrap());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let record = running.expect("Firecracker accepted the whole configuration and started the VM");
    assert_confined(&env, &rt, &id, &record).await;
    match start.await.unwrap() {
        // A KVM that boots ordinary guests: the agent came up.
        Ok(handle) => {
            assert!(rds_runtime::qemu::kvm_boots_guests());
            rt.destroy(&id, Some(&handle)).await.unwrap();
        }
        Err(err) => {
            let text = err.to_string();
            assert!(matches!(err, RuntimeError::Boot(_)), "{text}");
            assert!(text.contains("(tail) ---"), "log tails quoted: {text}");
        }
    }
    assert_no_trace(&env, &id, Some((record.pid, record.start_time)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_paused_vm_restores_into_a_new_process_and_resumes() {
    let found = require_kvm!();
    let env = Env::new(found, Duration::from_secs(8));
    let rt = env.runtime();
    let (source, copy) = (new_id(), new_id());
    let handle = rt.launch(&spec(&source, 256), true).await.expect("launch");
    rt.pause(&source).await.expect("pause");
    assert_eq!(rt.client(&source).instance_info().await.unwrap().state, "Paused");
    assert_eq!(env.runtime().probe(&source, &handle).await, Liveness::Alive, "a paused VM is re-adopted");

    let dest = env.storage.path().join("snapshots").join("s1");
    let t = Instant::now();
    let snap = rt.create_snapshot(&source, &dest).await.expect("snapshot");
    eprintln!("snapshot create (full, 256 MiB): {:?}", t.elapsed());
    assert!(std::fs::metadata(snap.state()).unwrap().len() > 0);
    assert_eq!(std::fs::metadata(snap.memory()).unwrap().len(), 256 << 20);
    assert!(snap.overlay().is_file());
    rt.destroy(&source, Some(&handle)).await.expect("destroy the source");

    let t = Instant::now();
    let restored = rt.restore(&spec(&copy, 256), &snap, true).await.expect("restore");
    eprintln!("snapshot load + resume in a new process: {:?}", t.elapsed());
    assert_ne!(restored.pid, handle.pid);
    assert!(is_same_process_alive(restored.pid, restored.start_time));
    assert_eq!(rt.client(&copy).instance_info().await.unwrap().state, "Running");
    assert!(record(&restored).jailed);

    rt.destroy(&copy, Some(&restored)).await.expect("destroy the copy");
    assert_no_trace(&env, &copy, Some((restored.pid, restored.start_time)));
    assert_no_trace(&env, &source, Some((handle.pid, handle.start_time)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_that_does_not_power_off_gets_ctrl_alt_del_then_a_kill() {
    let found = require_kvm!();
    let env = Env::new(found, Duration::from_secs(8));
    let rt = env.runtime();
    let id = new_id();
    let handle = rt.launch(&spec(&id, 256), true).await.expect("launch");
    let stopping = Instant::now();
    rt.stop(&id, &handle).await.expect("stop");
    eprintln!("stop of a guest that does not power off took {:?}", stopping.elapsed());
    assert!(!is_same_process_alive(handle.pid, handle.start_time));
    let console = std::fs::read_to_string(rt.console_log(&id)).unwrap();
    if !rds_runtime::qemu::kvm_boots_guests() {
        // The guest never got far enough to answer: Ctrl+Alt+Del first, then the kill.
        let cad = console.find("sent Ctrl+Alt+Del").expect("Ctrl+Alt+Del was sent first");
        let killed = console.find("Firecracker was killed").expect("then the stop was forced");
        assert!(cad < killed, "{console}");
    }
    rt.destroy(&id, None).await.expect("destroy");
    assert_no_trace(&env, &id, Some((handle.pid, handle.start_time)));
}

#[test]
fn the_boot_probe_tells_whether_kvm_runs_the_guest_and_caches_its_verdict() {
    let ((fc, _), image) = require_env!();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("probe");
    let off = ["--no-seccomp".to_string()];
    let probe = || rds_runtime::firecracker::probe::kvm_boots_kernel(&fc, &off, &image.join("vmlinux"), &cache);
    let first = probe();
    eprintln!("boot probe: {first:?}");
    // Only a KVM of kvm_intel/kvm_amd runs an ordinary guest kernel.
    assert_eq!(first.is_ok(), rds_runtime::qemu::kvm_boots_guests(), "{first:?}");
    match rds_runtime::firecracker::kvm_api_ok() {
        // Without a usable /dev/kvm nothing boots and nothing is cached: the probe says why.
        Err(why) => assert_eq!(first, Err(why)),
        Ok(()) => {
            assert!(cache.is_file(), "the verdict is cached");
            assert_eq!(probe(), first, "and read back");
        }
    }
}

/// The agent end to end on firecracker: boots the image and runs a command in the guest. Needs a
/// KVM that boots ordinary guests (kvm_intel/kvm_amd), which this kind of machine lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_runs_code_in_the_guest() {
    let found = require_kvm!();
    if !rds_runtime::qemu::kvm_boots_guests() {
        rds_testkit::skip("no KVM that boots ordinary guests (kvm_intel/kvm_amd): the guest cannot run here");
        return;
    }
    let env = Env::new(found, Duration::from_secs(30));
    let rt = env.runtime();
    let id = new_id();
    let t = Instant::now();
    let handle = rt.start(&spec(&id, 256)).await.expect("boot");
    eprintln!("create -> agent ready: {:?}", t.elapsed());
    let out = common::exec(&rt, &id, "echo hello from $(hostname)").await;
    assert_eq!(out.exit_code, Some(0));
    assert!(out.stdout.starts_with("hello from vm-"), "{}", out.stdout);
    assert_eq!(rt.probe(&id, &handle).await, Liveness::Alive);
    rt.stop(&id, &handle).await.expect("stop");
    let handle = rt.start(&spec(&id, 256)).await.expect("restart keeps the disk");
    rt.destroy(&id, Some(&handle)).await.expect("destroy");
    assert_no_trace(&env, &id, Some((handle.pid, handle.start_time)));
}
