//! The client and the jailer's command line against the real Firecracker v1.16.1 binaries
//! (`<workspace>/../shared/firecracker/bin`, or `FIRECRACKER_BIN`/`JAILER_BIN`), as root.
//!
//! Firecracker runs with `--no-seccomp`: these binaries are gnu builds with no filter compiled in.
//! On a PVM host the guest kernel makes no progress and Firecracker exits after ~20 s, so VMs
//! are paused soon after `InstanceStart`; nothing here waits for a guest.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rds_firecracker::jailer::{binary_version, CgroupVersion, Jail};
use rds_firecracker::*;

/// How long a just-spawned Firecracker gets to answer on its API socket.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// The unprivileged uid/gid the jailed Firecracker runs as.
const JAIL_ID: u32 = 123456;
/// Guest memory of the test VMs.
const MEM_MIB: u32 = 128;

/// `FIRECRACKER_BIN`/`JAILER_BIN`, else the binaries in `shared/` beside the repository.
fn binary(env: &str, name: &str) -> PathBuf {
    rds_testkit::firecracker_program(env, name).unwrap_or_else(|_| PathBuf::from(name))
}

/// The Firecracker binary, or why these tests cannot run here (after recording the skip).
fn firecracker_or_skip() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        rds_testkit::skip("needs root (Firecracker needs /dev/kvm; the jailer chroots, mknods and sets cgroups)");
        return None;
    }
    let bin = binary("FIRECRACKER_BIN", "firecracker");
    if !bin.is_file() {
        rds_testkit::skip(format!("no Firecracker binary at {} (set FIRECRACKER_BIN)", bin.display()));
        return None;
    }
    Some(bin)
}

/// A name no other test process uses: prefix, pid, nanoseconds.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A Firecracker process this test spawned; killed and reaped on drop, even when the test fails.
struct Firecracker {
    child: Child,
    client: Client,
    log: PathBuf,
}

impl Firecracker {
    /// Spawns `bin --api-sock <dir>/<name>.sock --id <name> --no-seccomp`, output to `<dir>/<name>.out`.
    fn spawn(bin: &Path, dir: &Path, name: &str) -> Firecracker {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.out"));
        let out = std::fs::File::create(&log).expect("create the output file");
        let child = Command::new(bin)
            .arg("--api-sock")
            .arg(&socket)
            .args(["--id", name, "--no-seccomp"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the output file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Firecracker { child, client: Client::new(socket), log }
    }

    /// What the process printed so far, for failure messages.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&self) -> InstanceInfo {
        match self.client.wait_ready(READY_WITHIN).await {
            Ok(info) => info,
            Err(e) => panic!("Firecracker's API did not come up: {e}; output:\n{}", self.output()),
        }
    }
}

impl Drop for Firecracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An empty file (a "disk" or a log target) at `dir/name`.
fn file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).and_then(|f| f.set_len(size)).expect("create a file");
    path
}

