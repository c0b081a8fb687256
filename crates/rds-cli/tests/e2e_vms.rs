//! End-to-end: VM lifecycle, exec, run, files and cleanup through the real `rds serve`.

mod common;

use std::io::Read;

use common::Server;
use serde_json::json;

#[test]
fn exec_runs_as_uid_1000_and_streams_ndjson() {
    require_sandbox!();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    let r = s.exec(&id, "echo hello && id -u");
    assert_eq!(r["stdout"], "hello\n1000\n");
    assert_eq!(r["exitCode"], 0);

    let resp = s
        .req("POST", &format!("/v1/vms/{id}/exec"))
        .set("Accept", "application/x-ndjson")
        .send_json(json!({"cmd": "echo out; echo err >&2; exit 3"}))
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    let events: Vec<serde_json::Value> =
        resp.into_string().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.contains(&json!({"type": "stdout", "data": "out\n"})), "{events:?}");
    assert!(events.contains(&json!({"type": "stderr", "data": "err\n"})), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!((last["type"].as_str(), last["exitCode"].as_i64()), (Some("exit"), Some(3)));
}

#[test]
fn run_ts_returns_arbitrary_json_unmangled() {
    require_sandbox!();
    if rds_host::find_program("deno", &[]).is_none() {
        rds_testkit::skip("deno not installed");
        return;
    }
    let s = Server::start(&[]);
    let id = s.create_vm(512);
    let (st, r) = s.call(
        "POST",
        &format!("/v1/vms/{id}/run-ts"),
        Some(json!({"code": "result.set({a: [1, {b: null}], s: \"é\"})"})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], json!({"a": [1, {"b": null}], "s": "é"}));
    // The log records the call without env values.
    let (_, logs) = s.call("GET", &format!("/v1/vms/{id}/exec-logs?limit=5"), None);
    assert_eq!(logs["entries"][0]["kind"], "run-ts");
}

#[test]
fn upload_then_download_round_trips_a_tree_byte_for_byte() {
    require_sandbox!();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    let files = [("proj/a.txt", b"alpha\n".to_vec()), ("proj/sub/b.bin", (0..=255u8).cycle().take(70_000).collect())];
    let upload = rds_testkit::tar_gz(&files.iter().map(|(path, data)| (*path, &data[..])).collect::<Vec<_>>());
    let resp = s
        .req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace"))
        .set("Content-Type", "application/gzip")
        .send_bytes(&upload)
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(s.exec(&id, "cat /workspace/proj/a.txt")["stdout"], "alpha\n");

    let resp = s.req("GET", &format!("/v1/vms/{id}/files/download?path=/workspace/proj")).call().unwrap();
    assert_eq!(resp.header("content-type"), Some("application/gzip"));
    let mut gz = vec![];
    resp.into_reader().read_to_end(&mut gz).unwrap();
    let mut got = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        if e.header().entry_type().is_file() {
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            got.insert(path, data);
        }
    }
    for (path, data) in &files {
        let name = path.trim_start_matches("proj/");
        let found =
            got.iter().find(|(p, _)| p.ends_with(name)).unwrap_or_else(|| panic!("{name} missing in {:?}", got.keys()));
        assert_eq!(found.1, data, "{name} differs");
    }
}

