//! `GET /v1/vms/{id}/exec/ws`: a shell command fed stdin while it runs, over a WebSocket.
//!
//! The client's first message is the [`ExecRequest`] (text, JSON, without `stdin` or `execId`);
//! then binary messages are stdin, and text messages `{"type":"eof"}` (close stdin) and
//! `{"type":"signal","signal":"INT"}`. The server sends the events of a streamed exec as text
//! messages (`stdout`, `stderr`, then `exit`) and closes with 1000; a request it refuses gets
//! `{"type":"error","status","message"}` and a close with 1008. A client that leaves before
//! the exit takes the command with it.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use rds_peer::secrets::SecretEnv;
use rds_proto::pty::{self, PtySignal};
use rds_proto::{ExecEvent, ExecExit, ExecRequest};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::services::exec::{call_limit, log_exec, OrAgentError};
use crate::services::peers::{secrets_of, with_secrets};
use crate::services::ptys::{close, send_data};
use crate::services::vms::find_running;
use crate::{ApiError, AppState};

/// How long a client has to send its request after connecting.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client's text message once the command runs.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Control {
    Eof,
    Signal { signal: String },
}

/// Serves one connected client of VM `vm_id`'s exec socket.
pub async fn serve(state: AppState, vm_id: String, mut socket: WebSocket) {
    let first = tokio::time::timeout(REQUEST_WAIT, socket.recv()).await;
    let request = match first {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ExecRequest>(text.as_str())
            .map_err(|e| ApiError::BadRequest(format!("invalid exec request: {e}"))),
        Ok(Some(Ok(_))) => Err(ApiError::BadRequest("the first message must be the exec request as JSON text".into())),
        Ok(_) => return,
        Err(_) => Err(ApiError::BadRequest(format!("no exec request within {}s", REQUEST_WAIT.as_secs()))),
    };
    match start(&state, &vm_id, request).await {
        Ok((stream, secrets)) => relay(socket, stream, secrets).await,
        Err(e) => {
            let msg = json!({"type": "error", "status": e.status_and_code().0.as_u16(), "message": e.to_string()});
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            let reason = "the exec request was refused".into();
            let _ = socket.send(Message::Close(Some(CloseFrame { code: close::POLICY, reason }))).await;
        }
    }
}

/// Checks the request and starts it in the agent: the command's frames and the VM's secrets.
async fn start(
    state: &AppState,
    vm_id: &str,
    request: Result<ExecRequest, ApiError>,
) -> Result<(rds_agent_client::PtyStream, SecretEnv), ApiError> {
    let req = request?;
    call_limit(state, req.timeout_ms)?;
    let vm = find_running(state, vm_id).await?;
    let secrets = secrets_of(state, &vm)?;
    let to_agent = ExecRequest { env: with_secrets(req.env.clone(), &secrets), ..req.clone() };
    let stream = state.agent.vm(vm_id).attach_exec(&to_agent, CONNECT_LIMIT).await.or_agent_error(state, vm_id).await?;
    let input = json!({"cmd": req.cmd, "cwd": req.cwd, "stdinStreamed": true, "timeoutMs": req.timeout_ms});
    log_exec(state, vm_id, "exec", None, input, None, std::time::Instant::now(), "", "").await;
    Ok((stream, secrets))
}

/// Time allowed to reach the agent and have the command started.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Relays the client's input to the command and its output back until the command exits. A
/// provider's output (it has secrets) is held back and sent redacted at the exit, as a streamed
/// exec does, since a secret split across two chunks would slip past redaction.
async fn relay(socket: WebSocket, stream: rds_agent_client::PtyStream, secrets: SecretEnv) {
    let (mut agent_rd, mut agent_wr) = tokio::io::split(stream);
    let (mut tx, mut rx) = socket.split();
    let hold_back = !secrets.is_empty();
    let (mut held_out, mut held_err) = (String::new(), String::new());
    let closing = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if send_data(&mut agent_wr, &bytes).await.is_err() {
                        break Some((close::INTERNAL, "the command's VM went away".to_string()));
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let frame = match serde_json::from_str::<Control>(text.as_str()) {
                        Ok(Control::Eof) => pty::frame(pty::EOF, b""),
                        Ok(Control::Signal { signal }) if pty::SIGNALS.contains(&signal.strip_prefix("SIG").unwrap_or(&signal)) => {
                            pty::frame(pty::SIGNAL, &serde_json::to_vec(&PtySignal { signal }).unwrap_or_default())
                        }
                        Ok(Control::Signal { signal }) => break Some((close::POLICY,
                            format!("invalid field `signal`: {signal:?} is not one of {}", pty::SIGNALS.join(", ")))),
                        Err(_) => break Some((close::UNSUPPORTED, "a text message must be an eof or signal message".into())),
                    };
                    if agent_wr.write_all(&frame).await.is_err() {
                        break Some((close::INTERNAL, "the command's VM went away".to_string()));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // The client left: dropping the agent connection ends the command.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            },
            frame = pty::read_frame(&mut agent_rd) => {
                let event = match frame {
                    Ok(Some((pty::DATA, data))) if hold_back => { held_out.push_str(&String::from_utf8_lossy(&data)); continue }
                    Ok(Some((pty::STDERR, data))) if hold_back => { held_err.push_str(&String::from_utf8_lossy(&data)); continue }
                    Ok(Some((pty::DATA, data))) => ExecEvent::Stdout { data: String::from_utf8_lossy(&data).into_owned() },
                    Ok(Some((pty::STDERR, data))) => ExecEvent::Stderr { data: String::from_utf8_lossy(&data).into_owned() },
                    Ok(Some((pty::EXIT, body))) => {
                        let exit: ExecExit = serde_json::from_slice(&body).unwrap_or_default();
                        let mut events = Vec::new();
                        for (data, stdout) in [(&held_out, true), (&held_err, false)] {
                            if !data.is_empty() {
                                let data = secrets.redact(data);
                                events.push(if stdout { ExecEvent::Stdout { data } } else { ExecEvent::Stderr { data } });
                            }
                        }
                        events.push(ExecEvent::Exit(exit));
                        for event in events {
                            if send_event(&mut tx, &event).await.is_err() {
                                break;
                            }
                        }
                        break Some((close::NORMAL, "the command exited".to_string()));
                    }
                    _ => break Some((close::INTERNAL, "the command's VM went away".to_string())),
                };
                if send_event(&mut tx, &event).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = closing {
        let reason = crate::services::ptys::truncate(reason);
        let _ = tx.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }
    let _ = agent_wr.shutdown().await;
}

async fn send_event<S: SinkExt<Message> + Unpin>(tx: &mut S, event: &ExecEvent) -> Result<(), S::Error> {
    let text = serde_json::to_string(event).expect("events always serialise");
    tx.send(Message::Text(text.into())).await
}
