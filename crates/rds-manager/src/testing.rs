//! A fake behind the [`Runtime`] seam for tests: runs `rds-agent serve --listen-uds` directly on
//! the host (no namespaces, no cgroups). Never used by `rds serve`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use rds_proto::AGENT_VSOCK_PORT;
use rds_runtime::{Liveness, Runtime, RuntimeError, RuntimeKind, VmHandle, VmSpec};

/// Runs each VM's agent as a plain host process under `root/<id>/`.
pub struct HostAgentRuntime {
    root: PathBuf,
    agent_bin: PathBuf,
    children: Mutex<HashMap<String, Child>>,
}

impl HostAgentRuntime {
    /// VMs live under `root`; `agent_bin` is the `rds-agent` binary.
    pub fn new(root: PathBuf, agent_bin: PathBuf) -> Self {
        HostAgentRuntime {
            root,
            agent_bin,
            children: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn kill(&self, id: &str) {
        if let Some(mut child) = self.children.lock().unwrap().remove(id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[async_trait::async_trait]
impl Runtime for HostAgentRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Sandbox
    }

    fn isolation(&self) -> &'static str {
        "none (test runtime)"
    }

    fn link_kind(&self) -> rds_runtime::LinkKind {
        rds_runtime::LinkKind::Veth
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmHandle, RuntimeError> {
        let dir = self.dir(&spec.id);
        let workspace = dir.join("workspace");
        std::fs::create_dir_all(&workspace)
            .map_err(|e| RuntimeError::io(format!("creating {}", workspace.display()), e))?;
        let log = std::fs::File::create(self.console_log(&spec.id))
            .map_err(|e| RuntimeError::io("console log", e))?;
        let child = Command::new(&self.agent_bin)
            .arg("serve")
            .arg("--listen-uds")
            .arg(self.agent_socket(&spec.id))
            .arg("--workspace")
            .arg(&workspace)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| RuntimeError::io("console log", e))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| RuntimeError::io(format!("spawning {}", self.agent_bin.display()), e))?;
        let pid = child.id() as i32;
        self.children.lock().unwrap().insert(spec.id.clone(), child);
        if let Err(e) = rds_vsock::connect_retry(
            &self.agent_socket(&spec.id),
            AGENT_VSOCK_PORT,
            Duration::from_secs(10),
        )
        .await
        {
            self.kill(&spec.id);
            return Err(RuntimeError::Boot(e.to_string()));
        }
        Ok(VmHandle {
            pid,
            start_time: rds_runtime::process_start_time(pid).unwrap_or(0),
            extra: serde_json::Value::Null,
        })
    }

    async fn stop(&self, id: &str, _h: &VmHandle) -> Result<(), RuntimeError> {
        self.kill(id);
        let _ = std::fs::remove_file(self.agent_socket(id));
        Ok(())
    }

    async fn destroy(&self, id: &str, _h: Option<&VmHandle>) -> Result<(), RuntimeError> {
        self.kill(id);
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io("removing VM dir", e))
            }
            _ => Ok(()),
        }
    }

    async fn probe(&self, id: &str, _h: &VmHandle) -> Liveness {
        match self
            .children
            .lock()
            .unwrap()
            .get_mut(id)
            .map(|c| c.try_wait())
        {
            Some(Ok(None)) => Liveness::Alive,
            _ => Liveness::Dead("agent process is gone".into()),
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

    async fn remove_orphans(&self, _known: &HashSet<String>) -> Vec<String> {
        Vec::new()
    }
}
