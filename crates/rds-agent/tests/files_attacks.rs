//! Attack corpus and behaviour tests for `rds_agent::files`, run as root against a temp
//! workspace owned by uid 1000 with hostile symlinks planted in it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use rds_agent::files::{
    check_download, download, replace_tree, resolve_workspace_path, upload, FileError, Owner, TransferLimits,
};
use tar::{EntryType, Header};

const USER: Owner = Owner::User { uid: 1000, gid: 1000 };
const SENTINEL: &str = "sentinel content";

/// A temp workspace owned by 1000 plus an `outside` dir (the sentinel) that must never change.
struct Env {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    outside: PathBuf,
}

fn env() -> Option<Env> {
    if !nix::unistd::geteuid().is_root() {
        rds_testkit::skip("file transfer tests need root (chown to uid 1000)");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    fs::create_dir(&ws).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("sentinel"), SENTINEL).unwrap();
    std::os::unix::fs::chown(&ws, Some(1000), Some(1000)).unwrap();
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o755)).unwrap();
    // What hostile user code would plant.
    symlink(&outside, ws.join("evil")).unwrap();
    symlink("/etc", ws.join("etc")).unwrap();
    Some(Env { _tmp: tmp, ws, outside })
}

/// Relative path → (is_dir, content) for everything under `root`, never following links.
fn snapshot(root: &Path) -> BTreeMap<String, (char, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                out.insert(rel, ('l', fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()));
            } else if md.is_dir() {
                out.insert(rel, ('d', vec![]));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

impl Env {
    /// Runs `attack`, asserts a rejection naming `culprit`, and that nothing changed anywhere.
    fn assert_rejected(&self, culprit: &str, attack: impl FnOnce(&Path) -> Result<(), FileError>) {
        let ws_before = snapshot(&self.ws);
        let out_before = snapshot(&self.outside);
        match attack(&self.ws) {
            Err(FileError::Rejected(msg)) => assert!(msg.contains(culprit), "message {msg:?} should name {culprit:?}"),
            other => panic!("expected Rejected naming {culprit:?}, got {other:?}"),
        }
        assert_eq!(snapshot(&self.ws), ws_before, "workspace changed (staging dir or partial files left)");
        assert_eq!(snapshot(&self.outside), out_before, "something was written outside the workspace");
        assert_eq!(fs::read_to_string(self.outside.join("sentinel")).unwrap(), SENTINEL);
    }
}

fn gz(tar_bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(tar_bytes).unwrap();
    e.finish().unwrap()
}

/// A header whose name bytes are written raw, bypassing the tar crate's own path checks.
fn raw_header(name: &[u8], kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
    h.set_cksum();
    h
}

/// One raw archive entry: name, type, content, link target.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], Option<&'a [u8]>);

/// A tar.gz of raw entries.
fn archive(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = raw_header(name, *kind, data.len() as u64);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
        }
        b.append(&h, *data).unwrap();
    }
    gz(&b.into_inner().unwrap())
}

fn file(name: &str, data: &str) -> Vec<u8> {
    archive(&[(name.as_bytes(), EntryType::Regular, data.as_bytes(), None)])
}

fn up(ws: &Path, dest: &str, body: &[u8]) -> Result<(), FileError> {
    upload(ws, dest, body, &TransferLimits::default(), USER).map(drop)
}

/// Writes a gzip stream of one header followed by `size` zero bytes to a temp file, streaming.
fn zero_bomb(header: &Header, size: u64) -> fs::File {
    let mut f = tempfile::tempfile().unwrap();
    {
        let mut e = GzEncoder::new(io::BufWriter::new(&mut f), Compression::fast());
        e.write_all(header.as_bytes()).unwrap();
        io::copy(&mut io::repeat(0).take(size), &mut e).unwrap();
        e.finish().unwrap().flush().unwrap();
    }
    // Deflate caps out near 1032:1, so a real 300 MiB run is still a few hundred KiB.
    assert!(size < 1 << 20 || f.metadata().unwrap().len() > size / 1100);
    io::Seek::rewind(&mut f).unwrap();
    f
}

// ------------------------------------------------------------------------------------------
// attack corpus

#[test]
fn upload_rejects_absolute_entry_paths() {
    let Some(env) = env() else { return };
    let name = format!("{}/pwned", env.outside.display());
    env.assert_rejected(&name, |ws| up(ws, ".", &file(&name, "x")));
}

#[test]
fn upload_rejects_parent_dir_escapes() {
    let Some(env) = env() else { return };
    env.assert_rejected("../escape", |ws| up(ws, "sub", &file("../escape", "x")));
    env.assert_rejected("a/../../x", |ws| up(ws, "sub", &file("a/../../x", "x")));
}

