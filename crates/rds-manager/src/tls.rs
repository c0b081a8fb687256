//! HTTPS for the API (`TLS_CERT`, `TLS_KEY`): rustls over each accepted TCP connection, then the
//! same router as plain HTTP (WebSocket upgrades included).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var} ({path}): {message}")]
pub struct TlsError {
    pub var: &'static str,
    pub path: String,
    pub message: String,
}

/// Reads the certificate chain and key and builds the acceptor (HTTP/1.1 only, as the API).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let fail =
        |var, path: &std::path::Path, message: String| TlsError { var, path: path.display().to_string(), message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| fail("TLS_CERT", &files.cert, format!("not a readable PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(fail("TLS_CERT", &files.cert, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| fail("TLS_KEY", &files.key, format!("not a readable PEM private key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS_CERT", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail("TLS_KEY", &files.key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, app: Router) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            // The client's address, as plain HTTP gives it (per-client rate limit shares).
            let service = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(peer))));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
