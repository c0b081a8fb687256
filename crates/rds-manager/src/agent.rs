//! The manager's guest agents: one pooled [`rds_agent_client::AgentClient`] per VM, dialling the
//! runtime's hybrid-vsock socket for it. The client owns the typed calls, the time limits per call
//! and the retry rule (a request is retried only when it provably never left the manager).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rds_runtime::Runtime;

pub use rds_agent_client::AgentError;

/// Talks to guest agents through the runtime's sockets.
pub struct AgentClient {
    runtime: Arc<dyn Runtime>,
    vms: Mutex<HashMap<String, Arc<rds_agent_client::AgentClient>>>,
}

impl AgentClient {
    /// A client that finds each VM's socket through `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        AgentClient { runtime, vms: Mutex::new(HashMap::new()) }
    }

    /// The agent of `vm_id`, with the connections kept to it since the last [`forget`](Self::forget).
    pub fn vm(&self, vm_id: &str) -> Arc<rds_agent_client::AgentClient> {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        vms.entry(vm_id.to_string())
            .or_insert_with(|| Arc::new(rds_agent_client::AgentClient::hybrid_vsock(self.runtime.agent_socket(vm_id))))
            .clone()
    }

    /// Drops pooled connections to `vm_id` (after stop or delete).
    pub fn forget(&self, vm_id: &str) {
        self.vms.lock().unwrap_or_else(|p| p.into_inner()).remove(vm_id);
    }
}
