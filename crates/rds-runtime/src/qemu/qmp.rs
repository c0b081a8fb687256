//! A minimal QMP (QEMU Machine Protocol) client: one command per connection, enough for
//! `system_powerdown` and `quit`.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    tokio::time::timeout(limit, execute_inner(path, command)).await.map_err(|_| QmpError::Timeout)?
}

async fn execute_inner(path: &Path, command: &str) -> Result<(), QmpError> {
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let greeting = read_message(&mut lines).await?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::Protocol(format!("expected a QMP greeting, got {greeting}")));
    }
    for cmd in ["qmp_capabilities", command] {
        let request = serde_json::json!({ "execute": cmd }).to_string() + "\n";
        write.write_all(request.as_bytes()).await?;
        loop {
            let reply = read_message(&mut lines).await?;
            if reply.get("return").is_some() {
                break;
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Protocol(format!("{cmd}: {err}")));
            }
            // Anything else is an asynchronous event (e.g. POWERDOWN): skip it.
        }
    }
    Ok(())
}

/// Reads one JSON message (QMP sends one per line).
async fn read_message(lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<serde_json::Value, QmpError> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut *lines).take(MAX_LINE as u64).read_line(&mut line).await?;
        if n == 0 {
            return Err(QmpError::Protocol("QEMU closed the QMP connection".into()));
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    serde_json::from_str(line.trim()).map_err(|e| QmpError::Protocol(format!("bad QMP message ({e}): {}", line.trim())))
}
