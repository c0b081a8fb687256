//! Builds the rds guest image without Docker: a Debian kernel (`vmlinuz` + extracted ELF
//! `vmlinux`), an initramfs whose `/init` is `rds-initramfs`, an ext4 rootfs from `mmdebstrap`, and a
//! `manifest.json`. Each stage is cached by a hash of its inputs (see [`cache`]), so rebuilding
//! unchanged inputs only copies files. See `docs/guest-image.md`.

pub mod apt;
pub mod cache;
mod command;
mod error;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod modules;
pub mod rootfs;
mod steps;
pub mod vmlinux;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

pub use error::ImageError;
pub use initramfs::MODULES_LOAD_PATH;

use cache::{key, Stage, BUILDER_VERSION};
use initramfs::Initramfs;
use manifest::{sha256_file, Artifact, Manifest};
use steps::Steps;

/// Debian packages in the rootfs (`guest/packages.txt`).
const PACKAGES: &str = include_str!("../../../guest/packages.txt");
/// Modules the initramfs must load; dependencies are added from metadata (`guest/initramfs-modules.txt`).
const INITRAMFS_MODULES: &str = include_str!("../../../guest/initramfs-modules.txt");
/// Deno release installed from npm (`guest/deno-version.txt`).
const DENO_VERSION: &str = include_str!("../../../guest/deno-version.txt");

/// Which guest kernel to ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Debian's `linux-image-cloud-amd64`, with an initramfs that loads its virtio/vsock modules.
    #[default]
    Debian,
    /// Built from `linux-source-6.1` with the Firecracker microVM config; drivers built in, no initramfs.
    Minimal,
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory that receives `vmlinuz`, `vmlinux`, `initrd.img`, `rootfs.ext4`, `manifest.json`.
    pub out_dir: PathBuf,
    /// Guest kernel flavour.
    pub kernel: KernelChoice,
    /// The `rds-agent` binary to install as the rootfs's `/sbin/init`. The initramfs's `/init`,
    /// `rds-initramfs`, is taken from the same directory (cargo builds both; see
    /// [`initramfs_init_bin`]).
    pub agent_bin: PathBuf,
    /// Where stage products are kept between builds (e.g. `/var/cache/rds-image`).
    pub cache_dir: PathBuf,
    /// Debian suite, e.g. `bookworm`.
    pub debian_suite: String,
    /// Debian mirror URL; `None` uses deb.debian.org (plus debian-security).
    pub mirror: Option<String>,
}

/// What [`build`] produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// Compressed kernel (bzImage) for QEMU.
    pub vmlinuz: PathBuf,
    /// Uncompressed ELF kernel for Firecracker.
    pub vmlinux: PathBuf,
    /// The initramfs; `None` for the minimal kernel, which needs none.
    pub initrd: Option<PathBuf>,
    /// Root filesystem image.
    pub rootfs: PathBuf,
    /// Path of `manifest.json`.
    pub manifest_path: PathBuf,
    /// Its contents.
    pub manifest: Manifest,
    /// True when the finished image came from the cache unchanged.
    pub from_cache: bool,
    /// How long this call took.
    pub elapsed: Duration,
}

/// File names in the output directory.
const VMLINUZ: &str = "vmlinuz";
const VMLINUX: &str = "vmlinux";
const INITRD: &str = "initrd.img";
const ROOTFS: &str = "rootfs.ext4";
const MANIFEST: &str = "manifest.json";

/// The initramfs's `/init` that goes with `agent_bin`: `rds-initramfs` beside it.
pub fn initramfs_init_bin(agent_bin: &Path) -> PathBuf {
    agent_bin.with_file_name("rds-initramfs")
}

#[derive(Serialize)]
struct KernelInputs<'a> {
    builder: &'a str,
    suite: &'a str,
    kernel: KernelChoice,
    initramfs_modules: &'a [String],
}

#[derive(Serialize)]
struct RootfsInputs<'a> {
    builder: &'a str,
    suite: &'a str,
    packages: &'a [String],
    deno_version: &'a str,
}

#[derive(Serialize)]
struct ImageInputs<'a> {
    builder: &'a str,
    kernel_key: &'a str,
    rootfs_key: &'a str,
    agent_sha256: &'a str,
    initramfs_init_sha256: Option<&'a str>,
}

