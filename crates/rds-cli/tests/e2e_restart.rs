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
