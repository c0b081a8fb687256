//! `rds-agent bench [exec|run]`, measured through a real `rds-agent serve` on a Unix socket
//! against a bare start of the same program in the same run; each prints one line of JSON last.
//!
//! * `exec`: the round-trip of `true` versus a bare fork/exec (and `bash -c true`).
//! * `run`: `run-ts`, `run-js` and `run-python` of a trivial result with the warm pool off and on,
//!   versus bare `deno eval 1`, `deno run`, `node -e 0` and `python3 -c pass`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rds_agent_client::AgentClient;
use rds_proto::{ExecRequest, AGENT_VSOCK_PORT};

mod run;

/// `rds-agent bench` flags.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value_t = BenchKind::Exec)]
    kind: BenchKind,
    /// Agent binary to start (default: this executable).
    #[arg(long, value_name = "PATH")]
    agent_bin: Option<PathBuf>,
    /// Calls per measurement (default: 1000 for exec, 40 for run).
    #[arg(long)]
    calls: Option<usize>,
    /// run: pause before each timed call, standing for a caller's think time between snippets
    /// (the pool refills meanwhile); back-to-back figures are reported beside.
    #[arg(long, default_value_t = 150)]
    gap_ms: u64,
}

/// The benchmarks `rds-agent bench` has.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchKind {
    /// Exec of `true`.
    Exec,
    /// run-ts / run-js / run-python of a trivial result, warm pool off and on.
    Run,
}

/// `rds-agent bench`.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let calls = args.calls.unwrap_or(match args.kind {
        BenchKind::Exec => 1000,
        BenchKind::Run => 40,
    });
    anyhow::ensure!(calls > 0, "--calls must be at least 1");
    let bin = match args.agent_bin {
        Some(bin) => bin,
        None => std::env::current_exe().context("finding this executable")?,
    };
    let dir = std::env::temp_dir().join(format!("rds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the bench directory")?;
    let result = match args.kind {
        BenchKind::Exec => bench(&bin, &dir, calls),
        BenchKind::Run => crate::bench::run::bench(&bin, &dir, calls, Duration::from_millis(args.gap_ms)),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A started `rds-agent serve` with its own workspace under `dir`.
struct BenchAgent {
    process: AgentProcess,
    socket: PathBuf,
}

impl BenchAgent {
    /// Starts `bin` serving `dir/<name>.sock` over `dir/<name>-ws`, with `env` added to its own
    /// environment, and waits until it answers.
    fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        env: &[(&str, &str)],
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let socket = dir.join(format!("{name}.sock"));
        let workspace = dir.join(format!("{name}-ws"));
        std::fs::create_dir_all(&workspace).context("creating the bench workspace")?;
        // Root runs commands as uid 1000 like a guest; anyone else runs them as themselves.
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let (uid, gid) = if uid == 0 { (1000, 1000) } else { (uid, gid) };
        if uid == 1000 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::chown(&workspace, Some(uid), Some(gid))?;
        }
        let process = AgentProcess(
            Command::new(bin)
                .args(["serve", "--listen-uds"])
                .arg(&socket)
                .arg("--workspace")
                .arg(&workspace)
                .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
        runtime.block_on(async {
            rds_vsock::connect_retry(&socket, AGENT_VSOCK_PORT, Duration::from_secs(10))
                .await
                .context("the agent did not come up")
        })?;
        Ok(BenchAgent { process, socket })
    }
}

fn bench(bin: &Path, dir: &Path, calls: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let BenchAgent { process: mut agent, socket } = BenchAgent::start(bin, dir, "agent", &[], &runtime)?;
    let pid = agent.0.id();
    let rss_start = vm_rss_kib(pid)?;

    let request = ExecRequest { cmd: "true".into(), ..ExecRequest::default() };
    let (per_connection, keep_alive) = runtime.block_on(async {
        // Warm-up, so page-ins and first-use costs are not measured.
        for _ in 0..20 {
            exec_new_connection(&socket, &request).await?;
        }
        let mut per_connection = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            exec_new_connection(&socket, &request).await?;
            per_connection.push(start.elapsed());
        }
        // One connection, opened by an untimed first call.
        let agent = AgentClient::hybrid_vsock(&socket);
        exec(&agent, &request).await?;
        let mut keep_alive = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            exec(&agent, &request).await?;
            keep_alive.push(start.elapsed());
        }
        anyhow::Ok((per_connection, keep_alive))
    })?;

    let mut bare = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let status = Command::new("true").stdin(Stdio::null()).stdout(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "bare `true` failed");
        bare.push(start.elapsed());
    }
    // The agent runs commands through `bash -c`; the same from here separates shell startup
    // from the agent's own cost.
    let mut bare_shell = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let status = Command::new("bash").args(["-c", "true"]).stdin(Stdio::null()).stdout(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "bare `bash -c true` failed");
        bare_shell.push(start.elapsed());
    }
    // Let the agent settle (blocking threads idle out) before sampling its idle RSS again.
    std::thread::sleep(Duration::from_secs(6));
    let rss_end = vm_rss_kib(pid)?;
    agent.stop();

    let exec_p50 = percentile_ms(&per_connection, 0.50);
    let exec_p95 = percentile_ms(&per_connection, 0.95);
    let ka_p50 = percentile_ms(&keep_alive, 0.50);
    let ka_p95 = percentile_ms(&keep_alive, 0.95);
    let bare_p50 = percentile_ms(&bare, 0.50);
    let bare_p95 = percentile_ms(&bare, 0.95);
    let shell_p50 = percentile_ms(&bare_shell, 0.50);
    // Written by hand so the keys keep the documented order.
    println!(
        "{{\"bench\":\"agent\",\"calls\":{calls},\"exec_p50_ms\":{},\"exec_p95_ms\":{},\"bare_p50_ms\":{},\
         \"bare_p95_ms\":{},\"overhead_p50_ms\":{},\"ratio_p50\":{},\"idle_rss_kib\":{},\
         \"idle_rss_start_kib\":{rss_start},\"idle_rss_after_kib\":{rss_end},\"keepalive_exec_p50_ms\":{},\
         \"keepalive_exec_p95_ms\":{},\"bare_shell_p50_ms\":{},\"overhead_vs_shell_p50_ms\":{}}}",
        round(exec_p50),
        round(exec_p95),
        round(bare_p50),
        round(bare_p95),
        round(exec_p50 - bare_p50),
        round(exec_p50 / bare_p50),
        rss_end.max(rss_start),
        round(ka_p50),
        round(ka_p95),
        round(shell_p50),
        round(exec_p50 - shell_p50),
    );
    Ok(())
}

/// Kills the agent when the bench ends, even on error.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn stop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Most an exec of `true` may take before the bench gives up.
const CALL_LIMIT: Duration = Duration::from_secs(30);

async fn exec_new_connection(socket: &Path, request: &ExecRequest) -> anyhow::Result<()> {
    exec(&AgentClient::hybrid_vsock(socket).max_idle(0), request).await
}

async fn exec(agent: &AgentClient, request: &ExecRequest) -> anyhow::Result<()> {
    let result = agent.exec(request, CALL_LIMIT).await.context("exec")?;
    anyhow::ensure!(result.exit_code == Some(0), "`true` did not exit 0: {result:?}");
    Ok(())
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// The `q` quantile of `samples`, in milliseconds.
fn percentile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    rds_testkit::percentile(&mut ms, q)
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
