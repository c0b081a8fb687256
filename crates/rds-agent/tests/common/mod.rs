//! Test harness: starts the real `rds-agent serve` on a temporary Unix socket and talks HTTP/1.1
//! to it through the hybrid-vsock handshake, like the manager does.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rds_proto::AGENT_VSOCK_PORT;
use serde_json::Value;

/// A running agent with its own socket and workspace, killed on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub workspace: PathBuf,
    _dir: tempfile::TempDir,
}

/// A finished HTTP exchange.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// True when the tests can run (the agent must be root to switch to uid 1000); records a skip otherwise.
pub fn can_run() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        rds_testkit::skip("needs root");
        false
    }
}

/// True when `program` is installed; records a skip otherwise.
pub fn has_program(program: &str) -> bool {
    let found = ["/usr/local/bin", "/usr/bin", "/bin"].iter().any(|d| std::path::Path::new(d).join(program).exists());
    if !found {
        rds_testkit::skip(format!("{program} is not installed"));
    }
    found
}

impl Agent {
    /// Starts an agent, or returns `None` (after recording a skip) when not root.
    pub async fn start() -> Option<Agent> {
        Self::start_with_env(&[]).await
    }

    /// Starts an agent whose own environment includes `env`.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Option<Agent> {
        if !can_run() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // uid 1000 must be able to traverse down to its workspace.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        std::os::unix::fs::chown(&workspace, Some(1000), Some(1000)).unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_rds-agent"))
            .args(["serve", "--listen-uds"])
            .arg(&socket)
            .arg("--workspace")
            .arg(&workspace)
            .args(["--uid", "1000", "--gid", "1000"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, socket, workspace, _dir: dir };
        rds_vsock::connect_retry(&agent.socket, AGENT_VSOCK_PORT, Duration::from_secs(10))
            .await
            .expect("agent did not come up");
        Some(agent)
    }

    /// Pid of the agent process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 10 s) for the agent to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent did not exit");
    }

    /// Sends one request on a fresh connection and reads the whole reply.
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let stream = rds_vsock::connect(&self.socket, AGENT_VSOCK_PORT, Duration::from_secs(5)).await.unwrap();
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut builder = Request::builder().method(method).uri(path).header("host", "agent");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = sender.send_request(builder.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply { status, headers, body }
    }

    /// POSTs a JSON value.
    pub async fn post_json(&self, path: &str, value: &Value) -> Reply {
        self.post_raw(path, serde_json::to_vec(value).unwrap()).await
    }

    /// POSTs raw bytes as JSON.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Reply {
        self.request(Method::POST, path, &[("content-type", "application/json")], body).await
    }

    /// Runs an exec that must succeed at the HTTP level; returns its result.
    pub async fn exec(&self, request: Value) -> Value {
        let reply = self.post_json("/exec", &request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        reply.json()
    }

    /// Runs a snippet through `/run-ts|js|python`; returns the HTTP 200 result.
    pub async fn run(&self, route: &str, request: Value) -> Value {
        let reply = self.post_json(route, &request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        reply.json()
    }

    /// Names of everything in the workspace.
    pub fn workspace_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.workspace)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Agent {
    /// Stops the agent as a guest would (SIGTERM, so it stops its pre-started interpreters and
    /// removes its runs directory), killing it when it does not stop within 5 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            for _ in 0..250 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True while `/proc/<pid>` exists as a live (non-zombie) process.
pub fn process_alive(pid: i32) -> bool {
    rds_host::ProcStat::read(pid).is_some_and(|stat| stat.is_live())
}
