//! Per-VM numbers of the firecracker runtime: VM number `n` gets the guest vsock CID
//! `FIRST_CID + n` and runs as host uid/gid `FIRST_UID + n` under the jailer.
//!
//! A number is claimed by creating `<dir>/<n>` exclusively (`O_EXCL`), holding the claimant's
//! storage root and VM id. The directory is host-wide (`/run/rds/firecracker-ids`), so two managers
//! never hand out the same uid, and it outlives a manager restart, so a re-adopted VM keeps its
//! number. A VM keeps its number across stop and start (its directory records it, see
//! [`super::FirecrackerRuntime`]); destroying the VM releases it.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// Where claims live when the runtime is not told otherwise.
pub const CLAIMS_DIR: &str = "/run/rds/firecracker-ids";
/// The first guest CID (0–2 are reserved: hypervisor, local, host).
pub const FIRST_CID: u32 = 3;
/// The first jailer uid/gid: far above ordinary accounts and below the sandbox's uid ranges
/// (`0x4000_0000` onwards).
pub const FIRST_UID: u32 = 0x3000_0000;
/// How many numbers there are.
pub const COUNT: u32 = 1 << 16;

/// One VM's number and what it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmNumber(pub u32);

impl VmNumber {
    /// The guest's vsock CID.
    pub fn cid(self) -> u32 {
        FIRST_CID + self.0
    }

    /// The unprivileged host uid (and gid) the jailer runs Firecracker as.
    pub fn uid(self) -> u32 {
        FIRST_UID + self.0
    }
}

/// The claims of one manager (one storage root) in a host-wide claims directory.
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
    owner: String,
}

impl Claims {
    /// Claims in `dir` made on behalf of the manager whose storage root is `storage_root`.
    pub fn new(dir: impl Into<PathBuf>, storage_root: &Path) -> Claims {
        Claims { dir: dir.into(), owner: storage_root.to_string_lossy().into_owned() }
    }

    fn content(&self, vm_id: &str) -> String {
        format!("{}\n{vm_id}\n", self.owner)
    }

    /// Claims a number for `vm_id`: `preferred` (its number from an earlier start) when it is
    /// free or already its own, else the first free one from a hash of the id.
    pub fn claim(&self, vm_id: &str, preferred: Option<VmNumber>) -> Result<VmNumber, RuntimeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| RuntimeError::io(format!("cannot create {}", self.dir.display()), e))?;
        if let Some(n) = preferred.filter(|n| n.0 < COUNT) {
            if self.holder(n).as_deref() == Some(&self.content(vm_id)) || self.try_claim(n, vm_id)? {
                return Ok(n);
            }
        }
        // FNV-1a: stable across builds, unlike std's hasher.
        let start = vm_id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)) % COUNT;
        for i in 0..COUNT {
            let n = VmNumber((start + i) % COUNT);
            if self.try_claim(n, vm_id)? {
                return Ok(n);
            }
        }
        Err(RuntimeError::Boot(format!("all {COUNT} firecracker VM numbers in {} are taken", self.dir.display())))
    }

    fn try_claim(&self, n: VmNumber, vm_id: &str) -> Result<bool, RuntimeError> {
        let path = self.dir.join(n.0.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut file) => {
                file.write_all(self.content(vm_id).as_bytes())
                    .map_err(|e| RuntimeError::io(format!("cannot write {}", path.display()), e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(RuntimeError::io(format!("cannot create {}", path.display()), e)),
        }
    }

    fn holder(&self, n: VmNumber) -> Option<String> {
        std::fs::read_to_string(self.dir.join(n.0.to_string())).ok()
    }

    /// Releases `n` if `vm_id` of this manager holds it.
    pub fn release(&self, n: VmNumber, vm_id: &str) {
        if self.holder(n).as_deref() == Some(&self.content(vm_id)) {
            let _ = std::fs::remove_file(self.dir.join(n.0.to_string()));
        }
    }

    /// The number `vm_id` of this manager holds, if any.
    pub fn held_by(&self, vm_id: &str) -> Option<VmNumber> {
        self.owned().into_iter().find(|(_, id)| id == vm_id).map(|(n, _)| n)
    }

    /// Every claim of this manager: `(number, VM id)`.
    pub fn owned(&self) -> Vec<(VmNumber, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let n: u32 = e.file_name().to_str()?.parse().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                let (owner, id) = text.trim_end().split_once('\n')?;
                (owner == self.owner).then(|| (VmNumber(n), id.to_string()))
            })
            .collect()
    }

    /// Releases this manager's claims of VMs not in `known`; returns their ids.
    pub fn release_all_but(&self, known: &HashSet<String>) -> Vec<String> {
        let mut released = Vec::new();
        for (n, id) in self.owned() {
            if !known.contains(&id) {
                self.release(n, &id);
                released.push(id);
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_across_managers_and_kept_by_their_vm() {
        let dir = tempfile::tempdir().unwrap();
        let a = Claims::new(dir.path(), Path::new("/srv/a"));
        let b = Claims::new(dir.path(), Path::new("/srv/b"));
        let n = a.claim("vm-1", None).unwrap();
        // The same VM id of another manager gets another number.
        let m = b.claim("vm-1", None).unwrap();
        assert_ne!(n, m);
        // A restart keeps the number; another VM cannot take it.
        assert_eq!(a.claim("vm-1", Some(n)).unwrap(), n);
        assert_ne!(a.claim("vm-2", Some(n)).unwrap(), n);
        assert_eq!(a.held_by("vm-1"), Some(n));
        assert_eq!((n.cid(), n.uid()), (FIRST_CID + n.0, FIRST_UID + n.0));
        // Release only touches one's own claim.
        b.release(n, "vm-1");
        assert_eq!(a.held_by("vm-1"), Some(n));
        let known: HashSet<String> = ["vm-2".to_string()].into();
        assert_eq!(a.release_all_but(&known), ["vm-1"]);
        assert_eq!(a.held_by("vm-1"), None);
        assert_eq!(b.held_by("vm-1"), Some(m));
    }
}
