//! Guest images: create, upload (streamed to disk, never buffered), default, delete, and choosing
//! the image a VM boots from.
//!
//! Files live in `STORAGE_ROOT/images/<id>/` under fixed names (`vmlinux`, `vmlinuz`,
//! `initrd.img`, `rootfs.ext4`, `manifest.json`). Every upload is written to a temporary file in
//! that directory, fsynced and renamed into place, so a VM never sees a half-written file and an
//! interrupted or refused upload leaves nothing behind. Sizes are counted while streaming
//! (`MAX_IMAGE_BYTES`, 413) and the first bytes are checked against the part's format (400).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::body::Body;
use futures_util::{Stream, StreamExt};
use rds_runtime::BootFiles;
use rds_store::{now_ms, ImagePart, ImageRecord};
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

use crate::error::ResultExt;
use crate::services::image_formats::{
    identify, FileFormat, HEAD_LEN, INITRD, KERNEL_BZIMAGE, KERNEL_ELF, MANIFEST, ROOTFS,
};
use crate::views::{CreateImageRequest, ImageView};
use crate::{ApiError, AppState};

/// Settings key holding the default image id.
pub const DEFAULT_IMAGE_SETTING: &str = "defaultImageId";
/// After a refused upload, how much more of the body is read (and discarded) so the client sees
/// the error response instead of a reset connection.
const DRAIN_LIMIT: u64 = 16 << 20;
/// Largest `manifest.json` accepted in a bundle.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
const MAX_NAME_CHARS: usize = crate::views::MAX_IMAGE_NAME_CHARS;
const MAX_DESCRIPTION_CHARS: usize = crate::views::MAX_IMAGE_DESCRIPTION_CHARS;

/// `STORAGE_ROOT/images`.
pub fn images_dir(state: &AppState) -> PathBuf {
    state.config.storage_root.join("images")
}

/// The directory of image `id` (which must already be validated).
fn image_dir(state: &AppState, id: &str) -> PathBuf {
    images_dir(state).join(id)
}

/// True for `img-<uuid>`: only such ids ever reach a path.
fn is_image_id(id: &str) -> bool {
    id.strip_prefix("img-").is_some_and(|u| uuid::Uuid::try_parse(u).is_ok_and(|p| p.hyphenated().to_string() == u))
}

/// An existing image, else 404.
pub async fn find(state: &AppState, id: &str) -> Result<ImageRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("image {id:?} not found"));
    if !is_image_id(id) {
        return Err(not_found());
    }
    state.store.get_image(id).await?.ok_or_else(not_found)
}

async fn default_image_id(state: &AppState) -> Result<Option<String>, ApiError> {
    Ok(state.store.get_setting(DEFAULT_IMAGE_SETTING).await?)
}

/// Kernel formats present on disk.
fn kernel_formats(dir: &Path) -> Vec<String> {
    [(KERNEL_BZIMAGE, FileFormat::BzImage), (KERNEL_ELF, FileFormat::Elf)]
        .into_iter()
        .filter(|(name, _)| dir.join(name).is_file())
        .map(|(_, f)| f.as_str().to_string())
        .collect()
}

/// The API view; `with_manifest` adds the (large) builder manifest.
fn view(state: &AppState, image: &ImageRecord, default: Option<&str>, with_manifest: bool) -> ImageView {
    let dir = image_dir(state, &image.id);
    let formats = kernel_formats(&dir);
    let kernel_filename = [KERNEL_ELF, KERNEL_BZIMAGE].into_iter().find(|name| dir.join(name).is_file());
    ImageView {
        id: image.id.clone(),
        name: image.name.clone(),
        description: image.description.clone(),
        created_at: image.created_at,
        is_default: default == Some(image.id.as_str()),
        has_kernel: image.kernel_bytes.is_some(),
        has_initrd: image.initrd_bytes.is_some(),
        has_rootfs: image.rootfs_bytes.is_some(),
        kernel_format: formats.first().cloned(),
        kernel_formats: formats,
        kernel_bytes: image.kernel_bytes,
        initrd_bytes: image.initrd_bytes,
        rootfs_bytes: image.rootfs_bytes,
        kernel_uploaded_at: image.kernel_uploaded_at,
        initrd_uploaded_at: image.initrd_uploaded_at,
        rootfs_uploaded_at: image.rootfs_uploaded_at,
        kernel_filename: kernel_filename.map(str::to_string),
        rootfs_filename: image.rootfs_bytes.map(|_| ROOTFS.to_string()),
        base_rootfs_bytes: image.rootfs_bytes,
        seed_snapshot_id: None,
        seed_status: None,
        seed_updated_at: None,
        seed_error: None,
        manifest: if with_manifest {
            image.manifest_json.as_deref().and_then(|m| serde_json::from_str(m).ok())
        } else {
            None
        },
    }
}

