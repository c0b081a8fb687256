//! Shared by the runtime integration tests: the agent binary, VM specs, and calls to a VM's agent
//! over its hybrid-vsock socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_agent_client::AgentClient;
use rds_proto::{ExecRequest, ExecResult};
use rds_runtime::{Runtime, VmSpec};

/// `$RDS_AGENT_BIN`, else `<workspace>/target/debug/rds-agent` (built if missing).
pub fn agent_bin() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("RDS_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = workspace.join("target/debug/rds-agent");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "rds-agent"])
            .current_dir(&workspace)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("rds-agent does not build".into());
        }
    }
    bin.canonicalize().map_err(|e| format!("{}: {e}", bin.display()))
}

/// The guest image directory (vmlinux, vmlinuz, initrd.img, rootfs.ext4), built once per agent
/// binary into the image cache (`$RDS_IMAGE_CACHE`, default `/var/cache/rds-image`), or why it
/// cannot be had here (not root, `RDS_SKIP_IMAGE_BUILD=1`). A failed build is a failure.
pub fn guest_image() -> Result<PathBuf, String> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("runtime tests with the guest image need root".into());
        }
        if std::env::var("RDS_SKIP_IMAGE_BUILD").as_deref() == Ok("1") {
            return Err("RDS_SKIP_IMAGE_BUILD=1".into());
        }
        let agent = agent_bin()?;
        rds_testkit::memoized_dir(&[&agent], || build_into_cache(agent.clone()))
    })
    .clone()
}

/// Builds (or finds) the image for `agent` in the image cache and returns its cache directory.
fn build_into_cache(agent: PathBuf) -> Result<PathBuf, String> {
    let cache = PathBuf::from(std::env::var("RDS_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/rds-image".into()));
    let out = tempfile::Builder::new().prefix("rds-test-image-").tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
    let opts = rds_image::BuildOptions {
        out_dir: out.path().to_path_buf(),
        kernel: rds_image::KernelChoice::Debian,
        agent_bin: agent,
        cache_dir: cache.clone(),
        debian_suite: "bookworm".into(),
        mirror: None,
    };
    let built = rds_image::build(&opts, &mut |line| eprintln!("image: {line}"))
        .unwrap_or_else(|e| panic!("image build failed: {e}"));
    // The cache keeps the same files under `image-<key>`: use those, drop the copy.
    let cached = cache.join(format!("image-{}", built.manifest.cache_key));
    if !cached.join("rootfs.ext4").is_file() {
        panic!("the image cache has no {}", cached.display());
    }
    Ok(cached)
}

/// A one-vCPU VM without network.
pub fn spec(id: &str, mem_mb: u32) -> VmSpec {
    VmSpec { id: id.into(), cpu: 1, mem_mb, hostname: format!("vm-{}", &id[..8]), ..VmSpec::default() }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Most a call to a test VM's agent may take (TCG guests are slow).
pub const CALL_LIMIT: Duration = Duration::from_secs(120);

/// A client for the agent of VM `id`, on a fresh connection per client.
pub fn agent(rt: &dyn Runtime, id: &str) -> AgentClient {
    AgentClient::hybrid_vsock(rt.agent_socket(id))
}

/// `exec` of `cmd`; panics unless the agent answers with an ExecResult.
pub async fn exec(rt: &dyn Runtime, id: &str, cmd: &str) -> ExecResult {
    let request = ExecRequest { cmd: cmd.into(), ..ExecRequest::default() };
    agent(rt, id).exec(&request, CALL_LIMIT).await.unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
}
