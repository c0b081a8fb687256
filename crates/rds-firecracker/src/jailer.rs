//! Firecracker's jailer: the command line that starts Firecracker chrooted, as an unprivileged
//! uid/gid, in its own cgroup and network namespace; and where on the host the jail's files are.
//!
//! The jailer creates `<chroot_base>/<exec file name>/<id>/root`, copies the Firecracker binary
//! into it, creates its cgroup `<cgroup mount>/<parent_cgroup>/<id>`, and writes the Firecracker
//! pid to `<root>/<exec file name>.pid`. Paths given to Firecracker afterwards (API socket,
//! kernel, drives) are inside that root. Removing the jail and its cgroups is the caller's job:
//! [`Jail::jail_dir`] and [`Jail::cgroup_dirs`] say what to remove.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest `--id` the jailer accepts.
pub const MAX_ID_LEN: usize = 64;
/// Resource names `--resource-limit` accepts.
pub const RESOURCE_LIMITS: [&str; 2] = ["fsize", "no-file"];
/// How long `<bin> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Which cgroup hierarchy the jailer creates the VM's cgroup in (`--cgroup-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// The cgroup version the host's `/sys/fs/cgroup` is: v2 when it is the unified hierarchy
    /// itself (`cgroup.controllers` at its top), else v1.
    pub fn of_host() -> CgroupVersion {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }

    fn arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// One jailed Firecracker: everything the jailer's command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// `--id`: letters, digits and `-`, at most 64; unique per VM (it names the chroot and cgroup).
    pub id: String,
    /// `--exec-file`: the Firecracker binary (absolute); the jailer copies it into the chroot.
    pub exec_file: PathBuf,
    /// `--uid` Firecracker runs as.
    pub uid: u32,
    /// `--gid` Firecracker runs as.
    pub gid: u32,
    /// `--chroot-base-dir` (absolute; must exist: the jailer canonicalizes it first).
    pub chroot_base: PathBuf,
    /// `--cgroup-version`.
    pub cgroup_version: CgroupVersion,
    /// `--parent-cgroup`, relative to the cgroup mount; the jailer's default is the exec file's name.
    pub parent_cgroup: Option<String>,
    /// `--cgroup file=value`, e.g. `("memory.max", "268435456")` on v2, `memory.limit_in_bytes` on v1.
    pub cgroups: Vec<(String, String)>,
    /// `--netns`: the network namespace to join, e.g. `/var/run/netns/<name>` (absolute).
    pub netns: Option<PathBuf>,
    /// `--daemonize`: new session, stdio to `/dev/null`; Firecracker outlives its starter.
    pub daemonize: bool,
    /// `--new-pid-ns`: Firecracker is pid 1 of a new pid namespace.
    pub new_pid_ns: bool,
    /// `--resource-limit name=value`; names from [`RESOURCE_LIMITS`].
    pub resource_limits: Vec<(String, u64)>,
}

/// A [`Jail`] the jailer would refuse or misread.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JailError {
    /// `id` is empty, too long or has characters other than letters, digits and `-`.
    #[error("jail id {0:?} must be 1 to 64 letters, digits or '-'")]
    Id(String),
    /// A path that must be absolute is not.
    #[error("jail {field} {path:?} must be an absolute path")]
    NotAbsolute {
        /// The field.
        field: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// `exec_file` has no file name.
    #[error("jail exec_file {0:?} must name a file")]
    ExecFile(PathBuf),
    /// `parent_cgroup` is empty, absolute, or has `.`/`..` components.
    #[error("jail parent_cgroup {0:?} must be a relative path without '.' or '..'")]
    ParentCgroup(String),
    /// A `cgroups` entry is not `<controller>.<file>` with a value the jailer can parse.
    #[error("jail cgroup {file:?}={value:?} must be <controller>.<file>=<value> without '/', '=' or newlines")]
    Cgroup {
        /// The cgroup file.
        file: String,
        /// Its value.
        value: String,
    },
    /// A `resource_limits` name the jailer does not know.
    #[error("jail resource limit {0:?} is not one of fsize, no-file")]
    ResourceLimit(String),
}