/// Every image, oldest first (without manifests).
pub async fn list(state: &AppState) -> Result<Vec<ImageView>, ApiError> {
    let default = default_image_id(state).await?;
    Ok(state.store.list_images().await?.iter().map(|i| view(state, i, default.as_deref(), false)).collect())
}

/// One image, with its manifest.
pub async fn get(state: &AppState, id: &str) -> Result<ImageView, ApiError> {
    let image = find(state, id).await?;
    Ok(view(state, &image, default_image_id(state).await?.as_deref(), true))
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    if required && value.trim().is_empty() {
        return Err(ApiError::BadRequest(format!("invalid field `{field}`: must not be empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::BadRequest(format!("invalid field `{field}`: at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::BadRequest(format!("invalid field `{field}`: control characters are not allowed")));
    }
    Ok(())
}

/// Creates an empty image and its directory.
pub async fn create(state: &AppState, req: CreateImageRequest) -> Result<ImageView, ApiError> {
    check_text("name", &req.name, MAX_NAME_CHARS, true)?;
    let description = req.description.unwrap_or_default();
    check_text("description", &description, MAX_DESCRIPTION_CHARS, false)?;
    let image =
        ImageRecord::new(format!("img-{}", uuid::Uuid::new_v4()), req.name.trim().to_string(), description, now_ms());
    let dir = image_dir(state, &image.id);
    std::fs::create_dir_all(images_dir(state))
        .and_then(|()| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        })
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if let Err(e) = state.store.insert_image(&image).await {
        let _ = std::fs::remove_dir(&dir);
        return Err(e.into());
    }
    tracing::info!(image_id = %image.id, name = %image.name, "image created");
    Ok(view(state, &image, None, false))
}

/// A file being uploaded into an image directory: removed on drop unless [`Staged::install`]ed.
struct Staged {
    tmp: NamedTempFile,
    format: FileFormat,
    bytes: u64,
}

fn new_temp(dir: &Path) -> Result<NamedTempFile, ApiError> {
    // Readable by all: a jailed VMM (firecracker) opens the hard links of an image's files as its
    // own uid. The image directory itself (0700) keeps everyone else out.
    tempfile::Builder::new()
        .prefix(".upload-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

impl Staged {
    /// fsyncs the file and renames it to its format's name in `dir`.
    fn install(self, dir: &Path) -> Result<(), ApiError> {
        let target = dir.join(self.format.file_name());
        self.tmp.as_file().sync_all().with_context(|| format!("cannot fsync an upload for {}", target.display()))?;
        self.tmp
            .persist(&target)
            .map_err(|e| ApiError::internal(format!("cannot install {}", target.display()), e.error))?;
        Ok(())
    }
}

/// fsyncs a directory so renames into it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), ApiError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot fsync {}", dir.display()))
}

fn too_large(max: u64) -> ApiError {
    ApiError::TooLarge(format!("image upload exceeds MAX_IMAGE_BYTES={max}"))
}

/// Reads and discards up to [`DRAIN_LIMIT`] more bytes of a refused body.
async fn drain<S, E>(stream: &mut S)
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut seen = 0u64;
    while seen < DRAIN_LIMIT {
        match stream.next().await {
            Some(Ok(chunk)) => seen += chunk.len() as u64,
            _ => break,
        }
    }
}

/// Checks an upload can start: the image exists and a declared length is within
/// `MAX_IMAGE_BYTES`. Returns the image directory and the byte limit.
async fn begin_upload(state: &AppState, id: &str, declared_len: Option<u64>) -> Result<(PathBuf, u64), ApiError> {
    find(state, id).await?;
    let max = state.config.max_image_bytes;
    if declared_len.is_some_and(|n| n > max.saturating_add(DRAIN_LIMIT)) {
        return Err(too_large(max));
    }
    Ok((image_dir(state, id), max))
}

/// Streams `body` into the image as `part`; returns the updated image.
pub async fn upload_part(
    state: &AppState,
    id: &str,
    part: ImagePart,
    body: Body,
    declared_len: Option<u64>,
) -> Result<ImageView, ApiError> {
    let (dir, max) = begin_upload(state, id, declared_len).await?;
    let mut stream = body.into_data_stream();
    let staged = match stream_part(&mut stream, &dir, part, max).await {
        Ok(s) => s,
        Err(e) => {
            drain(&mut stream).await;
            return Err(e);
        }
    };
    let (bytes, format) = (staged.bytes, staged.format);
    let install_dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        staged.install(&install_dir)?;
        sync_dir(&install_dir)
    })
    .await
    .context("an image file task failed")??;
    state.store.set_image_part(id, part, bytes, now_ms()).await.map_err(|e| match e {
        rds_store::StoreError::NotFound(_) => ApiError::NotFound(format!("image {id:?} was deleted during the upload")),
        other => other.into(),
    })?;
    tracing::info!(image_id = %id, %part, bytes, format = format.as_str(), "image part uploaded");
    // Its seed was taken of the old files: the next create builds a new one.
    crate::services::seeds::discard(state, Some(id)).await?;
    get(state, id).await
}

