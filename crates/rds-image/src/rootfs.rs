//! The guest root filesystem: a Debian tree from `mmdebstrap` (no Docker), customised for rds,
//! then packed into ext4 with `mkfs.ext4 -d`.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::apt::source_lines;
use crate::command::{require_tool, run, run_in_chroot};
use crate::ImageError;

/// The unprivileged account guest code runs as.
pub const GUEST_USER: &str = "user";
/// Its uid and gid.
pub const GUEST_UID: u32 = 1000;

/// Files dpkg should never unpack into the image (documentation, manuals, translations).
const DPKG_EXCLUDES: &[&str] =
    &["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*", "/usr/share/lintian/*"];
/// Packages that must not be in the image even if something pulls them in.
const FORBIDDEN_PACKAGES: &[&str] = &["openssh-server", "openssh-client", "openssh-sftp-server"];
/// Space added on top of the tree's size: root is mounted read-only (writes go to the overlay
/// disk), so this only has to cover filesystem metadata and rounding.
const EXT4_HEADROOM_PERCENT: u64 = 15;
const EXT4_HEADROOM_MIN: u64 = 64 << 20;

/// A Debian package in the image and its version (for the manifest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledPackage {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
}

/// Bootstraps Debian `suite` into `tree` and applies everything rds needs except the agent.
pub fn build_base(
    tree: &Path,
    suite: &str,
    mirror: Option<&str>,
    packages: &[String],
    deno_version: &str,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<InstalledPackage>, ImageError> {
    require_tool("mmdebstrap", "mmdebstrap")?;
    progress(&format!("mmdebstrap {suite} with {} packages", packages.len()));
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--mode=root", "--variant=minbase", "--quiet"]).arg(format!("--include={}", packages.join(",")));
    for pattern in DPKG_EXCLUDES {
        cmd.arg(format!("--dpkgopt=path-exclude={pattern}"));
    }
    // path-include must come after the excludes to win for copyright files.
    cmd.arg("--dpkgopt=path-include=/usr/share/doc/*/copyright");
    cmd.arg(suite).arg(tree).args(source_lines(suite, mirror));
    run(&mut cmd)?;

    progress("creating user, /workspace, locale; removing ssh and caches");
    configure(tree)?;
    progress(&format!("installing Deno {deno_version} from npm"));
    install_deno(tree, deno_version, scratch)?;
    clean(tree)?;
    installed_packages(tree)
}

fn configure(tree: &Path) -> Result<(), ImageError> {
    let uid = GUEST_UID.to_string();
    run_in_chroot(tree, "groupadd", &["--gid", &uid, GUEST_USER])?;
    run_in_chroot(
        tree,
        "useradd",
        &["--uid", &uid, "--gid", &uid, "--create-home", "--shell", "/bin/bash", GUEST_USER],
    )?;
    run_in_chroot(tree, "passwd", &["--lock", "root"])?;

    let workspace = tree.join("workspace");
    std::fs::create_dir_all(&workspace).map_err(ImageError::io("creating", &workspace))?;
    std::os::unix::fs::chown(&workspace, Some(GUEST_UID), Some(GUEST_UID))
        .map_err(ImageError::io("chown", &workspace))?;
    std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", &workspace))?;

    // glibc ≥ 2.35 has C.UTF-8 built in; nothing to generate.
    write(tree, "etc/default/locale", "LANG=C.UTF-8\n")?;
    // Minimal placeholders: the agent rewrites networking files at boot.
    write(tree, "etc/hostname", "rds\n")?;
    write(tree, "etc/hosts", "127.0.0.1 localhost rds\n::1 localhost\n")?;
    Ok(())
}

/// Deno's official npm package `@deno/linux-x64-glibc` carries the release binary as `package/deno`.
fn install_deno(tree: &Path, version: &str, scratch: &Path) -> Result<(), ImageError> {
    require_tool("npm", "npm")?;
    let spec = format!("@deno/linux-x64-glibc@{version}");
    let name = run(Command::new("npm").current_dir(scratch).args(["pack", "--silent", &spec]))?;
    let tarball = scratch.join(name.trim().lines().last().unwrap_or_default());
    let file = std::fs::File::open(&tarball).map_err(ImageError::io("opening", &tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let target = tree.join("usr/bin/deno");
    let entries = archive.entries().map_err(ImageError::io("reading", &tarball))?;
    for entry in entries {
        let mut entry = entry.map_err(ImageError::io("reading", &tarball))?;
        let is_binary = entry.path().map(|p| p == Path::new("package/deno")).unwrap_or(false);
        if is_binary {
            let mut out = std::fs::File::create(&target).map_err(ImageError::io("creating", &target))?;
            std::io::copy(&mut entry, &mut out).map_err(ImageError::io("writing", &target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(ImageError::io("chmod", &target))?;
            return Ok(());
        }
    }
    Err(ImageError::Package(format!("npm package {spec} has no package/deno binary")))
}

fn clean(tree: &Path) -> Result<(), ImageError> {
    let installed = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", tree.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Package}\n"]))?;
    let forbidden: Vec<&str> = installed.lines().filter(|p| FORBIDDEN_PACKAGES.contains(p)).collect();
    if !forbidden.is_empty() {
        let mut args = vec!["purge", "-y"];
        args.extend(forbidden);
        run_in_chroot(tree, "apt-get", &args)?;
    }
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/log", "tmp", "var/tmp"] {
        empty_dir(&tree.join(dir))?;
    }
    // World-writable with the sticky bit, so uid 1000 can use them even where no tmpfs covers them.
    for dir in ["tmp", "var/tmp"] {
        let path = tree.join(dir);
        std::fs::create_dir_all(&path).map_err(ImageError::io("creating", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777))
            .map_err(ImageError::io("chmod", &path))?;
    }
    Ok(())
}

/// Packages installed in `tree`, sorted by name.
fn installed_packages(tree: &Path) -> Result<Vec<InstalledPackage>, ImageError> {
    let out = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", tree.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Package}\t${Version}\n"]))?;
    let mut packages: Vec<InstalledPackage> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, version)| InstalledPackage { name: name.into(), version: version.into() })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