#[test]
fn upload_rejects_symlink_entries() {
    let Some(env) = env() else { return };
    let body = archive(&[(b"link", EntryType::Symlink, b"", Some(b"/etc"))]);
    env.assert_rejected("link", |ws| up(ws, ".", &body));
}

#[test]
fn upload_rejects_hardlink_entries() {
    let Some(env) = env() else { return };
    let body =
        archive(&[(b"ok.txt", EntryType::Regular, b"fine", None), (b"hl", EntryType::Link, b"", Some(b"/etc/passwd"))]);
    env.assert_rejected("'hl'", |ws| up(ws, ".", &body));
}

#[test]
fn upload_rejects_device_and_fifo_entries() {
    let Some(env) = env() else { return };
    for (name, kind) in [("null", EntryType::Char), ("sda", EntryType::Block), ("pipe", EntryType::Fifo)] {
        let body = archive(&[(name.as_bytes(), kind, b"", None)]);
        env.assert_rejected(name, |ws| up(ws, ".", &body));
    }
    let body = archive(&[(b"odd", EntryType::new(b'Z'), b"", None)]);
    env.assert_rejected("odd", |ws| up(ws, ".", &body));
}

#[test]
fn upload_rejects_entries_through_planted_workspace_symlinks() {
    let Some(env) = env() else { return };
    env.assert_rejected("evil/file", |ws| up(ws, ".", &file("evil/file", "x")));
    // Same through a symlink nested below a real directory.
    fs::create_dir(env.ws.join("proj")).unwrap();
    symlink(&env.outside, env.ws.join("proj/link")).unwrap();
    env.assert_rejected("link/file", |ws| up(ws, "proj", &file("link/file", "x")));
}

#[test]
fn upload_rejects_dest_that_is_or_crosses_a_symlink() {
    let Some(env) = env() else { return };
    env.assert_rejected("evil", |ws| up(ws, "evil", &file("a.txt", "x")));
    env.assert_rejected("/workspace/evil/deeper", |ws| up(ws, "/workspace/evil/deeper", &file("a.txt", "x")));
    env.assert_rejected("etc", |ws| up(ws, "etc", &file("passwd", "x")));
}

#[test]
fn upload_rejects_dest_outside_the_workspace() {
    let Some(env) = env() else { return };
    for dest in ["/etc", "../x", "/workspace/../etc", "/workspacefoo", "a/../../x"] {
        env.assert_rejected(dest, |ws| up(ws, dest, &file("a.txt", "x")));
    }
}

#[test]
fn upload_rejects_more_entries_than_the_limit() {
    let Some(env) = env() else { return };
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let entries: Vec<_> = names.iter().map(|n| (n.as_bytes(), EntryType::Regular, &b"x"[..], None)).collect();
    let body = archive(&entries);
    let limits = TransferLimits { max_entries: 3, ..TransferLimits::default() };
    env.assert_rejected("f3", |ws| upload(ws, ".", &body[..], &limits, USER).map(drop));
}

#[test]
fn upload_stops_a_gzip_bomb_declared_in_one_entry() {
    let Some(env) = env() else { return };
    let bomb = zero_bomb(&raw_header(b"bomb.bin", EntryType::Regular, 300 << 20), 300 << 20);
    env.assert_rejected("bomb.bin", |ws| upload(ws, ".", bomb, &TransferLimits::default(), USER).map(drop));
}

#[test]
fn upload_counts_unpacked_bytes_across_entries() {
    let Some(env) = env() else { return };
    let chunk = vec![7u8; 600 << 10];
    let body = archive(&[(b"one", EntryType::Regular, &chunk, None), (b"two", EntryType::Regular, &chunk, None)]);
    let limits = TransferLimits { max_unpacked_bytes: 1 << 20, ..TransferLimits::default() };
    env.assert_rejected("two", |ws| upload(ws, ".", &body[..], &limits, USER).map(drop));
}