#[test]
fn upload_refuses_traversal_and_symlink_entries_and_vm_stays_usable() {
    require_sandbox!();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    let traversal = rds_testkit::tar_gz_with(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`, so write the name into the raw header.
        h.as_old_mut().name[..4].copy_from_slice(b"../x");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    });
    let symlink = rds_testkit::tar_gz_with(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "link", "/etc/passwd").unwrap();
    });
    for (what, body) in [("traversal", traversal), ("symlink", symlink)] {
        let (st, err) = common::into_status_json(
            s.req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace"))
                .set("Content-Type", "application/gzip")
                .send_bytes(&body),
        );
        assert_eq!(st, 400, "{what}: {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {err}");
    }
    assert_eq!(s.exec(&id, "ls -A /workspace | wc -l; echo ok")["stdout"], "0\nok\n");
}

#[test]
fn stop_then_start_keeps_workspace_and_wrong_states_are_409() {
    require_sandbox!();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    let (st, _) = s.call("POST", &format!("/v1/vms/{id}/start"), None);
    assert_eq!(st, 409, "start of a RUNNING VM");
    s.exec(&id, "echo kept > /workspace/note");
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/stop"), None).0, 204);
    assert_eq!(s.call("GET", &format!("/v1/vms/{id}"), None).1["state"], "STOPPED");
    let (st, err) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "true"})));
    assert_eq!((st, err["error"]["code"].as_str()), (409, Some("conflict")), "exec on a STOPPED VM: {err}");
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/stop"), None).0, 409, "stop of a STOPPED VM");
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/start"), None).0, 204);
    assert_eq!(s.exec(&id, "cat /workspace/note")["stdout"], "kept\n");
}

#[test]
fn delete_leaves_no_mount_cgroup_process_or_directory() {
    require_sandbox!();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    let vm_dir = s.root.path().join("vms").join(&id);
    assert!(vm_dir.exists(), "VM dir {} should exist while running", vm_dir.display());
    assert!(!processes_mentioning(&id).is_empty(), "expected the VM's launcher process while running");
    assert!(!cgroup_dirs(&id).is_empty(), "expected cgroup dirs while running");

    assert_eq!(s.call("DELETE", &format!("/v1/vms/{id}"), None).0, 204);
    assert_eq!(s.call("GET", &format!("/v1/vms/{id}"), None).0, 404);
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&id))
        .map(str::to_string)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(cgroup_dirs(&id).is_empty(), "cgroups left: {:?}", cgroup_dirs(&id));
    assert!(processes_mentioning(&id).is_empty(), "processes left: {:?}", processes_mentioning(&id));
    assert!(!vm_dir.exists(), "VM dir left: {}", vm_dir.display());
    assert!(s.call("GET", "/v1/vms", None).1.as_array().unwrap().is_empty());
}

#[test]
fn memory_hog_is_oom_killed_in_its_cgroup_while_others_stay_healthy() {
    require_sandbox!();
    let s = Server::start(&[]);
    let hog = s.create_vm(64);
    let bystander = s.create_vm(256);
    let (st, r) = s.call(
        "POST",
        &format!("/v1/vms/{hog}/exec"),
        Some(json!({"cmd": "python3 -c 'a = bytearray(400 << 20)'", "timeoutMs": 60000})),
    );
    assert_eq!(st, 200, "{r}");
    let killed = r["signal"] == 9 || r["exitCode"] == 137 || r["oomKilled"] == true;
    assert!(killed, "hog was not OOM-killed: {r}");
    assert_ne!(r["exitCode"], 0, "{r}");
    assert_eq!(s.call("GET", "/v1/health", None).0, 200);
    assert_eq!(s.exec(&bystander, "echo fine")["stdout"], "fine\n");
    assert_eq!(s.exec(&hog, "echo alive")["stdout"], "alive\n");
}

/// Host pids whose command line or cgroup membership names `id`.
fn processes_mentioning(id: &str) -> Vec<String> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(id) || cgroup.contains(id) {
            out.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

/// Cgroup directories (any controller, v1 or v2) named after `id`.
fn cgroup_dirs(id: &str) -> Vec<String> {
    fn walk(dir: &std::path::Path, id: &str, depth: u32, out: &mut Vec<String>) {
        if depth == 0 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let p = e.path();
                if e.file_name().to_string_lossy().contains(id) {
                    out.push(p.display().to_string());
                }
                walk(&p, id, depth - 1, out);
            }
        }
    }
    let mut out = vec![];
    walk(std::path::Path::new("/sys/fs/cgroup"), id, 4, &mut out);
    out
}
