//! An attached exec: a command whose stdin arrives while it runs, over the frames of
//! [`rds_proto::pty`] on an upgraded connection (`POST /exec/attach`).
//!
//! The host sends stdin ([`pty::DATA`]), its end ([`pty::EOF`]) and signals for the command's
//! process group ([`pty::SIGNAL`]); the agent sends stdout ([`pty::DATA`]) and stderr
//! ([`pty::STDERR`]) as they come and, last, the [`ExecExit`]. A host that goes away before the
//! command ended takes the command with it: nobody is left to feed or read it.

use rds_proto::pty::{self, PtySignal};
use rds_proto::ExecExit;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::capture::Pipe;
use super::Running;

/// Stdin chunks buffered between the connection and the command's pipe.
const STDIN_BACKLOG: usize = 8;

/// Runs `running` (started with piped stdin) with its stdio on `stream` until it ends.
pub async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(mut running: Running, stream: S) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_BACKLOG);
    running.stream_stdin(stdin_rx);
    let pid = running.pid();
    let (live_tx, mut live_rx) = mpsc::unbounded_channel();
    let finished = tokio::spawn(running.finish(Some(live_tx)));
    let (gone_tx, gone) = oneshot::channel::<()>();

    let input = tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        loop {
            match pty::read_frame(&mut rd).await {
                Ok(Some((pty::DATA, chunk))) => {
                    if let Some(tx) = &stdin {
                        if tx.send(chunk).await.is_err() {
                            stdin = None; // the command closed its stdin
                        }
                    }
                }
                Ok(Some((pty::EOF, _))) => stdin = None,
                Ok(Some((pty::SIGNAL, body))) => {
                    let signal = serde_json::from_slice::<PtySignal>(&body)
                        .ok()
                        .and_then(|s| crate::pty::signal_named(&s.signal));
                    match signal {
                        // A group that already exited is not the host's fault.
                        Some(signal) => drop(nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal)),
                        None => break,
                    }
                }
                // An unknown frame, a broken one, or the host hung up.
                _ => break,
            }
        }
        let _ = gone_tx.send(());
    });

    // Output as it comes; once the host is gone the command is killed and its output dropped.
    let mut gone = Some(gone);
    let mut connected = true;
    loop {
        tokio::select! {
            chunk = live_rx.recv() => match chunk {
                Some((pipe, data)) if connected => {
                    let kind = if pipe == Pipe::Stdout { pty::DATA } else { pty::STDERR };
                    for piece in data.as_bytes().chunks(pty::MAX_FRAME) {
                        if wr.write_all(&pty::frame(kind, piece)).await.is_err() {
                            connected = false;
                            break;
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = async { gone.as_mut().expect("polled only while set").await }, if gone.is_some() => {
                gone = None;
                super::session::kill_session(pid).await;
            }
        }
    }
    let exit = match finished.await {
        Ok(done) => ExecExit::from(&done.exec_result()),
        Err(_) => return,
    };
    input.abort();
    if connected {
        let body = serde_json::to_vec(&exit).expect("an exit always serialises");
        if wr.write_all(&pty::frame(pty::EXIT, &body)).await.is_ok() && wr.flush().await.is_ok() {
            let _ = wr.shutdown().await;
        }
    }
}
