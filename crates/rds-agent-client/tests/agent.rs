//! The client against the real agent server (`rds_agent::server::serve_listener`), served
//! in-process on a hybrid-vsock Unix socket as the current user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use rds_agent::server::{serve_listener, AgentConfig};
use rds_agent_client::agent_api::TreeOwner;
use rds_agent_client::{AgentClient, AgentError};
use rds_proto::{ExecEvent, ExecRequest, Language, RunRequest, AGENT_VSOCK_PORT};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for calls that should answer at once.
const LIMIT: Duration = Duration::from_secs(30);

/// An agent serving `socket` until `stop` is sent or dropped.
struct Served {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl Served {
    /// Starts an agent on `socket` whose user code runs as the owner of `workspace` (the caller).
    fn start(socket: &Path, workspace: &Path) -> Served {
        let listener = rds_vsock::Listener::uds(socket, AGENT_VSOCK_PORT).unwrap();
        let meta = std::fs::metadata(workspace).unwrap();
        let cfg = AgentConfig {
            workspace: workspace.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            ..AgentConfig::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_listener(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| format!("{e:#}"))
        });
        Served { stop: Some(stop), task }
    }

    /// Stops the server and waits until it has drained.
    async fn halt(mut self) {
        drop(self.stop.take());
        self.task.await.unwrap().unwrap();
    }
}

/// A temporary directory with a workspace and the socket path an agent serves.
struct Env {
    dir: tempfile::TempDir,
    socket: PathBuf,
    workspace: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let socket = dir.path().join("agent.sock");
        Env { dir, socket, workspace }
    }

    fn client(&self) -> AgentClient {
        AgentClient::hybrid_vsock(&self.socket)
    }
}

