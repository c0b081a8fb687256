//! The test runtime behind the [`Runtime`] seam: each VM's agent is the real `rds-agent` server
//! running as a task on the caller's tokio runtime, as the current user, on a hybrid-vsock Unix
//! socket under `root/<id>/`. It needs no root, namespaces, cgroups or agent process (commands the
//! agent runs are still processes). Never used by `rds serve`.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rds_agent::server::AgentConfig;
use rds_proto::AGENT_VSOCK_PORT;
use rds_runtime::{
    BootNeeds, Capabilities, Isolation, Liveness, RootfsForm, Runtime, RuntimeError, RuntimeKind, VmHandle, VmSpec,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs each VM's agent in-process; a VM's workspace is `root/<id>/workspace`.
pub struct InProcessRuntime {
    root: PathBuf,
    agents: Mutex<HashMap<String, RunningAgent>>,
}

/// One served agent: dropping `stop` (or sending on it) ends the server.
struct RunningAgent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcessRuntime {
    /// VMs live under `root`.
    pub fn new(root: PathBuf) -> Self {
        InProcessRuntime { root, agents: Mutex::new(HashMap::new()) }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Ends the agent of `id` and waits until its server has drained.
    async fn halt(&self, id: &str) {
        let agent = self.agents.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if let Some(RunningAgent { stop, task }) = agent {
            let _ = stop.send(());
            let _ = task.await;
        }
        let _ = std::fs::remove_file(self.agent_socket(id));
    }
}

#[async_trait::async_trait]
impl Runtime for InProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Sandbox
    }

    fn isolation(&self) -> Isolation {
        Isolation::None
    }

    fn link_kind(&self) -> rds_runtime::LinkKind {
        rds_runtime::LinkKind::Veth
    }

    fn capabilities(&self) -> Capabilities {
        // Its agents share the test's network namespace: there is no link to give them.
        Capabilities { snapshots: None, pause: false, network: false }
    }

    fn boot_needs(&self) -> BootNeeds {
        // The agent serves the host's filesystem; an image is recorded but never booted.
        BootNeeds { kernels: &[], initrd: false, rootfs: RootfsForm::Ext4FileOrDirectory, default_root: true }
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError> {
        rds_runtime::check_vm_id(&spec.id)?;
        let workspace = self.dir(&spec.id).join("workspace");
        std::fs::create_dir_all(&workspace)
            .map_err(|e| RuntimeError::io(format!("creating {}", workspace.display()), e))?;
        let socket = self.agent_socket(&spec.id);
        // Bound before `start` returns, so the manager's first call cannot race the listener.
        let listener = rds_vsock::Listener::uds(&socket, AGENT_VSOCK_PORT)
            .map_err(|e| RuntimeError::io(format!("listening on {}", socket.display()), e))?;
        std::fs::write(self.console_log(&spec.id), format!("rds-agent serving in-process on {}\n", socket.display()))
            .map_err(|e| RuntimeError::io("writing the console log", e))?;
        // User code runs as whoever runs the tests: the agent only switches identity when it differs.
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let cfg = AgentConfig { workspace, uid, gid, ..AgentConfig::default() };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(rds_agent::server::serve_listener(listener, cfg, async {
            let _ = stopped.await;
        }));
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.id.clone(), RunningAgent { stop, task });
        let pid = std::process::id() as i32;
        Ok(VmHandle {
            pid,
            start_time: rds_runtime::process_start_time(pid).unwrap_or(0),
            extra: serde_json::Value::Null,
        })
    }

    async fn stop(&self, id: &str, _h: &VmHandle) -> Result<(), RuntimeError> {
        self.halt(id).await;
        Ok(())
    }

    async fn destroy(&self, id: &str, _h: Option<&VmHandle>) -> Result<(), RuntimeError> {
        rds_runtime::check_vm_id(id)?;
        self.halt(id).await;
        match remove_tree(&self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io("removing the VM directory", e)),
            _ => Ok(()),
        }
    }

    async fn probe(&self, id: &str, _h: &VmHandle) -> Liveness {
        match self.agents.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            Some(agent) if !agent.task.is_finished() => Liveness::Alive,
            _ => Liveness::Dead("the in-process agent is not serving".into()),
        }
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("agent.sock")
    }

    fn bridge_socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("bridge.sock")
    }

    fn console_log(&self, id: &str) -> PathBuf {
        self.dir(id).join("console.log")
    }

    async fn oom_kills(&self, _id: &str) -> Option<u64> {
        None
    }

    async fn remove_orphans(&self, known: &HashSet<String>) -> Vec<String> {
        let orphans: Vec<String> = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        for id in &orphans {
            let _ = self.destroy(id, None).await;
        }
        orphans
    }
}

/// Removes `path` and everything under it, first making the directories writable: the agent
/// leaves read-only trees (`/workspace/peers`) that only root could otherwise remove.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn writable(path: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.is_dir() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
            for entry in std::fs::read_dir(path)? {
                writable(&entry?.path())?;
            }
        }
        Ok(())
    }
    writable(path)?;
    std::fs::remove_dir_all(path)
}

/// The in-process manager the contract tests drive: an [`AppState`](crate::AppState) over an
/// [`InProcessRuntime`] (VMs under `dir/vms`) and a fresh SQLite store under `dir/storage`,
/// configured by `vars` over the test defaults (`STORAGE_ROOT`, `RDS_SANDBOX_ROOT=host`), with
/// `api_key` its one key. Works from inside a tokio runtime: the store is opened on a thread of
/// its own.
pub fn in_process_state(dir: &Path, vars: &[(&str, &str)], api_key: &str) -> crate::AppState {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).expect("creating STORAGE_ROOT");
    let storage = storage.to_str().expect("the temporary directory is UTF-8").to_string();
    let defaults = [("STORAGE_ROOT", storage.as_str()), ("RDS_SANDBOX_ROOT", "host")];
    let lookup = |k: &str| vars.iter().chain(defaults.iter()).find(|(name, _)| *name == k).map(|(_, v)| v.to_string());
    let config = crate::Config::from_lookup(lookup).expect("a valid test configuration");
    let store_config = config.store_config();
    let (store, installation) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            let store = rds_store::open(&store_config).await.expect("opening the test database");
            let (installation, _) =
                crate::installation::load_or_create(store.as_ref()).await.expect("an installation id");
            (store, installation)
        })
    })
    .join()
    .expect("opening the store panicked");
    let runtime = std::sync::Arc::new(InProcessRuntime::new(dir.join("vms")));
    let keys = crate::auth::ApiKeyRing::new(vec![crate::auth::hash_key(api_key)]);
    crate::AppState::new(config, store, runtime, keys, crate::server::host_capabilities())
        .with_installation(installation)
}
