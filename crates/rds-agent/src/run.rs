//! `POST /run-ts|run-js|run-python`: run a snippet or a workspace file under Deno, Node or
//! Python as the sandbox user and collect its structured result.
//!
//! A small wrapper (see `run/wrapper.*`) reads the run from its stdin (target, result FIFO, and
//! for a pre-started interpreter the run's env, cwd and args), imports the user's module, collects
//! `result.set(...)`, the default export (TS/JS) or the module-level `result` (Python), and writes
//! one newline-terminated JSON document to a FIFO. The snippet and the FIFO live in a fresh
//! root-owned directory inside the agent's private runs directory under `/tmp` (see [`RunRoot`]),
//! removed afterwards, so nothing is left in the workspace and the root agent only ever opens a
//! path it created itself.
//!
//! A run ends when its interpreter has exited: everything it wrote to the FIFO is then in the
//! pipe (see [`crate::exec::capture`]); nothing waits out a grace period. With a warm pool (see
//! [`pool`]) the interpreter was started before the run and is handed it over its stdin.

pub mod context;
pub mod pool;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rds_proto::{ContextInfo, ContextRequest, Language, RunRequest, RunResult};
use serde_json::Value;

use crate::exec::cgroup::ExecCgroups;
use crate::exec::idempotency::{self, IdempotencyCache};
use crate::exec::process::find_program;
use crate::exec::{self, reject_nul, sandbox_env, timeout_of, ExecError, Finished, Handle, Identity, Launch};
use crate::files;
use crate::server::AgentConfig;
use context::Contexts;
use pool::{Warm, WarmPool};

/// Largest result document accepted from a wrapper.
pub const RESULT_CAP: usize = 8 * 1024 * 1024;
/// How long a run may go on before the interpreter it took is replaced anyway.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
/// Where the agent's runs directory is created.
const RUN_ROOT_PARENT: &str = "/tmp";

/// System files Deno may read besides the workspace and temporary directories: name resolution
/// and the CA bundle, which ordinary networking code (and the original's grant) needs.
const DENO_SYSTEM_READS: [&str; 5] =
    ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl/certs", "/usr/share/ca-certificates"];

const JS_WRAPPER: &str = include_str!("run/wrapper.mjs");
const PY_WRAPPER: &str = include_str!("run/wrapper.py");
const JS_KERNEL: &str = include_str!("run/kernel.mjs");
const PY_KERNEL: &str = include_str!("run/kernel.py");

/// Runs `run-*` requests, and holds the code contexts.
pub struct Runner {
    shared: Arc<Shared>,
    cache: IdempotencyCache<RunResult>,
    contexts: Arc<Contexts>,
}

/// What runs and the pool's background refills share.
struct Shared {
    workspace: PathBuf,
    identity: Identity,
    output_cap: usize,
    cgroups: Option<Arc<ExecCgroups>>,
    /// Created at the first run, removed when the last run directory is gone.
    root: Mutex<Option<Arc<RunRoot>>>,
    pool: WarmPool,
}

/// A run ready to be driven: its directory (removed after the run) and its interpreter.
type Prepared = (RunDir, exec::Running);

impl Runner {
    /// A runner for the agent configured by `cfg`.
    pub fn new(cfg: &AgentConfig, cgroups: Option<Arc<ExecCgroups>>) -> Self {
        Runner {
            shared: Arc::new(Shared {
                cgroups,
                workspace: cfg.workspace.clone(),
                identity: Identity { uid: cfg.uid, gid: cfg.gid },
                output_cap: cfg.output_cap,
                root: Mutex::new(None),
                pool: WarmPool::new(cfg.warm_pool),
            }),
            cache: IdempotencyCache::new(idempotency::DEFAULT_CAPACITY),
            contexts: Arc::new(Contexts::default()),
        }
    }

