//! `/exec` and `/health` through the real agent binary.

mod common;

use std::time::Duration;

use common::{process_alive, Agent};
use http::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn health_lists_capabilities() {
    let Some(agent) = Agent::start().await else { return };
    let reply = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let health = reply.json();
    assert_eq!(health["status"], "ok");
    assert!(health["version"].is_string());
    let caps = &health["capabilities"];
    assert_eq!(caps["bash"], true);
    assert_eq!(caps["sh"], true);
    for name in ["deno", "node", "python3"] {
        let installed =
            ["/usr/local/bin", "/usr/bin", "/bin"].iter().any(|d| std::path::Path::new(d).join(name).exists());
        assert_eq!(caps[name], installed, "{name}");
    }
}

#[tokio::test]
async fn exec_runs_as_uid_1000_without_supplementary_groups() {
    let Some(agent) = Agent::start().await else { return };
    let result = agent.exec(json!({"cmd": "id -u; id -g; id -G; pwd"})).await;
    let expected = format!("1000\n1000\n1000\n{}\n", agent.workspace.display());
    assert_eq!(result["stdout"], expected.as_str());
    assert_eq!(result["exitCode"], 0);
}

#[tokio::test]
async fn exec_environment_is_fresh_not_the_agents() {
    let Some(agent) = Agent::start_with_env(&[("RDS_TEST_CANARY", "agent-secret")]).await else { return };
    let result = agent.exec(json!({"cmd": "env", "env": {"MINE": "yes"}})).await;
    let stdout = result["stdout"].as_str().unwrap();
    assert!(!stdout.contains("RDS_TEST_CANARY"), "agent env leaked: {stdout}");
    assert!(!stdout.contains("agent-secret"), "agent env leaked: {stdout}");
    assert!(stdout.contains("MINE=yes"));
    assert!(stdout.contains(&format!("HOME={}", agent.workspace.display())));
    assert!(stdout.contains("USER=user"));
    assert!(stdout.contains("PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"));
}

#[tokio::test]
async fn exec_cwd_outside_workspace_or_missing_is_rejected() {
    let Some(agent) = Agent::start().await else { return };
    for cwd in ["/etc", "../..", "/workspace/../etc"] {
        let reply = agent.post_json("/exec", &json!({"cmd": "pwd", "cwd": cwd})).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "cwd {cwd}");
        assert_eq!(reply.json()["error"]["code"], "bad_request");
    }
    let reply = agent.post_json("/exec", &json!({"cmd": "pwd", "cwd": "does/not/exist"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("does/not/exist"));

    std::fs::create_dir(agent.workspace.join("sub")).unwrap();
    let result = agent.exec(json!({"cmd": "pwd", "cwd": "sub"})).await;
    assert_eq!(result["stdout"], format!("{}\n", agent.workspace.join("sub").display()).as_str());
}

#[tokio::test]
async fn exec_cwd_symlink_is_entered_as_the_user_not_root() {
    let Some(agent) = Agent::start().await else { return };
    // A root-only directory: root could enter it, uid 1000 cannot.
    let secret = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(secret.path(), agent.workspace.join("link")).unwrap();
    let reply = agent.post_json("/exec", &json!({"cmd": "pwd", "cwd": "link"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&reply.body));
}

#[tokio::test]
async fn timeout_kills_background_grandchildren() {
    let Some(agent) = Agent::start().await else { return };
    let result = agent
        .exec(json!({
            // The second sleep gets its own process group (job control) but stays in the session.
            "cmd": "sleep 1000 & echo $!; (set -m; sleep 1002 & echo $!); wait",
            "timeoutMs": 500,
        }))
        .await;
    assert_eq!(result["timedOut"], true);
    assert_eq!(result["exitCode"], Value::Null);
    let pids: Vec<i32> = result["stdout"].as_str().unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{result}");
    for pid in pids {
        // Reaping by the host's init may lag a moment behind the kill.
        let mut alive = true;
        for _ in 0..100 {
            alive = process_alive(pid);
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive, "background process {pid} survived the timeout");
    }
}

#[tokio::test]
async fn output_is_capped_at_one_mib_with_flag() {
    let Some(agent) = Agent::start().await else { return };
    let result = agent.exec(json!({"cmd": "head -c 5242880 /dev/zero | tr '\\0' x; echo done >&2"})).await;
    assert_eq!(result["exitCode"], 0);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(result["stdoutTruncated"], true);
    assert_eq!(result["stderr"], "done\n");
    assert_eq!(result["stderrTruncated"], false);
}

#[tokio::test]
async fn retried_exec_id_runs_the_command_once() {
    let Some(agent) = Agent::start().await else { return };
    let counter = agent.workspace.join("counter");
    let request = json!({"cmd": "echo ran >> counter; sleep 0.5; echo hello", "execId": "retry-1"});
    // A concurrent retry while the first run is still going, then a later one.
    let (first, second) = tokio::join!(agent.exec(request.clone()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        agent.exec(request.clone()).await
    });
    let third = agent.exec(request.clone()).await;
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "ran\n");
    assert_eq!(first["stdout"], "hello\n");
    assert_eq!(first, second);
    assert_eq!(first, third);

    let changed = agent.post_json("/exec", &json!({"cmd": "echo other", "execId": "retry-1"})).await;
    assert_eq!(changed.status, StatusCode::CONFLICT);
    assert_eq!(changed.json()["error"]["code"], "conflict");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "ran\n");
}

