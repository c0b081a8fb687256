//! Code contexts: long-lived interpreters ("kernels", see `kernel.*`) that run snippet after
//! snippet in one global scope, so variables, imports and functions survive between runs.
//!
//! A kernel is started like any run (the sandbox user, its own cgroup, the same seccomp filter,
//! Deno's permissions) and reads its runs from stdin, each as a header line `"<seq> <bytes>\n"` and
//! the code; it answers each on its result FIFO with one newline-terminated JSON document carrying
//! the same `seq`. Runs in one context take turns. A run's output is what the kernel printed
//! between handing it the run and its answer (everything written before the answer is in the
//! pipes by then: the agent drains them after the answer, as it does after a process exits).
//!
//! A timeout interrupts a Python run (SIGINT raises `KeyboardInterrupt` in the user's code and
//! the context keeps its state); a TypeScript or JavaScript run, or a Python run that ignores the
//! interrupt, has its kernel killed and restarted, and the result says so (`contextRestarted`).
//! Contexts without a run for their idle timeout are removed; all die with the VM.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rds_proto::{ContextInfo, ContextLanguage, ContextRequest, Language, RunRequest, RunResult};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

use super::{open_result_fifo, Interpreter, Profile, RunDir, Shared, RESULT_CAP};
use crate::exec::capture::{discard_now, drain_now, Sink};
use crate::exec::cgroup::ExecGroup;
use crate::exec::{self, resolve_cwd, sandbox_env, timeout_of, ExecError, Launch};

/// Contexts one VM may hold at once.
pub const MAX_CONTEXTS: usize = 16;
/// Idle time after which a context is removed unless it asked otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long an interrupted Python run has to report before its kernel is restarted.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long a new kernel may take to answer its first (empty) run.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How often idle contexts are looked for.
const REAP_EVERY: Duration = Duration::from_secs(10);

/// The contexts of this agent.
pub struct Contexts {
    map: Mutex<BTreeMap<String, Arc<Context>>>,
    reaper: std::sync::Once,
}

/// One context: what it was created with, and its kernel (`None` while it is being replaced).
pub struct Context {
    id: String,
    language: ContextLanguage,
    cwd_label: String,
    launch: KernelLaunch,
    idle_timeout: Duration,
    created_at: u64,
    last_used_at: AtomicU64,
    last_used: Mutex<Instant>,
    runs: AtomicU64,
    restarts: AtomicU64,
    kernel: tokio::sync::Mutex<Option<Kernel>>,
    /// Cancelled when the context is deleted: a run in progress ends at once.
    deleted: CancellationToken,
}

/// How a context's kernel is started (again, after a restart).
#[derive(Clone)]
struct KernelLaunch {
    language: Language,
    cwd: std::path::PathBuf,
    env: BTreeMap<String, String>,
    profile: Profile,
}

/// A running kernel and its pipes.
struct Kernel {
    child: Child,
    pid: i32,
    group: Option<ExecGroup>,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
    results: tokio::net::unix::pipe::Receiver,
    /// Holds the result FIFO; removed with the kernel.
    _dir: RunDir,
    seq: u64,
}

/// How one run in a kernel ended.
enum Ended {
    /// The kernel answered (`interrupted`: after a timeout's SIGINT).
    Answered { doc: Option<serde_json::Map<String, Value>>, interrupted: bool },
    /// The kernel exited.
    Exited(std::process::ExitStatus),
    /// The timeout passed and the kernel could not be interrupted.
    TimedOut,
    /// The context was deleted meanwhile.
    Deleted,
}

