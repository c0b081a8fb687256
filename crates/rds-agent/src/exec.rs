//! Running commands as the sandbox user: `POST /exec`, and the process machinery [`crate::run`]
//! builds on (spawn without privileges, capped capture, timeout that kills the whole session,
//! `execId` idempotency).

pub mod attach;
pub mod capture;
pub mod cgroup;
pub mod idempotency;
pub mod process;
pub mod session;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rds_proto::{EnvMap, ExecRequest, ExecResult, DEFAULT_TIMEOUT_MS};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::files;
use crate::server::AgentConfig;
use capture::{capture, Captured, Chunk, LiveOutput, Pipe};
use cgroup::{ExecCgroups, ExecGroup};
use idempotency::{Claim, IdempotencyCache, Outcome};
pub use process::Identity;
use process::{base_env, find_program, sandboxed_command, CommandSpec};

/// Why an exec or run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The working directory is missing or the sandbox user cannot enter it.
    #[error("cwd `{0}` does not exist or is not a directory the sandbox user can enter")]
    MissingCwd(String),
    /// The execId was used before with a different request.
    #[error("execId `{0}` was already used for a different request; use a new execId")]
    Conflict(String),
    /// The first request with this execId failed before its command started.
    #[error("the first request with execId `{0}` failed before starting; retry with a new execId")]
    Abandoned(String),
    /// The interpreter or shell this request needs is not installed.
    #[error("{0} is not installed in this guest")]
    Unsupported(&'static str),
    /// The process could not be started.
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// Preparing the run failed on the agent's side.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The task supervising the command failed.
    #[error("the command's supervisor task failed")]
    Lost,
    /// A named thing (a code context) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served in the current state (e.g. too many contexts).
    #[error("{0}")]
    Refused(String),
}

/// A command ready to start.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Absolute directory to start in.
    pub cwd: PathBuf,
    /// How the caller named `cwd`, for error messages.
    pub cwd_label: String,
    /// Written to the command's stdin, then closed; `None` gives it `/dev/null`. A command
    /// started ahead of its run gets an empty one (piped) and its input at [`Running::hand_over`].
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub output_cap: usize,
    pub identity: Identity,
    /// An extra channel read like stdout (run-*: the result FIFO) and its cap.
    pub side_channel: Option<(tokio::net::unix::pipe::Receiver, usize)>,
    /// Where the command gets a cgroup of its own, if anywhere.
    pub cgroups: Option<Arc<ExecCgroups>>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signalled(i32),
    TimedOut,
}

/// Everything a finished command produced.
pub struct Finished {
    pub termination: Termination,
    pub stdout: Captured,
    pub stderr: Captured,
    pub side_channel: Option<Captured>,
    pub duration: Duration,
}

/// A started command.
pub struct Running {
    child: tokio::process::Child,
    pid: i32,
    started: Instant,
    stdin: Feed,
    timeout: Duration,
    output_cap: usize,
    side_channel: Option<(tokio::net::unix::pipe::Receiver, usize)>,
    /// The command's own cgroup (killed whole on timeout).
    group: Option<ExecGroup>,
}

/// What a started command's piped stdin is fed.
enum Feed {
    /// Nothing (stdin is `/dev/null`, or a pre-started interpreter not handed its run yet).
    Nothing,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// Chunks as they come; end of file once the sender is gone.
    Stream(mpsc::Receiver<Vec<u8>>),
}

/// Starts `launch` as the sandbox user.
pub fn spawn(launch: Launch) -> Result<Running, ExecError> {
    let group = own_group(launch.cgroups.as_ref())?;
    let cgroup_procs = group.as_ref().map(ExecGroup::procs_fds).unwrap_or_default();
    let spec = CommandSpec {
        cgroup_procs: &cgroup_procs,
        program: &launch.program,
        args: &launch.args,
        env: &launch.env,
        cwd: &launch.cwd,
        identity: launch.identity,
        stdin: launch.stdin.is_some(),
    };
    let program = launch.program.display().to_string();
    let mut cmd = sandboxed_command(&spec).map_err(|e| ExecError::Invalid(e.to_string()))?;
    let started = Instant::now();
    let child = cmd.spawn().map_err(|source| match source.raw_os_error() {
        // Raised by the child's chdir, which runs as the sandbox user.
        Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES) => ExecError::MissingCwd(launch.cwd_label.clone()),
        _ => ExecError::Spawn { program, source },
    })?;
    let pid = child.id().expect("a just-spawned child has a pid") as i32;
    Ok(Running {
        child,
        pid,
        started,
        stdin: launch.stdin.map_or(Feed::Nothing, Feed::Bytes),
        timeout: launch.timeout,
        output_cap: launch.output_cap,
        side_channel: launch.side_channel,
        group,
    })
}

