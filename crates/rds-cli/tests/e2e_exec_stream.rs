//! End-to-end: exec with live output and streamed stdin through the real `rds serve` on the
//! sandbox runtime — the WebSocket exec (stdin fed while the command runs, stdout and stderr
//! apart, signals, the exit, refusals, tokens, a provider's redaction) and exec as server-sent
//! events.

mod common;

use std::time::Duration;

use common::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/v1/vms/{vm}/exec/ws?{query}` (with the API key when `key`) and sends `request`.
async fn connect(s: &Server, vm: &str, query: &str, key: bool, request: Value) -> Result<Socket, String> {
    let url = format!("{}/v1/vms/{vm}/exec/ws?{query}", s.url.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    if key {
        req.headers_mut().insert("x-api-key", HeaderValue::from_str(&s.key).unwrap());
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16().to_string(),
        other => other.to_string(),
    })?;
    socket.send(Message::Text(request.to_string().into())).await.unwrap();
    Ok(socket)
}

/// What the server sent: the events in order, and how it closed.
#[derive(Default, Debug)]
struct Seen {
    stdout: String,
    stderr: String,
    last: Option<Value>,
    close: Option<CloseCode>,
}

/// Reads messages until `done` holds or the socket closes (bounded).
async fn read_until(socket: &mut Socket, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let read = async {
        while !done(seen) {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(text.as_str()).unwrap();
                    match event["type"].as_str() {
                        Some("stdout") => seen.stdout.push_str(event["data"].as_str().unwrap()),
                        Some("stderr") => seen.stderr.push_str(event["data"].as_str().unwrap()),
                        _ => {}
                    }
                    seen.last = Some(event);
                }
                Some(Ok(Message::Close(frame))) => {
                    seen.close = frame.map(|f| f.code);
                    return;
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.unwrap_or_else(|_| panic!("stuck at {seen:?}"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn stdin_streams_into_a_running_command_and_its_output_streams_back() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    runtime().block_on(async {
        let cmd = r#"while read -r l; do echo "got:$l"; echo "err:$l" >&2; done; echo "bye from $(id -un)"; exit 4"#;
        let mut socket = connect(&s, &vm, "", true, json!({"cmd": cmd})).await.unwrap();
        let mut seen = Seen::default();
        socket.send(Message::Binary(b"one\n".to_vec().into())).await.unwrap();
        // The next line goes in only once the first came back: the input streams.
        read_until(&mut socket, &mut seen, |s| s.stdout.contains("got:one")).await;
        socket.send(Message::Binary(b"two\n".to_vec().into())).await.unwrap();
        read_until(&mut socket, &mut seen, |s| s.stderr.contains("err:two")).await;
        socket.send(Message::Text(json!({"type": "eof"}).to_string().into())).await.unwrap();
        read_until(&mut socket, &mut seen, |_| false).await;
        assert_eq!(seen.stdout, "got:one\ngot:two\nbye from user\n");
        assert_eq!(seen.stderr, "err:one\nerr:two\n");
        let exit = seen.last.clone().unwrap();
        assert_eq!((exit["type"].as_str(), exit["exitCode"].as_i64()), (Some("exit"), Some(4)), "{exit}");
        assert_eq!(seen.close, Some(CloseCode::Normal));

        // A signal interrupts a command that reads nothing.
        let mut socket = connect(&s, &vm, "", true, json!({"cmd": "echo up; sleep 100"})).await.unwrap();
        let mut seen = Seen::default();
        read_until(&mut socket, &mut seen, |s| s.stdout.contains("up")).await;
        socket.send(Message::Text(json!({"type": "signal", "signal": "INT"}).to_string().into())).await.unwrap();
        read_until(&mut socket, &mut seen, |_| false).await;
        let exit = seen.last.clone().unwrap();
        assert!(exit["exitCode"] == 130 || exit["signal"] == 2, "{exit}");
    });
    // Every attached exec is in the VM's exec log, its input marked as streamed.
    let (st, logs) = s.call("GET", &format!("/v1/vms/{vm}/exec-logs"), None);
    assert_eq!(st, 200, "{logs}");
    assert!(logs.to_string().contains("stdinStreamed"), "{logs}");
}

#[test]
fn refused_requests_get_a_reason_and_callers_need_a_key_or_a_token() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    runtime().block_on(async {
        for (request, field) in [
            (json!({"cmd": "touch /workspace/ran", "stdin": "x"}), "`stdin`"),
            (json!({"cmd": "touch /workspace/ran", "execId": "e-1"}), "`execId`"),
            (json!({"cmd": "touch /workspace/ran", "timeoutMs": 0}), "`timeoutMs`"),
            (json!({"command": "touch /workspace/ran"}), "cmd"),
        ] {
            let mut socket = connect(&s, &vm, "", true, request).await.unwrap();
            let mut seen = Seen::default();
            read_until(&mut socket, &mut seen, |_| false).await;
            let error = seen.last.clone().expect("an error message");
            assert_eq!((error["type"].as_str(), error["status"].as_u64()), (Some("error"), Some(400)), "{error}");
            assert!(error["message"].as_str().unwrap().contains(field), "{error}");
            assert_eq!(seen.close, Some(CloseCode::Policy));
        }
        // A bad control message closes with a code; the command dies with the connection.
        let mut socket = connect(&s, &vm, "", true, json!({"cmd": "cat"})).await.unwrap();
        socket.send(Message::Text("{\"type\":\"dance\"}".into())).await.unwrap();
        let mut seen = Seen::default();
        read_until(&mut socket, &mut seen, |_| false).await;
        assert_eq!(seen.close, Some(CloseCode::Unsupported));

        assert_eq!(connect(&s, &vm, "", false, json!({"cmd": "true"})).await.err().as_deref(), Some("401"));
        assert_eq!(connect(&s, "no-such-vm", "", true, json!({"cmd": "true"})).await.err().as_deref(), Some("404"));
        let (st, token) = s.call("POST", &format!("/v1/vms/{vm}/pty-tokens"), Some(json!({})));
        assert_eq!(st, 201, "{token}");
        let query = format!("token={}", token["token"].as_str().unwrap());
        let mut socket = connect(&s, &vm, &query, false, json!({"cmd": "echo via-token"})).await.unwrap();
        let mut seen = Seen::default();
        read_until(&mut socket, &mut seen, |_| false).await;
        assert_eq!(seen.stdout, "via-token\n");
        assert_eq!(connect(&s, &vm, &query, false, json!({"cmd": "true"})).await.err().as_deref(), Some("401"));
    });
    assert_eq!(s.exec(&vm, "ls /workspace")["stdout"], "", "nothing refused ran");
}

#[test]
fn a_providers_output_is_redacted_on_the_socket() {
    require_sandbox!();
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef")]);
    let (st, vm) =
        s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "secretEnv": ["SOCK_TOKEN=sock-s3cr3t-value"]})));
    assert_eq!(st, 201, "{vm}");
    let vm = vm["id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        let cmd = r#"read -r l; echo "$l=$SOCK_TOKEN"; echo "$SOCK_TOKEN" >&2"#;
        let mut socket = connect(&s, &vm, "", true, json!({"cmd": cmd})).await.unwrap();
        socket.send(Message::Binary(b"token\n".to_vec().into())).await.unwrap();
        let mut seen = Seen::default();
        read_until(&mut socket, &mut seen, |_| false).await;
        assert_eq!(seen.stdout, "token=[redacted:SOCK_TOKEN]\n");
        assert_eq!(seen.stderr, "[redacted:SOCK_TOKEN]\n");
        assert_eq!(seen.last.clone().unwrap()["exitCode"], 0);
    });
}

#[test]
fn exec_streams_as_server_sent_events() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    let resp = s
        .req("POST", &format!("/v1/vms/{vm}/exec"))
        .set("Accept", "text/event-stream")
        .send_json(json!({"cmd": "echo one; echo two >&2; exit 5"}))
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let body = resp.into_string().unwrap();
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_start().to_string()).unwrap_or_default()
            };
            (field("event:"), serde_json::from_str(&field("data:")).unwrap())
        })
        .collect();
    let named = |name: &str| events.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    assert_eq!(named("stdout"), vec![json!({"type": "stdout", "data": "one\n"})], "{body}");
    assert_eq!(named("stderr"), vec![json!({"type": "stderr", "data": "two\n"})], "{body}");
    let (last_name, last) = events.last().unwrap();
    assert_eq!((last_name.as_str(), last["exitCode"].as_i64()), ("exit", Some(5)), "{body}");
}
