//! Benchmark: the firecracker runtime beside the sandbox (and qemu where KVM boots guests), in one
//! run. As root:
//!
//! ```text
//! cargo run --release -p rds-runtime --example bench_firecracker <image-dir> <firecracker> <jailer>
//! ```
//!
//! Always measured: a VMM brought up to a configured VM (jailed and not: jailer → API ready →
//! every device set, no guest yet) and its resident memory, against the sandbox's create → first
//! exec. With `/dev/kvm`: snapshot create and load of a paused VM. Where KVM boots ordinary
//! guests: create → first exec and resident memory per running VM, beside qemu and the sandbox.
//! What cannot be measured here is listed under `absent`, with the reason. Prints one JSON line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rds_agent_client::AgentClient;
use rds_proto::ExecRequest;
use rds_runtime::firecracker::{ids, CloneMode, FirecrackerConfig, FirecrackerRuntime, Seccomp};
use rds_runtime::qemu::{QemuConfig, QemuRuntime};
use rds_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use rds_runtime::{Runtime, VmSpec};

const VMS: usize = 5;
const LAUNCHES: usize = 10;

fn spec(rootfs: Option<PathBuf>) -> VmSpec {
    VmSpec {
        id: uuid::Uuid::new_v4().to_string(),
        cpu: 1,
        mem_mb: 256,
        hostname: "bench".into(),
        rootfs,
        ..VmSpec::default()
    }
}

