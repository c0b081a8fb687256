//! Host process helpers: identify a process by (pid, start time) so a recycled pid is never signalled.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Fields of `/proc/<pid>/stat` this crate needs.
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field 22 (starttime) is `fields[19]`.
    Some(Stat { state: fields.first()?.chars().next()?, start_time: fields.get(19)?.parse().ok()? })
}

/// Start time of `pid` (`/proc/<pid>/stat` field 22, clock ticks since boot); `None` if it doesn't exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// True when `pid` runs (not a zombie) and started at `start_time`.
pub fn is_same_process_alive(pid: i32, start_time: u64) -> bool {
    matches!(read_stat(pid), Some(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
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

#[cfg(test)]
mod tests {
    use super::*;

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
