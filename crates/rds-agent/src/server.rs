//! The agent's HTTP/1.1 server over hybrid vsock (a Unix socket in the sandbox runtime and tests).
//!
//! One current-thread tokio runtime (file work on the blocking pool) keeps the idle footprint
//! small; one task per connection; keep-alive. The agent never listens on TCP and marks itself
//! non-dumpable, so code in the guest can neither reach it nor inspect it.

mod bridge_relay;
mod http;
mod routes;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rds_proto::{AGENT_VSOCK_PORT, DEFAULT_OUTPUT_CAP, READY_VSOCK_PORT, SANDBOX_UID, WORKSPACE};
use rds_vsock::Listener;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::exec::Executor;
use crate::run::Runner;

/// How long in-flight requests may finish after a shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the readiness announcement may take.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent serves and as whom user code runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory user code works in (default `/workspace`).
    pub workspace: PathBuf,
    /// Uid user code runs as.
    pub uid: u32,
    /// Gid user code runs as.
    pub gid: u32,
    /// Cap on each of stdout and stderr.
    pub output_cap: usize,
    /// Run each command in a cgroup of its own (guests and sandboxes; never an agent on a host,
    /// whose cgroups are not its to change). See [`crate::exec::cgroup`].
    pub exec_cgroups: bool,
    /// Pre-started interpreters per language for `run-*` (0: every run starts its own).
    pub warm_pool: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            workspace: PathBuf::from(WORKSPACE),
            uid: SANDBOX_UID,
            gid: SANDBOX_UID,
            output_cap: DEFAULT_OUTPUT_CAP,
            exec_cgroups: false,
            warm_pool: crate::run::pool::DEFAULT_WARM_POOL,
        }
    }
}

/// Where the agent accepts connections.
#[derive(Debug)]
pub enum ListenOn {
    /// Bind a Unix socket (0600) speaking the hybrid-vsock handshake for [`AGENT_VSOCK_PORT`].
    Uds(PathBuf),
    /// An inherited, already listening Unix socket (same handshake).
    Fd(OwnedFd),
    /// `AF_VSOCK` on this port (inside a microVM).
    Vsock(u32),
    /// The agent channel on this virtio-serial port device (inside a QEMU microVM), whose
    /// streams to [`AGENT_VSOCK_PORT`] are the agent's connections.
    Serial(PathBuf),
}

/// How a guest's agent reaches the host (its readiness call, the peer bridge).
#[derive(Clone)]
pub(crate) enum HostDial {
    /// `AF_VSOCK` to CID 2.
    Vsock,
    /// A stream of the serial channel.
    Channel(rds_mux::guest::GuestChannel),
}

/// How long a dial over the serial channel waits for a session with the host.
const CHANNEL_WAIT: Duration = Duration::from_secs(10);

impl HostDial {
    /// Connects to host port `port`.
    pub(crate) async fn dial(&self, port: u32) -> std::io::Result<rds_vsock::Stream> {
        match self {
            HostDial::Vsock => rds_vsock::dial_host(port).await,
            HostDial::Channel(channel) => channel.dial(port, CHANNEL_WAIT).await.map(rds_vsock::Stream::Unix),
        }
    }
}

/// `rds-agent serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// Directory user code works in.
    #[arg(long, default_value = WORKSPACE)]
    workspace: PathBuf,
    /// Uid user code runs as.
    #[arg(long, default_value_t = SANDBOX_UID)]
    uid: u32,
    /// Gid user code runs as.
    #[arg(long, default_value_t = SANDBOX_UID)]
    gid: u32,
    /// Cap in bytes on each of stdout and stderr.
    #[arg(long, default_value_t = DEFAULT_OUTPUT_CAP)]
    output_cap: usize,
    /// Pre-started interpreters per language for run-ts/js/python (0 disables them; at most 8).
    #[arg(long, env = "RDS_AGENT_WARM_POOL", default_value_t = crate::run::pool::DEFAULT_WARM_POOL)]
    warm_pool: usize,
}

