//! A minimal QMP (QEMU Machine Protocol) client: [`execute`] runs one command per connection
//! (`system_powerdown`, `quit`); a [`Session`] runs several on one (a snapshot's stop, migrate
//! and cont), and can hand QEMU a file descriptor (`getfd`).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Longest QMP line accepted (greeting and replies are small).
const MAX_LINE: usize = 64 * 1024;

/// Why a QMP command failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Socket I/O failed (QEMU gone, socket missing).
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU said something unexpected or reported an error.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU did not answer in time.
    #[error("QMP timed out")]
    Timeout,
}

/// Connects to the QMP socket at `path`, negotiates capabilities and runs `command` (no arguments).
pub async fn execute(path: &Path, command: &str, limit: Duration) -> Result<(), QmpError> {
    tokio::time::timeout(limit, async {
        let mut session = Session::connect(path).await?;
        session.call(command, Value::Null).await.map(drop)
    })
    .await
    .map_err(|_| QmpError::Timeout)?
}

/// One QMP connection, capabilities negotiated.
pub struct Session {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Session {
    /// Connects to the QMP socket at `path` and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Session, QmpError> {
        let stream = UnixStream::connect(path).await?;
        let mut session = Session { stream, buf: Vec::new() };
        let greeting = session.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("expected a QMP greeting, got {greeting}")));
        }
        session.call("qmp_capabilities", Value::Null).await?;
        Ok(session)
    }

    /// Runs `command` with `arguments` (`Null` for none) and returns its `return` value.
    pub async fn call(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let request = request(command, arguments);
        self.stream.write_all(request.as_bytes()).await?;
        self.reply(command).await
    }

    /// Runs `command` with `fd` attached (SCM_RIGHTS), as `getfd` needs.
    pub async fn call_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        let request = request(command, arguments);
        let raw = [fd.as_raw_fd()];
        loop {
            self.stream.writable().await?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(request.as_bytes())];
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
                nix::sys::socket::sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) if n == request.len() => break,
                Ok(n) => {
                    // The descriptor went with the first bytes; the rest is plain.
                    self.stream.write_all(&request.as_bytes()[n..]).await?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.reply(command).await
    }

    async fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let mut reply = self.read_message().await?;
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Protocol(format!("{command}: {err}")));
            }
            // Anything else is an asynchronous event (e.g. STOP): skip it.
        }
    }

    /// Reads one JSON message (QMP sends one per line).
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(text.trim())
                    .map_err(|e| QmpError::Protocol(format!("bad QMP message ({e}): {}", text.trim())));
            }
            if self.buf.len() > MAX_LINE {
                return Err(QmpError::Protocol("QMP line too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(QmpError::Protocol("QEMU closed the QMP connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn request(command: &str, arguments: Value) -> String {
    let mut request = serde_json::json!({ "execute": command });
    if !arguments.is_null() {
        request["arguments"] = arguments;
    }
    request.to_string() + "\n"
}