#[test]
fn upload_bounds_real_decompressed_bytes_when_a_header_lies() {
    let Some(env) = env() else { return };
    // A GNU long-name header is metadata: no file size check sees it, and the tar crate would
    // buffer all 300 MiB of it in memory. The decompressed-byte budget must stop it early.
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(300 << 20);
    h.set_cksum();
    let bomb = zero_bomb(&h, 300 << 20);
    env.assert_rejected("expands beyond the allowed size (after entry '(start of archive)')", |ws| {
        upload(ws, ".", bomb, &TransferLimits::default(), USER).map(drop)
    });
    // Header says 0 bytes, a PAX record says 300 MiB: the effective size is checked.
    let mut b = tar::Builder::new(Vec::new());
    let pax = b"18 size=314572800\n";
    b.append(&raw_header(b"PaxHeader/liar", EntryType::XHeader, pax.len() as u64), &pax[..]).unwrap();
    b.append(&raw_header(b"liar", EntryType::Regular, 0), &b""[..]).unwrap();
    let body = gz(&b.into_inner().unwrap());
    env.assert_rejected("liar", |ws| up(ws, ".", &body));
}

#[test]
fn upload_rejects_malformed_gzip() {
    let Some(env) = env() else { return };
    env.assert_rejected("not a valid tar.gz", |ws| up(ws, ".", b"definitely not gzip"));
    // Valid tar, corrupted gzip CRC: detected because the stream is read to its end.
    let mut body = file("crc.txt", "hello");
    let n = body.len();
    body[n - 6] ^= 0xff;
    env.assert_rejected("crc.txt", |ws| up(ws, ".", &body));
    // gzip cut in half.
    let body = file("half.txt", &"y".repeat(100_000));
    env.assert_rejected("not a valid tar.gz", |ws| up(ws, ".", &body[..body.len() / 2]));
}