impl Default for Contexts {
    fn default() -> Self {
        Contexts { map: Mutex::new(BTreeMap::new()), reaper: std::sync::Once::new() }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Contexts {
    /// Starts a context and its kernel (answering an empty first run, so a kernel that cannot
    /// start is this call's error and the first real run does not pay for the start).
    pub(super) async fn create(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        req: ContextRequest,
    ) -> Result<ContextInfo, ExecError> {
        self.start_reaper();
        let language = req.language.language();
        let (cwd, cwd_label) = resolve_cwd(&shared.workspace, req.cwd.as_deref())?;
        let interpreter = Interpreter::of(language)?;
        let env = sandbox_env(&shared.workspace, &interpreter.env_for(&shared.workspace), req.env.as_ref())?;
        let idle_timeout = exec::idle_timeout_of(req.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT)?;
        let profile = Profile { allow_net: req.allow_net.unwrap_or(false), ..Profile::default() };
        let launch = KernelLaunch { language, cwd, env, profile };
        if self.lock().len() >= MAX_CONTEXTS {
            return Err(ExecError::Refused(format!(
                "this VM already has {MAX_CONTEXTS} code contexts; delete one before creating another"
            )));
        }
        let kernel = Kernel::start(shared, &launch).await?;
        let created_at = now_ms();
        let context = Arc::new(Context {
            id: uuid::Uuid::new_v4().to_string(),
            language: req.language,
            cwd_label,
            launch,
            idle_timeout,
            created_at,
            last_used_at: AtomicU64::new(created_at),
            last_used: Mutex::new(Instant::now()),
            runs: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            kernel: tokio::sync::Mutex::new(Some(kernel)),
            deleted: CancellationToken::new(),
        });
        let mut map = self.lock();
        if map.len() >= MAX_CONTEXTS {
            return Err(ExecError::Refused(format!(
                "this VM already has {MAX_CONTEXTS} code contexts; delete one before creating another"
            )));
        }
        map.insert(context.id.clone(), context.clone());
        drop(map);
        Ok(context.info())
    }

    /// Every context.
    pub fn list(&self) -> Vec<ContextInfo> {
        self.lock().values().map(|c| c.info()).collect()
    }

    /// The context `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Context>, ExecError> {
        self.lock().get(id).cloned().ok_or_else(|| ExecError::NotFound(format!("code context `{id}` does not exist")))
    }

    /// Stops the context `id` (a run in progress ends, reporting the deletion).
    pub async fn delete(&self, id: &str) -> Result<(), ExecError> {
        let context =
            self.lock().remove(id).ok_or_else(|| ExecError::NotFound(format!("code context `{id}` does not exist")))?;
        context.deleted.cancel();
        if let Some(kernel) = context.kernel.lock().await.take() {
            kernel.kill().await;
        }
        Ok(())
    }

    /// Replaces the context's kernel with a fresh one: everything it defined is gone.
    pub(super) async fn restart(&self, shared: &Arc<Shared>, id: &str) -> Result<ContextInfo, ExecError> {
        let context = self.get(id)?;
        let mut kernel = context.kernel.lock().await;
        if let Some(old) = kernel.take() {
            old.kill().await;
        }
        context.restarts.fetch_add(1, Ordering::Relaxed);
        *kernel = Some(Kernel::start(shared, &context.launch).await?);
        drop(kernel);
        Ok(context.info())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Context>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes contexts idle for longer than their timeout, now and then, for the agent's life.
    fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.reaper.call_once(|| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REAP_EVERY);
                loop {
                    tick.tick().await;
                    let Some(contexts) = weak.upgrade() else { return };
                    let idle: Vec<String> = contexts
                        .lock()
                        .values()
                        .filter(|c| c.kernel.try_lock().is_ok() && c.idle_for() > c.idle_timeout)
                        .map(|c| c.id.clone())
                        .collect();
                    for id in idle {
                        tracing::info!(context = %id, "removing an idle code context");
                        let _ = contexts.delete(&id).await;
                    }
                }
            });
        });
    }
}

