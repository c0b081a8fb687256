//! Property tests of how the manager reads guest images: bundle uploads
//! (`services::images::upload_bundle`, a tar or tar.gz of the builder's output directory with its
//! `manifest.json`) and the recognition of image files by their first bytes
//! (`services::image_formats::identify`).
//!
//! Bundles are generated from entries named like image files (under any directory prefix, `..`
//! and absolute ones included) of every tar type, with contents that are or are not of the right
//! format, and manifests that are or are not JSON objects; and from raw garbage. Each is checked
//! against a model of the documented rules; whatever happens, nothing is written outside the
//! image's directory and nothing but the image's files stays in it.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000` for a longer run. No regression
//! files are written: a failure found here is kept as a plain `#[test]` instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use axum::body::Body;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestRunner;
use rds_manager::services::image_formats::{identify, FileFormat, HEAD_LEN};
use rds_manager::services::images;
use rds_manager::views::CreateImageRequest;
use rds_manager::{ApiError, AppState};
use rds_store::ImagePart;
use serde_json::Value;
use tar::{EntryType, Header};

const KEY: &str = "rds_fuzz_image_bundle_key_0123456789";
/// The files an image directory may hold.
const IMAGE_FILES: [&str; 5] = ["vmlinux", "vmlinuz", "initrd.img", "rootfs.ext4", "manifest.json"];

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// file heads

/// The recognisable starts of image files, and garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Elf,
    BzImage,
    Cpio,
    CpioCrc,
    Gzip,
    Zstd,
    Xz,
    Lz4,
    Lz4Legacy,
    Ext4,
    None,
}

const HEADS: [Head; 11] = [
    Head::Elf,
    Head::BzImage,
    Head::Cpio,
    Head::CpioCrc,
    Head::Gzip,
    Head::Zstd,
    Head::Xz,
    Head::Lz4,
    Head::Lz4Legacy,
    Head::Ext4,
    Head::None,
];

impl Head {
    /// (offset, magic) as documented in `image_formats`.
    fn magic(self) -> (usize, &'static [u8]) {
        match self {
            Head::Elf => (0, b"\x7fELF"),
            Head::BzImage => (0x202, b"HdrS"),
            Head::Cpio => (0, b"070701"),
            Head::CpioCrc => (0, b"070702"),
            Head::Gzip => (0, &[0x1f, 0x8b]),
            Head::Zstd => (0, &[0x28, 0xb5, 0x2f, 0xfd]),
            Head::Xz => (0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00]),
            Head::Lz4 => (0, &[0x02, 0x21, 0x4c, 0x18]),
            Head::Lz4Legacy => (0, &[0x04, 0x22, 0x4d, 0x18]),
            Head::Ext4 => (1080, &[0x53, 0xef]),
            Head::None => (0, b""),
        }
    }

    /// The format a `part` starting with this head is, per the documentation.
    fn format(self, part: ImagePart) -> Option<FileFormat> {
        match (part, self) {
            (ImagePart::Kernel, Head::Elf) => Some(FileFormat::Elf),
            (ImagePart::Kernel, Head::BzImage) => Some(FileFormat::BzImage),
            (ImagePart::Initrd, Head::Cpio | Head::CpioCrc) => Some(FileFormat::Cpio),
            (ImagePart::Initrd, Head::Gzip) => Some(FileFormat::CompressedCpio("gzip")),
            (ImagePart::Initrd, Head::Zstd) => Some(FileFormat::CompressedCpio("zstd")),
            (ImagePart::Initrd, Head::Xz) => Some(FileFormat::CompressedCpio("xz")),
            (ImagePart::Initrd, Head::Lz4 | Head::Lz4Legacy) => Some(FileFormat::CompressedCpio("lz4")),
            (ImagePart::Rootfs, Head::Ext4) => Some(FileFormat::Ext4),
            _ => None,
        }
    }

    /// Which documented magic, if any, `bytes` starts with (the first in the order the docs
    /// list them for `part`).
    fn of(part: ImagePart, bytes: &[u8]) -> Head {
        let has = |h: Head| {
            let (at, magic) = h.magic();
            bytes.get(at..at + magic.len()) == Some(magic)
        };
        HEADS
            .into_iter()
            .filter(|h| *h != Head::None && h.format(part).is_some())
            .find(|h| has(*h))
            .unwrap_or(Head::None)
    }
}

