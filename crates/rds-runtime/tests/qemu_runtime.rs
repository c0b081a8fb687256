//! End-to-end tests of the qemu runtime: the real guest image (Debian cloud kernel, initramfs,
//! `rds-agent` as PID 1) booted under QEMU `microvm` (KVM if it can run a guest, else TCG), driven
//! through the `Runtime` trait and the agent's HTTP API over virtio-vsock. Need root, QEMU and
//! `vhost-device-vsock`; each test prints `SKIPPED: <reason>` otherwise.
//!
//! The image is built (or taken from the cache, `$RDS_IMAGE_CACHE`, default `/var/cache/rds-image`)
//! from `$RDS_AGENT_BIN`, else `<workspace>/target/debug/rds-agent`. QEMU boots are slow under
//! TCG, so each test shares one VM across its assertions.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use rds_proto::{RunResult, AGENT_VSOCK_PORT, BRIDGE_VSOCK_PORT};
use rds_runtime::qemu::{QemuConfig, QemuRuntime, GUEST_CID};
use rds_runtime::process::is_same_process_alive;
use rds_runtime::{Liveness, Runtime, VmHandle};
use tokio::io::AsyncReadExt;

use common::{exec, new_id, request, spec};

/// The image directory (vmlinuz, initrd.img, rootfs.ext4), or why these tests cannot run.
fn image_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("qemu runtime tests need root".into());
        }
        for (program, hint) in [("qemu-system-x86_64", "apt-get install qemu-system-x86"), ("vhost-device-vsock", "cargo install --locked vhost-device-vsock")] {
            if !on_path(program) {
                return Err(format!("{program} not found ({hint})"));
            }
        }
        if std::env::var("RDS_SKIP_IMAGE_BUILD").as_deref() == Ok("1") {
            return Err("RDS_SKIP_IMAGE_BUILD=1".into());
        }
        let agent = common::agent_bin()?;
        let cache = PathBuf::from(std::env::var("RDS_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/rds-image".into()));
        let out = tempfile::Builder::new().prefix("rds-qemu-image-").tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
        let opts = rds_image::BuildOptions {
            out_dir: out.path().to_path_buf(),
            kernel: rds_image::KernelChoice::Debian,
            agent_bin: agent,
            cache_dir: cache.clone(),
            debian_suite: "bookworm".into(),
            mirror: None,
        };
        let built = rds_image::build(&opts, &mut |line| eprintln!("image: {line}")).map_err(|e| format!("image build failed: {e}"))?;
        // The cache keeps the same five files under `image-<key>`: use those, drop the copy.
        let cached = cache.join(format!("image-{}", built.manifest.cache_key));
        if !cached.join("rootfs.ext4").is_file() {
            return Err(format!("the image cache has no {}", cached.display()));
        }
        Ok(cached)
    })
    .clone()
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home_bin = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo/bin");
    std::env::split_paths(&path).chain([home_bin]).any(|d| d.join(program).is_file())
}

macro_rules! require_env {
    () => {
        match image_dir() {
            Ok(dir) => dir,
            Err(reason) => {
                println!("SKIPPED: {reason}");
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
        cfg.overlay_size_mb = 1024;
        cfg.boot_timeout = Duration::from_secs(90);
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

async fn run(rt: &QemuRuntime, id: &str, language: &str, code: &str) -> RunResult {
    let body = serde_json::json!({ "code": code }).to_string();
    let (status, out) = request(rt, id, "POST", &format!("/run-{language}"), body.as_bytes()).await;
    assert_eq!(status, 200, "run-{language}: {}", String::from_utf8_lossy(&out));
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("bad RunResult ({e}): {}", String::from_utf8_lossy(&out)))
}

/// A gzipped tar holding one file.
fn tar_gz(name: &str, data: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, data).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// Every (path, contents) of regular files in a gzipped tar.
fn untar_gz(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).unwrap();
            files.push((path, contents));
        }
    }
    files
}

/// Asserts VM `id` left nothing behind: no directory (sockets, overlay, logs) and no process.
fn assert_no_trace(rt: &QemuRuntime, id: &str, handle: &VmHandle) {
    assert!(!rt.vm_dir(id).exists(), "VM dir {} still exists", rt.vm_dir(id).display());
    // A zombie awaiting its reaper is gone for our purposes: it holds no resources.
    assert!(!is_same_process_alive(handle.pid, handle.start_time), "QEMU {} still runs", handle.pid);
    let backend = (handle.extra["backend_pid"].as_i64().unwrap() as i32, handle.extra["backend_start_time"].as_u64().unwrap());
    assert!(!is_same_process_alive(backend.0, backend.1), "vhost-device-vsock {} still runs", backend.0);
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

    let ts = run(rt, &id, "ts", "const n: number = 6 * 7; console.log(JSON.stringify({ n }));").await;
    assert_eq!(ts.exit_code, Some(0), "{ts:?}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(ts.stdout.trim()).unwrap(), serde_json::json!({ "n": 42 }));
    let py = run(rt, &id, "python", "import json; print(json.dumps({'sum': sum(range(10))}))").await;
    assert_eq!(py.exit_code, Some(0), "{py:?}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(py.stdout.trim()).unwrap(), serde_json::json!({ "sum": 45 }));

    // Upload a tar into /workspace, see it from a command, download it back.
    let (status, out) = request(rt, &id, "POST", "/files/upload?dest=up", &tar_gz("hello.txt", b"uploaded bytes\n")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let r = exec(rt, &id, "cat /workspace/up/hello.txt; stat -c %u /workspace/up/hello.txt /workspace").await;
    assert_eq!(r.stdout, "uploaded bytes\n1000\n1000\n", "{r:?}");
    let (status, out) = request(rt, &id, "GET", "/files/download?path=up", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let files = untar_gz(&out);
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

    // From uid 1000: the agent port on the guest's own CID, on CID 1 (local) and on CID 2 (host).
    let probe = format!(
        r#"python3 - <<'EOF'
import socket
for cid in ({GUEST_CID}, 1, 2):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((cid, {AGENT_VSOCK_PORT}))
        print(cid, "CONNECTED")
    except OSError as e:
        print(cid, "refused", e.errno)
    finally:
        s.close()
EOF"#
    );
    let r = exec(rt, &id, &probe).await;
    assert_eq!(r.stdout.lines().count(), 3, "{r:?}");
    assert!(!r.stdout.contains("CONNECTED"), "guest user code reached the agent port: {r:?}");

    // Guest → host: port 1025 reaches the VM's own `<uds>_1025` (the bridge socket); the boot
    // readiness port (1026) listens no more once the VM runs; any other port is refused.
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
    let dial = r#"python3 - <<'EOF'
import socket
for port in (1025, 1026, 1999):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((2, port))
        s.sendall(b"hello from the guest\n")
        print(port, "CONNECTED")
    except OSError as e:
        print(port, "refused", e.errno)
    finally:
        s.close()
EOF"#;
    let r = exec(rt, &id, dial).await;
    let got = tokio::time::timeout(Duration::from_secs(30), accept).await.expect("bridge connection arrived").unwrap();
    assert_eq!(got, "hello from the guest");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r:?}");
    assert_eq!(lines[0], "1025 CONNECTED", "{r:?}");
    assert!(lines[1].starts_with("1026 refused"), "{r:?}");
    assert!(lines[2].starts_with("1999 refused"), "{r:?}");

    // The per-VM files are root-only.
    let mode = std::fs::metadata(rt.vm_dir(&id)).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);

    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}