fn s(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test]
async fn configuration_is_accepted_and_a_missing_drive_file_is_a_fault() {
    let Some(bin) = firecracker_or_skip() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let version = binary_version(&bin).await.expect("firecracker --version");
    assert!(version.starts_with("1.16"), "firecracker --version: {version}");

    let spawned = Instant::now();
    let fc = Firecracker::spawn(&bin, tmp.path(), "rds-cfg");
    let info = fc.wait_ready().await;
    eprintln!("measured: spawn -> API ready {:?}", spawned.elapsed());
    assert_eq!(info.state, STATE_NOT_STARTED);
    assert_eq!(info.id, "rds-cfg");
    assert_eq!(fc.client.instance_info().await.expect("GET /"), info);
    let api_version = fc.client.version().await.expect("GET /version");
    assert!(api_version.starts_with("1.16"), "GET /version: {api_version}");
    assert_eq!(api_version, version);

    let configure = Instant::now();
    let c = &fc.client;
    let fc_log = file(tmp.path(), "firecracker.log", 0);
    let metrics = file(tmp.path(), "metrics.json", 0);
    let console = file(tmp.path(), "console.log", 0);
    let logger = Logger {
        log_path: Some(s(&fc_log)),
        level: Some("Debug".into()),
        show_level: Some(true),
        show_log_origin: Some(false),
        module: None,
    };
    c.put_logger(&logger).await.expect("PUT /logger");
    c.put_metrics(&Metrics { metrics_path: s(&metrics) }).await.expect("PUT /metrics");
    let machine = MachineConfiguration {
        vcpu_count: 1,
        mem_size_mib: MEM_MIB,
        smt: Some(false),
        track_dirty_pages: Some(false),
        ..Default::default()
    };
    c.put_machine_config(&machine).await.expect("PUT /machine-config");
    let kernel = file(tmp.path(), "vmlinux", 4096);
    let boot = BootSource {
        kernel_image_path: s(&kernel),
        boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
        initrd_path: None,
    };
    c.put_boot_source(&boot).await.expect("PUT /boot-source");
    let rootfs = file(tmp.path(), "rootfs.ext4", 1 << 20);
    let root = Drive {
        drive_id: "rootfs".into(),
        path_on_host: s(&rootfs),
        is_root_device: true,
        is_read_only: Some(true),
        ..Default::default()
    };
    c.put_drive(&root).await.expect("PUT /drives/rootfs");
    let overlay = file(tmp.path(), "overlay.ext4", 1 << 20);
    let data = Drive {
        drive_id: "overlay".into(),
        path_on_host: s(&overlay),
        is_root_device: false,
        is_read_only: Some(false),
        cache_type: Some("Writeback".into()),
        io_engine: Some("Sync".into()),
        ..Default::default()
    };
    c.put_drive(&data).await.expect("PUT /drives/overlay");
    let vsock = Vsock { guest_cid: 3, uds_path: s(&tmp.path().join("v.sock")), vsock_id: None };
    c.put_vsock(&vsock).await.expect("PUT /vsock");
    c.put_serial(&SerialDevice { serial_out_path: Some(s(&console)) }).await.expect("PUT /serial");
    eprintln!(
        "measured: configure (logger, metrics, machine, boot, 2 drives, vsock, serial) {:?}",
        configure.elapsed()
    );

    let applied = c.machine_config().await.expect("GET /machine-config");
    assert_eq!((applied.vcpu_count, applied.mem_size_mib), (1, MEM_MIB));
    // Actions need a started VM: Firecracker refuses them with a fault, and the client says so.
    let early = c.flush_metrics().await.expect_err("FlushMetrics before InstanceStart");
    assert_eq!(
        (early.status(), early.fault_message().is_some_and(|m| m.contains("before starting"))),
        (Some(400), true)
    );
    assert!(
        std::fs::read_to_string(&fc_log).expect("read log").contains("/drives/rootfs"),
        "the debug log names requests"
    );

    let missing = tmp.path().join("missing.ext4");
    let bad = Drive { drive_id: "missing".into(), path_on_host: s(&missing), is_root_device: false, ..data.clone() };
    match c.put_drive(&bad).await {
        Err(Error::Fault { method, path, status, fault_message }) => {
            assert_eq!((method, path.as_str(), status), ("PUT", "/drives/missing", 400));
            assert!(
                fault_message.contains(&s(&missing)) || fault_message.contains("No such file"),
                "fault_message: {fault_message}"
            );
        }
        other => panic!("a drive without its file must be a 400 fault, got {other:?}"),
    }
    let err = c.put_machine_config(&MachineConfiguration { vcpu_count: 0, ..machine }).await.expect_err("0 vCPUs");
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.fault_message().is_some_and(|m| !m.is_empty()), "{err}");
    // A refused request leaves the process as it was.
    assert_eq!(c.instance_info().await.expect("GET /").state, STATE_NOT_STARTED);
}

