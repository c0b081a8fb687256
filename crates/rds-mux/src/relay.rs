//! The host's end: a relay process per VM between QEMU's virtio-serial chardev and the sockets
//! the rest of rds knows from vsock, so nothing above the runtime changes:
//!
//! * `agent` — a hybrid-vsock socket (`CONNECT <port>\n` → `OK <port>\n`, then bytes): each
//!   connection becomes a stream to that guest port;
//! * a stream the guest opens to port `p` is connected to `<agent>_<p>` (the bridge's and the
//!   boot readiness call's sockets), or refused when nothing listens there;
//! * `control` — `PAUSE\n` → `PAUSED\n` once the guest confirmed it sends nothing more (a
//!   snapshot may be taken: the channel holds no byte in flight), `RESUME\n` → `RESUMED\n`; a
//!   control connection that ends while paused resumes.
//!
//! QEMU connects to the `serial` socket (it reconnects by itself if the connection drops); each
//! connection starts a session with `Hello`. The relay lives in a process of its own, so the VM's
//! channel outlives a manager restart; it exits when QEMU went away and did not come back.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};

use crate::frame::{read_frame, Frame, VERSION};
use crate::mux::{Acceptor, Mux, Side};

/// How long a client's `CONNECT` line may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How long a client waits for a session with the guest, and for the guest to accept its stream.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// How long the guest gets to confirm a pause.
const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// How long after QEMU's connection ended the relay waits for it to come back before exiting.
const IDLE_EXIT: Duration = Duration::from_secs(5);

/// The relay's sockets.
#[derive(Debug, Clone)]
pub struct RelayPaths {
    /// Where QEMU's chardev connects.
    pub serial: PathBuf,
    /// The hybrid-vsock socket (the runtime's `agent_socket`).
    pub agent: PathBuf,
    /// The pause/resume socket.
    pub control: PathBuf,
}

struct State {
    agent: PathBuf,
    current: watch::Sender<Option<Mux>>,
    paused: Mutex<Option<oneshot::Sender<()>>>,
}

/// Binds the relay's sockets (owner-only) and serves until QEMU is gone.
pub async fn run(paths: RelayPaths) -> io::Result<()> {
    let serial = bind(&paths.serial)?;
    let agent = bind(&paths.agent)?;
    let control = bind(&paths.control)?;
    let state =
        Arc::new(State { agent: paths.agent.clone(), current: watch::channel(None).0, paused: Mutex::new(None) });
    let clients = state.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((conn, _)) = agent.accept().await {
                tokio::spawn(client(clients.clone(), conn));
            }
        }
    });
    let controls = state.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((conn, _)) = control.accept().await {
                tokio::spawn(control_connection(controls.clone(), conn));
            }
        }
    });
    let mut ever_connected = false;
    loop {
        let accepted = if ever_connected {
            match tokio::time::timeout(IDLE_EXIT, serial.accept()).await {
                Ok(accepted) => accepted,
                Err(_) => return Ok(()),
            }
        } else {
            serial.accept().await
        };
        let Ok((conn, _)) = accepted else { continue };
        ever_connected = true;
        session(&state, conn).await;
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// One session over QEMU's connection `conn`, until it ends or the guest breaks the protocol.
async fn session(state: &Arc<State>, conn: UnixStream) {
    let (read, write) = conn.into_split();
    let agent = state.agent.clone();
    let accept: Acceptor = Arc::new(move |port| {
        let path = rds_vsock::host_side_path(&agent, port);
        Box::pin(async move { UnixStream::connect(path).await.ok() })
    });
    let mux = Mux::start(Side::Host, write, accept);
    mux.send_session_frame(Frame::Hello(VERSION));
    let mut read = BufReader::new(read);
    // Whatever arrives before the guest's answer belongs to a session that is gone.
    loop {
        match read_frame(&mut read).await {
            Ok(Some(Frame::HelloAck(_))) => break,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                mux.close();
                return;
            }
        }
    }
    state.current.send_replace(Some(mux.clone()));
    loop {
        let frame = match read_frame(&mut read).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("agent channel: unreadable frame from the guest: {e}");
                break;
            }
        };
        match mux.dispatch(frame) {
            Ok(None) => {}
            Ok(Some(Frame::Paused)) => {
                if let Some(waiter) = state.paused.lock().expect("pause waiter").take() {
                    let _ = waiter.send(());
                }
            }
            Ok(Some(other)) => tracing::warn!("agent channel: unexpected {other:?} from the guest"),
            Err(e) => {
                tracing::warn!("agent channel: {e}");
                break;
            }
        }
    }
    state.current.send_replace(None);
    mux.close();
}

