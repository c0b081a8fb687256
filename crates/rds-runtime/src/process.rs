//! Host process helpers: identify a process by (pid, start time) so a recycled pid is never
//! signalled, and the one parser of `/proc/<pid>/stat`.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::RuntimeError;

/// The fields of a `/proc/<pid>/stat` line rds uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 6: the session id.
    pub session: i32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// True unless the process is a zombie or dead.
    pub fn is_running(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Parses one `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and `)`, so fields
/// are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `fields[0]` is field 3 (state), so field 6 (session) is `fields[3]` and field 22
    // (starttime) is `fields[19]`.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat` of `pid`, parsed; `None` when it does not exist.
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Start time of `pid` (`/proc/<pid>/stat` field 22, clock ticks since boot); `None` if it doesn't exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// True when `pid` runs (not a zombie) and started at `start_time`.
pub fn is_same_process_alive(pid: i32, start_time: u64) -> bool {
    matches!(read_stat(pid), Some(s) if s.start_time == start_time && s.is_running())
}

/// Sends `signal` to `pid` only if it is still the process that started at `start_time`.
/// Returns whether a signal was sent.
pub fn signal_if_same(pid: i32, start_time: u64, signal: Signal) -> bool {
    is_same_process_alive(pid, start_time) && kill(Pid::from_raw(pid), signal).is_ok()
}

/// Waits until the process is gone (or a zombie), polling; returns false if it is still running after `limit`.
pub async fn wait_gone(pid: i32, start_time: u64, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if !is_same_process_alive(pid, start_time) {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One host process, named by pid and start time so that a reused pid is never taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProcess {
    /// Its pid.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl HostProcess {
    /// The process `pid` as it is now; `None` when it does not exist.
    pub fn of_pid(pid: i32) -> Option<Self> {
        Some(HostProcess { pid, start_time: process_start_time(pid)? })
    }

    /// The process of `child`; `None` when it has exited already.
    pub fn of_child(child: &tokio::process::Child) -> Option<Self> {
        Self::of_pid(i32::try_from(child.id()?).ok()?)
    }

    /// True while it runs (not a zombie).
    pub fn is_alive(self) -> bool {
        is_same_process_alive(self.pid, self.start_time)
    }

    /// Sends `signal` if it still runs; returns whether a signal was sent.
    pub fn signal(self, signal: Signal) -> bool {
        signal_if_same(self.pid, self.start_time, signal)
    }

    /// Waits until it is gone (or a zombie); false if it still runs after `limit`.
    pub async fn wait_gone(self, limit: Duration) -> bool {
        wait_gone(self.pid, self.start_time, limit).await
    }

    /// SIGTERM, then SIGKILL when it still runs after `term_wait`; an error names it (`what`)
    /// when it outlives the SIGKILL by `kill_wait`. Nothing happens when it is already gone.
    pub async fn terminate(self, what: &str, term_wait: Duration, kill_wait: Duration) -> Result<(), RuntimeError> {
        if self.signal(Signal::SIGTERM) && !self.wait_gone(term_wait).await {
            self.kill(what, kill_wait).await?;
        }
        Ok(())
    }

    /// SIGKILL; an error names it (`what`) when it still runs `wait` later.
    pub async fn kill(self, what: &str, wait: Duration) -> Result<(), RuntimeError> {
        self.signal(Signal::SIGKILL);
        if self.wait_gone(wait).await {
            Ok(())
        } else {
            Err(RuntimeError::Stop(format!("{what} pid {} survived SIGKILL", self.pid)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_hostile_command_names_parse_from_the_last_paren() {
        let mut fields: Vec<String> = (4..=30).map(|n| n.to_string()).collect();
        fields[6 - 4] = "77".into();
        let tail = fields.join(" ");
        let line = format!("4242 (evil) S 1 2 3) R {tail}");
        let stat = parse_stat(&line).expect("parses");
        assert_eq!((stat.state, stat.session, stat.start_time), ('R', 77, 22));
        assert!(stat.is_running());
        let zombie = parse_stat(&format!("12 (sleep) Z {tail}")).unwrap();
        assert!(!zombie.is_running());
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (short) S 1 2"), None, "too few fields");
    }

    #[test]
    fn own_stat_names_our_session() {
        let me = read_stat(std::process::id() as i32).expect("own stat");
        // SAFETY: getsid(0) has no preconditions.
        assert_eq!(me.session, unsafe { libc::getsid(0) });
        assert!(me.is_running());
    }

    #[tokio::test]
    async fn terminate_ends_a_child_and_leaves_a_reused_identity_alone() {
        let mut child = tokio::process::Command::new("sleep").arg("30").spawn().expect("sleep runs");
        let p = HostProcess::of_child(&child).expect("just spawned");
        assert!(p.is_alive());
        let stale = HostProcess { start_time: p.start_time + 1, ..p };
        assert!(!stale.signal(Signal::SIGKILL), "another start time is another process");
        assert!(p.is_alive());
        let reaper = tokio::spawn(async move { child.wait().await });
        p.terminate("sleep", Duration::from_secs(5), Duration::from_secs(1)).await.expect("sleep ends on SIGTERM");
        assert!(!p.is_alive());
        assert!(!reaper.await.unwrap().unwrap().success(), "ended by a signal");
    }

    #[test]
    fn own_start_time_is_stable_and_matches() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).expect("own stat");
        assert_eq!(process_start_time(me), Some(t));
        assert!(is_same_process_alive(me, t));
        assert!(!is_same_process_alive(me, t + 1));
    }

    #[test]
    fn absent_pid_has_no_start_time() {
        assert_eq!(process_start_time(0), None);
        assert_eq!(process_start_time(-5), None);
        assert_eq!(process_start_time(i32::MAX), None);
    }
}
