//! Harness for end-to-end tests: starts the real `rds serve` binary on its own port and
//! STORAGE_ROOT, with the real sandbox runtime, and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const KEY: &str = "e2e-test-key-0123456789";

/// Why a test cannot run here, or `None` when it can.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (the sandbox runtime creates namespaces and cgroups)".into());
    }
    if !agent_bin().is_file() {
        return Some(format!("{} missing: run `cargo build -p rds-agent`", agent_bin().display()));
    }
    None
}

/// Panics with the reason when a test cannot run here (for tests that must not pass by skipping).
pub fn must_run_here() {
    if let Some(reason) = skip_reason() {
        panic!("this test cannot run here: {reason}");
    }
}

/// Returns early from a test, recording a skip with the reason, when it cannot run.
#[macro_export]
macro_rules! require_sandbox {
    () => {
        if let Some(reason) = common::skip_reason() {
            rds_testkit::skip(reason);
            return;
        }
    };
}

/// Waits (bounded, 90 s) until manager `s`'s warm pool holds `ready` running members.
pub fn wait_for_pool(s: &Server, ready: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let (st, pool) = s.call("GET", "/v1/pool", None);
        assert_eq!(st, 200, "{pool}");
        if pool["ready"].as_u64() == Some(ready) {
            return pool;
        }
        assert!(std::time::Instant::now() < deadline, "the pool never held {ready} ready members: {pool}\n{}", s.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `target/debug/rds-agent`, next to the `rds` binary under test.
pub fn agent_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_rds")).with_file_name("rds-agent")
}

/// Every request rate limit of the API (each 0 = off).
pub const RATE_LIMIT_VARS: [&str; 6] = [
    "RATE_LIMIT_PER_MIN",
    "RATE_LIMIT_CREATE_PER_MIN",
    "RATE_LIMIT_EXEC_PER_MIN",
    "RATE_LIMIT_RUN_PER_MIN",
    "RATE_LIMIT_UPLOAD_PER_MIN",
    "RATE_LIMIT_DOWNLOAD_PER_MIN",
];

/// A running `rds serve`; killed on drop.
pub struct Server {
    pub url: String,
    pub root: tempfile::TempDir,
    pub port: u16,
    env: Vec<(String, String)>,
    /// Command run in front of `rds serve` (e.g. to enter a network namespace); empty = none.
    prefix: Vec<String>,
    child: Option<Child>,
    /// Lines `rds serve` printed on stdout.
    pub stdout: Vec<String>,
    pub key: String,
    /// The manager's installation id (from `/v1/health`): names its cgroup group `rds-<id>`, its
    /// nft table `inet rds-<id>` and its VM interfaces `rds<id><slot>`.
    pub installation_id: String,
}

impl Server {
    /// Starts a server with `API_KEY` set plus `env`.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut all = vec![("API_KEY", KEY)];
        all.extend_from_slice(env);
        Self::start_raw(&all)
    }

    /// Starts a server inside the network namespace `ns` (`/run/netns/<ns>`), listening on
    /// `bind` there, with `API_KEY` set plus `env`. The calling thread must already be in `ns`
    /// (to pick a free port there and to reach the API). `nsenter --net` keeps the host's `/sys`;
    /// `ip netns exec` (a fresh `/sys`, see [`Server::start_prefixed`]) is tested on its own.
    /// A non-loopback `bind` is allowed without TLS: the namespace is the test's own.
    pub fn start_in_netns(ns: &str, bind: &str, env: &[(&str, &str)]) -> Server {
        let mut all = vec![("API_KEY", KEY), ("BIND", bind), ("RDS_ALLOW_INSECURE_BIND", "true")];
        all.extend_from_slice(env);
        let prefix = vec!["nsenter".to_string(), format!("--net=/run/netns/{ns}"), "--".to_string()];
        Self::start_with(&all, prefix, bind)
    }

    /// Starts a server with `API_KEY` set plus `env`, running `prefix` in front of `rds serve`
    /// (e.g. `ip netns exec <ns>`), listening on `bind`.
    pub fn start_prefixed(prefix: &[&str], bind: &str, env: &[(&str, &str)]) -> Server {
        let mut all = vec![("API_KEY", KEY), ("BIND", bind), ("RDS_ALLOW_INSECURE_BIND", "true")];
        all.extend_from_slice(env);
        Self::start_with(&all, prefix.iter().map(|p| p.to_string()).collect(), bind)
    }

    /// Starts a server with exactly `env` (plus port, storage root, agent binary).
    pub fn start_raw(env: &[(&str, &str)]) -> Server {
        Self::start_with(env, Vec::new(), "127.0.0.1")
    }

    fn start_with(env: &[(&str, &str)], prefix: Vec<String>, bind: &str) -> Server {
        let root = tempfile::Builder::new().prefix("rds-e2e-").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = if bind == "0.0.0.0" { "127.0.0.1" } else { bind };
        let scheme = if env.iter().any(|(k, _)| *k == "TLS_CERT") { "https" } else { "http" };
        let mut s = Server {
            url: format!("{scheme}://{host}:{port}"),
            root,
            port,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            prefix,
            child: None,
            stdout: vec![],
            installation_id: String::new(),
            key: env.iter().find(|(k, _)| *k == "API_KEY").map(|(_, v)| v.to_string()).unwrap_or_default(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(env!("CARGO_BIN_EXE_rds"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_rds")),
        };
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", self.port.to_string())
            .env("STORAGE_ROOT", self.root.path())
            .env("RDS_AGENT_BIN", agent_bin())
            .env("RUST_LOG", "warn")
            // No RDS_CGROUP_GROUP: each server's own STORAGE_ROOT gives it its own installation id
            // and so its own cgroup parent `rds-<id>` (the default every user gets).
            // Networking would change the host's interfaces, nftables and ip_forward; only tests
            // that run the manager in their own network namespace switch it on.
            .env("RDS_NETWORK", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(self.log_file()));
        // Sandbox VMs run over the guest image, as users get them (scripts/run builds it too).
        let own_root = self
            .env
            .iter()
            .any(|(k, _)| matches!(k.as_str(), "RDS_IMAGE_DIR" | "RDS_SANDBOX_ROOT" | "BASE_ROOTFS_PATH"));
        if !self.env.iter().any(|(k, _)| k == "RDS_RUNTIME") {
            cmd.env("RDS_RUNTIME", "sandbox");
        }
        if !own_root {
            cmd.env(
                "RDS_IMAGE_DIR",
                guest_image_dir().unwrap_or_else(|e| panic!("no guest image for the sandbox: {e}")),
            );
        }
        // The API's rate limits default to the original's (30 creates a minute, ...), which tests
        // outrun: off unless a test sets them.
        for var in RATE_LIMIT_VARS {
            cmd.env(var, "0");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn rds serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // `rds serve` prints its URL line and then its key line once it is listening.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = vec![];
        while lines.len() < 2 {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => lines.push(l),
                Err(_) => panic!(
                    "rds serve did not start; stdout so far: {lines:?}; status {:?}; log:\n{}",
                    child.try_wait(),
                    self.log()
                ),
            }
        }
        self.stdout = lines;
        self.child = Some(child);
        let (status, health) = match self.tls_cert() {
            Some(cert) => curl_json(&cert, &format!("{}/v1/health", self.url), &[]),
            None => into_status_json(ureq::get(&format!("{}/v1/health", self.url)).call()),
        };
        assert_eq!(status, 200, "health: {health}");
        let id = health["installationId"].as_str().unwrap_or_default().to_string();
        assert!(
            self.installation_id.is_empty() || self.installation_id == id,
            "installation id changed across a restart: {} -> {id}",
            self.installation_id
        );
        self.installation_id = id;
    }

    /// `TLS_CERT` when the manager serves HTTPS (the tests' certificates are self-signed, so this
    /// is also the CA to trust).
    pub fn tls_cert(&self) -> Option<String> {
        self.env.iter().find(|(k, _)| k == "TLS_CERT").map(|(_, v)| v.clone())
    }

    /// The cgroup parent group of this manager's sandboxes.
    pub fn cgroup_group(&self) -> String {
        match self.env.iter().find(|(k, _)| k == "RDS_CGROUP_GROUP") {
            Some((_, group)) if !group.is_empty() => group.clone(),
            _ => format!("rds-{}", self.installation_id),
        }
    }

    /// Where the manager's stderr (its tracing log) goes: appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("manager.log")
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open manager.log")
    }

    /// Everything the manager logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `kill -9` the manager (its VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The manager's resident memory: (now, peak) in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> (u64, u64) {
        let pid = self.child.as_ref().expect("the manager runs").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the manager's status");
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_default();
            line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Starts the manager again on the same port and STORAGE_ROOT.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// VM `id` as this server's database records it (e.g. after a crash), tombstones included.
    pub fn stored_vm(&self, id: &str) -> Option<rds_store::VmRecord> {
        let config = rds_store::StoreConfig::Sqlite { path: self.root.path().join("rds.db") };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            let store = rds_store::open(&config).await.expect("open rds.db");
            store.get_vm(id).await.expect("read the VM")
        })
    }

    /// Makes VM `id` a minimal peer provider: uploads a manifest exporting `add` from `calc.py`.
    pub fn make_calc_provider(&self, id: &str) {
        let manifest = r#"{"sdk": {"name": "calc", "description": "adds"}, "exports": [{"name": "add", "module": "calc.py", "description": "a + b"}]}"#;
        let files =
            [(".rds-peer/manifest.json", manifest.as_bytes()), ("calc.py", &b"def add(args):\n    return 1\n"[..])];
        let resp = self
            .req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace"))
            .set("content-type", "application/gzip")
            .send_bytes(&rds_testkit::tar_gz(&files))
            .unwrap();
        assert_eq!(resp.status(), 204);
    }

    /// Ids of the warm-pool members in the manager's database (any state but DELETED).
    pub fn stored_pool_members(&self) -> Vec<String> {
        let config = rds_store::StoreConfig::Sqlite { path: self.root.path().join("rds.db") };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            let store = rds_store::open(&config).await.expect("open rds.db");
            store.list_vms().await.expect("list VMs").into_iter().filter(|v| v.pool).map(|v| v.id).collect()
        })
    }

    /// Host pid of VM `id`'s top process (sandbox launcher, QEMU), from its recorded handle.
    pub fn vm_pid(&self, id: &str) -> i32 {
        let vm = self.stored_vm(id).expect("the VM exists");
        let handle: serde_json::Value =
            serde_json::from_str(vm.handle_json.as_deref().expect("a running VM has a handle")).unwrap();
        handle["pid"].as_i64().expect("handle has a pid") as i32
    }

    /// The directory of VM `id` under this server's storage root.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.root.path().join("vms").join(id)
    }

    /// The manager's `STORAGE_ROOT`.
    pub fn storage_root(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    pub fn req(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}{path}", self.url)).set("X-API-Key", &self.key)
    }

    /// Sends and returns (status, JSON body or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let r = self.req(method, path);
        let res = match body {
            Some(b) => r.send_json(b),
            None => r.call(),
        };
        into_status_json(res)
    }

    pub fn create_vm(&self, mem_mb: u32) -> String {
        let (st, vm) = self.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": mem_mb})));
        assert_eq!(st, 201, "create: {vm}");
        assert_eq!(vm["state"], "RUNNING");
        vm["id"].as_str().unwrap().to_string()
    }

    pub fn exec(&self, id: &str, cmd: &str) -> Value {
        let (st, r) = self.call("POST", &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": cmd})));
        assert_eq!(st, 200, "exec {cmd}: {r}");
        r
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Delete every VM so no sandbox outlives the test, then stop the manager.
        if self.child.is_some() && self.tls_cert().is_none() {
            if let (200, Value::Array(vms)) = self.call("GET", "/v1/vms", None) {
                for vm in vms {
                    let _ = self.req("DELETE", &format!("/v1/vms/{}", vm["id"].as_str().unwrap_or(""))).call();
                }
            }
        }
        self.kill9();
        if !self.installation_id.is_empty() {
            remove_empty_cgroup_group(&self.cgroup_group());
            // The manager is gone, so nobody holds its host-wide locks: don't let them pile up.
            let locks = std::path::Path::new("/run/rds/locks");
            let _ = std::fs::remove_file(locks.join(format!("installation-{}.lock", self.installation_id)));
            let _ = std::fs::remove_file(locks.join(format!("cgroup-{}.lock", self.cgroup_group())));
        }
    }
}

