//! The sandbox's seccomp filter, installed for real: the test binary runs itself again as a
//! helper that makes every probe twice, before and after `seccomp::install()`, and prints the
//! outcomes. The run before the filter is the control: a denial only counts if the host alone
//! does not already give the same errno. Probes use invalid arguments wherever a call that slipped
//! through would change something, so a broken filter fails the test without harming the host.
//! A second probe set starts a real agent after the filter and runs each language runtime in it.
//! Needs root (as another user most listed calls fail with EPERM anyway), util-linux `unshare`,
//! bash, python3, node and deno.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;
use std::sync::OnceLock;

mod common;

use common::Agent;
use http::StatusCode;
use rds_agent::seccomp::{self, Denial, ALLOWED_PERSONALITIES};
use serde_json::json;

/// Set in the helper's environment to the probe set it runs.
const HELPER_ENV: &str = "RDS_SECCOMP_PROBE_HELPER";
/// Probe set: raw syscalls and small process operations.
const SYSCALLS: &str = "syscalls";
/// Probe set: a real agent and the language runtimes.
const AGENT: &str = "agent";
/// The test the helper is started as; any test of this file would do.
const HELPER_TEST: &str = "listed_syscalls_fail_with_their_errno";

/// The namespace flags `clone` must not take (`CLONE_NEWTIME` cannot be passed to `clone`).
const CLONE_NAMESPACES: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];
/// The namespace flags `unshare` must not take.
const UNSHARE_NAMESPACES: [i32; 8] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWTIME,
];
/// Personas that weaken a process: ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, PER_BSD,
/// PER_LINUX32 | ADDR_NO_RANDOMIZE, and ADDR_NO_RANDOMIZE with a bit above the kernel's u32.
const DENIED_PERSONAS: [u64; 6] = [0x0040000, 0x0400000, 0x0100000, 0x0006, 0x0040008, (1 << 32) | 0x0040000];

const CONTROL: &str = "control";
const FILTERED: &str = "filtered";

/// What a probe observed.
enum Outcome {
    /// The call succeeded (its value does not matter).
    Ok,
    /// The call succeeded with this value.
    Value(i64),
    /// The call failed with this errno.
    Errno(i32),
    /// A child process exited with this code.
    Exit(i32),
    /// A child process was killed by this signal.
    Signal(i32),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Value(v) => write!(f, "ok {v}"),
            Outcome::Errno(e) => write!(f, "errno {e}"),
            Outcome::Exit(c) => write!(f, "exit {c}"),
            Outcome::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn syscall(nr: i64, args: [u64; 6]) -> Outcome {
    // SAFETY: every probe passes arguments the kernel validates or rejects; pointers are either
    // invalid (the kernel answers EFAULT) or point to live buffers of the probe.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if ret == -1 {
        Outcome::Errno(errno())
    } else {
        Outcome::Value(ret)
    }
}

/// All arguments invalid: null-page-free pointers that fault, fds and flags that are rejected.
const GARBAGE: [u64; 6] = [u64::MAX; 6];

/// Runs `child` in a forked child and reports how it ended. `child` only makes raw syscalls (the
/// helper may have more than one thread, so nothing that could wait on a lock held by another).
fn in_child(child: impl FnOnce() -> i32) -> Outcome {
    // SAFETY: the child runs only `child` (raw syscalls) and then _exit.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Outcome::Errno(errno());
    }
    if pid == 0 {
        let code = child();
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    wait(pid)
}

fn wait(pid: libc::pid_t) -> Outcome {
    let mut status = 0;
    // SAFETY: status is a live local.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Outcome::Errno(errno());
    }
    if libc::WIFEXITED(status) {
        Outcome::Exit(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Outcome::Signal(libc::WTERMSIG(status))
    } else {
        Outcome::Exit(-1)
    }
}

fn exit_code_of(result: libc::c_long) -> i32 {
    if result == -1 {
        errno()
    } else {
        0
    }
}

