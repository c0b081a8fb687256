//! `rds bench pty`: keystroke echo round-trips — a byte typed into a terminal running `cat` until
//! its echo comes back — through the manager's WebSocket, straight through the agent's socket,
//! and on a local PTY of this host, in the same run.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::bench::{ms, percentiles, round, Api};

/// Round-trips not counted (connections and the terminal settling).
const WARMUP: usize = 20;
/// Longest wait for one echo.
const ECHO_LIMIT: Duration = Duration::from_secs(10);

/// Runs the benchmark and prints its JSON line.
pub fn run(api: &Api, storage_root: &Path, keys: usize) -> anyhow::Result<()> {
    let mut local = local_pty(keys)?;
    let id = api.create_vm()?;
    let measured = (|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let socket = storage_root.join("vms").join(&id).join("agent.sock");
        let direct = rt.block_on(agent_pty(&socket, keys))?;
        let manager = rt.block_on(manager_pty(api, &id, keys))?;
        Ok::<_, anyhow::Error>((direct, manager))
    })();
    api.delete_vm(&id)?;
    let (mut direct, mut manager) = measured?;
    let local = percentiles(&mut local);
    let direct = percentiles(&mut direct);
    let manager = percentiles(&mut manager);
    let p50 = |v: &serde_json::Value| v["p50"].as_f64().unwrap_or(0.0);
    println!(
        "{}",
        json!({
            "bench": "pty",
            "keys": keys,
            "echoViaManagerWebSocketMs": manager,
            "echoViaAgentSocketMs": direct,
            "echoLocalPtyMs": local,
            "managerAddedMsP50": round(p50(&manager) - p50(&local)),
            "ratioP50": round(p50(&manager) / p50(&local).max(1e-9)),
        })
    );
    Ok(())
}

/// Echo round-trips on a PTY of this host with `cat` on its far end.
fn local_pty(keys: usize) -> anyhow::Result<Vec<f64>> {
    let (mut master, slave) = open_pty()?;
    let mut cat = Command::new("cat")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::null())
        .spawn()
        .context("starting cat on a local terminal")?;
    drop(slave);
    let mut out = Vec::with_capacity(keys);
    let mut buf = [0u8; 256];
    for i in 0..WARMUP + keys {
        let t0 = Instant::now();
        master.write_all(b"k")?;
        // The echo, then (cooked mode passes a line only at its end) nothing else for a lone key.
        loop {
            let n = master.read(&mut buf)?;
            if n == 0 {
                bail!("the local terminal closed");
            }
            if buf[..n].contains(&b'k') {
                break;
            }
        }
        if i >= WARMUP {
            out.push(ms(t0.elapsed()));
        }
    }
    let _ = cat.kill();
    let _ = cat.wait();
    Ok(out)
}

fn open_pty() -> anyhow::Result<(std::fs::File, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors it opened into the out-parameters; the rest are null.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    Ok(unsafe { (std::fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Echo round-trips through the agent's own socket (no manager): a session running `cat`.
async fn agent_pty(socket: &Path, keys: usize) -> anyhow::Result<Vec<f64>> {
    use rds_proto::pty;
    let agent = rds_agent_client::AgentClient::hybrid_vsock(socket);
    let open = pty::PtyRequest { cmd: Some("cat".into()), ..Default::default() };
    let limit = Duration::from_secs(30);
    let info = agent.open_pty(&open, limit).await.context("opening a terminal through the agent")?;
    let mut stream = agent.attach_pty(&info.session_id, limit).await.context("attaching")?;
    let mut out = Vec::with_capacity(keys);
    for i in 0..WARMUP + keys {
        let t0 = Instant::now();
        stream.write_all(&pty::frame(pty::DATA, b"k")).await?;
        let echo = async {
            loop {
                match pty::read_frame(&mut stream).await? {
                    Some((pty::DATA, data)) if data.contains(&b'k') => return Ok::<_, anyhow::Error>(()),
                    Some((pty::DATA, _)) => {}
                    other => bail!("the terminal ended: {other:?}"),
                }
            }
        };
        tokio::time::timeout(ECHO_LIMIT, echo).await.context("no echo")??;
        if i >= WARMUP {
            out.push(ms(t0.elapsed()));
        }
    }
    agent.kill_pty(&info.session_id, limit).await?;
    Ok(out)
}

/// Echo round-trips through `GET /v1/vms/{id}/pty`: a session running `cat`.
async fn manager_pty(api: &Api, id: &str, keys: usize) -> anyhow::Result<Vec<f64>> {
    let url = format!("{}/v1/vms/{id}/pty?cmd=cat", api.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("x-api-key", HeaderValue::from_str(&api.key)?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.context("connecting to the terminal")?;
    let mut out = Vec::with_capacity(keys);
    for i in 0..WARMUP + keys {
        let t0 = Instant::now();
        socket.send(Message::Binary(b"k".to_vec().into())).await?;
        let echo = async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Binary(data))) if data.contains(&b'k') => return Ok::<_, anyhow::Error>(()),
                    // The session message first, output that is not the echo, pings.
                    Some(Ok(Message::Binary(_) | Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                    other => bail!("the terminal ended: {other:?}"),
                }
            }
        };
        tokio::time::timeout(ECHO_LIMIT, echo).await.context("no echo")??;
        if i >= WARMUP {
            out.push(ms(t0.elapsed()));
        }
    }
    let _ = socket.close(None).await;
    Ok(out)
}
