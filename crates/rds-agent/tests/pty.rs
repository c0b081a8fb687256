//! Terminal sessions through the real agent binary: input, resize, Ctrl-C, exit status,
//! detach and re-attach with the scrollback replayed, bad frames.

mod common;

use std::time::Duration;

use common::Agent;
use rds_agent_client::{AgentClient, PtyStream};
use rds_proto::pty::{self, PtyExit, PtyRequest};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(10);

/// One attached client.
struct Term {
    stream: PtyStream,
    seen: String,
}

impl Term {
    async fn attach(client: &AgentClient, id: &str) -> Term {
        Term { stream: client.attach_pty(id, LIMIT).await.expect("attach"), seen: String::new() }
    }

    async fn send(&mut self, kind: u8, payload: &[u8]) {
        self.stream.write_all(&pty::frame(kind, payload)).await.unwrap();
    }

    async fn type_line(&mut self, line: &str) {
        self.send(pty::DATA, format!("{line}\r").as_bytes()).await;
    }

    /// Reads output until it contains `needle` (bounded); the output so far.
    async fn wait_for(&mut self, needle: &str) -> String {
        let read = async {
            while !self.seen.contains(needle) {
                match pty::read_frame(&mut self.stream).await.unwrap() {
                    Some((pty::DATA, data)) => self.seen.push_str(&String::from_utf8_lossy(&data)),
                    other => panic!("expected output, got {other:?} after {:?}", self.seen),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", self.seen));
        self.seen.clone()
    }

    /// Reads until the exit frame (bounded).
    async fn exit(&mut self) -> PtyExit {
        let read = async {
            loop {
                match pty::read_frame(&mut self.stream).await.unwrap() {
                    Some((pty::DATA, data)) => self.seen.push_str(&String::from_utf8_lossy(&data)),
                    Some((pty::EXIT, body)) => return serde_json::from_slice::<PtyExit>(&body).unwrap(),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("no exit frame")
    }
}

async fn open(agent: &Agent, request: PtyRequest) -> (AgentClient, String) {
    let client = AgentClient::hybrid_vsock(&agent.socket);
    let info = client.open_pty(&request, LIMIT).await.expect("open");
    (client, info.session_id)
}

#[tokio::test]
async fn a_shell_takes_input_resizes_and_reports_its_exit() {
    let Some(agent) = Agent::start().await else { return };
    let (client, id) = open(&agent, PtyRequest { cols: Some(100), rows: Some(30), ..Default::default() }).await;
    let mut term = Term::attach(&client, &id).await;
    term.type_line("stty size; id -u; tty; echo TERM=$TERM").await;
    let out = term.wait_for("TERM=xterm-256color").await;
    assert!(out.contains("30 100"), "{out}");
    assert!(out.contains("\n1000\r") && out.contains("/dev/pts/"), "{out}");

    term.send(pty::RESIZE, &serde_json::to_vec(&json!({"cols": 132, "rows": 40})).unwrap()).await;
    term.type_line("stty size").await;
    term.wait_for("40 132").await;
    assert_eq!(client.ptys(LIMIT).await.unwrap()[0].cols, 132);

    term.type_line("read x; echo got:$x").await;
    // Typed once the shell runs the line (readline would otherwise take the typed-ahead input).
    term.wait_for("got:$x\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    term.type_line("hello").await;
    term.wait_for("got:hello").await;

    // Ctrl-C through the line discipline interrupts the foreground job, not the shell.
    term.type_line("sleep 100").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.send(pty::DATA, b"\x03").await;
    term.type_line("echo after-$?").await;
    term.wait_for("after-130").await;

    term.type_line("exit 7").await;
    assert_eq!(term.exit().await, PtyExit { exit_code: Some(7), signal: None });
    // Delivered: the session is gone.
    assert!(client.ptys(LIMIT).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_detached_session_keeps_running_and_replays_its_output() {
    let Some(agent) = Agent::start().await else { return };
    let (client, id) = open(&agent, PtyRequest::default()).await;
    let mut first = Term::attach(&client, &id).await;
    first.type_line("echo marker-$((6*7))").await;
    first.wait_for("marker-42").await;
    drop(first);
    // Output written while nobody is attached is kept too.
    let info = client.ptys(LIMIT).await.unwrap();
    assert_eq!((info.len(), info[0].exit), (1, None));
    let mut second = Term::attach(&client, &id).await;
    second.wait_for("marker-42").await;
    second.type_line("echo again").await;
    second.wait_for("again").await;
    client.kill_pty(&id, LIMIT).await.unwrap();
    let exit = second.exit().await;
    assert_eq!(exit.exit_code, None, "{exit:?}");
    assert!(client.attach_pty(&id, LIMIT).await.is_err());
}

#[tokio::test]
async fn a_signal_frame_reaches_the_foreground_job_and_a_command_session_exits_with_it() {
    let Some(agent) = Agent::start().await else { return };
    let (client, id) =
        open(&agent, PtyRequest { cmd: Some("echo started; sleep 100".into()), ..Default::default() }).await;
    let mut term = Term::attach(&client, &id).await;
    term.wait_for("started").await;
    term.send(pty::SIGNAL, br#"{"signal":"TERM"}"#).await;
    let exit = term.exit().await;
    assert!(exit.exit_code == Some(143) || exit.signal == Some(15), "{exit:?}");
}

#[tokio::test]
async fn bad_frames_close_the_client_but_not_the_session() {
    let Some(agent) = Agent::start().await else { return };
    let (client, id) = open(&agent, PtyRequest::default()).await;
    for bad in [
        pty::frame(9, b""),
        pty::frame(pty::RESIZE, b"not json"),
        pty::frame(pty::RESIZE, br#"{"cols":0,"rows":5}"#),
        pty::frame(pty::SIGNAL, br#"{"signal":"SEGV"}"#),
        vec![pty::DATA, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut term = Term::attach(&client, &id).await;
        term.stream.write_all(&bad).await.unwrap();
        let closed =
            tokio::time::timeout(LIMIT, async { while let Ok(Some(_)) = pty::read_frame(&mut term.stream).await {} })
                .await;
        assert!(closed.is_ok(), "the agent kept a client that sent {bad:?}");
    }
    let mut term = Term::attach(&client, &id).await;
    term.type_line("echo still-$((1+1))").await;
    term.wait_for("still-2").await;
}

#[tokio::test]
async fn requests_are_checked_and_sessions_are_bounded() {
    let Some(agent) = Agent::start().await else { return };
    let client = AgentClient::hybrid_vsock(&agent.socket);
    for (request, field) in [
        (PtyRequest { cols: Some(0), ..Default::default() }, "`cols`"),
        (PtyRequest { rows: Some(1001), ..Default::default() }, "`rows`"),
        (PtyRequest { cmd: Some(" ".into()), ..Default::default() }, "`cmd`"),
        (PtyRequest { cwd: Some("../etc".into()), ..Default::default() }, "`cwd`"),
        (PtyRequest { idle_timeout_ms: Some(0), ..Default::default() }, "`idleTimeoutMs`"),
    ] {
        let err = client.open_pty(&request, LIMIT).await.unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    for _ in 0..rds_agent::pty::MAX_SESSIONS {
        client.open_pty(&PtyRequest::default(), LIMIT).await.unwrap();
    }
    let err = client.open_pty(&PtyRequest::default(), LIMIT).await.unwrap_err().to_string();
    assert!(err.contains("16 terminal sessions"), "{err}");
    assert!(client.kill_pty("nope", LIMIT).await.unwrap_err().to_string().contains("does not exist"));
}
