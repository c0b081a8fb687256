//! The Go SDK's own suite (`sdk/go`, `go test`) against a freshly started `rds serve` on the
//! sandbox runtime: create → exec → run code → files → contexts → snapshots → secrets and peers
//! → error mapping (400, 401, 404, 409) → safe retries → delete, the README's examples (the
//! package's Example functions, output checked), and the check that every `/openapi.json`
//! operation is covered or listed as missing.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

#[test]
fn the_go_sdk_suite_passes_against_a_live_manager() {
    require_sandbox!();
    if !rds_host::on_path("go") {
        rds_testkit::skip("go is not installed (scripts/setup installs golang-go)");
        return;
    }
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef-sdk-go")]);
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk/go");
    let out = Command::new("go")
        .args(["test", "-count=1", "-v", "./..."])
        .current_dir(&sdk)
        // The module uses the standard library only: nothing is fetched.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", &s.key)
        .output()
        .expect("run go test");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the Go SDK suite failed:\n{report}");
    assert!(report.contains("--- PASS: Example") && !report.contains("--- SKIP"), "{report}");
}
