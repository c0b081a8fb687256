//! The Python SDK's own suite (`sdk/python/tests`, pytest) against a freshly started `rds serve`
//! on the sandbox runtime: create → exec → run code → files → contexts → snapshots → secrets and
//! peers → error mapping (400, 401, 404, 409) → safe retries → delete, the README's examples,
//! and the check that every `/openapi.json` operation is covered or listed as missing.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

/// Debian's interpreter, where `scripts/setup` installs httpx and pytest (a `python3` earlier on
/// PATH, such as pyenv's, would not see them).
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn the_python_sdk_suite_passes_against_a_live_manager() {
    require_sandbox!();
    let probe = Command::new(PYTHON).args(["-c", "import httpx, pytest, pytest_asyncio, websockets"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        rds_testkit::skip("python3-httpx, python3-pytest, python3-pytest-asyncio or python3-websockets is not installed (scripts/setup)");
        return;
    }
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef-sdk-python")]);
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python");
    let out = Command::new(PYTHON)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&sdk)
        .env("PYTHONPATH", sdk.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", &s.key)
        .output()
        .expect("run pytest");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the Python SDK suite failed:\n{report}");
    assert!(report.contains(" passed"), "{report}");
}
