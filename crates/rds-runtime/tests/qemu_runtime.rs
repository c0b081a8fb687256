//! End-to-end tests of the qemu runtime: the real guest image (Debian cloud kernel, initramfs,
//! `rds-agent` as PID 1) booted under QEMU `microvm` (KVM if it can run a guest, else TCG), driven
//! through the `Runtime` trait and the agent's HTTP API over virtio-vsock. Need root, QEMU and
//! `vhost-device-vsock`; the first two tests record a skip (`rds_testkit::skip`) otherwise, the stop/start
//! test fails with the reason.
//!
//! The image is built (or taken from the cache, `$RDS_IMAGE_CACHE`, default `/var/cache/rds-image`)
//! from `$RDS_AGENT_BIN`, else `<workspace>/target/debug/rds-agent`. QEMU boots are slow under
//! TCG, so each test shares one VM across its assertions.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::BodyExt;
use rds_proto::{Language, RunRequest, RunResult, AGENT_VSOCK_PORT, BRIDGE_VSOCK_PORT, GUEST_BRIDGE_SOCKET};
use rds_runtime::process::is_same_process_alive;
use rds_runtime::qemu::{QemuConfig, QemuRuntime, GUEST_CID};
use rds_runtime::{Liveness, Runtime, SnapshotKind, VmHandle};
use tokio::io::AsyncReadExt;

use common::{agent, exec, new_id, spec, CALL_LIMIT};

/// The image directory (vmlinuz, initrd.img, rootfs.ext4), or why these tests cannot run.
fn image_dir() -> Result<PathBuf, String> {
    if !on_path("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into());
    }
    common::guest_image()
}

fn on_path(program: &str) -> bool {
    rds_host::find_program(program, &[rds_host::cargo_install_dir()]).is_some()
}

macro_rules! require_env {
    () => {
        match image_dir() {
            Ok(dir) => dir,
            Err(reason) => {
                rds_testkit::skip(reason);
                return;
            }
        }
    };
}

/// A private storage root and a runtime over it; anything a failed test left is destroyed on drop.
struct Env {
    storage: tempfile::TempDir,
    image: PathBuf,
    rt: Option<QemuRuntime>,
}

impl Env {
    fn new(image: PathBuf) -> Self {
        let storage = tempfile::Builder::new().prefix("rds-qemu-test-").tempdir_in("/var/tmp").unwrap();
        let mut env = Env { storage, image, rt: None };
        env.rt = Some(env.runtime());
        env
    }

    fn runtime(&self) -> QemuRuntime {
        let mut cfg = QemuConfig::from_image_dir(self.storage.path().to_path_buf(), &self.image);
        cfg.boot_timeout = Duration::from_secs(90);
        cfg.relay_bin = common::agent_bin().expect("rds-agent");
        QemuRuntime::new(cfg).expect("qemu runtime")
    }

    fn rt(&self) -> &QemuRuntime {
        self.rt.as_ref().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let rt = self.rt.take().unwrap_or_else(|| self.runtime());
        // A fresh thread: tests drop `Env` inside their own tokio runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(tokio_rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    tokio_rt.block_on(rt.remove_orphans(&HashSet::new()));
                }
            });
        });
    }
}

async fn run(rt: &QemuRuntime, id: &str, language: Language, code: &str) -> RunResult {
    let request = RunRequest { code: Some(code.into()), ..RunRequest::default() };
    agent(rt, id).run(language, &request, CALL_LIMIT).await.unwrap_or_else(|e| panic!("{}: {e}", language.route()))
}