#[test]
fn upload_rejects_truncated_tar() {
    let Some(env) = env() else { return };
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw_header(b"cut.bin", EntryType::Regular, 10_000), &vec![1u8; 10_000][..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();
    let body = gz(&tar_bytes[..5_000]);
    env.assert_rejected("cut.bin", |ws| up(ws, ".", &body));
}

#[test]
fn upload_rejects_entry_type_conflicts_without_partial_writes() {
    let Some(env) = env() else { return };
    let body = archive(&[
        (b"good.txt", EntryType::Regular, b"ok", None),
        (b"x", EntryType::Regular, b"f", None),
        (b"x/y", EntryType::Regular, b"g", None),
    ]);
    env.assert_rejected("x/y", |ws| up(ws, ".", &body));
    fs::create_dir(env.ws.join("adir")).unwrap();
    env.assert_rejected("adir", |ws| up(ws, ".", &file("adir", "x")));
    fs::write(env.ws.join("afile"), "x").unwrap();
    env.assert_rejected("afile", |ws| up(ws, "afile", &file("inner", "x")));
}

#[test]
fn replace_tree_rejects_hostile_archives_and_keeps_old_content() {
    let Some(env) = env() else { return };
    let good = archive(&[(b"keep.txt", EntryType::Regular, b"v1", None)]);
    replace_tree(&env.ws, "peers", &good[..], &TransferLimits::default(), Owner::Root, true).unwrap();
    let bad = archive(&[(b"new.txt", EntryType::Regular, b"v2", None), (b"s", EntryType::Symlink, b"", Some(b"/etc"))]);
    env.assert_rejected("'s'", |ws| {
        replace_tree(ws, "peers", &bad[..], &TransferLimits::default(), Owner::Root, true).map(drop)
    });
    env.assert_rejected("evil", |ws| {
        replace_tree(ws, "evil/peers", &good[..], &TransferLimits::default(), Owner::Root, true).map(drop)
    });
    env.assert_rejected("workspace root", |ws| {
        replace_tree(ws, "/workspace", &good[..], &TransferLimits::default(), Owner::Root, true).map(drop)
    });
    assert_eq!(fs::read(env.ws.join("peers/keep.txt")).unwrap(), b"v1");
}

// ------------------------------------------------------------------------------------------
// behaviour

/// A tree with nested and empty dirs, an executable, a setuid file and a >100-byte name.
fn sample_tree() -> Vec<u8> {
    let long = format!("deep/{}/long.txt", "n".repeat(120));
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: EntryType, mode: u32, data: &[u8]| {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("./", EntryType::Directory, 0o755, b"");
    add("src/", EntryType::Directory, 0o700, b"");
    add("src/main.ts", EntryType::Regular, 0o600, b"console.log('hi')\n");
    add("bin/run.sh", EntryType::Regular, 0o4755, b"#!/bin/sh\necho run\n");
    add("empty/", EntryType::Directory, 0o1777, b"");
    add(&long, EntryType::Regular, 0o644, &vec![42u8; 70_000]);
    add("top.txt", EntryType::Regular, 0o666, b"top");
    gz(&b.into_inner().unwrap())
}

/// Archive entries as name (without `./`, dirs with trailing `/`) → content.
fn archive_contents(body: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(GzDecoder::new(body));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let name = name.trim_start_matches("./").to_string();
        if name.is_empty() {
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

#[test]
fn upload_then_download_round_trips_a_nested_tree_byte_identical() {
    let Some(env) = env() else { return };
    let body = sample_tree();
    let summary = upload(&env.ws, "/workspace/proj/sub", &body[..], &TransferLimits::default(), USER).unwrap();
    assert_eq!(summary.entries, 6);
    assert_eq!(summary.bytes, 18 + 19 + 70_000 + 3);
    check_download(&env.ws, "proj/sub").unwrap();
    let mut out = Vec::new();
    download(&env.ws, "/workspace/proj/sub", &mut out).unwrap();
    let got = archive_contents(&out);
    let mut want = archive_contents(&body);
    // Parent dirs implied by the uploaded names are listed explicitly by download.
    for name in want.keys().cloned().collect::<Vec<_>>() {
        for (i, _) in name.match_indices('/') {
            want.entry(name[..=i].to_string()).or_default();
        }
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert!(got == want, "file contents differ after the round trip");
    // A single file downloads under its own name.
    let mut out = Vec::new();
    download(&env.ws, "proj/sub/top.txt", &mut out).unwrap();
    assert_eq!(archive_contents(&out), BTreeMap::from([("top.txt".to_string(), b"top".to_vec())]));
}

#[test]
fn upload_gives_everything_to_the_user_with_sane_modes() {
    let Some(env) = env() else { return };
    upload(&env.ws, "a/b", &sample_tree()[..], &TransferLimits::default(), USER).unwrap();
    for (rel, (kind, _)) in snapshot(&env.ws.join("a")) {
        let md = fs::symlink_metadata(env.ws.join("a").join(&rel)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000), "{rel}");
        let want = match (kind, rel.as_str()) {
            ('d', _) => 0o755,
            (_, "b/bin/run.sh") => 0o755, // setuid dropped, exec bit kept
            _ => 0o644,
        };
        assert_eq!(md.mode() & 0o7777, want, "{rel}");
    }
    let md = fs::metadata(env.ws.join("a")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (1000, 0o755), "intermediate dest dirs belong to the user");
    assert!(!fs::read_dir(&env.ws).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".rds-staging")));
}

#[test]
fn upload_merges_overwriting_files_and_keeping_dirs() {
    let Some(env) = env() else { return };
    fs::create_dir_all(env.ws.join("p/dir")).unwrap();
    fs::write(env.ws.join("p/dir/old.txt"), "old").unwrap();
    fs::write(env.ws.join("p/f.txt"), "before").unwrap();
    symlink(env.outside.join("sentinel"), env.ws.join("p/was-link")).unwrap();
    let body = archive(&[
        (b"f.txt", EntryType::Regular, b"after", None),
        (b"dir/new.txt", EntryType::Regular, b"new", None),
        (b"was-link", EntryType::Regular, b"replaced", None),
    ]);
    up(&env.ws, "p", &body).unwrap();
    assert_eq!(fs::read_to_string(env.ws.join("p/f.txt")).unwrap(), "after");
    assert_eq!(fs::read_to_string(env.ws.join("p/dir/old.txt")).unwrap(), "old");
    assert_eq!(fs::read_to_string(env.ws.join("p/dir/new.txt")).unwrap(), "new");
    // The user symlink itself was replaced; its target was not written through.
    assert!(fs::symlink_metadata(env.ws.join("p/was-link")).unwrap().is_file());
    assert_eq!(fs::read_to_string(env.outside.join("sentinel")).unwrap(), SENTINEL);
}

#[test]
fn replace_tree_writes_a_root_owned_read_only_tree_and_replaces_old_content() {
    let Some(env) = env() else { return };
    // The user prepared hostile content at the dest: a dir with a link out, then a symlink.
    fs::create_dir(env.ws.join("peers")).unwrap();
    fs::write(env.ws.join("peers/stale.txt"), "stale").unwrap();
    symlink(&env.outside, env.ws.join("peers/out")).unwrap();
    let v1 =
        archive(&[(b"./", EntryType::Directory, b"", None), (b"./alice/index.ts", EntryType::Regular, b"v1", None)]);
    replace_tree(&env.ws, "/workspace/peers", &v1[..], &TransferLimits::default(), Owner::Root, true).unwrap();
    let snap = snapshot(&env.ws.join("peers"));
    assert_eq!(snap.keys().collect::<Vec<_>>(), ["alice", "alice/index.ts"]);
    for (rel, (kind, _)) in snap.iter().chain([(&String::new(), &('d', vec![]))]) {
        let md = fs::symlink_metadata(env.ws.join("peers").join(rel)).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0), "{rel}");
        assert_eq!(md.mode() & 0o7777, if *kind == 'd' { 0o555 } else { 0o444 }, "{rel}");
    }
    let v2 = archive(&[(b"bob/index.ts", EntryType::Regular, b"v2", None)]);
    replace_tree(&env.ws, "peers", &v2[..], &TransferLimits::default(), Owner::Root, true).unwrap();
    assert_eq!(snapshot(&env.ws.join("peers")).keys().collect::<Vec<_>>(), ["bob", "bob/index.ts"]);
    // A symlink at dest is swapped out and deleted, never followed.
    fs::remove_dir_all(env.ws.join("peers")).unwrap(); // root ignores the 0555 modes
    symlink(&env.outside, env.ws.join("peers")).unwrap();
    replace_tree(&env.ws, "peers", &v2[..], &TransferLimits::default(), Owner::Root, true).unwrap();
    assert!(fs::symlink_metadata(env.ws.join("peers")).unwrap().is_dir());
    assert_eq!(snapshot(&env.outside).keys().collect::<Vec<_>>(), ["sentinel"]);
    assert!(!fs::read_dir(&env.ws).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".rds-staging")));
}

