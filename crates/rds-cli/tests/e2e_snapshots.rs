//! End-to-end: snapshots through the real `rds serve` on the sandbox runtime (disk snapshots of
//! `/workspace`): take, list by scope, start VMs from one, delete, and every refusal.

mod common;

use common::Server;
use serde_json::json;

#[test]
fn a_snapshot_restores_the_files_it_saw_into_independent_vms() {
    require_sandbox!();
    let s = Server::start(&[]);
    let source = s.create_vm(256);
    s.exec(&source, "echo before > /workspace/state.txt && mkdir -p /workspace/d && echo kept > /workspace/d/f");

    // The original sends no body; our includeMemory defaults to what the runtime can (disk here).
    let (st, snap) = s.call("POST", &format!("/v1/vms/{source}/snapshots"), None);
    assert_eq!(st, 201, "{snap}");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    assert!(snap_id.starts_with("snap-"), "{snap}");
    assert_eq!(snap["kind"], "user_overlay");
    assert_eq!(snap["content"], "disk");
    assert_eq!(snap["state"], "ready");
    assert_eq!(snap["sourceVmId"], source.as_str());
    assert_eq!(snap["hasOverlay"], true);
    assert!(snap["sizeBytes"].as_u64().unwrap() > 0, "{snap}");

    // The source changes after the snapshot; the snapshot does not.
    s.exec(&source, "echo after > /workspace/state.txt && rm -r /workspace/d");

    let mut clones = Vec::new();
    for field in ["userOverlaySnapshotId", "snapshotId"] {
        let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, field: snap_id})));
        assert_eq!(st, 201, "{field}: {vm}");
        assert_eq!(vm["provisionMode"], "snapshot", "{vm}");
        assert_eq!(vm["snapshotId"], snap_id.as_str());
        clones.push(vm["id"].as_str().unwrap().to_string());
    }
    for clone in &clones {
        let r = s.exec(clone, "cat /workspace/state.txt /workspace/d/f && stat -c %u /workspace/state.txt");
        assert_eq!(r["stdout"], "before\nkept\n1000\n", "{clone}");
    }
    // Clones are independent of each other and of the source.
    s.exec(&clones[0], "echo mine > /workspace/state.txt");
    assert_eq!(s.exec(&clones[1], "cat /workspace/state.txt")["stdout"], "before\n");
    assert_eq!(s.exec(&source, "cat /workspace/state.txt")["stdout"], "after\n");

    // A plain create boots.
    let (_, plain) = s.call("GET", &format!("/v1/vms/{source}"), None);
    assert_eq!(plain["provisionMode"], "boot");

    // Listed in the default scope and `all`, not in `internal`; readable by id.
    let ids = |scope: &str| -> Vec<String> {
        let (st, list) = s.call("GET", &format!("/v1/snapshots{scope}"), None);
        assert_eq!(st, 200, "{list}");
        list.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(""), std::slice::from_ref(&snap_id));
    assert_eq!(ids("?scope=all"), std::slice::from_ref(&snap_id));
    assert!(ids("?scope=internal").is_empty());
    let (st, _) = s.call("GET", "/v1/snapshots?scope=everything", None);
    assert_eq!(st, 400);
    let (st, got) = s.call("GET", &format!("/v1/snapshots/{snap_id}"), None);
    assert_eq!((st, got["id"].as_str()), (200, Some(snap_id.as_str())));

    // Deleting it removes its files; the clones keep running on their own copies.
    let dir = s.storage_root().join("snapshots").join(&snap_id);
    assert!(dir.is_dir());
    let (st, _) = s.call("DELETE", &format!("/v1/snapshots/{snap_id}"), None);
    assert_eq!(st, 204);
    assert!(!dir.exists());
    let (st, _) = s.call("GET", &format!("/v1/snapshots/{snap_id}"), None);
    assert_eq!(st, 404);
    assert_eq!(s.exec(&clones[1], "cat /workspace/d/f")["stdout"], "kept\n");
    let (st, gone) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "snapshotId": snap_id})));
    assert_eq!(st, 404, "{gone}");
}

