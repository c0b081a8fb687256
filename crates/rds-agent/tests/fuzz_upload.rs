//! Property tests of archive uploads into the workspace (`upload` and `replace_tree`): generated
//! tar.gz archives (every entry type, `..`, absolute and over-long names, entries through
//! links planted earlier, PAX and GNU long names) and raw garbage, against a workspace holding
//! links to a sibling `outside` dir. Whatever the archive, nothing outside the workspace changes,
//! no staging dir is left behind, a refused archive changes nothing, and an accepted one holds
//! only what the rules allow, where the archive put it.
//!
//! Runs unprivileged too: `Owner::Root` gives files to the agent's own uid. 256 cases per
//! property by default; `PROPTEST_CASES=100000` for a longer run. No regression files are
//! written: a failure found here is kept as a plain `#[test]` instead.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use rds_agent::files::{replace_tree, resolve_workspace_path, upload, FileError, Owner, TransferLimits, UploadSummary};
use tar::{EntryType, Header};

const SENTINEL: &[u8] = b"sentinel content";

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// archives

/// What an archive entry is.
#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    /// Type '7', which the agent treats as a regular file.
    Contiguous(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char,
    Block,
    Fifo,
    /// A type byte no rule knows.
    Other(u8),
}

impl Kind {
    fn data(&self) -> &[u8] {
        match self {
            Kind::File(d) | Kind::Contiguous(d) => d,
            _ => &[],
        }
    }

    fn link(&self) -> Option<&[u8]> {
        match self {
            Kind::Symlink(t) | Kind::Hardlink(t) => Some(t),
            _ => None,
        }
    }

    fn entry_type(&self) -> EntryType {
        match self {
            Kind::File(_) => EntryType::Regular,
            Kind::Contiguous(_) => EntryType::Continuous,
            Kind::Dir => EntryType::Directory,
            Kind::Symlink(_) => EntryType::Symlink,
            Kind::Hardlink(_) => EntryType::Link,
            Kind::Char => EntryType::Char,
            Kind::Block => EntryType::Block,
            Kind::Fifo => EntryType::Fifo,
            Kind::Other(b) => EntryType::new(*b),
        }
    }

    fn is_file(&self) -> bool {
        matches!(self, Kind::File(_) | Kind::Contiguous(_))
    }
}

#[derive(Clone)]
struct Entry {
    name: Vec<u8>,
    kind: Kind,
    /// Carry the name (and link) in a PAX header rather than GNU long-name entries.
    pax: bool,
}

/// Names shown as text, so a shrunk failing input reads like the archive it was.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Symlink(t) => format!("Symlink({:?})", t.escape_ascii().to_string()),
            Kind::Hardlink(t) => format!("Hardlink({:?})", t.escape_ascii().to_string()),
            other => format!("{other:?}"),
        };
        write!(f, "Entry({:?}, {kind}, pax: {})", self.name.escape_ascii().to_string(), self.pax)
    }
}

/// A header whose name and link bytes are written raw (the tar crate's own setters refuse `..`
/// and absolute paths, which is exactly what must be sent here).
fn raw_header(name: &[u8], kind: EntryType, size: u64, link: &[u8]) -> Header {
    let mut h = Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
    h.set_cksum();
    h
}

/// One PAX record, `<len> <key>=<value>\n`, where `len` counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    [format!("{len} {key}=").as_bytes(), value, b"\n"].concat()
}

