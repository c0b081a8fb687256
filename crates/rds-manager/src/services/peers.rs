//! Provider and consumer VMs: links, provider secrets, peer sync and bridge calls.
//!
//! A consumer reaches the bridge through its own host socket ([`crate::bridge`]), so the VM
//! making a call is known from the socket, never from anything the guest says. Each call is
//! checked against the link, the provider's synced manifest and the export's argument schema,
//! then runs inside the provider with the provider's secrets, and its result is checked too.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use rds_peer::files::{pack_tar_gz, peers_tree, LinkedPeer, SourceMode};
use rds_peer::manifest::{ManifestError, ModuleLanguage, Provider};
use rds_peer::mirror::{mirror_from_tar_gz, MirrorLimits};
use rds_peer::secrets::SecretEnv;
use rds_proto::agent_api::TreeOwner;
use rds_proto::{EnvMap, Language, RunRequest, RunResult};
use rds_store::{now_ms, PeerCallRecord, PeerLinkRecord, Quota, StoreError, VmRecord, VmState};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::agent::AgentError;
use crate::error::{chain_of, ResultExt};
use crate::services::exec::OrAgentError;
use crate::services::vms::{find, find_running};
use crate::views::{PatchPeerLinkRequest, PeerCallView, PeerLinkRequest, PeerLinkView, PeerSyncReport};
use crate::{ApiError, AppState};

/// Most links a consumer may hold.
const MAX_LINKS: usize = crate::views::MAX_PEER_LINKS;
/// Largest manifest archive fetched from a provider.
const MAX_MANIFEST_ARCHIVE: usize = 2 << 20;
/// Largest compressed provider workspace fetched for a mirror.
const MAX_MIRROR_ARCHIVE: usize = 64 << 20;
/// Time allowed for each sync transfer.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Transport time allowed beyond an export's own timeout.
const CALL_MARGIN: Duration = Duration::from_secs(5);
/// Time allowed to import a provider module and list its functions.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest provider error message passed back to a consumer.
const MAX_ERROR_MESSAGE: usize = 500;

/// Compiled manifests by their JSON text, so calls don't recompile schemas.
#[derive(Default)]
pub struct ManifestCache(Mutex<HashMap<String, Arc<Provider>>>);

impl ManifestCache {
    fn get(&self, json: &str) -> Result<Arc<Provider>, ManifestError> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(json) {
            return Ok(p.clone());
        }
        let provider = Arc::new(Provider::parse(json.as_bytes())?);
        if map.len() >= 256 {
            map.clear();
        }
        map.insert(json.to_string(), provider.clone());
        Ok(provider)
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// Parses and seals `secretEnv`; returns the sealed bytes and the key names.
pub fn seal_secrets(state: &AppState, entries: &[String]) -> Result<(Vec<u8>, Vec<String>), ApiError> {
    let env = SecretEnv::parse(entries)
        .map_err(|e| ApiError::BadRequest(format!("invalid field `{}`: {}", e.field, e.problem)))?;
    let Some(sealer) = &state.secrets else {
        return Err(ApiError::BadRequest(
            "invalid field `secretEnv`: the manager has no VM_SECRET_KEY, so it cannot store secrets".into(),
        ));
    };
    Ok((sealer.seal(&env).into_bytes(), env.keys()))
}

/// The decrypted secrets of a VM (empty when it holds none).
pub fn secrets_of(state: &AppState, vm: &VmRecord) -> Result<SecretEnv, ApiError> {
    let Some(sealed) = &vm.secret_env_ciphertext else {
        return Ok(SecretEnv::default());
    };
    let sealer = state
        .secrets
        .as_ref()
        .ok_or_else(|| ApiError::internal_msg(format!("VM {} holds secrets but VM_SECRET_KEY is not set", vm.id)))?;
    let text = std::str::from_utf8(sealed).with_context(|| format!("VM {}: sealed secrets are not text", vm.id))?;
    sealer.open(text).with_context(|| format!("VM {}: cannot open its secrets", vm.id))
}

/// The caller's environment with the VM's own secrets laid over it (secrets win).
pub fn with_secrets(env: Option<EnvMap>, secrets: &SecretEnv) -> Option<EnvMap> {
    if secrets.is_empty() {
        return env;
    }
    let mut merged = env.unwrap_or_default();
    for (k, v) in secrets.vars() {
        merged.0.insert(k.clone(), v.clone());
    }
    Some(merged)
}

/// Replaces secret values inside every string of a JSON value.
pub fn redact_value(secrets: &SecretEnv, value: &mut Value) {
    match value {
        Value::String(s) => *s = secrets.redact(s),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(secrets, v)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_value(secrets, v)),
        _ => {}
    }
}

