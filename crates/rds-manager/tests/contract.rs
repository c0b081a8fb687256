//! The request/response contract of every route, in-process: the real router over
//! [`InProcessRuntime`] (each VM's real rds-agent served on a task of the test's runtime, as the
//! current user) and a SQLite store in a temporary directory, driven with `tower::ServiceExt::oneshot`.
//! Needs no root and starts no manager or agent process. What needs real isolation (namespaces,
//! cgroups, egress, guests) stays in the e2e suites of rds-cli.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::Router;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use rds_manager::{routes, AppState};
use rds_testkit::{tar_gz, untar_gz};
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "rds_contract_test_key_0123456789";
/// A valid `VM_SECRET_KEY` for the tests that store secrets.
const SECRET_KEY: &str = "contract-test-secret-key-material";
/// Stands for a VM id no VM has.
const NO_VM: &str = "00000000-0000-4000-8000-000000000000";

/// Every route the router serves, as (method, path template). `{id}` is a VM or image id.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/vms"),
    ("get", "/v1/vms"),
    ("get", "/v1/vms/{id}"),
    ("delete", "/v1/vms/{id}"),
    ("post", "/v1/vms/{id}/start"),
    ("post", "/v1/vms/{id}/stop"),
    ("get", "/v1/vms/{id}/logs"),
    ("get", "/v1/vms/{id}/exec-logs"),
    ("post", "/v1/vms/{id}/snapshots"),
    ("get", "/v1/snapshots"),
    ("get", "/v1/snapshots/{id}"),
    ("delete", "/v1/snapshots/{id}"),
    ("get", "/v1/pool"),
    ("post", "/v1/vms/{id}/exec"),
    ("post", "/v1/vms/{id}/run-ts"),
    ("post", "/v1/vms/{id}/run-js"),
    ("post", "/v1/vms/{id}/run-python"),
    ("post", "/v1/vms/{id}/contexts"),
    ("get", "/v1/vms/{id}/contexts"),
    ("get", "/v1/vms/{id}/contexts/{contextId}"),
    ("delete", "/v1/vms/{id}/contexts/{contextId}"),
    ("post", "/v1/vms/{id}/contexts/{contextId}/restart"),
    ("get", "/v1/vms/{id}/pty"),
    ("get", "/v1/vms/{id}/exec/ws"),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys"),
    ("delete", "/v1/api-keys/{id}"),
    ("post", "/v1/vms/{id}/pty-tokens"),
    ("get", "/v1/vms/{id}/pty-sessions"),
    ("delete", "/v1/vms/{id}/pty-sessions/{sessionId}"),
    ("post", "/v1/vms/{id}/files/upload"),
    ("get", "/v1/vms/{id}/files/download"),
    ("get", "/v1/vms/{id}/peers"),
    ("post", "/v1/vms/{id}/peers/sync"),
    ("patch", "/v1/vms/{id}/peers/{alias}"),
    ("delete", "/v1/vms/{id}/peers/{alias}"),
    ("patch", "/v1/vms/{id}/secrets"),
    ("patch", "/v1/vms/{id}/network"),
    ("get", "/v1/peer-calls"),
    ("get", "/v1/images"),
    ("post", "/v1/images"),
    ("get", "/v1/images/{id}"),
    ("delete", "/v1/images/{id}"),
    ("post", "/v1/images/{id}/set-default"),
    ("put", "/v1/images/{id}/kernel"),
    ("put", "/v1/images/{id}/initrd"),
    ("put", "/v1/images/{id}/rootfs"),
    ("put", "/v1/images/{id}/bundle"),
];

/// The router, its state and the directory holding the database and the VMs.
struct Api {
    router: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        // Read-only trees the agents left (`/workspace/peers`) would outlive `TempDir` when not root.
        if let Err(e) = rds_manager::testing::remove_tree(self._dir.path()) {
            eprintln!("could not remove {}: {e}", self._dir.path().display());
        }
    }
}

/// A response: status, headers, body.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("status {}: body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts `{"error":{"code","message"},"message"}` with this status and code, the message
    /// containing `needle` and repeated at the top level.
    #[track_caller]
    fn expect_error(&self, status: StatusCode, code: &str, needle: &str) {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        let body = self.json();
        let error = body.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("no `error` object: {body}"));
        assert_eq!(error.len(), 2, "error has exactly code and message: {body}");
        assert_eq!(error["code"], code, "{body}");
        let message = error["message"].as_str().unwrap_or_else(|| panic!("message is not a string: {body}"));
        assert!(message.contains(needle), "message {message:?} should contain {needle:?}");
        assert_eq!(body["message"], message, "top-level message repeats error.message: {body}");
    }
}

impl Api {
    /// A manager with the test defaults (host root allowed, secrets key set) and `vars` on top.
    fn new(vars: &[(&str, &str)]) -> Api {
        let dir = tempfile::tempdir().expect("creating the test directory");
        let vars: Vec<(&str, &str)> = vars.iter().copied().chain([("VM_SECRET_KEY", SECRET_KEY)]).collect();
        let state = rds_manager::testing::in_process_state(dir.path(), &vars, KEY);
        Api { router: routes::router(state.clone()), state, _dir: dir }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("reading the response body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    /// A request with the API key and a raw body.
    async fn raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
        let mut req = Request::builder().method(method).uri(path).header("x-api-key", KEY);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req.body(body.into()).unwrap()).await
    }

    /// A request with the API key and an optional JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        match body {
            Some(b) => self.raw(method, path, &[("content-type", "application/json")], b.to_string()).await,
            None => self.raw(method, path, &[], Body::empty()).await,
        }
    }

    /// Creates a RUNNING VM and returns its id.
    async fn vm(&self) -> String {
        let vm =
            self.call(Method::POST, "/v1/vms", Some(json!({"cpu": 1, "memMb": 128}))).await.expect(StatusCode::CREATED);
        vm["id"].as_str().expect("the VM has an id").to_string()
    }

    async fn exec(&self, id: &str, cmd: &str) -> Value {
        self.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": cmd}))).await.expect(StatusCode::OK)
    }
}

/// `HEAD_LEN` bytes carrying the ext4 superblock magic: what the manager accepts as a rootfs.
fn ext4_head() -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    v[1080..1082].copy_from_slice(&[0x53, 0xef]);
    v
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.to_uppercase().as_bytes()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Public routes, auth, fallbacks

#[tokio::test]
async fn health_is_public_and_reports_runtime_capabilities_and_installation() {
    let api = Api::new(&[]);
    let reply = api.send(Request::get("/v1/health").body(Body::empty()).unwrap()).await;
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["runtime"], "sandbox");
    assert_eq!(body["isolation"], "none");
    assert_eq!(body["installationId"], api.state.installation.to_string());
    for lang in ["deno", "node", "python3"] {
        assert!(body["capabilities"][lang].is_boolean(), "capabilities.{lang}: {body}");
    }
}

