//! End-to-end: the images API through the real `rds serve`, sandbox VMs booted from an image's
//! ext4 rootfs (loop-mounted read-only), and `rds image build --register` with the real image.

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;
use rds_testkit::tar_gz;
use serde_json::{json, Value};

/// `MAX_IMAGE_BYTES` of the synthetic-image server.
const SMALL_LIMIT: usize = 8 << 20;

fn put(s: &Server, id: &str, part: &str, data: &[u8]) -> (u16, Value) {
    common::into_status_json(
        s.req("PUT", &format!("/v1/images/{id}/{part}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(data),
    )
}

/// Like [`put`] but chunked, without a Content-Length: the limit must be enforced while streaming.
fn put_streamed(s: &Server, id: &str, part: &str, data: Vec<u8>) -> (u16, Value) {
    common::into_status_json(s.req("PUT", &format!("/v1/images/{id}/{part}")).send(std::io::Cursor::new(data)))
}

fn create_image(s: &Server, name: &str) -> String {
    let (st, img) = s.call("POST", "/v1/images", Some(json!({"name": name})));
    assert_eq!(st, 201, "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("img-"), "{id}");
    id
}

fn fake_elf() -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01".to_vec();
    v.resize(3000, 0);
    v
}

fn fake_bzimage() -> Vec<u8> {
    let mut v = vec![0u8; 5000];
    v[0x202..0x206].copy_from_slice(b"HdrS");
    v
}

fn fake_ext4() -> Vec<u8> {
    let mut v = vec![0u8; 8192];
    v[1080..1082].copy_from_slice(&[0x53, 0xef]);
    v
}

fn error_message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// Temporary upload files left in an image directory.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `/dev/loopN` devices whose backing file lies under `root`.
fn loop_devices_under(root: &Path) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(file) = std::fs::read_to_string(&backing) {
            if Path::new(file.trim()).starts_with(root) {
                found.push(format!("{}: {}", e.file_name().to_string_lossy(), file.trim()));
            }
        }
    }
    found
}

