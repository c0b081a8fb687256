//! Code contexts through the real agent binary: state kept across runs, timeouts, independence,
//! interpreters killed from inside, structured errors.

mod common;

use common::{has_program, Agent};
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// Creates a context of `language`; its id.
async fn context(agent: &Agent, request: Value) -> String {
    let reply = agent.post_json("/contexts/create", &request).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["contextId"].as_str().expect("a context id").to_string()
}

/// Runs `code` in context `id` through `route`.
async fn run_in(agent: &Agent, route: &str, id: &str, code: &str) -> Value {
    agent.run(route, json!({"code": code, "contextId": id})).await
}

/// An agent, when it and `program` can run here.
async fn agent_for(program: &str) -> Option<Agent> {
    let agent = Agent::start().await?;
    has_program(program).then_some(agent)
}

#[tokio::test]
async fn a_python_context_keeps_variables_imports_and_functions() {
    let Some(agent) = agent_for("python3").await else { return };
    let id = context(&agent, json!({"language": "python"})).await;
    let first =
        run_in(&agent, "/run-python", &id, "import math\ncount = 41\ndef grow(n):\n    return count + n\n").await;
    assert_eq!(first["exitCode"], 0, "{first}");
    assert!(first.get("result").is_none(), "{first}");
    let second = run_in(&agent, "/run-python", &id, "print('second run')\ncount += 1\ngrow(0)").await;
    assert_eq!(second["result"], 42, "{second}");
    assert_eq!(second["stdout"], "second run\n", "{second}");
    let third = run_in(&agent, "/run-python", &id, "result.set({'sqrt': math.sqrt(16), 'n': grow(1)})").await;
    assert_eq!(third["result"], json!({"sqrt": 4.0, "n": 43}), "{third}");
    // Output is per run.
    assert_eq!(third["stdout"], "", "{third}");
    let info = agent.request(Method::GET, "/contexts", &[], Vec::new()).await.json();
    let listed = info.as_array().unwrap().iter().find(|c| c["contextId"] == id).cloned().expect("listed");
    assert_eq!(listed["runs"], 3, "{listed}");
    assert_eq!(listed["language"], "python", "{listed}");
}

#[tokio::test]
async fn a_typescript_context_keeps_state_and_strips_types() {
    let Some(agent) = agent_for("deno").await else { return };
    std::fs::write(agent.workspace.join("lib.ts"), "export const base: number = 40;\nexport default 'lib';\n").unwrap();
    let id = context(&agent, json!({"language": "typescript"})).await;
    let first = run_in(
        &agent,
        "/run-ts",
        &id,
        "import name, { base } from './lib.ts';\ninterface Box { n: number }\nlet box: Box = { n: base };\n\
         function grow(by: number): number { return box.n + by; }",
    )
    .await;
    assert_eq!(first["exitCode"], 0, "{first}");
    let second =
        run_in(&agent, "/run-ts", &id, "box.n += 1;\nconsole.log('second');\nawait Promise.resolve(grow(1))").await;
    assert_eq!(second["result"], 42, "{second}");
    assert_eq!(second["stdout"], "second\n", "{second}");
    // A `let` may be declared again, as in a console.
    let third = run_in(&agent, "/run-ts", &id, "let again = 1;\nresult.set([name, grow(2)])").await;
    assert_eq!(third["result"], json!(["lib", 43]), "{third}");
    let fourth = run_in(&agent, "/run-ts", &id, "let again = 2; again").await;
    assert_eq!(fourth["result"], 2, "{fourth}");
}

#[tokio::test]
async fn a_javascript_context_runs_under_node() {
    let Some(agent) = agent_for("node").await else { return };
    let id = context(&agent, json!({"language": "javascript"})).await;
    run_in(&agent, "/run-js", &id, "const path = await import('node:path'); let hits = 1;").await;
    let out = run_in(&agent, "/run-js", &id, "hits += 1; [path.join('a', 'b'), hits, typeof process]").await;
    assert_eq!(out["result"], json!(["a/b", 2, "object"]), "{out}");
}

#[tokio::test]
async fn errors_are_structured_with_the_users_line_numbers() {
    let Some(agent) = agent_for("python3").await else { return };
    let id = context(&agent, json!({"language": "python"})).await;
    let out = run_in(&agent, "/run-python", &id, "x = 1\n\ndef bad():\n    raise ValueError('nope')\n\nbad()\n").await;
    assert_eq!(out["exitCode"], 1, "{out}");
    assert_eq!(out["error"]["name"], "ValueError", "{out}");
    assert_eq!(out["error"]["message"], "nope", "{out}");
    let stack = out["error"]["stack"].as_str().unwrap();
    assert!(stack.contains("line 6") && stack.contains("line 4"), "{stack}");
    assert!(!stack.contains("kernel.py"), "kernel frames leak: {stack}");
    // The failure left the context usable, with what ran before the exception.
    assert_eq!(run_in(&agent, "/run-python", &id, "x").await["result"], 1);

    if !has_program("deno") {
        return;
    }
    let ts = context(&agent, json!({"language": "ts"})).await;
    let out = run_in(
        &agent,
        "/run-ts",
        &ts,
        "const a: number = 1;\nfunction f(): never {\n  throw new TypeError('bad');\n}\nf();",
    )
    .await;
    assert_eq!(out["error"]["name"], "TypeError", "{out}");
    let stack = out["error"]["stack"].as_str().unwrap();
    assert!(stack.contains(":3:9"), "{stack}");
    assert!(!stack.contains("kernel.mjs"), "kernel frames leak: {stack}");
}

