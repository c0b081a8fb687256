//! The guest's end: the agent's side of the channel on a virtio-serial port (`/dev/vportNpM`,
//! root-only, opened once for the VM's life).
//!
//! A session begins with the host's `Hello`, at boot and again after a snapshot restore, when the
//! guest's memory still holds the paused session of the VM it was taken from: that session is
//! dropped whole and a new one starts. When the host end goes away (the read returns end of file)
//! the session ends and the port is watched until a host is back.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::frame::{read_frame, Frame, VERSION};
use crate::mux::{Acceptor, Mux, OpenError, Side};

/// Where the kernel lists virtio-serial ports and their names.
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How often a port without a host end is looked at again.
const HOST_POLL: Duration = Duration::from_millis(20);

/// The device node of the virtio-serial port named `name`, if the VM has one.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(PORTS_DIR).ok()?;
    for entry in entries.flatten() {
        let named = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if named.trim() == name {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// The guest's end of the channel, served in the background.
#[derive(Clone)]
pub struct GuestChannel {
    current: watch::Receiver<Option<Mux>>,
}

impl GuestChannel {
    /// Opens the port at `device` and serves it for as long as the process lives: streams the
    /// host opens go to `accept`.
    pub fn spawn(device: &Path, accept: Acceptor) -> io::Result<GuestChannel> {
        let fd: OwnedFd = nix::fcntl::open(
            device,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(|fd| {
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        })
        .map_err(io::Error::from)?;
        let (tx, current) = watch::channel(None);
        tokio::spawn(serve(fd, accept, tx));
        Ok(GuestChannel { current })
    }

    /// Opens a stream to host port `port` once a session is up (waiting at most `limit` for
    /// one); returns the local end.
    pub async fn dial(&self, port: u32, limit: Duration) -> io::Result<UnixStream> {
        let mut current = self.current.clone();
        let mux = tokio::time::timeout(limit, current.wait_for(|m| m.is_some()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no session with the host"))?
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "the channel stopped"))?
            .clone()
            .expect("waited for a session");
        let (ours, theirs) = UnixStream::pair()?;
        let opened = mux.open(port).await.map_err(|e| match e {
            OpenError::Refused(_) => io::Error::new(io::ErrorKind::ConnectionRefused, e),
            other => io::Error::new(io::ErrorKind::NotConnected, other),
        })?;
        opened.run(theirs);
        Ok(ours)
    }
}

async fn serve(fd: OwnedFd, accept: Acceptor, current: watch::Sender<Option<Mux>>) {
    loop {
        wait_for_host(&fd).await;
        let registered = fd.try_clone().and_then(|dup| {
            // SAFETY: `dup` is an open descriptor the AsyncFd owns until it is dropped.
            unsafe { AsyncFd::register(dup) }.map_err(|e| e.into_parts().1)
        });
        let port = match registered {
            Ok(port) => Arc::new(port),
            Err(e) => {
                tracing::error!("agent channel: cannot watch the port: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut reader = BufReader::new(PortIo(port.clone()));
        let mut mux: Option<Mux> = None;
        loop {
            let frame = match read_frame(&mut reader).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    // Framing is lost; the host starts over when it reconnects.
                    tracing::error!("agent channel: unreadable frame: {e}");
                    tokio::time::sleep(HOST_POLL).await;
                    break;
                }
            };
            if let Frame::Hello(version) = frame {
                if version != VERSION {
                    tracing::warn!(version, "agent channel: the host speaks another version");
                }
                if let Some(old) = mux.take() {
                    old.close_and_wait().await;
                }
                let next = Mux::start(Side::Guest, PortIo(port.clone()), accept.clone());
                next.send_session_frame(Frame::HelloAck(VERSION));
                current.send_replace(Some(next.clone()));
                mux = Some(next);
                continue;
            }
            // Anything before the first hello belongs to a session that is gone.
            let Some(m) = &mux else { continue };
            match m.dispatch(frame) {
                Ok(None) => {}
                Ok(Some(Frame::Pause)) => {
                    m.hold(true);
                    m.send_session_frame(Frame::Paused);
                }
                Ok(Some(Frame::Resume)) => m.hold(false),
                Ok(Some(other)) => tracing::warn!("agent channel: unexpected {other:?}"),
                Err(e) => {
                    tracing::error!("agent channel: {e}");
                    m.close();
                    current.send_replace(None);
                    mux = None;
                }
            }
        }
        current.send_replace(None);
        if let Some(old) = mux.take() {
            old.close_and_wait().await;
        }
    }
}

/// Returns once the port has a host end (`poll` no longer reports a hang-up).
async fn wait_for_host(fd: &OwnedFd) {
    loop {
        let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: poll on one valid descriptor with a zero timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        if n >= 0 && fds[0].revents & libc::POLLHUP == 0 {
            return;
        }
        tokio::time::sleep(HOST_POLL).await;
    }
}

/// Reads and writes on the non-blocking port descriptor.
struct PortIo(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for PortIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // SAFETY: read into the unfilled part of `buf`, which is valid for its length.
            let read = |fd: &AsyncFd<OwnedFd>| {
                let n = unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            };
            match guard.try_io(read) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PortIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let write = |fd: &AsyncFd<OwnedFd>| {
                // SAFETY: write from `data`, valid for its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            };
            match guard.try_io(write) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
