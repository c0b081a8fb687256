//! Pre-started interpreters (the warm pool): per language, up to `size` interpreters started before
//! their run, each with its wrapper loaded and waiting on stdin, so a run skips interpreter
//! start-up.
//!
//! Each serves exactly one run and is replaced in the background, so a run keeps the semantics of
//! a cold one: a fresh process and module scope, the sandbox uid, its own cgroup, the same limits
//! and seccomp filter, the timeout killing its whole group. A waiting interpreter holds no run's
//! code, env or secrets: it was started with the environment every run starts from, and gets its
//! run (target, env, cwd, args) over its stdin only when handed it.
//!
//! A pool serves runs whose interpreter would be started the same way: the same [`Profile`]
//! (Deno's permissions and flags, Node's flags; the pool follows the latest profile of each
//! language) and no change to a variable interpreters read while starting ([`STARTUP_ENV`]).
//! Anything else runs cold. The first run of a language is cold too: a VM that never runs Python
//! never pays for a waiting Python.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use rds_proto::Language;

use super::{Profile, RunDir};
use crate::exec::{ExecError, Running};

/// Pre-started interpreters per language unless configured otherwise (0 disables the pool).
pub const DEFAULT_WARM_POOL: usize = 1;
/// The most pre-started interpreters per language an agent keeps.
pub const MAX_WARM_POOL: usize = 8;

/// Prefixes (matched case-insensitively) of variables an interpreter or its libraries read while
/// starting, before the wrapper could apply them: a run that sets one to anything else than the
/// default runs cold.
pub const STARTUP_ENV: [&str; 24] = [
    "PYTHON",
    "DENO",
    "NODE",
    "NPM_",
    "V8",
    "UV_",
    "LD_",
    "GLIBC",
    "MALLOC",
    "LC_",
    "LANG",
    "TZ",
    "HOME",
    "TMPDIR",
    "TERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_",
    "OPENSSL",
];

/// An interpreter waiting for its run.
pub struct Warm {
    /// Its run directory (the result FIFO; the snippet is written at hand-over).
    pub dir: RunDir,
    /// The process, stdin piped, its output not yet captured.
    pub running: Running,
    /// The result FIFO in `dir`, already open for reading in `running`.
    pub fifo: PathBuf,
    /// The environment it was started with.
    pub env: BTreeMap<String, String>,
}

/// The pools of all languages.
pub struct WarmPool {
    size: usize,
    /// Indexed by [`index`].
    slots: Mutex<[Option<Slot>; 3]>,
}

/// One language's pool.
struct Slot {
    profile: Profile,
    ready: VecDeque<Warm>,
    /// Interpreters being started for it right now.
    starting: usize,
}

impl WarmPool {
    /// Pools of up to `size` interpreters per language (0: none).
    pub fn new(size: usize) -> Self {
        WarmPool { size: size.min(MAX_WARM_POOL), slots: Mutex::new([None, None, None]) }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, [Option<Slot>; 3]> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live interpreter for a run of `language` with `profile` and environment `env`, if one
    /// waits. Interpreters that died while waiting (killed by earlier user code, say) are dropped.
    pub fn take(&self, language: Language, profile: &Profile, env: &BTreeMap<String, String>) -> Option<Warm> {
        if self.size == 0 {
            return None;
        }
        let mut slots = self.slots();
        let slot = slots[index(language)].as_mut().filter(|slot| slot.profile == *profile)?;
        loop {
            let mut warm = slot.ready.pop_front()?;
            if warm.running.has_exited() {
                tracing::debug!(?language, "a pre-started interpreter died while waiting");
                continue;
            }
            if !env_fits(&warm.env, env) {
                slot.ready.push_front(warm);
                return None;
            }
            return Some(warm);
        }
    }

    /// Whether runs like this one are served warm (so worth starting interpreters for). A
    /// narrowed `allowRead` is not: the wrapper could not even enter the run's directory.
    pub fn wants(&self, _language: Language, profile: &Profile) -> bool {
        self.size > 0 && profile.allow_read.is_none()
    }

    /// Starts interpreters (with `start`) until `size` wait for runs of `language` with
    /// `profile`; those waiting for another profile are stopped.
    pub fn fill(&self, language: Language, profile: &Profile, start: impl Fn() -> Result<Warm, ExecError>) {
        let (missing, stale) = {
            let mut slots = self.slots();
            let slot = slots[index(language)].get_or_insert_with(|| Slot {
                profile: profile.clone(),
                ready: VecDeque::new(),
                starting: 0,
            });
            let mut stale = VecDeque::new();
            if slot.profile != *profile {
                slot.profile = profile.clone();
                stale = std::mem::take(&mut slot.ready);
            }
            slot.ready.retain_mut(|warm| !warm.running.has_exited());
            let missing = self.size.saturating_sub(slot.ready.len() + slot.starting);
            slot.starting += missing;
            (missing, stale)
        };
        // Dropping a waiting interpreter kills it and removes its run directory.
        drop(stale);
        for _ in 0..missing {
            let started = start();
            let mut slots = self.slots();
            let Some(slot) = slots[index(language)].as_mut() else { return };
            slot.starting = slot.starting.saturating_sub(1);
            match started {
                Ok(warm) if slot.profile == *profile => slot.ready.push_back(warm),
                // The pool moved on to another profile meanwhile.
                Ok(_) => {}
                Err(e) => tracing::warn!(?language, "could not pre-start an interpreter: {e}"),
            }
        }
    }
}

/// Where `language`'s pool is in [`WarmPool::slots`].
fn index(language: Language) -> usize {
    match language {
        Language::Ts => 0,
        Language::Js => 1,
        Language::Python => 2,
    }
}

/// True when a run's environment differs from the one an interpreter was started with only in
/// variables read after start-up.
fn env_fits(started_with: &BTreeMap<String, String>, run: &BTreeMap<String, String>) -> bool {
    started_with
        .keys()
        .chain(run.keys())
        .filter(|key| started_with.get(*key) != run.get(*key))
        .all(|key| !read_at_startup(key))
}

fn read_at_startup(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    STARTUP_ENV.iter().any(|prefix| key.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_variables_read_after_startup_may_differ() {
        let base = env(&[("PATH", "/bin"), ("HOME", "/workspace"), ("PYTHONPATH", "/workspace")]);
        assert!(env_fits(&base, &base));
        assert!(env_fits(
            &base,
            &env(&[("PATH", "/bin"), ("HOME", "/workspace"), ("PYTHONPATH", "/workspace"), ("API_KEY", "s")])
        ));
        assert!(env_fits(&base, &env(&[("PATH", "/usr/bin"), ("HOME", "/workspace"), ("PYTHONPATH", "/workspace")])));
        assert!(!env_fits(&base, &env(&[("PATH", "/bin"), ("HOME", "/elsewhere"), ("PYTHONPATH", "/workspace")])));
        assert!(!env_fits(&base, &env(&[("PATH", "/bin"), ("HOME", "/workspace")])), "a removed startup variable");
        assert!(!env_fits(
            &base,
            &env(&[("PATH", "/bin"), ("HOME", "/workspace"), ("PYTHONPATH", "/workspace"), ("node_options", "--x")])
        ));
    }
}
