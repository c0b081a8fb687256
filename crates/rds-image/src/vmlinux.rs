//! Extracting the uncompressed ELF `vmlinux` from an x86 `bzImage` (`vmlinuz`).
//!
//! Firecracker on x86_64 boots only an ELF kernel. A bzImage carries that ELF compressed: the
//! boot-protocol setup header (Documentation/arch/x86/boot.rst) gives the payload's offset and
//! length (protocol ≥ 2.08), and the payload's first bytes name the compressor. Debian's 6.1
//! cloud kernel uses LZ4 (the "legacy" LZ4 frame that `lz4 -l` writes); gzip, xz and zstd are
//! handled too. Every compressor except gzip is followed by the uncompressed size (4 bytes,
//! little endian), which is checked.

use std::io::Read;

use object::read::elf::{ElfFile64, FileHeader};
use object::Endianness;

use crate::ImageError;

const SETUP_SECTS_OFFSET: usize = 0x1f1;
const HEADER_MAGIC_OFFSET: usize = 0x202;
const PROTOCOL_VERSION_OFFSET: usize = 0x206;
const PAYLOAD_OFFSET_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH_OFFSET: usize = 0x24c;
const MIN_PROTOCOL_WITH_PAYLOAD: u16 = 0x0208;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Each block of a legacy LZ4 frame inflates to at most this many bytes.
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;

/// Compressors a bzImage payload can use that this module can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// `CONFIG_KERNEL_XZ`.
    Xz,
    /// `CONFIG_KERNEL_ZSTD`.
    Zstd,
    /// `CONFIG_KERNEL_LZ4` (legacy LZ4 frame).
    Lz4Legacy,
}

/// Returns the ELF kernel contained in `bzimage` and the compressor it was packed with.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<(Vec<u8>, Compression), ImageError> {
    let payload = payload(bzimage)?;
    let compression = detect(payload)?;
    let elf = match compression {
        Compression::Gzip => read_all(flate2::read::GzDecoder::new(payload), "gzip")?,
        Compression::Xz => {
            let (stream, size) = split_size_trailer(payload)?;
            let mut out = Vec::with_capacity(size);
            lzma_rs::xz_decompress(&mut std::io::BufReader::new(stream), &mut out)
                .map_err(|e| ImageError::Vmlinux(format!("xz payload is corrupt: {e}")))?;
            check_size(out, size)?
        }
        Compression::Zstd => {
            let (stream, size) = split_size_trailer(payload)?;
            let decoder = ruzstd::StreamingDecoder::new(stream)
                .map_err(|e| ImageError::Vmlinux(format!("zstd payload is corrupt: {e}")))?;
            check_size(read_all(decoder, "zstd")?, size)?
        }
        Compression::Lz4Legacy => {
            let (stream, size) = split_size_trailer(payload)?;
            check_size(lz4_legacy_decompress(stream)?, size)?
        }
    };
    elf_entry_point(&elf)?;
    Ok((elf, compression))
}

/// Returns the entry point of a 64-bit ELF image, failing if it is not one or the entry is zero.
pub fn elf_entry_point(elf: &[u8]) -> Result<u64, ImageError> {
    let file = ElfFile64::<Endianness>::parse(elf)
        .map_err(|e| ImageError::Vmlinux(format!("decompressed kernel is not a 64-bit ELF: {e}")))?;
    let entry = file.elf_header().e_entry(file.endian());
    if entry == 0 {
        return Err(ImageError::Vmlinux("decompressed kernel ELF has a zero entry point".into()));
    }
    Ok(entry)
}

/// The compressed kernel inside the bzImage, located through the boot-protocol header.
fn payload(bzimage: &[u8]) -> Result<&[u8], ImageError> {
    if bzimage.get(HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4) != Some(b"HdrS") {
        return Err(ImageError::Vmlinux("not an x86 bzImage (no \"HdrS\" boot header)".into()));
    }
    let version = u16::from_le_bytes(read_array(bzimage, PROTOCOL_VERSION_OFFSET)?);
    if version < MIN_PROTOCOL_WITH_PAYLOAD {
        return Err(ImageError::Vmlinux(format!(
            "boot protocol {}.{:02} predates payload fields (need 2.08+)",
            version >> 8,
            version & 0xff
        )));
    }
    let setup_sects = match bzimage[SETUP_SECTS_OFFSET] {
        0 => 4, // the boot protocol says 0 means 4
        n => usize::from(n),
    };
    let protected_mode_start = (setup_sects + 1) * 512;
    let offset = u32::from_le_bytes(read_array(bzimage, PAYLOAD_OFFSET_OFFSET)?) as usize;
    let length = u32::from_le_bytes(read_array(bzimage, PAYLOAD_LENGTH_OFFSET)?) as usize;
    let start = protected_mode_start + offset;
    bzimage.get(start..start + length).ok_or_else(|| {
        ImageError::Vmlinux(format!("payload {start}+{length} lies outside the {}-byte file", bzimage.len()))
    })
}

fn detect(payload: &[u8]) -> Result<Compression, ImageError> {
    if payload.starts_with(GZIP_MAGIC) {
        Ok(Compression::Gzip)
    } else if payload.starts_with(XZ_MAGIC) {
        Ok(Compression::Xz)
    } else if payload.starts_with(ZSTD_MAGIC) {
        Ok(Compression::Zstd)
    } else if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Ok(Compression::Lz4Legacy)
    } else {
        let head: Vec<String> = payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Err(ImageError::Vmlinux(format!(
            "unsupported kernel compression (payload starts {}); gzip, xz, zstd and lz4 are supported",
            head.join(" ")
        )))
    }
}