impl Context {
    /// What the API shows of this context.
    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            context_id: self.id.clone(),
            language: self.language,
            cwd: self.cwd_label.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at.load(Ordering::Relaxed),
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            runs: self.runs.load(Ordering::Relaxed),
            busy: self.kernel.try_lock().is_err(),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.last_used_at.store(now_ms(), Ordering::Relaxed);
    }

    /// Checks that `req` can run in this context as `language`; returns its code and timeout.
    pub fn check<'r>(&self, language: Language, req: &'r RunRequest) -> Result<(&'r str, Duration), ExecError> {
        if self.launch.language != language {
            return Err(ExecError::Invalid(format!(
                "invalid field `contextId`: context `{}` is a {} context; use {}",
                self.id,
                serde_json::to_value(self.language)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                self.launch.language.route()
            )));
        }
        let set = [
            ("path", req.path.is_some()),
            ("args", req.args.is_some()),
            ("env", req.env.is_some()),
            ("denoFlags", req.deno_flags.is_some()),
            ("nodeFlags", req.node_flags.is_some()),
            ("allowRead", req.allow_read.is_some()),
            ("allowWrite", req.allow_write.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, given)| *given) {
            return Err(ExecError::Invalid(format!(
                "invalid field `{field}`: not supported with `contextId` (a context's interpreter, \
                 environment and permissions are set when it is created)"
            )));
        }
        let code =
            req.code.as_deref().ok_or_else(|| ExecError::Invalid("`code` is required with `contextId`".into()))?;
        Ok((code, timeout_of(req.timeout_ms)?))
    }

    /// Runs `code` in this context, after the runs before it.
    pub(super) async fn run(self: Arc<Self>, shared: Arc<Shared>, code: String, timeout: Duration) -> RunResult {
        let mut slot = self.kernel.lock().await;
        if self.deleted.is_cancelled() {
            return failed("ContextDeleted", "the code context was deleted before the run started".into());
        }
        self.touch();
        self.runs.fetch_add(1, Ordering::Relaxed);
        let mut restarted = false;
        if slot.is_none() {
            // The last restart failed: try again, and say the state is gone.
            match Kernel::start(&shared, &self.launch).await {
                Ok(kernel) => *slot = Some(kernel),
                Err(e) => {
                    return failed("ContextUnavailable", format!("the context's interpreter could not start: {e}"))
                }
            }
            restarted = true;
        }
        let kernel = slot.as_mut().expect("a kernel was just ensured");
        let started = Instant::now();
        let interruptible = self.launch.language == Language::Python;
        let (ended, stdout, stderr) = kernel.run(&code, timeout, shared.output_cap, interruptible, &self.deleted).await;
        let mut out = RunResult {
            stdout: stdout.text(),
            stderr: stderr.text(),
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            duration_ms: started.elapsed().as_millis() as u64,
            context_restarted: restarted,
            ..RunResult::default()
        };
        let restart_reason = match ended {
            Ended::Answered { doc, interrupted } => {
                out.timed_out = interrupted;
                if let Some(mut doc) = doc {
                    out.result = doc.remove("result");
                    out.error = doc.remove("error");
                } else {
                    out.error =
                        Some(error_value("ResultTooLarge", format!("the result is larger than {RESULT_CAP} bytes")));
                }
                if !interrupted {
                    out.exit_code = Some(if out.error.is_some() { 1 } else { 0 });
                }
                None
            }
            Ended::Exited(status) => {
                use std::os::unix::process::ExitStatusExt;
                out.exit_code = status.code();
                out.signal = status.signal();
                Some(format!("the interpreter exited during the run ({status})"))
            }
            Ended::TimedOut => {
                out.timed_out = true;
                Some(format!("the run did not end within its timeout of {} ms", timeout.as_millis()))
            }
            Ended::Deleted => {
                out.error = Some(error_value("ContextDeleted", "the code context was deleted during the run".into()));
                if let Some(kernel) = slot.take() {
                    kernel.kill().await;
                }
                return out;
            }
        };
        if let Some(reason) = restart_reason {
            if let Some(old) = slot.take() {
                old.kill().await;
            }
            self.restarts.fetch_add(1, Ordering::Relaxed);
            out.context_restarted = true;
            out.error = Some(error_value(
                if out.timed_out { "TimeoutError" } else { "ContextRestarted" },
                format!("{reason}; the context was restarted and what earlier runs defined is gone"),
            ));
            match Kernel::start(&shared, &self.launch).await {
                Ok(kernel) => *slot = Some(kernel),
                Err(e) => tracing::warn!(context = %self.id, "restarting a code context failed: {e}"),
            }
        }
        out
    }
}

