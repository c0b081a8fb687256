//! The initramfs: a gzip-compressed newc cpio archive whose `/init` is `rds-initramfs`.
//!
//! Entries are collected first (parents created implicitly) and written sorted with mtime 0, so
//! the same inputs give the same bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use cpio::newc::{Builder, ModeFileType};

use crate::command::run;
use crate::ImageError;

/// Where `rds-initramfs` finds the modules to load, inside the initramfs.
pub const MODULES_LOAD_PATH: &str = "lib/rds/modules.load";

enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
    CharDevice { major: u32, minor: u32, mode: u32 },
}

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents) at `path` (relative, no leading `/`).
    pub fn dir(&mut self, path: &str) {
        let path = clean(path);
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.nodes.entry(prefix.clone()).or_insert(Node::Dir);
        }
    }

    /// Adds a regular file with `data` and permission bits `mode` (e.g. `0o755`).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let path = clean(path);
        self.parent(&path);
        self.nodes.insert(path, Node::File { data, mode });
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = clean(path);
        self.parent(&path);
        self.nodes.insert(path, Node::Symlink { target: target.to_string() });
    }

    /// Adds a character device node (the kernel opens `/dev/console` before running `/init`).
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32, mode: u32) {
        let path = clean(path);
        self.parent(&path);
        self.nodes.insert(path, Node::CharDevice { major, minor, mode });
    }

    /// Copies a host file into the archive at `path`, following symlinks on the host.
    pub fn copy_from_host(&mut self, host: &Path, path: &str, mode: u32) -> Result<(), ImageError> {
        let data = std::fs::read(host).map_err(ImageError::io("reading", host))?;
        self.file(path, data, mode);
        Ok(())
    }

    /// Writes the archive as gzip-compressed newc cpio.
    pub fn write_gzip(&self, out: impl Write) -> std::io::Result<()> {
        let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        self.write_cpio(gz)?.finish()?;
        Ok(())
    }

    /// Writes the archive as uncompressed newc cpio and returns the writer.
    pub fn write_cpio<W: Write>(&self, mut out: W) -> std::io::Result<W> {
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let entry = Builder::new(path).ino(ino as u32 + 1).uid(0).gid(0).mtime(0);
            let (entry, data): (Builder, &[u8]) = match node {
                Node::Dir => (entry.mode(0o755).set_mode_file_type(ModeFileType::Directory).nlink(2), &[]),
                Node::File { data, mode } => (entry.mode(*mode).set_mode_file_type(ModeFileType::Regular), data),
                Node::Symlink { target } => {
                    (entry.mode(0o777).set_mode_file_type(ModeFileType::Symlink), target.as_bytes())
                }
                Node::CharDevice { major, minor, mode } => (
                    entry.mode(*mode).set_mode_file_type(ModeFileType::Char).rdev_major(*major).rdev_minor(*minor),
                    &[],
                ),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{path} exceeds 4 GiB")))?;
            let mut writer = entry.write(out, size);
            writer.write_all(data)?;
            out = writer.finish()?;
        }
        cpio::newc::trailer(out)
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/').trim_end_matches('/').to_string()
}

/// One entry of an existing archive, as [`list_entries`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Data size in bytes.
    pub size: u32,
}

/// Lists the entries of a newc cpio archive, gzip-compressed or not.
pub fn list_entries(archive: &[u8]) -> std::io::Result<Vec<ArchiveEntry>> {
    let mut raw = Vec::new();
    let plain: &[u8] = if archive.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(archive).read_to_end(&mut raw)?;
        &raw
    } else {
        archive
    };
    let mut entries = Vec::new();
    let mut rest = plain;
    loop {
        let reader = cpio::newc::Reader::new(rest)?;
        if reader.entry().is_trailer() {
            return Ok(entries);
        }
        let entry = reader.entry();
        entries.push(ArchiveEntry { name: entry.name().to_string(), mode: entry.mode(), size: entry.file_size() });
        rest = reader.finish()?;
    }
}

/// The shared libraries (and dynamic loader) `binary` needs, as `ldd` resolves them on this host.
/// Empty for a statically linked binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| ImageError::Agent { path: binary.to_path_buf(), reason: format!("cannot run ldd: {e}") })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        let all = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        // Re-run through the common helper for a uniform error message.
        run(Command::new("ldd").arg(binary))?;
    }
    parse_ldd(&text).map_err(|reason| ImageError::Agent { path: binary.to_path_buf(), reason })
}

/// Parses `ldd` output lines such as `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("statically linked") {
            return Ok(Vec::new());
        }
        if line.contains("=> not found") {
            return Err(format!("needs a library this host does not have: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_round_trips_files_dirs_links_and_devices() {
        let mut initramfs = Initramfs::new();
        initramfs.file("/init", b"#!agent".to_vec(), 0o755);
        initramfs.file("lib/modules/6.1/kernel/virtio.ko", vec![7; 1001], 0o644);
        initramfs.symlink("lib64", "lib");
        initramfs.char_device("dev/console", 5, 1, 0o600);
        let mut gz = Vec::new();
        initramfs.write_gzip(&mut gz).unwrap();

        let entries = list_entries(&gz).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/virtio.ko",
                "lib64"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(get("init").size, 7);
        assert_eq!(get("lib/modules/6.1/kernel/virtio.ko").size, 1001);
        assert_eq!(get("dev/console").mode, 0o020600);
        assert_eq!(get("lib").mode, 0o040755);
        assert_eq!(get("lib64").mode & 0o170000, 0o120000);
    }

    #[test]
    fn cpio_output_is_reproducible() {
        let build = || {
            let mut initramfs = Initramfs::new();
            initramfs.file("b", vec![1, 2, 3], 0o644);
            initramfs.file("a/x", vec![4], 0o600);
            initramfs.write_cpio(Vec::new()).unwrap()
        };
        assert_eq!(build(), build());
        assert!(build().starts_with(b"070701"), "newc magic");
    }

    #[test]
    fn ldd_output_is_parsed_into_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
