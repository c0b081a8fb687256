//! End-to-end: a VM whose process dies while the manager runs is noticed and settled (STOPPED or
//! ERROR with a reason), for VMs the manager started and for VMs it re-adopted after a restart;
//! a manager killed in the middle of a DELETE finishes it after its restart.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use rds_store::VmState;
use serde_json::{json, Value};

/// Generous bound for noticing a dead VM (the manager aims at well under 2 s).
const NOTICE_WITHIN: Duration = Duration::from_secs(10);

fn kill9(pid: i32) {
    // SAFETY: kill with a pid the test read from the VM's handle and a constant signal.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Polls the VM until it is no longer RUNNING; returns its view and how long that took.
fn wait_settled(s: &Server, id: &str) -> (Value, Duration) {
    let t0 = Instant::now();
    loop {
        let (st, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
        assert_eq!(st, 200, "{vm}");
        if vm["state"] != "RUNNING" {
            return (vm, t0.elapsed());
        }
        assert!(t0.elapsed() < NOTICE_WITHIN, "VM still RUNNING {NOTICE_WITHIN:?} after its process was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills VM `id`'s process from the host and checks what the manager makes of it.
fn kill_and_check_settled(s: &Server, id: &str, label: &str) {
    let pid = s.vm_pid(id);
    // What the runtime must release after the crash: the VM's own cgroup, processes naming its dir.
    let cgroup = cgroup_dir_of(pid).filter(|d| d.to_string_lossy().contains(id));
    let before = processes_in_vm_dir(&s.vm_dir(id));
    assert!(cgroup.is_some() || !before.is_empty(), "found nothing of VM {id} to watch being released");
    kill9(pid);
    let (vm, latency) = wait_settled(s, id);
    eprintln!(
        "{label}: VM process {pid} killed; manager showed {} after {latency:?}: {}",
        vm["state"], vm["stateReason"]
    );
    let state = vm["state"].as_str().unwrap();
    assert!(state == "STOPPED" || state == "ERROR", "{vm}");
    let reason = vm["stateReason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("pid {pid}")), "reason names the process: {vm}");

    let (st, err) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "true"})));
    assert_eq!((st, err["error"]["code"].as_str()), (409, Some("conflict")), "exec on a dead VM: {err}");
    // The runtime's stop path ran: no cgroup or process of the VM is left on the host.
    if let Some(dir) = cgroup {
        assert!(!dir.exists(), "cgroup {} of the dead VM left behind", dir.display());
    }
    let left = processes_in_vm_dir(&s.vm_dir(id));
    assert!(left.is_empty(), "processes of the dead VM left running (before: {before:?}): {left:?}");
}

/// The cgroup directory of `pid`: its memory group on cgroup v1, its unified group on v2.
fn cgroup_dir_of(pid: i32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let entry = |line: &str| {
        let mut parts = line.splitn(3, ':');
        let _ = parts.next();
        Some((parts.next()?.to_string(), parts.next()?.trim_start_matches('/').to_string()))
    };
    let entries: Vec<(String, String)> = text.lines().filter_map(entry).collect();
    if let Some((_, path)) = entries.iter().find(|(c, _)| c.split(',').any(|c| c == "memory")) {
        return Some(std::path::Path::new("/sys/fs/cgroup/memory").join(path));
    }
    entries.iter().find(|(c, _)| c.is_empty()).map(|(_, path)| std::path::Path::new("/sys/fs/cgroup").join(path))
}

/// Host processes whose command line names `dir` (a VM's launcher, QEMU, its vsock backend).
fn processes_in_vm_dir(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                out.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn vm_killed_from_the_host_is_settled_with_a_reason_and_starts_again() {
    common::must_run_here();
    let mut s = Server::start(&[]);
    let id = s.create_vm(256);
    s.exec(&id, "echo kept > /workspace/f");

    kill_and_check_settled(&s, &id, "own VM");

    let (st, body) = s.call("POST", &format!("/v1/vms/{id}/start"), None);
    assert_eq!(st, 204, "start after the crash: {body}");
    assert_eq!(s.exec(&id, "cat /workspace/f")["stdout"], "kept\n", "workspace survives");

    // A VM the manager re-adopted after its own restart is watched the same way.
    s.restart();
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "RUNNING", "adopted: {vm}");
    kill_and_check_settled(&s, &id, "adopted VM");
    let (st, body) = s.call("POST", &format!("/v1/vms/{id}/start"), None);
    assert_eq!(st, 204, "start after the crash: {body}");
    assert_eq!(s.exec(&id, "cat /workspace/f")["stdout"], "kept\n");
}

#[test]
fn qemu_vm_killed_from_the_host_is_settled_with_a_reason_and_starts_again() {
    let image = common::qemu_image_dir().unwrap_or_else(|reason| panic!("this test cannot run here: {reason}"));
    let image = image.to_string_lossy().to_string();
    let s = Server::start(&[("RDS_RUNTIME", "qemu"), ("RDS_IMAGE_DIR", &image)]);
    let id = s.create_vm(512);
    s.exec(&id, "echo kept > /workspace/f && sync");
    kill_and_check_settled(&s, &id, "qemu VM");
    let (st, body) = s.call("POST", &format!("/v1/vms/{id}/start"), None);
    assert_eq!(st, 204, "start after the crash: {body}");
    assert_eq!(s.exec(&id, "cat /workspace/f")["stdout"], "kept\n", "workspace survives");
}

#[test]
fn a_normal_stop_is_not_reported_as_a_crash() {
    common::must_run_here();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    let (st, body) = s.call("POST", &format!("/v1/vms/{id}/stop"), None);
    assert_eq!(st, 204, "{body}");
    // Give a (wrong) watcher time to act on the exit it saw.
    std::thread::sleep(Duration::from_secs(2));
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!((vm["state"].as_str(), &vm["stateReason"]), (Some("STOPPED"), &Value::Null), "{vm}");
    let (st, body) = s.call("POST", &format!("/v1/vms/{id}/start"), None);
    assert_eq!(st, 204, "{body}");
    std::thread::sleep(Duration::from_secs(2));
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "RUNNING", "the old watcher must not settle the restarted VM: {vm}");
}

#[test]
fn manager_killed_during_delete_finishes_it_after_restart() {
    common::must_run_here();
    let mut s = Server::start(&[]);
    let mut seen_at_kill = Vec::new();
    for delay_ms in [0u64, 3, 6, 10, 15, 20, 30, 60] {
        let id = s.create_vm(128);
        s.exec(&id, "echo data > /workspace/f");
        let url = format!("{}/v1/vms/{id}", s.url);
        let key = s.key.clone();
        let deleter = std::thread::spawn(move || {
            ureq::delete(&url).set("X-API-Key", &key).call().map(|r| r.status()).map_err(|e| e.to_string())
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        s.kill9();
        let answered = deleter.join().unwrap();
        let at_kill = s.stored_vm(&id).expect("the record stays").state;
        seen_at_kill.push((delay_ms, at_kill));
        s.restart();

        if matches!(at_kill, VmState::Running) {
            // The DELETE never reached the store: a client retries it after the error it got.
            assert!(answered.is_err(), "a DELETE that answered must have been recorded: {answered:?}");
            let (st, body) = s.call("DELETE", &format!("/v1/vms/{id}"), None);
            assert_eq!(st, 204, "retried delete: {body}");
        } else {
            assert!(matches!(at_kill, VmState::Deleting | VmState::Deleted), "{at_kill}");
        }
        let (st, body) = s.call("GET", &format!("/v1/vms/{id}"), None);
        assert_eq!(st, 404, "after delay {delay_ms} ms (state at kill {at_kill}) the VM came back: {body}");
        let (_, list) = s.call("GET", "/v1/vms", None);
        assert!(!list.as_array().unwrap().iter().any(|v| v["id"] == id.as_str()), "listed: {list}");
        assert!(!s.vm_dir(&id).exists(), "{} left behind", s.vm_dir(&id).display());
        assert_eq!(s.stored_vm(&id).unwrap().state, VmState::Deleted);
    }
    eprintln!("state recorded when the manager was killed, by delay: {seen_at_kill:?}");
}

#[test]
fn a_vm_being_deleted_shows_deleting_until_it_is_gone() {
    common::must_run_here();
    let mut s = Server::start(&[]);
    let id = s.create_vm(128);
    // Freeze the VM's process so the delete's graceful stop has to wait, then look from outside.
    let pid = s.vm_pid(&id);
    // SAFETY: kill with a pid read from the VM's handle and a constant signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let url = format!("{}/v1/vms/{id}", s.url);
    let key = s.key.clone();
    let deleter = std::thread::spawn(move || {
        ureq::delete(&url).set("X-API-Key", &key).call().map(|r| r.status()).map_err(|e| e.to_string())
    });
    let t0 = Instant::now();
    let vm = loop {
        let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
        if vm["state"] == "DELETING" {
            break vm;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never saw DELETING: {vm}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (_, list) = s.call("GET", "/v1/vms", None);
    assert!(list.as_array().unwrap().iter().any(|v| v["id"] == id.as_str() && v["state"] == "DELETING"), "{list}");
    eprintln!("seen while deleting: {vm}");
    let (st, err) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "true"})));
    assert_eq!((st, err["error"]["code"].as_str()), (409, Some("conflict")), "exec while deleting: {err}");
    let answered = deleter.join().unwrap();
    assert_eq!(answered.ok(), Some(204));
    let (st, _) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(st, 404);
    s.restart();
    let (st, _) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(st, 404, "a deleted VM never comes back");
}