#[tokio::test]
async fn twenty_concurrent_execs_all_succeed() {
    let Some(agent) = Agent::start().await else { return };
    let calls = (0..20).map(|i| {
        let agent = &agent;
        async move { (i, agent.exec(json!({"cmd": format!("sleep 0.1; echo {i}")})).await) }
    });
    for (i, result) in futures_util::future::join_all(calls).await {
        assert_eq!(result["exitCode"], 0);
        assert_eq!(result["stdout"], format!("{i}\n").as_str());
    }
}

#[tokio::test]
async fn ndjson_streams_output_events_before_exit() {
    let Some(agent) = Agent::start().await else { return };
    let body = serde_json::to_vec(&json!({"cmd": "echo one; sleep 0.2; echo two >&2; exit 3"})).unwrap();
    let reply = agent
        .request(
            Method::POST,
            "/exec",
            &[("accept", "application/x-ndjson"), ("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let events: Vec<Value> =
        String::from_utf8(reply.body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.first().unwrap(), &json!({"type": "stdout", "data": "one\n"}));
    assert!(events.contains(&json!({"type": "stderr", "data": "two\n"})), "{events:?}");
    let exit = events.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exitCode"], 3);
    assert_eq!(events.iter().filter(|e| e["type"] == "exit").count(), 1);
}

#[tokio::test]
async fn signal_death_reports_the_signal() {
    let Some(agent) = Agent::start().await else { return };
    let result = agent.exec(json!({"cmd": "kill -9 $$"})).await;
    assert_eq!(result["signal"], 9);
    assert_eq!(result["exitCode"], Value::Null);
    assert_eq!(result["timedOut"], false);
}

#[tokio::test]
async fn stdin_is_written_then_closed() {
    let Some(agent) = Agent::start().await else { return };
    let result = agent.exec(json!({"cmd": "cat; echo end", "stdin": "hello\nworld"})).await;
    assert_eq!(result["stdout"], "hello\nworldend\n");
    let result = agent.exec(json!({"cmd": "cat; echo end"})).await;
    assert_eq!(result["stdout"], "end\n", "without stdin the command reads /dev/null");
}

#[tokio::test]
async fn commands_inherit_no_descriptors_beyond_stdio() {
    let Some(agent) = Agent::start().await else { return };
    // Looked at in a background child started before the pipeline (the shell itself holds the
    // pipeline's pipes for a moment, which `ls` could catch under load), once it is `sleep`: until
    // its exec it is a copy of the shell, with the shell's descriptors.
    let cmd = "sleep 30 & p=$!; for i in $(seq 500); do grep -qx sleep /proc/$p/comm && break; sleep 0.01; done; \
               ls /proc/$p/fd | sort -n | tr '\\n' ' '; kill $p";
    let result = agent.exec(json!({ "cmd": cmd })).await;
    assert_eq!(result["stdout"], "0 1 2 ", "{result}");
}

#[tokio::test]
async fn non_utf8_output_is_converted_lossily() {
    let Some(agent) = Agent::start().await else { return };
    let result = agent.exec(json!({"cmd": "printf 'a\\377b'"})).await;
    assert_eq!(result["stdout"], "a\u{fffd}b");
}

#[tokio::test]
async fn sandbox_user_cannot_connect_to_the_agent_socket() {
    let Some(agent) = Agent::start().await else { return };
    if !common::has_program("python3") {
        return;
    }
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n",
        agent.socket.display().to_string()
    );
    let result = agent.exec(json!({"cmd": "python3 -", "stdin": script})).await;
    assert_eq!(result["stdout"], "refused 13\n", "{result}");
}

#[tokio::test]
async fn bad_exec_requests_are_400_naming_the_field() {
    let Some(agent) = Agent::start().await else { return };
    let cases: [(&[u8], &str); 7] = [
        (br#"{"cmd":"#, "malformed JSON"),
        (br#"{"cmd":"true","bogus":1}"#, "bogus"),
        (br#"{"cmd":42}"#, "cmd"),
        (br#"{"cwd":"x"}"#, "cmd"),
        (br#"{"cmd":"true","timeoutMs":-5}"#, "timeoutMs"),
        (br#"{"cmd":"true","env":{"1BAD":"x"}}"#, "env"),
        (br#"{"cmd":"true","timeoutMs":0}"#, "timeoutMs"),
    ];
    for (body, field) in cases {
        let reply = agent.post_raw("/exec", body.to_vec()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(body));
        let error = reply.json();
        assert_eq!(error["error"]["code"], "bad_request");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message:?} should name {field}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let Some(agent) = Agent::start().await else { return };
    let reply = agent.request(Method::GET, "/nope", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "not_found");
    let reply = agent.request(Method::GET, "/exec", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.json()["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn oversized_json_body_is_413() {
    let Some(agent) = Agent::start().await else { return };
    // Announce a 9 MiB body without sending it: the agent must refuse before reading it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        rds_vsock::connect(&agent.socket, rds_proto::AGENT_VSOCK_PORT, Duration::from_secs(5)).await.unwrap();
    let head = format!("POST /exec HTTP/1.1\r\nhost: agent\r\ncontent-length: {}\r\n\r\n", 9 * 1024 * 1024);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}

#[tokio::test]
async fn shutdown_stops_an_unsupervised_agent() {
    let Some(mut agent) = Agent::start().await else { return };
    let reply = agent.post_json("/shutdown", &json!({})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let status = agent.wait_exit();
    assert!(status.success(), "{status:?}");
}
