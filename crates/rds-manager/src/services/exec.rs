//! Running commands and code in a VM through its agent, with exec logs and OOM reporting.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::header;
use rds_proto::{ExecEvent, ExecExit, ExecRequest, ExecResult, Language, RunRequest, RunResult, DEFAULT_TIMEOUT_MS};
use rds_runtime::process::is_same_process_alive;
use rds_store::{now_ms, ExecLogRecord, VmRecord, VmState};
use serde_json::json;

use crate::agent::AgentError;
use crate::error::ResultExt;
use crate::services::peers::{redact_value, secrets_of, with_secrets};
use crate::services::vms::find_running;
use crate::{ApiError, AppState};

/// Transport time allowed beyond the command's own timeout (agent kill + reply).
const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// Bytes of output kept in an exec log entry.
const PREVIEW_BYTES: usize = 2048;
/// Content type of a streamed exec.
pub const NDJSON: &str = "application/x-ndjson";
/// Content type of an exec streamed as server-sent events.
pub const SSE: &str = "text/event-stream";

/// Checks `timeoutMs` against `MAX_EXEC_TIMEOUT_MS` and returns the transport limit.
pub(crate) fn call_limit(state: &AppState, timeout_ms: Option<u64>) -> Result<Duration, ApiError> {
    let max = state.config.max_exec_timeout_ms;
    match timeout_ms {
        Some(0) => Err(ApiError::BadRequest("invalid field `timeoutMs`: must be greater than 0".into())),
        Some(t) if t > max => {
            Err(ApiError::BadRequest(format!("invalid field `timeoutMs`: {t} exceeds MAX_EXEC_TIMEOUT_MS={max}")))
        }
        t => Ok(Duration::from_millis(t.unwrap_or(DEFAULT_TIMEOUT_MS)) + TIMEOUT_MARGIN),
    }
}

/// Runs a shell command and returns its buffered result.
pub async fn exec(state: &AppState, vm_id: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
    let limit = call_limit(state, req.timeout_ms)?;
    let vm = find_running(state, vm_id).await?;
    let secrets = secrets_of(state, &vm)?;
    let oom_before = state.runtime.oom_kills(vm_id).await;
    let started = Instant::now();
    let to_agent = ExecRequest { env: with_secrets(req.env.clone(), &secrets), ..req.clone() };
    let mut result = state.agent.vm(vm_id).exec(&to_agent, limit).await.or_agent_error(state, vm_id).await?;
    result.oom_killed |= oom_rose(oom_before, state.runtime.oom_kills(vm_id).await);
    // A provider's secrets are never returned, even if its own code prints them.
    result.stdout = secrets.redact(&result.stdout);
    result.stderr = secrets.redact(&result.stderr);
    let input = json!({
        "cmd": req.cmd,
        "cwd": req.cwd,
        "envKeys": req.env.as_ref().map(|e| e.0.keys().cloned().collect::<Vec<_>>()),
        "hasStdin": req.stdin.is_some(),
        "timeoutMs": req.timeout_ms,
    });
    log_exec(state, vm_id, "exec", req.exec_id, input, result.exit_code, started, &result.stdout, &result.stderr).await;
    Ok(result)
}

/// A finished result as the events a streamed exec sends: output, then the exit event.
fn events_of(result: &ExecResult) -> Vec<ExecEvent> {
    let mut events = Vec::new();
    for (data, stdout) in [(&result.stdout, true), (&result.stderr, false)] {
        if !data.is_empty() {
            let data = data.clone();
            events.push(if stdout { ExecEvent::Stdout { data } } else { ExecEvent::Stderr { data } });
        }
    }
    events.push(ExecEvent::Exit(ExecExit::from(result)));
    events
}

/// A finished result as an NDJSON response.
fn ndjson_response(result: &ExecResult) -> Result<Response, ApiError> {
    let mut body = Vec::new();
    for event in &events_of(result) {
        serde_json::to_writer(&mut body, event).context("encoding the exec events")?;
        body.push(b'\n');
    }
    Response::builder()
        .header(header::CONTENT_TYPE, NDJSON)
        .body(Body::from(body))
        .context("building the exec response")
}

