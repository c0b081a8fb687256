//! Small facts about the Linux host that the agent, the runtimes, the image builder and the tests
//! all read. It depends on nothing, so the guest agent can use it without pulling in host-side crates.

use std::path::{Path, PathBuf};

/// Where `program` is: itself when it names a path (contains a `/`), else the first regular file
/// of that name in a `PATH` directory, then in `extra_dirs`.
pub fn find_program(program: impl AsRef<Path>, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let program = program.as_ref();
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().cloned())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `$HOME/.cargo/bin`, where `cargo install` puts programs (such as vhost-device-vsock) that may
/// not be on the `PATH` of a service.
pub fn cargo_install_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root")).join(".cargo/bin")
}

/// True when [`find_program`] finds `program` on `PATH`.
pub fn on_path(program: &str) -> bool {
    find_program(program, &[]).is_some()
}

/// The fields of `/proc/<pid>/stat` rds reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 6: the session id.
    pub session: i32,
    /// Field 22: start time in clock ticks since boot; with the pid it names one process for good.
    pub start_time: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`; `None` when there is no such process (or `pid` is not positive).
    pub fn read(pid: i32) -> Option<ProcStat> {
        if pid <= 0 {
            return None;
        }
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses one `/proc/<pid>/stat` line.
    pub fn parse(line: &str) -> Option<ProcStat> {
        // The command name (field 2) is in parentheses and may itself hold spaces and ')', so
        // fields are counted from the last ')'.
        let rest = &line[line.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // fields[0] is field 3.
        Some(ProcStat {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// True unless the process is a zombie or dead: it still runs code.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_survives_hostile_command_names() {
        let line = "4242 (a) b) (c) S 1 4242 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = ProcStat::parse(line).unwrap();
        assert_eq!(stat, ProcStat { state: 'S', ppid: 1, session: 4240, start_time: 987654 });
        assert!(stat.is_live());
        assert!(!ProcStat::parse(&line.replace(" S ", " Z ")).unwrap().is_live());
        assert_eq!(ProcStat::parse("12 (short) S 1 2"), None);
    }

    #[test]
    fn own_process_is_readable_and_stable() {
        let me = ProcStat::read(std::process::id() as i32).unwrap();
        assert!(me.is_live());
        assert_eq!(ProcStat::read(std::process::id() as i32).unwrap().start_time, me.start_time);
        assert_eq!(ProcStat::read(0), None);
    }

    #[test]
    fn programs_are_found_by_name_or_path() {
        let sh = find_program("sh", &[]).expect("sh on PATH");
        assert!(sh.is_absolute());
        assert_eq!(find_program(&sh, &[]), Some(sh.clone()));
        assert_eq!(find_program("/nonexistent/sh", &[]), None);
        assert!(!on_path("rds-no-such-program"));
        let dir = std::env::temp_dir().join(format!("rds-host-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rds-extra-tool"), b"").unwrap();
        assert_eq!(find_program("rds-extra-tool", std::slice::from_ref(&dir)), Some(dir.join("rds-extra-tool")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source (e.g. a broken archive: the caller's fault).
    Read(std::io::Error),
    /// Writing the destination (e.g. a full disk: the host's fault).
    Write(std::io::Error),
}

/// Copies `from` into `to`, telling read failures apart from write failures (`std::io::copy`
/// reports both alike). Returns the bytes copied.
pub fn copy_apart(from: &mut impl std::io::Read, to: &mut impl std::io::Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}