fn exec_request(cmd: &str) -> ExecRequest {
    ExecRequest { cmd: cmd.into(), ..ExecRequest::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_round_trip_returns_the_commands_output_and_exit_code() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let agent = env.client();
    let r = agent.exec(&exec_request("echo hello; echo oops >&2; pwd; exit 3"), LIMIT).await.unwrap();
    assert_eq!(r.exit_code, Some(3), "{r:?}");
    assert_eq!(r.stdout, format!("hello\n{}\n", env.workspace.display()), "{r:?}");
    assert_eq!(r.stderr, "oops\n", "{r:?}");
    // The second call reuses the pooled connection.
    let r = agent.exec(&exec_request("echo again"), LIMIT).await.unwrap();
    assert_eq!(r.stdout, "again\n");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_agent_as_ok_with_its_version() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let health = env.client().health(LIMIT).await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert!(health.capabilities.sh, "{health:?}");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_error_statuses_keep_their_status_code_and_message() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let agent = env.client();
    let request = ExecRequest { cwd: Some("does/not/exist".into()), ..exec_request("pwd") };
    match agent.exec(&request, LIMIT).await {
        Err(AgentError::Status { status, code, message }) => {
            assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"), "{message}");
            assert!(message.contains("does/not/exist"), "{message}");
        }
        other => panic!("expected a 400 status error, got {other:?}"),
    }
    match agent.download("missing", LIMIT).await {
        Err(AgentError::Status { status, code, .. }) => {
            assert_eq!((status.as_u16(), code.as_str()), (404, "not_found"))
        }
        other => panic!("expected a 404 status error, got {:?}", other.map(|_| "a body")),
    }
    // A status error leaves the pooled connection usable.
    assert_eq!(agent.exec(&exec_request("echo fine"), LIMIT).await.unwrap().stdout, "fine\n");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_download_round_trips_a_file() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let agent = env.client();
    let data = b"uploaded bytes\n";
    let summary = agent.upload("proj", rds_testkit::tar_gz(&[("hello.txt", data)]), LIMIT).await.unwrap();
    assert_eq!(summary.bytes, data.len() as u64, "{summary:?}");
    assert!(summary.entries >= 1, "{summary:?}");
    assert_eq!(std::fs::read(env.workspace.join("proj/hello.txt")).unwrap(), data);

    let body = agent.download("proj", LIMIT).await.unwrap();
    let archive = body.collect().await.unwrap().to_bytes();
    let files = rds_testkit::untar_gz(&archive);
    assert!(files.iter().any(|(p, c)| p.ends_with("hello.txt") && c == data), "{files:?}");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_tree_swaps_the_tree_for_the_archive() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let agent = env.client();
    agent.upload("peers", rds_testkit::tar_gz(&[("old.txt", b"old")]), LIMIT).await.unwrap();
    let summary = agent
        .replace_tree("peers", TreeOwner::User, false, rds_testkit::tar_gz(&[("new.txt", b"new")]), LIMIT)
        .await
        .unwrap();
    assert_eq!(summary.bytes, 3, "{summary:?}");
    assert_eq!(std::fs::read(env.workspace.join("peers/new.txt")).unwrap(), b"new");
    assert!(!env.workspace.join("peers/old.txt").exists(), "replace-tree kept the old tree");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_exec_yields_output_events_then_the_exit() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let stream = env.client().exec_stream(&exec_request("echo out; echo err >&2; exit 4"), LIMIT).await.unwrap();
    let mut events = stream.events();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await.unwrap() {
        seen.push(event);
    }
    let (stdout, stderr): (String, String) = seen.iter().fold(Default::default(), |(mut o, mut e), ev| {
        match ev {
            ExecEvent::Stdout { data } => o.push_str(data),
            ExecEvent::Stderr { data } => e.push_str(data),
            ExecEvent::Exit(_) => {}
        }
        (o, e)
    });
    assert_eq!((stdout.as_str(), stderr.as_str()), ("out\n", "err\n"), "{seen:?}");
    match seen.last() {
        Some(ExecEvent::Exit(exit)) => assert_eq!(exit.exit_code, Some(4), "{exit:?}"),
        other => panic!("the last event must be the exit, got {other:?}"),
    }
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_python_returns_the_snippets_output() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let agent = env.client();
    let health = agent.health(LIMIT).await.unwrap();
    if !health.capabilities.python3 {
        rds_testkit::skip("python3 is not installed");
        served.halt().await;
        return;
    }
    let run = RunRequest { code: Some("print(6 * 7)".into()), ..RunRequest::default() };
    let r = agent.run(Language::Python, &run, LIMIT).await.unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "42\n"), "{r:?}");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_nobody_serves_is_unreachable_and_nothing_is_sent() {
    let env = Env::new();
    let agent = env.client().connect_retry(Duration::from_millis(100));
    match agent.exec(&exec_request("touch /never"), LIMIT).await {
        Err(AgentError::Unreachable(rds_vsock::ConnectError::NoSocket(path))) => assert_eq!(path, env.socket),
        other => panic!("expected Unreachable(NoSocket), got {other:?}"),
    }
    // A socket file nobody listens on: refused, also before anything was sent.
    drop(std::os::unix::net::UnixListener::bind(&env.socket).unwrap());
    match agent.health(LIMIT).await {
        Err(AgentError::Unreachable(rds_vsock::ConnectError::Refused(_))) => {}
        other => panic!("expected Unreachable(Refused), got {other:?}"),
    }
    drop(env.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_is_reached_on_a_fresh_connection() {
    let env = Env::new();
    let agent = env.client();
    let served = Served::start(&env.socket, &env.workspace);
    assert_eq!(agent.exec(&exec_request("echo one"), LIMIT).await.unwrap().stdout, "one\n");
    assert_eq!(agent.idle_connections(), 1);
    served.halt().await;
    // A request written to a connection whose close the client has not seen yet is never resent
    // (the retry rule), so wait until the pooled connection is known closed.
    tokio::time::timeout(LIMIT, async {
        while agent.idle_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the pooled connection to the stopped agent never closed");
    // The dead connection is passed over for a fresh one.
    let served = Served::start(&env.socket, &env.workspace);
    assert_eq!(agent.exec(&exec_request("echo two"), LIMIT).await.unwrap().stdout, "two\n");
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_limit_is_a_timeout() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    match env.client().exec(&exec_request("sleep 5"), Duration::from_millis(200)).await {
        Err(AgentError::Timeout(limit)) => assert_eq!(limit, Duration::from_millis(200)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    served.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_accepted_and_ends_the_server() {
    let env = Env::new();
    let mut served = Served::start(&env.socket, &env.workspace);
    env.client().shutdown(LIMIT).await.unwrap();
    // `/shutdown` ends `serve_listener` by itself; the stop channel is still held.
    let ended = tokio::time::timeout(LIMIT, &mut served.task).await.expect("the server did not end after /shutdown");
    ended.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_connector_carries_calls_over_its_own_stream() {
    let env = Env::new();
    let served = Served::start(&env.socket, &env.workspace);
    let socket = env.socket.clone();
    let agent = AgentClient::with_connector(move || {
        let socket = socket.clone();
        async move { rds_vsock::connect(&socket, AGENT_VSOCK_PORT, Duration::from_secs(5)).await }
    });
    assert_eq!(agent.socket(), None);
    assert_eq!(agent.exec(&exec_request("echo custom"), LIMIT).await.unwrap().stdout, "custom\n");
    served.halt().await;
}
