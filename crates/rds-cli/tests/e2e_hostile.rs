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
    // Uploading into the full disk is the caller's to fix: 409 naming the cause, not a 502.
    let resp = s
        .req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace"))
        .set("content-type", "application/gzip")
        .send_bytes(&rds_testkit::tar_gz(&[("more", &vec![7u8; 1 << 20])]));
    let (st, body) = common::into_status_json(resp);
    assert_eq!(st, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("No space left"), "{body}");
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

/// A fork bomb, a memory hog, a disk filler, an output flood and a busy loop run at once in one
/// VM while another VM's exec latency and the manager's health are sampled: every victim exec and
/// health check answers, each offender is stopped by its own limit and reported in its result,
/// and the offending VM still answers afterwards. The latencies are printed (no timing bounds).
#[test]
fn hostile_guests_are_contained_while_a_victim_vm_and_the_manager_keep_answering() {
    let s = server();
    let victim = s.create_vm(128);
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128, "diskSizeMb": 64})));
    assert_eq!(st, 201, "{vm}");
    let offender = vm["id"].as_str().unwrap().to_string();
    let count = "rm -f /workspace/fill; ls -d /proc/[0-9]* | wc -l";
    let processes_before = stdout(&s.exec(&offender, count)).to_string();
    let baseline = sample(&s, &victim, 20, || false);

    let attacks = [
        ("memory hog", "python3 -c 'a = bytearray(400 << 20); print(len(a))'", 20_000),
        (
            "disk filler",
            "dd if=/dev/zero of=/workspace/fill bs=1M count=200 2>&1 | grep -o 'No space left on device'",
            20_000,
        ),
        ("output flood", "yes flood", 4_000),
        ("busy loop", "while :; do :; done", 4_000),
        ("fork bomb", "bomb() { bomb | bomb; }; bomb", 4_000),
    ];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut running = Vec::new();
    for (name, cmd, timeout_ms) in attacks {
        let (url, key, id, done) = (s.url.clone(), s.key.clone(), offender.clone(), done.clone());
        running.push((
            name,
            std::thread::spawn(move || {
                let body = json!({"cmd": cmd, "timeoutMs": timeout_ms});
                let res = ureq::post(&format!("{url}/v1/vms/{id}/exec")).set("X-API-Key", &key).send_json(body);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                common::into_status_json(res)
            }),
        ));
        // The bomb goes last, once the others have their processes.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let under_attack = sample(&s, &victim, usize::MAX, || done.load(std::sync::atomic::Ordering::SeqCst) == 5);

    let mut results = serde_json::Map::new();
    for (name, thread) in running {
        let (st, r) = thread.join().expect("attack thread");
        assert_eq!(st, 200, "{name}: {r}");
        results.insert(name.to_string(), r);
    }
    let r = &results["memory hog"];
    assert!(r["oomKilled"] == true || r["signal"] == 9, "memory hog not stopped by the memory limit: {r}");
    let r = &results["disk filler"];
    assert_eq!(stdout(r), "No space left on device\n", "disk filler not stopped by the quota: {r}");
    let r = &results["output flood"];
    assert!(r["stdoutTruncated"] == true && r["timedOut"] == true, "output flood: {}", summary(r));
    assert!(stdout(r).len() <= 1 << 20, "output flood returned {} bytes", stdout(r).len());
    assert_eq!(results["busy loop"]["timedOut"], true, "busy loop: {}", results["busy loop"]);
    assert_eq!(results["fork bomb"]["timedOut"], true, "fork bomb: {}", summary(&results["fork bomb"]));
    // Contained: the offender answers again and its processes are gone; the victim is untouched.
    let r = s.exec(&offender, count);
    assert_eq!(stdout(&r), processes_before, "processes left in the offender: {r}");
    assert_eq!(stdout(&s.exec(&victim, "echo fine")), "fine\n");
    let (rss, peak) = s.rss_kib();
    println!(
        "{}",
        json!({
            "victimExecMs": {"baseline": baseline.figures(), "underAttack": under_attack.figures()},
            "managerRssKiB": rss, "managerPeakRssKiB": peak,
        })
    );
}

/// Victim exec and manager health latencies (ms).
struct Samples {
    exec: Vec<f64>,
    health: Vec<f64>,
}

impl Samples {
    fn figures(&self) -> Value {
        let at = |samples: &[f64], q: f64| (rds_testkit::percentile(&mut samples.to_vec(), q) * 10.0).round() / 10.0;
        json!({
            "n": self.exec.len(),
            "execP50": at(&self.exec, 0.5), "execP99": at(&self.exec, 0.99),
            "healthP50": at(&self.health, 0.5), "healthP99": at(&self.health, 0.99),
        })
    }
}

/// Runs `echo ok` in `vm` and checks `/v1/health`, `n` times or until `stop()`; each must answer.
fn sample(s: &Server, vm: &str, n: usize, stop: impl Fn() -> bool) -> Samples {
    let mut out = Samples { exec: Vec::new(), health: Vec::new() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while out.exec.len() < n && !stop() {
        assert!(std::time::Instant::now() < deadline, "the attacks never finished");
        let t = std::time::Instant::now();
        assert_eq!(stdout(&s.exec(vm, "echo ok")), "ok\n");
        out.exec.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        let (st, health) = s.call("GET", "/v1/health", None);
        assert_eq!(st, 200, "health under attack: {health}");
        out.health.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

/// An exec result without its (long) output.
fn summary(r: &Value) -> Value {
    let mut r = r.clone();
    for field in ["stdout", "stderr"] {
        if let Some(text) = r[field].as_str() {
            r[field] = json!(format!("{} bytes", text.len()));
        }
    }
    r
}
