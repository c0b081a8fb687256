//! Console log tails and exec log pages.

use std::io::{Read, Seek, SeekFrom};

use crate::error::ResultExt;
use crate::services::vms::find;
use crate::views::{ConsoleLogView, ExecLogPage, ExecLogView};
use crate::{ApiError, AppState};

/// Bytes read from the end of a console log.
const TAIL_WINDOW: u64 = 256 << 10;

/// The last `tail` lines (1..=1000, default 200) of the VM's console log.
pub async fn console_tail(state: &AppState, vm_id: &str, tail: Option<u32>) -> Result<ConsoleLogView, ApiError> {
    find(state, vm_id).await?;
    let tail = tail.unwrap_or(200).clamp(1, crate::views::MAX_CONSOLE_TAIL) as usize;
    let path = state.runtime.console_log(vm_id);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleLogView { lines: vec![], truncated: false })
        }
        Err(e) => return Err(ApiError::internal(format!("cannot open {}", path.display()), e)),
    };
    let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start)).with_context(|| format!("cannot seek in {}", path.display()))?;
    let mut buf = Vec::new();
    file.take(TAIL_WINDOW).read_to_end(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // partial first line
    }
    let truncated = start > 0 || lines.len() > tail;
    let lines = lines[lines.len().saturating_sub(tail)..].iter().map(|l| l.to_string()).collect();
    Ok(ConsoleLogView { lines, truncated })
}

/// Newest-first exec log entries (1..=200, default 50).
pub async fn exec_logs(state: &AppState, vm_id: &str, limit: Option<u32>) -> Result<ExecLogPage, ApiError> {
    find(state, vm_id).await?;
    let (rows, has_more) =
        state.store.list_exec_logs(vm_id, limit.unwrap_or(50).clamp(1, crate::views::MAX_EXEC_LOGS_LIMIT)).await?;
    let entries = rows
        .into_iter()
        .map(|r| ExecLogView {
            id: r.id,
            kind: r.kind,
            exec_id: r.exec_id,
            input: r.input,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            output_preview: r.output_preview,
            created_at: r.created_at,
        })
        .collect();
    Ok(ExecLogPage { entries, has_more })
}