fn personality(persona: u64) -> Outcome {
    // SAFETY: personality takes an integer; 0xffffffff only queries.
    let original = unsafe { libc::personality(0xffff_ffff) };
    let outcome = syscall(libc::SYS_personality, [persona, 0, 0, 0, 0, 0]);
    if matches!(outcome, Outcome::Value(_)) {
        // SAFETY: as above; restores what the probe changed.
        unsafe { libc::personality(original as libc::c_ulong) };
    }
    outcome
}

/// Tracer and tracee: the child asks to be traced and stops; this process continues it.
fn ptrace_a_child() -> Outcome {
    // SAFETY: the child makes raw syscalls only and then _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw syscalls in the forked child.
        unsafe {
            if libc::ptrace(
                libc::PTRACE_TRACEME,
                0 as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            ) == -1
            {
                libc::_exit(100 + errno());
            }
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: status is a live local.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || !libc::WIFSTOPPED(status) {
        return Outcome::Exit(-2);
    }
    // SAFETY: pid is our stopped tracee.
    if unsafe {
        libc::ptrace(libc::PTRACE_CONT, pid, std::ptr::null_mut::<libc::c_void>(), std::ptr::null_mut::<libc::c_void>())
    } == -1
    {
        let e = errno();
        // SAFETY: do not leave a stopped child behind.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait(pid);
        return Outcome::Errno(e);
    }
    wait(pid)
}

fn process_vm_readv_self() -> Outcome {
    let source = [7u8; 64];
    let mut target = [0u8; 64];
    let local = libc::iovec { iov_base: target.as_mut_ptr().cast(), iov_len: target.len() };
    let remote = libc::iovec { iov_base: source.as_ptr() as *mut libc::c_void, iov_len: source.len() };
    // SAFETY: both iovecs describe live buffers of this frame.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == -1 {
        Outcome::Errno(errno())
    } else if target == source {
        Outcome::Value(n as i64)
    } else {
        Outcome::Exit(-3)
    }
}

/// An i386 `getpid` through `int 0x80` in a child; the child exits 0 if it got its pid.
#[cfg(target_arch = "x86_64")]
fn i386_getpid_in_child() -> Outcome {
    in_child(|| {
        let ret: i32;
        // SAFETY: i386 getpid (20) takes no arguments; int 0x80 may clobber r8-r11 on old kernels.
        unsafe {
            std::arch::asm!("int 0x80", inlateout("eax") 20i32 => ret, out("r8") _, out("r9") _, out("r10") _, out("r11") _, options(nostack));
        }
        // SAFETY: getpid has no preconditions.
        if ret == unsafe { libc::getpid() } {
            0
        } else {
            1
        }
    })
}

/// What the agent runs under the filter, by route: the runtimes' own work (threads,
/// subprocesses, async file I/O) as uid 1000, through a real `rds-agent serve`.
const AGENT_WORK: &[(&str, &str, &str)] = &[
    ("bash", "/exec", "echo a | tr a b >/dev/null; (sleep 0 &); wait; read -r _ </proc/self/status"),
    ("python3", "/exec", "python3 -c 'import asyncio, subprocess, threading\nt = threading.Thread(target=print); t.start(); t.join()\nsubprocess.run([\"/bin/true\"], check=True)\nasyncio.run(asyncio.sleep(0))'"),
    ("node", "/exec", "node -e \"require('fs').promises.readFile('/proc/self/status').then(() => require('child_process').execFileSync('/bin/true'))\""),
    ("deno", "/exec", "deno eval \"await Deno.readTextFile('/proc/self/status'); new Deno.Command('/bin/true').outputSync();\""),
    ("run-python", "/run-python", "import threading\nt = threading.Thread(target=print); t.start(); t.join()"),
    ("run-js", "/run-js", "export default await Promise.resolve(1);"),
    ("run-ts", "/run-ts", "const n: number = 1; export default n;"),
];

