//! `rds bench snapshots`: create → first exec through one manager for a cold boot, a VM handed
//! out by the warm pool and a VM started from a snapshot, on the runtime `RDS_RUNTIME` names
//! (sandbox by default). Prints one JSON line last, with each path's ratio to the cold boot.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::bench::{describe, ms, percentiles, round, start_manager, Api};

/// Memory of the cold and snapshot VMs: not the pool's template size, so they never take a member.
const OTHER_MEM_MB: u32 = 288;
/// The pool's template memory.
const POOL_MEM_MB: u32 = 256;

/// Runs the benchmark with `n` VMs per path.
pub fn run(n: usize) -> anyhow::Result<()> {
    let runtime = std::env::var("RDS_RUNTIME").unwrap_or_else(|_| "sandbox".into());
    let env = [
        ("RDS_NETWORK", "off"),
        ("RDS_RUNTIME", runtime.as_str()),
        ("ENABLE_WARM_POOL", "true"),
        ("WARM_POOL_TARGET", "1"),
        ("SNAPSHOT_TEMPLATE_MEM_MB", "256"),
    ];
    let (_own, url, key, _root) = start_manager(&env)?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(180)).build();
    let api = Api { agent, url, key };

    let mut cold = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let id = create(&api, json!({"cpu": 1, "memMb": OTHER_MEM_MB}), "boot")?;
        api.exec(&id, "true")?;
        cold.push(ms(t0.elapsed()));
        api.delete_vm(&id)?;
    }

    let source = create(&api, json!({"cpu": 1, "memMb": OTHER_MEM_MB}), "boot")?;
    api.exec(&source, "echo snapshot > /workspace/mark")?;
    let snap: Value = api
        .agent
        .post(&format!("{}/v1/vms/{source}/snapshots", api.url))
        .set("X-API-Key", &api.key)
        .call()
        .map_err(describe)?
        .into_json()?;
    let snap_id = snap["id"].as_str().context("snapshot returned no id")?.to_string();
    let mut restored = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let body = json!({"cpu": 1, "memMb": OTHER_MEM_MB, "userOverlaySnapshotId": snap_id});
        let id = create(&api, body, "snapshot")?;
        api.exec(&id, "test -f /workspace/mark")?;
        restored.push(ms(t0.elapsed()));
        api.delete_vm(&id)?;
    }
    api.delete_vm(&source)?;

    let mut warm = Vec::with_capacity(n);
    for _ in 0..n {
        wait_for_member(&api)?;
        let t0 = Instant::now();
        let id = create(&api, json!({"cpu": 1, "memMb": POOL_MEM_MB}), "pool")?;
        api.exec(&id, "true")?;
        warm.push(ms(t0.elapsed()));
        api.delete_vm(&id)?;
    }

    let cold = percentiles(&mut cold);
    let restored = percentiles(&mut restored);
    let warm = percentiles(&mut warm);
    let ratio = |v: &Value| round(v["p50"].as_f64().unwrap_or(0.0) / cold["p50"].as_f64().unwrap_or(1.0).max(1e-9));
    let report = json!({
        "bench": "snapshots",
        "runtime": runtime,
        "vms": n,
        "snapshotContent": snap["content"],
        "coldCreateToFirstExecMs": cold,
        "snapshotCreateToFirstExecMs": restored,
        "warmPoolCreateToFirstExecMs": warm,
        "snapshotVsColdP50": ratio(&restored),
        "warmVsColdP50": ratio(&warm),
    });
    println!("{report}");
    Ok(())
}

/// Creates a VM and checks how it was provisioned.
fn create(api: &Api, body: Value, mode: &str) -> anyhow::Result<String> {
    let vm: Value = api
        .agent
        .post(&format!("{}/v1/vms", api.url))
        .set("X-API-Key", &api.key)
        .send_json(body)
        .map_err(describe)?
        .into_json()?;
    if vm["provisionMode"] != mode {
        bail!("expected provisionMode {mode}: {vm}");
    }
    vm["id"].as_str().map(str::to_string).context("create returned no id")
}

/// Waits (bounded) until the pool holds a ready member.
fn wait_for_member(api: &Api) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pool: Value = api
            .agent
            .get(&format!("{}/v1/pool", api.url))
            .set("X-API-Key", &api.key)
            .call()
            .map_err(describe)?
            .into_json()?;
        if pool["ready"].as_u64().unwrap_or(0) > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the warm pool never refilled: {pool}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
