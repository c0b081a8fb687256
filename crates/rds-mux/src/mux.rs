//! One session of multiplexed streams over a byte stream.
//!
//! Either side opens streams to a port of the other (`Open`, answered by `Accept` or `Reset`);
//! a stream carries bytes both ways, each direction ended by `Eof` or both at once by `Reset`.
//! Flow control is per stream and direction: a sender never has more than [`WINDOW`] bytes
//! unacknowledged (`Window` returns credit once the receiver handed the bytes on), so one slow
//! stream never stalls the others and the receiver's buffers stay bounded. Each stream's far end
//! is a local Unix socket the session pumps.
//!
//! Frames of the session itself (stream 0: hello, pause) are left to the side that drives it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::frame::{Frame, MAX_DATA};

/// Bytes a sender may have in flight on one stream.
pub const WINDOW: u32 = 256 * 1024;
/// Streams one side may have open at once; the receiving side allows twice as many of the
/// peer's before it calls the session broken.
pub const MAX_STREAMS: usize = 128;

/// Which end of the channel this is: the host opens odd stream ids, the guest even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host's relay.
    Host,
    /// The guest's agent.
    Guest,
}

/// What becomes of a stream the peer opens to `port`: the local socket to pump it to, or `None`
/// to refuse it.
pub type Acceptor = Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = Option<UnixStream>> + Send>> + Send + Sync>;

/// Why opening a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing listens on that port on the other side.
    #[error("the other side refused port {0}")]
    Refused(u32),
    /// This side has [`MAX_STREAMS`] streams open already.
    #[error("too many open streams")]
    TooMany,
    /// The session ended.
    #[error("the channel's session ended")]
    Closed,
}

/// The peer broke the protocol: the session cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("protocol violation: {0}")]
pub struct Violation(pub String);

/// What the writer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// Only session frames (a snapshot is being taken).
    Held,
    Closed,
}

/// A running session; clones share it.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
    writer: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

struct Shared {
    side: Side,
    /// Stream frames, written while the gate is open.
    out: mpsc::UnboundedSender<Frame>,
    /// Session frames, written whatever the gate says.
    ctl: mpsc::UnboundedSender<Frame>,
    gate: watch::Sender<Gate>,
    table: Mutex<Table>,
    accept: Acceptor,
}

struct Table {
    streams: HashMap<u32, Entry>,
    next_id: u32,
    last_peer_id: u32,
    closed: bool,
}

struct Entry {
    ours: bool,
    to_task: mpsc::UnboundedSender<Inbound>,
    credit: Arc<Credit>,
    /// Bytes the peer may still send before it must wait for a `Window`.
    recv_left: u32,
    sent_final: bool,
    recv_final: bool,
    opening: Option<oneshot::Sender<bool>>,
}

enum Inbound {
    Data(Bytes),
    Eof,
    Reset,
}