/// A hybrid-vsock client: its `CONNECT <port>` becomes a stream to that guest port.
async fn client(state: Arc<State>, mut conn: UnixStream) {
    let Ok(Ok(port)) = tokio::time::timeout(HANDSHAKE, rds_vsock::read_connect(&mut conn)).await else { return };
    let opened = tokio::time::timeout(OPEN_WAIT, async {
        let mut current = state.current.subscribe();
        let mux = current.wait_for(|m| m.is_some()).await.ok()?.clone()?;
        mux.open(port).await.ok()
    })
    .await;
    if let Ok(Some(opened)) = opened {
        if conn.write_all(format!("OK {port}\n").as_bytes()).await.is_ok() {
            opened.run(conn);
        }
    }
}

/// Serves `PAUSE` and `RESUME` on one control connection.
async fn control_connection(state: Arc<State>, conn: UnixStream) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read.take(4096)).lines();
    let mut paused: Option<Mux> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.trim() {
            "PAUSE" => match pause(&state).await {
                Ok(mux) => {
                    paused = Some(mux);
                    "PAUSED".to_string()
                }
                Err(e) => format!("ERR {e}"),
            },
            "RESUME" => {
                if let Some(mux) = paused.take() {
                    resume(&mux);
                }
                "RESUMED".to_string()
            }
            other => format!("ERR unknown command {other:?}"),
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
    if let Some(mux) = paused {
        resume(&mux);
    }
}

async fn pause(state: &State) -> Result<Mux, String> {
    let mux = state.current.borrow().clone().ok_or("no session with the guest")?;
    let (tx, rx) = oneshot::channel();
    *state.paused.lock().expect("pause waiter") = Some(tx);
    mux.hold(true);
    mux.send_session_frame(Frame::Pause);
    match tokio::time::timeout(PAUSE_WAIT, rx).await {
        Ok(Ok(())) => Ok(mux),
        _ => {
            resume(&mux);
            Err("the guest did not confirm the pause".into())
        }
    }
}

fn resume(mux: &Mux) {
    mux.send_session_frame(Frame::Resume);
    mux.hold(false);
}

/// Why quiescing a VM's channel failed.
#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// The relay's control socket failed.
    #[error("relay control socket: {0}")]
    Io(#[from] io::Error),
    /// The relay refused (no session, the guest did not confirm).
    #[error("the relay could not pause the channel: {0}")]
    Refused(String),
    /// No answer in time.
    #[error("the relay did not answer in time")]
    Timeout,
}

/// A channel held still by [`quiesce`]: nothing is in flight until [`Quiesced::resume`] (or drop).
pub struct Quiesced {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

/// Asks the relay behind `control` to pause the channel; returns once the guest confirmed.
pub async fn quiesce(control: &Path, limit: Duration) -> Result<Quiesced, QuiesceError> {
    let call = async {
        let (read, mut write) = UnixStream::connect(control).await?.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"PAUSE\n").await?;
        match lines.next_line().await?.as_deref() {
            Some("PAUSED") => Ok(Quiesced { lines, write }),
            Some(other) => Err(QuiesceError::Refused(other.trim_start_matches("ERR ").to_string())),
            None => Err(QuiesceError::Refused("the relay closed the connection".into())),
        }
    };
    tokio::time::timeout(limit, call).await.map_err(|_| QuiesceError::Timeout)?
}

