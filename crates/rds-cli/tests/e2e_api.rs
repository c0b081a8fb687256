//! End-to-end: auth, validation, limits, docs — through the real `rds serve`.

mod common;

use common::{into_status_json, Server};
use serde_json::json;

#[test]
fn missing_or_wrong_key_is_401_and_health_is_public() {
    require_sandbox!();
    let s = Server::start(&[]);
    let (st, body) = into_status_json(ureq::get(&format!("{}/v1/vms", s.url)).call());
    assert_eq!((st, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (st, _) =
        into_status_json(ureq::get(&format!("{}/v1/vms", s.url)).set("X-API-Key", "wrong-key-wrong-key").call());
    assert_eq!(st, 401);
    let (st, health) = into_status_json(ureq::get(&format!("{}/v1/health", s.url)).call());
    assert_eq!(st, 200);
    assert_eq!((health["runtime"].as_str(), health["isolation"].as_str()), (Some("sandbox"), Some("namespaces")));
}

#[test]
fn generated_key_is_printed_once_and_works() {
    require_sandbox!();
    let mut s = Server::start_raw(&[]);
    let line =
        s.stdout.iter().find(|l| l.contains("shown only once")).cloned().unwrap_or_else(|| panic!("{:?}", s.stdout));
    let key = line.rsplit(' ').next().unwrap().to_string();
    assert!(key.starts_with("rds_"), "{line}");
    s.key = key.clone();
    assert_eq!(s.call("GET", "/v1/vms", None).0, 200);
    s.restart();
    assert!(!s.stdout.iter().any(|l| l.contains(&key)), "key printed again: {:?}", s.stdout);
    assert_eq!(s.call("GET", "/v1/vms", None).0, 200, "stored key still valid after restart");
}

#[test]
fn invalid_bodies_are_400_naming_the_field() {
    require_sandbox!();
    let s = Server::start(&[]);
    let post_raw = |path: &str, body: &str| {
        into_status_json(s.req("POST", path).set("Content-Type", "application/json").send_string(body))
    };
    for (body, field) in [
        (r#"{"memMb":256}"#, "cpu"),
        (r#"{"cpu":"two","memMb":256}"#, "cpu"),
        (r#"{"cpu":1,"memMb":256,"bogus":true}"#, "bogus"),
        (r#"{"cpu":1,"memMb":"#, "malformed JSON"),
        (r#"{"cpu":1,"memMb":256,"allowIps":["not-an-ip"]}"#, "allowIps[0]"),
    ] {
        let (st, err) = post_raw("/v1/vms", body);
        let msg = err["error"]["message"].as_str().unwrap_or_default().to_string();
        assert_eq!((st, err["error"]["code"].as_str()), (400, Some("bad_request")), "{body}: {err}");
        assert!(msg.contains(field), "{body}: message {msg:?} should name {field}");
    }
    let id = s.create_vm(256);
    for (body, field) in [
        (r#"{"cmd":"true","timeoutMs":-5}"#, "timeoutMs"),
        (r#"{"cmd":"true","timeoutMs":999999999}"#, "timeoutMs"),
        (r#"{}"#, "cmd"),
    ] {
        let (st, err) = post_raw(&format!("/v1/vms/{id}/exec"), body);
        assert_eq!(st, 400, "{body}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(field), "{body}: {err}");
    }
    let (st, err) = s.call("GET", "/v1/vms/does-not-exist", None);
    assert_eq!((st, err["error"]["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn oversized_json_body_is_413() {
    require_sandbox!();
    let s = Server::start(&[("MAX_JSON_BODY_BYTES", "200")]);
    let big = json!({"cpu": 1, "memMb": 128, "allowIps": vec!["10.0.0.1/32"; 40]});
    let (st, err) = s.call("POST", "/v1/vms", Some(big));
    assert_eq!((st, err["error"]["code"].as_str()), (413, Some("payload_too_large")), "{err}");
}

#[test]
fn quotas_answer_429_naming_the_limit() {
    require_sandbox!();
    let s = Server::start(&[("MAX_VMS", "1")]);
    let (st, err) = s.call("POST", "/v1/vms", Some(json!({"cpu": 9, "memMb": 128})));
    assert_eq!(st, 429);
    assert!(err["error"]["message"].as_str().unwrap().contains("MAX_CPU=4"), "{err}");
    let (st, err) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 99999})));
    assert_eq!(st, 429);
    assert!(err["error"]["message"].as_str().unwrap().contains("MAX_MEM_MB=2048"), "{err}");
    s.create_vm(256);
    let (st, err) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128})));
    assert_eq!((st, err["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("MAX_VMS=1"), "{err}");
}

#[test]
fn rate_limiter_answers_429_with_retry_after() {
    require_sandbox!();
    let s = Server::start(&[("RATE_LIMIT_PER_MIN", "5"), ("RATE_LIMIT_CLIENT_SHARE_PERCENT", "100")]);
    let mut statuses = vec![];
    let mut retry_after = None;
    for _ in 0..8 {
        match s.req("GET", "/v1/vms").call() {
            Ok(r) => statuses.push(r.status()),
            Err(ureq::Error::Status(st, r)) => {
                statuses.push(st);
                retry_after = r.header("retry-after").map(str::to_string);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&st| st == 429), "{statuses:?}");
    assert!(retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v >= 1), "{retry_after:?}");
    // Health is public and never limited.
    assert_eq!(s.call("GET", "/v1/health", None).0, 200);
}

/// `GET /v1/vms` with the server's key from the local address `source`: the status and body.
fn list_from(s: &Server, source: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let mut stream = socket.connect(format!("127.0.0.1:{}", s.port).parse().unwrap()).await.unwrap();
        let request = format!("GET /v1/vms HTTP/1.1\r\nHost: rds\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n", s.key);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        (answer[9..12].parse().unwrap(), answer)
    })
}

#[test]
fn one_client_in_a_tight_loop_cannot_starve_the_others_sharing_its_key() {
    require_sandbox!();
    // The default share: while others use a key, one address may use half of each budget.
    let s = Server::start(&[("RATE_LIMIT_PER_MIN", "6")]);
    assert_eq!(list_from(&s, "127.0.0.2").0, 200);
    let hog: Vec<u16> = (0..20).map(|_| list_from(&s, "127.0.0.1").0).collect();
    assert_eq!(&hog[..3], &[200; 3], "{hog:?}");
    assert!(hog[3..].iter().all(|&st| st == 429), "{hog:?}");
    let (_, refused) = list_from(&s, "127.0.0.1");
    assert!(refused.contains("RATE_LIMIT_CLIENT_SHARE_PERCENT=50"), "{refused}");
    // The other caller still gets its share, despite the hog's refusals.
    let other: Vec<u16> = (0..2).map(|_| list_from(&s, "127.0.0.2").0).collect();
    assert_eq!(other, [200; 2]);
    // The key's own budget still bounds everyone together.
    let (st, body) = list_from(&s, "127.0.0.3");
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("RATE_LIMIT_PER_MIN=6"), "{body}");

    // A lone caller keeps the whole budget, as with the original.
    let s = Server::start(&[("RATE_LIMIT_PER_MIN", "6")]);
    let alone: Vec<u16> = (0..7).map(|_| list_from(&s, "127.0.0.1").0).collect();
    assert_eq!(alone, [200, 200, 200, 200, 200, 200, 429]);
}

#[test]
fn openapi_lists_the_routes_and_swagger_serves_html() {
    require_sandbox!();
    let s = Server::start(&[]);
    let doc: serde_json::Value = ureq::get(&format!("{}/openapi.json", s.url)).call().unwrap().into_json().unwrap();
    for path in [
        "/v1/vms",
        "/v1/vms/{id}",
        "/v1/vms/{id}/start",
        "/v1/vms/{id}/stop",
        "/v1/vms/{id}/exec",
        "/v1/vms/{id}/run-ts",
        "/v1/vms/{id}/run-js",
        "/v1/vms/{id}/run-python",
        "/v1/vms/{id}/files/upload",
        "/v1/vms/{id}/files/download",
        "/v1/vms/{id}/logs",
        "/v1/vms/{id}/exec-logs",
        "/v1/health",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from openapi.json");
    }
    let html = ureq::get(&format!("{}/swagger/", s.url)).call().unwrap();
    assert!(html.content_type().contains("text/html"));
    assert!(html.into_string().unwrap().contains("swagger"));
    let (st, err) = into_status_json(ureq::get(&format!("{}/no/such/route", s.url)).call());
    assert_eq!((st, err["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, err) = into_status_json(s.req("PUT", "/v1/vms").call());
    assert_eq!((st, err["error"]["code"].as_str()), (405, Some("method_not_allowed")));
}
