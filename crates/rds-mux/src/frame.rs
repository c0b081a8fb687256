//! The wire format: every frame is a 9-byte header — kind (u8), stream id (u32, big endian),
//! payload length (u32, big endian) — and its payload. Stream 0 carries the session's own frames.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Version spoken in `Hello` and `HelloAck`.
pub const VERSION: u32 = 1;
/// Largest `Data` payload.
pub const MAX_DATA: usize = 32 * 1024;
/// Header length.
const HEADER: usize = 9;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → guest: a new session begins; everything of the previous one is gone.
    Hello(u32),
    /// Guest → host: the guest took the new session.
    HelloAck(u32),
    /// Opens stream `id` to `port` of the peer.
    Open { id: u32, port: u32 },
    /// The peer accepted stream `id`.
    Accept(u32),
    /// Bytes on stream `id`.
    Data(u32, Bytes),
    /// The peer may send `n` more bytes on stream `id`.
    Window(u32, u32),
    /// The sender will send nothing more on stream `id`.
    Eof(u32),
    /// Stream `id` is aborted (or its opening refused).
    Reset(u32),
    /// Host → guest: send nothing more until `Resume` or `Hello` (a snapshot is taken).
    Pause,
    /// Guest → host: the last frame before the guest holds still.
    Paused,
    /// Host → guest: carry on.
    Resume,
}

const HELLO: u8 = 1;
const HELLO_ACK: u8 = 2;
const OPEN: u8 = 3;
const ACCEPT: u8 = 4;
const DATA: u8 = 5;
const WINDOW: u8 = 6;
const EOF: u8 = 7;
const RESET: u8 = 8;
const PAUSE: u8 = 9;
const PAUSED: u8 = 10;
const RESUME: u8 = 11;

impl Frame {
    /// Appends the frame's bytes to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let (kind, id, payload): (u8, u32, &[u8]) = match self {
            Frame::Hello(v) => return header_u32(buf, HELLO, 0, *v),
            Frame::HelloAck(v) => return header_u32(buf, HELLO_ACK, 0, *v),
            Frame::Open { id, port } => return header_u32(buf, OPEN, *id, *port),
            Frame::Window(id, n) => return header_u32(buf, WINDOW, *id, *n),
            Frame::Accept(id) => (ACCEPT, *id, &[]),
            Frame::Data(id, data) => (DATA, *id, data),
            Frame::Eof(id) => (EOF, *id, &[]),
            Frame::Reset(id) => (RESET, *id, &[]),
            Frame::Pause => (PAUSE, 0, &[]),
            Frame::Paused => (PAUSED, 0, &[]),
            Frame::Resume => (RESUME, 0, &[]),
        };
        buf.reserve(HEADER + payload.len());
        buf.put_u8(kind);
        buf.put_u32(id);
        buf.put_u32(payload.len() as u32);
        buf.put_slice(payload);
    }
}

fn header_u32(buf: &mut BytesMut, kind: u8, id: u32, value: u32) {
    buf.reserve(HEADER + 4);
    buf.put_u8(kind);
    buf.put_u32(id);
    buf.put_u32(4);
    buf.put_u32(value);
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one frame; `None` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    let first = r.read(&mut header[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[1..]).await?;
    let mut h = &header[..];
    let (kind, id, len) = (h.get_u8(), h.get_u32(), h.get_u32() as usize);
    let max = if kind == DATA { MAX_DATA } else { 4 };
    if len > max {
        return Err(invalid(format!("frame of kind {kind} with a {len}-byte payload")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let word = || -> io::Result<u32> {
        let bytes: [u8; 4] = payload
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("frame of kind {kind} needs a 4-byte payload")))?;
        Ok(u32::from_be_bytes(bytes))
    };
    let empty = || if len == 0 { Ok(()) } else { Err(invalid(format!("frame of kind {kind} has a payload"))) };
    let frame = match kind {
        HELLO => Frame::Hello(word()?),
        HELLO_ACK => Frame::HelloAck(word()?),
        OPEN => Frame::Open { id, port: word()? },
        WINDOW => Frame::Window(id, word()?),
        DATA => Frame::Data(id, Bytes::from(payload)),
        ACCEPT => empty().map(|()| Frame::Accept(id))?,
        EOF => empty().map(|()| Frame::Eof(id))?,
        RESET => empty().map(|()| Frame::Reset(id))?,
        PAUSE => empty().map(|()| Frame::Pause)?,
        PAUSED => empty().map(|()| Frame::Paused)?,
        RESUME => empty().map(|()| Frame::Resume)?,
        other => return Err(invalid(format!("unknown frame kind {other}"))),
    };
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_the_stream_may_end_between_them() {
        let frames = vec![
            Frame::Hello(VERSION),
            Frame::HelloAck(VERSION),
            Frame::Open { id: 7, port: 1024 },
            Frame::Accept(7),
            Frame::Data(7, Bytes::from_static(b"hello")),
            Frame::Window(7, 5),
            Frame::Eof(7),
            Frame::Reset(9),
            Frame::Pause,
            Frame::Paused,
            Frame::Resume,
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_unknown_and_truncated_frames_are_errors() {
        let mut big = BytesMut::new();
        big.put_u8(DATA);
        big.put_u32(1);
        big.put_u32(MAX_DATA as u32 + 1);
        assert!(read_frame(&mut &big[..]).await.is_err());
        let mut bad_open = BytesMut::new();
        bad_open.put_u8(OPEN);
        bad_open.put_u32(1);
        bad_open.put_u32(2);
        bad_open.put_u16(1024);
        assert!(read_frame(&mut &bad_open[..]).await.is_err());
        assert!(read_frame(&mut &[42u8, 0, 0, 0, 0, 0, 0, 0, 0][..]).await.is_err());
        let mut cut = BytesMut::new();
        Frame::Data(1, Bytes::from_static(b"abcdef")).encode(&mut cut);
        assert!(read_frame(&mut &cut[..cut.len() - 1]).await.is_err());
    }
}
