//! Liveness while running: one watcher per RUNNING VM notices when the VM's top process (the
//! handle's pid + start time: sandbox launcher, QEMU) dies, and settles the VM as STOPPED (clean
//! exit) or ERROR with the reason, releasing what the runtime held, as a stop does.
//!
//! The watcher waits on a pidfd (readable when the process exits), which works for VMs this
//! manager started and for VMs it re-adopted after a restart; where pidfds are unavailable it
//! polls the pid's start time every [`POLL`]. It acts only if the VM is still RUNNING with the same
//! handle, under the VM's lock, so it never races a stop, delete or restart of that VM.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use rds_runtime::process::is_same_process_alive;
use rds_runtime::VmHandle;
use rds_store::VmState;
use serde_json::json;
use tokio::io::unix::AsyncFd;

use crate::services::events::vm_event;
use crate::services::network;
use crate::services::vms::{parse_handle, transition};
use crate::AppState;

/// Poll interval when no pidfd can be had (kernels before 5.3).
const POLL: Duration = Duration::from_millis(500);

/// How a VM's top process ended, as far as the manager can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// Exited with this status (known only for the manager's own children).
    Code(i32),
    /// Killed by this signal (known only for the manager's own children).
    Signal(i32),
    /// Gone, but not a child of this manager (re-adopted VM) or already reaped by its runtime.
    Unknown,
}

/// Watches VM `id`'s process named by `handle` until it exits, then settles the VM.
pub fn watch(state: &AppState, id: &str, handle: &VmHandle) {
    let (state, id, handle) = (state.clone(), id.to_string(), handle.clone());
    tokio::spawn(async move {
        let exit = wait_exit(handle.pid, handle.start_time).await;
        settle(&state, &id, &handle, exit).await;
    });
}

/// Waits until the process `pid` that started at `start_time` is gone.
pub async fn wait_exit(pid: i32, start_time: u64) -> ProcessExit {
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return ProcessExit::Unknown,
        Err(e) => {
            tracing::debug!(pid, error = %e, "no pidfd; polling the process instead");
            return poll_exit(pid, start_time).await;
        }
    };
    // The pidfd was opened first: if the pid still has the recorded start time now, the pidfd
    // names that very process and not a later one that reused the pid.
    if !is_same_process_alive(pid, start_time) {
        return exit_status(&pidfd);
    }
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until it is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    let pidfd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot register the pidfd; polling the process instead");
            return poll_exit(pid, start_time).await;
        }
    };
    // A pidfd becomes readable, and stays so, once its process has exited.
    match pidfd.readable().await {
        Ok(_guard) => exit_status(pidfd.get_ref()),
        Err(_) => poll_exit(pid, start_time).await,
    }
}

