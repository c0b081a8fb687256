//! `rds bench create`: create → first exec latency, and exec round-trips through the manager
//! versus straight to the agent's socket, measured in the same run. `rds bench peers`: see
//! [`crate::bench_peers`]; `rds bench pty`: [`crate::bench_pty`]. Each prints one JSON line last.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Flags of `rds bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure: `create`, `peers`, `pty` (see [`crate::bench_pty`]), `network` (see
    /// [`crate::bench_network`]) or `snapshots` (see [`crate::bench_snapshots`]).
    #[arg(value_parser = ["create", "peers", "pty", "network", "snapshots"])]
    what: String,
    /// Use a running manager instead of starting one.
    #[arg(long, requires = "api_key")]
    url: Option<String>,
    /// API key for `--url`.
    #[arg(long, env = "RDS_API_KEY")]
    api_key: Option<String>,
    /// The manager's STORAGE_ROOT (to reach agent sockets directly) when using `--url`.
    #[arg(long, default_value = "/var/lib/rds")]
    storage_root: PathBuf,
    /// VMs to create for the create → first exec figure.
    #[arg(long, default_value_t = 20)]
    vms: usize,
    /// Exec calls (bridge calls, keystrokes) per path for the round-trip comparison.
    #[arg(long, default_value_t = 300)]
    execs: usize,
}

/// A manager started for the bench; killed on drop.
pub(crate) struct OwnManager {
    pub(crate) child: Child,
    cgroup_group: String,
    _dir: tempfile::TempDir,
}

impl Drop for OwnManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The bench's VMs are deleted; its cgroup parent group is now empty.
        rds_runtime::cgroup::CgroupLayout::remove_empty_group(&self.cgroup_group);
    }
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.what == "network" {
        return crate::bench_network::run(args.vms, args.execs);
    }
    if args.what == "snapshots" {
        return crate::bench_snapshots::run(args.vms);
    }
    let (url, key, storage_root, _own) = match &args.url {
        Some(url) => (url.clone(), args.api_key.clone().unwrap_or_default(), args.storage_root.clone(), None),
        None => {
            let (own, url, key, root) = start_manager(&[("RDS_NETWORK", "off")])?;
            (url, key, root, Some(own))
        }
    };
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let api = Api { agent, url, key };
    if args.what == "peers" {
        return crate::bench_peers::run(&api, &storage_root, args.execs);
    }
    if args.what == "pty" {
        return crate::bench_pty::run(&api, &storage_root, args.execs);
    }

    let mut create_ms = Vec::with_capacity(args.vms);
    for _ in 0..args.vms {
        let t0 = Instant::now();
        let id = api.create_vm()?;
        api.exec(&id, "true")?;
        create_ms.push(ms(t0.elapsed()));
        api.delete_vm(&id)?;
    }

    let id = api.create_vm()?;
    let result = (|| {
        api.exec(&id, "true")?; // warm the pooled connection
        let mut via_manager = Vec::with_capacity(args.execs);
        for _ in 0..args.execs {
            let t0 = Instant::now();
            api.exec(&id, "true")?;
            via_manager.push(ms(t0.elapsed()));
        }
        let socket = storage_root.join("vms").join(&id).join("agent.sock");
        let direct = direct_execs(&socket, args.execs)?;
        Ok::<_, anyhow::Error>((via_manager, direct))
    })();
    api.delete_vm(&id)?;
    let (mut via_manager, mut direct) = result?;

    let create = percentiles(&mut create_ms);
    let manager = percentiles(&mut via_manager);
    let agent_direct = percentiles(&mut direct);
    let report = json!({
        "bench": "create",
        "vms": args.vms,
        "execs": args.execs,
        "createToFirstExecMs": create,
        "execViaManagerMs": manager,
        "execDirectMs": agent_direct,
        "managerOverheadMsP50": round(manager["p50"].as_f64().unwrap_or(0.0) - agent_direct["p50"].as_f64().unwrap_or(0.0)),
        "ratioP50": round(manager["p50"].as_f64().unwrap_or(0.0) / agent_direct["p50"].as_f64().unwrap_or(1.0).max(1e-9)),
    });
    println!("{report}");
    Ok(())
}

