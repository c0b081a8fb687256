//! End-to-end: the `rds` command line against a live `rds serve` (sandbox runtime) — vm create,
//! ls, get, exec (streamed, stdin, exit status), run, cp both ways, logs, snapshot, stop/start,
//! rm; image ls; --json; completions; and the Rust client's coverage of /openapi.json.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Server;
use serde_json::Value;

fn rds(s: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rds"))
        .args(args)
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", &s.key)
        .output()
        .expect("run rds")
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = rds(s, args);
    assert!(
        out.status.success(),
        "rds {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cli_drives_a_vm_from_create_to_rm() {
    require_sandbox!();
    let s = Server::start(&[]);
    let vm = ok(&s, &["vm", "create", "--mem", "256"]).trim().to_string();
    assert!(ok(&s, &["vm", "ls"]).contains(&vm));
    let got: Value = serde_json::from_str(&ok(&s, &["vm", "get", &vm, "--json"])).unwrap();
    assert_eq!(got["state"], "RUNNING");

    // exec: output streams to the right descriptors, the status comes back.
    let out = rds(&s, &["vm", "exec", &vm, "--", "echo out; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rds"))
        .args(["vm", "exec", &vm, "--stdin", "--env", "GREETING=hi", "--", "tr a-z A-Z; echo $GREETING"])
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", &s.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\nhi\n");

    // run: the result as JSON after the output.
    assert_eq!(
        ok(&s, &["vm", "run", &vm, "--lang", "python", "-c", "print('p')\nresult = {'n': 6 * 7}"]),
        "p\n{\"n\":42}\n"
    );
    let run: Value =
        serde_json::from_str(&ok(&s, &["vm", "run", &vm, "--lang", "ts", "-c", "result.set(2 ** 10)", "--json"]))
            .unwrap();
    assert_eq!(run["result"], 1024);

    // cp: a directory up, then back down.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src/nested")).unwrap();
    std::fs::write(dir.path().join("src/a.txt"), "A\n").unwrap();
    std::fs::write(dir.path().join("src/nested/b.txt"), "B\n").unwrap();
    let src = dir.path().join("src");
    ok(&s, &["vm", "cp", src.to_str().unwrap(), &format!("{vm}:/workspace/proj")]);
    assert_eq!(ok(&s, &["vm", "exec", &vm, "--", "cat /workspace/proj/a.txt /workspace/proj/nested/b.txt"]), "A\nB\n");
    let back = dir.path().join("back");
    ok(&s, &["vm", "cp", &format!("{vm}:/workspace/proj"), back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(back.join("nested/b.txt")).unwrap(), "B\n");

    // logs, snapshot, stop/start.
    let logs: Value = serde_json::from_str(&ok(&s, &["vm", "logs", &vm, "--json"])).unwrap();
    assert!(logs["lines"].is_array(), "{logs}");
    let snap = ok(&s, &["vm", "snapshot", &vm]).trim().to_string();
    assert!(!snap.is_empty());
    assert!(ok(&s, &["vm", "stop", &vm]).contains("STOPPED"));
    let refused = rds(&s, &["vm", "exec", &vm, "--", "true"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409"), "{refused:?}");
    assert!(ok(&s, &["vm", "start", &vm]).contains("RUNNING"));
    assert_eq!(ok(&s, &["vm", "exec", &vm, "--", "cat /workspace/proj/a.txt"]), "A\n");

    let from_snapshot = ok(&s, &["vm", "create", "--snapshot", &snap]).trim().to_string();
    assert_eq!(ok(&s, &["vm", "exec", &from_snapshot, "--", "cat /workspace/proj/a.txt"]), "A\n");
    ok(&s, &["vm", "rm", &vm, &from_snapshot]);
    let gone = rds(&s, &["vm", "get", &vm]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("404"), "{gone:?}");

    let images: Value = serde_json::from_str(&ok(&s, &["image", "ls", "--json"])).unwrap();
    assert!(images.is_array());
    let wrong_key = Command::new(env!("CARGO_BIN_EXE_rds"))
        .args(["vm", "ls", "--url", &s.url, "--api-key", "nope"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("401"), "{wrong_key:?}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_rds")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("rds") && script.contains("snapshot"), "{shell}: {script}");
    }
}

#[test]
fn the_rust_client_covers_every_operation_of_the_spec() {
    require_sandbox!();
    let s = Server::start(&[]);
    let (st, spec) = s.call("GET", "/openapi.json", None);
    assert_eq!(st, 200);
    let mut ops: Vec<String> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase())))
        .collect();
    ops.sort();
    let mut covered: Vec<String> = rds_client::OPERATIONS.iter().map(|(op, _)| op.to_string()).collect();
    covered.sort();
    assert_eq!(ops, covered);
}