/// A file's start: a magic (or none), noise, a length.
fn head() -> impl Strategy<Value = (Head, Vec<u8>, usize)> {
    (select(HEADS.to_vec()), prop::collection::vec(any::<u8>(), 0..64), 0usize..1500)
}

/// File contents: `head`'s magic over the noise, the length sometimes cutting the magic off
/// unless `whole`.
fn contents((head, noise, len): (Head, Vec<u8>, usize), whole: bool) -> Vec<u8> {
    let mut v: Vec<u8> =
        if noise.is_empty() { vec![0; len] } else { noise.iter().copied().cycle().take(len).collect() };
    let (at, magic) = head.magic();
    if v.len() < at + magic.len() && (whole || len % 3 != 0) {
        v.resize(at + magic.len(), 0);
    }
    if v.len() >= at + magic.len() {
        v[at..at + magic.len()].copy_from_slice(magic);
    }
    v
}

fn parts() -> impl Strategy<Value = ImagePart> {
    select(vec![ImagePart::Kernel, ImagePart::Initrd, ImagePart::Rootfs])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn identify_recognises_exactly_the_documented_magics(part in parts(), start in head()) {
        let head = contents(start, false);
        let got = identify(part, &head);
        let want = Head::of(part, &head).format(part);
        prop_assert_eq!(got.as_ref().ok(), want.as_ref(), "{} of {} bytes", part, head.len());
        if let Err(message) = got {
            prop_assert!(message.starts_with(part.as_str()), "{message:?} does not name {part}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bundles

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular,
    Contiguous,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Directory prefix, as the builder's output dir or something hostile.
    prefix: &'static str,
    name: &'static str,
    kind: Kind,
    data: Vec<u8>,
}

impl Entry {
    fn path(&self) -> String {
        format!("{}{}", self.prefix, self.name)
    }
}

fn manifest_text() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    let tree = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    prop_oneof![
        3 => tree.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => prop::collection::vec(("[a-z_]{1,8}", "\\PC{0,10}"), 0..4)
            .prop_map(|kv| {
                let object: serde_json::Map<String, Value> = kv.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                serde_json::to_vec(&object).unwrap()
            }),
        1 => select(vec![&b"{}"[..], b" {} ", b"{\"a\":1} x", b"{\"a\":", b"\xff{}", b"{\"a\":\"\xc3\"}", b""])
            .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let prefix = select(vec!["", "", "out/", "./", "a/b/", "../", "../../", "/", "/tmp/", "vmlinux/"]);
    let name = select(vec![
        "vmlinux",
        "vmlinuz",
        "initrd.img",
        "rootfs.ext4",
        "manifest.json",
        "evil.sh",
        "rootfs.ext4.bak",
        "ROOTFS.EXT4",
        ".upload-x.tmp",
        "..",
        "",
    ]);
    let kind = prop_oneof![
        8 => Just(Kind::Regular),
        1 => select(vec![Kind::Contiguous, Kind::Dir, Kind::Symlink, Kind::Hardlink, Kind::Fifo]),
    ];
    (prefix, name, kind, head(), any::<bool>(), manifest_text()).prop_map(
        |(prefix, name, kind, start, fit, manifest)| {
            // Half of the image files start like their part should.
            let (head, noise, len) = start;
            let fitting = match name {
                "vmlinux" | "vmlinuz" => [Head::Elf, Head::BzImage][len % 2],
                "initrd.img" => [Head::Cpio, Head::CpioCrc, Head::Gzip, Head::Zstd, Head::Xz, Head::Lz4][len % 6],
                _ => Head::Ext4,
            };
            let data = match kind {
                Kind::Regular | Kind::Contiguous if name == "manifest.json" => manifest,
                Kind::Regular | Kind::Contiguous if fit => contents((fitting, noise, len), true),
                Kind::Regular | Kind::Contiguous => contents((head, noise, len), false),
                _ => Vec::new(),
            };
            Entry { prefix, name, kind, data }
        },
    )
}

/// A tar of `entries` with names written raw (the tar crate's own setters refuse `..` and
/// absolute names).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        let path = e.path();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        let kind = match e.kind {
            Kind::Regular => EntryType::Regular,
            Kind::Contiguous => EntryType::Continuous,
            Kind::Dir => EntryType::Directory,
            Kind::Symlink => EntryType::Symlink,
            Kind::Hardlink => EntryType::Link,
            Kind::Fifo => EntryType::Fifo,
        };
        if matches!(e.kind, Kind::Symlink | Kind::Hardlink) {
            h.as_old_mut().linkname[..15].copy_from_slice(b"../../../../etc");
        }
        h.set_entry_type(kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[derive(Debug, Clone)]
enum Bundle {
    /// A tar (`gzip`: compressed), whole.
    Entries {
        entries: Vec<Entry>,
        gzip: bool,
    },
    /// A tar.gz or tar cut short.
    Cut {
        entries: Vec<Entry>,
        gzip: bool,
        at: Index,
    },
    Garbage(Vec<u8>),
}

impl Bundle {
    fn bytes(&self) -> Vec<u8> {
        let pack = |entries: &[Entry], gzip: bool| if gzip { gz(&tar_of(entries)) } else { tar_of(entries) };
        match self {
            Bundle::Entries { entries, gzip } => pack(entries, *gzip),
            Bundle::Cut { entries, gzip, at } => {
                let mut b = pack(entries, *gzip);
                b.truncate(at.index(b.len()));
                b
            }
            Bundle::Garbage(b) => b.clone(),
        }
    }
}

fn bundle() -> impl Strategy<Value = Bundle> {
    let entries = || prop::collection::vec(entry(), 0..6);
    prop_oneof![
        6 => (entries(), any::<bool>()).prop_map(|(entries, gzip)| Bundle::Entries { entries, gzip }),
        1 => (entries(), any::<bool>(), any::<Index>()).prop_map(|(entries, gzip, at)| Bundle::Cut { entries, gzip, at }),
        1 => prop::collection::vec(any::<u8>(), 0..1024).prop_map(Bundle::Garbage),
    ]
}

/// What the documented rules make of a whole bundle: the files it installs, or that it is refused.
fn model(entries: &[Entry]) -> Option<BTreeMap<&'static str, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut any = false;
    for e in entries {
        // Matched by file name under any prefix (a path ending in `..` or `/` has none).
        let path = e.path();
        let file_name = Path::new(&path).file_name().and_then(|n| n.to_str());
        let Some(name) = file_name.filter(|n| IMAGE_FILES.contains(n)) else { continue };
        if e.kind != Kind::Regular {
            return None; // links and other types are refused
        }
        any = true;
        if name == "manifest.json" {
            let text = std::str::from_utf8(&e.data).ok()?;
            serde_json::from_str::<Value>(text).ok().filter(Value::is_object)?;
            files.insert("manifest.json", e.data.clone());
        } else {
            let part = match name {
                "vmlinux" | "vmlinuz" => ImagePart::Kernel,
                "initrd.img" => ImagePart::Initrd,
                _ => ImagePart::Rootfs,
            };
            // Stored under its format's name, whatever the entry was called.
            let format = Head::of(part, &e.data[..e.data.len().min(HEAD_LEN)]).format(part)?;
            files.insert(format.file_name(), e.data.clone());
        }
    }
    any.then_some(files)
}

/// A manager with its store in a temporary directory (no VMs are ever started).
struct Images {
    rt: tokio::runtime::Runtime,
    state: AppState,
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let state = {
            let _in_runtime = rt.enter();
            rds_manager::testing::in_process_state(dir.path(), &[], KEY)
        };
        let images = Images { rt, state, dir };
        images.create(); // so the images dir exists before the first case
        images
    }

    fn create(&self) -> String {
        let req = CreateImageRequest { name: "fuzz".into(), description: None };
        self.rt.block_on(images::create(&self.state, req)).unwrap().id
    }

    /// Uploads `body` as the bundle of a new image; returns the result and the image's files.
    fn upload(&self, body: Vec<u8>) -> (Result<(), ApiError>, BTreeMap<String, Vec<u8>>) {
        let id = self.create();
        let result = self.rt.block_on(images::upload_bundle(&self.state, &id, Body::from(body), None)).map(drop);
        let dir = images::images_dir(&self.state).join(&id);
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
            })
            .collect();
        // Keeps the store and the images dir small over long runs.
        self.rt.block_on(images::delete(&self.state, &id)).unwrap();
        (result, files)
    }

    /// What is beside the image dirs: the test dir's and the images dir's entries.
    fn surroundings(&self) -> (Vec<String>, Vec<String>) {
        let names = |p: &Path| {
            let mut v: Vec<String> =
                std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        (names(self.dir.path()), names(&images::images_dir(&self.state)))
    }
}