/// Removes this server's (now empty) cgroup parent group.
fn remove_empty_cgroup_group(name: &str) {
    rds_runtime::cgroup::CgroupLayout::remove_empty_group(name);
}

/// `curl` over HTTPS trusting `ca`, with `args`; returns (status, JSON body or Null).
pub fn curl_json(ca: &str, url: &str, args: &[&str]) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "--cacert", ca, "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

pub fn into_status_json(res: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match res {
        Ok(r) => {
            let st = r.status();
            (st, r.into_json().unwrap_or(Value::Null))
        }
        Err(ureq::Error::Status(st, r)) => (st, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// The guest image for qemu tests (built into, or found in, the image cache), or why a qemu test
/// cannot run here: not root, no QEMU, or `RDS_SKIP_IMAGE_BUILD=1`.
pub fn qemu_image_dir() -> Result<PathBuf, String> {
    if !rds_host::on_path("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 is not on PATH".into());
    }
    guest_image_dir()
}

/// The guest image (built into, or found in, the image cache; built once per agent binary), or why
/// it cannot be had: not root, or `RDS_SKIP_IMAGE_BUILD=1`.
pub fn guest_image_dir() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_guest_image).clone()
}

fn build_guest_image() -> Result<PathBuf, String> {
    if let Some(reason) = skip_reason() {
        return Err(reason);
    }
    if std::env::var("RDS_SKIP_IMAGE_BUILD").as_deref() == Ok("1") {
        return Err("RDS_SKIP_IMAGE_BUILD=1".into());
    }
    rds_testkit::memoized_dir(&[&agent_bin()], build_into_cache)
}

