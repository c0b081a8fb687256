//! `sourceMode: "mirror"`: a sanitized, read-only copy of a provider's source for its consumers.
//!
//! The input is the tar.gz the provider's agent produces for `/workspace`. Only regular files
//! and directories are kept; dotenv files, the provider's own `peers/`, caches, and every file
//! that contains one of the provider's secret values are left out (and listed as skipped).

use std::io::Read;
use std::path::{Component, Path};

use crate::secrets::SecretEnv;

/// Bounds on what a mirror may hold.
#[derive(Debug, Clone)]
pub struct MirrorLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

impl Default for MirrorLimits {
    fn default() -> Self {
        MirrorLimits { max_files: 5_000, max_bytes: 32 * 1024 * 1024 }
    }
}

/// The sanitized copy: relative paths and contents, plus what was left out and why.
#[derive(Debug, Default)]
pub struct Mirror {
    pub files: Vec<(String, Vec<u8>)>,
    pub skipped: Vec<String>,
}

/// Why a provider's source cannot be mirrored.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The archive is not a readable tar.gz.
    #[error("provider archive unreadable")]
    Unreadable(#[source] std::io::Error),
    /// An entry's path cannot be read.
    #[error("bad path in provider archive")]
    BadPath(#[source] std::io::Error),
    /// An entry's path is absolute or climbs out with `..`.
    #[error("provider archive entry {0} escapes the workspace")]
    Escapes(String),
    /// More entries than twice the file limit (directories and skipped files included).
    #[error("provider source has too many entries for mirror mode (max {max})")]
    TooManyEntries {
        /// The file limit.
        max: usize,
    },
    /// The files kept exceed [`MirrorLimits`].
    #[error("provider source exceeds mirror limits ({max_files} files, {max_bytes} bytes)")]
    OverLimits {
        /// Most files.
        max_files: usize,
        /// Most bytes.
        max_bytes: u64,
    },
    /// A file's contents cannot be read from the archive.
    #[error("reading {path}")]
    Read {
        /// The file, relative to the workspace.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Top-level directories never mirrored.
const SKIPPED_DIRS: [&str; 6] = ["peers", ".deno", ".cache", "node_modules", ".rds", ".git"];

fn is_dotenv(name: &str) -> bool {
    name == ".env" || name.starts_with(".env.") || name.ends_with(".env") || name == ".envrc"
}

/// Builds a mirror from a provider workspace archive.
pub fn mirror_from_tar_gz(
    archive: impl Read,
    secrets: &SecretEnv,
    limits: &MirrorLimits,
) -> Result<Mirror, MirrorError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut mirror = Mirror::default();
    let mut total: u64 = 0;
    let mut seen = 0usize;
    for entry in tar.entries().map_err(MirrorError::Unreadable)? {
        let mut entry = entry.map_err(MirrorError::Unreadable)?;
        seen += 1;
        if seen > limits.max_files * 2 {
            return Err(MirrorError::TooManyEntries { max: limits.max_files });
        }
        let path = entry.path().map_err(MirrorError::BadPath)?.into_owned();
        let Some(rel) = normalize(&path) else {
            return Err(MirrorError::Escapes(path.display().to_string()));
        };
        if rel.is_empty() {
            continue;
        }
        let first = rel.split('/').next().unwrap_or_default();
        let name = rel.rsplit('/').next().unwrap_or_default();
        let kind = entry.header().entry_type();
        if SKIPPED_DIRS.contains(&first) || rel.split('/').any(is_dotenv) {
            if kind.is_file() {
                mirror.skipped.push(format!("{rel} (excluded path)"));
            }
            continue;
        }
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            mirror.skipped.push(format!("{rel} (not a regular file)"));
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        total = total.saturating_add(size);
        if mirror.files.len() >= limits.max_files || total > limits.max_bytes {
            return Err(MirrorError::OverLimits { max_files: limits.max_files, max_bytes: limits.max_bytes });
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(size)
            .read_to_end(&mut data)
            .map_err(|source| MirrorError::Read { path: rel.clone(), source })?;
        if secrets.appears_in(&data) || secrets.appears_in(name.as_bytes()) {
            mirror.skipped.push(format!("{rel} (contains a secret value)"));
            continue;
        }
        mirror.files.push((rel, data));
    }
    Ok(mirror)
}

/// `./a/b` → `a/b`; `None` for absolute paths or `..` components.
fn normalize(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("./{path}"), *data).unwrap();
        }
        if let Some((name, target)) = symlink {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn mirror_drops_dotenv_secrets_links_and_own_peers() {
        let secrets = SecretEnv::parse(&["TOKEN=sk-top-secret-42".into()]).unwrap();
        let tgz = archive(
            &[
                ("src/sdk.ts", b"export const x = 1;"),
                (".env", b"TOKEN=sk-top-secret-42"),
                ("config/.env.production", b"A=1"),
                ("config/settings.json", b"{\"token\":\"sk-top-secret-42\"}"),
                ("peers/other/index.ts", b"x"),
                ("README.md", b"hello"),
            ],
            Some(("link", "/etc/passwd")),
        );
        let m = mirror_from_tar_gz(&tgz[..], &secrets, &MirrorLimits::default()).unwrap();
        let names: Vec<&str> = m.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["src/sdk.ts", "README.md"]);
        assert_eq!(m.skipped.len(), 5, "{:?}", m.skipped);
        assert!(m.files.iter().all(|(_, d)| !secrets.appears_in(d)));
    }

    #[test]
    fn mirror_enforces_limits() {
        let tgz = archive(&[("a", b"1234"), ("b", b"5678")], None);
        let limits = MirrorLimits { max_files: 1, max_bytes: 100 };
        assert!(matches!(
            mirror_from_tar_gz(&tgz[..], &SecretEnv::default(), &limits),
            Err(MirrorError::OverLimits { .. })
        ));
        let limits = MirrorLimits { max_files: 10, max_bytes: 5 };
        assert!(matches!(
            mirror_from_tar_gz(&tgz[..], &SecretEnv::default(), &limits),
            Err(MirrorError::OverLimits { .. })
        ));
    }

    #[test]
    fn an_unreadable_archive_keeps_the_io_error_as_its_cause() {
        use std::error::Error;
        let err =
            mirror_from_tar_gz(&b"not gzip at all"[..], &SecretEnv::default(), &MirrorLimits::default()).unwrap_err();
        assert!(matches!(err, MirrorError::Unreadable(_)), "{err:?}");
        assert!(err.source().is_some_and(|s| s.is::<std::io::Error>()), "{err:?}");
    }
}