/// `PATCH /v1/vms/{id}/secrets`: replaces a VM's secrets.
pub async fn set_secrets(state: &AppState, vm_id: &str, entries: &[String]) -> Result<(), ApiError> {
    let _lock = state.vm_locks.lock(vm_id).await;
    find(state, vm_id).await?;
    if entries.is_empty() {
        state.store.set_vm_secrets(vm_id, None, &[]).await?;
    } else {
        let (sealed, keys) = seal_secrets(state, entries)?;
        state.store.set_vm_secrets(vm_id, Some(&sealed), &keys).await?;
    }
    crate::services::events::vm_event(state, vm_id, "vm.secrets_rotated", "secretEnv replaced", None).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Links

/// Validates `peerLinks` of a create request; 400s name the entry.
pub async fn validate_links(
    state: &AppState,
    consumer_id: &str,
    links: &[PeerLinkRequest],
) -> Result<Vec<PeerLinkRecord>, ApiError> {
    if links.len() > MAX_LINKS {
        return Err(ApiError::BadRequest(format!("invalid field `peerLinks`: at most {MAX_LINKS} links")));
    }
    let mut out: Vec<PeerLinkRecord> = Vec::new();
    for (i, l) in links.iter().enumerate() {
        let field = format!("peerLinks[{i}]");
        check_alias(&format!("{field}.alias"), &l.alias)?;
        if out.iter().any(|o| o.alias == l.alias) {
            return Err(ApiError::BadRequest(format!("invalid field `{field}.alias`: duplicate alias {:?}", l.alias)));
        }
        check_provider(state, &format!("{field}.vmId"), consumer_id, &l.vm_id).await?;
        check_manifest(state, &format!("{field}.vmId"), &l.alias, &l.vm_id).await?;
        out.push(new_link(consumer_id, &l.alias, &l.vm_id, l.source_mode.unwrap_or_default()));
    }
    Ok(out)
}

fn check_alias(field: &str, alias: &str) -> Result<(), ApiError> {
    if rds_peer::is_valid_alias(alias) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid field `{field}`: {alias:?} must be an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"
        )))
    }
}

async fn check_provider(state: &AppState, field: &str, consumer_id: &str, provider_id: &str) -> Result<(), ApiError> {
    if provider_id == consumer_id {
        return Err(ApiError::BadRequest(format!("invalid field `{field}`: a VM cannot link to itself")));
    }
    match state.store.get_vm(provider_id).await? {
        Some(vm) if vm.state != VmState::Deleted => Ok(()),
        _ => Err(ApiError::BadRequest(format!("invalid field `{field}`: VM {provider_id:?} not found"))),
    }
}

/// Fails fast when a running provider's manifest is missing, wrong, or declares an export its
/// module does not have, so nothing is created or stored for a link that could never work. A
/// provider that is not running is checked at sync instead, and its problem kept on the link.
async fn check_manifest(state: &AppState, field: &str, alias: &str, provider_id: &str) -> Result<(), ApiError> {
    let Some(provider_vm) = state.store.get_vm(provider_id).await?.filter(|vm| vm.state == VmState::Running) else {
        return Ok(());
    };
    match load_provider(state, &provider_vm).await {
        Ok(_) => Ok(()),
        Err(SyncProblem::Invalid(m)) | Err(SyncProblem::Unavailable(m)) => {
            Err(ApiError::BadRequest(format!("invalid field `{field}`: provider {alias:?} (VM {provider_id}): {m}")))
        }
        Err(SyncProblem::Failed(e)) => Err(e),
    }
}

