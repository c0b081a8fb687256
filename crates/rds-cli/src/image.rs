//! `rds image build`: builds the guest image with `rds_image::build` and, with `--register`,
//! creates it in a running manager and uploads it as one streamed tar.gz bundle.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use anyhow::{bail, Context, Result};
use rds_image::{BuildOptions, BuildOutput, KernelChoice};
use serde_json::{json, Value};

use crate::vm::Conn;

/// `rds image ...`.
#[derive(clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Build the guest image (kernel, initramfs, ext4 rootfs, manifest); progress goes to stderr.
    Build(BuildArgs),
    /// List a manager's images.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Upload a kernel, root filesystem and initrd as a new image of a manager; prints its id.
    Upload(UploadArgs),
    /// Delete an image from a manager.
    Rm {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Flags of `rds image upload`.
#[derive(clap::Args)]
pub struct UploadArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    /// The guest kernel (vmlinux or bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The root filesystem (ext4).
    #[arg(long)]
    rootfs: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Make it the manager's default image.
    #[arg(long)]
    set_default: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Which kernel to ship (`--kernel`).
#[derive(Clone, Copy, clap::ValueEnum)]
enum KernelFlag {
    /// Debian's cloud kernel with an initramfs that loads its modules.
    Debian,
    /// A kernel built from source with drivers built in (slow to build; untested).
    Minimal,
}

/// Flags of `rds image build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Output directory for vmlinuz, vmlinux, initrd.img, rootfs.ext4, manifest.json.
    #[arg(long, default_value = "rds-image")]
    out: PathBuf,
    /// Guest kernel flavour.
    #[arg(long, value_enum, default_value = "debian")]
    kernel: KernelFlag,
    /// Stage cache kept between builds.
    #[arg(long, env = "RDS_IMAGE_CACHE", default_value = "/var/cache/rds-image")]
    cache_dir: PathBuf,
    /// Debian suite.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// Debian mirror URL (default deb.debian.org).
    #[arg(long)]
    mirror: Option<String>,
    /// The rds-agent binary to install as PID 1 (default: `rds-agent` next to `rds`).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// After building, create the image in a manager and upload it (needs --url and --api-key).
    #[arg(long, requires_all = ["url", "api_key"])]
    register: bool,
    /// Manager base URL, e.g. http://127.0.0.1:3000.
    #[arg(long, env = "RDS_URL")]
    url: Option<String>,
    /// API key for the manager.
    #[arg(long, env = "RDS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Name of the registered image (default: `debian-<suite>`).
    #[arg(long)]
    name: Option<String>,
    /// Make the registered image the manager's default.
    #[arg(long, requires = "register")]
    set_default: bool,
}

/// Runs `rds image ...`.
pub fn run(args: ImageArgs) -> Result<()> {
    match args.command {
        ImageCommand::Build(b) => build(b),
        ImageCommand::Ls { conn } => block_on(list(&conn)),
        ImageCommand::Upload(u) => block_on(upload(u)),
        ImageCommand::Rm { id, conn } => block_on(async {
            conn.client()?.delete_image(&id).await?;
            println!("deleted {id}");
            Ok(())
        }),
    }
}

fn block_on(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work)
}

async fn list(conn: &Conn) -> Result<()> {
    let images = conn.client()?.list_images().await?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    for image in images {
        let default = if image.is_default { "  (default)" } else { "" };
        println!("{}  {}{default}", image.id, image.name);
    }
    Ok(())
}

async fn upload(u: UploadArgs) -> Result<()> {
    let client = u.conn.client()?;
    let image = client.create_image(&u.name, u.description.as_deref()).await?;
    let parts = [("kernel", Some(&u.kernel)), ("rootfs", Some(&u.rootfs)), ("initrd", u.initrd.as_ref())];
    let uploaded = async {
        for (part, path) in parts {
            let Some(path) = path else { continue };
            let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let started = std::time::Instant::now();
            eprintln!("rds: uploading {part} {} ({} MiB) …", path.display(), data.len() >> 20);
            let progress = crate::progress::bar(format!("{part:>6}"));
            client
                .upload_image_part_reporting(&image.id, part, data, progress)
                .await
                .with_context(|| format!("uploading the {part}"))?;
            eprintln!("rds: {part} uploaded in {:.1}s", started.elapsed().as_secs_f64());
        }
        if u.set_default {
            client.set_default_image(&image.id).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = uploaded.await {
        // Nothing half-made is left behind.
        let _ = client.delete_image(&image.id).await;
        return Err(e);
    }
    println!("{}", image.id);
    Ok(())
}

fn default_agent_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the rds executable")?;
    Ok(exe.with_file_name("rds-agent"))
}

fn build(args: BuildArgs) -> Result<()> {
    let opts = BuildOptions {
        out_dir: args.out.clone(),
        kernel: match args.kernel {
            KernelFlag::Debian => KernelChoice::Debian,
            KernelFlag::Minimal => KernelChoice::Minimal,
        },
        agent_bin: match &args.agent_bin {
            Some(p) => p.clone(),
            None => default_agent_bin()?,
        },
        cache_dir: args.cache_dir.clone(),
        debian_suite: args.suite.clone(),
        mirror: args.mirror.clone(),
    };
    let out = rds_image::build(&opts, &mut |line| eprintln!("{line}")).context("image build failed")?;
    eprintln!(
        "built {} in {:.1} s{}",
        args.out.display(),
        out.elapsed.as_secs_f64(),
        if out.from_cache { " (from cache)" } else { "" }
    );
    if !args.register {
        println!("{}", args.out.display());
        return Ok(());
    }
    let manager = Manager {
        url: args.url.clone().unwrap_or_default().trim_end_matches('/').to_string(),
        key: args.api_key.clone().unwrap_or_default(),
    };
    let name = args.name.clone().unwrap_or_else(|| format!("debian-{}", args.suite));
    let image = register(&manager, &name, &out, args.set_default)?;
    println!("{}", serde_json::to_string_pretty(&image)?);
    Ok(())
}

/// A manager's API, as far as registering an image needs it.
struct Manager {
    url: String,
    key: String,
}

impl Manager {
    fn request(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}{path}", self.url)).set("X-API-Key", &self.key)
    }
}

