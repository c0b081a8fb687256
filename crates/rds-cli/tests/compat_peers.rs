//! Drop-in compatibility of peer links with the original run-dat-sheesh (behaviour.md §4), written
//! as its clients use them: providers with the original's manifest shape, `sourceMode: "mounted"`,
//! and a 400 at create (or PATCH) when a provider's manifest cannot work. Real `rds serve`, sandbox.

mod common;

use std::collections::BTreeSet;

use common::Server;
use rds_testkit::tar_gz;
use serde_json::{json, Value};

const SECRET_KEY: &str = "compat-vm-secret-key-material-01";

fn have(bin: &str) -> bool {
    std::process::Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success())
}

macro_rules! require_peers {
    () => {
        require_sandbox!();
        if !have("deno") {
            rds_testkit::skip("the peer bridge tests need deno");
            return;
        }
    };
}

fn upload(s: &Server, id: &str, files: &[(&str, &str)]) {
    let resp = s
        .req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace"))
        .set("content-type", "application/gzip")
        .send_bytes(&tar_gz(&files.iter().map(|(path, text)| (*path, text.as_bytes())).collect::<Vec<_>>()))
        .unwrap();
    assert_eq!(resp.status(), 204, "uploads answer as the original's: 204, no body");
}

/// The error text, wherever the body carries it (ours nests it, the original's is top-level).
fn message(body: &Value) -> String {
    body["error"]["message"].as_str().or(body["message"].as_str()).unwrap_or_default().to_string()
}

fn provider(s: &Server, files: &[(&str, &str)]) -> String {
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "secretEnv": ["GREETER_KEY=k-1"]})));
    assert_eq!(st, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    if !files.is_empty() {
        upload(s, &id, files);
    }
    id
}

/// The original's manifest shape: modules with positional params, one default export.
const ORIGINAL_MANIFEST: &str = r#"{
  "sdk": {"name": "greeter", "description": "Greets people"},
  "modules": [
    {"path": "src/greet.ts", "description": "Greetings",
     "exports": [{"name": "greet", "description": "Greets someone",
       "params": [
         {"name": "name", "description": "Who", "schema": {"type": "string"}},
         {"name": "punctuation", "description": "How", "schema": {"type": "string"}}
       ],
       "returns": {"description": "The greeting", "schema": {"type": "string"}},
       "examples": [{"description": "Ada", "code": "await greet('Ada', '!')"}]}]},
    {"path": "lib/shout.mjs",
     "exports": [{"name": "default", "description": "Shouts", "params": [],
       "returns": {"description": "A shout", "schema": {"type": "string"}},
       "examples": [{"description": "shout", "code": "await shout()"}]}]}
  ]
}"#;

const GREET_TS: &str = r#"
export function greet(name: string, punctuation: string): string {
  return `hello ${name}${punctuation} (key ${Deno.env.get("GREETER_KEY")!.length})`;
}
"#;

const SHOUT_MJS: &str = "export default function () { return 'HEY'; }\n";

