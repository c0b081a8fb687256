//! Producing the guest kernel: Debian's cloud kernel (default) or a minimal one built from source.
//!
//! Either way the stage directory ends up with `vmlinuz` (bzImage, for QEMU), `vmlinux`
//! (ELF, for Firecracker) and `kernel.json`; the Debian kernel adds `modules/` (the `.ko` files
//! the initramfs needs, laid out as they will appear there) and `modules.load`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::apt::{extract_deb, Apt};
use crate::command::{require_tool, run};
use crate::modules::ModuleTree;
use crate::vmlinux::extract_vmlinux;
use crate::{ImageError, KernelChoice, MODULES_LOAD_PATH};

/// Debian's metapackage that always points at the current cloud kernel.
const CLOUD_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Source package and config for the minimal kernel.
const MINIMAL_SOURCE_PACKAGE: &str = "linux-source-6.1";
const MINIMAL_CONFIG: &str = include_str!("../../../guest/kernel/microvm-kernel-x86_64-6.1.config");

/// What the kernel stage produced; saved as `kernel.json` in the stage directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `debian` or `minimal`.
    pub choice: String,
    /// `uname -r` of the kernel.
    pub version: String,
    /// The Debian package it came from.
    pub package: String,
    /// That package's version.
    pub package_version: String,
    /// The compressor of the bzImage payload.
    pub compression: String,
    /// Modules the initramfs loads, in order, as paths inside the initramfs (empty: no initramfs needed).
    pub modules: Vec<String>,
}

/// Builds the kernel stage for `choice` into `stage_dir`; `scratch` is for downloads and unpacking.
pub fn build(
    choice: KernelChoice,
    apt: &Apt,
    initramfs_modules: &[String],
    stage_dir: &Path,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelInfo, ImageError> {
    match choice {
        KernelChoice::Debian => debian(apt, initramfs_modules, stage_dir, scratch, progress),
        KernelChoice::Minimal => minimal(apt, stage_dir, scratch, progress),
    }
}

fn debian(
    apt: &Apt,
    roots: &[String],
    stage_dir: &Path,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelInfo, ImageError> {
    let package = apt.resolve_metapackage(CLOUD_METAPACKAGE, "linux-image-")?;
    let package_version = apt.version_of(&package)?;
    progress(&format!("downloading {package} {package_version}"));
    let deb = apt.download(&package, scratch)?;
    let unpacked = scratch.join("kernel-deb");
    extract_deb(&deb, &unpacked)?;

    let (vmlinuz, version) = find_vmlinuz(&unpacked.join("boot"))?;
    let bzimage = std::fs::read(&vmlinuz).map_err(ImageError::io("reading", &vmlinuz))?;
    progress("extracting vmlinux from vmlinuz");
    let (elf, compression) = extract_vmlinux(&bzimage)?;
    write(stage_dir, "vmlinuz", &bzimage)?;
    write(stage_dir, "vmlinux", &elf)?;

    let module_root = unpacked.join("lib/modules").join(&version);
    let order = ModuleTree::open(&module_root)?.load_order(roots)?;
    let mut modules = Vec::new();
    for rel in order {
        let in_initramfs = format!("lib/modules/{version}/{}", rel.display());
        let target = stage_dir.join("modules").join(&in_initramfs);
        let parent = target.parent().expect("module path has a parent");
        std::fs::create_dir_all(parent).map_err(ImageError::io("creating", parent))?;
        std::fs::copy(module_root.join(&rel), &target).map_err(ImageError::io("copying", &target))?;
        modules.push(in_initramfs);
    }
    let info = KernelInfo {
        choice: "debian".into(),
        version,
        package,
        package_version,
        compression: format!("{compression:?}").to_lowercase(),
        modules,
    };
    save(stage_dir, &info)?;
    Ok(info)
}

/// Builds `vmlinux` from Debian's kernel source with the Firecracker microVM config: every
/// driver built in, so no initramfs. Untested in CI (it needs a toolchain and ~30 min on 2 cores).
fn minimal(
    apt: &Apt,
    stage_dir: &Path,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelInfo, ImageError> {
    for (tool, package) in
        [("make", "make"), ("gcc", "gcc"), ("flex", "flex"), ("bison", "bison"), ("bc", "bc"), ("xz", "xz-utils")]
    {
        require_tool(tool, package)?;
    }
    let package_version = apt.version_of(MINIMAL_SOURCE_PACKAGE)?;
    progress(&format!("downloading {MINIMAL_SOURCE_PACKAGE} {package_version}"));
    let deb = apt.download(MINIMAL_SOURCE_PACKAGE, scratch)?;
    let unpacked = scratch.join("source-deb");
    extract_deb(&deb, &unpacked)?;
    let tarball = unpacked.join(format!("usr/src/{MINIMAL_SOURCE_PACKAGE}.tar.xz"));
    run(Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(scratch))?;
    let tree = scratch.join(MINIMAL_SOURCE_PACKAGE);
    write(&tree, ".config", MINIMAL_CONFIG.as_bytes())?;

    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string();
    run(Command::new("make").current_dir(&tree).arg("olddefconfig"))?;
    progress(&format!("compiling the kernel with {jobs} jobs (this takes a long time)"));
    run(Command::new("make").current_dir(&tree).args(["-j", &jobs, "vmlinux", "bzImage"]))?;
    let version = run(Command::new("make").current_dir(&tree).args(["-s", "kernelrelease"]))?.trim().to_string();

    for (from, to) in [("vmlinux", "vmlinux"), ("arch/x86/boot/bzImage", "vmlinuz")] {
        let target = stage_dir.join(to);
        std::fs::copy(tree.join(from), &target).map_err(ImageError::io("copying", &target))?;
    }
    let info = KernelInfo {
        choice: "minimal".into(),
        version,
        package: MINIMAL_SOURCE_PACKAGE.into(),
        package_version,
        compression: "none".into(),
        modules: Vec::new(),
    };
    save(stage_dir, &info)?;
    Ok(info)
}

/// Reads `kernel.json` from a finished kernel stage.
pub fn load(stage_dir: &Path) -> Result<KernelInfo, ImageError> {
    let path = stage_dir.join("kernel.json");
    let text = std::fs::read_to_string(&path).map_err(ImageError::io("reading", &path))?;
    serde_json::from_str(&text).map_err(|e| ImageError::io("parsing", &path)(std::io::Error::other(e)))
}

fn save(stage_dir: &Path, info: &KernelInfo) -> Result<(), ImageError> {
    let json = serde_json::to_vec_pretty(info).expect("plain data");
    write(stage_dir, "kernel.json", &json)?;
    let list: String = info.modules.iter().map(|m| format!("{m}\n")).collect();
    write(stage_dir, Path::new(MODULES_LOAD_PATH).file_name().expect("has a name"), list.as_bytes())
}

fn find_vmlinuz(boot: &Path) -> Result<(PathBuf, String), ImageError> {
    let entries = std::fs::read_dir(boot).map_err(ImageError::io("listing", boot))?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            return Ok((entry.path(), version.to_string()));
        }
    }
    Err(ImageError::Package(format!("kernel package has no boot/vmlinuz-* in {}", boot.display())))
}

fn write(dir: &Path, name: impl AsRef<Path>, data: &[u8]) -> Result<(), ImageError> {
    let path = dir.join(name);
    std::fs::write(&path, data).map_err(ImageError::io("writing", &path))
}