impl Running {
    /// True once the command has exited or is exiting (a pre-started interpreter that died while
    /// waiting; a multi-threaded one killed shows as a zombie before it can be reaped).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None)) || !rds_host::ProcStat::read(self.pid).is_some_and(|s| s.is_live())
    }

    /// Hands a command started ahead of its run (stdin piped, see [`Launch::stdin`]) its input:
    /// `stdin` is written and closed once [`Running::finish`] runs, the timeout and the duration
    /// count from now, and whatever it printed while waiting is dropped (it is not the run's).
    pub fn hand_over(&mut self, stdin: Vec<u8>, timeout: Duration) {
        use std::os::fd::AsFd;
        if let Some(out) = &self.child.stdout {
            capture::discard_now(out.as_fd());
        }
        if let Some(err) = &self.child.stderr {
            capture::discard_now(err.as_fd());
        }
        self.stdin = Feed::Bytes(stdin);
        self.timeout = timeout;
        self.started = Instant::now();
    }

    /// Feeds a command started with piped stdin (see [`Launch::stdin`]) the chunks `chunks`
    /// brings instead, closing its stdin once the sender is dropped.
    pub fn stream_stdin(&mut self, chunks: mpsc::Receiver<Vec<u8>>) {
        self.stdin = Feed::Stream(chunks);
    }

    /// The command's pid, which is also its session and process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills everything the command started: its cgroup, or else its session.
    async fn kill_all(&self) {
        kill_tree(self.pid, self.group.as_ref()).await;
    }

    /// The process and its cgroup, for a caller that drives it itself (a code context's
    /// interpreter): stdin, stdout and stderr are piped and still in the child.
    pub fn into_process(self) -> (tokio::process::Child, i32, Option<ExecGroup>) {
        (self.child, self.pid, self.group)
    }

    /// Feeds stdin, captures output (forwarding it to `live` as it arrives), enforces the timeout
    /// and returns once the command and its pipes are done.
    pub async fn finish(mut self, live: Option<mpsc::UnboundedSender<Chunk>>) -> Finished {
        // A command that exits without reading its stdin is not an error.
        let stdin_task = match (self.child.stdin.take(), std::mem::replace(&mut self.stdin, Feed::Nothing)) {
            (Some(mut pipe), Feed::Bytes(data)) => Some(tokio::spawn(async move {
                let _ = pipe.write_all(&data).await;
            })),
            (Some(mut pipe), Feed::Stream(mut chunks)) => Some(tokio::spawn(async move {
                while let Some(chunk) = chunks.recv().await {
                    if pipe.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            })),
            _ => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let live_for = |pipe| live.clone().map(|sender| LiveOutput { pipe, sender });
        let stdout = self.child.stdout.take().expect("stdout is piped");
        let stderr = self.child.stderr.take().expect("stderr is piped");
        let out = tokio::spawn(capture(stdout, self.output_cap, live_for(Pipe::Stdout), stop_rx.clone()));
        let err = tokio::spawn(capture(stderr, self.output_cap, live_for(Pipe::Stderr), stop_rx.clone()));
        let side = self.side_channel.take().map(|(rx, cap)| tokio::spawn(capture(rx, cap, None, stop_rx)));
        drop(live);

        let deadline = tokio::time::Instant::from_std(self.started) + self.timeout;
        let termination = match tokio::time::timeout_at(deadline, self.child.wait()).await {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => Termination::Exited(code),
                (None, Some(signal)) => Termination::Signalled(signal),
                (None, None) => Termination::Signalled(libc::SIGKILL),
            },
            Ok(Err(e)) => {
                tracing::error!(pid = self.pid, "waiting for a command failed: {e}");
                self.kill_all().await;
                Termination::Signalled(libc::SIGKILL)
            }
            Err(_) => {
                self.kill_all().await;
                let _ = self.child.wait().await;
                Termination::TimedOut
            }
        };
        let duration = self.started.elapsed();

        // Everything the command wrote is in its pipes now: take it and stop (see `capture`).
        let _ = stop.send(true);
        let stdout = out.await.unwrap_or_default();
        let stderr = err.await.unwrap_or_default();
        let side_channel = match side {
            Some(task) => Some(task.await.unwrap_or_default()),
            None => None,
        };
        if let Some(task) = stdin_task {
            task.abort();
        }
        Finished { termination, stdout, stderr, side_channel, duration }
    }
}

/// A cgroup of its own for a new command, where commands get one.
pub fn own_group(cgroups: Option<&Arc<ExecCgroups>>) -> Result<Option<ExecGroup>, ExecError> {
    cgroups
        .map(|c| {
            c.create().map_err(|source| ExecError::Io { context: "cannot create the command's cgroup".into(), source })
        })
        .transpose()
}

