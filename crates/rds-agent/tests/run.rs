//! `/run-ts`, `/run-js` and `/run-python` through the real agent binary.

mod common;

use common::{has_program, Agent};
use http::StatusCode;
use serde_json::{json, Value};

/// A value with nesting, null and non-ASCII text that must survive the round trip intact.
fn rich() -> Value {
    json!({"a": [1, {"b": null}], "s": "é"})
}

struct Lang {
    route: &'static str,
    program: &'static str,
    /// Source that sets the result to the JSON literal given.
    set: fn(&str) -> String,
    /// Source that throws a TypeError/ValueError with message "boom".
    throw: &'static str,
    error_name: &'static str,
}

const TS: Lang = Lang {
    route: "/run-ts",
    program: "deno",
    set: |v| format!("const x: unknown = {v};\nresult.set(x);"),
    throw: "throw new TypeError('boom');",
    error_name: "TypeError",
};
const JS: Lang = Lang {
    route: "/run-js",
    program: "node",
    set: |v| format!("result.set({v});"),
    throw: "throw new TypeError('boom');",
    error_name: "TypeError",
};
const PY: Lang = Lang {
    route: "/run-python",
    program: "python3",
    set: |v| format!("import json\nresult = json.loads({:?})", v),
    throw: "raise ValueError('boom')",
    error_name: "ValueError",
};

async fn results_survive_intact(lang: &Lang) {
    let Some(agent) = Agent::start().await else { return };
    if !has_program(lang.program) {
        return;
    }
    for value in [rich(), Value::Null, json!(42.5), json!("text ✓"), json!([1, "two", [3], {"four": 4}])] {
        let code = (lang.set)(&value.to_string());
        let out = agent.run(lang.route, json!({"code": code})).await;
        assert_eq!(out["exitCode"], 0, "{out}");
        assert_eq!(out.get("result"), Some(&value), "{} lost {value}: {out}", lang.route);
        assert!(out.get("error").is_none(), "{out}");
    }
    let out = agent.run(lang.route, json!({"code": lang.throw})).await;
    assert_ne!(out["exitCode"], 0, "{out}");
    assert_eq!(out["error"]["name"], lang.error_name, "{out}");
    assert_eq!(out["error"]["message"], "boom", "{out}");
    assert!(out["error"]["stack"].is_string(), "{out}");
    assert!(out.get("result").is_none(), "{out}");
    assert!(agent.workspace_entries().is_empty(), "files left behind: {:?}", agent.workspace_entries());
}

#[tokio::test]
async fn run_ts_returns_results_and_errors_intact() {
    results_survive_intact(&TS).await;
}

#[tokio::test]
async fn run_js_returns_results_and_errors_intact() {
    results_survive_intact(&JS).await;
}

#[tokio::test]
async fn run_python_returns_results_and_errors_intact() {
    results_survive_intact(&PY).await;
}

#[tokio::test]
async fn default_export_is_the_result_for_ts_and_js() {
    let Some(agent) = Agent::start().await else { return };
    for lang in [&TS, &JS] {
        if !has_program(lang.program) {
            continue;
        }
        let out = agent.run(lang.route, json!({"code": "export default Promise.resolve({ok: [1, 2]});"})).await;
        assert_eq!(out["result"], json!({"ok": [1, 2]}), "{out}");
        let out = agent.run(lang.route, json!({"code": "export default function main() { return 1; }"})).await;
        assert_eq!(out["exitCode"], 0, "{out}");
        assert!(out.get("result").is_none(), "a default function is not called: {out}");
    }
}

#[tokio::test]
async fn run_js_ignores_a_user_package_json_module_type() {
    let Some(agent) = Agent::start().await else { return };
    if !has_program("node") {
        return;
    }
    std::fs::write(agent.workspace.join("package.json"), r#"{"type":"module"}"#).unwrap();
    std::fs::write(agent.workspace.join("lib.js"), "export const x = 7;\nresult.set(x * 6);\n").unwrap();
    let out = agent.run("/run-js", json!({"path": "lib.js"})).await;
    assert_eq!(out["result"], 42, "{out}");
    let out = agent.run("/run-js", json!({"code": "result.set(process.argv.slice(2))", "args": ["a", "b"]})).await;
    assert_eq!(out["result"], json!(["a", "b"]), "{out}");
}

#[tokio::test]
async fn run_python_runs_workspace_files_with_args_as_the_sandbox_user() {
    let Some(agent) = Agent::start().await else { return };
    if !has_program("python3") {
        return;
    }
    std::fs::create_dir(agent.workspace.join("app")).unwrap();
    std::fs::write(
        agent.workspace.join("app/main.py"),
        "import os, sys\nresult = {'uid': os.getuid(), 'args': sys.argv[1:], 'cwd': os.getcwd()}\nprint('hi')\n",
    )
    .unwrap();
    let out = agent.run("/run-python", json!({"path": "/workspace/app/main.py", "args": ["x"]})).await;
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["result"]["uid"], 1000);
    assert_eq!(out["result"]["args"], json!(["x"]));
    assert_eq!(out["result"]["cwd"], agent.workspace.join("app").display().to_string());
}

