//! Firecracker-style hybrid vsock.
//!
//! Every runtime exposes the guest agent the same way: a host Unix socket where the host writes
//! `CONNECT <port>\n` and reads `OK <n>\n` before speaking the application protocol
//! (Firecracker's vsock design document, "Host-initiated connections"). This crate holds both
//! halves:
//!
//! * host side: [`connect`] / [`connect_retry`] dial a VM's socket and perform the handshake;
//! * guest side: [`Listener`] accepts on `AF_VSOCK` (inside a microVM) or on a Unix socket that
//!   answers the host half of the handshake itself (sandbox runtime, tests);
//! * guest → host: [`dial_host`] reaches CID 2; its Unix flavour is the `<uds>_<port>` socket
//!   Firecracker uses for guest-initiated connections ([`host_side_path`]).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{timeout, Instant};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

/// CID of the host as seen from a guest.
pub const HOST_CID: u32 = 2;
/// Longest handshake line either side accepts.
const MAX_LINE: usize = 64;
/// How long a listener waits for a client's `CONNECT` line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a host-side connection to a guest failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no agent socket at {0} (is the VM running?)")]
    NoSocket(PathBuf),
    #[error("agent socket {0} refused the connection (VM not listening)")]
    Refused(PathBuf),
    #[error("bad vsock handshake: {0}")]
    BadHandshake(String),
    #[error("timed out connecting to the agent")]
    Timeout,
    #[error("vsock I/O error: {0}")]
    Io(#[from] io::Error),
}

impl ConnectError {
    /// True when the guest may simply not be up yet, so a retry can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::NoSocket(_) | ConnectError::Refused(_) | ConnectError::BadHandshake(_))
    }
}

/// Connects to the hybrid-vsock socket `uds` and asks for guest port `port`.
///
/// Accepts any `OK <n>` reply: Firecracker answers with its host-side port, vhost-device-vsock
/// with the guest port.
pub async fn connect(uds: &Path, port: u32, limit: Duration) -> Result<UnixStream, ConnectError> {
    match timeout(limit, connect_inner(uds, port)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn connect_inner(uds: &Path, port: u32) -> Result<UnixStream, ConnectError> {
    let mut stream = UnixStream::connect(uds).await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ConnectError::NoSocket(uds.to_path_buf()),
        io::ErrorKind::ConnectionRefused => ConnectError::Refused(uds.to_path_buf()),
        _ => ConnectError::Io(e),
    })?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read byte by byte so nothing past the handshake line is consumed from the stream.
    let line = read_line(&mut stream).await.map_err(|e| ConnectError::BadHandshake(e.to_string()))?;
    match line.strip_prefix("OK ") {
        Some(n) if n.parse::<u32>().is_ok() => Ok(stream),
        _ => Err(ConnectError::BadHandshake(format!("expected `OK <port>`, got {line:?}"))),
    }
}

/// Like [`connect`], retrying transient failures until `deadline` has passed.
/// Used while a guest boots: until its listener is up a backend may accept and close.
pub async fn connect_retry(uds: &Path, port: u32, deadline: Duration) -> Result<UnixStream, ConnectError> {
    let end = Instant::now() + deadline;
    let mut delay = Duration::from_millis(2);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match connect(uds, port, left.max(Duration::from_millis(1))).await {
            Err(e) if e.is_transient() && Instant::now() + delay < end => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes without buffering past it.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during handshake"));
        }
        if byte[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "handshake line too long"));
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "handshake is not UTF-8"))
}

/// Reads a client's `CONNECT <port>\n` line (the listener's half of the handshake) and returns
/// the port; the caller answers `OK <port>\n` once the port accepted.
pub async fn read_connect<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u32> {
    let line = read_line(stream).await?;
    line.strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad handshake {line:?}")))
}

/// The host-side socket that a guest's connection to host port `port` reaches: `<uds>_<port>`.
pub fn host_side_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_os_string();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// A guest-side listener for the agent.
pub enum Listener {
    /// `AF_VSOCK` inside a microVM.
    Vsock(VsockListener),
    /// A Unix socket that performs the host half of the hybrid handshake for `port`.
    Uds { listener: UnixListener, port: u32 },
    /// Connections another transport accepted for the agent (the streams of a serial channel),
    /// already past any handshake.
    Streams(tokio::sync::Mutex<tokio::sync::mpsc::Receiver<UnixStream>>),
}

impl Listener {
    /// Listens on `AF_VSOCK` port `port`, any CID.
    pub fn vsock(port: u32) -> io::Result<Self> {
        Ok(Listener::Vsock(VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?))
    }

