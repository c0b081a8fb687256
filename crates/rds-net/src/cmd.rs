//! The one place that runs host tools (`ip`, `nft`): bounded time, captured output, typed errors.
//!
//! Links are managed by shelling out to iproute2 rather than speaking rtnetlink directly: the
//! handful of operations we need are one line each in `ip`, and this keeps the crate light.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long any single `ip`/`nft` invocation may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// A host tool failed or could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The binary could not be started (usually: not installed).
    #[error("could not run `{tool}` (is it installed and on PATH?): {source}")]
    Spawn {
        /// Tool name.
        tool: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tool ran and reported an error.
    #[error("`{tool} {args}` failed: {stderr}")]
    Failed {
        /// Tool name.
        tool: &'static str,
        /// Arguments, space-joined.
        args: String,
        /// What the tool printed on stderr.
        stderr: String,
    },
    /// The tool did not finish in time and was killed.
    #[error("`{tool} {args}` did not finish within {TOOL_TIMEOUT:?}")]
    Timeout {
        /// Tool name.
        tool: &'static str,
        /// Arguments, space-joined.
        args: String,
    },
}

impl ToolError {
    /// Whether the failure says the object is already absent (for idempotent deletes).
    pub fn is_not_found(&self) -> bool {
        match self {
            ToolError::Failed { stderr, .. } => {
                stderr.contains("Cannot find device") || stderr.contains("No such file or directory")
            }
            _ => false,
        }
    }
}

/// Runs `tool args…`, feeding `stdin` if given; returns stdout.
pub async fn run(tool: &'static str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ToolError> {
    let joined = args.join(" ");
    let mut command = Command::new(tool);
    command
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| ToolError::Spawn { tool, source })?;
    let work = async {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error surfaces as the tool's own failure below.
            let _ = pipe.write_all(input).await;
            drop(pipe);
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(TOOL_TIMEOUT, work).await {
        Ok(result) => result.map_err(|source| ToolError::Spawn { tool, source })?,
        Err(_) => return Err(ToolError::Timeout { tool, args: joined }),
    };
    if !output.status.success() {
        return Err(ToolError::Failed {
            tool,
            args: joined,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip args…`.
pub async fn ip(args: &[&str]) -> Result<String, ToolError> {
    run("ip", args, None).await
}
