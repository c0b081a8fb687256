//! `POST /run-ts|run-js|run-python`: run a snippet or a workspace file under Deno, Node or
//! Python as the sandbox user and collect its structured result.
//!
//! A small wrapper (see `run/wrapper.*`) imports the user's module, collects `result.set(...)`,
//! the default export (TS/JS) or the module-level `result` (Python), and writes one JSON document
//! to a FIFO. The wrapper, the snippet and the FIFO live in a fresh root-owned directory under
//! `/tmp` that the user cannot modify and that is removed afterwards, so nothing is left in the
//! workspace and the root agent only ever opens a path it created itself.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rds_proto::{Language, RunRequest, RunResult};
use serde_json::Value;

use crate::exec::cgroup::ExecCgroups;
use crate::exec::idempotency::{self, IdempotencyCache};
use crate::exec::process::find_program;
use crate::exec::{self, reject_nul, sandbox_env, timeout_of, ExecError, Finished, Handle, Identity, Launch};
use crate::files;
use crate::server::AgentConfig;

/// Largest result document accepted from a wrapper.
pub const RESULT_CAP: usize = 8 * 1024 * 1024;
/// Where run directories are created (root-owned, one per run).
const RUN_ROOT: &str = "/tmp";

/// System files Deno may read besides the workspace and temporary directories: name resolution
/// and the CA bundle, which ordinary networking code (and the original's grant) needs.
const DENO_SYSTEM_READS: [&str; 5] =
    ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl/certs", "/usr/share/ca-certificates"];

const JS_WRAPPER: &str = include_str!("run/wrapper.mjs");
const PY_WRAPPER: &str = include_str!("run/wrapper.py");

/// Runs `run-*` requests.
pub struct Runner {
    workspace: PathBuf,
    identity: Identity,
    output_cap: usize,
    cache: IdempotencyCache<RunResult>,
    cgroups: Option<Arc<ExecCgroups>>,
}

impl Runner {
    /// A runner for the agent configured by `cfg`.
    pub fn new(cfg: &AgentConfig, cgroups: Option<Arc<ExecCgroups>>) -> Self {
        Runner {
            cgroups,
            workspace: cfg.workspace.clone(),
            identity: Identity { uid: cfg.uid, gid: cfg.gid },
            output_cap: cfg.output_cap,
            cache: IdempotencyCache::new(idempotency::DEFAULT_CAPACITY),
        }
    }

    /// Validates and starts `req` in `language` (or joins the earlier run with its `execId`).
    pub fn start(&self, language: Language, req: RunRequest) -> Result<Handle<RunResult>, ExecError> {
        let fingerprint = format!("{}:{}", language.route(), serde_json::to_string(&req).unwrap_or_default());
        let id = req.exec_id.as_ref().map(|id| format!("{}:{id}", language.route()));
        Handle::start(
            &self.cache,
            id.as_deref(),
            &fingerprint,
            || self.prepare(language, &req),
            |(dir, running): (RunDir, exec::Running)| async move {
                let finished = running.finish(None).await;
                drop(dir);
                run_result(&finished)
            },
        )
    }

    fn prepare(&self, language: Language, req: &RunRequest) -> Result<(RunDir, exec::Running), ExecError> {
        let interpreter = Interpreter::of(language)?;
        let dir = RunDir::create()?;
        // `path` wins over `code`; a file runs from its own directory, a snippet from the workspace.
        let (target, cwd, cwd_label) = match (&req.path, &req.code) {
            (Some(path), _) => {
                reject_nul("path", path)?;
                let relative = files::resolve_workspace_path(&self.workspace, path)
                    .map_err(|e| ExecError::Invalid(format!("invalid field `path`: {e}")))?;
                let file = self.workspace.join(relative);
                let parent = file.parent().unwrap_or(&self.workspace).to_path_buf();
                (file, parent, path.clone())
            }
            (None, Some(code)) => {
                let snippet = dir.write(&format!("snippet.{}", interpreter.snippet_ext), code.as_bytes())?;
                (snippet, self.workspace.clone(), self.workspace.display().to_string())
            }
            (None, None) => return Err(ExecError::Invalid("either `code` or `path` is required".into())),
        };
        let fifo = dir.result_fifo(self.identity)?;
        let wrapper_text = interpreter
            .wrapper
            .replace("__RDS_TARGET__", &json_string(&target))
            .replace("__RDS_RESULT__", &json_string(&fifo))
            .replace("__RDS_WORKSPACE__", &json_string(&cwd));
        let wrapper = dir.write(&format!("wrapper.{}", interpreter.wrapper_ext), wrapper_text.as_bytes())?;

        let mut args = interpreter.leading_args(&self.workspace, &dir.path, req)?;
        args.push(wrapper.display().to_string());
        for (i, arg) in req.args.iter().flatten().enumerate() {
            reject_nul(&format!("args[{i}]"), arg)?;
            args.push(arg.clone());
        }
        // Opened read-write so the FIFO never reports EOF before the wrapper has opened it.
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .map_err(|source| ExecError::Io { context: "opening the result FIFO".into(), source })?;
        let env = sandbox_env(&self.workspace, &interpreter.env_for(&self.workspace), req.env.as_ref())?;
        let launch = Launch {
            program: interpreter.program,
            args,
            env,
            cwd,
            cwd_label,
            stdin: None,
            timeout: timeout_of(req.timeout_ms)?,
            output_cap: self.output_cap,
            identity: self.identity,
            side_channel: Some((receiver, RESULT_CAP)),
            cgroups: self.cgroups.clone(),
        };
        let running = exec::spawn(launch)?;
        Ok((dir, running))
    }
}

