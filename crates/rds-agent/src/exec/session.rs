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
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, session)| session == sid && state != 'Z' && state != 'X')
        })
        .collect()
}

/// Extracts (state, session id) from a `/proc/<pid>/stat` line.
///
/// The command name may contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let _pgrp = fields.next()?;
    let session = fields.next()?.parse().ok()?;
    Some((state, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_survives_hostile_command_names() {
        let line = "4242 (evil) S 1 2 3) R 1 77 77 0 -1 4194560 0 0";
        assert_eq!(parse_stat(line), Some(('R', 77)));
        assert_eq!(parse_stat("12 (sleep) S 10 12 9 0 -1"), Some(('S', 9)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