#[tokio::test]
async fn openapi_json_is_public_and_documents_every_route_the_router_serves() {
    let api = Api::new(&[]);
    let doc = api.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.expect(StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let mut documented = vec![("get".to_string(), "/v1/health".to_string())];
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for op in ops.as_object().expect("operations").keys() {
            documented.push((op.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    served.push(("get".into(), "/v1/health".into()));
    documented.sort();
    documented.dedup();
    served.sort();
    assert_eq!(documented, served, "openapi.json and the router disagree");
    let ui = api.send(Request::get("/swagger/").body(Body::empty()).unwrap()).await;
    assert_eq!(ui.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&ui.body).contains("swagger"), "the Swagger UI page");
}

#[tokio::test]
async fn every_protected_route_answers_401_without_a_key_and_with_a_wrong_key() {
    let api = Api::new(&[]);
    for (m, template) in ROUTES {
        let path = template
            .replace("{id}", NO_VM)
            .replace("{alias}", "calc")
            .replace("{contextId}", "c1")
            .replace("{sessionId}", "s1");
        for key in [None, Some("rds_wrong_key_0123456789abcdef")] {
            let mut req = Request::builder().method(method(m)).uri(&path);
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            let reply = api.send(req.body(Body::empty()).unwrap()).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{m} {path} with key {key:?}");
            reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized", "X-API-Key");
        }
    }
}

#[tokio::test]
async fn exec_documents_each_of_its_answer_formats() {
    let api = Api::new(&[]);
    let doc = api.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.expect(StatusCode::OK);
    let content = &doc["paths"]["/v1/vms/{id}/exec"]["post"]["responses"]["200"]["content"];
    let mut types: Vec<&str> = content.as_object().unwrap().keys().map(String::as_str).collect();
    types.sort();
    assert_eq!(types, ["application/json", "application/x-ndjson", "text/event-stream"], "{content}");
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_are_refused() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    for (m, path) in [
        ("PATCH", format!("/v1/vms/{id}/network")),
        ("POST", "/v1/vms".to_string()),
        ("POST", format!("/v1/vms/{id}/exec")),
    ] {
        for body in ["[null, null]", "[1, 256]", "null", "\"x\""] {
            let reply = api.raw(method(m), &path, &[("content-type", "application/json")], body).await;
            reply.expect_error(StatusCode::BAD_REQUEST, "bad_request", "expected a JSON object");
        }
    }
    // An optional body may be JSON `null`: the defaults.
    let reply = api
        .raw(Method::POST, &format!("/v1/vms/{id}/snapshots"), &[("content-type", "application/json")], "null")
        .await;
    assert_ne!(reply.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&reply.body));
}

#[tokio::test]
async fn cross_origin_requests_get_no_cors_grant() {
    let api = Api::new(&[]);
    // A browser's preflight from another origin is not granted (no route answers OPTIONS)...
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/vms")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key, content-type")
        .body(Body::empty())
        .unwrap();
    let reply = api.send(preflight).await;
    assert!(reply.status.is_client_error(), "{}", reply.status);
    // ...and no answer, with a key or without, lets another origin's page read it.
    for path in ["/v1/vms", "/v1/health", "/openapi.json"] {
        let reply = api.raw(Method::GET, path, &[("origin", "https://evil.example")], Body::empty()).await;
        for (name, _) in reply.headers.iter() {
            assert!(!name.as_str().starts_with("access-control-"), "{path} answered {name}");
        }
    }
}

#[tokio::test]
async fn unknown_routes_answer_404_and_wrong_methods_405_as_json_errors() {
    let api = Api::new(&[]);
    api.call(Method::GET, "/v1/nothing-here", None).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    );
    api.call(Method::PUT, "/v1/vms", None).await.expect_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    );
}