#[tokio::test]
async fn vm_actions_need_a_started_vm_and_a_failed_snapshot_load_ends_the_process() {
    let Some(bin) = firecracker_or_skip() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let fc = Firecracker::spawn(&bin, tmp.path(), "rds-early");
    fc.wait_ready().await;
    let before_start =
        |e: Error| e.status() == Some(400) && e.fault_message().is_some_and(|m| m.contains("before starting"));
    let paused = fc.client.pause().await.expect_err("pause before InstanceStart");
    assert!(before_start(paused), "pause before start");
    let resumed = fc.client.resume().await.expect_err("resume before InstanceStart");
    assert!(before_start(resumed), "resume before start");
    let ctrl_alt_del = fc.client.send_ctrl_alt_del().await.expect_err("SendCtrlAltDel before InstanceStart");
    assert!(before_start(ctrl_alt_del), "SendCtrlAltDel before start");
    let create = SnapshotCreateParams {
        snapshot_type: Some(SnapshotType::Full),
        snapshot_path: s(&tmp.path().join("vm.snap")),
        mem_file_path: s(&tmp.path().join("vm.mem")),
    };
    let created = fc.client.create_snapshot(&create).await.expect_err("snapshot before InstanceStart");
    assert!(before_start(created), "snapshot before start");
    assert!(!tmp.path().join("vm.snap").exists());

    // Every field of a load request is understood: the refusal is about the missing file.
    let mut fresh = Firecracker::spawn(&bin, tmp.path(), "rds-load");
    fresh.wait_ready().await;
    let missing = tmp.path().join("missing.snap");
    let load = SnapshotLoadParams {
        snapshot_path: s(&missing),
        mem_backend: Some(MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: s(&tmp.path().join("missing.mem")),
        }),
        track_dirty_pages: Some(false),
        resume_vm: Some(true),
        network_overrides: Some(vec![]),
        vsock_override: Some(VsockOverride { uds_path: s(&tmp.path().join("v2.sock")) }),
        ..Default::default()
    };
    let err = fresh.client.load_snapshot(&load).await.expect_err("no snapshot file");
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.fault_message().is_some_and(|m| m.contains("No such file")), "{err}");
    // Firecracker does not survive a failed load: the process exits, the socket stops answering.
    let deadline = Instant::now() + READY_WITHIN;
    let status = loop {
        if let Some(status) = fresh.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "Firecracker still runs after a failed snapshot load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("after a failed snapshot load Firecracker exited: {status}");
    assert!(!status.success(), "{status}");
    let gone = fresh.client.instance_info().await.expect_err("nobody answers");
    assert!(matches!(gone, Error::Connect { .. }), "{gone:?}");
}

/// A guest kernel Firecracker can load: `RDS_TEST_KERNEL`, the newest cached `vmlinux`, or a
/// freshly built guest image's.
fn kernel_or_skip() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RDS_TEST_KERNEL") {
        return Some(PathBuf::from(path));
    }
    let cache = PathBuf::from(std::env::var("RDS_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/rds-image".into()));
    for prefix in ["kernel-", "image-"] {
        if let Some(found) = newest_vmlinux(&cache, prefix) {
            return Some(found);
        }
    }
    if std::env::var("RDS_SKIP_IMAGE_BUILD").as_deref() == Ok("1") {
        rds_testkit::skip("no guest kernel (RDS_TEST_KERNEL unset, image cache empty, RDS_SKIP_IMAGE_BUILD=1)");
        return None;
    }
    let agent = match std::env::var_os("RDS_AGENT_BIN") {
        Some(path) => PathBuf::from(path),
        // Test binaries live in target/<profile>/deps; the agent in target/<profile>.
        None => {
            std::env::current_exe().expect("current exe").parent().and_then(Path::parent).unwrap().join("rds-agent")
        }
    };
    if !agent.is_file() {
        rds_testkit::skip(format!("no guest kernel cached and no agent at {} to build an image", agent.display()));
        return None;
    }
    let out = tempfile::Builder::new().prefix("rds-fc-image-").tempdir_in("/var/tmp").expect("tempdir");
    let options = rds_image::BuildOptions {
        out_dir: out.path().to_path_buf(),
        kernel: rds_image::KernelChoice::Debian,
        agent_bin: agent,
        cache_dir: cache.clone(),
        debian_suite: "bookworm".into(),
        mirror: None,
    };
    // A failed build is a failure, not a reason to skip.
    rds_image::build(&options, &mut |line| eprintln!("image: {line}")).unwrap_or_else(|e| panic!("image build: {e}"));
    Some(newest_vmlinux(&cache, "kernel-").expect("the image build caches its kernel"))
}

/// `<cache>/<prefix>*/vmlinux` of the most recently finished stage.
fn newest_vmlinux(cache: &Path, prefix: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(cache).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter(|e| e.path().join(".complete").is_file() && e.path().join("vmlinux").is_file())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path().join("vmlinux"))
}

