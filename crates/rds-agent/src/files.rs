//! File transfer between API callers and the guest workspace: tar.gz upload, download and
//! tree replacement.
//!
//! The agent runs as root while the workspace belongs to untrusted code that may plant symlinks
//! at any time. Every filesystem step therefore goes through directory fds obtained with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`; no path string is
//! ever resolved from `/` and no user-made link is ever followed. Archives are extracted into a
//! root-only staging dir inside the workspace, validated completely, and only then moved into
//! place, so a rejected archive leaves nothing behind.
//!
//! Policy choices: entry names containing `..` are rejected even when they would stay inside the
//! destination; symlinks *inside* a downloaded directory are skipped (never archived, never
//! followed); `replace_tree` swaps out whatever sits at `dest` (even a user symlink, which is
//! removed, not followed), but refuses parents that are symlinks. Tar type '7' (contiguous) is
//! treated as a regular file, as GNU tar does; every other non-file, non-dir type is rejected.
//! Top-level names starting with `.rds-staging-` are the agent's: no upload writes them and
//! downloads treat them as absent.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;

/// The workspace path as callers see it, whatever the real directory is.
const CALLER_WORKSPACE: &str = "/workspace";
/// Name prefix of the root-only staging dirs created inside the workspace.
const STAGING_PREFIX: &str = ".rds-staging-";
/// Longest entry name accepted (Linux `PATH_MAX`).
const MAX_NAME_BYTES: usize = 4096;
/// Deepest entry accepted; keeps the recursive tree walks shallow.
const MAX_DEPTH: usize = 128;
/// Deepest tree `remove_tree` descends into (user-made trees swapped out by `replace_tree`).
const MAX_REMOVE_DEPTH: usize = 512;
/// Decompressed bytes the tar parser may consume between two entries (headers, padding, long
/// names, PAX records). The tar crate buffers long names in memory, so this bounds memory too.
const METADATA_WINDOW: u64 = 1 << 20;
/// Decompressed metadata bytes allowed over the whole archive.
const METADATA_TOTAL: u64 = 64 << 20;

/// Size limits applied while an archive is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// Most entries (files and directories) an archive may contain.
    pub max_entries: usize,
    /// Most file content bytes an archive may unpack to.
    pub max_unpacked_bytes: u64,
}

impl Default for TransferLimits {
    fn default() -> Self {
        Self { max_entries: 10_000, max_unpacked_bytes: 250 << 20 }
    }
}

/// Who owns the files and directories an operation creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The unprivileged workspace user (normally uid/gid 1000).
    User { uid: u32, gid: u32 },
    /// The agent itself (root in every guest and sandbox), for trees the user must not change
    /// (e.g. `/workspace/peers`).
    Root,
}

impl Owner {
    fn ids(self) -> (Uid, Gid) {
        match self {
            Owner::User { uid, gid } => (Uid::from_raw(uid), Gid::from_raw(gid)),
            // The agent's own ids rather than a literal 0: the same in a guest, and an agent
            // embedded in an unprivileged process (the manager's tests) can still give itself files.
            Owner::Root => (nix::unistd::geteuid(), nix::unistd::getegid()),
        }
    }
}

/// What a successful upload or tree replacement wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSummary {
    /// Files and directories written from the archive.
    pub entries: usize,
    /// File content bytes written.
    pub bytes: u64,
}

/// Why a file transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The caller's path or archive is not acceptable (HTTP 400); the message names the culprit.
    #[error("{0}")]
    Rejected(String),
    /// The requested path does not exist in the workspace (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The agent failed to read or write its own files (HTTP 500; 409 when the VM's disk is full).
    #[error("file transfer failed: {0}")]
    Io(#[from] io::Error),
}

impl From<Errno> for FileError {
    fn from(e: Errno) -> Self {
        FileError::Io(e.into())
    }
}

fn rejected(msg: impl Into<String>) -> FileError {
    FileError::Rejected(msg.into())
}