/// The uncompressed tar of `entries`, names longer than a header holds carried in GNU long-name
/// entries or PAX headers.
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let link = e.kind.link().unwrap_or_default();
        // The tar crate drops a PAX record whose value holds a newline and falls back to the
        // header's (truncated) name, which the agent checks just the same; such names travel in
        // GNU long-name entries instead, so that the model knows which name is used.
        if e.pax && !e.name.contains(&b'\n') && !link.contains(&b'\n') {
            let mut records = pax_record("path", &e.name);
            if !link.is_empty() {
                records.extend(pax_record("linkpath", link));
            }
            let h = raw_header(b"././@PaxHeader", EntryType::XHeader, records.len() as u64, b"");
            b.append(&h, records.as_slice()).unwrap();
        } else {
            for (bytes, kind) in [(&e.name[..], EntryType::GNULongName), (link, EntryType::GNULongLink)] {
                if bytes.len() > 100 {
                    let data = [bytes, b"\0"].concat();
                    let h = raw_header(b"././@LongLink", kind, data.len() as u64, b"");
                    b.append(&h, data.as_slice()).unwrap();
                }
            }
        }
        let data = e.kind.data();
        let h = raw_header(&e.name, e.kind.entry_type(), data.len() as u64, link);
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// How a generated archive reaches the agent.
#[derive(Debug, Clone)]
enum Mangle {
    /// As a well-formed tar.gz.
    None,
    /// Not gzipped at all.
    Plain,
    /// The tar.gz cut short.
    CutGz(Index),
    /// The tar cut short, then gzipped.
    CutTar(Index),
    /// Bytes of the tar overwritten, then gzipped.
    Flip(Vec<(Index, u8)>),
}

#[derive(Debug, Clone)]
enum Body {
    Archive(Vec<Entry>, Mangle),
    Garbage(Vec<u8>),
    GzGarbage(Vec<u8>),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Archive(entries, mangle) => {
                let mut tar = tar_of(entries);
                match mangle {
                    Mangle::None => gz(&tar),
                    Mangle::Plain => tar,
                    Mangle::CutGz(at) => {
                        let mut z = gz(&tar);
                        z.truncate(at.index(z.len()));
                        z
                    }
                    Mangle::CutTar(at) => {
                        tar.truncate(at.index(tar.len()));
                        gz(&tar)
                    }
                    Mangle::Flip(flips) => {
                        for (at, byte) in flips {
                            let i = at.index(tar.len());
                            tar[i] = *byte;
                        }
                        gz(&tar)
                    }
                }
            }
            Body::Garbage(b) => b.clone(),
            Body::GzGarbage(b) => gz(b),
        }
    }
}

fn segment() -> impl Strategy<Value = Vec<u8>> {
    let named = |names: Vec<&'static str>| select(names).prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        12 => named(vec!["a", "b", "c", "evil", "lnk", "keep", "file"]),
        3 => named(vec!["..", ".", ""]),
        1 => named(vec![".rds-staging-x", "é", "🦀", "a\\b", " ", "...", "-"]),
        1 => prop::collection::vec(any::<u8>().prop_filter("NUL-free", |b| *b != 0 && *b != b'/'), 1..16),
        // Over NAME_MAX (255).
        1 => (250usize..300).prop_map(|n| vec![b'x'; n]),
    ]
}

fn entry_name() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop_oneof![10 => Just(""), 1 => select(vec!["/", "./", "../", "//", "/workspace/"])];
    prop_oneof![
        20 => (prefix, prop::collection::vec(segment(), 1..5), any::<bool>()).prop_map(|(pre, segs, slash)| {
            let mut name = pre.as_bytes().to_vec();
            name.extend(segs.join(&b'/'));
            if slash {
                name.push(b'/');
            }
            name
        }),
        // Around the depth limit (128).
        1 => (120usize..140).prop_map(|n| b"a/".repeat(n)),
        // Around the name length limit (4096).
        1 => (3990usize..4200).prop_map(|n| {
            let mut name = b"y".repeat(99);
            while name.len() < n {
                name.extend(b"/");
                name.extend(b"y".repeat(99));
            }
            name.truncate(n);
            name
        }),
    ]
}