/// Writes the stream into a temporary file, checking the size as it goes and the format as soon
/// as the head is in.
async fn stream_part<S>(stream: &mut S, dir: &Path, part: ImagePart, max: u64) -> Result<Staged, ApiError>
where
    S: Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin,
{
    let tmp = new_temp(dir)?;
    let std_file = tmp.as_file().try_clone().context("cannot open the upload file")?;
    let mut file = tokio::fs::File::from_std(std_file);
    let write_err = |e: std::io::Error| ApiError::internal(format!("cannot write the {part} upload"), e);
    let mut head: Vec<u8> = Vec::with_capacity(HEAD_LEN);
    let mut format = None;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read the {part} upload: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(too_large(max));
        }
        if format.is_some() {
            file.write_all(&chunk).await.map_err(write_err)?;
            continue;
        }
        head.extend_from_slice(&chunk);
        if head.len() >= HEAD_LEN {
            format = Some(identify(part, &head).map_err(ApiError::BadRequest)?);
            file.write_all(&head).await.map_err(write_err)?;
            head = Vec::new();
        }
    }
    let format = match format {
        Some(f) => f,
        None => {
            let f = identify(part, &head).map_err(ApiError::BadRequest)?;
            file.write_all(&head).await.map_err(write_err)?;
            f
        }
    };
    file.flush().await.map_err(write_err)?;
    Ok(Staged { tmp, format, bytes: total })
}

/// A bundle's files, staged and checked, not yet installed.
#[derive(Default)]
struct StagedBundle {
    parts: Vec<(ImagePart, Staged)>,
    manifest: Option<(NamedTempFile, String)>,
}

/// A reader that fails once more than `max` bytes passed through it.
struct Limited<R> {
    inner: R,
    seen: u64,
    max: u64,
}

impl<R> Limited<R> {
    fn exceeded(&self) -> bool {
        self.seen > self.max
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.exceeded() {
            return Err(std::io::Error::other("upload exceeds MAX_IMAGE_BYTES"));
        }
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.exceeded() {
            return Err(std::io::Error::other("upload exceeds MAX_IMAGE_BYTES"));
        }
        Ok(n)
    }
}