#[tokio::test]
async fn a_python_timeout_interrupts_the_run_and_keeps_the_context() {
    let Some(agent) = agent_for("python3").await else { return };
    let id = context(&agent, json!({"language": "python"})).await;
    run_in(&agent, "/run-python", &id, "kept = 'yes'").await;
    let out = agent
        .run("/run-python", json!({"contextId": id, "code": "import time\ntime.sleep(100)", "timeoutMs": 300}))
        .await;
    assert_eq!(out["timedOut"], true, "{out}");
    assert!(out.get("contextRestarted").is_none(), "{out}");
    assert_eq!(out["error"]["name"], "KeyboardInterrupt", "{out}");
    assert_eq!(run_in(&agent, "/run-python", &id, "kept").await["result"], "yes");
}

#[tokio::test]
async fn a_typescript_timeout_restarts_the_context_and_says_so() {
    let Some(agent) = agent_for("deno").await else { return };
    let id = context(&agent, json!({"language": "typescript"})).await;
    run_in(&agent, "/run-ts", &id, "var kept = 'yes';").await;
    let out = agent.run("/run-ts", json!({"contextId": id, "code": "while (true) {}", "timeoutMs": 300})).await;
    assert_eq!(out["timedOut"], true, "{out}");
    assert_eq!(out["contextRestarted"], true, "{out}");
    assert_eq!(out["error"]["name"], "TimeoutError", "{out}");
    let next = run_in(&agent, "/run-ts", &id, "typeof kept").await;
    assert_eq!(next["result"], "undefined", "{next}");
    assert_eq!(next["exitCode"], 0, "{next}");
}

#[tokio::test]
async fn an_interpreter_killed_from_inside_is_restarted() {
    let Some(agent) = agent_for("python3").await else { return };
    let id = context(&agent, json!({"language": "python"})).await;
    run_in(&agent, "/run-python", &id, "state = 1").await;
    let out = run_in(&agent, "/run-python", &id, "import os\nprint('bye', flush=True)\nos._exit(7)").await;
    assert_eq!(out["exitCode"], 7, "{out}");
    assert_eq!(out["contextRestarted"], true, "{out}");
    assert_eq!(out["stdout"], "bye\n", "{out}");
    let next = run_in(&agent, "/run-python", &id, "'state' in globals()").await;
    assert_eq!(next["result"], false, "{next}");
    let listed = agent.request(Method::GET, "/contexts", &[], Vec::new()).await.json();
    assert_eq!(listed[0]["restarts"], 1, "{listed}");
}

#[tokio::test]
async fn two_contexts_are_independent_and_deleted_ones_are_gone() {
    let Some(agent) = agent_for("python3").await else { return };
    let a = context(&agent, json!({"language": "python", "env": {"WHO": "a"}})).await;
    let b = context(&agent, json!({"language": "python", "env": {"WHO": "b"}})).await;
    run_in(&agent, "/run-python", &a, "v = 'from a'").await;
    let seen = run_in(&agent, "/run-python", &b, "import os\n[globals().get('v'), os.environ['WHO']]").await;
    assert_eq!(seen["result"], json!([null, "b"]), "{seen}");

    let deleted = agent.post_raw(&format!("/contexts/delete?id={a}"), Vec::new()).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let gone = agent.post_json("/run-python", &json!({"contextId": a, "code": "v"})).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&gone.body));
    let again = agent.post_raw(&format!("/contexts/delete?id={a}"), Vec::new()).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_a_context_cannot_serve_are_refused_by_field() {
    let Some(agent) = agent_for("python3").await else { return };
    let id = context(&agent, json!({"language": "python"})).await;
    for (route, body, field) in [
        ("/run-ts", json!({"contextId": id, "code": "1"}), "contextId"),
        ("/run-python", json!({"contextId": id, "path": "x.py"}), "path"),
        ("/run-python", json!({"contextId": id, "code": "1", "env": {"A": "b"}}), "env"),
    ] {
        let reply = agent.post_json(route, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            String::from_utf8_lossy(&reply.body).contains(field),
            "{body}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let reply = agent.post_json("/contexts/create", &json!({"language": "cobol"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = agent.post_json("/contexts/create", &json!({"language": "python", "cwd": "../etc"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_restart_drops_the_state() {
    let Some(agent) = agent_for("python3").await else { return };
    let id = context(&agent, json!({"language": "python"})).await;
    run_in(&agent, "/run-python", &id, "v = 1").await;
    let reply = agent.post_raw(&format!("/contexts/restart?id={id}"), Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["restarts"], 1);
    assert_eq!(run_in(&agent, "/run-python", &id, "'v' in globals()").await["result"], false);
}
