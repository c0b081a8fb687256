//! End-to-end: attacks run from inside sandbox VMs (as the untrusted code they host would run
//! them) through the real `rds serve`, each asserting the defence that stops it. See
//! docs/security.md for the layers these exercise.

mod common;

use common::Server;
use serde_json::{json, Value};

/// Fails the test (never skips) when the sandbox cannot run here.
fn server() -> Server {
    if let Some(reason) = common::skip_reason() {
        panic!("hostile-guest tests need the sandbox runtime: {reason}");
    }
    Server::start(&[])
}

fn exec_with(s: &Server, id: &str, body: Value) -> Value {
    let (st, r) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(body));
    assert_eq!(st, 200, "exec: {r}");
    r
}

fn stdout(r: &Value) -> &str {
    r["stdout"].as_str().unwrap_or_default()
}

#[test]
fn host_files_outside_the_image_are_invisible() {
    let s = server();
    // A file only the host has, outside the manager's storage root.
    let marker_dir = tempfile::Builder::new().prefix("rds-hostile-").tempdir_in("/var/tmp").unwrap();
    let marker = marker_dir.path().join("host-secret");
    std::fs::write(&marker, "host secret").unwrap();
    let id = s.create_vm(128);
    let storage = s.root.path().display().to_string();
    let r = s.exec(
        &id,
        &format!(
            "for p in {marker} {dir} {storage} {storage}/rds.db /work /root/.cargo /var/lib/rds /usr/local/cargo /usr/local/bin/cargo-nextest; do \
               test -e $p && echo VISIBLE:$p; done; \
             cat {marker} 2>&1; grep -h PRETTY_NAME /etc/os-release; echo done",
            marker = marker.display(),
            dir = marker_dir.path().display(),
        ),
    );
    let out = stdout(&r);
    assert!(!out.contains("VISIBLE"), "host paths visible inside the VM:\n{out}");
    assert!(!out.contains("host secret"), "{out}");
    assert!(out.contains("Debian"), "the root is not the guest image:\n{out}");
    assert!(out.ends_with("done\n"), "{r}");
    // The root is the image, read-only, even for the agent's own files.
    let r = s.exec(&id, "touch /etc/x 2>&1; touch /usr/bin/x 2>&1; echo end");
    assert!(
        stdout(&r).matches("Read-only file system").count() == 2
            || stdout(&r).matches("Permission denied").count() == 2,
        "{r}"
    );
}

#[test]
fn each_vm_has_its_own_host_uid_range_and_no_new_user_namespaces() {
    let s = server();
    let a = s.create_vm(128);
    let b = s.create_vm(128);
    let map_of = |id: &str| {
        let r = s.exec(id, "id -u; cat /proc/self/uid_map");
        let out = stdout(&r).to_string();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("1000"), "{r}");
        let fields: Vec<u64> =
            lines.next().unwrap_or_default().split_whitespace().filter_map(|f| f.parse().ok()).collect();
        assert_eq!(fields.len(), 3, "uid_map: {out}");
        assert_eq!((fields[0], fields[2]), (0, 65536), "{out}");
        fields[1]
    };
    let (base_a, base_b) = (map_of(&a), map_of(&b));
    assert_ne!(base_a, base_b, "two VMs share a host uid range");
    assert!(base_a >= 1 << 20 && base_b >= 1 << 20, "uid ranges overlap ordinary host accounts: {base_a} {base_b}");

    // New user namespaces (the door to mounts, nft, io_uring...) are refused to user code.
    let r = s.exec(&a, "unshare -U true; echo rc=$?; unshare -Ur true; echo rc=$?");
    assert!(stdout(&r).contains("rc=1") && !stdout(&r).contains("rc=0"), "unshare -U succeeded: {r}");
    let r = s.exec(
        &a,
        "python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); \
         print(l.unshare(0x10000000), os.strerror(ctypes.get_errno()))'",
    );
    assert_eq!(stdout(&r), "-1 Operation not permitted\n", "{r}");
}

#[test]
fn keyrings_and_inotify_limits_are_per_vm() {
    let s = server();
    let a = s.create_vm(128);
    let b = s.create_vm(128);
    // The kernel keyring is out of reach (seccomp), so no key can be shared or invalidated.
    let r = s.exec(
        &a,
        "python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); \
         r=l.syscall(248, b\"user\", b\"rds-test\", b\"x\", 1, -4); print(r, os.strerror(ctypes.get_errno()))'",
    );
    assert_eq!(stdout(&r), "-1 Operation not permitted\n", "add_key: {r}");
    // VM a takes every inotify instance its user may have and holds them...
    let hog = "nohup python3 -c 'import ctypes,time; l=ctypes.CDLL(None); \
               fds=[l.inotify_init() for _ in range(1000)]; \
               open(\"/tmp/held\",\"w\").write(str(sum(f>=0 for f in fds))); time.sleep(600)' >/dev/null 2>&1 &
               for i in $(seq 100); do test -s /tmp/held && break; sleep 0.1; done; cat /tmp/held";
    let r = s.exec(&a, hog);
    let held: u32 = stdout(&r).trim().parse().unwrap_or_else(|_| panic!("{r}"));
    assert!(held > 0 && held < 1000, "the per-user inotify limit did not apply in VM a: {held}");
    // ...and VM b (and the host's own uid 1000) still get theirs.
    let r = s.exec(&b, "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init() >= 0)'");
    assert_eq!(stdout(&r), "True\n", "VM b lost inotify to VM a: {r}");
    let host = std::process::Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            "import ctypes; print(ctypes.CDLL(None).inotify_init() >= 0)",
        ])
        .output()
        .expect("setpriv");
    assert_eq!(String::from_utf8_lossy(&host.stdout), "True\n", "host uid 1000 lost inotify: {host:?}");
}