/// Turns a ureq result into JSON (`null` for an empty body, such as a 204's), or an error quoting
/// the manager's message.
fn answer(what: &str, res: Result<ureq::Response, ureq::Error>) -> Result<Value> {
    match res {
        Ok(r) => Ok(r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or(Value::Null);
            let msg = body["error"]["message"].as_str().unwrap_or("no message").to_string();
            bail!("{what} failed: HTTP {code}: {msg}")
        }
        Err(e) => bail!("{what} failed: {e}"),
    }
}

/// Creates the image, uploads the build output as a bundle and optionally makes it the default.
fn register(m: &Manager, name: &str, out: &BuildOutput, set_default: bool) -> Result<Value> {
    let k = &out.manifest.kernel;
    let description = format!(
        "rds image build: Debian {}, kernel {} ({}), Deno {}",
        out.manifest.suite, k.version, k.choice, out.manifest.deno_version
    );
    let image = answer(
        "creating the image",
        m.request("POST", "/v1/images").send_json(json!({"name": name, "description": description})),
    )?;
    let id = image["id"].as_str().context("the manager answered without an image id")?.to_string();
    eprintln!("registered image {id}; uploading the bundle");
    let mut files: Vec<&Path> = vec![&out.vmlinuz, &out.vmlinux, &out.rootfs, &out.manifest_path];
    if let Some(initrd) = &out.initrd {
        files.push(initrd);
    }
    let body = tar_gz_stream(files.into_iter().map(Path::to_path_buf).collect());
    // Uploads and set-default answer 204 with no body (as the original API): the image is read back.
    answer(
        "uploading the bundle",
        m.request("PUT", &format!("/v1/images/{id}/bundle")).set("Content-Type", "application/gzip").send(body),
    )?;
    if set_default {
        answer("setting the default image", m.request("POST", &format!("/v1/images/{id}/set-default")).call())?;
        eprintln!("image {id} is now the default");
    }
    answer("reading the registered image", m.request("GET", &format!("/v1/images/{id}")).call())
}

/// A tar.gz of `files` (flat, by file name), produced by a thread while it is read: nothing is
/// staged on disk or held in memory beyond a few chunks.
fn tar_gz_stream(files: Vec<PathBuf>) -> ChunkReader {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        let writer = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let result = (|| -> std::io::Result<()> {
            let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            for f in &files {
                let name = f.file_name().expect("build outputs are files");
                tar.append_path_with_name(f, name)?;
            }
            tar.into_inner()?.finish()?.flush()
        })();
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    ChunkReader { rx, current: Vec::new(), pos: 0 }
}

const CHUNK: usize = 256 << 10;

/// Sends what is written as chunks over a bounded channel.
struct ChunkWriter {
    tx: SyncSender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx
                .send(Ok(chunk))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))?;
        }
        Ok(())
    }
}

/// Reads the chunks a [`ChunkWriter`] sends; EOF when the writer thread is done.
struct ChunkReader {
    rx: Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_bundle_is_a_flat_tar_gz_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("vmlinux");
        let b = dir.path().join("rootfs.ext4");
        std::fs::write(&a, b"\x7fELF").unwrap();
        std::fs::write(&b, vec![7u8; 600_000]).unwrap();
        let mut gz = Vec::new();
        tar_gz_stream(vec![a, b]).read_to_end(&mut gz).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let entries: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(entries, [("vmlinux".to_string(), 4), ("rootfs.ext4".to_string(), 600_000)]);
    }
}