/// Starts an agent (which inherits the helper's filter, if installed) and runs [`AGENT_WORK`].
fn agent_probes(phase: &str) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let agent = Agent::start().await.expect("root");
        for (label, route, code) in AGENT_WORK {
            let request = if *route == "/exec" { json!({"cmd": code}) } else { json!({"code": code}) };
            let reply = agent.post_json(route, &request).await;
            let outcome = if reply.status == StatusCode::OK {
                format!("exit {}", reply.json()["exitCode"])
            } else {
                format!("http {}", reply.status.as_u16())
            };
            println!("probe\t{phase}\tagent {label}\t{outcome}");
        }
        // The seccomp mode of the user's command (2: filtered), to show the filter is inherited.
        let status = agent.exec(json!({"cmd": "grep ^Seccomp: /proc/self/status"})).await;
        let mode = status["stdout"].as_str().and_then(|s| s.split_whitespace().nth(1)).unwrap_or("none").to_string();
        println!("probe\t{phase}\tagent seccomp mode\t{mode}");
    });
}

/// Every probe, by name. Names are unique; each probe runs once per phase.
fn probes() -> Vec<(String, Box<dyn Fn() -> Outcome>)> {
    let mut probes: Vec<(String, Box<dyn Fn() -> Outcome>)> = Vec::new();
    for syscall_entry in seccomp::denied_syscalls() {
        let nr = syscall_entry.number;
        match syscall_entry.when {
            Denial::Always => probes.push((syscall_entry.name.to_string(), Box::new(move || syscall(nr, GARBAGE)))),
            // Probed below with this file's own lists, not the module's.
            Denial::NamespaceFlags(_) | Denial::UnlistedPersonality => {}
        }
    }
    // Each flag plus one the kernel rejects with EINVAL before doing anything: CLONE_THREAD
    // without CLONE_SIGHAND for clone, CLONE_PARENT (unknown to unshare) for unshare.
    for (name, nr, flags, poison) in [
        ("clone", libc::SYS_clone, &CLONE_NAMESPACES[..], libc::CLONE_THREAD),
        ("unshare", libc::SYS_unshare, &UNSHARE_NAMESPACES[..], libc::CLONE_PARENT),
    ] {
        for &flag in flags {
            probes.push((
                format!("{name}({flag:#x})"),
                Box::new(move || syscall(nr, [(flag | poison) as u64, 0, 0, 0, 0, 0])),
            ));
        }
    }
    for persona in DENIED_PERSONAS {
        probes.push((format!("personality({persona:#x})"), Box::new(move || personality(persona))));
    }
    for persona in ALLOWED_PERSONALITIES.iter().map(|&p| u64::from(p)).chain([1 << 32]) {
        probes.push((format!("allowed personality({persona:#x})"), Box::new(move || personality(persona))));
    }
    probes.push((
        "unshare(CLONE_NEWUSER) in a child".into(),
        // SAFETY: raw syscall in a single-threaded child.
        Box::new(|| in_child(|| exit_code_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long))),
    ));
    probes.push((
        "exec unshare -U true".into(),
        Box::new(|| match Command::new("unshare").args(["-U", "true"]).stderr(std::process::Stdio::null()).status() {
            Ok(status) => status.code().map_or(Outcome::Exit(-1), Outcome::Exit),
            Err(e) => Outcome::Errno(e.raw_os_error().unwrap_or(-1)),
        }),
    ));
    probes.push(("thread".into(), Box::new(|| Outcome::Value(std::thread::spawn(|| 42i64).join().unwrap_or(-1)))));
    probes.push(("fork".into(), Box::new(|| in_child(|| 7))));
    probes.push((
        "clone without namespace flags".into(),
        Box::new(|| {
            // SAFETY: fork-like clone (no CLONE_VM, no new stack); the child only calls _exit.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as u64, 0u64, 0u64, 0u64, 0u64) };
            match pid {
                -1 => Outcome::Errno(errno()),
                // SAFETY: leaving the child at once.
                0 => unsafe { libc::_exit(9) },
                pid => wait(pid as libc::pid_t),
            }
        }),
    ));
    probes.push((
        "exec /bin/true".into(),
        Box::new(|| match Command::new("/bin/true").status() {
            Ok(status) => status.code().map_or(Outcome::Exit(-1), Outcome::Exit),
            Err(e) => Outcome::Errno(e.raw_os_error().unwrap_or(-1)),
        }),
    ));
    probes.push((
        "socket(AF_INET)".into(),
        Box::new(|| {
            // SAFETY: plain socket creation; closed at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd == -1 {
                return Outcome::Errno(errno());
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            Outcome::Ok
        }),
    ));
    probes.push((
        "mmap".into(),
        Box::new(|| {
            // SAFETY: a fresh anonymous mapping, unmapped at once.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    65536,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Outcome::Errno(errno());
            }
            // SAFETY: p is the mapping made above.
            unsafe { libc::munmap(p, 65536) };
            Outcome::Ok
        }),
    ));
    probes.push(("ptrace a child".into(), Box::new(ptrace_a_child)));
    probes.push(("process_vm_readv self".into(), Box::new(process_vm_readv_self)));
    #[cfg(target_arch = "x86_64")]
    {
        probes.push(("x32 getpid".into(), Box::new(|| syscall(libc::SYS_getpid | 0x4000_0000, [0; 6]))));
        probes.push(("i386 getpid".into(), Box::new(i386_getpid_in_child)));
    }
    probes
}

