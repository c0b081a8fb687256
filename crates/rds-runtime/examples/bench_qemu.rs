//! Benchmark: create → first exec and exec round-trip, qemu beside sandbox, in one run, and qemu's
//! restore (from a memory snapshot) → first exec. As root:
//!
//! ```text
//! cargo run -p rds-runtime --example bench_qemu [image-dir]
//! ```
//!
//! `image-dir` holds `vmlinuz`, `initrd.img`, `rootfs.ext4` (default: the newest `image-*` in
//! `/var/cache/rds-image`). The agent binary for the sandbox is `$RDS_AGENT_BIN`, else
//! `target/debug/rds-agent`. Prints one JSON line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rds_agent_client::AgentClient;
use rds_proto::{ExecRequest, ExecResult};
use rds_runtime::qemu::{QemuConfig, QemuRuntime};
use rds_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use rds_runtime::{Runtime, SnapshotKind, VmSpec};

const VMS: usize = 5;
const ROUND_TRIPS: usize = 20;

/// Runs `cmd` through the agent on a fresh connection and returns its result.
async fn exec(rt: &dyn Runtime, id: &str, cmd: &str) -> anyhow::Result<ExecResult> {
    let agent = AgentClient::hybrid_vsock(rt.agent_socket(id)).max_idle(0);
    let request = ExecRequest { cmd: cmd.into(), ..ExecRequest::default() };
    Ok(agent.exec(&request, Duration::from_secs(60)).await?)
}

/// The `q` quantile of `samples`, to 0.1 ms.
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    (rds_testkit::percentile(samples, q) * 10.0).round() / 10.0
}

/// Boots `VMS` VMs one after another (create → first exec), then times exec round-trips on one.
async fn measure(rt: &dyn Runtime, rootfs: Option<PathBuf>) -> anyhow::Result<serde_json::Value> {
    let mut first_exec = Vec::new();
    let mut round_trip = Vec::new();
    for n in 0..VMS {
        let id = uuid::Uuid::new_v4().to_string();
        let spec = VmSpec {
            id: id.clone(),
            cpu: 1,
            mem_mb: 512,
            hostname: "bench".into(),
            rootfs: rootfs.clone(),
            ..VmSpec::default()
        };
        let started = Instant::now();
        let handle = rt.start(&spec).await?;
        exec(rt, &id, "true").await?;
        first_exec.push(started.elapsed().as_secs_f64() * 1000.0);
        if n == 0 {
            for _ in 0..ROUND_TRIPS {
                let t = Instant::now();
                exec(rt, &id, "true").await?;
                round_trip.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let accel = handle.extra.get("accel").cloned();
        rt.destroy(&id, Some(&handle)).await?;
        if n == 0 {
            if let Some(a) = accel {
                eprintln!("{}: accel {a}", rt.kind());
            }
        }
    }
    Ok(serde_json::json!({
        "create_to_first_exec_ms": { "p50": percentile(&mut first_exec, 0.5), "p95": percentile(&mut first_exec, 0.95) },
        "exec_round_trip_ms": { "p50": percentile(&mut round_trip, 0.5), "p95": percentile(&mut round_trip, 0.95) },
    }))
}

/// Boots one VM, snapshots it with its memory, then resumes `VMS` VMs from that snapshot one
/// after another (restore → first exec).
async fn measure_restore(rt: &QemuRuntime, storage: &Path) -> anyhow::Result<serde_json::Value> {
    let spec = |id: &str| VmSpec { id: id.into(), cpu: 1, mem_mb: 512, hostname: "bench".into(), ..VmSpec::default() };
    let source = uuid::Uuid::new_v4().to_string();
    let handle = rt.start(&spec(&source)).await?;
    exec(rt, &source, "true").await?;
    let snapshot = storage.join("snapshot");
    let t = Instant::now();
    rt.snapshot(&source, &handle, &snapshot, true).await?;
    let snapshot_ms = t.elapsed().as_secs_f64() * 1000.0;
    rt.destroy(&source, Some(&handle)).await?;
    let mut first_exec = Vec::new();
    for _ in 0..VMS {
        let id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let h = rt.start_from_snapshot(&spec(&id), &snapshot, SnapshotKind::Memory).await?;
        exec(rt, &id, "true").await?;
        first_exec.push(started.elapsed().as_secs_f64() * 1000.0);
        rt.destroy(&id, Some(&h)).await?;
    }
    Ok(serde_json::json!({
        "snapshot_ms": (snapshot_ms * 10.0).round() / 10.0,
        "restore_to_first_exec_ms": { "p50": percentile(&mut first_exec, 0.5), "p95": percentile(&mut first_exec, 0.95) },
    }))
}

fn default_image_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir("/var/cache/rds-image")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("image-") && e.path().join("rootfs.ext4").is_file())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let image = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => default_image_dir().ok_or_else(|| anyhow::anyhow!("no image dir given and none cached"))?,
    };
    let agent = std::env::var("RDS_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/rds-agent"));
    std::fs::create_dir_all("/var/tmp")?;
    let storage = tempfile::Builder::new().prefix("rds-bench-qemu-").tempdir_in("/var/tmp")?;

    let cfg = QemuConfig::from_image_dir(storage.path().join("qemu"), &image);
    let qemu = QemuRuntime::new(cfg)?;
    let accel = qemu.accel().await;
    let qemu_figures = measure(&qemu, None).await?;
    let restore_figures = measure_restore(&qemu, storage.path()).await?;

    let sandbox = SandboxRuntime::with_cgroup_group(
        SandboxConfig {
            storage_root: storage.path().join("sandbox"),
            agent_bin: agent.canonicalize()?,
            pids_max: 512,
            hide_paths: vec![],
            host_root: false,
        },
        "rds-bench-qemu",
    )?;
    // The same image as the sandbox's root: both runtimes run the same userland.
    let sandbox_figures = measure(&sandbox, Some(image.join("rootfs.ext4"))).await?;

    let ratio = |key: &str| {
        let q = qemu_figures[key]["p50"].as_f64().unwrap_or(0.0);
        let s = sandbox_figures[key]["p50"].as_f64().unwrap_or(0.0);
        if s > 0.0 {
            ((q / s) * 10.0).round() / 10.0
        } else {
            0.0
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "vms": VMS,
            "round_trips": ROUND_TRIPS,
            "qemu": { "accel": accel.as_str(), "figures": qemu_figures, "restore": restore_figures },
            "sandbox": sandbox_figures,
            "qemu_over_sandbox_p50": {
                "create_to_first_exec": ratio("create_to_first_exec_ms"),
                "exec_round_trip": ratio("exec_round_trip_ms"),
            },
            "target": { "qemu_tcg_create_to_first_exec_p50_ms": 3000, "qemu_tcg_restore_to_first_exec_p50_ms": 500 },
        })
    );
    Ok(())
}