fn new_link(consumer: &str, alias: &str, provider: &str, mode: SourceMode) -> PeerLinkRecord {
    PeerLinkRecord {
        consumer_vm_id: consumer.to_string(),
        alias: alias.to_string(),
        provider_vm_id: provider.to_string(),
        source_mode: mode_name(mode).to_string(),
        manifest_json: None,
        sync_status: "pending".into(),
        sync_message: None,
        synced_at: None,
    }
}

fn mode_name(mode: SourceMode) -> &'static str {
    match mode {
        SourceMode::Hidden => "hidden",
        SourceMode::Mirror => "mirror",
        SourceMode::Mounted => "mounted",
    }
}

fn mode_of(link: &PeerLinkRecord) -> SourceMode {
    match link.source_mode.as_str() {
        "mirror" => SourceMode::Mirror,
        "mounted" => SourceMode::Mounted,
        _ => SourceMode::Hidden,
    }
}

/// A consumer's links as the API shows them.
pub async fn link_views(state: &AppState, consumer_id: &str) -> Result<Vec<PeerLinkView>, ApiError> {
    Ok(state.store.list_peer_links(consumer_id).await?.iter().map(|l| link_view(state, l)).collect())
}

fn link_view(state: &AppState, l: &PeerLinkRecord) -> PeerLinkView {
    let exports = l
        .manifest_json
        .as_deref()
        .and_then(|m| state.manifests.get(m).ok())
        .map(|p| p.manifest.exports.iter().map(|e| e.name.clone()).collect())
        .unwrap_or_default();
    PeerLinkView {
        alias: l.alias.clone(),
        vm_id: l.provider_vm_id.clone(),
        source_mode: l.source_mode.clone(),
        sync_status: l.sync_status.clone(),
        sync_message: l.sync_message.clone(),
        exports,
    }
}

/// `PATCH /v1/vms/{id}/peers/{alias}`: creates or changes a link, then re-syncs a running consumer.
pub async fn set_link(
    state: &AppState,
    consumer_id: &str,
    alias: &str,
    req: PatchPeerLinkRequest,
) -> Result<PeerSyncReport, ApiError> {
    check_alias("alias", alias)?;
    {
        let _lock = state.vm_locks.lock(consumer_id).await;
        find(state, consumer_id).await?;
        let existing = state.store.get_peer_link(consumer_id, alias).await?;
        let link = match (existing, req.vm_id) {
            (Some(mut l), vm_id) => {
                if let Some(v) = vm_id {
                    check_provider(state, "vmId", consumer_id, &v).await?;
                    l.provider_vm_id = v;
                }
                if let Some(m) = req.source_mode {
                    l.source_mode = mode_name(m).into();
                }
                l
            }
            (None, Some(v)) => {
                check_provider(state, "vmId", consumer_id, &v).await?;
                new_link(consumer_id, alias, &v, req.source_mode.unwrap_or_default())
            }
            (None, None) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid field `vmId`: required to create the new link {alias:?}"
                )))
            }
        };
        // Nothing is stored for a provider whose manifest is already known to be unusable.
        check_manifest(state, "vmId", alias, &link.provider_vm_id).await?;
        // The limit is checked in the store's transaction, so concurrent adds cannot pass it.
        state.store.put_peer_link(&link, MAX_LINKS as u32).await.map_err(|e| match e {
            StoreError::QuotaExceeded(Quota::PeerLinks { .. }) => {
                ApiError::BadRequest(format!("a VM may hold at most {MAX_LINKS} peer links"))
            }
            other => other.into(),
        })?;
    }
    crate::services::events::vm_event(state, consumer_id, "peer.linked", format!("peer {alias} linked"), None).await;
    resync_if_running(state, consumer_id).await
}

