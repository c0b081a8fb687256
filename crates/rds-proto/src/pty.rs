//! Interactive terminals: the bodies of the PTY routes, and the frames an attached terminal's
//! byte stream carries between the agent and the host.
//!
//! After `GET /pty/attach?id=` is upgraded, both directions carry frames: one type byte, a
//! big-endian `u32` payload length, the payload. [`DATA`] carries terminal bytes both ways; the
//! host sends [`RESIZE`] and [`SIGNAL`] with a JSON payload; the agent sends [`EXIT`] (a JSON
//! [`PtyExit`]) once the session's process has exited and its output was sent, then closes.
//!
//! `POST /exec/attach` (`Upgrade: rds-exec`) uses the same framing for a command with piped
//! stdio: the host sends [`DATA`] (stdin), [`EOF`] (close stdin) and [`SIGNAL`]; the agent sends
//! [`DATA`] (stdout), [`STDERR`] and, last, [`EXIT`] with an [`ExecExit`](crate::ExecExit).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{coerce, EnvMap};

/// Terminal bytes (output from the agent, input from the host).
pub const DATA: u8 = 0;
/// Host → agent: a [`PtySize`] as JSON.
pub const RESIZE: u8 = 1;
/// Host → agent: a [`PtySignal`] as JSON.
pub const SIGNAL: u8 = 2;
/// Agent → host: a [`PtyExit`] as JSON; the last frame.
pub const EXIT: u8 = 3;
/// Agent → host, attached exec: stderr bytes.
pub const STDERR: u8 = 4;
/// Host → agent, attached exec: no more stdin (empty payload).
pub const EOF: u8 = 5;
/// Largest frame payload either side sends or accepts.
pub const MAX_FRAME: usize = 64 << 10;
/// Upgrade protocol name of `GET /pty/attach`.
pub const UPGRADE: &str = "rds-pty";
/// Upgrade protocol name of `POST /exec/attach`.
pub const EXEC_UPGRADE: &str = "rds-exec";

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: u16,
    #[schema(minimum = 1, maximum = 1000)]
    pub rows: u16,
}

impl PtySize {
    /// Columns and rows must each be 1..=1000.
    pub fn check(self) -> Result<PtySize, String> {
        for (field, v) in [("cols", self.cols), ("rows", self.rows)] {
            if !(1..=1000).contains(&v) {
                return Err(format!("invalid field `{field}`: must be from 1 to 1000"));
            }
        }
        Ok(self)
    }
}

impl Default for PtySize {
    fn default() -> Self {
        PtySize { cols: 80, rows: 24 }
    }
}

/// Signals a client may send, without their `SIG` prefix.
pub const SIGNALS: [&str; 9] = ["INT", "TERM", "KILL", "HUP", "QUIT", "TSTP", "CONT", "USR1", "USR2"];

/// A signal for a terminal's foreground process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtySignal {
    /// One of [`SIGNALS`] (a `SIG` prefix is accepted).
    pub signal: String,
}

/// Start a terminal session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PtyRequest {
    /// Initial size (default 80×24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// A command run by the shell instead of an interactive login shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Working directory under `/workspace` (default: the workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvMap>,
    /// Milliseconds with nobody attached after which the session is ended (default 900000; at
    /// least 1000, at most one day).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "coerce::opt_u64")]
    #[schema(minimum = 1000, maximum = 86400000)]
    pub idle_timeout_ms: Option<u64>,
}

/// How a session's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PtyExit {
    /// Exit status; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// A terminal session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PtyInfo {
    pub session_id: String,
    pub cols: u16,
    pub rows: u16,
    /// Unix milliseconds (the guest's clock).
    pub created_at: u64,
    /// Clients attached now.
    pub attached: u32,
    pub idle_timeout_ms: u64,
    /// Set once its process has exited (the session stays until its exit was delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<PtyExit>,
}

/// Encodes one frame.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame from `r`; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut bytes = frame(DATA, b"hi");
        bytes.extend(frame(EXIT, b"{}"));
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.unwrap(), Some((DATA, b"hi".to_vec())));
        assert_eq!(read_frame(&mut r).await.unwrap(), Some((EXIT, b"{}".to_vec())));
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
        let mut huge = vec![DATA];
        huge.extend(((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(read_frame(&mut &huge[..]).await.is_err());
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(PtySize { cols: 0, rows: 10 }.check().unwrap_err().contains("`cols`"));
        assert!(PtySize { cols: 10, rows: 1001 }.check().unwrap_err().contains("`rows`"));
        assert_eq!(PtySize { cols: 100, rows: 30 }.check(), Ok(PtySize { cols: 100, rows: 30 }));
    }
}
