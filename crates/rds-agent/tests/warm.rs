//! Pre-started (warm) interpreters for `/run-ts` and `/run-python` through the real agent binary:
//! a run handed to one keeps the semantics of a cold run.

mod common;

use std::time::Duration;

use common::{has_program, Agent};
use serde_json::{json, Value};

/// The wrapper file a language's interpreters run.
const TS: (&str, &str, &str) = ("/run-ts", "deno", "wrapper.mjs");
const PY: (&str, &str, &str) = ("/run-python", "python3", "wrapper.py");

/// Pids of the agent's children running `wrapper`: between runs, the interpreters waiting for one.
fn interpreters(agent: &Agent, wrapper: &str) -> Vec<i32> {
    let agent_pid = agent.pid() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| rds_host::ProcStat::read(*pid).is_some_and(|s| s.ppid == agent_pid && s.is_live()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("/{wrapper}\0")))
        })
        .collect()
}

/// Waits (up to 20 s) until an interpreter for `wrapper` waits; returns the waiting pids.
async fn waiting(agent: &Agent, wrapper: &str) -> Vec<i32> {
    for _ in 0..1000 {
        let pids = interpreters(agent, wrapper);
        if !pids.is_empty() {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pre-started interpreter for {wrapper} appeared");
}

/// Starts an agent and makes its pool for `lang` start (the first run of a language is cold).
async fn agent_with_pool(lang: (&str, &str, &str)) -> Option<Agent> {
    let agent = Agent::start().await?;
    if !has_program(lang.1) {
        return None;
    }
    let first = agent.run(lang.0, json!({"code": "result = 0\n"})).await;
    assert_eq!(first["exitCode"], 0, "{first}");
    Some(agent)
}

/// Runs `request` on a waiting interpreter (asserting that one served it); returns the result.
async fn warm_run(agent: &Agent, lang: (&str, &str, &str), request: Value, pid_expr: &str) -> Value {
    let before = waiting(agent, lang.2).await;
    let out = agent.run(lang.0, request).await;
    let served_by = out["result"][pid_expr].as_i64().unwrap_or_else(|| panic!("no pid in the result: {out}"));
    assert!(before.contains(&(served_by as i32)), "run not served by a waiting interpreter {before:?}: {out}");
    out
}

#[tokio::test]
async fn a_warm_ts_run_sees_nothing_of_earlier_runs() {
    let Some(agent) = agent_with_pool(TS).await else { return };
    let dirty =
        "globalThis.leak = 1; Deno.env.set('LEAK', '1'); result.set({pid: Deno.pid, secret: Deno.env.get('SECRET')});";
    let out = warm_run(&agent, TS, json!({"code": dirty, "env": {"SECRET": "s1"}}), "pid").await;
    assert_eq!(out["result"]["secret"], "s1", "{out}");
    let check = "let listed = 'yes';\n\
                 try { Deno.readDirSync(new URL('..', import.meta.url)).next(); } catch (e) { listed = e.name; }\n\
                 result.set({pid: Deno.pid, leak: typeof globalThis.leak, env: Deno.env.get('LEAK') ?? null,\n\
                   secret: Deno.env.get('SECRET') ?? null, listed});";
    let out = warm_run(&agent, TS, json!({"code": check}), "pid").await;
    assert_eq!(out["result"]["leak"], "undefined", "{out}");
    assert_eq!(out["result"]["env"], Value::Null, "{out}");
    assert_eq!(out["result"]["secret"], Value::Null, "{out}");
    // Other runs' directories (a waiting interpreter's among them) cannot be listed.
    assert_eq!(out["result"]["listed"], "PermissionDenied", "{out}");
}

#[tokio::test]
async fn a_warm_python_run_sees_nothing_of_earlier_runs() {
    let Some(agent) = agent_with_pool(PY).await else { return };
    let dirty = "import builtins, os\nbuiltins.leak = 1\nos.environ['LEAK'] = '1'\n\
                 open('/tmp/rds-warm-test-' + str(os.getpid()), 'w').close()\n\
                 result = {'pid': os.getpid(), 'secret': os.environ.get('SECRET')}\n";
    let out = warm_run(&agent, PY, json!({"code": dirty, "env": {"SECRET": "s1"}}), "pid").await;
    assert_eq!(out["result"]["secret"], "s1", "{out}");
    let earlier = out["result"]["pid"].as_i64().unwrap();
    let check = "import builtins, os\n\
                 try:\n    os.listdir(os.path.dirname(os.path.dirname(__file__)))\n    listed = 'yes'\n\
                 except PermissionError:\n    listed = 'denied'\n\
                 result = {'pid': os.getpid(), 'leak': hasattr(builtins, 'leak'), 'env': os.environ.get('LEAK'),\n\
                           'secret': os.environ.get('SECRET'), 'listed': listed, 'name': __name__}\n";
    let out = warm_run(&agent, PY, json!({"code": check}), "pid").await;
    assert_eq!(out["result"]["leak"], false, "{out}");
    assert_eq!(out["result"]["env"], Value::Null, "{out}");
    assert_eq!(out["result"]["secret"], Value::Null, "{out}");
    assert_eq!(out["result"]["listed"], "denied", "{out}");
    assert_eq!(out["result"]["name"], "__main__", "{out}");
    let _ = std::fs::remove_file(format!("/tmp/rds-warm-test-{earlier}"));
}

#[tokio::test]
async fn a_warm_run_gets_its_env_cwd_args_and_the_sandbox_uid() {
    let Some(agent) = agent_with_pool(PY).await else { return };
    std::fs::create_dir(agent.workspace.join("app")).unwrap();
    std::fs::write(
        agent.workspace.join("app/main.py"),
        "import os, sys\nresult = {'pid': os.getpid(), 'uid': os.getuid(), 'args': sys.argv[1:], 'cwd': os.getcwd(),\n\
         'env': os.environ.get('GREETING'), 'home': os.environ.get('HOME'), 'stdin': sys.stdin.read()}\nprint('hi')\n",
    )
    .unwrap();
    let request = json!({"path": "app/main.py", "args": ["x", "y z"], "env": {"GREETING": "hello"}});
    let out = warm_run(&agent, PY, request, "pid").await;
    assert_eq!(out["stdout"], "hi\n", "{out}");
    assert_eq!(out["result"]["uid"], 1000, "{out}");
    assert_eq!(out["result"]["args"], json!(["x", "y z"]), "{out}");
    assert_eq!(out["result"]["cwd"], agent.workspace.join("app").display().to_string(), "{out}");
    assert_eq!(out["result"]["env"], "hello", "{out}");
    assert_eq!(out["result"]["home"], agent.workspace.display().to_string(), "{out}");
    assert_eq!(out["result"]["stdin"], "", "stdin reads as empty: {out}");

    if !has_program("deno") {
        return;
    }
    agent.run("/run-ts", json!({"code": "1"})).await;
    let code = "result.set({pid: Deno.pid, args: Deno.args, cwd: Deno.cwd(), env: Deno.env.get('GREETING')})";
    let out = warm_run(&agent, TS, json!({"code": code, "args": ["a"], "env": {"GREETING": "hi"}}), "pid").await;
    assert_eq!(out["result"]["args"], json!(["a"]), "{out}");
    assert_eq!(out["result"]["cwd"], agent.workspace.display().to_string(), "{out}");
    assert_eq!(out["result"]["env"], "hi", "{out}");
}

#[tokio::test]
async fn exiting_or_killed_warm_interpreters_do_not_break_the_next_run() {
    for lang in [TS, PY] {
        let Some(agent) = agent_with_pool(lang).await else { continue };
        let (exit, next) = if lang == TS {
            ("result.set(Deno.pid); Deno.exit(3);", "result.set({pid: Deno.pid, ok: 1})")
        } else {
            ("import os\nresult = os.getpid()\nos._exit(3)\n", "import os\nresult = {'pid': os.getpid(), 'ok': 1}\n")
        };
        let before = waiting(&agent, lang.2).await;
        let out = agent.run(lang.0, json!({"code": exit})).await;
        assert_eq!(out["exitCode"], 3, "{out}");
        if lang == TS {
            // A result set before Deno.exit is still reported.
            assert!(before.contains(&(out["result"].as_i64().unwrap() as i32)), "{before:?} {out}");
        }
        let out = warm_run(&agent, lang, json!({"code": next}), "pid").await;
        assert_eq!(out["result"]["ok"], 1, "{out}");

        // A waiting interpreter killed by earlier user code (same uid) is passed over.
        for pid in waiting(&agent, lang.2).await {
            let killed = agent.exec(json!({"cmd": format!("kill -9 {pid}")})).await;
            assert_eq!(killed["exitCode"], 0, "{killed}");
            // SIGKILL is delivered asynchronously; the test is about a dead one, not a dying one
            // (Deno's main thread is a zombie before its other threads are gone).
            let threads = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
            while common::process_alive(pid) || threads() > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let out = agent.run(lang.0, json!({"code": next})).await;
        assert_eq!(out["exitCode"], 0, "{out}");
        assert_eq!(out["result"]["ok"], 1, "{out}");
    }
}

#[tokio::test]
async fn a_waiting_interpreter_holds_no_secret_before_its_run() {
    let Some(agent) = agent_with_pool(PY).await else { return };
    let secret = "s3cr3t-value";
    let code = format!("import os\nresult = {{'pid': os.getpid(), 'secret': os.environ.get('TOKEN')}}\n# {secret}\n");
    for pid in waiting(&agent, PY.2).await {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        for (what, bytes) in [("environ", environ), ("cmdline", cmdline)] {
            assert!(!String::from_utf8_lossy(&bytes).contains(secret), "{what} of {pid} holds the secret");
        }
    }
    let out = warm_run(&agent, PY, json!({"code": code, "env": {"TOKEN": secret}}), "pid").await;
    assert_eq!(out["result"]["secret"], secret, "{out}");
    // Its replacement, started after that run, has not seen it either.
    for pid in waiting(&agent, PY.2).await {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!String::from_utf8_lossy(&environ).contains(secret), "the replacement {pid} holds the secret");
    }
}

#[tokio::test]
async fn a_warm_run_that_times_out_is_killed_and_the_next_run_works() {
    let Some(agent) = agent_with_pool(PY).await else { return };
    let before = waiting(&agent, PY.2).await;
    let out = agent.run("/run-python", json!({"code": "import time\ntime.sleep(100)", "timeoutMs": 300})).await;
    assert_eq!(out["timedOut"], true, "{out}");
    for pid in before {
        assert!(!common::process_alive(pid), "the timed-out interpreter {pid} survived");
    }
    let out = warm_run(&agent, PY, json!({"code": "import os\nresult = {'pid': os.getpid()}\n"}), "pid").await;
    assert_eq!(out["exitCode"], 0, "{out}");
}

#[tokio::test]
async fn a_run_setting_a_startup_variable_runs_cold() {
    let Some(agent) = agent_with_pool(PY).await else { return };
    let before = waiting(&agent, PY.2).await;
    let code = "import os, sys\nresult = {'pid': os.getpid(), 'randomised': sys.flags.hash_randomization}\n";
    let out = agent.run("/run-python", json!({"code": code, "env": {"PYTHONHASHSEED": "0"}})).await;
    assert_eq!(out["result"]["randomised"], 0, "PYTHONHASHSEED took effect at start-up: {out}");
    assert!(!before.contains(&(out["result"]["pid"].as_i64().unwrap() as i32)), "{out}");
}

#[tokio::test]
async fn pool_size_zero_starts_no_interpreter_ahead() {
    let Some(agent) = Agent::start_with_env(&[("RDS_AGENT_WARM_POOL", "0")]).await else { return };
    if !has_program("python3") {
        return;
    }
    for _ in 0..2 {
        let out = agent.run("/run-python", json!({"code": "result = 1\n"})).await;
        assert_eq!(out["result"], 1, "{out}");
    }
    assert!(interpreters(&agent, PY.2).is_empty(), "interpreters were started ahead");
}

#[tokio::test]
async fn a_warm_python_run_finds_packages_installed_for_the_user_after_it_started() {
    let Some(agent) = agent_with_pool(PY).await else { return };
    let out = agent.run("/run-python", json!({"code": "import site\nresult = site.getusersitepackages()\n"})).await;
    let user_site = std::path::PathBuf::from(out["result"].as_str().unwrap_or_else(|| panic!("{out}")));
    assert!(user_site.starts_with(&agent.workspace), "{out}");
    // Installed while an interpreter waits, as `pip install --user` would.
    let before = waiting(&agent, PY.2).await;
    let created = agent
        .exec(json!({"cmd": format!("mkdir -p {0} && echo 'answer = 42' > {0}/rds_user_pkg.py", user_site.display())}))
        .await;
    assert_eq!(created["exitCode"], 0, "{created}");
    let code = "import os, sys, rds_user_pkg\nresult = {'pid': os.getpid(), 'answer': rds_user_pkg.answer}\n";
    let out = agent.run("/run-python", json!({"code": code})).await;
    assert_eq!(out["result"]["answer"], 42, "{out}");
    assert!(before.contains(&(out["result"]["pid"].as_i64().unwrap() as i32)), "served warm: {out}");
}