    /// Validates and starts `req` in `language` (or joins the earlier run with its `execId`).
    pub fn start(&self, language: Language, req: RunRequest) -> Result<Handle<RunResult>, ExecError> {
        let fingerprint = format!("{}:{}", language.route(), serde_json::to_string(&req).unwrap_or_default());
        let id = req.exec_id.as_ref().map(|id| format!("{}:{id}", language.route()));
        if let Some(context_id) = &req.context_id {
            return Handle::start(
                &self.cache,
                id.as_deref(),
                &fingerprint,
                || {
                    let context = self.contexts.get(context_id)?;
                    let (code, timeout) = context.check(language, &req)?;
                    Ok((context, code.to_string(), timeout))
                },
                |(context, code, timeout)| context.run(self.shared.clone(), code, timeout),
            );
        }
        Handle::start(
            &self.cache,
            id.as_deref(),
            &fingerprint,
            || self.shared.prepare(language, &req),
            |(dir, running): Prepared| {
                let shared = self.shared.clone();
                let profile = Profile::of(language, &req);
                async move {
                    // The interpreter just used (warm or cold) is replaced in the background once
                    // the run is over, or has run for a while: not while it starts, which would
                    // slow the run down on a VM's few CPUs.
                    let finish = running.finish(None);
                    tokio::pin!(finish);
                    let finished = tokio::select! {
                        finished = &mut finish => {
                            Shared::refill(&shared, language, profile);
                            finished
                        }
                        _ = tokio::time::sleep(REFILL_DELAY) => {
                            Shared::refill(&shared, language, profile);
                            finish.await
                        }
                    };
                    drop(dir);
                    run_result(&finished)
                }
            },
        )
    }
}

impl Runner {
    /// Starts a code context.
    pub async fn create_context(&self, req: ContextRequest) -> Result<ContextInfo, ExecError> {
        self.contexts.create(&self.shared, req).await
    }

    /// Every code context.
    pub fn contexts(&self) -> Vec<ContextInfo> {
        self.contexts.list()
    }

    /// Restarts a context's interpreter (its state is dropped).
    pub async fn restart_context(&self, id: &str) -> Result<ContextInfo, ExecError> {
        self.contexts.restart(&self.shared, id).await
    }

    /// Stops a code context.
    pub async fn delete_context(&self, id: &str) -> Result<(), ExecError> {
        self.contexts.delete(id).await
    }
}

/// What a run is asked to execute, resolved.
enum Source<'a> {
    /// A workspace file, run from its own directory.
    File { file: PathBuf, cwd: PathBuf, label: String },
    /// Snippet text, run from the workspace.
    Snippet(&'a str),
}

impl Shared {
    fn prepare(&self, language: Language, req: &RunRequest) -> Result<Prepared, ExecError> {
        let interpreter = Interpreter::of(language)?;
        let profile = Profile::of(language, req);
        // `path` wins over `code`; a file runs from its own directory, a snippet from the workspace.
        let source = match (&req.path, &req.code) {
            (Some(path), _) => {
                reject_nul("path", path)?;
                let relative = files::resolve_workspace_path(&self.workspace, path)
                    .map_err(|e| ExecError::Invalid(format!("invalid field `path`: {e}")))?;
                let file = self.workspace.join(relative);
                let cwd = file.parent().unwrap_or(&self.workspace).to_path_buf();
                Source::File { file, cwd, label: path.clone() }
            }
            (None, Some(code)) => Source::Snippet(code),
            (None, None) => return Err(ExecError::Invalid("either `code` or `path` is required".into())),
        };
        let mut args = Vec::new();
        for (i, arg) in req.args.iter().flatten().enumerate() {
            reject_nul(&format!("args[{i}]"), arg)?;
            args.push(arg.clone());
        }
        let env = sandbox_env(&self.workspace, &interpreter.env_for(&self.workspace), req.env.as_ref())?;
        let timeout = timeout_of(req.timeout_ms)?;
        // The manager checks these too; the agent is the boundary, so it never trusts that.
        for (field, flags) in [("denoFlags", &req.deno_flags), ("nodeFlags", &req.node_flags)] {
            rds_proto::interpreter_flags::check(field, flags.as_deref().unwrap_or_default())
                .map_err(ExecError::Invalid)?;
        }
        // Checked for every run, so a refused path is refused whether or not a warm one waits.
        interpreter.leading_args(&self.workspace, Path::new("/"), &profile)?;
        let (cwd, cwd_label) = match &source {
            Source::File { cwd, label, .. } => (cwd.clone(), label.clone()),
            Source::Snippet(_) => (self.workspace.clone(), self.workspace.display().to_string()),
        };

        // The run's directory must exist for a warm interpreter to enter it, and its variables
        // must travel as KEY=VALUE; otherwise the run goes the cold way, which reports a missing
        // directory or a bad key as the caller's error.
        let fits = fs::metadata(&cwd).is_ok_and(|m| m.is_dir()) && env_keys_plain(&env);
        let warm = if fits { self.pool.take(language, &profile, &env) } else { None };
        if let Some(Warm { dir, mut running, fifo, .. }) = warm {
            let target = source.target(&dir, &interpreter)?;
            let handed = RunDoc { warm: true, target: &target, result: &fifo, cwd: &cwd, env: Some(&env), args: &args };
            running.hand_over(handed.to_bytes(), timeout);
            return Ok((dir, running));
        }

        let root = self.root()?;
        let dir = RunDir::create(&root)?;
        let target = source.target(&dir, &interpreter)?;
        let fifo = dir.result_fifo(self.identity)?;
        let receiver = open_result_fifo(&fifo)?;
        let mut argv = interpreter.leading_args(&self.workspace, &dir.path, &profile)?;
        argv.push(root.wrapper(language).display().to_string());
        argv.extend(args.iter().cloned());
        let doc = RunDoc { warm: false, target: &target, result: &fifo, cwd: &cwd, env: None, args: &args }.to_bytes();
        let launch = Launch {
            program: interpreter.program,
            args: argv,
            env,
            cwd,
            cwd_label,
            stdin: Some(doc),
            timeout,
            output_cap: self.output_cap,
            identity: self.identity,
            side_channel: Some((receiver, RESULT_CAP)),
            cgroups: self.cgroups.clone(),
        };
        let running = exec::spawn(launch)?;
        Ok((dir, running))
    }

