//! Killing everything a command started.
//!
//! Every command runs in its own session (`setsid`), so its session id is its pid. Killing the
//! process group catches ordinary pipelines; background jobs that moved to their own process
//! group (bash job control, `setpgid`) stay in the session, so `/proc` is scanned for them too.

use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How many times the session is rescanned: a member may fork while we kill it.
const KILL_ROUNDS: usize = 50;
/// Pause between rescans, so freshly killed processes can leave the process table.
const KILL_PAUSE: Duration = Duration::from_millis(5);

/// SIGKILLs the process group `sid` and every live process in session `sid`.
pub async fn kill_session(sid: i32) {
    let _ = killpg(Pid::from_raw(sid), Signal::SIGKILL);
    for _ in 0..KILL_ROUNDS {
        let members = session_members(sid);
        if members.is_empty() {
            return;
        }
        for pid in members {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        tokio::time::sleep(KILL_PAUSE).await;
    }
    tracing::warn!(sid, "processes of a timed-out command survived repeated SIGKILL");
}

/// Live (non-zombie) processes whose session id is `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| rds_host::ProcStat::read(*pid).is_some_and(|stat| stat.session == sid && stat.is_live()))
        .collect()
}