#[test]
fn bundles_install_exactly_what_the_rules_allow_and_nothing_elsewhere() {
    let images = Images::new();
    let mut runner = TestRunner::new(config());
    let outcome = runner.run(&bundle(), |bundle| {
        let before = images.surroundings();
        let (result, files) = images.upload(bundle.bytes());
        prop_assert_eq!(images.surroundings(), before, "something was created beside the image's own dir");
        prop_assert!(
            files.keys().all(|f| IMAGE_FILES.contains(&f.as_str())),
            "the image dir holds more than image files: {:?}",
            files.keys().collect::<Vec<_>>()
        );
        match &result {
            Ok(()) => {}
            Err(ApiError::BadRequest(_)) => {
                prop_assert!(files.is_empty(), "a refused bundle installed {:?}", files.keys())
            }
            Err(e) => return Err(TestCaseError::fail(format!("a bad bundle is a client error, got {e:?}"))),
        }
        if let Bundle::Entries { entries, .. } = &bundle {
            let want = model(entries);
            prop_assert_eq!(result.is_ok(), want.is_some(), "{:?}", result.as_ref().err());
            if let Some(want) = want {
                let want: BTreeMap<String, Vec<u8>> = want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                prop_assert_eq!(files, want);
            }
        }
        Ok(())
    });
    outcome.unwrap();
}

/// Found by the property above: a tar.gz cut inside a part's data was answered 500 ("cannot write
/// the kernel upload"): the decoder's `UnexpectedEof` was taken for a disk error.
#[test]
fn a_bundle_cut_inside_a_part_is_a_client_error() {
    let images = Images::new();
    // Incompressible content, so that half the tar.gz ends inside the entry's data.
    let mut x = 1u32;
    let noise = (0..16 * 1024).map(|_| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (x >> 16) as u8
    });
    let data = b"\x7fELF".iter().copied().chain(noise).collect();
    let mut bundle = gz(&tar_of(&[Entry { prefix: "", name: "vmlinux", kind: Kind::Regular, data }]));
    bundle.truncate(bundle.len() / 2);
    let (result, files) = images.upload(bundle);
    match result {
        Err(ApiError::BadRequest(message)) => assert!(message.contains("not a valid tar.gz"), "{message}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(files.is_empty(), "{:?}", files.keys());
}
