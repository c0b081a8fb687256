//! `manifest.json`: what an image contains and how it was built.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernel::KernelInfo;
use crate::rootfs::InstalledPackage;
use crate::ImageError;

/// The contents of `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of the builder that produced the image.
    pub builder_version: String,
    /// The cache key of the finished image (hash of all inputs).
    pub cache_key: String,
    /// Seconds since the Unix epoch when the image was built.
    pub built_at_unix: u64,
    /// Wall-clock seconds the (uncached part of the) build took.
    pub build_seconds: f64,
    /// Debian suite of the rootfs and kernel.
    pub suite: String,
    /// The kernel and the modules its initramfs loads.
    pub kernel: KernelInfo,
    /// Deno version installed as `/usr/bin/deno`.
    pub deno_version: String,
    /// SHA-256 of the agent installed as `/sbin/init` and the initramfs `/init`.
    pub agent_sha256: String,
    /// Every Debian package in the rootfs.
    pub packages: Vec<InstalledPackage>,
    /// The image files, by name.
    pub artifacts: Vec<Artifact>,
}

/// One file of the image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    /// File name inside the output directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
}

impl Artifact {
    /// Describes the file `dir/name`.
    pub fn of(dir: &Path, name: &str) -> Result<Self, ImageError> {
        let path = dir.join(name);
        let size = std::fs::metadata(&path).map_err(ImageError::io("inspecting", &path))?.len();
        Ok(Artifact { name: name.to_string(), size, sha256: sha256_file(&path)? })
    }
}

/// Lowercase hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = std::fs::File::open(path).map_err(ImageError::io("opening", path))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(ImageError::io("reading", path))?;
        if n == 0 {
            return Ok(hex::encode(hash.finalize()));
        }
        hash.update(&buf[..n]);
    }
}
