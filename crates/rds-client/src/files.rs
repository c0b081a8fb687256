//! tar.gz for the file routes: packing a local directory or file, unpacking a download without
//! writing outside the target directory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::Error;

fn local(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Local(format!("{what}: {e}"))
}

/// The contents of `dir` (not `dir` itself) as a tar.gz: files and directories, no links.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, Error> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    tar.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))
            .map_err(|e| local(&dir.join(&rel).display().to_string(), e))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let kind = entry.file_type().map_err(|e| local(&entry.path().display().to_string(), e))?;
            let name = rel.join(entry.file_name());
            if kind.is_dir() {
                tar.append_dir(&name, entry.path()).map_err(|e| local(&name.display().to_string(), e))?;
                stack.push(name);
            } else if kind.is_file() {
                tar.append_path_with_name(entry.path(), &name).map_err(|e| local(&name.display().to_string(), e))?;
            }
        }
    }
    let gz = tar.into_inner().map_err(|e| local("packing", e))?;
    gz.finish().map_err(|e| local("packing", e))
}

/// A tar.gz of one file `name` holding `data`.
pub fn pack_file(name: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, data).map_err(|e| local(name, e))?;
    tar.into_inner().and_then(|gz| gz.finish()).map_err(|e| local("packing", e))
}

/// Unpacks a tar.gz into `dir` (created if missing): regular files and directories whose names
/// stay inside it; the files written, relative to `dir`.
pub fn unpack_into(archive: &[u8], dir: &Path) -> Result<Vec<String>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| local(&dir.display().to_string(), e))?;
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    let mut written = Vec::new();
    for entry in tar.entries().map_err(|e| local("reading the download", e))? {
        let mut entry = entry.map_err(|e| local("reading the download", e))?;
        let path = entry.path().map_err(|e| local("reading the download", e))?.into_owned();
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            continue;
        }
        let target = dir.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| local(&path.display().to_string(), e))?
            }
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| local(&path.display().to_string(), e))?;
                }
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| local(&path.display().to_string(), e))?;
                std::fs::write(&target, data).map_err(|e| local(&target.display().to_string(), e))?;
                written.push(path.to_string_lossy().into_owned());
            }
            _ => {} // links and devices never land on this disk
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_round_trips_and_nothing_escapes() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/f.txt"), "deep").unwrap();
        std::fs::write(src.path().join("top"), "top").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let archive = pack_dir(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut written = unpack_into(&archive, out.path()).unwrap();
        written.sort();
        assert_eq!(written, ["a/b/f.txt", "top"]);
        assert_eq!(std::fs::read_to_string(out.path().join("a/b/f.txt")).unwrap(), "deep");

        let mut evil = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        let name = b"../escaped";
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        evil.append(&header, &b"evil"[..]).unwrap();
        let evil = evil.into_inner().unwrap().finish().unwrap();
        let inner = out.path().join("inner");
        assert!(unpack_into(&evil, &inner).unwrap().is_empty());
        assert!(!out.path().join("escaped").exists());
    }
}