/// `DELETE /v1/vms/{id}/peers/{alias}`.
pub async fn delete_link(state: &AppState, consumer_id: &str, alias: &str) -> Result<(), ApiError> {
    {
        let _lock = state.vm_locks.lock(consumer_id).await;
        find(state, consumer_id).await?;
        if !state.store.delete_peer_link(consumer_id, alias).await? {
            return Err(ApiError::NotFound(format!("VM {consumer_id} has no peer {alias:?}")));
        }
    }
    crate::services::events::vm_event(state, consumer_id, "peer.unlinked", format!("peer {alias} unlinked"), None)
        .await;
    resync_if_running(state, consumer_id).await.map(|_| ())
}

async fn resync_if_running(state: &AppState, consumer_id: &str) -> Result<PeerSyncReport, ApiError> {
    let vm = find(state, consumer_id).await?;
    if vm.state == VmState::Running {
        let _lock = state.vm_locks.lock(consumer_id).await;
        sync_locked(state, &vm, true).await
    } else {
        Ok(PeerSyncReport { peers: link_views(state, consumer_id).await?, skipped: vec![] })
    }
}

// ---------------------------------------------------------------------------------------------
// Sync

/// After a VM boots: opens its bridge and writes `/workspace/peers` if it has links. Problems with
/// single providers are recorded on their links, not fatal: the VM is usable without them.
pub async fn on_running(state: &AppState, vm: &VmRecord) {
    if let Err(e) = sync_locked(state, vm, false).await {
        tracing::warn!(vm_id = %vm.id, error = %e, "peer sync after boot failed");
    }
}

/// `POST /v1/vms/{id}/peers/sync`.
pub async fn sync(state: &AppState, consumer_id: &str) -> Result<PeerSyncReport, ApiError> {
    let _lock = state.vm_locks.lock(consumer_id).await;
    let vm = find_running(state, consumer_id).await?;
    sync_locked(state, &vm, true).await
}

/// Syncs every link of `vm` (the caller holds its lock). With `strict`, invalid provider
/// manifests make the call a 400 naming the alias and the field (after the valid ones are written).
async fn sync_locked(state: &AppState, vm: &VmRecord, strict: bool) -> Result<PeerSyncReport, ApiError> {
    let links = state.store.list_peer_links(&vm.id).await?;
    if links.is_empty() {
        state.bridges.close(state, &vm.id);
        return Ok(PeerSyncReport { peers: vec![], skipped: vec![] });
    }
    state.bridges.open(state, &vm.id).context("cannot open the peer bridge")?;
    // Per valid link: the link, its provider, and the provider files mirrored for the consumer.
    type Synced = (PeerLinkRecord, Arc<Provider>, Vec<(String, Vec<u8>)>);
    let mut synced: Vec<Synced> = Vec::new();
    let mut skipped = Vec::new();
    let mut invalid = Vec::new();
    for link in &links {
        match fetch_provider(state, link).await {
            Ok((manifest_json, provider, mirror)) => {
                state.store.set_peer_sync(&vm.id, &link.alias, "synced", None, Some(&manifest_json)).await?;
                skipped.extend(mirror.skipped.iter().map(|s| format!("{}: {s}", link.alias)));
                synced.push((link.clone(), provider, mirror.files));
            }
            Err(SyncProblem::Unavailable(m)) => {
                state.store.set_peer_sync(&vm.id, &link.alias, "unavailable", Some(&m), None).await?;
            }
            Err(SyncProblem::Invalid(m)) => {
                state.store.set_peer_sync(&vm.id, &link.alias, "invalid", Some(&m), None).await?;
                invalid.push(format!("peer {}: {m}", link.alias));
            }
            Err(SyncProblem::Failed(e)) => return Err(e),
        }
    }
    let peers: Vec<LinkedPeer<'_>> = synced
        .iter()
        .map(|(l, p, files)| LinkedPeer {
            alias: &l.alias,
            provider_vm_id: &l.provider_vm_id,
            source_mode: mode_of(l),
            provider: p,
            source: files,
        })
        .collect();
    let archive = pack_tar_gz(&peers_tree(&peers));
    write_peers_dir(state, &vm.id, archive).await?;
    if strict && !invalid.is_empty() {
        return Err(ApiError::BadRequest(invalid.join("; ")));
    }
    Ok(PeerSyncReport { peers: link_views(state, &vm.id).await?, skipped })
}