/// Builds (or fetches from the cache) the guest image described by `opts`, reporting each step
/// and its elapsed time through `progress`.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<BuildOutput, ImageError> {
    let started = Instant::now();
    let mut steps = Steps::new(progress);
    validate(opts)?;
    // One build per cache at a time: stages are shared, and two builders renaming the same
    // `.partial` directories into place would race. The lock is released when `_lock` drops.
    let _lock = lock_cache(&opts.cache_dir, &mut steps)?;

    steps.begin("hashing inputs");
    let packages = list_file(PACKAGES);
    let module_roots = list_file(INITRAMFS_MODULES);
    let deno_version = DENO_VERSION.trim();
    let agent_sha256 = sha256_file(&opts.agent_bin)?;
    let initramfs_init_sha256 = match opts.kernel {
        KernelChoice::Debian => Some(sha256_file(&initramfs_init_bin(&opts.agent_bin))?),
        KernelChoice::Minimal => None,
    };
    let suite = opts.debian_suite.as_str();
    let kernel_key = key(
        "kernel",
        &KernelInputs { builder: BUILDER_VERSION, suite, kernel: opts.kernel, initramfs_modules: &module_roots },
    );
    let rootfs_key =
        key("rootfs", &RootfsInputs { builder: BUILDER_VERSION, suite, packages: &packages, deno_version });
    let image_key = key(
        "image",
        &ImageInputs {
            builder: BUILDER_VERSION,
            kernel_key: &kernel_key,
            rootfs_key: &rootfs_key,
            agent_sha256: &agent_sha256,
            initramfs_init_sha256: initramfs_init_sha256.as_deref(),
        },
    );
    steps.note(&format!("image key {image_key} (kernel {kernel_key}, rootfs {rootfs_key})"));
    create_dir(&opts.cache_dir)?;
    create_dir(&opts.out_dir)?;

    let image_stage = Stage::new(&opts.cache_dir, "image", &image_key);
    let from_cache = image_stage.cached().is_some();
    let image_dir = match image_stage.cached() {
        Some(dir) => dir.to_path_buf(),
        None => {
            let scratch = tempfile::Builder::new()
                .prefix("scratch-")
                .tempdir_in(&opts.cache_dir)
                .map_err(ImageError::io("creating a scratch directory in", &opts.cache_dir))?;
            let kernel_dir = kernel_stage(opts, &kernel_key, &module_roots, scratch.path(), &mut steps)?;
            let (rootfs_dir, packages) =
                rootfs_stage(opts, &rootfs_key, &packages, deno_version, scratch.path(), &mut steps)?;
            let work = image_stage.begin()?.to_path_buf();
            let kernel = kernel::load(&kernel_dir)?;
            let installed_agent_sha256 =
                assemble(opts, &kernel_dir, &kernel, &rootfs_dir, &work, scratch.path(), &mut steps)?;

            steps.begin("writing manifest");
            let mut artifacts = Vec::new();
            for name in [VMLINUZ, VMLINUX, INITRD, ROOTFS] {
                if work.join(name).exists() {
                    artifacts.push(Artifact::of(&work, name)?);
                }
            }
            let manifest = Manifest {
                builder_version: BUILDER_VERSION.to_string(),
                cache_key: image_key.clone(),
                built_at_unix: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                build_seconds: started.elapsed().as_secs_f64(),
                suite: suite.to_string(),
                kernel,
                deno_version: deno_version.to_string(),
                agent_sha256: installed_agent_sha256,
                packages,
                artifacts,
            };
            let json = serde_json::to_vec_pretty(&manifest).expect("plain data");
            let path = work.join(MANIFEST);
            std::fs::write(&path, json).map_err(ImageError::io("writing", &path))?;
            image_stage.commit()?.to_path_buf()
        }
    };

    steps.begin(&format!("copying image to {}", opts.out_dir.display()));
    let manifest_text = std::fs::read_to_string(image_dir.join(MANIFEST))
        .map_err(ImageError::io("reading", image_dir.join(MANIFEST)))?;
    let manifest: Manifest = serde_json::from_str(&manifest_text)
        .map_err(|e| ImageError::io("parsing", image_dir.join(MANIFEST))(std::io::Error::other(e)))?;
    let stale_initrd = opts.out_dir.join(INITRD);
    if stale_initrd.exists() && !image_dir.join(INITRD).exists() {
        std::fs::remove_file(&stale_initrd).map_err(ImageError::io("removing", &stale_initrd))?;
    }
    // The same image already there (a re-run): nothing to copy.
    let unchanged = std::fs::read_to_string(opts.out_dir.join(MANIFEST)).is_ok_and(|t| t == manifest_text)
        && [VMLINUZ, VMLINUX, INITRD, ROOTFS]
            .iter()
            .all(|n| image_dir.join(n).exists() == opts.out_dir.join(n).exists());
    for name in [VMLINUZ, VMLINUX, INITRD, ROOTFS, MANIFEST] {
        let from = image_dir.join(name);
        if from.exists() && !unchanged {
            // Copy beside, then rename: running VMs may have the old file mounted, and must keep
            // reading the old contents (its inode) rather than a file rewritten under them.
            let to = opts.out_dir.join(name);
            let partial = opts.out_dir.join(format!(".{name}.partial"));
            std::fs::copy(&from, &partial).map_err(ImageError::io("copying to", &partial))?;
            std::fs::rename(&partial, &to).map_err(ImageError::io("renaming to", &to))?;
        }
    }
    for artifact in &manifest.artifacts {
        steps.note(&format!(
            "{:<12} {:>10}  sha256 {}",
            artifact.name,
            human_size(artifact.size),
            // A cached manifest is read back from disk: never index past a short (corrupt) hash.
            artifact.sha256.get(..16).unwrap_or(&artifact.sha256)
        ));
    }
    steps.finish();
    let elapsed = started.elapsed();
    steps.note(&format!("image ready in {:.1}s{}", elapsed.as_secs_f64(), if from_cache { " (cached)" } else { "" }));

    let out = |name: &str| opts.out_dir.join(name);
    Ok(BuildOutput {
        vmlinuz: out(VMLINUZ),
        vmlinux: out(VMLINUX),
        initrd: out(INITRD).exists().then(|| out(INITRD)),
        rootfs: out(ROOTFS),
        manifest_path: out(MANIFEST),
        manifest,
        from_cache,
        elapsed,
    })
}