/// Normalizes a caller path to a path relative to the workspace root (empty = the root itself).
///
/// Accepts relative paths and absolute paths under the literal `/workspace` (the caller-visible
/// prefix, independent of where `workspace` really is); rejects other absolute paths and `..`
/// that would climb above the workspace. The result is lexical: symlinks are never consulted,
/// and every later filesystem step refuses to traverse them.
pub fn resolve_workspace_path(workspace: &Path, p: &str) -> Result<PathBuf, FileError> {
    // The real location does not change the normalization; it is taken so callers pass one
    // consistent pair of (workspace, path) everywhere.
    let _ = workspace;
    if p.is_empty() {
        return Err(rejected("path is empty"));
    }
    if p.contains('\0') {
        return Err(rejected(format!("path {p:?} contains a NUL byte")));
    }
    let rel = if p.starts_with('/') {
        match p.strip_prefix(CALLER_WORKSPACE) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Err(rejected(format!("path '{p}' is outside /workspace: only /workspace paths are allowed"))),
        }
    } else {
        p
    };
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(rejected(format!("path '{p}' escapes /workspace")));
                }
            }
            Component::Prefix(_) => return Err(rejected(format!("path '{p}' is not a workspace path"))),
        }
    }
    Ok(out)
}

/// Extracts a tar.gz stream into `dest` (relative to the workspace or absolute under
/// `/workspace`), merging: existing files are overwritten, existing directories kept.
pub fn upload(
    workspace: &Path,
    dest: &str,
    body: impl Read,
    limits: &TransferLimits,
    owner: Owner,
) -> Result<UploadSummary, FileError> {
    let comps = dest_components(workspace, dest)?;
    let ws = open_workspace(workspace)?;
    let finish = Finish { owner, read_only: false };
    // Refuse a bad dest before reading the body; checked again when committing.
    probe_dir(&ws, &comps).map_err(|e| dest_error(dest, e))?;
    let staging = Staging::create(&ws)?;
    let staged = extract(body, &staging.root, limits, &finish)?;
    if comps.is_empty() {
        check_reserved(&staged.tree)?;
    }
    if let Some(existing) = probe_dir(&ws, &comps).map_err(|e| dest_error(dest, e))? {
        check_collisions(&existing, &staged.tree, Path::new(""))?;
    }
    let dest_fd = ensure_dirs(&ws, &comps, &finish).map_err(|e| dest_error(dest, e))?;
    merge(&staging.root, &dest_fd, &staged.tree, Path::new(""))?;
    Ok(staged.summary)
}

/// Replaces whatever is at `dest` with the archive's content in one rename (used by the manager
/// for `/workspace/peers`); with `read_only`, dirs become 0555 and files 0444.
pub fn replace_tree(
    workspace: &Path,
    dest: &str,
    body: impl Read,
    limits: &TransferLimits,
    owner: Owner,
    read_only: bool,
) -> Result<UploadSummary, FileError> {
    let comps = dest_components(workspace, dest)?;
    let Some((name, parents)) = comps.split_last() else {
        return Err(rejected("dest must not be the workspace root itself"));
    };
    let ws = open_workspace(workspace)?;
    probe_dir(&ws, parents).map_err(|e| dest_error(dest, e))?;
    let finish = Finish { owner, read_only };
    let staging = Staging::create(&ws)?;
    let staged = extract(body, &staging.root, limits, &finish)?;
    // Writable by its owner while it moves: moving a directory to another parent rewrites its
    // `..`, which an agent that is not root may only do in a directory it can write.
    Finish { owner, read_only: false }.apply(&staging.root, true, false)?;
    let parent_finish = Finish { owner, read_only: false };
    let parent = ensure_dirs(&ws, parents, &parent_finish).map_err(|e| dest_error(dest, e))?;
    // The old tree moves into the staging dir, which rewrites its `..`: an agent that is not root
    // must first make its own read-only tree writable (root ignores the mode).
    if !nix::unistd::geteuid().is_root() {
        if let Ok(old) = open_beneath(&parent, Path::new(name), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            let st = fstat(old.as_raw_fd())?;
            if st.st_uid == nix::unistd::geteuid().as_raw() {
                nix::sys::stat::fchmod(old.as_raw_fd(), Mode::from_bits_truncate(0o755))?;
            }
        }
    }
    // Exchange keeps `dest` populated at every instant; the old content (file, dir or a user
    // symlink, never followed) lands in the staging dir and is deleted with it.
    match rename_at(&staging.dir, OsStr::new("root"), &parent, name, libc::RENAME_EXCHANGE) {
        Ok(()) => {}
        Err(Errno::ENOENT) => rename_at(&staging.dir, OsStr::new("root"), &parent, name, libc::RENAME_NOREPLACE)?,
        Err(e) => return Err(e.into()),
    }
    // The descriptor follows the tree to `dest`.
    finish.apply(&staging.root, true, false)?;
    Ok(staged.summary)
}