enum SyncProblem {
    /// The provider is not running: no files for it this time.
    Unavailable(String),
    /// The provider's manifest is wrong: the message names the field.
    Invalid(String),
    /// Something on our side failed.
    Failed(ApiError),
}

impl From<ApiError> for SyncProblem {
    fn from(e: ApiError) -> Self {
        SyncProblem::Failed(e)
    }
}

impl From<rds_store::StoreError> for SyncProblem {
    fn from(e: rds_store::StoreError) -> Self {
        SyncProblem::Failed(e.into())
    }
}

/// Reads and validates a provider's manifest, and mirrors its source when the link asks for it.
async fn fetch_provider(
    state: &AppState,
    link: &PeerLinkRecord,
) -> Result<(String, Arc<Provider>, rds_peer::mirror::Mirror), SyncProblem> {
    let provider_vm = match state.store.get_vm(&link.provider_vm_id).await? {
        Some(p) if p.state == VmState::Running => p,
        Some(p) if p.state != VmState::Deleted => {
            return Err(SyncProblem::Unavailable(format!("provider VM is {}", p.state)))
        }
        _ => return Err(SyncProblem::Unavailable("provider VM was deleted".into())),
    };
    let (manifest_json, provider) = load_provider(state, &provider_vm).await?;
    let mirror = if mode_of(link).shows_source() {
        let secrets = secrets_of(state, &provider_vm)?;
        let archive = download(state, &provider_vm.id, "/workspace", MAX_MIRROR_ARCHIVE).await?;
        mirror_from_tar_gz(&archive[..], &secrets, &MirrorLimits::default())
            .map_err(|e| SyncProblem::Invalid(chain_of(&e)))?
    } else {
        Default::default()
    };
    Ok((manifest_json, provider, mirror))
}

/// Reads and validates a running provider's manifest, then checks inside the provider that every
/// declared export is a function of its module.
async fn load_provider(state: &AppState, provider_vm: &VmRecord) -> Result<(String, Arc<Provider>), SyncProblem> {
    let manifest_path = format!("/workspace/{}", rds_peer::MANIFEST_PATH);
    let archive = match download(state, &provider_vm.id, &manifest_path, MAX_MANIFEST_ARCHIVE).await {
        Ok(a) => a,
        Err(ApiError::NotFound(_)) | Err(ApiError::BadRequest(_)) => {
            return Err(SyncProblem::Invalid(format!("missing provider manifest at {manifest_path}")))
        }
        Err(e) => return Err(SyncProblem::Failed(e)),
    };
    let bytes = single_file(&archive, rds_peer::manifest::MAX_MANIFEST_BYTES)
        .map_err(|m| SyncProblem::Invalid(format!("provider manifest unreadable: {m}")))?;
    let manifest_json =
        String::from_utf8(bytes).map_err(|_| SyncProblem::Invalid("provider manifest is not UTF-8".into()))?;
    // Recorded on the link for the user to read: the message names the manifest field.
    let provider = state.manifests.get(&manifest_json).map_err(|e| SyncProblem::Invalid(chain_of(&e)))?;
    inspect_exports(state, provider_vm, &provider).await?;
    Ok((manifest_json, provider))
}

