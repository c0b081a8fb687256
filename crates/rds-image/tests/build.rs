//! Builds the real guest image (as root, with network to Debian and npm) and inspects it.
//!
//! Uses a fixed cache (`$RDS_IMAGE_CACHE`, default `/var/cache/rds-image`) so only the first
//! run is slow. Set `RDS_SKIP_IMAGE_BUILD=1` to skip; `RDS_AGENT_BIN` picks the agent binary
//! (default: `target/debug/rds-agent`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rds_image::{build, initramfs, manifest::sha256_file, vmlinux, BuildOptions, KernelChoice, MODULES_LOAD_PATH};

fn skip_reason() -> Option<String> {
    if std::env::var("RDS_SKIP_IMAGE_BUILD").as_deref() == Ok("1") {
        return Some("RDS_SKIP_IMAGE_BUILD=1".into());
    }
    // /proc/self is owned by the process's effective uid.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if euid != 0 {
        return Some("needs root (mmdebstrap, chroot, loop mounts)".into());
    }
    if !agent_bin().is_file() {
        return Some(format!("no agent binary at {} (cargo build -p rds-agent)", agent_bin().display()));
    }
    None
}

fn agent_bin() -> PathBuf {
    match std::env::var_os("RDS_AGENT_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/rds-agent"),
    }
}

/// A read-only loop mount, unmounted on drop.
struct LoopMount(PathBuf);

impl LoopMount {
    fn new(image: &Path, at: &Path) -> Self {
        let status = Command::new("mount").args(["-o", "loop,ro"]).arg(image).arg(at).status().unwrap();
        assert!(status.success(), "mounting {}", image.display());
        LoopMount(at.to_path_buf())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn chroot_output(root: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new("chroot").arg(root).arg(program).args(args).env("HOME", "/tmp").output().unwrap();
    assert!(out.status.success(), "{program} {args:?} in the rootfs failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn image_build_produces_bootable_artifacts_and_is_cached() {
    if let Some(reason) = skip_reason() {
        rds_testkit::skip(reason);
        return;
    }
    let cache_dir =
        std::env::var_os("RDS_IMAGE_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/rds-image".into());
    let out = tempfile::tempdir().unwrap();
    let opts = BuildOptions {
        out_dir: out.path().join("image"),
        kernel: KernelChoice::Debian,
        agent_bin: agent_bin(),
        cache_dir,
        debian_suite: "bookworm".into(),
        mirror: None,
    };
    let first = build(&opts, &mut |line| println!("{line}")).expect("image build");
    println!("first build: {:.1}s (from cache: {})", first.elapsed.as_secs_f64(), first.from_cache);
    let second = build(&opts, &mut |line| println!("{line}")).expect("cached image build");
    println!("second build: {:.1}s", second.elapsed.as_secs_f64());
    assert!(second.from_cache, "an unchanged rebuild must come from the cache");
    assert_eq!(first.manifest.cache_key, second.manifest.cache_key);

    // Manifest agrees with the files.
    for artifact in &second.manifest.artifacts {
        let path = opts.out_dir.join(&artifact.name);
        assert_eq!(sha256_file(&path).unwrap(), artifact.sha256, "{}", artifact.name);
    }
    assert!(second.manifest.kernel.version.ends_with("-cloud-amd64"), "{}", second.manifest.kernel.version);
    assert!(second.manifest.packages.iter().any(|p| p.name == "python3"));

    // vmlinux is an ELF with a real entry point.
    let elf = std::fs::read(&second.vmlinux).unwrap();
    let entry = vmlinux::elf_entry_point(&elf).expect("vmlinux is a 64-bit ELF");
    println!("vmlinux entry point {entry:#x}");

    // The initramfs has /init (the agent), the module list, and every listed module.
    let initrd = second.initrd.as_ref().expect("debian kernel ships an initramfs");
    let entries = initramfs::list_entries(&std::fs::read(initrd).unwrap()).unwrap();
    let find = |name: &str| entries.iter().find(|e| e.name == name);
    // The installed agent is the built one without debug sections; its hash is in the manifest.
    assert!(find("init").is_some_and(|e| e.size > 0), "/init is the agent");
    assert!(find("dev/console").is_some(), "/dev/console exists for init's stdio");
    assert!(find(MODULES_LOAD_PATH).is_some());
    let modules = &second.manifest.kernel.modules;
    for module in modules {
        assert!(find(module).is_some(), "{module} listed but not in the initramfs");
    }
    let position = |name: &str| {
        modules
            .iter()
            .position(|m| m.ends_with(&format!("/{name}.ko")))
            .unwrap_or_else(|| panic!("{name} not in {modules:?}"))
    };
    for (dependency, user) in [
        ("virtio", "virtio_blk"),
        ("virtio_ring", "virtio_net"),
        ("virtio", "virtio_mmio"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        ("vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"),
    ] {
        assert!(position(dependency) < position(user), "{dependency} must load before {user}");
    }
    position("overlay");
    assert!(!modules.iter().any(|m| m.contains("vsock_loopback")), "no loopback vsock transport");
    println!("initramfs modules ({}): {modules:#?}", modules.len());

    // The rootfs, mounted read-only.
    let mnt = tempfile::tempdir().unwrap();
    let _mount = LoopMount::new(&second.rootfs, mnt.path());
    let root = mnt.path();
    assert_eq!(
        sha256_file(&root.join("usr/sbin/init")).unwrap(),
        second.manifest.agent_sha256,
        "/sbin/init is rds-agent"
    );
    assert_eq!(std::fs::read_link(root.join("usr/local/bin/rds-agent")).unwrap(), Path::new("/sbin/init"));
    let workspace = std::fs::metadata(root.join("workspace")).unwrap();
    assert_eq!((workspace.uid(), workspace.gid()), (1000, 1000), "/workspace belongs to user");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("user:x:1000:1000:")), "{passwd}");
    assert!(!root.join("usr/sbin/sshd").exists(), "no ssh server");
    println!("deno: {}", chroot_output(root, "/usr/bin/deno", &["--version"]).lines().next().unwrap_or(""));
    println!("node: {}", chroot_output(root, "/usr/bin/node", &["--version"]));
    println!("python3: {}", chroot_output(root, "/usr/bin/python3", &["--version"]));
    for artifact in &second.manifest.artifacts {
        println!("{:<12} {:>12} bytes", artifact.name, artifact.size);
    }
}