#[tokio::test]
async fn requests_over_rate_limit_per_min_answer_429_with_retry_after() {
    let api = Api::new(&[("RATE_LIMIT_PER_MIN", "2")]);
    api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    let reply = api.call(Method::GET, "/v1/vms", None).await;
    reply.expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit exceeded");
    let retry: u64 = reply.headers[header::RETRY_AFTER].to_str().unwrap().parse().expect("Retry-After is seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The public health route is not counted against the key.
    api.send(Request::get("/v1/health").body(Body::empty()).unwrap()).await.expect(StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// VMs

#[tokio::test]
async fn create_vm_answers_201_with_a_running_vm_that_get_and_list_show() {
    let api = Api::new(&[]);
    let vm = api
        .call(
            Method::POST,
            "/v1/vms",
            Some(json!({"cpu": 1, "memMb": 128, "diskSizeMb": 64, "allowIps": ["10.1.2.0/24"]})),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = vm["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id {id}");
    assert_eq!(vm["state"], "RUNNING");
    assert_eq!(vm["cpu"], 1);
    assert_eq!(vm["memMb"], 128);
    assert_eq!(vm["diskSizeMb"], 64);
    assert_eq!(vm["runtime"], "sandbox");
    assert_eq!(vm["outboundInternet"], false);
    assert_eq!(vm["network"]["allowIps"], json!(["10.1.2.0/24"]));
    assert!(vm.get("secretEnvKeys").is_none(), "no secrets, no key list: {vm}");
    assert_eq!(vm["peerLinks"], json!([]));
    assert!(vm["createdAt"].as_i64().is_some_and(|t| t > 0), "{vm}");

    let got = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(got["id"], id);
    assert_eq!(got["state"], "RUNNING");
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    let ids: Vec<&str> = list.as_array().expect("a list").iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id]);
}

#[tokio::test]
async fn create_vm_with_a_bad_body_answers_400_naming_the_field() {
    let api = Api::new(&[]);
    let cases: &[(&str, &str)] = &[
        (r#"{"cpu": 0, "memMb": 128}"#, "`cpu`"),
        (r#"{"cpu": 1, "memMb": 1}"#, "`memMb`"),
        (r#"{"cpu": 1, "memMb": 128, "diskSizeMb": 1}"#, "`diskSizeMb`"),
        (r#"{"cpu": "one", "memMb": 128}"#, "cpu"),
        (r#"{"cpu": "0", "memMb": 128}"#, "`cpu`"),
        (r#"{"memMb": 128}"#, "cpu"),
        (r#"{"cpu": 1, "memMb": 128, "colour": "red"}"#, "colour"),
        (r#"{"cpu": 1, "memMb": 128, "allowIps": ["not-an-ip"]}"#, "not-an-ip"),
        (r#"{"cpu": 1, "memMb": 128, "secretEnv": ["NOEQUALS"]}"#, "secretEnv"),
        (
            r#"{"cpu": 1, "memMb": 128, "peerLinks": [{"alias": "calc", "vmId": "00000000-0000-4000-8000-000000000000"}]}"#,
            "not found",
        ),
        (r#"{"cpu": 1,"#, "malformed JSON"),
        ("", "request body is empty"),
    ];
    for (body, needle) in cases {
        api.raw(Method::POST, "/v1/vms", &[("content-type", "application/json")], body.to_string()).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    assert_eq!(list, json!([]), "a refused create leaves no VM behind");
}

#[tokio::test]
async fn create_vm_over_a_quota_answers_429_naming_the_limit() {
    let api = Api::new(&[("MAX_VMS", "1"), ("MAX_CPU", "2"), ("MAX_MEM_MB", "256"), ("MAX_DISK_MB", "2048")]);
    let over: &[(Value, &str)] = &[
        (json!({"cpu": 3, "memMb": 128}), "MAX_CPU=2"),
        (json!({"cpu": 1, "memMb": 512}), "MAX_MEM_MB=256"),
        (json!({"cpu": 1, "memMb": 128, "diskSizeMb": 4096}), "MAX_DISK_MB=2048"),
    ];
    for (body, needle) in over {
        api.call(Method::POST, "/v1/vms", Some(body.clone())).await.expect_error(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            needle,
        );
    }
    api.vm().await;
    api.call(Method::POST, "/v1/vms", Some(json!({"cpu": 1, "memMb": 128}))).await.expect_error(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        "MAX_VMS=1",
    );
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "a create refused for MAX_VMS leaves no record: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_exceed_max_vms_and_the_refused_leave_no_record() {
    let api = Api::new(&[("MAX_VMS", "2")]);
    let body = json!({"cpu": 1, "memMb": 128});
    let replies =
        futures_util::future::join_all((0..6).map(|_| api.call(Method::POST, "/v1/vms", Some(body.clone())))).await;
    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 4, "{statuses:?}");
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    let states: Vec<_> = list.as_array().unwrap().iter().map(|v| v["state"].clone()).collect();
    assert_eq!(states, [json!("RUNNING"), json!("RUNNING")]);
    assert_eq!(api.state.store.count_live_vms().await.unwrap(), 2);
}

#[tokio::test]
async fn json_bodies_over_max_json_body_bytes_answer_413() {
    let api = Api::new(&[("MAX_JSON_BODY_BYTES", "256")]);
    let big = json!({"cpu": 1, "memMb": 128, "allowDomains": vec!["example.com"; 40]}).to_string();
    assert!(big.len() > 256);
    api.raw(Method::POST, "/v1/vms", &[("content-type", "application/json")], big.clone()).await.expect_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "MAX_JSON_BODY_BYTES=256",
    );
    // Without a Content-Length (a stream), the limit holds while reading.
    let chunks = futures_util::stream::iter(
        big.into_bytes().chunks(64).map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
    );
    api.raw(Method::POST, "/v1/vms", &[("content-type", "application/json")], Body::from_stream(chunks))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "MAX_JSON_BODY_BYTES=256");
}

#[tokio::test]
async fn every_vm_route_answers_404_for_an_unknown_vm_id() {
    let api = Api::new(&[]);
    let id = NO_VM;
    let exec = json!({"cmd": "true"});
    let run = json!({"code": "result.set(1)"});
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/vms/{id}"), None),
        (Method::DELETE, format!("/v1/vms/{id}"), None),
        (Method::POST, format!("/v1/vms/{id}/start"), None),
        (Method::POST, format!("/v1/vms/{id}/stop"), None),
        (Method::GET, format!("/v1/vms/{id}/logs"), None),
        (Method::GET, format!("/v1/vms/{id}/exec-logs"), None),
        (Method::POST, format!("/v1/vms/{id}/exec"), Some(exec)),
        (Method::POST, format!("/v1/vms/{id}/run-ts"), Some(run.clone())),
        (Method::POST, format!("/v1/vms/{id}/run-js"), Some(run.clone())),
        (Method::POST, format!("/v1/vms/{id}/run-python"), Some(run)),
        (Method::GET, format!("/v1/vms/{id}/files/download?path=a"), None),
        (Method::GET, format!("/v1/vms/{id}/peers"), None),
        (Method::POST, format!("/v1/vms/{id}/peers/sync"), None),
        (Method::PATCH, format!("/v1/vms/{id}/peers/calc"), Some(json!({"vmId": NO_VM}))),
        (Method::DELETE, format!("/v1/vms/{id}/peers/calc"), None),
        (Method::PATCH, format!("/v1/vms/{id}/secrets"), Some(json!({"secretEnv": []}))),
        (Method::PATCH, format!("/v1/vms/{id}/network"), Some(json!({"allowIps": []}))),
    ];
    for (m, path, body) in cases {
        let reply = api.call(m.clone(), &path, body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{m} {path}: {}", String::from_utf8_lossy(&reply.body));
        reply.expect_error(StatusCode::NOT_FOUND, "not_found", id);
    }
    let upload = api.raw(Method::POST, &format!("/v1/vms/{id}/files/upload?dest=d"), &[], tar_gz(&[("a", b"a")])).await;
    upload.expect_error(StatusCode::NOT_FOUND, "not_found", id);
}

#[tokio::test]
async fn stop_and_start_answer_204_keep_the_workspace_and_409_in_the_wrong_state() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    api.exec(&id, "echo kept > note.txt").await;

    api.call(Method::POST, &format!("/v1/vms/{id}/stop"), None).await.expect(StatusCode::NO_CONTENT);
    let vm = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(vm["state"], "STOPPED");
    api.call(Method::POST, &format!("/v1/vms/{id}/stop"), None).await.expect_error(
        StatusCode::CONFLICT,
        "conflict",
        "only a RUNNING VM can be stopped",
    );
    for path in ["exec", "run-js"] {
        let body = if path == "exec" { json!({"cmd": "true"}) } else { json!({"code": "result.set(1)"}) };
        api.call(Method::POST, &format!("/v1/vms/{id}/{path}"), Some(body)).await.expect_error(
            StatusCode::CONFLICT,
            "conflict",
            "must be RUNNING",
        );
    }
    // A streamed exec is refused before any stream starts, as a JSON error.
    api.raw(
        Method::POST,
        &format!("/v1/vms/{id}/exec"),
        &[("content-type", "application/json"), ("accept", "application/x-ndjson")],
        json!({"cmd": "true"}).to_string(),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "conflict", "must be RUNNING");
    api.call(Method::GET, &format!("/v1/vms/{id}/files/download?path=note.txt"), None).await.expect_error(
        StatusCode::CONFLICT,
        "conflict",
        "must be RUNNING",
    );

    api.call(Method::POST, &format!("/v1/vms/{id}/start"), None).await.expect(StatusCode::NO_CONTENT);
    let vm = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(vm["state"], "RUNNING");
    api.call(Method::POST, &format!("/v1/vms/{id}/start"), None).await.expect_error(
        StatusCode::CONFLICT,
        "conflict",
        "only a STOPPED or ERROR VM can be started",
    );
    assert_eq!(api.exec(&id, "cat note.txt").await["stdout"], "kept\n");
}

#[tokio::test]
async fn delete_answers_204_and_the_vm_is_gone_from_get_and_list() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    api.call(Method::DELETE, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::NO_CONTENT);
    api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect_error(StatusCode::NOT_FOUND, "not_found", &id);
    api.call(Method::DELETE, &format!("/v1/vms/{id}"), None).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &id,
    );
    assert_eq!(api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK), json!([]));
    // The deleted VM no longer counts against MAX_VMS.
    assert_eq!(api.state.store.count_live_vms().await.unwrap(), 0);
}

#[tokio::test]
async fn logs_answer_the_console_tail_and_exec_logs_the_calls_newest_first() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let logs = api.call(Method::GET, &format!("/v1/vms/{id}/logs?tail=10"), None).await.expect(StatusCode::OK);
    let lines = logs["lines"].as_array().expect("lines");
    assert!(lines.iter().any(|l| l.as_str().unwrap().contains("serving in-process")), "{logs}");
    assert_eq!(logs["truncated"], false);

    api.exec(&id, "echo first").await;
    api.exec(&id, "echo second").await;
    let page = api.call(Method::GET, &format!("/v1/vms/{id}/exec-logs?limit=1"), None).await.expect(StatusCode::OK);
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "exec");
    assert_eq!(entries[0]["input"]["cmd"], "echo second");
    assert_eq!(entries[0]["exitCode"], 0);
    assert_eq!(entries[0]["outputPreview"], "second\n");
    assert_eq!(page["hasMore"], true);

    api.call(Method::GET, &format!("/v1/vms/{id}/exec-logs?limit=lots"), None).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "invalid query",
    );
}

// ---------------------------------------------------------------------------------------------
// Exec and run

#[tokio::test]
async fn exec_answers_exit_code_stdout_and_stderr() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let r = api
        .call(
            Method::POST,
            &format!("/v1/vms/{id}/exec"),
            Some(json!({"cmd": "echo out; echo err >&2; cat; exit 3", "stdin": "in\n", "env": {"A": "b"}})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["exitCode"], 3);
    assert_eq!(r["stdout"], "out\nin\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["timedOut"], false);
    assert_eq!(r["stdoutTruncated"], false);
    assert!(r["durationMs"].is_u64(), "{r}");
    assert_eq!(api.exec(&id, "echo $A; pwd").await["stdout"].as_str().unwrap().lines().next(), Some(""));
}

#[tokio::test]
async fn exec_past_its_timeout_ms_answers_200_with_timed_out_and_no_exit_code() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let r = api
        .call(
            Method::POST,
            &format!("/v1/vms/{id}/exec"),
            Some(json!({"cmd": "echo started; sleep 30", "timeoutMs": 300})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["timedOut"], true, "{r}");
    assert_eq!(r["exitCode"], Value::Null, "{r}");
    assert_eq!(r["stdout"], "started\n", "output before the kill is kept: {r}");
}

#[tokio::test]
async fn exec_with_accept_ndjson_streams_output_events_then_the_exit() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let reply = api
        .raw(
            Method::POST,
            &format!("/v1/vms/{id}/exec"),
            &[("content-type", "application/json"), ("accept", "application/x-ndjson")],
            json!({"cmd": "echo one; echo two >&2; exit 4"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let events: Vec<Value> = std::str::from_utf8(&reply.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .collect();
    let (last, output) = events.split_last().expect("at least the exit event");
    assert_eq!(last["type"], "exit", "{events:?}");
    assert_eq!(last["exitCode"], 4);
    let text = |kind: &str| {
        output.iter().filter(|e| e["type"] == kind).map(|e| e["data"].as_str().unwrap()).collect::<String>()
    };
    assert_eq!(text("stdout"), "one\n");
    assert_eq!(text("stderr"), "two\n");
}

#[tokio::test]
async fn exec_with_a_bad_body_answers_400_naming_the_field() {
    let api = Api::new(&[("MAX_EXEC_TIMEOUT_MS", "5000")]);
    let id = api.vm().await;
    let path = format!("/v1/vms/{id}/exec");
    let cases: &[(Value, &str)] = &[
        (json!({}), "cmd"),
        (json!({"cmd": 5}), "cmd"),
        (json!({"cmd": "true", "timeoutMs": 0}), "`timeoutMs`"),
        (json!({"cmd": "true", "timeoutMs": 6000}), "MAX_EXEC_TIMEOUT_MS=5000"),
        (json!({"cmd": "true", "env": {"A": 1}}), "env"),
    ];
    for (body, needle) in cases {
        api.call(Method::POST, &path, Some(body.clone())).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
}

/// Each run route answers the snippet's `result.set` value when its interpreter exists, and the
/// documented 501 naming the interpreter when it does not.
async fn check_run(api: &Api, id: &str, route: &str, code: &str, available: bool, program: &str) {
    let reply = api.call(Method::POST, &format!("/v1/vms/{id}/{route}"), Some(json!({"code": code}))).await;
    if available {
        let r = reply.expect(StatusCode::OK);
        assert_eq!(r["exitCode"], 0, "{route}: {r}");
        assert_eq!(r["result"], json!({"sum": 3}), "{route}: {r}");
    } else {
        reply.expect_error(StatusCode::NOT_IMPLEMENTED, "not_implemented", program);
    }
    api.call(Method::POST, &format!("/v1/vms/{id}/{route}"), Some(json!({"args": []}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "one of `code` or `path` is required",
    );
}

#[tokio::test]
async fn run_ts_js_and_python_answer_the_result_or_501_without_the_interpreter() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let caps = api.state.capabilities.clone();
    check_run(&api, &id, "run-ts", "const n: number = 1 + 2; result.set({sum: n})", caps.deno, "deno").await;
    check_run(&api, &id, "run-js", "result.set({sum: 1 + 2})", caps.node, "node").await;
    check_run(&api, &id, "run-python", "result.set({'sum': 1 + 2})", caps.python3, "python3").await;
}

// ---------------------------------------------------------------------------------------------
// Files

#[tokio::test]
async fn upload_extracts_a_tar_gz_and_download_returns_it() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let up = api
        .raw(
            Method::POST,
            &format!("/v1/vms/{id}/files/upload?dest=data"),
            &[("content-type", "application/gzip")],
            tar_gz(&[("a.txt", b"alpha"), ("sub/b.txt", b"beta")]),
        )
        .await;
    assert_eq!(up.status, StatusCode::NO_CONTENT, "body: {}", String::from_utf8_lossy(&up.body));
    assert!(up.body.is_empty(), "204 has no body");
    assert_eq!(api.exec(&id, "cat data/a.txt data/sub/b.txt").await["stdout"], "alphabeta");

    let down = api.raw(Method::GET, &format!("/v1/vms/{id}/files/download?path=data/sub"), &[], Body::empty()).await;
    assert_eq!(down.status, StatusCode::OK);
    assert_eq!(down.headers[header::CONTENT_TYPE], "application/gzip");
    let files = untar_gz(&down.body);
    assert!(
        files.iter().any(|(p, d)| p.ends_with("b.txt") && d == b"beta"),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn files_routes_answer_400_for_bad_input_404_for_missing_paths_and_413_over_max_upload_bytes() {
    let api = Api::new(&[("MAX_UPLOAD_BYTES", "1024")]);
    let id = api.vm().await;
    api.call(Method::GET, &format!("/v1/vms/{id}/files/download"), None).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`path`",
    );
    api.call(Method::GET, &format!("/v1/vms/{id}/files/download?path=missing.txt"), None).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "missing.txt",
    );
    api.raw(Method::POST, &format!("/v1/vms/{id}/files/upload"), &[], tar_gz(&[("a", b"a")])).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`dest`",
    );
    api.raw(Method::POST, &format!("/v1/vms/{id}/files/upload?dest=d"), &[], "not a tar.gz").await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "",
    );
    api.raw(Method::POST, &format!("/v1/vms/{id}/files/upload?dest=../up"), &[], tar_gz(&[("a", b"x")]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_request", "..");
    // Random bytes do not compress, so the archive is well over the limit.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    api.raw(Method::POST, &format!("/v1/vms/{id}/files/upload?dest=d"), &[], tar_gz(&[("big", &noise)]))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "MAX_UPLOAD_BYTES=1024");
}

// ---------------------------------------------------------------------------------------------
// Network

#[tokio::test]
async fn network_patch_answers_the_vm_with_the_new_policy_400_for_bad_entries_and_501_without_networking() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let path = format!("/v1/vms/{id}/network");
    let vm = api.call(Method::PATCH, &path, Some(json!({"allowIps": ["192.0.2.0/24"]}))).await.expect(StatusCode::OK);
    assert_eq!(vm["id"], id.as_str());
    assert_eq!(vm["network"]["allowIps"], json!(["192.0.2.0/24"]));
    assert_eq!(vm["network"]["outboundInternet"], false);
    api.call(Method::PATCH, &path, Some(json!({"allowIps": ["nope"]}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "nope",
    );
    api.call(Method::PATCH, &path, Some(json!({"egress": true}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "egress",
    );
    // This manager has no VM networking (as on a host without it): opening egress cannot work.
    api.call(Method::PATCH, &path, Some(json!({"outboundInternet": true}))).await.expect_error(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "",
    );
    let vm = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(vm["network"]["allowIps"], json!(["192.0.2.0/24"]), "refused patches change nothing");
}

// ---------------------------------------------------------------------------------------------
// Images

#[tokio::test]
async fn images_create_upload_set_default_and_delete_answer_their_documented_statuses() {
    let api = Api::new(&[]);
    let image = api
        .call(Method::POST, "/v1/images", Some(json!({"name": "base", "description": "test"})))
        .await
        .expect(StatusCode::CREATED);
    let id = image["id"].as_str().expect("an image id").to_string();
    assert_eq!(image["name"], "base");
    assert_eq!(image["hasRootfs"], false);
    assert_eq!(image["isDefault"], false);

    api.call(Method::POST, &format!("/v1/images/{id}/set-default"), None).await.expect_error(
        StatusCode::CONFLICT,
        "conflict",
        "has no rootfs",
    );
    // Uploads and set-default answer 204 with no body (as the original); GET shows the result.
    let get = || async { api.call(Method::GET, &format!("/v1/images/{id}"), None).await.expect(StatusCode::OK) };
    let up = api.raw(Method::PUT, &format!("/v1/images/{id}/rootfs"), &[], ext4_head()).await;
    assert_eq!(up.expect(StatusCode::NO_CONTENT), Value::Null);
    let image = get().await;
    assert_eq!(image["hasRootfs"], true);
    assert_eq!(image["rootfsBytes"], 4096);
    let kernel = [b"\x7fELF".as_slice(), &[0u8; 2000]].concat();
    let up = api.raw(Method::PUT, &format!("/v1/images/{id}/kernel"), &[], kernel).await;
    assert_eq!(up.expect(StatusCode::NO_CONTENT), Value::Null);
    let image = get().await;
    assert_eq!(image["hasKernel"], true);
    assert_eq!(image["kernelFormat"], "elf");
    let initrd = [b"070701".as_slice(), &[b'0'; 2000]].concat();
    let up = api.raw(Method::PUT, &format!("/v1/images/{id}/initrd"), &[], initrd).await;
    assert_eq!(up.expect(StatusCode::NO_CONTENT), Value::Null);
    assert_eq!(get().await["hasInitrd"], true);

    let default = api.call(Method::POST, &format!("/v1/images/{id}/set-default"), None).await;
    assert_eq!(default.expect(StatusCode::NO_CONTENT), Value::Null);
    let list = api.call(Method::GET, "/v1/images", None).await.expect(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(
        api.call(Method::GET, &format!("/v1/images/{id}"), None).await.expect(StatusCode::OK)["isDefault"],
        true
    );

    // A VM created now uses the default image, which then cannot be deleted.
    let vm_id = api.vm().await;
    assert_eq!(
        api.call(Method::GET, &format!("/v1/vms/{vm_id}"), None).await.expect(StatusCode::OK)["imageId"],
        id.as_str()
    );
    api.call(Method::DELETE, &format!("/v1/images/{id}"), None).await.expect_error(
        StatusCode::CONFLICT,
        "conflict",
        "used by 1 VM",
    );
    api.call(Method::DELETE, &format!("/v1/vms/{vm_id}"), None).await.expect(StatusCode::NO_CONTENT);
    api.call(Method::DELETE, &format!("/v1/images/{id}"), None).await.expect(StatusCode::NO_CONTENT);
    api.call(Method::GET, &format!("/v1/images/{id}"), None).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &id,
    );
}

#[tokio::test]
async fn image_bundle_upload_installs_its_parts_and_manifest() {
    let api = Api::new(&[]);
    let id = api.call(Method::POST, "/v1/images", Some(json!({"name": "bundled"}))).await.expect(StatusCode::CREATED)
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bundle = tar_gz(&[("rootfs.ext4", &ext4_head()), ("manifest.json", br#"{"builder":"contract-test"}"#)]);
    let up = api.raw(Method::PUT, &format!("/v1/images/{id}/bundle"), &[], bundle).await;
    assert_eq!(up.expect(StatusCode::NO_CONTENT), Value::Null);
    let got = api.call(Method::GET, &format!("/v1/images/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(got["hasRootfs"], true);
    assert_eq!(got["hasKernel"], false);
    assert_eq!(got["manifest"]["builder"], "contract-test", "{got}");
    api.raw(Method::PUT, &format!("/v1/images/{id}/bundle"), &[], tar_gz(&[("evil.sh", b"x")])).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "bundle holds none of",
    );
    api.raw(Method::PUT, &format!("/v1/images/{id}/bundle"), &[], "not gzip").await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "bundle is not a valid tar.gz",
    );
}

#[tokio::test]
async fn image_routes_answer_400_for_bad_input_404_for_unknown_ids_and_413_over_max_image_bytes() {
    let api = Api::new(&[("MAX_IMAGE_BYTES", "2048")]);
    for (body, needle) in
        [(json!({"name": ""}), "`name`"), (json!({"name": "x", "size": 1}), "size"), (json!({}), "name")]
    {
        api.call(Method::POST, "/v1/images", Some(body)).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let none = "img-does-not-exist";
    for (m, path) in [
        (Method::GET, format!("/v1/images/{none}")),
        (Method::DELETE, format!("/v1/images/{none}")),
        (Method::POST, format!("/v1/images/{none}/set-default")),
    ] {
        api.call(m, &path, None).await.expect_error(StatusCode::NOT_FOUND, "not_found", none);
    }
    for part in ["kernel", "initrd", "rootfs", "bundle"] {
        api.raw(Method::PUT, &format!("/v1/images/{none}/{part}"), &[], ext4_head()).await.expect_error(
            StatusCode::NOT_FOUND,
            "not_found",
            none,
        );
    }
    let id = api.call(Method::POST, "/v1/images", Some(json!({"name": "small"}))).await.expect(StatusCode::CREATED)
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.raw(Method::PUT, &format!("/v1/images/{id}/kernel"), &[], vec![b'M'; 2000]).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "kernel is not",
    );
    api.raw(Method::PUT, &format!("/v1/images/{id}/rootfs"), &[], vec![0u8; 4096]).await.expect_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "2048",
    );
    let image = api.call(Method::GET, &format!("/v1/images/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(
        (image["hasKernel"].clone(), image["hasRootfs"].clone()),
        (json!(false), json!(false)),
        "refused uploads store nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Peers and secrets

#[tokio::test]
async fn peer_links_are_created_listed_synced_and_deleted_through_their_routes() {
    let api = Api::new(&[]);
    let provider = api.vm().await;
    let consumer = api.vm().await;
    assert_eq!(
        api.call(Method::GET, &format!("/v1/vms/{consumer}/peers"), None).await.expect(StatusCode::OK),
        json!([])
    );
    // Linking strictly syncs: a provider without a manifest is a 400 naming what is missing.
    api.call(Method::PATCH, &format!("/v1/vms/{consumer}/peers/calc"), Some(json!({"vmId": provider})))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_request", "missing provider manifest");
    assert_eq!(
        api.call(Method::GET, &format!("/v1/vms/{consumer}/peers"), None).await.expect(StatusCode::OK),
        json!([]),
        "a refused link is not stored"
    );
    let manifest = json!({
        "sdk": {"name": "calc", "description": "adds"},
        "exports": [{"name": "add", "module": "src/calc.mjs", "description": "a + b"}],
    });
    let sdk = tar_gz(&[
        (".rds-peer/manifest.json", manifest.to_string().as_bytes()),
        ("src/calc.mjs", b"export function add(args) { return args.a + args.b; }"),
    ]);
    api.raw(Method::POST, &format!("/v1/vms/{provider}/files/upload?dest=."), &[], sdk)
        .await
        .expect(StatusCode::NO_CONTENT);

    let report = api
        .call(Method::PATCH, &format!("/v1/vms/{consumer}/peers/calc"), Some(json!({"vmId": provider})))
        .await
        .expect(StatusCode::OK);
    let peers = report["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1, "{report}");
    assert_eq!(peers[0]["alias"], "calc");
    assert_eq!(peers[0]["vmId"], provider.as_str());
    assert!(report["skipped"].is_array(), "{report}");
    assert_eq!(peers[0]["syncStatus"], "synced", "{report}");
    assert_eq!(peers[0]["exports"], json!(["add"]), "{report}");
    let generated = api.exec(&consumer, "ls peers").await;
    assert!(generated["stdout"].as_str().unwrap().contains("calc"), "the consumer got its peer files: {generated}");

    let list = api.call(Method::GET, &format!("/v1/vms/{consumer}/peers"), None).await.expect(StatusCode::OK);
    assert_eq!(list[0]["alias"], "calc");
    let synced = api.call(Method::POST, &format!("/v1/vms/{consumer}/peers/sync"), None).await.expect(StatusCode::OK);
    assert_eq!(synced["peers"][0]["alias"], "calc", "{synced}");
    let vm = api.call(Method::GET, &format!("/v1/vms/{consumer}"), None).await.expect(StatusCode::OK);
    assert_eq!(vm["peerLinks"][0]["alias"], "calc");

    api.call(Method::DELETE, &format!("/v1/vms/{consumer}/peers/calc"), None).await.expect(StatusCode::NO_CONTENT);
    api.call(Method::DELETE, &format!("/v1/vms/{consumer}/peers/calc"), None).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "calc",
    );
    assert_eq!(api.call(Method::GET, "/v1/peer-calls", None).await.expect(StatusCode::OK), json!([]));
    assert_eq!(
        api.call(Method::GET, &format!("/v1/peer-calls?vmId={consumer}&limit=5"), None).await.expect(StatusCode::OK),
        json!([])
    );
}

#[tokio::test]
async fn peer_link_routes_answer_400_naming_the_field_and_409_when_not_running() {
    let api = Api::new(&[]);
    let consumer = api.vm().await;
    let path = format!("/v1/vms/{consumer}/peers/calc");
    api.call(Method::PATCH, &path, Some(json!({}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`vmId`",
    );
    api.call(Method::PATCH, &path, Some(json!({"vmId": consumer}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "cannot link to itself",
    );
    api.call(Method::PATCH, &path, Some(json!({"vmId": NO_VM}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "not found",
    );
    api.call(Method::PATCH, &path, Some(json!({"vmId": NO_VM, "mode": 1}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "mode",
    );
    api.call(Method::PATCH, &format!("/v1/vms/{consumer}/peers/bad%20alias"), Some(json!({"vmId": NO_VM})))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_request", "alias");
    api.call(Method::POST, &format!("/v1/vms/{consumer}/stop"), None).await.expect(StatusCode::NO_CONTENT);
    api.call(Method::POST, &format!("/v1/vms/{consumer}/peers/sync"), None).await.expect_error(
        StatusCode::CONFLICT,
        "conflict",
        "must be RUNNING",
    );
    api.call(Method::GET, "/v1/peer-calls?limit=many", None).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "invalid query",
    );
}

#[tokio::test]
async fn secrets_patch_answers_204_lists_the_keys_and_redacts_the_values_from_exec_output() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let path = format!("/v1/vms/{id}/secrets");
    api.call(Method::PATCH, &path, Some(json!({"secretEnv": ["TOKEN=hunter2-very-secret"]})))
        .await
        .expect(StatusCode::NO_CONTENT);
    let vm = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_eq!(vm["secretEnvKeys"], json!(["TOKEN"]));
    let out = api.exec(&id, "printf '%s' \"$TOKEN\" | wc -c; echo \"$TOKEN\"").await;
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("19\n"), "the secret reaches the command: {stdout:?}");
    assert!(!stdout.contains("hunter2-very-secret"), "the secret is redacted from the output: {stdout:?}");

    api.call(Method::PATCH, &path, Some(json!({"secretEnv": ["1BAD=x"]}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "secretEnv[0]",
    );
    api.call(Method::PATCH, &path, Some(json!({"secrets": []}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "secrets",
    );
    api.call(Method::PATCH, &path, Some(json!({"secretEnv": []}))).await.expect(StatusCode::NO_CONTENT);
    let vm = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert!(vm.get("secretEnvKeys").is_none(), "an empty list removes the secrets: {vm}");
}

#[tokio::test]
async fn secrets_without_vm_secret_key_answer_400_naming_secret_env() {
    let api = Api::new(&[("VM_SECRET_KEY", "")]);
    let id = api.vm().await;
    api.call(Method::PATCH, &format!("/v1/vms/{id}/secrets"), Some(json!({"secretEnv": ["TOKEN=x"]})))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_request", "no VM_SECRET_KEY");
}

// ---------------------------------------------------------------------------------------------
// Errors: cause chains, the reporting layer, EXPOSE_INTERNAL_ERRORS

/// Collects what the manager logs while a test runs on this thread.
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A VM whose console log cannot be read (a directory stands where the file should be), so
/// `GET /v1/vms/{id}/logs` fails inside the manager with an I/O error: a real 500.
async fn vm_with_an_unreadable_console(api: &Api) -> String {
    let id = api.vm().await;
    let log = api.state.runtime.console_log(&id);
    let _ = std::fs::remove_file(&log);
    std::fs::create_dir_all(&log).expect("a directory in place of the console log");
    id
}

/// The request id in a 500 message `… (request id <uuid>)`.
fn request_id(message: &str) -> String {
    let start =
        message.rfind("(request id ").unwrap_or_else(|| panic!("no request id in {message:?}")) + "(request id ".len();
    message[start..].trim_end_matches(')').to_string()
}

#[tokio::test]
async fn internal_errors_answer_a_request_id_and_log_the_whole_cause_chain() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let api = Api::new(&[]);
    let id = vm_with_an_unreadable_console(&api).await;
    let reply = api.call(Method::GET, &format!("/v1/vms/{id}/logs"), None).await;
    reply.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error (request id ");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.contains("console.log"), "the cause stays out of the answer: {message}");
    let rid = request_id(&message);
    let logged = capture.text();
    let line =
        logged.lines().find(|l| l.contains(&rid)).unwrap_or_else(|| panic!("no log line names {rid}:\n{logged}"));
    // The context (which file) and the OS error below it (EISDIR) are both in the one line.
    assert!(line.contains("cannot read") && line.contains("console.log"), "{line}");
    assert!(line.contains("Is a directory"), "the io error is kept as the cause: {line}");
    assert!(line.contains("status=500") && line.contains("/logs"), "{line}");
    // A 4xx is the caller's business, not an error of the manager: not logged as one.
    let before = capture.text().len();
    api.call(Method::GET, &format!("/v1/vms/{NO_VM}"), None).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        NO_VM,
    );
    assert!(!capture.text()[before..].contains("request failed"), "{}", &capture.text()[before..]);
}

#[tokio::test]
async fn expose_internal_errors_puts_the_cause_chain_in_the_message() {
    let api = Api::new(&[("EXPOSE_INTERNAL_ERRORS", "true")]);
    let id = vm_with_an_unreadable_console(&api).await;
    let reply = api.call(Method::GET, &format!("/v1/vms/{id}/logs"), None).await;
    reply.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cannot read");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("console.log") && message.contains("Is a directory"), "{message}");
    assert!(!request_id(&message).is_empty(), "{message}");
    assert!(reply
        .headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.to_str().unwrap() == reply.body.len().to_string()));
}

// ---------------------------------------------------------------------------------------------
// OpenAPI: the document is the route list, documents the error answers and the constraints

/// Every (method, path template) in `/openapi.json`.
fn documented_operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("operations").keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                ops.push((method.clone(), path.clone()));
            }
        }
    }
    ops.sort();
    ops
}

/// A concrete path for a template.
fn concrete(template: &str) -> String {
    template.replace("{id}", NO_VM).replace("{alias}", "calc")
}

async fn openapi(api: &Api) -> Value {
    api.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.expect(StatusCode::OK)
}

/// True when the router answered with its "no such route" or "method not allowed" fallback.
fn is_fallback(reply: &Reply) -> bool {
    let message = || reply.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    (reply.status == StatusCode::NOT_FOUND && message() == "no such route")
        || reply.status == StatusCode::METHOD_NOT_ALLOWED
}

#[tokio::test]
async fn the_router_serves_exactly_the_operations_openapi_json_documents() {
    let api = Api::new(&[]);
    let doc = openapi(&api).await;
    let documented = documented_operations(&doc);
    assert!(documented.len() > 20, "{documented:?}");
    for (m, template) in &documented {
        let reply = api.call(method(m), &concrete(template), None).await;
        assert!(
            !is_fallback(&reply),
            "{m} {template} is documented but not served: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // Every other method on a documented path, and paths next to documented ones, are not served.
    let paths: std::collections::BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for m in ["get", "put", "post", "delete", "patch"] {
            if documented.contains(&(m.to_string(), path.clone())) {
                continue;
            }
            let reply = api.call(method(m), &concrete(path), None).await;
            assert!(
                is_fallback(&reply),
                "{m} {path} is served but not documented: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
        let reply = api.call(Method::GET, &format!("{}/undocumented/x/y", concrete(path)), None).await;
        assert!(is_fallback(&reply), "{path}/undocumented is served: {}", reply.status);
    }
}

/// The responses of one operation.
fn responses<'a>(doc: &'a Value, m: &str, path: &str) -> &'a serde_json::Map<String, Value> {
    doc["paths"][path][m]["responses"].as_object().unwrap_or_else(|| panic!("{m} {path} has responses"))
}

#[tokio::test]
async fn every_protected_operation_documents_401_and_429_and_every_id_path_404_with_error_body() {
    let api = Api::new(&[]);
    let doc = openapi(&api).await;
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object(), "ErrorBody is a component");
    for (m, path) in documented_operations(&doc) {
        // Which operations are protected is asked of the router, not assumed.
        let unauthenticated =
            api.send(Request::builder().method(method(&m)).uri(concrete(&path)).body(Body::empty()).unwrap()).await;
        let protected = unauthenticated.status == StatusCode::UNAUTHORIZED;
        let documented = responses(&doc, &m, &path);
        let mut expected: Vec<&str> = Vec::new();
        if protected {
            expected.extend(["401", "429"]);
        } else {
            assert!(!documented.contains_key("401"), "{m} {path} is public but documents a 401");
        }
        if path.contains('{') {
            expected.push("404");
        }
        for status in expected {
            let response = documented.get(status).unwrap_or_else(|| panic!("{m} {path} does not document {status}"));
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ErrorBody", "{m} {path} {status}: {response}");
        }
        if protected {
            assert!(documented["429"]["headers"]["Retry-After"].is_object(), "{m} {path}: 429 names Retry-After");
        }
    }
    // The public health route is one of them, and answers without a key.
    assert!(!responses(&doc, "get", "/v1/health").contains_key("401"));
}

/// A value of `/openapi.json` by JSON pointer.
#[track_caller]
fn doc_value<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    doc.pointer(pointer).unwrap_or_else(|| panic!("/openapi.json has nothing at {pointer}"))
}

/// A query or path parameter of an operation.
#[track_caller]
fn parameter<'a>(doc: &'a Value, m: &str, path: &str, name: &str) -> &'a Value {
    doc["paths"][path][m]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{m} {path} has no parameter {name}"))
}

#[tokio::test]
async fn every_reference_in_openapi_json_resolves() {
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = openapi(&Api::new(&[])).await;
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    let dangling: Vec<&&str> = found.iter().filter(|r| doc.pointer(r.trim_start_matches('#')).is_none()).collect();
    assert!(dangling.is_empty(), "references to nothing: {dangling:?}");
}

#[tokio::test]
async fn openapi_json_documents_the_constraints_the_validators_enforce() {
    use rds_manager::views;
    let api = Api::new(&[("MAX_EXEC_TIMEOUT_MS", "45000")]);
    let doc = openapi(&api).await;
    let schemas = "/components/schemas";
    let policy_max = json!(rds_net::MAX_ENTRIES);
    // (where, what the validators enforce)
    let mut table: Vec<(String, Value)> = vec![
        (format!("{schemas}/CreateVmRequest/properties/cpu/minimum"), json!(1)),
        (format!("{schemas}/CreateVmRequest/properties/memMb/minimum"), json!(views::MIN_MEM_MB)),
        (format!("{schemas}/CreateVmRequest/properties/diskSizeMb/minimum"), json!(views::MIN_DISK_MB)),
        (format!("{schemas}/CreateVmRequest/properties/peerLinks/maxItems"), json!(views::MAX_PEER_LINKS)),
        (format!("{schemas}/CreateVmRequest/properties/secretEnv/maxItems"), json!(rds_peer::secrets::MAX_ENTRIES)),
        (
            format!("{schemas}/CreateVmRequest/properties/secretEnv/items/pattern"),
            json!(rds_peer::secrets::ENTRY_PATTERN),
        ),
        (format!("{schemas}/SecretsRequest/properties/secretEnv/maxItems"), json!(rds_peer::secrets::MAX_ENTRIES)),
        (
            format!("{schemas}/SecretsRequest/properties/secretEnv/items/pattern"),
            json!(rds_peer::secrets::ENTRY_PATTERN),
        ),
        (format!("{schemas}/PeerLinkRequest/properties/alias/pattern"), json!(rds_peer::ALIAS_PATTERN)),
        (format!("{schemas}/PeerLinkRequest/properties/alias/maxLength"), json!(rds_peer::MAX_ALIAS_LEN)),
        (format!("{schemas}/ExecRequest/properties/cmd/minLength"), json!(1)),
        (format!("{schemas}/ExecRequest/properties/timeoutMs/minimum"), json!(1)),
        (format!("{schemas}/RunRequest/properties/timeoutMs/minimum"), json!(1)),
        // The configured MAX_EXEC_TIMEOUT_MS, as this manager enforces it.
        (format!("{schemas}/ExecRequest/properties/timeoutMs/maximum"), json!(45000)),
        (format!("{schemas}/RunRequest/properties/timeoutMs/maximum"), json!(45000)),
        (format!("{schemas}/ContextRequest/properties/cwd/minLength"), json!(1)),
        (format!("{schemas}/CreateImageRequest/properties/name/minLength"), json!(1)),
        (format!("{schemas}/CreateImageRequest/properties/name/maxLength"), json!(views::MAX_IMAGE_NAME_CHARS)),
        (
            format!("{schemas}/CreateImageRequest/properties/description/maxLength"),
            json!(views::MAX_IMAGE_DESCRIPTION_CHARS),
        ),
    ];
    for request in ["CreateVmRequest", "PatchNetworkRequest"] {
        let at = format!("{schemas}/{request}/properties");
        table.push((format!("{at}/allowIps/maxItems"), policy_max.clone()));
        table.push((format!("{at}/allowIps/items/minLength"), json!(1)));
        table.push((format!("{at}/allowDomains/maxItems"), policy_max.clone()));
        table.push((format!("{at}/allowDomains/items/minLength"), json!(1)));
        table.push((format!("{at}/allowDomains/items/maxLength"), json!(views::MAX_DOMAIN_LEN)));
    }
    for (pointer, expected) in &table {
        assert_eq!(doc_value(&doc, pointer), expected, "{pointer}");
    }
    // Query maxima (larger values are clamped) and required query parameters.
    for (m, path, name, max) in [
        ("get", "/v1/peer-calls", "limit", views::MAX_PEER_CALLS_LIMIT),
        ("get", "/v1/vms/{id}/exec-logs", "limit", views::MAX_EXEC_LOGS_LIMIT),
        ("get", "/v1/vms/{id}/logs", "tail", views::MAX_CONSOLE_TAIL),
    ] {
        let p = parameter(&doc, m, path, name);
        assert_eq!(p["in"], "query", "{path} {name}");
        assert_eq!(p["schema"]["minimum"], 1, "{path} {name}");
        assert_eq!(p["schema"]["maximum"], max, "{path} {name}");
    }
    for (m, path, name) in
        [("post", "/v1/vms/{id}/files/upload", "dest"), ("get", "/v1/vms/{id}/files/download", "path")]
    {
        let p = parameter(&doc, m, path, name);
        assert_eq!(
            (&p["in"], &p["required"], &p["schema"]["minLength"]),
            (&json!("query"), &json!(true), &json!(1)),
            "{path} {name}"
        );
    }
    for m in ["get", "delete"] {
        let id = &parameter(&doc, m, "/v1/snapshots/{id}", "id")["schema"];
        assert_eq!(id["pattern"], rds_manager::openapi::SNAPSHOT_ID_PATTERN, "{m}");
    }
    for m in ["patch", "delete"] {
        let alias = &parameter(&doc, m, "/v1/vms/{id}/peers/{alias}", "alias")["schema"];
        assert_eq!(
            (&alias["pattern"], &alias["maxLength"]),
            (&json!(rds_peer::ALIAS_PATTERN), &json!(rds_peer::MAX_ALIAS_LEN)),
            "{m}"
        );
    }
}

#[tokio::test]
async fn values_just_outside_the_documented_bounds_are_refused_with_400() {
    let api = Api::new(&[]);
    let doc = openapi(&api).await;
    let vm_schema = |field: &str, key: &str| {
        doc_value(&doc, &format!("/components/schemas/CreateVmRequest/properties/{field}/{key}")).as_u64().unwrap()
    };
    let base = || json!({"cpu": 1, "memMb": 128});
    let with = |field: &str, value: Value| {
        let mut body = base();
        body[field] = value;
        body
    };
    let over = |n: u64, item: &dyn Fn(u64) -> Value| Value::Array((0..=n).map(item).collect());
    let cases: Vec<(Value, &str)> = vec![
        (with("cpu", json!(vm_schema("cpu", "minimum") - 1)), "`cpu`"),
        (with("memMb", json!(vm_schema("memMb", "minimum") - 1)), "`memMb`"),
        (with("diskSizeMb", json!(vm_schema("diskSizeMb", "minimum") - 1)), "`diskSizeMb`"),
        (with("allowIps", json!([""])), "allowIps[0]"),
        (
            with(
                "allowIps",
                over(vm_schema("allowIps", "maxItems"), &|i| json!(format!("10.0.{}.{}", i / 256, i % 256))),
            ),
            "allowIps",
        ),
        (with("allowDomains", json!([""])), "allowDomains"),
        (with("allowDomains", json!([format!("{}.com", "a.".repeat(126))])), "allowDomains"),
        (
            with("allowDomains", over(vm_schema("allowDomains", "maxItems"), &|i| json!(format!("h{i}.example.com")))),
            "allowDomains",
        ),
        (with("secretEnv", json!(["1KEY=x"])), "secretEnv[0]"),
        (with("secretEnv", over(vm_schema("secretEnv", "maxItems"), &|i| json!(format!("K{i}=v")))), "secretEnv"),
        (
            with(
                "peerLinks",
                over(vm_schema("peerLinks", "maxItems"), &|i| json!({"alias": format!("p{i}"), "vmId": NO_VM})),
            ),
            "peerLinks",
        ),
        (with("peerLinks", json!([{"alias": "2x", "vmId": NO_VM}])), "alias"),
        (with("peerLinks", json!([{"alias": "a".repeat(rds_peer::MAX_ALIAS_LEN + 1), "vmId": NO_VM}])), "alias"),
    ];
    for (body, needle) in cases {
        let reply = api.call(Method::POST, "/v1/vms", Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", String::from_utf8_lossy(&reply.body));
        reply.expect_error(StatusCode::BAD_REQUEST, "bad_request", needle);
    }
    let image = |key: &str| {
        doc_value(&doc, &format!("/components/schemas/CreateImageRequest/properties/{key}")).as_u64().unwrap() as usize
    };
    for (body, needle) in [
        (json!({"name": ""}), "`name`"),
        (json!({"name": "x".repeat(image("name/maxLength") + 1)}), "`name`"),
        (json!({"name": "ok", "description": "x".repeat(image("description/maxLength") + 1)}), "`description`"),
    ] {
        api.call(Method::POST, "/v1/images", Some(body)).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let id = api.vm().await;
    api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": ""}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`cmd`",
    );
    api.call(Method::PATCH, &format!("/v1/vms/{id}/peers/2x"), Some(json!({"vmId": NO_VM}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`alias`",
    );
    api.call(Method::PATCH, &format!("/v1/vms/{id}/secrets"), Some(json!({"secretEnv": ["=x"]}))).await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "secretEnv[0]",
    );
}
