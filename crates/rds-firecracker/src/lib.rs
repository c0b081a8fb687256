//! Firecracker, driven from the host: a typed async client for its API over the Unix socket
//! (`--api-sock`), and the jailer's command line ([`jailer`]).
//!
//! Bodies follow `firecracker-api-v1.16.1.yaml` ([`api`]). A refusal comes back as
//! [`Error::Fault`] carrying Firecracker's `fault_message`. Every request and answer is logged at
//! debug. One connection per request: the API is small and called rarely, and a fresh connection
//! never inherits a broken one's state.

pub mod api;
mod error;
pub mod jailer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;
use tokio::time::Instant;

pub use api::*;
pub use error::Error;

/// Per-call time limit unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: Firecracker's are a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;
/// Bodies longer than this are cut in logs and errors.
const LOG_BODY: usize = 512;
/// Pause between attempts while waiting for a starting process's API.
const READY_POLL: Duration = Duration::from_millis(5);

/// A client for one Firecracker process's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the API socket at `api_socket` (a host path), with the default 10 s per call.
    pub fn new(api_socket: impl Into<PathBuf>) -> Client {
        Client { socket: api_socket.into(), timeout: DEFAULT_TIMEOUT }
    }

    /// Limits each call (connect, request and answer) to `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The API socket this client dials.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Polls `GET /` until the API answers or `within` passes: for a process that just started
    /// and may not have bound its socket yet. A refusal (a fault, an answer that does not parse)
    /// ends the wait at once; when time runs out the last failure is returned.
    pub async fn wait_ready(&self, within: Duration) -> Result<InstanceInfo, Error> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self.call::<InstanceInfo>(Method::GET, "/".into(), None, self.timeout.min(left)).await {
                Ok(info) => return Ok(info),
                Err(e @ (Error::Connect { .. } | Error::Http { .. } | Error::Timeout { .. })) => e,
                Err(e) => return Err(e),
            };
            if Instant::now() + READY_POLL >= deadline {
                return Err(err);
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// `GET /`: id, state and version of the process.
    pub async fn instance_info(&self) -> Result<InstanceInfo, Error> {
        self.get("/").await
    }

    /// `GET /version`: Firecracker's version, e.g. `1.16.1`.
    pub async fn version(&self) -> Result<String, Error> {
        Ok(self.get::<FirecrackerVersion>("/version").await?.firecracker_version)
    }

    /// `GET /machine-config`: the machine configuration in effect.
    pub async fn machine_config(&self) -> Result<MachineConfiguration, Error> {
        self.get("/machine-config").await
    }

    /// `PUT /machine-config` (before start).
    pub async fn put_machine_config(&self, c: &MachineConfiguration) -> Result<(), Error> {
        self.send(Method::PUT, "/machine-config".into(), c).await
    }

    /// `PUT /boot-source` (before start).
    pub async fn put_boot_source(&self, b: &BootSource) -> Result<(), Error> {
        self.send(Method::PUT, "/boot-source".into(), b).await
    }

    /// `PUT /drives/{drive_id}` (before start).
    pub async fn put_drive(&self, d: &Drive) -> Result<(), Error> {
        self.send(Method::PUT, format!("/drives/{}", path_id("drive_id", &d.drive_id)?), d).await
    }

    /// `PUT /network-interfaces/{iface_id}` (before start).
    pub async fn put_network_interface(&self, n: &NetworkInterface) -> Result<(), Error> {
        self.send(Method::PUT, format!("/network-interfaces/{}", path_id("iface_id", &n.iface_id)?), n).await
    }

    /// `PUT /vsock` (before start).
    pub async fn put_vsock(&self, v: &Vsock) -> Result<(), Error> {
        self.send(Method::PUT, "/vsock".into(), v).await
    }

    /// `PUT /serial`: where the guest console goes (before start).
    pub async fn put_serial(&self, s: &SerialDevice) -> Result<(), Error> {
        self.send(Method::PUT, "/serial".into(), s).await
    }

    /// `PUT /logger` (once per process).
    pub async fn put_logger(&self, l: &Logger) -> Result<(), Error> {
        self.send(Method::PUT, "/logger".into(), l).await
    }

    /// `PUT /metrics` (once per process).
    pub async fn put_metrics(&self, m: &Metrics) -> Result<(), Error> {
        self.send(Method::PUT, "/metrics".into(), m).await
    }

    /// `PUT /actions` `InstanceStart`: boots the configured VM.
    pub async fn start(&self) -> Result<(), Error> {
        self.action(ActionType::InstanceStart).await
    }

    /// `PUT /actions` `SendCtrlAltDel`: asks the guest to shut down.
    pub async fn send_ctrl_alt_del(&self) -> Result<(), Error> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    /// `PUT /actions` `FlushMetrics`: writes the metrics now.
    pub async fn flush_metrics(&self) -> Result<(), Error> {
        self.action(ActionType::FlushMetrics).await
    }

    /// `PATCH /vm` `Paused`: stops the vCPUs.
    pub async fn pause(&self) -> Result<(), Error> {
        self.send(Method::PATCH, "/vm".into(), &Vm { state: VmState::Paused }).await
    }

    /// `PATCH /vm` `Resumed`: lets a paused VM run again.
    pub async fn resume(&self) -> Result<(), Error> {
        self.send(Method::PATCH, "/vm".into(), &Vm { state: VmState::Resumed }).await
    }

    /// `PUT /snapshot/create` (the VM must be paused).
    pub async fn create_snapshot(&self, p: &SnapshotCreateParams) -> Result<(), Error> {
        self.send(Method::PUT, "/snapshot/create".into(), p).await
    }

    /// `PUT /snapshot/load` (into a fresh process).
    pub async fn load_snapshot(&self, p: &SnapshotLoadParams) -> Result<(), Error> {
        self.send(Method::PUT, "/snapshot/load".into(), p).await
    }

    async fn action(&self, action_type: ActionType) -> Result<(), Error> {
        self.send(Method::PUT, "/actions".into(), &InstanceActionInfo { action_type }).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::GET, path.into(), None, self.timeout).await
    }

    /// A request with a JSON body whose success answer (204) has none.
    async fn send(&self, method: Method, path: String, body: &impl Serialize) -> Result<(), Error> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no custom impls.
        let body = serde_json::to_vec(body).expect("firecracker request bodies serialize");
        self.call::<Discard>(method, path, Some(body), self.timeout).await.map(|Discard| ())
    }

    /// One request on a fresh connection, bounded by `limit`: connect, send, read the answer.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<T, Error> {
        let name = method_name(&method);
        match tokio::time::timeout(limit, self.exchange(method, name, &path, body)).await {
            Ok(Ok((status, bytes))) => answer(name, path, status, &bytes),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout { method: name, path, after: limit }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        name: &'static str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), Error> {
        let http_err = |source| Error::Http { method: name, path: path.to_string(), source };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| Error::Connect { socket: self.socket.clone(), source })?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(http_err)?;
        // The connection is driven by its own task, aborted when this exchange ends or is dropped
        // (timeout): a Firecracker that never answers must not keep a task and a socket alive.
        let _connection = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "firecracker API connection ended with an error");
            }
        }));
        tracing::debug!(
            socket = %self.socket.display(),
            method = name,
            path,
            body = %body.as_deref().map(truncated).unwrap_or_default(),
            "firecracker API request"
        );
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        // The path is ours: fixed strings and ids checked by `path_id`, so the URI is valid.
        let request =
            request.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("firecracker request is well-formed");
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status().as_u16();
        let mut incoming = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame.map_err(http_err)?.into_data() {
                if bytes.len() + data.len() > MAX_RESPONSE {
                    return Err(Error::TooLarge { method: name, path: path.to_string(), limit: MAX_RESPONSE });
                }
                bytes.extend_from_slice(&data);
            }
        }
        tracing::debug!(
            socket = %self.socket.display(),
            method = name,
            path,
            status,
            body = %truncated(&bytes),
            "firecracker API response"
        );
        Ok((status, bytes))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A success answer whose body, if any, is not needed (204 No Content).
