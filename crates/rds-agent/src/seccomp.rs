//! The seccomp filter of a sandbox: a deny-list (default action allow, in the style of Docker's
//! default profile) that PID 1 installs on itself, so the agent and all user code inherit it.
//!
//! Denied syscalls fail with `EPERM`, except `clone3`, which fails with `ENOSYS`: its flags sit in
//! a struct a filter cannot read, and `ENOSYS` makes libc fall back to `clone`, whose flags it can.
//! `clone` and `unshare` are denied only with a namespace flag, `personality` only with a value
//! outside [`ALLOWED_PERSONALITIES`]. The filter kills a process that makes a syscall of another
//! ABI (i386 `int 0x80`, arm32), and on x86_64 fails every x32 syscall with `EPERM`: both use
//! other syscall numbers, which a deny-list keyed on the native numbers would let through.
//! `docs/security.md` explains the list.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Why the sandbox's seccomp filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter lists syscall numbers of x86_64 and aarch64 only.
    #[error("no seccomp filter is defined for the {0} architecture (only x86_64 and aarch64)")]
    UnsupportedArch(&'static str),
    /// seccompiler rejected the filter's rules.
    #[error("cannot compile the seccomp filter that {purpose}")]
    Compile {
        purpose: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter (or no_new_privs could not be set).
    #[error("cannot install the seccomp filter that {purpose}")]
    Install {
        purpose: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// When a listed syscall is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Every call.
    Always,
    /// Calls whose flags (argument 0) contain one of the given namespace flags.
    NamespaceFlags(&'static [u64]),
    /// Calls whose persona (argument 0) is not in [`ALLOWED_PERSONALITIES`].
    UnlistedPersonality,
}

/// A syscall the sandbox filter denies, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedSyscall {
    /// The syscall's name, as in `man 2`.
    pub name: &'static str,
    /// Its number on this architecture.
    pub number: i64,
    /// The errno a denied call fails with.
    pub errno: i32,
    /// Which calls are denied.
    pub when: Denial,
}

/// Every namespace flag `unshare` accepts: nothing in a sandbox needs a new namespace, and a new
/// user namespace would give user code capabilities over mounts, nftables and more.
pub const UNSHARE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWTIME as u64,
];

/// The namespace flags `clone` accepts: the same without `CLONE_NEWTIME`, whose bit is part of
/// the exit-signal byte (`CSIGNAL`) for `clone` (a time namespace needs `clone3` or `unshare`).
pub const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The `personality` arguments that stay allowed (Docker's set): `PER_LINUX` (0), `PER_LINUX32`
/// (0x8, what `linux32`/`setarch i686` set), `UNAME26` (0x20000, a 2.6-style `uname` for old
/// software), both together, and 0xffffffff, which only queries. Denied: flags that weaken the
/// process, such as `ADDR_NO_RANDOMIZE`, `READ_IMPLIES_EXEC`, `MMAP_PAGE_ZERO`, and foreign personas.
pub const ALLOWED_PERSONALITIES: [u32; 5] = [0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// `open_tree_attr` (Linux 6.15, the same number on every architecture); libc has no constant yet.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// x32 syscalls are x86_64 syscalls with this bit set in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const fn always(name: &'static str, number: i64) -> DeniedSyscall {
    DeniedSyscall { name, number, errno: libc::EPERM, when: Denial::Always }
}

/// The syscalls present on both architectures (numbers differ, names do not).
const COMMON: &[DeniedSyscall] = &[
    // Namespaces.
    DeniedSyscall {
        name: "clone",
        number: libc::SYS_clone,
        errno: libc::EPERM,
        when: Denial::NamespaceFlags(CLONE_NAMESPACE_FLAGS),
    },
    DeniedSyscall { name: "clone3", number: libc::SYS_clone3, errno: libc::ENOSYS, when: Denial::Always },
    DeniedSyscall {
        name: "unshare",
        number: libc::SYS_unshare,
        errno: libc::EPERM,
        when: Denial::NamespaceFlags(UNSHARE_NAMESPACE_FLAGS),
    },
    always("setns", libc::SYS_setns),
    // Kernel keyrings.
    always("keyctl", libc::SYS_keyctl),
    always("add_key", libc::SYS_add_key),
    always("request_key", libc::SYS_request_key),
    // eBPF and perf.
    always("bpf", libc::SYS_bpf),
    always("perf_event_open", libc::SYS_perf_event_open),
    // io_uring and userfaultfd.
    always("io_uring_setup", libc::SYS_io_uring_setup),
    always("io_uring_enter", libc::SYS_io_uring_enter),
    always("io_uring_register", libc::SYS_io_uring_register),
    always("userfaultfd", libc::SYS_userfaultfd),
    // Kernel modules and kexec.
    always("init_module", libc::SYS_init_module),
    always("finit_module", libc::SYS_finit_module),
    always("delete_module", libc::SYS_delete_module),
    always("kexec_load", libc::SYS_kexec_load),
    always("kexec_file_load", libc::SYS_kexec_file_load),
    // Mounts and the root directory.
    always("mount", libc::SYS_mount),
    always("umount2", libc::SYS_umount2),
    always("pivot_root", libc::SYS_pivot_root),
    always("chroot", libc::SYS_chroot),
    always("open_tree", libc::SYS_open_tree),
    always("open_tree_attr", SYS_OPEN_TREE_ATTR),
    always("move_mount", libc::SYS_move_mount),
    always("fsopen", libc::SYS_fsopen),
    always("fsconfig", libc::SYS_fsconfig),
    always("fsmount", libc::SYS_fsmount),
    always("fspick", libc::SYS_fspick),
    always("mount_setattr", libc::SYS_mount_setattr),
    // Clocks.
    always("settimeofday", libc::SYS_settimeofday),
    always("clock_settime", libc::SYS_clock_settime),
    always("clock_adjtime", libc::SYS_clock_adjtime),
    always("adjtimex", libc::SYS_adjtimex),
    // Host administration.
    always("reboot", libc::SYS_reboot),
    always("swapon", libc::SYS_swapon),
    always("swapoff", libc::SYS_swapoff),
    always("acct", libc::SYS_acct),
    always("syslog", libc::SYS_syslog),
    always("quotactl", libc::SYS_quotactl),
    always("quotactl_fd", libc::SYS_quotactl_fd),
    always("open_by_handle_at", libc::SYS_open_by_handle_at),
    always("name_to_handle_at", libc::SYS_name_to_handle_at),
    always("lookup_dcookie", libc::SYS_lookup_dcookie),
    always("vhangup", libc::SYS_vhangup),
    always("nfsservctl", libc::SYS_nfsservctl),
    DeniedSyscall {
        name: "personality",
        number: libc::SYS_personality,
        errno: libc::EPERM,
        when: Denial::UnlistedPersonality,
    },
];

/// Legacy syscalls only x86_64 has.
#[cfg(target_arch = "x86_64")]
const ARCH_ONLY: &[DeniedSyscall] = &[
    always("iopl", libc::SYS_iopl),
    always("ioperm", libc::SYS_ioperm),
    always("uselib", libc::SYS_uselib),
    always("ustat", libc::SYS_ustat),
    always("sysfs", libc::SYS_sysfs),
    always("_sysctl", libc::SYS__sysctl),
];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_ONLY: &[DeniedSyscall] = &[];

#[cfg(target_arch = "x86_64")]
const TARGET: Option<TargetArch> = Some(TargetArch::x86_64);
#[cfg(target_arch = "aarch64")]
const TARGET: Option<TargetArch> = Some(TargetArch::aarch64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const TARGET: Option<TargetArch> = None;

/// Every syscall the filter denies on this architecture, with the errno and condition.
pub fn denied_syscalls() -> impl Iterator<Item = &'static DeniedSyscall> {
    COMMON.iter().chain(ARCH_ONLY)
}

/// Builds the sandbox filter and installs it on every thread of the calling process (no_new_privs
/// is set too); processes started afterwards inherit it and can never remove it.
pub fn install() -> Result<(), SeccompError> {
    for (purpose, program) in programs()? {
        // TSYNC: a thread started before this call must not keep running unfiltered.
        seccompiler::apply_filter_all_threads(&program).map_err(|source| SeccompError::Install { purpose, source })?;
    }
    Ok(())
}

/// The BPF programs, each with what it is for. A seccompiler filter has one match action, so the
/// `EPERM` and `ENOSYS` denials are two programs; the kernel runs all installed programs and
/// applies the strictest answer, and no syscall is denied by more than one.
fn programs() -> Result<Vec<(&'static str, BpfProgram)>, SeccompError> {
    let arch = TARGET.ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    let mut programs = Vec::new();
    #[cfg(target_arch = "x86_64")]
    programs.push(("denies x32 syscalls", deny_x32()));
    for (purpose, errno) in [("denies syscalls with EPERM", libc::EPERM), ("answers clone3 with ENOSYS", libc::ENOSYS)]
    {
        let rules = denied_syscalls()
            .filter(|syscall| syscall.errno == errno)
            .map(|syscall| Ok((syscall.number, rules_for(syscall.when)?)))
            .collect::<Result<_, seccompiler::BackendError>>()
            .map_err(|source| SeccompError::Compile { purpose, source })?;
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)
            .map_err(|source| SeccompError::Compile { purpose, source })?;
        let program = BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { purpose, source })?;
        programs.push((purpose, program));
    }
    Ok(programs)
}

