//! `rds bench network`: how long an egress policy change takes (rds-net's `apply_policy` alone,
//! and `PATCH /v1/vms/{id}/network` end to end), and VM create → first exec with networking on
//! versus off, in the same run.
//!
//! Everything happens inside a throwaway network namespace (`rds-bench-<pid>`), so the host's
//! own nftables ruleset, interfaces and `ip_forward` are never touched.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rds_net::{bench_apply, AddressPool, EgressPolicy, InstallationId, Network, NetworkConfig};
use serde_json::{json, Value};

use crate::bench::{describe, ms, percentiles, round, start_manager, Api};

/// Policy applies timed directly against rds-net.
const APPLY_ITERATIONS: usize = 50;

/// The bench's network namespace; deleted on drop.
struct BenchNamespace(String);

impl Drop for BenchNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process in its own network namespace (a stand-in sandbox); killed on drop.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark and prints its JSON line.
pub fn run(vms: usize, patches: usize) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("rds bench network needs root (it creates a network namespace, links and nft rules)");
    }
    let name = format!("rds-bench-{}", std::process::id());
    let status =
        Command::new("ip").args(["netns", "add", &name]).status().context("running `ip` (install iproute2)")?;
    if !status.success() {
        bail!("`ip netns add {name}` failed");
    }
    let ns = BenchNamespace(name);
    // A thread inside the namespace runs everything: its sockets, `ip`/`nft` children and the
    // managers it starts all live there.
    let path = format!("/run/netns/{}", ns.0);
    let report = std::thread::spawn(move || -> anyhow::Result<Value> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on an fd we own; it changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
        let apply = apply_bench()?;
        let (on_create, patch) = manager_bench(true, vms, patches)?;
        let (off_create, _) = manager_bench(false, vms, 0)?;
        let added = on_create["p50"].as_f64().unwrap_or(0.0) - off_create["p50"].as_f64().unwrap_or(0.0);
        Ok(json!({
            "bench": "network",
            "vms": vms,
            "applyPolicyMs": apply,
            "patchNetworkMs": patch,
            "createToFirstExecNetworkOnMs": on_create,
            "createToFirstExecNetworkOffMs": off_create,
            "networkAddedMsP50": round(added),
        }))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the bench thread panicked"))??;
    drop(ns);
    println!("{report}");
    Ok(())
}

/// `apply_policy` latency on one attached stand-in VM (rds-net's own bench).
fn apply_bench() -> anyhow::Result<Value> {
    let child = Command::new("unshare")
        .args(["--net", "sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .context("running `unshare` (util-linux)")?;
    let sleeper = Sleeper(child);
    let pid = sleeper.0.id() as i32;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()).unwrap_or(ours) == ours {
        if Instant::now() > deadline {
            bail!("the stand-in VM never got its own network namespace");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let pool = AddressPool::default();
        let network = Network::new(NetworkConfig::new(InstallationId::generate(), pool)).await?;
        let slot = pool.slot(0)?;
        network.attach_veth("bench-vm", &slot, pid).await?;
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let policies = [
            EgressPolicy::from_request(
                Some(true),
                &strings(&["11.22.33.10", "2001:db8::/32"]),
                &strings(&["example.com"]),
            )?,
            EgressPolicy::deny_all(),
        ];
        let bench = bench_apply(&network, "bench-vm", &slot, &policies, APPLY_ITERATIONS).await;
        network.detach("bench-vm", &slot).await?;
        anyhow::Ok(bench?)
    })?;
    drop(sleeper);
    Ok(
        json!({"p50": round(result.p50_ms), "p90": round(result.p90_ms), "max": round(result.max_ms), "n": result.iterations}),
    )
}

/// Create → first exec latency with networking `on` or off, and (when on) PATCH latency.
fn manager_bench(on: bool, vms: usize, patches: usize) -> anyhow::Result<(Value, Value)> {
    let mode = if on { "on" } else { "off" };
    let (own, url, key, _root) = start_manager(&[("RDS_NETWORK", mode)])?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let api = Api { agent, url, key };
    let mut create_ms = Vec::with_capacity(vms);
    for _ in 0..vms {
        let t0 = Instant::now();
        let id = api.create_vm()?;
        api.exec(&id, "true")?;
        create_ms.push(ms(t0.elapsed()));
        api.delete_vm(&id)?;
    }
    let mut patch_ms = Vec::with_capacity(patches);
    if patches > 0 {
        let id = api.create_vm()?;
        let result = (|| {
            for i in 0..patches {
                let body = if i % 2 == 0 {
                    json!({"outboundInternet": true, "allowIps": ["11.22.33.10"], "allowDomains": ["example.com"]})
                } else {
                    json!({"outboundInternet": false})
                };
                let t0 = Instant::now();
                api.agent
                    .request("PATCH", &format!("{}/v1/vms/{id}/network", api.url))
                    .set("X-API-Key", &api.key)
                    .send_json(body)
                    .map_err(describe)?;
                patch_ms.push(ms(t0.elapsed()));
            }
            anyhow::Ok(())
        })();
        api.delete_vm(&id)?;
        result?;
    }
    drop(own);
    Ok((percentiles(&mut create_ms), percentiles(&mut patch_ms)))
}
