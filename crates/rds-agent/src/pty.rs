//! Interactive terminals: a shell (or a command) on a pseudo-terminal, as the sandbox user, that
//! clients attach to, detach from and re-attach to.
//!
//! A session is started by `POST /pty/open` and lives until its process exits and a client has
//! been told so, until it is killed, or until nobody was attached for its idle timeout. One task
//! per session reads the terminal: output goes to every attached client and into a bounded
//! scrollback that a client attaching later gets first. When the session's process exits,
//! everything it started is killed (its cgroup, else its session), the rest of its output is
//! read, and attached clients get the exit frame. Sessions live in the agent: they die with the VM.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rds_proto::pty::{self, PtyExit, PtyInfo, PtyRequest, PtySignal, PtySize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::exec::cgroup::{ExecCgroups, ExecGroup};
use crate::exec::process::{find_program, sandboxed_command, CommandSpec, Identity};
use crate::exec::{self, reject_nul, resolve_cwd, sandbox_env, ExecError};
use crate::server::AgentConfig;

/// Sessions one VM may hold at once.
pub const MAX_SESSIONS: usize = 16;
/// Time with nobody attached after which a session ends unless it asked otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Output kept for clients that attach later.
pub const SCROLLBACK_BYTES: usize = 64 << 10;
/// How often idle sessions are looked for.
const REAP_EVERY: Duration = Duration::from_secs(10);
/// How long output is still read after the session's process exited (and its tree was killed).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Live output chunks buffered per attached client before it misses some.
const LIVE_BUFFER: usize = 1024;

/// The terminal sessions of this agent.
pub struct Ptys {
    map: Mutex<BTreeMap<String, Arc<Session>>>,
    workspace: PathBuf,
    identity: Identity,
    cgroups: Option<Arc<ExecCgroups>>,
    reaper: std::sync::Once,
}

/// One session.
pub struct Session {
    id: String,
    created_at: u64,
    idle_timeout: Duration,
    master: Arc<AsyncFd<OwnedFd>>,
    size: Mutex<PtySize>,
    output: Mutex<VecDeque<u8>>,
    live: broadcast::Sender<Bytes>,
    exit: watch::Sender<Option<PtyExit>>,
    attached: AtomicU32,
    detached_since: Mutex<Instant>,
    killed: CancellationToken,
}

