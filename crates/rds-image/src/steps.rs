//! Step-by-step progress lines with elapsed times, sent to the caller's progress callback.

use std::time::Instant;

/// Reports each build step when it starts and how long it took when the next one begins.
pub(crate) struct Steps<'a> {
    report: &'a mut dyn FnMut(&str),
    started: Instant,
    current: Option<(String, Instant)>,
}

impl<'a> Steps<'a> {
    pub(crate) fn new(report: &'a mut dyn FnMut(&str)) -> Self {
        Steps { report, started: Instant::now(), current: None }
    }

    /// Finishes the current step (if any) and announces `what`.
    pub(crate) fn begin(&mut self, what: &str) {
        self.finish();
        let line = format!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
        (self.report)(&line);
        self.current = Some((what.to_string(), Instant::now()));
    }

    /// A detail line within the current step.
    pub(crate) fn note(&mut self, what: &str) {
        let line = format!("[{:>6.1}s]   {what}", self.started.elapsed().as_secs_f64());
        (self.report)(&line);
    }

    /// Reports the current step's duration.
    pub(crate) fn finish(&mut self) {
        if let Some((what, since)) = self.current.take() {
            let line = format!(
                "[{:>6.1}s]   done: {what} ({:.1}s)",
                self.started.elapsed().as_secs_f64(),
                since.elapsed().as_secs_f64()
            );
            (self.report)(&line);
        }
    }
}