/// Imports each declared module inside the provider (with its secrets, as a call would) and
/// fails naming the first declared export that is not a function there.
async fn inspect_exports(state: &AppState, provider_vm: &VmRecord, provider: &Provider) -> Result<(), SyncProblem> {
    let mut modules: Vec<(&str, ModuleLanguage, Vec<&str>)> = Vec::new();
    for e in &provider.manifest.exports {
        match modules.iter_mut().find(|m| m.0 == e.module) {
            Some(m) => m.2.push(e.function()),
            None => modules.push((&e.module, e.language(), vec![e.function()])),
        }
    }
    let secrets = secrets_of(state, provider_vm)?;
    for (module, language, functions) in modules {
        let run = RunRequest {
            code: Some(rds_peer::invoke::inspection_source(module, language, &functions)),
            env: with_secrets(None, &secrets),
            timeout_ms: Some(INSPECT_TIMEOUT.as_millis() as u64),
            allow_net: Some(crate::services::exec::net_grant(state, provider_vm).await?),
            ..Default::default()
        };
        let language = match language {
            ModuleLanguage::Deno => Language::Ts,
            ModuleLanguage::Python => Language::Python,
        };
        let result =
            state.agent.vm(&provider_vm.id).run(language, &run, INSPECT_TIMEOUT + CALL_MARGIN).await.map_err(|e| {
                SyncProblem::Failed(ApiError::agent_msg(format!(
                    "inspecting /workspace/{module} in provider VM {} failed: {}",
                    provider_vm.id,
                    secrets.redact(&e.to_string())
                )))
            })?;
        if result.timed_out || result.error.is_some() || result.exit_code != Some(0) {
            return Err(SyncProblem::Invalid(format!(
                "unable to inspect /workspace/{module}: {}",
                sanitize(&secrets, &failure_message(&result))
            )));
        }
        let missing: Vec<String> = result
            .result
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| SyncProblem::Invalid(format!("unable to inspect /workspace/{module}: no result")))?;
        if let Some(name) = missing.first() {
            return Err(SyncProblem::Invalid(format!("declared export {name} is not callable in /workspace/{module}")));
        }
    }
    Ok(())
}

/// Downloads `path` from a VM as tar.gz, at most `max` bytes.
async fn download(state: &AppState, vm_id: &str, path: &str, max: usize) -> Result<Bytes, ApiError> {
    let body = crate::services::files::agent_download(state, vm_id, path, SYNC_TIMEOUT).await?;
    let body = tokio::time::timeout(SYNC_TIMEOUT, http_body_util::Limited::new(body, max).collect())
        .await
        .map_err(|e| ApiError::Timeout {
            message: format!("downloading {path} from VM {vm_id} timed out"),
            source: Some(e.into()),
        })?
        .map_err(|e| ApiError::Agent {
            message: format!("downloading {path} from VM {vm_id} failed"),
            source: Some(e),
        })?;
    Ok(body.to_bytes())
}

/// The one regular file of a tar.gz, at most `max` bytes.
fn single_file(archive: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry.take(max as u64 + 1).read_to_end(&mut data).map_err(|e| e.to_string())?;
            if data.len() > max {
                return Err(format!("larger than {max} bytes"));
            }
            return Ok(data);
        }
    }
    Err("no file in the archive".into())
}

