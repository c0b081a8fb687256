//! The TypeScript SDK's own suite (`sdk/typescript/test`, node:test) against a freshly started
//! `rds serve` on the sandbox runtime: create → exec → run code → files → contexts → snapshots →
//! secrets and peers → error mapping (400, 401, 404, 409) → safe retries → a terminal over a
//! WebSocket → delete, the README's examples, the same build on Deno, and the check that every
//! `/openapi.json` operation is covered or listed as missing.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{run_checked as run, Server};

#[test]
fn the_typescript_sdk_suite_passes_against_a_live_manager() {
    require_sandbox!();
    for tool in ["node", "npm", "deno"] {
        if !rds_host::on_path(tool) {
            rds_testkit::skip(format!("{tool} is not installed (scripts/setup installs it)"));
            return;
        }
    }
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk/typescript");
    // The compiler and Node's types, pinned by package-lock.json.
    run(Command::new("npm").args(["ci", "--no-fund", "--no-audit"]).current_dir(&sdk));
    run(Command::new("npx").args(["tsc", "-p", "."]).current_dir(&sdk));
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef-sdk-ts")]);
    // Node 20 has a WebSocket only behind this flag; later versions have it by default.
    let flag = Command::new("node").args(["--experimental-websocket", "-e", "0"]).output();
    let mut node = Command::new("node");
    if flag.is_ok_and(|o| o.status.success()) {
        node.arg("--experimental-websocket");
    }
    let out = run(node
        .args(["--test", "--test-reporter=spec", "dist/test/"])
        .current_dir(&sdk)
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", &s.key));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("pass ") && report.contains("fail 0"), "{report}");
    assert!(!report.contains("skipped 1") && report.contains("skipped 0"), "no test may skip: {report}");
}
