//! Interactive terminals: sessions live in a VM's agent; the manager checks the VM and the
//! caller, relays a WebSocket to the session's frames, and issues single-use attach tokens for
//! browsers (which cannot set `X-API-Key` on a WebSocket).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use rds_agent_client::PtyStream;
use rds_proto::pty::{self, PtyExit, PtyInfo, PtyRequest, PtySignal, PtySize};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::services::exec::OrAgentError;
use crate::services::vms::find_running;
use crate::{ApiError, AppState};

/// How long an attach token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens outstanding at once (per manager); older ones are dropped first beyond it.
const MAX_TOKENS: usize = 4096;
/// Time allowed for the agent's terminal calls.
const CALL_LIMIT: Duration = Duration::from_secs(15);

/// WebSocket close codes the relay uses.
pub mod close {
    /// The session's process exited (its exit frame was sent first).
    pub const NORMAL: u16 = 1000;
    /// The client sent a frame the relay does not understand.
    pub const UNSUPPORTED: u16 = 1003;
    /// The client sent a well-formed frame with a bad value.
    pub const POLICY: u16 = 1008;
    /// The VM's side of the session went away without an exit.
    pub const INTERNAL: u16 = 1011;
}

/// A single-use attach token, for `GET /v1/vms/{id}/pty?token=`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PtyToken {
    pub token: String,
    /// Unix milliseconds after which it is refused.
    pub expires_at: u64,
}

/// Outstanding tokens: SHA-256 of the token → (VM id, expiry in Unix ms).
#[derive(Default)]
pub struct PtyTokens(Mutex<HashMap<[u8; 32], (String, u64)>>);

impl PtyTokens {
    /// A new token for attaching to VM `vm_id`.
    pub fn issue(&self, vm_id: &str) -> PtyToken {
        self.issue_at(vm_id, unix_ms())
    }

    fn issue_at(&self, vm_id: &str, now: u64) -> PtyToken {
        let token = format!("rdspty_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let expires_at = now + TOKEN_TTL.as_millis() as u64;
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, exp)| *exp > now);
        if map.len() >= MAX_TOKENS {
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(Sha256::digest(token.as_bytes()).into(), (vm_id.to_string(), expires_at));
        PtyToken { token, expires_at }
    }

    /// Uses up `token` for VM `vm_id`: true once, while it is valid and for that VM only.
    pub fn redeem(&self, token: &str, vm_id: &str) -> bool {
        self.redeem_at(token, vm_id, unix_ms())
    }

    fn redeem_at(&self, token: &str, vm_id: &str, now: u64) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&hash) {
            Some((vm, exp)) if vm == vm_id && *exp > now => {
                map.remove(&hash);
                true
            }
            _ => false,
        }
    }
}

/// Issues an attach token for a RUNNING VM.
pub async fn issue_token(state: &AppState, vm_id: &str) -> Result<PtyToken, ApiError> {
    find_running(state, vm_id).await?;
    Ok(state.pty_tokens.issue(vm_id))
}

/// The terminal sessions of a RUNNING VM.
pub async fn list(state: &AppState, vm_id: &str) -> Result<Vec<PtyInfo>, ApiError> {
    find_running(state, vm_id).await?;
    state.agent.vm(vm_id).ptys(CALL_LIMIT).await.or_agent_error(state, vm_id).await
}

/// Ends a terminal session.
pub async fn kill(state: &AppState, vm_id: &str, session_id: &str) -> Result<(), ApiError> {
    check_session_id(session_id)?;
    find_running(state, vm_id).await?;
    state.agent.vm(vm_id).kill_pty(session_id, CALL_LIMIT).await.or_agent_error(state, vm_id).await
}

/// What `GET /v1/vms/{id}/pty` asks for.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// Re-attach to this session (its output since it started, up to 64 KiB, is replayed);
    /// without it a new session starts.
    pub session: Option<String>,
    /// Size of a new session's terminal (default 80×24).
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// A command a new session runs instead of a login shell.
    pub cmd: Option<String>,
    /// A token from `POST /v1/vms/{id}/pty-tokens`, for clients that cannot send `X-API-Key`.
    pub token: Option<String>,
}

/// Attaches to (or first opens) a session of a RUNNING VM: the session's id and its terminal.
pub async fn open_and_attach(state: &AppState, vm_id: &str, q: &AttachQuery) -> Result<(String, PtyStream), ApiError> {
    find_running(state, vm_id).await?;
    let agent = state.agent.vm(vm_id);
    let id = match &q.session {
        Some(id) => {
            if q.cols.is_some() || q.rows.is_some() || q.cmd.is_some() {
                return Err(ApiError::BadRequest(
                    "invalid query: `cols`, `rows` and `cmd` start a new session; re-attaching takes `session` alone \
                     (send a resize message)"
                        .into(),
                ));
            }
            check_session_id(id)?;
            id.clone()
        }
        None => {
            let open = PtyRequest { cols: q.cols, rows: q.rows, cmd: q.cmd.clone(), ..PtyRequest::default() };
            agent.open_pty(&open, CALL_LIMIT).await.or_agent_error(state, vm_id).await?.session_id
        }
    };
    let stream = agent.attach_pty(&id, CALL_LIMIT).await.or_agent_error(state, vm_id).await?;
    Ok((id, stream))
}

/// A control message from a WebSocket client (a text frame).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Control {
    Resize { cols: u16, rows: u16 },
    Signal { signal: String },
}