/// Asserts VM `id` left nothing behind: no directory (sockets, overlay, logs) and no process.
fn assert_no_trace(rt: &QemuRuntime, id: &str, handle: &VmHandle) {
    assert!(!rt.vm_dir(id).exists(), "VM dir {} still exists", rt.vm_dir(id).display());
    // A zombie awaiting its reaper is gone for our purposes: it holds no resources.
    assert!(!is_same_process_alive(handle.pid, handle.start_time), "QEMU {} still runs", handle.pid);
    let backend =
        (handle.extra["backend_pid"].as_i64().unwrap() as i32, handle.extra["backend_start_time"].as_u64().unwrap());
    assert!(!is_same_process_alive(backend.0, backend.1), "the agent channel relay {} still runs", backend.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_vm_boots_the_image_runs_code_keeps_workspace_and_is_readopted() {
    let image = require_env!();
    let mut env = Env::new(image);
    let id = new_id();
    let handle = env.rt().start(&spec(&id, 512)).await.unwrap_or_else(|e| panic!("boot failed: {e}"));
    let accel = handle.extra["accel"].as_str().unwrap().to_string();
    assert!(accel == "kvm" || accel == "tcg", "{:?}", handle.extra);
    println!("booted under {accel}");
    let rt = env.rt();

    // The Debian cloud kernel, user code as uid 1000, the requested hostname.
    let r = exec(rt, &id, "uname -r; id -u; hostname").await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].ends_with("-cloud-amd64"), "{r:?}");
    assert_eq!(lines[1..], ["1000", &format!("vm-{}", &id[..8])], "{r:?}");

    let ts = run(rt, &id, Language::Ts, "const n: number = 6 * 7; console.log(JSON.stringify({ n }));").await;
    assert_eq!(ts.exit_code, Some(0), "{ts:?}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(ts.stdout.trim()).unwrap(), serde_json::json!({ "n": 42 }));
    let py = run(rt, &id, Language::Python, "import json; print(json.dumps({'sum': sum(range(10))}))").await;
    assert_eq!(py.exit_code, Some(0), "{py:?}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(py.stdout.trim()).unwrap(), serde_json::json!({ "sum": 45 }));

    // Upload a tar into /workspace, see it from a command, download it back.
    agent(rt, &id)
        .upload("up", rds_testkit::tar_gz(&[("hello.txt", b"uploaded bytes\n")]), CALL_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("upload: {e}"));
    let r = exec(rt, &id, "cat /workspace/up/hello.txt; stat -c %u /workspace/up/hello.txt /workspace").await;
    assert_eq!(r.stdout, "uploaded bytes\n1000\n1000\n", "{r:?}");
    let archive = agent(rt, &id).download("up", CALL_LIMIT).await.unwrap_or_else(|e| panic!("download: {e}"));
    let files = rds_testkit::untar_gz(&archive.collect().await.unwrap().to_bytes());
    assert!(files.iter().any(|(p, c)| p.ends_with("hello.txt") && c == b"uploaded bytes\n"), "{files:?}");

    // Stop keeps the overlay disk (and so /workspace); start boots the same disk again.
    exec(rt, &id, "echo kept > /workspace/note").await;
    rt.stop(&id, &handle).await.unwrap();
    assert!(matches!(rt.probe(&id, &handle).await, Liveness::Dead(_)), "a stopped VM must probe Dead");
    assert!(!rt.agent_socket(&id).exists(), "stop left the agent socket");
    assert!(rt.vm_dir(&id).join("overlay.ext4").is_file(), "stop removed the overlay disk");
    let handle = rt.start(&spec(&id, 512)).await.unwrap();
    let r = exec(rt, &id, "cat /workspace/note /workspace/up/hello.txt").await;
    assert_eq!(r.stdout, "kept\nuploaded bytes\n", "{r:?}");

    // A manager restart: the runtime value goes away, the VM must not; the handle re-adopts it.
    let persisted = serde_json::to_string(&handle).unwrap();
    drop(env.rt.take());
    env.rt = Some(env.runtime());
    let rt = env.rt();
    let handle: VmHandle = serde_json::from_str(&persisted).unwrap();
    assert_eq!(rt.probe(&id, &handle).await, Liveness::Alive);
    assert_eq!(exec(rt, &id, "echo again").await.stdout, "again\n");
    let impostor = VmHandle { start_time: handle.start_time + 1, ..handle.clone() };
    assert!(matches!(rt.probe(&id, &impostor).await, Liveness::Dead(_)), "a wrong start time must be Dead");

    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_user_code_cannot_reach_the_agent_and_reaches_the_host_only_through_the_vm_socket() {
    let image = require_env!();
    let env = Env::new(image);
    let rt = env.rt();
    let id = new_id();
    let handle = rt.start(&spec(&id, 512)).await.unwrap_or_else(|e| panic!("boot failed: {e}"));

    // From uid 1000: the agent channel's port device is root-only, and there is no vsock device
    // at all (the agent port on the guest's own CID, on CID 1 and on CID 2 are all unreachable).
    let probe = format!(
        r#"python3 - <<'EOF'
import glob, os, socket
ports = sorted(glob.glob("/dev/vport*"))
print("ports", len(ports))
for dev in ports:
    try:
        os.close(os.open(dev, os.O_RDWR))
        print(dev, "OPENED")
    except OSError as e:
        print(dev, "denied", e.errno)
for cid in ({GUEST_CID}, 1, 2):
    try:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((cid, {AGENT_VSOCK_PORT}))
        print(cid, "CONNECTED")
    except OSError as e:
        print(cid, "refused", e.errno)
EOF"#
    );
    let r = exec(rt, &id, &probe).await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"ports 1"), "the VM has exactly the agent channel's port: {r:?}");
    assert!(lines[1].starts_with("/dev/vport") && lines[1].ends_with("denied 13"), "{r:?}");
    assert_eq!(lines.len(), 5, "{r:?}");
    assert!(
        !r.stdout.contains("CONNECTED") && !r.stdout.contains("OPENED"),
        "guest user code reached the agent: {r:?}"
    );
    let mode =
        exec(rt, &id, "stat -c '%a %U' /dev/vport* /run/rds/overlay; ls /run/rds 2>&1; ls /run/rds/overlay 2>&1").await;
    assert_eq!(
        mode.stdout,
        "600 root\n700 root\nls: cannot open directory '/run/rds': Permission denied\nls: cannot open directory '/run/rds/overlay': Permission denied\n",
        "{mode:?}"
    );

    // Guest → host: the guest's bridge socket reaches the VM's own `<uds>_1025` (the bridge
    // socket on the host); no other host port is reachable from user code at all.
    let bridge = rt.bridge_socket(&id);
    assert_eq!(bridge, rds_vsock::host_side_path(&rt.agent_socket(&id), BRIDGE_VSOCK_PORT));
    let listener = tokio::net::UnixListener::bind(&bridge).unwrap();
    let accept = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while conn.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        line
    });
    let dial = format!(
        r#"python3 - <<'EOF'
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect("{GUEST_BRIDGE_SOCKET}")
s.sendall(b"hello from the guest\n")
print("CONNECTED")
s.close()
EOF"#
    );
    let r = exec(rt, &id, &dial).await;
    let got = tokio::time::timeout(Duration::from_secs(30), accept).await.expect("bridge connection arrived").unwrap();
    assert_eq!(got, "hello from the guest");
    assert_eq!(r.stdout, "CONNECTED\n", "{r:?}");

    // The per-VM files are root-only.
    let mode = std::fs::metadata(rt.vm_dir(&id)).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);

    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

