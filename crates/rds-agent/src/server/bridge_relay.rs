//! Inside a microVM, user code reaches the peer bridge at [`GUEST_BRIDGE_SOCKET`]; this relay
//! carries each connection to the host's [`BRIDGE_VSOCK_PORT`] (over vsock to CID 2, or a stream
//! of the serial channel). The host side
//! is a per-VM socket, so the manager knows which VM is calling without trusting anything sent.
//! (The sandbox runtime mounts the host socket directly and needs no relay.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rds_proto::{BRIDGE_VSOCK_PORT, GUEST_BRIDGE_SOCKET};
use tokio::net::UnixListener;

/// Binds the guest-side bridge socket and relays connections until the agent stops.
pub(crate) async fn run(host: super::HostDial) {
    let path = Path::new(GUEST_BRIDGE_SOCKET);
    let listener = match bind(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("peer bridge relay unavailable: cannot bind {}: {e}", path.display());
            return;
        }
    };
    loop {
        let Ok((mut guest, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let host = host.clone();
        tokio::spawn(async move {
            match host.dial(BRIDGE_VSOCK_PORT).await {
                Ok(mut host) => {
                    let _ = tokio::io::copy_bidirectional(&mut guest, &mut host).await;
                }
                Err(e) => tracing::warn!("peer bridge: cannot reach the host: {e}"),
            }
        });
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().expect("the bridge socket path has a parent");
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    // User code must get through `/run/rds` (0700 from the initramfs) to the bridge, without
    // seeing what else is there: search permission only. What it holds otherwise is root's
    // (the overlay disk's mount point is kept 0700 by PID 1).
    if let Some(run) = dir.parent() {
        std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o711))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // User code (uid 1000) connects; what it may call is decided by the manager.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}