#[test]
fn snapshot_refusals_name_the_problem_and_leave_nothing() {
    require_sandbox!();
    let s = Server::start(&[]);
    let id = s.create_vm(256);

    // The sandbox has no VM memory to save.
    let (st, r) = s.call("POST", &format!("/v1/vms/{id}/snapshots"), Some(json!({"includeMemory": true})));
    assert_eq!(st, 501, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("includeMemory"), "{r}");
    let (st, r) = s.call("POST", &format!("/v1/vms/{id}/snapshots"), Some(json!({"bogus": 1})));
    assert_eq!(st, 400, "{r}");

    // Only a RUNNING VM.
    let (st, _) = s.call("POST", &format!("/v1/vms/{id}/stop"), None);
    assert_eq!(st, 204);
    let (st, r) = s.call("POST", &format!("/v1/vms/{id}/snapshots"), None);
    assert_eq!(st, 409, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("RUNNING"), "{r}");
    let (st, _) = s.call("POST", "/v1/vms/no-such-vm/snapshots", None);
    assert_eq!(st, 404);

    // Ids that cannot be snapshots never reach a path; unknown ones are 404, and a refused
    // create leaves no VM behind.
    for (bad, status) in [("..%2F..%2Fetc", 400), ("snap-00000000-0000-0000-0000-000000000000", 404)] {
        let (st, r) = s.call("GET", &format!("/v1/snapshots/{bad}"), None);
        assert_eq!(st, status, "{bad}: {r}");
    }
    let before = s.call("GET", "/v1/vms", None).1.as_array().unwrap().len();
    for body in [
        json!({"cpu": 1, "memMb": 256, "userOverlaySnapshotId": "../../x"}),
        json!({"cpu": 1, "memMb": 256, "userOverlaySnapshotId": "snap-a", "snapshotId": "snap-b"}),
    ] {
        let (st, r) = s.call("POST", "/v1/vms", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {r}");
    }
    let (st, r) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "snapshotId": "snap-missing"})));
    assert_eq!(st, 404, "{r}");
    assert_eq!(s.call("GET", "/v1/vms", None).1.as_array().unwrap().len(), before);
    assert!(s.call("GET", "/v1/snapshots?scope=all", None).1.as_array().unwrap().is_empty());
}

#[test]
fn enable_snapshots_false_turns_the_routes_off() {
    require_sandbox!();
    let s = Server::start(&[("ENABLE_SNAPSHOTS", "false")]);
    let id = s.create_vm(256);
    let (st, r) = s.call("POST", &format!("/v1/vms/{id}/snapshots"), None);
    assert_eq!(st, 501, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("ENABLE_SNAPSHOTS"), "{r}");
}

/// The original's n8n node (0.1.8): Snapshots → Create From VM (`POST` with its JSON headers and
/// no body), Snapshots → List, VMs → Create with its `Snapshot ID` field (the legacy alias),
/// each read as the node reads them.
#[test]
fn the_n8n_nodes_snapshot_operations_work() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = s.create_vm(256);
    s.exec(&vm, "echo n8n > /workspace/mark");
    let created = s
        .req("POST", &format!("/v1/vms/{vm}/snapshots"))
        .set("accept", "application/json")
        .call()
        .expect("Create From VM");
    assert_eq!(created.status(), 201);
    let snap: serde_json::Value = created.into_json().unwrap();
    let listed: serde_json::Value =
        s.req("GET", "/v1/snapshots").set("accept", "application/json").call().unwrap().into_json().unwrap();
    assert!(listed.as_array().is_some_and(|a| a.iter().all(|v| v.is_object()) && a.len() == 1), "{listed}");
    let body = json!({"cpu": 1, "memMb": 256, "allowIps": ["10.0.0.0/8"], "outboundInternet": false, "snapshotId": snap["id"]});
    let (st, clone) = s.call("POST", "/v1/vms", Some(body));
    assert_eq!(st, 201, "{clone}");
    assert_eq!(clone["provisionMode"], "snapshot");
    assert_eq!(s.exec(clone["id"].as_str().unwrap(), "cat /workspace/mark")["stdout"], "n8n\n");
}