/// Relays WebSocket `socket` and the session's terminal until either ends.
pub async fn relay(mut socket: WebSocket, session_id: String, stream: PtyStream) {
    let hello = serde_json::json!({"type": "session", "sessionId": session_id});
    if socket.send(Message::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    let (mut agent_rd, mut agent_wr) = tokio::io::split(stream);
    let (mut tx, mut rx) = socket.split();
    let closing = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if send_data(&mut agent_wr, &bytes).await.is_err() {
                        break Some((close::INTERNAL, "the session's terminal went away".to_string()));
                    }
                }
                Some(Ok(Message::Text(text))) => match control_frame(text.as_str()) {
                    Ok(frame) => {
                        if agent_wr.write_all(&frame).await.is_err() {
                            break Some((close::INTERNAL, "the session's terminal went away".to_string()));
                        }
                    }
                    Err(bad) => break Some(bad),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // The client left: the session keeps running for a later attach.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            },
            frame = pty::read_frame(&mut agent_rd) => match frame {
                Ok(Some((pty::DATA, data))) => {
                    if tx.send(Message::Binary(data.into())).await.is_err() {
                        break None;
                    }
                }
                Ok(Some((pty::EXIT, body))) => {
                    let exit: PtyExit = serde_json::from_slice(&body).unwrap_or(PtyExit { exit_code: None, signal: None });
                    let mut msg = serde_json::json!({"type": "exit", "exitCode": exit.exit_code});
                    if let Some(signal) = exit.signal {
                        msg["signal"] = signal.into();
                    }
                    let _ = tx.send(Message::Text(msg.to_string().into())).await;
                    break Some((close::NORMAL, "the session ended".to_string()));
                }
                _ => break Some((close::INTERNAL, "the session's terminal went away".to_string())),
            },
        }
    };
    if let Some((code, reason)) = closing {
        let _ = tx.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }
    let _ = agent_wr.shutdown().await;
}

/// A client's bytes as [`pty::DATA`] frames to the agent.
pub(crate) async fn send_data<W: tokio::io::AsyncWrite + Unpin>(agent: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    for chunk in bytes.chunks(pty::MAX_FRAME) {
        agent.write_all(&pty::frame(pty::DATA, chunk)).await?;
    }
    Ok(())
}

/// The agent frame for a client's text message, or the close code and reason it earns.
fn control_frame(text: &str) -> Result<Vec<u8>, (u16, String)> {
    let control: Control = serde_json::from_str(text).map_err(|e| {
        (close::UNSUPPORTED, truncate(format!("a text message must be a resize or signal message: {e}")))
    })?;
    Ok(match control {
        Control::Resize { cols, rows } => {
            let size = PtySize { cols, rows }.check().map_err(|e| (close::POLICY, e))?;
            pty::frame(pty::RESIZE, &serde_json::to_vec(&size).unwrap_or_default())
        }
        Control::Signal { signal } => {
            if !pty::SIGNALS.contains(&signal.strip_prefix("SIG").unwrap_or(&signal)) {
                return Err((
                    close::POLICY,
                    truncate(format!("invalid field `signal`: {signal:?} is not one of {}", pty::SIGNALS.join(", "))),
                ));
            }
            pty::frame(pty::SIGNAL, &serde_json::to_vec(&PtySignal { signal }).unwrap_or_default())
        }
    })
}

/// Close reasons must fit a control frame (123 bytes).
pub(crate) fn truncate(mut reason: String) -> String {
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Session ids are the agent's UUIDs: anything else names no session.
fn check_session_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::NotFound(format!("terminal session `{id}` does not exist")));
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once_and_only_for_its_vm() {
        let tokens = PtyTokens::default();
        let t = tokens.issue("vm-a");
        assert!(t.token.starts_with("rdspty_") && t.token.len() > 60);
        assert!(!tokens.redeem(&t.token, "vm-b"));
        assert!(tokens.redeem(&t.token, "vm-a"));
        assert!(!tokens.redeem(&t.token, "vm-a"));
        assert!(!tokens.redeem("rdspty_made_up", "vm-a"));
    }

    #[test]
    fn a_token_expires_after_its_ttl() {
        let tokens = PtyTokens::default();
        let t = tokens.issue_at("vm-a", 1_000);
        assert_eq!(t.expires_at, 1_000 + TOKEN_TTL.as_millis() as u64);
        assert!(!tokens.redeem_at(&t.token, "vm-a", t.expires_at));
        let t = tokens.issue_at("vm-a", 1_000);
        assert!(tokens.redeem_at(&t.token, "vm-a", t.expires_at - 1));
    }

    #[test]
    fn bad_control_messages_get_close_codes() {
        assert_eq!(control_frame("nope").unwrap_err().0, close::UNSUPPORTED);
        assert_eq!(control_frame(r#"{"type":"dance"}"#).unwrap_err().0, close::UNSUPPORTED);
        assert_eq!(control_frame(r#"{"type":"resize","cols":0,"rows":9}"#).unwrap_err().0, close::POLICY);
        assert_eq!(control_frame(r#"{"type":"signal","signal":"SEGV"}"#).unwrap_err().0, close::POLICY);
        assert_eq!(control_frame(r#"{"type":"signal","signal":"SIGINT"}"#).unwrap()[0], pty::SIGNAL);
        assert!(control_frame(&format!("{{\"x\":\"{}\"}}", "é".repeat(200))).unwrap_err().1.len() <= 120);
    }
}
