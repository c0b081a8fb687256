//! Host uid ranges for sandbox user namespaces, unique across every manager on the host.
//!
//! Range `n` is host uids `FIRST_BASE + n * USERNS_RANGE` onwards ([`USERNS_RANGE`] of them). A
//! range is taken by an exclusive `flock` on `/run/rds/uid-ranges/<n>.lock`; the VM's launcher
//! inherits the locked descriptor and holds it for the VM's whole life, so neither a crashed VM nor
//! a crashed manager leaks a range, and two managers never hand out the same one.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rds_proto::sandbox::USERNS_RANGE;

use crate::RuntimeError;

/// Where the range locks live (host-wide on purpose: every manager must see every claim).
const LOCK_DIR: &str = "/run/rds/uid-ranges";
/// The first range's base: far above ordinary accounts and distribution id ranges.
const FIRST_BASE: u32 = 0x4000_0000;
/// How many ranges there are (the last one ends at 2^31).
const RANGES: u32 = (0x8000_0000 - FIRST_BASE) / USERNS_RANGE;

/// A claimed range: its first host uid, and the locked file that keeps it claimed.
#[derive(Debug)]
pub struct UidRange {
    /// Host uid of the VM's user-namespace root.
    pub base: u32,
    /// Holds the claim while open (the launcher inherits it).
    pub lock: File,
}

/// Claims a free range, trying first the one `vm_id` hashes to (so a VM often gets its old one).
pub fn claim(vm_id: &str) -> Result<UidRange, RuntimeError> {
    claim_in(Path::new(LOCK_DIR), vm_id)
}

fn claim_in(dir: &Path, vm_id: &str) -> Result<UidRange, RuntimeError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| RuntimeError::io(format!("cannot create {}", dir.display()), e))?;
    // FNV-1a: stable across builds, unlike std's hasher.
    let start = vm_id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)) % RANGES;
    for i in 0..RANGES {
        let n = (start + i) % RANGES;
        let path = dir.join(format!("{n}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| RuntimeError::io(format!("cannot open {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(UidRange { base: FIRST_BASE + n * USERNS_RANGE, lock: file });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(RuntimeError::io(format!("cannot lock {}", path.display()), err));
        }
    }
    Err(RuntimeError::Boot(format!("all {RANGES} sandbox uid ranges are in use")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_below_2_pow_31() {
        assert_eq!(u64::from(FIRST_BASE) + u64::from(RANGES) * u64::from(USERNS_RANGE), 1 << 31);
    }

    #[test]
    fn a_held_range_is_never_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim_in(dir.path(), "vm-a").unwrap();
        // Same id while the first claim is held: a different range.
        let b = claim_in(dir.path(), "vm-a").unwrap();
        assert_ne!(a.base, b.base);
        assert_eq!(a.base % USERNS_RANGE, 0);
        let base_a = a.base;
        drop(a);
        // Released with its descriptor: the same id gets it back.
        let c = claim_in(dir.path(), "vm-a").unwrap();
        assert_eq!(c.base, base_a);
        drop(b);
    }
}
