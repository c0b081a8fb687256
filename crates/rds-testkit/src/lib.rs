//! Helpers shared by the workspace's tests and benchmarks.
//!
//! [`skip`] is the one way a test says it cannot run on this host. A skipped test still passes under the
//! test runner, so every skip is recorded where `scripts/test` can count it and fail the run on
//! any skip that `.ci/skip-allowlist` does not name (see the README's "Tests" section).

use std::io::Write;

/// Env var naming the file that skips are appended to; unset = skips are only printed.
pub const SKIP_LOG_ENV: &str = "RDS_SKIP_LOG";

/// Records that the calling test cannot run here and why: prints `SKIPPED: <reason>` and, when
/// `RDS_SKIP_LOG` is set, appends `<binary>\t<test>\t<reason>` to that file. The caller then
/// returns early. Panics when the skip cannot be recorded, so a skip is never silent.
pub fn skip(reason: impl std::fmt::Display) {
    // One line per skip: the log is line-oriented and tab-separated.
    let reason = reason.to_string().replace(['\t', '\n', '\r'], " ");
    println!("SKIPPED: {reason}");
    let Some(log) = std::env::var_os(SKIP_LOG_ENV) else { return };
    let line = format!("{}\t{}\t{reason}\n", binary_id(), test_name());
    // O_APPEND and a single write: parallel test processes append whole lines, never interleaved.
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(&log).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip in {SKIP_LOG_ENV}={}: {e}", log.to_string_lossy());
    }
}

/// The test binary as nextest names it (`crate::target`), else derived from the executable.
fn binary_id() -> String {
    if let Ok(id) = std::env::var("NEXTEST_BINARY_ID") {
        return id;
    }
    // Cargo names test executables `<target>-<hash>`.
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let target = stem.rsplit_once('-').map_or(stem.as_str(), |(t, _)| t).to_string();
    match std::env::var("CARGO_PKG_NAME") {
        Ok(pkg) if pkg.replace('-', "_") != target => format!("{pkg}::{target}"),
        Ok(pkg) => pkg,
        Err(_) => target,
    }
}

/// The running test's path: libtest names each test's thread after it.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => std::env::var("NEXTEST_TEST_NAME").unwrap_or_else(|_| "<unknown test>".into()),
    }
}

/// A gzipped tar of regular files (mode 0644), in the order given.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    tar_gz_with(|builder| {
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, *data).expect("append to an in-memory tar");
        }
    })
}

/// A tar builder writing gzip into memory.
pub type TarGzBuilder = tar::Builder<flate2::write::GzEncoder<Vec<u8>>>;

/// A gzipped tar of whatever `fill` appends: links, raw headers, entries a hostile client sends.
pub fn tar_gz_with(fill: impl FnOnce(&mut TarGzBuilder)) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    fill(&mut builder);
    builder.into_inner().and_then(|gz| gz.finish()).expect("finish an in-memory tar.gz")
}

/// Every (path, contents) of the regular files in a gzipped tar, in archive order.
pub fn untar_gz(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut files = Vec::new();
    for entry in archive.entries().expect("read a tar.gz") {
        let mut entry = entry.expect("read a tar entry");
        if entry.header().entry_type().is_file() {
            let path = entry.path().expect("entry path").to_string_lossy().into_owned();
            let mut contents = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut contents).expect("read a tar entry's data");
            files.push((path, contents));
        }
    }
    files
}

/// The directory `compute` finds, remembered across test processes for as long as the files of
/// `inputs` (path, size and modification time) and this test binary stay the same: nextest runs
/// every test in its own process, and finding the guest image copies ~0.5 GiB each time.
pub fn memoized_dir(
    inputs: &[&std::path::Path],
    compute: impl FnOnce() -> Result<std::path::PathBuf, String>,
) -> Result<std::path::PathBuf, String> {
    let mut identity = String::new();
    let exe = std::env::current_exe().unwrap_or_default();
    for path in inputs.iter().copied().chain([exe.as_path()]) {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        identity.push_str(&format!("{}:{}:{:?};", path.display(), meta.len(), meta.modified().ok()));
    }
    // FNV-1a: stable across processes, unlike std's hasher.
    let hash =
        identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let memo = std::env::temp_dir().join(format!("rds-test-memo-{hash:016x}"));
    if let Ok(text) = std::fs::read_to_string(&memo) {
        let dir = std::path::PathBuf::from(text);
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    let dir = compute()?;
    // Written beside and renamed: a concurrent reader never sees half a path.
    let partial = memo.with_extension(format!("{}", std::process::id()));
    if std::fs::write(&partial, dir.as_os_str().as_encoded_bytes()).is_ok() {
        let _ = std::fs::rename(&partial, &memo);
    }
    Ok(dir)
}

/// A Firecracker program for tests: `$<var>` (`FIRECRACKER_BIN`, `JAILER_BIN`), else `name` in
/// `shared/firecracker/bin` beside the checkout (where CI puts the real v1.16.1 binaries); `Err`
/// says why it is not there.
pub fn firecracker_program(var: &str, name: &str) -> Result<std::path::PathBuf, String> {
    let path = match std::env::var_os(var) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/firecracker/bin").join(name),
    };
    if path.is_file() {
        Ok(path.canonicalize().unwrap_or(path))
    } else {
        Err(format!("no {name} binary at {} (set {var})", path.display()))
    }
}

/// The `q` quantile (0.0..=1.0) of `samples` by nearest rank, sorting them; 0.0 when empty.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut samples: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut samples, 0.5), 10.0);
        assert_eq!(percentile(&mut samples, 0.95), 19.0);
        assert_eq!(percentile(&mut samples, 1.0), 20.0);
        assert_eq!(percentile(&mut samples, 0.0), 1.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn tar_gz_round_trips() {
        let archive = tar_gz(&[("a.txt", b"alpha"), ("dir/b.txt", b"")]);
        assert_eq!(
            untar_gz(&archive),
            vec![("a.txt".to_string(), b"alpha".to_vec()), ("dir/b.txt".to_string(), vec![])]
        );
    }
}