fn link_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => select(vec!["../outside", "../outside/sentinel", "evil", "evil/sentinel", "lnk", "a", "..", "/", "keep"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => (101usize..300).prop_map(|n| [b"../outside/".repeat(n / 11), b"sentinel".to_vec()].concat()),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    let data = || prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        10 => data().prop_map(Kind::File),
        1 => data().prop_map(Kind::Contiguous),
        6 => Just(Kind::Dir),
        1 => link_target().prop_map(Kind::Symlink),
        1 => link_target().prop_map(Kind::Hardlink),
        1 => select(vec![Kind::Char, Kind::Block, Kind::Fifo]),
        // Types with no meaning to tar readers (not long names, PAX or sparse files).
        1 => select(vec![b'A', b'Z', b'9', b'V', b'M', b'D', 0xff]).prop_map(Kind::Other),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (entry_name(), kind(), prop::bool::weighted(0.2)).prop_map(|(name, kind, pax)| Entry { name, kind, pax })
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        8 => Just(Mangle::None),
        1 => Just(Mangle::Plain),
        1 => any::<Index>().prop_map(Mangle::CutGz),
        1 => any::<Index>().prop_map(Mangle::CutTar),
        1 => prop::collection::vec((any::<Index>(), any::<u8>()), 1..4).prop_map(Mangle::Flip),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        8 => (prop::collection::vec(entry(), 0..6), mangle()).prop_map(|(e, m)| Body::Archive(e, m)),
        1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(Body::Garbage),
        1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(Body::GzGarbage),
    ]
}

fn dest() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        3 => select(vec!["/workspace", "new", "/workspace/new/deeper", "keep", "keep/sub", "./keep/"]),
        1 => select(vec![
            "", "keep/file", "file", "evil", "evil/x", "lnk", "lnk/x", "../outside", "/etc", ".rds-staging-x",
            "a/../..", "/workspace/../outside",
        ]),
    ]
}

fn limits() -> impl Strategy<Value = TransferLimits> {
    prop_oneof![
        3 => Just(TransferLimits::default()),
        1 => (1usize..12, 0u64..256).prop_map(|(max_entries, max_unpacked_bytes)| TransferLimits {
            max_entries,
            max_unpacked_bytes,
        }),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Upload,
    Replace { read_only: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => Just(Op::Upload), 1 => any::<bool>().prop_map(|read_only| Op::Replace { read_only })]
}

// ---------------------------------------------------------------------------------------------
// the workspace

/// A workspace beside an `outside` dir, with what hostile user code plants: a link to `outside`
/// and one to the sentinel file in it.
struct Env {
    tmp: tempfile::TempDir,
    ws: PathBuf,
    outside: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(ws.join("keep")).unwrap();
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("sentinel"), SENTINEL).unwrap();
    fs::write(ws.join("keep/file"), "old").unwrap();
    fs::write(ws.join("file"), "top").unwrap();
    symlink(&outside, ws.join("evil")).unwrap();
    symlink("../outside/sentinel", ws.join("lnk")).unwrap();
    Env { tmp, ws, outside }
}

impl Env {
    fn run(&self, op: Op, dest: &str, body: &[u8], limits: &TransferLimits) -> Result<UploadSummary, FileError> {
        match op {
            Op::Upload => upload(&self.ws, dest, body, limits, Owner::Root),
            Op::Replace { read_only } => replace_tree(&self.ws, dest, body, limits, Owner::Root, read_only),
        }
    }
}

/// What is at a path, never following links: the kind, its bytes (file content or link target),
/// its permission bits and link count (a hard link into `outside` raises the count there).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    bytes: Vec<u8>,
    mode: u32,
    nlink: u64,
}

/// Everything under `root` by relative path. Walks through open dir fds (`/proc/self/fd/N/name`),
/// so trees deeper than `PATH_MAX` are read too.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(dir: &fs::File, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let here = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        for e in fs::read_dir(&here).unwrap() {
            let name = e.unwrap().file_name();
            let p = here.join(&name);
            let md = fs::symlink_metadata(&p).unwrap();
            let (kind, bytes) = if md.file_type().is_symlink() {
                ('l', fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes())
            } else if md.is_dir() {
                ('d', Vec::new())
            } else if md.is_file() {
                ('f', fs::read(&p).unwrap())
            } else {
                ('?', Vec::new())
            };
            out.insert(rel.join(&name), Node { kind, bytes, mode: md.mode() & 0o7777, nlink: md.nlink() });
            if kind == 'd' {
                walk(&fs::File::open(&p).unwrap(), &rel.join(&name), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&fs::File::open(root).unwrap(), Path::new(""), &mut out);
    out
}