#[derive(Debug)]
struct Discard;

impl<'de> serde::Deserialize<'de> for Discard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Discard)
    }
}

/// Maps a status and body to the caller's type or an [`Error`].
fn answer<T: DeserializeOwned>(method: &'static str, path: String, status: u16, bytes: &[u8]) -> Result<T, Error> {
    if !(200..300).contains(&status) {
        let fault_message = match serde_json::from_slice::<Fault>(bytes) {
            Ok(fault) => fault.fault_message,
            Err(_) => truncated(bytes),
        };
        return Err(Error::Fault { method, path, status, fault_message });
    }
    // 204 has no body; an empty one parses as `null` for the `Discard` case only.
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { b"null".as_slice() } else { bytes };
    serde_json::from_slice(bytes).map_err(|source| Error::Decode { method, path, body: truncated(bytes), source })
}

/// `id` if Firecracker accepts it as a resource id in a path (its own rule: letters, digits, `_`,
/// at most 64); checked here so a hostile id can never change the request's path.
fn path_id<'a>(field: &'static str, id: &'a str) -> Result<&'a str, Error> {
    let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(id)
    } else {
        Err(Error::InvalidId { field, id: id.to_string() })
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "?",
    }
}

/// `bytes` as text, cut to [`LOG_BODY`] characters.
fn truncated(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(LOG_BODY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_carry_firecrackers_message_and_the_request() {
        let err = answer::<Discard>("PUT", "/drives/x".into(), 400, br#"{"fault_message":"No such file"}"#)
            .expect_err("a 400 is an error");
        assert_eq!(err.fault_message(), Some("No such file"));
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.to_string(), "firecracker PUT /drives/x: 400: No such file");
        let odd = answer::<Discard>("GET", "/".into(), 500, b"not json").expect_err("a 500 is an error");
        assert_eq!(odd.fault_message(), Some("not json"));
    }

    #[test]
    fn success_answers_parse_or_fail_with_the_body() {
        answer::<Discard>("PUT", "/vm".into(), 204, b"").expect("204 without a body");
        let v: FirecrackerVersion =
            answer("GET", "/version".into(), 200, br#"{"firecracker_version":"1.16.1"}"#).expect("parse");
        assert_eq!(v.firecracker_version, "1.16.1");
        let err = answer::<FirecrackerVersion>("GET", "/version".into(), 200, b"{}").expect_err("missing field");
        assert!(matches!(&err, Error::Decode { body, .. } if body == "{}"), "{err:?}");
    }

    #[tokio::test]
    async fn ids_that_would_change_the_path_are_refused_before_sending() {
        // The socket does not exist: had anything been sent, the error would be `Connect`.
        let client = Client::new("/nonexistent/rds-firecracker-test.sock");
        for id in ["", "../vm", "a/b", "a b", "a?x=1", &"x".repeat(65)] {
            let drive = Drive { drive_id: id.into(), path_on_host: "/d".into(), ..Default::default() };
            let err = client.put_drive(&drive).await.expect_err("refused");
            assert!(matches!(&err, Error::InvalidId { field: "drive_id", .. }), "{id:?}: {err:?}");
            let net = NetworkInterface { iface_id: id.into(), host_dev_name: "tap0".into(), ..Default::default() };
            let err = client.put_network_interface(&net).await.expect_err("refused");
            assert!(matches!(&err, Error::InvalidId { field: "iface_id", .. }), "{id:?}: {err:?}");
        }
        let ok = Drive { drive_id: "root_fs1".into(), path_on_host: "/d".into(), ..Default::default() };
        let err = client.put_drive(&ok).await.expect_err("no socket");
        assert!(matches!(&err, Error::Connect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn wait_ready_gives_up_with_the_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = Client::new(dir.path().join("api.sock"));
        let err = client.wait_ready(Duration::from_millis(50)).await.expect_err("nothing listens");
        match err {
            Error::Connect { socket, source } => {
                assert_eq!(socket, dir.path().join("api.sock"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_api_times_out_and_a_dropped_connection_is_an_http_error() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let client = Client::new(&path).with_timeout(Duration::from_millis(100));
        // Accepted by the kernel's backlog, never answered.
        let err = client.instance_info().await.expect_err("no answer");
        assert!(
            matches!(&err, Error::Timeout { method: "GET", path, after } if path == "/" && *after == Duration::from_millis(100)),
            "{err:?}"
        );
        // The request was sent, and the connection closed when the call gave up.
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut sent = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sent)).await;
        assert!(matches!(read, Ok(Ok(_))), "the client kept the connection open: {read:?}");
        assert!(sent.starts_with(b"GET / HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&sent));
        // Accepted and closed before any answer.
        let closer = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                drop(stream);
            }
        });
        let err = client.pause().await.expect_err("connection closed");
        assert!(matches!(&err, Error::Http { method: "PATCH", path, .. } if path == "/vm"), "{err:?}");
        closer.abort();
    }

    #[test]
    fn truncation_keeps_short_bodies_and_cuts_long_ones() {
        assert_eq!(truncated(b"short"), "short");
        let long = "é".repeat(LOG_BODY + 10);
        let cut = truncated(long.as_bytes());
        assert_eq!(cut.chars().count(), LOG_BODY + 1);
        assert!(cut.ends_with('…'));
    }
}
