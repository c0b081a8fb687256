//! The build cache: each stage's product lives in `<cache_dir>/<stage>-<key>/`, where the key is
//! a hash of everything that stage's output depends on. A stage is built in a `.partial`
//! directory and renamed into place only when complete, so an interrupted build is never reused.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ImageError;

/// Bump when the builder's output changes for the same inputs, to invalidate old caches.
pub const BUILDER_VERSION: &str = concat!("rds-image/", env!("CARGO_PKG_VERSION"), "/3");

/// A stable key for `inputs`: the first 16 hex digits of the SHA-256 of `stage` and the inputs' JSON.
///
/// Serialize inputs as structs (field order is fixed by the type) and sort any lists that are
/// sets, so equal inputs always produce equal keys.
pub fn key(stage: &str, inputs: &impl Serialize) -> String {
    let json = serde_json::to_vec(inputs).expect("cache inputs are plain data");
    let mut hash = Sha256::new();
    hash.update(stage.as_bytes());
    hash.update([0]);
    hash.update(&json);
    hex::encode(hash.finalize())[..16].to_string()
}

/// One stage's directory in the cache.
pub struct Stage {
    done: PathBuf,
    partial: PathBuf,
}

impl Stage {
    /// The cache slot for `stage` with `key` under `cache_dir`.
    pub fn new(cache_dir: &Path, stage: &str, key: &str) -> Self {
        Stage {
            done: cache_dir.join(format!("{stage}-{key}")),
            partial: cache_dir.join(format!("{stage}-{key}.partial")),
        }
    }

    /// The finished directory, if a previous build completed this stage.
    pub fn cached(&self) -> Option<&Path> {
        self.done.join(".complete").is_file().then_some(self.done.as_path())
    }

    /// A fresh, empty work directory for building this stage (any earlier attempt is removed).
    pub fn begin(&self) -> Result<&Path, ImageError> {
        remove_dir_if_exists(&self.partial)?;
        std::fs::create_dir_all(&self.partial).map_err(ImageError::io("creating", &self.partial))?;
        Ok(&self.partial)
    }

    /// Marks the work directory complete and moves it into place; returns its final path.
    pub fn commit(&self) -> Result<&Path, ImageError> {
        let marker = self.partial.join(".complete");
        std::fs::write(&marker, BUILDER_VERSION).map_err(ImageError::io("writing", &marker))?;
        remove_dir_if_exists(&self.done)?;
        std::fs::rename(&self.partial, &self.done).map_err(ImageError::io("renaming into place", &self.done))?;
        Ok(&self.done)
    }
}

pub(crate) fn remove_dir_if_exists(dir: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("removing", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Inputs {
        suite: &'static str,
        packages: Vec<&'static str>,
        agent_sha256: &'static str,
    }

    fn inputs() -> Inputs {
        Inputs { suite: "bookworm", packages: vec!["bash", "git"], agent_sha256: "ab" }
    }

    #[test]
    fn equal_inputs_give_equal_keys() {
        assert_eq!(key("image", &inputs()), key("image", &inputs()));
        assert_eq!(key("image", &inputs()).len(), 16);
    }

    #[test]
    fn cache_key_is_stable_across_builds() {
        // A literal (computed independently: sha256 of "image\0" + the JSON): if serialization or
        // hashing ever changes, every cache would silently go stale; this makes it deliberate.
        assert_eq!(key("image", &inputs()), "fc735944f8e8af14");
    }

    #[test]
    fn any_changed_input_changes_the_key() {
        let base = key("image", &inputs());
        assert_ne!(base, key("rootfs", &inputs()));
        assert_ne!(base, key("image", &Inputs { suite: "trixie", ..inputs() }));
        assert_ne!(base, key("image", &Inputs { packages: vec!["bash"], ..inputs() }));
        assert_ne!(base, key("image", &Inputs { agent_sha256: "cd", ..inputs() }));
    }

    #[test]
    fn stage_is_cached_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let stage = Stage::new(dir.path(), "kernel", "k1");
        assert!(stage.cached().is_none());
        let work = stage.begin().unwrap().to_path_buf();
        std::fs::write(work.join("vmlinux"), b"elf").unwrap();
        assert!(stage.cached().is_none(), "a partial stage is not reusable");
        let done = stage.commit().unwrap().to_path_buf();
        assert_eq!(stage.cached(), Some(done.as_path()));
        assert_eq!(std::fs::read(done.join("vmlinux")).unwrap(), b"elf");
    }
}
