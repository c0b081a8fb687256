//! Integration tests of the sandbox runtime against the real `rds-agent` binary. Need root.
//!
//! The agent binary is `$RDS_AGENT_BIN`, else `<workspace>/target/debug/rds-agent` (built with
//! `cargo build -p rds-agent` if missing).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rds_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use rds_runtime::{process_start_time, Liveness, Runtime, RuntimeError, VmHandle};

use common::{exec, new_id, spec};

/// The agent binary, or why these tests cannot run.
fn agent_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("sandbox runtime tests need root".into());
        }
        common::agent_bin()
    })
    .clone()
}

macro_rules! require_env {
    () => {
        match agent_bin() {
            Ok(bin) => bin,
            Err(reason) => {
                rds_testkit::skip(reason);
                return;
            }
        }
    };
}

/// A storage root outside /tmp (the sandbox gets a fresh /tmp, so hiding must be proven elsewhere)
/// and a runtime whose cgroup parent is private to this test.
struct Env {
    storage: tempfile::TempDir,
    group: String,
    bin: PathBuf,
    rt: Option<SandboxRuntime>,
}

impl Env {
    fn new(bin: PathBuf) -> Self {
        std::fs::create_dir_all("/var/tmp").unwrap();
        let storage = tempfile::Builder::new().prefix("rds-sandbox-test-").tempdir_in("/var/tmp").unwrap();
        let group = format!("rds-test-{}", uuid::Uuid::new_v4().simple());
        let mut env = Env { storage, group, bin, rt: None };
        env.rt = Some(env.runtime());
        env
    }

    fn config(&self) -> SandboxConfig {
        SandboxConfig {
            storage_root: self.storage.path().to_path_buf(),
            agent_bin: self.bin.clone(),
            pids_max: 512,
            hide_paths: vec![],
            host_root: true,
        }
    }

    fn runtime(&self) -> SandboxRuntime {
        SandboxRuntime::with_cgroup_group(self.config(), &self.group).expect("sandbox runtime")
    }

    fn rt(&self) -> &SandboxRuntime {
        self.rt.as_ref().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: VMs a failed test left running, then the test's cgroup parents.
        let rt = self.rt.take().unwrap_or_else(|| self.runtime());
        let parents: Vec<PathBuf> =
            rt.cgroup_dirs("x").iter().filter_map(|d| d.parent().map(Path::to_path_buf)).collect();
        // A fresh thread: tests drop `Env` inside their own tokio runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(tokio_rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    tokio_rt.block_on(rt.remove_orphans(&HashSet::new()));
                }
            });
        });
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Asserts VM `id` left nothing behind: no directory, no cgroup, no launcher process.
fn assert_no_trace(rt: &SandboxRuntime, id: &str, handle: &VmHandle) {
    assert!(!rt.vm_dir(id).exists(), "VM dir {} still exists", rt.vm_dir(id).display());
    for d in rt.cgroup_dirs(id) {
        assert!(!d.exists(), "cgroup {} still exists", d.display());
    }
    assert_ne!(process_start_time(handle.pid), Some(handle.start_time), "launcher {} still runs", handle.pid);
}