#[tokio::test]
async fn run_ts_has_no_network_or_extra_permissions_by_default() {
    let Some(agent) = Agent::start().await else { return };
    if !has_program("deno") {
        return;
    }
    let out = agent.run("/run-ts", json!({"code": "Deno.readTextFileSync('/etc/hostname');"})).await;
    assert_ne!(out["exitCode"], 0, "{out}");
    assert_eq!(out["error"]["name"], "NotCapable", "{out}");
    let reply = agent.post_json("/run-ts", &json!({"code": "1", "denoFlags": ["--allow-all"]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "caller permission flags are refused");
    // A harmless flag reaches Deno: a seeded Math.random repeats.
    let seeded = json!({"code": "result.set(Math.random())", "denoFlags": ["--seed=42", "--no-check"]});
    let (a, b) = (agent.run("/run-ts", seeded.clone()).await, agent.run("/run-ts", seeded).await);
    assert_eq!(a["exitCode"], 0, "{a}");
    assert_eq!(a["result"], b["result"], "--seed was passed to deno");
}

#[tokio::test]
async fn run_js_takes_harmless_node_flags_only() {
    let Some(agent) = Agent::start().await else { return };
    if !has_program("node") {
        return;
    }
    let code = "process.emitWarning('careful'); result.set(1)";
    let plain = agent.run("/run-js", json!({"code": code})).await;
    assert!(plain["stderr"].as_str().unwrap().contains("careful"), "{plain}");
    let quiet = agent.run("/run-js", json!({"code": code, "nodeFlags": ["--no-warnings"]})).await;
    assert_eq!(quiet["exitCode"], 0, "{quiet}");
    assert!(!quiet["stderr"].as_str().unwrap().contains("careful"), "--no-warnings was passed to node: {quiet}");
    let reply = agent.post_json("/run-js", &json!({"code": "1", "nodeFlags": ["--require=/tmp/x.js"]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "flags that load other code are refused");
}

#[tokio::test]
async fn bad_run_requests_are_rejected() {
    let Some(agent) = Agent::start().await else { return };
    let reply = agent.post_json("/run-js", &json!({"args": []})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("code"));
    let reply = agent.post_json("/run-python", &json!({"path": "/etc/passwd"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("path"));
}

#[tokio::test]
async fn run_timeout_is_reported() {
    let Some(agent) = Agent::start().await else { return };
    if !has_program("python3") {
        return;
    }
    let out = agent.run("/run-python", json!({"code": "import time\ntime.sleep(100)", "timeoutMs": 300})).await;
    assert_eq!(out["timedOut"], true, "{out}");
    assert_eq!(out["exitCode"], Value::Null);
    assert!(agent.workspace_entries().is_empty());
}

#[tokio::test]
async fn errors_are_structured_with_the_users_line_numbers() {
    let Some(agent) = Agent::start().await else { return };
    let cases = [
        (&TS, "const a: number = 1;\n\nthrow new RangeError(`bad ${a}`);\n", "RangeError", "bad 1", "snippet.ts:3:"),
        (&JS, "const a = 1;\n\nthrow new RangeError(`bad ${a}`);\n", "RangeError", "bad 1", "snippet.mjs:3:"),
        (&PY, "a = 1\n\nraise KeyError(f'bad {a}')\n", "KeyError", "'bad 1'", "line 3"),
    ];
    for (lang, code, name, message, line) in cases {
        if !has_program(lang.program) {
            continue;
        }
        // Twice: the first run of a language is cold, the second warm.
        for _ in 0..2 {
            let out = agent.run(lang.route, json!({"code": code})).await;
            assert_eq!(out["exitCode"], 1, "{out}");
            assert_eq!(out["error"]["name"], name, "{out}");
            assert_eq!(out["error"]["message"], message, "{out}");
            let stack = out["error"]["stack"].as_str().unwrap_or_default();
            assert!(stack.contains(line), "{} stack without `{line}`: {out}", lang.route);
            assert!(!stack.contains("wrapper."), "the wrapper's frames are not the user's: {out}");
        }
    }
}

#[tokio::test]
async fn results_are_converted_to_json_or_reported_as_not_serialisable() {
    let Some(agent) = Agent::start().await else { return };
    if has_program("python3") {
        let out = agent.run("/run-python", json!({"code": "result = {1: 'a', 'b': [None, True, 1.5, 'é']}"})).await;
        assert_eq!(out["result"], json!({"1": "a", "b": [null, true, 1.5, "é"]}), "{out}");
        for bad in ["float('nan')", "object()", "{'s': {1, 2}}"] {
            let out = agent.run("/run-python", json!({"code": format!("result = {bad}")})).await;
            assert_eq!(out["error"]["name"], "TypeError", "{bad}: {out}");
            assert!(out["error"]["message"].as_str().unwrap().contains("not JSON-serialisable"), "{bad}: {out}");
            assert!(out.get("result").is_none(), "{bad}: {out}");
        }
    }
    if has_program("deno") {
        let code = "const a: Record<string, unknown> = {x: 1n}; a.self = a; result.set(a);";
        let out = agent.run("/run-ts", json!({"code": code})).await;
        assert_eq!(out["result"], json!({"x": "1", "self": "[Circular]"}), "{out}");
    }
}
