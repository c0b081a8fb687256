//! Why an image build failed, in words an operator can act on.

use std::path::PathBuf;

/// Every way [`crate::build`] can fail.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host tool the build shells out to is not installed.
    #[error("`{tool}` is not installed on this host; install it with `apt-get install -y {package}`")]
    MissingTool {
        /// The executable that was looked for.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A host tool ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, for copy-paste.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What the builder was doing ("reading", "writing", ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The build options are unusable.
    #[error("invalid build options: {0}")]
    InvalidOptions(String),
    /// The Debian archive did not have what was asked for.
    #[error("Debian package resolution failed: {0}")]
    Package(String),
    /// The kernel image could not be unpacked into an ELF `vmlinux`.
    #[error("cannot extract vmlinux: {0}")]
    Vmlinux(String),
    /// A kernel module is missing or its metadata is unusable.
    #[error("kernel module problem: {0}")]
    Module(String),
    /// The agent binary cannot be placed into the image.
    #[error("agent binary {path}: {reason}")]
    Agent {
        /// Path given in the build options.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl ImageError {
    /// Wraps an I/O error with what was being done to which file.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { action, path, source }
    }
}