/// Streams a tar.gz (or plain tar) of the builder's output directory into the image. Entries are
/// matched by file name (any directory prefix); other entries are ignored. Either every file in
/// the bundle is installed or none is.
pub async fn upload_bundle(
    state: &AppState,
    id: &str,
    body: Body,
    declared_len: Option<u64>,
) -> Result<ImageView, ApiError> {
    let (dir, max) = begin_upload(state, id, declared_len).await?;
    let stream = body.into_data_stream().map(|r| r.map_err(std::io::Error::other));
    let bridge = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let stage_dir = dir.clone();
    let staged = tokio::task::spawn_blocking(move || {
        let mut body = Limited { inner: bridge, seen: 0, max };
        let result = stage_bundle(&mut body, &stage_dir, max);
        let exceeded = body.exceeded();
        // Read what is left (bounded) so the client gets our answer, not a reset connection.
        let _ = std::io::copy(&mut body.inner.by_ref().take(DRAIN_LIMIT), &mut std::io::sink());
        match result {
            Err(_) if exceeded => Err(too_large(max)),
            other => other,
        }
    })
    .await
    .context("an image file task failed")??;

    let install_dir = dir.clone();
    let (installed, manifest) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let mut installed = Vec::new();
        for (part, staged) in staged.parts {
            installed.push((part, staged.bytes, staged.format));
            staged.install(&install_dir)?;
        }
        let manifest = match staged.manifest {
            Some((tmp, text)) => {
                let target = install_dir.join(MANIFEST);
                tmp.persist(&target)
                    .map_err(|e| ApiError::internal(format!("cannot install {}", target.display()), e.error))?;
                Some(text)
            }
            None => None,
        };
        sync_dir(&install_dir)?;
        Ok((installed, manifest))
    })
    .await
    .context("an image file task failed")??;

    let at = now_ms();
    for (part, bytes, format) in &installed {
        state.store.set_image_part(id, *part, *bytes, at).await?;
        tracing::info!(image_id = %id, %part, bytes, format = format.as_str(), "image part uploaded from bundle");
    }
    if let Some(m) = &manifest {
        state.store.set_image_manifest(id, Some(m)).await?;
    }
    crate::services::seeds::discard(state, Some(id)).await?;
    get(state, id).await
}

/// Which image file a bundle entry named `name` is.
enum BundleEntry {
    Part(ImagePart),
    Manifest,
}

fn bundle_entry(name: &str) -> Option<BundleEntry> {
    match name {
        KERNEL_ELF | KERNEL_BZIMAGE => Some(BundleEntry::Part(ImagePart::Kernel)),
        INITRD => Some(BundleEntry::Part(ImagePart::Initrd)),
        ROOTFS => Some(BundleEntry::Part(ImagePart::Rootfs)),
        MANIFEST => Some(BundleEntry::Manifest),
        _ => None,
    }
}

fn bad_bundle(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("bundle is not a valid tar.gz: {e}"))
}

/// Reads the archive and stages each known entry into a temporary file in `dir`.
fn stage_bundle(body: &mut impl Read, dir: &Path, max: u64) -> Result<StagedBundle, ApiError> {
    let mut buffered = BufReader::new(body);
    let is_gzip = buffered.fill_buf().map_err(bad_bundle)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + '_> =
        if is_gzip { Box::new(flate2::read::GzDecoder::new(buffered)) } else { Box::new(buffered) };
    let mut archive = tar::Archive::new(reader);
    let mut bundle = StagedBundle::default();
    for entry in archive.entries().map_err(bad_bundle)? {
        let mut entry = entry.map_err(bad_bundle)?;
        let path = entry.path().map_err(bad_bundle)?.into_owned();
        let Some(kind) = path.file_name().and_then(|n| n.to_str()).and_then(bundle_entry) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            return Err(ApiError::BadRequest(format!(
                "bundle entry {} must be a regular file (links are refused)",
                path.display()
            )));
        }
        match kind {
            BundleEntry::Part(part) => {
                let staged = stage_entry(&mut entry, dir, part, max).map_err(|e| match e {
                    ApiError::BadRequest(m) => ApiError::BadRequest(format!("bundle entry {}: {m}", path.display())),
                    other => other,
                })?;
                // A later entry of the same file replaces an earlier one.
                bundle.parts.retain(|(_, s)| s.format.file_name() != staged.format.file_name());
                bundle.parts.push((part, staged));
            }
            BundleEntry::Manifest => bundle.manifest = Some(stage_manifest(&mut entry, dir)?),
        }
    }
    if bundle.parts.is_empty() && bundle.manifest.is_none() {
        return Err(ApiError::BadRequest(format!(
            "bundle holds none of {KERNEL_ELF}, {KERNEL_BZIMAGE}, {INITRD}, {ROOTFS}, {MANIFEST}"
        )));
    }
    Ok(bundle)
}

