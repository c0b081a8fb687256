//! Wire types shared by the manager, the guest agent and the Rust client.
//!
//! Every request type rejects unknown fields, and [`parse_json`] turns serde's
//! errors into messages that name the offending field, so a caller always
//! learns *which* part of its body was wrong.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// vsock port a guest dials on the host (CID 2) to reach the peer bridge.
pub const BRIDGE_VSOCK_PORT: u32 = 1025;
/// vsock port the guest agent dials on the host (CID 2) once it listens: a microVM's boot
/// readiness signal. The host listens there only while the VM boots, so it never probes a guest
/// whose vsock device is still being set up.
pub const READY_VSOCK_PORT: u32 = 1026;
/// Unix socket inside the guest through which user code reaches the peer bridge.
pub const GUEST_BRIDGE_SOCKET: &str = "/run/rds/bridge/peer.sock";
/// Default cap on each of stdout and stderr.
pub const DEFAULT_OUTPUT_CAP: usize = 1024 * 1024;
/// Default command timeout when the caller gives none.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Uid and gid that untrusted code runs as.
pub const SANDBOX_UID: u32 = 1000;
/// The only directory callers may read and write.
pub const WORKSPACE: &str = "/workspace";

/// Error body returned by every rds HTTP endpoint: `{"error":{"code","message"},"message"}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The same text as `error.message`, at the top level where the original API's clients read
    /// it (`{"message": ...}`).
    #[serde(default)]
    pub message: String,
}

/// Machine-readable code plus a human message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code such as `bad_request`, `not_found`, `conflict`.
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        ErrorBody { error: ErrorDetail { code: code.into(), message: message.clone() }, message }
    }
}

/// Parses a JSON body, producing an error message that names the field at fault. Anything but
/// whitespace after the JSON value is an error, so `{..} xyz` is never half-accepted.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    // Every request body is an object; serde would also fill a struct from an array of its
    // fields in order (`[null, null]`), which no caller means.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("invalid body: expected a JSON object".into());
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else if path.is_empty() || path == "." {
            format!("invalid body: {inner}")
        } else {
            format!("invalid field `{path}`: {inner}")
        }
    })?;
    de.end().map_err(|e| format!("malformed JSON: unexpected data after the JSON value: {e}"))?;
    Ok(value)
}

/// Environment for a command: accepted either as an object (`{"K":"v"}`) or as the
/// reference API's list form (`["K=v"]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct EnvMap(pub BTreeMap<String, String>);

/// A valid environment variable name ([`is_env_key`]).
pub const ENV_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

impl utoipa::PartialSchema for EnvMap {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let map = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(string().pattern(Some(ENV_KEY_PATTERN))))
            .additional_properties(Some(string()));
        let list = ArrayBuilder::new().items(string().pattern(Some("^[A-Za-z_][A-Za-z0-9_]*=")));
        OneOfBuilder::new()
            .item(map)
            .item(list)
            .description(Some("Variables as an object (`{\"K\": \"v\"}`) or as `[\"K=v\"]`."))
            .into()
    }
}

impl ToSchema for EnvMap {}

impl<'de> Deserialize<'de> for EnvMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Map(BTreeMap<String, String>),
            List(Vec<String>),
        }
        let map = match Form::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected an object of strings or a list of \"KEY=value\" strings"))?
        {
            Form::Map(m) => m,
            Form::List(list) => {
                let mut m = BTreeMap::new();
                for entry in list {
                    match entry.split_once('=') {
                        Some((k, v)) if !k.is_empty() => {
                            m.insert(k.to_string(), v.to_string());
                        }
                        _ => {
                            return Err(serde::de::Error::custom(format!(
                                "invalid env entry (expected KEY=value): {entry:?}"
                            )))
                        }
                    }
                }
                m
            }
        };
        for key in map.keys() {
            if !is_env_key(key) {
                return Err(serde::de::Error::custom(format!(
                    "invalid env key {key:?} (must match [A-Za-z_][A-Za-z0-9_]*)"
                )));
            }
        }
        Ok(EnvMap(map))
    }
}

/// True when `key` is a valid environment variable name.
pub fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `POST /exec`: run a shell command as uid 1000 in `/workspace`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// Passed to `bash -c` (or `sh -c`); must not be empty.
    #[schema(min_length = 1)]
    pub cmd: String,
    /// Working directory under `/workspace` (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvMap>,
    /// Written to the command's stdin, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Milliseconds before the command is killed (default 30000; at most the manager's
    /// `MAX_EXEC_TIMEOUT_MS`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "coerce::opt_u64")]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Idempotency key: a retry with the same id never runs the command twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