impl Quiesced {
    /// Lets the channel carry on.
    pub async fn resume(mut self, limit: Duration) -> Result<(), QuiesceError> {
        let call = async {
            self.write.write_all(b"RESUME\n").await?;
            match self.lines.next_line().await?.as_deref() {
                Some("RESUMED") => Ok(()),
                other => Err(QuiesceError::Refused(format!("unexpected answer {other:?}"))),
            }
        };
        tokio::time::timeout(limit, call).await.map_err(|_| QuiesceError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Env {
        _dir: tempfile::TempDir,
        paths: RelayPaths,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let paths = RelayPaths {
            serial: dir.path().join("serial.sock"),
            agent: dir.path().join("vsock.sock"),
            control: dir.path().join("relay.sock"),
        };
        tokio::spawn(run(paths.clone()));
        Env { _dir: dir, paths }
    }

    /// Echoes whatever arrives on a stream the host opens.
    fn echo_acceptor() -> Acceptor {
        Arc::new(|port| {
            Box::pin(async move {
                if port != 1024 {
                    return None;
                }
                let (ours, theirs) = UnixStream::pair().unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = ours.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
                Some(theirs)
            })
        })
    }

    /// Stands in for QEMU and the guest's agent: connects to the serial socket and answers as
    /// the guest does; the current session is published on the returned channel.
    async fn fake_guest(serial: &Path) -> (watch::Receiver<Option<Mux>>, tokio::task::JoinHandle<()>) {
        let conn = loop {
            match UnixStream::connect(serial).await {
                Ok(conn) => break conn,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            let (read, write) = conn.into_split();
            let write = Arc::new(tokio::sync::Mutex::new(Some(write)));
            let mut read = BufReader::new(read);
            let mut mux: Option<Mux> = None;
            while let Ok(Some(frame)) = read_frame(&mut read).await {
                match frame {
                    Frame::Hello(_) => {
                        let w = write.lock().await.take().expect("one session per connection here");
                        let m = Mux::start(Side::Guest, w, echo_acceptor());
                        m.send_session_frame(Frame::HelloAck(VERSION));
                        tx.send_replace(Some(m.clone()));
                        mux = Some(m);
                    }
                    other => {
                        let m = mux.as_ref().unwrap();
                        match m.dispatch(other).unwrap() {
                            Some(Frame::Pause) => {
                                m.hold(true);
                                m.send_session_frame(Frame::Paused);
                            }
                            Some(Frame::Resume) => m.hold(false),
                            Some(f) => panic!("unexpected {f:?}"),
                            None => {}
                        }
                    }
                }
            }
            if let Some(m) = mux {
                m.close();
            }
        });
        (rx, task)
    }

    async fn session(rx: &mut watch::Receiver<Option<Mux>>) -> Mux {
        rx.wait_for(|m| m.is_some()).await.unwrap().clone().unwrap()
    }

    #[tokio::test]
    async fn host_connections_reach_the_guest_port_and_unknown_ports_are_refused() {
        let env = env();
        let (mut guest, _task) = fake_guest(&env.paths.serial).await;
        session(&mut guest).await;
        let mut s = rds_vsock::connect(&env.paths.agent, 1024, Duration::from_secs(5)).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let err = rds_vsock::connect(&env.paths.agent, 1999, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, rds_vsock::ConnectError::BadHandshake(_)), "{err}");
    }

    #[tokio::test]
    async fn megabytes_flow_both_ways_through_the_windows() {
        let env = env();
        let (mut guest, _task) = fake_guest(&env.paths.serial).await;
        session(&mut guest).await;
        let s = rds_vsock::connect(&env.paths.agent, 1024, Duration::from_secs(5)).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == data, "echoed {} of {} bytes, or different ones", back.len(), data.len());
    }

    #[tokio::test]
    async fn guest_streams_reach_the_port_sockets_beside_the_agent_socket() {
        let env = env();
        let (mut guest, _task) = fake_guest(&env.paths.serial).await;
        let mux = session(&mut guest).await;
        let bridge = UnixListener::bind(rds_vsock::host_side_path(&env.paths.agent, 1025)).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        mux.open(1025).await.unwrap().run(theirs);
        let (mut ours_r, mut ours_w) = ours.into_split();
        ours_w.write_all(b"from the guest\n").await.unwrap();
        let (mut host, _) = bridge.accept().await.unwrap();
        let mut line = [0u8; 15];
        host.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"from the guest\n");
        host.write_all(b"back").await.unwrap();
        drop(host);
        let mut got = Vec::new();
        ours_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"back");
        assert!(matches!(mux.open(1999).await, Err(crate::mux::OpenError::Refused(1999))));
    }

    #[tokio::test]
    async fn a_paused_channel_carries_nothing_until_resumed() {
        let env = env();
        let (mut guest, _task) = fake_guest(&env.paths.serial).await;
        session(&mut guest).await;
        let mut s = rds_vsock::connect(&env.paths.agent, 1024, Duration::from_secs(5)).await.unwrap();
        let quiet = quiesce(&env.paths.control, Duration::from_secs(5)).await.unwrap();
        s.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        let early = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(early.is_err(), "bytes crossed a paused channel");
        quiet.resume(Duration::from_secs(5)).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"held");
        // A pause whose caller went away ends by itself.
        drop(quiesce(&env.paths.control, Duration::from_secs(5)).await.unwrap());
        s.write_all(b"more").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"more");
    }

    #[tokio::test]
    async fn a_new_connection_starts_a_new_session_and_ends_the_old_streams() {
        let env = env();
        let (mut guest, task) = fake_guest(&env.paths.serial).await;
        let first = session(&mut guest).await;
        let mut old = rds_vsock::connect(&env.paths.agent, 1024, Duration::from_secs(5)).await.unwrap();
        // QEMU's connection goes away: both halves close.
        first.close_and_wait().await;
        task.abort();
        let _ = task.await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut rest)).await.unwrap().unwrap();
        let (mut guest, _task) = fake_guest(&env.paths.serial).await;
        session(&mut guest).await;
        let mut s = rds_vsock::connect(&env.paths.agent, 1024, Duration::from_secs(5)).await.unwrap();
        s.write_all(b"anew").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"anew");
    }
}
