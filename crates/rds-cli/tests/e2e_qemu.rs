//! End-to-end on the qemu runtime: the real `rds serve` with `RDS_RUNTIME=qemu` boots the real
//! guest image (Debian cloud kernel, initramfs, `rds-agent` as PID 1, the virtio-serial agent
//! channel) and is driven over HTTP. Needs root and QEMU; records a skip (`rds_testkit::skip`) otherwise. Boots are slow
//! under TCG, so one VM carries the whole flow.

mod common;

use std::io::Read;

use common::Server;
use rds_testkit::tar_gz;
use serde_json::json;

/// Processes whose command line mentions `needle` (QEMU and its vsock backend carry the VM id).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
fn core_flow_runs_on_the_real_guest_under_qemu() {
    let image = match common::qemu_image_dir() {
        Ok(d) => d,
        Err(reason) => {
            rds_testkit::skip(reason);
            return;
        }
    };
    let image = image.to_string_lossy().to_string();
    let mut s = Server::start(&[("RDS_RUNTIME", "qemu"), ("RDS_IMAGE_DIR", &image)]);
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 512})));
    assert_eq!(st, 201, "{vm}");
    assert_eq!((vm["runtime"].as_str(), vm["isolation"].as_str()), (Some("qemu"), Some("microvm")), "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();

    let r = s.exec(&id, "echo hello && id -u && uname -r");
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("hello\n1000\n"), "{r}");
    assert!(out.trim_end().ends_with("-cloud-amd64"), "not the Debian cloud kernel: {r}");

    for (lang, code) in
        [("ts", "result.set({a: [1, {b: null}], s: \"é\"})"), ("python", "result = {'a': [1, {'b': None}], 's': 'é'}")]
    {
        let (st, r) =
            s.call("POST", &format!("/v1/vms/{id}/run-{lang}"), Some(json!({"code": code, "timeoutMs": 60000})));
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["result"], json!({"a": [1, {"b": null}], "s": "é"}), "{lang}: {r}");
    }

    let payload: Vec<u8> = (0..=255u8).cycle().take(50_000).collect();
    let resp = s
        .req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace/proj"))
        .set("content-type", "application/gzip")
        .send_bytes(&tar_gz(&[("data.bin", &payload)]))
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = s.req("GET", &format!("/v1/vms/{id}/files/download?path=/workspace/proj/data.bin")).call().unwrap();
    let mut gz = Vec::new();
    resp.into_reader().read_to_end(&mut gz).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut back = Vec::new();
    entry.read_to_end(&mut back).unwrap();
    assert_eq!(back, payload);

    // The workspace lives on the VM's overlay disk and survives stop/start.
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/stop"), None).0, 204);
    assert_eq!(s.call("POST", &format!("/v1/vms/{id}/start"), None).0, 204);
    let r = s.exec(&id, "wc -c < /workspace/proj/data.bin");
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "50000", "{r}");

    // kill -9 of the manager: the VM keeps running and is re-adopted.
    s.restart();
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "RUNNING", "{vm}");
    assert_eq!(s.exec(&id, "echo again")["stdout"], "again\n");

    // Delete leaves no QEMU, no backend and no VM directory.
    assert_eq!(s.call("DELETE", &format!("/v1/vms/{id}"), None).0, 204);
    assert!(processes_mentioning(&id).is_empty(), "{:?}", processes_mentioning(&id));
    assert!(!s.root.path().join("vms").join(&id).exists());
}