/// What a guest kernel prints when a write to a disk fails or a filesystem finds damage.
const DISK_TROUBLE: [&str; 7] = [
    "I/O error",
    "Buffer I/O error",
    "EXT4-fs error",
    "EXT4-fs warning",
    "JBD2",
    "blk_update_request",
    "lost async page write",
];

/// Contents of the file uploaded in cycle `i`: xorshift bytes, a different length per cycle.
fn cycle_file(i: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
    (0..64 * 1024 + i * 1031)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Contents of the file the guest writes in cycle `i` (`yes cycle-<i> | head -c 524288`).
fn cycle_bulk(i: usize) -> Vec<u8> {
    format!("cycle-{i}\n").into_bytes().into_iter().cycle().take(512 * 1024).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The console log with its rotated older half, if any.
fn whole_console(rt: &QemuRuntime, id: &str) -> String {
    let log = rt.console_log(id);
    let old = std::fs::read(log.with_extension("log.old")).unwrap_or_default();
    let new = std::fs::read(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    String::from_utf8_lossy(&[old, new].concat()).into_owned()
}

/// `e2fsck -fn` passes and the superblock says clean with no journal left to replay.
fn assert_overlay_clean(overlay: &std::path::Path, cycle: usize) {
    let fsck = std::process::Command::new("e2fsck").arg("-fn").arg(overlay).output().expect("run e2fsck (e2fsprogs)");
    assert!(
        fsck.status.success(),
        "cycle {cycle}: e2fsck -fn found problems ({}):\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let dump = std::process::Command::new("dumpe2fs").arg("-h").arg(overlay).output().expect("run dumpe2fs");
    let header = String::from_utf8_lossy(&dump.stdout);
    let field = |name: &str| header.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("").to_string();
    assert_eq!(field("Filesystem state:"), "clean", "cycle {cycle}:\n{header}");
    assert!(
        !field("Filesystem features:").contains("needs_recovery"),
        "cycle {cycle}: journal left to replay:\n{header}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_survives_twenty_stop_start_cycles_with_clean_disks_and_no_io_errors() {
    // A new test fails loudly when it cannot run.
    let image = image_dir().unwrap_or_else(|reason| panic!("cannot run the qemu stop/start test: {reason}"));
    let env = Env::new(image);
    let rt = env.rt();
    let id = new_id();
    const CYCLES: usize = 20;
    let mut handle = rt.start(&spec(&id, 512)).await.unwrap_or_else(|e| panic!("boot failed: {e}"));
    let overlay = rt.vm_dir(&id).join("overlay.ext4");
    let overlay_inode = std::fs::metadata(&overlay).unwrap().ino();
    let (mut stops, mut starts) = (Vec::new(), Vec::new());

    for i in 0..CYCLES {
        // One uploaded file with known bytes, one written by a command and left in the guest's
        // page cache (no fsync: stop must flush it), a line appended to a shared log.
        let name = format!("{i:02}.bin");
        agent(rt, &id)
            .upload("files", rds_testkit::tar_gz(&[(&name, &cycle_file(i))]), CALL_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("cycle {i} upload: {e}"));
        let r = exec(rt, &id, &format!("mkdir -p /workspace/bulk && yes cycle-{i} | head -c 524288 > /workspace/bulk/{i:02} && printf 'cycle %02d\\n' {i} >> /workspace/cycles.log")).await;
        assert_eq!(r.exit_code, Some(0), "cycle {i} write: {r:?}");

        let t = std::time::Instant::now();
        rt.stop(&id, &handle).await.unwrap_or_else(|e| panic!("cycle {i} stop: {e}"));
        stops.push(t.elapsed());
        assert!(!is_same_process_alive(handle.pid, handle.start_time), "cycle {i}: QEMU still runs after stop");

        // The guest powered off by itself after remounting its disks read-only: nothing to replay.
        let console = whole_console(rt, &id);
        let trouble: Vec<&str> = console.lines().filter(|l| DISK_TROUBLE.iter().any(|p| l.contains(p))).collect();
        assert!(trouble.is_empty(), "cycle {i}: disk trouble on the console: {trouble:#?}");
        assert!(!console.contains("rds: the guest did not power off"), "cycle {i}: QEMU had to be killed:\n{console}");
        assert_overlay_clean(&overlay, i);
        // The kernel's own power-off path each time, never a panic (PID 1 exiting also ends QEMU).
        assert_eq!(
            console.matches("reboot: Power down").count(),
            i + 1,
            "cycle {i}: one power-off per stop:\n{console}"
        );
        assert!(!console.contains("Kernel panic"), "cycle {i}: the guest panicked:\n{console}");
        // PID 1 names what it remounted: the root overlay and the overlay disk, in either order.
        let quiesced: Vec<Vec<&str>> = console
            .lines()
            .filter_map(|l| l.strip_prefix("rds-init: filesystems read-only: [")?.strip_suffix(']'))
            .map(|list| {
                let mut targets: Vec<&str> = list.split(", ").collect();
                targets.sort();
                targets
            })
            .collect();
        assert_eq!(
            quiesced,
            vec![vec!["/", "/run/rds/overlay"]; i + 1],
            "cycle {i}: one read-only remount of both per stop:\n{console}"
        );
        assert_eq!(
            std::fs::metadata(&overlay).unwrap().ino(),
            overlay_inode,
            "cycle {i}: the overlay disk was replaced"
        );

        let t = std::time::Instant::now();
        handle = rt.start(&spec(&id, 512)).await.unwrap_or_else(|e| panic!("cycle {i} start: {e}"));
        starts.push(t.elapsed());

        // Every file written so far, byte for byte (sha256), and the whole log in order.
        let mut expected = String::new();
        for j in 0..=i {
            expected += &format!("{}  files/{j:02}.bin\n", sha256_hex(&cycle_file(j)));
        }
        for j in 0..=i {
            expected += &format!("{}  bulk/{j:02}\n", sha256_hex(&cycle_bulk(j)));
        }
        for j in 0..=i {
            expected += &format!("cycle {j:02}\n");
        }
        let r = exec(rt, &id, "cd /workspace && sha256sum files/* bulk/* && cat cycles.log").await;
        assert_eq!(r.stdout, expected, "cycle {i}: workspace after restart: {r:?}");
    }
    println!("{CYCLES} stop/start cycles: stop {stops:?}, start {starts:?}");

    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

/// A Python process that holds a random token and a counter in memory and answers each
/// connection on 127.0.0.1:7000 with `<token> <count>`.
const STATEFUL_SERVER: &str = r#"cat > /tmp/state.py <<'PY'
import os, socket
token, n = os.urandom(8).hex(), 0
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000))
s.listen(8)
while True:
    c, _ = s.accept()
    n += 1
    c.sendall(f"{token} {n}\n".encode())
    c.close()
PY
setsid nohup python3 /tmp/state.py >/dev/null 2>&1 < /dev/null &
for i in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', 7000)).close()" 2>/dev/null && break; sleep 0.1; done"#;

/// Asks the stateful server for its token and count.
const ASK_SERVER: &str =
    r#"python3 -c "import socket; print(socket.create_connection(('127.0.0.1', 7000)).recv(100).decode().strip())""#;

/// 32 bytes of the guest's `/dev/urandom`, hex.
const URANDOM: &str = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";

/// Starts `id` from the memory snapshot in `dir`; returns its handle and how long that took.
async fn restore(rt: &QemuRuntime, id: &str, dir: &std::path::Path) -> (VmHandle, Duration) {
    let t = std::time::Instant::now();
    let h = rt
        .start_from_snapshot(&spec(id, 256), dir, SnapshotKind::Memory)
        .await
        .unwrap_or_else(|e| panic!("restore of {id}: {e}"));
    (h, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_snapshots_resume_running_processes_and_each_clone_is_itself() {
    let image = image_dir().unwrap_or_else(|reason| panic!("cannot run the qemu snapshot test: {reason}"));
    let env = Env::new(image);
    let rt = env.rt();
    let source = new_id();
    let handle = rt.start(&spec(&source, 256)).await.unwrap_or_else(|e| panic!("boot failed: {e}"));
    assert_eq!(rt.capabilities().snapshots, Some(SnapshotKind::Memory));

    let r = exec(rt, &source, STATEFUL_SERVER).await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let first = exec(rt, &source, ASK_SERVER).await.stdout;
    // The readiness probe above was its first connection.
    let token = first.split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(first, format!("{token} 2\n"));
    exec(rt, &source, "echo before > /workspace/note").await;

    let snaps = tempfile::Builder::new().prefix("rds-qemu-snap-").tempdir_in("/var/tmp").unwrap();
    let snap = snaps.path().join("mem");
    let t = std::time::Instant::now();
    let kind = rt.snapshot(&source, &handle, &snap, true).await.unwrap_or_else(|e| panic!("snapshot: {e}"));
    println!("memory snapshot of a 256 MiB guest: {:?}", t.elapsed());
    assert_eq!(kind, SnapshotKind::Memory);
    for file in ["state", "memory", "overlay.ext4", "snapshot.json"] {
        assert!(snap.join(file).is_file(), "the snapshot lacks {file}");
    }

    // The source runs on, its process too; it changes a file after the snapshot.
    assert_eq!(exec(rt, &source, ASK_SERVER).await.stdout, format!("{token} 3\n"));
    exec(rt, &source, "echo after > /workspace/note").await;
    let memory_before = std::fs::read(snap.join("memory")).unwrap();

    // Two clones at once: each resumes the process where the snapshot left it (its next count
    // is 3 again), sees the snapshot's files, and has its own hostname and random stream.
    let clones = [new_id(), new_id()];
    let (a, b) = tokio::join!(restore(rt, &clones[0], &snap), restore(rt, &clones[1], &snap));
    let started = [a, b];
    let mut randoms = vec![exec(rt, &source, URANDOM).await.stdout];
    for (clone, (h, took)) in clones.iter().zip(&started) {
        println!("clone {clone}: restore took {took:?}");
        assert_ne!(h.pid, handle.pid);
        assert_eq!(exec(rt, clone, ASK_SERVER).await.stdout, format!("{token} 3\n"), "the process lost its state");
        let r = exec(rt, clone, "cat /workspace/note; hostname").await;
        assert_eq!(r.stdout, format!("before\nvm-{}\n", &clone[..8]), "{r:?}");
        randoms.push(exec(rt, clone, URANDOM).await.stdout);
    }
    assert_eq!(randoms.iter().map(|r| r.len()).collect::<Vec<_>>(), [64, 64, 64], "{randoms:?}");
    assert!(randoms[0] != randoms[1] && randoms[1] != randoms[2] && randoms[0] != randoms[2], "{randoms:?}");
    assert_eq!(exec(rt, &source, "cat /workspace/note").await.stdout, "after\n");
    assert!(std::fs::read(snap.join("memory")).unwrap() == memory_before, "a clone wrote into the snapshot");

    // A clone's own snapshot carries its memory in the state stream; a VM resumes from it too.
    let snap2 = snaps.path().join("of-a-clone");
    rt.snapshot(&clones[0], &started[0].0, &snap2, true).await.unwrap_or_else(|e| panic!("snapshot of a clone: {e}"));
    assert!(!snap2.join("memory").exists());
    let grandchild = new_id();
    let (hg, _) = restore(rt, &grandchild, &snap2).await;
    assert_eq!(exec(rt, &grandchild, ASK_SERVER).await.stdout, format!("{token} 4\n"), "the clone's count went on");

    // Restore → first exec, a few more times (printed, not asserted).
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let id = new_id();
        let t = std::time::Instant::now();
        let (h, _) = restore(rt, &id, &snap).await;
        let r = exec(rt, &id, "true").await;
        firsts.push(t.elapsed());
        assert_eq!(r.exit_code, Some(0));
        rt.destroy(&id, Some(&h)).await.unwrap();
        assert_no_trace(rt, &id, &h);
    }
    firsts.sort();
    println!("qemu restore -> first exec ({:?}): p50 {:?}, all {firsts:?}", rt.accel().await, firsts[firsts.len() / 2]);

    // A memory snapshot's disk alone boots too; so does a disk snapshot.
    let cold = new_id();
    let hc = rt.start_from_snapshot(&spec(&cold, 256), &snap, SnapshotKind::Disk).await.unwrap();
    assert_eq!(exec(rt, &cold, "cat /workspace/note").await.stdout, "before\n");
    let r = exec(rt, &cold, ASK_SERVER).await;
    assert_ne!(r.exit_code, Some(0), "a cold boot has no running server: {r:?}");
    let disk = snaps.path().join("disk");
    assert_eq!(rt.snapshot(&source, &handle, &disk, false).await.unwrap(), SnapshotKind::Disk);
    assert!(disk.join("overlay.ext4").is_file() && !disk.join("memory").exists());
    let from_disk = new_id();
    let hd = rt.start_from_snapshot(&spec(&from_disk, 256), &disk, SnapshotKind::Disk).await.unwrap();
    assert_eq!(exec(rt, &from_disk, "cat /workspace/note").await.stdout, "after\n");

    let all = [
        (&source, &handle),
        (&clones[0], &started[0].0),
        (&clones[1], &started[1].0),
        (&grandchild, &hg),
        (&cold, &hc),
        (&from_disk, &hd),
    ];
    for (id, h) in all {
        rt.destroy(id, Some(h)).await.unwrap();
        assert_no_trace(rt, id, h);
    }
}