/// Runs a shell command with its events sent as server-sent events (`event: stdout|stderr|exit`,
/// the data the event's JSON) as they come; a failure after the start ends the stream with an
/// `error` event. A provider with secrets gets its redacted buffered result, as with NDJSON.
pub async fn exec_sse(state: &AppState, vm_id: &str, req: ExecRequest) -> Result<Response, ApiError> {
    let events: futures_util::stream::BoxStream<'static, SseEvent> = match start_streamed(state, vm_id, req).await? {
        Streamed::Redacted(result) => futures_util::stream::iter(events_of(&result).into_iter().map(sse_event)).boxed(),
        Streamed::Live(stream) => futures_util::stream::unfold(Some(stream.events()), |events| async move {
            let mut events = events?;
            match events.next().await {
                Ok(Some(event)) => Some((sse_event(event), Some(events))),
                Ok(None) => None,
                Err(e) => Some((SseEvent::default().event("error").data(e.to_string()), None)),
            }
        })
        .boxed(),
    };
    Ok(Sse::new(events.map(Ok::<_, std::convert::Infallible>)).into_response())
}

fn sse_event(event: ExecEvent) -> SseEvent {
    let name = match &event {
        ExecEvent::Stdout { .. } => "stdout",
        ExecEvent::Stderr { .. } => "stderr",
        ExecEvent::Exit(_) => "exit",
    };
    SseEvent::default().event(name).data(serde_json::to_string(&event).expect("events always serialise"))
}

/// A streamed exec, started.
enum Streamed {
    /// A provider's (it has secrets): its redacted result once it finished, since a secret split
    /// across two chunks of a live stream would slip past redaction.
    Redacted(ExecResult),
    /// The agent's live event stream.
    Live(rds_agent_client::ExecStream),
}

/// Starts a streamed exec (NDJSON or server-sent events) and records it in the exec log.
async fn start_streamed(state: &AppState, vm_id: &str, req: ExecRequest) -> Result<Streamed, ApiError> {
    let limit = call_limit(state, req.timeout_ms)?;
    let vm = find_running(state, vm_id).await?;
    if !secrets_of(state, &vm)?.is_empty() {
        return Ok(Streamed::Redacted(exec(state, vm_id, req).await?));
    }
    // The limit covers the response head; the stream itself ends when the agent's command does.
    let stream = state.agent.vm(vm_id).exec_stream(&req, limit).await.or_agent_error(state, vm_id).await?;
    let input = json!({"cmd": req.cmd, "cwd": req.cwd, "streamed": true, "timeoutMs": req.timeout_ms});
    log_exec(state, vm_id, "exec", req.exec_id, input, None, Instant::now(), "", "").await;
    Ok(Streamed::Live(stream))
}

/// Runs a shell command, proxying the agent's NDJSON event stream as it comes (for a provider
/// with secrets: its redacted result once it finishes).
pub async fn exec_stream(state: &AppState, vm_id: &str, req: ExecRequest) -> Result<Response, ApiError> {
    match start_streamed(state, vm_id, req).await? {
        Streamed::Redacted(result) => ndjson_response(&result),
        Streamed::Live(stream) => Response::builder()
            .header(header::CONTENT_TYPE, NDJSON)
            .body(Body::new(stream.into_body()))
            .context("building the streamed exec response"),
    }
}

/// Runs TypeScript, JavaScript or Python; the `result` is passed through untouched.
pub async fn run(state: &AppState, vm_id: &str, lang: Language, req: RunRequest) -> Result<RunResult, ApiError> {
    let limit = call_limit(state, req.timeout_ms)?;
    if req.code.is_none() && req.path.is_none() {
        return Err(ApiError::BadRequest("one of `code` or `path` is required".into()));
    }
    // The original passed these to the interpreter verbatim; here only flags that cannot widen
    // the run's permissions pass, and any other is refused by name rather than silently dropped.
    for (field, flags) in [("denoFlags", &req.deno_flags), ("nodeFlags", &req.node_flags)] {
        rds_proto::interpreter_flags::check(field, flags.as_deref().unwrap_or_default())
            .map_err(ApiError::BadRequest)?;
    }
    let vm = find_running(state, vm_id).await?;
    let secrets = secrets_of(state, &vm)?;
    let oom_before = state.runtime.oom_kills(vm_id).await;
    let started = Instant::now();
    // The request may narrow the VM's grant (`allowNet:false`), never widen it: clients of the
    // original send `allowNet:true` routinely, so asking more than the VM allows is not an error.
    let allow_net = net_grant(state, &vm).await? && req.allow_net.unwrap_or(true);
    // A context got the secrets (and its network grant) when it was created.
    let to_agent = match req.context_id {
        Some(_) => RunRequest { allow_net: None, ..req.clone() },
        None => RunRequest { env: with_secrets(req.env.clone(), &secrets), allow_net: Some(allow_net), ..req.clone() },
    };
    let mut result = state.agent.vm(vm_id).run(lang, &to_agent, limit).await.or_agent_error(state, vm_id).await?;
    result.oom_killed |= oom_rose(oom_before, state.runtime.oom_kills(vm_id).await);
    result.stdout = secrets.redact(&result.stdout);
    result.stderr = secrets.redact(&result.stderr);
    for value in [&mut result.result, &mut result.error].into_iter().flatten() {
        redact_value(&secrets, value);
    }
    let input = json!({
        "path": req.path,
        "code": req.code.as_deref().map(|c| preview(c, PREVIEW_BYTES)),
        "args": req.args,
        "envKeys": req.env.as_ref().map(|e| e.0.keys().cloned().collect::<Vec<_>>()),
        "timeoutMs": req.timeout_ms,
        "contextId": req.context_id,
    });
    log_exec(state, vm_id, lang.route(), req.exec_id, input, result.exit_code, started, &result.stdout, &result.stderr)
        .await;
    Ok(result)
}

