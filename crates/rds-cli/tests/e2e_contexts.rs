//! End-to-end: code contexts through the real `rds serve` on the sandbox runtime — state kept
//! across runs, the API's errors, a provider's secrets in its contexts but never in the output —
//! and the warm interpreters behind stateless runs following `WARM_INTERPRETERS`.

mod common;

use common::Server;
use serde_json::{json, Value};

const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef-ctx-test";

fn run(s: &Server, vm: &str, route: &str, body: Value) -> Value {
    let (st, out) = s.call("POST", &format!("/v1/vms/{vm}/{route}"), Some(body));
    assert_eq!(st, 200, "{out}");
    out
}

#[test]
fn a_context_keeps_state_across_runs_and_goes_away_when_deleted() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    let (st, ctx) = s.call("POST", &format!("/v1/vms/{vm}/contexts"), Some(json!({"language": "python"})));
    assert_eq!(st, 201, "{ctx}");
    let cid = ctx["contextId"].as_str().unwrap().to_string();
    assert_eq!(ctx["language"], "python");

    run(
        &s,
        &vm,
        "run-python",
        json!({"contextId": cid, "code": "import json\nseen = []\ndef note(x):\n    seen.append(x)\n    return len(seen)"}),
    );
    run(&s, &vm, "run-python", json!({"contextId": cid, "code": "note('a')"}));
    let third = run(&s, &vm, "run-python", json!({"contextId": cid, "code": "note('b'); json.dumps(seen)"}));
    assert_eq!(third["result"], "[\"a\", \"b\"]", "{third}");
    // A stateless run in the same VM sees none of it.
    let fresh = run(&s, &vm, "run-python", json!({"code": "result = 'seen' in globals()"}));
    assert_eq!(fresh["result"], false, "{fresh}");

    let (st, got) = s.call("GET", &format!("/v1/vms/{vm}/contexts/{cid}"), None);
    assert_eq!((st, got["runs"].as_u64()), (200, Some(3)), "{got}");
    let (st, listed) = s.call("GET", &format!("/v1/vms/{vm}/contexts"), None);
    assert_eq!((st, listed.as_array().map(Vec::len)), (200, Some(1)), "{listed}");

    let (st, restarted) = s.call("POST", &format!("/v1/vms/{vm}/contexts/{cid}/restart"), None);
    assert_eq!((st, restarted["restarts"].as_u64()), (200, Some(1)), "{restarted}");
    let after = run(&s, &vm, "run-python", json!({"contextId": cid, "code": "'seen' in globals()"}));
    assert_eq!(after["result"], false, "{after}");

    let (st, _) = s.call("DELETE", &format!("/v1/vms/{vm}/contexts/{cid}"), None);
    assert_eq!(st, 204);
    for (method, path) in
        [("GET", format!("/v1/vms/{vm}/contexts/{cid}")), ("DELETE", format!("/v1/vms/{vm}/contexts/{cid}"))]
    {
        let (st, body) = s.call(method, &path, None);
        assert_eq!(st, 404, "{method} {path}: {body}");
    }
    let (st, body) = s.call("POST", &format!("/v1/vms/{vm}/run-python"), Some(json!({"contextId": cid, "code": "1"})));
    assert_eq!(st, 404, "{body}");
}

#[test]
fn bad_context_requests_name_the_field() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    let path = format!("/v1/vms/{vm}/contexts");
    for (body, field) in [
        (json!({"language": "cobol"}), "language"),
        (json!({}), "language"),
        (json!({"language": "python", "cwd": "../../etc"}), "cwd"),
        (json!({"language": "python", "idleTimeoutMs": 0}), "idleTimeoutMs"),
        (json!({"language": "python", "idleTimeoutMs": 999}), "at least 1000"),
        (json!({"language": "python", "bogus": 1}), "bogus"),
    ] {
        let (st, out) = s.call("POST", &path, Some(body.clone()));
        assert_eq!(st, 400, "{body}: {out}");
        assert!(out.to_string().contains(field), "{body}: {out}");
    }
    let (st, ctx) = s.call("POST", &path, Some(json!({"language": "python"})));
    assert_eq!(st, 201, "{ctx}");
    let cid = ctx["contextId"].as_str().unwrap();
    let (st, out) = s.call("POST", &format!("/v1/vms/{vm}/run-ts"), Some(json!({"contextId": cid, "code": "1"})));
    assert_eq!(st, 400, "{out}");
    assert!(out.to_string().contains("contextId"), "{out}");
    let (st, out) = s.call("GET", &format!("/v1/vms/{vm}/contexts/..%2F..%2Fetc"), None);
    assert_eq!(st, 404, "{out}");
    let (st, out) = s.call("GET", "/v1/vms/no-such-vm/contexts", None);
    assert_eq!(st, 404, "{out}");
}