#[test]
fn download_refuses_symlinks_and_paths_outside_the_workspace() {
    let Some(env) = env() else { return };
    fs::create_dir(env.ws.join("real")).unwrap();
    symlink(env.outside.join("sentinel"), env.ws.join("real/link")).unwrap();
    for path in ["evil", "evil/sentinel", "/workspace/etc/passwd", "real/link"] {
        let r = check_download(&env.ws, path);
        assert!(matches!(&r, Err(FileError::Rejected(m)) if m.contains(path)), "{path}: {r:?}");
        assert!(matches!(download(&env.ws, path, Vec::new()), Err(FileError::Rejected(_))), "{path}");
    }
    for path in ["/etc/passwd", "../outside", "/workspace/../outside"] {
        assert!(matches!(check_download(&env.ws, path), Err(FileError::Rejected(_))), "{path}");
    }
    assert!(matches!(check_download(&env.ws, "missing.txt"), Err(FileError::NotFound(_))));
    nix::unistd::mkfifo(&env.ws.join("real/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert!(matches!(check_download(&env.ws, "real/fifo"), Err(FileError::Rejected(m)) if m.contains("real/fifo")));
}

#[test]
fn download_skips_symlinks_and_special_files_inside_a_tree() {
    let Some(env) = env() else { return };
    fs::create_dir_all(env.ws.join("t/d")).unwrap();
    fs::write(env.ws.join("t/d/a.txt"), "a").unwrap();
    symlink(&env.outside, env.ws.join("t/to-outside")).unwrap();
    symlink(env.outside.join("sentinel"), env.ws.join("t/d/to-sentinel")).unwrap();
    nix::unistd::mkfifo(&env.ws.join("t/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let mut out = Vec::new();
    download(&env.ws, "t", &mut out).unwrap();
    let got = archive_contents(&out);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["d/", "d/a.txt"]);
    // The whole workspace downloads too, still without following `evil` or `etc`.
    let mut out = Vec::new();
    download(&env.ws, "/workspace", &mut out).unwrap();
    assert!(archive_contents(&out).keys().all(|k| k.starts_with("t/")));
}

#[test]
fn resolve_workspace_path_normalizes_and_confines() {
    let ws = Path::new("/somewhere/else");
    let ok = |p: &str| resolve_workspace_path(ws, p).unwrap();
    assert_eq!(ok("project/file.txt"), PathBuf::from("project/file.txt"));
    assert_eq!(ok("/workspace/project/file.txt"), PathBuf::from("project/file.txt"));
    assert_eq!(ok("/workspace"), PathBuf::new());
    assert_eq!(ok("/workspace/"), PathBuf::new());
    assert_eq!(ok("."), PathBuf::new());
    assert_eq!(ok("./a//b/./c/"), PathBuf::from("a/b/c"));
    assert_eq!(ok("a/../b"), PathBuf::from("b"));
    assert_eq!(ok("/workspace//x"), PathBuf::from("x"));
    for bad in ["", "/", "/etc", "/home/user/x", "/workspacefoo", "..", "../x", "a/../../x", "/workspace/..", "a\0b"] {
        assert!(matches!(resolve_workspace_path(ws, bad), Err(FileError::Rejected(_))), "{bad:?}");
    }
}
