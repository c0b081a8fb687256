//! A cached verdict of a boot probe ("does this host's KVM run our kernel?"): probing boots a
//! kernel (seconds), so the answer is kept in a file under `STORAGE_ROOT`, valid for this boot of
//! the host and the exact VMM binary and kernel file it was found with.

use std::path::Path;

/// The verdict stored in `cache` for `vmm` and `kernel`, else `probe`'s, which is stored.
pub(crate) fn verdict(
    cache: &Path,
    vmm: &Path,
    kernel: &Path,
    probe: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    if let Some(verdict) = lookup(cache, vmm, kernel) {
        return verdict;
    }
    let verdict = probe();
    store(cache, vmm, kernel, &verdict);
    verdict
}

/// The verdict `cache` holds for `vmm` and `kernel` on this boot of the host, if any.
pub(crate) fn lookup(cache: &Path, vmm: &Path, kernel: &Path) -> Option<Result<(), String>> {
    std::fs::read_to_string(cache).ok().and_then(|text| cached(&text, &cache_key(vmm, kernel)))
}

/// Stores `verdict` for `vmm` and `kernel` in `cache` (a failure to write is logged).
pub(crate) fn store(cache: &Path, vmm: &Path, kernel: &Path, verdict: &Result<(), String>) {
    let key = cache_key(vmm, kernel);
    let line = match verdict {
        Ok(()) => format!("{key}\nok\n"),
        Err(why) => format!("{key}\nno {}\n", why.replace('\n', " ")),
    };
    // Written aside and renamed: managers probing at once never read half a verdict.
    let staged = cache.with_extension(format!("{}.tmp", std::process::id()));
    let written = cache
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&staged, line))
        .and_then(|()| std::fs::rename(&staged, cache));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staged);
        tracing::warn!(path = %cache.display(), error = %e, "cannot cache the boot probe's verdict");
    }
}

/// What the verdict depends on: this boot of the host, the binary and the kernel file.
fn cache_key(vmm: &Path, kernel: &Path) -> String {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{}:{}:{:?}", p.display(), m.len(), m.modified().ok()))
            .unwrap_or_else(|_| p.display().to_string())
    };
    format!("{} {} {}", boot_id.trim(), stamp(vmm), stamp(kernel))
}

/// The cached verdict for `key`, if the cache holds one.
fn cached(text: &str, key: &str) -> Option<Result<(), String>> {
    let (stored, verdict) = text.split_once('\n')?;
    if stored != key {
        return None;
    }
    let verdict = verdict.trim_end();
    if verdict == "ok" {
        Some(Ok(()))
    } else {
        verdict.strip_prefix("no ").map(|why| Err(why.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_cached_only_for_its_own_key() {
        assert_eq!(cached("k1\nok\n", "k1"), Some(Ok(())));
        assert_eq!(cached("k1\nno too slow\n", "k1"), Some(Err("too slow".into())));
        assert_eq!(cached("k1\nok\n", "k2"), None, "another boot, binary or kernel");
        assert_eq!(cached("garbage", "k1"), None);
        let key = cache_key(Path::new("/nonexistent/fc"), Path::new("/nonexistent/vmlinux"));
        assert!(key.contains("/nonexistent/fc") && key.contains("/nonexistent/vmlinux"), "{key}");
    }

    #[test]
    fn the_probe_runs_once_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("probe");
        let (vmm, kernel) = (dir.path().join("vmm"), dir.path().join("kernel"));
        std::fs::write(&vmm, "v").unwrap();
        std::fs::write(&kernel, "k").unwrap();
        assert_eq!(verdict(&cache, &vmm, &kernel, || Err("no kvm".into())), Err("no kvm".into()));
        assert_eq!(verdict(&cache, &vmm, &kernel, || panic!("probed again")), Err("no kvm".into()));
        std::fs::write(&kernel, "another kernel").unwrap();
        assert_eq!(verdict(&cache, &vmm, &kernel, || Ok(())), Ok(()), "a new kernel is probed");
    }
}
