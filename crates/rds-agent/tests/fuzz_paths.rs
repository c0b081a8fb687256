//! Property tests of the caller-path rules of `rds_agent::files`: `resolve_workspace_path`
//! against an independent model of its documented contract, and `check_download` / `download`
//! against a real workspace with planted symlinks, a fifo and a staging dir.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000` for a longer run. No regression
//! files are written: a failure found here is kept as a plain `#[test]` instead.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;
use rds_agent::files::{check_download, download, resolve_workspace_path, FileError};

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// The documented contract of `resolve_workspace_path`, written independently: `None` = refused,
/// else the normalized components below the workspace.
fn model(p: &str) -> Option<Vec<&str>> {
    if p.is_empty() || p.contains('\0') {
        return None;
    }
    let rel = match p.strip_prefix('/') {
        None => p,
        Some(_) => match p.strip_prefix("/workspace") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return None,
        },
    };
    let mut out = Vec::new();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out)
}

/// Path segments that exercise every rule: parents, dots, the prefix, NUL, separators of other
/// systems, unicode, a name too long for any filesystem.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "..", ".", "", "workspace", "..."]).prop_map(String::from),
        1 => prop::sample::select(vec!["\0", "a\0b", "\\", "C:", "..\\..", "é", "🦀", " ", "~"]).prop_map(String::from),
        1 => "[^/]{0,8}",
        1 => (256usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Caller paths: relative, under `/workspace`, under a look-alike prefix, or anywhere.
fn caller_path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec!["", "/", "/workspace", "/workspace/", "/workspacex", "//workspace", "./"]);
    prop_oneof![
        4 => (prefix, prop::collection::vec(segment(), 0..8)).prop_map(|(pre, segs)| format!("{pre}{}", segs.join("/"))),
        1 => any::<String>(),
    ]
}

/// Relative names of safe segments: what a well-behaved caller sends.
fn safe_name() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[A-Za-z0-9_][A-Za-z0-9_.-]{0,11}", 1..6)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resolve_matches_the_documented_contract(p in caller_path()) {
        let got = resolve_workspace_path(Path::new("/srv/ws"), &p);
        let want = model(&p).map(|segs| segs.iter().collect::<PathBuf>());
        match (&got, &want) {
            (Ok(rel), Some(want)) => prop_assert_eq!(rel, want),
            (Err(FileError::Rejected(_)), None) => {}
            _ => return Err(TestCaseError::fail(format!("{p:?}: got {got:?}, the contract says {want:?}"))),
        }
    }

    #[test]
    fn resolved_paths_stay_inside_the_workspace(p in caller_path()) {
        let ws = Path::new("/srv/ws");
        if let Ok(rel) = resolve_workspace_path(ws, &p) {
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{p:?} -> {rel:?}");
            let full = ws.join(&rel);
            prop_assert!(full.starts_with(ws), "{p:?} -> {full:?}");
            // Normalized output is a fixed point.
            if let Some(s) = rel.to_str().filter(|s| !s.is_empty()) {
                prop_assert_eq!(resolve_workspace_path(ws, s).unwrap(), rel.clone());
            }
        }
    }

    #[test]
    fn safe_names_resolve_to_themselves_with_or_without_the_prefix(segs in safe_name()) {
        let name = segs.join("/");
        let want: PathBuf = segs.iter().collect();
        prop_assume!(segs.iter().all(|s| s != "." && s != ".."));
        let ws = Path::new("/srv/ws");
        prop_assert_eq!(resolve_workspace_path(ws, &name).unwrap(), want.clone());
        prop_assert_eq!(resolve_workspace_path(ws, &format!("/workspace/{name}")).unwrap(), want.clone());
        prop_assert_eq!(resolve_workspace_path(ws, &format!("./{name}/")).unwrap(), want);
    }
}

/// A workspace with a file, a dir, links out of it and to its parent, a fifo and a staging dir,
/// beside an `outside` dir holding a secret.
struct Tree {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
}

fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(ws.join("d/e")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "secret").unwrap();
    fs::write(ws.join("f"), "f").unwrap();
    fs::write(ws.join("d/g"), "g").unwrap();
    symlink(&outside, ws.join("lnk")).unwrap();
    symlink("..", ws.join("d/up")).unwrap();
    symlink("g", ws.join("d/g-link")).unwrap();
    nix::unistd::mkfifo(&ws.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    fs::create_dir(ws.join(".rds-staging-x")).unwrap();
    fs::write(ws.join(".rds-staging-x/half"), "half").unwrap();
    Tree { _tmp: tmp, ws }
}

/// Whether a download of `rel` should be allowed: it exists, no component is a symlink, it is a
/// file or dir, and it is not inside a staging dir.
fn downloadable(ws: &Path, rel: &Path) -> bool {
    if rel.iter().next().is_some_and(|c| c.to_string_lossy().starts_with(".rds-staging-")) {
        return false;
    }
    let mut at = ws.to_path_buf();
    for c in rel.iter() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(md) if md.file_type().is_symlink() => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    let md = fs::symlink_metadata(&at).unwrap();
    md.is_file() || md.is_dir()
}

fn download_path() -> impl Strategy<Value = String> {
    let seg = prop::sample::select(vec![
        "f",
        "d",
        "e",
        "g",
        "g-link",
        "lnk",
        "up",
        "pipe",
        ".rds-staging-x",
        "half",
        "secret",
        "outside",
        "..",
        ".",
        "",
        "missing",
    ]);
    let prefix = prop::sample::select(vec!["", "/workspace/", "/", "./"]);
    (prefix, prop::collection::vec(seg, 0..5)).prop_map(|(pre, segs)| format!("{pre}{}", segs.join("/")))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn check_download_allows_exactly_link_free_files_and_dirs(p in download_path()) {
        let t = tree();
        let allowed = resolve_workspace_path(&t.ws, &p).is_ok_and(|rel| downloadable(&t.ws, &rel));
        let checked = check_download(&t.ws, &p);
        prop_assert_eq!(checked.is_ok(), allowed, "{:?}: {:?}", p, checked);
        let mut out = Vec::new();
        let downloaded = download(&t.ws, &p, &mut out);
        prop_assert_eq!(downloaded.is_ok(), allowed, "{:?}: {:?}", p, downloaded);
        if downloaded.is_ok() {
            let names: Vec<String> = rds_testkit::untar_gz(&out).into_iter().map(|(n, _)| n).collect();
            prop_assert!(
                names.iter().all(|n| !n.contains("secret") && !n.contains("half") && !n.contains("g-link")),
                "{p:?} archived a linked or staged file: {names:?}"
            );
        }
    }
}
