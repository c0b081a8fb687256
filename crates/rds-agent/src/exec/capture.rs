//! Capped capture of a child's output pipes.
//!
//! A pipe is always read to its end (or, once the command has exited, to what it holds then): once
//! the cap is reached further bytes are discarded, never left in the pipe, so the child can never
//! block on a full pipe.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// Which of the child's pipes a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// A piece of output forwarded while the command still runs (streaming exec).
pub type Chunk = (Pipe, String);

/// Bytes kept from one pipe: at most the cap, plus whether more was produced.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Captured {
    /// The captured bytes as text; invalid UTF-8 becomes U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Where a capture sends live output, if anywhere.
pub struct LiveOutput {
    pub pipe: Pipe,
    pub sender: mpsc::UnboundedSender<Chunk>,
}

/// Reads `reader` to its end, keeping at most `cap` bytes and forwarding kept bytes to `live`.
///
/// When `stop` becomes true (the command has exited) the capture reads whatever the pipe holds
/// right now, without waiting, and returns: at end of file when nothing else holds the pipe's
/// write end, else at the first read that would block. A background process that keeps the pipe
/// open therefore never holds the exec hostage, and nothing waits out a grace period.
pub async fn capture<R: AsyncRead + AsFd + Unpin>(
    mut reader: R,
    cap: usize,
    live: Option<LiveOutput>,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut sink = Sink::new(cap, live);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            biased;
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.keep(&buf[..n]),
            },
            _ = stop.wait_for(|stopped| *stopped) => {
                drain_now(reader.as_fd(), &mut buf, &mut sink);
                break;
            }
        }
    }
    sink.finish()
}

/// Most bytes [`drain_now`] reads beyond the cap: a background writer faster than the agent must
/// not keep it reading forever.
const DRAIN_SLACK: usize = 1 << 20;

/// Reads what `fd` (non-blocking, as tokio's pipes are) holds now, up to end of file or the first
/// read that would block.
///
/// Raw reads rather than the async reader: they do not depend on the reactor having seen the
/// pipe's readiness yet, so once the writer has exited everything it wrote is taken.
pub fn drain_now(fd: BorrowedFd<'_>, buf: &mut [u8], sink: &mut Sink) {
    let mut budget = sink.cap.saturating_add(DRAIN_SLACK);
    while budget > 0 {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Ok(0) => return,
            Ok(n) => {
                sink.keep(&buf[..n]);
                budget = budget.saturating_sub(n);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // EAGAIN: another process still holds the write end and has nothing more for now.
            Err(_) => return,
        }
    }
    sink.captured.truncated = true;
}

/// Reads and drops what `fd` (non-blocking) holds now: output from before a run was handed over.
pub fn discard_now(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 4096];
    let mut budget = DRAIN_SLACK;
    while budget > 0 {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return,
            Ok(n) => budget = budget.saturating_sub(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Where captured bytes go: kept up to the cap, forwarded live as text.
pub struct Sink {
    cap: usize,
    live: Option<LiveOutput>,
    captured: Captured,
    text: Utf8Stream,
}

impl Sink {
    /// Keeps up to `cap` bytes, forwarding them to `live` if given.
    pub fn new(cap: usize, live: Option<LiveOutput>) -> Self {
        Sink { cap, live, captured: Captured::default(), text: Utf8Stream::default() }
    }

    /// Takes `bytes`: kept while under the cap, else counted as truncation.
    pub fn keep(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.captured.bytes.len());
        let kept = bytes.len().min(room);
        if kept < bytes.len() {
            self.captured.truncated = true;
        }
        if kept > 0 {
            self.captured.bytes.extend_from_slice(&bytes[..kept]);
            if let Some(live) = &self.live {
                let chunk = self.text.push(&bytes[..kept]);
                if !chunk.is_empty() {
                    let _ = live.sender.send((live.pipe, chunk));
                }
            }
        }
    }

    /// What was kept (live output flushed).
    pub fn finish(mut self) -> Captured {
        if let Some(live) = &self.live {
            let rest = self.text.finish();
            if !rest.is_empty() {
                let _ = live.sender.send((live.pipe, rest));
            }
        }
        self.captured
    }
}

/// Turns a byte stream into UTF-8 text without splitting a character across chunks.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is complete so far (invalid sequences become U+FFFD).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let split = self.pending.len() - incomplete_tail_len(&self.pending);
        let text = String::from_utf8_lossy(&self.pending[..split]).into_owned();
        self.pending.drain(..split);
        text
    }

    /// Flushes whatever is left, even an incomplete character.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of a multi-byte character cut off at the end of `bytes` (0 if none).
fn incomplete_tail_len(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        match byte {
            0x80..=0xBF => continue, // continuation byte: keep looking for the lead byte
            0xC0..=0xDF => return if back < 2 { back } else { 0 },
            0xE0..=0xEF => return if back < 3 { back } else { 0 },
            0xF0..=0xF7 => return if back < 4 { back } else { 0 },
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_never_splits_a_character() {
        let bytes = "aé€😀z".as_bytes();
        for cut in 0..bytes.len() {
            let mut s = Utf8Stream::default();
            let mut out = s.push(&bytes[..cut]);
            out += &s.push(&bytes[cut..]);
            out += &s.finish();
            assert_eq!(out, "aé€😀z", "cut at {cut}");
        }
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes() {
        let mut s = Utf8Stream::default();
        let out = s.push(b"a\xffb") + &s.finish();
        assert_eq!(out, "a\u{fffd}b");
    }

    #[tokio::test]
    async fn capture_keeps_cap_and_flags_truncation() {
        let (mut tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&[b'x'; 10_000]).await.unwrap();
        });
        let (_stop, stop_rx) = watch::channel(false);
        let got = capture(rx, 4096, None, stop_rx).await;
        writer.await.unwrap();
        assert_eq!(got.bytes.len(), 4096);
        assert!(got.truncated);
    }

    #[tokio::test]
    async fn stop_takes_what_is_buffered_while_a_writer_still_holds_the_pipe() {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        // Written before the capture even starts, and the write end stays open throughout.
        nix::unistd::write(&tx, b"written before exit").unwrap();
        let (stop, stop_rx) = watch::channel(false);
        stop.send_replace(true);
        let got = capture(rx, 4096, None, stop_rx).await;
        assert_eq!(got.bytes, b"written before exit");
        assert!(!got.truncated);
        drop(tx);
    }
}