/// The helper: control run, filter, filtered run; one line per probe and phase, then exit.
fn helper_main(set: &str) -> ! {
    // SAFETY: no preconditions. A session of its own leaves the helper without a controlling
    // terminal, so a vhangup that got through would hang up nothing.
    if unsafe { libc::setsid() } == -1 {
        println!("helper-error\tsetsid: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    // libtest has printed "test <name> ... " without a newline.
    println!();
    let phase = |phase: &str| {
        if set == AGENT {
            agent_probes(phase);
            return AGENT_WORK.len() + 1;
        }
        let probes = probes();
        for (name, probe) in &probes {
            println!("probe\t{phase}\t{name}\t{}", probe());
        }
        probes.len()
    };
    phase(CONTROL);
    if let Err(e) = seccomp::install() {
        println!("helper-error\tinstall: {e} ({:?})", std::error::Error::source(&e));
        std::process::exit(2);
    }
    let count = phase(FILTERED);
    println!("helper-done\t{count}");
    std::process::exit(0);
}

/// Outcomes by (phase, probe name), from one helper run per test process.
struct Report(BTreeMap<(String, String), String>);

impl Report {
    fn get(&self, phase: &str, name: &str) -> &str {
        self.0
            .get(&(phase.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("the helper reported no {phase} outcome for `{name}`"))
    }

    /// `name` fails with `errno` under the filter, and the host alone does not give that errno.
    fn assert_denied(&self, name: &str, errno: i32) {
        let expected = format!("errno {errno}");
        let control = self.get(CONTROL, name);
        assert_ne!(control, expected, "`{name}` already fails with errno {errno} without the filter on this host, so the test cannot tell the filter's answer; run it as root on a host that allows the call");
        assert_eq!(self.get(FILTERED, name), expected, "`{name}` under the filter (without it: {control})");
    }

    /// `name` gives `expected` with and without the filter.
    fn assert_allowed(&self, name: &str, expected: &str) {
        assert_eq!(self.get(CONTROL, name), expected, "`{name}` without the filter");
        assert_eq!(self.get(FILTERED, name), expected, "`{name}` under the filter");
    }
}

/// The outcomes of probe set `set` ([`SYSCALLS`] or [`AGENT`]), from one helper run per set and
/// test process.
fn report(set: &'static str) -> &'static Report {
    if let Ok(set) = std::env::var(HELPER_ENV) {
        helper_main(&set);
    }
    static REPORTS: [OnceLock<Report>; 2] = [OnceLock::new(), OnceLock::new()];
    REPORTS[usize::from(set == AGENT)].get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root: as another user most listed syscalls fail with EPERM without any filter, so the filter's denial could not be told apart");
        let exe = std::env::current_exe().expect("path of the test binary");
        let output = Command::new(&exe).args(["--exact", HELPER_TEST, "--nocapture", "--test-threads=1"]).env(HELPER_ENV, set).output().expect("start the probe helper");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let failure = || format!("probe helper {}\nstdout:\n{stdout}\nstderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{}", failure());
        let mut outcomes = BTreeMap::new();
        let mut done = None;
        for line in stdout.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields[..] {
                ["probe", phase, name, outcome] => {
                    outcomes.insert((phase.to_string(), name.to_string()), outcome.to_string());
                }
                ["helper-done", count] => done = Some(count.parse::<usize>().expect("probe count")),
                _ => {}
            }
        }
        let count = done.unwrap_or_else(|| panic!("the helper did not finish: {}", failure()));
        assert_eq!(outcomes.len(), 2 * count, "each probe reported once per phase: {}", failure());
        Report(outcomes)
    })
}

#[test]
fn listed_syscalls_fail_with_their_errno() {
    let report = report(SYSCALLS);
    for syscall in seccomp::denied_syscalls().filter(|s| s.when == Denial::Always) {
        report.assert_denied(syscall.name, syscall.errno);
    }
}

#[test]
fn clone3_answers_enosys_so_libc_falls_back_to_clone() {
    let clone3 = seccomp::denied_syscalls().find(|s| s.name == "clone3").expect("clone3 is listed");
    assert_eq!(clone3.errno, libc::ENOSYS);
    report(SYSCALLS).assert_denied("clone3", libc::ENOSYS);
    // glibc creates threads and spawns processes with clone3 first; both still work.
    report(SYSCALLS).assert_allowed("thread", "ok 42");
    report(SYSCALLS).assert_allowed("exec /bin/true", "exit 0");
}

#[test]
fn every_namespace_flag_is_denied_on_clone_and_unshare() {
    let report = report(SYSCALLS);
    for (name, flags) in [("clone", &CLONE_NAMESPACES[..]), ("unshare", &UNSHARE_NAMESPACES[..])] {
        for flag in flags {
            report.assert_denied(&format!("{name}({flag:#x})"), libc::EPERM);
        }
    }
}

#[test]
fn a_new_user_namespace_is_denied_in_children_and_exec_ed_programs() {
    let report = report(SYSCALLS);
    assert_eq!(
        report.get(CONTROL, "unshare(CLONE_NEWUSER) in a child"),
        "exit 0",
        "without the filter root can create a user namespace"
    );
    assert_eq!(report.get(FILTERED, "unshare(CLONE_NEWUSER) in a child"), format!("exit {}", libc::EPERM));
    assert_eq!(
        report.get(CONTROL, "exec unshare -U true"),
        "exit 0",
        "util-linux `unshare -U true` must work here without the filter"
    );
    assert_ne!(report.get(FILTERED, "exec unshare -U true"), "exit 0", "`unshare -U` ran under the filter");
}

#[test]
fn personality_allows_only_harmless_personas() {
    let report = report(SYSCALLS);
    for persona in DENIED_PERSONAS {
        report.assert_denied(&format!("personality({persona:#x})"), libc::EPERM);
    }
    for persona in ALLOWED_PERSONALITIES.iter().map(|&p| u64::from(p)).chain([1 << 32]) {
        let name = format!("allowed personality({persona:#x})");
        assert!(
            report.get(FILTERED, &name).starts_with("ok "),
            "`{name}` under the filter: {}",
            report.get(FILTERED, &name)
        );
    }
}

#[test]
fn ordinary_work_and_debugging_still_run_under_the_filter() {
    let report = report(SYSCALLS);
    report.assert_allowed("fork", "exit 7");
    report.assert_allowed("clone without namespace flags", "exit 9");
    report.assert_allowed("thread", "ok 42");
    report.assert_allowed("exec /bin/true", "exit 0");
    report.assert_allowed("socket(AF_INET)", "ok");
    report.assert_allowed("mmap", "ok");
    report.assert_allowed("ptrace a child", "exit 0");
    report.assert_allowed("process_vm_readv self", "ok 64");
}

#[test]
fn the_agent_and_language_runtimes_run_under_the_filter() {
    let report = report(AGENT);
    for (label, _, _) in AGENT_WORK {
        let name = format!("agent {label}");
        let control = report.get(CONTROL, &name);
        assert_eq!(control, "exit 0", "`{name}` fails even without the filter ({control}); the runtime must be installed and work on the test host");
        assert_eq!(report.get(FILTERED, &name), "exit 0", "`{name}` under the filter");
    }
    assert_eq!(report.get(CONTROL, "agent seccomp mode"), "0", "the test host runs the agent without seccomp");
    assert_eq!(report.get(FILTERED, "agent seccomp mode"), "2", "the agent's commands inherit the filter");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_and_i386_syscalls_cannot_bypass_the_list() {
    let report = report(SYSCALLS);
    report.assert_denied("x32 getpid", libc::EPERM);
    assert_eq!(
        report.get(CONTROL, "i386 getpid"),
        "exit 0",
        "int 0x80 must work without the filter (CONFIG_IA32_EMULATION)"
    );
    assert_eq!(report.get(FILTERED, "i386 getpid"), format!("signal {}", libc::SIGSYS));
}

#[test]
fn the_list_covers_what_the_sandbox_must_deny() {
    use libc::*;
    let mut required: Vec<(&str, i64)> = vec![
        ("clone", SYS_clone),
        ("clone3", SYS_clone3),
        ("unshare", SYS_unshare),
        ("setns", SYS_setns),
        ("keyctl", SYS_keyctl),
        ("add_key", SYS_add_key),
        ("request_key", SYS_request_key),
        ("bpf", SYS_bpf),
        ("perf_event_open", SYS_perf_event_open),
        ("io_uring_setup", SYS_io_uring_setup),
        ("io_uring_enter", SYS_io_uring_enter),
        ("io_uring_register", SYS_io_uring_register),
        ("userfaultfd", SYS_userfaultfd),
        ("init_module", SYS_init_module),
        ("finit_module", SYS_finit_module),
        ("delete_module", SYS_delete_module),
        ("kexec_load", SYS_kexec_load),
        ("kexec_file_load", SYS_kexec_file_load),
        ("mount", SYS_mount),
        ("umount2", SYS_umount2),
        ("pivot_root", SYS_pivot_root),
        ("chroot", SYS_chroot),
        ("open_tree", SYS_open_tree),
        ("open_tree_attr", 467),
        ("move_mount", SYS_move_mount),
        ("fsopen", SYS_fsopen),
        ("fsconfig", SYS_fsconfig),
        ("fsmount", SYS_fsmount),
        ("fspick", SYS_fspick),
        ("mount_setattr", SYS_mount_setattr),
        ("settimeofday", SYS_settimeofday),
        ("clock_settime", SYS_clock_settime),
        ("clock_adjtime", SYS_clock_adjtime),
        ("adjtimex", SYS_adjtimex),
        ("reboot", SYS_reboot),
        ("swapon", SYS_swapon),
        ("swapoff", SYS_swapoff),
        ("acct", SYS_acct),
        ("syslog", SYS_syslog),
        ("quotactl", SYS_quotactl),
        ("quotactl_fd", SYS_quotactl_fd),
        ("open_by_handle_at", SYS_open_by_handle_at),
        ("name_to_handle_at", SYS_name_to_handle_at),
        ("lookup_dcookie", SYS_lookup_dcookie),
        ("vhangup", SYS_vhangup),
        ("nfsservctl", SYS_nfsservctl),
        ("personality", SYS_personality),
    ];
    #[cfg(target_arch = "x86_64")]
    required.extend([
        ("iopl", SYS_iopl),
        ("ioperm", SYS_ioperm),
        ("uselib", SYS_uselib),
        ("ustat", SYS_ustat),
        ("sysfs", SYS_sysfs),
        ("_sysctl", SYS__sysctl),
    ]);
    required.sort_unstable();
    let mut listed: Vec<(&str, i64)> = seccomp::denied_syscalls().map(|s| (s.name, s.number)).collect();
    listed.sort_unstable();
    assert_eq!(listed, required);
    for syscall in seccomp::denied_syscalls() {
        let errno = if syscall.name == "clone3" { ENOSYS } else { EPERM };
        assert_eq!(syscall.errno, errno, "{}", syscall.name);
    }
    // ptrace and process_vm_readv/writev stay allowed: the pid and user namespaces confine them.
    assert!(!listed.iter().any(|(name, _)| name.starts_with("ptrace") || name.starts_with("process_vm")));
}