/// Splits off the 4-byte little-endian uncompressed size the kernel build appends.
fn split_size_trailer(payload: &[u8]) -> Result<(&[u8], usize), ImageError> {
    if payload.len() < 8 {
        return Err(ImageError::Vmlinux("payload too short".into()));
    }
    let (stream, trailer) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(read_array(trailer, 0)?) as usize;
    Ok((stream, size))
}

fn check_size(out: Vec<u8>, expected: usize) -> Result<Vec<u8>, ImageError> {
    if out.len() != expected {
        return Err(ImageError::Vmlinux(format!("decompressed {} bytes but the image says {expected}", out.len())));
    }
    Ok(out)
}

/// Decodes a legacy LZ4 frame: magic, then blocks of `[u32 le compressed length][LZ4 block]`.
fn lz4_legacy_decompress(stream: &[u8]) -> Result<Vec<u8>, ImageError> {
    let corrupt = |what: String| ImageError::Vmlinux(format!("lz4 payload is corrupt: {what}"));
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK_MAX];
    let mut rest = &stream[4..];
    while rest.len() >= 4 {
        let length = u32::from_le_bytes(read_array(rest, 0)?);
        rest = &rest[4..];
        if length == LZ4_LEGACY_MAGIC {
            continue; // a concatenated frame starts here
        }
        let length = length as usize;
        let compressed =
            rest.get(..length).ok_or_else(|| corrupt(format!("block of {length} bytes runs past the end")))?;
        let produced = lz4_flex::block::decompress_into(compressed, &mut block).map_err(|e| corrupt(e.to_string()))?;
        out.extend_from_slice(&block[..produced]);
        rest = &rest[length..];
    }
    if !rest.is_empty() {
        return Err(corrupt(format!("{} stray bytes at the end", rest.len())));
    }
    Ok(out)
}

fn read_all(mut reader: impl Read, format: &str) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(|e| ImageError::Vmlinux(format!("{format} payload is corrupt: {e}")))?;
    Ok(out)
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], ImageError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| ImageError::Vmlinux("file too short for a bzImage header".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 header (x86_64, executable) with the given entry point, padded with data.
    fn fake_elf(entry: u64, len: usize) -> Vec<u8> {
        let mut elf = vec![0u8; len.max(64)];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1; // EV_CURRENT
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&entry.to_le_bytes());
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        for (i, b) in elf[64..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        elf
    }

    /// Wraps `payload` in a bzImage-shaped blob: 2 setup sectors, header, then the payload.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 2u8;
        let pm_start = (usize::from(setup_sects) + 1) * 512;
        let payload_offset = 0x100usize;
        let mut image = vec![0u8; pm_start + payload_offset];
        image[SETUP_SECTS_OFFSET] = setup_sects;
        image[HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        image[PROTOCOL_VERSION_OFFSET..PROTOCOL_VERSION_OFFSET + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        image[PAYLOAD_OFFSET_OFFSET..PAYLOAD_OFFSET_OFFSET + 4].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        image[PAYLOAD_LENGTH_OFFSET..PAYLOAD_LENGTH_OFFSET + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(payload);
        image.extend_from_slice(&[0u8; 64]); // trailing decompressor code/data of a real image
        image
    }

    fn lz4_legacy(data: &[u8], block_size: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(block_size) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn extracts_elf_from_lz4_legacy_bzimage_across_blocks() {
        let elf = fake_elf(0x1000000, 3 * 4096 + 17);
        let image = fake_bzimage(&lz4_legacy(&elf, 4096));
        let (out, compression) = extract_vmlinux(&image).unwrap();
        assert_eq!(compression, Compression::Lz4Legacy);
        assert_eq!(out, elf);
        assert_eq!(elf_entry_point(&out).unwrap(), 0x1000000);
    }

    #[test]
    fn extracts_elf_from_gzip_bzimage() {
        let elf = fake_elf(0xffffffff81000000, 10_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&elf).unwrap();
        let image = fake_bzimage(&gz.finish().unwrap());
        let (out, compression) = extract_vmlinux(&image).unwrap();
        assert_eq!(compression, Compression::Gzip);
        assert_eq!(out, elf);
    }

    #[test]
    fn rejects_lz4_payload_whose_size_trailer_disagrees() {
        let elf = fake_elf(0x1000000, 5000);
        let mut payload = lz4_legacy(&elf, 4096);
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&4999u32.to_le_bytes());
        let err = extract_vmlinux(&fake_bzimage(&payload)).unwrap_err();
        assert!(err.to_string().contains("image says 4999"), "{err}");
    }

    #[test]
    fn rejects_elf_with_zero_entry_point() {
        let elf = fake_elf(0, 5000);
        let err = extract_vmlinux(&fake_bzimage(&lz4_legacy(&elf, 4096))).unwrap_err();
        assert!(err.to_string().contains("zero entry point"), "{err}");
    }

    #[test]
    fn rejects_files_without_boot_header() {
        let err = extract_vmlinux(&[0u8; 4096]).unwrap_err();
        assert!(err.to_string().contains("HdrS"), "{err}");
    }

    #[test]
    fn names_unsupported_compressors() {
        let err = extract_vmlinux(&fake_bzimage(b"BZh91AY&SY and so on")).unwrap_err();
        assert!(err.to_string().contains("unsupported kernel compression"), "{err}");
    }
}
