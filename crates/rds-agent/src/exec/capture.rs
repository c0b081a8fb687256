//! Capped capture of a child's output pipes.
//!
//! A pipe is always read to its end (or until told to stop): once the cap is reached further bytes
//! are discarded, never left in the pipe, so the child can never block on a full pipe.

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
/// When `stop` becomes true the capture still takes whatever is already readable, then returns:
/// a background process that keeps the pipe open must not hold the exec hostage.
pub async fn capture<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    live: Option<LiveOutput>,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut captured = Captured::default();
    let mut text = Utf8Stream::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let room = cap.saturating_sub(captured.bytes.len());
        let kept = n.min(room);
        if kept < n {
            captured.truncated = true;
        }
        if kept > 0 {
            captured.bytes.extend_from_slice(&buf[..kept]);
            if let Some(live) = &live {
                let chunk = text.push(&buf[..kept]);
                if !chunk.is_empty() {
                    let _ = live.sender.send((live.pipe, chunk));
                }
            }
        }
    }
    if let Some(live) = &live {
        let rest = text.finish();
        if !rest.is_empty() {
            let _ = live.sender.send((live.pipe, rest));
        }
    }
    captured
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
        let data = vec![b'x'; 10_000];
        let (_tx, rx) = watch::channel(false);
        let got = capture(&data[..], 4096, None, rx).await;
        assert_eq!(got.bytes.len(), 4096);
        assert!(got.truncated);
    }
}