/// Host mounts mentioning `needle`.
fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A tiny but real ext4 root: just the directories the sandbox mounts on (the agent itself runs
/// from the host binary, so it needs nothing else to answer `/health`).
/// `None` when mkfs.ext4 is not installed.
fn tiny_ext4_rootfs(dir: &Path) -> Option<Vec<u8>> {
    let tree = dir.join("tree");
    for d in ["proc", "dev", "sys", "tmp", "run", "workspace", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/os-release"), "ID=tiny\n").unwrap();
    std::os::unix::fs::chown(tree.join("workspace"), Some(1000), Some(1000)).unwrap();
    let image = dir.join("rootfs.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("4M")
        .stdout(std::process::Stdio::null())
        .status();
    // Only a missing mkfs.ext4 is a reason to skip; mkfs failing is a test failure.
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("run mkfs.ext4: {e}"),
        Ok(s) => {
            assert!(s.success(), "mkfs.ext4 -d {} failed: {s}", tree.display());
            Some(std::fs::read(&image).unwrap())
        }
    }
}

#[test]
fn part_uploads_are_checked_sized_and_streamed_to_disk() {
    require_sandbox!();
    let limit = SMALL_LIMIT.to_string();
    let s = Server::start(&[("MAX_IMAGE_BYTES", limit.as_str())]);
    let id = create_image(&s, "synthetic");
    let dir = s.root.path().join("images").join(&id);
    assert!(dir.is_dir(), "image dir {} missing", dir.display());

    // Each upload answers 204 with no body, as the original API; GET shows what it stored.
    let (st, body) = put(&s, &id, "kernel", &fake_elf());
    assert_eq!((st, &body), (204, &Value::Null));
    let (_, img) = s.call("GET", &format!("/v1/images/{id}"), None);
    assert_eq!((img["hasKernel"].clone(), img["kernelFormat"].clone()), (json!(true), json!("elf")));
    let (st, body) = put(&s, &id, "initrd", &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0]);
    assert_eq!((st, &body), (204, &Value::Null));
    let (st, body) = put_streamed(&s, &id, "rootfs", fake_ext4());
    assert_eq!((st, &body), (204, &Value::Null));

    let (st, img) = s.call("GET", &format!("/v1/images/{id}"), None);
    assert_eq!(st, 200);
    assert_eq!(img["hasKernel"], true);
    assert_eq!(img["hasInitrd"], true);
    assert_eq!(img["hasRootfs"], true);
    assert_eq!(img["kernelBytes"], 3000);
    assert_eq!(img["initrdBytes"], 8);
    assert_eq!(img["rootfsBytes"], 8192);
    assert_eq!(img["isDefault"], false);
    assert_eq!(std::fs::read(dir.join("vmlinux")).unwrap(), fake_elf());
    assert_eq!(std::fs::read(dir.join("rootfs.ext4")).unwrap(), fake_ext4());

    // Wrong magic: 400 naming the part; the stored file is untouched.
    let (st, body) = put(&s, &id, "rootfs", &vec![0u8; 4096]);
    assert_eq!(st, 400, "{body}");
    assert!(error_message(&body).starts_with("rootfs is not"), "{body}");
    let (st, body) = put(&s, &id, "kernel", b"MZ this is a PE file");
    assert_eq!(st, 400, "{body}");
    assert!(error_message(&body).starts_with("kernel is not"), "{body}");
    let (st, body) = put(&s, &id, "initrd", b"");
    assert_eq!(st, 400, "{body}");
    assert!(error_message(&body).starts_with("initrd is empty"), "{body}");

    // Over MAX_IMAGE_BYTES while streaming (no Content-Length): 413 and no temp file left.
    let mut big = fake_ext4();
    big.resize(SMALL_LIMIT + 4096, 0);
    let (st, body) = put_streamed(&s, &id, "rootfs", big);
    assert_eq!(st, 413, "{body}");
    assert!(error_message(&body).contains("MAX_IMAGE_BYTES"), "{body}");
    assert!(temp_files(&dir).is_empty(), "temp files left: {:?}", temp_files(&dir));
    assert_eq!(s.call("GET", &format!("/v1/images/{id}"), None).1["rootfsBytes"], 8192);

    // Unknown image and hostile ids.
    for bad in ["img-00000000-0000-4000-8000-000000000000", "..%2F..%2Fetc"] {
        assert_eq!(put(&s, bad, "kernel", &fake_elf()).0, 404, "{bad}");
    }
    assert_eq!(s.call("GET", "/v1/images", None).1.as_array().unwrap().len(), 1);
}

#[test]
fn bundle_upload_installs_every_file_or_none() {
    require_sandbox!();
    let limit = SMALL_LIMIT.to_string();
    let s = Server::start(&[("MAX_IMAGE_BYTES", limit.as_str())]);
    let id = create_image(&s, "bundle");
    let dir = s.root.path().join("images").join(&id);
    let manifest = br#"{"suite":"bookworm","kernel":{"version":"6.1.0-test"}}"#;
    let good = tar_gz(&[
        ("out/vmlinuz", &fake_bzimage()),
        ("out/vmlinux", &fake_elf()),
        ("out/initrd.img", b"070701000000000000"),
        ("out/rootfs.ext4", &fake_ext4()),
        ("out/manifest.json", manifest),
        ("out/notes.txt", b"ignored"),
    ]);
    let (st, body) = common::into_status_json(
        s.req("PUT", &format!("/v1/images/{id}/bundle"))
            .set("Content-Type", "application/gzip")
            .send(std::io::Cursor::new(good)),
    );
    assert_eq!((st, &body), (204, &Value::Null));
    let (_, img) = s.call("GET", &format!("/v1/images/{id}"), None);
    assert_eq!(img["kernelFormats"], json!(["bzimage", "elf"]));
    assert_eq!(img["kernelFormat"], "bzimage");
    assert_eq!((img["hasInitrd"].clone(), img["hasRootfs"].clone()), (json!(true), json!(true)));
    assert_eq!(img["rootfsBytes"], 8192);
    assert_eq!(img["manifest"]["kernel"]["version"], "6.1.0-test");
    for f in ["vmlinuz", "vmlinux", "initrd.img", "rootfs.ext4", "manifest.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(!dir.join("notes.txt").exists());

    // One bad entry refuses the whole bundle: the good kernel in it is not installed either.
    let id2 = create_image(&s, "bad-bundle");
    let dir2 = s.root.path().join("images").join(&id2);
    let bad = tar_gz(&[("vmlinux", &fake_elf()), ("rootfs.ext4", b"not an ext4 image")]);
    let (st, body) = common::into_status_json(s.req("PUT", &format!("/v1/images/{id2}/bundle")).send_bytes(&bad));
    assert_eq!(st, 400, "{body}");
    assert!(error_message(&body).contains("rootfs.ext4"), "{body}");
    assert_eq!(s.call("GET", &format!("/v1/images/{id2}"), None).1["hasKernel"], false);
    assert!(!dir2.join("vmlinux").exists());
    assert!(temp_files(&dir2).is_empty(), "{:?}", temp_files(&dir2));

    let (st, body) = common::into_status_json(
        s.req("PUT", &format!("/v1/images/{id2}/bundle")).send_bytes(b"plainly not a tarball"),
    );
    assert_eq!(st, 400, "{body}");
}

#[test]
fn vms_pin_their_image_which_cannot_be_deleted_while_used() {
    require_sandbox!();
    let work = tempfile::tempdir().unwrap();
    let Some(rootfs) = tiny_ext4_rootfs(work.path()) else {
        rds_testkit::skip("mkfs.ext4 is not installed");
        return;
    };
    let limit = SMALL_LIMIT.to_string();
    let s = Server::start(&[("MAX_IMAGE_BYTES", limit.as_str())]);

    // Unknown image: 404; image without a rootfs: 400 on create, 409 on set-default.
    let (st, body) = s.call(
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 128, "imageId": "img-00000000-0000-4000-8000-000000000000"})),
    );
    assert_eq!(st, 404, "{body}");
    let partial = create_image(&s, "kernel-only");
    assert_eq!(put(&s, &partial, "kernel", &fake_elf()).0, 204);
    let (st, body) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128, "imageId": partial})));
    assert_eq!(st, 400, "{body}");
    assert!(error_message(&body).contains("no rootfs"), "{body}");
    let (st, body) = s.call("POST", &format!("/v1/images/{partial}/set-default"), None);
    assert_eq!(st, 409, "{body}");

    let id = create_image(&s, "tiny");
    assert_eq!(put(&s, &id, "rootfs", &rootfs).0, 204);
    let (st, body) = s.call("POST", &format!("/v1/images/{id}/set-default"), None);
    assert_eq!((st, &body), (204, &Value::Null));
    assert_eq!(s.call("GET", &format!("/v1/images/{id}"), None).1["isDefault"], true);

    // Created without imageId while the image is default: it records and boots from it.
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128})));
    assert_eq!(st, 201, "{vm}; log:\n{}", s.log());
    assert_eq!(vm["imageId"], id.as_str());
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let (_, got) = s.call("GET", &format!("/v1/vms/{vm_id}"), None);
    assert_eq!(got["imageId"], id.as_str());
    let image_dir = s.root.path().join("images").join(&id);
    let loops = loop_devices_under(&image_dir);
    assert_eq!(loops.len(), 1, "expected one loop device backed by the image: {loops:?}");

    let (st, body) = s.call("DELETE", &format!("/v1/images/{id}"), None);
    assert_eq!(st, 409, "{body}");
    assert!(image_dir.is_dir());

    assert_eq!(s.call("DELETE", &format!("/v1/vms/{vm_id}"), None).0, 204);
    assert!(loop_devices_under(s.root.path()).is_empty(), "{:?}", loop_devices_under(s.root.path()));
    let (st, body) = s.call("DELETE", &format!("/v1/images/{id}"), None);
    assert_eq!(st, 204, "{body}");
    assert!(!image_dir.exists(), "image dir left: {}", image_dir.display());
    assert_eq!(s.call("GET", &format!("/v1/images/{id}"), None).0, 404);
    // The default went with it: new VMs use the host root again.
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128})));
    assert_eq!(st, 201, "{vm}");
    assert!(vm.get("imageId").is_none(), "{vm}");
}

