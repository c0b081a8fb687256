//! Recognising guest image files by their first bytes, so a wrong upload is refused (400) before
//! it is stored instead of failing later at boot.

use rds_store::ImagePart;

/// Bytes of a file needed to recognise every format (ext4's magic ends at offset 1082).
pub const HEAD_LEN: usize = 1088;

/// A recognised file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// ELF kernel (`vmlinux`): what Firecracker loads.
    Elf,
    /// x86 bzImage (`vmlinuz`): what QEMU loads.
    BzImage,
    /// Uncompressed newc cpio initramfs.
    Cpio,
    /// Compressed initramfs (gzip, zstd, xz or lz4).
    CompressedCpio(&'static str),
    /// ext4 filesystem image.
    Ext4,
}

impl FileFormat {
    /// Lowercase name for the API (`elf`, `bzimage`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Elf => "elf",
            FileFormat::BzImage => "bzimage",
            FileFormat::Cpio => "cpio",
            FileFormat::CompressedCpio(c) => c,
            FileFormat::Ext4 => "ext4",
        }
    }

    /// The file name this format is stored under in an image directory.
    pub fn file_name(self) -> &'static str {
        match self {
            FileFormat::Elf => KERNEL_ELF,
            FileFormat::BzImage => KERNEL_BZIMAGE,
            FileFormat::Cpio | FileFormat::CompressedCpio(_) => INITRD,
            FileFormat::Ext4 => ROOTFS,
        }
    }
}

// The image directory's file names are what the runtimes boot from (as `rds image build` writes them).
pub use rds_runtime::boot::{INITRD, KERNEL_BZIMAGE, KERNEL_ELF, ROOTFS};
/// Builder manifest file name.
pub const MANIFEST: &str = "manifest.json";

const ELF_MAGIC: &[u8] = b"\x7fELF";
/// The x86 boot protocol's header signature, at 0x202 of every bzImage.
const BZIMAGE_MAGIC: (usize, &[u8]) = (0x202, b"HdrS");
const CPIO_NEWC: &[u8] = b"070701";
const CPIO_NEWC_CRC: &[u8] = b"070702";
const COMPRESSED: [(&[u8], &str); 5] = [
    (&[0x1f, 0x8b], "gzip"),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
    (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
];
/// ext4 superblock magic 0xEF53 (little endian) at 1024 + 0x38.
const EXT4_MAGIC: (usize, &[u8]) = (1080, &[0x53, 0xef]);

fn at(head: &[u8], (offset, magic): (usize, &[u8])) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Recognises `head` (the first up to [`HEAD_LEN`] bytes) as a valid `part`, or says what was
/// expected, naming the part.
pub fn identify(part: ImagePart, head: &[u8]) -> Result<FileFormat, String> {
    let found = match part {
        ImagePart::Kernel if head.starts_with(ELF_MAGIC) => Some(FileFormat::Elf),
        ImagePart::Kernel if at(head, BZIMAGE_MAGIC) => Some(FileFormat::BzImage),
        ImagePart::Initrd if head.starts_with(CPIO_NEWC) || head.starts_with(CPIO_NEWC_CRC) => Some(FileFormat::Cpio),
        ImagePart::Initrd => COMPRESSED
            .iter()
            .find(|(magic, _)| head.starts_with(magic))
            .map(|(_, name)| FileFormat::CompressedCpio(name)),
        ImagePart::Rootfs if at(head, EXT4_MAGIC) => Some(FileFormat::Ext4),
        _ => None,
    };
    found.ok_or_else(|| {
        let expected = match part {
            ImagePart::Kernel => "an ELF vmlinux (\\x7fELF) or an x86 bzImage (HdrS at 0x202)",
            ImagePart::Initrd => "a newc cpio archive (070701), optionally gzip/zstd/xz/lz4-compressed",
            ImagePart::Rootfs => "an ext4 filesystem image (0xEF53 at offset 1080)",
        };
        if head.is_empty() {
            format!("{part} is empty; expected {expected}")
        } else {
            format!("{part} is not {expected}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEAD_LEN];
        v[offset..offset + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn kernels_are_recognised_as_elf_or_bzimage() {
        assert_eq!(identify(ImagePart::Kernel, &with(0, b"\x7fELF")), Ok(FileFormat::Elf));
        assert_eq!(identify(ImagePart::Kernel, &with(0x202, b"HdrS")), Ok(FileFormat::BzImage));
        let err = identify(ImagePart::Kernel, b"MZ not a kernel").unwrap_err();
        assert!(err.starts_with("kernel is not"), "{err}");
    }

    #[test]
    fn initrds_may_be_plain_or_compressed_cpio() {
        assert_eq!(identify(ImagePart::Initrd, b"070701000000"), Ok(FileFormat::Cpio));
        assert_eq!(identify(ImagePart::Initrd, &[0x1f, 0x8b, 8]), Ok(FileFormat::CompressedCpio("gzip")));
        assert_eq!(identify(ImagePart::Initrd, &[0x28, 0xb5, 0x2f, 0xfd, 0]), Ok(FileFormat::CompressedCpio("zstd")));
        assert_eq!(identify(ImagePart::Initrd, b"\xfd7zXZ\x00"), Ok(FileFormat::CompressedCpio("xz")));
        assert!(identify(ImagePart::Initrd, b"\x7fELF").unwrap_err().starts_with("initrd is not"));
    }

    #[test]
    fn rootfs_needs_the_ext4_superblock_magic() {
        assert_eq!(identify(ImagePart::Rootfs, &with(1080, &[0x53, 0xef])), Ok(FileFormat::Ext4));
        // Too short to hold a superblock.
        assert!(identify(ImagePart::Rootfs, &[0u8; 1081]).is_err());
        assert_eq!(
            identify(ImagePart::Rootfs, b"").unwrap_err(),
            "rootfs is empty; expected an ext4 filesystem image (0xEF53 at offset 1080)"
        );
    }
}