    /// Starts an interpreter for a later run of `language` with `profile`: as the sandbox user,
    /// in its own cgroup, in the workspace, with the environment every run starts from and its
    /// wrapper loaded, waiting on stdin for the run. It knows nothing of any run yet.
    fn start_warm(&self, language: Language, profile: &Profile) -> Result<Warm, ExecError> {
        let interpreter = Interpreter::of(language)?;
        let root = self.root()?;
        let dir = RunDir::create(&root)?;
        let fifo = dir.result_fifo(self.identity)?;
        let receiver = open_result_fifo(&fifo)?;
        let mut args = interpreter.leading_args(&self.workspace, &dir.path, profile)?;
        args.push(root.wrapper(language).display().to_string());
        let env = sandbox_env(&self.workspace, &interpreter.env_for(&self.workspace), None)?;
        let launch = Launch {
            program: interpreter.program.clone(),
            args,
            env: env.clone(),
            cwd: self.workspace.clone(),
            cwd_label: self.workspace.display().to_string(),
            // Piped; the run is written when it is handed over.
            stdin: Some(Vec::new()),
            // Counted from the hand-over.
            timeout: timeout_of(None)?,
            output_cap: self.output_cap,
            identity: self.identity,
            side_channel: Some((receiver, RESULT_CAP)),
            cgroups: self.cgroups.clone(),
        };
        let running = exec::spawn(launch)?;
        Ok(Warm { dir, running, fifo, env })
    }

    /// Tops up the pool of `language` for runs like the last one, off the request's path.
    fn refill(shared: &Arc<Shared>, language: Language, profile: Profile) {
        if !shared.pool.wants(language, &profile) {
            return;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.pool.fill(language, &profile, || shared.start_warm(language, &profile));
        });
    }

    /// The agent's runs directory, created on first use.
    fn root(&self) -> Result<Arc<RunRoot>, ExecError> {
        let mut root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(root) = root.as_ref() {
            return Ok(root.clone());
        }
        let created = Arc::new(RunRoot::create()?);
        *root = Some(created.clone());
        Ok(created)
    }
}

impl Source<'_> {
    /// The file the wrapper imports: the workspace file, or the snippet written into `dir`.
    fn target(&self, dir: &RunDir, interpreter: &Interpreter) -> Result<PathBuf, ExecError> {
        match self {
            Source::File { file, .. } => Ok(file.clone()),
            Source::Snippet(code) => dir.write(&format!("snippet.{}", interpreter.snippet_ext), code.as_bytes()),
        }
    }
}