/// Whether a VM's runs get network access, as the original decides it: when the VM may reach
/// anything beyond itself (outbound internet, allowed IPs or domains) or has peer links. Which
/// destinations are reachable is the host firewall's business, not Deno's.
pub async fn net_grant(state: &AppState, vm: &VmRecord) -> Result<bool, ApiError> {
    let policy = crate::services::network::policy_of(state, vm).await?;
    if policy.outbound_internet || !policy.allow_ips.is_empty() || !policy.allow_domains.is_empty() {
        return Ok(true);
    }
    Ok(!state.store.list_peer_links(&vm.id).await?.is_empty())
}

pub(crate) fn oom_rose(before: Option<u64>, after: Option<u64>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if a > b) || matches!((before, after), (None, Some(a)) if a > 0)
}

/// Maps an agent failure: a VM that stopped meanwhile is a 409, agent 4xx keep their status.
/// A VM still recorded RUNNING whose process is gone counts as stopped: the liveness watcher is
/// about to settle it.
pub async fn agent_error(state: &AppState, vm_id: &str, e: AgentError) -> ApiError {
    let still_running = matches!(state.store.get_vm(vm_id).await, Ok(Some(vm)) if vm.state == VmState::Running
        && crate::services::vms::parse_handle(&vm).is_none_or(|h| is_same_process_alive(h.pid, h.start_time)));
    match e {
        AgentError::Unreachable(_) | AgentError::Transport(_) if !still_running => {
            ApiError::Conflict(format!("VM {vm_id} is no longer RUNNING"))
        }
        // The agent failed because its VM was being stopped (its processes signalled): a 409 too.
        AgentError::Status { status, .. } if status.is_server_error() && !still_running => {
            ApiError::Conflict(format!("VM {vm_id} is no longer RUNNING"))
        }
        other => ApiError::from(other),
    }
}

/// [`agent_error`] for the failure of an agent call's result.
pub(crate) trait OrAgentError<T> {
    /// The value, or the agent failure mapped by [`agent_error`].
    async fn or_agent_error(self, state: &AppState, vm_id: &str) -> Result<T, ApiError>;
}

impl<T> OrAgentError<T> for Result<T, AgentError> {
    async fn or_agent_error(self, state: &AppState, vm_id: &str) -> Result<T, ApiError> {
        match self {
            Ok(v) => Ok(v),
            Err(e) => Err(agent_error(state, vm_id, e).await),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn log_exec(
    state: &AppState,
    vm_id: &str,
    kind: &str,
    exec_id: Option<String>,
    input: serde_json::Value,
    exit_code: Option<i32>,
    started: Instant,
    stdout: &str,
    stderr: &str,
) {
    let mut output = preview(stdout, PREVIEW_BYTES);
    if !stderr.is_empty() {
        output.push_str("\n[stderr]\n");
        output.push_str(&preview(stderr, PREVIEW_BYTES));
    }
    let entry = ExecLogRecord {
        id: uuid::Uuid::new_v4().to_string(),
        vm_id: vm_id.to_string(),
        kind: kind.to_string(),
        exec_id,
        input,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        output_preview: output,
        created_at: now_ms(),
    };
    if let Err(e) = state.store.insert_exec_log(&entry).await {
        tracing::warn!(vm_id, error = %e, "could not record exec log");
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn preview(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_cuts_on_char_boundaries() {
        assert_eq!(preview("héllo", 2), "h…");
        assert_eq!(preview("abc", 10), "abc");
    }

    #[test]
    fn oom_counter_rise_is_detected() {
        assert!(oom_rose(Some(0), Some(1)));
        assert!(!oom_rose(Some(1), Some(1)));
        assert!(!oom_rose(None, None));
        assert!(oom_rose(None, Some(2)));
    }
}