#[tokio::test]
async fn a_started_vm_pauses_resumes_and_restores_from_a_full_snapshot() {
    let Some(bin) = firecracker_or_skip() else { return };
    if !Path::new("/dev/kvm").exists() {
        rds_testkit::skip("no /dev/kvm: InstanceStart needs KVM");
        return;
    }
    let Some(kernel) = kernel_or_skip() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");

    let spawned = Instant::now();
    let fc = Firecracker::spawn(&bin, tmp.path(), "rds-snap");
    fc.wait_ready().await;
    eprintln!("measured: spawn -> API ready {:?}", spawned.elapsed());
    let c = &fc.client;
    let configure = Instant::now();
    let fc_log = file(tmp.path(), "firecracker.log", 0);
    c.put_logger(&Logger { log_path: Some(s(&fc_log)), level: Some("Info".into()), ..Default::default() })
        .await
        .expect("PUT /logger");
    let metrics = file(tmp.path(), "metrics.json", 0);
    c.put_metrics(&Metrics { metrics_path: s(&metrics) }).await.expect("PUT /metrics");
    c.put_machine_config(&MachineConfiguration { vcpu_count: 1, mem_size_mib: MEM_MIB, ..Default::default() })
        .await
        .expect("PUT /machine-config");
    let boot = BootSource {
        kernel_image_path: s(&kernel),
        boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off".into()),
        initrd_path: None,
    };
    c.put_boot_source(&boot).await.expect("PUT /boot-source");
    let rootfs = file(tmp.path(), "rootfs.ext4", 1 << 20);
    let drive = Drive {
        drive_id: "rootfs".into(),
        path_on_host: s(&rootfs),
        is_root_device: true,
        is_read_only: Some(true),
        ..Default::default()
    };
    c.put_drive(&drive).await.expect("PUT /drives/rootfs");
    c.put_vsock(&Vsock { guest_cid: 3, uds_path: s(&tmp.path().join("v.sock")), vsock_id: None })
        .await
        .expect("PUT /vsock");
    c.put_serial(&SerialDevice { serial_out_path: Some(s(&file(tmp.path(), "console.log", 0))) })
        .await
        .expect("PUT /serial");
    eprintln!("measured: configure {:?}", configure.elapsed());

    let started = Instant::now();
    let detail = |e: Error| {
        format!("{e}; output:\n{}\nlog:\n{}", fc.output(), std::fs::read_to_string(&fc_log).unwrap_or_default())
    };
    c.start().await.unwrap_or_else(|e| panic!("InstanceStart: {}", detail(e)));
    // Pause at once: on a PVM host the guest makes no progress and Firecracker exits after ~20 s.
    c.pause().await.unwrap_or_else(|e| panic!("pause: {}", detail(e)));
    eprintln!("measured: InstanceStart + pause {:?}", started.elapsed());
    c.flush_metrics().await.expect("FlushMetrics");
    let written = std::fs::read_to_string(&metrics).expect("read metrics");
    assert!(written.contains("\"api_server\""), "metrics after FlushMetrics: {written}");
    assert_eq!(c.instance_info().await.expect("GET /").state, STATE_PAUSED);
    c.resume().await.expect("resume");
    assert_eq!(c.instance_info().await.expect("GET /").state, STATE_RUNNING);
    c.pause().await.expect("pause again");
    assert_eq!(c.instance_info().await.expect("GET /").state, STATE_PAUSED);
    // Configuration is refused once started: Firecracker says so.
    let late = c.put_vsock(&Vsock { guest_cid: 4, uds_path: s(&tmp.path().join("late.sock")), vsock_id: None }).await;
    assert_eq!(late.as_ref().err().and_then(Error::status), Some(400), "{late:?}");

    let snapshot = tmp.path().join("vm.snap");
    let memory = tmp.path().join("vm.mem");
    let create = SnapshotCreateParams {
        snapshot_type: Some(SnapshotType::Full),
        snapshot_path: s(&snapshot),
        mem_file_path: s(&memory),
    };
    let creating = Instant::now();
    c.create_snapshot(&create).await.unwrap_or_else(|e| panic!("snapshot create: {}", detail(e)));
    eprintln!("measured: snapshot create (full, {MEM_MIB} MiB) {:?}", creating.elapsed());
    assert!(std::fs::metadata(&snapshot).expect("snapshot file").len() > 0);
    let memory_len = std::fs::metadata(&memory).expect("memory file").len();
    assert!(memory_len >= u64::from(MEM_MIB) << 20, "a full snapshot holds all guest memory: {memory_len} bytes");
    assert_eq!(c.instance_info().await.expect("GET /").state, STATE_PAUSED, "still paused after the snapshot");

    let spawned = Instant::now();
    let restored = Firecracker::spawn(&bin, tmp.path(), "rds-restored");
    restored.wait_ready().await;
    eprintln!("measured: spawn -> API ready (second process) {:?}", spawned.elapsed());
    let load = SnapshotLoadParams {
        snapshot_path: s(&snapshot),
        mem_backend: Some(MemoryBackend { backend_type: MemoryBackendType::File, backend_path: s(&memory) }),
        resume_vm: Some(true),
        // The first process still holds its vsock socket.
        vsock_override: Some(VsockOverride { uds_path: s(&tmp.path().join("v2.sock")) }),
        ..Default::default()
    };
    let loading = Instant::now();
    restored
        .client
        .load_snapshot(&load)
        .await
        .unwrap_or_else(|e| panic!("snapshot load: {e}; output:\n{}", restored.output()));
    eprintln!("measured: snapshot load + resume {:?}", loading.elapsed());
    assert_eq!(restored.client.instance_info().await.expect("GET / restored").state, STATE_RUNNING);
    assert!(tmp.path().join("v2.sock").exists(), "the restored vsock listens on the override path");
    restored.client.pause().await.expect("pause the restored VM");
    assert_eq!(restored.client.instance_info().await.expect("GET / restored").state, STATE_PAUSED);
    // A second load into a process that already has a VM is refused.
    let again = restored.client.load_snapshot(&load).await;
    assert_eq!(again.as_ref().err().and_then(Error::status), Some(400), "{again:?}");
}

