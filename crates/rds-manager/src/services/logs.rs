//! VM log tails and exec log pages.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rds_runtime::LogKind;

use crate::services::vms::find;
use crate::views::{ExecLogPage, ExecLogView, LogView};
use crate::{ApiError, AppState};

/// Bytes read from the end of a log.
const TAIL_WINDOW: u64 = 256 << 10;

/// Lines returned when `tail` is not given.
const DEFAULT_TAIL: i64 = 200;

/// The log `name` (`?type=`) means: ours, and the original's file names. The original's stdout
/// and stderr logs are both in our console log, which captures the VMM's stdout and stderr.
fn log_kind(name: &str) -> Option<LogKind> {
    match name {
        "console" | "firecracker.stdout.log" | "firecracker.stderr.log" => Some(LogKind::Console),
        "firecracker" | "firecracker.log" => Some(LogKind::Vmm),
        "metrics" => Some(LogKind::Metrics),
        _ => None,
    }
}

/// The last `tail` lines (clamped to 1..=1000, default 200) of the VM's log of type `kind`
/// (default `console`), read from at most the last 256 KiB of the file. A log the runtime does
/// not keep, or that does not exist yet, answers no lines.
pub async fn tail(state: &AppState, vm_id: &str, kind: Option<String>, tail: Option<i64>) -> Result<LogView, ApiError> {
    let name = kind.unwrap_or_else(|| "console".into());
    let log = log_kind(&name).ok_or_else(|| {
        ApiError::BadRequest(
            "Invalid log type: `type` must be console, firecracker or metrics (or the original's firecracker.log, \
             firecracker.stdout.log, firecracker.stderr.log)"
                .into(),
        )
    })?;
    find(state, vm_id).await?;
    let tail = tail.unwrap_or(DEFAULT_TAIL).clamp(1, crate::views::MAX_CONSOLE_TAIL as i64) as usize;
    let empty = |name: String| LogView { kind: name, lines: vec![], truncated: false, updated_at: None };
    let Some(path) = state.runtime.log_file(vm_id, log) else { return Ok(empty(name)) };
    let (lines, truncated, modified) = match read_tail(&path, tail) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(empty(name)),
        Err(e) => return Err(ApiError::internal(format!("cannot read {}", path.display()), e)),
    };
    Ok(LogView { kind: name, lines, truncated, updated_at: modified.map(iso8601_utc) })
}

/// The last `tail` lines among the last [`TAIL_WINDOW`] bytes of `path`, whether older lines were
/// left out, and the file's modification time.
fn read_tail(path: &Path, tail: usize) -> std::io::Result<(Vec<String>, bool, Option<SystemTime>)> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let start = meta.len().saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(TAIL_WINDOW).read_to_end(&mut buf)?;
    // A VMM that writes its log without O_APPEND (Firecracker) keeps its offset when the log is
    // cut at its cap: the bytes before it read back as a hole of NULs, which are not log text.
    buf.retain(|b| *b != 0);
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // partial first line
    }
    let truncated = start > 0 || lines.len() > tail;
    let lines = lines[lines.len().saturating_sub(tail)..].iter().map(|l| l.to_string()).collect();
    Ok((lines, truncated, meta.modified().ok()))
}

/// `2026-12-01T04:05:06.789Z`, the form of the original's `updatedAt`.
fn iso8601_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn updated_at_is_iso_8601_utc() {
        assert_eq!(iso8601_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day) 12:34:56.789.
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789);
        assert_eq!(iso8601_utc(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_083_199);
        assert_eq!(iso8601_utc(t), "2026-11-30T23:59:59.000Z");
    }

    #[test]
    fn log_types_are_ours_and_the_originals_file_names() {
        assert_eq!(log_kind("console"), Some(LogKind::Console));
        assert_eq!(log_kind("firecracker.stdout.log"), Some(LogKind::Console));
        assert_eq!(log_kind("firecracker.stderr.log"), Some(LogKind::Console));
        assert_eq!(log_kind("firecracker.log"), Some(LogKind::Vmm));
        assert_eq!(log_kind("firecracker"), Some(LogKind::Vmm));
        assert_eq!(log_kind("metrics"), Some(LogKind::Metrics));
        for bad in ["", "Console", "../etc/passwd", "firecracker.log "] {
            assert_eq!(log_kind(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tail_reads_only_the_last_window_and_drops_its_partial_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let line = "x".repeat(99); // 100 bytes with its newline
        let lines = (TAIL_WINDOW / 100) as usize + 50;
        std::fs::write(&path, format!("{line}\n").repeat(lines)).unwrap();
        let (got, truncated, modified) = read_tail(&path, 10_000).unwrap();
        assert!(truncated && modified.is_some());
        // 256 KiB is not a multiple of 100: the window starts mid-line, which is dropped.
        assert_eq!(got.len(), (TAIL_WINDOW / 100) as usize);
        assert!(got.iter().all(|l| *l == line));
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(read_tail(&path, 2).unwrap().0, ["b", "c"]);
        assert!(read_tail(&path, 2).unwrap().1, "more lines than the tail");
        assert!(!read_tail(&path, 3).unwrap().1);
    }
}
