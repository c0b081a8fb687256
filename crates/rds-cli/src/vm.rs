//! `rds vm`: commands on one VM of a running manager. `rds vm shell` is an interactive terminal
//! in the VM over the manager's WebSocket (`GET /v1/vms/{id}/pty`).

use std::io::Write;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct VmArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: VmCommand,
}

/// How to reach the manager, and how to print: flags of every `rds vm` and `rds image` command
/// that talks to one.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The manager's URL.
    #[arg(long, global = true, env = "RDS_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// An API key of the manager.
    #[arg(long, global = true, env = "RDS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON (the API's objects) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Conn {
    /// A client of the manager.
    pub fn client(&self) -> anyhow::Result<rds_client::Client> {
        let key = self.api_key.as_deref().context("an API key is needed: --api-key or RDS_API_KEY")?;
        Ok(rds_client::Client::new(&self.url, key)?)
    }
}

#[derive(clap::Subcommand)]
enum VmCommand {
    /// Create a VM; prints its id (or the VM with --json).
    Create(crate::vm_api::CreateArgs),
    /// List VMs.
    Ls,
    /// Show one VM.
    Get { id: String },
    /// Delete VMs.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Boot a stopped VM (its workspace kept).
    Start { id: String },
    /// Shut a VM down, keeping its workspace.
    Stop { id: String },
    /// Run a shell command; its output streams, and rds exits with its status.
    Exec(crate::vm_api::ExecArgs),
    /// Run TypeScript, JavaScript or Python; prints the output, then the result as JSON.
    Run(crate::vm_api::RunArgs),
    /// Copy files: `rds vm cp ./dir VM:/workspace/dir` uploads, `rds vm cp VM:/workspace/out ./out`
    /// downloads.
    Cp { src: String, dst: String },
    /// Print a VM's console log (or `--type`).
    Logs {
        id: String,
        #[arg(long = "type")]
        log_type: Option<String>,
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Snapshot a VM; prints the snapshot's id (or the snapshot with --json).
    Snapshot {
        id: String,
        /// Include the VM's memory (where the runtime can).
        #[arg(long)]
        memory: bool,
    },
    /// An interactive shell in the VM; exits with the shell's exit status.
    Shell(ShellArgs),
}

#[derive(clap::Args)]
struct ShellArgs {
    /// The VM's id.
    id: String,
    /// Re-attach to this terminal session instead of starting one (its recent output is replayed).
    #[arg(long)]
    session: Option<String>,
    /// Run this command in the terminal instead of a login shell.
    #[arg(long, conflicts_with = "session")]
    cmd: Option<String>,
}

pub fn run(args: VmArgs) -> anyhow::Result<()> {
    use crate::vm_api as api;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let c = &args.conn;
    let code = runtime.block_on(async {
        match args.command {
            VmCommand::Create(a) => api::create(c, a).await,
            VmCommand::Ls => api::ls(c).await,
            VmCommand::Get { id } => api::get(c, &id).await,
            VmCommand::Rm { ids } => api::rm(c, &ids).await,
            VmCommand::Start { id } => api::start(c, &id).await,
            VmCommand::Stop { id } => api::stop(c, &id).await,
            VmCommand::Exec(a) => api::exec(c, a).await,
            VmCommand::Run(a) => api::run_code(c, a).await,
            VmCommand::Cp { src, dst } => api::cp(c, &src, &dst).await,
            VmCommand::Logs { id, log_type, tail } => api::logs(c, &id, log_type.as_deref(), tail).await,
            VmCommand::Snapshot { id, memory } => api::snapshot(c, &id, memory).await,
            VmCommand::Shell(a) => shell(c, a).await,
        }
    })?;
    // Leave without running destructors that could touch the terminal again.
    std::process::exit(code);
}

/// Restores the terminal's settings when dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    /// Puts stdin's terminal in raw mode (keys go to the VM as typed); nothing when stdin is no terminal.
    fn enter() -> anyhow::Result<RawMode> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty/tcgetattr/tcsetattr on stdin with a termios owned by this frame.
        unsafe {
            if libc::isatty(fd) != 1 {
                return Ok(RawMode(None));
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error()).context("reading the terminal's settings");
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error()).context("switching the terminal to raw mode");
            }
            Ok(RawMode(Some(saved)))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `enter` on the same descriptor.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, saved) };
        }
    }
}

