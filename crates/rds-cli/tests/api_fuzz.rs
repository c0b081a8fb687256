//! API fuzzing: schemathesis (pinned, installed by scripts/setup) against a live `rds serve` on
//! the sandbox runtime, every operation of its `/openapi.json` (the two WebSockets aside), every
//! check, with the API key and without it: no 5xx, every status, content type, header and body as
//! documented, invalid input refused, valid input accepted (the exceptions, constraints a schema
//! cannot state, are listed with their reasons in `api_fuzz/schemathesis.toml`).
//!
//! Bounded: `RDS_FUZZ_EXAMPLES` cases per operation and phase (default 20), a fixed seed
//! (`RDS_FUZZ_SEED` to change it). docs/reliability.md has the longer run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;

/// Where scripts/setup installs schemathesis (`ensure_schemathesis` in scripts/lib.sh).
const SCHEMATHESIS: &str = "/var/cache/rds-schemathesis/bin/schemathesis";
const DEFAULT_SEED: &str = "133654156128345942996270088313891282476";

#[test]
fn schemathesis_finds_no_failure_with_or_without_a_key() {
    require_sandbox!();
    if !Path::new(SCHEMATHESIS).is_file() {
        rds_testkit::skip(format!("{SCHEMATHESIS} is missing (scripts/setup installs it)"));
        return;
    }
    let s = Server::start(&[("VM_SECRET_KEY", "0123456789abcdef0123456789abcdef-api-fuzz")]);
    let header = format!("X-API-Key: {}", s.key);
    for (label, auth) in [("with the API key", Some(header.as_str())), ("without a key", None)] {
        let report = schemathesis(&s, auth);
        let summary = report.lines().filter(|l| l.contains(" generated, ")).collect::<Vec<_>>().join("\n");
        println!("schemathesis {label}: {summary}");
    }
}

/// Runs schemathesis against `s` (with header `auth`, if any); returns its report, failing the
/// test with it unless the run found nothing.
fn schemathesis(s: &Server, auth: Option<&str>) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api_fuzz");
    let examples = std::env::var("RDS_FUZZ_EXAMPLES").unwrap_or_else(|_| "20".into());
    let seed = std::env::var("RDS_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    // Its working directory is a scratch one: it keeps a Hypothesis database there.
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(SCHEMATHESIS);
    cmd.arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", s.url))
        // One worker: with two, Hypothesis parses lambda sources on two threads at once and
        // CPython 3.11's ast.parse then fails with "AST constructor recursion depth mismatch"
        // (an error of the tool, not of the API).
        .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed, "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing", "--exclude-path-regex", "/(pty|exec/ws)$"])
        .arg("--no-color")
        .current_dir(scratch.path())
        .env("PYTHONPATH", &dir)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(header) = auth {
        cmd.args(["--header", header]);
    }
    let out = cmd.output().expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{report}\nmanager log:\n{}", s.log());
    assert!(report.contains(" passed"), "{report}");
    report
}
