//! A progress bar on stderr for uploads, drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Redraws at most this often (and always at the end).
const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: usize = 30;

/// A progress callback drawing `label`'s bar, or `None` when stderr is not a terminal.
pub fn bar(label: String) -> Option<rds_client::Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let last = Mutex::new(None::<Instant>);
    Some(Arc::new(move |sent: u64, total: u64| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let done = sent >= total;
        if !done && last.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{label} {}", render(sent, total));
        if done {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }))
}

/// `[#####.....]  45%  12.3/27.0 MiB`.
fn render(sent: u64, total: u64) -> String {
    let frac = if total == 0 { 1.0 } else { (sent as f64 / total as f64).min(1.0) };
    let filled = (frac * WIDTH as f64).round() as usize;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    format!(
        "[{}{}] {:>3.0}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        frac * 100.0,
        mib(sent),
        mib(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_bytes_sent() {
        assert_eq!(render(0, 4 << 20), format!("[{}]   0%  0.0/4.0 MiB", ".".repeat(WIDTH)));
        assert_eq!(render(2 << 20, 4 << 20), format!("[{}{}]  50%  2.0/4.0 MiB", "#".repeat(15), ".".repeat(15)));
        assert_eq!(render(4 << 20, 4 << 20), format!("[{}] 100%  4.0/4.0 MiB", "#".repeat(WIDTH)));
        assert_eq!(render(0, 0), format!("[{}] 100%  0.0/0.0 MiB", "#".repeat(WIDTH)));
    }
}