/// p50 and p95 of `samples` (ms), to 0.1 ms.
fn summary(samples: &mut [f64]) -> serde_json::Value {
    let mut q = |q: f64| (rds_testkit::percentile(samples, q) * 10.0).round() / 10.0;
    serde_json::json!({ "p50": q(0.5), "p95": q(0.95) })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Create → first exec of `VMS` VMs one after another, and the top process's RSS once up.
async fn create_to_first_exec(rt: &dyn Runtime, rootfs: Option<PathBuf>) -> anyhow::Result<serde_json::Value> {
    let (mut times, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..VMS {
        let vm = spec(rootfs.clone());
        let started = Instant::now();
        let handle = rt.start(&vm).await?;
        let agent = AgentClient::hybrid_vsock(rt.agent_socket(&vm.id)).max_idle(0);
        agent.exec(&ExecRequest { cmd: "true".into(), ..ExecRequest::default() }, Duration::from_secs(60)).await?;
        times.push(ms(started));
        rss.push(rss_kib(handle.pid).unwrap_or(0) as f64 / 1024.0);
        rt.destroy(&vm.id, Some(&handle)).await?;
    }
    Ok(serde_json::json!({ "create_to_first_exec_ms": summary(&mut times), "top_process_rss_mib": summary(&mut rss) }))
}

/// A VMM up to a configured VM, `LAUNCHES` times: time and RSS.
async fn launches(rt: &FirecrackerRuntime) -> anyhow::Result<serde_json::Value> {
    let (mut times, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..LAUNCHES {
        let vm = spec(None);
        let started = Instant::now();
        let handle = rt.launch(&vm, false).await?;
        times.push(ms(started));
        rss.push(rss_kib(handle.pid).unwrap_or(0) as f64 / 1024.0);
        rt.destroy(&vm.id, Some(&handle)).await?;
    }
    Ok(serde_json::json!({ "launch_to_configured_ms": summary(&mut times), "vmm_rss_mib": summary(&mut rss) }))
}

/// Snapshot create of a paused VM and load + resume into a new process (needs KVM).
async fn snapshots(rt: &FirecrackerRuntime, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let source = spec(None);
    let handle = rt.launch(&source, true).await?;
    rt.pause(&source.id).await?;
    let t = Instant::now();
    let snap = rt.create_snapshot(&source.id, &dir.join("snap")).await?;
    let create = ms(t);
    rt.destroy(&source.id, Some(&handle)).await?;
    let copy = spec(None);
    let t = Instant::now();
    let restored = rt.restore(&copy, &snap, true).await?;
    let load = ms(t);
    rt.destroy(&copy.id, Some(&restored)).await?;
    Ok(serde_json::json!({ "snapshot_create_ms": create, "snapshot_load_resume_ms": load, "memory_mib": 256 }))
}

fn firecracker(
    storage: &Path,
    image: &Path,
    fc: &Path,
    jailer: Option<&Path>,
    group: &str,
) -> anyhow::Result<FirecrackerRuntime> {
    Ok(FirecrackerRuntime::new(FirecrackerConfig {
        storage_root: storage.to_path_buf(),
        firecracker_bin: fc.to_path_buf(),
        jailer_bin: jailer.map(Path::to_path_buf),
        kernel: image.join("vmlinux"),
        initrd: image.join("initrd.img"),
        base_rootfs: image.join("rootfs.ext4"),
        seccomp: if std::env::var("RDS_FIRECRACKER_SECCOMP").as_deref() == Ok("default") {
            Seccomp::Default
        } else {
            Seccomp::Off
        },
        clone_mode: CloneMode::Auto,
        boot_timeout: Duration::from_secs(30),
        cgroup_group: group.into(),
        claims_dir: PathBuf::from(ids::CLAIMS_DIR),
    })?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [image, fc, jailer] = args.as_slice() else {
        anyhow::bail!("usage: bench_firecracker <image-dir> <firecracker> <jailer>");
    };
    let agent = std::env::var("RDS_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/rds-agent"));
    let storage = tempfile::Builder::new().prefix("rds-fcb-").tempdir_in("/var/tmp")?;
    let group = "rds-bench-fc";

    let sandbox = SandboxRuntime::with_cgroup_group(
        SandboxConfig {
            storage_root: storage.path().join("sandbox"),
            agent_bin: agent.canonicalize()?,
            pids_max: 512,
            hide_paths: vec![],
            host_root: false,
        },
        group,
    )?;
    let sandbox_figures = create_to_first_exec(&sandbox, Some(image.join("rootfs.ext4"))).await?;

    // Short storage roots: a VM's sockets must fit in a Unix socket address.
    let jailed = firecracker(&storage.path().join("j"), image, fc, Some(jailer), group)?;
    let plain = firecracker(&storage.path().join("p"), image, fc, None, group)?;
    let jailed_figures = launches(&jailed).await?;
    let plain_figures = launches(&plain).await?;

    let mut absent = serde_json::Map::new();
    let kvm = rds_runtime::firecracker::kvm_api_ok();
    let snapshot_figures = match &kvm {
        Ok(()) => snapshots(&jailed, storage.path()).await?,
        Err(reason) => {
            absent.insert("snapshot_create_and_load".into(), format!("a guest needs KVM: {reason}").into());
            serde_json::Value::Null
        }
    };
    let (boots, qemu_figures) = if kvm.is_ok() && rds_runtime::qemu::kvm_boots_guests() {
        let qemu = QemuRuntime::new(QemuConfig::from_image_dir(storage.path().join("qemu"), image))?;
        (create_to_first_exec(&jailed, None).await?, create_to_first_exec(&qemu, None).await?)
    } else {
        let why = "the guest needs a KVM that boots ordinary guests (kvm_intel/kvm_amd)";
        absent.insert("create_to_first_exec_and_running_vm_rss".into(), why.into());
        (serde_json::Value::Null, serde_json::Value::Null)
    };

    let p50 = |v: &serde_json::Value, key: &str| v[key]["p50"].as_f64().unwrap_or(0.0);
    let ratio = |a: f64, b: f64| if b > 0.0 { ((a / b) * 100.0).round() / 100.0 } else { 0.0 };
    println!(
        "{}",
        serde_json::json!({
            "firecracker": {
                "jailed": jailed_figures,
                "plain": plain_figures,
                "snapshots": snapshot_figures,
                "boots": boots,
            },
            "sandbox": sandbox_figures,
            "qemu": qemu_figures,
            "ratios_p50": {
                "jailed_over_plain_launch": ratio(p50(&jailed_figures, "launch_to_configured_ms"), p50(&plain_figures, "launch_to_configured_ms")),
                "jailed_launch_over_sandbox_create_to_first_exec": ratio(p50(&jailed_figures, "launch_to_configured_ms"), p50(&sandbox_figures, "create_to_first_exec_ms")),
                "firecracker_over_sandbox_create_to_first_exec": ratio(p50(&boots, "create_to_first_exec_ms"), p50(&sandbox_figures, "create_to_first_exec_ms")),
            },
            "absent": absent,
        })
    );
    Ok(())
}