#[test]
fn filling_tmp_and_memory_never_kills_the_agent() {
    let s = server();
    let id = s.create_vm(128);
    // /tmp and /dev/shm are sized (memory/2, memory/4): the writer meets ENOSPC.
    let r = s.exec(
        &id,
        "dd if=/dev/zero of=/tmp/fill bs=1M count=300 2>&1 | grep -o 'No space left on device'; \
                     dd if=/dev/zero of=/dev/shm/fill bs=1M count=300 2>&1 | grep -o 'No space left on device'",
    );
    assert!(stdout(&r).matches("No space left on device").count() == 2, "{r}");
    // With /tmp and /dev/shm full, a memory hog is OOM-killed, never the agent.
    let r = exec_with(&s, &id, json!({"cmd": "python3 -c 'a = bytearray(400 * 1024 * 1024); print(len(a))'"}));
    assert_ne!(r["exitCode"], 0, "the hog was not stopped: {r}");
    let r = s.exec(&id, "rm /tmp/fill /dev/shm/fill; echo alive");
    assert_eq!(stdout(&r), "alive\n", "{r}");
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "RUNNING", "{vm}");
}

#[test]
fn workspace_quota_is_enforced_by_the_kernel() {
    let s = server();
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128, "diskSizeMb": 32})));
    assert_eq!(st, 201, "{vm}");
    assert_eq!(vm["diskSizeMb"], 32);
    let id = vm["id"].as_str().unwrap().to_string();
    let r = s.exec(
        &id,
        "dd if=/dev/zero of=/workspace/big bs=1M count=200 2>&1 | grep -o 'No space left on device'; ls -A /workspace",
    );
    assert!(stdout(&r).contains("No space left on device"), "{r}");
    assert!(!stdout(&r).contains("lost+found"), "{r}");
    // On the host the VM's disk is a sparse file that never grows past its size.
    let vm_dir = s.root.path().join("vms").join(&id);
    let du = std::process::Command::new("du").args(["-sm", "--apparent-size"]).arg(&vm_dir).output().unwrap();
    let mb: u64 = String::from_utf8_lossy(&du.stdout).split_whitespace().next().unwrap().parse().unwrap();
    assert!(mb <= 40, "the VM directory holds {mb} MiB for a 32 MiB disk");
    // Freed space is usable again; files persist across stop/start.
    let r =
        s.exec(&id, "rm /workspace/big && echo kept > /workspace/f && cat /workspace/f && stat -c %u:%g /workspace/f");
    assert_eq!(stdout(&r), "kept\n1000:1000\n", "{r}");
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/stop"), None).0, 204);
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/start"), None).0, 204);
    let r = s.exec(&id, "cat /workspace/f; stat -c %u:%g /workspace/f");
    assert_eq!(stdout(&r), "kept\n1000:1000\n", "{r}");
    // Bad sizes are refused with the field named.
    let (st, e) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128, "diskSizeMb": 1})));
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("diskSizeMb"), "{e}");
}

#[test]
fn a_timeout_kills_fork_bombs_and_setsid_escapes() {
    let s = server();
    let id = s.create_vm(256);
    let escape = "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & \
                  ( ( sleep 1001 >/dev/null 2>&1 < /dev/null & ) & ) ; \
                  bomb() { bomb | bomb & }; bomb; wait";
    let r = exec_with(&s, &id, json!({"cmd": escape, "timeoutMs": 3000}));
    assert_eq!(r["timedOut"], true, "{r}");
    // The next command runs, and nothing of the timed-out one is left.
    let r = s.exec(&id, "for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null); case $c in sleep|bash) echo $c;; esac; done | sort | uniq -c");
    let out = stdout(&r);
    assert!(!out.contains("sleep"), "escaped processes survived the timeout:\n{out}");
    // Only this command's own shells remain (itself and its pipeline's subshell), not a bomb.
    let shells: u32 = out.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(shells <= 3, "processes left:\n{out}");
}

#[test]
fn background_processes_outlive_a_normal_exec() {
    let s = server();
    let id = s.create_vm(128);
    // Not a timeout: a server started in the background keeps running for later commands.
    s.exec(&id, "nohup sleep 300 >/dev/null 2>&1 &");
    let r = s.exec(&id, "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -c '^sleep$'");
    assert_eq!(stdout(&r), "1\n", "{r}");
}