async fn poll_exit(pid: i32, start_time: u64) -> ProcessExit {
    while is_same_process_alive(pid, start_time) {
        tokio::time::sleep(POLL).await;
    }
    ProcessExit::Unknown
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The exit status of an exited process, if it is this manager's child and not yet reaped.
/// `WNOWAIT` leaves the zombie for the runtime's own reaper.
fn exit_status(pidfd: &OwnedFd) -> ProcessExit {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::PIDFd(pidfd.as_fd()), flags) {
        Ok(WaitStatus::Exited(_, code)) => ProcessExit::Code(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => ProcessExit::Signal(sig as i32),
        _ => ProcessExit::Unknown,
    }
}

/// The state a VM whose process ended moves to, and why, from how it ended and the OOM kills
/// recorded in its memory cgroup.
pub fn outcome(pid: i32, exit: ProcessExit, oom_kills: Option<u64>) -> (VmState, String) {
    let what = format!("the VM's process (pid {pid})");
    if let Some(n) = oom_kills.filter(|n| *n > 0) {
        let how = describe(exit).map(|d| format!(", {what} {d}")).unwrap_or_default();
        return (VmState::Error, format!("out of memory: the kernel killed {n} process(es) in the VM{how}"));
    }
    match exit {
        ProcessExit::Code(0) => (VmState::Stopped, format!("{what} exited cleanly (status 0)")),
        other => {
            let how = describe(other).unwrap_or_else(|| "exited (status unknown)".to_string());
            (VmState::Error, format!("{what} {how}"))
        }
    }
}

fn describe(exit: ProcessExit) -> Option<String> {
    match exit {
        ProcessExit::Code(code) => Some(format!("exited with status {code}")),
        ProcessExit::Signal(sig) => Some(match Signal::try_from(sig) {
            Ok(s) => format!("was killed by {}", s.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        }),
        ProcessExit::Unknown => None,
    }
}

/// Settles VM `id` after its process (named by `handle`) ended: releases what the runtime left
/// (cgroups, sockets, links, nft chains) and records STOPPED or ERROR with the reason.
async fn settle(state: &AppState, id: &str, handle: &VmHandle, exit: ProcessExit) {
    let _lock = state.vm_locks.lock(id).await;
    let vm = match state.store.get_vm(id).await {
        Ok(Some(vm)) => vm,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(vm_id = %id, error = %e, "cannot read the VM whose process exited");
            return;
        }
    };
    let same = parse_handle(&vm).is_some_and(|h| h.pid == handle.pid && h.start_time == handle.start_time);
    if vm.state != VmState::Running || !same {
        return; // stopped, deleted or restarted meanwhile: not ours to settle
    }
    // Read before the runtime's cleanup removes the memory cgroup that counts them.
    // Only kills among the VM's own machinery explain its death; its user code's OOMs do not.
    let oom_kills = state.runtime.agent_oom_kills(id).await;
    let (to, reason) = outcome(handle.pid, exit, oom_kills);
    tracing::warn!(vm_id = %id, state = %to, reason = %reason, "VM process ended while RUNNING");
    state.bridges.close(state, id);
    state.agent.forget(id);
    if let Err(e) = state.runtime.stop(id, handle).await {
        tracing::warn!(vm_id = %id, error = %e, "cleanup after the VM's process ended failed");
    }
    network::detach(state, id).await;
    let recorded = match state.store.set_vm_handle(id, None).await {
        Ok(()) => transition(state, id, VmState::Running, to, Some(&reason)).await,
        Err(e) => Err(crate::ApiError::from(e)),
    };
    if let Err(e) = recorded {
        tracing::error!(vm_id = %id, error = %e, "cannot record that the VM's process ended");
        return;
    }
    if to == VmState::Stopped {
        let meta = json!({"pid": handle.pid, "oomKills": oom_kills});
        vm_event(state, id, "vm.stopped", reason, Some(meta)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_how_the_process_ended() {
        assert_eq!(
            outcome(7, ProcessExit::Code(0), Some(0)),
            (VmState::Stopped, "the VM's process (pid 7) exited cleanly (status 0)".into())
        );
        assert_eq!(
            outcome(7, ProcessExit::Signal(9), None),
            (VmState::Error, "the VM's process (pid 7) was killed by SIGKILL".into())
        );
        assert_eq!(
            outcome(7, ProcessExit::Code(3), None),
            (VmState::Error, "the VM's process (pid 7) exited with status 3".into())
        );
        assert_eq!(
            outcome(7, ProcessExit::Unknown, None),
            (VmState::Error, "the VM's process (pid 7) exited (status unknown)".into())
        );
    }

    #[test]
    fn oom_kills_win_over_a_clean_looking_exit() {
        let (to, why) = outcome(7, ProcessExit::Code(0), Some(2));
        assert_eq!(to, VmState::Error);
        assert_eq!(
            why,
            "out of memory: the kernel killed 2 process(es) in the VM, the VM's process (pid 7) exited with status 0"
        );
        let (_, why) = outcome(7, ProcessExit::Unknown, Some(1));
        assert_eq!(why, "out of memory: the kernel killed 1 process(es) in the VM");
    }

    #[tokio::test]
    async fn wait_exit_sees_a_child_killed_by_a_signal_and_an_absent_pid() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        let start = rds_runtime::process_start_time(pid).expect("child start time");
        let waiter = tokio::spawn(wait_exit(pid, start));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("exit noticed").unwrap();
        assert_eq!(exit, ProcessExit::Signal(libc::SIGKILL), "the zombie is still ours to inspect");
        child.wait().unwrap();
        // Reaped now: the pid (or a recycled one with another start time) is not the process.
        assert_eq!(wait_exit(pid, start).await, ProcessExit::Unknown);
    }

    #[tokio::test]
    async fn wait_exit_does_not_return_while_the_process_runs() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        let start = rds_runtime::process_start_time(pid).expect("child start time");
        let waited = tokio::time::timeout(Duration::from_millis(300), wait_exit(pid, start)).await;
        assert!(waited.is_err(), "a running process is not reported as exited: {waited:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
