//! Wiring for `rds serve`: open the store, pick the runtime, settle keys, reconcile, listen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rds_net::InstallationId;
use rds_runtime::Runtime;
use rds_store::Store;

use crate::config::ConfigError;
use crate::installation::{HostLocks, LOCK_DIR};
use crate::reconciler::{reconcile, Reconciled};
use crate::services::api_keys::{ensure_keys, KeyNotice};
use crate::views::HostCapabilities;
use crate::{routes, AppState, Config};

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] rds_store::StoreError),
    #[error(transparent)]
    Installation(#[from] crate::installation::InstallationError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkUnavailable),
    #[error("reconciling VMs at start-up failed")]
    Reconcile(#[from] crate::reconciler::ReconcileError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A manager ready to serve.
pub struct Prepared {
    /// Shared state.
    pub state: AppState,
    /// What to tell the operator about API keys.
    pub key_notice: KeyNotice,
    /// What the reconciler did.
    pub reconciled: Reconciled,
    /// The bound listener.
    pub listener: tokio::net::TcpListener,
    /// HTTPS when `TLS_CERT` and `TLS_KEY` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Host-wide locks on the installation id and cgroup group, held while serving.
    pub host_locks: HostLocks,
}

/// Opens everything with the configured runtime.
pub async fn prepare(config: Config, rotate_key: bool) -> Result<Prepared, StartError> {
    for n in &config.not_applied {
        tracing::warn!(var = n.var, "{} is set but has no effect: {}", n.var, n.reason);
    }
    let (store, installation, host_locks) = open_store(&config).await?;
    let selected = crate::runtime_select::select(&config, &installation)?;
    tracing::info!(runtime = %selected.runtime.kind(), "{}", selected.reason);
    prepare_with(config, store, installation, host_locks, (selected.runtime, selected.reason), rotate_key).await
}

/// Opens everything with a given runtime (tests use a fake behind the same seam).
pub async fn prepare_with_runtime(
    config: Config,
    runtime: Arc<dyn Runtime>,
    rotate_key: bool,
) -> Result<Prepared, StartError> {
    let (store, installation, host_locks) = open_store(&config).await?;
    let reason = format!("{} runtime given by the caller", runtime.kind());
    prepare_with(config, store, installation, host_locks, (runtime, reason), rotate_key).await
}

/// Opens the database, reads (or, on first start, makes) the installation id, and locks it and the
/// cgroup group host-wide before anything touches host resources.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, InstallationId, HostLocks), StartError> {
    let store = rds_store::open(&config.store_config()).await?;
    let (installation, new) = crate::installation::load_or_create(store.as_ref()).await?;
    let cgroup_group =
        config.cgroup_group.clone().unwrap_or_else(|| crate::installation::default_cgroup_group(&installation));
    let locks = crate::installation::lock_host_names(Path::new(LOCK_DIR), &installation, &cgroup_group)?;
    tracing::info!(
        installation = %installation,
        new,
        storage_root = %config.storage_root.display(),
        "installation id (names this manager's cgroups, nft table and VM interfaces)"
    );
    Ok((store, installation, locks))
}

async fn prepare_with(
    config: Config,
    store: Arc<dyn Store>,
    installation: InstallationId,
    host_locks: HostLocks,
    (runtime, runtime_reason): (Arc<dyn Runtime>, String),
    rotate_key: bool,
) -> Result<Prepared, StartError> {
    let (keys, key_notice) = ensure_keys(store.as_ref(), config.api_key.as_deref(), rotate_key).await?;
    let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?;
    let networking = crate::network::VmNetworking::start(&config.network, runtime.as_ref(), &installation).await?;
    let state = AppState::new(config, store, runtime, keys, host_capabilities())
        .with_installation(installation)
        .with_runtime_reason(runtime_reason)
        .with_network(networking);
    let reconciled = reconcile(&state).await?;
    Ok(Prepared { state, key_notice, reconciled, listener, tls, host_locks })
}

/// Serves until the process ends.
pub async fn serve(prepared: Prepared) -> std::io::Result<()> {
    tokio::spawn(crate::reconciler::cap_consoles(prepared.state.clone()));
    crate::services::seeds::ensure_default(&prepared.state).await;
    tokio::spawn(crate::services::pool::run(prepared.state.clone()));
    let _locks = prepared.host_locks;
    let app = routes::router(prepared.state);
    if let Some(acceptor) = prepared.tls {
        return crate::tls::serve(prepared.listener, acceptor, app).await;
    }
    // Each request knows its client's address (for the per-client share of rate limits).
    axum::serve(prepared.listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
}

/// Which interpreters exist on the host. The sandbox runtime runs guests over the host root,
/// so this is what user code can use.
pub fn host_capabilities() -> HostCapabilities {
    let on_path = rds_host::on_path;
    HostCapabilities { deno: on_path("deno"), node: on_path("node"), python3: on_path("python3") }
}
