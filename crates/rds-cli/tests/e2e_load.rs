//! Load on the sandbox runtime (loopback only, bounded): 50 VMs created at once, then 500 execs
//! with 50 in flight across them. Every request must succeed; latencies (p50/p99), the manager's
//! resident memory and the memory of an idle VM are printed as one JSON line (figures, not
//! bounds: docs/reliability.md keeps them). `RDS_LOAD_VMS` / `RDS_LOAD_EXECS` scale it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use common::Server;
use serde_json::json;

#[test]
fn fifty_vms_and_five_hundred_concurrent_execs_all_succeed() {
    if let Some(reason) = common::skip_reason() {
        panic!("e2e_load needs the sandbox runtime: {reason}");
    }
    let vms: usize = std::env::var("RDS_LOAD_VMS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let execs: usize = std::env::var("RDS_LOAD_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let max_vms = (vms + 5).to_string();
    let s = Server::start(&[("MAX_VMS", &max_vms)]);
    let (rss_idle, _) = s.rss_kib();

    // All creates at once.
    let started = Instant::now();
    let created = parallel(vms, vms, |_| {
        let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128})));
        (st == 201 && vm["state"] == "RUNNING")
            .then(|| vm["id"].as_str().unwrap().to_string())
            .ok_or(format!("{st} {vm}"))
    });
    let create_wall = started.elapsed().as_secs_f64();
    let (ids, create_ms) = split(created);
    assert_eq!(ids.len(), vms);
    let (rss_vms, _) = s.rss_kib();
    let layout = rds_runtime::cgroup::CgroupLayout::detect(&s.cgroup_group()).expect("cgroup layout");
    let mut charged: Vec<f64> = ids.iter().map(|id| cgroup_memory_kib(&layout, id) as f64).collect();

    // 500 execs, 50 in flight, spread over the VMs.
    let started = Instant::now();
    let ran = parallel(execs, 50, |i| {
        let id = &ids[i % ids.len()];
        let (st, r) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": format!("echo {i}")})));
        (st == 200 && r["stdout"] == format!("{i}\n")).then_some(()).ok_or(format!("{st} {r}"))
    });
    let exec_wall = started.elapsed().as_secs_f64();
    let (_, mut exec_ms) = split(ran);
    let (rss_end, rss_peak) = s.rss_kib();

    let mut create_ms = create_ms;
    println!(
        "{}",
        json!({
            "vms": vms, "execs": execs, "errors": 0,
            "createAllS": round(create_wall),
            "createMs": {"p50": p(&mut create_ms, 0.5), "p99": p(&mut create_ms, 0.99)},
            "execAllS": round(exec_wall), "execsPerS": round(execs as f64 / exec_wall),
            "execMs": {"p50": p(&mut exec_ms, 0.5), "p99": p(&mut exec_ms, 0.99)},
            "managerRssKiB": {"idle": rss_idle, "with VMs": rss_vms, "after execs": rss_end, "peak": rss_peak},
            // What each idle VM's cgroup is charged (its processes and their page cache).
            "idleVmKiB": {"cgroupChargedP50": p(&mut charged, 0.5), "cgroupChargedP99": p(&mut charged, 0.99)},
        })
    );
    for id in &ids {
        assert_eq!(s.call("DELETE", &format!("/v1/vms/{id}"), None).0, 204);
    }
}

/// Runs `f(0..n)` with at most `width` in flight; each result with its latency (ms). Panics with
/// every failure when any call failed.
fn parallel<T: Send>(n: usize, width: usize, f: impl Fn(usize) -> Result<T, String> + Sync) -> Vec<(T, f64)> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(n));
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..width.min(n) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                match f(i) {
                    Ok(v) => out.lock().unwrap().push((v, t.elapsed().as_secs_f64() * 1000.0)),
                    Err(e) => errors.lock().unwrap().push(format!("#{i}: {e}")),
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{} of {n} failed:\n{}", errors.len(), errors.join("\n"));
    out.into_inner().unwrap()
}

fn split<T>(results: Vec<(T, f64)>) -> (Vec<T>, Vec<f64>) {
    results.into_iter().unzip()
}

fn p(samples: &mut [f64], q: f64) -> f64 {
    round(rds_testkit::percentile(samples, q))
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Memory charged to VM `id`'s cgroup (v2 `memory.current`, v1 `memory.usage_in_bytes`), KiB.
fn cgroup_memory_kib(layout: &rds_runtime::cgroup::CgroupLayout, id: &str) -> u64 {
    for dir in layout.vm_dirs(id) {
        for file in ["memory.current", "memory.usage_in_bytes"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                return text.trim().parse::<u64>().unwrap_or(0) / 1024;
            }
        }
    }
    panic!("no memory controller file for VM {id}");
}