fn validate(opts: &BuildOptions) -> Result<(), ImageError> {
    if !opts.agent_bin.is_file() {
        return Err(ImageError::Agent {
            path: opts.agent_bin.clone(),
            reason: "does not exist (build it with `cargo build -p rds-agent`)".into(),
        });
    }
    let init = initramfs_init_bin(&opts.agent_bin);
    if opts.kernel == KernelChoice::Debian && !init.is_file() {
        return Err(ImageError::Agent {
            path: init,
            reason: "does not exist: the initramfs's /init is built beside rds-agent by `cargo build -p rds-agent`"
                .into(),
        });
    }
    let suite_ok =
        !opts.debian_suite.is_empty() && opts.debian_suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !suite_ok {
        return Err(ImageError::InvalidOptions(format!("{:?} is not a Debian suite name", opts.debian_suite)));
    }
    if let Some(mirror) = &opts.mirror {
        if !(mirror.starts_with("http://") || mirror.starts_with("https://")) || mirror.contains(char::is_whitespace) {
            return Err(ImageError::InvalidOptions(format!("mirror {mirror:?} must be an http(s) URL")));
        }
    }
    Ok(())
}

fn kernel_stage(
    opts: &BuildOptions,
    stage_key: &str,
    module_roots: &[String],
    scratch: &Path,
    steps: &mut Steps,
) -> Result<PathBuf, ImageError> {
    let stage = Stage::new(&opts.cache_dir, "kernel", stage_key);
    if let Some(dir) = stage.cached() {
        steps.note(&format!("kernel: cached in {}", dir.display()));
        return Ok(dir.to_path_buf());
    }
    steps.begin(&format!("kernel ({:?}): fetching package index", opts.kernel));
    let apt_root = opts.cache_dir.join(format!("apt-{}", key("apt", &(&opts.debian_suite, &opts.mirror))));
    let apt = apt::Apt::update(&apt_root, &opts.debian_suite, opts.mirror.as_deref())?;
    let work = stage.begin()?;
    let kernel_scratch = scratch.join("kernel");
    create_dir(&kernel_scratch)?;
    let info = kernel::build(opts.kernel, &apt, module_roots, work, &kernel_scratch, &mut |m| steps.note(m))?;
    steps.note(&format!(
        "kernel {} from {} {}; {} initramfs modules",
        info.version,
        info.package,
        info.package_version,
        info.modules.len()
    ));
    Ok(stage.commit()?.to_path_buf())
}