/// Checks that `path` can be downloaded, before any byte of the response is sent.
pub fn check_download(workspace: &Path, path: &str) -> Result<(), FileError> {
    open_download(workspace, path).map(drop)
}

/// Writes `path` (a file or directory under the workspace) to `out` as a tar.gz stream.
///
/// A file is archived under its own name; a directory's content under names relative to it.
/// Symlinks and special files inside a directory are skipped.
pub fn download(workspace: &Path, path: &str, out: impl Write) -> Result<(), FileError> {
    let (ws, rel, target) = open_download(workspace, path)?;
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    match target {
        Target::File(file, st) => {
            let name = rel.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("file"));
            append_file(&mut tar, &name, file, &st)?;
        }
        Target::Dir => append_dir_tree(&mut tar, &ws, &rel)?,
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// fd-relative filesystem primitives

/// Opens `rel` beneath `dir`, refusing any symlink, magic link or escape on the way.
fn open_beneath(dir: &OwnedFd, rel: &Path, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let mut how = OpenHow::new()
        // RESOLVE_NO_SYMLINKS also refuses a trailing symlink (with ELOOP, which O_NOFOLLOW
        // would turn into opening the link itself under O_PATH).
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    if flags.contains(OFlag::O_CREAT) {
        // openat2 insists on mode 0 unless a file may be created.
        how = how.mode(Mode::from_bits_truncate(mode));
    }
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the workspace directory itself; its path comes from agent config, not from callers.
fn open_workspace(workspace: &Path) -> Result<OwnedFd, FileError> {
    let fd = nix::fcntl::open(workspace, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: open just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `renameat2` through the raw syscall: nix only exposes it for glibc and the agent may be musl.
fn rename_at(from: &OwnedFd, old: &OsStr, to: &OwnedFd, new: &OsStr, flags: libc::c_uint) -> nix::Result<()> {
    let old = CString::new(old.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let new = CString::new(new.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both names are NUL-terminated and outlive the call; both fds are open directories.
    let r = unsafe {
        libc::syscall(libc::SYS_renameat2, from.as_raw_fd(), old.as_ptr(), to.as_raw_fd(), new.as_ptr(), flags)
    };
    Errno::result(r).map(drop)
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<FileStat> {
    fstatat(Some(dir.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Names in a directory (without `.`/`..`), sorted. Uses libc directly because nix's `dir`
/// feature is not enabled for this crate.
fn list_dir(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let fd = open_beneath(dir, Path::new("."), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
    // SAFETY: fd is an open directory we own; on success the stream takes ownership of it.
    let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if stream.is_null() {
        return Err(Errno::last());
    }
    let _ = fd.into_raw_fd(); // now closed by closedir
    let mut names = Vec::new();
    let result = loop {
        Errno::clear();
        // SAFETY: stream is a live DIR* until closedir below.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let errno = Errno::last();
            break if errno == Errno::UnknownErrno { Ok(()) } else { Err(errno) };
        }
        // SAFETY: ent points at a valid dirent until the next readdir; d_name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: stream came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(stream) };
    result?;
    names.sort();
    Ok(names)
}

/// Walks `comps` beneath `base`; `Ok(None)` if some component does not exist yet.
fn probe_dir(base: &OwnedFd, comps: &[OsString]) -> nix::Result<Option<OwnedFd>> {
    match open_beneath(base, &comps.iter().collect::<PathBuf>(), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens `comps` beneath `base`, creating missing directories owned and moded per `finish`.
fn ensure_dirs(base: &OwnedFd, comps: &[OsString], finish: &Finish) -> nix::Result<OwnedFd> {
    let mut cur = open_beneath(base, Path::new("."), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
    for comp in comps {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        cur = match open_beneath(&cur, Path::new(comp), flags, 0) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), comp.as_os_str(), Mode::from_bits_truncate(0o700))
                {
                    Ok(()) => {
                        let fd = open_beneath(&cur, Path::new(comp), flags, 0)?;
                        finish.apply(&fd, true, false)?;
                        fd
                    }
                    // Someone created it meanwhile: use it if it is a real directory.
                    Err(Errno::EEXIST) => open_beneath(&cur, Path::new(comp), flags, 0)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
    }
    Ok(cur)
}

/// Deletes `name` under `parent` recursively without following any link.
fn remove_tree(parent: &OwnedFd, name: &OsStr, depth: usize) -> nix::Result<()> {
    let st = stat_at(parent, name)?;
    if file_type(&st) != SFlag::S_IFDIR {
        return nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
    }
    if depth > MAX_REMOVE_DEPTH {
        return Err(Errno::ELOOP);
    }
    let dir = open_beneath(parent, Path::new(name), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
    // A read-only directory of the agent's own (a replaced `peers` tree) must become writable
    // before its entries can go, unless the agent is root, which ignores the mode.
    if st.st_uid == nix::unistd::geteuid().as_raw() && st.st_mode & 0o200 == 0 {
        nix::sys::stat::fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o700))?;
    }
    let mut first_err = None;
    for child in list_dir(&dir)? {
        if let Err(e) = remove_tree(&dir, &child, depth + 1) {
            first_err.get_or_insert(e);
        }
    }
    drop(dir);
    let removed = nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::RemoveDir);
    first_err.map_or(removed, Err)
}

// ---------------------------------------------------------------------------------------------
// paths and errors

fn dest_components(workspace: &Path, dest: &str) -> Result<Vec<OsString>, FileError> {
    let rel = resolve_workspace_path(workspace, dest)?;
    let comps: Vec<OsString> = rel.iter().map(OsString::from).collect();
    if comps.first().is_some_and(|c| c.as_bytes().starts_with(STAGING_PREFIX.as_bytes())) {
        return Err(rejected(format!("dest '{dest}' is reserved for the agent")));
    }
    Ok(comps)
}

fn dest_error(dest: &str, e: Errno) -> FileError {
    match e {
        Errno::ELOOP | Errno::EXDEV => rejected(format!("dest '{dest}' is or passes through a symbolic link")),
        Errno::ENOTDIR | Errno::EEXIST => rejected(format!("dest '{dest}' is not a directory")),
        Errno::ENAMETOOLONG => rejected(format!("dest '{dest}' is too long")),
        e => e.into(),
    }
}

/// Validates an archive entry name and splits it into components (`.` dropped).
fn entry_components(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.len() > MAX_NAME_BYTES {
        return Err("name is longer than 4096 bytes");
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute paths are not allowed");
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    let mut comps = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("'..' components are not allowed"),
            p => comps.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    if comps.len() > MAX_DEPTH {
        return Err("name is nested more than 128 directories deep");
    }
    Ok(comps)
}

/// Entry name as shown in error messages.
fn display_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// Maps an error from writing into the staging dir: most are caused by the archive's names.
fn staging_error(name: &str, e: Errno) -> FileError {
    match e {
        Errno::ENAMETOOLONG | Errno::EISDIR | Errno::ENOTDIR | Errno::EEXIST | Errno::ELOOP | Errno::EINVAL => {
            rejected(format!("entry '{name}': cannot be created ({})", e.desc()))
        }
        e => e.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// ownership and modes

/// Owner and permission policy for everything an operation creates.
struct Finish {
    owner: Owner,
    read_only: bool,
}

impl Finish {
    /// Sets owner and a sane mode; archive modes only contribute the executable bit.
    fn apply(&self, fd: &OwnedFd, is_dir: bool, executable: bool) -> nix::Result<()> {
        let (uid, gid) = self.owner.ids();
        nix::unistd::fchown(fd.as_raw_fd(), Some(uid), Some(gid))?;
        let mode = match (is_dir, self.read_only, executable) {
            (true, false, _) => 0o755,
            (true, true, _) => 0o555,
            (false, true, _) => 0o444,
            (false, false, true) => 0o755,
            (false, false, false) => 0o644,
        };
        nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
    }
}

// ---------------------------------------------------------------------------------------------
// staging

/// A root-only (0700) dir inside the workspace holding `root/`, the tree being extracted.
/// Removed on drop, whatever happened.
struct Staging<'a> {
    ws: &'a OwnedFd,
    name: OsString,
    dir: OwnedFd,
    root: OwnedFd,
}

impl<'a> Staging<'a> {
    fn create(ws: &'a OwnedFd) -> Result<Self, FileError> {
        let name = OsString::from(format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4()));
        nix::sys::stat::mkdirat(Some(ws.as_raw_fd()), name.as_os_str(), Mode::from_bits_truncate(0o700))?;
        // From here on the guard owns the name; failures below still remove it.
        let guard = PendingStaging { ws, name };
        let dir = open_beneath(ws, Path::new(&guard.name), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
        let st = fstat(dir.as_raw_fd())?;
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            // The user swapped in their own dir between mkdir and open.
            return Err(io::Error::other("staging directory was replaced during setup").into());
        }
        nix::sys::stat::fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o700))?;
        nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), "root", Mode::from_bits_truncate(0o700))?;
        let root = open_beneath(&dir, Path::new("root"), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
        let name = guard.disarm();
        Ok(Staging { ws, name, dir, root })
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(self.ws, &self.name, 0) {
            tracing::warn!(staging = ?self.name, error = %e, "could not fully remove staging directory");
        }
    }
}

/// Removes a half-built staging dir if `Staging::create` fails after `mkdirat`.
struct PendingStaging<'a> {
    ws: &'a OwnedFd,
    name: OsString,
}

impl PendingStaging<'_> {
    fn disarm(mut self) -> OsString {
        std::mem::take(&mut self.name)
    }
}

impl Drop for PendingStaging<'_> {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = remove_tree(self.ws, &self.name, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// extraction

/// The shape of an extracted archive, used to check and commit it without re-reading the disk.
#[derive(Default)]
struct Tree(BTreeMap<OsString, Node>);

/// Each node remembers the first archive entry that created it, for error messages.
enum Node {
    File(String),
    Dir(Tree, String),
}

impl Tree {
    /// Records an entry; a later file may replace a file, a dir may repeat, nothing else.
    fn insert(&mut self, comps: &[OsString], is_dir: bool, entry: &str) -> Result<(), &'static str> {
        let Some((last, parents)) = comps.split_last() else {
            return Ok(());
        };
        let mut tree = self;
        for c in parents {
            tree = match tree.0.entry(c.clone()).or_insert_with(|| Node::Dir(Tree::default(), entry.to_owned())) {
                Node::Dir(sub, _) => sub,
                Node::File(_) => return Err("a parent directory is a file earlier in the archive"),
            };
        }
        match (tree.0.get(last), is_dir) {
            (Some(Node::Dir(..)), true) => {}
            (Some(Node::Dir(..)), false) => return Err("conflicts with a directory earlier in the archive"),
            (Some(Node::File(_)), true) => return Err("conflicts with a file earlier in the archive"),
            (_, false) => {
                tree.0.insert(last.clone(), Node::File(entry.to_owned()));
            }
            (None, true) => {
                tree.0.insert(last.clone(), Node::Dir(Tree::default(), entry.to_owned()));
            }
        }
        Ok(())
    }
}

struct Staged {
    tree: Tree,
    summary: UploadSummary,
}

/// How many decompressed bytes the tar parser may still consume; shared with `BoundedReader`.
#[derive(Default)]
struct Budget {
    pos: Cell<u64>,
    limit: Cell<u64>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn allow(&self, more: u64) {
        self.limit.set(self.pos.get().saturating_add(more));
    }
}

/// Counts real decompressed bytes and fails once the current allowance is used up, so neither a
/// gzip bomb nor a header lying about sizes can make the agent decompress or buffer more.
struct BoundedReader<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.budget.limit.get().saturating_sub(self.budget.pos.get());
        if room == 0 {
            if buf.is_empty() || self.inner.read(&mut [0u8; 1])? == 0 {
                return Ok(0);
            }
            self.budget.exceeded.set(true);
            return Err(io::Error::other("archive expands beyond the allowed size"));
        }
        let n = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let got = self.inner.read(&mut buf[..n])?;
        self.budget.pos.set(self.budget.pos.get() + got as u64);
        Ok(got)
    }
}

/// Extracts a tar.gz stream under `root`, enforcing every archive rule.
fn extract(body: impl Read, root: &OwnedFd, limits: &TransferLimits, finish: &Finish) -> Result<Staged, FileError> {
    let budget = Rc::new(Budget::default());
    let reader = BoundedReader { inner: GzDecoder::new(body), budget: budget.clone() };
    let mut archive = tar::Archive::new(reader);
    let mut staged = Staged { tree: Tree::default(), summary: UploadSummary { entries: 0, bytes: 0 } };
    // Directories stay writable until everything is in them (see `seal_dirs`).
    let dir_finish = Finish { owner: finish.owner, read_only: false };
    let mut metadata_used = 0u64;
    let mut seen = 0usize;
    let mut last = String::from("(start of archive)");
    let read_error = |e: io::Error, last: &str| {
        if budget.exceeded.get() {
            rejected(format!(
                "archive expands beyond the allowed size (after entry '{last}'): at most {} bytes of file content \
                 and {METADATA_WINDOW} bytes of tar metadata between entries",
                limits.max_unpacked_bytes
            ))
        } else {
            rejected(format!("archive is not a valid tar.gz (after entry '{last}'): {e}"))
        }
    };
    {
        let mut entries = archive.entries().map_err(|e| read_error(e, &last))?;
        loop {
            budget.allow(METADATA_WINDOW.min(METADATA_TOTAL.saturating_sub(metadata_used)));
            let before = budget.pos.get();
            let next = entries.next();
            metadata_used += budget.pos.get() - before;
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(read_error(e, &last)),
            };
            let raw = entry.path_bytes().into_owned();
            let name = display_name(&raw);
            let kind = entry.header().entry_type();
            if kind == EntryType::XGlobalHeader {
                continue; // PAX global metadata, no file
            }
            seen += 1;
            if seen > limits.max_entries {
                return Err(rejected(format!(
                    "archive has more than {} entries (at entry '{name}')",
                    limits.max_entries
                )));
            }
            let comps = entry_components(&raw).map_err(|why| rejected(format!("entry '{name}': {why}")))?;
            let is_dir = match kind {
                EntryType::Directory => true,
                EntryType::Regular | EntryType::Continuous => false,
                EntryType::Symlink => return Err(rejected(format!("entry '{name}': symbolic links are not allowed"))),
                EntryType::Link => return Err(rejected(format!("entry '{name}': hard links are not allowed"))),
                EntryType::Char | EntryType::Block => {
                    return Err(rejected(format!("entry '{name}': device files are not allowed")))
                }
                EntryType::Fifo => return Err(rejected(format!("entry '{name}': fifos are not allowed"))),
                other => {
                    return Err(rejected(format!(
                        "entry '{name}': unsupported entry type '{}'",
                        other.as_byte().escape_ascii()
                    )))
                }
            };
            if comps.is_empty() {
                if is_dir {
                    continue; // "./" names the destination itself
                }
                return Err(rejected(format!("entry '{name}': a file needs a name")));
            }
            staged.tree.insert(&comps, is_dir, &name).map_err(|why| rejected(format!("entry '{name}': {why}")))?;
            if is_dir {
                ensure_dirs(root, &comps, &dir_finish).map_err(|e| staging_error(&name, e))?;
            } else {
                let size = entry.size();
                if size > limits.max_unpacked_bytes.saturating_sub(staged.summary.bytes) {
                    return Err(rejected(format!(
                        "entry '{name}': archive unpacks to more than {} bytes",
                        limits.max_unpacked_bytes
                    )));
                }
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                let (parents, file_name) = comps.split_at(comps.len() - 1);
                let parent = ensure_dirs(root, parents, &dir_finish).map_err(|e| staging_error(&name, e))?;
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
                let fd = open_beneath(&parent, Path::new(&file_name[0]), flags, 0o600)
                    .map_err(|e| staging_error(&name, e))?;
                budget.allow(size);
                let mut file = File::from(fd);
                let written = rds_host::copy_apart(&mut entry, &mut file).map_err(|e| match e {
                    rds_host::CopyError::Read(e) => read_error(e, &name),
                    rds_host::CopyError::Write(e) => FileError::Io(e),
                })?;
                if written != size {
                    return Err(rejected(format!("entry '{name}': archive is truncated ({written} of {size} bytes)")));
                }
                staged.summary.bytes += written;
                finish.apply(&OwnedFd::from(file), false, executable)?;
            }
            staged.summary.entries += 1;
            last = name;
        }
    }
    // Read to the end of the gzip stream so its checksum and length are verified.
    budget.allow(METADATA_WINDOW);
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| read_error(e, &last))?;
    if finish.read_only {
        seal_dirs(root, &staged.tree, finish)?;
    }
    Ok(staged)
}

/// Gives the extracted directories their final (read-only) mode once everything is in them: an
/// agent that is not root cannot add entries to a directory it has already made read-only.
fn seal_dirs(dir: &OwnedFd, tree: &Tree, finish: &Finish) -> nix::Result<()> {
    for (name, node) in &tree.0 {
        if let Node::Dir(sub, _) = node {
            let fd = open_beneath(dir, Path::new(name), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
            seal_dirs(&fd, sub, finish)?;
            finish.apply(&fd, true, false)?;
        }
    }
    Ok(())
}

/// Refuses top-level names the agent keeps for its staging dirs: downloads treat them as absent,
/// so a file uploaded there could never be read back.
fn check_reserved(tree: &Tree) -> Result<(), FileError> {
    match tree.0.iter().find(|(name, _)| name.as_bytes().starts_with(STAGING_PREFIX.as_bytes())) {
        Some((name, Node::File(entry) | Node::Dir(_, entry))) => Err(rejected(format!(
            "entry '{entry}': '{}' at the workspace root is reserved for the agent",
            name.to_string_lossy()
        ))),
        None => Ok(()),
    }
}

/// Refuses to commit if an entry would go through a workspace symlink or clash with a type.
fn check_collisions(dest: &OwnedFd, tree: &Tree, prefix: &Path) -> Result<(), FileError> {
    for (name, node) in &tree.0 {
        let at = prefix.join(name);
        match node {
            Node::Dir(sub, entry) => match open_beneath(dest, Path::new(name), OFlag::O_DIRECTORY | OFlag::O_PATH, 0) {
                Ok(fd) => check_collisions(&fd, sub, &at)?,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(collision_error(entry, &at, e)),
            },
            Node::File(entry) => match stat_at(dest, name) {
                Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
                    return Err(rejected(format!(
                        "entry '{entry}': '{}' is a directory in the destination",
                        at.display()
                    )))
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(())
}

fn collision_error(entry: &str, at: &Path, e: Errno) -> FileError {
    match e {
        Errno::ELOOP | Errno::EXDEV => rejected(format!(
            "entry '{entry}': '{}' in the destination is a symbolic link; refusing to write through it",
            at.display()
        )),
        Errno::ENOTDIR => {
            rejected(format!("entry '{entry}': '{}' in the destination is not a directory", at.display()))
        }
        e => e.into(),
    }
}

/// Moves the staged tree into `to`: files replace, existing dirs are merged into, new dirs move whole.
fn merge(from: &OwnedFd, to: &OwnedFd, tree: &Tree, prefix: &Path) -> Result<(), FileError> {
    for (name, node) in &tree.0 {
        let at = prefix.join(name);
        match node {
            // renameat replaces a file or a user symlink in place without following it.
            Node::File(entry) => rename_at(from, name, to, name, 0).map_err(|e| collision_error(entry, &at, e))?,
            Node::Dir(sub, entry) => match open_beneath(to, Path::new(name), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
                Ok(existing) => {
                    let src = open_beneath(from, Path::new(name), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
                    merge(&src, &existing, sub, &at)?;
                }
                Err(Errno::ENOENT) => rename_at(from, name, to, name, libc::RENAME_NOREPLACE)
                    .map_err(|e| collision_error(entry, &at, e))?,
                Err(e) => return Err(collision_error(entry, &at, e)),
            },
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// download

enum Target {
    File(File, FileStat),
    Dir,
}

fn open_download(workspace: &Path, path: &str) -> Result<(OwnedFd, PathBuf, Target), FileError> {
    let rel = resolve_workspace_path(workspace, path)?;
    if rel.iter().next().is_some_and(|c| c.as_bytes().starts_with(STAGING_PREFIX.as_bytes())) {
        return Err(FileError::NotFound(format!("'{path}' does not exist in the workspace")));
    }
    let ws = open_workspace(workspace)?;
    let err = |e: Errno| match e {
        Errno::ENOENT | Errno::ENOTDIR => FileError::NotFound(format!("'{path}' does not exist in the workspace")),
        Errno::ELOOP | Errno::EXDEV => rejected(format!("path '{path}' is or passes through a symbolic link")),
        e => e.into(),
    };
    // O_PATH first: learn the type without opening (and so triggering) a fifo or device.
    let probe = open_beneath(&ws, &rel, OFlag::O_PATH, 0).map_err(err)?;
    let st = fstat(probe.as_raw_fd())?;
    let target = match file_type(&st) {
        SFlag::S_IFDIR => Target::Dir,
        SFlag::S_IFREG => {
            let fd = open_beneath(&ws, &rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY, 0).map_err(err)?;
            let now = fstat(fd.as_raw_fd())?;
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                return Err(rejected(format!("path '{path}' changed while it was being opened")));
            }
            Target::File(File::from(fd), now)
        }
        _ => return Err(rejected(format!("path '{path}' is not a regular file or directory"))),
    };
    Ok((ws, rel, target))
}

fn header_for(st: &FileStat, kind: EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(st.st_mode & 0o777); // never setuid/setgid/sticky
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h
}

/// Appends exactly the size announced in the header, padding with zeros if the file shrank.
fn append_file<W: Write>(tar: &mut tar::Builder<W>, name: &Path, file: File, st: &FileStat) -> io::Result<()> {
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let mut h = header_for(st, EntryType::Regular, size);
    let data = file.take(size).chain(io::repeat(0)).take(size);
    tar.append_data(&mut h, name, data)
}

/// Archives the directory at `rel` (names relative to it). Each dir is reopened from the
/// workspace fd by its full path, so no fds pile up with depth and nothing follows links.
fn append_dir_tree<W: Write>(tar: &mut tar::Builder<W>, ws: &OwnedFd, rel: &Path) -> Result<(), FileError> {
    let mut stack = vec![PathBuf::new()];
    while let Some(sub) = stack.pop() {
        let dir = match open_beneath(ws, &rel.join(&sub), OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            Ok(dir) => dir,
            // Changed or removed underneath us, or too deep for a path: skip it.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV | Errno::ENAMETOOLONG) => continue,
            Err(e) => return Err(e.into()),
        };
        if !sub.as_os_str().is_empty() {
            let st = fstat(dir.as_raw_fd())?;
            // Trailing slash, as tar tools write directory names.
            let mut name = sub.clone().into_os_string();
            name.push("/");
            tar.append_data(&mut header_for(&st, EntryType::Directory, 0), &name, io::empty())?;
        }
        let mut subdirs = Vec::new();
        for name in list_dir(&dir)? {
            if rel.as_os_str().is_empty()
                && sub.as_os_str().is_empty()
                && name.as_bytes().starts_with(STAGING_PREFIX.as_bytes())
            {
                continue;
            }
            let Ok(st) = stat_at(&dir, &name) else {
                continue;
            };
            match file_type(&st) {
                SFlag::S_IFDIR => subdirs.push(sub.join(&name)),
                SFlag::S_IFREG => {
                    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
                    let Ok(fd) = open_beneath(&dir, Path::new(&name), flags, 0) else {
                        continue;
                    };
                    let now = fstat(fd.as_raw_fd())?;
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) {
                        append_file(tar, &sub.join(&name), File::from(fd), &now)?;
                    }
                }
                _ => {} // symlinks, fifos, sockets, devices: skipped by policy
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}