    /// Binds a Unix socket at `path` (replacing a stale one) that serves guest port `port`.
    /// The socket is made accessible to its owner only.
    pub fn uds(path: &Path, port: u32) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener::Uds { listener, port })
    }

    /// Wraps an inherited, already listening Unix socket (the sandbox runtime binds it on the host
    /// and passes it into the sandbox, whose mount namespace cannot see the path).
    pub fn uds_from_fd(fd: OwnedFd, port: u32) -> io::Result<Self> {
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true)?;
        Ok(Listener::Uds { listener: UnixListener::from_std(std_listener)?, port })
    }

    /// Serves the connections arriving on `streams`.
    pub fn streams(streams: tokio::sync::mpsc::Receiver<UnixStream>) -> Self {
        Listener::Streams(tokio::sync::Mutex::new(streams))
    }

    /// Accepts one connection. For the Unix flavour the handshake is not done yet: call
    /// [`Pending::ready`] in the connection's own task so a slow client cannot stall the accept loop.
    pub async fn accept(&self) -> io::Result<Pending> {
        match self {
            Listener::Vsock(l) => {
                let (s, _) = l.accept().await?;
                Ok(Pending(PendingInner::Ready(Stream::Vsock(s))))
            }
            Listener::Uds { listener, port } => {
                let (s, _) = listener.accept().await?;
                Ok(Pending(PendingInner::Handshake(s, *port)))
            }
            Listener::Streams(streams) => match streams.lock().await.recv().await {
                Some(s) => Ok(Pending(PendingInner::Ready(Stream::Unix(s)))),
                None => Err(io::Error::new(io::ErrorKind::NotConnected, "the channel stopped")),
            },
        }
    }
}

/// An accepted connection whose handshake may still be outstanding.
pub struct Pending(PendingInner);

enum PendingInner {
    Ready(Stream),
    Handshake(UnixStream, u32),
}

impl Pending {
    /// Completes the host half of the handshake (Unix flavour) and yields the stream.
    pub async fn ready(self) -> io::Result<Stream> {
        match self.0 {
            PendingInner::Ready(s) => Ok(s),
            PendingInner::Handshake(mut s, port) => {
                let line = timeout(HANDSHAKE_TIMEOUT, read_line(&mut s))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
                let asked = line.strip_prefix("CONNECT ").and_then(|p| p.trim().parse::<u32>().ok());
                if asked != Some(port) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad handshake {line:?} (this socket serves port {port})"),
                    ));
                }
                s.write_all(format!("OK {port}\n").as_bytes()).await?;
                Ok(Stream::Unix(s))
            }
        }
    }
}

/// A connected byte stream over either transport.
pub enum Stream {
    Unix(UnixStream),
    Vsock(VsockStream),
}

/// Dials the host (CID 2) on `port` over `AF_VSOCK`, from inside a guest.
pub async fn dial_host(port: u32) -> io::Result<Stream> {
    Ok(Stream::Vsock(VsockStream::connect(VsockAddr::new(HOST_CID, port)).await?))
}

/// Dials the Unix flavour of a guest→host connection: the socket `<uds>_<port>`.
pub async fn dial_host_uds(uds: &Path, port: u32) -> io::Result<Stream> {
    Ok(Stream::Unix(UnixStream::connect(host_side_path(uds, port)).await?))
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn echo_server(path: &Path, port: u32) -> tokio::task::JoinHandle<()> {
        let listener = Listener::uds(path, port).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok(pending) = listener.accept().await else { return };
                tokio::spawn(async move {
                    if let Ok(mut s) = pending.ready().await {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        })
    }

    #[tokio::test]
    async fn handshake_then_bytes_flow_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let _server = echo_server(&sock, 1024).await;
        let mut s = connect(&sock, 1024, Duration::from_secs(2)).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn missing_socket_is_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(&dir.path().join("absent"), 1, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, ConnectError::NoSocket(_)), "{err}");
    }

    #[tokio::test]
    async fn stale_socket_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let err = connect(&sock, 1, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn wrong_port_is_a_bad_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let _server = echo_server(&sock, 1024).await;
        let err = connect(&sock, 9999, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, ConnectError::BadHandshake(_)), "{err}");
    }

    #[tokio::test]
    async fn garbage_reply_is_a_bad_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("g.sock");
        let l = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 32];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 400 nope\n").await;
        });
        let err = connect(&sock, 1, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, ConnectError::BadHandshake(_)), "{err}");
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let _keep = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let err = connect(&sock, 1, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Timeout), "{err}");
    }

    #[tokio::test]
    async fn retry_waits_for_a_late_listener() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("late.sock");
        let sock2 = sock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _server = echo_server(&sock2, 7).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        connect_retry(&sock, 7, Duration::from_secs(3)).await.unwrap();
    }

    #[tokio::test]
    async fn guest_to_host_dial_uses_port_suffixed_socket() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("v.sock");
        assert_eq!(host_side_path(&base, 1025), dir.path().join("v.sock_1025"));
        let host = UnixListener::bind(host_side_path(&base, 1025)).unwrap();
        let accept = tokio::spawn(async move { host.accept().await.map(|_| ()) });
        dial_host_uds(&base, 1025).await.unwrap();
        accept.await.unwrap().unwrap();
    }
}