/// Replaces the consumer's `/workspace/peers` with a root-owned, read-only tree.
async fn write_peers_dir(state: &AppState, vm_id: &str, archive: Vec<u8>) -> Result<(), ApiError> {
    state
        .agent
        .vm(vm_id)
        .replace_tree("/workspace/peers", TreeOwner::Root, true, archive, SYNC_TIMEOUT)
        .await
        .or_agent_error(state, vm_id)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bridge calls

/// Body of a bridge call from a consumer's proxy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallRequest {
    alias: String,
    export: String,
    #[serde(default = "empty_object")]
    args: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// Handles one bridge call from `consumer_id` (known from its socket). Always answers; every
/// outcome is audited without argument values.
pub async fn call(state: &AppState, consumer_id: &str, body: &[u8]) -> (StatusCode, Value) {
    let started = Instant::now();
    let mut audit = PeerCallRecord {
        id: uuid::Uuid::new_v4().to_string(),
        consumer_vm_id: consumer_id.to_string(),
        provider_vm_id: None,
        alias: String::new(),
        export_name: String::new(),
        status: 200,
        code: "ok".into(),
        duration_ms: 0,
        created_at: now_ms(),
    };
    let outcome = call_inner(state, consumer_id, body, &mut audit).await;
    let (status, payload) = match outcome {
        Ok(value) => (StatusCode::OK, json!({ "result": value })),
        Err(e) => {
            let (status, code) = e.status_and_code();
            audit.code = code.to_string();
            if status.is_server_error() {
                tracing::error!(consumer = consumer_id, status = status.as_u16(), error = %e.chain(), "bridge call failed");
            }
            let message = match &e {
                ApiError::Internal { .. } => "internal error".to_string(),
                other => other.chain(),
            };
            (status, json!({ "error": { "code": code, "message": message } }))
        }
    };
    audit.status = status.as_u16();
    audit.duration_ms = started.elapsed().as_millis() as u64;
    if audit.alias.is_empty() {
        audit.alias = "?".into();
    }
    if let Err(e) = state.store.insert_peer_call(&audit).await {
        tracing::warn!(error = %e, "could not record a bridge call");
    }
    (status, payload)
}

async fn call_inner(
    state: &AppState,
    consumer_id: &str,
    body: &[u8],
    audit: &mut PeerCallRecord,
) -> Result<Value, ApiError> {
    let req: CallRequest = rds_proto::parse_json(body).map_err(ApiError::BadRequest)?;
    audit.alias = req.alias.chars().take(64).collect();
    audit.export_name = req.export.chars().take(128).collect();
    let link = state
        .store
        .get_peer_link(consumer_id, &req.alias)
        .await?
        .ok_or_else(|| ApiError::Forbidden(format!("VM {consumer_id} is not linked to a peer {:?}", req.alias)))?;
    audit.provider_vm_id = Some(link.provider_vm_id.clone());
    let bucket: [u8; 32] = Sha256::digest(format!("{consumer_id}/{}", link.alias)).into();
    state.peer_limiter.check(&bucket)?;
    let manifest_json = link.manifest_json.as_deref().ok_or_else(|| {
        ApiError::Conflict(format!(
            "peer {:?} is not synced ({}{})",
            link.alias,
            link.sync_status,
            link.sync_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ))
    })?;
    let provider = state
        .manifests
        .get(manifest_json)
        .with_context(|| format!("the synced manifest of peer {:?} does not parse", link.alias))?;
    let export = provider
        .export(&req.export)
        .ok_or_else(|| ApiError::NotFound(format!("peer {:?} declares no export {:?}", link.alias, req.export)))?;
    provider
        .check_args(&export.name, &req.args)
        .map_err(|v| ApiError::BadRequest(format!("invalid arguments at `{}`: {}", v.pointer, v.message)))?;
    let provider_vm = match state.store.get_vm(&link.provider_vm_id).await? {
        Some(vm) if vm.state == VmState::Running => vm,
        Some(vm) if vm.state != VmState::Deleted => {
            return Err(ApiError::Conflict(format!("peer {:?}: provider VM is {}", link.alias, vm.state)))
        }
        _ => return Err(ApiError::Conflict(format!("peer {:?}: provider VM was deleted", link.alias))),
    };
    let secrets = secrets_of(state, &provider_vm)?;
    let run = RunRequest {
        code: Some(rds_peer::invoke::invocation_source(export, &req.args)),
        env: with_secrets(None, &secrets),
        timeout_ms: Some(export.timeout_ms()),
        allow_net: Some(crate::services::exec::net_grant(state, &provider_vm).await?),
        ..Default::default()
    };
    let language = match export.language() {
        ModuleLanguage::Deno => Language::Ts,
        ModuleLanguage::Python => Language::Python,
    };
    let limit = Duration::from_millis(export.timeout_ms()) + CALL_MARGIN;
    let result = match state.agent.vm(&provider_vm.id).run(language, &run, limit).await {
        Ok(r) => r,
        Err(AgentError::Timeout(_)) => {
            return Err(ApiError::timeout(format!("export {} timed out after {} ms", export.name, export.timeout_ms())))
        }
        Err(e) => {
            let still_running =
                matches!(state.store.get_vm(&provider_vm.id).await, Ok(Some(vm)) if vm.state == VmState::Running);
            return Err(if still_running {
                // Redacted text only: the raw error may hold the provider's secrets.
                ApiError::agent_msg(format!(
                    "provider of peer {:?} failed: {}",
                    link.alias,
                    secrets.redact(&e.to_string())
                ))
            } else {
                ApiError::Conflict(format!("peer {:?}: provider VM stopped during the call", link.alias))
            });
        }
    };
    let failed = result.timed_out || result.error.is_some() || result.exit_code != Some(0);
    if failed && !matches!(state.store.get_vm(&provider_vm.id).await, Ok(Some(vm)) if vm.state == VmState::Running) {
        return Err(ApiError::Conflict(format!("peer {:?}: provider VM stopped during the call", link.alias)));
    }
    if result.timed_out {
        return Err(ApiError::timeout(format!("export {} timed out after {} ms", export.name, export.timeout_ms())));
    }
    if result.error.is_some() || result.exit_code != Some(0) {
        return Err(ApiError::agent_msg(format!(
            "export {} failed: {}",
            export.name,
            sanitize(&secrets, &failure_message(&result))
        )));
    }
    let mut value = result.result.unwrap_or(Value::Null);
    // Secrets never leave the provider, even inside a value its code returns.
    redact_value(&secrets, &mut value);
    provider.check_result(&export.name, &value).map_err(|v| {
        ApiError::agent_msg(format!(
            "export {} returned a value that does not match its `returns` schema at `{}`: {}",
            export.name, v.pointer, v.message
        ))
    })?;
    Ok(value)
}

/// What went wrong in a provider run, in one line.
fn failure_message(r: &RunResult) -> String {
    if let Some(err) = &r.error {
        let name = err.get("name").and_then(Value::as_str).unwrap_or("Error");
        let message = err.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| err.to_string());
        return format!("{name}: {message}");
    }
    let stderr = r.stderr.trim();
    if stderr.is_empty() {
        match (r.exit_code, r.signal) {
            (_, Some(sig)) => format!("killed by signal {sig}"),
            (code, _) => format!("exit code {}", code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into())),
        }
    } else {
        stderr.lines().last().unwrap_or(stderr).to_string()
    }
}