/// A small blocking client for the manager API.
pub struct Api {
    pub agent: ureq::Agent,
    pub url: String,
    pub key: String,
}

impl Api {
    pub fn create_vm(&self) -> anyhow::Result<String> {
        let resp = self
            .agent
            .post(&format!("{}/v1/vms", self.url))
            .set("X-API-Key", &self.key)
            .send_json(json!({"cpu": 1, "memMb": 256}))
            .map_err(describe)?;
        let vm: Value = resp.into_json()?;
        vm["id"].as_str().map(str::to_string).context("create returned no id")
    }

    pub fn exec(&self, id: &str, cmd: &str) -> anyhow::Result<()> {
        let r: Value = self
            .agent
            .post(&format!("{}/v1/vms/{id}/exec", self.url))
            .set("X-API-Key", &self.key)
            .send_json(json!({"cmd": cmd}))
            .map_err(describe)?
            .into_json()?;
        if r["exitCode"] != json!(0) {
            bail!("exec failed: {r}");
        }
        Ok(())
    }

    pub fn delete_vm(&self, id: &str) -> anyhow::Result<()> {
        self.agent.delete(&format!("{}/v1/vms/{id}", self.url)).set("X-API-Key", &self.key).call().map_err(describe)?;
        Ok(())
    }
}

/// Turns an HTTP error status into a readable error.
pub fn describe(e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, r) => {
            anyhow::anyhow!("HTTP {code}: {}", r.into_string().unwrap_or_default())
        }
        other => other.into(),
    }
}

/// Exec round-trips over one kept-alive connection straight to the agent socket.
fn direct_execs(socket: &Path, n: usize) -> anyhow::Result<Vec<f64>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let agent = rds_agent_client::AgentClient::hybrid_vsock(socket);
        let request = rds_proto::ExecRequest { cmd: "true".into(), ..Default::default() };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n + 1 {
            let t0 = Instant::now();
            agent
                .exec(&request, Duration::from_secs(60))
                .await
                .with_context(|| format!("exec through {}", socket.display()))?;
            out.push(ms(t0.elapsed()));
        }
        out.remove(0); // first call opens the connection
        Ok(out)
    })
}

/// Starts `rds serve` from this executable on a free port with a temporary STORAGE_ROOT.
pub(crate) fn start_manager(env: &[(&str, &str)]) -> anyhow::Result<(OwnManager, String, String, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("rds-bench-").tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let key = format!("bench-{:032x}", rand::random::<u128>());
    let cgroup_group = format!("rds-bench-{port}");
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("PORT", port.to_string())
        .env("STORAGE_ROOT", dir.path())
        .env("API_KEY", &key)
        // A benchmark outruns any client: the API's rate limits are off.
        .env("RATE_LIMIT_PER_MIN", "0")
        .env("RATE_LIMIT_CREATE_PER_MIN", "0")
        .env("RATE_LIMIT_EXEC_PER_MIN", "0")
        .env("RATE_LIMIT_RUN_PER_MIN", "0")
        .env("RATE_LIMIT_UPLOAD_PER_MIN", "0")
        .env("RATE_LIMIT_DOWNLOAD_PER_MIN", "0")
        .env("MAX_VMS", "100")
        .env("VM_SECRET_KEY", format!("bench-{:032x}", rand::random::<u128>()))
        .env("PEER_CALLS_PER_MIN", "0")
        // Its own cgroup parent: a bench manager must never reap the VMs of a real one on this host.
        .env("RDS_CGROUP_GROUP", &cgroup_group)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting rds serve")?;
    let root = dir.path().to_path_buf();
    let mut own = OwnManager { child, cgroup_group, _dir: dir };
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ureq::get(&format!("{url}/v1/health")).call().is_ok() {
            break;
        }
        if let Some(status) = own.child.try_wait()? {
            bail!("rds serve exited early: {status}");
        }
        if Instant::now() > deadline {
            bail!("rds serve did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((own, url, key, root))
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rounds to microseconds.
pub fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// p50 and p95 (nearest rank) of the samples.
pub fn percentiles(samples: &mut [f64]) -> Value {
    let n = samples.len();
    let mut at = |q: f64| round(rds_testkit::percentile(samples, q));
    json!({"p50": at(0.50), "p95": at(0.95), "n": n})
}