/// The run as the wrapper reads it from stdin: NUL-separated fields (no JSON, which would cost
/// Python a `json` import): `1`, warm (`0`/`1`), target, result FIFO, cwd, the number of args,
/// the args, then `KEY=VALUE` per variable. `env` is sent to a pre-started interpreter only (a
/// cold one was started with it). No field holds a NUL: paths, args and values are checked for
/// one, and keys by [`env_keys_plain`].
struct RunDoc<'a> {
    warm: bool,
    target: &'a Path,
    result: &'a Path,
    cwd: &'a Path,
    env: Option<&'a BTreeMap<String, String>>,
    args: &'a [String],
}

impl RunDoc<'_> {
    fn to_bytes(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let count = self.args.len().to_string();
        let mut fields: Vec<&[u8]> = vec![
            b"1",
            if self.warm { b"1" } else { b"0" },
            self.target.as_os_str().as_bytes(),
            self.result.as_os_str().as_bytes(),
            self.cwd.as_os_str().as_bytes(),
            count.as_bytes(),
        ];
        fields.extend(self.args.iter().map(|a| a.as_bytes()));
        let vars: Vec<String> = self.env.into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        fields.extend(vars.iter().map(|v| v.as_bytes()));
        fields.join(&0u8)
    }
}

/// True when every key can travel as `KEY=VALUE` (a key with `=` or NUL cannot be set in an
/// environment anyway; such a run goes the cold way, which reports it).
fn env_keys_plain(env: &BTreeMap<String, String>) -> bool {
    env.keys().all(|k| !k.is_empty() && !k.contains(['=', '\0']))
}

/// Opens the result FIFO for reading. Read-write, so it never reports EOF before the wrapper has
/// opened it; the run ends with the interpreter, not with EOF (see the module docs).
fn open_result_fifo(fifo: &Path) -> Result<tokio::net::unix::pipe::Receiver, ExecError> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(fifo)
        .map_err(|source| ExecError::Io { context: "opening the result FIFO".into(), source })
}

/// The part of a request that decides how its interpreter is started (Deno's permissions and
/// flags, Node's flags): a pre-started interpreter serves only runs with the same profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    deno_flags: Vec<String>,
    node_flags: Vec<String>,
    allow_net: bool,
    allow_read: Option<Vec<String>>,
    allow_write: Option<Vec<String>>,
}

impl Profile {
    /// The profile of `req` in `language` (fields other interpreters ignore are left out).
    fn of(language: Language, req: &RunRequest) -> Self {
        match language {
            Language::Ts => Profile {
                deno_flags: req.deno_flags.clone().unwrap_or_default(),
                allow_net: req.allow_net.unwrap_or(false),
                allow_read: req.allow_read.clone(),
                allow_write: req.allow_write.clone(),
                ..Profile::default()
            },
            Language::Js => Profile { node_flags: req.node_flags.clone().unwrap_or_default(), ..Profile::default() },
            Language::Python => Profile::default(),
        }
    }
}

/// How one language is run.
struct Interpreter {
    language: Language,
    program: PathBuf,
    snippet_ext: &'static str,
    env: BTreeMap<String, String>,
}

impl Interpreter {
    fn of(language: Language) -> Result<Self, ExecError> {
        let (name, snippet_ext, env): (_, _, &[(&str, &str)]) = match language {
            Language::Ts => {
                ("deno", "ts", &[("DENO_DIR", "/tmp/.deno"), ("DENO_NO_UPDATE_CHECK", "1"), ("NO_COLOR", "1")])
            }
            Language::Js => ("node", "mjs", &[]),
            Language::Python => ("python3", "py", &[]),
        };
        let program = find_program(name).ok_or(ExecError::Unsupported(name))?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(Interpreter { language, program, snippet_ext, env })
    }

