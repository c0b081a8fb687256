//! The installation id: generated on a manager's first start, kept in its store, and part of the
//! name of every host resource the manager creates (cgroup parent group, nftables table, VM
//! interfaces, address claims). Two managers with different `STORAGE_ROOT`s on one host so never
//! take each other's VMs or rules for their own orphans.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rds_net::InstallationId;
use rds_store::Store;

/// Settings key holding the installation id.
pub const INSTALLATION_ID_SETTING: &str = "installationId";

/// Where the host-wide locks live that keep two running managers off one installation id or one
/// cgroup group.
pub const LOCK_DIR: &str = "/run/rds/locks";

/// Why the installation id could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum InstallationError {
    /// The store failed.
    #[error("cannot read or store the installation id: {0}")]
    Store(#[from] rds_store::StoreError),
    /// The stored id was altered into something unusable in host names.
    #[error(
        "setting {INSTALLATION_ID_SETTING} in the database is unusable ({0}); restore it, or delete the setting \
             only if this installation has no VMs left running"
    )]
    Invalid(#[source] rds_net::BadInstallationId),
    /// The lock file could not be opened.
    #[error("cannot open the lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another running manager holds the lock.
    #[error("another running manager uses {what} (lock {path} is held): {hint}")]
    InUse {
        /// What is shared.
        what: String,
        /// The lock file.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
}

/// Locks held for the manager's lifetime (released by the kernel when the process ends, however
/// it ends, so a restarted manager never finds a stale one).
#[derive(Debug)]
pub struct HostLocks(#[allow(dead_code)] Vec<File>);

/// Takes the host-wide locks of `installation` and of `cgroup_group` in `dir`: a second manager
/// on the same `STORAGE_ROOT` (or a copy of it), or with the same `RDS_CGROUP_GROUP`, would take
/// this one's VMs for orphans, so it must not start.
pub fn lock_host_names(
    dir: &Path,
    installation: &InstallationId,
    cgroup_group: &str,
) -> Result<HostLocks, InstallationError> {
    std::fs::create_dir_all(dir).map_err(|source| InstallationError::Lock { path: dir.to_path_buf(), source })?;
    let wanted = [
        (
            format!("installation-{installation}.lock"),
            format!("installation id {installation}"),
            "is another `rds serve` running on this STORAGE_ROOT, or on a copy of it? A copy needs its own id: delete \
             installationId from its settings table before starting it",
        ),
        (
            format!("cgroup-{cgroup_group}.lock"),
            format!("cgroup group {cgroup_group}"),
            "give each manager its own RDS_CGROUP_GROUP, or leave it unset (rds-<installation id>)",
        ),
    ];
    let mut held = Vec::new();
    for (name, what, hint) in wanted {
        let path = dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| InstallationError::Lock { path: path.clone(), source })?;
        // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(InstallationError::InUse { what, path, hint });
            }
            return Err(InstallationError::Lock { path, source });
        }
        held.push(file);
    }
    Ok(HostLocks(held))
}

/// The installation id of the store, generated and stored on first use; `true` when new. Two
/// managers starting on a new database at once agree on one id (the first stored wins).
pub async fn load_or_create(store: &dyn Store) -> Result<(InstallationId, bool), InstallationError> {
    if let Some(text) = store.get_setting(INSTALLATION_ID_SETTING).await? {
        return Ok((InstallationId::parse(&text).map_err(InstallationError::Invalid)?, false));
    }
    let id = InstallationId::generate();
    let stored = store.init_setting(INSTALLATION_ID_SETTING, id.as_str()).await?;
    let new = stored == id.as_str();
    Ok((InstallationId::parse(&stored).map_err(InstallationError::Invalid)?, new))
}

/// The cgroup parent group of this installation's sandboxes when `RDS_CGROUP_GROUP` is unset.
pub fn default_cgroup_group(id: &InstallationId) -> String {
    format!("rds-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_store::SqliteStore;

    #[tokio::test]
    async fn the_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.db");
        let (first, new) = load_or_create(&SqliteStore::open(&path).unwrap()).await.unwrap();
        assert!(new);
        let (again, new) = load_or_create(&SqliteStore::open(&path).unwrap()).await.unwrap();
        assert_eq!((again, new), (first.clone(), false));
        let other = tempfile::tempdir().unwrap();
        let (theirs, _) = load_or_create(&SqliteStore::open(&other.path().join("rds.db")).unwrap()).await.unwrap();
        assert_ne!(theirs, first, "two stores got the same id");
    }

    #[tokio::test]
    async fn a_tampered_id_stops_the_manager_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("rds.db")).unwrap();
        store.set_setting(INSTALLATION_ID_SETTING, Some("../../etc")).await.unwrap();
        let err = load_or_create(&store).await.unwrap_err();
        assert!(err.to_string().contains(INSTALLATION_ID_SETTING), "{err}");
        assert!(matches!(err, InstallationError::Invalid(_)));
    }

    #[test]
    fn a_second_holder_of_the_same_id_or_group_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let a = InstallationId::parse("aaaaaa").unwrap();
        let b = InstallationId::parse("bbbbbb").unwrap();
        let first = lock_host_names(dir.path(), &a, "rds-aaaaaa").unwrap();
        let err = lock_host_names(dir.path(), &a, "rds-other").unwrap_err();
        assert!(matches!(&err, InstallationError::InUse { what, .. } if what.contains("aaaaaa")), "{err}");
        let err = lock_host_names(dir.path(), &b, "rds-aaaaaa").unwrap_err();
        assert!(
            err.to_string().contains("cgroup group rds-aaaaaa") && err.to_string().contains("RDS_CGROUP_GROUP"),
            "{err}"
        );
        let _other = lock_host_names(dir.path(), &b, "rds-bbbbbb").expect("different id and group");
        drop(first);
        lock_host_names(dir.path(), &a, "rds-aaaaaa").expect("free again once the first holder is gone");
    }

    #[test]
    fn the_default_cgroup_group_carries_the_id_and_is_a_valid_group_name() {
        let id = InstallationId::parse("q2xk7z").unwrap();
        let group = default_cgroup_group(&id);
        assert_eq!(group, "rds-q2xk7z");
        assert!(rds_runtime::is_valid_vm_id(&group), "the sandbox runtime refuses {group}");
    }
}