/// Outcome of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// `null` when the command was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub timed_out: bool,
    /// Signal number that ended the command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub duration_ms: u64,
    /// True when the VM's memory limit killed a process during this command (set by the manager).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

/// One line of a streamed (`Accept: application/x-ndjson`) exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ExecEvent {
    Stdout { data: String },
    Stderr { data: String },
    Exit(ExecExit),
}

/// Final event of a streamed exec: the result without the (already streamed) output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecExit {
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

impl From<&ExecResult> for ExecExit {
    fn from(result: &ExecResult) -> Self {
        ExecExit {
            exit_code: result.exit_code,
            stdout_truncated: result.stdout_truncated,
            stderr_truncated: result.stderr_truncated,
            timed_out: result.timed_out,
            signal: result.signal,
            duration_ms: result.duration_ms,
            oom_killed: result.oom_killed,
        }
    }
}

/// Language of a `run-*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// TypeScript via Deno (`/run-ts`).
    Ts,
    /// JavaScript via Node.js (`/run-js`).
    Js,
    /// Python 3 (`/run-python`).
    Python,
}

impl Language {
    /// The route suffix: `run-ts`, `run-js`, `run-python` (the agent's route without its `/`).
    pub fn route(self) -> &'static str {
        &agent_api::AgentRoute::Run(self).path()[1..]
    }
}

/// `POST /run-ts|run-js|run-python`: run a snippet (`code`) or a file (`path`) and
/// collect its structured result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Module under `/workspace`; wins over `code` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvMap>,
    /// Milliseconds before the run is killed (default 30000; at most the manager's
    /// `MAX_EXEC_TIMEOUT_MS`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "coerce::opt_u64")]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// The original API's extra `deno run` flags: only those that cannot change permissions or
    /// load other code (`--no-check`, `--quiet`, `--seed=N`, ...; see
    /// [`interpreter_flags`]); any other is a 400 naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deno_flags: Option<Vec<String>>,
    /// The original API's extra `node` flags: only harmless ones (`--no-warnings`,
    /// `--max-old-space-size=N`, ...; see [`interpreter_flags`]); any other is a 400 naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_flags: Option<Vec<String>>,
    /// Deno only: `false` withholds network access. The VM's policy decides the grant (network
    /// when it has outbound internet, allowed IPs/domains or peer links); this can only narrow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_net: Option<bool>,
    /// Deno only: absolute paths to allow reading, each inside the default grant (`/workspace`,
    /// `/tmp`, `/var/tmp`, name-resolution files, the CA bundle); replaces that grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_read: Option<Vec<String>>,
    /// Deno only: absolute paths to allow writing, each inside `/workspace`, `/tmp` or `/var/tmp`;
    /// replaces that grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_write: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// Run in this code context (`POST /v1/vms/{id}/contexts`) instead of a fresh interpreter:
    /// what earlier runs in it defined is visible. Only `code`, `timeoutMs` and `execId` apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
}

/// Language of a code context; `ts` and `js` are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContextLanguage {
    /// TypeScript (and JavaScript) under Deno; runs with `run-ts`.
    #[serde(alias = "ts")]
    Typescript,
    /// JavaScript under Node.js; runs with `run-js`.
    #[serde(alias = "js")]
    Javascript,
    /// Python 3; runs with `run-python`.
    Python,
}

impl ContextLanguage {
    /// The `run-*` language whose route runs code in such a context.
    pub fn language(self) -> Language {
        match self {
            ContextLanguage::Typescript => Language::Ts,
            ContextLanguage::Javascript => Language::Js,
            ContextLanguage::Python => Language::Python,
        }
    }
}

/// `POST /v1/vms/{id}/contexts`: start a code context, a long-lived interpreter that keeps
/// top-level variables, imports and functions from one run to the next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextRequest {
    pub language: ContextLanguage,
    /// Working directory under `/workspace` (default: the workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub cwd: Option<String>,
    /// Environment of the interpreter, for every run in the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvMap>,
    /// Milliseconds without a run after which the context is removed (default 1800000; at
    /// least 1000, at most one day).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "coerce::opt_u64")]
    #[schema(minimum = 1000, maximum = 86400000)]
    pub idle_timeout_ms: Option<u64>,
    /// TypeScript only: `false` withholds network access (the VM's policy decides the grant,
    /// as for `run-ts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_net: Option<bool>,
}