impl Ptys {
    /// Sessions run as `cfg`'s user in its workspace, each in a cgroup of its own when `cgroups`.
    pub fn new(cfg: &AgentConfig, cgroups: Option<Arc<ExecCgroups>>) -> Ptys {
        Ptys {
            map: Mutex::new(BTreeMap::new()),
            workspace: cfg.workspace.clone(),
            identity: Identity { uid: cfg.uid, gid: cfg.gid },
            cgroups,
            reaper: std::sync::Once::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session.
    pub fn open(self: &Arc<Self>, req: PtyRequest) -> Result<PtyInfo, ExecError> {
        let size = PtySize { cols: req.cols.unwrap_or(80), rows: req.rows.unwrap_or(24) }
            .check()
            .map_err(ExecError::Invalid)?;
        let idle_timeout = exec::idle_timeout_of(req.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT)?;
        if let Some(cmd) = &req.cmd {
            reject_nul("cmd", cmd)?;
            if cmd.trim().is_empty() {
                return Err(ExecError::Invalid("invalid field `cmd`: must not be empty".into()));
            }
        }
        let (cwd, cwd_label) = resolve_cwd(&self.workspace, req.cwd.as_deref())?;
        let extra = BTreeMap::from([("TERM".to_string(), "xterm-256color".to_string())]);
        let env = sandbox_env(&self.workspace, &extra, req.env.as_ref())?;
        if self.lock().len() >= MAX_SESSIONS {
            return Err(ExecError::Refused(format!(
                "this VM already has {MAX_SESSIONS} terminal sessions; end one before opening another"
            )));
        }
        let shell = find_program("bash").or_else(|| find_program("sh")).ok_or(ExecError::Unsupported("a shell"))?;
        let args = match &req.cmd {
            Some(cmd) => vec!["-c".to_string(), cmd.clone()],
            None => vec!["-l".to_string()],
        };
        let (master, slave) = open_terminal(size, self.identity)?;
        let group = exec::own_group(self.cgroups.as_ref())?;
        let procs = group.as_ref().map(ExecGroup::procs_fds).unwrap_or_default();
        let spec = CommandSpec {
            program: &shell,
            args: &args,
            env: &env,
            cwd: &cwd,
            identity: self.identity,
            stdin: true,
            cgroup_procs: &procs,
        };
        let mut cmd = sandboxed_command(&spec).map_err(|e| ExecError::Invalid(e.to_string()))?;
        let io = |context: &'static str| move |source| ExecError::Io { context: context.to_string(), source };
        cmd.stdin(Stdio::from(slave.try_clone().map_err(io("duplicating the terminal"))?))
            .stdout(Stdio::from(slave.try_clone().map_err(io("duplicating the terminal"))?))
            .stderr(Stdio::from(slave));
        // SAFETY: runs in the child after the session leader was made (setsid) and stdin became
        // the terminal; ioctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES) => ExecError::MissingCwd(cwd_label.clone()),
            _ => ExecError::Spawn { program: shell.display().to_string(), source },
        })?;
        // The parent's copies of the terminal's far end went with `cmd`: EIO once the child's are closed.
        drop(cmd);
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        // SAFETY: `master` is an open, non-blocking descriptor this session owns from here on.
        let master =
            unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1).map_err(io("watching the terminal"))?;
        let master = Arc::new(master);
        let session = Arc::new(Session {
            id: uuid::Uuid::new_v4().to_string(),
            created_at: unix_ms(),
            idle_timeout,
            master,
            size: Mutex::new(size),
            output: Mutex::new(VecDeque::new()),
            live: broadcast::channel(LIVE_BUFFER).0,
            exit: watch::channel(None).0,
            attached: AtomicU32::new(0),
            detached_since: Mutex::new(Instant::now()),
            killed: CancellationToken::new(),
        });
        tokio::spawn(session.clone().pump(child, pid, group));
        self.lock().insert(session.id.clone(), session.clone());
        self.start_reaper();
        Ok(session.info())
    }

    /// Every session.
    pub fn list(&self) -> Vec<PtyInfo> {
        self.lock().values().map(|s| s.info()).collect()
    }

    /// Session `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Session>, ExecError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ExecError::NotFound(format!("terminal session `{id}` does not exist")))
    }

    /// Ends session `id` and everything it started.
    pub fn kill(&self, id: &str) -> Result<(), ExecError> {
        let session = self
            .lock()
            .remove(id)
            .ok_or_else(|| ExecError::NotFound(format!("terminal session `{id}` does not exist")))?;
        session.killed.cancel();
        Ok(())
    }

    /// Forgets `session` once a client was told it exited.
    fn exit_delivered(&self, session: &Session) {
        let mut map = self.lock();
        if map.get(&session.id).is_some_and(|s| std::ptr::eq(s.as_ref(), session)) {
            map.remove(&session.id);
        }
    }

    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let ptys = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REAP_EVERY).await;
                    let Some(ptys) = ptys.upgrade() else { return };
                    let idle: Vec<String> = ptys.lock().values().filter(|s| s.idle()).map(|s| s.id.clone()).collect();
                    for id in idle {
                        tracing::info!(session = %id, "ending a terminal session nobody attached to within its idle timeout");
                        let _ = ptys.kill(&id);
                    }
                }
            });
        });
    }

    /// Serves one attached client over `stream` (frames of [`rds_proto::pty`]) until it leaves or
    /// the session ends.
    pub async fn attach<S: AsyncRead + AsyncWrite + Send + 'static>(self: Arc<Self>, session: Arc<Session>, stream: S) {
        session.attached.fetch_add(1, Ordering::SeqCst);
        session.serve(stream, || self.exit_delivered(&session)).await;
        *session.detached_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        session.attached.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    /// What the API shows of it.
    pub fn info(&self) -> PtyInfo {
        let size = *self.size.lock().unwrap_or_else(|p| p.into_inner());
        PtyInfo {
            session_id: self.id.clone(),
            cols: size.cols,
            rows: size.rows,
            created_at: self.created_at,
            attached: self.attached.load(Ordering::SeqCst),
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            exit: *self.exit.borrow(),
        }
    }

    fn idle(&self) -> bool {
        self.attached.load(Ordering::SeqCst) == 0
            && self.detached_since.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= self.idle_timeout
    }

    /// Reads the terminal until the session is over: output to the scrollback and live clients;
    /// then kills what is left of the session and publishes how its process ended.
    async fn pump(self: Arc<Self>, mut child: tokio::process::Child, pid: i32, group: Option<ExecGroup>) {
        let mut buf = vec![0u8; 16 << 10];
        let mut status = None;
        let mut drain_until = None;
        loop {
            let deadline = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = read_some(&self.master, &mut buf) => match read {
                    Ok(n) if n > 0 => self.publish(&buf[..n]),
                    // EOF or EIO: nothing holds the terminal's far end any more.
                    _ => break,
                },
                waited = child.wait(), if status.is_none() => {
                    status = Some(waited);
                    exec::kill_tree(pid, group.as_ref()).await;
                    drain_until.get_or_insert(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                () = self.killed.cancelled(), if drain_until.is_none() => {
                    exec::kill_tree(pid, group.as_ref()).await;
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                () = deadline => break,
            }
        }
        let status = match status {
            Some(s) => s,
            None => {
                exec::kill_tree(pid, group.as_ref()).await;
                child.wait().await
            }
        };
        let exit = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                PtyExit { exit_code: s.code(), signal: s.signal() }
            }
            Err(_) => PtyExit { exit_code: None, signal: None },
        };
        drop(group);
        self.exit.send_replace(Some(exit));
    }

    fn publish(&self, data: &[u8]) {
        let mut output = self.output.lock().unwrap_or_else(|p| p.into_inner());
        output.extend(data);
        let excess = output.len().saturating_sub(SCROLLBACK_BYTES);
        output.drain(..excess);
        let _ = self.live.send(Bytes::copy_from_slice(data));
    }

    /// One client: the scrollback, then live output, its input, resizes and signals; the exit
    /// frame when the session ends, just after `ending` (which forgets the session, so a client
    /// told of the exit never finds it listed).
    async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(&self, stream: S, ending: impl FnOnce()) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (replay, mut live) = {
            let output = self.output.lock().unwrap_or_else(|p| p.into_inner());
            (output.iter().copied().collect::<Vec<u8>>(), self.live.subscribe())
        };
        if send_data(&mut wr, &replay).await.is_err() {
            return;
        }
        let mut exit = self.exit.subscribe();
        loop {
            tokio::select! {
                chunk = live.recv() => match chunk {
                    Ok(bytes) => if send_data(&mut wr, &bytes).await.is_err() { return },
                    // Too slow a client misses output rather than holding the terminal up.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                frame = pty::read_frame(&mut rd) => match frame {
                    Ok(Some((kind, payload))) => if let Err(e) = self.handle(kind, &payload).await {
                        tracing::debug!(session = %self.id, "closing a client that sent a bad frame: {e}");
                        return;
                    },
                    // The client went away (detached).
                    Ok(None) | Err(_) => return,
                },
                ended = async { exit.wait_for(Option::is_some).await.map(|e| *e) } => {
                    let Ok(Some(ended)) = ended else { return };
                    // Everything published before the exit is queued by now.
                    while let Ok(bytes) = live.try_recv() {
                        if send_data(&mut wr, &bytes).await.is_err() {
                            return;
                        }
                    }
                    ending();
                    let body = serde_json::to_vec(&ended).unwrap_or_default();
                    if wr.write_all(&pty::frame(pty::EXIT, &body)).await.is_ok() && wr.flush().await.is_ok() {
                        let _ = wr.shutdown().await;
                    }
                    return;
                }
            }
        }
    }

    /// One frame from a client.
    async fn handle(&self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        match kind {
            pty::DATA => write_all(&self.master, payload).await,
            pty::RESIZE => {
                let size: PtySize = serde_json::from_slice(payload).map_err(|e| invalid(e.to_string()))?;
                let size = size.check().map_err(invalid)?;
                set_size(self.master.get_ref().as_raw_fd(), size)?;
                *self.size.lock().unwrap_or_else(|p| p.into_inner()) = size;
                Ok(())
            }
            pty::SIGNAL => {
                let signal: PtySignal = serde_json::from_slice(payload).map_err(|e| invalid(e.to_string()))?;
                let signal = signal_named(&signal.signal)
                    .ok_or_else(|| invalid(format!("unknown signal {:?}", signal.signal)))?;
                // The terminal's foreground process group (the shell, or the job it runs).
                let group = nix::unistd::tcgetpgrp(self.master.get_ref()).map_err(io::Error::from)?;
                // A vanished group is not the client's fault.
                let _ = nix::sys::signal::killpg(group, signal);
                Ok(())
            }
            other => Err(invalid(format!("unknown frame type {other}"))),
        }
    }
}