#[test]
fn a_providers_context_has_its_secrets_and_never_prints_them() {
    require_sandbox!();
    let s = Server::start(&[("VM_SECRET_KEY", SECRET_KEY)]);
    let (st, vm) =
        s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "secretEnv": ["CTX_TOKEN=ctx-s3cr3t-value"]})));
    assert_eq!(st, 201, "{vm}");
    let vm = vm["id"].as_str().unwrap().to_string();
    let (st, ctx) = s.call("POST", &format!("/v1/vms/{vm}/contexts"), Some(json!({"language": "python"})));
    assert_eq!(st, 201, "{ctx}");
    let cid = ctx["contextId"].as_str().unwrap();
    let out = run(
        &s,
        &vm,
        "run-python",
        json!({"contextId": cid, "code": "import os\nprint(os.environ['CTX_TOKEN'])\nos.environ['CTX_TOKEN'] == 'ctx-s3cr3t-value'"}),
    );
    assert_eq!(out["result"], true, "{out}");
    assert!(!out.to_string().contains("ctx-s3cr3t-value"), "{out}");
}

/// Python interpreters waiting in `vm` for a run (the agent's warm pool), as its user sees them.
fn waiting_pythons(s: &Server, vm: &str) -> u64 {
    // The pattern does not match its own command line (`[.]`).
    let out = s.exec(vm, "grep -l 'wrapper[.]py' /proc/[0-9]*/cmdline 2>/dev/null | wc -l");
    out["stdout"].as_str().unwrap().trim().parse().unwrap()
}

#[test]
fn warm_interpreters_follow_the_managers_setting() {
    require_sandbox!();
    let off = Server::start(&[("WARM_INTERPRETERS", "0")]);
    let vm = off.create_vm(256);
    for _ in 0..2 {
        assert_eq!(run(&off, &vm, "run-python", json!({"code": "result.set(7)"}))["result"], 7);
    }
    assert_eq!(waiting_pythons(&off, &vm), 0, "WARM_INTERPRETERS=0 keeps no interpreter waiting");
    drop(off);

    let on = Server::start(&[("WARM_INTERPRETERS", "2")]);
    let vm = on.create_vm(256);
    assert_eq!(run(&on, &vm, "run-python", json!({"code": "result.set(7)"}))["result"], 7);
    // The first run starts the pool in the background: bounded wait for both to be up.
    let mut waiting = 0;
    for _ in 0..100 {
        waiting = waiting_pythons(&on, &vm);
        if waiting == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(waiting, 2, "WARM_INTERPRETERS=2 keeps two interpreters waiting");
}

/// A VM whose /tmp its own code filled cannot start an interpreter: 409 with the cause (the
/// caller's to free), not a 502 from the agent; freeing it makes the next try work.
#[test]
fn a_full_tmp_answers_409_and_freeing_it_lets_a_context_start() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(128);
    s.exec(&vm, "cat /dev/zero > /tmp/fill 2>/dev/null; true");
    let (st, body) = s.call("POST", &format!("/v1/vms/{vm}/contexts"), Some(json!({"language": "typescript"})));
    assert_eq!(st, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("No space left"), "{body}");
    s.exec(&vm, "rm /tmp/fill");
    let (st, body) = s.call("POST", &format!("/v1/vms/{vm}/contexts"), Some(json!({"language": "typescript"})));
    assert_eq!(st, 201, "{body}");
}