#[test]
fn real_debian_image_registers_and_boots_as_a_sandbox_root() {
    require_sandbox!();
    if std::env::var("RDS_SKIP_IMAGE_BUILD").is_ok_and(|v| v == "1") {
        rds_testkit::skip("RDS_SKIP_IMAGE_BUILD=1");
        return;
    }
    let s = Server::start(&[]);
    let out = tempfile::Builder::new().prefix("rds-image-e2e-").tempdir().unwrap();
    let cache = std::env::var("RDS_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/rds-image".into());
    let run = Command::new(env!("CARGO_BIN_EXE_rds"))
        .args(["image", "build", "--out"])
        .arg(out.path())
        .args(["--cache-dir", &cache, "--agent-bin"])
        .arg(common::agent_bin())
        .args(["--register", "--url", &s.url, "--api-key", &s.key, "--name", "debian-e2e", "--set-default"])
        .output()
        .expect("run rds image build");
    let stderr = String::from_utf8_lossy(&run.stderr);
    // A failed build fails the test, whatever the cause (offline mirror included): never a skip.
    assert!(run.status.success(), "rds image build --register failed:\n{stderr}");
    let image: Value = serde_json::from_slice(&run.stdout).expect("image JSON on stdout");
    let image_id = image["id"].as_str().unwrap().to_string();
    assert_eq!(image["hasRootfs"], true, "{image}");
    assert_eq!(image["hasInitrd"], true, "{image}");
    assert_eq!(image["kernelFormats"], json!(["bzimage", "elf"]), "{image}");
    assert_eq!(image["manifest"]["suite"], "bookworm");
    // The uploads and set-default answer 204: what it printed is the image read back.
    assert_eq!(image["isDefault"], true, "{image}");

    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 512, "imageId": image_id})));
    assert_eq!(st, 201, "{vm}; log:\n{}", s.log());
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let os = s.exec(&vm_id, "cat /etc/os-release");
    let text = os["stdout"].as_str().unwrap();
    assert!(text.contains("Debian") && text.contains("bookworm"), "{os}");
    assert_eq!(s.exec(&vm_id, "id -u")["stdout"], "1000\n");
    let deno = s.exec(&vm_id, "deno --version");
    assert_eq!(deno["exitCode"], 0, "{deno}");
    assert!(deno["stdout"].as_str().unwrap().starts_with("deno "), "{deno}");
    let w = s.exec(&vm_id, "echo from-image > /workspace/f && cat /workspace/f && touch /etc/x 2>&1; true");
    let out_text = w["stdout"].as_str().unwrap();
    assert!(out_text.starts_with("from-image\n"), "{w}");
    assert!(out_text.contains("Read-only file system"), "the image root must be read-only: {w}");
    let image_dir = s.root.path().join("images").join(&image_id);
    assert_eq!(loop_devices_under(&image_dir).len(), 1, "{:?}", loop_devices_under(&image_dir));

    assert_eq!(s.call("DELETE", &format!("/v1/vms/{vm_id}"), None).0, 204);
    assert!(loop_devices_under(s.root.path()).is_empty(), "loop devices left: {:?}", loop_devices_under(s.root.path()));
    assert!(mounts_mentioning(&vm_id).is_empty(), "mounts left: {:?}", mounts_mentioning(&vm_id));
    assert!(!s.root.path().join("vms").join(&vm_id).exists(), "VM dir left");
    assert_eq!(s.call("DELETE", &format!("/v1/images/{image_id}"), None).0, 204);
    assert!(!image_dir.exists());
}
