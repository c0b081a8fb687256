//! The n8n node's own suite (`integrations/n8n/test`, node:test) against a freshly started
//! `rds serve` on the sandbox runtime: every operation through n8n's execute contract (create
//! with secrets, exec with stdin, code, contexts, binary upload and download, snapshot and a VM
//! from it, delete), errors as n8n API errors, continueOnFail, the credential; after n8n's own
//! `n8n-node lint` and `n8n-node build`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{run_checked as run, Server};

#[test]
fn the_n8n_node_suite_passes_against_a_live_manager() {
    require_sandbox!();
    for tool in ["node", "npm"] {
        if !rds_host::on_path(tool) {
            rds_testkit::skip(format!("{tool} is not installed (scripts/setup installs it)"));
            return;
        }
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../integrations/n8n");
    // n8n-workflow's optional native add-ons (ssh2) are not needed by the node: no build scripts.
    run(Command::new("npm").args(["ci", "--ignore-scripts", "--no-fund", "--no-audit"]).current_dir(&dir));
    // n8n's own node tooling: its community-node lint rules (no errors allowed), then its build.
    run(Command::new("npx").args(["n8n-node", "lint"]).current_dir(&dir));
    run(Command::new("npx").args(["n8n-node", "build"]).current_dir(&dir));
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef-n8n")]);
    let out = run(Command::new("node")
        .args(["--test", "--test-reporter=spec", "dist/test/"])
        .current_dir(&dir)
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", &s.key));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("fail 0") && report.contains("skipped 0"), "{report}");
}