#[test]
fn original_manifest_shape_is_callable_and_mounted_source_is_sanitised_and_read_only() {
    require_peers!();
    let s = Server::start(&[("VM_SECRET_KEY", SECRET_KEY)]);
    let greeter = provider(
        &s,
        &[
            (".rds-peer/manifest.json", ORIGINAL_MANIFEST),
            ("src/greet.ts", GREET_TS),
            ("lib/shout.mjs", SHOUT_MJS),
            (".env", "GREETER_KEY=k-1\n"),
            ("NOTES.md", "how to greet"),
        ],
    );
    let (st, consumer) = s.call(
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 512, "peerLinks": [{"alias": "greeter", "vmId": greeter, "sourceMode": "mounted"}]})),
    );
    assert_eq!(st, 201, "{consumer}");
    let link = &consumer["peerLinks"][0];
    assert_eq!((link["syncStatus"].as_str(), link["sourceMode"].as_str()), (Some("synced"), Some("mounted")), "{link}");
    assert_eq!(link["exports"], json!(["greet", "shout"]), "{link}");
    let consumer = consumer["id"].as_str().unwrap().to_string();

    // Positional params arrive in declared order; the default export is named after its module.
    let (st, r) = s.call(
        "POST",
        &format!("/v1/vms/{consumer}/run-ts"),
        Some(json!({"timeoutMs": 60000, "code": r#"import * as greeter from "/workspace/peers/greeter/index.ts";
            result.set({ g: await greeter.greet({ name: "Ada", punctuation: "!" }), s: await greeter.shout() });"#})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], json!({"g": "hello Ada! (key 3)", "s": "HEY"}), "{r}");

    // Consumer code written for the original imports the proxy of the module and passes positional arguments.
    let (st, r) = s.call(
        "POST",
        &format!("/v1/vms/{consumer}/run-ts"),
        Some(json!({"timeoutMs": 60000, "code": r#"import { greet } from "file:///workspace/peers/greeter/proxy/src/greet.ts";
            import shout from "file:///workspace/peers/greeter/proxy/lib/shout.mjs";
            result.set({ g: await greet("Bob", "?"), s: await shout() });"#})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], json!({"g": "hello Bob? (key 3)", "s": "HEY"}), "{r}");

    // The provider's source is there, without dotenv files, and cannot be changed.
    let out = s.exec(
        &consumer,
        "cd /workspace/peers/greeter/source && ls -A . src lib; cat src/greet.ts | grep -c 'export function greet'; \
         echo x > NOTES.md 2>/dev/null || echo refused-write; touch new 2>/dev/null || echo refused-create",
    );
    let out = out["stdout"].as_str().unwrap();
    for want in ["NOTES.md", "greet.ts", "shout.mjs", "\n1\n", "refused-write", "refused-create"] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    assert!(!out.contains(".env"), "dotenv files are not mounted: {out}");
    let (_, index) =
        s.call("POST", &format!("/v1/vms/{consumer}/exec"), Some(json!({"cmd": "cat /workspace/peers/index.json"})));
    let index: Value = serde_json::from_str(index["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(index["peers"][0]["sourceMode"], "mounted", "{index}");

    // Switching to hidden removes the source.
    let (st, r) = s.call("PATCH", &format!("/v1/vms/{consumer}/peers/greeter"), Some(json!({"sourceMode": "hidden"})));
    assert_eq!(st, 200, "{r}");
    let out = s.exec(&consumer, "ls /workspace/peers/greeter");
    assert!(!out["stdout"].as_str().unwrap().contains("source"), "{out}");
}

/// VM ids this server knows about: the API's list, VM directories, and sandbox cgroups.
fn traces(s: &Server) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (st, list) = s.call("GET", "/v1/vms", None);
    assert_eq!(st, 200, "{list}");
    let listed = list.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    let names = |dir: std::path::PathBuf| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let dirs = names(s.root.path().join("vms"));
    let group = s.cgroup_group();
    let mut groups = BTreeSet::new();
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        groups.extend(names(controller.path().join(&group)));
    }
    (listed, dirs, groups)
}

#[test]
fn a_provider_whose_manifest_cannot_work_is_refused_at_create_and_patch_leaving_nothing() {
    require_peers!();
    let s = Server::start(&[("VM_SECRET_KEY", SECRET_KEY)]);
    let no_manifest = provider(&s, &[("src/x.ts", "export const x = 1;\n")]);
    let bad_json = provider(&s, &[(".rds-peer/manifest.json", "{not json")]);
    let not_callable_manifest = ORIGINAL_MANIFEST.replace(r#""name": "greet""#, r#""name": "wave""#);
    let not_callable = provider(
        &s,
        &[
            (".rds-peer/manifest.json", &not_callable_manifest),
            ("src/greet.ts", GREET_TS),
            ("lib/shout.mjs", SHOUT_MJS),
        ],
    );
    let before = traces(&s);
    let providers: BTreeSet<String> = [&no_manifest, &bad_json, &not_callable].into_iter().cloned().collect();
    assert_eq!(before.0, providers);
    assert_eq!(before.1, providers, "each VM has its directory");
    assert!(before.2.is_superset(&providers), "each running VM has its cgroups: {:?}", before.2);

    let cases = [
        (&no_manifest, "missing provider manifest at /workspace/.rds-peer/manifest.json"),
        (&bad_json, "not valid JSON"),
        (&not_callable, "declared export wave is not callable in /workspace/src/greet.ts"),
    ];
    for (vm, problem) in cases {
        let (st, body) = s.call(
            "POST",
            "/v1/vms",
            Some(json!({"cpu": 1, "memMb": 256, "peerLinks": [{"alias": "sdk", "vmId": vm}]})),
        );
        assert_eq!(st, 400, "{body}");
        let m = message(&body);
        for want in ["\"sdk\"", vm.as_str(), problem] {
            assert!(m.contains(want), "the message names {want:?}: {m}");
        }
        assert_eq!(traces(&s), before, "a refused create leaves no VM, directory or cgroup");
    }

    // PATCH: a refused link is not stored, and an existing link keeps its provider.
    let good = provider(
        &s,
        &[(".rds-peer/manifest.json", ORIGINAL_MANIFEST), ("src/greet.ts", GREET_TS), ("lib/shout.mjs", SHOUT_MJS)],
    );
    let consumer = s.create_vm(256);
    for (vm, problem) in cases {
        let (st, body) = s.call("PATCH", &format!("/v1/vms/{consumer}/peers/sdk"), Some(json!({"vmId": vm})));
        assert_eq!(st, 400, "{body}");
        assert!(message(&body).contains(problem), "{body}");
        let (_, links) = s.call("GET", &format!("/v1/vms/{consumer}/peers"), None);
        assert_eq!(links, json!([]), "nothing stored after a 400");
    }
    let (st, r) = s.call("PATCH", &format!("/v1/vms/{consumer}/peers/sdk"), Some(json!({"vmId": good})));
    assert_eq!(st, 200, "{r}");
    let (st, body) = s.call("PATCH", &format!("/v1/vms/{consumer}/peers/sdk"), Some(json!({"vmId": no_manifest})));
    assert_eq!(st, 400, "{body}");
    let (_, links) = s.call("GET", &format!("/v1/vms/{consumer}/peers"), None);
    assert_eq!(links[0]["vmId"], good.as_str(), "{links}");
    assert_eq!(links[0]["syncStatus"], "synced", "{links}");

    // A provider that breaks after the link was made is reported on the link, as before.
    s.exec(&good, "rm /workspace/.rds-peer/manifest.json");
    let (st, body) = s.call("POST", &format!("/v1/vms/{consumer}/peers/sync"), None);
    assert_eq!(st, 400, "{body}");
    let (_, links) = s.call("GET", &format!("/v1/vms/{consumer}/peers"), None);
    assert_eq!(links[0]["syncStatus"], "invalid", "{links}");
    assert!(links[0]["syncMessage"].as_str().unwrap().contains("missing provider manifest"), "{links}");
}