/// Signals a client may send, by name (with or without `SIG`).
pub fn signal_named(name: &str) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal::*;
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "INT" => SIGINT,
        "TERM" => SIGTERM,
        "KILL" => SIGKILL,
        "HUP" => SIGHUP,
        "QUIT" => SIGQUIT,
        "TSTP" => SIGTSTP,
        "CONT" => SIGCONT,
        "USR1" => SIGUSR1,
        "USR2" => SIGUSR2,
        _ => return None,
    })
}

/// A terminal of `size` whose far end belongs to `identity`: (master, slave). The master is
/// non-blocking and close-on-exec.
fn open_terminal(size: PtySize, identity: Identity) -> Result<(OwnedFd, OwnedFd), ExecError> {
    let io = |context: &'static str| move |e: nix::Error| ExecError::Io { context: context.into(), source: e.into() };
    let winsize = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pair = nix::pty::openpty(Some(&winsize), None).map_err(io("opening a terminal"))?;
    let (master, slave) = (pair.master, pair.slave);
    // The user's terminal, as a login would leave it (programs check who owns their tty).
    nix::unistd::fchown(slave.as_raw_fd(), Some(identity.uid.into()), Some(identity.gid.into()))
        .map_err(io("handing the terminal to the user"))?;
    nix::sys::stat::fchmod(slave.as_raw_fd(), nix::sys::stat::Mode::from_bits_truncate(0o620))
        .map_err(io("handing the terminal to the user"))?;
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(io("marking the terminal close-on-exec"))?;
    }
    let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(io("reading flags"))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(io("making the terminal non-blocking"))?;
    Ok((master, slave))
}

fn set_size(fd: RawFd, size: PtySize) -> io::Result<()> {
    let winsize = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &winsize) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

async fn read_some(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        // SAFETY: reads into `buf`, which is valid for `buf.len()` bytes.
        match guard.try_io(|fd| {
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        // SAFETY: writes from `data`, which is valid for `data.len()` bytes.
        match guard.try_io(|fd| {
            let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

async fn send_data<W: AsyncWrite + Unpin>(wr: &mut W, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(pty::MAX_FRAME) {
        wr.write_all(&pty::frame(pty::DATA, chunk)).await?;
    }
    wr.flush().await
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
