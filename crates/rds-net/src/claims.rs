//! Host-wide address claims, so two installations with the same `RDS_VM_CIDR` never hand out the
//! same /30.
//!
//! A claim is a symlink `<dir>/<network address of the /30>` whose target is the owning
//! installation's id. `symlink(2)` creates it atomically and fails if it exists, so of two
//! managers claiming one slot at the same moment exactly one wins, and the owner can be read
//! back with `readlink(2)`. A manager removes only claims whose target is its own id; another
//! installation's claim is never touched, whatever state it is in (it may be stopped, not gone).
//! Claims live under `/run` and so vanish at reboot; each manager re-claims the slots its VMs
//! hold when it starts.

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::names::InstallationId;
use crate::pool::Slot;

/// Where claims live unless configured otherwise.
pub const DEFAULT_CLAIMS_DIR: &str = "/run/rds/slots";

/// A claims directory failed.
#[derive(Debug, thiserror::Error)]
#[error("address claim {path}: {source}")]
pub struct ClaimError {
    /// The claim (or the directory) at fault.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// One installation's view of the host-wide claims directory.
#[derive(Debug, Clone)]
pub struct SlotClaims {
    dir: PathBuf,
    owner: InstallationId,
}

impl SlotClaims {
    /// Claims in `dir` made on behalf of `owner`.
    pub fn new(dir: impl Into<PathBuf>, owner: InstallationId) -> SlotClaims {
        SlotClaims { dir: dir.into(), owner }
    }

    /// The claims directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, network: Ipv4Addr) -> PathBuf {
        self.dir.join(network.to_string())
    }

    /// Claims `slot` for this installation: `true` when it is ours (now or already), `false`
    /// when another installation holds it.
    pub fn claim(&self, slot: &Slot) -> Result<bool, ClaimError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| ClaimError { path: self.dir.clone(), source })?;
        let path = self.path(slot.network());
        // A claim released between our failed symlink and readlink is simply tried again.
        for _ in 0..3 {
            match std::os::unix::fs::symlink(self.owner.as_str(), &path) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(ClaimError { path, source }),
            }
            match holder(&path) {
                Ok(Some(owner)) => return Ok(owner == self.owner.as_str()),
                Ok(None) => continue,
                Err(source) => return Err(ClaimError { path, source }),
            }
        }
        Ok(false)
    }

    /// Removes this installation's claim of `slot`; another installation's (or none) is left alone.
    pub fn release(&self, slot: &Slot) -> Result<(), ClaimError> {
        self.release_network(slot.network())
    }

    fn release_network(&self, network: Ipv4Addr) -> Result<(), ClaimError> {
        let path = self.path(network);
        match holder(&path) {
            Ok(Some(owner)) if owner == self.owner.as_str() => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ClaimError { path, source: e }),
                _ => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(source) => Err(ClaimError { path, source }),
        }
    }

    /// The installation holding `slot`'s addresses, if any.
    pub fn holder(&self, slot: &Slot) -> Result<Option<String>, ClaimError> {
        let path = self.path(slot.network());
        holder(&path).map_err(|source| ClaimError { path, source })
    }

    /// Removes this installation's claims of every /30 not in `held` (network addresses); returns
    /// the addresses released.
    pub fn release_all_but(&self, held: &HashSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>, ClaimError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ClaimError { path: self.dir.clone(), source }),
        };
        let mut released = Vec::new();
        for entry in entries.flatten() {
            let Some(network) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            if held.contains(&network) {
                continue;
            }
            if matches!(holder(&entry.path()), Ok(Some(owner)) if owner == self.owner.as_str()) {
                self.release_network(network)?;
                released.push(network);
            }
        }
        released.sort();
        Ok(released)
    }
}

/// The id a claim symlink points to; `None` when there is no claim. Anything that is not a
/// symlink reads as a claim by nobody we know (`""`), so it is never taken over.
fn holder(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_link(path) {
        Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // EINVAL: the path is not a symlink.
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(Some(String::new())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::AddressPool;

    fn claims(dir: &Path, id: &str) -> SlotClaims {
        SlotClaims::new(dir.join("slots"), InstallationId::parse(id).unwrap())
    }

    #[test]
    fn a_slot_claimed_by_one_installation_is_refused_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (claims(dir.path(), "aaaaaa"), claims(dir.path(), "bbbbbb"));
        let slot = AddressPool::default().slot(5).unwrap();
        assert!(a.claim(&slot).unwrap());
        assert!(a.claim(&slot).unwrap(), "claiming again is idempotent");
        assert!(!b.claim(&slot).unwrap());
        assert_eq!(b.holder(&slot).unwrap().as_deref(), Some("aaaaaa"));
        b.release(&slot).unwrap();
        assert_eq!(a.holder(&slot).unwrap().as_deref(), Some("aaaaaa"), "b released a's claim");
        a.release(&slot).unwrap();
        assert_eq!(a.holder(&slot).unwrap(), None);
        assert!(b.claim(&slot).unwrap());
    }

    #[test]
    fn claims_are_keyed_by_address_so_overlapping_pools_collide() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (claims(dir.path(), "aaaaaa"), claims(dir.path(), "bbbbbb"));
        let wide = AddressPool::new("10.213.0.0/16".parse().unwrap()).unwrap();
        let narrow = AddressPool::new("10.213.0.8/29".parse().unwrap()).unwrap();
        assert!(a.claim(&wide.slot(2).unwrap()).unwrap());
        assert!(!b.claim(&narrow.slot(0).unwrap()).unwrap(), "10.213.0.8/30 is the same /30");
        assert!(b.claim(&narrow.slot(1).unwrap()).unwrap());
    }

    #[test]
    fn releasing_unheld_claims_touches_only_our_own() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (claims(dir.path(), "aaaaaa"), claims(dir.path(), "bbbbbb"));
        let pool = AddressPool::default();
        for index in [0, 1, 2] {
            assert!(a.claim(&pool.slot(index).unwrap()).unwrap());
        }
        assert!(b.claim(&pool.slot(3).unwrap()).unwrap());
        std::fs::write(a.dir().join("10.213.0.16"), "not a symlink").unwrap();
        std::fs::write(a.dir().join("notes.txt"), "unrelated").unwrap();
        let held: HashSet<Ipv4Addr> = [pool.slot(1).unwrap().network()].into();
        let released = a.release_all_but(&held).unwrap();
        assert_eq!(released, vec![pool.slot(0).unwrap().network(), pool.slot(2).unwrap().network()]);
        assert_eq!(a.holder(&pool.slot(1).unwrap()).unwrap().as_deref(), Some("aaaaaa"));
        assert_eq!(a.holder(&pool.slot(3).unwrap()).unwrap().as_deref(), Some("bbbbbb"));
        assert!(!a.claim(&pool.slot(4).unwrap()).unwrap(), "a plain file is nobody's to take over");
        assert!(a.dir().join("notes.txt").exists());
    }

    #[test]
    fn a_missing_directory_has_no_claims() {
        let dir = tempfile::tempdir().unwrap();
        let a = claims(dir.path(), "aaaaaa");
        assert_eq!(a.release_all_but(&HashSet::new()).unwrap(), Vec::<Ipv4Addr>::new());
        assert_eq!(a.holder(&AddressPool::default().slot(0).unwrap()).unwrap(), None);
    }
}
