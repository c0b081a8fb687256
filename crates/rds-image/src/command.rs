//! Running host tools (apt, dpkg-deb, mmdebstrap, mkfs.ext4, ...) with errors that say what to fix.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::ImageError;

/// Fails with an install hint when `tool` is not on `PATH`.
pub(crate) fn require_tool(tool: &str, package: &str) -> Result<(), ImageError> {
    if rds_host::on_path(tool) {
        Ok(())
    } else {
        Err(ImageError::MissingTool { tool: tool.to_string(), package: package.to_string() })
    }
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit becomes [`ImageError::CommandFailed`].
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let printable = printable(cmd);
    tracing::debug!(command = %printable, "running");
    let output = cmd.stdin(Stdio::null()).output().map_err(|e| ImageError::CommandFailed {
        command: printable.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(ImageError::CommandFailed {
        command: printable,
        status: output.status.to_string(),
        stderr: tail(&String::from_utf8_lossy(&output.stderr), 2000),
    })
}

/// Runs `program args...` inside `root` via `chroot`.
pub(crate) fn run_in_chroot(root: &Path, program: &str, args: &[&str]) -> Result<String, ImageError> {
    run(Command::new("chroot").arg(root).arg(program).args(args).env("LC_ALL", "C.UTF-8"))
}

fn printable(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The last `max` bytes of `text` (on a char boundary): errors of long-running tools are at the end.
fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}