/// The local terminal's size (columns, rows), if stdout is a terminal.
fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes one winsize into the zeroed struct this frame owns.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0)
            .then_some((ws.ws_col, ws.ws_row))
    }
}

/// The WebSocket URL of VM `id`'s terminal.
fn pty_url(
    base: &str,
    id: &str,
    session: Option<&str>,
    cmd: Option<&str>,
    size: Option<(u16, u16)>,
) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        bail!("--url must start with http:// or https:// (got {base:?})");
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(session) = session {
        query.append_pair("session", session);
    } else {
        if let Some((cols, rows)) = size {
            query.append_pair("cols", &cols.to_string()).append_pair("rows", &rows.to_string());
        }
        if let Some(cmd) = cmd {
            query.append_pair("cmd", cmd);
        }
    }
    let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    Ok(format!("{base}/v1/vms/{id}/pty?{}", query.finish()))
}

async fn shell(conn: &Conn, args: ShellArgs) -> anyhow::Result<i32> {
    let size = terminal_size();
    let url = pty_url(&conn.url, &args.id, args.session.as_deref(), args.cmd.as_deref(), size)?;
    let api_key = conn.api_key.as_deref().context("an API key is needed: --api-key or RDS_API_KEY")?;
    let mut request = url.as_str().into_client_request().context("building the WebSocket request")?;
    request.headers_mut().insert("x-api-key", HeaderValue::from_str(api_key).context("--api-key")?);
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
            bail!("the manager answered {}: {body}", resp.status());
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", conn.url)),
    };
    let (mut tx, mut rx) = socket.split();
    let raw = RawMode::enter()?;
    if args.session.is_some() {
        // A re-attached session keeps its old size until told otherwise.
        if let Some((cols, rows)) = size {
            let resize = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
            tx.send(Message::Text(resize.to_string().into())).await?;
        }
    }
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let mut session = None;
    let mut stdout = std::io::stdout();
    let code = loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => tx.send(Message::Binary(buf[..n].to_vec().into())).await?,
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = terminal_size() {
                    let resize = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
                    tx.send(Message::Text(resize.to_string().into())).await?;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(text))) => {
                    let event: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    match event["type"].as_str() {
                        Some("session") => session = event["sessionId"].as_str().map(String::from),
                        Some("exit") => {
                            let code = event["exitCode"].as_i64().map(|c| c as i32);
                            break code.unwrap_or_else(|| 128 + event["signal"].as_i64().unwrap_or(1) as i32);
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    drop(raw);
                    let reason = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                    eprintln!("\r\nrds: the manager closed the terminal {reason}");
                    break 1;
                }
                Some(Ok(_)) => {}
                lost => {
                    drop(raw);
                    let detail = match lost { Some(Err(e)) => format!(": {e}"), _ => String::new() };
                    eprintln!("\r\nrds: connection lost{detail}");
                    if let Some(session) = &session {
                        eprintln!("rds: re-attach with: rds vm shell {} --session {session}", args.id);
                    }
                    break 1;
                }
            },
        }
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pty_url_follows_the_managers_scheme_and_encodes_its_query() {
        assert_eq!(
            pty_url("http://127.0.0.1:3000/", "vm-1", None, Some("top -b"), Some((120, 40))).unwrap(),
            "ws://127.0.0.1:3000/v1/vms/vm-1/pty?cols=120&rows=40&cmd=top+-b"
        );
        assert_eq!(
            pty_url("https://rds.example", "vm-1", Some("s-1"), None, Some((1, 1))).unwrap(),
            "wss://rds.example/v1/vms/vm-1/pty?session=s-1"
        );
        assert!(pty_url("ftp://x", "vm", None, None, None).is_err());
    }
}