/// A network namespace (`ip netns add`), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(name: String) -> NetNs {
        let status = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip");
        assert!(status.success(), "ip netns add {name}");
        NetNs(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// Cgroup directories removed on drop, in order (leaves first); waits for them to empty.
struct CgroupDirs(Vec<PathBuf>);

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            // A killed process leaves its cgroup a moment after the signal.
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The jailed Firecracker (pid from the jail's pid file); SIGKILLed on drop.
struct Jailed(Jail);

impl Drop for Jailed {
    fn drop(&mut self) {
        if let Ok(pid) = self.0.read_pid() {
            // SAFETY: kill(2) with a pid read from the jail this test created; no memory involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// This process's cgroup in the hierarchy holding `controller` (v1) or the unified one (v2).
fn own_cgroup(version: CgroupVersion, controller: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = match version {
                CgroupVersion::V1 => controllers.split(',').any(|c| c == controller),
                CgroupVersion::V2 => controllers.is_empty(),
            };
            wanted.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in /proc/self/cgroup:\n{text}"))
}

/// The `Uid:`/`Gid:` line of /proc/<pid>/status: real, effective, saved, fs ids.
fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in status"));
    line[key.len()..].split_whitespace().map(|v| v.parse().expect("numeric id")).collect()
}

#[tokio::test]
async fn the_jailer_confines_firecracker_to_its_chroot_uid_netns_and_cgroup() {
    let Some(firecracker) = firecracker_or_skip() else { return };
    let jailer = binary("JAILER_BIN", "jailer");
    if !jailer.is_file() {
        rds_testkit::skip(format!("no jailer binary at {} (set JAILER_BIN)", jailer.display()));
        return;
    }
    let version = binary_version(&jailer).await.expect("jailer --version");
    assert!(version.starts_with("1.16"), "jailer --version: {version}");

    let name = unique("rds-fct");
    let netns = NetNs::new(name.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    let cgroup_version = CgroupVersion::of_host();
    let (limit_file, controller) = match cgroup_version {
        CgroupVersion::V1 => ("memory.limit_in_bytes", "memory"),
        CgroupVersion::V2 => ("memory.max", ""),
    };
    let parent = match cgroup_version {
        // Beneath this process's own memory cgroup: wherever the test runs, it may create there.
        CgroupVersion::V1 => format!("{}/{name}", own_cgroup(cgroup_version, controller).trim_matches('/')),
        // On v2 the jailer enables the controllers in every ancestor's subtree_control, which a
        // cgroup holding processes (this test's own) refuses; the hierarchy's root is exempt.
        CgroupVersion::V2 => name.clone(),
    };
    let parent = parent.trim_start_matches('/').to_string();
    let limit: u64 = 256 << 20;
    let jail = Jail {
        id: name.clone(),
        exec_file: firecracker.clone(),
        uid: JAIL_ID,
        gid: JAIL_ID,
        chroot_base: tmp.path().to_path_buf(),
        cgroup_version,
        parent_cgroup: Some(parent.clone()),
        cgroups: vec![(limit_file.into(), limit.to_string())],
        netns: Some(netns.path()),
        daemonize: true,
        new_pid_ns: false,
        resource_limits: vec![("no-file".into(), 1024)],
    };
    jail.validate().expect("a valid jail");
    let leaf_dirs = jail.cgroup_dirs().expect("read /proc/self/mounts");
    assert_eq!(leaf_dirs.len(), 1, "one memory cgroup: {leaf_dirs:?}");
    let parent_dir = leaf_dirs[0].parent().expect("leaf has a parent").to_path_buf();
    let _cgroups = CgroupDirs(vec![leaf_dirs[0].clone(), parent_dir]);
    let jailed = Jailed(jail.clone());

    // The VM's files, placed before the jailer runs: shared ones (root's, world-readable) hard
    // linked, the per-VM overlay made the jail's, and one Firecracker must not be able to open.
    let host_files = tempfile::tempdir().expect("tempdir");
    let kernel = file(host_files.path(), "vmlinux", 4096);
    let rootfs = file(host_files.path(), "rootfs.ext4", 1 << 20);
    let overlay_file = file(host_files.path(), "overlay.ext4", 1 << 20);
    let secret = file(host_files.path(), "secret.ext4", 1 << 20);
    for path in [&kernel, &rootfs] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    }
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    jail.link_in(&kernel, "/vmlinux", false).expect("link the kernel");
    jail.link_in(&rootfs, "/rootfs.ext4", false).expect("link the rootfs");
    jail.link_in(&overlay_file, "/disks/overlay.ext4", true).expect("place the overlay");
    jail.link_in(&secret, "/disks/secret.ext4", false).expect("link the root-only file");

    let fc_args: Vec<OsString> = ["--api-sock", "/run/api.sock", "--no-seccomp"].map(OsString::from).to_vec();
    let spawned = Instant::now();
    let out = tmp.path().join("jailer.out");
    let output = std::fs::File::create(&out).expect("create jailer output");
    let status = Command::new(&jailer)
        .args(jail.args(&fc_args))
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("dup"))
        .stderr(output)
        .status()
        .expect("run the jailer");
    let jailer_output = || std::fs::read_to_string(&out).unwrap_or_default();
    // With --daemonize the jailer forks Firecracker off and exits.
    assert!(status.success(), "jailer failed ({status}):\n{}", jailer_output());
    let client = Client::new(jail.host_path("/run/api.sock"));
    let info = client
        .wait_ready(READY_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("jailed Firecracker's API: {e}; jailer output:\n{}", jailer_output()));
    eprintln!("measured: jailer spawn -> API ready {:?}", spawned.elapsed());
    assert_eq!(info.id, name, "the jailer passes --id to Firecracker");
    assert_eq!(info.state, STATE_NOT_STARTED);

    let pid = jail.read_pid().expect("the jailer's pid file");
    assert!(is_alive(pid), "pid {pid} from {} is not running", jail.pid_file().display());
    let inode = |path: &Path| std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).ino();
    let copy = jail.host_path(&format!("/{}", jail.exec_file_name()));
    assert_eq!(
        inode(Path::new(&format!("/proc/{pid}/exe"))),
        inode(&copy),
        "Firecracker runs the copy inside the chroot"
    );
    assert_ne!(inode(&copy), inode(&firecracker), "a copy, not a link");
    assert_eq!(status_ids(pid, "Uid:"), [JAIL_ID; 4], "uid of {pid}");
    assert_eq!(status_ids(pid, "Gid:"), [JAIL_ID; 4], "gid of {pid}");
    // The jailer pivot_roots in a new mount namespace, so `readlink /proc/<pid>/root` says `/`;
    // following the link reaches the jail's root directory itself.
    let dev_ino = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        (meta.dev(), meta.ino())
    };
    assert_eq!(dev_ino(Path::new(&format!("/proc/{pid}/root"))), dev_ino(&jail.root()), "root of {pid}");
    assert_ne!(inode(Path::new(&format!("/proc/{pid}/ns/mnt"))), inode(Path::new("/proc/self/ns/mnt")));
    let netns_inode = inode(&netns.path());
    assert_eq!(inode(Path::new(&format!("/proc/{pid}/ns/net"))), netns_inode, "netns of {pid}");
    assert_ne!(inode(Path::new("/proc/self/ns/net")), netns_inode);

    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    let expected = format!("/{parent}/{name}");
    let member = cgroup.lines().any(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let right_hierarchy = match cgroup_version {
            CgroupVersion::V1 => controllers.split(',').any(|c| c == controller),
            CgroupVersion::V2 => controllers.is_empty(),
        };
        right_hierarchy && path == expected
    });
    assert!(member, "{pid} is not in {expected}:\n{cgroup}");
    let set = std::fs::read_to_string(leaf_dirs[0].join(limit_file)).expect("read the limit");
    assert_eq!(set.trim(), limit.to_string(), "{limit_file} of {}", leaf_dirs[0].display());

    // What the jailer prepares in the chroot: devices and the root owned by the jail's ids.
    for inside in ["/", "/dev/kvm", "/dev/net/tun", "/run/api.sock"] {
        let meta = std::fs::metadata(jail.host_path(inside)).unwrap_or_else(|e| panic!("{inside} in the jail: {e}"));
        assert_eq!((meta.uid(), meta.gid()), (JAIL_ID, JAIL_ID), "owner of {inside}");
    }

    // Configuration with paths inside the jail, as the unprivileged uid.
    let boot = BootSource { kernel_image_path: "/vmlinux".into(), boot_args: None, initrd_path: None };
    client.put_boot_source(&boot).await.expect("PUT /boot-source inside the jail");
    let rootfs = Drive {
        drive_id: "rootfs".into(),
        path_on_host: "/rootfs.ext4".into(),
        is_root_device: true,
        is_read_only: Some(true),
        ..Default::default()
    };
    client.put_drive(&rootfs).await.expect("PUT /drives/rootfs inside the jail");
    let overlay = Drive {
        drive_id: "overlay".into(),
        path_on_host: "/disks/overlay.ext4".into(),
        is_root_device: false,
        is_read_only: Some(false),
        ..Default::default()
    };
    client.put_drive(&overlay).await.expect("PUT /drives/overlay (read-write) inside the jail");
    client
        .put_vsock(&Vsock { guest_cid: 3, uds_path: "/run/v.sock".into(), vsock_id: None })
        .await
        .expect("PUT /vsock inside the jail");
    let vsock = std::fs::metadata(jail.host_path("/run/v.sock")).expect("Firecracker binds the vsock socket at once");
    assert_eq!(vsock.uid(), JAIL_ID, "the vsock socket is the jailed uid's");
    let secret = Drive { drive_id: "secret".into(), path_on_host: "/disks/secret.ext4".into(), ..overlay.clone() };
    let refused = client.put_drive(&secret).await.expect_err("a root-only file is out of the jailed uid's reach");
    assert_eq!(refused.status(), Some(400), "{refused}");
    assert!(refused.fault_message().is_some_and(|m| m.contains("ermission denied")), "{refused}");
    let outside = Drive { drive_id: "outside".into(), path_on_host: s(&overlay_file), ..overlay };
    let refused = client.put_drive(&outside).await.expect_err("host paths do not exist in the jail");
    assert_eq!(refused.status(), Some(400), "{refused}");

    drop(jailed);
    assert!(!is_alive(pid), "the jailed Firecracker survived SIGKILL");
    // A killed process leaves its cgroup a moment after it is reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = jail.remove() {
        assert!(Instant::now() < deadline, "removing the jail: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!jail.jail_dir().exists() && !leaf_dirs[0].exists(), "the jail and its cgroup are gone");
    assert!(leaf_dirs[0].parent().is_some_and(Path::is_dir), "the parent cgroup is the caller's, left in place");
}