/// Kills everything a command started: its cgroup, or else the session it leads.
pub async fn kill_tree(pid: i32, group: Option<&ExecGroup>) {
    match group {
        Some(group) => group.kill().await,
        None => session::kill_session(pid).await,
    }
}

impl Finished {
    /// `(exitCode, signal, timedOut)` as the wire types report them.
    pub fn status_fields(&self) -> (Option<i32>, Option<i32>, bool) {
        match self.termination {
            Termination::Exited(code) => (Some(code), None, false),
            Termination::Signalled(signal) => (None, Some(signal), false),
            Termination::TimedOut => (None, None, true),
        }
    }

    /// The result of a plain exec.
    pub fn exec_result(&self) -> ExecResult {
        let (exit_code, signal, timed_out) = self.status_fields();
        ExecResult {
            exit_code,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
            timed_out,
            signal,
            duration_ms: self.duration.as_millis() as u64,
            oom_killed: false,
        }
    }
}

/// A command (or its earlier run, for a retried id) whose result is on its way.
pub struct Handle<T> {
    kind: HandleKind<T>,
}

enum HandleKind<T> {
    Live(JoinHandle<T>),
    Replay { id: String, outcome: Outcome<T> },
}

impl<T: Clone + Send + Sync + 'static> Handle<T> {
    /// Starts (or joins) a run: `prepare` validates and spawns, `drive` produces the result.
    ///
    /// With an id, a retry of the same request joins the first run; a different request is a
    /// conflict. Nothing runs twice.
    pub fn start<P, D, F>(
        cache: &IdempotencyCache<T>,
        id: Option<&str>,
        fingerprint: &str,
        prepare: impl FnOnce() -> Result<P, ExecError>,
        drive: D,
    ) -> Result<Self, ExecError>
    where
        D: FnOnce(P) -> F,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let Some(id) = id else {
            let prepared = prepare()?;
            return Ok(Handle { kind: HandleKind::Live(tokio::spawn(drive(prepared))) });
        };
        match cache.claim(id, fingerprint) {
            Claim::Conflict => Err(ExecError::Conflict(id.to_string())),
            Claim::Existing(outcome) => Ok(Handle { kind: HandleKind::Replay { id: id.to_string(), outcome } }),
            Claim::New(completion) => {
                // On error `completion` drops unfinished and the id is forgotten: nothing ran.
                let prepared = prepare()?;
                let running = drive(prepared);
                // Driven by its own task so a client that disconnects cannot cancel the command.
                let task = tokio::spawn(async move {
                    let value = running.await;
                    completion.finish(value.clone());
                    value
                });
                Ok(Handle { kind: HandleKind::Live(task) })
            }
        }
    }

    /// True when this request joined an earlier run with the same id (its output is not live).
    pub fn is_replay(&self) -> bool {
        matches!(self.kind, HandleKind::Replay { .. })
    }

    /// Waits for the result.
    pub async fn result(self) -> Result<T, ExecError> {
        match self.kind {
            HandleKind::Live(task) => task.await.map_err(|_| ExecError::Lost),
            HandleKind::Replay { id, outcome } => outcome.wait().await.ok_or(ExecError::Abandoned(id)),
        }
    }
}

/// Runs `POST /exec` requests.
pub struct Executor {
    workspace: PathBuf,
    identity: Identity,
    output_cap: usize,
    shell: Option<PathBuf>,
    cache: IdempotencyCache<ExecResult>,
    cgroups: Option<Arc<ExecCgroups>>,
}

impl Executor {
    /// An executor for the agent configured by `cfg` (bash if installed, else sh).
    pub fn new(cfg: &AgentConfig, cgroups: Option<Arc<ExecCgroups>>) -> Self {
        Executor {
            cgroups,
            workspace: cfg.workspace.clone(),
            identity: Identity { uid: cfg.uid, gid: cfg.gid },
            output_cap: cfg.output_cap,
            shell: find_program("bash").or_else(|| find_program("sh")),
            cache: IdempotencyCache::new(idempotency::DEFAULT_CAPACITY),
        }
    }

    /// Validates and starts `req` (or joins the earlier run with its `execId`), forwarding live
    /// output to `live` when given.
    pub fn start(
        &self,
        req: ExecRequest,
        live: Option<mpsc::UnboundedSender<Chunk>>,
    ) -> Result<Handle<ExecResult>, ExecError> {
        let fingerprint = serde_json::to_string(&req).unwrap_or_default();
        Handle::start(
            &self.cache,
            req.exec_id.as_deref(),
            &fingerprint,
            || spawn(self.launch_for(&req)?),
            |running: Running| async move { running.finish(live).await.exec_result() },
        )
    }