/// The components an entry name lands at (`.` and empty parts dropped), or `None` if the rules
/// refuse the name itself.
fn valid_components(name: &[u8]) -> Option<Vec<Vec<u8>>> {
    if name.len() > 4096 || name.first() == Some(&b'/') || name.contains(&0) {
        return None;
    }
    let mut comps = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            p => comps.push(p.to_vec()),
        }
    }
    (comps.len() <= 128).then_some(comps)
}

fn path_of(comps: &[Vec<u8>]) -> PathBuf {
    comps.iter().map(|c| OsStr::from_bytes(c)).collect()
}

/// Checks an accepted, unmangled archive against the rules: only files and dirs with valid
/// names, each file holding the content of its last entry, the summary counting them.
fn check_accepted(entries: &[Entry], root: &Path, summary: &UploadSummary, op: Op) -> Result<(), TestCaseError> {
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut counted = 0;
    let mut bytes = 0;
    for e in entries {
        prop_assert!(
            matches!(e.kind, Kind::File(_) | Kind::Contiguous(_) | Kind::Dir),
            "accepted a {:?} entry",
            e.kind
        );
        let comps = valid_components(&e.name);
        prop_assert!(comps.is_some(), "accepted the name {:?}", String::from_utf8_lossy(&e.name));
        let comps = comps.unwrap();
        if e.kind.is_file() {
            bytes += e.kind.data().len() as u64;
            files.insert(path_of(&comps), e.kind.data().to_vec());
        } else if !comps.is_empty() {
            dirs.push(path_of(&comps));
        }
        counted += usize::from(e.kind.is_file() || !comps.is_empty());
    }
    prop_assert_eq!(summary, &UploadSummary { entries: counted, bytes });
    let got = snapshot(root);
    for (path, data) in &files {
        let node = got.get(path);
        prop_assert!(node.is_some_and(|n| n.kind == 'f'), "{path:?} is not a regular file: {node:?}");
        prop_assert_eq!(&node.unwrap().bytes, data, "content of {:?}", path);
    }
    for path in &dirs {
        prop_assert!(got.get(path).is_some_and(|n| n.kind == 'd'), "{path:?} is not a directory");
    }
    if let Op::Replace { read_only } = op {
        // The old content is gone: exactly the archive's files and dirs (and their parents).
        let want: std::collections::BTreeSet<PathBuf> = files
            .keys()
            .chain(&dirs)
            .flat_map(|p| {
                p.ancestors().filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf).collect::<Vec<_>>()
            })
            .collect();
        prop_assert_eq!(got.keys().cloned().collect::<std::collections::BTreeSet<_>>(), want);
        if read_only {
            for (path, node) in &got {
                prop_assert_eq!(node.mode, if node.kind == 'd' { 0o555 } else { 0o444 }, "mode of {:?}", path);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_archives_stay_in_the_workspace_and_apply_whole_or_not_at_all(
        op in op(), dest in dest(), body in body(), limits in limits(),
    ) {
        let env = env();
        let ws_before = snapshot(&env.ws);
        let outside_before = snapshot(&env.outside);
        let result = env.run(op, dest, &body.bytes(), &limits);

        prop_assert_eq!(snapshot(&env.outside), outside_before, "something outside the workspace changed");
        prop_assert_eq!(fs::read(env.outside.join("sentinel")).unwrap(), SENTINEL);
        let top: Vec<_> = fs::read_dir(env.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(top.len(), 2, "new entries beside the workspace: {:?}", top);
        let ws_after = snapshot(&env.ws);
        prop_assert!(
            ws_after.keys().all(|p| !p.to_string_lossy().starts_with(".rds-staging-")),
            "a staging dir was left behind: {:?}", ws_after.keys().collect::<Vec<_>>()
        );
        match &result {
            Err(FileError::Rejected(_)) => prop_assert_eq!(ws_after, ws_before, "a refused archive changed the workspace"),
            Err(e) => return Err(TestCaseError::fail(format!("a hostile archive is a client error, got {e:?}"))),
            Ok(summary) => {
                if let Body::Archive(entries, Mangle::None) = &body {
                    let root = env.ws.join(resolve_workspace_path(&env.ws, dest).unwrap());
                    check_accepted(entries, &root, summary, op)?;
                }
            }
        }
    }
}

/// Archives of safe, non-conflicting names: every one is accepted and lands exactly.
fn safe_tree() -> impl Strategy<Value = BTreeMap<Vec<String>, Vec<u8>>> {
    prop::collection::btree_map(
        prop::collection::vec("[a-z0-9_][a-z0-9_.-]{0,5}", 1..4),
        prop::collection::vec(any::<u8>(), 0..64),
        0..10,
    )
    .prop_map(|mut files| {
        // A path that is another's parent is a dir, not a file.
        let dirs: Vec<Vec<String>> = files.keys().flat_map(|p| (1..p.len()).map(|n| p[..n].to_vec())).collect();
        files.retain(|p, _| !dirs.contains(p));
        files
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn safe_archives_are_accepted_and_land_exactly(
        files in safe_tree(), explicit_dirs in any::<bool>(), pax in any::<bool>(), op in op(),
    ) {
        let env = env();
        let mut entries = Vec::new();
        for (path, data) in &files {
            if explicit_dirs && path.len() > 1 {
                let dir = format!("{}/", path[..path.len() - 1].join("/"));
                entries.push(Entry { name: dir.into_bytes(), kind: Kind::Dir, pax });
            }
            entries.push(Entry { name: path.join("/").into_bytes(), kind: Kind::File(data.clone()), pax });
        }
        let dest = match op { Op::Upload => "/workspace/new/place", Op::Replace { .. } => "keep" };
        let summary = env.run(op, dest, &gz(&tar_of(&entries)), &TransferLimits::default());
        prop_assert!(summary.is_ok(), "refused {:?}: {:?}", entries, summary);
        let root = env.ws.join(dest.trim_start_matches("/workspace/"));
        check_accepted(&entries, &root, &summary.unwrap(), op)?;
        let got: BTreeMap<PathBuf, Vec<u8>> =
            snapshot(&root).into_iter().filter(|(_, n)| n.kind == 'f').map(|(p, n)| (p, n.bytes)).collect();
        let want: BTreeMap<PathBuf, Vec<u8>> = files.into_iter().map(|(p, d)| (p.iter().collect(), d)).collect();
        // Replacing leaves exactly the archive, and so does an upload into a new dir.
        prop_assert_eq!(got, want);
    }
}

/// Found by the property above: an upload into the workspace root could create `.rds-staging-x`,
/// a name downloads treat as absent, so the file could never be read back.
#[test]
fn upload_refuses_staging_names_at_the_workspace_root() {
    let env = env();
    let before = snapshot(&env.ws);
    let body = gz(&tar_of(&[Entry { name: b".rds-staging-x".to_vec(), kind: Kind::File(b"x".to_vec()), pax: false }]));
    match env.run(Op::Upload, "/workspace", &body, &TransferLimits::default()) {
        Err(FileError::Rejected(message)) => assert!(message.contains("reserved for the agent"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(snapshot(&env.ws), before);
    // Below the root it is an ordinary name.
    env.run(Op::Upload, "keep", &body, &TransferLimits::default()).unwrap();
    assert_eq!(fs::read(env.ws.join("keep/.rds-staging-x")).unwrap(), b"x");
}