impl Mux {
    /// Starts a session writing to `write`; streams the peer opens go to `accept`.
    pub fn start<W: AsyncWrite + Unpin + Send + 'static>(side: Side, write: W, accept: Acceptor) -> Mux {
        let (out, out_rx) = mpsc::unbounded_channel();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(Gate::Open);
        let next_id = match side {
            Side::Host => 1,
            Side::Guest => 2,
        };
        let shared = Arc::new(Shared {
            side,
            out,
            ctl,
            gate,
            table: Mutex::new(Table { streams: HashMap::new(), next_id, last_peer_id: 0, closed: false }),
            accept,
        });
        let writing = shared.clone();
        let writer = tokio::spawn(async move {
            if let Err(e) = write_loop(write, ctl_rx, out_rx, gate_rx).await {
                tracing::debug!("channel writer stopped: {e}");
            }
            writing.close();
        });
        Mux { shared, writer: Arc::new(tokio::sync::Mutex::new(Some(writer))) }
    }

    /// Sends a session frame now, ahead of any stream frame not yet written.
    pub fn send_session_frame(&self, frame: Frame) {
        let _ = self.shared.ctl.send(frame);
    }

    /// Holds back (or lets go) every stream frame not yet written.
    pub fn hold(&self, held: bool) {
        self.shared.gate.send_if_modified(|g| {
            let next = if *g == Gate::Closed {
                Gate::Closed
            } else if held {
                Gate::Held
            } else {
                Gate::Open
            };
            std::mem::replace(g, next) != next
        });
    }

    /// Ends the session: every stream is reset, the writer stops.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Ends the session and waits until its writer wrote its last byte (so a next session's
    /// writer never interleaves with it).
    pub async fn close_and_wait(&self) {
        self.shared.close();
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.await;
        }
    }

    /// True once the session ended.
    pub fn is_closed(&self) -> bool {
        self.shared.table.lock().expect("mux table").closed
    }

    /// Handles a frame read from the peer; frames of the session itself are returned to the caller.
    pub fn dispatch(&self, frame: Frame) -> Result<Option<Frame>, Violation> {
        let shared = &self.shared;
        let mut t = shared.table.lock().expect("mux table");
        match frame {
            Frame::Open { id, port } => {
                let peer_parity = match shared.side {
                    Side::Host => 0,
                    Side::Guest => 1,
                };
                if id % 2 != peer_parity || id <= t.last_peer_id {
                    return Err(Violation(format!("stream id {id} out of order")));
                }
                let peers = t.streams.values().filter(|e| !e.ours).count();
                if peers >= 2 * MAX_STREAMS {
                    return Err(Violation("too many streams".into()));
                }
                t.last_peer_id = id;
                if t.closed {
                    return Ok(None);
                }
                let (to_task, rx) = mpsc::unbounded_channel();
                let credit = Arc::new(Credit::new(WINDOW));
                t.streams.insert(id, Entry::new(false, to_task, credit.clone(), None));
                let shared = shared.clone();
                tokio::spawn(async move {
                    match (shared.accept)(port).await {
                        Some(local) => {
                            let _ = shared.out.send(Frame::Accept(id));
                            run_stream(shared, id, local, rx, credit).await;
                        }
                        None => {
                            shared.remove(id);
                            let _ = shared.out.send(Frame::Reset(id));
                        }
                    }
                });
            }
            Frame::Accept(id) => {
                if let Some(e) = t.streams.get_mut(&id) {
                    let Some(opening) = e.opening.take() else {
                        return Err(Violation(format!("stream {id} accepted twice")));
                    };
                    if opening.send(true).is_err() {
                        // Whoever opened it gave up waiting.
                        t.streams.remove(&id);
                        let _ = shared.out.send(Frame::Reset(id));
                    }
                }
            }
            Frame::Data(id, bytes) => {
                if let Some(e) = t.streams.get_mut(&id) {
                    let len = bytes.len() as u32;
                    if e.opening.is_some() || e.recv_final || len > e.recv_left {
                        return Err(Violation(format!("data on stream {id} beyond what it may send")));
                    }
                    e.recv_left -= len;
                    let _ = e.to_task.send(Inbound::Data(bytes));
                }
            }
            Frame::Window(id, n) => {
                if let Some(e) = t.streams.get(&id) {
                    if !e.credit.add(n) {
                        return Err(Violation(format!("window of stream {id} overflows")));
                    }
                }
            }
            Frame::Eof(id) => {
                if let Some(e) = t.streams.get_mut(&id) {
                    e.recv_final = true;
                    let _ = e.to_task.send(Inbound::Eof);
                    if e.sent_final {
                        t.streams.remove(&id);
                    }
                }
            }
            Frame::Reset(id) => {
                if let Some(e) = t.streams.remove(&id) {
                    e.abort();
                }
            }
            session => return Ok(Some(session)),
        }
        Ok(None)
    }

    /// Opens a stream to `port` of the peer; returns once the peer accepted it.
    pub async fn open(&self, port: u32) -> Result<Opened, OpenError> {
        let shared = &self.shared;
        let (id, rx, credit, accepted) = {
            let mut t = shared.table.lock().expect("mux table");
            if t.closed {
                return Err(OpenError::Closed);
            }
            if t.streams.values().filter(|e| e.ours).count() >= MAX_STREAMS {
                return Err(OpenError::TooMany);
            }
            let id = t.next_id;
            t.next_id = id.checked_add(2).ok_or(OpenError::Closed)?;
            let (to_task, rx) = mpsc::unbounded_channel();
            let (tx, accepted) = oneshot::channel();
            let credit = Arc::new(Credit::new(WINDOW));
            t.streams.insert(id, Entry::new(true, to_task, credit.clone(), Some(tx)));
            (id, rx, credit, accepted)
        };
        if shared.out.send(Frame::Open { id, port }).is_err() {
            shared.remove(id);
            return Err(OpenError::Closed);
        }
        match accepted.await {
            Ok(true) => Ok(Opened { shared: Some(shared.clone()), id, rx: Some(rx), credit }),
            Ok(false) => Err(OpenError::Refused(port)),
            Err(_) => Err(OpenError::Closed),
        }
    }
}

/// A stream the peer accepted, not yet connected to its local socket.
pub struct Opened {
    shared: Option<Arc<Shared>>,
    id: u32,
    rx: Option<mpsc::UnboundedReceiver<Inbound>>,
    credit: Arc<Credit>,
}

impl Opened {
    /// Pumps the stream to and from `local` until both directions end.
    pub fn run(mut self, local: UnixStream) {
        let (Some(shared), Some(rx)) = (self.shared.take(), self.rx.take()) else { return };
        tokio::spawn(run_stream(shared, self.id, local, rx, self.credit.clone()));
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.remove(self.id);
            let _ = shared.out.send(Frame::Reset(self.id));
        }
    }
}

impl Entry {
    fn new(
        ours: bool,
        to_task: mpsc::UnboundedSender<Inbound>,
        credit: Arc<Credit>,
        opening: Option<oneshot::Sender<bool>>,
    ) -> Self {
        Entry { ours, to_task, credit, recv_left: WINDOW, sent_final: false, recv_final: false, opening }
    }

    fn abort(self) {
        if let Some(opening) = self.opening {
            let _ = opening.send(false);
        }
        let _ = self.to_task.send(Inbound::Reset);
        self.credit.close();
    }
}