/// Puts the agent at `/sbin/init` (what the kernel or initramfs runs) and `/usr/local/bin/rds-agent`.
pub fn install_agent(tree: &Path, agent: &Path) -> Result<(), ImageError> {
    let init = tree.join("usr/sbin/init"); // /sbin is a symlink to usr/sbin (merged /usr)
    remove_file_if_exists(&init)?;
    std::fs::copy(agent, &init).map_err(ImageError::io("copying the agent to", &init))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).map_err(ImageError::io("chmod", &init))?;
    let link = tree.join("usr/local/bin/rds-agent");
    remove_file_if_exists(&link)?;
    symlink("/sbin/init", &link).map_err(ImageError::io("linking", &link))
}

/// Packs `tree` into an ext4 image at `image`, sized to the content plus headroom; returns the size.
pub fn make_ext4(tree: &Path, image: &Path) -> Result<u64, ImageError> {
    require_tool("mkfs.ext4", "e2fsprogs")?;
    let used = run(Command::new("du").args(["-s", "--block-size=1"]).arg(tree))?;
    let used: u64 = used
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ImageError::Package(format!("unexpected du output: {used}")))?;
    let size = ext4_size_for(used);
    remove_file_if_exists(image)?;
    let file = std::fs::File::create(image).map_err(ImageError::io("creating", image))?;
    file.set_len(size).map_err(ImageError::io("sizing", image))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rds-root", "-m", "0", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(image))?;
    Ok(size)
}

/// Image size for a tree using `used` bytes: used + headroom, rounded up to a MiB.
pub fn ext4_size_for(used: u64) -> u64 {
    let headroom = (used * EXT4_HEADROOM_PERCENT / 100).max(EXT4_HEADROOM_MIN);
    (used + headroom).div_ceil(1 << 20) * (1 << 20)
}

/// Copies a tree with `cp -a` (keeps owners, modes, links, xattrs; reflinks where supported).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    run(Command::new("cp").args(["-a", "--reflink=auto"]).arg(from).arg(to)).map(drop)
}

fn empty_dir(dir: &Path) -> Result<(), ImageError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let path: PathBuf = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        result.map_err(ImageError::io("removing", &path))?;
    }
    Ok(())
}

fn remove_file_if_exists(path: &Path) -> Result<(), ImageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("removing", path)(e)),
    }
}

fn write(tree: &Path, rel: &str, text: &str) -> Result<(), ImageError> {
    let path = tree.join(rel);
    std::fs::write(&path, text).map_err(ImageError::io("writing", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_size_adds_headroom_and_rounds_to_mib() {
        assert_eq!(ext4_size_for(1), 65 << 20);
        let big = 1000u64 << 20;
        assert_eq!(ext4_size_for(big), 1150 << 20);
        assert_eq!(ext4_size_for(big + 1) % (1 << 20), 0);
    }
}