/// Exactly one listening mode.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ListenArgs {
    /// Bind this Unix socket (hybrid-vsock handshake).
    #[arg(long, value_name = "PATH")]
    listen_uds: Option<PathBuf>,
    /// Serve an inherited listening Unix socket.
    #[arg(long, value_name = "FD")]
    listen_fd: Option<i32>,
    /// Listen on AF_VSOCK.
    #[arg(long, value_name = "PORT")]
    listen_vsock: Option<u32>,
}

/// `rds-agent serve`.
pub fn main(args: ServeArgs) -> anyhow::Result<()> {
    let listen = match args.listen {
        ListenArgs { listen_uds: Some(path), .. } => ListenOn::Uds(path),
        ListenArgs { listen_fd: Some(fd), .. } => ListenOn::Fd(inherited_socket(fd)?),
        ListenArgs { listen_vsock: Some(port), .. } => ListenOn::Vsock(port),
        _ => anyhow::bail!("one of --listen-uds, --listen-fd or --listen-vsock is required"),
    };
    let cfg = AgentConfig {
        workspace: args.workspace,
        uid: args.uid,
        gid: args.gid,
        output_cap: args.output_cap,
        exec_cgroups: false,
        warm_pool: args.warm_pool,
    };
    run(listen, cfg)
}

/// Takes ownership of inherited fd `fd` after checking it is a socket.
fn inherited_socket(fd: i32) -> anyhow::Result<OwnedFd> {
    let stat = nix::sys::stat::fstat(fd).with_context(|| format!("--listen-fd {fd} is not an open descriptor"))?;
    anyhow::ensure!(stat.st_mode & libc::S_IFMT == libc::S_IFSOCK, "--listen-fd {fd} is not a socket");
    // SAFETY: the fd is open (fstat succeeded), was handed to this process for the agent to own,
    // and nothing else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Builds its own tokio runtime and serves until the process is told to stop.
pub fn run(listen: ListenOn, cfg: AgentConfig) -> anyhow::Result<()> {
    init_logging();
    // SAFETY: prctl(PR_SET_DUMPABLE) only changes a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!("could not mark the agent non-dumpable: {}", std::io::Error::last_os_error());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(5))
        .build()
        .context("starting the agent's runtime")?;
    runtime.block_on(serve(listen, cfg))
}

/// Logs to stderr (the serial console in a guest); `RDS_AGENT_LOG` sets the filter (default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RDS_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).try_init();
}

/// Shared state of the running agent.
pub(crate) struct Agent {
    cfg: AgentConfig,
    executor: Executor,
    runner: Runner,
    ptys: Arc<crate::pty::Ptys>,
    started: Instant,
    stop: watch::Sender<bool>,
}

impl Agent {
    /// Begins a graceful shutdown: under `init::supervise`, PID 1 is asked to stop everything
    /// (which stops the agent too); otherwise the agent stops itself.
    fn request_shutdown(&self) {
        if crate::init::is_supervised() {
            let _ = nix::sys::signal::kill(nix::unistd::getppid(), nix::sys::signal::Signal::SIGTERM);
        } else {
            self.stop.send_replace(true);
        }
    }
}