fn build_into_cache() -> Result<PathBuf, String> {
    let cache = PathBuf::from(std::env::var("RDS_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/rds-image".into()));
    let out = tempfile::Builder::new().prefix("rds-e2e-image-").tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
    let built = rds_image::build(
        &rds_image::BuildOptions {
            out_dir: out.path().to_path_buf(),
            kernel: rds_image::KernelChoice::Debian,
            agent_bin: agent_bin(),
            cache_dir: cache.clone(),
            debian_suite: "bookworm".into(),
            mirror: None,
        },
        &mut |line| eprintln!("image: {line}"),
    )
    // A failed build is a failure, not a reason to skip.
    .unwrap_or_else(|e| panic!("image build failed: {e}"));
    Ok(cache.join(format!("image-{}", built.manifest.cache_key)))
}

/// A network namespace the test owns (`/run/netns/<name>`, loopback up); deleted on drop.
pub struct NetNs(pub String);

impl NetNs {
    /// Creates `<prefix><pid>x<nanos>`; panics when `ip netns add` fails.
    pub fn new(prefix: &str) -> NetNs {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{prefix}{}x{}", std::process::id(), nanos % 100_000);
        for args in [vec!["netns", "add", name.as_str()], vec!["-n", name.as_str(), "link", "set", "lo", "up"]] {
            let status = Command::new("ip").args(&args).status().expect("run ip");
            assert!(status.success(), "ip {} failed", args.join(" "));
        }
        NetNs(name)
    }

    /// Runs `f` on a fresh thread inside this namespace, re-raising its panic here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        let joined = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on an fd we own; it changes only this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join();
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Runs a command inside network namespace `ns`, panicking with its stderr on failure; returns stdout.
pub fn sh_in(ns: &str, program: &str, args: &[&str]) -> String {
    let output = Command::new("ip").args(["netns", "exec", ns, program]).args(args).output().expect("spawn");
    assert!(
        output.status.success(),
        "{program} {} in {ns} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `cmd`, prints its output, and fails the test unless it succeeded; its output.
pub fn run_checked(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "{cmd:?} failed:\n{report}");
    out
}
