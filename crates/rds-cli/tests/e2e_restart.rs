//! End-to-end: the manager dies (`kill -9`) and restarts; its VMs keep running.

mod common;

use common::Server;
use serde_json::json;

#[test]
fn vm_survives_manager_kill_and_exec_id_runs_once_across_restart() {
    require_sandbox!();
    let mut s = Server::start(&[]);
    let id = s.create_vm(256);
    let body = json!({"cmd": "echo x >> /workspace/counter; wc -l < /workspace/counter", "execId": "once-1"});
    let (st, first) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(body.clone()));
    assert_eq!(st, 200, "{first}");

    s.kill9();
    s.restart();

    let (st, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!((st, vm["state"].as_str()), (200, Some("RUNNING")), "{vm}");
    // The client retries the same execId after the crash: the command must not run again.
    let (st, retry) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(body));
    assert_eq!(st, 200, "{retry}");
    assert_eq!(retry["stdout"], first["stdout"], "retry should return the recorded result");
    assert_eq!(s.exec(&id, "wc -l < /workspace/counter")["stdout"], "1\n", "command ran more than once");
}

/// A manager killed while a snapshot holds the workspace frozen (forged here with `fsfreeze`, as
/// the snapshot leaves it between freeze and thaw) thaws it when it restarts: writes work again.
#[test]
fn a_workspace_a_crashed_snapshot_left_frozen_is_thawed_at_restart() {
    require_sandbox!();
    let mut s = Server::start(&[]);
    let id = s.create_vm(128);
    let workspace = format!("/proc/{}/root/workspace", s.vm_pid(&id));
    let frozen = std::process::Command::new("fsfreeze").args(["--freeze", &workspace]).status().expect("run fsfreeze");
    assert!(frozen.success(), "fsfreeze --freeze {workspace}");
    s.kill9();
    s.restart();
    let (st, r) = s.call(
        "POST",
        &format!("/v1/vms/{id}/exec"),
        Some(json!({"cmd": "echo x > /workspace/f && cat /workspace/f", "timeoutMs": 10000})),
    );
    // Thaw whatever happens, so a failure does not leave a frozen file system behind.
    let _ = std::process::Command::new("fsfreeze").args(["--unfreeze", &workspace]).status();
    assert_eq!((st, &r["stdout"], &r["timedOut"]), (200, &json!("x\n"), &json!(false)), "{r}");
}
