//! End-to-end: terminals over a real WebSocket through the real `rds serve` on the sandbox
//! runtime — resize, input, Ctrl-C, the exit frame, re-attach with replay, single-use tokens,
//! bad frames closed with a code; and `rds vm shell` driven through tmux.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One WebSocket client of a VM's terminal.
struct Term {
    socket: Socket,
    session: String,
    seen: String,
}

impl Term {
    /// Connects to `/v1/vms/{vm}/pty?{query}`, with the API key unless `key` is false.
    async fn connect(s: &Server, vm: &str, query: &str, key: bool) -> Result<Term, String> {
        let url = format!("{}/v1/vms/{vm}/pty?{query}", s.url.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        if key {
            request.headers_mut().insert("x-api-key", HeaderValue::from_str(&s.key).unwrap());
        }
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16().to_string(),
            other => other.to_string(),
        })?;
        let hello = next_text(&mut socket).await;
        assert_eq!(hello["type"], "session", "{hello}");
        Ok(Term { socket, session: hello["sessionId"].as_str().unwrap().to_string(), seen: String::new() })
    }

    async fn type_line(&mut self, line: &str) {
        self.socket.send(Message::Binary(format!("{line}\r").into_bytes().into())).await.unwrap();
    }

    async fn control(&mut self, value: Value) {
        self.socket.send(Message::Text(value.to_string().into())).await.unwrap();
    }

    /// Reads until the output contains `needle` (bounded).
    async fn wait_for(&mut self, needle: &str) {
        let read = async {
            while !self.seen.contains(needle) {
                match self.socket.next().await {
                    Some(Ok(Message::Binary(data))) => self.seen.push_str(&String::from_utf8_lossy(&data)),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected output, got {other:?} after {:?}", self.seen),
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), read).await.is_err() {
            panic!("no {needle:?} in {:?}", self.seen);
        }
    }

    /// Reads until the exit message, then expects the close (code 1000).
    async fn exit(&mut self) -> Value {
        let read = async {
            let exit = loop {
                match self.socket.next().await {
                    Some(Ok(Message::Binary(data))) => self.seen.push_str(&String::from_utf8_lossy(&data)),
                    Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(text.as_str()).unwrap(),
                    other => panic!("expected the exit message, got {other:?}"),
                }
            };
            (exit, self.close_code().await)
        };
        let (exit, code) = tokio::time::timeout(Duration::from_secs(30), read).await.expect("no exit");
        assert_eq!(code, Some(CloseCode::Normal), "{exit}");
        exit
    }

    /// The close code the server ends with (bounded), skipping output.
    async fn close_code(&mut self) -> Option<CloseCode> {
        let read = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read).await.expect("the server did not close")
    }
}

async fn next_text(socket: &mut Socket) -> Value {
    match tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("no message") {
        Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_terminal_resizes_takes_input_is_interrupted_and_reports_its_exit() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    runtime().block_on(async {
        let mut term = Term::connect(&s, &vm, "cols=100&rows=30", true).await.unwrap();
        term.type_line("stty size; echo TERM=$TERM; id -un").await;
        term.wait_for("TERM=xterm-256color").await;
        assert!(term.seen.contains("30 100"), "{}", term.seen);

        term.control(json!({"type": "resize", "cols": 132, "rows": 43})).await;
        term.type_line("stty size").await;
        term.wait_for("43 132").await;

        term.type_line("read x; echo got:$x").await;
        // Typed once the shell runs the line (readline would otherwise take the typed-ahead input).
        term.wait_for("got:$x\r\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        term.type_line("typed-in").await;
        term.wait_for("got:typed-in").await;

        // Ctrl-C (the byte, as a terminal sends it) interrupts the foreground job.
        term.type_line("sleep 100; echo slept").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        term.socket.send(Message::Binary(vec![3u8].into())).await.unwrap();
        term.type_line("echo status-$?").await;
        term.wait_for("status-130").await;
        assert!(!term.seen.contains("\nslept"), "{}", term.seen);

        term.type_line("exit 5").await;
        let exit = term.exit().await;
        assert_eq!(exit, json!({"type": "exit", "exitCode": 5}));
    });
    let (st, sessions) = s.call("GET", &format!("/v1/vms/{vm}/pty-sessions"), None);
    assert_eq!((st, sessions), (200, json!([])));
}

#[test]
fn a_disconnected_session_keeps_running_and_replays_on_reattach() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    runtime().block_on(async {
        let mut first = Term::connect(&s, &vm, "", true).await.unwrap();
        first.type_line("echo before-$((40+2)); (sleep 1; echo while-away) &").await;
        first.wait_for("before-42").await;
        let session = first.session.clone();
        drop(first);
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let (st, listed) = s.call("GET", &format!("/v1/vms/{vm}/pty-sessions"), None);
        assert_eq!((st, listed[0]["sessionId"].as_str()), (200, Some(session.as_str())), "{listed}");
        let mut again = Term::connect(&s, &vm, &format!("session={session}"), true).await.unwrap();
        assert_eq!(again.session, session);
        again.wait_for("before-42").await;
        again.wait_for("while-away").await;

        // Re-attaching takes the session alone; an unknown one is a 404 before any upgrade.
        let err = Term::connect(&s, &vm, &format!("session={session}&cols=10"), true).await.err();
        assert_eq!(err.as_deref(), Some("400"));
        let err = Term::connect(&s, &vm, "session=00000000-0000-0000-0000-000000000000", true).await.err();
        assert_eq!(err.as_deref(), Some("404"));

        let (st, _) = s.call("DELETE", &format!("/v1/vms/{vm}/pty-sessions/{session}"), None);
        assert_eq!(st, 204);
        let exit = again.exit().await;
        assert_eq!(exit["type"], "exit", "{exit}");
    });
}

#[test]
fn browsers_attach_with_a_single_use_token_never_without_one() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    let other = s.create_vm(256);
    runtime().block_on(async {
        assert_eq!(Term::connect(&s, &vm, "", false).await.err().as_deref(), Some("401"));
        let (st, token) = s.call("POST", &format!("/v1/vms/{vm}/pty-tokens"), Some(json!({})));
        assert_eq!(st, 201, "{token}");
        let token = token["token"].as_str().unwrap().to_string();
        // Bound to its VM: using it on another spends nothing.
        let err = Term::connect(&s, &other, &format!("token={token}"), false).await.err();
        assert_eq!(err.as_deref(), Some("401"));
        let mut term = Term::connect(&s, &vm, &format!("token={token}"), false).await.unwrap();
        term.type_line("echo via-token").await;
        term.wait_for("via-token").await;
        let err = Term::connect(&s, &vm, &format!("token={token}"), false).await.err();
        assert_eq!(err.as_deref(), Some("401"), "a token works once");
    });
}