/// A code context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextInfo {
    pub context_id: String,
    pub language: ContextLanguage,
    /// Its working directory, as asked.
    pub cwd: String,
    /// Unix milliseconds (the guest's clock).
    pub created_at: u64,
    /// Unix milliseconds of the last run's start (or the creation).
    pub last_used_at: u64,
    pub idle_timeout_ms: u64,
    /// Runs so far.
    pub runs: u64,
    /// A run is in progress (further runs wait their turn).
    pub busy: bool,
    /// Times its interpreter was restarted (timeouts it could not interrupt, exits, restarts).
    pub restarts: u64,
}

/// Outcome of a `run-*` call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub duration_ms: u64,
    /// The value passed to `result.set(...)` (any JSON, `null` included); absent if none.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Structured error: `{name, message, stack}` for exceptions, or what `result.error(...)` got.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// Context runs: the context's interpreter was restarted during this run (a timeout it could
    /// not interrupt, or code that ended the interpreter), so what earlier runs defined is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub context_restarted: bool,
}

/// Deserializes a present field as `Some`, even when it is JSON `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Interpreters the guest can run, as probed by the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub bash: bool,
    pub sh: bool,
    pub deno: bool,
    pub node: bool,
    pub python3: bool,
}

/// `GET /health` of the agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentHealth {
    pub status: String,
    pub version: String,
    pub uptime_ms: u64,
    pub capabilities: Capabilities,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_json_wants_an_object() {
        for body in [&b"[\"x\"]"[..], b"null", b"\"cmd\"", b"  [null, null]"] {
            let err = parse_json::<ExecRequest>(body).unwrap_err();
            assert_eq!(err, "invalid body: expected a JSON object", "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(parse_json::<ExecRequest>(b" \n {\"cmd\":\"x\"}").unwrap().cmd, "x");
    }

    #[test]
    fn parse_json_rejects_trailing_data() {
        let err = parse_json::<ExecRequest>(br#"{"cmd":"x"} xyz"#).unwrap_err();
        assert!(err.contains("unexpected data after the JSON value"), "{err}");
        let err = parse_json::<ExecRequest>(br#"{"cmd":"x"}{"cmd":"y"}"#).unwrap_err();
        assert!(err.contains("after the JSON value"), "{err}");
        assert_eq!(parse_json::<ExecRequest>(b"{\"cmd\":\"x\"} \n").unwrap().cmd, "x");
    }

    #[test]
    fn parse_json_names_the_bad_field() {
        let err = parse_json::<ExecRequest>(br#"{"cmd":"x","timeoutMs":-5}"#).unwrap_err();
        assert!(err.contains("timeoutMs"), "{err}");
        let err = parse_json::<ExecRequest>(br#"{"cmd":1}"#).unwrap_err();
        assert!(err.contains("cmd"), "{err}");
        let err = parse_json::<ExecRequest>(br#"{}"#).unwrap_err();
        assert!(err.contains("cmd"), "{err}");
        let err = parse_json::<ExecRequest>(br#"{"cmd":"x","bogus":1}"#).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = parse_json::<ExecRequest>(br#"{"cmd":"#).unwrap_err();
        assert!(err.starts_with("malformed JSON"), "{err}");
    }

    #[test]
    fn env_accepts_map_and_list_and_rejects_bad_keys() {
        let a: ExecRequest = parse_json(br#"{"cmd":"x","env":{"A":"1"}}"#).unwrap();
        let b: ExecRequest = parse_json(br#"{"cmd":"x","env":["A=1"]}"#).unwrap();
        assert_eq!(a.env, b.env);
        let err = parse_json::<ExecRequest>(br#"{"cmd":"x","env":{"1A":"1"}}"#).unwrap_err();
        assert!(err.contains("env"), "{err}");
        let err = parse_json::<ExecRequest>(br#"{"cmd":"x","env":["NOEQUALS"]}"#).unwrap_err();
        assert!(err.contains("env"), "{err}");
    }

    #[test]
    fn run_result_keeps_null_result_distinct_from_absent() {
        let with_null: RunResult =
            serde_json::from_str(r#"{"exitCode":0,"stdout":"","stderr":"","result":null}"#).unwrap();
        assert_eq!(with_null.result, Some(serde_json::Value::Null));
        let absent: RunResult = serde_json::from_str(r#"{"exitCode":0,"stdout":"","stderr":""}"#).unwrap();
        assert_eq!(absent.result, None);
        assert!(serde_json::to_string(&with_null).unwrap().contains("\"result\":null"));
    }
}
pub mod agent_api;
pub mod coerce;
pub mod guest_net;
pub mod interpreter_flags;
pub mod pty;
pub mod sandbox;