    /// Validates and starts `req` with its stdin piped, for a caller that streams it in
    /// ([`Running::stream_stdin`]). Such a run has no `execId` (its input cannot be replayed).
    pub fn start_attached(&self, req: &ExecRequest) -> Result<Running, ExecError> {
        if req.stdin.is_some() {
            return Err(ExecError::Invalid(
                "invalid field `stdin`: an attached exec reads its stdin as it comes".into(),
            ));
        }
        if req.exec_id.is_some() {
            return Err(ExecError::Invalid(
                "invalid field `execId`: an attached exec cannot be retried (its stdin is not kept)".into(),
            ));
        }
        spawn(Launch { stdin: Some(Vec::new()), ..self.launch_for(req)? })
    }

    fn launch_for(&self, req: &ExecRequest) -> Result<Launch, ExecError> {
        if req.cmd.is_empty() {
            return Err(ExecError::Invalid("invalid field `cmd`: must not be empty".into()));
        }
        reject_nul("cmd", &req.cmd)?;
        let shell = self.shell.clone().ok_or(ExecError::Unsupported("a shell (bash or sh)"))?;
        let (cwd, cwd_label) = resolve_cwd(&self.workspace, req.cwd.as_deref())?;
        Ok(Launch {
            program: shell,
            args: vec!["-c".into(), req.cmd.clone()],
            env: sandbox_env(&self.workspace, &BTreeMap::new(), req.env.as_ref())?,
            cwd,
            cwd_label,
            stdin: req.stdin.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout: timeout_of(req.timeout_ms)?,
            output_cap: self.output_cap,
            identity: self.identity,
            side_channel: None,
            cgroups: self.cgroups.clone(),
        })
    }
}

/// Resolves a caller's `cwd` under the workspace (default: the workspace itself).
pub fn resolve_cwd(workspace: &Path, cwd: Option<&str>) -> Result<(PathBuf, String), ExecError> {
    match cwd {
        None => Ok((workspace.to_path_buf(), workspace.display().to_string())),
        Some(raw) => {
            reject_nul("cwd", raw)?;
            let relative = files::resolve_workspace_path(workspace, raw)
                .map_err(|e| ExecError::Invalid(format!("invalid field `cwd`: {e}")))?;
            Ok((workspace.join(relative), raw.to_string()))
        }
    }
}

/// The fresh environment: sandbox defaults, then `extra` (per language), then the caller's env.
pub fn sandbox_env(
    workspace: &Path,
    extra: &BTreeMap<String, String>,
    caller: Option<&EnvMap>,
) -> Result<BTreeMap<String, String>, ExecError> {
    let mut env = base_env(workspace);
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(EnvMap(vars)) = caller {
        for (key, value) in vars {
            reject_nul(&format!("env.{key}"), value)?;
            env.insert(key.clone(), value.clone());
        }
    }
    Ok(env)
}

/// Longest timeout a request may ask for (one day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// The timeout a request asked for (default [`DEFAULT_TIMEOUT_MS`]); zero or more than
/// [`MAX_TIMEOUT_MS`] is rejected.
pub fn timeout_of(timeout_ms: Option<u64>) -> Result<Duration, ExecError> {
    match timeout_ms {
        Some(0) => Err(ExecError::Invalid("invalid field `timeoutMs`: must be greater than 0".into())),
        Some(ms) if ms > MAX_TIMEOUT_MS => {
            Err(ExecError::Invalid(format!("invalid field `timeoutMs`: must be at most {MAX_TIMEOUT_MS} (one day)")))
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(DEFAULT_TIMEOUT_MS)),
    }
}

/// Shortest idle timeout a request may ask for: a shorter one would end a context or terminal
/// before its interpreter or shell has even started.
pub const MIN_IDLE_TIMEOUT_MS: u64 = 1000;

/// An idle timeout a request asked for in `idleTimeoutMs` (`default` without one); under
/// [`MIN_IDLE_TIMEOUT_MS`] or more than [`MAX_TIMEOUT_MS`] is rejected.
pub fn idle_timeout_of(idle_timeout_ms: Option<u64>, default: Duration) -> Result<Duration, ExecError> {
    match idle_timeout_ms {
        None => Ok(default),
        Some(ms) if ms < MIN_IDLE_TIMEOUT_MS => {
            Err(ExecError::Invalid(format!("invalid field `idleTimeoutMs`: must be at least {MIN_IDLE_TIMEOUT_MS}")))
        }
        Some(ms) if ms > MAX_TIMEOUT_MS => {
            Err(ExecError::Invalid(format!("invalid field `idleTimeoutMs`: must be at most {MAX_TIMEOUT_MS}")))
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// Rejects strings that cannot be passed to a process (argv and env are NUL-terminated).
pub fn reject_nul(field: &str, value: &str) -> Result<(), ExecError> {
    if value.contains('\0') {
        return Err(ExecError::Invalid(format!("invalid field `{field}`: must not contain NUL bytes")));
    }
    Ok(())
}