/// Redacts secret values and bounds the length of a provider message.
fn sanitize(secrets: &SecretEnv, message: &str) -> String {
    let redacted = secrets.redact(message);
    let mut out: String = redacted.chars().take(MAX_ERROR_MESSAGE).collect();
    if out.len() < redacted.len() {
        out.push('…');
    }
    out
}

/// `GET /v1/peer-calls`: the audit log, newest first.
pub async fn list_calls(
    state: &AppState,
    vm_id: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<PeerCallView>, ApiError> {
    let limit = limit.unwrap_or(100).clamp(1, crate::views::MAX_PEER_CALLS_LIMIT);
    Ok(state
        .store
        .list_peer_calls(vm_id, limit)
        .await?
        .into_iter()
        .map(|c| PeerCallView {
            id: c.id,
            consumer_vm_id: c.consumer_vm_id,
            provider_vm_id: c.provider_vm_id,
            alias: c.alias,
            export: c.export_name,
            status: c.status,
            code: c.code,
            duration_ms: c.duration_ms,
            created_at: c.created_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_are_redacted_and_bounded() {
        let secrets = SecretEnv::parse(&["TOKEN=sk-very-secret-1".into()]).unwrap();
        let msg = sanitize(&secrets, &format!("bad token sk-very-secret-1 {}", "x".repeat(1000)));
        assert!(!msg.contains("sk-very-secret-1"));
        assert!(msg.contains("[redacted:TOKEN]"));
        assert!(msg.chars().count() <= MAX_ERROR_MESSAGE + 1);
    }

    #[test]
    fn failure_message_prefers_the_structured_error() {
        let r = RunResult {
            exit_code: Some(1),
            stderr: "trace\nlast line".into(),
            error: Some(json!({"name": "TypeError", "message": "boom"})),
            ..Default::default()
        };
        assert_eq!(failure_message(&r), "TypeError: boom");
        let r = RunResult { exit_code: Some(3), stderr: "trace\nlast line\n".into(), ..Default::default() };
        assert_eq!(failure_message(&r), "last line");
    }

    #[test]
    fn single_file_reads_the_manifest_and_bounds_it() {
        let files = vec![("manifest.json".to_string(), b"{\"a\":1}".to_vec())];
        let tgz = pack_tar_gz(&files);
        assert_eq!(single_file(&tgz, 100).unwrap(), b"{\"a\":1}");
        assert!(single_file(&tgz, 3).is_err());
    }
}