fn rootfs_stage(
    opts: &BuildOptions,
    stage_key: &str,
    packages: &[String],
    deno_version: &str,
    scratch: &Path,
    steps: &mut Steps,
) -> Result<(PathBuf, Vec<rootfs::InstalledPackage>), ImageError> {
    let stage = Stage::new(&opts.cache_dir, "rootfs", stage_key);
    let dir = match stage.cached() {
        Some(dir) => {
            steps.note(&format!("rootfs tree: cached in {}", dir.display()));
            dir.to_path_buf()
        }
        None => {
            steps.begin("rootfs: bootstrapping Debian");
            let work = stage.begin()?;
            let tree = work.join("tree");
            let installed = rootfs::build_base(
                &tree,
                &opts.debian_suite,
                opts.mirror.as_deref(),
                packages,
                deno_version,
                scratch,
                &mut |m| steps.note(m),
            )?;
            let path = work.join("packages.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&installed).expect("plain data"))
                .map_err(ImageError::io("writing", &path))?;
            stage.commit()?.to_path_buf()
        }
    };
    let path = dir.join("packages.json");
    let text = std::fs::read_to_string(&path).map_err(ImageError::io("reading", &path))?;
    let installed =
        serde_json::from_str(&text).map_err(|e| ImageError::io("parsing", &path)(std::io::Error::other(e)))?;
    Ok((dir, installed))
}

/// Writes the final artifacts into `work`: kernel files, initramfs (Debian kernel), rootfs.ext4.
fn assemble(
    opts: &BuildOptions,
    kernel_dir: &Path,
    kernel: &kernel::KernelInfo,
    rootfs_dir: &Path,
    work: &Path,
    scratch: &Path,
    steps: &mut Steps,
) -> Result<String, ImageError> {
    let agent = installable(&opts.agent_bin, scratch)?;
    for name in [VMLINUZ, VMLINUX] {
        let to = work.join(name);
        std::fs::copy(kernel_dir.join(name), &to).map_err(ImageError::io("copying to", &to))?;
    }
    if kernel.choice == "debian" {
        steps.begin("initramfs: rds-initramfs, its libraries, kernel modules");
        let init = installable(&initramfs_init_bin(&opts.agent_bin), scratch)?;
        let initramfs = initramfs_for(&init, kernel_dir, kernel)?;
        let path = work.join(INITRD);
        let file = std::fs::File::create(&path).map_err(ImageError::io("creating", &path))?;
        initramfs.write_gzip(std::io::BufWriter::new(file)).map_err(ImageError::io("writing", &path))?;
    }

    steps.begin("rootfs: copying tree and installing the agent");
    let tree = scratch.join("rootfs");
    rootfs::copy_tree(&rootfs_dir.join("tree"), &tree)?;
    rootfs::install_agent(&tree, &agent)?;
    steps.begin("rootfs: mkfs.ext4 -d");
    let size = rootfs::make_ext4(&tree, &work.join(ROOTFS))?;
    steps.note(&format!("rootfs.ext4 is {}", human_size(size)));
    sha256_file(&agent)
}

/// A guest binary as installed: without debug sections (a debug build is tens of MB, most of it
/// DWARF, which the guest would otherwise read from disk and a TCG guest unpack at every boot).
/// Falls back to an exact copy when `objcopy` is unavailable.
fn installable(bin: &Path, scratch: &Path) -> Result<PathBuf, ImageError> {
    let name = bin
        .file_name()
        .ok_or_else(|| ImageError::Agent { path: bin.to_path_buf(), reason: "has no file name".into() })?;
    let to = scratch.join(name);
    let stripped = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin)
        .arg(&to)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(bin, &to).map_err(ImageError::io("copying to", &to))?;
    }
    Ok(to)
}