fn error_value(name: &str, message: String) -> Value {
    serde_json::json!({ "name": name, "message": message })
}

/// The result of a run that never reached a kernel.
fn failed(name: &str, message: String) -> RunResult {
    RunResult { error: Some(error_value(name, message)), ..RunResult::default() }
}

impl Kernel {
    /// Starts a kernel and waits for its answer to an empty run.
    async fn start(shared: &Arc<Shared>, launch: &KernelLaunch) -> Result<Kernel, ExecError> {
        let interpreter = Interpreter::of(launch.language)?;
        let root = shared.root()?;
        let dir = RunDir::create(&root)?;
        let fifo = dir.result_fifo(shared.identity)?;
        let results = open_result_fifo(&fifo)?;
        let mut args = interpreter.leading_args(&shared.workspace, &dir.path, &launch.profile)?;
        let fifo_arg = fifo.display().to_string();
        match launch.language {
            // The kernel evaluates through the inspector, which Deno counts as system access.
            Language::Ts => args.push("--allow-sys".into()),
            Language::Js | Language::Python => {}
        }
        args.push(root.kernel(launch.language).display().to_string());
        args.push(fifo_arg);
        if launch.language != Language::Python {
            args.push(launch.language.route()[4..].to_string());
            args.push(launch.cwd.display().to_string());
        }
        let running = exec::spawn(Launch {
            program: interpreter.program,
            args,
            env: launch.env.clone(),
            cwd: launch.cwd.clone(),
            cwd_label: launch.cwd.display().to_string(),
            stdin: Some(Vec::new()),
            timeout: START_LIMIT,
            output_cap: shared.output_cap,
            identity: shared.identity,
            side_channel: None,
            cgroups: shared.cgroups.clone(),
        })?;
        let (mut child, pid, group) = running.into_process();
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            exec::kill_tree(pid, group.as_ref()).await;
            return Err(ExecError::Io {
                context: "starting a context".into(),
                source: std::io::Error::other("pipes missing"),
            });
        };
        let mut kernel = Kernel { child, pid, group, stdin, stdout, stderr, results, _dir: dir, seq: 0 };
        let never = CancellationToken::new();
        let (ended, _, stderr) = kernel.run("", START_LIMIT, 64 * 1024, false, &never).await;
        match ended {
            Ended::Answered { doc: Some(doc), .. } if !doc.contains_key("error") => Ok(kernel),
            other => {
                kernel.kill().await;
                let why = match other {
                    Ended::Exited(status) => format!("it exited ({status})"),
                    Ended::TimedOut => format!("it did not answer within {} s", START_LIMIT.as_secs()),
                    _ => "its first run failed".into(),
                };
                Err(ExecError::Spawn {
                    program: format!("the {} context interpreter", launch.language.route()),
                    source: std::io::Error::other(format!("{why}: {}", stderr.text().trim())),
                })
            }
        }
    }

    /// Hands the kernel one run and collects its answer and output.
    async fn run(
        &mut self,
        code: &str,
        timeout: Duration,
        cap: usize,
        interruptible: bool,
        deleted: &CancellationToken,
    ) -> (Ended, crate::exec::capture::Captured, crate::exec::capture::Captured) {
        let Kernel { child, pid, stdin, stdout, stderr, results, seq, .. } = self;
        // What it printed between runs is no run's.
        discard_now(stdout.as_fd());
        discard_now(stderr.as_fd());
        *seq += 1;
        let seq = *seq;
        let mut frame = format!("{seq} {}\n", code.len()).into_bytes();
        frame.extend_from_slice(code.as_bytes());
        let mut out = Sink::new(cap, None);
        let mut err = Sink::new(cap, None);
        let mut lines = Lines::default();
        let (mut out_buf, mut err_buf, mut res_buf) =
            (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024], vec![0u8; 64 * 1024]);
        let (mut out_open, mut err_open, mut res_open) = (true, true, true);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut interrupted = false;
        // Written while reading, so a kernel blocked on a full output pipe cannot deadlock us.
        let write = stdin.write_all(&frame);
        tokio::pin!(write);
        let mut written = false;
        let ended = loop {
            tokio::select! {
                done = &mut write, if !written => {
                    written = true;
                    // A kernel that is gone shows in `wait` below.
                    let _ = done;
                }
                read = stdout.read(&mut out_buf), if out_open => match read {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => out.keep(&out_buf[..n]),
                },
                read = stderr.read(&mut err_buf), if err_open => match read {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => err.keep(&err_buf[..n]),
                },
                read = results.read(&mut res_buf), if res_open => match read {
                    Ok(0) | Err(_) => res_open = false,
                    Ok(n) => {
                        if let Some(doc) = lines.push(&res_buf[..n], seq) {
                            break Ended::Answered { doc, interrupted };
                        }
                    }
                },
                status = child.wait() => match status {
                    Ok(status) => break Ended::Exited(status),
                    Err(_) => break Ended::TimedOut,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if interruptible && !interrupted {
                        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
                        unsafe { libc::kill(*pid, libc::SIGINT) };
                        interrupted = true;
                        deadline = tokio::time::Instant::now() + INTERRUPT_GRACE;
                    } else {
                        break Ended::TimedOut;
                    }
                }
                _ = deleted.cancelled() => break Ended::Deleted,
            }
        };
        // Everything written before the answer (or the exit) is in the pipes now.
        drain_now(stdout.as_fd(), &mut out_buf, &mut out);
        drain_now(stderr.as_fd(), &mut err_buf, &mut err);
        (ended, out.finish(), err.finish())
    }

    /// Kills the kernel and everything it started.
    async fn kill(mut self) {
        exec::kill_tree(self.pid, self.group.as_ref()).await;
        let _ = self.child.wait().await;
    }
}

