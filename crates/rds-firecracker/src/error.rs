//! Why a call to Firecracker's API failed.

use std::path::PathBuf;
use std::time::Duration;

/// Why a call to Firecracker's API failed; each names the request it was part of.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Firecracker refused the request (4xx/5xx) and said why.
    #[error("firecracker {method} {path}: {status}: {fault_message}")]
    Fault {
        /// HTTP method of the request.
        method: &'static str,
        /// Its path.
        path: String,
        /// Firecracker's status code.
        status: u16,
        /// Its `fault_message` (or the body as sent when it carried none).
        fault_message: String,
    },
    /// The API socket could not be connected to (missing, or nobody listening).
    #[error("cannot connect to firecracker's API socket {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No complete answer within the client's per-call timeout.
    #[error("firecracker {method} {path}: no answer within {after:?}")]
    Timeout {
        /// HTTP method of the request.
        method: &'static str,
        /// Its path.
        path: String,
        /// The time waited.
        after: Duration,
    },
    /// The HTTP exchange failed after connecting (the process died, the connection broke).
    #[error("firecracker {method} {path}: {source}")]
    Http {
        /// HTTP method of the request.
        method: &'static str,
        /// Its path.
        path: String,
        /// Hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// A success answer whose body is not the JSON expected.
    #[error("firecracker {method} {path}: unexpected answer {body:?}: {source}")]
    Decode {
        /// HTTP method of the request.
        method: &'static str,
        /// Its path.
        path: String,
        /// The body (truncated).
        body: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// An answer larger than any Firecracker sends: the process is not behaving.
    #[error("firecracker {method} {path}: answer larger than {limit} bytes")]
    TooLarge {
        /// HTTP method of the request.
        method: &'static str,
        /// Its path.
        path: String,
        /// The largest body accepted.
        limit: usize,
    },
    /// An id that would go into the request path is not one Firecracker accepts (letters, digits
    /// and `_`, at most 64); nothing was sent.
    #[error("invalid firecracker {field} {id:?}: only letters, digits and '_', 1 to 64 of them")]
    InvalidId {
        /// The field (`drive_id`, `iface_id`).
        field: &'static str,
        /// The value given.
        id: String,
    },
}

impl Error {
    /// Firecracker's `fault_message` when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            Error::Fault { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }

    /// The HTTP status when Firecracker refused the request.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Fault { status, .. } => Some(*status),
            _ => None,
        }
    }
}