impl Jail {
    /// Checks every field the way the jailer will, so a mistake is reported by name here rather
    /// than by the jailer's exit status.
    pub fn validate(&self) -> Result<(), JailError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID_LEN
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !id_ok {
            return Err(JailError::Id(self.id.clone()));
        }
        let absolute = [("exec_file", Some(&self.exec_file)), ("chroot_base", Some(&self.chroot_base))]
            .into_iter()
            .chain([("netns", self.netns.as_ref())]);
        for (field, path) in absolute {
            if let Some(path) = path.filter(|p| !p.is_absolute()) {
                return Err(JailError::NotAbsolute { field, path: path.clone() });
            }
        }
        if self.exec_file.file_name().is_none() {
            return Err(JailError::ExecFile(self.exec_file.clone()));
        }
        if let Some(parent) = &self.parent_cgroup {
            // Split by hand: `Path::components` silently drops interior `.` and doubled `/`.
            let clean = parent.split('/').all(|segment| !matches!(segment, "" | "." | ".."));
            if !clean || parent.contains('\n') {
                return Err(JailError::ParentCgroup(parent.clone()));
            }
        }
        for (file, value) in &self.cgroups {
            let file_ok =
                file.split_once('.').is_some_and(|(controller, rest)| !controller.is_empty() && !rest.is_empty())
                    && !file.contains(['/', '=', '\n']);
            if !file_ok || value.is_empty() || value.contains('\n') {
                return Err(JailError::Cgroup { file: file.clone(), value: value.clone() });
            }
        }
        if let Some((name, _)) = self.resource_limits.iter().find(|(name, _)| !RESOURCE_LIMITS.contains(&name.as_str()))
        {
            return Err(JailError::ResourceLimit(name.clone()));
        }
        Ok(())
    }

    /// The file name of `exec_file`, which names the jail's parent directory, the binary inside
    /// the chroot and its pid file.
    pub fn exec_file_name(&self) -> String {
        self.exec_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// `<chroot_base>/<exec file name>/<id>`: the jail's directory, removed when the VM is deleted.
    pub fn jail_dir(&self) -> PathBuf {
        self.chroot_base.join(self.exec_file_name()).join(&self.id)
    }

    /// `<chroot_base>/<exec_file's file name>/<id>/root` — where the jailer chroots.
    pub fn root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }

    /// Host path of a path inside the jail (`/run/api.sock` → `<root>/run/api.sock`).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    /// `<root>/<exec file name>.pid`: where the jailer writes Firecracker's pid (with or without
    /// `--new-pid-ns`; as seen from the jailer's pid namespace).
    pub fn pid_file(&self) -> PathBuf {
        self.root().join(format!("{}.pid", self.exec_file_name()))
    }

    /// Puts the host file `host` at `inside` in the jail, before the jailer starts Firecracker
    /// (the jailer leaves an existing root as it is): a hard link, or a copy when the two are on
    /// different filesystems. `writable` makes it the jail's uid/gid's — only for per-VM files, as
    /// a hard link shares its owner with the original; shared read-only files (kernel, image
    /// rootfs) keep theirs and must be world-readable. Returns the host path in the jail.
    pub fn link_in(&self, host: &Path, inside: &str, writable: bool) -> std::io::Result<PathBuf> {
        let relative = Path::new(inside.trim_start_matches('/'));
        let plain = relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("path in the jail {inside:?} must be a plain path without '.' or '..'"),
            ));
        }
        let target = self.root().join(relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::hard_link(host, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => copy_new(host, &target)?,
            Err(e) => return Err(e),
        }
        if writable {
            std::os::unix::fs::chown(&target, Some(self.uid), Some(self.gid))?;
        }
        Ok(target)
    }

    /// Firecracker's pid, from [`Jail::pid_file`].
    pub fn read_pid(&self) -> std::io::Result<u32> {
        let path = self.pid_file();
        let text = std::fs::read_to_string(&path)?;
        text.trim().parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {text:?}: {e}", path.display()))
        })
    }

    /// The parent cgroup the jailer uses: `parent_cgroup`, else the exec file's name.
    pub fn parent_cgroup_or_default(&self) -> String {
        self.parent_cgroup.clone().unwrap_or_else(|| self.exec_file_name())
    }

    /// The cgroup directories the jailer creates for this jail (`<mount>/<parent>/<id>` per
    /// hierarchy holding one of `cgroups`' controllers), read against `/proc/self/mounts`. Without
    /// `cgroups` the jailer creates none (on v2 it then moves Firecracker into the parent, if that
    /// exists). The parent directories are the caller's.
    pub fn cgroup_dirs(&self) -> std::io::Result<Vec<PathBuf>> {
        Ok(self.cgroup_dirs_in(&std::fs::read_to_string("/proc/self/mounts")?))
    }

    /// [`Jail::cgroup_dirs`] against the given `/proc/mounts` text.
    pub fn cgroup_dirs_in(&self, mounts: &str) -> Vec<PathBuf> {
        let leaf = PathBuf::from(self.parent_cgroup_or_default()).join(&self.id);
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (file, _) in &self.cgroups {
            let controller = file.split_once('.').map_or(file.as_str(), |(c, _)| c);
            let mount = mounts.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (point, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
                let found = match self.cgroup_version {
                    CgroupVersion::V2 => *fstype == "cgroup2",
                    CgroupVersion::V1 => *fstype == "cgroup" && options.split(',').any(|o| o == controller),
                };
                found.then(|| PathBuf::from(unescape_mount_path(point)))
            });
            if let Some(dir) = mount.map(|m| m.join(&leaf)) {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    /// Removes what the jailer left behind once Firecracker is gone: [`Jail::jail_dir`] and the
    /// [`Jail::cgroup_dirs`] (not their parents). What is already gone is not an error; a cgroup
    /// still holding a process is (`EBUSY`).
    pub fn remove(&self) -> std::io::Result<()> {
        let gone_is_fine = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        // remove_dir_all does not follow symlinks, so nothing Firecracker planted leads outside.
        gone_is_fine(std::fs::remove_dir_all(self.jail_dir()))?;
        for dir in self.cgroup_dirs()? {
            gone_is_fine(std::fs::remove_dir(&dir))
                .map_err(|e| std::io::Error::new(e.kind(), format!("remove cgroup {}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// The jailer's arguments, then `--`, then `firecracker_args` (check [`Jail::validate`] first).
    pub fn args(&self, firecracker_args: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--id", self.id.clone().into());
        push("--exec-file", self.exec_file.clone().into());
        push("--uid", self.uid.to_string().into());
        push("--gid", self.gid.to_string().into());
        push("--chroot-base-dir", self.chroot_base.clone().into());
        push("--cgroup-version", self.cgroup_version.arg().into());
        if let Some(parent) = &self.parent_cgroup {
            push("--parent-cgroup", parent.into());
        }
        for (file, value) in &self.cgroups {
            push("--cgroup", format!("{file}={value}").into());
        }
        if let Some(netns) = &self.netns {
            push("--netns", netns.clone().into());
        }
        for (name, value) in &self.resource_limits {
            push("--resource-limit", format!("{name}={value}").into());
        }
        if self.daemonize {
            args.push("--daemonize".into());
        }
        if self.new_pid_ns {
            args.push("--new-pid-ns".into());
        }
        args.push("--".into());
        args.extend(firecracker_args.iter().cloned());
        args
    }
}

/// Copies `from` to a new file `to` with its mode, never writing through an existing file or
/// symlink at `to`.
fn copy_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::File::open(from)?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&source.metadata()?.permissions());
    let mut dest = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(to)?;
    std::io::copy(&mut source, &mut dest)?;
    Ok(())
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why [`binary_version`] found no version.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The binary could not be run.
    #[error("cannot run {} --version: {source}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not finish in time.
    #[error("{} --version did not finish within {after:?}", bin.display())]
    Timeout {
        /// The binary.
        bin: PathBuf,
        /// The time waited.
        after: Duration,
    },
    /// It ran but printed no `<Name> v<version>` first line, or failed.
    #[error("{} --version printed no version ({status}): {output:?}", bin.display())]
    Unrecognized {
        /// The binary.
        bin: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed (cut).
        output: String,
    },
}

/// `<bin> --version` → the version string (e.g. `1.16.1`), for start-up checks. Works for both
/// `firecracker` (`Firecracker v1.16.1`) and `jailer` (`Jailer v1.16.1`).
pub async fn binary_version(bin: &Path) -> Result<String, VersionError> {
    let run = tokio::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(VERSION_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(VersionError::Spawn { bin: bin.to_path_buf(), source }),
        Err(_) => return Err(VersionError::Timeout { bin: bin.to_path_buf(), after: VERSION_TIMEOUT }),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout.lines().next().and_then(parse_version_line).filter(|_| output.status.success());
    version.ok_or_else(|| VersionError::Unrecognized {
        bin: bin.to_path_buf(),
        status: output.status,
        output: stdout.chars().chain(String::from_utf8_lossy(&output.stderr).chars()).take(512).collect(),
    })
}

/// `Firecracker v1.16.1` → `1.16.1`.
fn parse_version_line(line: &str) -> Option<String> {
    let version = line.split_whitespace().find_map(|word| word.strip_prefix('v'))?;
    version.starts_with(|c: char| c.is_ascii_digit()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail(version: CgroupVersion) -> Jail {
        Jail {
            id: "vm-1".into(),
            exec_file: "/usr/local/bin/firecracker".into(),
            uid: 123456,
            gid: 123457,
            chroot_base: "/srv/rds/jail".into(),
            cgroup_version: version,
            parent_cgroup: Some("rds/vms".into()),
            cgroups: vec![],
            netns: Some("/var/run/netns/rds-vm-1".into()),
            daemonize: true,
            new_pid_ns: false,
            resource_limits: vec![("no-file".into(), 1024)],
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().expect("utf-8")).collect()
    }

    #[test]
    fn args_for_cgroup_v1() {
        let mut j = jail(CgroupVersion::V1);
        j.cgroups = vec![("memory.limit_in_bytes".into(), "268435456".into()), ("cpu.shares".into(), "512".into())];
        let fc = ["--api-sock", "/run/api.sock", "--no-seccomp"].map(OsString::from);
        assert_eq!(
            strings(j.args(&fc)),
            [
                "--id",
                "vm-1",
                "--exec-file",
                "/usr/local/bin/firecracker",
                "--uid",
                "123456",
                "--gid",
                "123457",
                "--chroot-base-dir",
                "/srv/rds/jail",
                "--cgroup-version",
                "1",
                "--parent-cgroup",
                "rds/vms",
                "--cgroup",
                "memory.limit_in_bytes=268435456",
                "--cgroup",
                "cpu.shares=512",
                "--netns",
                "/var/run/netns/rds-vm-1",
                "--resource-limit",
                "no-file=1024",
                "--daemonize",
                "--",
                "--api-sock",
                "/run/api.sock",
                "--no-seccomp",
            ]
        );
        assert_eq!(j.validate(), Ok(()));
    }

    #[test]
    fn args_for_cgroup_v2_without_optional_flags() {
        let mut j = jail(CgroupVersion::V2);
        j.cgroups = vec![("memory.max".into(), "268435456".into())];
        j.parent_cgroup = None;
        j.netns = None;
        j.daemonize = false;
        j.new_pid_ns = true;
        j.resource_limits = vec![];
        assert_eq!(
            strings(j.args(&[])),
            [
                "--id",
                "vm-1",
                "--exec-file",
                "/usr/local/bin/firecracker",
                "--uid",
                "123456",
                "--gid",
                "123457",
                "--chroot-base-dir",
                "/srv/rds/jail",
                "--cgroup-version",
                "2",
                "--cgroup",
                "memory.max=268435456",
                "--new-pid-ns",
                "--",
            ]
        );
        assert_eq!(j.parent_cgroup_or_default(), "firecracker");
    }

    #[test]
    fn root_host_path_and_pid_file_follow_the_jailer_layout() {
        let j = jail(CgroupVersion::V1);
        assert_eq!(j.jail_dir(), PathBuf::from("/srv/rds/jail/firecracker/vm-1"));
        assert_eq!(j.root(), PathBuf::from("/srv/rds/jail/firecracker/vm-1/root"));
        assert_eq!(j.host_path("/run/api.sock"), PathBuf::from("/srv/rds/jail/firecracker/vm-1/root/run/api.sock"));
        assert_eq!(j.host_path("vmlinux"), PathBuf::from("/srv/rds/jail/firecracker/vm-1/root/vmlinux"));
        assert_eq!(j.pid_file(), PathBuf::from("/srv/rds/jail/firecracker/vm-1/root/firecracker.pid"));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let base = jail(CgroupVersion::V1);
        let bad_ids = ["", "vm_1", "vm/1", "../x", "vm 1", &"a".repeat(65)];
        for id in bad_ids {
            let j = Jail { id: id.into(), ..base.clone() };
            assert_eq!(j.validate(), Err(JailError::Id(id.into())), "{id:?}");
        }
        assert_eq!(Jail { id: "a".repeat(64), ..base.clone() }.validate(), Ok(()));
        let j = Jail { exec_file: "firecracker".into(), ..base.clone() };
        assert_eq!(j.validate(), Err(JailError::NotAbsolute { field: "exec_file", path: "firecracker".into() }));
        let j = Jail { chroot_base: "srv".into(), ..base.clone() };
        assert_eq!(j.validate(), Err(JailError::NotAbsolute { field: "chroot_base", path: "srv".into() }));
        let j = Jail { netns: Some("netns/x".into()), ..base.clone() };
        assert_eq!(j.validate(), Err(JailError::NotAbsolute { field: "netns", path: "netns/x".into() }));
        let j = Jail { exec_file: "/usr/bin/..".into(), ..base.clone() };
        assert_eq!(j.validate(), Err(JailError::ExecFile("/usr/bin/..".into())));
        for parent in ["", "/abs", "a/../b", "./a", "a/./b", "a//b", "a/"] {
            let j = Jail { parent_cgroup: Some(parent.into()), ..base.clone() };
            assert_eq!(j.validate(), Err(JailError::ParentCgroup(parent.into())), "{parent:?}");
        }
        for (file, value) in
            [("memory", "1"), ("memory.max", ""), ("../memory.max", "1"), ("a.b=c", "1"), (".max", "1")]
        {
            let j = Jail { cgroups: vec![(file.into(), value.into())], ..base.clone() };
            assert_eq!(j.validate(), Err(JailError::Cgroup { file: file.into(), value: value.into() }), "{file:?}");
        }
        let j = Jail { resource_limits: vec![("nproc".into(), 1)], ..base.clone() };
        assert_eq!(j.validate(), Err(JailError::ResourceLimit("nproc".into())));
    }

    #[test]
    fn cgroup_dirs_follow_the_controllers_mounts() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu\\040acct cgroup rw,relatime,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        let mut j = jail(CgroupVersion::V1);
        j.cgroups = vec![
            ("memory.limit_in_bytes".into(), "1".into()),
            ("memory.swappiness".into(), "0".into()),
            ("cpuacct.x".into(), "1".into()),
        ];
        assert_eq!(
            j.cgroup_dirs_in(mounts),
            [
                PathBuf::from("/sys/fs/cgroup/memory/rds/vms/vm-1"),
                PathBuf::from("/sys/fs/cgroup/cpu acct/rds/vms/vm-1")
            ]
        );
        j.cgroup_version = CgroupVersion::V2;
        j.cgroups = vec![("memory.max".into(), "1".into()), ("cpu.max".into(), "max".into())];
        assert_eq!(j.cgroup_dirs_in(mounts), [PathBuf::from("/sys/fs/cgroup/unified/rds/vms/vm-1")]);
        j.cgroups.clear();
        assert!(j.cgroup_dirs_in(mounts).is_empty());
    }

    #[test]
    fn link_in_hard_links_or_copies_into_the_jail_and_owns_writable_files() {
        use std::os::unix::fs::MetadataExt;
        let base = tempfile::tempdir().expect("tempdir");
        let mut j = Jail { chroot_base: base.path().to_path_buf(), ..jail(CgroupVersion::V1) };
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            // Without root, chown may only give a file to one's own ids.
            (j.uid, j.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        }
        let kernel = base.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel").expect("write");
        let linked = j.link_in(&kernel, "/vmlinux", false).expect("link the kernel");
        assert_eq!(linked, j.host_path("/vmlinux"));
        let (a, b) = (std::fs::metadata(&kernel).expect("stat"), std::fs::metadata(&linked).expect("stat"));
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "same filesystem: a hard link");
        assert_eq!(b.uid(), a.uid(), "a shared file keeps its owner");
        // An existing file is never replaced or written through.
        let again = j.link_in(&kernel, "vmlinux", false).expect_err("exists");
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        for bad in ["", "/", "../escape", "a/../../b", "./x"] {
            let err = j.link_in(&kernel, bad, false).expect_err("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }

        // /dev/shm is a tmpfs on most hosts: another filesystem, so a copy.
        let other = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
        let overlay = other.path().join("overlay.ext4");
        std::fs::write(&overlay, b"overlay").expect("write");
        let placed = j.link_in(&overlay, "/disks/overlay.ext4", true).expect("place the overlay");
        assert_eq!(std::fs::read(&placed).expect("read"), b"overlay");
        let meta = std::fs::metadata(&placed).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (j.uid, j.gid), "a writable file is the jail's");
        let source = std::fs::metadata(&overlay).expect("stat");
        if source.dev() != meta.dev() {
            assert_ne!(source.ino(), meta.ino());
        }
    }

    #[test]
    fn version_lines_parse() {
        assert_eq!(parse_version_line("Firecracker v1.16.1").as_deref(), Some("1.16.1"));
        assert_eq!(parse_version_line("Jailer v1.16.1").as_deref(), Some("1.16.1"));
        assert_eq!(parse_version_line("Firecracker version unknown"), None);
        assert_eq!(parse_version_line(""), None);
    }

    #[tokio::test]
    async fn binary_version_reports_a_binary_that_prints_no_version() {
        let err = binary_version(Path::new("/bin/true")).await.expect_err("no version line");
        assert!(matches!(err, VersionError::Unrecognized { .. }), "{err:?}");
        let err = binary_version(Path::new("/nonexistent/firecracker")).await.expect_err("missing");
        assert!(matches!(err, VersionError::Spawn { .. }), "{err:?}");
    }
}
