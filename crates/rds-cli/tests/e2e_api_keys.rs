//! End-to-end: API keys managed through the API and `rds key` — created and shown once, stored
//! only hashed, working at once and after a restart, their last use recorded, revoked (401 from
//! the next request), expiry and names checked.

mod common;

use std::process::Command;

use common::Server;
use serde_json::{json, Value};

fn rds(s: &Server, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rds"))
        .args(args)
        .env("RDS_URL", &s.url)
        .env("RDS_API_KEY", key)
        .output()
        .expect("run rds");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_with(s: &Server, key: &str) -> u16 {
    match ureq::get(&format!("{}/v1/vms", s.url)).set("X-API-Key", key).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn keys_are_created_once_used_listed_and_revoked() {
    require_sandbox!();
    let mut s = Server::start(&[]);
    let (ok, key, err) = rds(&s, &s.key.clone(), &["key", "create", "--name", "ci pipeline", "--expires-days", "30"]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    assert!(key.starts_with("rds_") && key.len() > 40, "{key}");
    assert_eq!(status_with(&s, &key), 200, "a new key works at once");

    // Stored only as a hash: the key itself appears nowhere in the database.
    let db = std::fs::read(s.root.path().join("rds.db")).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()), "the key is stored in clear");

    // Listed with its last use, never with the key.
    let (_, listed, _) = rds(&s, &key, &["key", "ls", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let entry = listed.as_array().unwrap().iter().find(|k| k["name"] == "ci pipeline").unwrap().clone();
    assert!(!listed.to_string().contains(&key));
    assert!(entry["expiresAt"].as_i64().unwrap() > entry["createdAt"].as_i64().unwrap());
    assert_eq!(entry["prefix"].as_str().unwrap(), &key[..8]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, keys) = s.call("GET", "/v1/api-keys", None);
        let used = keys.as_array().unwrap().iter().find(|k| k["id"] == entry["id"]).unwrap()["lastUsedAt"].clone();
        if used.is_i64() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lastUsedAt never recorded: {keys}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // It survives a restart (it lives in the store), and revoking it refuses the next request.
    s.restart();
    assert_eq!(status_with(&s, &key), 200);
    let id = entry["id"].as_str().unwrap();
    let (ok, _, err) = rds(&s, &s.key.clone(), &["key", "revoke", id]);
    assert!(ok, "{err}");
    assert_eq!(status_with(&s, &key), 401);
    let (st, body) = s.call("DELETE", &format!("/v1/api-keys/{id}"), None);
    assert_eq!(st, 404, "{body}");
    s.restart();
    assert_eq!(status_with(&s, &key), 401, "revoked for good");
}

#[test]
fn bad_key_requests_are_refused_by_field() {
    require_sandbox!();
    let s = Server::start(&[]);
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(65)}), "name"),
        (json!({"name": "ok", "expiresInDays": 0}), "expiresInDays"),
        (json!({"name": "ok", "expiresInDays": 4000}), "expiresInDays"),
        (json!({"name": "ok", "scope": "all"}), "scope"),
    ] {
        let (st, err) = s.call("POST", "/v1/api-keys", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(field), "{body}: {err}");
    }
    assert_eq!(s.call("GET", "/v1/api-keys", None).1, json!([]));
    assert_eq!(
        ureq::get(&format!("{}/v1/api-keys", s.url)).call().map(|r| r.status()).unwrap_or_else(|e| match e {
            ureq::Error::Status(c, _) => c,
            other => panic!("{other}"),
        }),
        401
    );
}
