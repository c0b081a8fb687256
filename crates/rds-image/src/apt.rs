//! Fetching Debian packages by name without installing them on the host: apt runs against a
//! private configuration (its own sources, lists, cache and an empty dpkg status) under the
//! build cache, so the host's apt state is neither used nor changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::{require_tool, run};
use crate::ImageError;

/// Debian's archive signing keys, from the host's `debian-archive-keyring` package.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// The `deb` source lines for `suite`: the suite and its updates from `mirror` (Debian's CDN by
/// default), plus the security archive when no mirror was given.
pub fn source_lines(suite: &str, mirror: Option<&str>) -> Vec<String> {
    let rolling = matches!(suite, "sid" | "unstable" | "experimental");
    let base = mirror.unwrap_or(DEFAULT_MIRROR);
    let mut lines = vec![format!("deb {base} {suite} main")];
    if !rolling {
        lines.push(format!("deb {base} {suite}-updates main"));
        if mirror.is_none() {
            lines.push(format!("deb {SECURITY_MIRROR} {suite}-security main"));
        }
    }
    lines
}

/// A private apt setup rooted at one directory.
pub struct Apt {
    root: PathBuf,
}

impl Apt {
    /// Prepares `root` (sources, empty status, cache dirs) and runs `apt-get update` there.
    pub fn update(root: &Path, suite: &str, mirror: Option<&str>) -> Result<Self, ImageError> {
        require_tool("apt-get", "apt")?;
        if !Path::new(KEYRING).is_file() {
            return Err(ImageError::MissingTool { tool: KEYRING.into(), package: "debian-archive-keyring".into() });
        }
        for dir in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(ImageError::io("creating", &path))?;
        }
        let sources: String = source_lines(suite, mirror)
            .iter()
            .map(|line| line.replacen("deb ", &format!("deb [signed-by={KEYRING}] "), 1) + "\n")
            .collect();
        let write = |name: &str, text: &str| {
            let path = root.join(name);
            std::fs::write(&path, text).map_err(ImageError::io("writing", &path))
        };
        write("sources.list", &sources)?;
        write("status", "")?;
        let apt = Apt { root: root.to_path_buf() };
        run(apt.command("apt-get").args(["-q", "update"]))?;
        Ok(apt)
    }

    /// The package a metapackage like `linux-image-cloud-amd64` currently depends on.
    pub fn resolve_metapackage(&self, metapackage: &str, prefix: &str) -> Result<String, ImageError> {
        let out = run(self.command("apt-cache").args(["depends", metapackage]))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|dep| dep.starts_with(prefix))
            .map(str::to_string)
            .ok_or_else(|| ImageError::Package(format!("{metapackage} depends on no {prefix}* package")))
    }

    /// The candidate version of `package`.
    pub fn version_of(&self, package: &str) -> Result<String, ImageError> {
        let out = run(self.command("apt-cache").args(["policy", package]))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| *v != "(none)")
            .map(str::to_string)
            .ok_or_else(|| ImageError::Package(format!("{package} is not in the archive")))
    }

    /// Downloads `package`'s .deb into `dir` and returns its path.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf, ImageError> {
        run(self.command("apt-get").current_dir(dir).args(["-q", "download", package]))?;
        let entries = std::fs::read_dir(dir).map_err(ImageError::io("listing", dir))?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
            })
            .ok_or_else(|| ImageError::Package(format!("apt-get download {package} left no .deb in {}", dir.display())))
    }

    fn command(&self, program: &str) -> Command {
        let r = |p: &str| self.root.join(p).display().to_string();
        let mut cmd = Command::new(program);
        for (key, value) in [
            ("Dir::Etc::SourceList", r("sources.list")),
            ("Dir::Etc::SourceParts", r("sources.list.d")),
            ("Dir::State::Lists", r("lists")),
            ("Dir::State::status", r("status")),
            ("Dir::Cache", r("cache")),
            // Files under the cache belong to root; apt's _apt sandbox user could not write them.
            ("APT::Sandbox::User", "root".to_string()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }
}

/// Unpacks a .deb's files into `dir` (`dpkg-deb -x`; nothing is installed).
pub fn extract_deb(deb: &Path, dir: &Path) -> Result<(), ImageError> {
    require_tool("dpkg-deb", "dpkg")?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sources_include_updates_and_security() {
        assert_eq!(
            source_lines("bookworm", None),
            vec![
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn custom_mirror_is_used_alone_and_sid_has_no_updates() {
        assert_eq!(
            source_lines("bookworm", Some("http://mirror.local/debian")),
            vec![
                "deb http://mirror.local/debian bookworm main",
                "deb http://mirror.local/debian bookworm-updates main"
            ]
        );
        assert_eq!(source_lines("sid", None), vec!["deb http://deb.debian.org/debian sid main"]);
    }
}