/// How one language is run.
struct Interpreter {
    language: Language,
    program: PathBuf,
    wrapper: &'static str,
    wrapper_ext: &'static str,
    snippet_ext: &'static str,
    env: BTreeMap<String, String>,
}

impl Interpreter {
    fn of(language: Language) -> Result<Self, ExecError> {
        let (name, wrapper, wrapper_ext, snippet_ext, env): (_, _, _, _, &[(&str, &str)]) = match language {
            Language::Ts => (
                "deno",
                JS_WRAPPER,
                "mjs",
                "ts",
                &[("DENO_DIR", "/tmp/.deno"), ("DENO_NO_UPDATE_CHECK", "1"), ("NO_COLOR", "1")],
            ),
            Language::Js => ("node", JS_WRAPPER, "mjs", "mjs", &[]),
            Language::Python => ("python3", PY_WRAPPER, "py", "py", &[]),
        };
        let program = find_program(name).ok_or(ExecError::Unsupported(name))?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(Interpreter { language, program, wrapper, wrapper_ext, snippet_ext, env })
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
    /// socket (proxies in /workspace/peers call it) are always granted.
    fn leading_args(&self, workspace: &Path, run_dir: &Path, req: &RunRequest) -> Result<Vec<String>, ExecError> {
        // The manager checks these too; the agent is the boundary, so it never trusts that.
        for (field, flags) in [("denoFlags", &req.deno_flags), ("nodeFlags", &req.node_flags)] {
            rds_proto::interpreter_flags::check(field, flags.as_deref().unwrap_or_default())
                .map_err(ExecError::Invalid)?;
        }
        match self.language {
            // Unbuffered, so stdout and stderr keep their relative order.
            Language::Python => return Ok(vec!["-u".into()]),
            Language::Js => return Ok(req.node_flags.clone().unwrap_or_default()),
            Language::Ts => {}
        }
        let ws = workspace.display().to_string();
        let bridge = rds_proto::GUEST_BRIDGE_SOCKET;
        let own = [run_dir.display().to_string(), bridge.to_string()];
        let mut writable = vec![ws, "/tmp".to_string(), "/var/tmp".to_string()];
        let mut readable = writable.clone();
        readable.extend(DENO_SYSTEM_READS.iter().map(|p| p.to_string()));
        writable = narrowed("allowWrite", req.allow_write.as_deref(), writable)?;
        readable = narrowed("allowRead", req.allow_read.as_deref(), readable)?;
        let net =
            if req.allow_net.unwrap_or(false) { "--allow-net".into() } else { format!("--allow-net=unix:{bridge}") };
        let mut args = vec![
            "run".to_string(),
            "--quiet".into(),
            "--no-prompt".into(),
            format!("--allow-read={}", readable.iter().chain(&own).cloned().collect::<Vec<_>>().join(",")),
            format!("--allow-write={}", writable.iter().chain(&own).cloned().collect::<Vec<_>>().join(",")),
            "--allow-env".into(),
            net,
        ];
        args.extend(req.deno_flags.iter().flatten().cloned());
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

/// A fresh root-owned directory under `/tmp` holding one run's wrapper, snippet and result FIFO;
/// removed when dropped.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create() -> Result<Self, ExecError> {
        let path = Path::new(RUN_ROOT).join(format!("rds-run-{}", uuid::Uuid::new_v4()));
        // A fresh name: mkdir fails rather than reuse anything a user may have planted.
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(|source| ExecError::Io { context: format!("creating {}", path.display()), source })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|source| ExecError::Io { context: format!("chmod {}", path.display()), source })?;
        Ok(RunDir { path })
    }

    /// Writes a world-readable file the sandbox user can read but not change.
    fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, ExecError> {
        let path = self.path.join(name);
        let io = |source| ExecError::Io { context: format!("writing {}", path.display()), source };
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path).map_err(io)?;
        file.write_all(contents).map_err(io)?;
        file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io)?;
        Ok(path)
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

/// A path as a JSON string literal (valid in JavaScript and Python source alike).
fn json_string(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("strings always serialise")
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
    // An empty or garbled report (killed mid-write, user code wrote to the FIFO) means no result.
    if let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&report.bytes) {
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