/// The rules under which a syscall matches (an empty list matches every call). Rules are ORed,
/// the conditions inside one rule ANDed. Arguments are compared as 32-bit values, as the kernel
/// reads them (`clone` and `unshare` flags above bit 31 are invalid, `personality` takes a u32).
fn rules_for(when: Denial) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let arg0 = |op, value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value);
    match when {
        Denial::Always => Ok(Vec::new()),
        // One rule per flag: "any of these bits set" is not a single masked comparison.
        Denial::NamespaceFlags(flags) => {
            flags.iter().map(|&flag| SeccompRule::new(vec![arg0(SeccompCmpOp::MaskedEq(flag), flag)?])).collect()
        }
        Denial::UnlistedPersonality => {
            let conditions = ALLOWED_PERSONALITIES
                .iter()
                .map(|&persona| arg0(SeccompCmpOp::Ne, u64::from(persona)))
                .collect::<Result<_, _>>()?;
            Ok(vec![SeccompRule::new(conditions)?])
        }
    }
}

/// A hand-written program (seccompiler matches exact syscall numbers only): x32 syscalls carry
/// the x86_64 audit arch but numbers with bit 30 set, so the main filter would allow them all.
/// Nothing in a sandbox is an x32 binary.
#[cfg(target_arch = "x86_64")]
fn deny_x32() -> BpfProgram {
    use seccompiler::sock_filter;
    // Classic BPF opcodes and `struct seccomp_data` offsets (linux/filter.h, linux/seccomp.h).
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const NR_OFFSET: u32 = 0;
    const ARCH_OFFSET: u32 = 4;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another ABI: allowed here, killed by the main filter's arch check.
        insn(JMP_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(LD_W_ABS, 0, 0, NR_OFFSET),
        insn(JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_syscall_is_listed_once() {
        let mut numbers: Vec<i64> = denied_syscalls().map(|s| s.number).collect();
        let mut names: Vec<&str> = denied_syscalls().map(|s| s.name).collect();
        let count = numbers.len();
        numbers.sort_unstable();
        numbers.dedup();
        names.sort_unstable();
        names.dedup();
        assert_eq!(numbers.len(), count, "a syscall number appears twice");
        assert_eq!(names.len(), count, "a syscall name appears twice");
    }

    #[test]
    fn programs_compile_within_the_kernel_limit() {
        let programs = programs().expect("the filter compiles on this architecture");
        let expected = if cfg!(target_arch = "x86_64") { 3 } else { 2 };
        assert_eq!(programs.len(), expected);
        for (purpose, program) in programs {
            // BPF_MAXINSNS in the kernel.
            assert!(!program.is_empty() && program.len() <= 4096, "{purpose}: {} instructions", program.len());
        }
    }
}