fn bind(listen: ListenOn) -> anyhow::Result<(Listener, Option<HostDial>)> {
    let listener = match listen {
        ListenOn::Uds(path) => {
            // The socket exists for a moment before rds-vsock narrows it to 0600: bind under a
            // umask that already denies everyone else.
            // SAFETY: umask only swaps the process file-creation mask; the runtime has not
            // started other threads yet.
            let old = unsafe { libc::umask(0o177) };
            let listener = Listener::uds(&path, AGENT_VSOCK_PORT);
            // SAFETY: as above, restoring the previous mask.
            unsafe { libc::umask(old) };
            listener.with_context(|| format!("listening on {}", path.display()))?
        }
        ListenOn::Fd(fd) => Listener::uds_from_fd(fd, AGENT_VSOCK_PORT).context("serving the inherited socket")?,
        ListenOn::Vsock(port) => {
            let listener = Listener::vsock(port).with_context(|| format!("listening on vsock port {port}"))?;
            return Ok((listener, Some(HostDial::Vsock)));
        }
        ListenOn::Serial(device) => {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let accept: rds_mux::mux::Acceptor = std::sync::Arc::new(move |port| {
                let tx = tx.clone();
                Box::pin(async move {
                    if port != AGENT_VSOCK_PORT {
                        return None;
                    }
                    let (ours, theirs) = tokio::net::UnixStream::pair().ok()?;
                    tx.send(ours).await.ok()?;
                    Some(theirs)
                })
            });
            let channel = rds_mux::guest::GuestChannel::spawn(&device, accept)
                .with_context(|| format!("opening the agent channel {}", device.display()))?;
            return Ok((Listener::streams(rx), Some(HostDial::Channel(channel))));
        }
    };
    Ok((listener, None))
}

async fn serve(listen: ListenOn, cfg: AgentConfig) -> anyhow::Result<()> {
    // Inside a microVM the agent also dials the host: the peer bridge and its readiness call.
    let (listener, host) = bind(listen)?;
    if let Some(host) = host {
        tokio::spawn(bridge_relay::run(host.clone()));
        tokio::spawn(announce_ready(host));
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let signalled = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    serve_listener(listener, cfg, signalled).await
}

/// Serves `listener` on the caller's tokio runtime until `stop` resolves or a client asks for
/// `/shutdown`. Changes nothing process-wide (no signal handlers, umask or dumpable flag), so
/// another program can embed an agent, as the manager's in-process tests do.
pub async fn serve_listener(
    listener: Listener,
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let cgroups = if cfg.exec_cgroups { crate::exec::cgroup::ExecCgroups::detect().map(Arc::new) } else { None };
    let (stop_tx, stopped) = watch::channel(false);
    let mut stop_requested = stopped.clone();
    let agent = Arc::new(Agent {
        executor: Executor::new(&cfg, cgroups.clone()),
        ptys: Arc::new(crate::pty::Ptys::new(&cfg, cgroups.clone())),
        runner: Runner::new(&cfg, cgroups),
        cfg,
        started: Instant::now(),
        stop: stop_tx,
    });
    tokio::pin!(stop);
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pending) => {
                    connections.spawn(connection(pending, agent.clone(), stopped.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stop => break,
            // Discarding the borrowed value inside keeps the future `Send` for embedders.
            _ = async { let _ = stop_requested.wait_for(|s| *s).await; } => break,
        }
    }
    agent.stop.send_replace(true);
    connections.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await;
    Ok(())
}

/// Tells the host that the agent listens (see [`READY_VSOCK_PORT`]). Nobody listening (an agent
/// restarted in a running VM) is fine.
async fn announce_ready(host: HostDial) {
    let dial = async {
        let mut stream = host.dial(READY_VSOCK_PORT).await?;
        stream.write_all(b"ready\n").await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(READY_TIMEOUT, dial).await {
        Ok(Ok(())) => tracing::debug!("announced readiness to the host"),
        Ok(Err(e)) => tracing::debug!("no readiness listener on the host: {e}"),
        Err(_) => tracing::debug!("announcing readiness timed out"),
    }
}

async fn connection(pending: rds_vsock::Pending, agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let stream = match pending.ready().await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("rejected a connection: {e}");
            return;
        }
    };
    let service = service_fn(move |req| routes::handle(req, agent.clone()));
    let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    let stopping = tokio::select! {
        _ = conn.as_mut() => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopping {
        // Finish the request in flight (e.g. the `/shutdown` reply), then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
    // Output buffers of up to a few MiB come and go per command; hand the freed pages back so
    // an idle agent stays small in every VM.
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}