/// A provider snapshotted after its SDK upload starts again with the secrets its create passes:
/// they are never in the snapshot (its files are scanned for the value), and the SDK files are.
/// A consumer snapshotted after its peer sync starts with its links synced again.
#[test]
fn provider_and_consumer_snapshots_carry_files_and_never_secrets() {
    require_sandbox!();
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef-snap")]);
    let secret = "tok-5ecr3t-never-on-disk-7f3a";
    let (st, provider) =
        // A small disk: the test reads the snapshot's disk file whole.
        s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "diskSizeMb": 64, "secretEnv": [format!("API_TOKEN={secret}")]})));
    assert_eq!(st, 201, "{provider}");
    let provider = provider["id"].as_str().unwrap().to_string();
    s.make_calc_provider(&provider);
    // The provider uses its secret (a hash of it lands on disk, the value does not).
    let r = s.exec(&provider, "printf %s \"$API_TOKEN\" | sha256sum > /workspace/token.sha && sync && echo used");
    assert_eq!(r["stdout"], "used\n", "{r}");

    let (st, snap) = s.call("POST", &format!("/v1/vms/{provider}/snapshots"), None);
    assert_eq!(st, 201, "{snap}");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    let dir = s.storage_root().join("snapshots").join(&snap_id);
    let mut scanned = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        scanned += bytes.len();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is in the snapshot");
    }
    assert!(scanned > 0, "the snapshot has files to scan");
    // ...while the hash it wrote is there, so the scan does look at the VM's data.
    let sha = s.exec(&provider, "cut -c1-64 /workspace/token.sha")["stdout"].as_str().unwrap().trim().to_string();
    let found = std::fs::read_dir(&dir)
        .unwrap()
        .any(|e| std::fs::read(e.unwrap().path()).unwrap().windows(sha.len()).any(|w| w == sha.as_bytes()));
    assert!(found, "the snapshot holds the provider's files");

    // A new provider from it: SDK files there, the secret only because its create passes it.
    let body = json!({"cpu": 1, "memMb": 256, "snapshotId": snap_id, "secretEnv": [format!("API_TOKEN={secret}")]});
    let (st, clone) = s.call("POST", "/v1/vms", Some(body));
    assert_eq!(st, 201, "{clone}");
    let clone = clone["id"].as_str().unwrap().to_string();
    let r = s.exec(&clone, &format!("test -f /workspace/calc.py && [ \"$API_TOKEN\" = {secret} ] && echo provider"));
    assert_eq!(r["stdout"], "provider\n", "{r}");
    let (_, bare) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "snapshotId": snap_id})));
    let bare = bare["id"].as_str().unwrap().to_string();
    let r = s.exec(&bare, "test -f /workspace/calc.py && echo \"[${API_TOKEN:-none}]\"");
    assert_eq!(r["stdout"], "[none]\n", "no secret unless the create passes it: {r}");

    // A consumer snapshotted after its sync, restored with its link: synced again.
    let body = json!({"cpu": 1, "memMb": 256, "diskSizeMb": 64, "peerLinks": [{"alias": "calc", "vmId": clone}]});
    let (st, consumer) = s.call("POST", "/v1/vms", Some(body.clone()));
    assert_eq!(st, 201, "{consumer}");
    let consumer = consumer["id"].as_str().unwrap().to_string();
    s.exec(&consumer, "echo mine > /workspace/notes.txt");
    let (st, csnap) = s.call("POST", &format!("/v1/vms/{consumer}/snapshots"), None);
    assert_eq!(st, 201, "{csnap}");
    let mut restored = body;
    restored["snapshotId"] = csnap["id"].clone();
    let (st, c2) = s.call("POST", "/v1/vms", Some(restored));
    assert_eq!(st, 201, "{c2}");
    let r = s.exec(
        c2["id"].as_str().unwrap(),
        "cat /workspace/notes.txt && test -f /workspace/peers/calc/index.ts && echo synced",
    );
    assert_eq!(r["stdout"], "mine\nsynced\n", "{r}");
}

/// Issue G: the image seed is built by itself, listed only in `scope=internal`, and used: a
/// create of its disk size starts from it (on the sandbox a disk seed: the VM boots on the
/// seed's ready-made disk instead of a fresh one).
#[test]
fn the_image_seed_is_internal_and_starts_vms() {
    require_sandbox!();
    let s = Server::start(&[("IMAGE_SEEDS", "on")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let seed = loop {
        let (st, list) = s.call("GET", "/v1/snapshots?scope=internal", None);
        assert_eq!(st, 200, "{list}");
        if let Some(seed) = list.as_array().unwrap().iter().find(|v| v["state"] == "ready") {
            break seed.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no seed was built: {list}\n{}", s.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!((seed["kind"].as_str(), seed["internal"].as_bool()), (Some("image_seed"), Some(true)), "{seed}");
    assert_eq!(seed["content"], "disk");
    assert_eq!(s.call("GET", "/v1/snapshots", None).1, json!([]), "never in the default scope");
    let (st, all) = s.call("GET", "/v1/snapshots?scope=all", None);
    assert_eq!((st, all.as_array().map(Vec::len)), (200, Some(1)));

    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256})));
    assert_eq!(st, 201, "{vm}");
    assert_eq!(vm["provisionMode"], "boot", "a disk seed still boots: {vm}");
    assert_eq!(vm["snapshotId"], seed["id"], "{vm}");
    let id = vm["id"].as_str().unwrap();
    let r = s.exec(id, "echo fresh > /workspace/f && cat /workspace/f && stat -c %u /workspace");
    assert_eq!(r["stdout"], "fresh\n1000\n", "{r}");
    // Another disk size boots on a disk of its own.
    let (st, other) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "diskSizeMb": 64})));
    assert_eq!(st, 201, "{other}");
    assert!(other.get("snapshotId").is_none(), "{other}");
}
