//! A cgroup per command, so a timeout kills everything the command started — `setsid` and
//! double-forked descendants included — and nothing else.
//!
//! Where the agent finds cgroups (only when [`crate::server::AgentConfig::exec_cgroups`] is set:
//! a guest or a sandbox, never an agent running straight on a host):
//! * **v2** at `/sys/fs/cgroup` (a microVM guest's own hierarchy, or the sandbox VM's `user` group
//!   bound there): one `exec-<n>` group per command, killed atomically with `cgroup.kill`.
//! * **v1** (a sandbox on a v1 host): the VM's `user` groups of the `pids` and `memory` hierarchies
//!   are bound at `/sys/fs/cgroup/pids` and `/sys/fs/cgroup/memory`. The per-command group lives in
//!   `pids` (every process is in exactly one of its groups, so its `cgroup.procs` lists the whole
//!   command); commands join the `memory` group itself, so OOM kills stay counted where the
//!   runtime reads them.
//!
//! A command that ends normally may leave background processes running in its group; the group is
//! remembered and removed once it is empty (checked whenever a later command starts), so starting
//! a command costs no directory scan.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where cgroup hierarchies are mounted inside a guest or sandbox.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Prefix of per-command group names.
const PREFIX: &str = "exec-";
/// How long a kill keeps signalling processes that remain in a v1 group.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between rounds of a v1 kill, so killed processes can leave the group.
const KILL_PAUSE: Duration = Duration::from_millis(2);

/// The hierarchies commands are placed in.
#[derive(Debug)]
pub struct ExecCgroups {
    /// Where per-command groups are made (`cgroup.procs` of a group lists the whole command).
    parent: PathBuf,
    /// Groups every command joins as they are (v1 `memory`).
    join: Vec<PathBuf>,
    /// Groups of finished commands that still held (background) processes when they ended.
    leftover: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

/// One command's group: open `cgroup.procs` files the child writes itself into before exec.
#[derive(Debug)]
pub struct ExecGroup {
    owner: Arc<ExecCgroups>,
    dir: PathBuf,
    procs: Vec<File>,
}

impl ExecCgroups {
    /// Finds usable cgroups under `/sys/fs/cgroup`; `None` when there are none (the session kill
    /// is then the only tool).
    pub fn detect() -> Option<Self> {
        Self::detect_in(Path::new(CGROUP_ROOT))
    }

    fn detect_in(root: &Path) -> Option<Self> {
        let (parent, join) = if root.join("cgroup.controllers").exists() {
            (root.to_path_buf(), Vec::new())
        } else if root.join("pids/cgroup.procs").exists() {
            let memory = root.join("memory");
            let join = if memory.join("cgroup.procs").exists() { vec![memory] } else { Vec::new() };
            (root.join("pids"), join)
        } else {
            return None;
        };
        // Writable by us? (A read-only hierarchy would fail every command.)
        let probe = parent.join(format!("{PREFIX}probe-{}", std::process::id()));
        match std::fs::create_dir(&probe) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&probe);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!(path = %parent.display(), "cgroups not usable, timeouts fall back to session kills: {e}");
                return None;
            }
        }
        Some(ExecCgroups { parent, join, leftover: Mutex::new(Vec::new()), next: AtomicU64::new(1) })
    }

    /// Creates a fresh group for one command (and removes earlier commands' groups now empty).
    pub fn create(self: &Arc<Self>) -> io::Result<ExecGroup> {
        self.sweep();
        let dir = loop {
            let dir = self.parent.join(format!("{PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed)));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                // Left by an earlier agent (restarted): take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create cgroup {}: {e}", dir.display()))),
            }
        };
        // Owned from here on: an error below removes the fresh group again (drop).
        let mut group = ExecGroup { owner: Arc::clone(self), dir, procs: Vec::new() };
        for d in std::iter::once(group.dir.clone()).chain(self.join.iter().cloned()) {
            let path = d.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
            group.procs.push(file);
        }
        Ok(group)
    }

    /// Removes groups of finished commands whose background processes have all ended since
    /// (rmdir refuses a group that still has processes: exactly the guard wanted).
    fn sweep(&self) {
        let mut leftover = self.leftover.lock().unwrap_or_else(|p| p.into_inner());
        leftover.retain(|dir| std::fs::remove_dir(dir).is_err_and(|e| e.kind() != io::ErrorKind::NotFound));
    }
}

impl ExecGroup {
    /// Descriptors of the `cgroup.procs` files; the child writes `0` to each before exec.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Kills every process in the group, including ones forking right now.
    pub async fn kill(&self) {
        let kill_file = self.dir.join("cgroup.kill");
        if kill_file.exists() && std::fs::write(&kill_file, "1").is_ok() {
            return;
        }
        let deadline = tokio::time::Instant::now() + KILL_DEADLINE;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(group = %self.dir.display(), "processes of a timed-out command survived repeated SIGKILL");
                return;
            }
            tokio::time::sleep(KILL_PAUSE).await;
        }
    }

    /// Pids in the group (v2: `cgroup.procs` lists only live, non-zombie members that still count).
    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for ExecGroup {
    /// The command is over: the group goes now if it is empty, else at a later sweep.
    fn drop(&mut self) {
        self.procs.clear();
        if std::fs::remove_dir(&self.dir).is_err_and(|e| e.kind() != io::ErrorKind::NotFound) {
            self.owner.leftover.lock().unwrap_or_else(|p| p.into_inner()).push(self.dir.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cgroup_hierarchy_means_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ExecCgroups::detect_in(dir.path()).is_none());
    }
}
