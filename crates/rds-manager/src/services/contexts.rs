//! Code contexts: long-lived interpreters in a VM's agent that keep state between runs. The
//! manager keeps no record of them (they live and die with the VM); it checks the VM, adds a
//! provider's secrets and the VM's network grant, and relays to the agent.

use std::time::Duration;

use rds_proto::{ContextInfo, ContextLanguage, ContextRequest};

use crate::services::exec::{net_grant, oom_rose, OrAgentError};
use crate::services::peers::{secrets_of, with_secrets};
use crate::services::vms::find_running;
use crate::{ApiError, AppState};

/// Time allowed for a context's interpreter to start and answer.
const START_LIMIT: Duration = Duration::from_secs(70);
/// Time allowed for the agent's other context calls (a delete waits for a run to stop).
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Starts a context in a RUNNING VM.
pub async fn create(state: &AppState, vm_id: &str, req: ContextRequest) -> Result<ContextInfo, ApiError> {
    let vm = find_running(state, vm_id).await?;
    let secrets = secrets_of(state, &vm)?;
    let allow_net = match req.language {
        ContextLanguage::Typescript => Some(net_grant(state, &vm).await? && req.allow_net.unwrap_or(true)),
        ContextLanguage::Javascript | ContextLanguage::Python => None,
    };
    let language = req.language;
    let to_agent = ContextRequest { env: with_secrets(req.env.clone(), &secrets), allow_net, ..req };
    let oom_before = state.runtime.oom_kills(vm_id).await;
    let started = state.agent.vm(vm_id).create_context(&to_agent, START_LIMIT).await;
    out_of_memory(state, vm_id, oom_before, started.is_err(), Some(language)).await?;
    started.or_agent_error(state, vm_id).await
}

/// A 409 naming the cause when an interpreter failed to start (a new context, or a restart of
/// one) because the VM's memory limit killed it (a VM too small for it), instead of the agent's
/// bare failure.
async fn out_of_memory(
    state: &AppState,
    vm_id: &str,
    oom_before: Option<u64>,
    failed: bool,
    language: Option<ContextLanguage>,
) -> Result<(), ApiError> {
    if failed && oom_rose(oom_before, state.runtime.oom_kills(vm_id).await) {
        let language = language.and_then(|l| serde_json::to_value(l).ok());
        let named = language.as_ref().and_then(|v| v.as_str()).map(|l| format!("{l} ")).unwrap_or_default();
        return Err(ApiError::Conflict(format!(
            "the {named}interpreter ran out of memory while starting: this VM's memMb is too small for it"
        )));
    }
    Ok(())
}

/// The contexts of a RUNNING VM.
pub async fn list(state: &AppState, vm_id: &str) -> Result<Vec<ContextInfo>, ApiError> {
    find_running(state, vm_id).await?;
    state.agent.vm(vm_id).contexts(CALL_LIMIT).await.or_agent_error(state, vm_id).await
}

/// One context of a RUNNING VM.
pub async fn get(state: &AppState, vm_id: &str, context_id: &str) -> Result<ContextInfo, ApiError> {
    check_id(context_id)?;
    list(state, vm_id).await?.into_iter().find(|c| c.context_id == context_id).ok_or_else(|| not_found(context_id))
}

/// Restarts a context's interpreter: what its runs defined is gone.
pub async fn restart(state: &AppState, vm_id: &str, context_id: &str) -> Result<ContextInfo, ApiError> {
    check_id(context_id)?;
    find_running(state, vm_id).await?;
    let oom_before = state.runtime.oom_kills(vm_id).await;
    let restarted = state.agent.vm(vm_id).restart_context(context_id, START_LIMIT).await;
    out_of_memory(state, vm_id, oom_before, restarted.is_err(), None).await?;
    restarted.or_agent_error(state, vm_id).await
}

/// Stops a context.
pub async fn delete(state: &AppState, vm_id: &str, context_id: &str) -> Result<(), ApiError> {
    check_id(context_id)?;
    find_running(state, vm_id).await?;
    state.agent.vm(vm_id).delete_context(context_id, CALL_LIMIT).await.or_agent_error(state, vm_id).await
}

/// Context ids are the agent's UUIDs: anything else names no context.
fn check_id(context_id: &str) -> Result<(), ApiError> {
    if context_id.is_empty()
        || context_id.len() > 64
        || !context_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(not_found(context_id));
    }
    Ok(())
}

fn not_found(context_id: &str) -> ApiError {
    ApiError::NotFound(format!("code context `{context_id}` does not exist"))
}
