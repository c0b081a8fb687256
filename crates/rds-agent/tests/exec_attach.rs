//! Attached execs through the real agent binary: stdin streamed while the command runs, stdout
//! and stderr apart, signals, the exit status, refusals, and a host that hangs up.

mod common;

use std::time::Duration;

use common::{process_alive, Agent};
use rds_agent_client::{AgentClient, AgentError, PtyStream};
use rds_proto::pty;
use rds_proto::{ExecExit, ExecRequest};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(10);

/// What an attached exec sent so far.
#[derive(Default)]
struct Output {
    stdout: String,
    stderr: String,
}

/// Reads frames until `done` holds for the output (bounded); the exit, if it came.
async fn read_until(stream: &mut PtyStream, out: &mut Output, done: impl Fn(&Output) -> bool) -> Option<ExecExit> {
    let read = async {
        while !done(out) {
            match pty::read_frame(stream).await.expect("a frame") {
                Some((pty::DATA, data)) => out.stdout.push_str(&String::from_utf8_lossy(&data)),
                Some((pty::STDERR, data)) => out.stderr.push_str(&String::from_utf8_lossy(&data)),
                Some((pty::EXIT, body)) => return Some(serde_json::from_slice(&body).expect("an exit")),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("the frames came in time")
}

fn exec(cmd: &str) -> ExecRequest {
    ExecRequest { cmd: cmd.into(), ..Default::default() }
}

#[tokio::test]
async fn stdin_streams_in_while_the_command_runs() {
    let Some(agent) = Agent::start().await else { return };
    let client = AgentClient::hybrid_vsock(&agent.socket);
    let cmd = r#"while read -r l; do echo "got:$l"; echo "err:$l" >&2; done; echo "done as $(id -u)"; exit 3"#;
    let mut stream = client.attach_exec(&exec(cmd), LIMIT).await.expect("attach");
    let mut out = Output::default();
    stream.write_all(&pty::frame(pty::DATA, b"first\n")).await.unwrap();
    // The second line is sent only after the first was answered: the input really streams.
    assert!(read_until(&mut stream, &mut out, |o| o.stdout.contains("got:first")).await.is_none());
    stream.write_all(&pty::frame(pty::DATA, b"sec")).await.unwrap();
    stream.write_all(&pty::frame(pty::DATA, b"ond\n")).await.unwrap();
    read_until(&mut stream, &mut out, |o| o.stdout.contains("got:second") && o.stderr.contains("err:second")).await;
    stream.write_all(&pty::frame(pty::EOF, b"")).await.unwrap();
    let exit = read_until(&mut stream, &mut out, |_| false).await.expect("an exit frame");
    assert_eq!(exit.exit_code, Some(3), "{exit:?}");
    assert_eq!(out.stdout, "got:first\ngot:second\ndone as 1000\n");
    assert_eq!(out.stderr, "err:first\nerr:second\n");
}

#[tokio::test]
async fn a_signal_reaches_the_command() {
    let Some(agent) = Agent::start().await else { return };
    let client = AgentClient::hybrid_vsock(&agent.socket);
    let mut stream = client.attach_exec(&exec("echo up; sleep 100"), LIMIT).await.expect("attach");
    let mut out = Output::default();
    read_until(&mut stream, &mut out, |o| o.stdout.contains("up")).await;
    stream.write_all(&pty::frame(pty::SIGNAL, br#"{"signal":"INT"}"#)).await.unwrap();
    let exit = read_until(&mut stream, &mut out, |_| false).await.expect("an exit frame");
    // bash reports a child killed by SIGINT as 130; a shell that exec'd sleep dies of it itself.
    assert!(exit.exit_code == Some(130) || exit.signal == Some(libc::SIGINT), "{exit:?}");
}

#[tokio::test]
async fn a_host_that_hangs_up_takes_the_command_with_it() {
    let Some(agent) = Agent::start().await else { return };
    let client = AgentClient::hybrid_vsock(&agent.socket);
    let mut stream = client.attach_exec(&exec("echo pid:$$; exec sleep 100"), LIMIT).await.expect("attach");
    let mut out = Output::default();
    read_until(&mut stream, &mut out, |o| o.stdout.ends_with('\n')).await;
    let pid: i32 = out.stdout.trim().strip_prefix("pid:").unwrap().parse().unwrap();
    assert!(process_alive(pid));
    drop(stream);
    let gone = async {
        while process_alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the command was killed");
}

#[tokio::test]
async fn requests_it_cannot_honour_are_refused_before_anything_runs() {
    let Some(agent) = Agent::start().await else { return };
    let client = AgentClient::hybrid_vsock(&agent.socket);
    let cases = [
        (ExecRequest { stdin: Some("x".into()), ..exec("touch ran-stdin") }, "`stdin`"),
        (ExecRequest { exec_id: Some("e1".into()), ..exec("touch ran-id") }, "`execId`"),
        (exec(""), "`cmd`"),
    ];
    for (request, field) in cases {
        match client.attach_exec(&request, LIMIT).await {
            Err(AgentError::Status { status, message, .. }) => {
                assert_eq!(status, 400);
                assert!(message.contains(field), "{message}");
            }
            Err(other) => panic!("expected a 400 naming {field}, got {other}"),
            Ok(_) => panic!("expected a 400 naming {field}, got a connection"),
        }
    }
    assert!(agent.workspace_entries().is_empty(), "{:?}", agent.workspace_entries());
}

#[tokio::test]
async fn an_unknown_frame_ends_the_input_not_the_agent() {
    let Some(agent) = Agent::start().await else { return };
    let client = AgentClient::hybrid_vsock(&agent.socket);
    let mut stream = client.attach_exec(&exec("cat; echo after"), LIMIT).await.expect("attach");
    stream.write_all(&pty::frame(42, b"??")).await.unwrap();
    // The command loses its feeder (and is killed with it); the agent keeps serving.
    let mut out = Output::default();
    let exit = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match pty::read_frame(&mut stream).await {
                Ok(Some((pty::EXIT, body))) => return Some(serde_json::from_slice::<ExecExit>(&body).unwrap()),
                Ok(Some((pty::DATA, d))) => out.stdout.push_str(&String::from_utf8_lossy(&d)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    })
    .await
    .expect("the exec ended");
    assert!(exit.as_ref().is_none_or(|e| e.exit_code != Some(0)), "{exit:?}");
    let result = client.exec(&exec("echo still-here"), LIMIT).await.expect("the agent still serves");
    assert_eq!(result.stdout, "still-here\n");
}