/// Options of the mount at `mount_point` from a /proc/self/mountinfo dump (the last one wins).
fn mount_options<'a>(mountinfo: &'a str, mount_point: &str) -> &'a str {
    mountinfo
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&mount_point)).then(|| f[5])
        })
        .unwrap_or_else(|| panic!("no mount at {mount_point} in:\n{mountinfo}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_runs_user_code_as_uid_1000_isolated_from_the_host() {
    let bin = require_env!();
    let env = Env::new(bin);
    let rt = env.rt();
    let id = new_id();
    let handle = rt.start(&spec(&id, 256)).await.unwrap();

    let r = exec(rt, &id, "echo hello && id -u").await;
    assert_eq!(r.stdout, "hello\n1000\n", "{r:?}");
    assert_eq!(r.exit_code, Some(0));

    // Own pid namespace: only a handful of processes, PID 1 is rds-agent.
    let r = exec(rt, &id, "ls /proc | grep -c '^[0-9]'; tr '\\0' ' ' < /proc/1/cmdline").await;
    let mut lines = r.stdout.lines();
    let pids: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(pids < 10, "sandbox sees {pids} processes");
    assert!(lines.next().unwrap().contains("rds-agent"), "{r:?}");

    // Own network namespace with only loopback.
    let r = exec(rt, &id, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(r.stdout, "lo\n", "{r:?}");

    // Root, /usr and /etc are read-only mounts; /workspace and /tmp are writable.
    let info = exec(rt, &id, "cat /proc/self/mountinfo").await.stdout;
    for ro in ["/", "/usr", "/etc"] {
        if info.lines().any(|l| l.split_whitespace().nth(4) == Some(ro)) {
            assert!(mount_options(&info, ro).starts_with("ro"), "{ro} is not read-only:\n{info}");
        }
    }
    assert!(mount_options(&info, "/workspace").starts_with("rw"), "{info}");
    let r = exec(rt, &id, "touch /usr/rds-probe; echo $?; touch /etc/rds-probe; echo $?").await;
    assert_eq!(r.stdout.lines().map(|l| l != "0").collect::<Vec<_>>(), [true, true], "{r:?}");
    let r = exec(rt, &id, "echo data > /workspace/f && echo tmp > /tmp/f && cat /workspace/f /tmp/f").await;
    assert_eq!(r.stdout, "data\ntmp\n", "{r:?}");

    // The storage root (other VMs, sockets), the agent socket, /root and /home are invisible.
    let storage = env.storage.path().display();
    let sock = rt.agent_socket(&id);
    let r = exec(rt, &id, &format!("ls -A {storage} /root /home; test -e {} && echo SOCKET", sock.display())).await;
    assert!(!r.stdout.contains("vms") && !r.stdout.contains("SOCKET"), "{r:?}");
    assert_eq!(r.stdout.trim_end().lines().filter(|l| !l.ends_with(':') && !l.is_empty()).count(), 0, "{r:?}");

    let r = exec(rt, &id, "hostname").await;
    assert_eq!(r.stdout.trim(), format!("vm-{}", &id[..8]));

    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_start_keeps_the_workspace() {
    let bin = require_env!();
    let env = Env::new(bin);
    let rt = env.rt();
    let id = new_id();
    let handle = rt.start(&spec(&id, 128)).await.unwrap();
    exec(rt, &id, "echo kept > /workspace/note").await;
    rt.stop(&id, &handle).await.unwrap();
    assert!(matches!(rt.probe(&id, &handle).await, Liveness::Dead(_)), "a stopped VM must probe Dead");
    assert!(!rt.agent_socket(&id).exists());
    for d in rt.cgroup_dirs(&id) {
        assert!(!d.exists(), "stop left cgroup {}", d.display());
    }

    let handle = rt.start(&spec(&id, 128)).await.unwrap();
    let r = exec(rt, &id, "cat /workspace/note").await;
    assert_eq!(r.stdout, "kept\n");
    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed_while_other_sandboxes_stay_healthy() {
    let bin = require_env!();
    let env = Env::new(bin);
    let rt = env.rt();
    let (small, other) = (new_id(), new_id());
    let h_small = rt.start(&spec(&small, 64)).await.unwrap();
    let h_other = rt.start(&spec(&other, 128)).await.unwrap();
    let before = rt.oom_kills(&small).await.expect("oom counter readable");

    let r = exec(rt, &small, "python3 -c 'a = b\"x\" * (512 << 20); print(len(a))'").await;
    assert_ne!(r.exit_code, Some(0), "a 512 MiB allocation succeeded under a 64 MiB limit: {r:?}");
    assert!(!r.stdout.contains("536870912"), "{r:?}");
    let after = rt.oom_kills(&small).await.unwrap();
    assert!(after > before, "oom_kill counter did not move ({before} -> {after})");
    // The user code's OOM is not the VM's own: its PID 1 and agent were never a victim.
    assert_eq!(rt.agent_oom_kills(&small).await, Some(0), "the OOM took the VM's agent group");

    assert_eq!(exec(rt, &small, "echo still-here").await.stdout, "still-here\n");
    assert_eq!(exec(rt, &other, "echo fine").await.stdout, "fine\n");
    assert_eq!(rt.probe(&other, &h_other).await, Liveness::Alive);

    rt.destroy(&small, Some(&h_small)).await.unwrap();
    rt.destroy(&other, Some(&h_other)).await.unwrap();
    assert_no_trace(rt, &small, &h_small);
    assert_no_trace(rt, &other, &h_other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_is_readopted_after_runtime_restart_and_wrong_start_time_is_dead() {
    let bin = require_env!();
    let mut env = Env::new(bin);
    let id = new_id();
    let handle = env.rt().start(&spec(&id, 128)).await.unwrap();
    let persisted = serde_json::to_string(&handle).unwrap();

    // Simulate a manager restart: the runtime value goes away, the sandbox must not.
    drop(env.rt.take());
    env.rt = Some(env.runtime());
    let rt = env.rt();
    let handle: VmHandle = serde_json::from_str(&persisted).unwrap();
    assert_eq!(rt.probe(&id, &handle).await, Liveness::Alive);
    assert_eq!(exec(rt, &id, "echo again").await.stdout, "again\n");

    let impostor = VmHandle { start_time: handle.start_time + 1, ..handle.clone() };
    let verdict = rt.probe(&id, &impostor).await;
    assert!(matches!(verdict, Liveness::Dead(_)), "a handle with the wrong start time must be Dead: {verdict:?}");
    // The impostor handle must not have disturbed the real VM.
    assert_eq!(rt.probe(&id, &handle).await, Liveness::Alive);
    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_orphans_removes_unknown_vms_and_keeps_known_ones() {
    let bin = require_env!();
    let env = Env::new(bin);
    let rt = env.rt();
    let (orphan, known) = (new_id(), new_id());
    let h_orphan = rt.start(&spec(&orphan, 64)).await.unwrap();
    let h_known = rt.start(&spec(&known, 64)).await.unwrap();
    std::fs::write(rt.vm_dir(&orphan).join("data"), "x").unwrap();

    let removed = rt.remove_orphans(&HashSet::from([known.clone()])).await;
    assert_eq!(removed, vec![orphan.clone()]);
    assert_no_trace(rt, &orphan, &h_orphan);
    assert_eq!(rt.probe(&known, &h_known).await, Liveness::Alive);

    rt.destroy(&known, Some(&h_known)).await.unwrap();
    assert_no_trace(rt, &known, &h_known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_removes_everything_it_created() {
    let bin = require_env!();
    let mut env = Env::new(bin);
    env.bin = PathBuf::from("/bin/false");
    let rt = env.runtime();
    let id = new_id();
    let err = rt.start(&spec(&id, 64)).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Boot(_)), "{err}");
    assert!(!rt.vm_dir(&id).exists(), "failed start left {}", rt.vm_dir(&id).display());
    for d in rt.cgroup_dirs(&id) {
        assert!(!d.exists(), "failed start left cgroup {}", d.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rejects_ids_that_are_unsafe_in_paths() {
    let bin = require_env!();
    let env = Env::new(bin);
    let mut bad = spec(&new_id(), 64);
    bad.id = "../../etc".into();
    let err = env.rt().start(&bad).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidSpec(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_init_and_agent_hold_only_the_capabilities_they_need() {
    let bin = require_env!();
    let env = Env::new(bin);
    let rt = env.rt();
    let id = new_id();
    let handle = rt.start(&spec(&id, 128)).await.unwrap();
    // Every process of the sandbox, seen from the host through its cgroups (the VM's group and
    // its `agent` and `user` children).
    let mut pids: Vec<u32> = rt
        .cgroup_dirs(&id)
        .iter()
        .flat_map(|d| [d.clone(), d.join("agent"), d.join("user")])
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| l.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let cap = |pid: u32, field: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix(field)).map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
    };
    let agents: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(bin_name().as_bytes())
        })
        .collect();
    assert!(agents.len() >= 2, "expected the launcher, PID 1 and the agent among {pids:?}");
    let inside: Vec<u32> = agents.iter().copied().filter(|&p| p != handle.pid as u32).collect();
    for pid in inside {
        let eff = cap(pid, "CapEff:").unwrap();
        let bnd = cap(pid, "CapBnd:").unwrap();
        assert_eq!(eff & (1 << 21), 0, "pid {pid} holds CAP_SYS_ADMIN (CapEff {eff:x})");
        assert_eq!(eff & (1 << 12), 0, "pid {pid} holds CAP_NET_ADMIN (CapEff {eff:x})");
        assert_eq!(eff, 0x1ff, "pid {pid}: CapEff {eff:x}");
        assert_eq!(bnd, 0x1ff, "pid {pid}: CapBnd {bnd:x}");
    }
    // The agent still does its job with what it kept.
    let r = exec(rt, &id, "echo ok > /workspace/f && id -u && cat /workspace/f").await;
    assert_eq!(r.stdout, "1000\nok\n");
    rt.destroy(&id, Some(&handle)).await.unwrap();
    assert_no_trace(rt, &id, &handle);
}

/// The agent binary's path as its processes show it in `cmdline`.
fn bin_name() -> String {
    agent_bin().unwrap().to_string_lossy().into_owned()
}