impl Shared {
    fn remove(&self, id: u32) {
        if let Some(e) = self.table.lock().expect("mux table").streams.remove(&id) {
            e.credit.close();
        }
    }

    fn close(&self) {
        let entries: Vec<Entry> = {
            let mut t = self.table.lock().expect("mux table");
            t.closed = true;
            t.streams.drain().map(|(_, e)| e).collect()
        };
        for e in entries {
            e.abort();
        }
        self.gate.send_replace(Gate::Closed);
    }

    /// This side sent its last frame of stream `id`.
    fn sent_final(&self, id: u32) {
        let mut t = self.table.lock().expect("mux table");
        if let Some(e) = t.streams.get_mut(&id) {
            e.sent_final = true;
            if e.recv_final {
                t.streams.remove(&id);
            }
        }
    }

    /// `n` bytes of stream `id` were handed on: the peer may send them again.
    fn consumed(&self, id: u32, n: u32) {
        if let Some(e) = self.table.lock().expect("mux table").streams.get_mut(&id) {
            e.recv_left = e.recv_left.saturating_add(n).min(WINDOW);
        }
    }
}

/// Send credit of one stream.
struct Credit {
    state: Mutex<(u32, bool)>,
    notify: Notify,
}

impl Credit {
    fn new(n: u32) -> Self {
        Credit { state: Mutex::new((n, false)), notify: Notify::new() }
    }

    /// False when the credit would exceed what a window allows.
    fn add(&self, n: u32) -> bool {
        let mut s = self.state.lock().expect("credit");
        match s.0.checked_add(n).filter(|v| *v <= WINDOW) {
            Some(v) => s.0 = v,
            None => return false,
        }
        drop(s);
        self.notify.notify_one();
        true
    }

    fn close(&self) {
        self.state.lock().expect("credit").1 = true;
        self.notify.notify_one();
    }

    /// Takes up to `max` bytes of credit, waiting for some; `None` once the stream is gone.
    async fn take(&self, max: u32) -> Option<u32> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("credit");
                if s.1 {
                    return None;
                }
                if s.0 > 0 {
                    let n = s.0.min(max);
                    s.0 -= n;
                    return Some(n);
                }
            }
            notified.await;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Abort {
    /// The local socket failed: tell the peer.
    Local,
    /// The peer reset the stream, or the session ended.
    Remote,
}

async fn run_stream(
    shared: Arc<Shared>,
    id: u32,
    local: UnixStream,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    credit: Arc<Credit>,
) {
    let (mut rd, mut wr) = local.into_split();
    let up = async {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            let n = credit.take(MAX_DATA as u32).await.ok_or(Abort::Remote)?;
            match rd.read(&mut buf[..n as usize]).await {
                Ok(0) => {
                    credit.add(n);
                    shared.sent_final(id);
                    let _ = shared.out.send(Frame::Eof(id));
                    return Ok(());
                }
                Ok(k) => {
                    credit.add(n - k as u32);
                    shared.out.send(Frame::Data(id, Bytes::copy_from_slice(&buf[..k]))).map_err(|_| Abort::Remote)?;
                }
                Err(_) => return Err(Abort::Local),
            }
        }
    };
    let down = async {
        loop {
            match rx.recv().await {
                Some(Inbound::Data(bytes)) => {
                    let len = bytes.len() as u32;
                    wr.write_all(&bytes).await.map_err(|_| Abort::Local)?;
                    shared.consumed(id, len);
                    shared.out.send(Frame::Window(id, len)).map_err(|_| Abort::Remote)?;
                }
                Some(Inbound::Eof) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Some(Inbound::Reset) | None => return Err(Abort::Remote),
            }
        }
    };
    if let Err(why) = tokio::try_join!(up, down) {
        shared.remove(id);
        if why == Abort::Local {
            let _ = shared.out.send(Frame::Reset(id));
        }
    }
}

/// Writes session frames at once and stream frames while the gate is open, batching what is queued.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut ctl: mpsc::UnboundedReceiver<Frame>,
    mut out: mpsc::UnboundedReceiver<Frame>,
    mut gate: watch::Receiver<Gate>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let state = *gate.borrow_and_update();
        if state == Gate::Closed {
            return Ok(());
        }
        let open = state == Gate::Open;
        tokio::select! {
            biased;
            f = ctl.recv() => match f {
                Some(f) => f.encode(&mut buf),
                None => return Ok(()),
            },
            changed = gate.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
            f = out.recv(), if open => match f {
                Some(f) => f.encode(&mut buf),
                None => return Ok(()),
            },
        }
        // Whatever else is queued goes out in the same write (session frames first).
        while buf.len() < 256 * 1024 {
            if let Ok(f) = ctl.try_recv() {
                f.encode(&mut buf);
            } else if open && *gate.borrow() == Gate::Open {
                match out.try_recv() {
                    Ok(f) => f.encode(&mut buf),
                    Err(_) => break,
                }
            } else {
                break;
            }
        }
        w.write_all(&buf).await?;
        w.flush().await?;
        buf.clear();
    }
}