    /// Extra environment for this interpreter. Python gets the workspace on its import path so
    /// `from peers import <alias>` works from snippets too.
    fn env_for(&self, workspace: &Path) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        if self.language == Language::Python {
            env.insert("PYTHONPATH".into(), workspace.display().to_string());
        }
        env
    }

    /// Interpreter arguments before the wrapper path. Deno's permissions are fixed here and never
    /// taken from the caller's flags; `allowNet` is the manager's grant, derived from the VM's
    /// egress policy (the VM's firewall is what limits destinations), and `allowRead` /
    /// `allowWrite` can only narrow the default paths. The run directory and the peer bridge
    /// socket (proxies in /workspace/peers call it) are always granted. `--no-config`: the
    /// wrapper lives under `/tmp`, where a `deno.json` anyone planted would otherwise apply.
    fn leading_args(&self, workspace: &Path, run_dir: &Path, profile: &Profile) -> Result<Vec<String>, ExecError> {
        match self.language {
            // Unbuffered, so stdout and stderr keep their relative order.
            Language::Python => return Ok(vec!["-u".into()]),
            Language::Js => return Ok(profile.node_flags.clone()),
            Language::Ts => {}
        }
        let ws = workspace.display().to_string();
        let bridge = rds_proto::GUEST_BRIDGE_SOCKET;
        let own = [run_dir.display().to_string(), bridge.to_string()];
        let mut writable = vec![ws, "/tmp".to_string(), "/var/tmp".to_string()];
        let mut readable = writable.clone();
        readable.extend(DENO_SYSTEM_READS.iter().map(|p| p.to_string()));
        writable = narrowed("allowWrite", profile.allow_write.as_deref(), writable)?;
        readable = narrowed("allowRead", profile.allow_read.as_deref(), readable)?;
        let net = if profile.allow_net { "--allow-net".into() } else { format!("--allow-net=unix:{bridge}") };
        let mut args = vec![
            "run".to_string(),
            "--quiet".into(),
            "--no-prompt".into(),
            "--no-config".into(),
            format!("--allow-read={}", readable.iter().chain(&own).cloned().collect::<Vec<_>>().join(",")),
            format!("--allow-write={}", writable.iter().chain(&own).cloned().collect::<Vec<_>>().join(",")),
            "--allow-env".into(),
            net,
        ];
        args.extend(profile.deno_flags.iter().cloned());
        Ok(args)
    }
}

/// The caller's narrowing of a path grant: each entry absolute, plain (no `..`, no comma, which
/// would split Deno's list) and inside one of `grant`; `None` keeps the whole grant.
fn narrowed(field: &str, requested: Option<&[String]>, grant: Vec<String>) -> Result<Vec<String>, ExecError> {
    let Some(requested) = requested else { return Ok(grant) };
    let mut paths = Vec::with_capacity(requested.len());
    for (i, entry) in requested.iter().enumerate() {
        let name = format!("{field}[{i}]");
        reject_nul(&name, entry)?;
        let path = Path::new(entry);
        let plain = path.is_absolute()
            && !entry.contains(',')
            && path.components().all(|c| !matches!(c, std::path::Component::ParentDir));
        if !plain {
            return Err(ExecError::Invalid(format!(
                "invalid field `{name}`: {entry:?} must be an absolute path without `..` or commas"
            )));
        }
        if !grant.iter().any(|g| path.starts_with(g)) {
            return Err(ExecError::Invalid(format!(
                "invalid field `{name}`: {entry:?} is outside what runs may access ({})",
                grant.join(", ")
            )));
        }
        paths.push(entry.clone());
    }
    Ok(paths)
}

/// The agent's private directory of runs: `/tmp/rds-runs-<uuid>`, root-owned, mode 0711, so the
/// sandbox user reaches a run's files by their names but cannot list the directory (the runs of
/// pre-started interpreters stay out of sight). Holds the wrappers and the context kernels,
/// written once; removed with the last run directory.
pub struct RunRoot {
    path: PathBuf,
}

impl RunRoot {
    fn create() -> Result<Self, ExecError> {
        let path = Path::new(RUN_ROOT_PARENT).join(format!("rds-runs-{}", uuid::Uuid::new_v4()));
        make_private_dir(&path, 0o711)?;
        let root = RunRoot { path };
        for (name, contents) in [
            ("wrapper.mjs", JS_WRAPPER),
            ("wrapper.py", PY_WRAPPER),
            ("kernel.mjs", JS_KERNEL),
            ("kernel.py", PY_KERNEL),
        ] {
            write_readonly(&root.path, name, contents.as_bytes())?;
        }
        Ok(root)
    }

    fn wrapper(&self, language: Language) -> PathBuf {
        self.path.join(match language {
            Language::Ts | Language::Js => "wrapper.mjs",
            Language::Python => "wrapper.py",
        })
    }