/// Copies one entry into a temporary file after checking its head.
fn stage_entry(entry: &mut impl Read, dir: &Path, part: ImagePart, max: u64) -> Result<Staged, ApiError> {
    let mut head = Vec::with_capacity(HEAD_LEN);
    entry.by_ref().take(HEAD_LEN as u64).read_to_end(&mut head).map_err(bad_bundle)?;
    let format = identify(part, &head).map_err(ApiError::BadRequest)?;
    let mut tmp = new_temp(dir)?;
    let write_err = |e: std::io::Error| ApiError::internal(format!("cannot write the {part} upload"), e);
    tmp.write_all(&head).map_err(write_err)?;
    // One byte past the limit tells "exactly max" from "too big".
    let rest = max.saturating_sub(head.len() as u64) + 1;
    // A broken archive is a 400 whatever the decoder's error kind (a cut gzip stream reports
    // `UnexpectedEof`); a failing disk a 500.
    let copied = rds_host::copy_apart(&mut entry.by_ref().take(rest), &mut tmp).map_err(|e| match e {
        rds_host::CopyError::Read(e) => bad_bundle(e),
        rds_host::CopyError::Write(e) => write_err(e),
    })?;
    let bytes = head.len() as u64 + copied;
    if bytes > max {
        return Err(too_large(max));
    }
    Ok(Staged { tmp, format, bytes })
}

/// Reads `manifest.json` (a JSON object, at most [`MAX_MANIFEST_BYTES`]) into a temporary file.
fn stage_manifest(entry: &mut impl Read, dir: &Path) -> Result<(NamedTempFile, String), ApiError> {
    let mut text = String::new();
    entry
        .by_ref()
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ApiError::BadRequest(format!("bundle entry {MANIFEST}: not UTF-8 text: {e}")))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ApiError::BadRequest(format!("bundle entry {MANIFEST}: larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(ApiError::BadRequest(format!("bundle entry {MANIFEST}: not a JSON object"))),
    }
    let mut tmp = new_temp(dir)?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .context(format!("cannot write {MANIFEST}"))?;
    Ok((tmp, text))
}

/// Makes `id` the image of VMs created without `imageId`. It must have a rootfs.
pub async fn set_default(state: &AppState, id: &str) -> Result<ImageView, ApiError> {
    let image = find(state, id).await?;
    if image.rootfs_bytes.is_none() {
        return Err(ApiError::Conflict(format!("image {id} has no rootfs; upload one before making it the default")));
    }
    state.store.set_setting(DEFAULT_IMAGE_SETTING, Some(id)).await?;
    tracing::info!(image_id = %id, "default image set");
    Ok(view(state, &image, Some(id), false))
}

/// Deletes an image no VM uses: its row and the default setting if it pointed here (one store
/// transaction that refuses while a VM uses the image, so no manager can start using it halfway),
/// then its files.
pub async fn delete(state: &AppState, id: &str) -> Result<(), ApiError> {
    // Only an optimisation for this manager's creates; the store's transaction is the guard.
    let _gate = state.create_gate.lock().await;
    find(state, id).await?;
    match state.store.delete_image(id, DEFAULT_IMAGE_SETTING).await {
        Ok(_) => {}
        Err(rds_store::StoreError::InUse { users, .. }) => {
            return Err(ApiError::Conflict(format!("image {id} is used by {users} VM(s); delete them first")))
        }
        Err(e) => return Err(e.into()),
    }
    // Renaming first makes the removal atomic for readers; a failure leaves files no row names.
    let dir = image_dir(state, id);
    let doomed = images_dir(state).join(format!(".deleting-{id}"));
    match std::fs::rename(&dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::internal(format!("cannot remove {}", dir.display()), e)),
    }
    if doomed.exists() {
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&doomed))
            .await
            .context("the image removal task failed")?
            .with_context(|| format!("cannot remove the files of image {id}"))?;
    }
    crate::services::seeds::discard(state, Some(id)).await?;
    tracing::info!(image_id = %id, "image deleted");
    Ok(())
}

/// The image a new VM records: the requested one (404 if unknown), else the default image, else
/// none. [`rds_store::Store::create_vm`] checks again that the image still exists.
pub async fn image_for_new_vm(state: &AppState, requested: Option<&str>) -> Result<Option<String>, ApiError> {
    let image = match requested {
        Some(id) => find(state, id).await?,
        None => match default_image_id(state).await? {
            Some(id) => match state.store.get_image(&id).await? {
                Some(image) => image,
                None => return Ok(None), // a stale setting is as good as none
            },
            None => return Ok(None),
        },
    };
    boot_files_of(state, &image)?;
    Ok(Some(image.id))
}