/// Newline-terminated answers read from a kernel's result FIFO, capped at [`RESULT_CAP`].
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
    /// The line being read is over the cap: it is skipped up to its newline.
    oversized: bool,
}

impl Lines {
    /// Takes `bytes`; the answer to run `seq` once complete (`None` inside: it was too large).
    /// Answers to other runs (one interrupted too late, or forged by user code) are dropped.
    fn push(&mut self, mut bytes: &[u8], seq: u64) -> Option<Option<serde_json::Map<String, Value>>> {
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            let oversized = std::mem::take(&mut self.oversized) || self.pending.len() + at > RESULT_CAP;
            let line =
                if oversized { Vec::new() } else { [std::mem::take(&mut self.pending), bytes[..at].to_vec()].concat() };
            self.pending.clear();
            bytes = &bytes[at + 1..];
            if oversized {
                // Its seq cannot be read cheaply; the run it belongs to is the one waiting.
                return Some(None);
            }
            if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&line) {
                if doc.get("seq").and_then(Value::as_u64) == Some(seq) {
                    return Some(Some(doc));
                }
            }
        }
        if self.pending.len() + bytes.len() > RESULT_CAP {
            self.oversized = true;
            self.pending.clear();
        } else if !self.oversized {
            self.pending.extend_from_slice(bytes);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pick_the_answer_to_the_run_waiting() {
        let mut lines = Lines::default();
        assert!(lines.push(b"{\"seq\":1,\"result\":1}\n{\"seq\":2,", 2).is_none());
        let doc = lines.push(b"\"result\":[2]}\n", 2).expect("complete").expect("small");
        assert_eq!(doc.get("result"), Some(&serde_json::json!([2])));
    }

    #[test]
    fn lines_report_an_oversized_answer_without_keeping_it() {
        let mut lines = Lines::default();
        let big = vec![b'x'; RESULT_CAP + 1];
        assert!(lines.push(&big, 1).is_none());
        assert!(lines.pending.is_empty());
        assert_eq!(lines.push(b"tail\n", 1), Some(None));
    }
}