    fn kernel(&self, language: Language) -> PathBuf {
        self.path.join(match language {
            Language::Ts | Language::Js => "kernel.mjs",
            Language::Python => "kernel.py",
        })
    }
}

impl Drop for RunRoot {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!("could not remove the runs directory {}: {e}", self.path.display());
        }
    }
}

/// Creates `path` afresh (mkdir fails rather than reuse anything a user may have planted) with
/// exactly `mode`.
fn make_private_dir(path: &Path, mode: u32) -> Result<(), ExecError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|source| ExecError::Io { context: format!("creating {}", path.display()), source })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| ExecError::Io { context: format!("chmod {}", path.display()), source })
}

/// Writes a world-readable file the sandbox user can read but not change.
fn write_readonly(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf, ExecError> {
    let path = dir.join(name);
    let io = |source| ExecError::Io { context: format!("writing {}", path.display()), source };
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io)?;
    Ok(path)
}

/// A fresh root-owned directory in the [`RunRoot`] holding one run's snippet and result FIFO;
/// removed when dropped.
pub struct RunDir {
    path: PathBuf,
    /// Keeps the runs directory until this run is gone.
    _root: Arc<RunRoot>,
}

impl RunDir {
    fn create(root: &Arc<RunRoot>) -> Result<Self, ExecError> {
        let path = root.path.join(uuid::Uuid::new_v4().to_string());
        make_private_dir(&path, 0o755)?;
        Ok(RunDir { path, _root: root.clone() })
    }

    /// Writes a world-readable file the sandbox user can read but not change.
    fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, ExecError> {
        write_readonly(&self.path, name, contents)
    }

    /// Creates the FIFO the wrapper reports through, writable only by the sandbox user.
    fn result_fifo(&self, identity: Identity) -> Result<PathBuf, ExecError> {
        let path = self.path.join("result");
        let io = |e: nix::Error| ExecError::Io { context: format!("creating {}", path.display()), source: e.into() };
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(io)?;
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(identity.uid)),
            Some(nix::unistd::Gid::from_raw(identity.gid)),
        )
        .map_err(io)?;
        Ok(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!("could not remove run directory {}: {e}", self.path.display());
        }
    }
}

/// Combines the process outcome with the wrapper's report.
fn run_result(finished: &Finished) -> RunResult {
    let (exit_code, signal, timed_out) = finished.status_fields();
    let mut out = RunResult {
        exit_code,
        stdout: finished.stdout.text(),
        stderr: finished.stderr.text(),
        stdout_truncated: finished.stdout.truncated,
        stderr_truncated: finished.stderr.truncated,
        timed_out,
        signal,
        duration_ms: finished.duration.as_millis() as u64,
        ..RunResult::default()
    };
    let Some(report) = &finished.side_channel else { return out };
    if report.truncated {
        out.error = Some(serde_json::json!({
            "name": "ResultTooLarge",
            "message": format!("the result is larger than {RESULT_CAP} bytes"),
        }));
        return out;
    }
    // Only a newline-terminated report is complete. An empty, cut or garbled one (killed
    // mid-write, user code wrote to the FIFO) means no result.
    let Some(document) = report.bytes.strip_suffix(b"\n") else { return out };
    if let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(document) {
        out.result = fields.remove("result");
        out.error = fields.remove("error");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Vec<String> {
        vec!["/workspace".into(), "/tmp".into(), "/etc/hosts".into()]
    }

    #[test]
    fn narrowing_keeps_paths_inside_the_grant_and_names_the_bad_entry() {
        let asked = vec!["/workspace/data".to_string(), "/etc/hosts".into()];
        assert_eq!(narrowed("allowRead", Some(&asked), grant()).unwrap(), asked);
        assert_eq!(narrowed("allowRead", None, grant()).unwrap(), grant());
        for (bad, index) in [
            (vec!["/workspace".to_string(), "/etc".into()], 1),
            (vec!["/workspace/../etc".into()], 0),
            (vec!["/tmp,/etc".into()], 0),
            (vec!["workspace".into()], 0),
            (vec!["/tmpx".into()], 0),
        ] {
            let err = narrowed("allowWrite", Some(&bad), grant()).unwrap_err().to_string();
            assert!(err.contains(&format!("allowWrite[{index}]")), "{bad:?}: {err}");
        }
    }
}