fn initramfs_for(init: &Path, kernel_dir: &Path, kernel: &kernel::KernelInfo) -> Result<Initramfs, ImageError> {
    let mut initramfs = Initramfs::new();
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        initramfs.dir(dir);
    }
    // The kernel opens /dev/console for init's stdio before /init runs, so it must exist here.
    initramfs.char_device("dev/console", 5, 1, 0o600);
    initramfs.char_device("dev/null", 1, 3, 0o666);
    initramfs.copy_from_host(init, "init", 0o755)?;
    for lib in initramfs::shared_libraries(init)? {
        initramfs.copy_from_host(&lib, &lib.to_string_lossy(), 0o755)?;
    }
    for module in &kernel.modules {
        initramfs.copy_from_host(&kernel_dir.join("modules").join(module), module, 0o644)?;
    }
    let list: String = kernel.modules.iter().map(|m| format!("{m}\n")).collect();
    initramfs.file(MODULES_LOAD_PATH, list.into_bytes(), 0o644);
    Ok(initramfs)
}

/// Non-comment, non-empty lines, sorted and deduplicated (these lists are sets).
fn list_file(text: &str) -> Vec<String> {
    let mut items: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    items.sort();
    items.dedup();
    items
}

fn create_dir(dir: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).map_err(ImageError::io("creating", dir))
}

fn human_size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Takes the cache's exclusive build lock, saying so when another build holds it.
fn lock_cache(cache_dir: &Path, steps: &mut Steps<'_>) -> Result<std::fs::File, ImageError> {
    std::fs::create_dir_all(cache_dir).map_err(ImageError::io("creating", cache_dir))?;
    let path = cache_dir.join(".build.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ImageError::io("opening", &path))?;
    if file.try_lock().is_err() {
        steps.begin("waiting for another build using the same cache");
        file.lock().map_err(ImageError::io("locking", &path))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_files_ignore_comments_and_order() {
        assert_eq!(list_file("# c\ngit\n\nbash # shell\ngit\n"), vec!["bash", "git"]);
    }

    #[test]
    fn shipped_lists_are_usable() {
        let packages = list_file(PACKAGES);
        for needed in ["bash", "busybox", "ca-certificates", "python3", "nodejs", "git", "curl"] {
            assert!(packages.iter().any(|p| p == needed), "{needed} missing from guest/packages.txt");
        }
        let modules = list_file(INITRAMFS_MODULES);
        assert!(modules.iter().any(|m| m == "vmw_vsock_virtio_transport"));
        assert!(!modules.iter().any(|m| m == "vsock_loopback"), "loopback vsock must stay out of the guest");
        assert!(!DENO_VERSION.trim().is_empty());
    }

    #[test]
    fn options_with_odd_suite_or_mirror_are_rejected() {
        let agent = tempfile::NamedTempFile::new().unwrap();
        let opts = BuildOptions {
            out_dir: "/nonexistent/out".into(),
            // No initramfs, so no `rds-initramfs` beside the agent is needed.
            kernel: KernelChoice::Minimal,
            agent_bin: agent.path().to_path_buf(),
            cache_dir: "/nonexistent/cache".into(),
            debian_suite: "bookworm; rm -rf /".into(),
            mirror: None,
        };
        assert!(matches!(validate(&opts), Err(ImageError::InvalidOptions(_))));
        let opts = BuildOptions { debian_suite: "bookworm".into(), mirror: Some("file:///etc".into()), ..opts };
        assert!(matches!(validate(&opts), Err(ImageError::InvalidOptions(_))));
        let opts = BuildOptions { mirror: None, agent_bin: "/nonexistent/agent".into(), ..opts };
        assert!(matches!(validate(&opts), Err(ImageError::Agent { .. })));
        // The Debian kernel's initramfs needs `rds-initramfs` beside the agent.
        let opts = BuildOptions { agent_bin: agent.path().to_path_buf(), kernel: KernelChoice::Debian, ..opts };
        match validate(&opts) {
            Err(ImageError::Agent { path, .. }) => assert_eq!(path, initramfs_init_bin(agent.path())),
            other => panic!("expected a missing rds-initramfs, got {other:?}"),
        }
    }
}