#[test]
fn code_in_another_vm_cannot_see_or_write_to_a_terminal() {
    require_sandbox!();
    let s = Server::start(&[]);
    let victim = s.create_vm(256);
    let attacker = s.create_vm(256);
    runtime().block_on(async {
        let mut term = Term::connect(&s, &victim, "cmd=cat", true).await.unwrap();
        term.type_line("before").await;
        term.wait_for("before\r\n").await;
        // Each VM has a devpts of its own: the victim's terminal is not there to open, nor is the
        // host's; whatever is there is written to.
        let probe = s.exec(
            &attacker,
            "ls /dev/pts | tr '\\n' ' '; echo; for p in /dev/pts/*; do [ \"$p\" = /dev/pts/ptmx ] && continue; \
             echo INJECTED > \"$p\" 2>/dev/null && echo wrote:$p; done; echo probed",
        );
        assert_eq!(probe["stdout"], "ptmx \nprobed\n", "{probe}");
        term.type_line("after").await;
        term.wait_for("after\r\n").await;
        assert!(!term.seen.contains("INJECTED"), "{}", term.seen);
    });
}

#[test]
fn bad_messages_are_closed_with_a_code_and_the_session_survives() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    runtime().block_on(async {
        let mut session = None;
        for (bad, code) in [
            (json!("not an object").to_string(), CloseCode::Unsupported),
            (json!({"type": "dance"}).to_string(), CloseCode::Unsupported),
            ("{".to_string(), CloseCode::Unsupported),
            (json!({"type": "resize", "cols": 0, "rows": 10}).to_string(), CloseCode::Policy),
            (json!({"type": "signal", "signal": "SEGV"}).to_string(), CloseCode::Policy),
        ] {
            let query = session.as_ref().map(|id| format!("session={id}")).unwrap_or_default();
            let mut term = Term::connect(&s, &vm, &query, true).await.unwrap();
            session.get_or_insert(term.session.clone());
            term.socket.send(Message::Text(bad.clone().into())).await.unwrap();
            assert_eq!(term.close_code().await, Some(code), "{bad}");
        }
        let mut term = Term::connect(&s, &vm, &format!("session={}", session.unwrap()), true).await.unwrap();
        term.type_line("echo alive-$((2*3))").await;
        term.wait_for("alive-6").await;
    });
    // A plain GET is not a WebSocket: a 400 naming what is missing.
    let (st, body) = s.call("GET", &format!("/v1/vms/{vm}/pty"), None);
    assert_eq!(st, 400, "{body}");
}

/// `rds vm shell` in a tmux pane: its output as the pane shows it.
fn pane(name: &str) -> String {
    let out = Command::new("tmux").args(["capture-pane", "-p", "-t", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_pane(name: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = pane(name);
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the pane:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rds_vm_shell_is_a_terminal_in_tmux() {
    require_sandbox!();
    if Command::new("tmux").arg("-V").output().is_err() {
        rds_testkit::skip("tmux is not installed");
        return;
    }
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    let name = format!("rds-shell-{}", std::process::id());
    let shell = format!("{} vm shell {vm} --url {} ; echo rds-exited-$? ; sleep 60", env!("CARGO_BIN_EXE_rds"), s.url);
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "40"])
        .arg(format!("RDS_API_KEY={} {shell}", s.key))
        .status()
        .unwrap();
    assert!(status.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
        }
    }
    let _kill = Kill(name.clone());
    let keys = |keys: &[&str]| {
        assert!(Command::new("tmux").args(["send-keys", "-t", &name]).args(keys).status().unwrap().success());
    };
    keys(&["echo in-vm-$(hostname)", "Enter"]);
    wait_for_pane(&name, "in-vm-rds-");
    keys(&["stty size", "Enter"]);
    wait_for_pane(&name, " 120\n");
    // A resize of the pane reaches the VM's terminal (SIGWINCH → resize message).
    assert!(Command::new("tmux")
        .args(["resize-window", "-t", &name, "-x", "90", "-y", "30"])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    keys(&["clear; stty size", "Enter"]);
    wait_for_pane(&name, "30 90");
    keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    keys(&["C-c"]);
    keys(&["echo after-$?", "Enter"]);
    wait_for_pane(&name, "after-130");
    keys(&["exit 4", "Enter"]);
    wait_for_pane(&name, "rds-exited-4");
}
