//! HTTPS for the API: `TLS_CERT` / `TLS_KEY` (a self-signed certificate made with openssl), and
//! the refusal to serve plain HTTP beyond loopback.

mod common;

use std::process::Command;

use common::{curl_json, Server};

/// A self-signed certificate for 127.0.0.1 and its key, in `dir`.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=rds-test", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn the_api_serves_https_with_tls_cert_and_tls_key_and_plain_http_is_refused_there() {
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let s = Server::start(&[("TLS_CERT", &cert), ("TLS_KEY", &key)]);
    assert!(s.stdout[0].starts_with("rds listening on https://"), "{:?}", s.stdout);
    let (status, health) = curl_json(&cert, &format!("{}/v1/health", s.url), &[]);
    assert_eq!(status, 200, "{health}");
    let header = format!("X-API-Key: {}", s.key);
    let (status, vms) = curl_json(&cert, &format!("{}/v1/vms", s.url), &["-H", &header]);
    assert_eq!((status, vms.is_array()), (200, true), "{vms}");
    let (status, _) = curl_json(&cert, &format!("{}/v1/vms", s.url), &[]);
    assert_eq!(status, 401);
    // A client that does not trust the certificate gets no answer; neither does plain HTTP.
    let untrusted = Command::new("curl").args(["-sS", "-o", "/dev/null", &format!("{}/v1/health", s.url)]).status();
    assert!(!untrusted.unwrap().success(), "curl trusted a self-signed certificate");
    let plain = ureq::get(&format!("http://127.0.0.1:{}/v1/health", s.port)).call();
    assert!(plain.is_err(), "plain HTTP answered on the HTTPS port");
}

#[test]
fn beyond_loopback_rds_serve_refuses_plain_http_and_bad_tls_files_naming_the_variable() {
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed(dir.path());
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("BIND", "0.0.0.0")], "BIND"),
        (&[("TLS_CERT", &cert), ("TLS_KEY", &cert)], "TLS_KEY"),
        (&[("TLS_CERT", "/nonexistent/cert.pem"), ("TLS_KEY", &cert)], "TLS_CERT"),
    ];
    for (env, var) in cases {
        let root = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rds"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("STORAGE_ROOT", root.path())
            .env("RDS_RUNTIME", "sandbox")
            .env("RDS_NETWORK", "off")
            .env("RDS_AGENT_BIN", common::agent_bin())
            .env("API_KEY", common::KEY)
            .envs(env.iter().copied())
            .output()
            .expect("run rds serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started");
        assert!(stderr.contains(var), "{env:?}: the error does not name {var}:\n{stderr}");
    }
}
