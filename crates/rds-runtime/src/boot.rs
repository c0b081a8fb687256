//! What a runtime boots from a guest image directory, laid out as `rds image build` and the
//! manager's image uploads write it (`vmlinux` and/or `vmlinuz`, `initrd.img`, `rootfs.ext4`).

use std::path::{Path, PathBuf};

/// ELF kernel file name in an image directory.
pub const KERNEL_ELF: &str = "vmlinux";
/// bzImage kernel file name in an image directory.
pub const KERNEL_BZIMAGE: &str = "vmlinuz";
/// Initramfs file name in an image directory.
pub const INITRD: &str = "initrd.img";
/// Root filesystem file name in an image directory.
pub const ROOTFS: &str = "rootfs.ext4";

/// A kernel format a runtime can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux` (PVH entry on x86).
    Elf,
    /// A self-decompressing bzImage `vmlinuz`.
    BzImage,
}

impl KernelFormat {
    /// The file name this format has in an image directory.
    pub fn file_name(self) -> &'static str {
        match self {
            KernelFormat::Elf => KERNEL_ELF,
            KernelFormat::BzImage => KERNEL_BZIMAGE,
        }
    }
}

/// What a runtime's VM root filesystem may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsForm {
    /// An ext4 image file, attached as a disk.
    Ext4File,
    /// An ext4 image file (loop-mounted) or a directory (bound).
    Ext4FileOrDirectory,
}

/// Which artefacts of a guest image a runtime boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootNeeds {
    /// Kernel formats it boots, preferred first; empty when its VMs run on the host kernel.
    pub kernels: &'static [KernelFormat],
    /// Whether it boots the image's initramfs when the image has one.
    pub initrd: bool,
    /// What its root filesystem may be.
    pub rootfs: RootfsForm,
    /// Whether a VM without any image root can run: the runtime then uses its own default root.
    pub default_root: bool,
}

/// The image files one VM boots from (the image's part of a [`crate::VmSpec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFiles {
    /// Root filesystem.
    pub rootfs: Option<PathBuf>,
    /// Kernel in a format the runtime boots.
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
}

/// An image directory lacks what a runtime needs to boot it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageIncomplete {
    /// None of the kernel files the runtime boots is there.
    #[error("it has no kernel the runtime can boot (looked for {})", wanted.join(", "))]
    NoKernel {
        /// The file names looked for, preferred first.
        wanted: Vec<&'static str>,
    },
}

impl BootNeeds {
    /// The files of `image_dir` a VM boots from: its `rootfs.ext4`, the first kernel present in
    /// order of preference, its initramfs when present and wanted.
    pub fn resolve(&self, image_dir: &Path) -> Result<BootFiles, ImageIncomplete> {
        let existing = |name: &str| Some(image_dir.join(name)).filter(|p| p.is_file());
        let kernel = self.kernels.iter().find_map(|k| existing(k.file_name()));
        if !self.kernels.is_empty() && kernel.is_none() {
            return Err(ImageIncomplete::NoKernel { wanted: self.kernels.iter().map(|k| k.file_name()).collect() });
        }
        Ok(BootFiles {
            rootfs: Some(image_dir.join(ROOTFS)),
            kernel,
            initrd: if self.initrd { existing(INITRD) } else { None },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROVM: BootNeeds = BootNeeds {
        kernels: &[KernelFormat::Elf, KernelFormat::BzImage],
        initrd: true,
        rootfs: RootfsForm::Ext4File,
        default_root: true,
    };

    #[test]
    fn the_preferred_kernel_present_wins_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = MICROVM.resolve(d).unwrap_err();
        assert_eq!(err, ImageIncomplete::NoKernel { wanted: vec!["vmlinux", "vmlinuz"] });
        assert!(err.to_string().contains("vmlinux, vmlinuz"), "{err}");

        std::fs::write(d.join(KERNEL_BZIMAGE), b"bz").unwrap();
        let files = MICROVM.resolve(d).unwrap();
        assert_eq!(files.kernel.as_deref(), Some(d.join("vmlinuz").as_path()));
        assert_eq!(files.initrd, None, "no initramfs in the image");
        assert_eq!(files.rootfs.as_deref(), Some(d.join("rootfs.ext4").as_path()));

        std::fs::write(d.join(KERNEL_ELF), b"elf").unwrap();
        std::fs::write(d.join(INITRD), b"cpio").unwrap();
        let files = MICROVM.resolve(d).unwrap();
        assert_eq!(files.kernel.as_deref(), Some(d.join("vmlinux").as_path()));
        assert_eq!(files.initrd.as_deref(), Some(d.join("initrd.img").as_path()));
    }

    #[test]
    fn a_host_kernel_runtime_takes_only_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KERNEL_ELF), b"elf").unwrap();
        std::fs::write(dir.path().join(INITRD), b"cpio").unwrap();
        let needs =
            BootNeeds { kernels: &[], initrd: false, rootfs: RootfsForm::Ext4FileOrDirectory, default_root: false };
        let files = needs.resolve(dir.path()).unwrap();
        assert_eq!(files, BootFiles { rootfs: Some(dir.path().join(ROOTFS)), kernel: None, initrd: None });
    }
}