/// The files a VM with `image_id` boots from. `None` = the legacy image of the environment
/// (`RDS_IMAGE_DIR` / `KERNEL_PATH` ...) if configured, else the runtime's own default.
pub async fn boot_files(state: &AppState, image_id: Option<&str>) -> Result<BootFiles, ApiError> {
    match image_id {
        Some(id) => boot_files_of(state, &find(state, id).await?),
        None => Ok(match &state.config.guest_image {
            Some(env) => BootFiles {
                rootfs: Some(env.base_rootfs.clone()),
                kernel: Some(env.kernel.clone()),
                initrd: Some(env.initrd.clone()),
            },
            None => BootFiles::default(),
        }),
    }
}

/// Checks `image` is complete for this manager's runtime (400 otherwise) and names its files.
fn boot_files_of(state: &AppState, image: &ImageRecord) -> Result<BootFiles, ApiError> {
    let dir = image_dir(state, &image.id);
    let id = &image.id;
    if image.rootfs_bytes.is_none() {
        return Err(ApiError::BadRequest(format!("image {id} is incomplete: it has no rootfs; upload one first")));
    }
    state.runtime.boot_files(&dir).map_err(|e| {
        ApiError::BadRequest(format!("image {id} is incomplete for the {} runtime: {e}", state.runtime.kind()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_testkit::tar_gz;

    #[test]
    fn only_canonical_image_ids_are_accepted() {
        assert!(is_image_id("img-6f1c1c3e-8a4b-4d8e-9f0a-0123456789ab"));
        for bad in [
            "",
            "img-",
            "../etc",
            "img-../../x",
            "img-6F1C1C3E-8A4B-4D8E-9F0A-0123456789AB",
            "img-6f1c1c3e8a4b4d8e9f0a0123456789ab",
            "6f1c1c3e-8a4b-4d8e-9f0a-0123456789ab",
        ] {
            assert!(!is_image_id(bad), "{bad}");
        }
    }

    fn ext4() -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        v[1080..1082].copy_from_slice(&[0x53, 0xef]);
        v
    }

    #[test]
    fn bundle_entries_are_staged_by_name_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = ext4();
        let body = tar_gz(&[
            ("out/vmlinux", b"\x7fELF rest"),
            ("out/rootfs.ext4", &rootfs),
            ("out/README", b"ignored"),
            ("out/manifest.json", b"{\"suite\":\"bookworm\"}"),
        ]);
        let staged = stage_bundle(&mut &body[..], dir.path(), 1 << 20).unwrap();
        let names: Vec<_> = staged.parts.iter().map(|(p, s)| (p.as_str(), s.format.as_str(), s.bytes)).collect();
        assert_eq!(names, [("kernel", "elf", 9), ("rootfs", "ext4", 4096)]);
        assert_eq!(staged.manifest.as_ref().unwrap().1, "{\"suite\":\"bookworm\"}");
    }

    #[test]
    fn bundle_with_a_bad_rootfs_names_the_entry_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let body = tar_gz(&[("vmlinux", b"\x7fELF"), ("rootfs.ext4", b"not ext4")]);
        let err = stage_bundle(&mut &body[..], dir.path(), 1 << 20).err().unwrap();
        assert!(
            matches!(&err, ApiError::BadRequest(m) if m.starts_with("bundle entry rootfs.ext4: rootfs is")),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bundle_entry_over_the_limit_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let body = tar_gz(&[("rootfs.ext4", &ext4())]);
        let err = stage_bundle(&mut &body[..], dir.path(), 2048).err().unwrap();
        assert!(matches!(err, ApiError::TooLarge(_)), "{err}");
    }

    #[test]
    fn bundle_without_known_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let body = tar_gz(&[("hello.txt", b"hi")]);
        let err = stage_bundle(&mut &body[..], dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(&err, ApiError::BadRequest(m) if m.starts_with("bundle holds none")), "{err}");
        let err = stage_bundle(&mut &b"garbage that is not tar"[..], dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err}");
    }
}
