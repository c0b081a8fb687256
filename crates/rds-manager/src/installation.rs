//! The installation id: generated on a manager's first start, kept in its store, and part of the
//! name of every host resource the manager creates (cgroup parent group, nftables table, VM
//! interfaces, address claims). Two managers with different `STORAGE_ROOT`s on one host so never
//! take each other's VMs or rules for their own orphans.

use rds_net::InstallationId;
use rds_store::Store;

/// Settings key holding the installation id.
pub const INSTALLATION_ID_SETTING: &str = "installationId";

/// Why the installation id could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum InstallationError {
    /// The store failed.
    #[error("cannot read or store the installation id: {0}")]
    Store(#[from] rds_store::StoreError),
    /// The stored id was altered into something unusable in host names.
    #[error("setting {INSTALLATION_ID_SETTING} in the database is unusable ({0}); restore it, or delete the setting \
             only if this installation has no VMs left running")]
    Invalid(#[source] rds_net::BadInstallationId),
}

/// The installation id of the store, generated and stored on first use; `true` when new.
pub fn load_or_create(store: &dyn Store) -> Result<(InstallationId, bool), InstallationError> {
    if let Some(text) = store.get_setting(INSTALLATION_ID_SETTING)? {
        return Ok((InstallationId::parse(&text).map_err(InstallationError::Invalid)?, false));
    }
    let id = InstallationId::generate();
    store.set_setting(INSTALLATION_ID_SETTING, Some(id.as_str()))?;
    Ok((id, true))
}

/// The cgroup parent group of this installation's sandboxes when `RDS_CGROUP_GROUP` is unset.
pub fn default_cgroup_group(id: &InstallationId) -> String {
    format!("rds-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_store::SqliteStore;

    #[test]
    fn the_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.db");
        let (first, new) = load_or_create(&SqliteStore::open(&path).unwrap()).unwrap();
        assert!(new);
        let (again, new) = load_or_create(&SqliteStore::open(&path).unwrap()).unwrap();
        assert_eq!((again, new), (first.clone(), false));
        let other = tempfile::tempdir().unwrap();
        let (theirs, _) = load_or_create(&SqliteStore::open(&other.path().join("rds.db")).unwrap()).unwrap();
        assert_ne!(theirs, first, "two stores got the same id");
    }

    #[test]
    fn a_tampered_id_stops_the_manager_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("rds.db")).unwrap();
        store.set_setting(INSTALLATION_ID_SETTING, Some("../../etc")).unwrap();
        let err = load_or_create(&store).unwrap_err();
        assert!(err.to_string().contains(INSTALLATION_ID_SETTING), "{err}");
        assert!(matches!(err, InstallationError::Invalid(_)));
    }

    #[test]
    fn the_default_cgroup_group_carries_the_id_and_is_a_valid_group_name() {
        let id = InstallationId::parse("q2xk7z").unwrap();
        let group = default_cgroup_group(&id);
        assert_eq!(group, "rds-q2xk7z");
        assert!(rds_runtime::is_valid_vm_id(&group), "the sandbox runtime refuses {group}");
    }
}
